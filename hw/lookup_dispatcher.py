"""Lookup dispatcher: splits each request's sparse features into lookups for the lookup units.

A request (:class:`LookupRequestLayout`: tag, per-feature bag lengths and IDs) is turned into
lookup streams (:class:`~recfabric.hw.embedding_lookup.LookupLayout`), one per unit
(:class:`~recfabric.hw.embedding_lookup.EmbeddingLookupUnit` or
:class:`~recfabric.hw.onchip_table.OnChipTable`), according to a runtime *placement* written by
the host (the model compiler decides it).

Placement
---------
Each unit ``u`` has a list of ``count[u]`` entries (:class:`PlacementLayout`), walked in order for
every request; entry ``e`` of unit ``u`` produces the lookups of one output slot:

* ``cartesian=0``: the bag of feature ``feat_a`` in table descriptor ``desc``: one ``ROW``
  lookup per ID (``row = id``; the unit checks ``row < rows``), or one ``EMPTY`` lookup for a
  bag of length 0.
* ``cartesian=1``: features ``feat_a`` and ``feat_b`` share one merged table whose row
  ``id_a * rows_b + id_b`` is ``concat(row_a, row_b)``. The product is computed **here, in
  hardware** (one DSP multiply; ``rows_b`` is a runtime placement field), so the request wire
  format carries the features' own IDs. It emits one lookup: ``EMPTY`` if a bag's length is
  not 1 (merged features are one-hot; the record parser flags that request BAG_RANGE), else
  ``ROW`` if ``id_a < rows_a`` and ``id_b < rows_b``, otherwise ``BAD`` (an out-of-range ID
  must not alias into another row of the merged table).

Each unit's walker emits one lookup per cycle, independently of the others; a request is released
(and the next accepted) when every walker has finished it. Slots are numbered by the host; each
(request, slot) gets exactly one pooled vector from the unit that serves the slot.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .embedding_lookup import LookupKind, LookupLayout, index_bits

__all__ = ["LookupRequestLayout", "PlacementLayout", "PlacementWriteLayout", "LookupDispatcher"]


class LookupRequestLayout(data.StructLayout):
    """The sparse part of one request.

    Members
    -------
    tag : unsigned(tag_bits)
    lengths : ArrayLayout(range(max_bag + 1), max_features)
        Bag length of each feature.
    ids : ArrayLayout(ArrayLayout(unsigned(id_bits), max_bag), max_features)
        IDs of each feature's bag; entries past the length are ignored.
    """

    def __init__(self, *, tag_bits: int, max_features: int, max_bag: int, id_bits: int):
        super().__init__({
            "tag": tag_bits,
            "lengths": data.ArrayLayout(range(max_bag + 1), max_features),
            "ids": data.ArrayLayout(data.ArrayLayout(id_bits, max_bag), max_features),
        })


class PlacementLayout(data.StructLayout):
    """One placement entry (see the module docstring).

    Members
    -------
    slot : unsigned(slot_bits)
    desc : unsigned(desc_bits)
        Table descriptor index in the unit.
    feat_a, feat_b : unsigned
        Feature indices (``feat_b`` only for Cartesian entries).
    cartesian : unsigned(1)
    rows_a, rows_b : unsigned(id_bits)
        Row counts of the merged features (Cartesian entries only).
    """

    def __init__(self, *, slot_bits: int, desc_bits: int, max_features: int, id_bits: int):
        fb = index_bits(max_features)
        super().__init__({"slot": slot_bits, "desc": desc_bits, "feat_a": fb, "feat_b": fb,
                          "cartesian": 1, "rows_a": id_bits, "rows_b": id_bits})


class PlacementWriteLayout(data.StructLayout):
    """Host write: entry ``index`` of ``unit`` := ``entry``, or, if ``set_count``, the unit's
    entry count := ``count``."""

    def __init__(self, *, n_units: int, max_entries: int, entry: PlacementLayout):
        super().__init__({"unit": index_bits(n_units), "index": index_bits(max_entries),
                          "entry": entry, "set_count": 1, "count": range(max_entries + 1)})


class LookupDispatcher(wiring.Component):
    """Requests in, one lookup stream per unit out (see the module docstring).

    Parameters
    ----------
    n_units : int
        Lookup units (memory channels and on-chip tables) fed.
    max_features : int
        Sparse features per request.
    max_bag : int
        Largest bag.
    max_entries : int
        Placement entries per unit.
    tag_bits, slot_bits, desc_bits : int
    id_bits : int
        Width of IDs and row indices.

    Members
    -------
    i_request : In(stream.Signature(LookupRequestLayout))
    i_place : In(stream.Signature(PlacementWriteLayout))
        Placement writes; always ready. Write while idle.
    o_lookup : Out(stream.Signature(LookupLayout)).array(n_units)
    idle : Out(1)
        No request is being dispatched.
    """

    def __init__(self, *, n_units: int, max_features: int, max_bag: int, max_entries=None,
                 tag_bits: int = 4, slot_bits: int = 4, desc_bits: int = 4, id_bits: int = 32):
        for n, v in (("n_units", n_units), ("max_features", max_features),
                     ("max_bag", max_bag), ("id_bits", id_bits)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TypeError(f"{n} must be a positive integer, not {v!r}")
        max_entries = max_features if max_entries is None else max_entries
        if not isinstance(max_entries, int) or max_entries < 1:
            raise TypeError(f"max_entries must be a positive integer, not {max_entries!r}")
        self.n_units, self.max_features, self.max_bag, self.max_entries = (
            n_units, max_features, max_bag, max_entries)
        self.tag_bits, self.slot_bits, self.desc_bits, self.id_bits = (
            tag_bits, slot_bits, desc_bits, id_bits)
        self.request_layout = LookupRequestLayout(tag_bits=tag_bits, max_features=max_features,
                                                  max_bag=max_bag, id_bits=id_bits)
        self.entry_layout = PlacementLayout(slot_bits=slot_bits, desc_bits=desc_bits,
                                            max_features=max_features, id_bits=id_bits)
        self.lookup_layout = LookupLayout(tag_bits=tag_bits, slot_bits=slot_bits,
                                          desc_bits=desc_bits, row_bits=id_bits)
        super().__init__({
            "i_request": In(stream.Signature(self.request_layout)),
            "i_place": In(stream.Signature(PlacementWriteLayout(
                n_units=n_units, max_entries=max_entries, entry=self.entry_layout))),
            "o_lookup": Out(stream.Signature(self.lookup_layout)).array(n_units),
            "idle": Out(1),
        })

    @classmethod
    def config_kwargs(cls, config, **overrides) -> dict:
        """Constructor arguments of a dispatcher feeding ``mem_channels + onchip_units`` units
        of ``config``."""
        args = dict(n_units=config.mem_channels + config.onchip_units,
                    max_features=config.max_features, max_bag=config.max_bag,
                    tag_bits=index_bits(config.inflight),
                    slot_bits=index_bits(config.max_features),
                    desc_bits=index_bits(config.max_features), id_bits=32)
        args.update(overrides)
        return args

    @classmethod
    def from_config(cls, config, **overrides) -> LookupDispatcher:
        """``cls(**cls.config_kwargs(config, **overrides))``."""
        return cls(**cls.config_kwargs(config, **overrides))

    def elaborate(self, platform):
        m = Module()
        req = Signal(self.request_layout)
        w = self.i_place.payload
        m.d.comb += self.i_place.ready.eq(1)

        busy = Signal(self.n_units)
        m.d.comb += [self.i_request.ready.eq(busy == 0), self.idle.eq(busy == 0)]
        accept = self.i_request.valid & self.i_request.ready
        with m.If(accept):
            m.d.sync += req.eq(self.i_request.payload)

        lengths = Array(req.lengths[f] for f in range(self.max_features))
        ids = Array(Array(req.ids[f][k] for k in range(self.max_bag))
                    for f in range(self.max_features))

        for u in range(self.n_units):
            entries = [Signal(self.entry_layout, name=f"u{u}_entry{i}")
                       for i in range(self.max_entries)]
            count = Signal(range(self.max_entries + 1), name=f"u{u}_count")
            with m.If(self.i_place.valid & (w.unit == u)):
                with m.If(w.set_count):
                    m.d.sync += count.eq(w.count)
                with m.Else():
                    for i, e in enumerate(entries):
                        with m.If(w.index == i):
                            m.d.sync += e.eq(w.entry)

            e_idx = Signal(range(max(2, self.max_entries)), name=f"u{u}_e")
            k = Signal(range(max(2, self.max_bag)), name=f"u{u}_k")
            ent = self.entry_layout(Array(entries)[e_idx]) if self.max_entries > 1 else entries[0]
            len_a, len_b = lengths[ent.feat_a], lengths[ent.feat_b]
            id_a, id_b = ids[ent.feat_a][k], ids[ent.feat_b][0]
            id_a0 = ids[ent.feat_a][0]

            o = self.o_lookup[u]
            p = o.payload
            last_of_entry = Signal(name=f"u{u}_last")
            m.d.comb += [o.valid.eq(busy[u]), p.tag.eq(req.tag), p.slot.eq(ent.slot),
                         p.desc.eq(ent.desc)]
            with m.If(ent.cartesian):
                # A bag length other than 1 is the record parser's BAG_RANGE error (it flags
                # the request): no lookup, so that it does not raise the ID error as well.
                one_hot = (len_a == 1) & (len_b == 1)
                good = (id_a0 < ent.rows_a) & (id_b < ent.rows_b)
                m.d.comb += [p.kind.eq(Mux(one_hot, Mux(good, LookupKind.ROW, LookupKind.BAD),
                                           LookupKind.EMPTY)),
                             p.row.eq(id_a0 * ent.rows_b + id_b), p.first.eq(1), p.last.eq(1),
                             last_of_entry.eq(1)]
            with m.Elif(len_a == 0):
                m.d.comb += [p.kind.eq(LookupKind.EMPTY), p.row.eq(0), p.first.eq(1),
                             p.last.eq(1), last_of_entry.eq(1)]
            with m.Else():
                m.d.comb += [p.kind.eq(LookupKind.ROW), p.row.eq(id_a), p.first.eq(k == 0),
                             p.last.eq(k == len_a - 1), last_of_entry.eq(k == len_a - 1)]

            with m.If(accept):
                m.d.sync += [busy[u].eq(count != 0), e_idx.eq(0), k.eq(0)]
            with m.Elif(o.valid & o.ready):
                with m.If(last_of_entry):
                    m.d.sync += [k.eq(0), e_idx.eq(e_idx + 1)]
                    with m.If(e_idx + 1 == count):
                        m.d.sync += busy[u].eq(0)
                with m.Else():
                    m.d.sync += k.eq(k + 1)
        return m
