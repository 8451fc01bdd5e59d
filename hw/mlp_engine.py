"""Fixed-point MLP: layer engines on systolic arrays, chained into a pipeline across requests.

Structure (one engine per layer, layers pipelined across requests)::

    i_vector -> InputWriter -> buf[0] -> LayerEngine[0] -> buf[1] -> ... -> LayerEngine[L-1]
             -> buf[L] -> VectorDrain -> (Sigmoid) -> o_scores / o_result

Every ``buf`` is an :class:`ActivationBuffer`: one memory per lane and ``banks`` banks, so a
producer fills request i+1 while its consumer still reads request i. Engine ``l`` is a
``rows[l]`` x ``cols[l]`` :class:`~recfabric.hw.systolic_array.SystolicArray`; it reads its input
vector ``cols[l]`` elements per cycle (lane = element index mod ``cols[l]``) and writes output
element ``n`` of row ``n mod rows[l]`` into lane ``n mod rows[l]`` of the next buffer, so
``cols[l+1] == rows[l]``: the next engine reads the lanes the previous one wrote, and no lane is
written twice in a cycle.

A layer with ``K`` inputs and ``N`` outputs takes ``k_tiles * n_tiles`` cycles on its engine
(``k_tiles = ceil(K / cols)``, ``n_tiles = ceil(N / rows)``): one MAC wave per cycle, no bubbles
between tiles or between back-to-back requests. The initiation interval of the pipeline is the
largest of these (see :mod:`recfabric.host.mlp_cycle_model`); sizing ``rows``/``cols`` per layer
in proportion to each layer's MACs balances it.

Runtime data (loaded through ``i_load``, see :class:`MLPLoadLayout` and :func:`mlp_load_words`):
weights, biases and per-engine descriptors (tile counts, requantize shift, rounding, ReLU,
saturation width, output length). A model with narrower layers, or fewer layers (padded with
identity layers at the end, int16 only), runs on the same hardware. Loading while requests are
in flight is not supported.
"""

from __future__ import annotations

import enum
import math

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib import enum as aenum
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from recfabric.host import numerics as nx

from .sigmoid import LogitLayout, ScoreLayout, Sigmoid
from .systolic_array import SystolicArray

__all__ = [
    "LoadKind", "Desc", "MLPLoadLayout", "MLPInputLayout", "ActivationWriteSignature",
    "ActivationReadSignature", "ActivationBuffer", "Requantizer", "LayerEngine", "InputWriter",
    "VectorDrain", "MLPPipeline", "mlp_load_words", "SHIFT_MIN", "SHIFT_MAX",
    "ROW_END_LATENCY",
]

#: Legal requantize shifts: stated by the numerics spec, re-exported here.
SHIFT_MIN, SHIFT_MAX = nx.SHIFT_MIN, nx.SHIFT_MAX
#: Requantizer pipeline depth.
REQUANT_LATENCY = 2
#: Cycles from a wave's sum leaving an array row to its result being written (bias read and
#: accumulate, then the requantizer).
ROW_END_LATENCY = 2 + REQUANT_LATENCY


