"""Lookup dispatcher: turns the stream of a request's feature IDs into lookups for the units.

The :class:`~recfabric.hw.request_reader.RecordParser` emits one
:class:`~recfabric.hw.request_reader.FeatureIdLayout` item per live ID (or one ``empty`` item
for a bag of length 0), features in order, requests in order. The dispatcher routes each item,
as it arrives, to the lookup stream (:class:`~recfabric.hw.embedding_lookup.LookupLayout`) of the
unit that serves the item's feature (an
:class:`~recfabric.hw.embedding_lookup.EmbeddingLookupUnit` or an
:class:`~recfabric.hw.onchip_table.OnChipTable`), according to a runtime *placement* written by
the host (the model compiler decides it). No register holds a request: the dispatcher's state is
a pipeline register, a placement memory and a hold memory of ``max_features`` entries each, and
one small FIFO per unit (``fifo_depth`` lookups) that lets a stalled unit fall behind the others
without stopping them.

Placement (one :class:`PlacementLayout` entry per feature, in a ``lib.memory`` memory)
--------------------------------------------------------------------------------------
``kind`` says what the feature's items do (:class:`PlaceKind`):

* ``NONE``: nothing (the feature is not looked up).
* ``SINGLE``: the feature's bag is one slot of one table: each live ID becomes a ``ROW`` lookup
  of row ``id`` in descriptor ``desc`` of unit ``unit``, for slot ``slot`` (``first``/``last``
  as in the bag; the unit checks ``row < rows``), an empty bag one ``EMPTY`` lookup.
* ``HOLD`` and ``PAIR``: two features share one Cartesian-merged table whose row
  ``id_a * rows_b + id_b`` is ``concat(row_a, row_b)``. The product is computed **here, in
  hardware** (one multiply; ``mult = rows_b`` is a placement field), so the wire format carries
  the features' own IDs. The member that arrives first (the lower feature index) is ``HOLD``:
  its ID, and whether its bag is exactly one ID below ``rows``, go to the hold memory. The
  other member is ``PAIR`` (``partner`` = the ``HOLD`` feature, ``a_held`` = the held one is
  ``a``): at its bag's last item it emits one lookup: ``EMPTY`` if a bag's length was not 1
  (merged features are one-hot; the record parser flags that request BAG_RANGE, and no lookup
  must raise the ID error as well), else ``ROW`` if both IDs are below their ``rows``,
  otherwise ``BAD`` with ``row = 0`` (an out-of-range ID must not alias into another row of
  the merged table).

Each (request, slot) gets exactly one bag of lookups, so exactly one pooled vector. Lookups of a
bag reach their unit contiguously because a feature's items are contiguous in the input. Units
see their bags in feature order (the concat stage takes slots in any order).

Errors
------
Nothing is read here. An ID out of range of a ``SINGLE`` feature is found by the unit (cause
``ROW``, against its descriptor's ``rows``); a ``HOLD``/``PAIR`` member out of range becomes a
``BAD`` lookup, which the unit flags (cause ``ROW``) without a memory read. A merged bag whose
length is not 1 becomes an ``EMPTY`` lookup: the parser has flagged it (``bad_bag``), and only
the bag bit must be raised. Oversize bags and empty one-hot bags are flagged by the parser.

Throughput: one item per cycle (a two-stage pipeline: placement read, then route).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .request_reader import FeatureIdLayout
from .stream_types import LookupKind, LookupLayout, index_bits

__all__ = ["PlaceKind", "PlacementLayout", "PlacementWriteLayout", "LookupDispatcher"]


class PlaceKind(enum.Enum, shape=2):
    """What a feature's items do (see the module docstring)."""

    NONE = 0
    SINGLE = 1
    HOLD = 2
    PAIR = 3


