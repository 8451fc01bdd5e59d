"""Sigmoid: every logit of SIGMOID_IN through the streaming table, with stalls, vs the spec."""

import gc
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from recfabric.host import numerics as nx
from recfabric.hw.sigmoid import Sigmoid
from recfabric.sim.stream_testing import StreamChecker, stream_get_n, stream_put_all


@pytest.mark.parametrize("in_bits,p", [(11, 0.0), (16, 0.3)])
def test_sigmoid_exhaustive(in_bits, p):
    rng = random.Random(in_bits)
    logits = list(range(nx.SIGMOID_IN.min_int, nx.SIGMOID_IN.max_int + 1))
    rng.shuffle(logits)
    dut = Sigmoid(in_bits)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    checkers = [StreamChecker(dut.i_logit, name="i_logit"),
                StreamChecker(dut.o_score, name="o_score")]
    for c in checkers:
        sim.add_process(c.process)
    got = []

    async def producer(ctx):
        await stream_put_all(ctx, dut.i_logit,
                             [{"data": v, "last": i % 3 == 0} for i, v in enumerate(logits)],
                             rng=rng, p_idle=p)

    async def consumer(ctx):
        got.extend(await stream_get_n(ctx, dut.o_score, len(logits), rng=rng, p_stall=p))

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    assert [g.score for g in got] == [int(s) for s in nx.sigmoid_lookup(np.array(logits))]
    assert [g.last for g in got] == [int(i % 3 == 0) for i in range(len(logits))]


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_sigmoid_rejects_narrow_input():
    with pytest.raises(ValueError, match="not 8"):
        Sigmoid(8)
    gc.collect()  # the rejected half-built component warns when collected: inside the filter
