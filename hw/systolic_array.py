"""Two-dimensional systolic array of :class:`ProcessingElement` s for matrix-vector products.

Rows are output neurons, columns are input elements. Activations enter at the top of each column
and move down one row per cycle; within a row, partial sums move right through the PEs' cascade
adders. Nothing is broadcast: every operand reaches a PE from its neighbour's register.

Two options cut a wave's fill skew (``cols + slots`` cycles; :class:`ArrayTiming` has the
arithmetic, ``docs/mlp.md`` the figures):

* ``cascade = S``: each row's cascade restarts every ``S`` columns (segments right-aligned, so
  every segment's last column has input skew ``S - 1`` and all finish together), and a
  registered two-input adder tree per row (``ceil(log2(segments))`` levels, wrapping at
  ``acc_bits`` like the cascade) sums the segments. A packed pair starts each segment from
  ``2**(PACK_SHIFT-1)``: its lower field then never goes negative, so the tree reads both fields
  by wiring (``lo = P[0:18] ^ 2**17`` signed, ``hi = P[18:]``); ``S`` is at most
  :func:`~recfabric.hw.processing_element.packed_segment_len`, so segments need no drain.
* ``broadcast = F``: a column's activation, address and control reach all its PEs in the same
  cycle through a register tree in which each register drives at most ``F`` loads; every row
  finishes together (shared int16 weight memories then give the lower PE its half at once).

With ``packed=True`` (int8) two adjacent rows share one DSP48E2 per column
(:class:`~recfabric.hw.processing_element.PackedPEPair`): rows ``2s`` and ``2s+1`` form slot
``s``, which the activations reach ``s`` cycles after the top. The packed cascade's lower field
holds at most :func:`~recfabric.hw.processing_element.packed_segment_len` products (7 for int8),
so every ``segment`` columns the array drains it: the next pair's cascade input is the upper
field alone (the lower 18 bits zeroed: wiring only), and the drained lower field (sign-extended)
and its sign bit (the one it borrowed from the upper field) move on beside the cascade in two
narrow fabric registers per column (reset-less: shift-register LUTs). After the last column the
row sums are ``lo = drained + sext(P[0:18])`` and ``hi = P[18:] + P[17] + borrows``.

Unpacked, the PEs of rows ``2s`` and ``2s+1`` of a column share one weight memory of
``2 * data_bits``-bit words (a 512 x 36 RAMB18 holds both int16 rows where each PE alone would
take a RAMB18): the upper PE's address reads it; the lower PE, one cycle behind, gets its half
through one more register (:class:`~recfabric.hw.processing_element.SharedWeights`).

With ``broadcast``, ``weight_share = G`` (> 1) goes further: every PE of a column reads the
same address in the same cycle, so the weights of ``2 * G`` consecutive rows of a column (``G``
packed pairs, or ``G`` unpacked row pairs) live in ONE memory of ``2 * G * data_bits``-bit words
(:class:`~recfabric.hw.processing_element.WeightBank`; a partial last group holds the rows that
are left), read at the column's broadcast address, each PE (or packed pair, built with
``weight_in``) taking its lanes. Four int8 pairs' 64-bit words fill one 512 x 72 RAMB36 where
each pair alone takes a RAMB18: half the block RAM at a shallow depth. Timing is unchanged.

Weights are written through a wide port, one ``write_rows`` x ``write_cols`` rectangle of PEs per
write (:class:`~recfabric.hw.mlp.load_format.BeatPacking` picks the rectangle). A memory shared
by rows ``2s`` and ``2s+1`` (packed pair or unpacked shared memory; or a weight bank's rows) has
one byte lane per row, each enabled by its row's group: with an even ``write_rows`` (what
``BeatPacking`` picks when the group count allows it) both halves of a word are written by the
same write.

Each PE, packed pair, shared memory and weight bank is built through
:func:`~recfabric.hw.hier.separate`, so hierarchical Verilog emits each distinct one once.
"""

