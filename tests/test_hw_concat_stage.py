"""ConcatStage: random placements, out-of-order interleaved slots, stalls, vs a naive model."""

import gc
import math
import random

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfabric.hw.concat_stage import ConcatStage, concat_desc_words
from recfabric.hw.stream_types import LookupErrorCause
from recfabric.sim.stream_testing import (
    StreamChecker,
    payload_value,
    stream_get,
    stream_put,
    stream_put_all,
)


class ConcatModel:
    """Naive twin: the vector is the pieces written at their offsets, zero-padded to words."""

    def __init__(self, lanes, slots, dense, total):
        self.lanes, self.slots, self.dense, self.total = lanes, slots, dense, total

    def vector(self, pooled, dense_vec):
        v = np.zeros(math.ceil(self.total / self.lanes) * self.lanes, dtype=np.int64)
        for (o, n), vec in zip(self.slots, pooled):
            v[o:o + n] = vec[:n]
        if self.dense[1]:
            v[self.dense[0]:self.dense[0] + self.dense[1]] = dense_vec
        return v


def _run(lanes, dims, dense_len, n_req, seed, p=0.3, inflight=4, max_dim=None, bits=16):
    rng = random.Random(seed)
    max_dim = max_dim or max(dims)
    # Placement chosen by the "compiler": a random order of the pieces, packed.
    pieces = [("slot", i, d) for i, d in enumerate(dims)]
    if dense_len:
        pieces.append(("dense", None, dense_len))
    rng.shuffle(pieces)
    slots, dense, off = [None] * len(dims), (0, 0), 0
    for kind, i, n in pieces:
        if kind == "slot":
            slots[i] = (off, n)
        else:
            dense = (off, n)
        off += n
    total = off
    dut = ConcatStage(lanes=lanes, data_bits=bits, max_dim=max_dim, max_slots=len(dims) + 1,
                      max_concat=total + 3, max_dense=max(1, dense_len), inflight=inflight)
    words = concat_desc_words(dut, slots, dense)
    model = ConcatModel(lanes, slots, dense, total)
    top = 1 << (bits - 1)
    pooled = [[[rng.randrange(-top, top) for _ in range(d)] + [0] * (max_dim - d) for d in dims]
              for _ in range(n_req)]
    dense_vecs = [[rng.randrange(-top, top) for _ in range(dense_len)] for _ in range(n_req)]
    # Per-request errors: a pooled vector may arrive flagged (with its cause) and a record may
    # have a bad bag; the stage reports them as the request's flags, in request order.
    causes = [[rng.choice([LookupErrorCause.NONE] * 6 + list(LookupErrorCause)[1:])
               for _ in dims] for _ in range(n_req)]
    bag_bad = [rng.random() < 0.25 for _ in range(n_req)]
    for r in range(n_req):
        for s, cause in enumerate(causes[r]):
            if cause != LookupErrorCause.NONE:
                pooled[r][s] = [0] * max_dim
    want_flags = [{"id_range": int(any(c in (LookupErrorCause.ROW, LookupErrorCause.DESC)
                                       for c in causes[r])),
                   "bag_range": int(bag_bad[r]),
                   "memory": int(LookupErrorCause.RESP in causes[r])} for r in range(n_req)]
    want = [model.vector(pooled[r], dense_vecs[r]) for r in range(n_req)]
    chunks = math.ceil(total / lanes)
    state = {"released": 0, "loaded": False}
    # Arrival order: requests overlap, slots of a request in random order; as a dispatcher
    # holding `inflight` credits would, request r + inflight only after request r is done.
    spread = min(2.5, 0.99 * inflight)
    events = [(r + rng.random() * spread, r, s) for r in range(n_req) for s in range(len(dims))]
    events.sort()
    got, got_flags = [], []

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for s in (dut.i_pooled, dut.i_dense, dut.o_vector, dut.o_flags):
        sim.add_process(StreamChecker(s, name="stream").process)

    async def released(ctx):
        async for _, _, rel in ctx.tick().sample(dut.released):
            state["released"] += rel

    async def desc(ctx):
        await stream_put_all(ctx, dut.i_desc, words)
        state["loaded"] = True

    async def wait_credit(ctx, r):
        while not state["loaded"] or r >= state["released"] + inflight:
            await ctx.tick()

    async def pooled_tb(ctx):
        for _, r, s in events:
            await wait_credit(ctx, r)
            if s == 0 and bag_bad[r]:  # the parser's bag flag comes before the lookups
                await stream_put(ctx, dut.i_bag_error, {"tag": r % inflight})
            cause = causes[r][s]
            await stream_put(ctx, dut.i_pooled, {"tag": r % inflight, "slot": s,
                                                 "error": int(cause != LookupErrorCause.NONE),
                                                 "cause": cause, "data": pooled[r][s]},
                             rng=rng, p_idle=p)

    async def dense_tb(ctx):
        for r in range(n_req):
            await wait_credit(ctx, r)
            for k, v in enumerate(dense_vecs[r]):
                await stream_put(ctx, dut.i_dense, {"tag": r % inflight, "data": v,
                                                    "last": k == dense_len - 1},
                                 rng=rng, p_idle=p)

    async def consumer(ctx):
        for _ in range(n_req * chunks):
            got.append(await stream_get(ctx, dut.o_vector, rng=rng, p_stall=p))

    async def flags_tb(ctx):
        for _ in range(n_req):
            got_flags.append(payload_value(await stream_get(ctx, dut.o_flags, rng=rng,
                                                            p_stall=p)))

    sim.add_process(released)
    for tb in (desc, pooled_tb, dense_tb, consumer, flags_tb):
        sim.add_testbench(tb)
    limit = 500 + 40 * n_req * (sum(dims) + dense_len + chunks)
    sim.run_until(limit * 1e-8)
    assert len(got) == n_req * chunks, f"only {len(got)} words out after {limit} cycles"
    out = [[list(g.data) for g in got[r * chunks:(r + 1) * chunks]] for r in range(n_req)]
    assert [np.concatenate(o).tolist() for o in out] == [w.tolist() for w in want]
    assert [g.last for g in got] == [int((k + 1) % chunks == 0) for k in range(len(got))]
    assert got_flags == want_flags


