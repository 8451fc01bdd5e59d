"""The cycle model's DotInteraction timing (``dot_interaction_cycles``, ``DOT_PIPELINE_CYCLES``)
equals the block's simulated timing, no stalls: the latency of one request into an idle block,
from the cycle its first input chunk is taken to the cycle its last output chunk leaves, both
counted; and the interval ``ii`` between back-to-back requests' last output chunks."""

import math

import pytest
from amaranth.sim import Simulator

from recfabric.host.compiler.cycle_model import dot_interaction_cycles
from recfabric.hw.interaction import DotInteraction, InteractionMode, interaction_desc_words
from recfabric.sim.stream_testing import stream_put

SHAPES = [(4, 1, 5, 8), (3, 2, 4, 4), (4, 4, 3, 4), (32, 16, 27, 16)]


def _simulate(lanes, dot_lanes, n, d, n_req):
    """``n_req`` back-to-back DOT requests (all-ones vectors) into an idle block, output always
    ready: the cycle the first input chunk was taken, and the cycle of each request's last
    output chunk."""
    dut = DotInteraction(lanes=lanes, data_bits=16, acc_bits=48, max_vectors=n + 1,
                         max_in=n * d + 3, dot_lanes=dot_lanes)
    words = interaction_desc_words(dut, mode=InteractionMode.DOT, n=n, dim=d, out_frac=4,
                                   fracs=[8] * n)
    chunks = math.ceil(n * d / lanes)
    st = {"cycle": 0, "first_in": None, "ends": []}

    async def producer(ctx):
        for w in words:
            await stream_put(ctx, dut.i_desc, w)
        for _ in range(n_req):
            for c in range(chunks):
                ctx.set(dut.i_vector.valid, 1)
                ctx.set(dut.i_vector.payload, {"data": [1] * lanes, "last": c == chunks - 1})
                while not (await ctx.tick().sample(dut.i_vector.ready))[2]:
                    pass
                if st["first_in"] is None:
                    st["first_in"] = st["cycle"]
        ctx.set(dut.i_vector.valid, 0)

    async def clock(ctx):
        async for _ in ctx.tick():
            st["cycle"] += 1

    async def consumer(ctx):
        ctx.set(dut.o_vector.ready, 1)
        while len(st["ends"]) < n_req:
            _, _, valid, payload = await ctx.tick().sample(dut.o_vector.valid,
                                                           dut.o_vector.payload)
            if valid and payload.last:
                st["ends"].append(st["cycle"])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_process(clock)
    sim.add_testbench(consumer)
    sim.run()
    return st["first_in"], st["ends"]


@pytest.mark.parametrize("lanes,dot_lanes,n,d", SHAPES)
def test_dot_interaction_latency_is_the_cycle_models(lanes, dot_lanes, n, d):
    """(4, 1, 5, 8) is dlrm-small on `small`'s dot unit; the last row Kaggle on u280's."""
    latency, _ = dot_interaction_cycles(n, d, lanes, dot_lanes)
    first_in, (end,) = _simulate(lanes, dot_lanes, n, d, n_req=1)
    assert end - first_in + 1 == latency


@pytest.mark.parametrize("lanes,dot_lanes,n,d", SHAPES)
def test_dot_interaction_interval_is_the_cycle_models(lanes, dot_lanes, n, d):
    """Back-to-back requests, no stalls: the simulated interval between requests' last output
    chunks equals the cycle model's `ii`."""
    n_req = 4
    _, ii = dot_interaction_cycles(n, d, lanes, dot_lanes)
    _, ends = _simulate(lanes, dot_lanes, n, d, n_req)
    assert [b - a for a, b in zip(ends, ends[1:])] == [ii] * (n_req - 1)
