"""Whole-model inference: the float32 reference and the bit-exact integer golden model.

:func:`float_forward` is the accuracy reference (float32 numpy, the same maths as PyTorch's
``nn.EmbeddingBag(mode="sum")`` + ``nn.Linear`` + ReLU + sigmoid). :func:`golden_forward` composes
the numerics spec (:mod:`recfabric.host.numerics`) into integer inference, with the pooling source
injected (:class:`TablePooling` from the quantized tables, or
:class:`~recfabric.host.compiler.compiled.ImagePooling` from a compiled model's images); the
hardware must reproduce its scores with ``==``. Its stages (:func:`pool_features`,
:func:`interaction`, :func:`mlp_layer`) are public so that hardware blocks are tested against
exactly these functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import numerics as nx
from ..model.spec import Bags, ModelSpec, check_sparse
from ..model.weights import ModelWeights
from ..numerics import FixedFormat, Rounding

__all__ = [
    "Bags", "QLayer", "QuantizedTable", "QuantizedModel", "GoldenResult",
    "float_forward", "golden_forward", "pool_features", "interaction", "mlp_layer",
    "check_sparse", "TablePooling", "table_formats", "segment_formats",
]


def _check_dense(spec: ModelSpec, dense, batch: int, integer: bool):
    dense = np.asarray(dense)
    if dense.shape != (batch, spec.dense):
        raise ValueError(f"dense input must have shape ({batch}, {spec.dense}), not {dense.shape}")
    if integer and dense.dtype.kind not in "iu":
        raise TypeError(f"fixed-point dense input must be an integer array, not {dense.dtype}")
    if not integer and not np.all(np.isfinite(dense)):
        raise ValueError("dense input contains NaN or infinite values")
    return dense


# ---- float reference ---------------------------------------------------------------------

def _float_pool(table, bags: Bags) -> np.ndarray:
    m = bags.mask()
    ids = np.where(m, bags.ids, 0)
    rows = table.gather(ids.reshape(-1)).reshape(*ids.shape, table.dim)
    return (rows * m[..., None]).sum(axis=1, dtype=np.float32)


def float_forward(weights: ModelWeights, dense, sparse, *, return_logits=False, taps=None):
    """Float32 inference. Returns probabilities, shape (batch, outputs).

    ``taps``, if a dict, receives the intermediate values the quantizer calibrates on:
    ``dense_vec``, ``pooled`` (list), ``dots`` (dot interaction), ``top``, ``bottom`` and
    ``heads`` (lists of post-activation layer outputs).
    """
    taps = {} if taps is None else taps
    spec = weights.spec
    batch = sparse[0].batch if sparse else np.asarray(dense).shape[0]
    check_sparse(spec, sparse, batch)
    x = _check_dense(spec, dense, batch, integer=False).astype(np.float32)
    taps["bottom"] = []
    for layer in weights.bottom:
        x = np.maximum(x @ layer.weight.T + layer.bias, 0)
        taps["bottom"].append(x)
    pooled = [_float_pool(t, b) for t, b in zip(weights.tables, sparse)]
    taps["dense_vec"], taps["pooled"] = x, pooled
    if spec.interaction == "concat":
        z = np.concatenate([x, *pooled], axis=1) if spec.dense_out else np.concatenate(pooled, 1)
    else:
        v = np.stack([x, *pooled], axis=1)
        zz = np.einsum("bnd,bmd->bnm", v, v)
        li, lj = np.tril_indices(v.shape[1], k=-1)
        taps["dots"] = zz[:, li, lj]
        z = np.concatenate([x, zz[:, li, lj]], axis=1)

    def run(z, layers, tap, last_relu=False):
        for i, layer in enumerate(layers):
            z = z @ layer.weight.T + layer.bias
            if last_relu or i + 1 < len(layers):
                z = np.maximum(z, 0)
            tap.append(z)
        return z
    taps["top"], taps["heads"] = [], []
    if spec.heads:
        trunk = run(z, weights.top, taps["top"], last_relu=True)
        outs = []
        for h in weights.heads:
            taps["heads"].append([])
            outs.append(run(trunk, h, taps["heads"][-1]))
        logits = np.concatenate(outs, axis=1)
    else:
        logits = run(z, weights.top, taps["top"])
    logits = logits.astype(np.float32)
    probs = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    return (probs, logits) if return_logits else probs


# ---- integer golden model ----------------------------------------------------------------

class QuantizedTable:
    """An embedding table in fixed point, quantized row by row on demand."""

    def __init__(self, table, fmt: FixedFormat):
        self.table, self.fmt = table, fmt

    @property
    def rows(self):
        return self.table.rows

    @property
    def dim(self):
        return self.table.dim

    def gather(self, ids) -> np.ndarray:
        return nx.quantize(self.table.gather(ids), self.fmt)


@dataclass
class QLayer:
    """A fixed-point layer: ``out = [relu](requantize(wrap(b + x @ w.T), shift, out_fmt))``."""

    w: np.ndarray  # (out, in) int64 in w_fmt
    b: np.ndarray  # (out,) int64 in the accumulator's format (frac = in.frac + w.frac)
    in_fmt: FixedFormat
    w_fmt: FixedFormat
    out_fmt: FixedFormat
    relu: bool

    @property
    def acc_frac(self) -> int:
        return self.in_fmt.frac + self.w_fmt.frac

    @property
    def shift(self) -> int:
        return self.acc_frac - self.out_fmt.frac

    @property
    def shape(self):
        return self.w.shape[1], self.w.shape[0]

    def to_json(self) -> dict:
        return {"in": self.shape[0], "out": self.shape[1], "in_fmt": self.in_fmt.to_json(),
                "w_fmt": self.w_fmt.to_json(), "out_fmt": self.out_fmt.to_json(),
                "relu": self.relu, "shift": self.shift}


@dataclass
class QuantizedModel:
    """Everything the integer golden model (and the hardware) computes with.

    ``emb_fmt`` is the format of every embedding table and of the whole concatenated vector
    (pooled embeddings, and the dense part: raw dense inputs or the bottom MLP's output).
    ``dense_fmt`` is the format dense inputs arrive in (equal to ``emb_fmt`` without a bottom
    MLP).

    Per-table formats (``segment_fmts`` set): every segment of the
    concatenated vector (the dense part if any, then each table in feature order) has its own
    format, ``segment_fmts[s]``, and each table's rows are quantized in it
    (``tables[i].fmt``). The first top layer's weight columns of segment ``s`` are then integers
    in frac ``acc_frac - segment_fmts[s].frac``, so that every product lands in the one
    accumulator format; its ``in_fmt`` and ``w_fmt`` are the nominal pair of the finest segment,
    and ``emb_fmt`` is that segment's format. Integer arithmetic is unchanged (pooling saturates
    by width only, which every segment shares), so the hardware runs such a model as it is.
    Dot interaction (golden model only): ``segment_fmts`` are the formats of the interacting
    vectors (dense vector, then each table); pair (i, j) requantizes with shift
    ``frac_i + frac_j - interaction_fmt.frac``.
    """

    spec: ModelSpec
    bits: int
    acc_bits: int
    emb_fmt: FixedFormat
    dense_fmt: FixedFormat
    tables: list
    bottom: list
    top: list
    heads: list = field(default_factory=list)
    interaction_fmt: FixedFormat | None = None  # dot interaction: the top MLP's input format
    rounding: Rounding = Rounding.HALF_UP
    segment_fmts: list | None = None  # per-table formats of the concat segments, or None

    def quantize_dense(self, dense) -> np.ndarray:
        return nx.quantize(dense, self.dense_fmt)

    def table_fmts(self) -> list:
        """Each embedding table's format (per feature): its segment's, or ``emb_fmt``."""
        return table_formats(self.spec, self.emb_fmt, self.segment_fmts)

    def formats_json(self) -> dict:
        return {
            "bits": self.bits, "acc_bits": self.acc_bits, "rounding": self.rounding.value,
            "emb_fmt": self.emb_fmt.to_json(), "dense_fmt": self.dense_fmt.to_json(),
            "interaction_fmt": self.interaction_fmt.to_json() if self.interaction_fmt else None,
            "bottom": [l.to_json() for l in self.bottom],
            "top": [l.to_json() for l in self.top],
            "heads": [[l.to_json() for l in h] for h in self.heads],
            "segment_fmts": ([f.to_json() for f in self.segment_fmts]
                             if self.segment_fmts is not None else None),
        }


def table_formats(spec: ModelSpec, emb_fmt: FixedFormat, segment_fmts) -> list:
    """Per-feature table formats of a model with these formats (``segment_fmts`` None: all
    ``emb_fmt``; else the trailing ``len(spec.sparse)`` segments, the tables')."""
    n = len(spec.sparse)
    if segment_fmts is None:
        return [emb_fmt] * n
    return list(segment_fmts)[len(segment_fmts) - n:]


def segment_formats(formats: dict):
    """``segment_fmts`` of a :meth:`QuantizedModel.formats_json` dict (None when absent)."""
    seg = formats.get("segment_fmts")
    return None if seg is None else [FixedFormat.from_json(f) for f in seg]


@dataclass
class GoldenResult:
    scores: np.ndarray  # (batch, outputs) unsigned Q0.16 integers
    logits: np.ndarray  # (batch, outputs) integers in SIGMOID_IN
    pooled: list  # per feature (batch, dim) integers in emb_fmt
    features: np.ndarray  # (batch, interaction_width) top-MLP input integers

    @property
    def probabilities(self) -> np.ndarray:
        return self.scores.astype(np.float64) / (1 << nx.SCORE_FRAC)


class TablePooling:
    """Pooling source of :func:`golden_forward`: rows gathered from per-feature integer tables.

    Parameters
    ----------
    tables : list
        One table per sparse feature with ``gather(ids)`` returning integer rows
        (:class:`QuantizedTable`).
    """

    def __init__(self, tables):
        if tables is None:
            raise ValueError("pooling from tables needs the quantized tables; this model has "
                             "none (a compiled model pools from its images: ImagePooling)")
        self.tables = tables

    def __call__(self, sparse, emb_fmt: FixedFormat) -> list:
        """Per feature, ``(batch, dim)`` sum-pooled integers in ``emb_fmt``."""
        out = []
        for t, bags in zip(self.tables, sparse):
            m = bags.mask()
            ids = np.where(m, bags.ids, 0)
            rows = t.gather(ids.reshape(-1)).reshape(*ids.shape, t.dim) * m[..., None]
            # Saturation depends on the width only, which every table's format shares
            # (per-table formats differ in frac only).
            out.append(nx.pool_sum(rows, emb_fmt, axis=1))
        return out


def pool_features(qm: QuantizedModel, sparse) -> list:
    """Sum-pool each feature's bag from ``qm.tables`` (numerics spec: exact sum, one
    saturation)."""
    return TablePooling(qm.tables)(sparse, qm.emb_fmt)


def mlp_layer(layer: QLayer, x, acc_bits: int, rounding: Rounding = Rounding.HALF_UP):
    acc = nx.mac(x, layer.w, acc_bits, bias=layer.b)
    y = nx.requantize(acc, layer.shift, layer.out_fmt, rounding)
    return nx.relu(y) if layer.relu else y


def _mlp(qm, x, layers):
    for layer in layers:
        x = mlp_layer(layer, x, qm.acc_bits, qm.rounding)
    return x


def interaction(qm: QuantizedModel, dense_vec, pooled) -> np.ndarray:
    """Top-MLP input: concatenation, or DLRM dot interaction (golden model only)."""
    spec = qm.spec
    if spec.interaction == "concat":
        parts = ([dense_vec] if spec.dense_out else []) + list(pooled)
        return np.concatenate(parts, axis=1)
    # Dot interaction: the dense vector and the pairwise dots are both brought to the top
    # MLP's input format, interaction_fmt, so that the first layer sees one format. With
    # per-table formats each vector has its own format and each pair its own shift.
    out = qm.interaction_fmt
    n = len(pooled) + 1
    fmts = list(qm.segment_fmts) if qm.segment_fmts is not None else [qm.emb_fmt] * n
    dv = nx.requantize(dense_vec, fmts[0].frac - out.frac, out, qm.rounding)
    v = np.stack([dense_vec, *pooled], axis=1)
    li, lj = np.tril_indices(n, k=-1)
    shifts = [fmts[i].frac + fmts[j].frac - out.frac for i, j in zip(li, lj)]
    shift = shifts[0] if len(set(shifts)) == 1 else shifts
    dots = nx.dot_interaction(v, qm.acc_bits, shift, out, qm.rounding)
    return np.concatenate([dv, dots], axis=1)


def golden_forward(qm: QuantizedModel, dense_q, sparse, *, pool=None) -> GoldenResult:
    """Bit-exact integer inference: the one golden model.

    Parameters
    ----------
    qm : QuantizedModel
    dense_q : int array (batch, dense)
        Dense inputs in ``qm.dense_fmt``; values outside the format are refused.
    sparse : list of Bags
    pool : callable, optional
        The pooling source, ``pool(sparse, emb_fmt) -> [per-feature (batch, dim) ints]``:
        :class:`TablePooling` over ``qm.tables`` by default, or
        :class:`~recfabric.host.compiler.compiled.ImagePooling`, which fetches rows from a
        compiled model's images through its descriptors (merged tables and shards included), so
        that an equal result proves the layout right.

    Returns
    -------
    GoldenResult
    """
    spec = qm.spec
    batch = sparse[0].batch if sparse else np.asarray(dense_q).shape[0]
    check_sparse(spec, sparse, batch)
    x = _check_dense(spec, dense_q, batch, integer=True).astype(np.int64)
    f = qm.dense_fmt
    if x.size and (x.min() < f.min_int or x.max() > f.max_int):
        raise ValueError(f"fixed-point dense input outside the dense format {f} "
                         f"({f.min_int}..{f.max_int})")
    dense_vec = _mlp(qm, x, qm.bottom)
    pool = TablePooling(qm.tables) if pool is None else pool
    pooled = pool(sparse, qm.emb_fmt)
    z = interaction(qm, dense_vec, pooled)
    if spec.heads:
        trunk = _mlp(qm, z, qm.top)
        logits = np.concatenate([_mlp(qm, trunk, h) for h in qm.heads], axis=1)
    else:
        logits = _mlp(qm, z, qm.top)
    return GoldenResult(nx.sigmoid_lookup(logits), logits, pooled, z)
