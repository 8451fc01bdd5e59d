"""Device replicas for serving: accelerator back-ends, the ``timed`` mode and the CPU fallback.

Everything here is plain Python (no Ray): :mod:`recfabric.host.serve.app` wraps a
:class:`DeviceWorker` in a Ray Serve deployment, the tests use it directly.

Kinds of device (``--devices`` items, :func:`parse_devices`)
------------------------------------------------------------
``timed[:N]``
    N accelerator replicas for work without a card: the ``reference`` back-end's exact scores
    (the golden model computed from the compiled images, through the production driver),
    returned after the kernel's *modelled* batch time (:func:`kernel_service_model` at the
    configuration's clock). If the host needs longer than the modelled time to compute the
    scores, the answer comes when they are ready and the overrun is reported.
``reference[:N]``, ``sim[:N]``, ``verilator[:N]``
    The driver's back-ends (``verilator`` where the driver has it), answering as fast as they
    compute.
``xrt:I[+J...]``
    Alveo cards by device index (one replica each), running ``--xclbin``.
``cpu[:N]`` or ``cpu:MIN-MAX``
    The CPU fallback, autoscaled by Ray Serve between MIN and MAX replicas. Its engine is
    ``golden`` (the quantized model, bit-exact: the golden model from the compiled images),
    ``torch`` or ``onnx`` (the *float* model through PyTorch or ONNX Runtime; needs the float
    weights). Every answer names its engine and whether it is exact.

Kernel service time (the accelerators' prediction)
--------------------------------------------------
:func:`kernel_service_model`: the whole-kernel cycle model
(:func:`recfabric.host.compiler.cycle_model.kernel_batch_cycles`, ``cycles(B) = latency +
ii * (B - 1)``, fitted to the simulated kernel) at the configuration's clock.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..compiler.cycle_model import KERNEL_OVERHEAD_CYCLES, MEM_LATENCY_CYCLES, kernel_batch_cycles
from .scheduler import KernelServiceModel, LinearServiceModel

__all__ = ["KERNEL_OVERHEAD_CYCLES", "MEM_LATENCY_CYCLES", "ACCELERATOR_KINDS", "CPU_ENGINES",
           "DeviceGroup", "DeviceSpecError", "parse_devices", "kernel_service_model",
           "make_payload", "stack_payloads", "payload_from_json", "payload_rows",
           "AcceleratorRunner", "CpuRunner", "DeviceWorker", "make_runner", "calibrate"]

ACCELERATOR_KINDS = ("timed", "reference", "sim", "verilator", "xrt")
CPU_ENGINES = ("golden", "torch", "onnx")


class DeviceSpecError(ValueError):
    """A ``--devices`` specification is malformed; the message names the bad item."""


# ---- project imports, kept in one place --------------------------------------------------

def _project():
    from ..compiler import compiled  # noqa: PLC0415 - heavy, load on use
    from ..model import spec  # noqa: PLC0415
    from ..runtime import accelerator  # noqa: PLC0415
    from ..runtime.wire_format import RequestLayout  # noqa: PLC0415
    return compiled, accelerator, spec, RequestLayout


def _config_of(cm):
    from ...hw.config import AcceleratorConfig  # noqa: PLC0415 - plain dataclass, no Amaranth
    params = dict(cm.manifest["config"]["params"])
    return AcceleratorConfig.from_json(params)


# ---- the --devices specification ---------------------------------------------------------

@dataclass(frozen=True)
class DeviceGroup:
    """One ``--devices`` item: ``count`` replicas of ``kind`` (``cpu``: ``min``..``max``)."""

    kind: str
    count: int = 1
    min_replicas: int = 1
    max_replicas: int = 1
    indices: tuple = ()

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"


def parse_devices(text: str) -> list[DeviceGroup]:
    """Parse ``"timed:2,cpu:1-4"``-style specifications (see the module docstring)."""
    groups = []
    if not text or not text.strip():
        raise DeviceSpecError("--devices is empty; e.g. 'timed:2,cpu:2'")
    for item in text.split(","):
        item = item.strip()
        kind, _, arg = item.partition(":")
        if kind not in ACCELERATOR_KINDS + ("cpu",):
            raise DeviceSpecError(f"unknown device kind {kind!r} in {item!r}; kinds: "
                                  f"{', '.join(ACCELERATOR_KINDS + ('cpu',))}")
        if kind == "xrt":
            if not re.fullmatch(r"\d+(\+\d+)*", arg):
                raise DeviceSpecError(f"{item!r}: xrt needs card indices, e.g. 'xrt:0+1'")
            idx = tuple(int(i) for i in arg.split("+"))
            groups.append(DeviceGroup("xrt", len(idx), indices=idx))
        elif kind == "cpu" and "-" in arg:
            m = re.fullmatch(r"(\d+)-(\d+)", arg)
            if not m or not 0 <= int(m[1]) <= int(m[2]) or int(m[2]) < 1:
                raise DeviceSpecError(f"{item!r}: cpu replicas must be N or MIN-MAX with "
                                      f"0 <= MIN <= MAX, MAX >= 1")
            lo, hi = int(m[1]), int(m[2])
            groups.append(DeviceGroup("cpu", hi, lo, hi))
        else:
            if arg and not arg.isdigit() or arg == "0":
                raise DeviceSpecError(f"{item!r}: the count must be a positive integer")
            n = int(arg or 1)
            groups.append(DeviceGroup(kind, n, n, n))
    return groups


# ---- kernel service time -----------------------------------------------------------------

def kernel_service_model(compiled, config=None, *,
                         mem_latency_cycles: int = MEM_LATENCY_CYCLES) -> KernelServiceModel:
    """Predicted batch time of the kernel for a compiled model (directory or CompiledModel).

    ``config`` defaults to the configuration the model was compiled for.
    """
    compiler, _, _, RequestLayout = _project()
    cm = compiled if isinstance(compiled, compiler.CompiledModel) else \
        compiler.load_compiled(compiled)
    config = config or _config_of(cm)
    words = RequestLayout.for_config(cm.quantized_model(), config).words_per_record
    latency, ii = kernel_batch_cycles(cm.spec, config, cm.plan.rounds, words,
                                      mem_latency_cycles=mem_latency_cycles,
                                      pooled_inputs=cm.plan.pooled_inputs)
    return KernelServiceModel(latency, ii, config.clock_mhz)


# ---- request payloads --------------------------------------------------------------------

def make_payload(dense, sparse) -> dict:
    """The array form of a request (or batch): float dense ``(rows, D)``, and per sparse feature
    ``ids (rows, bag)`` and ``lengths (rows,)`` (from :class:`~recfabric.host.model.spec.Bags`)."""
    return {"dense": np.asarray(dense, dtype=np.float32),
            "ids": [np.asarray(b.ids, dtype=np.int64) for b in sparse],
            "lengths": [np.asarray(b.lengths, dtype=np.int64) for b in sparse]}


def payload_rows(p: dict) -> int:
    return int(np.asarray(p["dense"]).shape[0])


def stack_payloads(payloads: list) -> dict:
    """One batch payload from request payloads (rows in order)."""
    if len(payloads) == 1:
        return payloads[0]
    nf = len(payloads[0]["ids"])
    bags = [max(p["ids"][f].shape[1] for p in payloads) for f in range(nf)]

    def pad(a, width):
        return a if a.shape[1] == width else np.pad(a, ((0, 0), (0, width - a.shape[1])))
    return {"dense": np.concatenate([p["dense"] for p in payloads]),
            "ids": [np.concatenate([pad(p["ids"][f], bags[f]) for p in payloads])
                    for f in range(nf)],
            "lengths": [np.concatenate([p["lengths"][f] for p in payloads]) for f in range(nf)]}


def payload_from_json(obj, spec) -> dict:
    """Validate a JSON request and return its array form.

    Accepted: ``{"dense": [...], "sparse": [...]}`` for one row, where ``sparse`` holds per
    feature an ID or a list of IDs, or ``{"rows": [such rows...]}``; optionally ``"sent_at"``
    (the client's send time, epoch seconds: the SLA clock starts there). Errors name the bad
    field.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"a request must be a JSON object, not {type(obj).__name__}")
    sent = obj.get("sent_at")
    if sent is not None and (isinstance(sent, bool) or not isinstance(sent, (int, float))):
        raise ValueError(f"'sent_at' must be epoch seconds, not {sent!r}")
    rows = obj.get("rows", [obj])
    if not isinstance(rows, list) or not rows:
        raise ValueError("'rows' must be a non-empty list of {'dense', 'sparse'} objects")
    dense = np.zeros((len(rows), spec.dense), np.float32)
    ids = [np.zeros((len(rows), f.bag), np.int64) for f in spec.sparse]
    lengths = [np.zeros(len(rows), np.int64) for _ in spec.sparse]
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "sparse" not in row:
            raise ValueError(f"row {i}: needs 'sparse' (and 'dense' if the model has dense "
                             f"features)")
        d = np.asarray(row.get("dense", []), dtype=np.float64).reshape(-1)
        if d.shape != (spec.dense,) or not np.all(np.isfinite(d)):
            raise ValueError(f"row {i}: 'dense' must be {spec.dense} finite numbers, not "
                             f"{row.get('dense')!r}")
        dense[i] = d
        sp = row["sparse"]
        if not isinstance(sp, list) or len(sp) != len(spec.sparse):
            raise ValueError(f"row {i}: 'sparse' must list {len(spec.sparse)} features, not "
                             f"{sp!r}")
        for f, (feat, v) in enumerate(zip(spec.sparse, sp)):
            bag = v if isinstance(v, list) else [v]
            if not 1 <= len(bag) <= feat.bag or not all(
                    isinstance(x, int) and not isinstance(x, bool) and 0 <= x < feat.rows
                    for x in bag):
                raise ValueError(f"row {i}: feature {feat.name!r} needs 1..{feat.bag} IDs in "
                                 f"0..{feat.rows - 1}, not {v!r}")
            ids[f][i, :len(bag)] = bag
            lengths[f][i] = len(bag)
    out = {"dense": dense, "ids": ids, "lengths": lengths}
    if sent is not None:
        out["sent_at"] = float(sent)
    return out


