"""Concatenation stage: per-request assembly of the top MLP's input vector.

Pooled embedding vectors arrive from many lookup units in any slot order, interleaved across the
requests in flight (each tagged with ``tag = request sequence number mod inflight``); the dense
part (raw dense features, or the bottom MLP's outputs) arrives in request order. The stage
places every piece at its runtime-programmed position in a per-tag buffer and, once a request is
complete, streams its vector to the MLP ``lanes`` elements per transfer, requests in order.

Descriptor (runtime, written through ``i_desc``; :func:`concat_desc_words` builds it)
-----------------------------------------------------------------------------------
The vector is ``lanes`` elements wide per word: position ``p`` is lane ``p % lanes`` of word
``p // lanes``. Entries (``addr`` -> ``data``):

``0 .. max_slots-1`` (slot ``s``)
    ``word | lane << 12 | length << 20``: slot ``s``'s pooled vector (its first ``length``
    elements) goes to positions ``offset .. offset+length-1`` with
    ``offset = word * lanes + lane``. A Cartesian-merged table is one slot whose row carries
    both features' vectors, adjacent: its ``length`` is the sum of the two dims.
``max_slots`` (N_SLOTS)
    Pooled vectors per request (every request has all slots ``0 .. N_SLOTS-1``).
``max_slots + 1`` (DENSE)
    ``word | lane << 12 | length << 20`` of the dense part (``length`` 0: no dense part).
``max_slots + 2`` (CHUNKS)
    Words streamed per request: ``ceil(total_width / lanes)``.

Every position below ``CHUNKS * lanes`` should be covered by exactly one slot or the dense part
(positions not covered keep stale values; the MLP multiplies padding by zero weights, but gaps
would carry stale data into the model).
"""

from __future__ import annotations

import math

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .stream_types import (
    DenseLayout,
    LookupErrorCause,
    MLPInputLayout,
    PooledVectorLayout,
    RequestFlagsLayout,
)

__all__ = ["ConcatStage", "ConcatDescLayout", "concat_desc_words"]

_WORD_BITS, _LANE_BITS, _LEN_BITS = 12, 8, 12


def _bits_for(n: int) -> int:
    return max(1, (n - 1).bit_length())


class ConcatDescLayout(data.StructLayout):
    """One descriptor write.

    Members
    -------
    addr : unsigned
        Entry (see the module docstring).
    data : unsigned(32)
    """

    def __init__(self, max_slots: int):
        super().__init__({"addr": _bits_for(max_slots + 3), "data": 32})


def _place(offset: int, length: int, lanes: int) -> int:
    word, lane = divmod(offset, lanes)
    if word >= 1 << _WORD_BITS or length >= 1 << _LEN_BITS:
        raise ValueError(f"Placement offset {offset} / length {length} is out of range")
    return word | lane << _WORD_BITS | length << (_WORD_BITS + _LANE_BITS)


def concat_desc_words(stage: ConcatStage, slots, dense=(0, 0), total: int | None = None) -> list:
    """Descriptor writes (dicts of :class:`ConcatDescLayout` fields) for a model.

    ``slots`` is a list of ``(offset, length)`` per slot; ``dense`` the dense part's
    ``(offset, length)``; ``total`` the vector width (default: end of the last piece). Raises
    ``ValueError`` naming the slot for pieces that overlap, exceed ``max_dim`` or the buffer.
    """
    slots = [tuple(s) for s in slots]
    if len(slots) > stage.max_slots:
        raise ValueError(f"{len(slots)} slots exceed the stage's {stage.max_slots}")
    pieces = [(o, n, f"slot {i}") for i, (o, n) in enumerate(slots)]
    if dense[1]:
        pieces.append((dense[0], dense[1], "dense part"))
    end = max((o + n for o, n, _ in pieces), default=0)
    total = end if total is None else total
    if total > stage.max_concat or end > total:
        raise ValueError(f"Vector width {max(total, end)} exceeds max_concat {stage.max_concat}"
                         if total > stage.max_concat or end > stage.max_concat else
                         f"Pieces end at {end}, past the vector width {total}")
    used = [None] * total
    for o, n, what in pieces:
        if what.startswith("slot") and not 1 <= n <= stage.max_dim:
            raise ValueError(f"{what} length must be in 1..{stage.max_dim}, not {n}")
        for p in range(o, o + n):
            if used[p] is not None:
                raise ValueError(f"{what} overlaps {used[p]} at position {p}")
            used[p] = what
    if dense[1] > stage.max_dense:
        raise ValueError(f"Dense length {dense[1]} exceeds max_dense {stage.max_dense}")
    words = [{"addr": i, "data": _place(o, n, stage.lanes)} for i, (o, n) in enumerate(slots)]
    words.append({"addr": stage.max_slots, "data": len(slots)})
    words.append({"addr": stage.max_slots + 1, "data": _place(*dense, stage.lanes)})
    words.append({"addr": stage.max_slots + 2, "data": math.ceil(total / stage.lanes)})
    return words