from amaranth.hdl import Cat, Const, Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .array_timing import ArrayTiming
from .hier import separate
from .processing_element import (
    PACK_P_BITS,
    PACK_SHIFT,
    PackedPEPair,
    ProcessingElement,
    SharedWeights,
    WeightBank,
    packed_segment_len,
)

__all__ = ["ArrayTiming", "SystolicArray"]


class SystolicArray(wiring.Component):
    """``rows`` x ``cols`` weight-streaming MAC array (one MAC wave per cycle).

    A *wave* is one ``cols``-element slice of the input vector times the ``rows`` x ``cols``
    weight block that the PEs hold at one address. Column ``c`` of a wave must be presented at
    the top (``x_top[c]``, ``addr_top[c]``, ``ctrl_top[c]``, ``valid_top[c]``)
    :meth:`input_skew` ``(c)`` cycles (``c`` without ``cascade``) after the wave's first columns
    (input skew). Row ``r`` then presents the wave's dot product
    ``sum_c x[c] * w_rc[addr]`` on ``psum_row[r]``, wrapped to ``acc_bits``, with the wave's
    control word (as it entered column ``cols-1``) on ``ctrl_row[r]`` and ``valid_row[r]``,
    :meth:`latency` ``(r)`` cycles after the first columns entered the array.

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
    packed : bool, optional
        Two rows per DSP (int8 only: ``data_bits <= 9``, ``x_bits <= 18``); an odd last row
        keeps a plain PE. Row sums are the same; they leave ``row // 2`` (not ``row``) cycles
        after row 0's.
    write_rows, write_cols : int, optional
        Shape of the PE rectangle one host write fills (default 1 x 1).
    ram_style : str, optional
        ``ram_style`` attribute of the weight memories (``"block"``, ``"distributed"``,
        ``"ultra"``: UltraRAM; None: the synthesis tool chooses).
    cascade : int, optional
        Columns per row-cascade segment (0, default: one cascade through all columns; module
        doc). Column ``c``'s input skew is then :meth:`input_skew` ``(c)``, not ``c``.
    broadcast : int, optional
        Fanout of the activation broadcast registers (0, default: activations move down one
        slot per cycle; at least 2 otherwise).
    weight_share : int, optional
        Row pairs (packed pairs, or unpacked rows ``2s``, ``2s+1``) per weight memory of a
        column (1, default: one memory per pair; module doc). More than 1 needs ``broadcast``.

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
                 ctrl_bits: int, x_bits: int | None = None, packed: bool = False,
                 write_rows: int = 1, write_cols: int = 1, ram_style: str | None = None,
                 cascade: int = 0, broadcast: int = 0, weight_share: int = 1):
        for name, v in (("rows", rows), ("cols", cols), ("write_rows", write_rows),
                        ("write_cols", write_cols), ("weight_share", weight_share)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TypeError(f"{name} must be a positive integer, not {v!r}")
        for name, v in (("cascade", cascade), ("broadcast", broadcast)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise TypeError(f"{name} must be a non-negative integer, not {v!r}")
        if broadcast == 1:
            raise ValueError("broadcast fanout must be 0 (off) or at least 2, not 1")
        if weight_share > 1 and not broadcast:
            raise ValueError(f"weight_share {weight_share} needs the activation broadcast "
                             f"(broadcast >= 2, not {broadcast}): only then do a column's PEs "
                             f"read their weights in the same cycle")
        x_bits = data_bits if x_bits is None else x_bits
        self.packed = bool(packed) and rows >= 2
        # Set on the instance only when used: the class defaults keep the hierarchical
        # fingerprint (hw/hier.py) and so the Verilog of arrays without them unchanged.
        if cascade and cascade < cols:
            self.cascade = cascade
        if broadcast:
            self.broadcast = broadcast
        if weight_share > 1:
            self.weight_share = weight_share
        if self.packed:
            if data_bits + PACK_SHIFT > 27 or x_bits > 18:
                raise ValueError(f"packed arrays need data_bits <= {27 - PACK_SHIFT} and "
                                 f"x_bits <= 18, not {data_bits} and {x_bits}")
            # The upper field (P_BITS - SHIFT bits, signed) must hold a whole wave's sum.
            if cols << (data_bits + x_bits - 2) >= 1 << (PACK_P_BITS - PACK_SHIFT - 2):
                raise ValueError(f"{cols} columns overflow the packed upper field")
            self.segment = packed_segment_len(data_bits, x_bits)
            if self.cascade > self.segment:
                raise ValueError(f"a packed array's cascade segments hold at most "
                                 f"{self.segment} columns (the lower field's products), not "
                                 f"{self.cascade}")
        self.rows, self.cols = rows, cols
        self.data_bits, self.acc_bits, self.depth = data_bits, acc_bits, depth
        self.ctrl_bits, self.x_bits = ctrl_bits, x_bits
        self.ram_style = ram_style
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

    #: Columns per row-cascade segment (0: one cascade through all ``cols``; constructor).
    cascade = 0
    #: Fanout of the activation broadcast registers (0: activations move one slot per cycle).
    broadcast = 0
    #: Row pairs per weight memory of a column (1: one memory per pair; constructor).
    weight_share = 1

    @property
    def timing(self) -> ArrayTiming:
        """The array's wave timing (:class:`ArrayTiming`)."""
        return ArrayTiming(self.rows, self.cols, self.packed, self.cascade, self.broadcast)

    @property
    def slots(self) -> int:
        """PE positions down a column: ``rows``, or ``ceil(rows / 2)`` when packed."""
        return self.timing.slots

    @property
    def segments(self) -> list:
        return self.timing.segments

    @property
    def tree_levels(self) -> int:
        return self.timing.tree_levels

    @property
    def broadcast_levels(self) -> int:
        return self.timing.broadcast_levels

    def input_skew(self, col: int) -> int:
        return self.timing.input_skew(col)

    def slot(self, row: int) -> int:
        return self.timing.slot(row)

    def latency(self, row: int) -> int:
        """Cycles from the first column of a wave entering the top (input skew 0) to its sum
        leaving row ``row`` (:meth:`ArrayTiming.latency`)."""
        return self.timing.latency(row)

    @property
    def dsp_count(self) -> int:
        """DSP48E2 slices the array's multipliers need (one per PE or packed pair)."""
        return self.slots * self.cols

    def group(self, row: int, col: int) -> int:
        """Write group of PE (``row``, ``col``) (``w_group``)."""
        return (row // self.write_rows) * self.col_groups + col // self.write_cols

    def lane(self, row: int, col: int) -> int:
        """Lane of ``w_data`` that PE (``row``, ``col``) takes."""
        return (row % self.write_rows) * self.write_cols + col % self.write_cols

    def elaborate(self, platform):
        m = Module()
        w_en = Signal()
        w_group = Signal.like(self.w_group)
        w_addr = Signal.like(self.w_addr)
        w_data = Signal.like(self.w_data)
        m.d.sync += [w_en.eq(self.w_en), w_group.eq(self.w_group), w_addr.eq(self.w_addr),
                     w_data.eq(self.w_data)]
        # one enable per group, decoded once and shared by the group's PEs
        group_en = [Signal(name=f"w_en_g{q}") for q in range(self.groups)]
        for q, en in enumerate(group_en):
            m.d.comb += en.eq(w_en & (w_group == q))

        def wport(row, col):
            return group_en[self.group(row, col)], w_data[self.lane(row, col)]

        pes = [[None] * self.cols for _ in range(self.slots)]
        banked = self.weight_share > 1  # weights from WeightBanks (wired after the rows)
        share = not self.packed
        feeds = ([self._broadcast_tree(m, c) for c in range(self.cols)] if self.broadcast
                 else None)
        shared_kw = {"lower_delay": 0} if self.broadcast else {}
        for r in range(self.slots):
            pair = self.packed and 2 * r + 1 < self.rows
            for c in range(self.cols):
                # one Verilog module per distinct PE / pair when built hierarchically (hw/hier.py)
                if pair:
                    pe = separate(platform, PackedPEPair, data_bits=self.data_bits,
                                  depth=self.depth, ctrl_bits=self.ctrl_bits, x_bits=self.x_bits,
                                  ram_style=self.ram_style,
                                  **({"weight_in": True} if banked else {}))
                else:
                    shared = banked or share and (r % 2 == 1 or r + 1 < self.rows)
                    pe = separate(platform, ProcessingElement, data_bits=self.data_bits,
                                  acc_bits=self.acc_bits, depth=self.depth,
                                  ctrl_bits=self.ctrl_bits, x_bits=self.x_bits,
                                  weight_in=shared, ram_style=self.ram_style)
                m.submodules[f"pe_{r}_{c}"] = pe
                pes[r][c] = pe
                if feeds is not None:
                    x, a, k, v = feeds[c][r]
                    m.d.comb += [pe.x_in.eq(x), pe.addr_in.eq(a), pe.ctrl_in.eq(k),
                                 pe.valid_in.eq(v)]
                elif r == 0:
                    m.d.comb += [pe.x_in.eq(self.x_top[c]), pe.addr_in.eq(self.addr_top[c]),
                                 pe.ctrl_in.eq(self.ctrl_top[c]),
                                 pe.valid_in.eq(self.valid_top[c])]
                else:
                    up = pes[r - 1][c]
                    m.d.comb += [pe.x_in.eq(up.x_out), pe.addr_in.eq(up.addr_out),
                                 pe.ctrl_in.eq(up.ctrl_out), pe.valid_in.eq(up.valid_out)]
                if banked:
                    pass  # written and read through the column's weight banks
                elif pair:
                    self._pair_write(m, pe, 2 * r, c, wport, w_addr)
                elif not shared:
                    en, lane = wport(2 * r if self.packed else r, c)
                    m.d.comb += [pe.w_en.eq(en), pe.w_addr.eq(w_addr), pe.w_data.eq(lane)]
                elif r % 2 == 1:
                    mem = separate(platform, SharedWeights, data_bits=self.data_bits,
                                   depth=self.depth, ram_style=self.ram_style, **shared_kw)
                    m.submodules[f"weights_{r - 1}_{c}"] = mem
                    self._pair_write(m, mem, r - 1, c, wport, w_addr)
                    m.d.comb += [mem.addr_in.eq(pes[r - 1][c].addr_in),
                                 pes[r - 1][c].w_in.eq(mem.w_upper), pe.w_in.eq(mem.w_lower)]
            if self.cascade:
                self._segmented_row(m, r, pes[r], pair)
            elif pair:
                self._pair_row(m, r, pes[r])
            else:
                for c in range(self.cols):
                    m.d.comb += pes[r][c].psum_in.eq(0 if c == 0 else pes[r][c - 1].psum_out)
                last = pes[r][self.cols - 1]
                row = 2 * r if self.packed else r
                m.d.comb += [self.psum_row[row].eq(last.psum_out),
                             self.ctrl_row[row].eq(last.ctrl_p),
                             self.valid_row[row].eq(last.valid_p)]
        if banked:
            self._weight_banks(m, platform, pes, wport, w_addr)
        return m

    def _weight_banks(self, m, platform, pes, wport, w_addr):
        """One :class:`~recfabric.hw.processing_element.WeightBank` per ``2 * weight_share``
        rows of each column (the last one holds the rows left), read at the address of its
        first slot (every slot of a broadcast column sees the same one in the same cycle); each
        PE or packed pair takes its rows' lanes, each lane is written by its row's group."""
        span = 2 * self.weight_share
        for r0 in range(0, self.rows, span):
            rows = range(r0, min(r0 + span, self.rows))
            for c in range(self.cols):
                bank = separate(platform, WeightBank, lanes=len(rows), data_bits=self.data_bits,
                                depth=self.depth, ram_style=self.ram_style)
                m.submodules[f"bank_{r0}_{c}"] = bank
                for j, row in enumerate(rows):
                    en, lane = wport(row, c)
                    m.d.comb += [bank.w_en[j].eq(en), bank.w_data[j].eq(lane)]
                m.d.comb += [bank.w_addr.eq(w_addr),
                             bank.addr_in.eq(pes[self.slot(r0)][c].addr_in)]
                for row in rows:
                    s = self.slot(row)
                    if self.packed and 2 * s + 1 < self.rows:  # a pair: lane 0 row 2s, 1 2s+1
                        m.d.comb += pes[s][c].w_in[row % 2].eq(bank.w_out[row - r0])
                    else:
                        m.d.comb += pes[s][c].w_in.eq(bank.w_out[row - r0])

    @staticmethod
    def _pair_write(m, unit, row, c, wport, w_addr):
        """Byte-lane write port of a memory shared by rows ``row`` and ``row + 1`` of column
        ``c``: each lane enabled by its row's write group, so one write fills both halves when
        the rows share a group."""
        (en0, d0), (en1, d1) = wport(row, c), wport(row + 1, c)
        m.d.comb += [unit.w_en.eq(Cat(en0, en1)), unit.w_addr.eq(w_addr),
                     unit.w_data[0].eq(d0), unit.w_data[1].eq(d1)]

    def _pair_row(self, m, r, row):
        """Cascade of packed pairs for rows ``2r``, ``2r+1``, drained every ``segment`` columns
        (module doc)."""
        seg = self.segment
        lo_bits = self.data_bits + self.x_bits + max(1, self.cols.bit_length()) + 1
        k_bits = max(1, (self.cols // seg + 1).bit_length())
        lo_prev = k_prev = None  # drained lower sum and borrows, aligned with row[c-1].psum_out
        for c in range(self.cols):
            pe = row[c]
            if c == 0:
                m.d.comb += pe.psum_in.eq(0)
                continue
            left = row[c - 1].psum_out
            if c % seg:
                m.d.comb += pe.psum_in.eq(left)
                if lo_prev is None:
                    continue
                lo_c = Signal(signed(lo_bits), name=f"lo_{r}_{c}", reset_less=True)
                k_c = Signal(k_bits, name=f"borrow_{r}_{c}", reset_less=True)
                m.d.sync += [lo_c.eq(lo_prev), k_c.eq(k_prev)]
            else:
                # Drain: the next cascade starts from the upper field; the lower one moves out.
                m.d.comb += pe.psum_in.eq(Cat(Const(0, PACK_SHIFT), left[PACK_SHIFT:]).as_signed())
                lo_c = Signal(signed(lo_bits), name=f"lo_{r}_{c}", reset_less=True)
                k_c = Signal(k_bits, name=f"borrow_{r}_{c}", reset_less=True)
                lo_field = left[:PACK_SHIFT].as_signed()
                borrow = left[PACK_SHIFT - 1]
                if lo_prev is None:
                    m.d.sync += [lo_c.eq(lo_field), k_c.eq(borrow)]
                else:
                    m.d.sync += [lo_c.eq(lo_prev + lo_field), k_c.eq(k_prev + borrow)]
            lo_prev, k_prev = lo_c, k_c
        last = row[self.cols - 1]
        p = last.psum_out
        lo = p[:PACK_SHIFT].as_signed()
        hi = p[PACK_SHIFT:].as_signed() + p[PACK_SHIFT - 1]
        if lo_prev is not None:
            # The narrow borrow count first: one wide adder per row, not two in series.
            lo, hi = lo + lo_prev, p[PACK_SHIFT:].as_signed() + (k_prev + p[PACK_SHIFT - 1])
        for row_ix, v in ((2 * r, lo), (2 * r + 1, hi)):
            m.d.comb += [self.psum_row[row_ix].eq(v), self.ctrl_row[row_ix].eq(last.ctrl_p),
                         self.valid_row[row_ix].eq(last.valid_p)]

    def _broadcast_tree(self, m, c):
        """Column ``c``'s top inputs, fanned out to its :attr:`slots` PEs through
        :attr:`broadcast_levels` levels of registers (each driving at most :attr:`broadcast`
        loads); returns one ``(x, addr, ctrl, valid)`` per slot, all alike in time."""
        f, levels = self.broadcast, self.broadcast_levels
        nodes = [(self.x_top[c], self.addr_top[c], self.ctrl_top[c], self.valid_top[c])]
        for lv in range(levels):
            # level lv + 1 has ceil(slots / f ** (levels - lv)) registers; register j is driven
            # by register j // f of the level above
            n = -(-self.slots // f ** (levels - lv))
            nxt = []
            for j in range(n):
                src = nodes[j // f]
                regs = (Signal(signed(self.x_bits), name=f"bc_x_{c}_{lv}_{j}"),
                        Signal(len(src[1]), name=f"bc_addr_{c}_{lv}_{j}"),
                        Signal(self.ctrl_bits, name=f"bc_ctrl_{c}_{lv}_{j}"),
                        Signal(name=f"bc_valid_{c}_{lv}_{j}"))
                m.d.sync += [d.eq(s) for d, s in zip(regs, src)]
                nxt.append(regs)
            nodes = nxt
        return [nodes[s // f] for s in range(self.slots)]

    def _segmented_row(self, m, r, row, pair):
        """Slot ``r``'s cascade in :attr:`segments`, summed by a registered adder tree.

        Each segment's cascade starts afresh at its first column (zero, or for a packed pair
        ``2**(PACK_SHIFT-1)``: the lower field then holds its sum plus that offset, which is
        never negative, so nothing borrows from the upper field and both fields are read by
        wiring alone). A packed segment holds at most :func:`packed_segment_len` columns, so
        its lower field is exact without a drain. The segments' sums (for a pair: the lower and
        the upper rows' separately) go through :attr:`tree_levels` levels of two-input adders,
        one register per level, wrapping at ``acc_bits`` like the cascade does."""
        segs = self.segments
        start = 1 << (PACK_SHIFT - 1) if pair else 0
        for first, end in segs:
            for c in range(first, end):
                m.d.comb += row[c].psum_in.eq(start if c == first else row[c - 1].psum_out)
        outs = [p.psum_out for p in (row[end - 1] for _, end in segs)]
        last = row[self.cols - 1]
        ctrl, valid = last.ctrl_p, last.valid_p
        for lv in range(self.tree_levels):
            c_n = Signal.like(ctrl, name=f"tree_ctrl_{r}_{lv}")
            v_n = Signal(name=f"tree_valid_{r}_{lv}")
            m.d.sync += [c_n.eq(ctrl), v_n.eq(valid)]
            ctrl, valid = c_n, v_n
        if pair:
            lo_bits = PACK_SHIFT + self.tree_levels
            lo = [Cat(p[:PACK_SHIFT - 1], ~p[PACK_SHIFT - 1]).as_signed() for p in outs]
            hi = [p[PACK_SHIFT:].as_signed() for p in outs]
            sums = ((2 * r, self._tree(m, lo, lo_bits, f"lo_{r}")),
                    (2 * r + 1, self._tree(m, hi, self.acc_bits, f"hi_{r}")))
        else:
            sums = ((2 * r if self.packed else r, self._tree(m, outs, self.acc_bits, f"t_{r}")),)
        for row_ix, v in sums:
            m.d.comb += [self.psum_row[row_ix].eq(v), self.ctrl_row[row_ix].eq(ctrl),
                         self.valid_row[row_ix].eq(valid)]

    def _tree(self, m, leaves, bits, name):
        """Registered binary adder tree over ``leaves`` (signed ``bits``-bit sums, wrapping);
        an odd node out is registered alone so every leaf is :attr:`tree_levels` deep."""
        level = 0
        while len(leaves) > 1:
            nxt = []
            for j in range(0, len(leaves), 2):
                s_ = Signal(signed(bits), name=f"{name}_{level}_{j // 2}", reset_less=True)
                pair_sum = leaves[j] + leaves[j + 1] if j + 1 < len(leaves) else leaves[j]
                m.d.sync += s_.eq(pair_sum)
                nxt.append(s_)
            leaves, level = nxt, level + 1
        return leaves[0]
