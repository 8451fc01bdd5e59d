"""hw/arith.py: the pipelined bit count (the kernel's lookup counter) against a Python model,
and carry_select_add against ``+``, in simulation."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from recfabric.hw.arith import PIPELINED_COUNT_LATENCY, carry_select_add, pipelined_count


@pytest.mark.parametrize("n, group", [(1, 6), (5, 6), (36, 6), (37, 6), (36, 4), (13, 1)])
def test_pipelined_count_counts_set_bits_two_cycles_later_and_clears(n, group):
    m = Module()
    bits_, clear_ = Signal(n), Signal()
    count = pipelined_count(m, bits_, clear=clear_, group=group)
    rng = random.Random(n * 100 + group)
    inputs = [(rng.getrandbits(n), rng.random() < 0.1) for _ in range(300)]
    got = []

    async def bench(ctx):
        for bits, clear in inputs:
            ctx.set(bits_, bits)
            ctx.set(clear_, clear)
            await ctx.tick()
            got.append(ctx.get(count))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    # the model: after the tick of cycle t the count shows cycle t - LATENCY + 1's bits, or 0
    # when a clear came in that cycle or the one after it (both stages are zeroed)
    lat = PIPELINED_COUNT_LATENCY
    want = []
    for t in range(len(inputs)):
        src = t - lat + 1
        if src < 0 or any(inputs[s][1] for s in range(src, t + 1)):
            want.append(0)
        else:
            want.append(bin(inputs[src][0]).count("1"))
    assert got == want
    assert max(got) > 0


def test_pipelined_count_refuses_a_bad_group():
    m = Module()
    with pytest.raises(ValueError, match="group must be at least 1, not 0"):
        pipelined_count(m, Signal(4), clear=Signal(), group=0)
    Simulator(m)  # the module is used (no UnusedElaboratable warning)


@pytest.mark.parametrize("width, split", [(64, None), (32, 5), (8, 7), (8, 0)])
def test_carry_select_add_equals_plus(width, split):
    a, b = Signal(width), Signal(width)
    m = Module()
    s = Signal(width)
    m.d.comb += s.eq(carry_select_add(a, b, width, split))
    rng = random.Random(width)
    cases = [(0, 0), (2**width - 1, 1), (2**width - 1, 2**width - 1)] + \
        [(rng.getrandbits(width), rng.getrandbits(width)) for _ in range(200)]
    bad = []

    async def bench(ctx):
        for x, y in cases:
            ctx.set(a, x)
            ctx.set(b, y)
            if ctx.get(s) != (x + y) % 2**width:
                bad.append((x, y, ctx.get(s)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert bad == []
