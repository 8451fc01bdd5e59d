"""Cycle-accurate block benchmarks (``recfabric bench``): the lookup unit (:mod:`.lookup`) and
the MLP pipeline (:mod:`.mlp`), with the simulation harnesses the block tests share."""
