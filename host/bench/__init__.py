"""Benchmarks: cycle-accurate block benchmarks (``recfabric bench``) of the lookup unit
(:mod:`.lookup`) and the MLP pipeline (:mod:`.mlp`), with the simulation harnesses the block tests
share; and the trained-model accuracy benchmark (:mod:`.trained`, ``recfabric accuracy
--trained``)."""
