"""Embedding lookup unit: one AXI4 memory channel's worth of table lookups and sum pooling.

The lookup side of the accelerator is a set of units that all speak the same interface: a stream
of *lookups* in (:class:`LookupLayout`), a stream of *pooled vectors* out
(:class:`~recfabric.hw.stream_types.PooledVectorLayout`). :class:`EmbeddingLookupUnit` serves its
lookups from an AXI4 memory channel (an HBM pseudo-channel or a DDR bank);
:class:`~recfabric.hw.onchip_table.OnChipTable` from on-chip RAM. Both reassemble rows from
memory words and pool bags with the shared :class:`RowPooler`.

Lookup semantics (the contract with the dispatcher, the golden model and the host)
----------------------------------------------------------------------------------
* A *bag* is the lookups of one (request ``tag``, ``slot``) pair; they reach a unit contiguously,
  the first with ``first=1`` and the last with ``last=1`` (a one-lookup bag has both). Each bag
  produces exactly one pooled vector, in bag order: the unit never reorders.
* ``kind=ROW`` reads row ``row`` of table descriptor ``desc``; ``kind=EMPTY`` contributes
  nothing (a bag of length 0 is a single ``EMPTY`` lookup with ``first=last=1``, pooling to
  zeros, which is what :func:`recfabric.host.numerics.pool_sum` gives for no rows);
  ``kind=BAD`` is a lookup the dispatcher already found invalid (an ID out of range of its
  feature).
* Pooling follows the numerics spec: the rows of a bag are summed exactly in a
  ``pool_acc_bits(data_bits, max_bag)``-bit accumulator, then saturated once to ``data_bits``.
  Elements past the table's ``dim`` are zero.
* **Errors.** A lookup is bad if it is ``kind=BAD``, if ``row >= rows`` of its descriptor
  (cause ``ROW``), if its descriptor index or contents are invalid or its row would cross a
  4 KiB boundary (cause ``DESC``), or if the memory answered any beat of the row with SLVERR or
  DECERR (cause ``RESP``). A bad ``ROW``/``DESC`` lookup issues no memory read at all, so no
  address outside a table is ever read. The pooled vector of a bag containing any bad lookup has
  ``error=1``, the cause of its first bad lookup in ``cause``, and all-zero ``data``; the unit
  keeps going (it never hangs: every read is answered by AXI, and an errored read still returns
  all its beats). The first bad lookup after reset or ``error.clear`` is latched in the sticky
  ``error`` port (:class:`LookupErrorSignature`: ``flag``, ``tag``, ``slot``, ``cause``).

  *Golden-model equivalent*: for a feature whose bag contains an ID outside ``[0, rows)``, the
  pooled vector is ``zeros(dim)`` and the request is flagged as erroneous (hardware reports the
  first offending tag); other features of the request are pooled normally.

Table descriptors (runtime data, written by the host)
-----------------------------------------------------
:class:`TableDescriptorLayout`: ``base`` (byte address of row 0), ``stride`` (bytes between
rows), ``rows`` (row count), ``dim`` (elements per row, ``1..max_dim``). Rows hold ``dim``
little-endian two's-complement ``data_bits``-bit elements, element 0 at the row's lowest
address; the row occupies ``ceil(dim * data_bits / data_width)`` beats, read as one INCR burst.
Valid descriptors have ``base`` and ``stride`` multiples of the beat size, ``stride`` at least
the row's burst length in bytes, and rows that do not cross a 4 KiB boundary (true whenever
``stride`` is a power of two and ``base`` is aligned to ``min(stride, 4096)``: the host layout
rule).

AXI behaviour
-------------
Reads use one ID (``arid``, a constructor parameter), so the memory returns them in order; a
context FIFO of ``max_outstanding`` entries tracks the reads in flight (and limits them). Bursts
are INCR, full-width (``arsize = log2(data_width / 8)``), ``arcache=0b0011``. ``rready`` is
deasserted only when the pooled-vector output is back-pressured. The unit counts beats itself
(``rlast`` is not used).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..host.numerics import pool_acc_bits
from .arith import carry_select_add
from .axi4 import AXI4Signature, AXIBurst
from .stream_types import (
    DescriptorWriteLayout,
    LookupErrorCause,
    LookupKind,
    LookupLayout,
    PooledVectorLayout,
    TableDescriptorLayout,
    index_bits,
)

__all__ = [
    "LookupKind",
    "LookupErrorCause",
    "LookupLayout",
    "TableDescriptorLayout",
    "DescriptorWriteLayout",
    "LookupErrorSignature",
    "descriptor_written",
    "PoolContextLayout",
    "BeatLayout",
    "RowPooler",
    "EmbeddingLookupUnit",
    "index_bits",
]


def _positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{name} must be a positive integer, not {value!r}")


def descriptor_written(m, write_port, i_lookup, n_desc):
    """Whether the descriptor ``i_lookup`` names was written since reset, registered like a
    memory read (valid the cycle after the lookup is accepted, beside the descriptor data).

    Descriptors live in a :class:`~amaranth.lib.memory.Memory`, which keeps its contents over a
    reset; a descriptor not written since is invalid. One register bit per descriptor (``n_desc``
    bits) records the writes.
    """
    written = Signal(n_desc, name="desc_written")
    with m.If(write_port.en):
        m.d.sync += written.bit_select(write_port.addr, 1).eq(1)
    written1 = Signal(name="desc_written1")
    desc = i_lookup.payload.desc
    with m.If(i_lookup.ready):
        m.d.sync += written1.eq(written.bit_select(desc, 1) |
                                (write_port.en & (write_port.addr == desc)))
    return written1


class LookupErrorSignature(wiring.Signature):
    """The sticky first-error port of a lookup unit (from the unit's point of view).

    Parameters
    ----------
    tag_bits, slot_bits : int
        Widths of the request tag and the slot index (keyword only).

    Members
    -------
    flag : Out(1)
        Sticky: a bad lookup was seen since reset or ``clear``.
    tag, slot : Out(tag_bits), Out(slot_bits)
        Tag and slot of the first bad lookup.
    cause : Out(LookupErrorCause)
        Its cause.
    clear : In(1)
        Clears the sticky record (an error on the same cycle is latched afresh).
    """

    def __init__(self, *, tag_bits: int, slot_bits: int):
        _positive("tag_bits", tag_bits)
        _positive("slot_bits", slot_bits)
        self.tag_bits, self.slot_bits = tag_bits, slot_bits
        super().__init__({"flag": Out(1), "tag": Out(tag_bits), "slot": Out(slot_bits),
                          "cause": Out(LookupErrorCause), "clear": In(1)})

    def __eq__(self, other):
        return (type(other) is type(self) and other.tag_bits == self.tag_bits
                and other.slot_bits == self.slot_bits)

    def __repr__(self):
        return f"LookupErrorSignature(tag_bits={self.tag_bits}, slot_bits={self.slot_bits})"


class PoolContextLayout(data.StructLayout):
    """What :class:`RowPooler` needs to know about each lookup, in lookup order.

    Members
    -------
    tag, slot, first, last
        As in :class:`LookupLayout`.
    read : unsigned(1)
        ``beats`` memory words follow on the beat stream for this lookup (0: none do).
    cause : LookupErrorCause
        Error found before reading (``NONE`` for good and ``EMPTY`` lookups).
    beats : unsigned
        Words of this row (when ``read``).
    dim : unsigned
        Elements of this row; later elements of a word are ignored.
    """

    def __init__(self, *, tag_bits: int, slot_bits: int, max_beats: int, max_dim: int):
        super().__init__({
            "tag": tag_bits, "slot": slot_bits, "first": 1, "last": 1, "read": 1,
            "cause": LookupErrorCause, "beats": range(max_beats + 1), "dim": range(max_dim + 1),
        })


class BeatLayout(data.StructLayout):
    """One memory word of a row: ``data`` and ``err`` (the memory reported an error)."""

    def __init__(self, width: int):
        super().__init__({"data": width, "err": 1})


class RowPooler(wiring.Component):
    """Reassembles rows from memory words and sum-pools bags (numerics spec pooling).

    Consumes one context per lookup (in lookup order) and, for contexts with ``read=1``, that
    many words from the beat stream; emits one pooled vector per bag. One word (or one
    ``read=0`` context) is consumed per cycle, also while pooled vectors leave one per cycle.

    Parameters
    ----------
    data_bits : int
        Element width.
    max_dim : int
        Elements per pooled vector.
    beat_width : int
        Width of a memory word; a multiple of ``data_bits``.
    tag_bits, slot_bits : int
    max_bag : int
        Largest bag; sets the exact accumulator width (:func:`numerics.pool_acc_bits`).

    Members
    -------
    i_ctx : In(stream.Signature(PoolContextLayout))
    i_beat : In(stream.Signature(BeatLayout))
    o_pooled : Out(stream.Signature(PooledVectorLayout))
        ``error`` and ``cause`` say whether (and why) a lookup of the bag was bad.
    error : Out(LookupErrorSignature)
        Sticky first-error record.
    busy : Out(1)
        A bag's words are being summed or a pooled vector is waiting in the output.

    A pooled vector leaves two cycles after its bag's last word (or context) is taken: one
    cycle to register the word, one to add it; the saturated sum is registered at the output.
    """

    def __init__(self, *, data_bits: int, max_dim: int, beat_width: int, tag_bits: int,
                 slot_bits: int, max_bag: int):
        for n, v in (("data_bits", data_bits), ("max_dim", max_dim), ("beat_width", beat_width),
                     ("max_bag", max_bag)):
            _positive(n, v)
        if beat_width % data_bits:
            raise ValueError(f"Beat width {beat_width} is not a multiple of the element width "
                             f"{data_bits}")
        self.data_bits, self.max_dim, self.beat_width = data_bits, max_dim, beat_width
        self.max_bag = max_bag
        self.elems_per_beat = beat_width // data_bits
        self.max_beats = -(-max_dim // self.elems_per_beat)
        self.acc_bits = pool_acc_bits(data_bits, max_bag)
        self.ctx_layout = PoolContextLayout(tag_bits=tag_bits, slot_bits=slot_bits,
                                            max_beats=self.max_beats, max_dim=max_dim)
        self.out_layout = PooledVectorLayout(tag_bits=tag_bits, slot_bits=slot_bits,
                                             data_bits=data_bits, max_dim=max_dim)
        super().__init__({
            "i_ctx": In(stream.Signature(self.ctx_layout)),
            "i_beat": In(stream.Signature(BeatLayout(beat_width))),
            "o_pooled": Out(stream.Signature(self.out_layout)),
            "error": Out(LookupErrorSignature(tag_bits=tag_bits, slot_bits=slot_bits)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        # Two stages, each <= 8 LUT levels: stage 0 takes a context / word (the handshake, beat
        # counting, which elements the word feeds) and registers it; stage 1 accumulates and
        # writes the saturated vector into a two-entry output register (``o`` and a skid
        # register). Stage 0 takes a bag's last word only when the output will have room for it.
        m = Module()
        db, epb, n = self.data_bits, self.elems_per_beat, self.max_dim
        ctx, beat, o = self.i_ctx.payload, self.i_beat.payload, self.o_pooled

        beat_idx = Signal(range(max(2, self.max_beats)))
        # ---- stage 1 registers ----
        v1, end1, clear1, err1 = Signal(), Signal(), Signal(), Signal()
        cause1 = Signal(LookupErrorCause)
        use1 = Signal(n)
        data1 = Signal(self.beat_width)
        tag1, slot1 = Signal.like(ctx.tag), Signal.like(ctx.slot)
        # ---- output: ``o`` and the skid register behind it ----
        sk_valid = Signal()
        sk = Signal(self.out_layout)
        pop = o.valid & o.ready
        # Bag ends held in stage 1, ``o`` and the skid register, less the one leaving now: a
        # bag's end may enter stage 1 while that is at most one (``sk_valid`` implies ``o.valid``).
        can_emit = ~(o.valid & (sk_valid | (v1 & end1))) | pop

        last_beat = beat_idx == ctx.beats - 1
        # Plain expressions rather than m.If: they become continuous assignments, which Icarus
        # evaluates at time 0 (an `always @*` whose inputs never change would stay X there).
        step, ctx_done = Signal(), Signal()
        noread_step = self.i_ctx.valid & ~ctx.read & (~ctx.last | can_emit)
        m.d.comb += [
            self.i_beat.ready.eq(self.i_ctx.valid & ctx.read &
                                 (~last_beat | ~ctx.last | can_emit)),
            step.eq(noread_step | (self.i_beat.ready & self.i_beat.valid)),
            ctx_done.eq(noread_step | (self.i_beat.ready & self.i_beat.valid & last_beat)),
            self.i_ctx.ready.eq(ctx_done),
        ]

        resp_err = ctx.read & beat.err
        this_err = (ctx.cause != LookupErrorCause.NONE) | resp_err
        this_cause = Mux(resp_err, LookupErrorCause.RESP, ctx.cause)
        use = Signal(n)
        for i in range(n):
            m.d.comb += use[i].eq(ctx.read & (beat_idx == i // epb) & (ctx.dim > i))
        m.d.sync += v1.eq(step)
        with m.If(step):
            m.d.sync += [beat_idx.eq(Mux(ctx_done, 0, beat_idx + 1)),
                         end1.eq(ctx_done & ctx.last), clear1.eq(ctx.first & (beat_idx == 0)),
                         err1.eq(this_err), cause1.eq(this_cause), use1.eq(use),
                         data1.eq(beat.data), tag1.eq(ctx.tag), slot1.eq(ctx.slot)]

        # ---- stage 1: accumulate; a bag's end goes to the output ----
        acc = [Signal(signed(self.acc_bits), name=f"acc{i}") for i in range(n)]
        bag_err = Signal()
        bag_cause = Signal(LookupErrorCause)
        prev_err = Mux(clear1, 0, bag_err)
        new_err = prev_err | err1
        # The bag's cause is its first bad lookup's.
        new_cause = Mux(prev_err, bag_cause, Mux(err1, cause1, LookupErrorCause.NONE))
        lo, hi = -(1 << (db - 1)), (1 << (db - 1)) - 1
        vec = Signal(self.out_layout)
        m.d.comb += [vec.tag.eq(tag1), vec.slot.eq(slot1), vec.error.eq(new_err),
                     vec.cause.eq(new_cause)]
        for i, a in enumerate(acc):
            elem = data1[(i % epb) * db:(i % epb + 1) * db].as_signed()
            s = Signal(signed(self.acc_bits), name=f"new_acc{i}")
            m.d.comb += s.eq(Mux(clear1, 0, a) + Mux(use1[i], elem, 0))
            with m.If(v1):
                m.d.sync += a.eq(s)
            m.d.comb += vec.data[i].eq(Mux(new_err, 0, Mux(s > hi, hi, Mux(s < lo, lo, s))))
        with m.If(v1):
            m.d.sync += [bag_err.eq(new_err), bag_cause.eq(new_cause)]
        put = v1 & end1
        with m.If(sk_valid):
            with m.If(pop):
                m.d.sync += [o.payload.eq(sk), sk_valid.eq(put)]
                with m.If(put):
                    m.d.sync += sk.eq(vec)
        with m.Elif(put):
            with m.If(o.valid & ~pop):
                m.d.sync += [sk_valid.eq(1), sk.eq(vec)]
            with m.Else():
                m.d.sync += [o.valid.eq(1), o.payload.eq(vec)]
        with m.Elif(pop):
            m.d.sync += o.valid.eq(0)
        m.d.comb += self.busy.eq(v1 | sk_valid | o.valid)

        err = self.error
        with m.If(err.clear):
            m.d.sync += err.flag.eq(0)
        with m.If(step & this_err & (~err.flag | err.clear)):
            m.d.sync += [err.flag.eq(1), err.tag.eq(ctx.tag), err.slot.eq(ctx.slot),
                         err.cause.eq(this_cause)]
        return m


class EmbeddingLookupUnit(wiring.Component):
    """Lookups in, AXI4 reads out, pooled embedding vectors back: one memory channel.

    See the module docstring for the lookup, error and descriptor contracts.

    Parameters
    ----------
    data_bits : int
        Embedding element width (8 or 16).
    max_dim : int
        Largest row (elements); the pooled vectors' width.
    data_width : int
        AXI data width (256 for an HBM pseudo-channel, 512 for DDR).
    addr_width : int
        AXI address width (64 for Vitis kernels).
    id_width : int
        AXI ID width.
    max_outstanding : int
        Reads (bursts) in flight at most; at least 2. Sized to cover the memory latency.
    tag_bits, slot_bits : int
        Widths of the request tag and the slot index.
    n_desc : int
        Table descriptors held by the unit.
    row_bits : int
        Width of row indices and row counts.
    stride_bits : int
        Width of the descriptor's row stride (bytes).
    max_bag : int
        Largest bag (sets the pooling accumulator width).
    arid : int
        The ID used for every read.

    Members
    -------
    i_lookup : In(stream.Signature(LookupLayout))
    i_desc : In(stream.Signature(DescriptorWriteLayout))
        Descriptor writes from the host; always ready. Write descriptors while no lookup that
        uses them is in flight.
    m_axi : Out(AXI4Signature(read only))
    o_pooled : Out(stream.Signature(PooledVectorLayout))
    error : Out(LookupErrorSignature)
        Sticky first-error record.
    idle : Out(1)
        No lookup is in flight and no pooled vector is waiting.
    """

    def __init__(self, *, data_bits: int = 16, max_dim: int = 16, data_width: int = 256,
                 addr_width: int = 64, id_width: int = 4, max_outstanding: int = 64,
                 tag_bits: int = 4, slot_bits: int = 4, n_desc: int = 4, row_bits: int = 32,
                 stride_bits: int = 16, max_bag: int = 4, arid: int = 0):
        if data_bits not in (8, 16, 32):
            raise ValueError(f"Element width must be 8, 16 or 32, not {data_bits!r}")
        for n, v in (("max_dim", max_dim), ("n_desc", n_desc), ("max_bag", max_bag),
                     ("tag_bits", tag_bits), ("slot_bits", slot_bits)):
            _positive(n, v)
        if not isinstance(max_outstanding, int) or max_outstanding < 2:
            raise ValueError(f"Outstanding read limit must be an integer >= 2, not "
                             f"{max_outstanding!r}")
        if not isinstance(arid, int) or not 0 <= arid < (1 << id_width):
            raise ValueError(f"Read ID must fit {id_width} bits, not {arid!r}")
        self.axi_sig = AXI4Signature(addr_width=addr_width, data_width=data_width,
                                     id_width=id_width, write=False)
        if data_width % data_bits:
            raise ValueError(f"AXI data width {data_width} is not a multiple of the element "
                             f"width {data_bits}")
        self.data_bits, self.max_dim, self.data_width = data_bits, max_dim, data_width
        self.addr_width, self.id_width, self.max_outstanding = addr_width, id_width, max_outstanding
        self.tag_bits, self.slot_bits, self.n_desc = tag_bits, slot_bits, n_desc
        self.row_bits, self.stride_bits, self.max_bag, self.arid = (
            row_bits, stride_bits, max_bag, arid)
        self.beat_bytes = data_width // 8
        self.elems_per_beat = data_width // data_bits
        self.max_beats = -(-max_dim // self.elems_per_beat)
        if self.max_beats > 256:
            raise ValueError(f"A row of {max_dim} elements needs {self.max_beats} beats, more "
                             f"than one AXI4 burst (256)")
        self.desc_bits = index_bits(n_desc)
        self.lookup_layout = LookupLayout(tag_bits=tag_bits, slot_bits=slot_bits,
                                          desc_bits=self.desc_bits, row_bits=row_bits)
        self.desc_layout = TableDescriptorLayout(addr_width=addr_width, stride_bits=stride_bits,
                                                 row_bits=row_bits)
        self.desc_write_layout = DescriptorWriteLayout(desc_bits=self.desc_bits,
                                                       desc_layout=self.desc_layout)
        self.out_layout = PooledVectorLayout(tag_bits=tag_bits, slot_bits=slot_bits,
                                             data_bits=data_bits, max_dim=max_dim)
        super().__init__({
            "i_lookup": In(stream.Signature(self.lookup_layout)),
            "i_desc": In(stream.Signature(self.desc_write_layout)),
            "m_axi": Out(self.axi_sig),
            "o_pooled": Out(stream.Signature(self.out_layout)),
            "error": Out(LookupErrorSignature(tag_bits=tag_bits, slot_bits=slot_bits)),
            "idle": Out(1),
        })

    @classmethod
    def config_kwargs(cls, config, **overrides) -> dict:
        """Constructor arguments of a unit for an :class:`~recfabric.hw.config.AcceleratorConfig`.

        Tags count ``config.inflight`` requests, slots ``config.max_features``, and the unit holds
        ``config.max_features`` descriptors (any placement fits); ``overrides`` replace any
        constructor argument.
        """
        args = dict(
            data_bits=config.data_bits, max_dim=config.max_dim,
            data_width=config.mem_data_width, addr_width=config.mem_addr_width,
            id_width=config.mem_id_width, max_outstanding=config.max_outstanding,
            tag_bits=index_bits(config.inflight), slot_bits=index_bits(config.max_features),
            n_desc=config.max_features, max_bag=config.max_bag,
            row_bits=32, stride_bits=16)
        args.update(overrides)
        return args

    @classmethod
    def from_config(cls, config, **overrides) -> EmbeddingLookupUnit:
        """``cls(**cls.config_kwargs(config, **overrides))``."""
        return cls(**cls.config_kwargs(config, **overrides))

    def elaborate(self, platform):
        # One function on purpose (~90 lines): a two-stage pipeline (descriptor + bounds, then the
        # AR issue) whose stages hand over registers to each other and to the pooler's FIFO.
        m = Module()
        bb_log2 = (self.beat_bytes - 1).bit_length()
        ax = self.m_axi

        # ---- descriptor memory (derived beats and validity computed once, at write) ----
        entry = data.StructLayout({"desc": self.desc_layout, "beats": range(self.max_beats + 1),
                                   "ok": 1})
        # Descriptors live in a memory (one entry per table), read in the cycle a lookup is
        # accepted so that the entry is there beside it in stage 1.
        m.submodules.descs = descs = Memory(shape=entry, depth=max(2, self.n_desc), init=[])
        d_wp = descs.write_port()
        d_rp = descs.read_port(transparent_for=(d_wp,))
        w = self.i_desc.payload.desc
        w_beats = Signal(range(self.max_beats + 1))
        m.d.comb += w_beats.eq(
            (w.dim + self.elems_per_beat - 1) >> (self.elems_per_beat.bit_length() - 1))
        w_ok = ((w.dim != 0) & (w.dim <= self.max_dim) & (w.base[:bb_log2] == 0) &
                (w.stride[:bb_log2] == 0) & (w.stride >= (w_beats << bb_log2)))
        m.d.comb += self.i_desc.ready.eq(1)
        m.d.comb += [d_wp.en.eq(self.i_desc.valid & (self.i_desc.payload.index < self.n_desc)),
                     d_wp.addr.eq(self.i_desc.payload.index), d_wp.data.desc.eq(w),
                     d_wp.data.beats.eq(w_beats), d_wp.data.ok.eq(w_ok)]

        # ---- stage 1: descriptor lookup, bounds check, row offset ---------------------------
        # ---- stage 2: address, 4 KiB check, AXI read issue + context push --------------------
        m.submodules.ctx_fifo = ctx_fifo = SyncFIFOBuffered(
            width=PoolContextLayout(tag_bits=self.tag_bits, slot_bits=self.slot_bits,
                                    max_beats=self.max_beats, max_dim=self.max_dim).size,
            depth=self.max_outstanding)
        m.submodules.pooler = pooler = RowPooler(
            data_bits=self.data_bits, max_dim=self.max_dim, beat_width=self.data_width,
            tag_bits=self.tag_bits, slot_bits=self.slot_bits, max_bag=self.max_bag)

        v1, s1 = Signal(), Signal(self.lookup_layout)
        v2 = Signal()
        c2 = Signal(pooler.ctx_layout)
        base2 = Signal(self.addr_width)
        off2 = Signal(self.addr_width)

        addr2 = Signal(self.addr_width)
        m.d.comb += addr2.eq(carry_select_add(base2, off2, self.addr_width))
        # The row's first byte within its 4 KiB page (from the low bits alone) against the last
        # start that keeps the row in the page (``4096 - row bytes``, registered in stage 1).
        lim2 = Signal(13)
        cross4k = (base2[:12] + off2[:12])[:12] > lim2
        c2_out = Signal(pooler.ctx_layout)
        m.d.comb += c2_out.eq(c2)
        with m.If(c2.read & cross4k):
            m.d.comb += [c2_out.read.eq(0), c2_out.cause.eq(LookupErrorCause.DESC)]

        fire2 = v2 & ctx_fifo.w_rdy & (~c2_out.read | ax.arready)
        adv2 = ~v2 | fire2
        m.d.comb += [
            ax.arvalid.eq(v2 & ctx_fifo.w_rdy & c2_out.read),
            ax.araddr.eq(addr2), ax.arlen.eq(c2.beats - 1), ax.arsize.eq(bb_log2),
            ax.arburst.eq(AXIBurst.INCR), ax.arid.eq(self.arid), ax.arcache.eq(0b0011),
            ax.arprot.eq(0), ax.arlock.eq(0), ax.arqos.eq(0),
            ctx_fifo.w_en.eq(fire2), ctx_fifo.w_data.eq(c2_out),
        ]

        m.d.comb += [d_rp.addr.eq(self.i_lookup.payload.desc), d_rp.en.eq(self.i_lookup.ready)]
        e1 = d_rp.data
        e1_ok = e1.ok & descriptor_written(m, d_wp, self.i_lookup, self.n_desc)
        desc_in_range = s1.desc < self.n_desc
        row_ok = s1.row < e1.desc.rows
        m.d.comb += self.i_lookup.ready.eq(~v1 | adv2)
        with m.If(adv2):
            m.d.sync += v2.eq(v1)
            with m.If(v1):
                is_row = s1.kind == LookupKind.ROW
                good_desc = desc_in_range & e1_ok
                cause = Signal(LookupErrorCause)
                with m.If(s1.kind == LookupKind.BAD):
                    m.d.comb += cause.eq(LookupErrorCause.ROW)
                with m.Elif(is_row & ~good_desc):
                    m.d.comb += cause.eq(LookupErrorCause.DESC)
                with m.Elif(is_row & ~row_ok):
                    m.d.comb += cause.eq(LookupErrorCause.ROW)
                m.d.sync += [
                    c2.tag.eq(s1.tag), c2.slot.eq(s1.slot), c2.first.eq(s1.first),
                    c2.last.eq(s1.last), c2.cause.eq(cause),
                    c2.read.eq(is_row & (cause == LookupErrorCause.NONE)),
                    c2.beats.eq(e1.beats), c2.dim.eq(e1.desc.dim),
                    base2.eq(e1.desc.base), off2.eq(s1.row * e1.desc.stride),
                    lim2.eq(4096 - (e1.beats << bb_log2)),
                ]
        with m.If(self.i_lookup.ready):
            m.d.sync += v1.eq(self.i_lookup.valid)
            m.d.sync += s1.eq(self.i_lookup.payload)

        # ---- responses -> pooler -------------------------------------------------------------
        m.d.comb += [
            pooler.i_ctx.payload.eq(ctx_fifo.r_data), pooler.i_ctx.valid.eq(ctx_fifo.r_rdy),
            ctx_fifo.r_en.eq(pooler.i_ctx.ready),
            pooler.i_beat.payload.data.eq(ax.rdata), pooler.i_beat.payload.err.eq(ax.rresp[1]),
            pooler.i_beat.valid.eq(ax.rvalid), ax.rready.eq(pooler.i_beat.ready),
            self.idle.eq(~v1 & ~v2 & (ctx_fifo.level == 0) & ~pooler.busy),
        ]
        wiring.connect(m, wiring.flipped(self.o_pooled), pooler.o_pooled)
        wiring.connect(m, wiring.flipped(self.error), pooler.error)
        return m

