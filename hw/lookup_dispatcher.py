"""Lookup dispatcher: turns the stream of a request's feature IDs into lookups for the units.

The :class:`~recfabric.hw.request_reader.RecordParser` emits one
:class:`~recfabric.hw.request_reader.FeatureIdLayout` item per live ID (or one ``empty`` item
for a bag of length 0), features in order, requests in order. The dispatcher routes each item,
as it arrives, to the lookup stream (:class:`~recfabric.hw.embedding_lookup.LookupLayout`) of the
unit that serves the item's feature (an
:class:`~recfabric.hw.embedding_lookup.EmbeddingLookupUnit` or an
:class:`~recfabric.hw.onchip_table.OnChipTable`), according to a runtime *placement* written by
the host (the model compiler decides it). No register holds a request: the dispatcher's state is
seven pipeline stages (one item each), a placement memory, a hold memory and a copy-turn memory of
``max_features`` entries each, and one small FIFO per unit (``fifo_depth`` lookups) that lets a
stalled unit fall behind the others without stopping them.

Placement (one :class:`PlacementLayout` entry per feature, in a ``lib.memory`` memory)
--------------------------------------------------------------------------------------
``kind`` says what the feature's items do (:class:`PlaceKind`):

* ``NONE``: nothing (the feature is not looked up).
* ``SINGLE``: the feature's bag is one slot of one table: each live ID becomes a ``ROW`` lookup
  of row ``id`` for slot ``slot`` (``first``/``last`` as in the bag; the unit checks
  ``row < rows``), an empty bag one ``EMPTY`` lookup.
* ``HOLD``, ``MID``, ``LAST``: ``n >= 2`` one-hot features share one Cartesian-merged table
  whose row is ``sum(id_i * radix_i)`` (:class:`~recfabric.host.compiler.planner.Group`). The
  sum is computed **here, in hardware** (one multiply per member; ``mult = radix_i`` is a
  placement field), so the wire format carries the features' own IDs. Members arrive in
  feature order: the first is ``HOLD`` (it writes ``id * mult``, whether its bag is exactly one
  ID, and whether the ID is below its ``rows``, to the hold memory at its own feature index),
  the middle ones ``MID`` (they add theirs to the held entry of ``partner``, the ``HOLD``
  feature), the last ``LAST``: at its bag's last item it emits one lookup: ``EMPTY`` if any
  bag's length was not 1 (merged features are one-hot; the record parser flags that request
  BAG_RANGE, and no lookup must raise the ID error as well), else ``ROW`` if every ID is below
  its ``rows``, otherwise ``BAD`` with ``row = 0`` (an out-of-range ID must not alias into
  another row of the merged table).

Parts: row-range splits and copies
----------------------------------
A ``SINGLE`` or ``LAST`` entry lists where its table is held: ``copies`` copies of
``shards`` row-range shards each, ``parts[c * shards + s]`` (:class:`TablePartLayout`: unit,
descriptor, first row ``lo``) for copy ``c``, shard ``s``; ``shards``/``copies`` 0 mean 1.
Shards of a copy are in row order (``lo`` ascending, ``parts[0].lo == 0``).

* **By row**: the lookup of row ``r`` goes to the shard with the largest ``lo <= r``, as row
  ``r - lo`` of that shard's descriptor (so the unit's own ``rows`` check catches rows past the
  table's end). A split table serves one-hot features only (the compiler refuses others): its
  bag makes one lookup, at the bag's last item, ``ROW`` if the bag held exactly one ID and
  ``EMPTY`` (to shard 0) otherwise (the parser flags that request BAG_RANGE). So every bag is
  pooled whole by one unit, exactly as the golden model pools it.
* **Split multi-hot tables** (``pieces = 1``; kernels with ``pools`` > 0): a bag's IDs may
  need rows of several shards, so each item becomes a *piece*, a one-lookup bag
  (``first = last = 1``) routed by its row as above: ``ROW`` for a live ID, ``EMPTY`` (to
  shard 0) for an empty bag. At the bag's last item the dispatcher sends the bag's piece count
  (tag, slot, the placement's ``pool``) on ``o_count``, and the
  :class:`~recfabric.hw.bag_combiner.BagCombiner` adds the pieces (the units return each row
  as it is) into one pooled vector, saturated once: exactly the golden model's pooling. A
  placement write also tells the combiner (``o_map``) whether its slot is split and its pool.
* **Copies, round-robin per bag**: feature ``f``'s bags go to copy ``0, 1, ..., copies-1, 0,
  ...`` in turn (a turn counter per feature in the copy-turn memory, advanced at each bag's
  end). A bag stays whole on one copy, so pooling stays exact; over a stream of equal bags the
  copies serve lookup counts within one bag of each other, and over any stream bag counts
  within 1.

Each (request, slot) gets exactly one bag of lookups, so exactly one pooled vector. Lookups of a
bag reach their unit contiguously because a feature's items are contiguous in the input. Units
see their bags in feature order (the concat stage takes slots in any order).

Errors
------
Nothing is read here. An ID out of range of a ``SINGLE`` feature is found by the unit (cause
``ROW``, against its descriptor's ``rows``); a merged member out of range becomes a ``BAD``
lookup, which the unit flags (cause ``ROW``) without a memory read. A merged or split bag whose
length is not 1 becomes an ``EMPTY`` lookup: the parser has flagged it (``bad_bag``), and only
the bag bit must be raised. Oversize bags and empty one-hot bags are flagged by the parser.

Counters: ``count[u]`` is the number of lookups sent to unit ``u`` since ``count_clear``.

Throughput: one item per cycle (a seven-stage pipeline, for a logic depth of at most 8 LUT
levels: placement read; the merge product's partial products; their sum, the member's range
check and the held entry's read; merge sums and copy turn; the shard compares; the part; the
row within it and the unit's FIFO).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .bag_combiner import BagCountLayout, PoolMapLayout
from .request_reader import FeatureIdLayout
from .stream_types import LookupKind, LookupLayout, TablePartLayout, index_bits

__all__ = ["PlaceKind", "PlacementLayout", "PlacementWriteLayout", "LookupDispatcher"]


class PlaceKind(enum.Enum, shape=3):
    """What a feature's items do (see the module docstring)."""

    NONE = 0
    SINGLE = 1
    HOLD = 2
    MID = 3
    LAST = 4


