"""Round-robin arbiter: many streams of one payload shape into one."""

from functools import reduce

from amaranth.hdl import Array, Cat, Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["StreamArbiter"]


def _or_all(values):
    return reduce(lambda a, b: a | b, values)


class StreamArbiter(wiring.Component):
    """Merges ``n`` streams into one, round-robin, without reordering any one input.

    The grant moves only after a transfer or while the granted input is idle, so the output's
    ``valid`` and payload stay stable until taken (the stream rules hold on the output).

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
        grant = Signal(range(n))
        valids = Array(s.valid for s in self.i)
        # The output mux is an AND-OR of plain expressions (continuous assignments in Verilog,
        # not a `case` in an `always @*` block that Icarus would not evaluate at time 0).
        sel = [grant == k for k in range(n)]
        m.d.comb += [
            self.o.valid.eq(Cat(sel[k] & s.valid for k, s in enumerate(self.i)).any()),
            self.o.payload.eq(_or_all([Mux(sel[k], Value.cast(s.payload), 0)
                                       for k, s in enumerate(self.i)])),
        ]
        for k, s in enumerate(self.i):
            m.d.comb += s.ready.eq((grant == k) & self.o.ready)
        hold = self.o.valid & ~self.o.ready
        with m.If(~hold):
            # Next valid input after the granted one (the granted one itself last).
            for step in reversed(range(1, n + 1)):
                with m.If(valids[(grant + step) % n]):
                    m.d.sync += grant.eq((grant + step) % n)
        return m
