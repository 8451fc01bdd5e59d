"""Float model weights: embedding tables and MLP layers, synthetic or imported.

Embedding tables are objects with ``rows``, ``dim``, ``gather(ids)`` and ``max_abs()``, so a
table of ten million rows need not exist in memory: :class:`HashedTable` computes any row on
demand from a counter-based hash (the same bytes on every machine), :class:`ArrayTable` wraps a
numpy array (imported or trained weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .spec import ModelSpec, SpecError

__all__ = ["ArrayTable", "HashedTable", "Layer", "ModelWeights", "random_weights"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


class ArrayTable:
    """An embedding table held as a float32 array of shape (rows, dim)."""

    def __init__(self, values):
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
            raise ValueError(f"embedding table must be a non-empty 2-D array, not shape "
                             f"{values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError("embedding table contains NaN or infinite values")
        self.values = values

    @property
    def rows(self) -> int:
        return self.values.shape[0]

    @property
    def dim(self) -> int:
        return self.values.shape[1]

    def gather(self, ids) -> np.ndarray:
        return self.values[np.asarray(ids, dtype=np.int64)]

    def max_abs(self) -> float:
        return float(np.max(np.abs(self.values)))


class HashedTable:
    """A synthetic table whose element (r, c) is uniform in [-scale, scale), computed on demand.

    Same ``seed`` -> same values, independent of which rows are asked for or in what order.
    """

    def __init__(self, rows: int, dim: int, seed: int, scale: float):
        self.rows, self.dim, self.seed, self.scale = int(rows), int(dim), int(seed), float(scale)

    def gather(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.rows):
            raise IndexError(f"row index out of range 0..{self.rows - 1}")
        key = (ids.astype(np.uint64)[..., None] * np.uint64(self.dim)
               + np.arange(self.dim, dtype=np.uint64))
        with np.errstate(over="ignore"):
            h = _splitmix64(key ^ _splitmix64(np.uint64(self.seed) + np.zeros(1, np.uint64)))
        u = (h >> np.uint64(40)).astype(np.float64) / float(1 << 24)  # [0, 1), 24 bits
        return ((2.0 * u - 1.0) * self.scale).astype(np.float32)

    def max_abs(self) -> float:
        return self.scale


@dataclass
class Layer:
    """A fully connected layer: ``y = x @ weight.T + bias`` (``nn.Linear`` convention)."""

    weight: np.ndarray  # (out, in) float32
    bias: np.ndarray  # (out,) float32

    def __post_init__(self):
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32)
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"layer weight {self.weight.shape} and bias {self.bias.shape} "
                             "do not match")
        if not (np.all(np.isfinite(self.weight)) and np.all(np.isfinite(self.bias))):
            raise ValueError("layer weights contain NaN or infinite values")

    @property
    def shape(self):
        """(in, out)"""
        return self.weight.shape[1], self.weight.shape[0]


@dataclass
class ModelWeights:
    """Float weights of a :class:`ModelSpec`, checked against it on construction."""

    spec: ModelSpec
    tables: list
    bottom: list = field(default_factory=list)
    top: list = field(default_factory=list)
    heads: list = field(default_factory=list)

    def __post_init__(self):
        s = self.spec
        if len(self.tables) != len(s.sparse):
            raise SpecError(f"{len(self.tables)} tables given for {len(s.sparse)} sparse features")
        for t, f in zip(self.tables, s.sparse):
            if (t.rows, t.dim) != (f.rows, f.dim):
                raise SpecError(f"table for {f.name!r} is {t.rows} x {t.dim}, spec says "
                                f"{f.rows} x {f.dim}")
        shapes = s.layer_shapes()

        def check(kind, layers, want):
            if len(layers) != len(want):
                raise SpecError(f"{len(layers)} {kind} layers given, spec has {len(want)}")
            for i, (layer, w) in enumerate(zip(layers, want)):
                if layer.shape != w:
                    raise SpecError(f"{kind} layer {i} is {layer.shape[0]}->{layer.shape[1]}, "
                                    f"spec says {w[0]}->{w[1]}")
        check("bottom", self.bottom, shapes["bottom"])
        check("top", self.top, shapes["top"])
        if len(self.heads) != len(shapes["heads"]):
            raise SpecError(f"{len(self.heads)} heads given, spec has {len(shapes['heads'])}")
        for h, (layers, want) in enumerate(zip(self.heads, shapes["heads"])):
            check(f"head {h}", layers, want)

    def save(self, path):
        """Save as .npz (tables materialized: only sensible for small tables)."""
        arrays = {}
        for i, t in enumerate(self.tables):
            arrays[f"table{i}"] = t.gather(np.arange(t.rows))
        for kind in ("bottom", "top"):
            for i, layer in enumerate(getattr(self, kind)):
                arrays[f"{kind}{i}_w"], arrays[f"{kind}{i}_b"] = layer.weight, layer.bias
        for h, layers in enumerate(self.heads):
            for i, layer in enumerate(layers):
                arrays[f"head{h}_{i}_w"], arrays[f"head{h}_{i}_b"] = layer.weight, layer.bias
        np.savez(path, spec=np.frombuffer(self.spec.dumps().encode(), np.uint8), **arrays)

    @classmethod
    def load(cls, path) -> ModelWeights:
        with np.load(path) as z:
            spec = ModelSpec.loads(bytes(z["spec"]).decode())
            shapes = spec.layer_shapes()
            tables = [ArrayTable(z[f"table{i}"]) for i in range(len(spec.sparse))]

            def layers(prefix, n):
                return [Layer(z[f"{prefix}{i}_w"], z[f"{prefix}{i}_b"]) for i in range(n)]
            return cls(spec, tables, layers("bottom", len(shapes["bottom"])),
                       layers("top", len(shapes["top"])),
                       [layers(f"head{h}_", len(hs)) for h, hs in enumerate(shapes["heads"])])


def _random_layer(rng, n_in, n_out, gain):
    bound = gain * np.sqrt(6.0 / (n_in + n_out))
    return Layer(rng.uniform(-bound, bound, size=(n_out, n_in)),
                 rng.uniform(-0.1, 0.1, size=n_out))


def random_weights(spec: ModelSpec, seed: int = 0, logit_std: float | None = 1.5,
                   logit_mean: float = -1.0) -> ModelWeights:
    """Deterministic synthetic weights for a spec.

    Tables are :class:`HashedTable` (uniform, bound ``min(0.5, 1/sqrt(dim))``), layers Glorot-
    uniform with a ReLU gain. The last layer of each output path is then rescaled so that, on a
    synthetic Zipf-skewed batch, logits have mean ``logit_mean`` and standard deviation
    ``logit_std``: scores spread like a click-through-rate model's (positive rate about 0.3), so
    that AUC and log-loss comparisons are meaningful rather than all scores sitting near 0.5.
    ``logit_std=None`` skips the rescaling (and the float inference it takes: seconds for the
    largest zoo models), for uses that need weights of the right shapes only.
    """
    from ..reference.golden import float_forward  # noqa: PLC0415 (golden imports this module)
    from .synthetic import synthetic_batch  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    tables = [HashedTable(f.rows, f.dim, seed * 1_000_003 + i, min(0.5, 1.0 / np.sqrt(f.dim)))
              for i, f in enumerate(spec.sparse)]
    shapes = spec.layer_shapes()

    def chain(pairs):
        return [_random_layer(rng, i, o, np.sqrt(2.0) if k + 1 < len(pairs) else 1.0)
                for k, (i, o) in enumerate(pairs)]
    w = ModelWeights(spec, tables, chain(shapes["bottom"]), chain(shapes["top"]),
                     [chain(h) for h in shapes["heads"]])
    if logit_std is None:
        return w
    dense, sparse = synthetic_batch(spec, 512, seed=seed + 12345)
    _, logits = float_forward(w, dense, sparse, return_logits=True)
    finals = [h[-1] for h in w.heads] if w.heads else [w.top[-1]]
    for k, layer in enumerate(finals):
        z = logits[:, k].astype(np.float64)
        a = logit_std / max(float(z.std()), 1e-6)
        layer.weight = (layer.weight * a).astype(np.float32)
        layer.bias = (layer.bias * a + (logit_mean - a * z.mean())).astype(np.float32)
    return w
