"""The MLP pipeline's runtime load format: load words, descriptor fields, flags, shift range.

:class:`MLPLoadLayout` words program weights, biases and per-engine descriptors through
``MLPPipeline.i_load``; :func:`recfabric.hw.mlp.load_image.mlp_load_words` builds them.
"""

from __future__ import annotations

import enum

from amaranth.hdl import signed
from amaranth.lib import data
from amaranth.lib import enum as aenum

from recfabric.host import numerics as nx

from ..stream_types import index_bits as _bits_for

__all__ = ["LoadKind", "Desc", "MLPLoadLayout", "FLAG_RELU", "FLAG_FLOOR", "FLAG_LOGIT",
           "SHIFT_MIN", "SHIFT_MAX"]

#: Legal requantize shifts: stated by the numerics spec, re-exported here.
SHIFT_MIN, SHIFT_MAX = nx.SHIFT_MIN, nx.SHIFT_MAX


class LoadKind(aenum.Enum, shape=2):
    """What an :class:`MLPLoadLayout` word writes."""

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
    """One host write into an MLP pipeline's runtime memories.

    Members
    -------
    engine : unsigned
        Layer engine index.
    kind : LoadKind
        ``WEIGHT``: ``data`` is the weight of PE (``row``, ``col``) at word ``addr``.
        ``BIAS``: ``data`` is the bias of array row ``row`` at output tile ``addr``.
        ``DESC``: ``data`` is descriptor field ``addr`` (:class:`Desc`).
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
