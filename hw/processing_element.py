"""Fixed-point processing element of the systolic MLP engine.

One PE is one multiply-accumulate unit shaped after a DSP48E2 slice: registered multiplier inputs
(A/B), a registered product (M) and a registered cascade adder (P, fed by the neighbouring PE's P
like the PCIN/PCOUT cascade). The PE owns its slice of the layer's weights in a small local memory
(simple dual port: the host writes, the sequencer reads), so the weight operand never travels on a
shared net; the activation operand, the weight address and a control word move on to the next PE
through registers.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["ProcessingElement", "PE_LATENCY"]

#: Cycles from ``x_in`` to the matching ``psum_out`` (A/B register, M register, P register).
PE_LATENCY = 3


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{name} must be a positive integer, not {value!r}")


class ProcessingElement(wiring.Component):
    """Weight-streaming MAC unit: ``psum_out = wrap(psum_in + x * w[addr], acc_bits)``.

    Timing: ``x_in``, ``addr_in``, ``ctrl_in`` and ``valid_in`` arrive together at cycle ``t``.
    They are registered and presented on ``x_out`` / ``addr_out`` / ``ctrl_out`` / ``valid_out``
    at ``t+1`` (for the next PE down the column); the local weight memory is read at ``addr_in``
    at ``t``, so ``x`` and ``w`` are both registered at ``t+1`` (the DSP's A and B registers);
    the product is registered at ``t+2`` (M); ``psum_out = psum_in + product`` is registered at
    ``t+3`` (P) together with ``ctrl_p``/``valid_p``. A row of PEs therefore forms an adder
    cascade when the input of column ``c`` is skewed by ``c`` cycles: ``psum_in`` must carry the
    left neighbour's ``psum_out`` of the same MAC wave, which it does under that skew.

    Arithmetic follows :func:`recfabric.host.numerics.mac`: exact signed ``data_bits`` x
    ``data_bits`` products, summed in a two's-complement ``acc_bits`` adder that wraps.

    Parameters
    ----------
    data_bits : int
        Operand width (8 or 16 in RecFabric; any positive width works).
    acc_bits : int
        Accumulator (cascade) width.
    depth : int
        Words of the local weight memory.
    ctrl_bits : int
        Width of the control word carried along with the operands.
    x_bits : int, optional
        Width of the activation operand (defaults to ``data_bits``).

    Members
    -------
    x_in : In(signed(x_bits))
        Activation operand.
    addr_in : In(range(depth))
        Weight memory read address for this operand.
    ctrl_in : In(ctrl_bits)
        Control word travelling with the operand (opaque to the PE).
    valid_in : In(1)
        The operand is part of a MAC wave (only carried along).
    x_out, addr_out, ctrl_out, valid_out : Out
        The inputs, registered once, for the next PE in the column.
    psum_in : In(signed(acc_bits))
        Partial sum from the left neighbour (zero for the first column).
    psum_out : Out(signed(acc_bits))
        ``wrap(psum_in + x * w)``, registered (three cycles after ``x_in``).
    ctrl_p, valid_p : Out
        Control word and valid bit aligned with ``psum_out``.
    w_en, w_addr, w_data : In
        Host write port of the weight memory.
    """

    def __init__(self, *, data_bits: int, acc_bits: int, depth: int, ctrl_bits: int,
                 x_bits: int | None = None):
        x_bits = data_bits if x_bits is None else x_bits
        for name, v in (("data_bits", data_bits), ("acc_bits", acc_bits), ("depth", depth),
                        ("ctrl_bits", ctrl_bits), ("x_bits", x_bits)):
            _check_positive(name, v)
        if acc_bits < data_bits + x_bits:
            raise ValueError(f"acc_bits must hold a full product ({data_bits + x_bits} bits), "
                             f"not {acc_bits}")
        self.data_bits, self.acc_bits, self.depth = data_bits, acc_bits, depth
        self.ctrl_bits, self.x_bits = ctrl_bits, x_bits
        super().__init__({
            "x_in": In(signed(x_bits)),
            "addr_in": In(range(depth)),
            "ctrl_in": In(ctrl_bits),
            "valid_in": In(1),
            "x_out": Out(signed(x_bits)),
            "addr_out": Out(range(depth)),
            "ctrl_out": Out(ctrl_bits),
            "valid_out": Out(1),
            "psum_in": In(signed(acc_bits)),
            "psum_out": Out(signed(acc_bits)),
            "ctrl_p": Out(ctrl_bits),
            "valid_p": Out(1),
            "w_en": In(1),
            "w_addr": In(range(depth)),
            "w_data": In(signed(data_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.weights = mem = Memory(shape=signed(self.data_bits), depth=self.depth,
                                            init=[])
        wr = mem.write_port()
        rd = mem.read_port()
        m.d.comb += [wr.en.eq(self.w_en), wr.addr.eq(self.w_addr), wr.data.eq(self.w_data),
                     rd.addr.eq(self.addr_in)]

        # A/B stage: x register doubles as the pass-on register; w is the memory's read register.
        m.d.sync += [self.x_out.eq(self.x_in), self.addr_out.eq(self.addr_in),
                     self.ctrl_out.eq(self.ctrl_in), self.valid_out.eq(self.valid_in)]
        # M stage.
        prod = Signal(signed(self.data_bits + self.x_bits))
        ctrl_m = Signal(self.ctrl_bits)
        valid_m = Signal()
        m.d.sync += [prod.eq(self.x_out * rd.data), ctrl_m.eq(self.ctrl_out),
                     valid_m.eq(self.valid_out)]
        # P stage: the cascade adder wraps at acc_bits (assignment truncates).
        m.d.sync += [self.psum_out.eq(self.psum_in + prod), self.ctrl_p.eq(ctrl_m),
                     self.valid_p.eq(valid_m)]
        return m
