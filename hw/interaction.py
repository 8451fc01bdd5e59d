"""Feature interaction between the concatenation stage and the top MLP, and the element packer.

:class:`DotInteraction` sits between :class:`~recfabric.hw.concat_stage.ConcatStage` and the top
:class:`~recfabric.hw.mlp.MLPPipeline`. Its runtime mode (descriptor entry ``MODE``) is

``CONCAT`` (0, the reset value)
    The assembled vector passes straight through (no added cycle): the top MLP's input is the
    concatenation.
``DOT`` (1)
    DLRM's pairwise dot interaction, exactly :func:`recfabric.host.reference.golden.interaction`
    (numerics spec: :func:`recfabric.host.numerics.dot_interaction`). The concatenation stage
    assembles ``n`` vectors of ``d`` elements, vector ``i`` at positions ``i*d .. i*d+d-1``
    (vector 0: the dense vector, i.e. the bottom MLP's output). The output is
    ``[requantize(v_0, frac_0 - out_frac), requantize(wrap(v_i . v_j), frac_i + frac_j -
    out_frac) for i in 1..n-1 for j in 0..i-1]``: the dense vector, then the strictly lower
    triangle in row-major order (DLRM's order), every product exact, sums wrapped to
    ``acc_bits``, every requantize a :class:`~recfabric.hw.mlp.Requantizer` (rounding as the
    ``FLAGS`` entry says, saturation to ``data_bits``). ``frac_i`` is vector ``i``'s format
    (per-table formats give every vector its own), ``out_frac`` the top MLP's input format.

Descriptor (runtime, through ``i_desc``; :func:`interaction_desc_words` builds it), entries
``addr -> data`` (signed 16 bits): ``0`` MODE, ``1`` N (vectors), ``2`` DIM (``d``, a multiple of
``dot_lanes``), ``3`` OUT_FRAC, ``4`` FLAGS (bit 0: FLOOR rounding, else HALF_UP), ``8 + i``
FRAC of vector ``i``.

Timing (DOT): the vector is taken one element per cycle (``chunks * lanes`` cycles); each output
element then takes ``d / dot_lanes + 4`` cycles (a dense element 5), ``dot_lanes`` MACs per cycle.
A request's vector is taken only after the previous request's output has been handed to the
packer.
"""

from __future__ import annotations

import math

from amaranth.hdl import Array, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .mlp.requantizer import REQUANT_LATENCY, Requantizer
from .sigmoid import LogitLayout
from .stream_types import MLPInputLayout
from .stream_types import index_bits as _bits_for

__all__ = ["ElementPacker", "DotInteraction", "InteractionDescLayout", "InteractionMode",
           "interaction_desc_words", "FRAC_BASE"]

#: Descriptor entry of vector 0's FRAC; vector ``i`` is at ``FRAC_BASE + i``.
FRAC_BASE = 8
MODE, N, DIM, OUT_FRAC, FLAGS = 0, 1, 2, 3, 4


class InteractionMode:
    CONCAT = 0
    DOT = 1


