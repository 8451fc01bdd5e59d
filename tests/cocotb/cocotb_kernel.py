"""cocotb test of the generated kernel Verilog (Vitis port names), as a Vitis shell would drive it.

Control through cocotbext-axi's AxiLiteMaster on ``s_axi_control``; every AXI master served by
cocotbext-axi RAM models (AxiRamRead / AxiRamWrite) with random pause generators. The host side
(kernel program, request records, expected scores) was prepared by the pytest launcher with the
production host code and is passed in a JSON file (``KERNEL_CASE``).
"""

import json
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, Timer
from cocotbext.axi import (
    AxiLiteBus,
    AxiLiteMaster,
    AxiRamRead,
    AxiRamWrite,
    AxiReadBus,
    AxiWriteBus,
)


def _pause(rng, p):
    while True:
        yield rng.random() < p


@cocotb.test()
async def kernel_scores_match_golden(dut):
    with open(os.environ["KERNEL_CASE"]) as f:
        case = json.load(f)
    rng = random.Random(case["seed"])
    p = case["p_stall"]
    # Reset first and let it settle, so that the models start in reset and see it released.
    dut.ap_rst_n.value = 0
    await Timer(1, unit="ns")
    cocotb.start_soon(Clock(dut.ap_clk, 4, unit="ns").start())
    rams = {}
    for name, image in case["read_images"].items():
        ram = AxiRamRead(AxiReadBus.from_prefix(dut, f"m_axi_{name}"), dut.ap_clk, dut.ap_rst_n,
                         reset_active_level=False, size=case["ram_size"])
        ram.write(case["base"], bytes.fromhex(image))
        ram.ar_channel.set_pause_generator(_pause(rng, p))
        ram.r_channel.set_pause_generator(_pause(rng, p))
        rams[name] = ram
    results = AxiRamWrite(AxiWriteBus.from_prefix(dut, "m_axi_results"), dut.ap_clk,
                          dut.ap_rst_n, reset_active_level=False, size=case["ram_size"])
    results.aw_channel.set_pause_generator(_pause(rng, p))
    results.w_channel.set_pause_generator(_pause(rng, p))
    ctrl = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.ap_clk, dut.ap_rst_n,
                         reset_active_level=False)
    # Icarus evaluates an `always @*` block only when one of its inputs changes, and a value
    # set at time 0 makes no event: toggle every handshake input once in reset so that no
    # combinational output stays X.
    master_in = ("_arready", "_rvalid", "_awready", "_wready", "_bvalid")
    slave_in = ("_arvalid", "_rready", "_awvalid", "_wvalid", "_bready")
    inputs = [h for h in dut if (h._name.startswith("m_axi") and h._name.endswith(master_in))
              or (h._name.startswith("s_axi") and h._name.endswith(slave_in))]
    for v in (1, 0):
        for h in inputs:
            h.value = v
        await RisingEdge(dut.ap_clk)
    await ClockCycles(dut.ap_clk, 4)
    dut.ap_rst_n.value = 1
    await ClockCycles(dut.ap_clk, 2)

    regs = case["regs"]

    assert await ctrl.read_dword(regs["id"]) == case["kernel_id"]
    assert await ctrl.read_dword(regs["config_hash"]) == case["config_hash"]
    out = {"runs": []}
    for run in case["runs"]:
        for offset in case["pointer_args"].values():
            await ctrl.write_qword(offset, case["base"])
        await ctrl.write_dword(case["batch_offset"], run["batch"])
        await ctrl.write_dword(case["flags_offset"], run["flags"])
        rams["requests"].write(case["base"], bytes.fromhex(run["requests"]))
        results.write(case["base"], bytes(run["result_bytes"]))
        t0 = time.perf_counter()
        start_time = cocotb.utils.get_sim_time("ns")
        await ctrl.write_dword(0x00, 1)
        polls = 0
        while not (await ctrl.read_dword(0x00)) & 0x2:
            await ClockCycles(dut.ap_clk, 16)
            polls += 1
            if polls > case["max_polls"]:
                status = {n: await ctrl.read_dword(off) for n, off in regs.items()}
                raise AssertionError(f"kernel not done after {polls} polls; status {status}")
        wall = time.perf_counter() - t0
        cycles = (cocotb.utils.get_sim_time("ns") - start_time) / 4
        raw = results.read(case["base"], run["result_bytes"])
        word = case["word_bytes"]
        scores = [raw[i * word + 2] | raw[i * word + 3] << 8 for i in range(run["batch"])]
        status = [raw[i * word] for i in range(run["batch"])]
        block = results.read(case["base"] + run["status_offset"], 64)
        words = [int.from_bytes(block[4 * i:4 * i + 4], "little") for i in range(16)]
        reg_words = [await ctrl.read_dword(off) for off in case["status_offsets"]]
        out["runs"].append({"scores": scores, "status": status, "block": words,
                            "registers": reg_words, "cycles": cycles, "wall": wall})
    with open(os.environ["KERNEL_OUT"], "w") as f:
        json.dump(out, f)