class PlacementLayout(data.StructLayout):
    """The placement of one feature (see the module docstring).

    Members
    -------
    kind : PlaceKind
    slot : unsigned(slot_bits)
        The pooled vector's slot (``SINGLE``, ``LAST``).
    rows : unsigned(id_bits)
        The feature's own row count (merged members: IDs must be below it).
    mult : unsigned(id_bits)
        The member's radix in the merged row (``HOLD``, ``MID``, ``LAST``).
    partner : unsigned(feature_bits)
        The ``HOLD`` member of the merged group (``MID``, ``LAST``).
    shards, copies : unsigned(index_bits(parts + 1))
        Row-range shards per copy and copies of the table (``SINGLE``, ``LAST``; 0 means 1).
    parts : ArrayLayout(TablePartLayout, parts)
        ``parts[c * shards + s]``: shard ``s`` of copy ``c``.
    pieces : unsigned(1)
        A split multi-hot table: every item is a piece (``SINGLE`` only; only when ``pools``).
    pool : unsigned(index_bits(pools))
        The combiner pool of a ``pieces`` feature (only when ``pools``).
    """

    def __init__(self, *, unit_bits: int, slot_bits: int, desc_bits: int, feature_bits: int,
                 id_bits: int, parts: int = 1, pools: int = 0):
        part = TablePartLayout(unit_bits=unit_bits, desc_bits=desc_bits, row_bits=id_bits)
        count = index_bits(parts + 1)
        fields = {"kind": PlaceKind, "slot": slot_bits, "rows": id_bits,
                  "mult": id_bits, "partner": feature_bits, "shards": count,
                  "copies": count, "parts": data.ArrayLayout(part, parts)}
        if pools:
            fields.update(pieces=1, pool=index_bits(pools))
        super().__init__(fields)


class PlacementWriteLayout(data.StructLayout):
    """Host write: the placement of ``feature`` := ``entry``."""

    def __init__(self, *, feature_bits: int, entry: PlacementLayout):
        super().__init__({"feature": feature_bits, "entry": entry})