def _bags(p):
    _, _, spec, _ = _project()
    return [spec.Bags(i, n) for i, n in zip(p["ids"], p["lengths"])]


# ---- runners -----------------------------------------------------------------------------

class AcceleratorRunner:
    """An accelerator back-end through the production driver; ``timed`` = reference scores
    at the kernel's modelled batch time."""

    exact = True

    def __init__(self, compiled_dir, kind: str = "timed", *, xclbin=None, device_index: int = 0):
        compiler, accelerator, _, _ = _project()
        if kind not in ACCELERATOR_KINDS:
            raise DeviceSpecError(f"unknown accelerator kind {kind!r}; kinds: "
                                  f"{', '.join(ACCELERATOR_KINDS)}")
        self.kind = kind
        self.cm = compiler.load_compiled(compiled_dir)
        self.config = _config_of(self.cm)
        self.model = kernel_service_model(self.cm, self.config)
        backend = "reference" if kind == "timed" else kind
        kwargs = {}
        if kind == "xrt":
            if not xclbin:
                raise DeviceSpecError("xrt devices need --xclbin FILE")
            kwargs = {"xclbin": xclbin, "device_index": device_index}
        self.acc = accelerator.Accelerator.open(backend, self.config, **kwargs)
        self.acc.load(self.cm)
        self.engine = {"timed": "accelerator-timed (reference scores, modelled time)"}.get(
            kind, f"accelerator-{kind}")
        self.overruns = 0

    def run(self, p: dict) -> dict:
        t0 = time.perf_counter()
        res = self.acc.infer(p["dense"], _bags(p))
        compute = time.perf_counter() - t0
        rows = payload_rows(p)
        out = {"scores": res.scores, "probabilities": res.probabilities,
               "compute_s": compute, "modelled_s": self.model.predict(rows),
               "cycles": res.counters.get("cycles") or None}
        if self.kind == "timed":
            out["cycles"] = self.model.cycles(rows)
            wait = t0 + out["modelled_s"] - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                self.overruns += 1
                out["overrun_s"] = -wait
        return out

    def close(self):
        self.acc.close()