class ConcatStage(wiring.Component):
    """Collects each request's pooled vectors and dense part; emits its vectors in order.

    A pooled vector of ``length`` elements placed at lane ``lane`` of word ``word`` is written in
    ``ceil((lane + length) / lanes)`` cycles (one word per cycle, rotated into place); a dense
    element is written per cycle, in any lane the pooled writer leaves free that cycle. A
    request is emitted when all ``N_SLOTS`` pooled vectors and its dense part are in, one word
    per cycle.

    Parameters
    ----------
    lanes : int
        Elements per output transfer (the first MLP engine's columns).
    data_bits : int
    max_dim : int
        Elements of a pooled vector (``PooledVectorLayout`` ``max_dim``).
    max_slots : int
        Slots per request (``max_features``).
    max_concat : int
        Largest vector.
    max_dense : int
        Largest dense part.
    inflight : int
        Requests in flight (tags ``0 .. inflight-1``, in request order modulo ``inflight``).

    Members
    -------
    i_pooled : In(stream.Signature(PooledVectorLayout))
        Pooled vectors, any order. Never refused for long: each takes its write cycles.
    i_dense : In(stream.Signature(DenseLayout))
        Dense elements, request after request (``length`` elements each, carrying the
        request's tag; ``last`` is ignored).
    i_bag_error : In(stream.Signature(StructLayout({"tag": tag_bits})))
        A record's bag length was bad (the request ``tag`` gets the ``bag_range`` flag); always
        ready.
    i_desc : In(stream.Signature(ConcatDescLayout))
        Descriptor writes (always ready; not while requests are in flight).
    o_vector : Out(stream.Signature(MLPInputLayout(data_bits, lanes)))
        Vectors, ``lanes`` elements per transfer, ``last`` on a request's last word.
    o_flags : Out(stream.Signature(RequestFlagsLayout))
        One per request, in request order, offered when the request is complete and before its
        vector is emitted (a vector waits for its flags to be taken): the request's pooled-vector
        errors (``id_range`` for causes ROW and DESC, ``memory`` for RESP) and bag errors.
    released : Out(1)
        Pulses when the oldest request has been read out: its tag may be reused.
    error : Out(1)
        Sticky: a pooled vector arrived with its ``error`` bit set (its data is zero).
    """

    def __init__(self, *, lanes: int, data_bits: int, max_dim: int, max_slots: int,
                 max_concat: int, max_dense: int, inflight: int):
        for name, v in (("lanes", lanes), ("data_bits", data_bits), ("max_dim", max_dim),
                        ("max_slots", max_slots), ("max_concat", max_concat),
                        ("inflight", inflight)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TypeError(f"{name} must be a positive integer, not {v!r}")
        if lanes >= 1 << _LANE_BITS:
            raise ValueError(f"lanes must be below {1 << _LANE_BITS}, not {lanes}")
        self.lanes, self.data_bits, self.max_dim = lanes, data_bits, max_dim
        self.max_slots, self.max_concat, self.max_dense = max_slots, max_concat, max_dense
        self.inflight = inflight
        self.tag_bits = _bits_for(inflight)
        self.slot_bits = _bits_for(max_slots)
        self.local_bits = _bits_for(math.ceil(max_concat / lanes))
        super().__init__({
            "i_pooled": In(stream.Signature(PooledVectorLayout(
                tag_bits=self.tag_bits, slot_bits=self.slot_bits, data_bits=data_bits,
                max_dim=max_dim))),
            "i_dense": In(stream.Signature(DenseLayout(tag_bits=self.tag_bits,
                                                       data_bits=data_bits))),
            "i_bag_error": In(stream.Signature(data.StructLayout({"tag": self.tag_bits}))),
            "i_desc": In(stream.Signature(ConcatDescLayout(max_slots))),
            "o_vector": Out(stream.Signature(MLPInputLayout(bits=data_bits, lanes=lanes))),
            "o_flags": Out(stream.Signature(RequestFlagsLayout())),
            "released": Out(1),
            "error": Out(1),
        })

    @classmethod
    def from_config(cls, cfg, lanes: int) -> ConcatStage:
        """Sized from an :class:`~recfabric.hw.config.AcceleratorConfig`."""
        return cls(lanes=lanes, data_bits=cfg.data_bits, max_dim=cfg.max_dim,
                   max_slots=cfg.max_features, max_concat=cfg.max_concat,
                   max_dense=max(1, cfg.max_dense, cfg.max_width), inflight=cfg.inflight)

    def elaborate(self, platform):
        # One function on purpose (~150 lines): the descriptor registers, the per-tag buffer, the
        # pooled and dense writers and the reader share the per-tag state (slot counts, dense
        # flags, request flags) and the lanes' write ports; the sections below are marked.
        m = Module()
        C, T = self.lanes, self.inflight

        # ---- descriptor ----
        def place_regs(name):
            return (Signal(_WORD_BITS, name=f"{name}_word"), Signal(range(C), name=f"{name}_lane"),
                    Signal(_LEN_BITS, name=f"{name}_len"))

        # A slot's placement is held as word, lane and end (``lane + length``, added when the
        # descriptor is written rather than when a vector arrives), in a memory read one cycle
        # ahead of the pooled writer (a register file with a ``max_slots``-way read multiplexer
        # was 10 logic levels at u280's 128 slots).
        place_layout = data.StructLayout({"word": _WORD_BITS, "lane": range(C),
                                          "end": _LEN_BITS + 1})
        m.submodules.places = places = Memory(shape=place_layout, depth=self.max_slots, init=[])
        place_w, place_r = places.write_port(), places.read_port()
        n_slots = Signal(range(self.max_slots + 1))
        n_slots_m1 = Signal(range(self.max_slots + 1))  # N_SLOTS - 1, kept beside N_SLOTS
        d_word, d_lane, d_len = place_regs("dense")
        chunks = Signal(self.local_bits + 1)
        dsc = self.i_desc.payload
        m.d.comb += self.i_desc.ready.eq(1)

        def set_place(regs):
            w, la, n = regs
            return [w.eq(dsc.data[:_WORD_BITS]),
                    la.eq(dsc.data[_WORD_BITS:_WORD_BITS + _LANE_BITS]),
                    n.eq(dsc.data[_WORD_BITS + _LANE_BITS:])]

        lane_field = dsc.data[_WORD_BITS:_WORD_BITS + _LANE_BITS]
        m.d.comb += [place_w.en.eq(self.i_desc.valid & (dsc.addr < self.max_slots)),
                     place_w.addr.eq(dsc.addr),
                     place_w.data.word.eq(dsc.data[:_WORD_BITS]),
                     place_w.data.lane.eq(lane_field),
                     place_w.data.end.eq(lane_field + dsc.data[_WORD_BITS + _LANE_BITS:])]
        with m.If(self.i_desc.valid):
            with m.Switch(dsc.addr):
                with m.Case(self.max_slots):
                    m.d.sync += [n_slots.eq(dsc.data), n_slots_m1.eq(dsc.data - 1)]
                with m.Case(self.max_slots + 1):
                    m.d.sync += set_place((d_word, d_lane, d_len))
                with m.Case(self.max_slots + 2):
                    m.d.sync += chunks.eq(dsc.data)

        # ---- buffer: one memory per lane, one region per tag ----
        wr_en = Signal(C)
        wr_addr = [Signal(self.local_bits + self.tag_bits, name=f"wa{q}") for q in range(C)]
        wr_data = [Signal(signed(self.data_bits), name=f"wd{q}") for q in range(C)]
        rd_addr = Signal(self.local_bits + self.tag_bits)
        rd_en = Signal()
        rd_data = []
        for q in range(C):
            mem = Memory(shape=signed(self.data_bits), depth=T << self.local_bits, init=[])
            m.submodules[f"lane{q}"] = mem
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [wp.en.eq(wr_en[q]), wp.addr.eq(wr_addr[q]), wp.data.eq(wr_data[q]),
                         rp.addr.eq(rd_addr), rp.en.eq(rd_en)]
            rd_data.append(rp.data)

        slot_cnt = Array(Signal(range(self.max_slots + 1), name=f"slots{t}") for t in range(T))
        dense_done = Array(Signal(name=f"dense_done{t}") for t in range(T))
        # Request flags, one bit per tag and flag (flat vectors: the read below is then a
        # continuous shift, which Icarus evaluates at time 0, unlike an `always @*` case).
        flag_bits = {name: Signal(T, name=f"{name}_by_tag") for name in ("id_range", "bag_range",
                                                                         "memory")}
        m.d.comb += self.i_bag_error.ready.eq(1)
        with m.If(self.i_bag_error.valid):
            m.d.sync += flag_bits["bag_range"].bit_select(self.i_bag_error.payload.tag, 1).eq(1)

        # ---- pooled writer: window j of the slot's placement, one word per cycle ----
        # Stage P takes a pooled vector into a register while the placement memory reads its
        # slot's entry; stage A takes both into registers; each cycle the window writes the
        # lanes of ``slot_en`` (a register: the next window's lanes are found a cycle ahead),
        # element ``q + off_r`` into lane ``q``; ``end_r`` is the piece's end relative to the
        # window's first lane.
        pv = self.i_pooled.payload
        p_valid = Signal()
        p = Signal.like(pv, name="pin")
        pr_valid = Signal()
        pr = Signal.like(pv, name="pr")
        word_r = Signal(_WORD_BITS)
        end_r = Signal(signed(_LEN_BITS + 2))
        off_r = Signal(signed(_LEN_BITS + 2))
        last_win = end_r <= C
        slot_en = Signal(C)
        idx_bits = _bits_for(self.max_dim)
        for q in range(C):
            i = Signal(signed(_LEN_BITS + 2), name=f"elem{q}")
            m.d.comb += i.eq(off_r + q)
            m.d.comb += [wr_addr[q].eq(Cat(word_r[:self.local_bits], pr.tag)),
                         wr_data[q].eq(pr.data[i[:idx_bits]])]
        take_pv = ~pr_valid | last_win
        take_in = ~p_valid | take_pv
        m.d.comb += [self.i_pooled.ready.eq(take_in), place_r.addr.eq(pv.slot),
                     place_r.en.eq(take_in)]
        with m.If(take_in):
            m.d.sync += [p_valid.eq(self.i_pooled.valid), p.eq(pv)]
        with m.If(take_pv):
            m.d.sync += [pr_valid.eq(p_valid), pr.eq(p)]
            place = place_r.data
            m.d.sync += [word_r.eq(place.word), end_r.eq(place.end), off_r.eq(-place.lane)]
            m.d.sync += [slot_en[q].eq(p_valid & (q >= place.lane) & (q < place.end))
                         for q in range(C)]
        with m.Else():
            m.d.sync += [word_r.eq(word_r + 1), end_r.eq(end_r - C), off_r.eq(off_r + C)]
            m.d.sync += [slot_en[q].eq(q + C < end_r) for q in range(C)]
        # Per tag: all N_SLOTS pooled vectors are in (set with the count's last increment).
        # Each tag compares its own count (no ``inflight``-way read multiplexer on the path).
        slots_done = Signal(T)
        counted = pr_valid & last_win
        for t in range(T):
            with m.If(counted & (pr.tag == t)):
                m.d.sync += slot_cnt[t].eq(slot_cnt[t] + 1)
                with m.If(slot_cnt[t] == n_slots_m1):
                    m.d.sync += slots_done[t].eq(1)
        with m.If(counted & pr.error):
            m.d.sync += self.error.eq(1)
            with m.If(pr.cause == LookupErrorCause.RESP):
                m.d.sync += flag_bits["memory"].bit_select(pr.tag, 1).eq(1)
            with m.Else():
                m.d.sync += flag_bits["id_range"].bit_select(pr.tag, 1).eq(1)

        # ---- dense writer: one element per cycle into a lane the pooled writer leaves free ----
        # ``d_q``/``d_w``: where the next dense element goes (the descriptor's placement at the
        # start of each request's dense part).
        d_tag = self.i_dense.payload.tag
        d_n = Signal(_LEN_BITS)
        d_q = Signal(range(C))
        d_w = Signal(_WORD_BITS)
        with m.If(self.i_desc.valid & (dsc.addr == self.max_slots + 1)):
            m.d.sync += [d_w.eq(dsc.data[:_WORD_BITS]),
                         d_q.eq(dsc.data[_WORD_BITS:_WORD_BITS + _LANE_BITS])]
        lane_free = ~slot_en.bit_select(d_q, 1)
        dense_go = self.i_dense.valid & lane_free & (d_len != 0)
        m.d.comb += self.i_dense.ready.eq(dense_go)
        dense_en = Signal(C)
        for q in range(C):
            m.d.comb += dense_en[q].eq(dense_go & (d_q == q))
            with m.If(dense_en[q]):
                m.d.comb += [wr_addr[q].eq(Cat(d_w[:self.local_bits], d_tag)),
                             wr_data[q].eq(self.i_dense.payload.data)]
        m.d.comb += wr_en.eq(slot_en | dense_en)
        with m.If(dense_go):
            with m.If(d_n + 1 >= d_len):
                m.d.sync += [d_n.eq(0), dense_done[d_tag].eq(1), d_q.eq(d_lane),
                             d_w.eq(d_word)]
            with m.Else():
                m.d.sync += d_n.eq(d_n + 1)
                with m.If(d_q == C - 1):
                    m.d.sync += [d_q.eq(0), d_w.eq(d_w + 1)]
                with m.Else():
                    m.d.sync += d_q.eq(d_q + 1)

        # ---- reader: head request, in order ----
        head = Signal(self.tag_bits)
        active = Signal()
        c = Signal(self.local_bits + 1)
        last_d = Signal()
        o = self.o_vector
        free = ~o.valid | o.ready
        adv = active & free
        # An unprogrammed stage (CHUNKS 0) never emits.
        complete = ((chunks != 0) & (slots_done.bit_select(head, 1) | (n_slots == 0))
                    & (dense_done[head] | (d_len == 0)))
        m.d.comb += [rd_addr.eq(Cat(c[:self.local_bits], head)), rd_en.eq(adv),
                     o.payload.last.eq(last_d)]
        for q in range(C):
            m.d.comb += o.payload.data[q].eq(rd_data[q])
        with m.If(free):
            m.d.sync += o.valid.eq(adv)
        with m.If(adv):
            m.d.sync += [c.eq(c + 1), last_d.eq(c + 1 >= chunks)]
            with m.If(c + 1 >= chunks):
                m.d.comb += self.released.eq(1)
                m.d.sync += [active.eq(0), slot_cnt[head].eq(0), dense_done[head].eq(0),
                             slots_done.bit_select(head, 1).eq(0),
                             head.eq(_wrap_inc(head, T))]
                m.d.sync += [v.bit_select(head, 1).eq(0) for v in flag_bits.values()]
        with m.Elif(~active & complete & self.o_flags.ready):
            m.d.sync += [active.eq(1), c.eq(0)]
        # A complete request offers its flags; its vector follows once they are taken.
        m.d.comb += [self.o_flags.valid.eq(~active & complete),
                     *(getattr(self.o_flags.payload, name).eq(v.bit_select(head, 1))
                       for name, v in flag_bits.items())]
        return m


def _wrap_inc(sig, n):
    """``(sig + 1) mod n`` for a counter over ``0 .. n-1``."""
    if n == 1 << len(sig):
        return (sig + 1)[:len(sig)]
    return Mux(sig == n - 1, 0, sig + 1)
