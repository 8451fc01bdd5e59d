import random

import pytest
from amaranth.sim import Simulator

from recfabric.hw.control_registers import STATUS_INPUTS, ControlRegisters
from recfabric.hw.register_map import (
    CTRL,
    CTRL_DONE,
    CTRL_IDLE,
    CTRL_READY,
    CTRL_START,
    GIE,
    IER,
    ISR,
    KERNEL_ID,
    KERNEL_VERSION,
    STATUS_REGS,
)
from recfabric.sim.axi_lite_master import AXILiteMaster


def run(dut, *benches):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for b in benches:
        sim.add_testbench(b)
    sim.run()


@pytest.mark.parametrize("p_delay", [0.0, 0.5])
def test_args_status_and_ap_ctrl_hs_handshake(p_delay):
    dut = ControlRegisters(num_table_channels=3, config_hash=0xDEADBEEF)
    rng = random.Random(7)
    master = AXILiteMaster(dut.s_axi, rng=rng, p_delay=p_delay)
    log = {}

    async def host(ctx):
        assert await master.read(ctx, STATUS_REGS["id"]) == KERNEL_ID
        assert await master.read(ctx, STATUS_REGS["version"]) == KERNEL_VERSION
        assert await master.read(ctx, STATUS_REGS["config_hash"]) == 0xDEADBEEF
        assert await master.read(ctx, CTRL) == CTRL_IDLE
        ptrs = {a.name: rng.getrandbits(64) for a in dut.args if a.is_pointer}
        for a in dut.args:
            if a.is_pointer:
                await master.write64(ctx, a.offset, ptrs[a.name])
            else:
                await master.write(ctx, a.offset, 1234)
        for a in dut.args:
            assert ctx.get(getattr(dut, f"arg_{a.name}")) == ptrs.get(a.name, 1234)
            if a.is_pointer:
                assert await master.read64(ctx, a.offset) == ptrs[a.name]
        for i, name in enumerate(STATUS_INPUTS):
            ctx.set(getattr(dut, f"status_{name}"), 1000 + i)
            assert await master.read(ctx, STATUS_REGS[name]) == 1000 + i
        await master.write(ctx, GIE, 1)
        await master.write(ctx, IER, 1)
        await master.write(ctx, CTRL, CTRL_START)
        # Started: not idle until the core says done.
        assert not (await master.read(ctx, CTRL)) & CTRL_IDLE
        assert log["started"] == 1
        while not ctx.get(dut.interrupt):
            await ctx.tick()
        ctrl = await master.read(ctx, CTRL)
        assert ctrl & (CTRL_DONE | CTRL_IDLE | CTRL_READY) == CTRL_DONE | CTRL_IDLE | CTRL_READY
        assert not ctrl & CTRL_START
        assert (await master.read(ctx, CTRL)) & CTRL_DONE == 0, "ap_done clears on read"
        assert await master.read(ctx, ISR) == 1
        await master.write(ctx, ISR, 1)  # toggle-on-write clears it
        assert await master.read(ctx, ISR) == 0
        assert not ctx.get(dut.interrupt)
        cycles = await master.read64(ctx, STATUS_REGS["cycles_lo"])
        assert cycles == log["busy_cycles"]
        assert await master.read(ctx, 0x1F0) == 0, "unmapped registers read as zero"

    async def core(ctx):
        starts = 0
        while not ctx.get(dut.start):
            await ctx.tick()
        starts += 1
        await ctx.tick()
        log["started"] = starts
        for i in range(37):
            assert not ctx.get(dut.start), "start must pulse once per ap_start"
            if i == 25:  # the status block is captured: the counter stops here
                ctx.set(dut.freeze, 1)
                log["busy_cycles"] = ctx.get(dut.cycles)
            await ctx.tick()
            ctx.set(dut.freeze, 0)
        ctx.set(dut.done, 1)
        await ctx.tick()
        ctx.set(dut.done, 0)
        assert log["busy_cycles"] == 25  # 26 cycles into the run, counted from 0

    run(dut, host, core)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bad_hash_rejected():
    with pytest.raises(ValueError, match="not -1"):
        ControlRegisters(num_table_channels=1, config_hash=-1)
