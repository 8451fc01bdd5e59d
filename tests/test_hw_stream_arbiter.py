import random

import pytest
from amaranth.sim import Simulator

from recfabric.hw.stream_arbiter import StreamArbiter
from recfabric.sim.stream_testing import StreamChecker, stream_get, stream_put


@pytest.mark.parametrize("n", [1, 3])
def test_every_item_once_and_each_input_in_order(n):
    rng = random.Random(n)
    dut = StreamArbiter(16, n)
    items = {k: [k << 8 | i for i in range(20)] for k in range(n)}
    got = []
    checker = StreamChecker(dut.o, name="o")

    def producer(k):
        async def bench(ctx):
            for v in items[k]:
                await stream_put(ctx, dut.i[k], v, rng=rng, p_idle=0.4)
        return bench

    async def consumer(ctx):
        for _ in range(20 * n):
            got.append(await stream_get(ctx, dut.o, rng=rng, p_stall=0.4))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(checker.process)
    for k in range(n):
        sim.add_testbench(producer(k))
    sim.add_testbench(consumer)
    sim.run()
    assert sorted(got) == sorted(v for vs in items.values() for v in vs)
    for k in range(n):
        assert [v for v in got if v >> 8 == k] == items[k]


def test_bad_count_rejected():
    with pytest.raises(TypeError, match="not 0"):
        StreamArbiter(8, 0)
