"""The MLP pipeline's runtime load format: descriptor words, packed weight/bias beats.

:class:`MLPLoadLayout` words program per-engine descriptors through ``MLPPipeline.i_load``;
weights and biases arrive as packed beats (:class:`~recfabric.hw.stream_types.BlockBeatLayout`)
through ``MLPPipeline.i_block``, their ``sel`` field an :class:`MLPBlockSel` and their lanes laid
out by :class:`BeatPacking`. :func:`recfabric.hw.mlp.load_image.mlp_load_image` builds both.
"""

from __future__ import annotations

import enum
import math

from amaranth.hdl import signed
from amaranth.lib import data
from amaranth.lib import enum as aenum

from recfabric.host import numerics as nx

from ..stream_types import index_bits as _bits_for

__all__ = ["LoadKind", "Desc", "MLPLoadLayout", "MLPBlockSel", "BeatPacking", "FLAG_RELU",
           "FLAG_FLOOR", "FLAG_LOGIT", "SHIFT_MIN", "SHIFT_MAX"]

#: Legal requantize shifts: stated by the numerics spec, re-exported here.
SHIFT_MIN, SHIFT_MAX = nx.SHIFT_MIN, nx.SHIFT_MAX


class LoadKind(aenum.Enum, shape=2):
    """What a load word (``DESC``) or a block of beats (``WEIGHT``, ``BIAS``) writes."""

    WEIGHT = 0
    BIAS = 1
    DESC = 2


class Desc(enum.IntEnum):
    """Descriptor field selected by ``addr`` of a ``DESC`` load word."""

    #: ``ceil(K / cols)``: input tiles (waves per output tile).
    K_TILES = 0
    #: ``ceil(N / rows)``: output tiles.
    N_TILES = 1
    #: Requantize shift ``acc_frac - out_frac``, in ``SHIFT_MIN..SHIFT_MAX``.
    SHIFT = 2
    #: Bit 0: ReLU. Bit 1: FLOOR rounding (else HALF_UP). Bit 2: saturate to ``SIGMOID_IN``
    #: (11 bits) instead of ``data_bits``.
    FLAGS = 3
    #: ``N``: output elements (used by the drain after the last engine).
    OUT_LEN = 4


FLAG_RELU, FLAG_FLOOR, FLAG_LOGIT = 1, 2, 4


class MLPLoadLayout(data.StructLayout):
    """One descriptor write into an MLP pipeline (``i_load``).

    Members
    -------
    engine : unsigned
        Layer engine index.
    kind : LoadKind
        ``DESC``: ``data`` is descriptor field ``addr`` (:class:`Desc`). Other kinds are
        ignored on ``i_load``: weights and biases are written by packed beats (``i_block``).
    row, col : unsigned
    addr : unsigned
    data : signed(max(32, acc_bits))
        Weight (low ``data_bits`` used), bias (``acc_bits`` wide, accumulator format) or
        descriptor value.
    """

    def __init__(self, *, engines: int, rows: int, cols: int, depth: int, acc_bits: int):
        super().__init__({
            "engine": _bits_for(engines),
            "kind": LoadKind,
            "row": _bits_for(rows),
            "col": _bits_for(cols),
            "addr": max(_bits_for(depth), 3),
            "data": signed(max(32, acc_bits)),
        })


class MLPBlockSel(data.StructLayout):
    """The ``sel`` field of a block of weight or bias beats for an MLP pipeline.

    Members
    -------
    kind : LoadKind
        ``WEIGHT`` or ``BIAS``.
    engine : unsigned
        Layer engine index.
    group : unsigned
        Which PEs (weights) or array rows (biases) the block's beats write
        (:class:`BeatPacking`).
    """

    def __init__(self, *, engines: int, groups: int):
        super().__init__({"kind": LoadKind, "engine": _bits_for(engines),
                          "group": _bits_for(groups)})


class BeatPacking:
    """How one engine's weights and biases are packed into beats (host and hardware agree).

    Weights: a beat holds ``lanes = beat_bits // data_bits`` weights, all at one weight address,
    for a rectangle of ``g`` array rows by ``w`` columns (``g * w <= lanes``), the one that
    needs the fewest groups ``ceil(rows / g) * ceil(cols / w)`` (ties: first an even ``g`` or
    ``g = rows``, so rows ``2s`` and ``2s+1``, which share one weight memory word in the array,
    are written by the same beat; then the widest ``w``), so a
    beat carries as many real weights as the array's shape allows: 32 x 64 and 64 x 32 arrays
    fill every lane of every int16 beat, and so does 16 x 48 (``g = 2``, ``w = 16``). PE (``r``,
    ``c``) is written by beats of group ``(r // g) * col_groups + c // w`` from lane ``(r % g) *
    w + c % w``; every PE of a group is written in the same cycle. A block of group ``q`` and
    start address ``a`` writes addresses ``a, a+1, ...`` of every PE of the group.

    Biases: a beat holds ``bias_lanes = beat_bits // acc_bits`` biases (``acc_bits`` each), for
    ``gb = min(rows, bias_lanes)`` array rows at one output tile: row ``r`` is written by group
    ``r // gb`` from lane ``r % gb``.
    """

    def __init__(self, *, rows: int, cols: int, data_bits: int, acc_bits: int,
                 beat_bits: int):
        self.rows, self.cols, self.data_bits, self.acc_bits = rows, cols, data_bits, acc_bits
        self.beat_bits = beat_bits
        self.lanes = beat_bits // data_bits
        self.bias_lanes = beat_bits // acc_bits
        if self.lanes < 1 or self.bias_lanes < 1:
            raise ValueError(f"a {beat_bits}-bit beat cannot hold a {data_bits}-bit weight and "
                             f"an {acc_bits}-bit bias")
        best = None
        for w in range(min(cols, self.lanes), 0, -1):
            g = min(rows, self.lanes // w)
            n = math.ceil(rows / g) * math.ceil(cols / w)
            split = g % 2 == 1 and g < rows  # a row pair 2s, 2s+1 in two groups
            if best is None or (n, split) < best[:2]:
                best = (n, split, g, w)
        _, _, self.g, self.w = best
        self.col_groups = math.ceil(cols / self.w)
        self.row_groups = math.ceil(rows / self.g)
        self.groups = self.row_groups * self.col_groups
        self.gb = min(rows, self.bias_lanes)
        self.bias_groups = math.ceil(rows / self.gb)

    def group(self, r: int, c: int) -> int:
        return (r // self.g) * self.col_groups + c // self.w

    def lane(self, r: int, c: int) -> int:
        return (r % self.g) * self.w + c % self.w
