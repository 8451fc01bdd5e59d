"""What a model is, independent of any hardware: its spec (:mod:`.spec`), the built-in zoo
(:mod:`.zoo`), float weights (:mod:`.weights`), PyTorch import/export (:mod:`.torch_io`),
synthetic request batches (:mod:`.synthetic`), labelled request data sets (:mod:`.dataset`) and
the trained benchmark models (:mod:`.training`)."""
