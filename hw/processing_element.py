"""Fixed-point processing element of the systolic MLP engine.

One PE is one multiply-accumulate unit shaped after a DSP48E2 slice: registered multiplier inputs
(A/B), a registered product (M) and a registered cascade adder (P, fed by the neighbouring PE's P
like the PCIN/PCOUT cascade). The PE owns its slice of the layer's weights in a small local memory
(simple dual port: the host writes, the sequencer reads), so the weight operand never travels on a
shared net; the activation operand, the weight address and a control word move on to the next PE
through registers.

:class:`PackedPEPair` is the int8 variant after AMD's WP486 ("Deep Learning with INT8
Optimization on Xilinx Devices"): the two PEs of adjacent output rows share their activation
(it travels down the column to both), so one DSP48E2 computes both products with one multiply,
``x * ((w_hi << 18) + w_lo)`` (the 27-bit A:D pre-adder input times the 18-bit B input), and
accumulates both in the fields of its 48-bit P: the lower row in bits ``[0, 18)``, the upper row
from bit 18 up. The lower field is read as signed; its sign "bleeds" into the upper field (a
negative lower sum borrows one from it), which the reader undoes (:func:`unpack`).
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

# PE_LATENCY is defined with the array's timing arithmetic, which the host imports without Amaranth
from .array_timing import PE_LATENCY

__all__ = ["ProcessingElement", "PackedPEPair", "SharedWeights", "WeightBank", "PE_LATENCY",
           "PACK_SHIFT", "PACK_P_BITS", "RAM_STYLES", "packed_segment_len", "unpack"]

#: Bit offset of the upper row's field in a packed DSP word (WP486: 18).
PACK_SHIFT = 18
#: Width of a packed partial sum (the DSP48E2's P register).
PACK_P_BITS = 48


def packed_segment_len(data_bits: int = 8, x_bits: int = 8, shift: int = PACK_SHIFT) -> int:
    """How many ``data_bits`` x ``x_bits`` signed products a packed lower field always holds.

    The lower field is a signed ``shift``-bit number, so its sum stays exact while it lies in
    ``[-2**(shift-1), 2**(shift-1))``. The largest product is ``(-2**(d-1)) * (-2**(x-1)) =
    2**(d+x-2)`` (the most negative one is smaller in magnitude), so ``n`` products always fit
    when ``n * 2**(d+x-2) <= 2**(shift-1) - 1``. For int8 with an 18-bit field: 7 (8 products of
    ``-128 * -128`` reach ``2**17`` and would flip into the upper field).
    """
    return ((1 << (shift - 1)) - 1) // (1 << (data_bits + x_bits - 2))


def unpack(p: int, shift: int = PACK_SHIFT) -> tuple[int, int]:
    """Split a packed sum ``p = hi * 2**shift + lo`` (``lo`` a signed ``shift``-bit field) into
    ``(lo, hi)``: ``lo`` is the sign-extended lower field and ``hi = (p >> shift) + lo_sign``
    (adding back the one the negative lower field borrowed)."""
    lo = p & ((1 << shift) - 1)
    sign = lo >> (shift - 1)
    return lo - (sign << shift), (p >> shift) + sign


#: ``ram_style`` values a weight memory takes (None: no attribute; ``"ultra"``: UltraRAM, as
#: Vivado and Yosys ``synth_xilinx -uram`` read it).
RAM_STYLES = (None, "block", "distributed", "ultra")


def _check_style(style):
    if style not in RAM_STYLES:
        raise ValueError(f"ram_style must be one of {RAM_STYLES}, not {style!r}")
    return style


def _attrs(style) -> dict:
    return {} if style is None else {"ram_style": style}


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{name} must be a positive integer, not {value!r}")



def _array_ports(x_bits: int, depth: int, ctrl_bits: int, psum_bits: int) -> dict:
    """The ports a PE (or packed pair) shares with its array neighbours: the activation, weight
    address, control and valid it forwards east, and the partial sum it adds to and passes
    south with its control and valid (the same for :class:`ProcessingElement` and
    :class:`PackedPEPair`)."""
    return {
        "x_in": In(signed(x_bits)),
        "addr_in": In(range(depth)),
        "ctrl_in": In(ctrl_bits),
        "valid_in": In(1),
        "x_out": Out(signed(x_bits)),
        "addr_out": Out(range(depth)),
        "ctrl_out": Out(ctrl_bits),
        "valid_out": Out(1),
        "psum_in": In(signed(psum_bits)),
        "psum_out": Out(signed(psum_bits)),
        "ctrl_p": Out(ctrl_bits),
        "valid_p": Out(1),
    }

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
    ram_style : str, optional
        ``ram_style`` attribute of the weight memory (``"block"``: block RAM,
        ``"distributed"``: LUT RAM, ``"ultra"``: UltraRAM, as Vivado and Yosys read it; None:
        the tool chooses).
    weight_in : bool, optional
        No local memory: the weight arrives on ``w_in`` (from a memory shared with the PE above,
        :class:`~recfabric.hw.systolic_array.SystolicArray`), one cycle after ``addr_in``, as the
        memory's read register would present it; there are no ``w_*`` write members then.

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
    w_in : In(signed(data_bits))
        (``weight_in``) The weight of the operand that entered one cycle earlier.
    """

    def __init__(self, *, data_bits: int, acc_bits: int, depth: int, ctrl_bits: int,
                 x_bits: int | None = None, weight_in: bool = False,
                 ram_style: str | None = None):
        x_bits = data_bits if x_bits is None else x_bits
        for name, v in (("data_bits", data_bits), ("acc_bits", acc_bits), ("depth", depth),
                        ("ctrl_bits", ctrl_bits), ("x_bits", x_bits)):
            _check_positive(name, v)
        if acc_bits < data_bits + x_bits:
            raise ValueError(f"acc_bits must hold a full product ({data_bits + x_bits} bits), "
                             f"not {acc_bits}")
        self.data_bits, self.acc_bits, self.depth = data_bits, acc_bits, depth
        self.ctrl_bits, self.x_bits, self.weight_in = ctrl_bits, x_bits, weight_in
        self.ram_style = _check_style(ram_style)
        ports = ({"w_in": In(signed(data_bits))} if weight_in else
                 {"w_en": In(1), "w_addr": In(range(depth)), "w_data": In(signed(data_bits))})
        super().__init__({**ports, **_array_ports(x_bits, depth, ctrl_bits, acc_bits)})

    def elaborate(self, platform):
        m = Module()
        if self.weight_in:
            w = self.w_in
        else:
            m.submodules.weights = mem = Memory(shape=signed(self.data_bits), depth=self.depth,
                                                init=[], attrs=_attrs(self.ram_style))
            wr = mem.write_port()
            rd = mem.read_port()
            m.d.comb += [wr.en.eq(self.w_en), wr.addr.eq(self.w_addr), wr.data.eq(self.w_data),
                         rd.addr.eq(self.addr_in)]
            w = rd.data

        # A/B stage: x register doubles as the pass-on register; w is the memory's read register.
        m.d.sync += [self.x_out.eq(self.x_in), self.addr_out.eq(self.addr_in),
                     self.ctrl_out.eq(self.ctrl_in), self.valid_out.eq(self.valid_in)]
        # M stage.
        prod = Signal(signed(self.data_bits + self.x_bits))
        ctrl_m = Signal(self.ctrl_bits)
        valid_m = Signal()
        m.d.sync += [prod.eq(self.x_out * w), ctrl_m.eq(self.ctrl_out),
                     valid_m.eq(self.valid_out)]
        # P stage: the cascade adder wraps at acc_bits (assignment truncates).
        m.d.sync += [self.psum_out.eq(self.psum_in + prod), self.ctrl_p.eq(ctrl_m),
                     self.valid_p.eq(valid_m)]
        return m