class CpuRunner:
    """CPU fallback: the golden model (bit-exact) or the float model in PyTorch / ONNX Runtime."""

    def __init__(self, compiled_dir, engine: str = "golden", *, float_weights=None):
        compiler, _, _, _ = _project()
        if engine not in CPU_ENGINES:
            raise DeviceSpecError(f"unknown CPU engine {engine!r}; engines: "
                                  f"{', '.join(CPU_ENGINES)}")
        self.cm = compiler.load_compiled(compiled_dir)
        self.qm = self.cm.quantized_model()
        self.engine_name = engine
        self.exact = engine == "golden"
        self.engine = f"cpu-golden-int{self.qm.bits}" if self.exact else f"cpu-{engine}-float32"
        if not self.exact:
            if float_weights is None:
                raise DeviceSpecError(
                    f"the {engine} CPU fallback runs the float model: give its weights "
                    f"(--float-weights W.npz, written by ModelWeights.save)")
            from ..model.weights import ModelWeights  # noqa: PLC0415
            w = float_weights if isinstance(float_weights, ModelWeights) else \
                ModelWeights.load(float_weights)
            if w.spec != self.cm.spec:
                raise DeviceSpecError(f"float weights are for model {w.spec.name!r}, the "
                                      f"compiled model is {self.cm.spec.name!r}")
            self.weights = w
            self._fn = self._torch(w) if engine == "torch" else self._onnx(w)

    # golden: the quantized model from the compiled images, as the accelerator computes it
    def run(self, p: dict) -> dict:
        compiler, _, _, _ = _project()
        t0 = time.perf_counter()
        bags = _bags(p)
        if self.exact:
            g = compiler.golden_from_images(self.cm, self.qm.quantize_dense(p["dense"]), bags)
            out = {"scores": g.scores, "probabilities": g.probabilities}
        else:
            out = {"scores": None, "probabilities": self._fn(p["dense"], bags)}
        out["compute_s"] = time.perf_counter() - t0
        return out

    @staticmethod
    def _torch(w):
        from ..model.torch_io import require_torch, to_torch  # noqa: PLC0415
        torch = require_torch()
        torch.set_num_threads(1)  # one replica, one core: the pool scales by replicas
        model = to_torch(w).eval()

        def fn(dense, bags):
            with torch.no_grad():
                return model(dense, bags).numpy().astype(np.float64)
        return fn

    @staticmethod
    def _onnx(w):
        """The float MLP as an ONNX graph (Gemm/Relu/Concat/Sigmoid) in ONNX Runtime; the
        embedding bags are pooled in numpy (float32) and fed to it."""
        import onnx  # noqa: PLC0415 - optional (serve extra)
        import onnxruntime as ort  # noqa: PLC0415
        from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415
        spec = w.spec
        if spec.interaction != "concat" or spec.heads:
            raise DeviceSpecError("the onnx CPU fallback runs concat-interaction models "
                                  "without heads; use --cpu-engine torch or golden")
        nodes, inits = [], []

        def chain(x, layers, prefix, last_relu):
            for i, layer in enumerate(layers):
                wn, bn, y = f"{prefix}{i}_w", f"{prefix}{i}_b", f"{prefix}{i}_y"
                inits.extend([numpy_helper.from_array(layer.weight, wn),
                              numpy_helper.from_array(layer.bias, bn)])
                nodes.append(helper.make_node("Gemm", [x, wn, bn], [y], transB=1))
                x = y
                if last_relu or i + 1 < len(layers):
                    nodes.append(helper.make_node("Relu", [x], [f"{y}r"]))
                    x = f"{y}r"
            return x
        x = chain("dense", w.bottom, "bottom", last_relu=True)
        parts = ([x] if spec.dense_out else []) + ["pooled"]
        nodes.append(helper.make_node("Concat", parts, ["z"], axis=1))
        logits = chain("z", w.top, "top", last_relu=False)
        nodes.append(helper.make_node("Sigmoid", [logits], ["p"]))
        width = sum(f.dim for f in spec.sparse)
        graph = helper.make_graph(
            nodes, f"recfabric-{spec.name}",
            [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["B", spec.dense]),
             helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["B", width])],
            [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["B", spec.num_outputs])],
            initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        def pool(table, bags):  # sum pooling in float32, as float_forward pools
            m = bags.mask()
            rows = table.gather(np.where(m, bags.ids, 0).reshape(-1))
            return (rows.reshape(*m.shape, table.dim) * m[..., None]).sum(1, dtype=np.float32)

        def fn(dense, bags):
            pooled = np.concatenate([pool(t, b) for t, b in zip(w.tables, bags)], 1)
            feeds = {"pooled": pooled.astype(np.float32)}
            if spec.dense:
                feeds["dense"] = np.asarray(dense, np.float32)
            return sess.run(["p"], feeds)[0].astype(np.float64)
        return fn

    def close(self):
        pass


