"""The xrt backend (host/runtime/xrt.py) against a pyxrt stand-in as strict as pyxrt
(tests/pyxrt_standin.py), in XRT's old (2022.1), new (2023.2-2025.2) and master (deprecating)
flavours: end to end == golden, no deprecated call when the new API exists, buffers in the banks
of the generated connectivity file, timeouts, missing and out-of-range arguments, busy cards."""

import sys
import warnings

import numpy as np
import pytest

from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.steps import compile_model
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.runtime.accelerator import Accelerator, DeviceError
from recfabric.host.runtime.xrt import SCALAR_MAX, XRTDevice
from recfabric.hw.config import get_preset
from recfabric.hw.register_map import kernel_args
from recfabric.hw.vitis_package import connectivity_cfg, kernel_name, kernel_xml

from .pyxrt_standin import FLAVOURS, Card, make_pyxrt, write_xclbin, xclBOSyncDirection

CFG = get_preset("tiny")
BOARD = "u55c"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(spec, compiled directory, CompiledModel, "xclbin" directory) for tiny on tiny."""
    tmp = tmp_path_factory.mktemp("xrt")
    spec = get_model("tiny")
    d = tmp / "tiny"
    compile_model(spec, random_weights(spec, seed=0), CFG, d, seed=0)
    xclbin = write_xclbin(tmp / "tiny.xclbin", CFG, BOARD)  # the files v++ --link consumes
    return spec, d, load_compiled(d), xclbin


def open_card(monkeypatch, model, flavour="master", config="tiny"):
    card = Card(CFG, model[2])
    monkeypatch.setitem(sys.modules, "pyxrt", make_pyxrt(card, flavour))
    return card, Accelerator.open("xrt", config, xclbin=str(model[3]))


def golden(cm, dense, sparse):
    return golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse).scores


def sp_banks():
    """argument name -> HBM bank, from the generated connectivity file's sp= lines."""
    banks = {}
    for line in connectivity_cfg(CFG, BOARD).splitlines():
        if line.startswith("sp="):
            port, bank = line.split(".", 1)[1].split(":")
            banks[port.removeprefix("m_axi_")] = int(bank[len("HBM["):-1])
    return banks


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_runs_end_to_end_with_no_deprecated_call(monkeypatch, model, flavour):
    spec, d, cm, xclbin = model
    dense, sparse = synthetic_batch(spec, 6, seed=2)
    dense2, sparse2 = synthetic_batch(spec, 3, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # master: old calls would raise
        card, acc = open_card(monkeypatch, model, flavour)
        with acc:
            acc.load(d)
            r = acc.infer(dense, sparse)
            r2 = acc.infer(dense2, sparse2)
    assert np.array_equal(r.scores, golden(cm, dense, sparse))
    assert np.array_equal(r2.scores, golden(cm, dense2, sparse2))
    assert r.counters["requests_done"] == 6 and r.counters["errors"] == 0
    names = [c[0] for c in card.calls]
    if flavour == "old":
        assert "load_xclbin" in names and "hw_context" not in names
        assert ("kernel", "device") in card.calls
    else:
        assert "load_xclbin" not in names and ("kernel", "hw_context") in card.calls
        assert "register_xclbin" in names
        # master binds hw_context.access_mode: the driver asks for the CU exclusively
        mode = [c[1] for c in card.calls if c[0] == "hw_context"][0]
        assert (mode is not None and mode.name == "exclusive") == (flavour == "master")
    assert any(c[0] == "sync" and c[1] is xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE
               for c in card.calls), "results synced from the device"
    # every buffer in the bank its argument is connected to; XRT copied nothing
    banks = sp_banks()
    assert sorted({c[2] for c in card.calls if c[0] == "bo"}) == sorted(set(banks.values()))
    assert card.warnings == [] and card.completed == 2
    assert [c[1] for c in card.calls if c[0] == "wait"] == [60_000, 60_000]


def test_stand_in_deprecates_the_old_calls_on_master_only(model):
    for flavour, warns in (("master", True), ("new", False)):
        card = Card(CFG)
        x = make_pyxrt(card, flavour)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dev = x.device(0)
            u = dev.load_xclbin(str(model[3]))
            x.kernel(dev, u, kernel_name(CFG), x.kernel.cu_access_mode.exclusive)
        dep = [w for w in caught if issubclass(w.category, DeprecationWarning)]
        assert len(dep) == (2 if warns else 0), flavour
    assert not hasattr(make_pyxrt(Card(CFG), "old"), "hw_context")


def test_stand_in_is_as_strict_as_pyxrt_on_types(model):
    """pybind11 refuses what does not convert: a scalar outside C int, a float, a wait of
    more than unsigned int milliseconds; a buffer outside the xclbin's banks is refused."""
    card = Card(CFG)
    x = make_pyxrt(card, "new")
    dev = x.device(0)
    ctx = x.hw_context(dev, dev.register_xclbin(x.xclbin(str(model[3]))))
    k = x.kernel(ctx, kernel_name(CFG))
    r = x.run(k)
    for bad in (2**31, -(2**31) - 1, 1.0, "3"):
        with pytest.raises(TypeError, match="incompatible function arguments"):
            r.set_arg(3, bad)
    r.set_arg(3, 2**31 - 1)
    with pytest.raises(TypeError):
        r.wait(-1)
    with pytest.raises(TypeError):
        r.wait(2**32)
    with pytest.raises(RuntimeError, match="not a memory bank"):
        x.bo(dev, 4096, x.bo.normal, 31)
    with pytest.raises(TypeError):
        x.bo(dev, 4096, 0, 0)  # flags must be bo.flags
    assert k.group_id(0) == sp_banks()["requests"] and k.group_id(5) == sp_banks()["tables0"]


def test_timed_out_run_makes_the_device_refuse_further_runs(monkeypatch, model):
    spec, d, cm, _ = model
    dense, sparse = synthetic_batch(spec, 4, seed=3)
    card, acc = open_card(monkeypatch, model)
    acc.load(d)
    card.hang = True
    with pytest.raises(DeviceError, match=r"kernel run 1 \(batch 4\) did not finish within "
                                          r"0\.001 s \(ERT_CMD_STATE_TIMEOUT\).*xrt-smi reset"):
        acc.infer(dense, sparse, timeout=0.0004)  # under 1 ms: rounded up, never 0 (forever)
    assert [c[1] for c in card.calls if c[0] == "wait"] == [1]
    card.hang = False  # the kernel would finish now, but the timed-out run is still queued
    starts = sum(c[0] == "start" for c in card.calls)
    with pytest.raises(DeviceError, match="unusable") as e:
        acc.infer(dense, sparse)
    assert "\n" not in str(e.value) and "reset the card" in str(e.value)
    assert "open the device again" in str(e.value)
    assert sum(c[0] == "start" for c in card.calls) == starts, "no run was started"
    with pytest.raises(DeviceError, match="cannot reset the kernel through pyxrt.*xrt-smi reset"):
        acc.reset()
    assert not acc.device.usable and card.completed == 0


def test_timeouts_xrt_would_read_as_forever_are_refused():
    assert XRTDevice.timeout_ms(1e-6) == 1 and XRTDevice.timeout_ms(0.0011) == 2
    assert XRTDevice.timeout_ms(60) == 60_000
    for bad in (0, -1, float("nan"), float("inf"), 5e6, "1"):
        with pytest.raises(DeviceError, match="timeout"):
            XRTDevice.timeout_ms(bad)


def _args(acc):
    """The arguments of a run, as Accelerator stages them (batch of 1)."""
    spec = get_model("tiny")
    dense, sparse = synthetic_batch(spec, 1, seed=5)
    from recfabric.host.runtime.wire_format import pack_float_requests
    args, _, _ = acc._stage(pack_float_requests(acc.layout, dense, sparse))
    return args


def test_missing_buffer_argument_is_refused(monkeypatch, model):
    card, acc = open_card(monkeypatch, model)
    acc.load(model[1])
    args = _args(acc)
    del args["tables1"]
    with pytest.raises(DeviceError, match=r"kernel argument\(s\) tables1 not given"):
        acc.device.run(args, 1.0)
    args = _args(acc)
    args["model"] = 0x1000  # an address, not a buffer of this device
    with pytest.raises(DeviceError, match="'model' must be a buffer of this xrt device"):
        acc.device.run(args, 1.0)
    assert not any(c[0] == "start" for c in card.calls) and acc.device.usable


@pytest.mark.parametrize("bad", [SCALAR_MAX + 1, -1, True, 2.0])
def test_out_of_range_scalar_is_refused_naming_it(monkeypatch, model, bad):
    card, acc = open_card(monkeypatch, model)
    acc.load(model[1])
    args = _args(acc)
    args["batch"] = bad
    with pytest.raises(DeviceError, match=r"kernel argument 'batch' = .*0\.\.2147483647"):
        acc.device.run(args, 1.0)
    assert not any(c[0] == "start" for c in card.calls)


def test_buffer_in_the_wrong_bank_is_refused(monkeypatch, model):
    card, acc = open_card(monkeypatch, model)
    acc.load(model[1])
    args = _args(acc)
    args["tables1"] = args["tables0"]  # bank 0; tables1 is connected to bank 1
    with pytest.raises(DeviceError, match=r"'tables1' is in memory bank 0; the connectivity "
                                          r"file connects 'tables1' to bank 1"):
        acc.device.run(args, 1.0)
    assert not any(c[0] == "start" for c in card.calls)


def test_without_the_bank_check_xrt_would_lose_the_results(monkeypatch, model):
    """Why the driver checks banks: the stand-in, as XRT, copies a buffer given for an argument
    connected to another bank; the kernel writes the copy, the host buffer stays empty."""
    card, acc = open_card(monkeypatch, model)
    acc.load(model[1])
    args = _args(acc)
    results = acc.device.allocate("results:x", 8192)  # a buffer in the results' bank ...
    wrong = acc.device.allocate("tables0", 8192)  # ... and one in bank 0
    wrong.handle.group = results.handle.group  # lie to the driver: the check passes
    args["results"] = wrong
    acc.device.run(args, 1.0)
    assert card.completed == 1 and "Allocating local copy" in card.warnings[0]
    assert acc.device.read(wrong, 8192) == bytes(8192), "the kernel's writes went to the copy"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_busy_card_is_not_called_a_wrong_configuration(monkeypatch, model, flavour):
    card = Card(CFG, model[2])
    card.held_by_other = True
    monkeypatch.setitem(sys.modules, "pyxrt", make_pyxrt(card, flavour))
    with pytest.raises(DeviceError) as e:
        Accelerator.open("xrt", "tiny", xclbin=str(model[3]))
    msg = str(e.value)
    assert "cannot open kernel" in msg and "Device or resource busy" in msg
    assert "another configuration" not in msg and "another process" in msg


def test_wrong_configuration_and_unreadable_xclbin(monkeypatch, model, tmp_path):
    monkeypatch.setitem(sys.modules, "pyxrt", make_pyxrt(Card(CFG), "master"))
    with pytest.raises(DeviceError, match=rf"built for another configuration: it has kernel\(s\) "
                                          rf"{kernel_name(CFG)} \(preset 'tiny'\), configuration "
                                          rf"'small' is kernel {kernel_name(get_preset('small'))}"):
        Accelerator.open("xrt", "small", xclbin=str(model[3]))
    with pytest.raises(DeviceError, match="cannot read xclbin .*XRT says: Could not open"):
        Accelerator.open("xrt", "tiny", xclbin=str(tmp_path / "missing.xclbin"))
    with pytest.raises(DeviceError, match="cannot open Alveo card 3: XRT says"):
        Accelerator.open("xrt", "tiny", xclbin=str(model[3]), device_index=3)


def test_argument_indices_are_the_kernel_xml_ids(model):
    """The driver's argument order is kernel.xml's id order (set_arg takes the index)."""
    import xml.etree.ElementTree as ET

    k = ET.fromstring(kernel_xml(CFG)).find("kernel")
    ids = {a.get("name"): int(a.get("id")) for a in k.find("args")}
    assert ids == {a.name: i for i, a in enumerate(kernel_args(CFG.mem_channels))}


def test_recfabric_demo_on_the_xrt_backend(monkeypatch, model, capsys):
    """`recfabric demo --backend xrt --xclbin FILE` (docs/alveo.md) on the stand-in: == golden;
    a run that times out is one error line saying how to recover, exit code 2."""
    import json

    from recfabric.host.cli import main

    card = Card(CFG)
    card.cycles = 1000  # placeholder: demo divides by the cycles counter
    monkeypatch.setitem(sys.modules, "pyxrt", make_pyxrt(card, "master"))
    # the stand-in's kernel is the reference model, which takes the compiled model from the host
    monkeypatch.setattr(XRTDevice, "attach_model",
                        lambda self, cm: setattr(card, "compiled", cm), raising=False)
    argv = ["demo", "--model", "tiny", "--config", "tiny", "--backend", "xrt", "--xclbin",
            str(model[3]), "--batch", "4", "--json"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    # the model load run with the batch, the batch again, and the batch of 1 for the latency
    assert out["match"] is True and card.completed == 3
    assert out["cycles_source"] == "measured"  # a card's counter, not a simulation
    card.hang = True
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "did not finish within 60 s (ERT_CMD_STATE_TIMEOUT)" in err
    assert "xrt-smi reset" in err


def test_xrt_errors_in_start_and_wait_are_reported_with_xrt_message(monkeypatch, model):
    card, acc = open_card(monkeypatch, model)
    acc.load(model[1])
    x = sys.modules["pyxrt"]

    def fail(self, *a):
        raise RuntimeError("failed to launch execution buffer: Invalid argument")

    monkeypatch.setattr(x.run, "start", fail)
    with pytest.raises(DeviceError, match="could not start: XRT says: failed to launch"):
        acc.device.run(_args(acc), 1.0)
    assert acc.device.usable  # nothing was queued
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "pyxrt", x)
    monkeypatch.setattr(x.run, "wait", fail)
    with pytest.raises(DeviceError, match="unusable: waiting for kernel run 2 .*xrt-smi reset"):
        acc.device.run(_args(acc), 1.0)
    assert not acc.device.usable
