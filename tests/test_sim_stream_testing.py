"""Tests of sim/stream_testing.py: the helpers move data through a FIFO and catch violations."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from recfabric.sim.stream_testing import (
    StreamChecker,
    StreamProtocolError,
    payload_value,
    stream_get_n,
    stream_put_all,
)

PAIR = data.StructLayout({"a": 8, "b": data.ArrayLayout(4, 2)})


class _Fifo(wiring.Component):
    i_x: In(stream.Signature(PAIR))
    o_x: Out(stream.Signature(PAIR))

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=PAIR.size, depth=4)
        m.d.comb += [
            fifo.w_data.eq(self.i_x.payload), fifo.w_en.eq(self.i_x.valid),
            self.i_x.ready.eq(fifo.w_rdy),
            self.o_x.payload.eq(fifo.r_data), self.o_x.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o_x.ready),
        ]
        return m


@pytest.mark.parametrize("seed", [0, 1])
def test_put_get_through_fifo(seed):
    rng = random.Random(seed)
    items = [{"a": rng.randrange(256), "b": [rng.randrange(16), rng.randrange(16)]}
             for _ in range(40)]
    dut = _Fifo()
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    checks = [StreamChecker(dut.i_x, name="i_x"), StreamChecker(dut.o_x, name="o_x", record=True)]
    for c in checks:
        sim.add_process(c.process)
    got = []

    async def producer(ctx):
        await stream_put_all(ctx, dut.i_x, items, rng=rng, p_idle=0.4)

    async def consumer(ctx):
        got.extend(await stream_get_n(ctx, dut.o_x, len(items), rng=rng, p_stall=0.4))

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    assert [payload_value(g) for g in got] == items
    assert checks[0].count == checks[1].count == len(items)
    assert [PAIR.const(i).as_value().value for i in items] == checks[1].transfers


def test_checker_catches_dropped_valid_and_changed_payload():
    s = stream.Signature(8).create()
    for bad in ("drop", "change"):
        m = Module()
        m.d.sync += Signal().eq(1)  # the simulation needs a sync domain
        sim = Simulator(m)
        sim.add_clock(1e-8, domain="sync")
        checker = StreamChecker(s, name="s")
        sim.add_process(checker.process)

        async def tb(ctx, bad=bad):
            ctx.set(s.payload, 1)
            ctx.set(s.valid, 1)
            await ctx.tick()
            if bad == "drop":
                ctx.set(s.valid, 0)
            else:
                ctx.set(s.payload, 2)
            await ctx.tick()
            await ctx.tick()

        sim.add_testbench(tb)
        with pytest.raises(StreamProtocolError, match="valid dropped" if bad == "drop"
                           else "payload changed"):
            sim.run()
