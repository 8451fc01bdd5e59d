"""PyTorch import and export: ``nn.EmbeddingBag(mode="sum")`` + ``nn.Linear`` models <-> weights.

:class:`RecModel` is the reference PyTorch module of a
:class:`~recfabric.host.model.spec.ModelSpec`: one ``nn.EmbeddingBag(rows, dim, mode="sum")`` per
sparse feature (``embeddings``), ``nn.Linear`` layers for the bottom MLP (``bottom``), the top MLP
(``top``) and each multi-task head (``heads``), ReLU after every layer except the last of each
output path, concatenation or DLRM's pairwise dot interaction, and a sigmoid. It computes what
:func:`recfabric.host.reference.golden.float_forward` computes, in float32.

:func:`to_torch` turns :class:`~recfabric.host.model.weights.ModelWeights` into a ``RecModel``;
:func:`from_torch` reads weights back from a ``RecModel`` or from any module built from the same
parts, inferring the spec from the layers when none is given (see :func:`from_torch` for the
rules). Weights are float32 on both sides, so a round trip is exact.

PyTorch is an optional dependency (``pip install 'recfabric[torch]'``, the CPU build 2.13.0): it
is imported when a function here is first called, and ``RecModel`` is created on first access.
"""

from __future__ import annotations

import numpy as np

from .spec import Bags, ModelSpec, SparseFeature, SpecError, check_sparse
from .weights import ArrayTable, Layer, ModelWeights

# RecModel subclasses nn.Module, so it is created on first access (module __getattr__ below).
__all__ = ["RecModel", "to_torch", "from_torch", "bags_to_torch", "require_torch"]  # noqa: F822

_TABLE_CHUNK_ROWS = 1 << 18  # rows materialized at a time when exporting a computed table
#: Largest probability difference :func:`from_torch`'s forward check accepts.
CHECK_TOLERANCE = 1e-5
#: Synthetic requests the forward check runs when no sample is given.
CHECK_REQUESTS = 64


