"""Device replicas without Ray: device specs, the kernel service model, the timed mode, the CPU
fallback engines, payloads, fault injection; and a small fleet simulation."""

import time

import numpy as np
import pytest

from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.steps import compile_model
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.reference.golden import float_forward
from recfabric.host.serve import devices as dv
from recfabric.host.serve.scheduler import KernelServiceModel
from recfabric.hw.config import get_preset


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve-small")
    spec = get_model("small")
    w = random_weights(spec, seed=3)
    compile_model(spec, w, get_preset("small"), d, seed=3)
    w.save(d / "float.npz")
    cm = load_compiled(d)
    dense, sparse = synthetic_batch(spec, 48, seed=5)
    g = golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse)
    return {"dir": d, "spec": spec, "w": w, "dense": dense, "sparse": sparse, "golden": g,
            "payload": dv.make_payload(dense, sparse)}


def test_parse_devices():
    g = dv.parse_devices("timed:2,cpu:1-4,xrt:0+3,reference")
    assert [(x.kind, x.count) for x in g] == [("timed", 2), ("cpu", 4), ("xrt", 2),
                                             ("reference", 1)]
    assert (g[1].min_replicas, g[1].max_replicas) == (1, 4)
    assert g[2].indices == (0, 3)
    for bad, msg in [("", "empty"), ("gpu:1", "unknown device kind 'gpu'"),
                     ("xrt", "card indices"), ("cpu:4-1", "MIN-MAX"),
                     ("timed:0", "positive integer"), ("timed:x", "positive integer")]:
        with pytest.raises(dv.DeviceSpecError, match=msg):
            dv.parse_devices(bad)


def test_kernel_service_model_of_compiled_small(small):
    """The model's parts: MLP latency and II from MLPCycleModel, the measured front/back-end
    overhead, the simulated HBM latency."""
    from recfabric.host.compiler.cycle_model import MLPCycleModel
    m = dv.kernel_service_model(small["dir"])
    mlp = MLPCycleModel(shapes=list(get_preset("small").mlp_top_shapes), widths=(68, 32, 16, 1))
    assert m.ii_cycles == mlp.ii
    assert m.latency_cycles == mlp.latency + dv.MEM_LATENCY_CYCLES + dv.KERNEL_OVERHEAD_CYCLES
    assert m.predict(16) == pytest.approx(m.cycles(16) / 250e6)


def test_timed_runner_scores_equal_golden_and_wait_for_the_model(small):
    r = dv.make_runner("timed", small["dir"])
    out = r.run(small["payload"])
    assert np.array_equal(out["scores"], small["golden"].scores)
    assert out["cycles"] == r.model.cycles(48)
    # a model slower than the host: the answer waits for the modelled time
    r.model = KernelServiceModel(50_000_000, 1, 250.0)  # 200 ms
    t0 = time.perf_counter()
    out = r.run(small["payload"])
    assert time.perf_counter() - t0 >= r.model.predict(48)
    assert "overrun_s" not in out


def test_cpu_golden_is_bit_exact(small):
    r = dv.make_runner("cpu", small["dir"], cpu_engine="golden")
    out = r.run(small["payload"])
    assert r.exact and r.engine == "cpu-golden-int16"
    assert np.array_equal(out["scores"], small["golden"].scores)


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_cpu_float_engines_compute_the_float_model(small, engine):
    pytest.importorskip("onnxruntime" if engine == "onnx" else "torch")
    r = dv.make_runner("cpu", small["dir"], cpu_engine=engine,
                       float_weights=small["dir"] / "float.npz")
    out = r.run(small["payload"])
    assert not r.exact and out["scores"] is None and r.engine == f"cpu-{engine}-float32"
    ref = float_forward(small["w"], small["dense"], small["sparse"])
    # float32 vs float32 in another library: summation order only
    np.testing.assert_allclose(out["probabilities"], ref, atol=1e-5)


def test_cpu_float_engine_needs_weights(small):
    with pytest.raises(dv.DeviceSpecError, match="--float-weights"):
        dv.make_runner("cpu", small["dir"], cpu_engine="onnx")
    with pytest.raises(dv.DeviceSpecError, match="unknown CPU engine 'tf'"):
        dv.make_runner("cpu", small["dir"], cpu_engine="tf")


def test_payload_json_and_stacking(small):
    spec = small["spec"]
    row = {"dense": [0.5, -1, 2, 0], "sparse": [1, 2, 3, 4, 5, 6, [7, 8, 9], [10]],
           "sent_at": 12.5}
    p = dv.payload_from_json(row, spec)
    assert p["dense"].shape == (1, 4) and p["lengths"][6].tolist() == [3]
    assert p["sent_at"] == 12.5
    two = dv.payload_from_json({"rows": [row, row]}, spec)
    both = dv.stack_payloads([p, two])
    assert dv.payload_rows(both) == 3 and both["ids"][6].shape == (3, 4)
    cases = [({"dense": [1, 2, 3], "sparse": [0] * 8}, "'dense' must be 4"),
             ({"dense": [0] * 4, "sparse": [0] * 7}, "must list 8 features"),
             ({"dense": [0] * 4, "sparse": [0, 0, 0, 0, 0, 300, 0, 0]},
              "feature 't5' needs 1..1 IDs in 0..299"),
             ({"dense": [0] * 4}, "needs 'sparse'"), ([], "JSON object"),
             ({**row, "sent_at": "now"}, "'sent_at' must be epoch seconds")]
    for obj, msg in cases:
        with pytest.raises(ValueError, match=msg):
            dv.payload_from_json(obj, spec)


