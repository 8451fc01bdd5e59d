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
``addr -> data`` (signed 16 bits): ``0`` MODE, ``1`` N (vectors), ``2`` DIM (``d``), ``3``
OUT_FRAC, ``4`` FLAGS (bit 0: FLOOR rounding, else HALF_UP), ``5`` DIM_WORDS and ``6`` DIM_LANES
(``divmod(d, lanes)``), ``7`` TILES (``ceil(d / dot_lanes)``), ``8 + i`` FRAC of vector ``i``.

Timing (DOT): the vector is stored one chunk per cycle into one of two buffers, so the next
request is taken while the previous one is computed; the computation issues one read per cycle,
fully pipelined: ``d`` dense elements, then ``n(n-1)/2`` pairs of ``ceil(d / dot_lanes)`` reads
(``dot_lanes`` MACs each), one idle cycle per request. A request's first element leaves 6
cycles after its first read (``5 + sum_stages(dot_lanes)`` in general: the products' sum takes
one cycle per adder level); the output is one element per cycle into the chunk packer.
"""

from __future__ import annotations

import math

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .arith import carry_select_add
from .mlp.requantizer import REQUANT_LATENCY, Requantizer
from .sigmoid import LogitLayout
from .stream_types import MLPInputLayout
from .stream_types import index_bits as _bits_for

__all__ = ["ElementPacker", "DotInteraction", "InteractionDescLayout", "InteractionMode",
           "interaction_desc_words", "FRAC_BASE", "sum_stages"]

#: Descriptor entry of vector 0's FRAC; vector ``i`` is at ``FRAC_BASE + i``.
FRAC_BASE = 8
MODE, N, DIM, OUT_FRAC, FLAGS, DIM_WORDS, DIM_LANES, TILES = range(8)
#: Depth of the output FIFO (elements in flight between the first read and the packer) for
#: one-cycle sums (:func:`sum_stages` 1): deep enough that the credit loop (read, MAC,
#: ``REQUANT_LATENCY`` requantizer stages, FIFO write, pop: ~6 + ``REQUANT_LATENCY`` cycles)
#: never throttles one issue per cycle; each further sum stage adds one entry.
OUT_FIFO_DEPTH = 16


def sum_stages(dot_lanes: int) -> int:
    """Cycles the sum of ``dot_lanes`` products takes: one two-input adder level per cycle
    (``ceil(log2(dot_lanes))``, at least 1)."""
    return max(1, (dot_lanes - 1).bit_length())


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
    if dim < 1:
        raise ValueError(f"dot interaction vector width must be at least 1, not {dim}")
    if n * dim > block.max_in:
        raise ValueError(f"dot interaction input of {n} x {dim} elements exceeds max_in "
                         f"{block.max_in}")
    if len(fracs) != n:
        raise ValueError(f"{n} vectors need {n} formats, not {len(fracs)}")
    words += [{"addr": N, "data": n}, {"addr": DIM, "data": dim},
              {"addr": OUT_FRAC, "data": out_frac}, {"addr": FLAGS, "data": int(bool(floor))},
              {"addr": DIM_WORDS, "data": dim // block.lanes},
              {"addr": DIM_LANES, "data": dim % block.lanes},
              {"addr": TILES, "data": -(-dim // block.dot_lanes)}]
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
        MACs per cycle (at most ``lanes``).

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
        if dot_lanes > lanes:
            raise ValueError(f"dot_lanes ({dot_lanes}) must not exceed lanes ({lanes})")
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
        # One function on purpose: the loader, the read sequencer and the MAC pipeline share the
        # double-buffered vector memories and the per-position (word, lane) arithmetic.
        m = Module()
        C, P, bits = self.lanes, self.dot_lanes, self.data_bits
        # Position p of a vector lives in bank p % C at word p // C; reads run up to P - 1
        # positions past the last vector, whose products are masked.
        words = math.ceil((self.max_in + P) / C) + 1
        local = _bits_for(words + 1)

        # ---- descriptor ----
        mode = Signal()
        n_vec = Signal(range(self.max_vectors + 1))
        dim = Signal(range(self.max_in + 1))
        dim_w = Signal(local)
        dim_l = Signal(range(C))
        tiles = Signal(range(self.max_in + 1))
        out_frac = Signal(signed(16))
        floor = Signal()
        fracs = Array(Signal(signed(16), name=f"frac{i}") for i in range(self.max_vectors))
        d = self.i_desc
        m.d.comb += d.ready.eq(1)
        # N - 1, DIM - 1 and TILES - 1 as registers beside them, set with them: the read
        # sequencer's end tests are then equalities (no subtraction on its critical path).
        n_m1 = Signal.like(n_vec)
        dim_m1 = Signal.like(dim)
        tiles_m1 = Signal.like(tiles)
        minus_one = {N: n_m1, DIM: dim_m1, TILES: tiles_m1}
        regs = {MODE: mode, N: n_vec, DIM: dim, OUT_FRAC: out_frac, FLAGS: floor,
                DIM_WORDS: dim_w, DIM_LANES: dim_l, TILES: tiles}
        with m.If(d.valid):
            with m.Switch(d.payload.addr):
                for addr, reg in regs.items():
                    with m.Case(addr):
                        m.d.sync += reg.eq(d.payload.data[:len(reg)])
                        if addr in minus_one:
                            m.d.sync += minus_one[addr].eq(d.payload.data - 1)
                for i in range(self.max_vectors):
                    with m.Case(FRAC_BASE + i):
                        m.d.sync += fracs[i].eq(d.payload.data)

        m.submodules.packer = packer = ElementPacker(lanes=C, bits=bits)
        m.submodules.requant = rq = Requantizer(acc_bits=self.acc_bits, data_bits=bits)
        fifo_depth = OUT_FIFO_DEPTH + sum_stages(P) - 1
        m.submodules.out_fifo = fifo = SyncFIFOBuffered(width=bits + 1, depth=fifo_depth)

        iv = self.i_vector
        with m.If(mode == InteractionMode.CONCAT):
            wiring.connect(m, wiring.flipped(self.i_vector), wiring.flipped(self.o_vector))
        with m.Else():
            wiring.connect(m, packer.o_vector, wiring.flipped(self.o_vector))

        # ---- two buffers (request parity), two copies (operands a, b), C banks each ----
        full = Signal(2)
        wsel, rsel = Signal(), Signal()
        chunk = Signal(local)
        take = Signal()
        addr_a = [Signal(local, name=f"ra{b}") for b in range(C)]
        addr_b = [Signal(local, name=f"rb{b}") for b in range(C)]
        a_data, b_data = [], []
        for copy, addrs, out in (("a", addr_a, a_data), ("b", addr_b, b_data)):
            for b in range(C):
                mem = Memory(shape=signed(bits), depth=2 << local, init=[])
                m.submodules[f"{copy}{b}"] = mem
                wp, rp = mem.write_port(), mem.read_port()
                m.d.comb += [wp.en.eq(take), wp.addr.eq(Cat(chunk, wsel)),
                             wp.data.eq(iv.payload.data[b]),
                             rp.addr.eq(Cat(addrs[b], rsel))]
                out.append(rp.data)

        # ---- loader: one chunk per cycle into the free buffer ----
        with m.If(mode == InteractionMode.DOT):
            m.d.comb += [iv.ready.eq(~full.bit_select(wsel, 1)), take.eq(iv.valid & iv.ready)]
        with m.If(take):
            m.d.sync += chunk.eq(chunk + 1)
            with m.If(iv.payload.last):
                m.d.sync += [chunk.eq(0), wsel.eq(~wsel)]
        set_full = Signal(2)
        clr_full = Signal(2)
        m.d.comb += set_full.eq(Mux(take & iv.payload.last, Mux(wsel, 0b10, 0b01), 0))
        m.d.sync += full.eq((full | set_full) & ~clr_full)

        # ---- read sequencer: one read per cycle (dense elements, then pair tiles) ----
        def add(pos, dw, dl):
            """(word, lane) + (dw, dl), dl < C: the position ``dw * C + dl`` further."""
            w, la = pos
            s = la + dl
            carry = s >= C
            return w + dw + carry, Mux(carry, s - C, s)

        def pos_regs(name):
            return (Signal(local, name=f"{name}_w"), Signal(range(C), name=f"{name}_l"))

        def set_pos(pos, val):
            return [pos[0].eq(val[0]), pos[1].eq(val[1])]

        busy = Signal()
        dense = Signal()
        k = Signal(range(self.max_in + 1))
        vi = Signal(range(self.max_vectors + 1))
        vj = Signal(range(self.max_vectors + 1))
        vi_m1 = Signal(range(self.max_vectors + 1))  # vi - 1, kept beside vi
        t = Signal(range(self.max_in + 1))
        rem = Signal(range(self.max_in + 1))  # elements of the pair's vectors from tile t on
        pk, pa, pb, base_i, base_j = (pos_regs(x) for x in ("pk", "pa", "pb", "bi", "bj"))
        credits = Signal(range(fifo_depth + 1))  # elements issued, not yet in the packer
        pw, pl = divmod(P, C)

        last_tile = t == tiles_m1
        last_read = Mux(dense, 1, last_tile)
        end = Mux(dense, (k == dim_m1) & (n_vec == 1),
                  last_tile & (vi == n_m1) & (vj == vi_m1))
        issue = busy & (~last_read | (credits < fifo_depth))
        # Bank b holds element x = (b - lane) mod C of a read at (word, lane): word + (b < lane).
        ra_pos = Mux(dense, pk[0], pa[0]), Mux(dense, pk[1], pa[1])
        for b in range(C):
            m.d.comb += [addr_a[b].eq(ra_pos[0] + (b < ra_pos[1])),
                         addr_b[b].eq(pb[0] + (b < pb[1]))]
        # The two formats are read here, their sum in the next stage (a ``max_vectors``-way
        # read and a three-operand add in one cycle were too deep).
        frac_a, frac_b = Signal(signed(16)), Signal(signed(16))
        m.d.comb += [frac_a.eq(Mux(dense, fracs[0], fracs[vi])),
                     frac_b.eq(Mux(dense, 0, fracs[vj]))]

        with m.If(~busy & full.bit_select(rsel, 1)):
            m.d.sync += [busy.eq(1), dense.eq(1), k.eq(0), *set_pos(pk, (0, 0))]
        with m.If(issue):
            with m.If(end):
                m.d.sync += [busy.eq(0), rsel.eq(~rsel)]
                m.d.comb += clr_full.eq(Mux(rsel, 0b10, 0b01))
            with m.If(dense):
                m.d.sync += [k.eq(k + 1), *set_pos(pk, add(pk, 0 if C > 1 else 1,
                                                             1 if C > 1 else 0))]
                with m.If(k == dim_m1):  # first pair: (1, 0)
                    m.d.sync += [dense.eq(0), vi.eq(1), vi_m1.eq(0), vj.eq(0), t.eq(0),
                                 rem.eq(dim),
                                 *set_pos(base_i, (dim_w, dim_l)), *set_pos(pa, (dim_w, dim_l)),
                                 *set_pos(base_j, (0, 0)), *set_pos(pb, (0, 0))]
            with m.Elif(~last_tile):
                m.d.sync += [t.eq(t + 1), rem.eq(rem - P),
                             *set_pos(pa, add(pa, pw, pl)), *set_pos(pb, add(pb, pw, pl))]
            with m.Elif(vj != vi_m1):  # next pair of the row: (vi, vj + 1)
                nj = add(base_j, dim_w, dim_l)
                m.d.sync += [t.eq(0), rem.eq(dim), vj.eq(vj + 1), *set_pos(base_j, nj),
                             *set_pos(pb, nj), *set_pos(pa, base_i)]
            with m.Else():  # next row: (vi + 1, 0)
                ni = add(base_i, dim_w, dim_l)
                m.d.sync += [t.eq(0), rem.eq(dim), vi.eq(vi + 1), vi_m1.eq(vi), vj.eq(0),
                             *set_pos(base_i, ni), *set_pos(pa, ni), *set_pos(base_j, (0, 0)),
                             *set_pos(pb, (0, 0))]

        # ---- MAC pipeline: read data (1), rotate + multiply (2), sum (3, one cycle per adder
        # level), accumulate and requantize (4, 5), into the FIFO (6) ----
        def meta(name, shift=True):
            fields = {"valid": Signal(name=f"{name}_valid"),
                      "first": Signal(name=f"{name}_first"), "last": Signal(name=f"{name}_last"),
                      "end": Signal(name=f"{name}_end"), "dense": Signal(name=f"{name}_dense")}
            if shift:  # (m1 carries the two formats instead: fa1, fb1)
                fields["shift"] = Signal(signed(16), name=f"{name}_shift")
            return fields

        m1, m2, m3 = meta("m1", shift=False), meta("m2"), meta("m3")
        fa1, fb1 = Signal(signed(16)), Signal(signed(16))
        rem1 = Signal(range(self.max_in + 1))
        m.d.sync += [m1["valid"].eq(issue), m1["first"].eq(dense | (t == 0)),
                     m1["last"].eq(last_read), m1["end"].eq(end), m1["dense"].eq(dense),
                     fa1.eq(frac_a), fb1.eq(frac_b), rem1.eq(Mux(dense, 1, rem))]

        # Product x takes element x of the read at (word, lane): bank (lane + x) mod C. The
        # banks are chosen in the read's cycle, the data arrive with ``m1`` (the bank index
        # and the ``C``-way data multiplexer in one cycle were too deep).
        def bank_regs(name, lane):
            regs = []
            for x in range(P):
                r = Signal(range(C), name=f"{name}{x}")
                idx = lane + x
                m.d.sync += r.eq(Mux(idx >= C, idx - C, idx))
                regs.append(r)
            return regs

        bank_a, bank_b = bank_regs("bank_a", ra_pos[1]), bank_regs("bank_b", pb[1])

        prods = [Signal(signed(2 * bits), name=f"prod{x}") for x in range(P)]
        for x in range(P):
            a_x, b_x = Array(a_data)[bank_a[x]], Array(b_data)[bank_b[x]]
            if x == 0:
                val = Mux(m1["dense"], a_x, a_x * b_x)
            else:
                val = Mux(m1["dense"], 0, a_x * b_x)
            m.d.sync += prods[x].eq(Mux(x < rem1, val, 0))
        m.d.sync += [m2[f].eq(m1[f]) for f in m1]
        m.d.sync += m2["shift"].eq(fa1 + fb1 - out_frac)
        # The products' sum: a tree of two-input adders, one level per cycle (a wide adder is
        # already ~5 logic levels), the last level into ``psum`` with ``m3``.
        level, mt = list(prods), m2
        for depth in range(1, sum_stages(P)):
            nxt = []
            for k in range(0, len(level), 2):
                r = Signal(signed(2 * bits + depth), name=f"psum{depth}_{k // 2}")
                m.d.sync += r.eq(sum(level[k:k + 2]))
                nxt.append(r)
            mn = meta(f"mt{depth}")
            m.d.sync += [mn[f].eq(mt[f]) for f in mt]
            level, mt = nxt, mn
        psum = Signal(signed(2 * bits + P.bit_length()))
        m.d.sync += [psum.eq(sum(level)), *[m3[f].eq(mt[f]) for f in mt]]
        acc = Signal(signed(self.acc_bits))
        acc_next = Signal(signed(self.acc_bits))  # wraps to acc_bits, as numerics.mac does
        psum_ext = Signal(signed(self.acc_bits))
        # (carry-select: a 48-bit ripple add and the select were 8 levels at u280)
        m.d.comb += [psum_ext.eq(psum),
                     acc_next.eq(Mux(m3["first"], psum,
                                     carry_select_add(acc, psum_ext, self.acc_bits)))]
        with m.If(m3["valid"]):
            m.d.sync += acc.eq(acc_next)
        m.d.comb += [rq.acc.eq(acc_next), rq.shift.eq(m3["shift"]), rq.floor.eq(floor),
                     rq.relu.eq(0), rq.logit.eq(0)]
        v = [Signal(name=f"rq_valid{i}") for i in range(REQUANT_LATENCY)]
        e = [Signal(name=f"rq_end{i}") for i in range(REQUANT_LATENCY)]
        m.d.sync += [v[0].eq(m3["valid"] & m3["last"]), e[0].eq(m3["end"])]
        for i in range(1, REQUANT_LATENCY):
            m.d.sync += [v[i].eq(v[i - 1]), e[i].eq(e[i - 1])]
        m.d.comb += [fifo.w_en.eq(v[-1]), fifo.w_data.eq(Cat(rq.y, e[-1]))]

        # ---- output: FIFO -> packer; credits bound the elements in flight ----
        pe = packer.i_elem
        m.d.comb += [pe.valid.eq(fifo.r_rdy), pe.payload.data.eq(fifo.r_data[:bits]),
                     pe.payload.last.eq(fifo.r_data[bits]), fifo.r_en.eq(pe.ready)]
        popped = fifo.r_rdy & pe.ready
        issued = issue & last_read
        with m.If(issued & ~popped):
            m.d.sync += credits.eq(credits + 1)
        with m.Elif(~issued & popped):
            m.d.sync += credits.eq(credits - 1)
        return m