def test_concat_small_unaligned_with_dense():
    _run(lanes=4, dims=[3, 8, 5, 2], dense_len=3, n_req=6, seed=0)


def test_concat_merged_slot_longer_than_lanes_no_dense():
    # A Cartesian-merged slot (dims 4 + 8 = 12) spans several words.
    _run(lanes=3, dims=[12, 4, 1], dense_len=0, n_req=5, seed=1, inflight=2)


def test_concat_one_lane_no_stalls():
    _run(lanes=1, dims=[2, 3], dense_len=2, n_req=4, seed=2, p=0.0, inflight=3)


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(lanes=st.integers(1, 5), dims=st.lists(st.integers(1, 9), min_size=1, max_size=5),
       dense_len=st.integers(0, 6), seed=st.integers(0, 1000),
       inflight=st.sampled_from([1, 2, 3, 4]))
def test_concat_property(lanes, dims, dense_len, seed, inflight):
    _run(lanes=lanes, dims=dims, dense_len=dense_len, n_req=4, seed=seed, inflight=inflight)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_concat_desc_rejects_bad_layouts():
    dut = ConcatStage(lanes=4, data_bits=16, max_dim=8, max_slots=4, max_concat=16,
                      max_dense=4, inflight=2)
    with pytest.raises(ValueError, match="slot 1 overlaps slot 0 at position 5"):
        concat_desc_words(dut, [(0, 8), (5, 4)])
    with pytest.raises(ValueError, match="slot 0 length must be in 1..8, not 9"):
        concat_desc_words(dut, [(0, 9)])
    with pytest.raises(ValueError, match="exceeds max_concat 16"):
        concat_desc_words(dut, [(0, 8), (8, 8)], dense=(16, 2))
    with pytest.raises(TypeError, match="inflight must be a positive integer, not 0"):
        ConcatStage(lanes=4, data_bits=16, max_dim=8, max_slots=4, max_concat=16,
                    max_dense=4, inflight=0)
    del dut
    gc.collect()


def test_concat_takes_one_single_window_vector_per_cycle():
    """Throughput: vectors that fill one word each are taken back to back (the placement
    memory's read cycle, stage P, adds latency, not a bubble)."""
    lanes, n_slots, n_req = 4, 8, 2
    dut = ConcatStage(lanes=lanes, data_bits=8, max_dim=4, max_slots=n_slots,
                      max_concat=lanes * n_slots, max_dense=1, inflight=2)
    words = concat_desc_words(dut, [(lanes * s, lanes) for s in range(n_slots)])
    taken = []

    async def tb(ctx):
        await stream_put_all(ctx, dut.i_desc, words)
        ctx.set(dut.o_vector.ready, 1)
        ctx.set(dut.o_flags.ready, 1)
        items = [(r, s) for r in range(n_req) for s in range(n_slots)]
        cycle = 0
        while items:
            r, s = items[0]
            ctx.set(dut.i_pooled.valid, 1)
            ctx.set(dut.i_pooled.payload, {"tag": r, "slot": s, "data": [s] * 4})
            _, _, ready = await ctx.tick().sample(dut.i_pooled.ready)
            if ready:
                taken.append(cycle)
                items.pop(0)
            cycle += 1
        ctx.set(dut.i_pooled.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run_until(2000e-8)
    assert len(taken) == n_req * n_slots
    assert taken == list(range(taken[0], taken[0] + n_req * n_slots)), taken