class LookupDispatcher(wiring.Component):
    """Feature IDs in, one lookup stream per unit out (see the module docstring).

    Parameters
    ----------
    n_units : int
        Lookup units (memory channels and on-chip tables) fed.
    max_features : int
        Sparse features per request.
    tag_bits, slot_bits, desc_bits : int
    id_bits : int
        Width of row indices (IDs arrive as 32 bits).
    fifo_depth : int
        Lookups buffered per unit (at least 2).
    parts : int
        Parts (copies x row-range shards) one table may be held in.
    pools : int
        Split multi-hot features served (pieces and counts for a
        :class:`~recfabric.hw.bag_combiner.BagCombiner`); 0: none (no ``o_count``/``o_map``).
    max_bag : int
        Largest bag (the piece count's range; used when ``pools``).

    Members
    -------
    i_id : In(stream.Signature(FeatureIdLayout))
    i_place : In(stream.Signature(PlacementWriteLayout))
        Placement writes; always ready. Write while idle (a write also resets the feature's
        copy turn).
    o_lookup : Out(stream.Signature(LookupLayout)).array(n_units)
    o_count : Out(stream.Signature(BagCountLayout))
        Piece count of each split bag (only when ``pools``).
    o_map : Out(stream.Signature(PoolMapLayout))
        Slot-map writes for the combiner, one per ``SINGLE``/``LAST`` placement write (only
        when ``pools``; ``ready`` is ignored: the combiner's map is always ready).
    idle : Out(1)
        Nothing is in the pipeline or the FIFOs.
    count : Out(32).array(n_units)
        Lookups sent to each unit since ``count_clear`` (wrapping).
    count_clear : In(1)
    """

    def __init__(self, *, n_units: int, max_features: int, tag_bits: int = 4,
                 slot_bits: int = 4, desc_bits: int = 4, id_bits: int = 32, fifo_depth: int = 4,
                 parts: int = 1, pools: int = 0, max_bag: int = 1):
        for n, v in (("n_units", n_units), ("max_features", max_features),
                     ("id_bits", id_bits), ("fifo_depth", fifo_depth), ("parts", parts),
                     ("max_bag", max_bag)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TypeError(f"{n} must be a positive integer, not {v!r}")
        if fifo_depth < 2:
            raise ValueError(f"fifo_depth must be at least 2, not {fifo_depth}")
        if id_bits > 32:
            raise ValueError(f"id_bits must be at most 32 (IDs are u32), not {id_bits}")
        self.n_units, self.max_features, self.fifo_depth = n_units, max_features, fifo_depth
        self.tag_bits, self.slot_bits, self.desc_bits, self.id_bits = (
            tag_bits, slot_bits, desc_bits, id_bits)
        if not isinstance(pools, int) or isinstance(pools, bool) or pools < 0:
            raise TypeError(f"pools must be a non-negative integer, not {pools!r}")
        self.parts, self.pools, self.max_bag = parts, pools, max_bag
        self.feature_bits = index_bits(max_features)
        self.id_layout = FeatureIdLayout(tag_bits=tag_bits, feature_bits=self.feature_bits)
        self.entry_layout = PlacementLayout(
            unit_bits=index_bits(n_units), slot_bits=slot_bits, desc_bits=desc_bits,
            feature_bits=self.feature_bits, id_bits=id_bits, parts=parts, pools=pools)
        self.lookup_layout = LookupLayout(tag_bits=tag_bits, slot_bits=slot_bits,
                                          desc_bits=desc_bits, row_bits=id_bits)
        members = {
            "i_id": In(stream.Signature(self.id_layout)),
            "i_place": In(stream.Signature(PlacementWriteLayout(
                feature_bits=self.feature_bits, entry=self.entry_layout))),
            "o_lookup": Out(stream.Signature(self.lookup_layout)).array(n_units),
            "idle": Out(1),
            "count": Out(32).array(n_units),
            "count_clear": In(1),
        }
        if pools:
            self.bag_count_layout = BagCountLayout(
                tag_bits=tag_bits, slot_bits=slot_bits, pool_bits=index_bits(pools),
                max_bag=max_bag)
            members["o_count"] = Out(stream.Signature(self.bag_count_layout))
            members["o_map"] = Out(stream.Signature(PoolMapLayout(
                slot_bits=slot_bits, pool_bits=index_bits(pools))))
        super().__init__(members)

    @classmethod
    def config_kwargs(cls, config, **overrides) -> dict:
        """Constructor arguments of a dispatcher feeding ``mem_channels + onchip_units`` units
        of ``config``."""
        args = dict(n_units=config.mem_channels + config.onchip_units,
                    max_features=config.max_features,
                    tag_bits=index_bits(config.inflight),
                    slot_bits=index_bits(config.max_features),
                    desc_bits=index_bits(config.max_features), id_bits=32,
                    parts=config.capabilities().table_parts, pools=config.split_pools,
                    max_bag=config.max_bag)
        args.update(overrides)
        return args

    @classmethod
    def from_config(cls, config, **overrides) -> LookupDispatcher:
        """``cls(**cls.config_kwargs(config, **overrides))``."""
        return cls(**cls.config_kwargs(config, **overrides))

    def elaborate(self, platform):
        m = Module()
        nf = max(2, self.max_features)
        P = self.parts
        count_shape = self.entry_layout["shards"].shape
        m.submodules.place = place = Memory(shape=self.entry_layout, depth=nf, init=[])
        hold_layout = data.StructLayout({"id": self.id_bits, "one": 1, "ok": 1})
        m.submodules.hold = hold = Memory(shape=hold_layout, depth=nf, init=[])
        m.submodules.turn = turn = Memory(shape=count_shape, depth=nf, init=[])
        pw, pr = place.write_port(), place.read_port()
        hw = hold.write_port()
        # Read as the item enters stage T (transparent: a write by the item ahead in stage 2,
        # its merge partner, is seen), so stage 2 adds two registered values.
        hr = hold.read_port(transparent_for=(hw,))
        tw, tr = turn.write_port(), turn.read_port(domain="comb")

        w = self.i_place
        m.d.comb += [w.ready.eq(1), pw.en.eq(w.valid), pw.addr.eq(w.payload.feature),
                     pw.data.eq(w.payload.entry)]
        if self.pools:
            we = w.payload.entry
            m.d.comb += [
                self.o_map.valid.eq(w.valid & ((we.kind == PlaceKind.SINGLE) |
                                               (we.kind == PlaceKind.LAST))),
                self.o_map.payload.slot.eq(we.slot),
                self.o_map.payload.split.eq(we.pieces & (we.kind == PlaceKind.SINGLE)),
                self.o_map.payload.pool.eq(we.pool)]

        # Stage 1: the item and its placement (read in the cycle the item is accepted).
        # Logic depth (<= 8 LUT levels): the merge product ``id * mult`` takes two stages of
        # its own (16x16 partial products in DSPs, then their sum), and the part choice three
        # (the shard compares; the part; the row within it and the FIFO push). Every stage
        # holds one item and moves when the next one is free (``adv_*``).
        s_valid = Signal()
        s = Signal(self.id_layout)
        i = self.i_id
        adv_s = Signal()
        m.d.comb += [i.ready.eq(~s_valid | adv_s), pr.addr.eq(i.payload.feature),
                     pr.en.eq(i.ready)]
        with m.If(i.ready):
            m.d.sync += [s_valid.eq(i.valid), s.eq(i.payload)]

        # Stage M: the partial products of ``id * mult`` (mod 2**id_bits).
        sid_full = s.id[:self.id_bits]
        m_valid = Signal()
        ms = Signal(self.id_layout)
        me = Signal(self.entry_layout)
        prods = [Signal(32, name=f"prod{k}") for k in range(3)]
        adv_m = Signal()
        m.d.comb += adv_s.eq(~m_valid | adv_m)
        with m.If(adv_s):
            m.d.sync += [m_valid.eq(s_valid), ms.eq(s), me.eq(pr.data),
                         prods[0].eq(sid_full[:16] * pr.data.mult[:16]),
                         prods[1].eq(sid_full[:16] * pr.data.mult[16:32]),
                         prods[2].eq(sid_full[16:32] * pr.data.mult[:16])]

        # Stage T: the member's term and whether its ID is in its range.
        t_valid = Signal()
        t = Signal(self.id_layout)
        e = Signal(self.entry_layout)
        term = Signal(self.id_bits)
        in_range = Signal()
        advance = Signal()
        m.d.comb += adv_m.eq(~t_valid | advance)
        m.d.comb += [hr.addr.eq(me.partner), hr.en.eq(adv_m)]
        with m.If(adv_m):
            m.d.sync += [t_valid.eq(m_valid), t.eq(ms), e.eq(me),
                         term.eq(prods[0] + ((prods[1] + prods[2]) << 16)),
                         in_range.eq(ms.id[:self.id_bits] < me.rows)]

        # Stage 2: merged rows (hold memory), the lookup, the copy turn.
        lk = Signal(self.lookup_layout)
        emit = Signal()
        sid = t.id[:self.id_bits]
        one = t.first & t.last & ~t.empty
        m.d.comb += [tr.addr.eq(t.feature),
                     lk.tag.eq(t.tag), lk.slot.eq(e.slot)]
        held = hr.data
        # Split multi-hot bags: the bag's piece count so far, and the count to the combiner.
        cnt_push = Signal()
        if self.pools:
            m.submodules.count_fifo = cfifo = SyncFIFOBuffered(
                width=self.bag_count_layout.size, depth=4)
            pieces_so_far = Signal(range(self.max_bag + 1))
            n_pieces = Signal(range(self.max_bag + 2))
            cnt = Signal(self.bag_count_layout)
            m.d.comb += [n_pieces.eq(Mux(t.first, 0, pieces_so_far) + 1),
                         cnt.tag.eq(t.tag), cnt.slot.eq(e.slot), cnt.pool.eq(e.pool),
                         cnt.count.eq(n_pieces),
                         cfifo.w_data.eq(cnt), cfifo.w_en.eq(cnt_push & advance),
                         self.o_count.payload.eq(cfifo.r_data),
                         self.o_count.valid.eq(cfifo.r_rdy), cfifo.r_en.eq(self.o_count.ready)]
            count_room = cfifo.w_rdy
        else:
            count_room = 1
        with m.Switch(e.kind):
            with m.Case(PlaceKind.SINGLE):
                split = e.shards > 1
                if self.pools:
                    with m.If(e.pieces & split):
                        # Split multi-hot table: every item a one-lookup bag, routed by its row
                        m.d.comb += [emit.eq(1), lk.first.eq(1), lk.last.eq(1),
                                     lk.row.eq(Mux(t.empty, 0, sid)),
                                     lk.kind.eq(Mux(t.empty, LookupKind.EMPTY, LookupKind.ROW)),
                                     cnt_push.eq(t.last)]
                        with m.If(advance):
                            m.d.sync += pieces_so_far.eq(n_pieces)
                with (m.Elif(split) if self.pools else m.If(split)):
                    # One-hot split table: one lookup at the bag's end (row routed in stage 3).
                    m.d.comb += [emit.eq(t.last), lk.first.eq(1), lk.last.eq(1),
                                 lk.row.eq(Mux(one, sid, 0)),
                                 lk.kind.eq(Mux(one, LookupKind.ROW, LookupKind.EMPTY))]
                with m.Else():
                    m.d.comb += [emit.eq(1), lk.first.eq(t.first), lk.last.eq(t.last),
                                 lk.row.eq(Mux(t.empty, 0, sid)),
                                 lk.kind.eq(Mux(t.empty, LookupKind.EMPTY, LookupKind.ROW))]
            with m.Case(PlaceKind.HOLD):
                # Every item writes; a bag of several IDs (or an empty bag) ends with one=0.
                m.d.comb += [hw.en.eq(advance), hw.addr.eq(t.feature), hw.data.id.eq(term),
                             hw.data.one.eq(one), hw.data.ok.eq(in_range)]
            with m.Case(PlaceKind.MID):
                m.d.comb += [hw.en.eq(advance), hw.addr.eq(e.partner),
                             hw.data.id.eq(held.id + term), hw.data.one.eq(held.one & one),
                             hw.data.ok.eq(held.ok & in_range)]
            with m.Case(PlaceKind.LAST):
                # A bag length other than 1 is the record parser's BAG_RANGE error (it flags
                # the request): an EMPTY lookup, so that it does not raise the ID error too.
                all_one = held.one & one
                good = all_one & held.ok & in_range
                m.d.comb += [emit.eq(t.last), lk.first.eq(1), lk.last.eq(1),
                             lk.row.eq(Mux(good, held.id + term, 0)),
                             lk.kind.eq(Mux(all_one, Mux(good, LookupKind.ROW, LookupKind.BAD),
                                            LookupKind.EMPTY))]
        # Copy turn: this bag's copy; the next bag of the feature takes the next copy.
        cur = tr.data
        m.d.comb += [tw.addr.eq(Mux(w.valid, w.payload.feature, t.feature)),
                     tw.data.eq(Mux(w.valid | (cur + 1 >= e.copies), 0, cur + 1)),
                     tw.en.eq(w.valid | (advance & emit & t.last))]

        route_layout = data.StructLayout({
            "lk": self.lookup_layout, "copy": count_shape, "shards": count_shape,
            "parts": self.entry_layout["parts"].shape})
        r_valid = Signal()
        r = Signal(route_layout)
        r_free = Signal()
        m.d.comb += advance.eq(t_valid & (~emit | r_free) & (~cnt_push | count_room))
        with m.If(r_free):
            # Not ``desc``: stage 3c sets it from the part (``lk.desc`` is a constant
            # ``always @*`` that Icarus never runs: X in the registers).
            m.d.sync += [r.lk[n].eq(lk[n]) for n in ("tag", "slot", "row", "kind", "first",
                                                     "last")]
            m.d.sync += [r_valid.eq(t_valid & emit), r.copy.eq(cur),
                         r.shards.eq(e.shards), r.parts.eq(e.parts)]

        # Stage 3a: which shards start at or below the row (shards in row order), and the first
        # part of the bag's copy.
        fifos = []
        for u in range(self.n_units):
            fifo = SyncFIFOBuffered(width=self.lookup_layout.size, depth=self.fifo_depth)
            m.submodules[f"fifo{u}"] = fifo
            o = self.o_lookup[u]
            m.d.comb += [o.payload.eq(fifo.r_data), o.valid.eq(fifo.r_rdy),
                         fifo.r_en.eq(o.ready)]
            fifos.append(fifo)
        a_valid = Signal()
        a = Signal(route_layout)
        ge = Signal(max(1, P))  # ge[p]: shard p exists and starts at or below the row
        first_part = Signal(range(max(2, P)))
        a_free = Signal()
        m.d.comb += r_free.eq(~r_valid | a_free)
        with m.If(a_free):
            shards1 = Mux(r.shards == 0, 1, r.shards)
            m.d.sync += [a_valid.eq(r_valid), a.eq(r),
                         first_part.eq(r.copy * shards1 if P > 1 else 0)]
            m.d.sync += [ge[p].eq((p < r.shards) & (r.lk.row >= r.parts[p].lo))
                         for p in range(1, P)]

        # Stage 3b: the part holding the row.
        b_valid = Signal()
        b_lk = Signal(self.lookup_layout)
        b_part = Signal(self.entry_layout["parts"].shape.elem_shape)
        b_unit = Signal(self.n_units)  # one-hot
        b_free = Signal()
        m.d.comb += a_free.eq(~a_valid | b_free)
        # The highest shard whose ``ge`` is set, as one expression (a Verilog continuous
        # assignment). Not an ``If`` chain: that becomes an ``always @*`` block whose only inputs
        # are ``ge``, which never changes in a design whose tables are unsharded, and under
        # Icarus (-g2012) such a block never runs, leaving ``shard`` (and the part chosen) X.
        shard = Signal(range(max(2, P)))
        shard_expr = Const(0, shard.shape())
        for p in range(1, P):
            shard_expr = Mux(ge[p], p, shard_expr)
        m.d.comb += shard.eq(shard_expr)
        index = Signal(range(max(2, P)))
        m.d.comb += index.eq(first_part + shard if P > 1 else 0)
        part = a.parts[index] if P > 1 else a.parts[0]
        with m.If(b_free):
            m.d.sync += [b_valid.eq(a_valid), b_lk.eq(a.lk), b_part.eq(part),
                         b_unit.eq(1 << part.unit)]

        # Stage 3c: the row within the part, into the unit's FIFO.
        out = Signal(self.lookup_layout)
        m.d.comb += [out.eq(b_lk), out.desc.eq(b_part.desc), out.row.eq(b_lk.row - b_part.lo)]
        w_rdy = Signal()
        m.d.comb += w_rdy.eq((b_unit & Cat(f.w_rdy for f in fifos)).any())
        m.d.comb += b_free.eq(~b_valid | w_rdy)
        for u, fifo in enumerate(fifos):
            push = b_valid & b_unit[u] & w_rdy
            m.d.comb += [fifo.w_data.eq(out), fifo.w_en.eq(b_valid & b_unit[u])]
            with m.If(self.count_clear):
                m.d.sync += self.count[u].eq(0)
            with m.Elif(push):
                m.d.sync += self.count[u].eq(self.count[u] + 1)
        pending = [f.r_rdy for f in fifos] + ([cfifo.r_rdy] if self.pools else [])
        m.d.comb += self.idle.eq(~s_valid & ~m_valid & ~t_valid & ~r_valid & ~a_valid &
                                 ~b_valid & ~Cat(*pending).any())
        return m
