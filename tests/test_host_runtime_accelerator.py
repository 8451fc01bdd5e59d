"""Driver end to end: compile, load, infer on the reference, the cycle-accurate sim and the xrt
(stand-in) backends; the counters mean what the kernel's mean on every backend."""

import sys
import time

import numpy as np
import pytest

from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.steps import compile_model
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.runtime.accelerator import Accelerator, Buffer, DeviceError, KernelError
from recfabric.hw.config import get_preset
from recfabric.hw.register_map import ERROR_NO_PROGRAM, ERROR_PROGRAM, NO_ERROR_REQUEST


def compiled(tmp_path, model, config, seed=0):
    spec = get_model(model)
    d = tmp_path / f"{model}-{config}"
    compile_model(spec, random_weights(spec, seed=seed), get_preset(config), d, seed=seed)
    return spec, d, load_compiled(d)


def golden(cm, dense, sparse):
    return golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse).scores


def test_reference_backend_equals_golden(tmp_path):
    spec, d, cm = compiled(tmp_path, "small", "small")
    dense, sparse = synthetic_batch(spec, 33, seed=3)
    with Accelerator.open("reference", "small") as acc:
        acc.load(d)
        r = acc.infer(dense, sparse)
    assert np.array_equal(r.scores, golden(cm, dense, sparse))
    assert r.counters["requests_done"] == 33
    assert r.counters["lookups_issued"] == _kernel_lookups(cm, sparse)


def _kernel_lookups(cm, sparse):
    """The kernel's lookups_issued, counted from the plan: per request and table group, one
    lookup per ID of a bag (an empty bag still issues one EMPTY lookup), one per merged pair."""
    n = 0
    for g in cm.plan.groups:
        if len(g.features) > 1:
            n += sparse[g.features[0]].batch
        else:
            n += int(np.maximum(sparse[g.features[0]].lengths, 1).sum())
    return n


def test_reference_counts_lookups_as_the_kernel_does(tmp_path):
    """A merged pair is one lookup, an empty bag one EMPTY lookup (hw/lookup_dispatcher.py)."""
    spec = ModelSpec("pairs", sparse=(SparseFeature("a", 10, 4), SparseFeature("b", 12, 4),
                                      SparseFeature("m", 30, 8, bag=3)), dense=2, top_mlp=(8, 1))
    cfg = get_preset("tiny").replace(mem_channels=1, onchip_units=0)
    d = tmp_path / "pairs"
    compile_model(spec, random_weights(spec, 3), cfg, d, calib_batch=64)
    cm = load_compiled(d)
    assert any(len(g.features) == 2 for g in cm.plan.groups)
    dense, sparse = synthetic_batch(spec, 9, seed=4)
    sparse[2].lengths[:3] = 0  # three empty bags
    with Accelerator.open("reference", cfg) as acc:
        acc.load(d)
        r = acc.infer(dense, sparse)
    want = 9 + int(np.maximum(sparse[2].lengths, 1).sum())  # the pair, then the bag
    assert r.counters["lookups_issued"] == want == _kernel_lookups(cm, sparse)
    assert np.array_equal(r.scores, golden(cm, dense, sparse))


def test_reference_follows_the_run_protocol(tmp_path):
    """As the kernel (docs/kernel.md, "Run protocol"; tests/test_hw_kernel_protocol.py on sim):
    no first error request on a clean run; a reset erases the program, a run without one writes
    no record and says NO_PROGRAM; Accelerator.reset() re-arms the load; a bad magic leaves no
    program."""
    spec, d, cm = compiled(tmp_path, "tiny", "tiny")
    dense, sparse = synthetic_batch(spec, 5, seed=2)
    with Accelerator.open("reference", "tiny") as acc:
        acc.load(d)
        r = acc.infer(dense, sparse)
        assert r.counters["errors"] == 0 and r.counters["first_error_request"] == NO_ERROR_REQUEST
        acc.device.reset()  # the kernel alone: the driver does not know
        with pytest.raises(KernelError, match="no valid kernel program"):
            acc.infer(dense, sparse)
        c = acc.counters()
        assert c["errors"] == ERROR_NO_PROGRAM and c["requests_done"] == 0
        acc.reset()
        assert np.array_equal(acc.infer(dense, sparse).scores, golden(cm, dense, sparse))
        acc.reset()
        acc.device.write(acc._buffers["model"], b"\0" * 4)  # no magic
        with pytest.raises(KernelError, match="no valid kernel program"):
            acc.infer(dense, sparse)
        assert acc.counters()["requests_done"] == 0


