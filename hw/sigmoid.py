"""Sigmoid stage: logit (``SIGMOID_IN``, Q3.7) -> score (unsigned Q0.16) by table lookup.

The table is :func:`recfabric.host.numerics.sigmoid_table`, stored in a 2048 x 16 ROM (one
RAMB36), so the hardware computes exactly the spec's function.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from recfabric.host import numerics as nx

__all__ = ["LogitLayout", "ScoreLayout", "Sigmoid"]


class LogitLayout(data.StructLayout):
    """One element of an MLP result vector.

    Members
    -------
    data : signed(bits)
        The element (at the sigmoid: a logit in ``SIGMOID_IN``, sign-extended to ``bits``).
    last : unsigned(1)
        Last element of the request's vector.
    """

    def __init__(self, bits: int):
        if not isinstance(bits, int) or bits < 1:
            raise TypeError(f"bits must be a positive integer, not {bits!r}")
        super().__init__({"data": signed(bits), "last": 1})


class ScoreLayout(data.StructLayout):
    """One score.

    Members
    -------
    score : unsigned(16)
        Unsigned Q0.16 probability (:data:`recfabric.host.numerics.SCORE`).
    last : unsigned(1)
        Last score of the request.
    """

    def __init__(self):
        super().__init__({"score": nx.SCORE_BITS, "last": 1})


class Sigmoid(wiring.Component):
    """Streaming sigmoid table lookup, one logit per cycle, one cycle of latency.

    Input values must lie in ``SIGMOID_IN`` (the final layer saturates to it); only their low 11
    bits index the table.

    Parameters
    ----------
    in_bits : int
        Width of the incoming elements (at least ``SIGMOID_IN.bits``).

    Members
    -------
    i_logit : In(stream.Signature(LogitLayout(in_bits)))
    o_score : Out(stream.Signature(ScoreLayout()))
    """

    def __init__(self, in_bits: int = nx.SIGMOID_IN.bits):
        if not isinstance(in_bits, int) or in_bits < nx.SIGMOID_IN.bits:
            raise ValueError(f"Sigmoid input width must be an integer >= {nx.SIGMOID_IN.bits}, "
                             f"not {in_bits!r}")
        self.in_bits = in_bits
        super().__init__({
            "i_logit": In(stream.Signature(LogitLayout(in_bits))),
            "o_score": Out(stream.Signature(ScoreLayout())),
        })

    def elaborate(self, platform):
        m = Module()
        table = [int(v) for v in nx.sigmoid_table()]
        m.submodules.table = rom = Memory(shape=nx.SCORE_BITS, depth=len(table), init=table)
        rd = rom.read_port()
        nbits = nx.SIGMOID_IN.bits
        # Index = logit + 2**(n-1): flip the sign bit of the n-bit two's-complement logit.
        idx = self.i_logit.payload.data[:nbits] ^ (1 << (nbits - 1))
        last = Signal()
        free = ~self.o_score.valid | self.o_score.ready
        m.d.comb += [
            self.i_logit.ready.eq(free),
            rd.addr.eq(idx),
            rd.en.eq(self.i_logit.valid & free),
            self.o_score.payload.score.eq(rd.data),
            self.o_score.payload.last.eq(last),
        ]
        with m.If(free):
            m.d.sync += [self.o_score.valid.eq(self.i_logit.valid),
                         last.eq(self.i_logit.payload.last)]
        return m
