"""Benchmarks: ``recfabric bench compare`` (:mod:`.compare`)."""
