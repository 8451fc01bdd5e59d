"""AXI4-Lite master for Amaranth simulator testbenches (drives a kernel's ``s_axi_control``).

Write and read are one transaction at a time, with optional random delays between the address,
data and response handshakes, and the response is checked (OKAY expected).

Why a model of our own rather than cocotbext-axi's AxiLiteMaster: cocotbext-axi runs only under
cocotb, driving a Verilog simulator (Icarus, Verilator) through cocotb's scheduler; it cannot be
attached to Amaranth's Python simulator, where the block tests and the driver's ``sim`` backend run
(the ControlRegisters block test and the ``sim`` backend's register accesses). The Verilog-level
tests (``tests/cocotb/``) use cocotbext-axi itself.
"""

from __future__ import annotations

import random

__all__ = ["AXILiteMaster"]


class AXILiteMaster:
    """Testbench-side AXI4-Lite master on ``bus`` (a slave port's interface object)."""

    def __init__(self, bus, rng: random.Random | None = None, p_delay: float = 0.0):
        self.bus, self.rng, self.p_delay = bus, rng, p_delay

    async def _delay(self, ctx):
        while self.rng is not None and self.rng.random() < self.p_delay:
            await ctx.tick()

    async def write(self, ctx, addr: int, value: int, timeout: int = 1000):
        bus = self.bus
        await self._delay(ctx)
        ctx.set(bus.awaddr, addr)
        ctx.set(bus.awvalid, 1)
        ctx.set(bus.wdata, value & 0xFFFF_FFFF)
        ctx.set(bus.wstrb, 0xF)
        ctx.set(bus.wvalid, 1)
        aw_done = w_done = False
        for _ in range(timeout):
            aw_now, w_now = ctx.get(bus.awready), ctx.get(bus.wready)
            await ctx.tick()
            aw_done |= bool(aw_now)
            w_done |= bool(w_now)
            if aw_done:
                ctx.set(bus.awvalid, 0)
            if w_done:
                ctx.set(bus.wvalid, 0)
            if aw_done and w_done:
                break
        else:
            raise TimeoutError(f"AXI-Lite write to {addr:#x}: address/data not accepted")
        ctx.set(bus.bready, 1)
        for _ in range(timeout):
            valid, resp = ctx.get(bus.bvalid), ctx.get(bus.bresp)
            await ctx.tick()
            if valid:
                break
        else:
            raise TimeoutError(f"AXI-Lite write to {addr:#x}: no response")
        ctx.set(bus.bready, 0)
        if resp != 0:
            raise AssertionError(f"AXI-Lite write to {addr:#x} answered {resp}, not OKAY")

    async def read(self, ctx, addr: int, timeout: int = 1000) -> int:
        bus = self.bus
        await self._delay(ctx)
        ctx.set(bus.araddr, addr)
        ctx.set(bus.arvalid, 1)
        for _ in range(timeout):
            ready = ctx.get(bus.arready)
            await ctx.tick()
            if ready:
                break
        else:
            raise TimeoutError(f"AXI-Lite read of {addr:#x}: address not accepted")
        ctx.set(bus.arvalid, 0)
        await self._delay(ctx)
        ctx.set(bus.rready, 1)
        for _ in range(timeout):
            valid, data, resp = ctx.get(bus.rvalid), ctx.get(bus.rdata), ctx.get(bus.rresp)
            await ctx.tick()
            if valid:
                break
        else:
            raise TimeoutError(f"AXI-Lite read of {addr:#x}: no data")
        ctx.set(bus.rready, 0)
        if resp != 0:
            raise AssertionError(f"AXI-Lite read of {addr:#x} answered {resp}, not OKAY")
        return data

    async def write64(self, ctx, addr: int, value: int):
        await self.write(ctx, addr, value & 0xFFFF_FFFF)
        await self.write(ctx, addr + 4, value >> 32)

    async def read64(self, ctx, addr: int) -> int:
        return await self.read(ctx, addr) | (await self.read(ctx, addr + 4)) << 32
