"""cocotb 2.x test of the tiny counter in tests/test_toolchain.py (Icarus and Verilator).

It drives the clock, resets, counts for a known number of cycles, checks the count and writes what
it read to $COUNTER_OUT, so the pytest side can check that the simulation really ran.
"""

import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

ENABLED_CYCLES = 37


@cocotb.test()
async def counts_enabled_cycles(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.en.value = 0
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    await ReadOnly()
    assert int(dut.count.value) == 0, f"count after reset is {int(dut.count.value)}"

    await RisingEdge(dut.clk)  # leave the read-only phase before writing
    dut.en.value = 1
    await ClockCycles(dut.clk, ENABLED_CYCLES)
    dut.en.value = 0
    await ClockCycles(dut.clk, 5)  # disabled: the count must hold
    await ReadOnly()
    count = int(dut.count.value)
    dut._log.info("count = %d", count)
    out = os.environ.get("COUNTER_OUT")
    if out:
        with open(out, "w") as f:
            f.write(f"{count}\n")
    assert count == ENABLED_CYCLES, f"count {count} != {ENABLED_CYCLES}"
