"""The load image of an MLP pipeline: the words that program a model's layers (host side)."""

from __future__ import annotations

import math

import numpy as np

from recfabric.host import numerics as nx

from .load_format import FLAG_FLOOR, FLAG_LOGIT, FLAG_RELU, SHIFT_MAX, SHIFT_MIN, Desc, LoadKind

__all__ = ["mlp_load_words"]


class _EngineGeometry:
    def __init__(self, *, rows, cols, data_bits, max_in, max_out, out_bits, **_):
        self.rows, self.cols, self.data_bits = rows, cols, data_bits
        self.max_in, self.max_out, self.out_bits = max_in, max_out, out_bits


class _IdentityLayer:
    """An exact identity layer (``w = I``, zero bias, weights in Q1.0, output in ``fmt``), with
    the attributes :func:`mlp_load_words` reads from a layer."""

    def __init__(self, width: int, fmt: nx.FixedFormat):
        self.w = np.eye(width, dtype=np.int64)
        self.b = np.zeros(width, dtype=np.int64)
        self.in_fmt, self.w_fmt, self.out_fmt = fmt, nx.FixedFormat(2, 0), fmt
        self.relu = False
        self.shift = self.in_fmt.frac + self.w_fmt.frac - self.out_fmt.frac
        self.shape = (width, width)


def mlp_load_words(pipeline, layers, rounding: nx.Rounding = nx.Rounding.HALF_UP):
    """Load words (dicts of :class:`MLPLoadLayout` fields) that program ``layers`` into
    ``pipeline``.

    ``layers`` are fixed-point layers, first to last: objects with ``w`` (out, in), ``b``,
    ``in_fmt``, ``w_fmt``, ``out_fmt``, ``relu``, ``shift`` and ``shape`` (in, out), as
    :class:`recfabric.host.reference.golden.QLayer` has them (``hw`` does not import the host's
    model).
    Fewer layers than engines are padded with identity layers after the last one (exact: the
    identity keeps every value, in the same format); that needs the last layer's output format
    to fit the hidden element width, so it is rejected for int8 top MLPs. Raises
    ``ValueError`` naming the layer and the value for a model that does not fit.
    """
    engines = [_EngineGeometry(**kw) for kw in pipeline.engine_kwargs()]
    layers = list(layers)
    if not layers:
        raise ValueError("A model needs at least one layer, not 0")
    if len(layers) > len(engines):
        raise ValueError(f"Model has {len(layers)} layers but the pipeline has {len(engines)} "
                         "layer engines")
    pad = len(engines) - len(layers)
    if pad:
        fmt = layers[-1].out_fmt
        if fmt.bits > pipeline.data_bits:
            raise ValueError(f"Cannot pad a {len(layers)}-layer model with identity layers: its "
                             f"{fmt.bits}-bit output does not fit {pipeline.data_bits}-bit "
                             "hidden activations")
        layers += [_IdentityLayer(layers[-1].shape[1], fmt)] * pad
    words = []
    for l, (eng, layer) in enumerate(zip(engines, layers)):
        K, N = layer.shape
        if l > 0 and K != layers[l - 1].shape[1]:
            raise ValueError(f"Layer {l} fan-in {K} does not match layer {l - 1} width "
                             f"{layers[l - 1].shape[1]}")
        if K > eng.max_in:
            raise ValueError(f"Layer {l} fan-in {K} exceeds engine {l} maximum {eng.max_in}")
        if N > eng.max_out:
            raise ValueError(f"Layer {l} width {N} exceeds engine {l} maximum {eng.max_out}")
        if not SHIFT_MIN <= layer.shift <= SHIFT_MAX:
            raise ValueError(f"Layer {l} requantize shift {layer.shift} is outside "
                             f"{SHIFT_MIN}..{SHIFT_MAX}")
        if layer.w_fmt.bits > pipeline.data_bits or layer.in_fmt.bits > pipeline.data_bits:
            raise ValueError(f"Layer {l} operands ({layer.in_fmt.bits}/{layer.w_fmt.bits} bits) "
                             f"exceed {pipeline.data_bits} bits")
        logit = layer.out_fmt.bits == nx.SIGMOID_IN.bits and layer.out_fmt.bits != eng.data_bits
        if logit and eng.out_bits < nx.SIGMOID_IN.bits:
            raise ValueError(f"Layer {l} outputs {layer.out_fmt.bits}-bit logits but engine {l} "
                             f"stores {eng.out_bits}-bit elements")
        if not logit and layer.out_fmt.bits != pipeline.data_bits:
            raise ValueError(f"Layer {l} output width {layer.out_fmt.bits} must be "
                             f"{pipeline.data_bits} or {nx.SIGMOID_IN.bits} (logits)")
        R, C = eng.rows, eng.cols
        kt, nt = math.ceil(K / C), math.ceil(N / R)
        w = np.zeros((nt * R, kt * C), dtype=np.int64)
        w[:N, :K] = layer.w
        b = np.zeros(nt * R, dtype=np.int64)
        b[:N] = layer.b
        for r in range(R):
            for c in range(C):
                blk = w[r::R, c::C]  # (nt, kt): word tn * kt + tk
                for a, v in enumerate(blk.reshape(-1)):
                    words.append({"engine": l, "kind": LoadKind.WEIGHT, "row": r, "col": c,
                                  "addr": a, "data": int(v)})
            for tn in range(nt):
                words.append({"engine": l, "kind": LoadKind.BIAS, "row": r, "col": 0,
                              "addr": tn, "data": int(b[tn * R + r])})
        flags = ((FLAG_RELU if layer.relu else 0)
                 | (FLAG_FLOOR if rounding is nx.Rounding.FLOOR else 0)
                 | (FLAG_LOGIT if logit else 0))
        for field, v in ((Desc.K_TILES, kt), (Desc.N_TILES, nt), (Desc.SHIFT, layer.shift),
                         (Desc.FLAGS, flags), (Desc.OUT_LEN, N)):
            words.append({"engine": l, "kind": LoadKind.DESC, "row": 0, "col": 0,
                          "addr": int(field), "data": int(v)})
    return words
