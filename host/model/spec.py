"""Model specification: what a recommendation model looks like, independent of any weights.

A :class:`ModelSpec` names the sparse features (one embedding table each: rows, dim, bag size;
sum pooling), the dense feature count, an optional bottom MLP on the dense features, the
interaction (``concat`` or DLRM's pairwise ``dot``), the top MLP and optional multi-task heads.
Every model ends in a sigmoid per output.

Layer lists hold *output* widths; a layer's input width follows from the previous stage (the
dense count for the bottom MLP, the interaction width for the top MLP, the trunk's last width for
each head). Every layer is followed by ReLU except the last layer of each output path, which
feeds the sigmoid. The published shape strings (``352-1024-512-256-1``) include the input width;
:meth:`ModelSpec.shape_string` prints that form.

Specs load and save as JSON; construction validates every field and names the bad one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SparseFeature", "ModelSpec", "SpecError", "Bags", "check_sparse"]

INTERACTIONS = ("concat", "dot")


class SpecError(ValueError):
    """A model specification is malformed; the message names the field and the value."""


def _check_int(where: str, value, *, minimum: int = 1):
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"{where} must be an integer, not {value!r}")
    if value < minimum:
        raise SpecError(f"{where} must be at least {minimum}, not {value}")


@dataclass(frozen=True)
class SparseFeature:
    """One categorical feature and its embedding table.

    Parameters
    ----------
    name : str
        Unique feature name.
    rows : int
        Table rows (category cardinality); valid IDs are ``0 .. rows-1``.
    dim : int
        Embedding width (elements per row).
    bag : int
        Maximum IDs per request. 1 = one-hot (exactly one ID); >1 = multi-hot (0..bag IDs,
        sum-pooled).
    """

    name: str
    rows: int
    dim: int
    bag: int = 1

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"sparse feature name must be a non-empty string, not {self.name!r}")
        _check_int(f"sparse feature {self.name!r}: rows", self.rows)
        _check_int(f"sparse feature {self.name!r}: dim", self.dim)
        _check_int(f"sparse feature {self.name!r}: bag", self.bag)

    @property
    def multi_hot(self) -> bool:
        return self.bag > 1

    def to_json(self) -> dict:
        return {"name": self.name, "rows": self.rows, "dim": self.dim, "bag": self.bag}


@dataclass(frozen=True)
class ModelSpec:
    """A recommendation model's shape. See the module docstring for the conventions.

    Parameters
    ----------
    name : str
    sparse : tuple of SparseFeature
    dense : int
        Number of dense (continuous) input features; may be 0.
    bottom_mlp : tuple of int
        Output widths of the bottom MLP on the dense features (empty: dense features go to the
        interaction as they are).
    interaction : str
        ``"concat"`` (MicroRec, WnD) or ``"dot"`` (DLRM: pairwise dot products of the bottom
        MLP output and every pooled embedding, concatenated with the bottom output).
    top_mlp : tuple of int
        Output widths of the top MLP. Without heads, the last width is 1 (the logit).
    heads : tuple of tuple of int
        Multi-task heads: each is a list of output widths ending in 1, fed by the top MLP's
        output (the shared trunk). Empty for single-task models.
    unmodelled : tuple of str
        Parts of the published model this spec does not express (attention, GRUs, wide parts),
        stated honestly. The golden model and the hardware compute the spec as given; running the
        published model in full needs these too.
    description : str
    """

    name: str
    sparse: tuple = ()
    dense: int = 0
    bottom_mlp: tuple = ()
    interaction: str = "concat"
    top_mlp: tuple = (1,)
    heads: tuple = ()
    unmodelled: tuple = ()
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "sparse", tuple(self.sparse))
        object.__setattr__(self, "bottom_mlp", tuple(self.bottom_mlp))
        object.__setattr__(self, "top_mlp", tuple(self.top_mlp))
        object.__setattr__(self, "heads", tuple(tuple(h) for h in self.heads))
        object.__setattr__(self, "unmodelled", tuple(self.unmodelled))
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"model name must be a non-empty string, not {self.name!r}")
        for i, f in enumerate(self.sparse):
            if not isinstance(f, SparseFeature):
                raise SpecError(f"sparse[{i}] must be a SparseFeature, not {f!r}")
        names = [f.name for f in self.sparse]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SpecError(f"sparse feature names must be unique; repeated: {', '.join(dup)}")
        _check_int("dense", self.dense, minimum=0)
        if not self.sparse and self.dense == 0:
            raise SpecError("a model needs at least one sparse or dense feature")
        for i, w in enumerate(self.bottom_mlp):
            _check_int(f"bottom_mlp[{i}]", w)
        if self.bottom_mlp and self.dense == 0:
            raise SpecError("bottom_mlp is set but dense is 0: a bottom MLP needs dense features")
        if self.interaction not in INTERACTIONS:
            raise SpecError(
                f"interaction must be one of {', '.join(INTERACTIONS)}, not {self.interaction!r}")
        if not self.top_mlp:
            raise SpecError("top_mlp must have at least one layer")
        for i, w in enumerate(self.top_mlp):
            _check_int(f"top_mlp[{i}]", w)
        for h, head in enumerate(self.heads):
            if not head:
                raise SpecError(f"heads[{h}] must have at least one layer")
            for i, w in enumerate(head):
                _check_int(f"heads[{h}][{i}]", w)
            if head[-1] != 1:
                raise SpecError(f"heads[{h}] must end in one output (the logit), not {head[-1]}")
        if not self.heads and self.top_mlp[-1] != 1:
            raise SpecError(
                f"top_mlp must end in one output (the logit), not {self.top_mlp[-1]}; "
                "use heads for multi-task models")
        if self.interaction == "dot":
            d = self.bottom_mlp[-1] if self.bottom_mlp else self.dense
            bad = [f"{f.name} (dim {f.dim})" for f in self.sparse if f.dim != d]
            if bad:
                raise SpecError(
                    f"dot interaction needs every embedding dim equal to the dense vector's "
                    f"width {d}; differing: {', '.join(bad[:5])}")
            if d == 0:
                raise SpecError("dot interaction needs a dense vector (dense or bottom_mlp)")

    # ---- derived shape -------------------------------------------------------------------

    @property
    def dense_out(self) -> int:
        """Width of the dense part entering the interaction (bottom MLP output or raw dense)."""
        return self.bottom_mlp[-1] if self.bottom_mlp else self.dense

    @property
    def embedding_width(self) -> int:
        return sum(f.dim for f in self.sparse)

    @property
    def interaction_width(self) -> int:
        """Width of the top MLP's input vector."""
        if self.interaction == "concat":
            return self.dense_out + self.embedding_width
        n = len(self.sparse) + 1
        return self.dense_out + n * (n - 1) // 2

    @property
    def num_outputs(self) -> int:
        return len(self.heads) if self.heads else 1

    def layer_shapes(self) -> dict:
        """``{"bottom": [(in, out), ...], "top": [...], "heads": [[...], ...]}``."""
        def chain(n_in, widths):
            out = []
            for w in widths:
                out.append((n_in, w))
                n_in = w
            return out
        return {
            "bottom": chain(self.dense, self.bottom_mlp),
            "top": chain(self.interaction_width, self.top_mlp),
            "heads": [chain(self.top_mlp[-1], h) for h in self.heads],
        }

    def macs_per_inference(self) -> int:
        s = self.layer_shapes()
        layers = s["bottom"] + s["top"] + [l for h in s["heads"] for l in h]
        macs = sum(i * o for i, o in layers)
        if self.interaction == "dot":
            n = len(self.sparse) + 1
            macs += n * (n - 1) // 2 * self.dense_out
        return macs

    def lookups_per_inference(self) -> int:
        return sum(f.bag for f in self.sparse)

    def table_bytes(self, element_bytes: int) -> int:
        return sum(f.rows * f.dim * element_bytes for f in self.sparse)

    def shape_string(self) -> str:
        s = [self.interaction_width, *self.top_mlp]
        text = "-".join(map(str, s))
        if self.heads:
            text += " | heads " + ", ".join("-".join(map(str, h)) for h in self.heads)
        return text

    def hardware_blockers(self) -> list[str]:
        """What this spec needs that the RecFabric hardware does not implement (empty: none)."""
        out = []
        if self.interaction not in ("concat", "dot"):
            out.append(f"{self.interaction} interaction (hardware implements concat and dot)")
        if len({len(h) for h in self.heads}) > 1:
            out.append("multi-task heads of different depths (the kernel runs the heads as one "
                       "block-diagonal layer per depth)")
        return out

    def require_hardware_support(self):
        """Raise :class:`SpecError` naming every unsupported part, for hardware-facing code."""
        blockers = self.hardware_blockers()
        if blockers:
            raise SpecError(
                f"model {self.name!r} cannot run on RecFabric hardware: " + "; ".join(blockers))

    # ---- JSON --------------------------------------------------------------------------

    def to_json(self) -> dict:
        out = {
            "name": self.name,
            "description": self.description,
            "sparse": [f.to_json() for f in self.sparse],
            "dense": self.dense,
            "bottom_mlp": list(self.bottom_mlp),
            "interaction": self.interaction,
            "top_mlp": list(self.top_mlp),
        }
        if self.heads:
            out["heads"] = [list(h) for h in self.heads]
        if self.unmodelled:
            out["unmodelled"] = list(self.unmodelled)
        return out

    @classmethod
    def from_json(cls, obj) -> ModelSpec:
        if not isinstance(obj, dict):
            raise SpecError(f"a model spec must be a JSON object, not {type(obj).__name__}")
        known = {"name", "description", "sparse", "dense", "bottom_mlp", "interaction", "top_mlp",
                 "heads", "unmodelled", "output"}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise SpecError(f"unknown model spec field(s): {', '.join(unknown)}")
        if obj.get("output", "sigmoid") != "sigmoid":
            raise SpecError(f"output must be 'sigmoid', not {obj['output']!r}")
        sparse = []
        for i, f in enumerate(obj.get("sparse", [])):
            if not isinstance(f, dict):
                raise SpecError(f"sparse[{i}] must be an object, not {f!r}")
            extra = sorted(set(f) - {"name", "rows", "dim", "bag", "count"})
            if extra:
                raise SpecError(f"sparse[{i}]: unknown field(s) {', '.join(extra)}")
            for key in ("rows", "dim"):
                if key not in f:
                    raise SpecError(f"sparse[{i}]: missing field {key!r}")
            count = f.get("count", 1)
            _check_int(f"sparse[{i}].count", count)
            base = f.get("name", f"f{i}")
            for k in range(count):
                sparse.append(SparseFeature(
                    name=base if count == 1 else f"{base}_{k}",
                    rows=f["rows"], dim=f["dim"], bag=f.get("bag", 1)))
        if "name" not in obj:
            raise SpecError("missing field 'name'")
        return cls(
            name=obj["name"],
            description=obj.get("description", ""),
            sparse=tuple(sparse),
            dense=obj.get("dense", 0),
            bottom_mlp=tuple(obj.get("bottom_mlp", ())),
            interaction=obj.get("interaction", "concat"),
            top_mlp=tuple(obj.get("top_mlp", (1,))),
            heads=tuple(tuple(h) for h in obj.get("heads", ())),
            unmodelled=tuple(obj.get("unmodelled", ())),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    def save(self, path):
        Path(path).write_text(self.dumps() + "\n")

    @classmethod
    def loads(cls, text: str) -> ModelSpec:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"model spec is not valid JSON: {e}") from None
        return cls.from_json(obj)

    @classmethod
    def load(cls, path) -> ModelSpec:
        return cls.loads(Path(path).read_text())

    def summary(self) -> str:
        multi = sum(f.multi_hot for f in self.sparse)
        gib = self.table_bytes(2) / 2**30
        bottom = "-".join(map(str, [self.dense, *self.bottom_mlp]))
        return (f"{len(self.sparse)} sparse ({multi} multi-hot), {self.dense} dense, "
                f"{'bottom ' + bottom + ', ' if self.bottom_mlp else ''}"
                f"{self.interaction}, top {self.shape_string()}, "
                f"{sum(f.rows for f in self.sparse):,} rows ({gib:.2f} GiB at int16), "
                f"{self.macs_per_inference():,} MACs")