def make_runner(kind: str, compiled_dir, *, cpu_engine: str = "golden", float_weights=None,
                xclbin=None, device_index: int = 0):
    if kind == "cpu":
        return CpuRunner(compiled_dir, cpu_engine, float_weights=float_weights)
    return AcceleratorRunner(compiled_dir, kind, xclbin=xclbin, device_index=device_index)


def calibrate(runner, payload: dict, sizes=(1, 64), repeats: int = 3,
              clock=time.perf_counter) -> LinearServiceModel:
    """Measure a runner's batch time at two batch sizes (best of ``repeats``) and fit
    ``fixed + per_row * rows``: the CPU fallback's measured service model.

    On a noisy machine the larger batch can come out no slower than the smaller one; the fit
    then has ``per_row == 0`` (a service time that does not grow with the batch), never a
    negative slope. ``clock`` is the timer (seconds); tests pass a deterministic one.
    """
    (n0, n1) = sizes
    if not 0 < n0 < n1:
        raise ValueError(f"calibrate needs two batch sizes 0 < n0 < n1, got {sizes}")
    if repeats < 1:
        raise ValueError(f"calibrate needs repeats >= 1, got {repeats}")
    times = []
    for n in sizes:
        p = _slice(payload, n)
        best = math.inf
        for _ in range(repeats):
            t0 = clock()
            runner.run(p)
            best = min(best, clock() - t0)
        times.append(best)
    (t0, t1) = times
    per_row = max((t1 - t0) / (n1 - n0), 0.0)
    return LinearServiceModel(max(t0 - per_row * n0, 0.0), per_row)


