"""The generated kernel Verilog under Icarus and Verilator, driven like a Vitis shell drives it.

The launcher prepares the run with the production host code (compiler, kernel program, wire
format, golden model); tests/cocotb/cocotb_kernel.py drives the kernel with cocotbext-axi
(AxiLiteMaster on the control port, RAM models with random back-pressure on every master), and
the scores must equal the golden model's with ``==``.
"""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from recfabric.host.compiler import compile_model, golden_from_images, load_compiled
from recfabric.host.kernel_program import build_program
from recfabric.host.model_zoo import get_model
from recfabric.host.synthetic import synthetic_batch
from recfabric.host.weights import random_weights
from recfabric.host.wire_format import RequestLayout, pack_float_requests
from recfabric.hw.config import get_preset
from recfabric.hw.kernel import RecFabricKernel, generate_verilog
from recfabric.hw.register_map import (
    KERNEL_ID,
    STATUS_BLOCK_BYTES,
    STATUS_REGS,
    kernel_args,
    status_block_offset,
)
from recfabric.sim.verilator_env import have_icarus, have_verilator, verilator_env

COCOTB_DIR = Path(__file__).resolve().parent / "cocotb"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BASE = 0x1000


def _case(tmp_path, batches, p_stall, seed=0):
    cfg = get_preset("tiny")
    spec = get_model("tiny")
    d = tmp_path / "model"
    compile_model(spec, random_weights(spec, seed=seed), cfg, d, seed=seed)
    cm = load_compiled(d)
    kernel = RecFabricKernel(cfg).silence_unused()
    program = build_program(kernel, cm, {ch: BASE for ch in range(cfg.mem_channels)}).image()
    layout = RequestLayout.for_config(cm.quantized_model(), cfg)
    images = {"model": program.hex()}
    for ch in range(cfg.mem_channels):
        img = cm.images.get(("channel", ch))
        images[f"tables{ch}"] = (np.asarray(img).tobytes() if img is not None else b"\0").hex()
    runs, expected = [], []
    for i, batch in enumerate(batches):
        dense, sparse = synthetic_batch(spec, batch, seed=seed + 10 + i)
        req = pack_float_requests(layout, dense, sparse)
        g = golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse)
        expected.append(g.scores[:, 0].tolist())
        res = batch * layout.result_record_bytes
        runs.append({"batch": batch, "flags": 1 if i == 0 else 0, "requests": req.hex(),
                     "result_bytes": status_block_offset(res) + STATUS_BLOCK_BYTES,
                     "status_offset": status_block_offset(res)})
    images["requests"] = runs[0]["requests"]
    args = kernel_args(cfg.mem_channels)
    order = sorted(STATUS_REGS, key=STATUS_REGS.get)
    case = {
        "seed": seed, "p_stall": p_stall, "base": BASE, "ram_size": 1 << 20, "max_polls": 400,
        "read_images": images, "runs": runs, "word_bytes": layout.result_record_bytes,
        "pointer_args": {a.name: a.offset for a in args if a.is_pointer},
        "batch_offset": next(a.offset for a in args if a.name == "batch"),
        "flags_offset": next(a.offset for a in args if a.name == "flags"),
        "regs": STATUS_REGS, "status_offsets": [STATUS_REGS[n] for n in order],
        "kernel_id": KERNEL_ID, "config_hash": cfg.config_hash,
    }
    path = tmp_path / "case.json"
    path.write_text(json.dumps(case))
    return cfg, path, expected, order


def _run(simulator, tmp_path, monkeypatch, batches=(4, 3), p_stall=0.3):
    from cocotb_tools.runner import get_runner

    cfg, case, expected, order = _case(tmp_path, batches, p_stall)
    src = tmp_path / "recfabric_kernel.v"
    src.write_text(generate_verilog(cfg))
    out = tmp_path / "out.json"
    monkeypatch.setenv("KERNEL_CASE", str(case))
    monkeypatch.setenv("KERNEL_OUT", str(out))
    monkeypatch.syspath_prepend(str(COCOTB_DIR))
    build_dir = tmp_path / f"build_{simulator}"
    runner = get_runner(simulator)
    build_args = ["-Wno-fatal", "-Wno-lint"] if simulator == "verilator" else []
    t0 = time.perf_counter()
    runner.build(sources=[src], hdl_toplevel="recfabric_kernel", build_dir=build_dir,
                 timescale=("1ns", "1ps"), always=True, build_args=build_args)
    t1 = time.perf_counter()
    results = runner.test(test_module="cocotb_kernel", hdl_toplevel="recfabric_kernel",
                          build_dir=build_dir, test_dir=build_dir, timescale=("1ns", "1ps"))
    print(f"{simulator}: build {t1 - t0:.1f} s, run {time.perf_counter() - t1:.1f} s")
    cases = ET.parse(results).getroot().findall(".//testcase")
    assert [c.get("name") for c in cases] == ["kernel_scores_match_golden"]
    assert all(c.find("failure") is None and c.find("error") is None for c in cases)
    got = json.loads(out.read_text())
    for run, want, batch in zip(got["runs"], expected, batches):
        assert run["scores"] == want
        assert run["status"] == [1] * batch
        block = dict(zip(order, run["block"]))
        regs = dict(zip(order, run["registers"]))
        assert block["requests_done"] == batch and block["errors"] == 0
        assert block["config_hash"] == cfg.config_hash and block["id"] == KERNEL_ID
        for name in ("requests_done", "lookups_issued", "errors"):
            assert regs[name] == block[name], name
    return got


def _missing(what):
    if IN_CI:
        pytest.fail(f"{what} is not set up: run `make install`")
    pytest.skip(f"{what} is not set up: run `make install`")


@pytest.mark.cocotb
def test_kernel_icarus(tmp_path, monkeypatch):
    if not have_icarus():
        _missing("Icarus Verilog >= 11")
    _run("icarus", tmp_path, monkeypatch)


@pytest.mark.cocotb
def test_kernel_verilator(tmp_path, monkeypatch):
    for k, v in verilator_env().items():
        monkeypatch.setenv(k, v)
    if not have_verilator():
        _missing("Verilator >= 5.036")
    _run("verilator", tmp_path, monkeypatch)