@pytest.mark.parametrize("p_stall", [0.0, 0.25])
def test_sim_backend_is_bit_exact_with_stalls(tmp_path, p_stall):
    spec, d, cm = compiled(tmp_path, "tiny", "tiny", seed=1)
    with Accelerator.open("sim", "tiny", p_stall=p_stall, mem_latency=20, seed=4,
                          max_cycles=50_000) as acc:
        acc.load(d)
        for batch, seed in ((5, 7), (3, 8)):  # the second run reuses the loaded model
            dense, sparse = synthetic_batch(spec, batch, seed=seed)
            r = acc.infer(dense, sparse)
            assert np.array_equal(r.scores, golden(cm, dense, sparse))
            c = r.counters
            assert c["requests_done"] == batch and c["errors"] == 0
            assert c["lookups_issued"] == sum(int(np.maximum(b.lengths, 1).sum())
                                              for b in sparse)
            assert c["lookups_issued"] == _kernel_lookups(cm, sparse)
            with Accelerator.open("reference", "tiny") as ref:  # same counter, same meaning
                ref.load(d)
                assert ref.infer(dense, sparse).counters["lookups_issued"] == \
                    c["lookups_issued"]
            assert c["cycles"] > 0 and c["config_hash"] == get_preset("tiny").config_hash
        # sim_seconds is the time inside the simulator: a pause between calls is not in it
        dev = acc.device
        (wall0, cpu0), cycles0 = dev.sim_seconds, dev.cycles
        t0 = time.perf_counter()
        time.sleep(0.3)
        dev.read_register(0)
        (wall1, cpu1), outside = dev.sim_seconds, time.perf_counter() - t0
        assert dev.cycles > cycles0 and wall1 > wall0 and cpu1 > cpu0
        assert wall1 - wall0 < outside - 0.3


def test_sim_backend_small_preset(tmp_path):
    spec, d, cm = compiled(tmp_path, "small", "small")
    dense, sparse = synthetic_batch(spec, 4, seed=11)
    with Accelerator.open("sim", "small") as acc:
        acc.load(d)
        r = acc.infer(dense, sparse)
        # Registers and the status block agree (the driver reads the block).
        from recfabric.hw.register_map import STATUS_REGS
        assert acc.device.read_register(STATUS_REGS["requests_done"]) == 4
        assert acc.device.read_register(STATUS_REGS["lookups_issued"]) == \
            r.counters["lookups_issued"]
    assert np.array_equal(r.scores, golden(cm, dense, sparse))


def test_mismatched_configuration_is_refused(tmp_path):
    _, d, _ = compiled(tmp_path, "tiny", "tiny")
    for backend in ("reference", "sim"):
        with Accelerator.open(backend, "small") as acc:
            with pytest.raises(DeviceError, match="recompile the model"):
                acc.load(d)


@pytest.mark.parametrize("name", ["tables0", "model", "requests", "results"])
def test_unaligned_buffers_are_refused(tmp_path, name):
    """The kernel needs page-aligned buffers (table rows within 4 KiB, whole-word records):
    the driver refuses other buffers."""
    spec, d, _ = compiled(tmp_path, "tiny", "tiny")
    dense, sparse = synthetic_batch(spec, 2, seed=1)
    with Accelerator.open("reference", "tiny") as acc:
        allocate = acc.device.allocate

        def shifted(buf_name, size, bank=None):
            buf = allocate(buf_name, size + 64, bank)
            if buf_name == name:
                buf = Buffer(buf.name, buf.address + 64, size, buf.bank, buf.handle)
            return buf

        acc.device.allocate = shifted
        with pytest.raises(DeviceError, match=f"buffer '{name}' .* not 4096-byte aligned"):
            acc.load(d)
            acc.infer(dense, sparse)
        assert acc.device.runs == 0


