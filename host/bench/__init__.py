"""Benchmarks and test harnesses over the generated kernel: the cycle-accurate block benchmarks
(``recfabric bench``) of the lookup unit (:mod:`.lookup`) and the MLP pipeline (:mod:`.mlp`),
with the simulation harnesses the block tests share; the randomized soak of the whole kernel on
the Verilator back-end through the runtime (``recfabric soak``, :mod:`.soak`); the trained-model
accuracy benchmark (:mod:`.trained`, ``recfabric accuracy --trained``) and structured pruning
(:mod:`.prune`, ``recfabric prune``)."""
