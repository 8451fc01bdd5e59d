"""Two-dimensional systolic array of :class:`ProcessingElement` s for matrix-vector products.

Rows are output neurons, columns are input elements. Activations enter at the top of each column
and move down one row per cycle; within a row, partial sums move right through the PEs' cascade
adders. Nothing is broadcast: every operand reaches a PE from its neighbour's register.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .processing_element import PE_LATENCY, ProcessingElement

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """``rows`` x ``cols`` weight-streaming MAC array (one MAC wave per cycle).

    A *wave* is one ``cols``-element slice of the input vector times the ``rows`` x ``cols``
    weight block that the PEs hold at one address. Column ``c`` of a wave must be presented at
    the top (``x_top[c]``, ``addr_top[c]``, ``ctrl_top[c]``, ``valid_top[c]``) ``c`` cycles after
    column 0 (input skew). Row ``r`` then presents the wave's dot product
    ``sum_c x[c] * w_rc[addr]`` on ``psum_row[r]``, wrapped to ``acc_bits``, with the wave's
    control word (as it entered column ``cols-1``) on ``ctrl_row[r]`` and ``valid_row[r]``,
    :meth:`latency` ``(r)`` cycles after column 0 entered the array.

    Parameters
    ----------
    rows, cols : int
        Array shape.
    data_bits : int
        Weight width.
    acc_bits : int
        Partial-sum width.
    depth : int
        Weight words per PE.
    ctrl_bits : int
        Width of the control word carried with each wave.
    x_bits : int, optional
        Activation width (defaults to ``data_bits``).
    write_rows, write_cols : int, optional
        Shape of the PE rectangle one host write fills (default 1 x 1).

    Members
    -------
    x_top : In(ArrayLayout(signed(x_bits), cols))
    addr_top : In(ArrayLayout(unsigned, cols))
        Weight address of the wave, per column.
    ctrl_top : In(ArrayLayout(unsigned(ctrl_bits), cols))
    valid_top : In(cols)
    psum_row : Out(ArrayLayout(signed(acc_bits), rows))
    ctrl_row : Out(ArrayLayout(unsigned(ctrl_bits), rows))
    valid_row : Out(rows)
    w_en, w_group, w_addr, w_data : In
        Wide host write port: one write stores a ``write_rows`` x ``write_cols`` rectangle of
        weights, all at address ``w_addr``. PE (``r``, ``c``) belongs to group ``(r //
        write_rows) * ceil(cols / write_cols) + c // write_cols`` and takes lane ``(r %
        write_rows) * write_cols + c % write_cols`` of ``w_data`` when ``w_group`` is its group.
        Registered once before the PEs decode it (a configuration path, not the datapath). The
        default 1 x 1 rectangle writes one PE per write (group ``r * cols + c``, lane 0).
    """

    def __init__(self, *, rows: int, cols: int, data_bits: int, acc_bits: int, depth: int,
                 ctrl_bits: int, x_bits: int | None = None, write_rows: int = 1,
                 write_cols: int = 1):
        for name, v in (("rows", rows), ("cols", cols), ("write_rows", write_rows),
                        ("write_cols", write_cols)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TypeError(f"{name} must be a positive integer, not {v!r}")
        x_bits = data_bits if x_bits is None else x_bits
        self.rows, self.cols = rows, cols
        self.data_bits, self.acc_bits, self.depth = data_bits, acc_bits, depth
        self.ctrl_bits, self.x_bits = ctrl_bits, x_bits
        self.write_rows, self.write_cols = min(write_rows, rows), min(write_cols, cols)
        self.col_groups = -(-cols // self.write_cols)
        self.groups = -(-rows // self.write_rows) * self.col_groups
        self.write_lanes = self.write_rows * self.write_cols
        abits = max(1, (depth - 1).bit_length())
        super().__init__({
            "x_top": In(data.ArrayLayout(signed(x_bits), cols)),
            "addr_top": In(data.ArrayLayout(abits, cols)),
            "ctrl_top": In(data.ArrayLayout(ctrl_bits, cols)),
            "valid_top": In(cols),
            "psum_row": Out(data.ArrayLayout(signed(acc_bits), rows)),
            "ctrl_row": Out(data.ArrayLayout(ctrl_bits, rows)),
            "valid_row": Out(rows),
            "w_en": In(1),
            "w_group": In(range(self.groups)),
            "w_addr": In(range(depth)),
            "w_data": In(data.ArrayLayout(signed(data_bits), self.write_lanes)),
        })

    def latency(self, row: int) -> int:
        """Cycles from column 0 of a wave entering the top to its sum leaving row ``row``."""
        return (self.cols - 1) + row + PE_LATENCY

    def elaborate(self, platform):
        m = Module()
        w_en = Signal()
        w_group = Signal.like(self.w_group)
        w_addr = Signal.like(self.w_addr)
        w_data = Signal.like(self.w_data)
        m.d.sync += [w_en.eq(self.w_en), w_group.eq(self.w_group), w_addr.eq(self.w_addr),
                     w_data.eq(self.w_data)]
        wr, wc = self.write_rows, self.write_cols
        # one enable per group, decoded once and shared by the group's PEs
        group_en = [Signal(name=f"w_en_g{q}") for q in range(self.groups)]
        for q, en in enumerate(group_en):
            m.d.comb += en.eq(w_en & (w_group == q))

        pes = [[None] * self.cols for _ in range(self.rows)]
        for r in range(self.rows):
            for c in range(self.cols):
                pe = ProcessingElement(data_bits=self.data_bits, acc_bits=self.acc_bits,
                                       depth=self.depth, ctrl_bits=self.ctrl_bits,
                                       x_bits=self.x_bits)
                m.submodules[f"pe_{r}_{c}"] = pe
                pes[r][c] = pe
                if r == 0:
                    m.d.comb += [pe.x_in.eq(self.x_top[c]), pe.addr_in.eq(self.addr_top[c]),
                                 pe.ctrl_in.eq(self.ctrl_top[c]),
                                 pe.valid_in.eq(self.valid_top[c])]
                else:
                    up = pes[r - 1][c]
                    m.d.comb += [pe.x_in.eq(up.x_out), pe.addr_in.eq(up.addr_out),
                                 pe.ctrl_in.eq(up.ctrl_out), pe.valid_in.eq(up.valid_out)]
                m.d.comb += pe.psum_in.eq(0 if c == 0 else pes[r][c - 1].psum_out)
                group = (r // wr) * self.col_groups + c // wc
                m.d.comb += [pe.w_en.eq(group_en[group]), pe.w_addr.eq(w_addr),
                             pe.w_data.eq(w_data[(r % wr) * wc + c % wc])]
            last = pes[r][self.cols - 1]
            m.d.comb += [self.psum_row[r].eq(last.psum_out), self.ctrl_row[r].eq(last.ctrl_p),
                         self.valid_row[r].eq(last.valid_p)]
        return m