class PlacementLayout(data.StructLayout):
    """The placement of one feature (see the module docstring).

    Members
    -------
    kind : PlaceKind
    unit : unsigned(unit_bits)
        Unit serving the feature's slot (``SINGLE``, ``PAIR``).
    slot : unsigned(slot_bits)
    desc : unsigned(desc_bits)
        Table descriptor index in the unit.
    rows : unsigned(id_bits)
        The feature's own row count (``HOLD``, ``PAIR``: IDs must be below it).
    mult : unsigned(id_bits)
        ``rows_b`` of the merged pair (``PAIR``).
    partner : unsigned(feature_bits)
        The ``HOLD`` member (``PAIR``).
    a_held : unsigned(1)
        The held member is feature ``a`` (its ID is multiplied by ``mult``).
    """

    def __init__(self, *, unit_bits: int, slot_bits: int, desc_bits: int, feature_bits: int,
                 id_bits: int):
        super().__init__({"kind": PlaceKind, "unit": unit_bits, "slot": slot_bits,
                          "desc": desc_bits, "rows": id_bits, "mult": id_bits,
                          "partner": feature_bits, "a_held": 1})


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

    Members
    -------
    i_id : In(stream.Signature(FeatureIdLayout))
    i_place : In(stream.Signature(PlacementWriteLayout))
        Placement writes; always ready. Write while idle.
    o_lookup : Out(stream.Signature(LookupLayout)).array(n_units)
    idle : Out(1)
        Nothing is in the pipeline or the FIFOs.
    """

    def __init__(self, *, n_units: int, max_features: int, tag_bits: int = 4,
                 slot_bits: int = 4, desc_bits: int = 4, id_bits: int = 32, fifo_depth: int = 4):
        for n, v in (("n_units", n_units), ("max_features", max_features),
                     ("id_bits", id_bits), ("fifo_depth", fifo_depth)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TypeError(f"{n} must be a positive integer, not {v!r}")
        if fifo_depth < 2:
            raise ValueError(f"fifo_depth must be at least 2, not {fifo_depth}")
        if id_bits > 32:
            raise ValueError(f"id_bits must be at most 32 (IDs are u32), not {id_bits}")
        self.n_units, self.max_features, self.fifo_depth = n_units, max_features, fifo_depth
        self.tag_bits, self.slot_bits, self.desc_bits, self.id_bits = (
            tag_bits, slot_bits, desc_bits, id_bits)
        self.feature_bits = index_bits(max_features)
        self.id_layout = FeatureIdLayout(tag_bits=tag_bits, feature_bits=self.feature_bits)
        self.entry_layout = PlacementLayout(
            unit_bits=index_bits(n_units), slot_bits=slot_bits, desc_bits=desc_bits,
            feature_bits=self.feature_bits, id_bits=id_bits)
        self.lookup_layout = LookupLayout(tag_bits=tag_bits, slot_bits=slot_bits,
                                          desc_bits=desc_bits, row_bits=id_bits)
        super().__init__({
            "i_id": In(stream.Signature(self.id_layout)),
            "i_place": In(stream.Signature(PlacementWriteLayout(
                feature_bits=self.feature_bits, entry=self.entry_layout))),
            "o_lookup": Out(stream.Signature(self.lookup_layout)).array(n_units),
            "idle": Out(1),
        })

    @classmethod
    def config_kwargs(cls, config, **overrides) -> dict:
        """Constructor arguments of a dispatcher feeding ``mem_channels + onchip_units`` units
        of ``config``."""
        args = dict(n_units=config.mem_channels + config.onchip_units,
                    max_features=config.max_features,
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
        nf = max(2, self.max_features)
        m.submodules.place = place = Memory(shape=self.entry_layout, depth=nf, init=[])
        hold_layout = data.StructLayout({"id": self.id_bits, "one": 1, "ok": 1})
        m.submodules.hold = hold = Memory(shape=hold_layout, depth=nf, init=[])
        pw, pr = place.write_port(), place.read_port()
        hw, hr = hold.write_port(), hold.read_port(domain="comb")

        w = self.i_place
        m.d.comb += [w.ready.eq(1), pw.en.eq(w.valid), pw.addr.eq(w.payload.feature),
                     pw.data.eq(w.payload.entry)]

        # Stage 1: the item and its placement (read in the cycle the item is accepted).
        s_valid = Signal()
        s = Signal(self.id_layout)
        advance = Signal()
        i = self.i_id
        m.d.comb += [i.ready.eq(~s_valid | advance), pr.addr.eq(i.payload.feature),
                     pr.en.eq(i.ready)]
        with m.If(i.ready):
            m.d.sync += [s_valid.eq(i.valid), s.eq(i.payload)]
        e = pr.data

        # Route: build the lookup, push it into the unit's FIFO.
        fifos = []
        for u in range(self.n_units):
            fifo = SyncFIFOBuffered(width=self.lookup_layout.size, depth=self.fifo_depth)
            m.submodules[f"fifo{u}"] = fifo
            o = self.o_lookup[u]
            m.d.comb += [o.payload.eq(fifo.r_data), o.valid.eq(fifo.r_rdy),
                         fifo.r_en.eq(o.ready)]
            fifos.append(fifo)

        lk = Signal(self.lookup_layout)
        emit = Signal()
        sid = s.id[:self.id_bits]
        one = s.first & s.last & ~s.empty
        in_range = sid < e.rows
        m.d.comb += [hr.addr.eq(e.partner), lk.tag.eq(s.tag), lk.slot.eq(e.slot),
                     lk.desc.eq(e.desc)]
        with m.Switch(e.kind):
            with m.Case(PlaceKind.SINGLE):
                m.d.comb += [emit.eq(1), lk.first.eq(s.first), lk.last.eq(s.last),
                             lk.row.eq(Mux(s.empty, 0, sid)),
                             lk.kind.eq(Mux(s.empty, LookupKind.EMPTY, LookupKind.ROW))]
            with m.Case(PlaceKind.HOLD):
                # Every item writes; a bag of several IDs (or an empty bag) ends with one=0.
                m.d.comb += [hw.en.eq(s_valid), hw.addr.eq(s.feature), hw.data.id.eq(sid),
                             hw.data.one.eq(one), hw.data.ok.eq(in_range)]
            with m.Case(PlaceKind.PAIR):
                # A bag length other than 1 is the record parser's BAG_RANGE error (it flags
                # the request): an EMPTY lookup, so that it does not raise the ID error too.
                both_one = hr.data.one & one
                good = both_one & hr.data.ok & in_range
                held = hr.data.id
                prod = Signal(self.id_bits)
                m.d.comb += prod.eq(Mux(e.a_held, held, sid) * e.mult + Mux(e.a_held, sid, held))
                m.d.comb += [emit.eq(s.last), lk.first.eq(1), lk.last.eq(1),
                             lk.row.eq(Mux(good, prod, 0)),
                             lk.kind.eq(Mux(both_one, Mux(good, LookupKind.ROW, LookupKind.BAD),
                                            LookupKind.EMPTY))]
        w_rdy = Signal()
        m.d.comb += w_rdy.eq(Cat(f.w_rdy for f in fifos).bit_select(e.unit, 1)
                             if self.n_units > 1 else fifos[0].w_rdy)
        m.d.comb += advance.eq(s_valid & (~emit | w_rdy))
        for u, fifo in enumerate(fifos):
            m.d.comb += [fifo.w_data.eq(lk), fifo.w_en.eq(s_valid & emit & (e.unit == u))]
        m.d.comb += self.idle.eq(~s_valid & ~Cat(f.r_rdy for f in fifos).any())
        return m