def _slice(p, n):
    rows = payload_rows(p)
    idx = np.arange(n) % rows
    return {"dense": p["dense"][idx], "ids": [i[idx] for i in p["ids"]],
            "lengths": [x[idx] for x in p["lengths"]]}


# ---- the worker a replica wraps ----------------------------------------------------------

FAULTS = ("crash", "hang", "error")


class DeviceWorker:
    """One device replica: a runner, a health state and fault injection for tests.

    ``inject("crash")`` ends the process at the next batch (a real replica death),
    ``inject("hang")`` makes the next batch never finish, ``inject("error")`` makes it raise.
    A worker whose batch failed or hangs reports unhealthy (:meth:`healthy`), so Ray Serve's
    health check restarts its replica.
    """

    def __init__(self, runner, name: str = "device"):
        self.runner = runner
        self.name = name
        self.pid = os.getpid()
        self._fault = None
        self._lock = threading.Lock()
        self._busy_since = None
        self.error = None
        self.batches = 0

    def inject(self, fault: str) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; faults: {', '.join(FAULTS)}")
        self._fault = fault

    def run(self, p: dict) -> dict:
        with self._lock:
            self._busy_since = time.monotonic()
            try:
                fault, self._fault = self._fault, None
                if fault == "crash":
                    os._exit(17)
                if fault == "hang":
                    while True:
                        time.sleep(3600)
                if fault == "error":
                    raise RuntimeError(f"{self.name}: injected device error")
                out = self.runner.run(p)
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
                raise
            finally:
                self._busy_since = None
            self.batches += 1
        out.update(engine=self.runner.engine, exact=self.runner.exact, device=self.name,
                   pid=self.pid)
        return out

    def healthy(self, hang_s: float = 30.0) -> tuple[bool, str]:
        if self.error:
            return False, self.error
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy > hang_s:
            return False, f"{self.name}: a batch has run for {time.monotonic() - busy:.0f} s"
        return True, "ok"


def compiled_spec(compiled_dir):
    """The ModelSpec of a compiled directory (manifest only, no image hashing)."""
    import json  # noqa: PLC0415

    from ..model.spec import ModelSpec  # noqa: PLC0415
    manifest = json.loads((Path(compiled_dir) / "manifest.json").read_text())
    return ModelSpec.from_json(manifest["model"])
