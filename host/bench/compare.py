"""``recfabric bench compare``: one model and its requests on RecFabric and on what users run.

For one model (zoo name or spec file), one set of random weights (``random_weights(spec, seed)``)
and, per batch size, one synthetic batch (``synthetic_batch(spec, batch, seed)``), this measures
or models the batch latency on every platform it can reach and checks every platform's scores:

==========================  ============  ======================================================
platform                    source        how
==========================  ============  ======================================================
``recfabric-<cfg> sim``     simulated     the generated kernel in the Amaranth simulator (the
                                          ``sim`` backend, production driver); cycles from the
                                          kernel's own counter (``ap_start`` to ``ap_done``),
                                          model already loaded. Batches above ``sim_max_batch``
                                          are *not* simulated: they are extrapolated linearly
                                          from the two largest simulated batches (source
                                          ``modelled``, method says so).
``recfabric-<cfg> model``   modelled      :func:`kernel_cycles` (the kernel cycle model
                                          ``kernel_batch_cycles``: request words, lookup
                                          rounds from the plan, the MLP cycle model) on the
                                          given configuration, usually ``u280``.
``torch-eager``             measured      the model as PyTorch ``RecModel`` (float32), CPU
``torch-script``            measured      the same, ``torch.jit.trace``-d
``onnxruntime``             measured      an ONNX graph of the same weights (:func:`to_onnx`),
                                          ONNX Runtime's CPU execution provider
``torch-cuda``              measured      eager PyTorch on the GPU, when ``torch.cuda`` sees one
==========================  ============  ======================================================

Times of the accelerator rows are cycles at the configuration's ``clock_mhz``: an *assumed*
clock (no open place-and-route exists for UltraScale+; see ``recfabric report timing``).
Measured rows are the median wall time of repeated calls with the inputs already in the
framework's format (conversion from :class:`~recfabric.host.model.spec.Bags` excluded), on this
machine's CPU with the framework's default threading.

Score checks: every platform's probabilities are compared with the float reference
(:func:`~recfabric.host.reference.golden.float_forward`) and the largest absolute difference is
reported and checked against a tolerance (float platforms: :data:`FLOAT_TOL`; fixed point: the
numerics' accuracy budget :data:`FIXED_TOL`). The accelerator's fixed-point scores are also
compared with the golden model with ``==``: simulated batches from the simulated kernel, other
accelerator rows from the ``reference`` backend (the kernel's behavioural model on the compiled
images), both against :func:`~recfabric.host.reference.golden.golden_forward`.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..compiler.cycle_model import KERNEL_OVERHEAD_CYCLES, MEM_LATENCY_CYCLES, kernel_batch_cycles

__all__ = ["FLOAT_TOL", "FIXED_TOL", "SIM_MEMORY_BYTES", "kernel_cycles", "to_onnx", "run_compare",
           "crossovers", "format_table", "format_markdown", "plot_rows", "parse_batches"]

#: Largest |probability difference| accepted between a float platform and the float reference.
FLOAT_TOL = 1e-4
#: Device memory the comparison gives the ``sim`` backend (its constructor's default, passed
#: explicitly): a model whose raw tables alone exceed it is not simulated (a note says so) before
#: anything is compiled or elaborated; its accelerator rows are the modelled ones.
SIM_MEMORY_BYTES = 64 << 20
#: Largest |probability difference| accepted between fixed-point scores and the float reference
#: (int16: the README's accuracy table shows <= 0.0015; int8 up to 0.18 on DLRM).
FIXED_TOL = {16: 0.01, 8: 0.25}


# ---- the accelerator's cycle model --------------------------------------------------------------

@dataclass
class KernelCycles:
    """Modelled cycles of a batch: ``latency1 + (batch - 1) * ii``."""

    ii: float
    latency1: int
    terms: dict

    def cycles(self, batch: int) -> float:
        return self.latency1 + (batch - 1) * self.ii


def kernel_cycles(spec, config, plan, words_per_record: int,
                  mem_latency: int = MEM_LATENCY_CYCLES) -> KernelCycles:
    """The whole kernel's modelled cycles for one model on one configuration: the project's one
    kernel cycle model, :func:`~recfabric.host.compiler.cycle_model.kernel_batch_cycles` (the
    slowest of request words, the plan's lookup rounds and the MLPs' intervals per request; MLP
    and memory latency plus the overhead fitted to the simulated kernel for one request), with
    its inputs recorded."""
    latency, ii = kernel_batch_cycles(spec, config, plan.rounds, words_per_record,
                                      mem_latency_cycles=mem_latency,
                                      pooled_inputs=plan.pooled_inputs)
    return KernelCycles(float(ii), int(latency),
                        {"lookup_rounds": plan.rounds, "request_words": words_per_record,
                         "mem_latency": mem_latency,
                         "kernel_overhead": KERNEL_OVERHEAD_CYCLES})


# ---- ONNX ---------------------------------------------------------------------------------------

def to_onnx(weights, max_bags):
    """An ONNX model (``onnx.ModelProto``) computing ``float_forward(weights, ...)``.

    Inputs: ``dense`` float32 (batch, D) when the model has dense features, then per sparse
    feature ``ids<i>`` int64 (batch, bag) and ``mask<i>`` float32 (batch, bag) (1 for IDs inside
    the bag): a bag is ``sum(Gather(table, ids) * mask)``, what ``nn.EmbeddingBag(mode="sum")``
    computes, in a form every ONNX runtime executes without loops. Output ``prob`` (batch, out).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..model.torch_io import _materialize
    spec = weights.spec
    nodes, inits, inputs = [], [], []
    count = [0]

    def name(prefix):
        count[0] += 1
        return f"{prefix}_{count[0]}"

    def const(arr, prefix):
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def op(kind, ins, **attrs):
        out = name(kind.lower())
        nodes.append(helper.make_node(kind, ins, [out], **attrs))
        return out

    def dense_layers(x, layers, last_relu):
        for i, layer in enumerate(layers):
            w = const(layer.weight.T.astype(np.float32), "w")
            b = const(layer.bias.astype(np.float32), "b")
            x = op("Add", [op("MatMul", [x, w]), b])
            if last_relu or i + 1 < len(layers):
                x = op("Relu", [x])
        return x

    x = None
    if spec.dense:
        inputs.append(helper.make_tensor_value_info("dense", TensorProto.FLOAT,
                                                    ["batch", spec.dense]))
        x = dense_layers("dense", weights.bottom, True) if weights.bottom else "dense"
    axes = const(np.array([1], np.int64), "axes")
    pooled = []
    for i, (table, bag) in enumerate(zip(weights.tables, max_bags)):
        inputs.append(helper.make_tensor_value_info(f"ids{i}", TensorProto.INT64, ["batch", bag]))
        inputs.append(helper.make_tensor_value_info(f"mask{i}", TensorProto.FLOAT,
                                                    ["batch", bag]))
        t = const(_materialize(table).astype(np.float32), f"table{i}")
        rows = op("Gather", [t, f"ids{i}"], axis=0)  # (batch, bag, dim)
        m = op("Unsqueeze", [f"mask{i}", const(np.array([2], np.int64), "ax")])
        pooled.append(op("ReduceSum", [op("Mul", [rows, m]), axes], keepdims=0))
    if spec.interaction == "concat":
        parts = ([x] if spec.dense_out else []) + pooled
        z = op("Concat", parts, axis=1) if len(parts) > 1 else parts[0]
    else:
        n = len(pooled) + 1
        v = op("Concat", [op("Unsqueeze", [p, axes]) for p in [x, *pooled]], axis=1)
        zz = op("MatMul", [v, op("Transpose", [v], perm=[0, 2, 1])])  # (batch, n, n)
        flat = op("Reshape", [zz, const(np.array([0, n * n], np.int64), "shape")])
        li, lj = np.tril_indices(n, k=-1)
        dots = op("Gather", [flat, const((li * n + lj).astype(np.int64), "pairs")], axis=1)
        z = op("Concat", [x, dots], axis=1)
    if spec.heads:
        trunk = dense_layers(z, weights.top, True)
        logits = op("Concat", [dense_layers(trunk, h, False) for h in weights.heads], axis=1)
    else:
        logits = dense_layers(z, weights.top, False)
    nodes.append(helper.make_node("Sigmoid", [logits], ["prob"]))
    outputs = [helper.make_tensor_value_info("prob", TensorProto.FLOAT,
                                             ["batch", "outputs"])]
    graph = helper.make_graph(nodes, f"recfabric_{spec.name}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="recfabric")
    model.ir_version = 8
    onnx.checker.check_model(model) if model.ByteSize() < (1 << 31) - 1 else None
    return model


def _onnx_feed(spec, dense, sparse) -> dict:
    feed = {"dense": np.asarray(dense, np.float32)} if spec.dense else {}
    for i, b in enumerate(sparse):
        feed[f"ids{i}"] = np.asarray(b.ids, np.int64)
        feed[f"mask{i}"] = b.mask().astype(np.float32)
    return feed


# ---- timing -------------------------------------------------------------------------------------

def _time_call(fn, *, min_seconds: float, max_reps: int, warmup: int = 2):
    """Time repeated calls of ``fn()``.

    Returns ``(wall, cpu, last result, repetitions, fastest wall)``: medians of the wall time
    and of the process's CPU time (``time.process_time``: every thread of this process) per call,
    in seconds. On an idle machine, with the single-threaded frameworks used here, the two agree;
    on a shared machine the wall time also counts the time other processes held the CPU.
    """
    out = None
    for _ in range(warmup):
        out = fn()
    walls, cpus = [], []
    t_end = time.perf_counter() + min_seconds
    while len(walls) < 3 or (time.perf_counter() < t_end and len(walls) < max_reps):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out, len(walls), min(walls)


def _cpu_platforms(weights, spec, want, threads: int | None = 1):
    """``{name: (prepare(dense, sparse) -> inputs, run(inputs) -> probs ndarray)}``.

    ``threads``: intra-op threads of PyTorch and ONNX Runtime (None: the frameworks' default).
    """
    plats = {}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and threads:
        torch.set_num_threads(threads)
    if torch is not None and want & {"torch-eager", "torch-script", "torch-cuda"}:
        from ..model.torch_io import bags_to_torch, to_torch
        model = to_torch(weights).eval()

        def prep_torch(dense, sparse, device="cpu"):
            d = torch.from_numpy(np.asarray(dense, np.float32)).to(device)
            s = [tuple(t.to(device) for t in bags_to_torch(b)) for b in sparse]
            return d, s

        def run_eager(inp):
            with torch.inference_mode():
                return model(*inp).numpy()
        if "torch-eager" in want:
            plats["torch-eager"] = (prep_torch, run_eager)
        if "torch-script" in want:
            traced = {}

            def run_script(inp):
                key = inp[0].shape[0]
                with torch.inference_mode():
                    if key not in traced:  # traced per batch shape, in the warm-up calls
                        traced.clear()
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")  # TracerWarning on shape checks
                            traced[key] = torch.jit.trace(model, inp, check_trace=False)
                    return traced[key](*inp).numpy()
            plats["torch-script"] = (prep_torch, run_script)
        if "torch-cuda" in want and torch.cuda.is_available():
            gpu = to_torch(weights).eval().to("cuda")

            def run_cuda(inp):
                with torch.inference_mode():
                    out = gpu(*inp)
                    torch.cuda.synchronize()
                    return out.cpu().numpy()
            plats["torch-cuda"] = (lambda d, s: prep_torch(d, s, "cuda"), run_cuda)
    if "onnxruntime" in want:
        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        if ort is not None:
            proto = to_onnx(weights, [f.bag for f in spec.sparse])
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
            plats["onnxruntime"] = (lambda d, s: _onnx_feed(spec, d, s),
                                    lambda feed: sess.run(["prob"], feed)[0])
    return plats


# ---- the comparison -----------------------------------------------------------------------------

def parse_batches(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; a one-line error names a bad entry."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            b = int(part)
        except ValueError:
            raise ValueError(f"--batches: {part!r} is not an integer") from None
        if b < 1:
            raise ValueError(f"--batches: batch size must be at least 1, not {b}")
        out.append(b)
    if not out:
        raise ValueError("--batches: no batch size given")
    return sorted(set(out))


def _check(probs, p_float, tol):
    err = float(np.max(np.abs(np.asarray(probs, np.float64) - p_float)))
    return err, err <= tol


def run_compare(model, *, config: str = "small", model_config: str = "u280", batches=(1, 16),
                sim_max_batch: int = 16, platforms=None, seed: int = 0,
                min_seconds: float = 0.5, max_reps: int = 200, threads: int | None = 1,
                timer: str = "wall", sim_memory_bytes: int = SIM_MEMORY_BYTES,
                progress=None) -> dict:
    """Run the comparison; returns ``{"model", "rows", "crossovers", "notes", ...}``.

    Parameters
    ----------
    model : str or ModelSpec
        Zoo name or spec file.
    config : str or None
        Configuration simulated with the ``sim`` backend (batches up to ``sim_max_batch``);
        skipped, with a note, when None, when the model does not fit the configuration, or when
        the model's tables exceed ``sim_memory_bytes`` (``microrec-small``'s 675 MiB of int16 rows:
        its accelerator rows are then the ``model_config`` ones).
    model_config : str or None
        Configuration evaluated with :func:`kernel_cycles` (``u280`` by default).
    platforms : set of str, optional
        Subset of ``{"sim", "model", "torch-eager", "torch-script", "onnxruntime",
        "torch-cuda"}`` (default: all).
    threads : int or None
        Intra-op threads of the CPU frameworks (default 1; None: their default).
    timer : str
        ``"wall"`` (default): measured latency is wall time. ``"cpu"``: the process's CPU time
        per call, for a machine shared with other work (equal to wall time on an idle machine
        for single-threaded frameworks; meaningless with ``threads`` > 1). Both are recorded.
    progress : callable, optional
        ``progress(msg)`` for status lines; ``progress.bar(total, desc)`` (a context manager
        with ``update()``), when present, for a progress bar over the runs.
    """
    import os

    from ...hw.config import get_preset
    from ..compiler.compiled import CompileError
    from ..compiler.steps import check_fits, compile_model
    from ..model.spec import ModelSpec, SpecError
    from ..model.synthetic import synthetic_batch
    from ..model.weights import random_weights
    from ..model.zoo import get_model
    from ..reference.golden import float_forward, golden_forward
    from ..runtime.accelerator import Accelerator
    from ..runtime.wire_format import RequestLayout
    say = progress or (lambda msg: None)
    load_start = os.getloadavg()[0]
    spec = model if isinstance(model, ModelSpec) else get_model(model)
    batches = sorted(set(int(b) for b in batches))
    if not batches or batches[0] < 1:
        raise ValueError(f"batch sizes must be at least 1, not {batches}")
    allp = {"sim", "model", "torch-eager", "torch-script", "onnxruntime", "torch-cuda"}
    want = set(allp if platforms is None else platforms)
    unknown = want - allp
    if sim_max_batch < 2:
        raise ValueError(f"--sim-max-batch must be at least 2 (two simulated batches give the "
                         f"extrapolation's slope), not {sim_max_batch}")
    if timer not in ("wall", "cpu"):
        raise ValueError(f"--timer must be wall or cpu, not {timer!r}")
    if unknown:
        raise ValueError(f"unknown platform(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(sorted(allp))}")
    sim_cfg = get_preset(config) if config and "sim" in want else None
    mod_cfg = get_preset(model_config) if model_config and "model" in want else None
    notes = []
    for label, cfg in (("sim", sim_cfg), ("model", mod_cfg)):
        if cfg is None:
            continue
        try:
            check_fits(spec, cfg)
        except (CompileError, SpecError) as e:
            notes.append(f"{label}: skipped, {e}")
            if label == "sim":
                sim_cfg = None
            else:
                mod_cfg = None
    if sim_cfg is not None:
        need = spec.table_bytes(sim_cfg.data_bits // 8)  # a lower bound of the table images
        if need > sim_memory_bytes:
            notes.append(f"sim: skipped, {spec.name}'s tables need at least {need / 2**20:,.1f} "
                         f"MiB on {sim_cfg.name}, more than the sim backend's "
                         f"{sim_memory_bytes / 2**20:,.1f} MiB of device memory"
                         + (f"; the accelerator rows are modelled ({mod_cfg.name})"
                            if mod_cfg is not None else ""))
            sim_cfg = None
    weights = random_weights(spec, seed=seed)
    inputs = {b: synthetic_batch(spec, b, seed=seed + 2 + b) for b in batches}
    p_float = {b: float_forward(weights, *inputs[b]).astype(np.float64) for b in batches}
    rows = []
    bar_total = len(batches) * (len(want - {"sim", "model"}) + (sim_cfg is not None)
                                + (mod_cfg is not None))
    bar = getattr(progress, "bar", None)
    tick = _Ticker(bar(bar_total, f"bench compare {spec.name}") if bar else None)

    def row(platform, b, latency_s, source, err, ok, **extra):
        r = {"platform": platform, "batch": b, "latency_us": round(latency_s * 1e6, 3),
             "throughput": round(b / latency_s, 1), "source": source,
             "max_abs_error_vs_float": err, "scores_ok": ok, **extra}
        rows.append(r)
        tick()
        return r

    with tempfile.TemporaryDirectory(prefix="recfabric-compare-") as tmp, tick:
        # -- accelerator, simulated
        if sim_cfg is not None:
            say(f"compiling {spec.name} for {sim_cfg.name} (sim backend)")
            cres = compile_model(spec, weights, sim_cfg, f"{tmp}/sim", seed=seed)
            qm = cres.qm
            tol = FIXED_TOL[sim_cfg.data_bits]
            simulated = {}
            sim_batches = [b for b in batches if b <= sim_max_batch]
            extra_batches = [b for b in batches if b > sim_max_batch]
            if extra_batches and len(sim_batches) < 2:
                sim_batches = sorted(set(sim_batches) | {max(1, sim_max_batch // 2),
                                                         sim_max_batch})
            with Accelerator.open("sim", sim_cfg, memory_bytes=sim_memory_bytes) as acc:
                acc.load(f"{tmp}/sim")
                say("simulating the program load (one request)")
                warm_d, warm_s = synthetic_batch(spec, 1, seed=seed + 1)
                acc.infer(warm_d, warm_s)
                for b in sim_batches:
                    dense, sparse = inputs[b] if b in inputs else synthetic_batch(
                        spec, b, seed=seed + 2 + b)
                    say(f"simulating a batch of {b} on {sim_cfg.name}")
                    t0 = time.perf_counter()
                    res = acc.infer(dense, sparse)
                    wall = time.perf_counter() - t0
                    golden = golden_forward(qm, qm.quantize_dense(dense), sparse)
                    exact = bool(np.array_equal(res.scores, golden.scores))
                    cycles = res.counters["cycles"]
                    simulated[b] = cycles
                    if b in inputs:
                        err, ok = _check(res.probabilities, p_float[b], tol)
                        row(f"recfabric-{sim_cfg.name} sim", b, cycles / sim_cfg.clock_mhz * 1e-6,
                            "simulated", err, ok and exact, golden_exact=exact, cycles=cycles,
                            clock_mhz=sim_cfg.clock_mhz, clock="assumed",
                            sim_wall_s=round(wall, 2))
                    elif not exact:
                        raise RuntimeError(f"simulated scores differ from the golden model at "
                                           f"batch {b}")
            if extra_batches:
                b1, b2 = sorted(simulated)[-2:]
                per = (simulated[b2] - simulated[b1]) / (b2 - b1)
                notes.append(f"recfabric-{sim_cfg.name} sim: batches above {sim_max_batch} are "
                             f"extrapolated from the simulated batches {b1} and {b2} "
                             f"({per:.1f} cycles per further inference), source 'modelled'")
                with Accelerator.open("reference", sim_cfg) as ref:
                    ref.load(f"{tmp}/sim")
                    for b in extra_batches:
                        dense, sparse = inputs[b]
                        res = ref.infer(dense, sparse)
                        golden = golden_forward(qm, qm.quantize_dense(dense), sparse)
                        exact = bool(np.array_equal(res.scores, golden.scores))
                        err, ok = _check(res.probabilities, p_float[b], tol)
                        cycles = simulated[b2] + per * (b - b2)
                        row(f"recfabric-{sim_cfg.name} sim", b,
                            cycles / sim_cfg.clock_mhz * 1e-6, "modelled", err, ok and exact,
                            golden_exact=exact, cycles=round(cycles),
                            clock_mhz=sim_cfg.clock_mhz, clock="assumed",
                            method=f"extrapolated from simulated batches {b1}, {b2}; scores "
                                   "from the reference backend")
        # -- accelerator, modelled
        if mod_cfg is not None:
            say(f"compiling {spec.name} for {mod_cfg.name} (cycle model, reference backend)")
            cres = compile_model(spec, weights, mod_cfg, f"{tmp}/model", seed=seed,
                                 progress=say)
            qm = cres.qm
            words = RequestLayout.for_config(qm, mod_cfg).words_per_record
            km = kernel_cycles(spec, mod_cfg, cres.plan, words)
            notes.append(f"recfabric-{mod_cfg.name} model: ii {km.ii:g} cycles, single-request "
                         f"latency {km.latency1} cycles ({json.dumps(km.terms)})")
            tol = FIXED_TOL[mod_cfg.data_bits]
            with Accelerator.open("reference", mod_cfg) as ref:
                ref.load(f"{tmp}/model")
                for b in batches:
                    dense, sparse = inputs[b]
                    res = ref.infer(dense, sparse)
                    golden = golden_forward(qm, qm.quantize_dense(dense), sparse)
                    exact = bool(np.array_equal(res.scores, golden.scores))
                    err, ok = _check(res.probabilities, p_float[b], tol)
                    cycles = km.cycles(b)
                    row(f"recfabric-{mod_cfg.name} model", b, cycles / mod_cfg.clock_mhz * 1e-6,
                        "modelled", err, ok and exact, golden_exact=exact, cycles=round(cycles),
                        clock_mhz=mod_cfg.clock_mhz, clock="assumed",
                        method="kernel_batch_cycles; scores from the reference backend")
        cres = qm = None  # the compiled images (1.4 GB for microrec-small): not needed below
        # -- CPU / GPU frameworks, measured
        plats = _cpu_platforms(weights, spec, want, threads)
        for missing in sorted((want - {"sim", "model"}) - set(plats)):
            notes.append(f"{missing}: not available here "
                         + ("(torch sees no GPU)" if missing == "torch-cuda"
                            else "(install the bench and torch extras)"))
            for _ in batches:
                tick()
        for name, (prep, run) in plats.items():
            for b in batches:
                say(f"measuring {name} at batch {b}")
                inp = prep(*inputs[b])
                wall, cpu, probs, reps, fastest = _time_call(
                    lambda run=run, inp=inp: run(inp), min_seconds=min_seconds,
                    max_reps=max_reps)
                err, ok = _check(probs, p_float[b], FLOAT_TOL)
                row(name, b, cpu if timer == "cpu" else wall, "measured", err, ok,
                    repetitions=reps, wall_us=round(wall * 1e6, 3), cpu_us=round(cpu * 1e6, 3),
                    min_wall_us=round(fastest * 1e6, 3), threads=threads or "default",
                    timer=timer, method=f"median {timer} time of repeated calls, inputs "
                                        "already converted")
    machine = {"cpus": os.cpu_count(),
               "load_average_1min": round(max(load_start, os.getloadavg()[0]), 2)}
    if machine["load_average_1min"] > machine["cpus"]:
        notes.append(f"measured rows were taken with a load average of "
                     f"{machine['load_average_1min']} on {machine['cpus']} CPUs: other work "
                     "competed for the CPU, so wall times are pessimistic"
                     + (" (rows give CPU time, --timer cpu)" if timer == "cpu" else
                        "; --timer cpu measures CPU time instead"))
    return {"model": spec.name, "seed": seed, "batches": batches, "machine": machine,
            "float_tolerance": FLOAT_TOL, "fixed_tolerance": FIXED_TOL,
            "rows": rows, "crossovers": crossovers(rows), "notes": notes}


class _Ticker:
    def __init__(self, bar):
        self.bar = bar

    def __call__(self):
        if self.bar is not None:
            self.bar.update(1)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def crossovers(rows) -> list[dict]:
    """Batch intervals where two platforms swap places in throughput.

    For each pair of platforms with rows at the same batch sizes, every pair of consecutive
    batches ``(lo, hi)`` at which the faster platform changes gives ``{"between": [lo, hi],
    "faster_below": A, "faster_above": B}``.
    """
    by = {}
    for r in rows:
        by.setdefault(r["platform"], {})[r["batch"]] = r["throughput"]
    names = sorted(by)
    out = []
    for i, a in enumerate(names):
        for bname in names[i + 1:]:
            common = sorted(set(by[a]) & set(by[bname]))
            for lo, hi in zip(common, common[1:]):
                da = by[a][lo] - by[bname][lo]
                db = by[a][hi] - by[bname][hi]
                if da * db < 0:
                    first, second = (a, bname) if da > 0 else (bname, a)
                    out.append({"between": [lo, hi], "faster_below": first,
                                "faster_above": second})
    return out


def format_table(result: dict) -> str:
    rows = result["rows"]
    lines = [f"model {result['model']}: latency per batch and throughput (inferences/s); "
             f"source: simulated / modelled (accelerator cycles at an assumed clock) / "
             f"measured (wall time on this machine)",
             f"{'platform':<24} {'batch':>6} {'latency us':>12} {'inferences/s':>14} "
             f"{'source':<10} {'max|err| vs float':>18} scores"]
    for r in rows:
        ok = "ok" if r["scores_ok"] else "FAIL"
        if "golden_exact" in r:
            ok += ", == golden" if r["golden_exact"] else ", != golden"
        lines.append(f"{r['platform']:<24} {r['batch']:>6} {r['latency_us']:>12,.2f} "
                     f"{r['throughput']:>14,.0f} {r['source']:<10} "
                     f"{r['max_abs_error_vs_float']:>18.2e} {ok}")
    for c in result["crossovers"]:
        lines.append(f"crossover between batch {c['between'][0]} and {c['between'][1]}: "
                     f"{c['faster_below']} has the higher throughput below, "
                     f"{c['faster_above']} above")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    """A Markdown table: one row per batch, per platform ``latency us / inferences per s``
    (``*`` marks accelerator rows extrapolated or modelled, not simulated)."""
    plats = list(dict.fromkeys(r["platform"] for r in result["rows"]))
    cell = {(r["platform"], r["batch"]): r for r in result["rows"]}
    out = ["| batch | " + " | ".join(plats) + " |", "|---:|" + "---:|" * len(plats)]
    for b in result["batches"]:
        cells = []
        for p in plats:
            r = cell.get((p, b))
            if r is None:
                cells.append("-")
                continue
            star = "*" if r["platform"].endswith(" sim") and r["source"] != "simulated" else ""
            cells.append(f"{r['latency_us']:,.1f} / {r['throughput']:.2g}{star}")
        out.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_rows(result: dict, path) -> None:
    """Latency and throughput vs batch (log axes), one line per platform, to ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    by = {}
    for r in result["rows"]:
        by.setdefault(r["platform"], []).append(r)
    for name, rs in sorted(by.items()):
        rs = sorted(rs, key=lambda r: r["batch"])
        style = {"simulated": "-o", "modelled": "--s", "measured": ":^"}
        src = {r["source"] for r in rs}
        fmt = style["simulated" if "simulated" in src else next(iter(src))]
        x = [r["batch"] for r in rs]
        ax1.plot(x, [r["latency_us"] for r in rs], fmt, label=name)
        ax2.plot(x, [r["throughput"] for r in rs], fmt, label=name)
    for ax, yl in ((ax1, "batch latency (us)"), (ax2, "throughput (inferences/s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(yl)
        ax.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(f"{result['model']}: accelerator (simulated/modelled, assumed clock) vs "
                 "CPU frameworks (measured)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
