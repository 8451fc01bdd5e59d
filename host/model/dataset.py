"""Request data sets on disk (``D.npz``): dense features, per-feature bags, labels.

The format is what a PyTorch pipeline already has for ``nn.EmbeddingBag``: one ``.npz`` file
(``numpy.savez``) holding

``dense``
    float, shape ``(N, spec.dense)``; may be omitted when the model has no dense features.
``ids_<k>``, ``offsets_<k>``
    For the ``k``-th sparse feature of the spec (0-based, in the spec's order): the IDs of all
    requests concatenated (integers, shape ``(total,)``), and where each request's bag starts in
    them (integers, shape ``(N,)``, or ``(N + 1,)`` ending in ``total``): request ``b``'s IDs are
    ``ids_k[offsets_k[b]:offsets_k[b + 1]]``, exactly ``nn.EmbeddingBag``'s ``(input, offsets)``.
``labels``
    0/1, shape ``(N,)``; optional (needed for AUC and log-loss, not for calibration).

``N`` is the length of ``dense``; for a model without dense features, of ``labels``, or (no
labels either) of ``offsets_0``, which must then have the ``(N,)`` form.

:func:`load_dataset` checks everything against the spec (shapes, ID ranges, bag sizes) and names
the key, the feature and the request of any violation; :func:`save_dataset` writes the format.
:func:`load_calibration` is what calibration on user data calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .spec import Bags, ModelSpec, check_sparse

__all__ = ["Dataset", "DatasetError", "load_dataset", "save_dataset", "load_calibration",
           "bags_from_offsets", "bags_to_offsets"]


class DatasetError(ValueError):
    """A data file does not match the model; the message names the key and the cause."""


@dataclass
class Dataset:
    """Requests of one model: ``dense`` (N, D) float32, ``sparse`` (list of Bags), ``labels``
    (N,) int64 or None."""

    dense: np.ndarray
    sparse: list
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.dense)

    def take(self, index) -> Dataset:
        """The requests at ``index`` (a slice or an integer array), as a new Dataset."""
        idx = np.arange(len(self))[index]
        return Dataset(self.dense[idx],
                       [Bags(b.ids[idx], b.lengths[idx]) for b in self.sparse],
                       None if self.labels is None else self.labels[idx])


def bags_from_offsets(ids, offsets, n: int, where: str = "feature") -> Bags:
    """:class:`Bags` of ``n`` requests from EmbeddingBag-style ``(ids, offsets)``."""
    ids = np.asarray(ids)
    offsets = np.asarray(offsets)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise DatasetError(f"{where}: IDs must be a 1-D integer array, not {ids.dtype} "
                           f"{ids.shape}")
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu":
        raise DatasetError(f"{where}: offsets must be a 1-D integer array, not {offsets.dtype} "
                           f"{offsets.shape}")
    if len(offsets) == n:
        offsets = np.append(offsets, len(ids))
    if len(offsets) != n + 1:
        raise DatasetError(f"{where}: {len(offsets)} offsets for {n} requests (want {n} or "
                           f"{n + 1})")
    offsets = offsets.astype(np.int64)
    if n and (offsets[0] != 0 or offsets[-1] != len(ids)):
        raise DatasetError(f"{where}: offsets must start at 0 and end at the ID count "
                           f"{len(ids)}, not {int(offsets[0])} .. {int(offsets[-1])}")
    lengths = np.diff(offsets)
    if np.any(lengths < 0):
        b = int(np.flatnonzero(lengths < 0)[0])
        raise DatasetError(f"{where}, request {b}: offsets decrease ({int(offsets[b])} -> "
                           f"{int(offsets[b + 1])})")
    width = max(1, int(lengths.max()) if n else 1)
    pos = offsets[:-1, None] + np.arange(width)[None, :]
    mask = np.arange(width)[None, :] < lengths[:, None]
    out = np.zeros((n, width), np.int64)
    out[mask] = ids.astype(np.int64)[pos[mask]]
    return Bags(out, lengths)


def bags_to_offsets(bags: Bags):
    """``(ids, offsets)`` (offsets of length N) of one feature's :class:`Bags`."""
    ids = np.asarray(bags.ids, np.int64)[bags.mask()]
    offsets = np.zeros(len(bags.lengths), np.int64)
    np.cumsum(np.asarray(bags.lengths, np.int64)[:-1], out=offsets[1:])
    return ids, offsets


