"""Waveforms: a failing simulation test writes a VCD and names it; `sim` backend `waves=`."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_FAILING = '''
from amaranth import Module, Signal
from amaranth.sim import Simulator

def test_counter_is_wrong():
    m = Module()
    count = Signal(4)
    m.d.sync += count.eq(count + 1)
    sim = Simulator(m)
    sim.add_clock(1e-6)
    seen = []
    async def bench(ctx):
        for _ in range(3):
            await ctx.tick()
        seen.append(ctx.get(count))
    sim.add_testbench(bench)
    sim.run()
    assert seen == [4]  # wrong on purpose: the counter is at 3

def test_passing_needs_no_waves():
    m = Module()
    sim = Simulator(m)
    sim.run()
'''


def test_failing_simulation_writes_a_vcd_and_prints_its_path(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_fail.py").write_text(_FAILING)
    env = {k: v for k, v in os.environ.items() if k != "RECFABRIC_NO_WAVES"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p",
                        "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    vcd = tmp_path / "build/waves/test_fail.py_test_counter_is_wrong/sim0.vcd"
    assert f"waveform (VCD): {vcd}" in r.stdout
    assert "waveforms of failed simulations" in r.stdout
    text = vcd.read_text()
    assert "$var" in text and "count" in text
    assert not list((tmp_path / "build/waves").glob("*passing*"))


def test_demo_refuses_waves_off_the_sim_backend(capsys):
    from recfabric.host.cli import main
    assert main(["demo", "--backend", "reference", "--waves", "run.vcd"]) == 2
    assert "waveforms come from the sim backend" in capsys.readouterr().err


@pytest.mark.slow  # ~30 s: the tiny kernel with every signal traced
def test_sim_backend_writes_the_run_as_vcd(tmp_path):
    from recfabric.host.compiler.steps import compile_model
    from recfabric.host.model.synthetic import synthetic_batch
    from recfabric.host.model.weights import random_weights
    from recfabric.host.model.zoo import get_model
    from recfabric.host.runtime.accelerator import Accelerator
    from recfabric.hw.config import get_preset
    spec, cfg = get_model("tiny"), get_preset("tiny")
    compile_model(spec, random_weights(spec), cfg, tmp_path / "m")
    dense, sparse = synthetic_batch(spec, 2, seed=1)
    vcd = tmp_path / "w" / "run.vcd"
    with Accelerator.open("sim", cfg, waves=vcd) as acc:
        acc.load(tmp_path / "m")
        acc.infer(dense, sparse)
        cycles = acc.device.cycles
    text = vcd.read_text()
    assert "s_axi__araddr" in text and "interrupt" in text
    assert text.count("\n#") >= cycles  # a timestamp per clock edge at least
    assert vcd.with_suffix(".gtkw").exists()