class PackedPEPair(wiring.Component):
    """Two weight-streaming int8 MACs of adjacent output rows in one DSP48E2 (WP486 packing).

    ``psum_out = psum_in + x * ((w_hi[addr] << PACK_SHIFT) + w_lo[addr])``, wrapped to
    :data:`PACK_P_BITS`: the lower row's dot product accumulates in the signed lower
    ``PACK_SHIFT``-bit field, the upper row's above it (read them back with :func:`unpack`). The
    lower field is exact for at most :func:`packed_segment_len` products (7 for int8); a longer
    cascade must drain it (:class:`~recfabric.hw.systolic_array.SystolicArray` does, every
    segment). Timing is the :class:`ProcessingElement`'s: ``psum_out`` three cycles after
    ``x_in`` (A/B register with the weight memories' read registers, M, P).

    The pre-adder output ``(w_hi << 18) + w_lo`` is the 27-bit A:D operand: its low 18 bits are
    ``w_lo`` sign-extended, its upper bits ``w_hi - sign(w_lo)``.

    Parameters
    ----------
    data_bits : int
        Weight width (``data_bits + PACK_SHIFT <= 27``, the DSP48E2's A:D width: int8).
    depth, ctrl_bits : int
        As :class:`ProcessingElement`.
    x_bits : int, optional
        Activation width (``<= 18``, the B port; defaults to ``data_bits``).
    ram_style : str, optional
        As :class:`ProcessingElement`.
    weight_in : bool, optional
        No local memory: the pair's two weights arrive on ``w_in`` (from a :class:`WeightBank`
        shared with other pairs of its column), one cycle after ``addr_in``, as the memory's
        read register would present them; there are no ``w_*`` write members then.

    Members
    -------
    x_in, addr_in, ctrl_in, valid_in, x_out, addr_out, ctrl_out, valid_out, ctrl_p, valid_p
        As :class:`ProcessingElement`.
    psum_in : In(signed(PACK_P_BITS))
        Packed partial sum from the left neighbour.
    psum_out : Out(signed(PACK_P_BITS))
        Packed partial sum, registered (P).
    w_en : In(2)
        Byte-lane write enables: bit 0 writes the lower row's weight (``w_lo``, ``w_data[0]``),
        bit 1 the upper row's (``w_hi``, ``w_data[1]``); both may be written in one cycle.
    w_addr : In(range(depth))
    w_data : In(ArrayLayout(signed(data_bits), 2))
        The pair's two weights (lower row first).
    w_in : In(ArrayLayout(signed(data_bits), 2))
        (``weight_in``) The pair's two weights (lower row first) of the operand that entered
        one cycle earlier.
    """

    #: Weights from a shared :class:`WeightBank` (set on the instance only when True, so the
    #: default's hierarchical fingerprint is unchanged).
    weight_in = False

    def __init__(self, *, data_bits: int, depth: int, ctrl_bits: int, x_bits: int | None = None,
                 ram_style: str | None = None, weight_in: bool = False):
        x_bits = data_bits if x_bits is None else x_bits
        for name, v in (("data_bits", data_bits), ("depth", depth), ("ctrl_bits", ctrl_bits),
                        ("x_bits", x_bits)):
            _check_positive(name, v)
        if data_bits + PACK_SHIFT > 27 or x_bits > 18:
            raise ValueError(f"packing needs data_bits <= {27 - PACK_SHIFT} and x_bits <= 18 "
                             f"(DSP48E2 A:D and B widths), not {data_bits} and {x_bits}")
        self.data_bits, self.depth = data_bits, depth
        self.ctrl_bits, self.x_bits = ctrl_bits, x_bits
        self.ram_style = _check_style(ram_style)
        pair = data.ArrayLayout(signed(data_bits), 2)
        if weight_in:
            self.weight_in = True
            ports = {"w_in": In(pair)}
        else:
            ports = {"w_en": In(2), "w_addr": In(range(depth)), "w_data": In(pair)}
        super().__init__({**_array_ports(x_bits, depth, ctrl_bits, PACK_P_BITS), **ports})

    def elaborate(self, platform):
        m = Module()
        if self.weight_in:
            w_lo, w_hi = self.w_in[0], self.w_in[1]
        else:
            # One memory of weight pairs (one 16-bit word per address: a single RAMB18 in
            # 1K x 18 mode), each row's weight written through its byte lane.
            d = self.data_bits
            pair = _weight_pair_memory(m, self, self.addr_in)
            w_lo, w_hi = pair[:d].as_signed(), pair[d:].as_signed()
        m.d.sync += [self.x_out.eq(self.x_in), self.addr_out.eq(self.addr_in),
                     self.ctrl_out.eq(self.ctrl_in), self.valid_out.eq(self.valid_in)]
        # Pre-adder (A:D): the packed weight pair.
        packed = Signal(signed(PACK_SHIFT + self.data_bits + 1))
        m.d.comb += packed.eq((w_hi << PACK_SHIFT) + w_lo)
        prod = Signal(signed(PACK_SHIFT + self.data_bits + 1 + self.x_bits))
        ctrl_m = Signal(self.ctrl_bits)
        valid_m = Signal()
        m.d.sync += [prod.eq(self.x_out * packed), ctrl_m.eq(self.ctrl_out),
                     valid_m.eq(self.valid_out)]
        m.d.sync += [self.psum_out.eq(self.psum_in + prod), self.ctrl_p.eq(ctrl_m),
                     self.valid_p.eq(valid_m)]
        return m