def save_dataset(path, dense, sparse, labels=None):
    """Write requests in the ``D.npz`` format (module docstring)."""
    arrays = {"dense": np.asarray(dense, np.float32)}
    for k, bags in enumerate(sparse):
        arrays[f"ids_{k}"], arrays[f"offsets_{k}"] = bags_to_offsets(bags)
    if labels is not None:
        arrays["labels"] = np.asarray(labels, np.int8)
    np.savez(path, **arrays)


def load_dataset(path, spec: ModelSpec, *, need_labels: bool = False) -> Dataset:
    """Read a ``D.npz`` file (module docstring) for ``spec``, checking it against the spec."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"data file {str(path)!r} does not exist")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a .npz file ({e})") from None
    with z:
        keys = set(z.files)
        want = {f"{kind}_{k}" for k in range(len(spec.sparse)) for kind in ("ids", "offsets")}
        missing = sorted(want - keys)
        if missing:
            raise DatasetError(f"{path}: missing {', '.join(missing[:6])} (model "
                               f"{spec.name!r} has {len(spec.sparse)} sparse features)")
        unknown = sorted(keys - want - {"dense", "labels"})
        if unknown:
            raise DatasetError(f"{path}: unknown key(s) {', '.join(unknown[:6])}")
        n = None
        if "dense" in keys:
            dense = np.asarray(z["dense"])
            if dense.ndim != 2 or dense.shape[1] != spec.dense or dense.dtype.kind not in "fiu":
                raise DatasetError(f"{path}: dense must be a numeric (N, {spec.dense}) array, "
                                   f"not {dense.dtype} {dense.shape}")
            if not np.all(np.isfinite(dense)):
                r = int(np.argwhere(~np.isfinite(dense))[0, 0])
                raise DatasetError(f"{path}: dense, request {r}: NaN or infinite value")
            n = len(dense)
        elif spec.dense:
            raise DatasetError(f"{path}: missing 'dense' (model {spec.name!r} has "
                               f"{spec.dense} dense features)")
        if n is None:
            # No dense part: the request count comes from the labels, else from offsets_0,
            # which must then be the (N,) form.
            n = len(z["labels"]) if "labels" in keys else len(z["offsets_0"])
            dense = np.zeros((n, 0), np.float32)
        sparse = [bags_from_offsets(z[f"ids_{k}"], z[f"offsets_{k}"], n,
                                    f"{path}: feature {k} ({f.name!r})")
                  for k, f in enumerate(spec.sparse)]
        labels = None
        if "labels" in keys:
            labels = np.asarray(z["labels"])
            if labels.shape != (n,) or not np.all((labels == 0) | (labels == 1)):
                raise DatasetError(f"{path}: labels must be {n} values of 0 or 1, not "
                                   f"{labels.dtype} {labels.shape}")
            labels = labels.astype(np.int64)
        elif need_labels:
            raise DatasetError(f"{path}: no 'labels' (needed for AUC and log-loss)")
    if n == 0:
        raise DatasetError(f"{path}: holds no requests")
    try:
        check_sparse(spec, sparse, n)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: {e}") from None
    return Dataset(dense.astype(np.float32), sparse, labels)


def load_calibration(path, spec: ModelSpec, max_requests: int | None = None):
    """``(dense, sparse)`` calibration batch from a ``D.npz`` file (labels ignored): the first
    ``max_requests`` requests, or all."""
    d = load_dataset(path, spec)
    if max_requests is not None:
        d = d.take(slice(0, max_requests))
    return d.dense, d.sparse
