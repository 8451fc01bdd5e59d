"""Requantizer: accumulator -> activation (shift with rounding, saturate, ReLU), pipelined."""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from recfabric.host import numerics as nx


def _pos(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise TypeError(f"{name} must be a positive integer, not {v!r}")

__all__ = ["Requantizer", "REQUANT_LATENCY"]

#: Requantizer pipeline depth.
REQUANT_LATENCY = 2


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
