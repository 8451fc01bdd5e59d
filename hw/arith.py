"""Wide arithmetic in few logic levels.

A ``w``-bit ripple adder is one LUT and ``w / 4`` carry cells deep in the depth count of
``recfabric report resources`` (a 64-bit address adder: 9 levels). :func:`carry_select_add`
splits it into two half-width adders and picks the upper half by the lower half's carry:
about ``w / 8 + 2`` levels (6 at 64 bits) for the same sum, in the same cycle.
"""

from amaranth.hdl import Cat, Mux, Value

__all__ = ["carry_select_add"]


def carry_select_add(a, b, width: int, split: int | None = None) -> Value:
    """``(a + b) mod 2**width`` (unsigned) as a carry-select adder.

    The low ``split`` bits (default ``width // 2``) are one adder; the high bits are computed
    twice, with carry-in 0 and 1, and the low adder's carry picks one.
    """
    a, b = Value.cast(a), Value.cast(b)
    split = width // 2 if split is None else split
    if not 0 < split < width:
        return (a + b)[:width]
    lo = a[:split] + b[:split]  # split + 1 bits: the carry on top
    a_hi, b_hi = a[split:width], b[split:width]
    hi0 = (a_hi + b_hi)[:width - split]
    hi1 = (a_hi + b_hi + 1)[:width - split]
    return Cat(lo[:split], Mux(lo[split], hi1, hi0))