def test_worker_faults_make_it_unhealthy(small):
    w = dv.DeviceWorker(dv.make_runner("cpu", small["dir"]), "cpu")
    assert w.healthy() == (True, "ok")
    w.inject("error")
    with pytest.raises(RuntimeError, match="injected device error"):
        w.run(small["payload"])
    ok, why = w.healthy()
    assert not ok and "injected" in why
    with pytest.raises(ValueError, match="unknown fault"):
        w.inject("melt")


class _FakeClock:
    """A timer that only moves when a fake runner 'runs' (no wall time in the fit)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _LinearRunner:
    """Takes ``fixed + per_row * rows`` seconds, plus a first-call warm-up, on a fake clock."""

    def __init__(self, clock, fixed, per_row, warmup=0.0):
        self.clock, self.fixed, self.per_row, self.warmup = clock, fixed, per_row, warmup
        self.rows = []

    def run(self, payload):
        rows = dv.payload_rows(payload)
        self.rows.append(rows)
        self.clock.now += self.fixed + self.per_row * rows + self.warmup
        self.warmup = 0.0
        return {}


def test_calibrate_fits_fixed_and_per_row_time_best_of_repeats(small):
    clock = _FakeClock()
    runner = _LinearRunner(clock, fixed=0.002, per_row=1e-5, warmup=0.5)
    m = dv.calibrate(runner, small["payload"], sizes=(1, 48), repeats=3, clock=clock)
    assert runner.rows == [1, 1, 1, 48, 48, 48]  # each size `repeats` times, the slice it asked
    assert m.source == "measured"
    # the warm-up of the first call is dropped by best-of-repeats
    assert m.fixed == pytest.approx(0.002, rel=1e-9) and m.per_row == pytest.approx(1e-5, rel=1e-9)
    assert m.predict(100) == pytest.approx(0.002 + 100e-5, rel=1e-9)


def test_calibrate_never_fits_a_negative_slope(small):
    clock = _FakeClock()
    runner = _LinearRunner(clock, fixed=0.003, per_row=-1e-6)  # noise: the big batch was faster
    m = dv.calibrate(runner, small["payload"], sizes=(1, 48), clock=clock)
    assert m.per_row == 0.0 and m.fixed == pytest.approx(0.003 - 1e-6, rel=1e-9)
    with pytest.raises(ValueError, match="0 < n0 < n1"):
        dv.calibrate(runner, small["payload"], sizes=(48, 1))


def test_calibrate_measures_the_cpu_runner(small):
    """On the real CPU runner and the real clock: each size run `repeats` times on a slice of
    that many rows, and a measured model that predicts a positive batch time (the slope's
    sign on a shared machine is noise: the fit itself is tested above on a fake clock)."""
    cpu = dv.make_runner("cpu", small["dir"])
    rows = []

    class Counting:
        def run(self, payload):
            rows.append(dv.payload_rows(payload))
            return cpu.run(payload)

    m = dv.calibrate(Counting(), small["payload"], sizes=(1, 48), repeats=2)
    assert rows == [1, 1, 48, 48]
    assert m.source == "measured" and m.predict(48) > 0


def test_fleet_simulation_small():
    pytest.importorskip("simpy")
    from recfabric.host.serve.fleet import fleet_service_model, simulate
    k = fleet_service_model("small", "small")
    light = simulate(hosts=2, cards_per_host=2, kernel=k, load=0.3, sla_ms=1.0,
                     queries=3000, items=16)
    assert light["overloaded_pct"] == 0 and light["p99_ms"] < 1.0
    assert light["throughput_qps"] == pytest.approx(light["offered_qps"], rel=0.1)
    over = simulate(hosts=2, cards_per_host=2, kernel=k, load=3.0, sla_ms=0.2,
                    queries=3000, items=16)
    # 3x what the fleet can do: admission refuses the excess (all but the 1/3 it can serve and
    # the backlog one SLA holds), and every served request meets the SLA
    assert over["overloaded_pct"] > 50 and over["sla_miss_pct"] == 0
    assert over["card_utilization"] > 0.9


def test_fleet_service_model_plans_within_the_kernel_unless_study():
    """A model whose table the real kernel cannot hold (DIN's multi-hot tables larger than a
    `small` channel: `small` has no bag combiner) is refused, naming --study; microrec-small's
    10M-row one-hot table is split by row range on the real kernel as in the study plan, giving
    the MLP-bound model: the kernel cycle model of the compiler.
    """
    from recfabric.host.compiler.cycle_model import MLPCycleModel
    from recfabric.host.serve.fleet import fleet_service_model
    with pytest.raises(ValueError, match=r"'behav_item'.*one-hot.*--study"):
        fleet_service_model("din", "small")
    real = fleet_service_model("microrec-small", "u280")
    k = fleet_service_model("microrec-small", "u280", study=True)
    assert (real.ii_cycles, real.latency_cycles) == (k.ii_cycles, k.latency_cycles)
    u280 = get_preset("u280")
    mlp = MLPCycleModel(shapes=list(u280.mlp_top_shapes), widths=(352, 1024, 512, 256, 1),
                        cascade=u280.mlp_cascade, broadcast=u280.mlp_broadcast)
    assert k.ii_cycles == mlp.ii == 176
    # + one cycle per ID beyond the fitted model's (47 one-hot features) and the bag combiner's 3
    from recfabric.host.compiler.cycle_model import COMBINER_CYCLES, FIT_IDS_PER_REQUEST
    assert k.latency_cycles == (mlp.latency + dv.MEM_LATENCY_CYCLES + dv.KERNEL_OVERHEAD_CYCLES
                                + 47 - FIT_IDS_PER_REQUEST + COMBINER_CYCLES)
