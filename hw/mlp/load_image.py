"""The load image of an MLP pipeline: descriptor words and packed weight/bias blocks (host)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from recfabric.host import numerics as nx

from .load_format import (
    FLAG_FLOOR,
    FLAG_LOGIT,
    FLAG_RELU,
    SHIFT_MAX,
    SHIFT_MIN,
    BeatPacking,
    Desc,
    LoadKind,
)

__all__ = ["MLPBlock", "MLPLoadImage", "mlp_load_image"]


class _EngineGeometry:
    def __init__(self, *, rows, cols, data_bits, acc_bits, max_in, max_out, out_bits,
                 beat_bits=512, **_):
        self.rows, self.cols, self.data_bits = rows, cols, data_bits
        self.max_in, self.max_out, self.out_bits = max_in, max_out, out_bits
        self.packing = BeatPacking(rows=rows, cols=cols, data_bits=data_bits, acc_bits=acc_bits,
                                   beat_bits=beat_bits)


@dataclass
class MLPBlock:
    """A block of beats for ``MLPPipeline.i_block``: ``sel`` (:class:`MLPBlockSel` fields),
    start address ``addr`` and the beats (integers of ``beat_bits`` bits), written to addresses
    ``addr, addr + 1, ...``."""

    sel: dict
    addr: int
    beats: list


@dataclass
class MLPLoadImage:
    """What programs a model into an MLP pipeline: ``descriptors`` (:class:`MLPLoadLayout`
    field dicts for ``i_load``) and ``blocks`` (:class:`MLPBlock` s for ``i_block``)."""

    descriptors: list = field(default_factory=list)
    blocks: list = field(default_factory=list)

    @property
    def beats(self) -> int:
        return sum(len(b.beats) for b in self.blocks)


def _pack_lanes(values, bits: int) -> list:
    """Rows of ``values`` (n, lanes) as integers, lane ``i`` at bits ``i * bits`` (two's
    complement, little-endian: the layout of a beat in memory)."""
    values = np.asarray(values, dtype=np.int64)
    if bits in (8, 16, 32, 64):
        raw = values.astype(f"<i{bits // 8}").tobytes()
        step = values.shape[1] * bits // 8
        return [int.from_bytes(raw[i:i + step], "little") for i in range(0, len(raw), step)]
    mask = (1 << bits) - 1
    return [sum((int(v) & mask) << (i * bits) for i, v in enumerate(row)) for row in values]


def _engine_blocks(l: int, pk: BeatPacking, w, b, kt: int, nt: int) -> list:
    """Weight blocks (one per PE group, addresses ``0 .. kt * nt - 1``) and bias blocks (one per
    row group, addresses ``0 .. nt - 1``) of engine ``l`` (``w``, ``b`` padded to the tiles)."""
    R, C = pk.rows, pk.cols
    # words[a, r, c]: weight of PE (r, c) at address a = tn * kt + tk
    words = w.reshape(nt, R, kt, C).transpose(0, 2, 1, 3).reshape(nt * kt, R, C)
    grid = np.zeros((nt * kt, pk.row_groups * pk.g, pk.col_groups * pk.w), dtype=np.int64)
    grid[:, :R, :C] = words
    blocks = []
    for q in range(pk.groups):
        r0, c0 = (q // pk.col_groups) * pk.g, (q % pk.col_groups) * pk.w
        lanes = grid[:, r0:r0 + pk.g, c0:c0 + pk.w].reshape(nt * kt, pk.g * pk.w)
        blocks.append(MLPBlock({"kind": LoadKind.WEIGHT, "engine": l, "group": q}, 0,
                               _pack_lanes(lanes, pk.data_bits)))
    bias = np.zeros((nt, pk.bias_groups * pk.gb), dtype=np.int64)
    bias[:, :R] = b.reshape(nt, R)
    for q in range(pk.bias_groups):
        lanes = bias[:, q * pk.gb:(q + 1) * pk.gb]
        blocks.append(MLPBlock({"kind": LoadKind.BIAS, "engine": l, "group": q}, 0,
                               _pack_lanes(lanes, pk.acc_bits)))
    return blocks


class _IdentityLayer:
    """An exact identity layer (``w = I``, zero bias, weights in Q1.0, output in ``fmt``), with
    the attributes :func:`mlp_load_image` reads from a layer."""

    def __init__(self, width: int, fmt: nx.FixedFormat):
        self.w = np.eye(width, dtype=np.int64)
        self.b = np.zeros(width, dtype=np.int64)
        self.in_fmt, self.w_fmt, self.out_fmt = fmt, nx.FixedFormat(2, 0), fmt
        self.relu = False
        self.shift = self.in_fmt.frac + self.w_fmt.frac - self.out_fmt.frac
        self.shape = (width, width)


def mlp_load_image(pipeline, layers, rounding: nx.Rounding = nx.Rounding.HALF_UP):
    """The :class:`MLPLoadImage` that programs ``layers`` into ``pipeline``: descriptor words
    and packed weight and bias blocks (:class:`~recfabric.hw.mlp.load_format.BeatPacking`; only
    the addresses the model uses are written, padding weights included).

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
    image = MLPLoadImage()
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
        image.blocks += _engine_blocks(l, eng.packing, w, b, kt, nt)
        flags = ((FLAG_RELU if layer.relu else 0)
                 | (FLAG_FLOOR if rounding is nx.Rounding.FLOOR else 0)
                 | (FLAG_LOGIT if logit else 0))
        for fld, v in ((Desc.K_TILES, kt), (Desc.N_TILES, nt), (Desc.SHIFT, layer.shift),
                         (Desc.FLAGS, flags), (Desc.OUT_LEN, N)):
            image.descriptors.append({"engine": l, "kind": LoadKind.DESC, "row": 0, "col": 0,
                                      "addr": int(fld), "data": int(v)})
    return image
