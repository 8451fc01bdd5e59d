"""Round-robin arbiter: many streams of one payload shape into one."""

from functools import reduce

from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["StreamArbiter"]


def _or_all(values):
    return reduce(lambda a, b: a | b, values)


def _below(v: Value, n: int) -> Value:
    """Bit ``i``: some bit of ``v`` below ``i`` is set (a prefix OR, a few LUT levels, not a
    carry chain)."""
    return Cat(0, *[v[:i].any() for i in range(1, n)])


class StreamArbiter(wiring.Component):
    """Merges ``n`` streams into one, round-robin, without reordering any one input.

    The grant moves only after a transfer or while the granted input is idle, so the output's
    ``valid`` and payload stay stable until taken (the stream rules hold on the output). The
    grant is one-hot, with a register of the inputs above it: the next grant is the lowest
    valid input above the granted one, else the lowest valid input (the granted one itself
    last): two prefix ORs rather than a modulo search.

    Members
    -------
    i : In(stream.Signature(shape)).array(n)
    o : Out(stream.Signature(shape))
    """

    def __init__(self, shape, n: int):
        if not isinstance(n, int) or n < 1:
            raise TypeError(f"input count must be a positive integer, not {n!r}")
        self._n = n
        super().__init__({"i": In(stream.Signature(shape)).array(n),
                          "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        n = self._n
        grant = Signal(n, init=1)  # one-hot
        above = Signal(n, init=((1 << n) - 2))  # the inputs above the granted one
        valids = Cat(s.valid for s in self.i)
        # The output mux is an AND-OR of plain expressions (continuous assignments in Verilog,
        # not a `case` in an `always @*` block that Icarus would not evaluate at time 0).
        m.d.comb += [
            self.o.valid.eq((grant & valids).any()),
            self.o.payload.eq(_or_all([Mux(grant[k], Value.cast(s.payload), 0)
                                       for k, s in enumerate(self.i)])),
        ]
        for k, s in enumerate(self.i):
            m.d.comb += s.ready.eq(grant[k] & self.o.ready)
        # The lowest set bit of ``v`` is ``v & ~below(v)``; the inputs above it are
        # ``below(v)`` itself, so the next ``above`` needs no second pass over the new grant.
        hi = valids & above
        below_hi, below_any = _below(hi, n), _below(valids, n)
        use_hi = hi.any()
        hold = self.o.valid & ~self.o.ready
        with m.If(~hold & valids.any()):
            m.d.sync += [grant.eq(Mux(use_hi, hi & ~below_hi, valids & ~below_any)),
                         above.eq(Mux(use_hi, below_hi, below_any))]
        return m