class SharedWeights(wiring.Component):
    """One weight memory of ``2 * data_bits``-bit words for two vertically adjacent
    :class:`ProcessingElement` s built with ``weight_in`` (a 512 x 36 RAMB18 holds both int16
    rows where each PE alone would take a RAMB18).

    The memory is read at ``addr_in`` (the upper PE's ``addr_in``): ``w_upper`` is the upper
    PE's weight, registered by the read like a PE's own memory; ``w_lower`` is the lower PE's,
    ``lower_delay`` registers later (1, the default: the lower PE sees the same operand one
    cycle after the upper one; 0: both see it together, as in a broadcast column).

    Parameters
    ----------
    data_bits, depth : int
        As :class:`ProcessingElement`.
    ram_style : str, optional
        As :class:`ProcessingElement`.
    lower_delay : int, optional
        Cycles ``w_lower`` trails ``w_upper``: 1 (default) or 0.

    Members
    -------
    addr_in : In(range(depth))
    w_upper, w_lower : Out(signed(data_bits))
    w_en : In(2)
        Byte-lane write enables: bit 0 the upper PE's weight (``w_data[0]``), bit 1 the lower
        PE's (``w_data[1]``); both may be written in one cycle.
    w_addr : In(range(depth))
    w_data : In(ArrayLayout(signed(data_bits), 2))
    """

    #: Cycles ``w_lower`` trails ``w_upper`` (set on the instance only when 0, so the default's
    #: hierarchical fingerprint is unchanged).
    lower_delay = 1

    def __init__(self, *, data_bits: int, depth: int, ram_style: str | None = None,
                 lower_delay: int = 1):
        for name, v in (("data_bits", data_bits), ("depth", depth)):
            _check_positive(name, v)
        if lower_delay not in (0, 1):
            raise ValueError(f"lower_delay must be 0 or 1, not {lower_delay!r}")
        if lower_delay != 1:
            self.lower_delay = lower_delay
        self.data_bits, self.depth = data_bits, depth
        self.ram_style = _check_style(ram_style)
        super().__init__({
            "addr_in": In(range(depth)),
            "w_upper": Out(signed(data_bits)),
            "w_lower": Out(signed(data_bits)),
            "w_en": In(2),
            "w_addr": In(range(depth)),
            "w_data": In(data.ArrayLayout(signed(data_bits), 2)),
        })

    def elaborate(self, platform):
        m = Module()
        d = self.data_bits
        pair = _weight_pair_memory(m, self, self.addr_in)
        m.d.comb += self.w_upper.eq(pair[:d])
        if self.lower_delay:
            m.d.sync += self.w_lower.eq(pair[d:])
        else:
            m.d.comb += self.w_lower.eq(pair[d:])
        return m