def _pos(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise TypeError(f"{name} must be a positive integer, not {v!r}")


def _bits_for(n: int) -> int:
    """Address bits for ``n`` entries (at least 1)."""
    return max(1, (n - 1).bit_length())


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


class MLPInputLayout(data.StructLayout):
    """One chunk of an MLP input vector: elements ``lanes*j .. lanes*j + lanes - 1``.

    Members
    -------
    data : ArrayLayout(signed(bits), lanes)
    last : unsigned(1)
        Last chunk of the request's vector.
    """

    def __init__(self, *, bits: int, lanes: int):
        _pos("bits", bits)
        _pos("lanes", lanes)
        super().__init__({"data": data.ArrayLayout(signed(bits), lanes), "last": 1})


class ActivationWriteSignature(wiring.Signature):
    """Producer side of an :class:`ActivationBuffer` (members as the producer sees them).

    Members
    -------
    en : Out(lanes)
        Per-lane write enable.
    addr : Out(ArrayLayout(unsigned(bank_bits + local_bits), lanes))
        Per-lane address: ``local | bank << local_bits``.
    data : Out(ArrayLayout(signed(bits), lanes))
    start : Out(1)
        Allocate bank ``bank`` for the next request (allowed when ``can_start``).
    commit : Out(1)
        The oldest allocated bank is completely written.
    can_start : In(1)
    bank : In(unsigned(bank_bits))
        Bank the next ``start`` allocates.
    """

    def __init__(self, *, lanes: int, bits: int, local_bits: int, banks: int):
        self.lanes, self.bits, self.local_bits, self.banks = lanes, bits, local_bits, banks
        bank_bits = _bits_for(banks)
        super().__init__({
            "en": Out(lanes),
            "addr": Out(data.ArrayLayout(local_bits + bank_bits, lanes)),
            "data": Out(data.ArrayLayout(signed(bits), lanes)),
            "start": Out(1),
            "commit": Out(1),
            "can_start": In(1),
            "bank": In(bank_bits),
        })


class ActivationReadSignature(wiring.Signature):
    """Consumer side of an :class:`ActivationBuffer` (members as the consumer sees them).

    Members
    -------
    addr : Out(ArrayLayout(unsigned(bank_bits + local_bits), lanes))
    en : Out(1)
        Read enable (``data`` holds while low).
    data : In(ArrayLayout(signed(bits), lanes))
        Read data, one cycle after ``addr``.
    filled : In(1)
        The next bank to take holds a complete request.
    bank : In(unsigned(bank_bits))
        The next bank to take.
    take : Out(1)
        Begin reading that bank.
    release : Out(1)
        Done with the oldest taken bank; the producer may reuse it.
    """

    def __init__(self, *, lanes: int, bits: int, local_bits: int, banks: int):
        self.lanes, self.bits, self.local_bits, self.banks = lanes, bits, local_bits, banks
        bank_bits = _bits_for(banks)
        super().__init__({
            "addr": Out(data.ArrayLayout(local_bits + bank_bits, lanes)),
            "en": Out(1),
            "data": In(data.ArrayLayout(signed(bits), lanes)),
            "filled": In(1),
            "bank": In(bank_bits),
            "take": Out(1),
            "release": Out(1),
        })


class ActivationBuffer(wiring.Component):
    """Multi-bank, multi-lane activation memory between two pipeline stages.

    Banks are used in request order by both sides. A bank is *allocated* by ``wr.start`` and
    freed by ``rd.release``; it is *filled* by ``wr.commit``; the consumer may ``rd.take`` it once
    filled. So a producer can work on several requests (up to ``banks``) while the consumer still
    reads older ones.

    Parameters
    ----------
    lanes, bits, local_bits : int
        Lane count, element width, address bits within a bank.
    banks : int
        Power of two, at least 2.

    Members
    -------
    wr : In(ActivationWriteSignature)
    rd : In(ActivationReadSignature)
    """

    def __init__(self, *, lanes: int, bits: int, local_bits: int, banks: int):
        for name, v in (("lanes", lanes), ("bits", bits), ("local_bits", local_bits)):
            _pos(name, v)
        if banks < 2 or banks & (banks - 1):
            raise ValueError(f"banks must be a power of two >= 2, not {banks!r}")
        self.lanes, self.bits, self.local_bits, self.banks = lanes, bits, local_bits, banks
        kw = dict(lanes=lanes, bits=bits, local_bits=local_bits, banks=banks)
        super().__init__({"wr": In(ActivationWriteSignature(**kw)),
                          "rd": In(ActivationReadSignature(**kw))})

    def elaborate(self, platform):
        m = Module()
        depth = self.banks << self.local_bits
        for lane in range(self.lanes):
            mem = Memory(shape=signed(self.bits), depth=depth, init=[])
            m.submodules[f"lane{lane}"] = mem
            wp = mem.write_port()
            rp = mem.read_port()
            m.d.comb += [wp.en.eq(self.wr.en[lane]), wp.addr.eq(self.wr.addr[lane]),
                         wp.data.eq(self.wr.data[lane]), rp.addr.eq(self.rd.addr[lane]),
                         rp.en.eq(self.rd.en), self.rd.data[lane].eq(rp.data)]
        bb = _bits_for(self.banks)
        alloc = Signal(self.banks)
        filled = Signal(self.banks)
        wr_ptr, cm_ptr, rd_ptr, rl_ptr = (Signal(bb, name=n) for n in ("wr_ptr", "cm_ptr",
                                                                       "rd_ptr", "rl_ptr"))
        m.d.comb += [self.wr.can_start.eq(~alloc.bit_select(wr_ptr, 1)),
                     self.wr.bank.eq(wr_ptr),
                     self.rd.filled.eq(filled.bit_select(rd_ptr, 1)),
                     self.rd.bank.eq(rd_ptr)]
        with m.If(self.wr.start):
            m.d.sync += [alloc.bit_select(wr_ptr, 1).eq(1), wr_ptr.eq(wr_ptr + 1)]
        with m.If(self.wr.commit):
            m.d.sync += [filled.bit_select(cm_ptr, 1).eq(1), cm_ptr.eq(cm_ptr + 1)]
        with m.If(self.rd.take):
            m.d.sync += rd_ptr.eq(rd_ptr + 1)
        with m.If(self.rd.release):
            m.d.sync += [alloc.bit_select(rl_ptr, 1).eq(0), filled.bit_select(rl_ptr, 1).eq(0),
                         rl_ptr.eq(rl_ptr + 1)]
        return m


class Requantizer(wiring.Component):
    """Pipelined :func:`~recfabric.host.numerics.requantize` + optional ReLU (two cycles).

    ``y = [relu](saturate(round_shift(acc, shift)))``: shift right with HALF_UP (or FLOOR)
    rounding for ``shift > 0``, exact left shift for ``shift < 0``, then saturation to
    ``data_bits`` or, with ``logit``, to ``SIGMOID_IN.bits`` (only when ``out_bits >= 11``).
    Exact for ``SHIFT_MIN <= shift <= SHIFT_MAX``.

    Parameters
    ----------
    acc_bits : int
    data_bits : int
        Normal saturation width.
    out_bits : int, optional
        Width of ``y`` (defaults to ``data_bits``; the last engine of a top MLP uses
        ``max(data_bits, 11)``).

    Members
    -------
    acc : In(signed(acc_bits))
    shift : In(signed(8))
    floor, relu, logit : In(1)
    y : Out(signed(out_bits))
        Result for the ``acc`` presented two cycles earlier (config held stable meanwhile).
    """

    def __init__(self, *, acc_bits: int, data_bits: int, out_bits: int | None = None):
        out_bits = data_bits if out_bits is None else out_bits
        for name, v in (("acc_bits", acc_bits), ("data_bits", data_bits),
                        ("out_bits", out_bits)):
            _pos(name, v)
        if out_bits < data_bits:
            raise ValueError(f"out_bits must be >= data_bits ({data_bits}), not {out_bits}")
        self.acc_bits, self.data_bits, self.out_bits = acc_bits, data_bits, out_bits
        super().__init__({"acc": In(signed(acc_bits)), "shift": In(signed(8)), "floor": In(1),
                          "relu": In(1), "logit": In(1), "y": Out(signed(out_bits))})

    def elaborate(self, platform):
        m = Module()
        a, ob = self.acc_bits, self.out_bits
        s = self.shift
        # Right shifts beyond a + 1 give the same result as a + 1 (0 or the sign).
        sr = Signal(range(a + 2))
        m.d.comb += sr.eq(Mux(s > a + 1, a + 1, s[:7]))
        rnd = Signal(a + 2)
        m.d.comb += rnd.eq(Mux(self.floor, 0, (Const(1, a + 2) << sr) >> 1))
        right = Signal(signed(a + 2))
        m.d.comb += right.eq((self.acc + rnd) >> sr)
        # Left shifts beyond ob bits saturate any non-zero value anyway.
        neg = Signal(range(65))
        m.d.comb += neg.eq(-s)
        sl = Signal(range(ob + 1))
        m.d.comb += sl.eq(Mux(neg > ob, ob, neg))
        left = Signal(signed(a + ob))
        m.d.comb += left.eq(self.acc << sl)
        shifted = Signal(signed(a + ob + 1))
        with m.If(s > 0):
            m.d.sync += shifted.eq(right)
        with m.Elif(s < 0):
            m.d.sync += shifted.eq(left)
        with m.Else():
            m.d.sync += shifted.eq(self.acc)

        hi_d, lo_d = (1 << (self.data_bits - 1)) - 1, -(1 << (self.data_bits - 1))
        lbits = nx.SIGMOID_IN.bits
        hi = Signal(signed(ob + 1))
        lo = Signal(signed(ob + 1))
        if ob >= lbits:
            m.d.comb += [hi.eq(Mux(self.logit, (1 << (lbits - 1)) - 1, hi_d)),
                         lo.eq(Mux(self.logit, -(1 << (lbits - 1)), lo_d))]
        else:
            m.d.comb += [hi.eq(hi_d), lo.eq(lo_d)]
        sat = Signal(signed(ob))
        with m.If(shifted > hi):
            m.d.comb += sat.eq(hi)
        with m.Elif(shifted < lo):
            m.d.comb += sat.eq(lo)
        with m.Else():
            m.d.comb += sat.eq(shifted)
        m.d.sync += self.y.eq(Mux(self.relu & sat[-1], 0, sat))
        return m


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
    ``b[tn * rows + r]``.

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

    Members
    -------
    act_in : Out(ActivationReadSignature)
        Reads the input buffer (``cols`` lanes).
    act_out : Out(ActivationWriteSignature)
        Writes the output buffer (``rows`` lanes).
    i_load : In(stream.Signature(MLPLoadLayout))
        Load words addressed to this engine (always ready).
    out_len : Out(16)
        The loaded ``OUT_LEN`` descriptor field.
    """

    def __init__(self, *, index: int = 0, rows: int, cols: int, data_bits: int, acc_bits: int,
                 max_in: int, max_out: int, banks: int = 4, out_bits: int | None = None,
                 load_layout: MLPLoadLayout | None = None):
        for name, v in (("rows", rows), ("cols", cols), ("max_in", max_in),
                        ("max_out", max_out)):
            _pos(name, v)
        self.index, self.rows, self.cols = index, rows, cols
        self.data_bits, self.acc_bits = data_bits, acc_bits
        self.out_bits = data_bits if out_bits is None else out_bits
        self.max_in, self.max_out, self.banks = max_in, max_out, banks
        self.k_tiles_max = math.ceil(max_in / cols)
        self.n_tiles_max = math.ceil(max_out / rows)
        self.in_local_bits = _bits_for(self.k_tiles_max)
        self.out_local_bits = _bits_for(self.n_tiles_max)
        self.wdepth = self.k_tiles_max * self.n_tiles_max
        if load_layout is None:
            load_layout = MLPLoadLayout(engines=index + 1, rows=rows, cols=cols,
                                        depth=self.wdepth, acc_bits=acc_bits)
        self.load_layout = load_layout
        super().__init__({
            "act_in": Out(ActivationReadSignature(lanes=cols, bits=data_bits,
                                                  local_bits=self.in_local_bits, banks=banks)),
            "act_out": Out(ActivationWriteSignature(lanes=rows, bits=self.out_bits,
                                                    local_bits=self.out_local_bits,
                                                    banks=banks)),
            "i_load": In(stream.Signature(load_layout)),
            "out_len": Out(16),
        })

    @property
    def array_latency(self) -> int:
        """Cycles from issuing a wave to its last row's result being written."""
        return 1 + self.cols + (self.rows - 1) + 3 + ROW_END_LATENCY

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        bank_bits = _bits_for(self.banks)
        ctrl_layout = _Ctrl(self.out_local_bits, bank_bits)
        m.submodules.array = arr = SystolicArray(
            rows=R, cols=C, data_bits=self.data_bits, acc_bits=self.acc_bits, depth=self.wdepth,
            ctrl_bits=ctrl_layout.size)

        # ---- descriptor and load port ----
        k_tiles = Signal(range(self.k_tiles_max + 1))
        n_tiles = Signal(range(self.n_tiles_max + 1))
        shift = Signal(signed(8))
        flags = Signal(3)
        out_len = self.out_len
        ld = self.i_load.payload
        m.d.comb += self.i_load.ready.eq(1)
        m.d.comb += [arr.w_en.eq(self.i_load.valid & (ld.kind == LoadKind.WEIGHT)),
                     arr.w_row.eq(ld.row), arr.w_col.eq(ld.col), arr.w_addr.eq(ld.addr),
                     arr.w_data.eq(ld.data)]
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

        # ---- input skew: column c sees a wave c cycles after column 0 ----
        ctrl0 = Signal(ctrl_layout)
        m.d.comb += [ctrl0.first.eq(tk == 0), ctrl0.last.eq(last_k), ctrl0.eor.eq(final),
                     ctrl0.tn.eq(tn), ctrl0.bank.eq(out_bank)]
        d_valid, d_ctrl = [busy], [ctrl0]
        d_in = [Cat(tk[:self.in_local_bits], in_bank)]
        d_w = [waddr]
        for j in range(1, C + 1):
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
        for c in range(C):
            m.d.comb += [self.act_in.addr[c].eq(d_in[c]), arr.x_top[c].eq(self.act_in.data[c]),
                         arr.addr_top[c].eq(d_w[c + 1]), arr.ctrl_top[c].eq(d_ctrl[c + 1]),
                         arr.valid_top[c].eq(d_valid[c + 1])]

        # ---- row ends: bias, accumulate, requantize, write ----
        nbias = self.n_tiles_max
        for r in range(R):
            bias_mem = Memory(shape=signed(self.acc_bits), depth=nbias, init=[])
            m.submodules[f"bias{r}"] = bias_mem
            bw = bias_mem.write_port()
            br = bias_mem.read_port()
            m.d.comb += [bw.en.eq(self.i_load.valid & (ld.kind == LoadKind.BIAS) & (ld.row == r)),
                         bw.addr.eq(ld.addr), bw.data.eq(ld.data)]
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
            rq = Requantizer(acc_bits=self.acc_bits, data_bits=self.data_bits,
                             out_bits=self.out_bits)
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


class InputWriter(wiring.Component):
    """Writes a stream of input-vector chunks into the first activation buffer.

    Chunk ``j`` of a request goes to word ``j`` of a freshly allocated bank, all lanes at once;
    the chunk with ``last`` commits the bank. Not ready while no bank is free.

    Members
    -------
    i_vector : In(stream.Signature(MLPInputLayout(bits, lanes)))
    act_out : Out(ActivationWriteSignature)
    """

    def __init__(self, *, lanes: int, bits: int, local_bits: int, banks: int):
        self.lanes, self.bits, self.local_bits, self.banks = lanes, bits, local_bits, banks
        super().__init__({
            "i_vector": In(stream.Signature(MLPInputLayout(bits=bits, lanes=lanes))),
            "act_out": Out(ActivationWriteSignature(lanes=lanes, bits=bits,
                                                    local_bits=local_bits, banks=banks)),
        })

    def elaborate(self, platform):
        m = Module()
        active = Signal()
        cnt = Signal(self.local_bits)
        bank = Signal(_bits_for(self.banks))
        cur_bank = Mux(active, bank, self.act_out.bank)
        m.d.comb += self.i_vector.ready.eq(active | self.act_out.can_start)
        go = self.i_vector.valid & self.i_vector.ready
        for lane in range(self.lanes):
            m.d.comb += [self.act_out.en[lane].eq(go),
                         self.act_out.addr[lane].eq(Cat(cnt, cur_bank)),
                         self.act_out.data[lane].eq(self.i_vector.payload.data[lane])]
        with m.If(go):
            m.d.comb += self.act_out.start.eq(~active)
            m.d.sync += [bank.eq(cur_bank), active.eq(1), cnt.eq(cnt + 1)]
            with m.If(self.i_vector.payload.last):
                m.d.comb += self.act_out.commit.eq(1)
                m.d.sync += [active.eq(0), cnt.eq(0)]
        return m


class VectorDrain(wiring.Component):
    """Streams the first ``out_len`` elements of each filled bank of the last buffer, in order.

    Element ``n`` is lane ``n mod lanes``, word ``n // lanes``. One element per cycle, plus one
    idle cycle between requests.

    Members
    -------
    act_in : Out(ActivationReadSignature)
    out_len : In(16)
    o_result : Out(stream.Signature(LogitLayout(bits)))
    """

    def __init__(self, *, lanes: int, bits: int, local_bits: int, banks: int):
        self.lanes, self.bits, self.local_bits, self.banks = lanes, bits, local_bits, banks
        super().__init__({
            "act_in": Out(ActivationReadSignature(lanes=lanes, bits=bits, local_bits=local_bits,
                                                  banks=banks)),
            "out_len": In(16),
            "o_result": Out(stream.Signature(LogitLayout(bits))),
        })

    def elaborate(self, platform):
        m = Module()
        active = Signal()
        bank = Signal(_bits_for(self.banks))
        n = Signal(16)
        lane = Signal(range(self.lanes))
        word = Signal(self.local_bits)
        lane_d = Signal(range(self.lanes))
        last_d = Signal()
        o = self.o_result
        free = ~o.valid | o.ready
        adv = active & free
        for k in range(self.lanes):
            m.d.comb += self.act_in.addr[k].eq(Cat(word, bank))
        m.d.comb += [self.act_in.en.eq(adv), o.payload.data.eq(self.act_in.data[lane_d]),
                     o.payload.last.eq(last_d)]
        with m.If(free):
            m.d.sync += o.valid.eq(adv)
        with m.If(adv):
            is_last = n + 1 >= self.out_len
            m.d.sync += [lane_d.eq(lane), last_d.eq(is_last), n.eq(n + 1)]
            if self.lanes > 1:
                with m.If(lane == self.lanes - 1):
                    m.d.sync += [lane.eq(0), word.eq(word + 1)]
                with m.Else():
                    m.d.sync += lane.eq(lane + 1)
            else:
                m.d.sync += word.eq(word + 1)
            with m.If(is_last):
                m.d.comb += self.act_in.release.eq(1)
                m.d.sync += active.eq(0)
        with m.Elif(~active & self.act_in.filled):
            m.d.comb += self.act_in.take.eq(1)
            m.d.sync += [active.eq(1), bank.eq(self.act_in.bank), n.eq(0), lane.eq(0),
                         word.eq(0)]
        return m


class MLPPipeline(wiring.Component):
    """A multi-layer perceptron: one :class:`LayerEngine` per layer, pipelined across requests.

    Parameters
    ----------
    shapes : sequence of (rows, cols)
        Array shape of each layer engine; ``cols[l+1] == rows[l]``.
    data_bits, acc_bits : int
        Operand and accumulator widths.
    max_in : int
        Largest input vector (first layer fan-in).
    max_width : int
        Largest output width of every layer.
    banks : int
        Banks per activation buffer (requests each stage may have in flight), power of two.
    sigmoid : bool
        True (top MLP): the last layer's outputs go through :class:`Sigmoid` to ``o_scores``.
        False (bottom MLP): the outputs leave on ``o_result``.

    Members
    -------
    i_vector : In(stream.Signature(MLPInputLayout(data_bits, cols[0])))
        Input vectors, ``cols[0]`` elements per transfer, ``last`` on a request's last chunk.
    i_load : In(stream.Signature(MLPLoadLayout))
        Runtime memories (weights, biases, descriptors); always ready.
    o_scores : Out(stream.Signature(ScoreLayout()))
        (``sigmoid``) One score per output of the last layer; ``last`` ends a request.
    o_result : Out(stream.Signature(LogitLayout(data_bits)))
        (not ``sigmoid``) The last layer's outputs, one per transfer; ``last`` ends a request.
    """

    def __init__(self, *, shapes, data_bits: int, acc_bits: int, max_in: int, max_width: int,
                 banks: int = 4, sigmoid: bool = True):
        shapes = [tuple(s) for s in shapes]
        if not shapes:
            raise ValueError("An MLP pipeline needs at least one layer engine, not 0")
        for i, (r, c) in enumerate(shapes):
            _pos(f"shapes[{i}] rows", r)
            _pos(f"shapes[{i}] cols", c)
        for i in range(1, len(shapes)):
            if shapes[i][1] != shapes[i - 1][0]:
                raise ValueError(f"Engine {i} has {shapes[i][1]} columns but engine {i - 1} has "
                                 f"{shapes[i - 1][0]} rows; they must be equal")
        if data_bits not in (8, 16) and data_bits < 2:
            raise ValueError(f"data_bits must be a positive width, not {data_bits!r}")
        self.shapes, self.data_bits, self.acc_bits = shapes, data_bits, acc_bits
        self.max_in, self.max_width, self.banks, self.sigmoid = max_in, max_width, banks, sigmoid
        self.out_bits = max(data_bits, nx.SIGMOID_IN.bits) if sigmoid else data_bits
        L = len(shapes)
        depth = max(math.ceil((max_in if l == 0 else max_width) / c) * math.ceil(max_width / r)
                    for l, (r, c) in enumerate(shapes))
        self.load_layout = MLPLoadLayout(engines=L, rows=max(r for r, _ in shapes),
                                         cols=max(c for _, c in shapes), depth=depth,
                                         acc_bits=acc_bits)
        members = {
            "i_vector": In(stream.Signature(MLPInputLayout(bits=data_bits, lanes=shapes[0][1]))),
            "i_load": In(stream.Signature(self.load_layout)),
        }
        if sigmoid:
            members["o_scores"] = Out(stream.Signature(ScoreLayout()))
        else:
            members["o_result"] = Out(stream.Signature(LogitLayout(data_bits)))
        super().__init__(members)

    def engine_kwargs(self) -> list:
        """Constructor arguments of each :class:`LayerEngine` the pipeline builds."""
        L = len(self.shapes)
        return [dict(index=l, rows=r, cols=c, data_bits=self.data_bits, acc_bits=self.acc_bits,
                     max_in=self.max_in if l == 0 else self.max_width, max_out=self.max_width,
                     banks=self.banks,
                     out_bits=self.out_bits if l == L - 1 else self.data_bits,
                     load_layout=self.load_layout)
                for l, (r, c) in enumerate(self.shapes)]

    def elaborate(self, platform):
        m = Module()
        engines = [LayerEngine(**kw) for kw in self.engine_kwargs()]
        e0 = engines[0]
        m.submodules.writer = writer = InputWriter(lanes=e0.cols, bits=self.data_bits,
                                                   local_bits=e0.in_local_bits, banks=self.banks)
        wiring.connect(m, wiring.flipped(self.i_vector), writer.i_vector)
        m.submodules.buf0 = buf = ActivationBuffer(lanes=e0.cols, bits=self.data_bits,
                                                   local_bits=e0.in_local_bits, banks=self.banks)
        wiring.connect(m, writer.act_out, buf.wr)
        ld = self.i_load
        m.d.comb += ld.ready.eq(1)
        for l, eng in enumerate(engines):
            m.submodules[f"engine{l}"] = eng
            wiring.connect(m, eng.act_in, buf.rd)
            m.d.comb += [eng.i_load.payload.eq(ld.payload),
                         eng.i_load.valid.eq(ld.valid & (ld.payload.engine == l))]
            buf = ActivationBuffer(lanes=eng.rows, bits=eng.out_bits,
                                   local_bits=eng.out_local_bits, banks=self.banks)
            m.submodules[f"buf{l + 1}"] = buf
            wiring.connect(m, eng.act_out, buf.wr)
        last = engines[-1]
        m.submodules.drain = drain = VectorDrain(lanes=last.rows, bits=last.out_bits,
                                                 local_bits=last.out_local_bits, banks=self.banks)
        wiring.connect(m, drain.act_in, buf.rd)
        m.d.comb += drain.out_len.eq(last.out_len)
        if self.sigmoid:
            m.submodules.sigmoid = sig = Sigmoid(in_bits=last.out_bits)
            wiring.connect(m, drain.o_result, sig.i_logit)
            wiring.connect(m, sig.o_score, wiring.flipped(self.o_scores))
        else:
            wiring.connect(m, drain.o_result, wiring.flipped(self.o_result))
        return m


# ---- host side: the load image ---------------------------------------------------------------

class _EngineGeometry:
    def __init__(self, *, rows, cols, data_bits, max_in, max_out, out_bits, **_):
        self.rows, self.cols, self.data_bits = rows, cols, data_bits
        self.max_in, self.max_out, self.out_bits = max_in, max_out, out_bits


def _identity_layer(width: int, fmt: nx.FixedFormat):
    from recfabric.host.reference.golden import QLayer
    return QLayer(np.eye(width, dtype=np.int64), np.zeros(width, dtype=np.int64), fmt,
                  nx.FixedFormat(2, 0), fmt, False)


def mlp_load_words(pipeline: MLPPipeline, layers, rounding: nx.Rounding = nx.Rounding.HALF_UP):
    """Load words (dicts of :class:`MLPLoadLayout` fields) that program ``layers`` into
    ``pipeline``.

    ``layers`` are :class:`recfabric.host.golden.QLayer` s, first to last. Fewer layers than
    engines are padded with identity layers after the last one (exact: the identity keeps every
    value, in the same format); that needs the last layer's output format to fit the hidden
    element width, so it is rejected for int8 top MLPs. Raises ``ValueError`` naming the layer
    and the value for a model that does not fit.
    """
    engines = [_EngineGeometry(**kw) for kw in pipeline.engine_kwargs()]
    layers = list(layers)
    if not layers:
        raise ValueError("A model needs at least one layer, not 0")
    if len(layers) > len(engines):
        raise ValueError(f"Model has {len(layers)} layers but the pipeline has {len(engines)} "
                         "layer engines")
    pad = len(engines) - len(layers)
    if pad:
        fmt = layers[-1].out_fmt
        if fmt.bits > pipeline.data_bits:
            raise ValueError(f"Cannot pad a {len(layers)}-layer model with identity layers: its "
                             f"{fmt.bits}-bit output does not fit {pipeline.data_bits}-bit "
                             "hidden activations")
        layers += [_identity_layer(layers[-1].shape[1], fmt)] * pad
    words = []
    for l, (eng, layer) in enumerate(zip(engines, layers)):
        K, N = layer.shape
        if l > 0 and K != layers[l - 1].shape[1]:
            raise ValueError(f"Layer {l} fan-in {K} does not match layer {l - 1} width "
                             f"{layers[l - 1].shape[1]}")
        if K > eng.max_in:
            raise ValueError(f"Layer {l} fan-in {K} exceeds engine {l} maximum {eng.max_in}")
        if N > eng.max_out:
            raise ValueError(f"Layer {l} width {N} exceeds engine {l} maximum {eng.max_out}")
        if not SHIFT_MIN <= layer.shift <= SHIFT_MAX:
            raise ValueError(f"Layer {l} requantize shift {layer.shift} is outside "
                             f"{SHIFT_MIN}..{SHIFT_MAX}")
        if layer.w_fmt.bits > pipeline.data_bits or layer.in_fmt.bits > pipeline.data_bits:
            raise ValueError(f"Layer {l} operands ({layer.in_fmt.bits}/{layer.w_fmt.bits} bits) "
                             f"exceed {pipeline.data_bits} bits")
        logit = layer.out_fmt.bits == nx.SIGMOID_IN.bits and layer.out_fmt.bits != eng.data_bits
        if logit and eng.out_bits < nx.SIGMOID_IN.bits:
            raise ValueError(f"Layer {l} outputs {layer.out_fmt.bits}-bit logits but engine {l} "
                             f"stores {eng.out_bits}-bit elements")
        if not logit and layer.out_fmt.bits != pipeline.data_bits:
            raise ValueError(f"Layer {l} output width {layer.out_fmt.bits} must be "
                             f"{pipeline.data_bits} or {nx.SIGMOID_IN.bits} (logits)")
        R, C = eng.rows, eng.cols
        kt, nt = math.ceil(K / C), math.ceil(N / R)
        w = np.zeros((nt * R, kt * C), dtype=np.int64)
        w[:N, :K] = layer.w
        b = np.zeros(nt * R, dtype=np.int64)
        b[:N] = layer.b
        for r in range(R):
            for c in range(C):
                blk = w[r::R, c::C]  # (nt, kt): word tn * kt + tk
                for a, v in enumerate(blk.reshape(-1)):
                    words.append({"engine": l, "kind": LoadKind.WEIGHT, "row": r, "col": c,
                                  "addr": a, "data": int(v)})
            for tn in range(nt):
                words.append({"engine": l, "kind": LoadKind.BIAS, "row": r, "col": 0,
                              "addr": tn, "data": int(b[tn * R + r])})
        flags = ((FLAG_RELU if layer.relu else 0)
                 | (FLAG_FLOOR if rounding is nx.Rounding.FLOOR else 0)
                 | (FLAG_LOGIT if logit else 0))
        for field, v in ((Desc.K_TILES, kt), (Desc.N_TILES, nt), (Desc.SHIFT, layer.shift),
                         (Desc.FLAGS, flags), (Desc.OUT_LEN, N)):
            words.append({"engine": l, "kind": LoadKind.DESC, "row": 0, "col": 0,
                          "addr": int(field), "data": int(v)})
    return words
