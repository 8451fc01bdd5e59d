"""Launch the cocotb test of EmbeddingLookupUnit's generated Verilog (cocotbext-axi AxiRamRead).

Runs tests/cocotb/cocotb_embedding_lookup.py under Icarus and Verilator. Outside CI a missing
simulator skips; under CI (CI=true) it fails, as in tests/test_toolchain.py.
"""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from amaranth.back import verilog

from recfabric.hw.embedding_lookup import EmbeddingLookupUnit
from recfabric.sim.verilator_env import have_icarus, have_verilator, verilator_env

COCOTB_DIR = Path(__file__).resolve().parent / "cocotb"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

PARAMS = dict(data_bits=16, max_dim=24, data_width=128, max_outstanding=16, tag_bits=4,
              slot_bits=2, n_desc=3, max_bag=4)


def _run(simulator, tmp_path, monkeypatch, bags, seed=1, p=0.3):
    from cocotb_tools.runner import get_runner

    unit = EmbeddingLookupUnit(**PARAMS)
    src = tmp_path / "elu_top.v"
    src.write_text(verilog.convert(unit, name="elu_top", emit_src=False))
    out = tmp_path / "result.json"
    monkeypatch.setenv("ELU_PARAMS", json.dumps({**PARAMS, "seed": seed, "bags": bags, "p": p}))
    monkeypatch.setenv("ELU_OUT", str(out))
    monkeypatch.syspath_prepend(str(COCOTB_DIR))
    build_dir = tmp_path / f"build_{simulator}"
    runner = get_runner(simulator)
    t0 = time.perf_counter()
    # Amaranth's Verilog trips Verilator's width/unused lint warnings; they are not errors.
    build_args = ["-Wno-fatal", "-Wno-lint"] if simulator == "verilator" else []
    runner.build(sources=[src], hdl_toplevel="elu_top", build_dir=build_dir,
                 timescale=("1ns", "1ps"), always=True, build_args=build_args)
    results = runner.test(test_module="cocotb_embedding_lookup", hdl_toplevel="elu_top",
                          build_dir=build_dir, test_dir=build_dir, timescale=("1ns", "1ps"))
    print(f"{simulator}: {time.perf_counter() - t0:.1f} s")
    cases = ET.parse(results).getroot().findall(".//testcase")
    assert [c.get("name") for c in cases] == ["pooled_vectors_match_spec"]
    assert all(c.find("failure") is None and c.find("error") is None for c in cases)
    result = json.loads(out.read_text())
    assert result["equal"] is True and result["bags"] == bags and result["idle"] == 1
    return result


def _missing(what):
    if IN_CI:
        pytest.fail(f"{what} is not set up: run `make install`")
    pytest.skip(f"{what} is not set up: run `make install`")


@pytest.mark.cocotb
def test_embedding_lookup_icarus(tmp_path, monkeypatch):
    if not have_icarus():
        _missing("Icarus Verilog >= 11")
    _run("icarus", tmp_path, monkeypatch, bags=60)


@pytest.mark.cocotb
def test_embedding_lookup_verilator(tmp_path, monkeypatch):
    for k, v in verilator_env().items():
        monkeypatch.setenv(k, v)
    if not have_verilator():
        _missing("Verilator >= 5.036")
    _run("verilator", tmp_path, monkeypatch, bags=150)


@pytest.mark.cocotb
@pytest.mark.slow
def test_embedding_lookup_verilator_soak(tmp_path, monkeypatch):
    for k, v in verilator_env().items():
        monkeypatch.setenv(k, v)
    if not have_verilator():
        _missing("Verilator >= 5.036")
    _run("verilator", tmp_path, monkeypatch, bags=3000, seed=9)
