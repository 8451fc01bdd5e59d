"""The generated kernel Verilog under Icarus and Verilator, driven like a Vitis shell drives it.

The launcher prepares the run with the production host code (compiler, the kernel program it wrote,
wire format, golden model); tests/cocotb/cocotb_kernel.py drives the kernel with cocotbext-axi
(AxiLiteMaster on the control port, RAM models with random back-pressure on every master), and the
scores must equal the golden model's with ``==``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.steps import compile_model
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.runtime.wire_format import RequestLayout, pack_float_requests
from recfabric.hw.config import get_preset
from recfabric.hw.kernel import generate_verilog
from recfabric.hw.register_map import (
    KERNEL_ID,
    NO_ERROR_REQUEST,
    STATUS_BLOCK_BYTES,
    STATUS_REGS,
    kernel_args,
    status_block_offset,
)
from recfabric.sim.cocotb_launch import require_simulator, run_cocotb
from recfabric.sim.verilator_env import have_icarus, have_verilator, verilator_env

COCOTB_DIR = Path(__file__).resolve().parent / "cocotb"
BASE = 0x1000


def _case(tmp_path, batches, p_stall, seed=0, config="tiny", model="tiny"):
    cfg = get_preset(config)
    spec = get_model(model)
    d = tmp_path / "model"
    compile_model(spec, random_weights(spec, seed=seed), cfg, d, seed=seed)
    cm = load_compiled(d)
    program = cm.program.patched({ch: BASE for ch in range(cfg.mem_channels)})
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


def _run(simulator, tmp_path, monkeypatch, batches=(4, 3), p_stall=0.3, transform=None,
         config="tiny", model="tiny", source=None, toplevel="recfabric_kernel"):
    """The kernel run on ``simulator``; ``transform`` rewrites its Verilog first. ``source``:
    a Verilog file to run as it is (top module ``toplevel``) instead of generating it."""
    cfg, case, expected, order = _case(tmp_path, batches, p_stall, config=config, model=model)
    src = source
    if src is None:
        src = tmp_path / "recfabric_kernel.v"
        text = generate_verilog(cfg)
        src.write_text(transform(text) if transform else text)
    out = tmp_path / "out.json"
    monkeypatch.setenv("KERNEL_CASE", str(case))
    monkeypatch.setenv("KERNEL_OUT", str(out))
    monkeypatch.syspath_prepend(str(COCOTB_DIR))
    run_cocotb(simulator, sources=[src], toplevel=toplevel, test_module="cocotb_kernel",
               build_dir=tmp_path / f"build_{simulator}", expect=["kernel_scores_match_golden"])
    got = json.loads(out.read_text())
    for run, want, batch in zip(got["runs"], expected, batches):
        assert run["scores"] == want
        assert run["status"] == [1] * batch
        block = dict(zip(order, run["block"]))
        regs = dict(zip(order, run["registers"]))
        assert block["requests_done"] == batch and block["errors"] == 0
        assert block["config_hash"] == cfg.config_hash and block["id"] == KERNEL_ID
        assert block["first_error_request"] == NO_ERROR_REQUEST
        for name in ("requests_done", "lookups_issued", "errors", "first_error_request",
                     "cycles_lo", "cycles_hi"):  # the block equals the registers
            assert regs[name] == block[name], name
    return got


@pytest.mark.cocotb
def test_kernel_verilator(tmp_path, monkeypatch):
    for k, v in verilator_env().items():
        monkeypatch.setenv(k, v)
    require_simulator(have_verilator(), "Verilator >= 5.036")
    _run("verilator", tmp_path, monkeypatch)


def _time0_audit(tmp_path, monkeypatch, **kw):
    """The kernel under Icarus (``-g2012``) as ``generate_verilog`` emits it, instrumented by
    sim/icarus_time0.py: bit-exact as in ``_run``, and no register holds an X bit at the end.
    Returns the audit's report (the ``always @*`` blocks that never ran, per instance)."""
    from recfabric.sim.icarus_time0 import REPORT_FILE, instrument, parse_report
    counts = {}

    def audit(text):
        out, blocks = instrument(text)
        counts.update(blocks)
        return out

    _run("icarus", tmp_path, monkeypatch, transform=audit, **kw)
    assert sum(counts.values()) > 50  # the instrumentation found the kernel's always @* blocks
    report = parse_report((tmp_path / "build_icarus" / REPORT_FILE).read_text())
    print("always @* blocks that never ran:", report.never_ran)
    assert report.x_registers == []
    return report


@pytest.mark.cocotb
def test_kernel_icarus(tmp_path, monkeypatch):
    """The kernel under Icarus, audited for the time-0 hazard (sim/icarus_time0.py). The
    instrumentation only adds flag writes that nothing reads and a ``final`` report: the run is
    the emitted Verilog's. With the trigger fired (``generate_verilog`` applies
    ``hw/time0.fire_trigger``) every ``always @*`` block runs, including the dispatcher's
    constant ``lk.desc`` (``always @* lk[..] = 0``), which never ran before the fix."""
    require_simulator(have_icarus(), "Icarus Verilog >= 11")
    report = _time0_audit(tmp_path, monkeypatch)
    assert report.never_ran == {}


@pytest.mark.slow  # ~2 min: the small kernel under Icarus, after a `recfabric build`
@pytest.mark.cocotb
def test_small_kernel_icarus_as_built(tmp_path, monkeypatch):
    """The `small` kernel's Verilog exactly as ``recfabric build`` writes it, under Icarus
    (cocotb's ``-g2012``), not instrumented: both runs bit-exact ``==`` golden. Before the
    trigger was fired in ``generate_verilog`` this run hung: its first run stopped with
    requests_done 0 after the lookups (cycles 6,662, 401 polls), because blocks whose inputs
    keep their initial value for the run (the interaction's ``mode``, the kernel's bottom-MLP
    enable, the MLP drains' and the bottom writer's selects) never ran, and their X reached the
    interaction's registers (README "Icarus and the time-0 trigger")."""
    from recfabric.host.cli.main import main
    from recfabric.hw.vitis_package import VERILOG_FILE, kernel_name
    require_simulator(have_icarus(), "Icarus Verilog >= 11")
    assert main(["build", "--config", "small", "-o", str(tmp_path / "build")]) == 0
    _run("icarus", tmp_path, monkeypatch, config="small", model="small", batches=(2, 1),
         source=tmp_path / "build" / VERILOG_FILE, toplevel=kernel_name(get_preset("small")))


@pytest.mark.slow  # ~2 min: the small kernel under Icarus, instrumented
@pytest.mark.cocotb
def test_small_kernel_icarus_audit(tmp_path, monkeypatch):
    """The audit of the `small` kernel as generated: every ``always @*`` block ran, no X."""
    require_simulator(have_icarus(), "Icarus Verilog >= 11")
    report = _time0_audit(tmp_path, monkeypatch, config="small", model="small", batches=(2, 1))
    assert report.never_ran == {}