def test_inputs_validated_before_anything_runs(tmp_path):
    spec, d, _ = compiled(tmp_path, "tiny", "tiny")
    dense, sparse = synthetic_batch(spec, 2, seed=1)
    sparse[0].ids[1, 0] = spec.sparse[0].rows
    with Accelerator.open("reference", "tiny") as acc:
        acc.load(d)
        with pytest.raises(ValueError, match="out of range"):
            acc.infer(dense, sparse)
        assert acc.device.runs == 0


def test_xrt_backend_without_pyxrt_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyxrt", None)
    with pytest.raises(DeviceError, match="pyxrt"):
        Accelerator.open("xrt", "tiny", xclbin="missing.xclbin")


def test_issue_10_7_models_run_on_the_simulated_kernel(tmp_path):
    """Issue 10.7 end to end on the cycle-accurate kernel, one device, model switches without a
    reset: int8 models with fewer layers than engines (identity layers after the hidden layer,
    or before a single layer) and a dense-only model, each == the golden model."""
    cfg = get_preset("tiny").replace(name="tiny-int8", data_bits=8, acc_bits=32)
    specs = [get_model("tiny"),
             ModelSpec("one", sparse=(SparseFeature("a", 16, 4),), dense=2, top_mlp=(1,)),
             ModelSpec("dense", dense=3, top_mlp=(4, 1))]
    with Accelerator.open("sim", cfg, mem_latency=8, max_cycles=50_000) as acc:
        for i, spec in enumerate(specs):
            d = tmp_path / spec.name
            compile_model(spec, random_weights(spec, i), cfg, d, calib_batch=64)
            cm = load_compiled(d)
            dense, sparse = synthetic_batch(spec, 4, seed=i) if spec.sparse else \
                (np.random.default_rng(i).random((4, spec.dense)).astype(np.float32), [])
            acc.load(d)
            r = acc.infer(dense, sparse)
            assert np.array_equal(r.scores, golden(cm, dense, sparse)), spec.name
            assert r.counters["errors"] == 0 and r.counters["requests_done"] == 4
            assert r.counters["lookups_issued"] == _kernel_lookups(cm, sparse)


def test_run_raw_is_infer_without_checks(tmp_path):
    """The soak's hook: raw records in; scores, status bytes and counters out."""
    from recfabric.host.runtime.wire_format import ResultStatus, pack_requests

    spec, d, cm = compiled(tmp_path, "tiny", "tiny")
    dense, sparse = synthetic_batch(spec, 5, seed=4)
    with Accelerator.open("reference", "tiny") as acc:
        acc.load(d)
        dq = cm.quantized_model().quantize_dense(dense)
        req = pack_requests(acc.layout, dq, sparse)
        raw = acc.run_raw(req)
        assert np.array_equal(raw.scores, golden(cm, dense, sparse))
        assert raw.status.tolist() == [int(ResultStatus.VALID)] * 5
        assert raw.counters == acc.counters() and raw.counters["requests_done"] == 5
        r = acc.infer(dq, sparse, fixed_point=True)
        assert np.array_equal(r.scores, raw.scores) and np.array_equal(r.status, raw.status)
        with pytest.raises(DeviceError, match="not a whole number"):
            acc.run_raw(req[:-1])
        with pytest.raises(DeviceError, match="without waiting"):
            acc.run_raw(req, wait=False)  # the reference device has no start()


def test_program_error_resets_the_kernel_and_rearms_the_load(tmp_path, monkeypatch):
    """docs/kernel.md: after ERROR_PROGRAM (unknown target, watchdog) the host resets the kernel
    before loading again; the driver does it and says so."""
    spec, d, _ = compiled(tmp_path, "tiny", "tiny")
    dense, sparse = synthetic_batch(spec, 2, seed=1)
    with Accelerator.open("reference", "tiny") as acc:
        acc.load(d)
        acc.infer(dense, sparse)
        resets = []
        monkeypatch.setattr(acc.device, "reset", lambda: resets.append(1))
        collect = acc._collect

        def program_error(obuf, batch):
            out, counters = collect(obuf, batch)
            return out, {**counters, "errors": ERROR_PROGRAM}
        monkeypatch.setattr(acc, "_collect", program_error)
        with pytest.raises(KernelError, match="program cannot run .* the kernel was reset"):
            acc.infer(dense, sparse)
        assert resets == [1] and acc._needs_load
