"""Formal harnesses: each RecFabric block with an AXI port, its protocol checker and environment.

A harness instantiates one block at a small parameterisation, drives every input from
``AnySeq`` (a new free value each cycle), constrains those inputs with the block's documented
environment (``Assume``), watches the AXI port with a checker from
:mod:`~recfabric.hw.formal.axi_properties`, and adds block-level properties (addresses inside the
buffer the host described, sticky error flags, ``done`` only after every write was answered...).
Reset is held in the first cycle only (``Initial``).

A *mutation* puts a deliberate protocol bug between the block and the bus (e.g. ``ARVALID``
dropped after one cycle of waiting); a mutated harness must fail, which shows the properties
catch that bug. :data:`BLOCKS` lists the harnesses by name.

Every harness with ``Block.proof == "prove"`` (all but the two relaxed finding harnesses) also
asserts invariants that tie the checker's counters to the block's own registers and memories,
read through :class:`_Opened` (the block's code is not changed for them), so that k-induction
closes: the properties then hold in every trace, however long.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
import types
from collections.abc import Callable
from unittest import mock

from amaranth.asserts import AnyConst, AnySeq, Initial
from amaranth.hdl import (
    Array,
    Assume,
    Cat,
    Elaboratable,
    Fragment,
    Module,
    Mux,
    ResetSignal,
    Signal,
    Value,
)
from amaranth.lib import data, wiring
from amaranth.lib import fifo as amaranth_fifo
from amaranth.lib.memory import Memory

from .. import control_registers, embedding_lookup, request_reader, result_writer
from ..axi4 import AXIResp
from ..control_registers import ControlRegisters
from ..embedding_lookup import EmbeddingLookupUnit, PoolContextLayout
from ..register_map import STATUS_BLOCK_BYTES
from ..request_reader import RecordFetcher
from ..result_writer import ResultWriter
from .axi_properties import (
    AXI4LiteChecker,
    AXI4ReadChecker,
    AXI4WriteChecker,
    PropertyWriter,
    held,
)

__all__ = ["Mutation", "Block", "BLOCKS", "MUTATION_DEPTH", "build_harness", "LookupUnitHarness",
           "RecordFetchHarness", "ResultWriterHarness", "ControlRegistersHarness"]

#: AXI address width of the harnesses: 4 KiB pages and several of them (the blocks' 4 KiB logic
#: uses the low 12 bits; 64-bit addresses only make the solver slower).
ADDR_WIDTH = 16
#: BMC depth of a mutated harness (the run stops at the first failure, in a few steps).
MUTATION_DEPTH = 30
#: AR/AW fields every RecFabric master documents as constant.
AXI_FIXED = {"cache": 0b0011, "lock": 0, "prot": 0, "qos": 0}


class _ObservedMemory(Memory):
    """A :class:`~amaranth.lib.memory.Memory` with one more asynchronous read port per row
    (``rows[i].data``: row ``i``'s contents), so that invariants can name its contents.

    The extra ports only observe: the block's own ports, and so its behaviour, are unchanged.
    """

    def elaborate(self, platform):
        m = Module()
        self.rows = [self.read_port(domain="comb") for _ in range(self.depth)]
        for i, port in enumerate(self.rows):
            m.d.comb += port.addr.eq(i)
        m.submodules.memory = super().elaborate(platform)
        return m


class _Opened(Elaboratable):
    """A block elaborated at once, with its internal signals and modules at hand.

    k-induction needs invariants that tie a checker's counters to the block's internal
    registers. This elaborates the block (through :meth:`Fragment.get`) with the ``Signal``
    and ``Module`` names of its Python module replaced by recorders, so that the harness can
    name the registers it states invariants over (``opened.signal("reserved")``), the
    block's submodules (``opened.module.submodules.fifo``) and its FSM states
    (``opened.fsms[0]["IDLE"]``: 1 while that state is ongoing). The block's code is unchanged; a
    renamed register fails the harness build with a message naming it.
    """

    def __init__(self, block, pymodule, *, observe_memories=False):
        self.signals = {}
        self.modules = []
        self.memories = []
        signals, modules, memories = self.signals, self.modules, self.memories

        class _Recorder:
            def __call__(self, *args, src_loc_at=0, **kwargs):
                sig = Signal(*args, src_loc_at=src_loc_at + 1, **kwargs)
                signals.setdefault(Value.cast(sig).name, sig)
                return sig

            def like(self, other, *, src_loc_at=0, **kwargs):
                sig = Signal.like(other, src_loc_at=src_loc_at + 1, **kwargs)
                signals.setdefault(Value.cast(sig).name, sig)
                return sig

        fsms = self.fsms = []

        def _module():
            mod = Module()
            plain_fsm = mod.FSM

            @contextlib.contextmanager
            def fsm_recorded(*args, **kwargs):
                with plain_fsm(*args, **kwargs) as fsm:
                    yield fsm
                    # Every state is known now; ask for their "ongoing" signals before the
                    # FSM is lowered.
                    fsms.append({state: fsm.ongoing(state) for state in list(fsm.encoding)})

            mod.FSM = fsm_recorded
            modules.append(mod)
            return mod

        class _Memory(_ObservedMemory):
            def __init__(self, *args, src_loc_at=0, **kwargs):
                super().__init__(*args, src_loc_at=src_loc_at + 1, **kwargs)
                memories.append(self)

        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(pymodule, "Signal", _Recorder()))
            stack.enter_context(mock.patch.object(pymodule, "Module", _module))
            if observe_memories:
                # The block's memories and those of the library FIFOs it instantiates.
                for mod in (pymodule, amaranth_fifo):
                    if hasattr(mod, "Memory"):
                        stack.enter_context(mock.patch.object(mod, "Memory", _Memory))
            self.fragment = Fragment.get(block, None)
        self.module = modules[0]

    def signal(self, name):
        try:
            return self.signals[name]
        except KeyError:
            raise KeyError(f"the block has no internal signal {name!r} (renamed?); it has: "
                           f"{', '.join(sorted(self.signals))}") from None

    def elaborate(self, platform):
        return self.fragment


def _free(m, sig, bits=None):
    """Drive ``sig`` with a new arbitrary value every cycle (of ``bits`` bits, zero-extended:
    narrow free inputs, rather than assumptions on wide ones, let the solver fold the upper
    bits of a block's arithmetic away, multipliers above all)."""
    m.d.comb += sig.eq(AnySeq(len(sig) if bits is None else bits))


def _bus_between(m, dut_port, overrides=None, prefix="bus"):
    """A plain interface (namespace of signals) wired to ``dut_port`` member for member.

    Members the block drives are copied out (or replaced by ``overrides[name]``, the mutation
    hook); members the environment drives are free (``AnySeq``) and copied in.
    """
    overrides = overrides or {}
    bus = types.SimpleNamespace()
    for name, member in dut_port.signature.members.items():
        sig = Signal(member.shape, name=f"{prefix}_{name}")
        setattr(bus, name, sig)
        inner = getattr(dut_port, name)
        if member.flow == wiring.Out:
            m.d.comb += sig.eq(overrides.get(name, inner))
        else:
            _free(m, sig)
            m.d.comb += inner.eq(sig)
    return bus


def _stream_source(p, m, port, name):
    """The environment drives stream ``port`` (a block's ``i_*``) by the stream rules: ``valid``
    held until ``ready``, payload unchanged meanwhile."""
    _free(m, port.valid)
    _free(m, port.payload.as_value())
    waited, same = held(m, port.valid, port.ready, port.payload.as_value(), name)
    with m.If(waited):
        p.assume(f"env.{name}_stable", port.valid & same)


@dataclasses.dataclass(frozen=True)
class Mutation:
    """A deliberate bug between a block and its bus.

    Attributes
    ----------
    description : str
    expect : tuple of str
        The properties that catch it (whichever the solver reaches first).
    overrides : callable
        ``(m, dut_port, bus) -> {member: value}``: values the bus sees instead of the block's
        outputs.
    """

    description: str
    expect: tuple
    overrides: Callable


def _drop_after_wait(valid, ready):
    def f(m, port, bus):
        waited = Signal(name="mut_waited")
        v = getattr(port, valid)
        m.d.sync += waited.eq(getattr(bus, valid) & ~getattr(bus, ready))
        return {valid: v & ~waited}
    return f


def _glitch_while_waiting(valid, ready, field):
    def f(m, port, bus):
        waited = Signal(name="mut_waited")
        m.d.sync += waited.eq(getattr(bus, valid) & ~getattr(bus, ready))
        return {field: getattr(port, field) ^ waited}
    return f


class _Harness(Elaboratable):
    """Shared part: reset in the first cycle, the mutation hook."""

    mutations: dict = {}

    def __init__(self, mutation: str | None = None):
        if mutation is not None and mutation not in self.mutations:
            raise ValueError(f"unknown mutation {mutation!r} for {type(self).__name__}; known: "
                             f"{', '.join(self.mutations) or 'none'}")
        self.mutation = mutation

    def _overrides(self, m, port):
        if self.mutation is None:
            return lambda bus: {}
        mut = self.mutations[self.mutation]
        return lambda bus: mut.overrides(m, port, bus)

    def _wire(self, m, port, prefix="bus"):
        # Overrides may refer to the bus itself (a mutation reacting to READY), so the bus is
        # made first and the block's outputs are then routed through the mutation.
        bus = _bus_between(m, port, prefix=prefix, overrides={})
        if self.mutation is not None:
            # Re-drive the overridden members: the last comb assignment wins.
            for name, value in self._overrides(m, port)(bus).items():
                m.d.comb += getattr(bus, name).eq(value)
        return bus

    def elaborate(self, platform):
        m = Module()
        # The implicit ``sync`` domain gives the design its clock and reset inputs; reset is
        # high in the first cycle only. (A ClockDomain declared here would leave its clock
        # undriven, i.e. constant, and every property would hold vacuously.)
        m.d.comb += Assume(ResetSignal() == Initial())
        self.build(m)
        return m


class LookupUnitHarness(_Harness):
    """:class:`~recfabric.hw.embedding_lookup.EmbeddingLookupUnit` (AXI4 read master).

    Parameterisation: 8-bit elements, rows of up to 8 (2 beats of 32 bits), 2 descriptors,
    2 reads outstanding, ``arid=2``, up to 4 rows per table. Environment: lookups and
    descriptor writes by the stream rules; descriptor writes only while the unit is idle (its
    documented rule: no lookup that uses them in flight); every table lies inside the address
    space.
    With ``in_table=True``, also: each read lies inside a table the host described
    (``lookup.in_table``: the unit never reads outside a table). That property needs the solver
    to reason about ``row * stride``; it is a separate job (``lookup_unit_in_table``).

    Why the small parameters still cover the logic: the AR issue, the context FIFO that limits
    the reads in flight, the 4 KiB and bounds checks and the pooler's beat counting are the same
    code at every size; 2 descriptors and 2 reads in flight (the smallest legal limit) keep every
    case (a read and a non-read context in the FIFO in either order, a descriptor written while
    another is in use) and let the invariants name each FIFO entry. k-induction invariants
    (:meth:`_invariants`): the checker's bursts in flight are the FIFO's ``read`` contexts, in
    order, with ``ARLEN = beats - 1``, and the pooler's beat count is the checker's; every
    valid descriptor in the memory has legal derived fields; for ``in_table``, the harness's copy
    of the descriptors equals the memory and a waiting read lies in a table.
    """

    mutations = {
        "arvalid_drop": Mutation("ARVALID withdrawn after one cycle without ARREADY",
                                 ("ar.valid_stable",), _drop_after_wait("arvalid", "arready")),
        "arlen_plus_one": Mutation(
            "ARLEN one beat longer than the row", ("ar.max_len", "ar.no_4k_crossing"),
            lambda m, port, bus: {"arlen": port.arlen + 1}),
    }

    def __init__(self, mutation=None, *, in_table=False):
        super().__init__(mutation)
        self.in_table = in_table

    def build(self, m):
        dut = EmbeddingLookupUnit(
            data_bits=8, max_dim=8, data_width=32, addr_width=ADDR_WIDTH, id_width=2,
            max_outstanding=2, tag_bits=1, slot_bits=1, n_desc=2, row_bits=2, stride_bits=8,
            max_bag=2, arid=2)
        m.submodules.dut = opened = _Opened(dut, embedding_lookup, observe_memories=True)
        bus = self._wire(m, dut.m_axi)
        chk = AXI4ReadChecker(bus, max_outstanding=dut.max_outstanding, arid=2,
                              max_len=dut.max_beats - 1, aligned=True, fixed=AXI_FIXED,
                              bookkeeping=True)
        # Elaborated here: the invariants name the checker's burst queue.
        m.submodules.checker = Fragment.get(chk, None)
        p = PropertyWriter(m)
        _stream_source(p, m, dut.i_lookup, "lookup")
        _stream_source(p, m, dut.i_desc, "desc")
        _free(m, dut.error.clear)
        _free(m, dut.o_pooled.ready)

        w = dut.i_desc.payload
        with m.If(dut.i_desc.valid):
            p.assume("env.desc_when_idle", dut.idle)
            p.assume("env.table_in_memory",
                     w.desc.base + w.desc.rows * w.desc.stride <= (1 << ADDR_WIDTH))
        # Not reset: like the descriptor memory, they keep a write made during reset.
        tables = [Signal(dut.desc_layout, name=f"table{i}", reset_less=True)
                  for i in range(dut.n_desc)]
        with m.If(dut.i_desc.valid):
            for i, t in enumerate(tables):
                with m.If(w.index == i):
                    m.d.sync += t.eq(w.desc)
        end = bus.araddr + ((bus.arlen + 1) << 2)
        inside = [(bus.araddr >= t.base) & (end <= t.base + t.rows * t.stride) for t in tables]
        if self.in_table:
            with m.If(bus.arvalid):
                p.check("lookup.in_table", sum(inside) != 0)
        self._invariants(m, p, dut, opened, chk, tables if self.in_table else None)

    def _invariants(self, m, p, dut, opened, chk, tables):
        """Invariants tying the checker's bursts in flight to the unit's context FIFO and
        pooler, and the descriptors' derived fields to their rules (for k-induction).

        The context FIFO (``SyncFIFOBuffered`` of 2 entries) holds the contexts of the lookups
        issued and not yet pooled, oldest first: its output register (``r_data``, while
        ``r_rdy``) and its one-row memory (while the inner level is 1). The entries with
        ``read=1`` are exactly the checker's bursts in flight, in order, with ``ARLEN = beats -
        1``; the pooler's ``beat_idx`` is the checker's beat count of the oldest one.
        """
        s = opened.signal
        descs = opened.module.submodules.descs
        ctx_fifo = opened.module.submodules.ctx_fifo
        (storage,) = [mem for mem in opened.memories if mem is not descs]
        ctx_layout = PoolContextLayout(
            tag_bits=dut.tag_bits, slot_bits=dut.slot_bits, max_beats=dut.max_beats,
            max_dim=dut.max_dim)
        assert dut.max_outstanding == 2 and storage.depth == 1, "invariants for 2 entries"
        e0 = data.View(ctx_layout, ctx_fifo.r_data)
        e1 = data.View(ctx_layout, storage.rows[0].data)
        have0 = ctx_fifo.r_rdy
        have1 = ctx_fifo.level - ctx_fifo.r_rdy == 1
        read0, read1 = have0 & e0.read, have1 & e1.read
        q, beat = chk.queue, chk.beat
        first = Mux(read0, e0.beats, e1.beats)  # beats of the oldest read in flight
        bb_log2 = (dut.beat_bytes - 1).bit_length()

        def beats_ok(beats):
            return (beats >= 1) & (beats <= dut.max_beats)

        p.check("lookup.inv_bursts",
                (ctx_fifo.level <= 2) &
                (chk.outstanding == read0 + read1) &
                ((chk.outstanding == 0) | (q.slot(0) == first - 1)) &
                ((chk.outstanding < 2) | (q.slot(1) == e1.beats - 1)) &
                (~read0 | beats_ok(e0.beats)) & (~read1 | beats_ok(e1.beats)) &
                (beat == Mux(read0, s("beat_idx"), 0)) &
                Mux(read0, s("beat_idx") < e0.beats, s("beat_idx") == 0))

        def entry_ok(e):  # a valid descriptor's derived fields (computed when written)
            return ~e.ok | (beats_ok(e.beats) & (e.desc.base[:bb_log2] == 0) &
                            (e.desc.stride[:bb_log2] == 0) &
                            (e.desc.stride >= (e.beats << bb_log2)))

        c2 = data.View(ctx_layout, s("c2"))
        p.check("lookup.inv_descs",
                # The read port's register holds a row from the first cycle on.
                (Initial() | entry_ok(descs.read_ports[0].data)) &
                functools.reduce(operator.and_, (entry_ok(row.data) for row in descs.rows)))
        p.check("lookup.inv_stage2",
                ~c2.read | (beats_ok(c2.beats) & (s("base2")[:bb_log2] == 0) &
                            (s("off2")[:bb_log2] == 0) &
                            (s("lim2") == 4096 - (c2.beats << bb_log2))))
        if tables is None:
            return
        # For ``lookup.in_table``: the harness's copy of each descriptor is the memory's row;
        # the read port holds the row of the lookup in stage 1 (descriptors are written only
        # while the unit is idle, when every cycle reads); a read waiting in stage 2 lies in a
        # described table.
        e1 = descs.read_ports[0].data
        s1 = data.View(dut.lookup_layout, s("s1"))
        base2, off2 = s("base2"), s("off2")
        p.check("lookup.inv_tables",
                functools.reduce(operator.and_, (
                    (row.data.desc.as_value() == t.as_value()) &
                    (t.base + t.rows * t.stride <= (1 << ADDR_WIDTH))
                    for row, t in zip(descs.rows, tables))))
        # From the second cycle after reset on (the read in the reset cycle is not s1's).
        settled = Signal(reset_less=True, name="inv_settled")
        m.d.sync += settled.eq(~ResetSignal())
        p.check("lookup.inv_stage1",
                (~settled | (e1.as_value() == Array(row.data.as_value()
                                                     for row in descs.rows)[s1.desc])))
        with m.If(s("v2") & c2.read):
            p.check("lookup.inv_stage2_in_table", functools.reduce(operator.or_, (
                (base2 == t.base) & (off2 + (c2.beats << bb_log2) <= t.rows * t.stride)
                for t in tables)))


class RecordFetchHarness(_Harness):
    """:class:`~recfabric.hw.request_reader.RecordFetcher` (AXI4 read master).

    The kernel has two: the request-record fetch (``m_axi_requests``) and the kernel-program fetch
    (``m_axi_model``, 512-bit words, ``batch`` = 1); ``program=True`` checks the latter at the
    kernel's word width (512 bits) and ``batch`` = 1 with bursts and FIFO shrunk from the
    kernel's 16 beats and 128 words to 4 and 4, or 8 with ``program_fifo=8`` (programs of up to
    15 words: bursts cut by the FIFO's free words, by 4 KiB and by the run's tail all occur; the
    same code as at 16/128, whose induction step does not finish), else a small fetcher (32-bit
    words, 2-beat bursts, 4-word FIFO, up to 3 records of up to 3 words). All are proved by
    k-induction with the same invariants.

    Environment: ``start`` only when the previous run's words have all been delivered (the
    kernel starts a fetcher only then); the buffer is word-aligned (XRT buffers are 4 KiB
    aligned; the program starts one word in) and inside the address space.
    Block properties: reads are consecutive from ``base`` (``fetch.sequential``) and stop at
    ``words * batch`` (``fetch.total``); words in flight never exceed the FIFO
    (``fetch.fifo_bound``, or a word would be lost: ``rready`` is always 1); an error response
    sets ``axi_error`` (``fetch.axi_error``).
    """

    mutations = {
        "araddr_glitch": Mutation("ARADDR changes while ARVALID waits for ARREADY",
                                  ("ar.payload_stable",),
                                  _glitch_while_waiting("arvalid", "arready", "araddr")),
    }

    def __init__(self, mutation=None, *, program=False, program_fifo=4, any_base=False,
                 any_start=False):
        super().__init__(mutation)
        self.program = program
        # Relaxed environments (findings, see tests/test_formal_axi.py): ``any_base`` drops the
        # word alignment of ``base``, ``any_start`` lets ``start`` come at any time.
        self.any_base, self.any_start = any_base, any_start
        # The invariants for k-induction (not in the relaxed harnesses: the findings fail).
        self.inductive = not (any_base or any_start)
        if program:
            # The kernel's word width (512 bits: the burst, 4 KiB and alignment arithmetic in
            # 64-byte beats) and batch = 1; bursts and FIFO shrunk from the kernel's 16 and 128
            # to 4 and 4 (8 in the slow job `program_fetch_fifo8`, where full bursts also start
            # with words in the FIFO): the same code, bursts cut by the FIFO's free words, by
            # 4 KiB and by the run's tail; programs of up to 15 words (several bursts).
            self.data_width, self.max_burst, self.fifo_depth = 512, 4, program_fifo
            self.word_bits, self.batch_bits = 4, 0  # up to 15 words, batch = 1
        else:
            self.data_width, self.max_burst, self.fifo_depth = 32, 2, 4
            self.word_bits, self.batch_bits = 2, 2  # up to 3 records of up to 3 words

    def build(self, m):
        dut = RecordFetcher(data_width=self.data_width, addr_width=ADDR_WIDTH, id_width=1,
                            max_burst=self.max_burst, fifo_depth=self.fifo_depth)
        m.submodules.dut = opened = _Opened(dut, request_reader)
        wb = self.data_width // 8
        bus = self._wire(m, dut.m_axi)
        # Bursts in flight are bounded by the FIFO (each has at least one reserved word); the
        # tight bound is on words (fetch.fifo_bound), so the cover asks for two full bursts.
        chk = AXI4ReadChecker(bus, max_outstanding=self.fifo_depth, arid=0,
                              max_len=self.max_burst - 1, aligned=not self.any_base,
                              fixed=AXI_FIXED, cover_outstanding=2,
                              bookkeeping=self.inductive)
        m.submodules.checker = chk
        p = PropertyWriter(m)
        for s in (dut.start, dut.o_word.ready):
            _free(m, s)
        _free(m, dut.base, ADDR_WIDTH)
        _free(m, dut.words, self.word_bits)
        if self.batch_bits:
            _free(m, dut.batch, self.batch_bits)
        else:
            m.d.comb += dut.batch.eq(1)

        cap = ((1 << self.word_bits) - 1) * ((1 << self.batch_bits) - 1 or 1)
        expected = Signal(range(cap + 1))  # words of the current run
        base = Signal(ADDR_WIDTH)
        requested = Signal(range(cap + 256 + 1))  # beats of the ARs accepted in this run
        delivered = Signal(range(cap + 1))
        with m.If(dut.start):
            if not self.any_start:
                p.assume("env.start_when_done", delivered == expected)
            if not self.any_base:
                p.assume("env.base_aligned", dut.base[:(wb - 1).bit_length()] == 0)
            p.assume("env.buffer_in_memory", dut.base + cap * wb <= (1 << ADDR_WIDTH))
            m.d.sync += [expected.eq(dut.words[:self.word_bits] *
                                     dut.batch[:max(1, self.batch_bits)]),
                         base.eq(dut.base),
                         requested.eq(0), delivered.eq(0)]
        with m.Else():
            with m.If(chk.ar_fire):
                m.d.sync += requested.eq(requested + bus.arlen + 1)
            with m.If(dut.o_word.valid & dut.o_word.ready):
                m.d.sync += delivered.eq(delivered + 1)

        if not (self.any_base or self.any_start):
            with m.If(bus.arvalid):
                p.check("fetch.sequential", bus.araddr == base + requested * wb)
                p.check("fetch.total", requested + bus.arlen + 1 <= expected)
            p.check("fetch.fifo_bound", requested - delivered <= self.fifo_depth)
        if self.inductive:
            # Invariants tying the checker's counts to the fetcher's registers: with them
            # k-induction closes (they are asserted, so a wrong one fails the proof).
            # (The fetcher's own AR registers, before any mutation; the checker watches the bus.)
            pend = Mux(dut.m_axi.arvalid, dut.m_axi.arlen + 1, 0)  # beats of the AR waiting
            addr, remaining = opened.signal("addr"), opened.signal("remaining")
            reserved = opened.signal("reserved")
            level = opened.module.submodules.fifo.level
            # ``words * batch`` in flight through its pipeline (``phase`` 1, 2: partial
            # products, then their middle sum), then ``remaining``; from ``phase`` 4 on, with
            # ARVALID low, the precomputed next burst, page and borrow are those of the
            # registers now (a burst is issued only then).
            phase = opened.signal("phase")
            prods = [opened.signal(f"prod{i}{j}") for i in range(2) for j in range(2)]
            mid = opened.signal("mid")
            full = Cat(prods[0], prods[3])
            rem_lo, rem_hi = opened.signal("rem_lo"), opened.signal("rem_hi")
            off, page = opened.signal("off"), opened.signal("page")
            to_boundary = (4096 // wb) - off
            bb = (self.max_burst - 1).bit_length()
            capped = Mux((rem_hi == 0) & (rem_lo[bb:] == 0), rem_lo[:bb], self.max_burst)
            p.check("fetch.inv_phase", phase >= 1)
            with m.If(phase <= 2):
                p.check("fetch.inv_product", (requested == 0) & ~dut.m_axi.arvalid &
                        (addr == base) &
                        (expected == Mux(phase == 1,
                                         full + ((prods[1] + prods[2]) << 16),
                                         full + (mid << 16))[:48]))
            with m.Else():
                p.check("fetch.inv_words", (requested + pend + remaining == expected) &
                        (addr == base + (requested + pend) * wb))
            with m.If((phase == 4) & ~dut.m_axi.arvalid):
                p.check("fetch.inv_next", (opened.signal("burst_r") ==
                                           Mux(to_boundary < capped, to_boundary, capped)) &
                        (opened.signal("rem_hi_m1") == (rem_hi - 1)[:len(rem_hi)]) &
                        (opened.signal("page_p1") == (page + 1)[:len(page)]))
            # The fetcher's own count of beats owed (from ARVALID on) and of beats to drop
            # (an abandoned run's: none, as the kernel starts a run only after the last one).
            p.check("fetch.inv_owed", (opened.signal("owed") == chk.owed + pend) &
                    (opened.signal("discard") == 0))
            p.check("fetch.inv_fifo", (reserved + delivered == requested + pend) &
                    (level + chk.owed + delivered == requested) &
                    (reserved <= self.fifo_depth) & (delivered <= expected) &
                    (expected <= cap))
            p.check("fetch.inv_base", (base[:(wb - 1).bit_length()] == 0) &
                    (base + cap * wb <= (1 << ADDR_WIDTH)))
        r_err = Signal()
        m.d.sync += r_err.eq(chk.r_fire & bus.rresp[1])
        with m.If(r_err):
            p.check("fetch.axi_error", dut.axi_error)

        p.cover("cover.fetch_4k_split",
                bus.arvalid & (bus.araddr[:12] + ((bus.arlen + 1) * wb) == 4096) &
                (bus.arlen + 1 < self.max_burst))
        p.cover("cover.fetch_done",
                (delivered == expected) & (expected > self.max_burst) & ~dut.start)


class ResultWriterHarness(_Harness):
    """:class:`~recfabric.hw.result_writer.ResultWriter` (AXI4 write master).

    Parameterisation: 128-bit words (the status block is one 4-beat burst), 2 writes
    outstanding, batches of up to 2. Environment: ``start`` only when idle (before the first run
    or after ``done``: the kernel starts the writer only then); results by the stream rules; the
    results buffer 64-byte aligned (XRT buffers are 4 KiB aligned) and inside the address space.
    Block properties: every write lies in the results buffer or its status block
    (``writer.in_buffer``); ``done`` only when every write of the run (records and status block)
    has been answered (``writer.done``; a ``skip`` run, which has no kernel program, writes the
    status block only); an error response sets ``axi_error`` (``writer.axi_error``).
    """

    mutations = {
        "wlast_every_beat": Mutation("WLAST on every beat of the status-block burst", ("w.wlast",),
                                     lambda m, port, bus: {"wlast": 1}),
        "wvalid_drop": Mutation("WVALID withdrawn after one cycle without WREADY",
                                ("w.valid_stable",), _drop_after_wait("wvalid", "wready")),
    }
    max_batch = 2

    def build(self, m):
        dut = ResultWriter(data_width=128, addr_width=ADDR_WIDTH, id_width=1, max_outstanding=2)
        m.submodules.dut = opened = _Opened(dut, result_writer)
        wb = 16
        status_beats = STATUS_BLOCK_BYTES // wb
        bus = self._wire(m, dut.m_axi)
        chk = AXI4WriteChecker(bus, max_outstanding=2, awid=0, max_len=status_beats - 1,
                               aligned=True, fixed=AXI_FIXED)
        m.submodules.checker = chk
        p = PropertyWriter(m)
        _stream_source(p, m, dut.i_result, "result")
        _free(m, dut.start)
        _free(m, dut.base, ADDR_WIDTH)
        _free(m, dut.batch, 2)
        _free(m, dut.skip)  # a run without a kernel program: the status block only
        # The status words are data to the protocol: one arbitrary value per proof keeps the
        # solver's work down.
        m.d.comb += dut.status.as_value().eq(AnyConst(len(dut.status.as_value())))

        running = Signal()
        base = Signal(ADDR_WIDTH)
        batch = Signal(range(self.max_batch + 1))
        aws = Signal(range(self.max_batch + 3))  # AW requests accepted in this run
        skip = Signal()
        # Records of the run: ``batch`` (none when skipped), cut to those taken by ``abort``.
        records = Signal.like(batch)
        taken = Signal.like(batch)  # records taken from the stream in this run
        bs = Signal(range(self.max_batch + 3))  # B responses in this run
        rewrite = Signal()  # the status block's first write was answered with an error
        _free(m, dut.abort)
        with m.If(dut.start):
            p.assume("env.start_when_idle", ~running)
            p.assume("env.batch", dut.batch[:2] <= self.max_batch)
            p.assume("env.base_aligned", dut.base[:6] == 0)
            p.assume("env.buffer_in_memory", dut.base + 2 * 4096 <= (1 << ADDR_WIDTH))
            m.d.sync += [running.eq(1), base.eq(dut.base), batch.eq(dut.batch), aws.eq(0),
                         skip.eq(dut.skip), records.eq(Mux(dut.skip, 0, dut.batch)),
                         taken.eq(0), bs.eq(0), rewrite.eq(0)]
        with m.Else():
            with m.If(chk.aw_fire):
                m.d.sync += aws.eq(aws + 1)
            with m.If(dut.i_result.valid & dut.i_result.ready):
                m.d.sync += taken.eq(taken + 1)
            with m.If(running & dut.abort):
                # The writer takes no more records (none in this cycle): the run ends after
                # those taken so far.
                m.d.sync += records.eq(taken)
            with m.If(chk.b_fire):
                m.d.sync += bs.eq(bs + 1)
                with m.If(bus.bresp[1] & (bs == records)):
                    m.d.sync += rewrite.eq(1)
        with m.If(dut.done):
            m.d.sync += running.eq(0)

        status_at = base + (((batch * wb) + STATUS_BLOCK_BYTES - 1) // STATUS_BLOCK_BYTES *
                            STATUS_BLOCK_BYTES)
        with m.If(bus.awvalid):
            p.check("writer.in_buffer",
                    (bus.awaddr >= base) &
                    (bus.awaddr + ((bus.awlen + 1) * wb) <= status_at + STATUS_BLOCK_BYTES))
        with m.If(dut.done):
            p.check("writer.done", (chk.outstanding == chk.b_fire) & ~bus.awvalid &
                    ~bus.wvalid & (aws == records + 1 + rewrite) &
                    (dut.written == records))
        b_err = Signal()
        m.d.sync += b_err.eq(chk.b_fire & bus.bresp[1])
        with m.If(b_err):
            p.check("writer.axi_error", dut.axi_error)
        self._invariants(m, p, opened, chk, dut.m_axi, running=running, base=base, batch=batch,
                         records=records, aws=aws, status_at=status_at, taken=taken, bs=bs,
                         rewrite=rewrite,
                         status_beats=status_beats, wb=wb)
        p.cover("cover.writer_done", dut.done & (batch == 2) & ~skip)
        p.cover("cover.writer_skip_done", dut.done & (batch == 2) & skip)
        p.cover("cover.writer_abort_done", dut.done & (batch == 2) & (records == 1))
        p.cover("cover.writer_rewrite_done", dut.done & rewrite)


    def _invariants(self, m, p, opened, chk, port, *, running, base, batch, records, aws,
                    status_at, taken, bs, rewrite, status_beats, wb):
        """Invariants tying the checker's and the harness's counts to the writer's registers
        and FSM state, per phase (for k-induction).
        ``port`` is the writer's own AXI port (before any mutation), ``chk`` watches the bus."""
        s = opened.signal
        (fsm,) = opened.fsms
        a, w = s("aw_pending"), s("w_pending")
        issued, answered, inflight, sbeat = (s("issued"), s("answered"), s("inflight"),
                                             s("status_beat"))
        rw = s("rewritten")
        # The FSM's state register holds a state (6 states in 3 bits: 2 codes are no state).
        p.check("writer.inv_state", functools.reduce(operator.or_, fsm.values()))
        p.check("writer.inv_run",
                (fsm["IDLE"] == ~running) & (s("base") == base) & (s("batch") == records) &
                (taken == issued) & (rewrite == rw) & (records <= batch) &
                (s("base") + s("status_off") == status_at) & (answered <= issued) &
                (issued <= records) &
                (batch <= self.max_batch) & (base[:6] == 0) &
                (base + 2 * 4096 <= (1 << ADDR_WIDTH)))
        quiet = (~a & ~w & (chk.w_bursts == 0) & ~chk.lead_done & (chk.b_owed == 0) &
                 (chk.outstanding == 0) & (chk.w_beat == 0) & (inflight == 0))
        with m.If(fsm["IDLE"]):
            p.check("writer.inv_idle", quiet)
        with m.If(fsm["SNAPSHOT"]):
            p.check("writer.inv_snapshot", quiet & (issued == records) &
                    (answered == records) & ~rw & (aws == records) & (bs == records))
        with m.If(fsm["STATUS_AW"]):
            p.check("writer.inv_status_aw", quiet & (sbeat == 0) & (issued == records) &
                    (answered == records) & (aws == records + rw) & (bs == records + rw))
        with m.If(fsm["STATUS_RESAMPLE"]):
            p.check("writer.inv_status_resample",
                    quiet & (sbeat == status_beats) & (issued == records) &
                    (answered == records) & rw & (aws == records + 1) & (bs == records + 1))
        with m.If(fsm["RECORDS"]):
            p.check("writer.inv_records",
                    (chk.outstanding == issued - a - answered) &
                    (inflight == issued - a - answered) &
                    (chk.w_bursts == (~a & w)) & (chk.lead_done == (a & ~w)) &
                    (chk.b_owed == issued - answered - (a | w)) & (chk.w_beat == 0) &
                    ((chk.w_bursts == 0) | (chk.w_head == 0)) &
                    (~chk.lead_done | (chk.lead_len == 0)) &
                    (~(a | w) | (issued != 0)) & (aws == issued - a) & (bs == answered) &
                    ~rw &
                    (~a | ((port.awaddr == base + (issued - 1) * wb) & (port.awlen == 0))) &
                    (~w | port.wlast))
        with m.If(fsm["STATUS_W"]):
            acc = Signal(range(status_beats + 1), name="inv_status_accepted")
            m.d.comb += acc.eq(sbeat - w)
            p.check("writer.inv_status_w",
                    (issued == records) & (answered == records) & (inflight == 0) &
                    (sbeat <= status_beats) & (~w | (sbeat != 0)) &
                    (aws == records + rw + ~a) & (bs == records + rw) &
                    (~a | ((port.awaddr == status_at) & (port.awlen == status_beats - 1))) &
                    (~w | (port.wlast == (sbeat == status_beats))) &
                    (chk.w_beat == Mux(acc < status_beats, acc, 0)) &
                    Mux(a,
                        (chk.outstanding == 0) & (chk.w_bursts == 0) & (chk.b_owed == 0) &
                        (chk.lead_done == (acc == status_beats)) &
                        (~chk.lead_done | (chk.lead_len == status_beats - 1)),
                        (chk.outstanding == 1) & (chk.w_bursts == (acc < status_beats)) &
                        ((acc == status_beats) | (chk.w_head == status_beats - 1)) &
                        (chk.b_owed == (acc == status_beats)) & ~chk.lead_done))


class ControlRegistersHarness(_Harness):
    """:class:`~recfabric.hw.control_registers.ControlRegisters` (AXI4-Lite slave).

    Environment: any AXI4-Lite master; ``done`` and the status inputs free.
    Block properties (through the checker's parameters): at most one write and one read taken
    and unanswered, the response one cycle after the request is complete, always OKAY (writes to
    read-only or unmapped registers are ignored, as HLS control slaves do).
    """

    mutations = {
        "bvalid_drop": Mutation("BVALID withdrawn after one cycle without BREADY",
                                ("b.valid_stable",), _drop_after_wait("bvalid", "bready")),
        "rdata_glitch": Mutation("RDATA changes while RVALID waits for RREADY",
                                 ("r.payload_stable",),
                                 _glitch_while_waiting("rvalid", "rready", "rdata")),
    }

    def build(self, m):
        dut = ControlRegisters(num_table_channels=1, config_hash=0x5EC0FFEE)
        m.submodules.dut = opened = _Opened(dut, control_registers)
        bus = self._wire(m, dut.s_axi)
        m.submodules.checker = chk = AXI4LiteChecker(bus, max_pending=1, max_latency=1,
                                                     resp=AXIResp.OKAY)
        # Invariants tying the checker's counts to the slave's handshake registers (for
        # k-induction): a write is held in have_aw/have_w until answered on B, a read in
        # `selecting` until answered on R; READY is low exactly while one is held.
        p = PropertyWriter(m, "slave")
        s = opened.signal
        have_aw, have_w, bvalid = s("have_aw"), s("have_w"), s("bvalid")
        selecting, rvalid = s("selecting"), s("rvalid")
        p.check("lite.inv_write",
                (chk.aw_pending == have_aw + bvalid) & (chk.w_pending == have_w + bvalid) &
                ~(bvalid & (have_aw | have_w)) &
                (s("awready") == ~(have_aw | bvalid)) & (s("wready") == ~(have_w | bvalid)) &
                ((chk.latency["b"] == 0) | bvalid))
        p.check("lite.inv_read",
                (chk.ar_pending == selecting + rvalid) & ~(selecting & rvalid) &
                (s("arready") == ~(selecting | rvalid)) & ((chk.latency["r"] == 0) | rvalid))
        _free(m, dut.done)
        for name in dir(dut):
            if name.startswith("status_"):
                _free(m, getattr(dut, name))


@dataclasses.dataclass(frozen=True)
class Block:
    """A block's formal job: how to build its harness and what to run by default.

    Attributes
    ----------
    harness : type
        The harness class.
    port : str
        The AXI port the harness checks and its role.
    options : dict
        Keyword arguments of the harness.
    depth : int
        Default depth of the proof: for ``proof="prove"`` the k of k-induction (the base case
        is a BMC of that depth; a PASS holds for every trace, however long); for
        ``proof="bmc"`` the BMC depth, less than 30 where the run time grows steeply with
        depth (measured, see the README's "Formal AXI proofs").
    cover_depth : int
        Default cover bound.
    finding : str or None
        A relaxed environment in which the block is known to break the protocol (the BMC is
        expected to FAIL; not run by default).
    proof : str
        ``"prove"`` where k-induction closes (unbounded proof), else ``"bmc"``.
    """

    harness: type
    port: str
    options: dict = dataclasses.field(default_factory=dict)
    depth: int = 30
    cover_depth: int = 30
    finding: str | None = None
    proof: str = "bmc"

    @property
    def mutations(self) -> dict:
        return self.harness.mutations

    def make(self, mutation=None):
        if mutation is not None and mutation not in self.mutations:
            raise ValueError(f"unknown mutation {mutation!r} for {self.harness.__name__}; "
                             f"known: {', '.join(self.mutations) or 'none'}")
        return self.harness(mutation, **self.options)


#: The blocks with AXI ports, by name.
BLOCKS = {
    "lookup_unit": Block(LookupUnitHarness, "m_axi_tables<i>: AXI4 read master", depth=4,
                         proof="prove"),
    "lookup_unit_in_table": Block(LookupUnitHarness,
                                  "m_axi_tables<i>: reads inside the described tables",
                                  {"in_table": True}, depth=4, cover_depth=10, proof="prove"),
    "record_fetch": Block(RecordFetchHarness, "m_axi_requests: AXI4 read master", depth=4,
                          cover_depth=20, proof="prove"),
    "program_fetch": Block(RecordFetchHarness, "m_axi_model: AXI4 read master",
                           {"program": True}, depth=4, cover_depth=24, proof="prove"),
    "program_fetch_fifo8": Block(RecordFetchHarness, "m_axi_model, 8-word FIFO",
                                 {"program": True, "program_fifo": 8}, depth=4, cover_depth=24,
                                 proof="prove"),
    # Relaxed environments that found RecordFetcher bugs (an unaligned base gave ARLEN=255
    # bursts across 4 KiB; start while ARVALID waited withdrew ARVALID), fixed since: BMC only.
    "record_fetch_any_base": Block(
        RecordFetchHarness, "m_axi_requests, base not word-aligned", {"any_base": True},
        depth=10, cover_depth=10),
    "record_fetch_any_start": Block(
        RecordFetchHarness, "m_axi_requests, start at any time", {"any_start": True},
        depth=10, cover_depth=10),
    "result_writer": Block(ResultWriterHarness, "m_axi_results: AXI4 write master", depth=4,
                           proof="prove"),
    "control_registers": Block(ControlRegistersHarness, "s_axi_control: AXI4-Lite slave",
                               depth=4, proof="prove"),
}


def build_harness(block: str, mutation: str | None = None):
    """The harness of ``block`` (a key of :data:`BLOCKS`), optionally with a mutation."""
    try:
        b = BLOCKS[block]
    except KeyError:
        raise ValueError(f"unknown block {block!r}; known: {', '.join(BLOCKS)}") from None
    return b.make(mutation=mutation)
