"""Wave timing of a :class:`~recfabric.hw.systolic_array.SystolicArray` (pure arithmetic).

No Amaranth here, so the host's cycle model (``host/compiler/cycle_model.py``) uses the same
arithmetic as the hardware without importing the hardware; :mod:`recfabric.hw.systolic_array`
re-exports :class:`ArrayTiming`.
"""

from dataclasses import dataclass

__all__ = ["ArrayTiming", "PE_LATENCY"]

#: Cycles from a PE's ``x_in`` to the matching ``psum_out`` (A/B register, M register, P register;
#: :class:`~recfabric.hw.processing_element.ProcessingElement`).
PE_LATENCY = 3


@dataclass(frozen=True)
class ArrayTiming:
    """When a :class:`~recfabric.hw.systolic_array.SystolicArray`'s waves enter and leave (pure
    arithmetic, no hardware).

    Parameters
    ----------
    rows, cols : int
    packed : bool
        Two rows per PE position (``rows >= 2``).
    cascade : int
        Columns per row-cascade segment (0: one cascade through all ``cols``).
    broadcast : int
        Fanout of the activation broadcast registers (0: activations move one slot per cycle).
    """

    rows: int
    cols: int
    packed: bool = False
    cascade: int = 0
    broadcast: int = 0

    @property
    def slots(self) -> int:
        """PE positions down a column: ``rows``, or ``ceil(rows / 2)`` when packed."""
        return (self.rows + 1) // 2 if self.packed else self.rows

    def slot(self, row: int) -> int:
        return row // 2 if self.packed else row

    @property
    def seg_len(self) -> int:
        """Columns per cascade segment (``cascade``, or ``cols`` with one segment)."""
        return min(self.cascade, self.cols) if self.cascade else self.cols

    @property
    def segments(self) -> list:
        """``(first, end)`` column ranges of the cascade segments, right-aligned: every segment
        but the first holds :attr:`seg_len` columns, and each one's last column has input skew
        ``seg_len - 1``, so all segments finish together."""
        s, pad = self.seg_len, -self.cols % self.seg_len
        starts = [0] + [c for c in range(1, self.cols) if (c + pad) % s == 0]
        return list(zip(starts, starts[1:] + [self.cols]))

    def input_skew(self, col: int) -> int:
        """Cycles after the wave's first column that column ``col`` enters the top:
        ``(col + pad) % seg_len``, ``pad = -cols % seg_len`` right-aligning the segments
        (without segments: ``col``)."""
        return (col + (-self.cols % self.seg_len)) % self.seg_len

    @property
    def tree_levels(self) -> int:
        """Registered adder levels that sum a row's segments: ``ceil(log2(segments))``."""
        return (len(self.segments) - 1).bit_length()

    @property
    def broadcast_levels(self) -> int:
        """Register levels between the top of a column and its PEs when broadcasting: the
        fewest ``L`` with ``broadcast ** (L + 1) >= slots`` (each register, and the top input,
        drives at most ``broadcast`` loads)."""
        if not self.broadcast:
            return 0
        levels = 0
        while self.broadcast ** (levels + 1) < self.slots:
            levels += 1
        return levels

    def slot_delay(self, row: int) -> int:
        """Cycles from the top of a column to row ``row``'s PE: its slot, or the broadcast
        levels (every row at once)."""
        return self.broadcast_levels if self.broadcast else self.slot(row)

    def latency(self, row: int) -> int:
        """Cycles from the first column of a wave entering the top (input skew 0) to its sum
        leaving row ``row``: ``(seg_len - 1) + slot_delay(row) + PE_LATENCY + tree_levels``
        (without segments or broadcast: ``(cols - 1) + slot(row) + PE_LATENCY``)."""
        return (self.seg_len - 1) + self.slot_delay(row) + PE_LATENCY + self.tree_levels