# ---- a batch's sparse inputs -------------------------------------------------------------

@dataclass
class Bags:
    """IDs of one sparse feature for a batch: ``ids[b, :lengths[b]]`` are request b's IDs."""

    ids: np.ndarray  # (batch, max_bag) int64; entries past the length are ignored
    lengths: np.ndarray  # (batch,) int64

    @classmethod
    def one_hot(cls, ids) -> Bags:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1, 1)
        return cls(ids, np.ones(len(ids), dtype=np.int64))

    @property
    def batch(self) -> int:
        return len(self.lengths)

    def mask(self) -> np.ndarray:
        return np.arange(self.ids.shape[1])[None, :] < self.lengths[:, None]


def check_sparse(spec: ModelSpec, sparse, batch: int):
    """Validate a batch's sparse inputs against the spec; errors name the feature and request."""
    if len(sparse) != len(spec.sparse):
        raise ValueError(f"{len(sparse)} sparse features given, model has {len(spec.sparse)}")
    for f, bags in zip(spec.sparse, sparse):
        if not isinstance(bags, Bags):
            raise TypeError(f"feature {f.name!r}: expected Bags, not {type(bags).__name__}")
        ids, lengths = np.asarray(bags.ids), np.asarray(bags.lengths)
        if ids.dtype.kind not in "iu" or lengths.dtype.kind not in "iu":
            raise TypeError(f"feature {f.name!r}: IDs and lengths must be integer arrays, not "
                            f"{ids.dtype} / {lengths.dtype}")
        if ids.ndim != 2 or ids.shape[0] != batch or lengths.shape != (batch,):
            raise ValueError(f"feature {f.name!r}: IDs must have shape ({batch}, bag) and lengths "
                             f"({batch},), not {ids.shape} / {lengths.shape}")
        lo = 1 if f.bag == 1 else 0
        bad = np.flatnonzero((lengths < lo) | (lengths > min(f.bag, ids.shape[1])))
        if bad.size:
            b = int(bad[0])
            raise ValueError(f"feature {f.name!r}, request {b}: bag of {int(lengths[b])} IDs, "
                             f"allowed {lo}..{f.bag}")
        m = bags.mask()
        badm = m & ((ids < 0) | (ids >= f.rows))
        if badm.any():
            b, k = map(int, np.argwhere(badm)[0])
            raise ValueError(f"feature {f.name!r}, request {b}: ID {int(ids[b, k])} out of range "
                             f"0..{f.rows - 1}")
