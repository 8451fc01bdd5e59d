"""Launch the cocotb test of EmbeddingLookupUnit's generated Verilog (cocotbext-axi AxiRamRead).

Runs tests/cocotb/cocotb_embedding_lookup.py under Icarus and Verilator. Outside CI a missing
simulator skips; under CI (CI=true) it fails, as in tests/test_toolchain.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from amaranth.back import verilog

from recfabric.hw.embedding_lookup import EmbeddingLookupUnit
from recfabric.hw.time0 import fire_trigger
from recfabric.sim.cocotb_launch import require_simulator, run_cocotb
from recfabric.sim.verilator_env import have_icarus, have_verilator, verilator_env

COCOTB_DIR = Path(__file__).resolve().parent / "cocotb"

PARAMS = dict(data_bits=16, max_dim=24, data_width=128, max_outstanding=16, tag_bits=4,
              slot_bits=2, n_desc=3, max_bag=4)


def _run(simulator, tmp_path, monkeypatch, bags, seed=1, p=0.3):
    unit = EmbeddingLookupUnit(**PARAMS)
    src = tmp_path / "elu_top.v"
    # as generate_verilog emits it: the time-0 trigger fired (amaranth#1629; hw/time0.py), so
    # no combinational block waits for a first event under Icarus -g2012
    src.write_text(fire_trigger(verilog.convert(unit, name="elu_top", emit_src=False)))
    out = tmp_path / "result.json"
    monkeypatch.setenv("ELU_PARAMS", json.dumps({**PARAMS, "seed": seed, "bags": bags, "p": p}))
    monkeypatch.setenv("ELU_OUT", str(out))
    monkeypatch.syspath_prepend(str(COCOTB_DIR))
    run_cocotb(simulator, sources=[src], toplevel="elu_top",
               test_module="cocotb_embedding_lookup", build_dir=tmp_path / f"build_{simulator}",
               expect=["pooled_vectors_match_spec"])
    result = json.loads(out.read_text())
    assert result["equal"] is True and result["bags"] == bags and result["idle"] == 1
    return result


@pytest.mark.cocotb
def test_embedding_lookup_icarus(tmp_path, monkeypatch):
    require_simulator(have_icarus(), "Icarus Verilog >= 11")
    _run("icarus", tmp_path, monkeypatch, bags=60)


@pytest.mark.cocotb
def test_embedding_lookup_verilator(tmp_path, monkeypatch):
    for k, v in verilator_env().items():
        monkeypatch.setenv(k, v)
    require_simulator(have_verilator(), "Verilator >= 5.036")
    _run("verilator", tmp_path, monkeypatch, bags=150)


@pytest.mark.cocotb
@pytest.mark.slow
def test_embedding_lookup_verilator_soak(tmp_path, monkeypatch):
    for k, v in verilator_env().items():
        monkeypatch.setenv(k, v)
    require_simulator(have_verilator(), "Verilator >= 5.036")
    _run("verilator", tmp_path, monkeypatch, bags=3000, seed=9)
