"""Payload layouts and codes shared between blocks of the dataflow, in one place.

The kernel's blocks talk through ``lib.stream`` streams whose payloads are the layouts below:

::

    RecordParser --DenseLayout--------------------------------------------> ConcatStage
                 --FeatureIdLayout--> LookupDispatcher --LookupLayout--> lookup units
    lookup units --PooledVectorLayout--> StreamArbiter --PooledVectorLayout--> ConcatStage
    ConcatStage  --MLPInputLayout--> MLPPipeline
    ConcatStage  --RequestFlagsLayout--> (flag FIFO) --> ResultWriter

Table descriptors (:class:`TableDescriptorLayout`, :class:`DescriptorWriteLayout`) are the
lookup units' runtime data. Block-local layouts (a block's load formats, its internal contexts)
stay in the block's module.
"""

from __future__ import annotations

from amaranth.hdl import signed
from amaranth.lib import data, enum

__all__ = [
    "index_bits", "LookupKind", "LookupErrorCause", "LookupLayout", "PooledVectorLayout",
    "DenseLayout", "RequestFlagsLayout", "MLPInputLayout", "TableDescriptorLayout",
    "DescriptorWriteLayout", "BlockBeatLayout", "BLOCK_SEL_BITS", "BLOCK_ADDR_BITS",
    "TablePartLayout",
]


def index_bits(n: int) -> int:
    """Bits of an index into ``n`` things (at least 1)."""
    return max(1, (n - 1).bit_length())


def _positive(**values):
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise TypeError(f"{name} must be a positive integer, not {v!r}")


class LookupKind(enum.Enum, shape=2):
    """What a lookup asks for."""

    #: Read and pool one table row.
    ROW = 0
    #: No row: a bag of length 0 (pools to zeros).
    EMPTY = 1
    #: Already known to be invalid (the dispatcher found an ID out of range).
    BAD = 2


class LookupErrorCause(enum.Enum, shape=2):
    """Why a lookup (and so its bag's pooled vector) was flagged."""

    NONE = 0
    #: Row index out of range (or ``kind=BAD`` from the dispatcher).
    ROW = 1
    #: Descriptor index out of range, invalid descriptor, or a row crossing 4 KiB.
    DESC = 2
    #: The memory answered with SLVERR or DECERR.
    RESP = 3


class LookupLayout(data.StructLayout):
    """One lookup on its way to a lookup unit or on-chip table.

    Members
    -------
    tag : unsigned(tag_bits)
        Request tag.
    slot : unsigned(slot_bits)
        Lookup slot within the request (the pooled vector's slot).
    desc : unsigned(desc_bits)
        Table descriptor index in the unit.
    row : unsigned(row_bits)
        Row index within the table.
    kind : LookupKind
    first, last : unsigned(1)
        First / last lookup of the bag.
    """

    def __init__(self, *, tag_bits: int, slot_bits: int, desc_bits: int, row_bits: int):
        _positive(tag_bits=tag_bits, slot_bits=slot_bits, desc_bits=desc_bits,
                  row_bits=row_bits)
        super().__init__({
            "tag": tag_bits, "slot": slot_bits, "desc": desc_bits, "row": row_bits,
            "kind": LookupKind, "first": 1, "last": 1,
        })


class PooledVectorLayout(data.StructLayout):
    """One pooled embedding vector of one request, from a lookup unit or on-chip table.

    Members
    -------
    tag : unsigned(tag_bits)
        Request tag (request sequence number modulo the in-flight depth).
    slot : unsigned(slot_bits)
        Lookup slot within the request (a Cartesian-merged table is one slot).
    data : ArrayLayout(signed(data_bits), max_dim)
        Pooled elements in the embedding format; elements past the slot's dim are zero.
    error : unsigned(1)
        A lookup of the bag was bad; ``data`` is zero then.
    cause : LookupErrorCause
        Why (the bag's first bad lookup); ``NONE`` when ``error`` is 0.
    """

    def __init__(self, *, tag_bits: int, slot_bits: int, data_bits: int, max_dim: int):
        _positive(tag_bits=tag_bits, slot_bits=slot_bits, data_bits=data_bits,
                  max_dim=max_dim)
        super().__init__({
            "tag": tag_bits,
            "slot": slot_bits,
            "error": 1,
            "cause": LookupErrorCause,
            "data": data.ArrayLayout(signed(data_bits), max_dim),
        })