class WeightBank(wiring.Component):
    """One weight memory of ``lanes * data_bits``-bit words for ``lanes`` rows of one array
    column whose PEs (built with ``weight_in``) all read the same address in the same cycle (a
    broadcast column, :class:`~recfabric.hw.systolic_array.SystolicArray` ``weight_share``).

    Four int8 packed pairs' weights (64 bits) at one address fill one 512 x 72 RAMB36 where each
    pair alone takes a RAMB18; ``w_out`` is registered by the read like a PE's own memory (one
    cycle after ``addr_in``).

    Parameters
    ----------
    lanes : int
        Rows (weights) per word.
    data_bits, depth : int
        As :class:`ProcessingElement`.
    ram_style : str, optional
        As :class:`ProcessingElement`.

    Members
    -------
    addr_in : In(range(depth))
    w_out : Out(ArrayLayout(signed(data_bits), lanes))
        Lane ``j``: row ``j``'s weight of the operand that entered one cycle earlier.
    w_en : In(lanes)
        Byte-lane write enables: bit ``j`` writes row ``j``'s weight (``w_data[j]``); any
        subset may be written in one cycle.
    w_addr : In(range(depth))
    w_data : In(ArrayLayout(signed(data_bits), lanes))
    """

    def __init__(self, *, lanes: int, data_bits: int, depth: int,
                 ram_style: str | None = None):
        for name, v in (("lanes", lanes), ("data_bits", data_bits), ("depth", depth)):
            _check_positive(name, v)
        self.lanes, self.data_bits, self.depth = lanes, data_bits, depth
        self.ram_style = _check_style(ram_style)
        words = data.ArrayLayout(signed(data_bits), lanes)
        super().__init__({
            "addr_in": In(range(depth)),
            "w_out": Out(words),
            "w_en": In(lanes),
            "w_addr": In(range(depth)),
            "w_data": In(words),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.weights = mem = Memory(shape=self.lanes * self.data_bits, depth=self.depth,
                                            init=[], attrs=_attrs(self.ram_style))
        wr = mem.write_port(granularity=self.data_bits)
        rd = mem.read_port()
        m.d.comb += [wr.en.eq(self.w_en), wr.addr.eq(self.w_addr), wr.data.eq(self.w_data),
                     rd.addr.eq(self.addr_in), self.w_out.eq(rd.data)]
        return m


def _weight_pair_memory(m, block, addr):
    """The weight memory shared by two PEs (:class:`PackedPEPair`, :class:`SharedWeights`):
    ``2 * data_bits``-bit words, each half written through its byte lane (``block.w_en``,
    ``w_addr``, ``w_data``), read synchronously at ``addr``; returns the read data."""
    d = block.data_bits
    m.submodules.weights = mem = Memory(shape=2 * d, depth=block.depth, init=[],
                                        attrs=_attrs(block.ram_style))
    wr = mem.write_port(granularity=d)
    rd = mem.read_port()
    m.d.comb += [wr.en.eq(block.w_en), wr.addr.eq(block.w_addr), wr.data.eq(block.w_data),
                 rd.addr.eq(addr)]
    return rd.data
