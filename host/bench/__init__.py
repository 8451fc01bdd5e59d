"""Benchmarks and test harnesses over the generated kernel: the cycle-accurate block benchmarks
(``recfabric bench``) of the lookup unit (:mod:`.lookup`) and the MLP pipeline (:mod:`.mlp`),
with the simulation harnesses the block tests share, and the randomized soak of the whole kernel
on the Verilator back-end through the runtime (``recfabric soak``, :mod:`.soak`)."""