def _pos(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise TypeError(f"{name} must be a positive integer, not {v!r}")


class ElementPacker(wiring.Component):
    """Packs a stream of elements into ``lanes``-wide chunks (an MLP's input stream).

    Element ``n`` of a request goes to lane ``n % lanes`` of chunk ``n // lanes``; the element
    with ``last`` ends the request's last chunk, whose unused lanes are zero.

    Members
    -------
    i_elem : In(stream.Signature(LogitLayout(bits)))
    o_vector : Out(stream.Signature(MLPInputLayout(bits, lanes)))
    """

    def __init__(self, *, lanes: int, bits: int):
        _pos("lanes", lanes)
        _pos("bits", bits)
        self.lanes, self.bits = lanes, bits
        super().__init__({
            "i_elem": In(stream.Signature(LogitLayout(bits))),
            "o_vector": Out(stream.Signature(MLPInputLayout(bits=bits, lanes=lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        buf = [Signal(signed(self.bits), name=f"buf{q}") for q in range(L)]
        cnt = Signal(range(L))
        i, o = self.i_elem, self.o_vector
        closes = (cnt == L - 1) | i.payload.last
        m.d.comb += i.ready.eq(~closes | ~o.valid | o.ready)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(i.valid & i.ready):
            with m.If(closes):
                m.d.sync += [o.valid.eq(1), o.payload.last.eq(i.payload.last), cnt.eq(0)]
                for q in range(L):
                    m.d.sync += o.payload.data[q].eq(
                        Mux(cnt == q, i.payload.data, Mux(cnt > q, buf[q], 0)))
            with m.Else():
                m.d.sync += [Array(buf)[cnt].eq(i.payload.data), cnt.eq(cnt + 1)]
        return m


class InteractionDescLayout(data.StructLayout):
    """One descriptor write of :class:`DotInteraction` (entries: the module docstring).

    Members
    -------
    addr : unsigned
    data : signed(16)
    """

    def __init__(self, max_vectors: int):
        super().__init__({"addr": _bits_for(FRAC_BASE + max_vectors), "data": signed(16)})


def interaction_desc_words(block, *, mode: int, n: int = 0, dim: int = 0, out_frac: int = 0,
                           fracs=(), floor: bool = False) -> list:
    """Descriptor writes (dicts of :class:`InteractionDescLayout` fields) for ``block``.

    Raises ``ValueError`` naming the bad value when the model does not fit the block.
    """
    words = [{"addr": MODE, "data": int(mode)}]
    if mode == InteractionMode.CONCAT:
        return words
    if mode != InteractionMode.DOT:
        raise ValueError(f"interaction mode must be CONCAT (0) or DOT (1), not {mode!r}")
    if not 1 <= n <= block.max_vectors:
        raise ValueError(f"dot interaction of {n} vectors: the block takes 1..{block.max_vectors}")
    if dim < 1 or dim % block.dot_lanes:
        raise ValueError(f"dot interaction vector width {dim} must be a positive multiple of "
                         f"the block's {block.dot_lanes} dot lanes")
    if n * dim > block.max_in:
        raise ValueError(f"dot interaction input of {n} x {dim} elements exceeds max_in "
                         f"{block.max_in}")
    if len(fracs) != n:
        raise ValueError(f"{n} vectors need {n} formats, not {len(fracs)}")
    words += [{"addr": N, "data": n}, {"addr": DIM, "data": dim},
              {"addr": OUT_FRAC, "data": out_frac}, {"addr": FLAGS, "data": int(bool(floor))}]
    words += [{"addr": FRAC_BASE + i, "data": int(f)} for i, f in enumerate(fracs)]
    return words


class DotInteraction(wiring.Component):
    """Concatenation pass-through or DLRM dot interaction (see the module docstring).

    Parameters
    ----------
    lanes : int
        Elements per input and output chunk (the top MLP's first engine's columns).
    data_bits, acc_bits : int
    max_vectors : int
        Most vectors ``n`` (dense vector plus sparse features).
    max_in : int
        Most elements of the assembled input vector (``n * d``); also the longest output.
    dot_lanes : int
        MACs per cycle (a power of two); ``d`` must be a multiple of it.

    Members
    -------
    i_vector : In(stream.Signature(MLPInputLayout(data_bits, lanes)))
        Assembled vectors, ``last`` on a request's last chunk.
    i_desc : In(stream.Signature(InteractionDescLayout(max_vectors)))
        Descriptor writes; always ready (not while requests are in flight).
    o_vector : Out(stream.Signature(MLPInputLayout(data_bits, lanes)))
        The top MLP's input, ``last`` on a request's last chunk.
    """

    def __init__(self, *, lanes: int, data_bits: int, acc_bits: int, max_vectors: int,
                 max_in: int, dot_lanes: int = 1):
        for name, v in (("lanes", lanes), ("data_bits", data_bits), ("acc_bits", acc_bits),
                        ("max_vectors", max_vectors), ("max_in", max_in),
                        ("dot_lanes", dot_lanes)):
            _pos(name, v)
        if dot_lanes & (dot_lanes - 1):
            raise ValueError(f"dot_lanes must be a power of two, not {dot_lanes}")
        self.lanes, self.data_bits, self.acc_bits = lanes, data_bits, acc_bits
        self.max_vectors, self.max_in, self.dot_lanes = max_vectors, max_in, dot_lanes
        self.desc_layout = InteractionDescLayout(max_vectors)
        layout = MLPInputLayout(bits=data_bits, lanes=lanes)
        super().__init__({
            "i_vector": In(stream.Signature(layout)),
            "i_desc": In(stream.Signature(self.desc_layout)),
            "o_vector": Out(stream.Signature(layout)),
        })

    def elaborate(self, platform):
        # One function on purpose: the loader, the pair sequencer and the output share the
        # element counters and the two copies of the vector memory.
        m = Module()
        C, P, bits = self.lanes, self.dot_lanes, self.data_bits
        lp = P.bit_length() - 1
        positions = math.ceil(self.max_in / C) * C
        depth = math.ceil(positions / P)
        wbits = _bits_for(depth + 1)

        # ---- descriptor ----
        mode = Signal()
        n_vec = Signal(range(self.max_vectors + 1))
        dim = Signal(range(self.max_in + 1))
        out_frac = Signal(signed(16))
        floor = Signal()
        fracs = Array(Signal(signed(16), name=f"frac{i}") for i in range(self.max_vectors))
        d = self.i_desc
        m.d.comb += d.ready.eq(1)
        with m.If(d.valid):
            with m.Switch(d.payload.addr):
                with m.Case(MODE):
                    m.d.sync += mode.eq(d.payload.data[0])
                with m.Case(N):
                    m.d.sync += n_vec.eq(d.payload.data)
                with m.Case(DIM):
                    m.d.sync += dim.eq(d.payload.data)
                with m.Case(OUT_FRAC):
                    m.d.sync += out_frac.eq(d.payload.data)
                with m.Case(FLAGS):
                    m.d.sync += floor.eq(d.payload.data[0])
                for i in range(self.max_vectors):
                    with m.Case(FRAC_BASE + i):
                        m.d.sync += fracs[i].eq(d.payload.data)

        m.submodules.packer = packer = ElementPacker(lanes=C, bits=bits)
        m.submodules.requant = rq = Requantizer(acc_bits=self.acc_bits, data_bits=bits)

        # ---- two copies of the vector (operands a and b of a pair), dot_lanes lanes each ----
        wa = Signal(wbits)
        wl = Signal(range(P))
        we = Signal()
        wd = Signal(signed(bits))
        ra, rb = Signal(wbits), Signal(wbits)
        ren = Signal()
        a_data, b_data = [], []
        for copy, raddr, out in (("a", ra, a_data), ("b", rb, b_data)):
            for q in range(P):
                mem = Memory(shape=signed(bits), depth=depth, init=[])
                m.submodules[f"{copy}{q}"] = mem
                wp, rp = mem.write_port(), mem.read_port()
                m.d.comb += [wp.en.eq(we & (wl == q)), wp.addr.eq(wa), wp.data.eq(wd),
                             rp.addr.eq(raddr), rp.en.eq(ren)]
                out.append(rp.data)

        iv = self.i_vector
        with m.If(mode == InteractionMode.CONCAT):
            wiring.connect(m, wiring.flipped(self.i_vector), wiring.flipped(self.o_vector))
        with m.Else():
            wiring.connect(m, packer.o_vector, wiring.flipped(self.o_vector))

        # ---- dot mode sequencer ----
        q = Signal(range(C))  # lane of the input chunk being written
        p = Signal(range(positions + 1))  # element position being written
        dw = Signal(range(depth + 1))  # words per vector: dim / dot_lanes
        m.d.comb += dw.eq(dim >> lp)
        k = Signal(range(self.max_in + 1))  # dense element
        vi = Signal(range(self.max_vectors + 1))
        vj = Signal(range(self.max_vectors + 1))
        bi, bj = Signal(wbits), Signal(wbits)  # word bases of vectors vi and vj
        t = Signal(range(depth + 2))
        acc = Signal(signed(self.acc_bits))
        shift = Signal(signed(16))
        lane_d = Signal(range(P))
        wait = Signal(range(REQUANT_LATENCY + 1))
        dense_phase = Signal()
        prods = [Signal(signed(2 * bits), name=f"prod{x}") for x in range(P)]
        for x in range(P):
            m.d.comb += prods[x].eq(a_data[x] * b_data[x])
        psum = Signal(signed(2 * bits + lp + 1))
        m.d.comb += psum.eq(sum(prods))
        last_elem = Signal()
        m.d.comb += last_elem.eq(Mux(dense_phase, (k == dim - 1) & (n_vec == 1),
                                     (vi == n_vec - 1) & (vj == vi - 1)))
        m.d.comb += [rq.acc.eq(acc), rq.shift.eq(shift), rq.floor.eq(floor), rq.relu.eq(0),
                     rq.logit.eq(0), packer.i_elem.payload.data.eq(rq.y),
                     packer.i_elem.payload.last.eq(last_elem)]

        with m.FSM(name="dot"):
            with m.State("LOAD"):
                m.d.comb += [wa.eq(p >> lp), wl.eq(p[:lp] if lp else 0),
                             wd.eq(iv.payload.data[q]),
                             we.eq(iv.valid & (mode == InteractionMode.DOT))]
                with m.If(mode == InteractionMode.DOT):
                    m.d.comb += iv.ready.eq(q == C - 1)
                    with m.If(iv.valid):
                        m.d.sync += p.eq(p + 1)
                        m.d.sync += q.eq(Mux(q == C - 1, 0, q + 1))
                        with m.If((q == C - 1) & iv.payload.last):
                            m.d.sync += [p.eq(0), k.eq(0), dense_phase.eq(1)]
                            m.next = "DENSE"
            with m.State("DENSE"):
                m.d.comb += [ra.eq(k >> lp), ren.eq(1)]
                m.d.sync += lane_d.eq(k[:lp] if lp else 0)
                m.next = "DENSE_DATA"
            with m.State("DENSE_DATA"):
                m.d.sync += [acc.eq(Array(a_data)[lane_d]), shift.eq(fracs[0] - out_frac),
                             wait.eq(0)]
                m.next = "REQUANT"
            with m.State("PAIR"):
                # t counts 0..dw: read t (t < dw) while summing the data of read t - 1.
                m.d.comb += [ra.eq(bi + t), rb.eq(bj + t), ren.eq(1)]
                m.d.sync += t.eq(t + 1)
                with m.If(t == 1):
                    m.d.sync += acc.eq(psum)
                with m.Elif(t != 0):
                    m.d.sync += acc.eq(acc + psum)
                with m.If(t == dw):
                    m.d.sync += [t.eq(0), wait.eq(0), shift.eq(fracs[vi] + fracs[vj] - out_frac)]
                    m.next = "REQUANT"
            with m.State("REQUANT"):
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == REQUANT_LATENCY - 1):
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += packer.i_elem.valid.eq(1)
                with m.If(packer.i_elem.ready):
                    with m.If(last_elem):
                        m.next = "LOAD"
                    with m.Elif(dense_phase & (k != dim - 1)):
                        m.d.sync += k.eq(k + 1)
                        m.next = "DENSE"
                    with m.Elif(dense_phase | (vj == vi - 1)):
                        # next row of the triangle: (vi + 1, 0)
                        nxt = Mux(dense_phase, 1, vi + 1)
                        m.d.sync += [dense_phase.eq(0), vi.eq(nxt), vj.eq(0), bj.eq(0),
                                     bi.eq(Mux(dense_phase, dw, bi + dw))]
                        m.next = "PAIR"
                    with m.Else():
                        m.d.sync += [vj.eq(vj + 1), bj.eq(bj + dw)]
                        m.next = "PAIR"
        return m
