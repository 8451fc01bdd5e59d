"""Bag combiner: pools the bags of multi-hot tables split by row range over several units.

A multi-hot table larger than one memory channel is split by row range into shards, each in its
own unit (:mod:`recfabric.hw.lookup_dispatcher`). A bag's IDs may then need rows of several
shards, and no unit can read another unit's memory. So the dispatcher sends each item of such a
bag as a *piece*: a one-lookup bag (``first = last = 1``) to the unit holding its row (an empty
bag: one ``EMPTY`` piece to shard 0). Each unit returns one pooled vector per piece, which for a
single row is the row itself (a row is already in the embedding format, so the unit's
saturation changes nothing). At the bag's end the dispatcher also sends the bag's piece count
(:class:`BagCountLayout`) here. The combiner adds the pieces of each (request tag, pool) in an
exact :func:`~recfabric.host.numerics.pool_acc_bits` accumulator and, once the count has come
and that many pieces have been added, emits **one** pooled vector for the bag, saturated once to
the embedding format: exactly :func:`~recfabric.host.numerics.pool_sum` of the bag's rows, the
numerics spec's pooling, in whatever order the pieces arrive from the units.

Every other pooled vector passes through unchanged, in order. Which slots are split is a map
``slot -> (split, pool)`` of ``max_slots`` entries (``i_map``, written beside each dispatcher
placement: :meth:`~recfabric.hw.lookup_dispatcher.LookupDispatcher.map_write`); ``pools`` split
features per model at most, each with one accumulator per request in flight.

Errors: if any piece of a bag has ``error`` set, the bag's vector has ``error`` set, the cause
of the first such piece to arrive, and all-zero ``data`` (the golden model's zero vector for a
bag with an ID out of range).

State: a memory of ``2**tag_bits * pools`` entries (``max_dim`` accumulators, the pieces seen,
the count, the error) and one *live* register bit per entry (entries not live read as empty; the
bits reset with the kernel, so a reset in the middle of a bag leaves nothing stale; a completed
bag clears its bit, so switching models needs no reset).

Pipeline (one input per cycle, counts before pooled vectors when both wait; each stage's logic
<= 8 LUT levels): stage 0 registers the input and reads the slot map; stage 1 reads the entry
(transparent for the write of the item ahead, so back-to-back pieces of one bag add up); stage 2
adds and writes the entry back, and registers a finished bag (or a passed vector) unsaturated;
the output saturates it. Latency: 3 cycles (:data:`COMBINER_CYCLES`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..host.numerics import pool_acc_bits
from .stream_types import LookupErrorCause, PooledVectorLayout, index_bits

__all__ = ["BagCountLayout", "PoolMapLayout", "BagCombiner", "COMBINER_CYCLES"]

#: Cycles a pooled vector spends in the combiner (input to output, an empty pipeline).
COMBINER_CYCLES = 3


class BagCountLayout(data.StructLayout):
    """The piece count of one split bag (from the dispatcher, at the bag's end).

    Members
    -------
    tag, slot : unsigned(tag_bits), unsigned(slot_bits)
        The bag's request tag and slot.
    pool : unsigned(pool_bits)
        The split feature's pool (its placement's ``pool``).
    count : unsigned
        Pieces of the bag (its live IDs, or 1 for an empty bag's ``EMPTY`` piece).
    """

    def __init__(self, *, tag_bits: int, slot_bits: int, pool_bits: int, max_bag: int):
        super().__init__({"tag": tag_bits, "slot": slot_bits, "pool": pool_bits,
                          "count": range(max_bag + 1)})


class PoolMapLayout(data.StructLayout):
    """One slot-map write: slot ``slot`` is split (``split``) into pool ``pool``."""

    def __init__(self, *, slot_bits: int, pool_bits: int):
        super().__init__({"slot": slot_bits, "split": 1, "pool": pool_bits})


class BagCombiner(wiring.Component):
    """Pieces of split bags in, one pooled vector per bag out (see the module docstring).

    Parameters
    ----------
    tag_bits, slot_bits : int
        As in :class:`~recfabric.hw.stream_types.PooledVectorLayout`.
    data_bits, max_dim : int
        Embedding format and vector length.
    max_bag : int
        Largest bag (pieces per bag): sets the accumulator width and the count's.
    pools : int
        Split multi-hot features a model may have.

    Members
    -------
    i_pooled : In(stream.Signature(PooledVectorLayout))
        Pooled vectors and pieces from the lookup units (through the arbiter).
    i_count : In(stream.Signature(BagCountLayout))
    i_map : In(stream.Signature(PoolMapLayout))
        Slot-map writes; always ready. Write while idle.
    o_pooled : Out(stream.Signature(PooledVectorLayout))
    idle : Out(1)
        No vector, piece or count is in the pipeline (unfinished bags may be held).
    """

    def __init__(self, *, tag_bits: int, slot_bits: int, data_bits: int, max_dim: int,
                 max_bag: int, pools: int):
        for n, v in (("tag_bits", tag_bits), ("slot_bits", slot_bits), ("data_bits", data_bits),
                     ("max_dim", max_dim), ("max_bag", max_bag), ("pools", pools)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TypeError(f"{n} must be a positive integer, not {v!r}")
        self.tag_bits, self.slot_bits, self.data_bits = tag_bits, slot_bits, data_bits
        self.max_dim, self.max_bag, self.pools = max_dim, max_bag, pools
        self.pool_bits = index_bits(pools)
        self.acc_bits = pool_acc_bits(data_bits, max_bag)
        self.pooled_layout = PooledVectorLayout(tag_bits=tag_bits, slot_bits=slot_bits,
                                                data_bits=data_bits, max_dim=max_dim)
        self.count_layout = BagCountLayout(tag_bits=tag_bits, slot_bits=slot_bits,
                                           pool_bits=self.pool_bits,
                                           max_bag=max_bag)
        super().__init__({
            "i_pooled": In(stream.Signature(self.pooled_layout)),
            "i_count": In(stream.Signature(self.count_layout)),
            "i_map": In(stream.Signature(PoolMapLayout(slot_bits=slot_bits,
                                                       pool_bits=self.pool_bits))),
            "o_pooled": Out(stream.Signature(self.pooled_layout)),
            "idle": Out(1),
        })

    @classmethod
    def config_kwargs(cls, config, **overrides) -> dict:
        """Constructor arguments for the kernel of ``config`` (``config.split_pools`` > 0)."""
        args = dict(tag_bits=index_bits(config.inflight),
                    slot_bits=index_bits(config.max_features), data_bits=config.data_bits,
                    max_dim=config.max_dim, max_bag=config.max_bag,
                    pools=max(1, config.split_pools))
        args.update(overrides)
        return args

    def elaborate(self, platform):
        m = Module()
        n, db, ab = self.max_dim, self.data_bits, self.acc_bits
        depth = 1 << (self.tag_bits + self.pool_bits)
        cnt_shape = self.count_layout["count"].shape
        entry_layout = data.StructLayout({
            "sum": data.ArrayLayout(signed(ab), n), "got": cnt_shape, "want": cnt_shape,
            "error": 1, "cause": LookupErrorCause})
        m.submodules.slot_map = smap = Memory(
            shape=data.StructLayout({"split": 1, "pool": self.pool_bits}),
            depth=1 << self.slot_bits, init=[])
        m.submodules.acc = acc = Memory(shape=entry_layout, depth=depth, init=[])
        mw, mr = smap.write_port(), smap.read_port()
        aw = acc.write_port()
        ar = acc.read_port(transparent_for=(aw,))
        live = Signal(depth)

        w = self.i_map
        m.d.comb += [w.ready.eq(1), mw.en.eq(w.valid), mw.addr.eq(w.payload.slot),
                     mw.data.split.eq(w.payload.split), mw.data.pool.eq(w.payload.pool)]

        # ---- stage 0: the input (a count first), the slot map read ----
        v0, is_cnt0 = Signal(), Signal()
        vec0 = Signal(self.pooled_layout)
        cnt0 = Signal(self.count_layout)
        adv0 = Signal()
        take = ~v0 | adv0
        take_cnt = self.i_count.valid
        m.d.comb += [self.i_count.ready.eq(take),
                     self.i_pooled.ready.eq(take & ~take_cnt),
                     mr.addr.eq(self.i_pooled.payload.slot), mr.en.eq(take)]
        with m.If(take):
            m.d.sync += [v0.eq(self.i_count.valid | self.i_pooled.valid),
                         is_cnt0.eq(take_cnt), vec0.eq(self.i_pooled.payload),
                         cnt0.eq(self.i_count.payload)]
        split0 = is_cnt0 | mr.data.split
        pool0 = Mux(is_cnt0, cnt0.pool, mr.data.pool)
        tag0 = Mux(is_cnt0, cnt0.tag, vec0.tag)
        addr0 = Cat(pool0, tag0) if self.pools > 1 else tag0

        # ---- stage 1: the entry read (transparent for stage 2's write) ----
        v1, is_cnt1, split1, live1 = Signal(), Signal(), Signal(), Signal()
        vec1 = Signal(self.pooled_layout)
        cnt1 = Signal(self.count_layout)
        addr1 = Signal(range(depth))
        adv1 = Signal()
        m.d.comb += [adv0.eq(~v1 | adv1), ar.addr.eq(addr0), ar.en.eq(adv0)]
        # stage 2's write this cycle (the entry's live bit after it)
        wr_en, wr_live = Signal(), Signal()
        with m.If(adv0):
            m.d.sync += [v1.eq(v0), is_cnt1.eq(is_cnt0), split1.eq(split0), vec1.eq(vec0),
                         cnt1.eq(cnt0), addr1.eq(addr0),
                         live1.eq(Mux(wr_en & (aw.addr == addr0), wr_live,
                                      live.bit_select(addr0, 1)))]

        # ---- stage 2: add, write back; a finished bag or a passed vector to the output ----
        old = ar.data
        got = Mux(live1, old.got, 0) + (~is_cnt1)
        want = Mux(is_cnt1, cnt1.count, Mux(live1, old.want, 0))
        old_err = live1 & old.error
        new_err = old_err | (~is_cnt1 & vec1.error)
        new_cause = Mux(old_err, old.cause, Mux(~is_cnt1 & vec1.error, vec1.cause,
                                                LookupErrorCause.NONE))
        done = (want != 0) & (got == want)
        sums = []
        for i in range(n):
            s = Signal(signed(ab), name=f"sum{i}")
            m.d.comb += s.eq(Mux(live1, old.sum[i], 0) + Mux(is_cnt1, 0, vec1.data[i]))
            sums.append(s)
        # the output register (unsaturated) and whether it may take an item now
        v2 = Signal()
        out = Signal(data.StructLayout({
            "tag": self.tag_bits, "slot": self.slot_bits, "error": 1,
            "cause": LookupErrorCause, "data": data.ArrayLayout(signed(ab), n)}))
        o = self.o_pooled
        free2 = ~v2 | o.ready
        emits = ~split1 | done
        # Stage 1 moves whenever the output register may take an item, whether or not this one
        # goes there: ``done`` (an entry read and an add) stays out of the ready path upstream.
        m.d.comb += adv1.eq(~v1 | free2)
        m.d.comb += [wr_en.eq(v1 & split1 & adv1), wr_live.eq(~done),
                     aw.en.eq(wr_en), aw.addr.eq(addr1),
                     aw.data.got.eq(got), aw.data.want.eq(want), aw.data.error.eq(new_err),
                     aw.data.cause.eq(new_cause)]
        m.d.comb += [aw.data.sum[i].eq(sums[i]) for i in range(n)]
        with m.If(wr_en):
            m.d.sync += live.bit_select(addr1, 1).eq(~done)
        with m.If(free2):
            m.d.sync += v2.eq(v1 & emits)
            with m.If(split1):
                # a finished bag (the item finishing it is its count or its last piece)
                m.d.sync += [out.tag.eq(Mux(is_cnt1, cnt1.tag, vec1.tag)),
                             out.slot.eq(Mux(is_cnt1, cnt1.slot, vec1.slot)),
                             out.error.eq(new_err), out.cause.eq(new_cause)]
                m.d.sync += [out.data[i].eq(Mux(new_err, 0, sums[i])) for i in range(n)]
            with m.Else():
                m.d.sync += [out.tag.eq(vec1.tag), out.slot.eq(vec1.slot),
                             out.error.eq(vec1.error), out.cause.eq(vec1.cause)]
                m.d.sync += [out.data[i].eq(vec1.data[i]) for i in range(n)]
        lo, hi = -(1 << (db - 1)), (1 << (db - 1)) - 1
        m.d.comb += [o.valid.eq(v2), o.payload.tag.eq(out.tag), o.payload.slot.eq(out.slot),
                     o.payload.error.eq(out.error), o.payload.cause.eq(out.cause)]
        for i in range(n):
            x = out.data[i]
            m.d.comb += o.payload.data[i].eq(Mux(x > hi, hi, Mux(x < lo, lo, x)))
        m.d.comb += self.idle.eq(~v0 & ~v1 & ~v2)
        return m
