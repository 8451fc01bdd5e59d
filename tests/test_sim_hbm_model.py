"""The HBM read-slave model: data, latency, limits, error injection and its protocol checker."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from recfabric.hw.axi4 import AXI4Signature, AXIBurst, AXIResp
from recfabric.sim.hbm_model import AXIProtocolError, HBMModel

BEAT = 8  # 64-bit bus


def _bus():
    return AXI4Signature(addr_width=32, data_width=64, id_width=2, write=False).create()


def _run(bus, model, master):
    m = Module()
    m.d.sync += Signal().eq(1)  # a sync domain to clock the testbenches
    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(model.process, background=True)
    sim.add_testbench(master)

    async def watchdog(ctx):
        await ctx.delay(1e-8 * 2000)
        raise TimeoutError("HBM model test did not finish in 2000 cycles")

    sim.add_testbench(watchdog, background=True)
    sim.run()


async def _ar(ctx, bus, addr, beats, arid=0, burst=AXIBurst.INCR, size=3):
    ctx.set(bus.araddr, addr)
    ctx.set(bus.arlen, beats - 1)
    ctx.set(bus.arsize, size)
    ctx.set(bus.arburst, burst)
    ctx.set(bus.arid, arid)
    ctx.set(bus.arvalid, 1)
    while True:  # not .until(): an aborted simulation would leave its generator open
        _, _, ready = await ctx.tick().sample(bus.arready)
        if ready:
            break
    ctx.set(bus.arvalid, 0)


def _memory(n=1 << 14, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8)


def _word(mem, addr, base):
    return int.from_bytes(mem[addr - base:addr - base + BEAT].tobytes(), "little")


def test_data_latency_and_order():
    bus, mem, base = _bus(), _memory(), 0x4000
    model = HBMModel(bus, mem, base=base, latency=7)
    reads = [(0x4000, 1, 0), (0x4100, 3, 1), (0x4ff0, 2, 2)]
    got = []

    async def master(ctx):
        ctx.set(bus.rready, 1)
        for addr, beats, arid in reads:
            await _ar(ctx, bus, addr, beats, arid)
        t0 = 3  # the first AR handshake was at edge 1; its beat is offered 7 cycles later
        cycle = 0
        while len(got) < 6:
            _, _, v, d, i, r, last = await ctx.tick().sample(bus.rvalid, bus.rdata, bus.rid,
                                                            bus.rresp, bus.rlast)
            cycle += 1
            if v:
                got.append((cycle + t0, d, i, r, last))

    _run(bus, model, master)
    want = [(_word(mem, a + k * BEAT, base), i, 0, int(k == n - 1))
            for a, n, i in reads for k in range(n)]
    assert [g[1:] for g in got] == want
    assert got[0][0] == 1 + 7  # offered `latency` cycles after the AR handshake edge
    assert model.stats.reads == 3 and model.stats.beats == 6


def test_outstanding_limit_and_bandwidth():
    bus, mem = _bus(), _memory()
    model = HBMModel(bus, mem, latency=3, max_outstanding=2, beats_per_cycle=0.5)
    handshakes, beats = [], []

    async def master(ctx):
        ctx.set(bus.rready, 1)
        cycle = 0
        ctx.set(bus.arlen, 3)
        ctx.set(bus.arsize, 3)
        ctx.set(bus.arburst, AXIBurst.INCR)
        ctx.set(bus.arvalid, 1)
        while len(beats) < 16:
            _, _, av, ar, rv = await ctx.tick().sample(bus.arvalid, bus.arready, bus.rvalid)
            cycle += 1
            if av and ar:
                handshakes.append(cycle)
                if len(handshakes) == 4:
                    ctx.set(bus.arvalid, 0)
            if rv:
                beats.append(cycle)

    _run(bus, model, master)
    assert model.stats.max_inflight == 2
    gaps = {b - a for a, b in zip(beats, beats[1:])}
    assert min(gaps) == 2  # half a beat per cycle at most


def test_error_injection_and_decerr_outside_memory():
    bus, mem = _bus(), _memory(4096)
    model = HBMModel(bus, mem, latency=10,
                     error_fn=lambda addr, arid, i: AXIResp.SLVERR if i == 1 else None)
    resps = []

    async def master(ctx):
        ctx.set(bus.rready, 1)
        for addr in (0, 8, 4096):
            await _ar(ctx, bus, addr, 2)
        while len(resps) < 6:
            _, _, v, r, d = await ctx.tick().sample(bus.rvalid, bus.rresp, bus.rdata)
            if v:
                resps.append((r, d))

    _run(bus, model, master)
    assert [r for r, _ in resps] == [0, 0, AXIResp.SLVERR, AXIResp.SLVERR, AXIResp.DECERR,
                                     AXIResp.DECERR]
    assert resps[5][1] == 0 and model.stats.error_reads == 2


@pytest.mark.parametrize("case, message", [
    ("cross4k", "crosses a 4 KiB boundary"),
    ("wrap", "burst type 2 not allowed"),
    ("size", "wider than the 64-bit bus"),
    ("unaligned", "not aligned"),
    ("allowed", "outside the allowed ranges"),
])
def test_checker_rejects_bad_bursts(case, message):
    bus = _bus()
    model = HBMModel(bus, _memory(), latency=2, allowed=[(0, 0x1800)])
    args = {"cross4k": (0xFF8, 2), "wrap": (0, 2, 0, AXIBurst.WRAP), "size": (0, 1, 0,
            AXIBurst.INCR, 4), "unaligned": (4, 1), "allowed": (0x17F8, 2)}[case]

    async def master(ctx):
        await _ar(ctx, bus, *args)
        await ctx.tick()

    with pytest.raises(AXIProtocolError, match=message):
        _run(bus, model, master)


@pytest.mark.parametrize("case", ["drop", "change"])
def test_checker_rejects_unstable_ar(case):
    bus = _bus()
    model = HBMModel(bus, _memory(), latency=2, p_ar_stall=0.99, rng=random.Random(0))

    async def master(ctx):
        ctx.set(bus.arburst, AXIBurst.INCR)
        ctx.set(bus.arsize, 3)
        for i in range(50):
            ctx.set(bus.arvalid, 1 if case == "change" or i % 2 == 0 else 0)
            ctx.set(bus.araddr, 8 * i if case == "change" else 0)
            await ctx.tick()

    with pytest.raises(AXIProtocolError, match="dropped" if case == "drop" else "changed"):
        _run(bus, model, master)


def test_constructor_errors_name_the_value():
    with pytest.raises(ValueError, match="Latency must be an integer >= 1, not 0"):
        HBMModel(_bus(), _memory(), latency=0)
    with pytest.raises(ValueError, match=r"Bandwidth must be in \(0, 1\] beats per cycle, not 2"):
        HBMModel(_bus(), _memory(), beats_per_cycle=2)
