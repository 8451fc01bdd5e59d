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
REQUANT_LATENCY = 4


class Requantizer(wiring.Component):
    """Pipelined :func:`~recfabric.host.numerics.requantize` + optional ReLU (four cycles).

    ``y = [relu](saturate(round_shift(acc, shift)))``: shift right with HALF_UP (or FLOOR)
    rounding for ``shift > 0``, exact left shift for ``shift < 0``, then saturation to
    ``data_bits`` or, with ``logit``, to ``SIGMOID_IN.bits`` (only when ``out_bits >= 11``).
    Exact for ``SHIFT_MIN <= shift <= SHIFT_MAX``.

    Four stages, each at most 8 LUT levels on UltraScale+ (``recfabric report resources``): the
    configuration decoded (clamped shift amounts, rounding constant) and registered with ``acc``;
    the rounding add; the variable shift (right or left); the saturation (an all-equal test of
    the bits above the output width) and ReLU. The configuration travels with its ``acc``, so it
    may change on any cycle.

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
        Result for the ``acc`` (and configuration) presented ``REQUANT_LATENCY`` cycles earlier.
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
        lbits = nx.SIGMOID_IN.bits
        s = self.shift

        # ---- stage 1: decode the configuration, register it with acc ----
        acc1 = Signal(signed(a))
        sr1 = Signal(range(a + 2))      # right shift; beyond a + 1 the result is 0 or the sign
        sl1 = Signal(range(ob + 1))     # left shift; beyond ob any non-zero value saturates
        rnd1 = Signal(a + 2)
        mode1 = Signal(2)               # 0: none, 1: right, 2: left
        relu1, logit1 = Signal(), Signal()
        sr = Mux(s > a + 1, a + 1, s[:7])
        neg = Signal(range(65))
        m.d.comb += neg.eq(-s)
        m.d.sync += [acc1.eq(self.acc), sr1.eq(sr), sl1.eq(Mux(neg > ob, ob, neg)),
                     rnd1.eq(Mux(self.floor, 0, (Const(1, a + 2) << sr) >> 1)),
                     mode1.eq(Mux(s > 0, 1, Mux(s < 0, 2, 0))),
                     relu1.eq(self.relu), logit1.eq(self.logit)]

        # ---- stage 2: the rounding add ----
        sum2 = Signal(signed(a + 2))
        acc2 = Signal(signed(a))
        sr2, sl2, mode2 = Signal.like(sr1), Signal.like(sl1), Signal.like(mode1)
        relu2, logit2 = Signal(), Signal()
        m.d.sync += [sum2.eq(acc1 + rnd1), acc2.eq(acc1), sr2.eq(sr1), sl2.eq(sl1),
                     mode2.eq(mode1), relu2.eq(relu1), logit2.eq(logit1)]

        # ---- stage 3: the variable shift ----
        shifted = Signal(signed(a + ob + 1))
        relu3, logit3 = Signal(), Signal()
        with m.Switch(mode2):
            with m.Case(1):
                m.d.sync += shifted.eq(sum2 >> sr2)
            with m.Case(2):
                m.d.sync += shifted.eq(acc2 << sl2)
            with m.Default():
                m.d.sync += shifted.eq(acc2)
        m.d.sync += [relu3.eq(relu2), logit3.eq(logit2)]

        # ---- stage 4: saturate (the bits from the output width up all equal), ReLU ----
        def saturate(w):
            top = shifted[w - 1:]
            fits = top.all() | ~top.any()
            hi, lo = (1 << (w - 1)) - 1, -(1 << (w - 1))
            return Mux(fits, shifted[:w].as_signed(), Mux(shifted[-1], lo, hi))
        sat = Signal(signed(ob))
        if ob >= lbits and lbits != self.data_bits:
            m.d.comb += sat.eq(Mux(logit3, saturate(lbits), saturate(self.data_bits)))
        else:
            m.d.comb += sat.eq(saturate(self.data_bits))
        m.d.sync += self.y.eq(Mux(relu3 & sat[-1], 0, sat))
        return m
