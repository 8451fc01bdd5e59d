"""Synthetic request batches with realistic skew, for calibration, accuracy reports and tests.

Sparse IDs follow a Zipf law (a few categories are very popular), scattered over the table by a
multiplicative hash so that popular rows are not all at the top of the table. Dense features
look like Criteo's preprocessed counts (``log1p`` of a heavy-tailed count).
"""

from __future__ import annotations

import numpy as np

from .spec import Bags, ModelSpec

__all__ = ["synthetic_batch", "zipf_ids"]

_GOLDEN = 0x9E3779B1


def zipf_ids(rng, rows: int, size, a: float = 1.1, salt: int = 0) -> np.ndarray:
    """IDs in 0..rows-1 whose popularity ranks follow Zipf(a), scattered by a hash."""
    rank = np.minimum(rng.zipf(a, size=size) - 1, rows - 1).astype(np.uint64)
    return ((rank * np.uint64(_GOLDEN) + np.uint64(salt * 7919)) % np.uint64(rows)).astype(
        np.int64)


def synthetic_batch(spec: ModelSpec, batch: int, seed: int = 0, zipf_a: float = 1.1):
    """``(dense float32 (batch, dense), [Bags per feature])``; multi-hot bags hold 1..bag IDs."""
    if batch < 1:
        raise ValueError(f"batch size must be at least 1, not {batch}")
    rng = np.random.default_rng(seed)
    dense = np.log1p(rng.exponential(scale=4.0, size=(batch, spec.dense))).astype(np.float32)
    sparse = []
    for i, f in enumerate(spec.sparse):
        ids = zipf_ids(rng, f.rows, (batch, f.bag), zipf_a, salt=i)
        lengths = (np.ones(batch, np.int64) if f.bag == 1
                   else rng.integers(1, f.bag + 1, size=batch).astype(np.int64))
        sparse.append(Bags(ids, lengths))
    return dense, sparse