class DenseLayout(data.StructLayout):
    """One dense element of a request, from the record parser to the concatenation stage.

    Members
    -------
    tag : unsigned(tag_bits)
        The request's tag (the same tag its lookups carry).
    data : signed(data_bits)
        The element in the model's dense fixed-point format.
    last : unsigned(1)
        Last dense element of the request.
    """

    def __init__(self, *, tag_bits: int, data_bits: int):
        _positive(tag_bits=tag_bits, data_bits=data_bits)
        super().__init__({"tag": tag_bits, "data": signed(data_bits), "last": 1})


class RequestFlagsLayout(data.StructLayout):
    """Per-request error flags on their way to the request's result record.

    Members
    -------
    id_range : unsigned(1)
        A lookup of the request was out of its table (or its descriptor was invalid).
    bag_range : unsigned(1)
        A bag length of the record was over the feature's maximum, or a one-hot bag was empty.
    memory : unsigned(1)
        A table read of the request was answered with SLVERR or DECERR.
    """

    def __init__(self):
        super().__init__({"id_range": 1, "bag_range": 1, "memory": 1})


class MLPInputLayout(data.StructLayout):
    """One chunk of an MLP input vector: elements ``lanes*j .. lanes*j + lanes - 1``.

    Members
    -------
    data : ArrayLayout(signed(bits), lanes)
    last : unsigned(1)
        Last chunk of the request's vector.
    """

    def __init__(self, *, bits: int, lanes: int):
        _positive(bits=bits, lanes=lanes)
        super().__init__({"data": data.ArrayLayout(signed(bits), lanes), "last": 1})


class TableDescriptorLayout(data.StructLayout):
    """A table in memory, as the host describes it (:mod:`recfabric.hw.embedding_lookup`).

    Members
    -------
    base : unsigned(addr_width)
        Byte address of row 0 (word address for an on-chip table).
    stride : unsigned(stride_bits)
        Bytes from one row to the next (words for an on-chip table).
    rows : unsigned(row_bits)
        Row count; lookups of ``row >= rows`` are errors.
    dim : unsigned(16)
        Elements per row, 1..max_dim.
    """

    def __init__(self, *, addr_width: int, stride_bits: int, row_bits: int):
        _positive(addr_width=addr_width, stride_bits=stride_bits, row_bits=row_bits)
        super().__init__({"base": addr_width, "stride": stride_bits, "rows": row_bits,
                          "dim": 16})


class DescriptorWriteLayout(data.StructLayout):
    """Host write of one table descriptor: ``index`` and the descriptor ``desc``."""

    def __init__(self, *, desc_bits: int, desc_layout: data.StructLayout):
        super().__init__({"index": desc_bits, "desc": desc_layout})


#: Width of a program block's ``sel`` field (what the sink writes: its meaning is the sink's).
BLOCK_SEL_BITS = 24
#: Width of a program block's start address (in the sink's beats).
BLOCK_ADDR_BITS = 32


class BlockBeatLayout(data.StructLayout):
    """One data beat of a kernel-program block, as the program loader hands it to a sink.

    Members
    -------
    sel : unsigned(BLOCK_SEL_BITS)
        The block command's ``sel`` field, the same for every beat of the block; the sink gives
        it a meaning (the MLP pipeline: :class:`~recfabric.hw.mlp.MLPBlockSel`).
    addr : unsigned(BLOCK_ADDR_BITS)
        Beat address within the sink's memory selected by ``sel``: the block's start address
        plus the beat's position in the block.
    data : unsigned(beat_bits)
        The beat, as read from memory (little-endian lanes, lane 0 in the low bits).
    """

    def __init__(self, beat_bits: int):
        _positive(beat_bits=beat_bits)
        super().__init__({"sel": BLOCK_SEL_BITS, "addr": BLOCK_ADDR_BITS, "data": beat_bits})


class TablePartLayout(data.StructLayout):
    """Where one part of a table (a row-range shard of one copy) is served: a dispatcher
    placement field (:class:`~recfabric.hw.lookup_dispatcher.PlacementLayout`).

    Members
    -------
    unit : unsigned(unit_bits)
        Lookup unit (memory channel, then on-chip units) holding the part.
    desc : unsigned(desc_bits)
        The part's table descriptor index in that unit.
    lo : unsigned(row_bits)
        First table row the part holds: a lookup of row ``r`` reads the part's row ``r - lo``.
    """

    def __init__(self, *, unit_bits: int, desc_bits: int, row_bits: int):
        _positive(unit_bits=unit_bits, desc_bits=desc_bits, row_bits=row_bits)
        super().__init__({"unit": unit_bits, "desc": desc_bits, "lo": row_bits})
