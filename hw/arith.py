"""Wide arithmetic in few logic levels.

A ``w``-bit ripple adder is one LUT and ``w / 4`` carry cells deep in the depth count of
``recfabric report resources`` (a 64-bit address adder: 9 levels). :func:`carry_select_add`
splits it into two half-width adders and picks the upper half by the lower half's carry:
about ``w / 8 + 2`` levels (6 at 64 bits) for the same sum, in the same cycle.
:func:`pipelined_count` counts the set bits of a wide vector in two registered stages (the
kernel's per-cycle lookup count over all its lookup units: 36 at u280, 11.5 levels as one sum
into the 32-bit counter).
"""

from amaranth.hdl import Cat, Const, Mux, Signal, Value

__all__ = ["carry_select_add", "pipelined_count", "PIPELINED_COUNT_LATENCY"]

#: Cycles from a bit being set at :func:`pipelined_count`'s input to it being in the count.
PIPELINED_COUNT_LATENCY = 2


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


def pipelined_count(m, bits, *, clear, group: int = 6, name: str = "count") -> Signal:
    """The number of set bits of ``bits``, :data:`PIPELINED_COUNT_LATENCY` cycles later.

    Stage 1 registers the count of each ``group`` consecutive bits (a ``group``-input sum:
    one LUT level per result bit at the default 6); stage 2 registers the sum of those
    partial counts. ``clear`` (combinational) zeroes both stages, so bits set in the cycle of
    ``clear`` or in the cycles before it are never counted. ``m``: the module the registers
    go into (its ``sync`` domain).
    """
    bits = Value.cast(bits)
    n = len(bits)
    if group < 1:
        raise ValueError(f"group must be at least 1, not {group}")
    out = Signal(range(n + 1), name=name)
    if n == 0:
        m.d.comb += out.eq(Const(0))
        return out
    parts = []
    for g, lo in enumerate(range(0, n, group)):
        chunk = bits[lo:lo + group]
        part = Signal(range(len(chunk) + 1), name=f"{name}_part{g}")
        m.d.sync += part.eq(Mux(clear, 0, sum(chunk[i] for i in range(len(chunk)))))
        parts.append(part)
    m.d.sync += out.eq(Mux(clear, 0, sum(parts)))
    return out
