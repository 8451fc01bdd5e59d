"""Benchmarks (see the modules)."""
