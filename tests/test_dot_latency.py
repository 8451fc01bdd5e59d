"""The cycle model's DotInteraction latency (``dot_interaction_cycles``, ``DOT_PIPELINE_CYCLES``)
equals the block's simulated latency: one request into an idle block, no stalls, from the cycle
its first input chunk is taken to the cycle its last output chunk leaves, both counted."""

import math

import pytest
from amaranth.sim import Simulator

from recfabric.host.compiler.cycle_model import dot_interaction_cycles
from recfabric.hw.interaction import DotInteraction, InteractionMode, interaction_desc_words
from recfabric.sim.stream_testing import stream_put


def _simulated_latency(lanes, dot_lanes, n, d):
    dut = DotInteraction(lanes=lanes, data_bits=16, acc_bits=48, max_vectors=n + 1,
                         max_in=n * d + 3, dot_lanes=dot_lanes)
    words = interaction_desc_words(dut, mode=InteractionMode.DOT, n=n, dim=d, out_frac=4,
                                   fracs=[8] * n)
    chunks = math.ceil(n * d / lanes)
    st = {"cycle": 0, "first_in": None, "end": None}
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def producer(ctx):
        for w in words:
            await stream_put(ctx, dut.i_desc, w)
        for c in range(chunks):
            ctx.set(dut.i_vector.valid, 1)
            ctx.set(dut.i_vector.payload, {"data": [1] * lanes, "last": c == chunks - 1})
            while not (await ctx.tick().sample(dut.i_vector.ready))[2]:
                pass
            if c == 0:
                st["first_in"] = st["cycle"]
        ctx.set(dut.i_vector.valid, 0)

    async def clock(ctx):
        async for _ in ctx.tick():
            st["cycle"] += 1

    async def consumer(ctx):
        ctx.set(dut.o_vector.ready, 1)
        while st["end"] is None:
            _, _, valid, payload = await ctx.tick().sample(dut.o_vector.valid,
                                                           dut.o_vector.payload)
            if valid and payload.last:
                st["end"] = st["cycle"]

    sim.add_testbench(producer)
    sim.add_process(clock)
    sim.add_testbench(consumer)
    sim.run()
    return st["end"] - st["first_in"] + 1


@pytest.mark.parametrize("lanes,dot_lanes,n,d", [(4, 1, 5, 8), (3, 2, 4, 4), (4, 4, 3, 4),
                                                 (32, 16, 27, 16)])
def test_dot_interaction_latency_is_the_cycle_models(lanes, dot_lanes, n, d):
    """(4, 1, 5, 8) is dlrm-small on `small`'s dot unit; the last row Kaggle on u280's."""
    latency, _ = dot_interaction_cycles(n, d, lanes, dot_lanes)
    assert _simulated_latency(lanes, dot_lanes, n, d) == latency
