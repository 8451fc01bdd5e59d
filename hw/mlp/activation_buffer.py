"""Activation buffers between layer engines: one memory per lane, banked across requests."""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..stream_types import index_bits as _bits_for


def _pos(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise TypeError(f"{name} must be a positive integer, not {v!r}")

__all__ = ["ActivationWriteSignature", "ActivationReadSignature", "ActivationBuffer"]


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
