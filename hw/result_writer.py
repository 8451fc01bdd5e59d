"""ResultWriter: writes one result record per request, then the status block, over AXI4.

Result records follow wire format v1 (:mod:`recfabric.host.runtime.wire_format`): one memory word
per request at ``base + index * word_bytes``, holding the status byte (bit 0 VALID, then the
request's :class:`~recfabric.hw.stream_types.RequestFlagsLayout` flags: bit 1 ID_RANGE, bit 2
BAG_RANGE, bit 3 MEMORY), a reserved byte and the u16 score (``outputs`` u16 scores, multi-task
heads). Records are written in request
order as single-beat INCR bursts with one AXI ID, up to ``max_outstanding`` writes unanswered.
When every record has been answered, the status block (the status registers as little-endian
u32 words in register order, :data:`recfabric.hw.register_map.STATUS_REGS`) is written at
:func:`~recfabric.hw.register_map.status_block_offset`, and ``done`` pulses once its write is
answered, so the host finds results and status in memory when it sees ``ap_done``.
A write answered with SLVERR/DECERR sets the sticky ``axi_error``; the writer never hangs on it.
If the status block's own write is answered with an error, the block is sampled and written once
more (``snapshot`` pulses again), so that the block in memory carries the error it reports
(``ERROR_AXI`` through the kernel's ``errors`` word); a second error response ends the run
anyway (the sticky ``axi_error``, and the registers, still say so).
``first_error`` is the index within the batch of the first record that carries a flag or whose
write was answered with an error.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import carry_select_add
from .axi4 import AXI4Signature, AXIBurst
from .register_map import NO_ERROR_REQUEST, STATUS_BLOCK_BYTES, STATUS_REGS
from .stream_types import RequestFlagsLayout

__all__ = ["ResultLayout", "ResultWriter", "STATUS_WORDS"]

#: Status block words, in register order.
STATUS_WORDS = sorted(STATUS_REGS, key=STATUS_REGS.get)


class ResultLayout(data.StructLayout):
    """One request's result on its way to memory.

    Members
    -------
    score : unsigned(16)
        Sigmoid output, unsigned Q0.16.
    flags : RequestFlagsLayout
        The request's error flags (the score of a flagged request is undefined).
    more_scores : ArrayLayout(16, outputs - 1)
        (``outputs`` > 1: multi-task heads) Scores of outputs 1 .. outputs-1; the record holds
        them after ``score``, as wire format v1's ``score[0..outputs-1]``.
    """

    def __init__(self, outputs: int = 1):
        if not isinstance(outputs, int) or outputs < 1:
            raise TypeError(f"outputs must be a positive integer, not {outputs!r}")
        fields = {"score": 16, "flags": RequestFlagsLayout()}
        if outputs > 1:
            fields["more_scores"] = data.ArrayLayout(16, outputs - 1)
        super().__init__(fields)


class ResultWriter(wiring.Component):
    """Result and status-block writer (an AXI4 write master).

    Parameters
    ----------
    data_width : int
        AXI data width (>= 128 so that the status block takes at most 4 beats).
    addr_width, id_width : int
    max_outstanding : int
        Writes in flight before ``awvalid`` waits for responses (power of two).
    outputs : int
        Scores per result record (at most ``data_width / 16 - 1``).

    Members
    -------
    m_axi : Out(AXI4Signature(write only))
    i_result : In(stream.Signature(ResultLayout(outputs)))
    start : In(1)
        Pulse: begin a run (``base``, ``batch`` and ``skip`` are sampled).
    base : In(64)
        Results buffer address.
    batch : In(32)
        Requests in the run (the status block follows their records).
    skip : In(1)
        The run processes no request: write no record, only the status block (at its place
        after ``batch`` records).
    abort : In(1)
        Pulse: end the run early: take no more records; the status block (still at its place
        after ``batch`` records) is written once every record taken so far is answered.
    status : In(ArrayLayout(32, len(STATUS_WORDS)))
        Status register values, sampled when the last record is answered.
    snapshot : Out(1)
        Pulse: ``status`` is being sampled (every record of the run is in memory); pulses a
        second time before the status block is rewritten after an error response to it.
    done : Out(1)
        Pulse: records and status block are in memory.
    written : Out(32)
        Records answered in this run.
    axi_error : Out(1)
        Sticky (until ``start``): a write response was SLVERR or DECERR.
    first_error : Out(32)
        Index of the first record of the run that had a flag set or a write error;
        :data:`~recfabric.hw.register_map.NO_ERROR_REQUEST` if none (reset by ``start``).
    stall : Out(32)
        Cycles a result waited because the write channels were not ready or too many writes
        were in flight.
    """

    def __init__(self, *, data_width: int = 256, addr_width: int = 64, id_width: int = 1,
                 max_outstanding: int = 16, outputs: int = 1):
        if data_width < 128 or data_width & (data_width - 1):
            raise ValueError(f"data width must be a power of two >= 128, not {data_width}")
        if max_outstanding < 1 or max_outstanding & (max_outstanding - 1):
            raise ValueError(f"max_outstanding must be a power of two, not {max_outstanding}")
        if not 1 <= outputs <= data_width // 16 - 1:
            raise ValueError(f"{outputs} outputs do not fit a {data_width}-bit result record "
                             f"(at most {data_width // 16 - 1})")
        self._dw, self._aw, self._idw, self._max_out = data_width, addr_width, id_width, \
            max_outstanding
        self.outputs = outputs
        super().__init__({
            "m_axi": Out(AXI4Signature(addr_width=addr_width, data_width=data_width,
                                       id_width=id_width, read=False, write=True)),
            "i_result": In(stream.Signature(ResultLayout(outputs))),
            "start": In(1), "base": In(64), "batch": In(32), "skip": In(1), "abort": In(1),
            "status": In(data.ArrayLayout(32, len(STATUS_WORDS))),
            "snapshot": Out(1), "done": Out(1), "written": Out(32), "axi_error": Out(1),
            "first_error": Out(32, init=NO_ERROR_REQUEST), "stall": Out(32),
        })

    def elaborate(self, platform):
        # One function on purpose (~115 lines): the record and status-block phases share the AW/W
        # holding registers and the in-flight count of one AXI write channel.
        m = Module()
        bus = self.m_axi
        word_bytes = self._dw // 8
        size = (word_bytes - 1).bit_length()
        status_beats = (STATUS_BLOCK_BYTES + word_bytes - 1) // word_bytes

        base = Signal(64)
        batch = Signal(32)  # records to write
        status_off = Signal(64)  # status block address - base
        issued = Signal(32)  # records whose AW was sent
        answered = Signal(32)
        inflight = Signal(range(self._max_out + 1))
        status_words = Signal(data.ArrayLayout(32, len(STATUS_WORDS)))
        status_beat = Signal(range(status_beats + 1))
        rewritten = Signal()  # the status block is being written a second time

        m.d.comb += [
            bus.awid.eq(0), bus.awburst.eq(AXIBurst.INCR), bus.awsize.eq(size),
            bus.awcache.eq(0b0011), bus.awprot.eq(0), bus.awlock.eq(0), bus.awqos.eq(0),
            bus.bready.eq(1), self.written.eq(answered),
        ]
        with m.If(self.start):
            m.d.sync += [base.eq(self.base), batch.eq(Mux(self.skip, 0, self.batch)),
                         status_off.eq((self.batch * word_bytes + STATUS_BLOCK_BYTES - 1)
                                       // STATUS_BLOCK_BYTES * STATUS_BLOCK_BYTES),
                         issued.eq(0), rewritten.eq(0),
                         answered.eq(0), self.axi_error.eq(0), self.stall.eq(0),
                         self.first_error.eq(NO_ERROR_REQUEST)]

        b_done = bus.bvalid & bus.bready
        with m.If(b_done & bus.bresp[1]):
            m.d.sync += self.axi_error.eq(1)

        # First offending record: flags are seen in record order, write errors in answer order;
        # a write error of record i can come after records > i were taken with flags. Each
        # cycle's candidates are registered, then folded into ``first_error`` (two levels of
        # compare-and-select instead of one chain); the status is sampled one cycle after the
        # last answer, once the fold has seen it.
        flag_cand = Signal(33, init=NO_ERROR_REQUEST)
        b_err_cand = Signal(33, init=NO_ERROR_REQUEST)
        m.d.sync += [flag_cand.eq(Mux(self.i_result.valid & self.i_result.ready &
                                      (self.i_result.payload.flags.as_value() != 0),
                                      issued, NO_ERROR_REQUEST)),
                     b_err_cand.eq(Mux(b_done & bus.bresp[1] & (answered < issued), answered,
                                       NO_ERROR_REQUEST))]
        # The three compares side by side, then a select (not compare -> mux -> compare).
        flag_low, b_low = flag_cand < self.first_error, b_err_cand < self.first_error
        flag_first = flag_cand < b_err_cand
        with m.If(self.start):
            m.d.sync += [flag_cand.eq(NO_ERROR_REQUEST), b_err_cand.eq(NO_ERROR_REQUEST)]
        with m.Elif(flag_low & (~b_low | flag_first)):
            m.d.sync += self.first_error.eq(flag_cand)
        with m.Elif(b_low):
            m.d.sync += self.first_error.eq(b_err_cand)

        # AW and W of one record go out together: a record is taken from the stream only when
        # both channels accept it in the same cycle, or whichever is left completes later.
        aw_pending = Signal()
        w_pending = Signal()
        wdata = Signal(self._dw)
        aw_fire = bus.awvalid & bus.awready
        w_fire = bus.wvalid & bus.wready
        m.d.comb += [bus.awvalid.eq(aw_pending), bus.wvalid.eq(w_pending),
                     bus.wdata.eq(wdata)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = "RECORDS"
            with m.State("RECORDS"):
                can_take = ~aw_pending & ~w_pending & (inflight < self._max_out) & \
                    (issued < batch) & ~self.abort
                m.d.comb += self.i_result.ready.eq(can_take)
                with m.If(self.abort):
                    m.d.sync += batch.eq(issued)
                with m.If(self.i_result.valid & ~can_take):
                    m.d.sync += self.stall.eq(self.stall + 1)
                with m.If(self.i_result.valid & can_take):
                    p = self.i_result.payload
                    status = Cat(Const(1, 1), p.flags.id_range, p.flags.bag_range,
                                 p.flags.memory, Const(0, 4))
                    m.d.sync += [
                        aw_pending.eq(1), w_pending.eq(1),
                        bus.awaddr.eq(carry_select_add(base, issued * word_bytes, 64)),
                        bus.awlen.eq(0),
                        wdata.eq(Cat(status, Const(0, 8), p.score,
                                     *([p.more_scores] if self.outputs > 1 else []))),
                        bus.wstrb.eq(-1), bus.wlast.eq(1),
                        issued.eq(issued + 1),
                    ]
                with m.If((answered == batch) & (issued == batch)):
                    m.next = "SNAPSHOT"
            with m.State("SNAPSHOT"):
                m.d.comb += self.snapshot.eq(1)
                m.d.sync += [status_words.eq(self.status), status_beat.eq(0)]
                m.next = "STATUS_AW"
            with m.State("STATUS_AW"):
                m.d.sync += [
                    aw_pending.eq(1),
                    bus.awaddr.eq(carry_select_add(base, status_off, 64)),
                    bus.awlen.eq(status_beats - 1),
                ]
                m.next = "STATUS_W"
            with m.State("STATUS_W"):
                flat = Cat(*[status_words[i] for i in range(len(STATUS_WORDS))])
                padded = Cat(flat, Const(0, status_beats * self._dw - len(flat)))
                with m.If(~w_pending & (status_beat < status_beats)):
                    m.d.sync += [
                        w_pending.eq(1),
                        wdata.eq(padded.word_select(status_beat, self._dw)),
                        bus.wstrb.eq(-1), bus.wlast.eq(status_beat == status_beats - 1),
                        status_beat.eq(status_beat + 1),
                    ]
                with m.If(b_done & ~aw_pending & ~w_pending & (status_beat == status_beats)):
                    with m.If(bus.bresp[1] & ~rewritten):
                        # The block in memory does not show this error: write it again once
                        # ``axi_error`` (set at this edge) is in the sampled status.
                        m.d.sync += rewritten.eq(1)
                        m.next = "STATUS_RESAMPLE"
                    with m.Else():
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
            with m.State("STATUS_RESAMPLE"):
                m.d.comb += self.snapshot.eq(1)
                m.d.sync += [status_words.eq(self.status), status_beat.eq(0)]
                m.next = "STATUS_AW"

        with m.If(aw_fire):
            m.d.sync += aw_pending.eq(0)
        with m.If(w_fire):
            m.d.sync += w_pending.eq(0)
        # Records in flight: counted from AW to B (the status block is not counted).
        rec_b = b_done & (answered < issued)
        with m.If(aw_fire & ~rec_b & (answered < batch) & (issued <= batch)):
            m.d.sync += inflight.eq(inflight + 1)
        with m.Elif(~aw_fire & rec_b):
            m.d.sync += inflight.eq(inflight - 1)
        with m.If(rec_b):
            m.d.sync += answered.eq(answered + 1)
        return m