def require_torch():
    """Import and return :mod:`torch`, or raise ``ImportError`` saying how to install it."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "PyTorch import/export needs PyTorch, an optional dependency of RecFabric; install "
            "it with `pip install 'recfabric[torch]'` (torch==2.13.0, the CPU build)") from e
    return torch


def bags_to_torch(bags: Bags):
    """``(indices, offsets)`` int64 tensors for ``nn.EmbeddingBag`` from one feature's
    :class:`~recfabric.host.model.spec.Bags` (request b's IDs are
    ``indices[offsets[b]:offsets[b+1]]``; IDs past each length are dropped)."""
    torch = require_torch()
    ids = np.asarray(bags.ids, dtype=np.int64)
    lengths = np.asarray(bags.lengths, dtype=np.int64)
    indices = ids[bags.mask()]
    offsets = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return torch.from_numpy(indices), torch.from_numpy(offsets)


_REC_MODEL = None


def _rec_model_class():
    global _REC_MODEL
    if _REC_MODEL is not None:
        return _REC_MODEL
    torch = require_torch()
    nn = torch.nn

    class RecModel(nn.Module):
        """The reference PyTorch module of a :class:`ModelSpec` (float32, randomly initialised
        by PyTorch's defaults unless built by :func:`to_torch`).

        Parameters
        ----------
        spec : ModelSpec

        Members
        -------
        spec : ModelSpec
        embeddings : nn.ModuleList of nn.EmbeddingBag
            One per sparse feature, ``mode="sum"``.
        bottom, top : nn.ModuleList of nn.Linear
        heads : nn.ModuleList of nn.ModuleList of nn.Linear
        """

        def __init__(self, spec: ModelSpec):
            super().__init__()
            if not isinstance(spec, ModelSpec):
                raise TypeError(f"RecModel needs a ModelSpec, not {type(spec).__name__}")
            self.spec = spec
            shapes = spec.layer_shapes()
            self.embeddings = nn.ModuleList(
                nn.EmbeddingBag(f.rows, f.dim, mode="sum") for f in spec.sparse)
            self.bottom = nn.ModuleList(nn.Linear(i, o) for i, o in shapes["bottom"])
            self.top = nn.ModuleList(nn.Linear(i, o) for i, o in shapes["top"])
            self.heads = nn.ModuleList(
                nn.ModuleList(nn.Linear(i, o) for i, o in h) for h in shapes["heads"])
            li, lj = np.tril_indices(len(spec.sparse) + 1, k=-1)  # DLRM's pair order
            self.register_buffer("_pairs", torch.from_numpy(np.stack([li, lj])),
                                 persistent=False)

        def _inputs(self, dense, sparse):
            spec = self.spec
            if len(sparse) != len(spec.sparse):
                raise ValueError(f"{len(sparse)} sparse features given, model has "
                                 f"{len(spec.sparse)}")
            as_bags = [s for s in sparse if isinstance(s, Bags)]
            if as_bags and len(as_bags) != len(sparse):
                raise TypeError("sparse inputs must be all Bags or all (indices, offsets) pairs")
            if as_bags:
                check_sparse(spec, sparse, as_bags[0].batch)
                sparse = [bags_to_torch(b) for b in sparse]
            if not torch.is_tensor(dense):
                dense = torch.from_numpy(np.asarray(dense, dtype=np.float32))
            dense = dense.to(torch.float32)
            if dense.ndim != 2 or dense.shape[1] != spec.dense:
                raise ValueError(f"dense input must have shape (batch, {spec.dense}), not "
                                 f"{tuple(dense.shape)}")
            return dense, sparse

        def logits(self, dense, sparse):
            """Logits, shape (batch, outputs).

            Parameters
            ----------
            dense : tensor or array, shape (batch, spec.dense)
                Float dense features.
            sparse : list
                Per feature, a :class:`~recfabric.host.model.spec.Bags` or an
                ``(indices, offsets)`` pair of int64 tensors as ``nn.EmbeddingBag`` takes them.
            """
            spec = self.spec
            x, sparse = self._inputs(dense, sparse)
            for layer in self.bottom:
                x = torch.relu(layer(x))
            pooled = [emb(ind, off) for emb, (ind, off) in
                      zip(self.embeddings, sparse, strict=True)]
            if spec.interaction == "concat":
                z = torch.cat(([x] if spec.dense_out else []) + pooled, dim=1)
            else:
                v = torch.stack([x, *pooled], dim=1)
                zz = torch.bmm(v, v.transpose(1, 2))
                z = torch.cat([x, zz[:, self._pairs[0], self._pairs[1]]], dim=1)

            def run(z, layers, last_relu):
                for i, layer in enumerate(layers):
                    z = layer(z)
                    if last_relu or i + 1 < len(layers):
                        z = torch.relu(z)
                return z
            if spec.heads:
                trunk = run(z, self.top, True)
                return torch.cat([run(trunk, h, False) for h in self.heads], dim=1)
            return run(z, self.top, False)

        def forward(self, dense, sparse):
            """Probabilities, shape (batch, outputs): ``sigmoid(self.logits(dense, sparse))``."""
            return torch.sigmoid(self.logits(dense, sparse))

    RecModel.__module__ = __name__
    _REC_MODEL = RecModel
    return RecModel


def __getattr__(name):
    if name == "RecModel":
        return _rec_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- export -------------------------------------------------------------------------------------

def _materialize(table) -> np.ndarray:
    if isinstance(table, ArrayTable):
        return np.array(table.values, dtype=np.float32, copy=True)
    out = np.empty((table.rows, table.dim), np.float32)
    for start in range(0, table.rows, _TABLE_CHUNK_ROWS):
        stop = min(table.rows, start + _TABLE_CHUNK_ROWS)
        out[start:stop] = table.gather(np.arange(start, stop))
    return out


def to_torch(weights: ModelWeights):
    """A :class:`RecModel` holding ``weights`` (tables materialized row by row; a computed table
    of ``rows x dim`` takes ``4 * rows * dim`` bytes)."""
    torch = require_torch()
    if not isinstance(weights, ModelWeights):
        raise TypeError(f"to_torch needs ModelWeights, not {type(weights).__name__}")
    model = _rec_model_class()(weights.spec)
    with torch.no_grad():
        for emb, table in zip(model.embeddings, weights.tables, strict=True):
            emb.weight = torch.nn.Parameter(torch.from_numpy(_materialize(table)))

        def load(mods, layers):
            for mod, layer in zip(mods, layers, strict=True):
                mod.weight.copy_(torch.from_numpy(layer.weight))
                mod.bias.copy_(torch.from_numpy(layer.bias))
        load(model.bottom, weights.bottom)
        load(model.top, weights.top)
        for mods, layers in zip(model.heads, weights.heads, strict=True):
            load(mods, layers)
    return model


# ---- import -------------------------------------------------------------------------------------

_ALLOWED_LEAVES = ("ReLU", "Sigmoid", "Dropout", "Identity", "Flatten", "ModuleList",
                   "Sequential", "ModuleDict")


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32, copy=True)


def _layer(lin) -> Layer:
    w = _numpy(lin.weight)
    b = _numpy(lin.bias) if lin.bias is not None else np.zeros(w.shape[0], np.float32)
    return Layer(w, b)


def _check_embedding_bag(path, emb):
    if emb.mode != "sum":
        raise SpecError(f"{path}: EmbeddingBag mode must be 'sum', not {emb.mode!r}")
    if emb.padding_idx is not None:
        raise SpecError(f"{path}: EmbeddingBag padding_idx {emb.padding_idx} is not supported "
                        "(RecFabric sums every ID in a bag)")
    if emb.max_norm is not None:
        raise SpecError(f"{path}: EmbeddingBag max_norm {emb.max_norm} is not supported "
                        "(it rescales rows at lookup time)")


def _collect(torch, module):
    """``(embeddings [(path, EmbeddingBag)], bottom, top, heads or None)`` from ``module``."""
    nn = torch.nn

    def linears(container, path):
        out = []
        for name, m in container.named_modules(prefix=path):
            if isinstance(m, nn.Linear):
                out.append(m)
            elif isinstance(m, (nn.EmbeddingBag, nn.Embedding)):
                raise SpecError(f"{name}: an embedding inside an MLP is not supported")
        return out

    leaves = [(p, m) for p, m in module.named_modules() if not list(m.children())]
    embs = []
    for path, m in leaves:
        if isinstance(m, nn.EmbeddingBag):
            _check_embedding_bag(path, m)
            embs.append((path, m))
        elif isinstance(m, nn.Embedding):
            raise SpecError(f"{path}: nn.Embedding is not supported; use "
                            "nn.EmbeddingBag(mode='sum')")
        elif not isinstance(m, nn.Linear) and type(m).__name__ not in _ALLOWED_LEAVES:
            raise SpecError(f"{path}: {type(m).__name__} is not supported (a model is "
                            "nn.EmbeddingBag(mode='sum') + nn.Linear + ReLU)")
    top = getattr(module, "top", None)
    if isinstance(top, nn.Module):  # structured: the RecModel attribute names
        bottom = getattr(module, "bottom", None)
        bottom = linears(bottom, "bottom") if isinstance(bottom, nn.Module) else []
        heads = getattr(module, "heads", None)
        heads = ([linears(h, f"heads.{i}") for i, h in enumerate(heads)]
                 if isinstance(heads, nn.Module) and len(heads) else [])
        return embs, bottom, linears(top, "top"), heads
    return embs, None, [m for _, m in leaves if isinstance(m, nn.Linear)], None


def _interaction_dense(top_in, dense_out, dims, hint, every=False):
    """``(interaction, dense width)`` candidates that make the top MLP's input ``top_in`` wide:
    all of them with ``every`` (the forward check decides), else the first."""
    n = len(dims) + 1
    cands = []
    concat_dense = top_in - sum(dims) if dense_out is None else dense_out
    if dense_out is None or top_in == dense_out + sum(dims):
        if concat_dense >= 0:
            cands.append(("concat", concat_dense))
    d = dense_out if dense_out is not None else top_in - n * (n - 1) // 2
    if d >= 1 and dims and all(x == d for x in dims) and top_in == d + n * (n - 1) // 2:
        cands.append(("dot", d))
    if hint is not None:
        cands = [c for c in cands if c[0] == hint]
    if not cands:
        raise SpecError(
            f"cannot infer the interaction: the top MLP takes {top_in} inputs, the embeddings "
            f"are {sum(dims)} wide ({len(dims)} tables) and the dense part is "
            f"{'unknown' if dense_out is None else dense_out} wide; pass spec=")
    return cands if every else cands[:1]


def from_torch(module, spec: ModelSpec | None = None, *, bags=None,
               name: str = "torch", check: bool = True, sample=None, forward=None,
               tolerance: float = CHECK_TOLERANCE) -> ModelWeights:
    """Float weights (and, without ``spec``, the spec) of a PyTorch recommendation model.

    Parameters
    ----------
    module : nn.Module
        A :class:`RecModel`, or any module built from ``nn.EmbeddingBag(mode="sum")``,
        ``nn.Linear`` and ReLU (Dropout, Identity and a final Sigmoid are allowed and ignored).
    spec : ModelSpec, optional
        The model's spec. Without it: a ``RecModel``'s own spec, else one inferred from the
        layers (see Notes). With it, the tables are the module's EmbeddingBags in registration
        order and the layers its Linears in order: bottom, top, then each head.
    bags : sequence of int, optional
        Maximum bag size of each feature when the spec is inferred (default 1: one-hot), since
        an ``EmbeddingBag`` does not record it.
    name : str
        Name of an inferred spec.
    check : bool
        Run the module's own forward pass and the float reference
        (:func:`~recfabric.host.reference.golden.float_forward`) on sample inputs and refuse the
        import (:class:`SpecError` naming the largest difference and what was tried) when they
        disagree by more than ``tolerance`` in any probability. Structure alone cannot see a
        functional ``tanh``, ``per_sample_weights`` or the order of a ``torch.cat``; this check
        does. A module without a ``forward`` of its own is imported by structure only.
    sample : (dense, sparse), optional
        Inputs for the check (float dense array, list of Bags); default 64 synthetic requests.
    forward : callable, optional
        ``forward(module, dense_tensor, [(indices, offsets), ...])`` returning probabilities or
        logits, for modules not called as ``module(dense, sparse)``.
    tolerance : float
        Largest probability difference accepted (1e-5).

    Returns
    -------
    ModelWeights
        float32 copies of the module's parameters (a bias-free Linear gets zero biases).

    Notes
    -----
    Spec inference. Tables: the EmbeddingBags in registration order, named by their module
    path. Layers: if the module has ``top`` (and optionally ``bottom`` and ``heads``)
    submodules, as a ``RecModel`` has, their Linears; otherwise all Linears in registration
    order, split into a bottom and a top MLP at the first Linear whose input width is not the
    previous one's output width (the interaction joins the embeddings there). The interaction
    (``concat`` or ``dot``) and the dense count follow from the top MLP's input width; a
    module attribute ``interaction`` settles a tie, else the forward check decides (DLRM's dot
    widths can coincide with concat widths). ReLU after every layer except the last of each
    output path and a sigmoid at the end are assumed, and then verified by the forward check,
    which also accepts a concatenation that puts the dense part after the embeddings (the first
    layer's columns are reordered to RecFabric's dense-first order). Pass ``spec`` for any model
    these rules do not describe.
    """
    torch = require_torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch needs an nn.Module, not {type(module).__name__}")
    embs, bottom, top, heads = _collect(torch, module)
    own = getattr(module, "spec", None)
    if spec is None and isinstance(own, ModelSpec):
        spec = own
    if spec is not None:
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"spec must be a ModelSpec, not {type(spec).__name__}")
        flat = (bottom or []) + top + [m for h in (heads or []) for m in h]
        shapes = spec.layer_shapes()
        counts = [len(shapes["bottom"]), len(shapes["top"]), *map(len, shapes["heads"])]
        if len(flat) != sum(counts):
            raise SpecError(f"module has {len(flat)} Linear layers, spec {spec.name!r} has "
                            f"{sum(counts)}")
        layers = [_layer(m) for m in flat]
        nb, nt = counts[0], counts[1]
        head_layers, k = [], nb + nt
        for c in counts[2:]:
            head_layers.append(layers[k:k + c])
            k += c
        if len(embs) != len(spec.sparse):
            raise SpecError(f"module has {len(embs)} EmbeddingBags, spec {spec.name!r} has "
                            f"{len(spec.sparse)} sparse features")
        tables = [ArrayTable(_numpy(m.weight)) for _, m in embs]
        weights = ModelWeights(spec, tables, layers[:nb], layers[nb:nb + nt], head_layers)
        return _verified(torch, module, [weights], check, sample, forward, tolerance)

    if not top:
        raise SpecError("module has no nn.Linear layers: a model needs at least a top MLP")
    dims = [m.embedding_dim for _, m in embs]
    if bags is None:
        bags = [1] * len(embs)
    bags = list(bags)
    if len(bags) != len(embs):
        raise SpecError(f"{len(bags)} bag sizes given for {len(embs)} EmbeddingBags")
    hint = getattr(module, "interaction", None)
    if bottom is None:  # flat: split at the first width break
        split = next((i for i in range(1, len(top))
                      if top[i].in_features != top[i - 1].out_features), 0)
        bottom, top = top[:split], top[split:]
        for i in range(1, len(top)):
            if top[i].in_features != top[i - 1].out_features:
                raise SpecError(
                    f"cannot infer the layer chain: Linear {split + i} takes "
                    f"{top[i].in_features} inputs but the previous layer gives "
                    f"{top[i - 1].out_features}; pass spec=")
    dense_out = bottom[-1].out_features if bottom else None
    checkable = check and _has_forward(torch, module)
    cands = _interaction_dense(top[0].in_features, dense_out, dims, hint,
                               every=checkable and hint is None)
    out = []
    for interaction, d in cands:
        dense = bottom[0].in_features if bottom else d
        sparse = tuple(SparseFeature(path, m.num_embeddings, m.embedding_dim, b)
                       for (path, m), b in zip(embs, bags, strict=True))
        spec = ModelSpec(name=name, sparse=sparse, dense=dense,
                         bottom_mlp=tuple(m.out_features for m in bottom),
                         interaction=interaction, top_mlp=tuple(m.out_features for m in top),
                         heads=tuple(tuple(m.out_features for m in h) for h in heads or ()))
        tables = [ArrayTable(_numpy(m.weight)) for _, m in embs]
        out.append(ModelWeights(spec, tables, [_layer(m) for m in bottom],
                                [_layer(m) for m in top],
                                [[_layer(m) for m in h] for h in heads or ()]))
    return _verified(torch, module, out, check, sample, forward, tolerance)


# ---- the forward-pass check -----------------------------------------------------------------

def _has_forward(torch, module) -> bool:
    return type(module).forward is not torch.nn.Module.forward


def _dense_last(weights: ModelWeights):
    """The same weights for a module whose concat puts the dense part after the embeddings:
    the first top layer's columns moved to RecFabric's dense-first order (None if moot)."""
    spec = weights.spec
    if spec.interaction != "concat" or not spec.dense_out or not spec.sparse:
        return None
    first = weights.top[0]
    e = spec.embedding_width
    w = np.concatenate([first.weight[:, e:], first.weight[:, :e]], axis=1)
    return ModelWeights(spec, weights.tables, weights.bottom,
                        [Layer(w, first.bias), *weights.top[1:]], weights.heads)


def _module_output(torch, module, forward, dense, sparse):
    tensors = [bags_to_torch(b) for b in sparse]
    x = torch.from_numpy(np.asarray(dense, np.float32))
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            try:
                y = forward(module, x, tensors) if forward else module(x, tensors)
            except Exception as e:  # noqa: BLE001 (any failure of user code is reported)
                call = "forward(module, dense, sparse)" if forward else \
                    f"{type(module).__name__}(dense, [(indices, offsets), ...])"
                raise SpecError(
                    f"cannot check the import: {call} failed on sample inputs "
                    f"({type(e).__name__}: {e}); pass forward=callable(module, dense, sparse) "
                    "or check=False") from None
    finally:
        module.train(training)
    if isinstance(y, (tuple, list)):
        y = torch.cat([t.reshape(len(x), -1) for t in y], dim=1)
    if not torch.is_tensor(y):
        raise SpecError(f"cannot check the import: the module's forward returned "
                        f"{type(y).__name__}, not a tensor")
    return y.detach().to(torch.float64).reshape(len(x), -1).numpy()


def _difference(y, probs) -> tuple[float, int]:
    """Largest probability difference of the module's output ``y`` (probabilities, or logits,
    whichever is closer) from the float reference, and the request where it occurs."""
    if y.shape != probs.shape:
        return float("inf"), 0
    best = None
    for p in (y, 1.0 / (1.0 + np.exp(-y))):
        d = np.abs(p - probs)
        d = np.where(np.isnan(d), np.inf, d)
        cand = (float(d.max()), int(np.argmax(d.max(axis=1))))
        best = cand if best is None or cand[0] < best[0] else best
    return best


def _verified(torch, module, candidates, check, sample, forward, tolerance):
    """The first candidate whose float reference reproduces the module's forward pass."""
    from ..reference.golden import float_forward
    from .synthetic import synthetic_batch
    if not check or (forward is None and not _has_forward(torch, module)):
        return candidates[0]
    tried = []
    for weights in candidates:
        spec = weights.spec
        if sample is not None:
            dense, sparse = sample
        else:
            dense, sparse = synthetic_batch(spec, CHECK_REQUESTS, seed=0)
        y = _module_output(torch, module, forward, dense, sparse)
        for variant, w in (("dense first", weights), ("dense last", _dense_last(weights))):
            if w is None:
                continue
            probs = float_forward(w, dense, sparse).astype(np.float64)
            diff, req = _difference(y, probs)
            if diff <= tolerance:
                return w
            label = spec.interaction + (f", {variant}" if spec.interaction == "concat"
                                        and spec.dense_out and spec.sparse else "")
            tried.append((diff, req, label, y.shape, probs.shape))
    diff, req, label, ys, ps = min(tried)
    shape = "" if ys == ps else f"; the module returns shape {ys}, the import {ps}"
    raise SpecError(
        f"the imported model does not reproduce the module's forward pass: probabilities differ "
        f"by up to {diff:.3g} (request {req} of {len(dense)} sample requests; tolerance "
        f"{tolerance:g}){shape}. Tried: {'; '.join(f'{t[2]} ({t[0]:.3g})' for t in tried)}. "
        "RecFabric computes sum-pooled EmbeddingBags without per_sample_weights, ReLU after "
        "every hidden layer, the dense part then the embeddings (concat) or DLRM's dot "
        "interaction, and a sigmoid; a functional activation other than ReLU, per_sample_weights "
        "or another interaction in forward() cannot be imported. Pass spec= if the layers were "
        "misread, or check=False to import the structure regardless")
