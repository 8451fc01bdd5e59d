"""On-chip embedding tables: the lookup-unit interface served from block RAM / UltraRAM.

:class:`OnChipTable` takes the same lookups and produces the same pooled vectors as
:class:`~recfabric.hw.embedding_lookup.EmbeddingLookupUnit` (same :class:`LookupLayout`, error and
pooling contract: see that module), but reads rows from an ``amaranth.lib.memory.Memory`` of
``depth`` words of ``word_bits`` bits that the host fills through a load port, one beat of
``beat_bits // word_bits`` consecutive words per cycle (the RAM is ``beat_bits`` wide inside;
a lookup reads one ``word_bits`` word of it per cycle).

Descriptors (:class:`~recfabric.hw.embedding_lookup.TableDescriptorLayout`) are in *words* here:
``base`` is the word address of row 0, ``stride`` the words from one row to the next; ``rows`` and
``dim`` as for memory tables. A row is ``ceil(dim * data_bits / word_bits)`` consecutive words,
element 0 in the low bits of the first word. A descriptor is valid when ``1 <= dim <= max_dim``,
``stride`` is at least the row's word count and ``base + rows * stride <= depth`` (checked when it
is written), so a lookup of a valid row never reads outside its table.

One word is read per cycle: one-word rows sustain one lookup per cycle.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .embedding_lookup import LookupErrorSignature, RowPooler, descriptor_written
from .stream_types import (
    BlockBeatLayout,
    DescriptorWriteLayout,
    LookupErrorCause,
    LookupKind,
    LookupLayout,
    PooledVectorLayout,
    TableDescriptorLayout,
    index_bits,
)

__all__ = ["OnChipTable"]


class OnChipTable(wiring.Component):
    """Embedding tables in on-chip RAM behind the lookup-unit interface.

    Parameters
    ----------
    data_bits : int
        Element width.
    max_dim : int
        Largest row (elements); the pooled vectors' width.
    word_bits : int
        RAM word width, a multiple of ``data_bits``.
    depth : int
        RAM words.
    tag_bits, slot_bits : int
    n_desc : int
        Table descriptors held.
    row_bits : int
        Width of row indices.
    max_bag : int
        Largest bag (pooling accumulator width).
    beat_bits : int
        Load beat width (default 512, the program loader's word): ``beat_bits // word_bits``
        words, a power of two, per load beat.

    Members
    -------
    i_lookup : In(stream.Signature(LookupLayout))
    i_desc : In(stream.Signature(DescriptorWriteLayout))
        Descriptor writes (word units); always ready. A write is in effect for lookups taken
        from the next cycle on.
    i_load : In(stream.Signature(BlockBeatLayout(beat_bits)))
        Host writes of RAM words, one beat per cycle: beat ``addr`` holds words ``addr * n ..
        addr * n + n - 1`` (``n = beat_bits // word_bits``), word ``i`` in bits ``i *
        word_bits``; ``sel`` is ignored. Always ready. Load while no lookup is in flight.
    o_pooled : Out(stream.Signature(PooledVectorLayout))
    error : Out(LookupErrorSignature)
        Sticky first-error record.
    idle : Out(1)
    """

    def __init__(self, *, data_bits: int = 16, max_dim: int = 16, word_bits: int = 256,
                 depth: int = 128, tag_bits: int = 4, slot_bits: int = 4, n_desc: int = 4,
                 row_bits: int = 32, max_bag: int = 4, beat_bits: int = 512):
        for n, v in (("data_bits", data_bits), ("max_dim", max_dim), ("word_bits", word_bits),
                     ("depth", depth), ("n_desc", n_desc), ("max_bag", max_bag)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TypeError(f"{n} must be a positive integer, not {v!r}")
        if word_bits % data_bits:
            raise ValueError(f"Word width {word_bits} is not a multiple of the element width "
                             f"{data_bits}")
        wpb = beat_bits // word_bits
        if beat_bits % word_bits or wpb & (wpb - 1):
            raise ValueError(f"Load beat width {beat_bits} is not a power-of-two multiple of the "
                             f"word width {word_bits}")
        self.data_bits, self.max_dim, self.word_bits, self.depth = (
            data_bits, max_dim, word_bits, depth)
        self.beat_bits, self.words_per_beat = beat_bits, wpb
        self.tag_bits, self.slot_bits, self.n_desc, self.row_bits, self.max_bag = (
            tag_bits, slot_bits, n_desc, row_bits, max_bag)
        self.elems_per_word = word_bits // data_bits
        self.max_beats = -(-max_dim // self.elems_per_word)
        self.addr_bits = index_bits(depth + 1)
        self.desc_bits = index_bits(n_desc)
        self.lookup_layout = LookupLayout(tag_bits=tag_bits, slot_bits=slot_bits,
                                          desc_bits=self.desc_bits, row_bits=row_bits)
        self.desc_layout = TableDescriptorLayout(addr_width=self.addr_bits,
                                                 stride_bits=index_bits(self.max_beats + 1) + 1,
                                                 row_bits=row_bits)
        self.out_layout = PooledVectorLayout(tag_bits=tag_bits, slot_bits=slot_bits,
                                             data_bits=data_bits, max_dim=max_dim)
        super().__init__({
            "i_lookup": In(stream.Signature(self.lookup_layout)),
            "i_desc": In(stream.Signature(DescriptorWriteLayout(desc_bits=self.desc_bits,
                                                                desc_layout=self.desc_layout))),
            "i_load": In(stream.Signature(BlockBeatLayout(beat_bits))),
            "o_pooled": Out(stream.Signature(self.out_layout)),
            "error": Out(LookupErrorSignature(tag_bits=tag_bits, slot_bits=slot_bits)),
            "idle": Out(1),
        })

    @classmethod
    def config_kwargs(cls, config, **overrides) -> dict:
        """Constructor arguments of an on-chip table unit of ``config.onchip_bytes`` in
        ``config.mem_data_width``-bit words (tags: ``config.inflight``; slots and descriptors:
        ``config.max_features``)."""
        word = config.mem_data_width
        args = dict(data_bits=config.data_bits, max_dim=config.max_dim, word_bits=word,
                    depth=max(1, config.onchip_bytes * 8 // word),
                    tag_bits=index_bits(config.inflight),
                    slot_bits=index_bits(config.max_features), n_desc=config.max_features,
                    max_bag=config.max_bag)
        args.update(overrides)
        return args

    @classmethod
    def from_config(cls, config, **overrides) -> OnChipTable:
        """``cls(**cls.config_kwargs(config, **overrides))``."""
        return cls(**cls.config_kwargs(config, **overrides))

    def elaborate(self, platform):
        # One function on purpose (~85 lines): the same two-stage pipeline as the memory lookup
        # unit's, with the RAM read port in place of the AXI read.
        m = Module()
        epw = self.elems_per_word

        wpb = self.words_per_beat
        lo = wpb.bit_length() - 1  # word address bits that select a word within a beat
        m.submodules.mem = mem = Memory(shape=unsigned(self.beat_bits),
                                        depth=-(-self.depth // wpb), init=[])
        wp = mem.write_port()
        rp = mem.read_port()
        m.d.comb += [wp.addr.eq(self.i_load.payload.addr), wp.data.eq(self.i_load.payload.data),
                     wp.en.eq(self.i_load.valid), self.i_load.ready.eq(1)]
        word_sel = Signal(max(1, lo))  # which word of the read beat the read address named

        # ---- descriptors, validated when written -------------------------------------------
        entry = data.StructLayout({"desc": self.desc_layout, "beats": range(self.max_beats + 1),
                                   "ok": 1})
        # Descriptors live in a memory (one entry per table), read in the cycle a lookup is
        # accepted so that the entry is there beside it in stage 1.
        m.submodules.descs = descs = Memory(shape=entry, depth=max(2, self.n_desc), init=[])
        d_wp = descs.write_port()
        d_rp = descs.read_port(transparent_for=(d_wp,))
        # A write is checked over two cycles: the table's size (``rows * stride``, a multiply)
        # and the room above ``base`` are registered, then compared as the entry is written.
        w = self.i_desc.payload.desc
        w_beats = Signal(range(self.max_beats + 1))
        m.d.comb += w_beats.eq((w.dim + epw - 1) >> (epw.bit_length() - 1))
        wv1, w1 = Signal(), Signal.like(self.i_desc.payload, name="w1")
        beats1, ok1 = Signal.like(w_beats), Signal()
        size1 = Signal(len(w.rows) + len(w.stride))
        room1 = Signal(self.addr_bits + 1)
        m.d.sync += [wv1.eq(self.i_desc.valid & (self.i_desc.payload.index < self.n_desc)),
                     w1.eq(self.i_desc.payload), beats1.eq(w_beats),
                     ok1.eq((w.dim != 0) & (w.dim <= self.max_dim) & (w.stride >= w_beats) &
                            (w.base <= self.depth)),
                     size1.eq(w.rows * w.stride), room1.eq(self.depth - w.base)]
        m.d.comb += self.i_desc.ready.eq(1)
        m.d.comb += [d_wp.en.eq(wv1), d_wp.addr.eq(w1.index), d_wp.data.desc.eq(w1.desc),
                     d_wp.data.beats.eq(beats1), d_wp.data.ok.eq(ok1 & (size1 <= room1))]

        m.submodules.pooler = pooler = RowPooler(
            data_bits=self.data_bits, max_dim=self.max_dim, beat_width=self.word_bits,
            tag_bits=self.tag_bits, slot_bits=self.slot_bits, max_bag=self.max_bag)
        m.submodules.ctx_fifo = ctx_fifo = SyncFIFO(width=pooler.ctx_layout.size, depth=4)

        # ---- stage 1: descriptor, bounds -> stage 2: word reads ---------------------------
        v1, s1 = Signal(), Signal(self.lookup_layout)
        v2, c2 = Signal(), Signal(pooler.ctx_layout)
        a2 = Signal(self.addr_bits + 1)
        k2 = Signal(range(max(2, self.max_beats)))

        bv = Signal()  # the read port's output holds a word for the pooler
        take = ~bv | pooler.i_beat.ready
        first_word = k2 == 0
        issue = v2 & c2.read & take & (~first_word | ctx_fifo.w_rdy)
        noread_done = v2 & ~c2.read & ctx_fifo.w_rdy
        done2 = noread_done | (issue & (k2 == c2.beats - 1))
        adv2 = ~v2 | done2
        read_addr = Signal.like(a2)
        m.d.comb += read_addr.eq(a2 + k2)
        if lo:
            with m.If(take):
                m.d.sync += word_sel.eq(read_addr[:lo])
        m.d.comb += [
            rp.addr.eq(read_addr[lo:]), rp.en.eq(take),
            ctx_fifo.w_data.eq(c2), ctx_fifo.w_en.eq(noread_done | (issue & first_word)),
        ]
        with m.If(take):
            m.d.sync += bv.eq(issue)
        with m.If(issue):
            m.d.sync += k2.eq(Mux(done2, 0, k2 + 1))

        m.d.comb += [d_rp.addr.eq(self.i_lookup.payload.desc), d_rp.en.eq(self.i_lookup.ready)]
        e1 = d_rp.data
        e1_ok = e1.ok & descriptor_written(m, d_wp, self.i_lookup, self.n_desc)
        m.d.comb += self.i_lookup.ready.eq(~v1 | adv2)
        with m.If(adv2):
            m.d.sync += v2.eq(v1)
            with m.If(v1):
                is_row = s1.kind == LookupKind.ROW
                cause = Signal(LookupErrorCause)
                with m.If(s1.kind == LookupKind.BAD):
                    m.d.comb += cause.eq(LookupErrorCause.ROW)
                with m.Elif(is_row & ~((s1.desc < self.n_desc) & e1_ok)):
                    m.d.comb += cause.eq(LookupErrorCause.DESC)
                with m.Elif(is_row & (s1.row >= e1.desc.rows)):
                    m.d.comb += cause.eq(LookupErrorCause.ROW)
                m.d.sync += [
                    c2.tag.eq(s1.tag), c2.slot.eq(s1.slot), c2.first.eq(s1.first),
                    c2.last.eq(s1.last), c2.cause.eq(cause),
                    c2.read.eq(is_row & (cause == LookupErrorCause.NONE)),
                    c2.beats.eq(e1.beats), c2.dim.eq(e1.desc.dim),
                    a2.eq(e1.desc.base + s1.row * e1.desc.stride), k2.eq(0),
                ]
        with m.If(self.i_lookup.ready):
            m.d.sync += [v1.eq(self.i_lookup.valid), s1.eq(self.i_lookup.payload)]

        m.d.comb += [
            pooler.i_ctx.payload.eq(ctx_fifo.r_data), pooler.i_ctx.valid.eq(ctx_fifo.r_rdy),
            ctx_fifo.r_en.eq(pooler.i_ctx.ready),
            pooler.i_beat.payload.data.eq(rp.data.word_select(word_sel, self.word_bits)
                                          if lo else rp.data),
            pooler.i_beat.payload.err.eq(0),
            pooler.i_beat.valid.eq(bv),
            self.idle.eq(~v1 & ~v2 & ~bv & (ctx_fifo.level == 0) & ~pooler.busy),
        ]
        wiring.connect(m, wiring.flipped(self.o_pooled), pooler.o_pooled)
        wiring.connect(m, wiring.flipped(self.error), pooler.error)
        return m
