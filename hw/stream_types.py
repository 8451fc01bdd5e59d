"""Payload layouts shared between blocks of the dataflow (lookup side -> concat -> MLP)."""

from amaranth.hdl import signed
from amaranth.lib import data

__all__ = ["PooledVectorLayout"]


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
        The lookup was bad (row out of range or AXI error response); ``data`` is zero then.
    """

    def __init__(self, *, tag_bits: int, slot_bits: int, data_bits: int, max_dim: int):
        for name, v in (("tag_bits", tag_bits), ("slot_bits", slot_bits),
                        ("data_bits", data_bits), ("max_dim", max_dim)):
            if not isinstance(v, int) or v < 1:
                raise TypeError(f"{name} must be a positive integer, not {v!r}")
        super().__init__({
            "tag": tag_bits,
            "slot": slot_bits,
            "error": 1,
            "data": data.ArrayLayout(signed(data_bits), max_dim),
        })
