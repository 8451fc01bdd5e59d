"""LayerEngine: one fixed-point layer on a systolic array, tiled over its weights."""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..hier import separate
from ..processing_element import packed_segment_len
from ..stream_types import BlockBeatLayout
from ..stream_types import index_bits as _bits_for
from ..systolic_array import ArrayTiming, SystolicArray
from .activation_buffer import ActivationReadSignature, ActivationWriteSignature
from .load_format import BeatPacking, Desc, LoadKind, MLPBlockSel, MLPLoadLayout
from .requantizer import REQUANT_LATENCY, Requantizer


def _pos(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise TypeError(f"{name} must be a positive integer, not {v!r}")

__all__ = ["LayerEngine", "ROW_END_LATENCY"]

#: Cycles from a wave's sum leaving an array row to its result being written (bias read and
#: accumulate, then the requantizer).
ROW_END_LATENCY = 2 + REQUANT_LATENCY


class _Ctrl(data.StructLayout):
    def __init__(self, tn_bits, bank_bits):
        super().__init__({"first": 1, "last": 1, "eor": 1, "tn": tn_bits, "bank": bank_bits})


class LayerEngine(wiring.Component):
    """One MLP layer on a ``rows`` x ``cols`` systolic array, pipelined across requests.

    For each request it takes a filled bank of its input buffer and allocates a bank of its
    output buffer, then issues one MAC wave per cycle: for output tile ``tn`` in
    ``0..n_tiles-1``, input tile ``tk`` in ``0..k_tiles-1``, lane ``c`` of input word ``tk``
    times the weights of word ``tn * k_tiles + tk``. Row ``r`` accumulates output
    ``tn * rows + r`` (bias as the initial value, ``acc_bits`` wrapping), requantizes it and
    writes it to lane ``r``, word ``tn`` of the output bank. The next request starts on the
    cycle after the last wave when its input is ready: a layer occupies its engine for exactly
    ``k_tiles * n_tiles`` cycles.

    Weight layout (host): PE (``r``, ``c``) word ``tn * k_tiles + tk`` holds
    ``W[tn * rows + r, tk * cols + c]`` (zero where the index is past ``N`` or ``K``: padded
    inputs are not masked, so padded weights must be zero). Bias of row ``r`` word ``tn`` holds
    ``b[tn * rows + r]``. Weights and biases are written by packed beats (``i_block``,
    :class:`~recfabric.hw.mlp.load_format.BeatPacking`): one beat per cycle, each writing a whole
    group of PEs (or of bias rows) at one address.

    Parameters
    ----------
    index : int
        Engine number (the ``engine`` field of load words it accepts).
    rows, cols : int
        Array shape.
    data_bits, acc_bits : int
    max_in, max_out : int
        Largest layer fan-in and fan-out the memories hold.
    banks : int
        Banks of the activation buffers around the engine.
    out_bits : int, optional
        Output element width (default ``data_bits``).
    pack_int8 : bool, optional
        With ``data_bits == 8`` (and ``rows >= 2``), two rows per DSP48E2
        (:class:`~recfabric.hw.processing_element.PackedPEPair`; default True). Results are
        identical; the array's rows leave ``ceil(rows / 2)`` rather than ``rows`` cycles apart,
        so :attr:`array_latency` shrinks.
    beat_bits : int, optional
        Width of a weight/bias beat (default 512, the program loader's word).
    weight_lutram_depth : int, optional
        The PEs' weight memories (:attr:`wdepth` words) are LUT RAM (``ram_style
        "distributed"``) when at most this deep, else block RAM (``"block"``); 0 (default): no
        attribute, the synthesis tool chooses.
    weight_uram : bool, optional
        The weight memories are UltraRAM (``ram_style "ultra"``) whatever their depth
        (overrides ``weight_lutram_depth``; default False). A URAM288 is 4,096 x 72: with
        ``weight_share`` 2 an int16 column's memories (four rows, 64 bits) take one each.
    cascade : int, optional
        Columns per row-cascade segment of the array (0, default: one cascade per row; see
        :class:`~recfabric.hw.systolic_array.SystolicArray`): the input skew spans ``cascade``
        columns instead of ``cols``, and an adder tree sums each row's segments.
    broadcast : int, optional
        Fanout of the array's activation broadcast registers (0, default: activations move
        down a column one PE position per cycle, so rows finish one after another; else every
        row finishes in the same cycle).
    weight_share : int, optional
        Row pairs per weight memory of an array column (1, default: one memory per packed pair
        or shared row pair; more needs ``broadcast``; see
        :class:`~recfabric.hw.systolic_array.SystolicArray`): the same weights and timing in
        fewer, wider memories.

    Members
    -------
    act_in : Out(ActivationReadSignature)
        Reads the input buffer (``cols`` lanes).
    act_out : Out(ActivationWriteSignature)
        Writes the output buffer (``rows`` lanes).
    i_load : In(stream.Signature(MLPLoadLayout))
        Descriptor words addressed to this engine (always ready).
    i_block : In(stream.Signature(BlockBeatLayout(beat_bits)))
        Weight and bias beats addressed to this engine (``sel`` an :class:`MLPBlockSel`;
        always ready, one beat per cycle).
    out_len : Out(16)
        The loaded ``OUT_LEN`` descriptor field.
    """

    def __init__(self, *, index: int = 0, rows: int, cols: int, data_bits: int, acc_bits: int,
                 max_in: int, max_out: int, banks: int = 4, out_bits: int | None = None,
                 load_layout: MLPLoadLayout | None = None, beat_bits: int = 512,
                 block_sel: MLPBlockSel | None = None, pack_int8: bool = True,
                 weight_lutram_depth: int = 0, cascade: int = 0, broadcast: int = 0,
                 weight_share: int = 1, weight_uram: bool = False):
        for name, v in (("rows", rows), ("cols", cols), ("max_in", max_in),
                        ("max_out", max_out)):
            _pos(name, v)
        self.index, self.rows, self.cols = index, rows, cols
        self.data_bits, self.acc_bits = data_bits, acc_bits
        self.out_bits = data_bits if out_bits is None else out_bits
        self.max_in, self.max_out, self.banks = max_in, max_out, banks
        self.packed = bool(pack_int8) and data_bits <= 8 and rows >= 2
        #: PE positions down a column (the array's row-to-row skew).
        self.slots = (rows + 1) // 2 if self.packed else rows
        self.k_tiles_max = math.ceil(max_in / cols)
        self.n_tiles_max = math.ceil(max_out / rows)
        self.in_local_bits = _bits_for(self.k_tiles_max)
        self.out_local_bits = _bits_for(self.n_tiles_max)
        self.wdepth = self.k_tiles_max * self.n_tiles_max
        self.weight_uram = bool(weight_uram)
        self.weight_ram_style = ("ultra" if self.weight_uram else
                                 None if not weight_lutram_depth else "distributed"
                                 if self.wdepth <= weight_lutram_depth else "block")
        if load_layout is None:
            load_layout = MLPLoadLayout(engines=index + 1, rows=rows, cols=cols,
                                        depth=self.wdepth, acc_bits=acc_bits)
        self.load_layout = load_layout
        self.beat_bits = beat_bits
        self.packing = BeatPacking(rows=rows, cols=cols, data_bits=data_bits, acc_bits=acc_bits,
                                   beat_bits=beat_bits)
        if block_sel is None:
            block_sel = MLPBlockSel(engines=index + 1,
                                    groups=max(self.packing.groups, self.packing.bias_groups))
        self.block_sel = block_sel
        for name, v in (("cascade", cascade), ("broadcast", broadcast)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise TypeError(f"{name} must be a non-negative integer, not {v!r}")
        if broadcast == 1:
            raise ValueError("broadcast fanout must be 0 (off) or at least 2, not 1")
        _pos("weight_share", weight_share)
        if weight_share > 1 and not broadcast:
            raise ValueError(f"weight_share {weight_share} needs the activation broadcast "
                             f"(broadcast >= 2, not {broadcast})")
        if self.packed and packed_segment_len(data_bits, data_bits) < cascade < cols:
            raise ValueError(f"cascade {cascade} exceeds the "
                             f"{packed_segment_len(data_bits, data_bits)} "
                             f"products a packed int8 segment holds")
        # Only when used (class defaults otherwise): the hierarchical fingerprint (hw/hier.py),
        # and so the Verilog, of engines without them stays as it was.
        if cascade:
            self.cascade = cascade
        if broadcast:
            self.broadcast = broadcast
        if weight_share > 1:
            self.weight_share = weight_share
        super().__init__({
            "act_in": Out(ActivationReadSignature(lanes=cols, bits=data_bits,
                                                  local_bits=self.in_local_bits, banks=banks)),
            "act_out": Out(ActivationWriteSignature(lanes=rows, bits=self.out_bits,
                                                    local_bits=self.out_local_bits,
                                                    banks=banks)),
            "i_load": In(stream.Signature(load_layout)),
            "i_block": In(stream.Signature(BlockBeatLayout(beat_bits))),
            "out_len": Out(16),
        })

    #: Columns per cascade segment (0: whole rows; constructor).
    cascade = 0
    #: Activation broadcast fanout (0: none; constructor).
    broadcast = 0
    #: Row pairs per weight memory of a column (1: one per pair; constructor).
    weight_share = 1

    @property
    def timing(self) -> ArrayTiming:
        """The array's wave timing."""
        return ArrayTiming(self.rows, self.cols, self.packed, self.cascade, self.broadcast)

    @property
    def array_latency(self) -> int:
        """Cycles from issuing a wave to its last row's result being written: the activation
        read, then the array's :meth:`~recfabric.hw.systolic_array.ArrayTiming.latency`
        (``cols + slots + 2`` without segments or broadcast), then the row end."""
        return 1 + 1 + self.timing.latency(self.rows - 1) + ROW_END_LATENCY

    def elaborate(self, platform):
        # One function on purpose (~125 lines): the tile sequencer, the weight/bias memories, the
        # array and the row-end requantizers are timed against each other (ROW_END_LATENCY); the
        # pipeline alignment is easier to check when it is read in one place.
        m = Module()
        R, C = self.rows, self.cols
        bank_bits = _bits_for(self.banks)
        ctrl_layout = _Ctrl(self.out_local_bits, bank_bits)
        pk = self.packing
        extra = {k: v for k, v in (("cascade", self.cascade), ("broadcast", self.broadcast))
                 if v}
        if self.weight_share > 1:
            extra["weight_share"] = self.weight_share
        m.submodules.array = arr = SystolicArray(
            rows=R, cols=C, data_bits=self.data_bits, acc_bits=self.acc_bits, depth=self.wdepth,
            ctrl_bits=ctrl_layout.size, packed=self.packed, write_rows=pk.g, write_cols=pk.w,
            ram_style=self.weight_ram_style, **extra)

        # ---- descriptor and load port ----
        k_tiles = Signal(range(self.k_tiles_max + 1))
        n_tiles = Signal(range(self.n_tiles_max + 1))
        shift = Signal(signed(8))
        flags = Signal(3)
        out_len = self.out_len
        ld = self.i_load.payload
        m.d.comb += self.i_load.ready.eq(1)
        blk = self.i_block.payload
        sel = data.View(self.block_sel, blk.sel[:self.block_sel.size])
        m.d.comb += self.i_block.ready.eq(1)
        lanes = [blk.data[i * self.data_bits:(i + 1) * self.data_bits]
                 for i in range(arr.write_lanes)]
        m.d.comb += [arr.w_en.eq(self.i_block.valid & (sel.kind == LoadKind.WEIGHT)),
                     arr.w_group.eq(sel.group), arr.w_addr.eq(blk.addr)]
        m.d.comb += [arr.w_data[i].eq(v) for i, v in enumerate(lanes)]
        with m.If(self.i_load.valid & (ld.kind == LoadKind.DESC)):
            with m.Switch(ld.addr):
                with m.Case(Desc.K_TILES):
                    m.d.sync += k_tiles.eq(ld.data)
                with m.Case(Desc.N_TILES):
                    m.d.sync += n_tiles.eq(ld.data)
                with m.Case(Desc.SHIFT):
                    m.d.sync += shift.eq(ld.data)
                with m.Case(Desc.FLAGS):
                    m.d.sync += flags.eq(ld.data)
                with m.Case(Desc.OUT_LEN):
                    m.d.sync += out_len.eq(ld.data)

        # ---- sequencer: one wave per cycle ----
        busy = Signal()
        tk = Signal(range(self.k_tiles_max + 1))
        tn = Signal(range(self.n_tiles_max + 1))
        waddr = Signal(range(self.wdepth + 1))
        in_bank = Signal(bank_bits)
        out_bank = Signal(bank_bits)
        last_k = tk + 1 >= k_tiles
        final = last_k & (tn + 1 >= n_tiles)
        ready_next = self.act_in.filled & self.act_out.can_start

        def begin():
            m.d.comb += [self.act_in.take.eq(1), self.act_out.start.eq(1)]
            m.d.sync += [busy.eq(1), tk.eq(0), tn.eq(0), waddr.eq(0),
                         in_bank.eq(self.act_in.bank), out_bank.eq(self.act_out.bank)]

        with m.If(~busy):
            with m.If(ready_next):
                begin()
        with m.Else():
            m.d.sync += waddr.eq(waddr + 1)
            with m.If(last_k):
                m.d.sync += [tk.eq(0), tn.eq(tn + 1)]
            with m.Else():
                m.d.sync += tk.eq(tk + 1)
            with m.If(final):
                with m.If(ready_next):
                    begin()
                with m.Else():
                    m.d.sync += busy.eq(0)

        # ---- input skew: column c sees a wave arr.input_skew(c) cycles after the first ----
        ctrl0 = Signal(ctrl_layout)
        m.d.comb += [ctrl0.first.eq(tk == 0), ctrl0.last.eq(last_k), ctrl0.eor.eq(final),
                     ctrl0.tn.eq(tn), ctrl0.bank.eq(out_bank)]
        d_valid, d_ctrl = [busy], [ctrl0]
        d_in = [Cat(tk[:self.in_local_bits], in_bank)]
        d_w = [waddr]
        skews = [arr.input_skew(c) for c in range(C)]
        for j in range(1, max(skews) + 2):
            v = Signal(name=f"skew_valid{j}")
            c = Signal(ctrl_layout, name=f"skew_ctrl{j}")
            a = Signal(self.in_local_bits + bank_bits, name=f"skew_in{j}")
            w = Signal(range(self.wdepth + 1), name=f"skew_w{j}")
            m.d.sync += [v.eq(d_valid[-1]), c.eq(d_ctrl[-1]), a.eq(d_in[-1]), w.eq(d_w[-1])]
            d_valid.append(v)
            d_ctrl.append(c)
            d_in.append(a)
            d_w.append(w)
        m.d.comb += self.act_in.en.eq(1)
        for c, k in enumerate(skews):
            m.d.comb += [self.act_in.addr[c].eq(d_in[k]), arr.x_top[c].eq(self.act_in.data[c])]
            if self.cascade and self.broadcast:
                # Columns of equal skew (one per segment) each get their own last skew register
                # (same timing as d_*[k + 1]): each one's broadcast tree then loads only it.
                w = Signal.like(d_w[k + 1], name=f"skew_w_col{c}")
                ctl = Signal(ctrl_layout, name=f"skew_ctrl_col{c}")
                v = Signal(name=f"skew_valid_col{c}")
                m.d.sync += [w.eq(d_w[k]), ctl.eq(d_ctrl[k]), v.eq(d_valid[k])]
            else:
                w, ctl, v = d_w[k + 1], d_ctrl[k + 1], d_valid[k + 1]
            m.d.comb += [arr.addr_top[c].eq(w), arr.ctrl_top[c].eq(ctl),
                         arr.valid_top[c].eq(v)]

        # ---- row ends: bias, accumulate, requantize, write ----
        nbias = self.n_tiles_max
        # bias beats: registered once, then row r takes lane r % gb of group r // gb
        b_en = Signal()
        b_group = Signal.like(sel.group)
        b_addr = Signal(range(nbias))
        b_data = Signal(self.beat_bits)
        m.d.sync += [b_en.eq(self.i_block.valid & (sel.kind == LoadKind.BIAS)),
                     b_group.eq(sel.group), b_addr.eq(blk.addr), b_data.eq(blk.data)]
        for r in range(R):
            bias_mem = Memory(shape=signed(self.acc_bits), depth=nbias, init=[])
            m.submodules[f"bias{r}"] = bias_mem
            bw = bias_mem.write_port()
            br = bias_mem.read_port()
            lane = r % pk.gb
            m.d.comb += [bw.en.eq(b_en & (b_group == r // pk.gb)), bw.addr.eq(b_addr),
                         bw.data.eq(b_data[lane * self.acc_bits:(lane + 1) * self.acc_bits])]
            ctrl = data.View(ctrl_layout, arr.ctrl_row[r])
            m.d.comb += br.addr.eq(ctrl.tn)
            p1 = Signal(signed(self.acc_bits), name=f"p1_{r}")
            c1 = Signal(ctrl_layout, name=f"c1_{r}")
            v1 = Signal(name=f"v1_{r}")
            m.d.sync += [p1.eq(arr.psum_row[r]), c1.eq(ctrl), v1.eq(arr.valid_row[r])]
            acc = Signal(signed(self.acc_bits), name=f"acc{r}")
            c2 = Signal(ctrl_layout, name=f"c2_{r}")
            v2 = Signal(name=f"v2_{r}")
            with m.If(v1):
                m.d.sync += acc.eq(Mux(c1.first, br.data, acc) + p1)
            m.d.sync += [c2.eq(c1), v2.eq(v1 & c1.last)]
            # one module for all rows when built hierarchically (hw/hier.py)
            rq = separate(platform, Requantizer, acc_bits=self.acc_bits,
                          data_bits=self.data_bits, out_bits=self.out_bits)
            m.submodules[f"requant{r}"] = rq
            m.d.comb += [rq.acc.eq(acc), rq.shift.eq(shift), rq.relu.eq(flags[0]),
                         rq.floor.eq(flags[1]), rq.logit.eq(flags[2])]
            cs, vs = c2, v2
            for k in range(REQUANT_LATENCY):
                cn = Signal(ctrl_layout, name=f"c{3 + k}_{r}")
                vn = Signal(name=f"v{3 + k}_{r}")
                m.d.sync += [cn.eq(cs), vn.eq(vs)]
                cs, vs = cn, vn
            m.d.comb += [self.act_out.en[r].eq(vs),
                         self.act_out.addr[r].eq(Cat(cs.tn[:self.out_local_bits], cs.bank)),
                         self.act_out.data[r].eq(rq.y)]
            if r == R - 1:
                m.d.comb += [self.act_out.commit.eq(vs & cs.eor),
                             self.act_in.release.eq(vs & cs.eor)]
        return m
