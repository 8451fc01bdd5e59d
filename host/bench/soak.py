"""`recfabric soak`: a randomized soak of the generated kernel on the Verilator back-end.

Random model shapes within a configuration's limits (int16 and int8 configurations), random
batches, random pauses and back-pressure on every AXI channel, model switches WITHOUT reset
(what :meth:`Accelerator.load` does), raw bad records interleaved (IDs out of range, oversize
bags, zero bags on one-hot features, corrupt lengths), random SLVERR/DECERR responses and resets
in the middle of a batch. Every score of a good record is compared with the golden model with
``==``, and every error flag with the spec (``docs/wire_format.md``, ``docs/kernel.md``):

=========================  ================================================================
check                      the spec says
=========================  ================================================================
``score``                  a good record's score equals ``golden_from_images`` (-> mismatches)
``record_valid``           a good record's status byte is exactly VALID (0x01)
``requests_done``          the status block counts every request of the batch
``errors_clean``           a run of good records only reports no error flag
``bad_index_flag``         an ID outside its table sets ERROR_BAD_INDEX
``id_range_record``        ... and the record's status is VALID | ID_RANGE
``bad_request_flag``       an oversize bag or corrupt length sets ERROR_BAD_REQUEST
``bag_range_record``       ... and the record's status is VALID | BAG_RANGE
``zero_onehot_flag``       a one-hot bag of length 0 sets ERROR_BAD_REQUEST
``zero_onehot_record``     ... and the record's status is VALID | BAG_RANGE
``first_error_request``    names the index in the batch of the first offending request
``axi_flag``               an injected SLVERR/DECERR sets ERROR_AXI
``hang``                   every run ends with ap_done (-> hangs; the device is reset)
=========================  ================================================================

A failing check is counted (``failures``), never hidden; the first examples of each are kept.
Mismatches are also counted per scenario (``steady``, ``after_switch``, ``after_switch_to_dense``,
``after_reset``, ``after_bad``, ``after_axi_error``) so that a regression of issue 10 item 1
(wrong scores after a switch from a model without dense features) shows up by name.

Typical use::

    report = soak("small", inferences=100_000, seed=1)
    print(report.to_json())
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...hw.config import AcceleratorConfig, get_preset
from ...hw.register_map import ERROR_AXI, ERROR_BAD_INDEX, ERROR_BAD_REQUEST
from ..compiler.compiled import CompileError, golden_from_images, load_compiled
from ..compiler.steps import compile_model
from ..model.spec import Bags, ModelSpec, SparseFeature
from ..model.synthetic import synthetic_batch
from ..model.weights import random_weights
from ..runtime.accelerator import Accelerator, DeviceError, KernelError, open_device
from ..runtime.wire_format import ResultStatus, pack_requests

__all__ = ["SoakReport", "soak", "soak_config", "random_spec", "CHECKS"]

CHECKS = ("score", "record_valid", "requests_done", "errors_clean", "bad_index_flag",
          "id_range_record", "bad_request_flag", "bag_range_record", "zero_onehot_flag",
          "zero_onehot_record", "first_error_request", "axi_flag", "hang")
SCENARIOS = ("steady", "after_switch", "after_switch_to_dense", "after_reset", "after_bad",
             "after_axi_error")
VALID = int(ResultStatus.VALID)
ID_RANGE = int(ResultStatus.ID_RANGE)
BAG_RANGE = int(ResultStatus.BAG_RANGE)


def soak_config(name: str | AcceleratorConfig) -> AcceleratorConfig:
    """A preset, or ``<preset>-int8`` for its int8 variant (data 8 bits, accumulator 32)."""
    if isinstance(name, AcceleratorConfig):
        return name
    if name.endswith("-int8") and name not in ("u280-int8",):
        base = get_preset(name[:-len("-int8")])
        return base.replace(name=name, data_bits=8, acc_bits=32)
    return get_preset(name)


def random_spec(cfg: AcceleratorConfig, rng: np.random.Generator, name: str,
                allow_no_dense: bool = True) -> ModelSpec:
    """A random concat model within ``cfg``'s limits (features, bags, dims, dense, layers).

    int8 configurations get exactly as many top layers as engines: padding int8 models with
    identity layers is refused at load today (issue 10 item 7).
    """
    n = int(rng.integers(1, min(cfg.max_features, 8) + 1))
    dims = [d for d in (2, 4, 8, 16, 32, 64) if d <= cfg.max_dim]
    lo_dense = 0 if allow_no_dense else 1
    dense = int(rng.integers(lo_dense, min(cfg.max_dense, 8) + 1))
    feats, width = [], dense
    for i in range(n):
        dim = int(rng.choice(dims))
        if width + dim > cfg.max_concat:
            break
        rows = int(math.exp(rng.uniform(math.log(2), math.log(20_000))))
        bag = 1 if rng.random() < 0.5 else int(rng.integers(2, cfg.max_bag + 1)) \
            if cfg.max_bag > 1 else 1
        feats.append(SparseFeature(f"f{i}", rows, dim, bag))
        width += dim
    if not feats and dense == 0:
        dense = 1
    layers = cfg.max_top_layers if cfg.data_bits == 8 else \
        int(rng.integers(1, cfg.max_top_layers + 1))
    top = [int(rng.integers(1, cfg.max_width + 1)) for _ in range(layers - 1)] + [1]
    return ModelSpec(name=name, sparse=tuple(feats), dense=dense, top_mlp=tuple(top))


@dataclass
class SoakReport:
    """What a soak did and found. ``to_json()`` is the ``--json`` output."""

    config: str
    seed: int
    inferences: int = 0  # good records whose score was compared with the golden model
    models: int = 0  # model shapes run
    models_refused: int = 0  # random shapes the compiler or kernel program refused
    runs: int = 0
    mismatches: int = 0  # good records with a score != golden
    hangs: int = 0
    flag_errors: int = 0  # failed flag checks (every check but score and hang)
    bad_records: int = 0
    axi_errors_injected: int = 0
    resets: int = 0
    cycles: int = 0  # kernel cycles (the status block's counter) of the runs that finished
    # Every clock cycle the Verilator harness simulated during the soak: the runs, program
    # loads, register accesses and polling, resets, the cycles before a reset mid-batch.
    simulated_cycles: int = 0
    # Wall / CPU seconds spent inside the harness's simulating calls (VerilatorDevice
    # .sim_seconds: resets, steps, register accesses, waits for ap_done; timed in C++). The
    # host's Python work between them (compiles, golden model, packing) is not in them.
    run_wall_seconds: float = 0.0
    run_cpu_seconds: float = 0.0
    cycles_per_second: float = 0.0  # simulated_cycles / run_wall_seconds
    cpu_cycles_per_second: float = 0.0  # simulated_cycles / run_cpu_seconds
    compile_seconds: float = 0.0  # wall time of compile_model + load_compiled
    golden_seconds: float = 0.0  # wall time of the golden model (golden_from_images)
    wall_seconds: float = 0.0  # everything, compiles included
    cpu_seconds: float = 0.0  # CPU time of this process over the whole soak
    failures: dict = field(default_factory=lambda: {c: 0 for c in CHECKS})
    mismatches_by_scenario: dict = field(default_factory=lambda: {s: 0 for s in SCENARIOS})
    examples: list = field(default_factory=list)  # first failures of each check
    refused_examples: list = field(default_factory=list)

    def fail(self, check: str, count: int = 1, **example) -> None:
        self.failures[check] += count
        if check == "score":
            self.mismatches += count
        elif check == "hang":
            self.hangs += count
        else:
            self.flag_errors += count
        if sum(e["check"] == check for e in self.examples) < 3:
            self.examples.append({"check": check, **example})

    def to_json(self) -> dict:
        return asdict(self)


def _corrupt(req: bytearray, layout, spec: ModelSpec, rng, batch: int) -> dict:
    """Make some records of a packed batch bad; returns {record: kind}."""
    bad = {}
    kinds = ["id"]
    if any(f.bag == 1 for f in spec.sparse):
        kinds.append("zero_onehot")
    kinds += ["oversize", "corrupt_length"]
    for r in sorted(rng.choice(batch, size=int(rng.integers(1, min(batch, 3) + 1)),
                               replace=False).tolist()):
        kind = str(rng.choice(kinds))
        base = r * layout.record_bytes
        if kind == "id":
            f = int(rng.integers(len(layout.slots)))
            slot = layout.slots[f]
            length = int.from_bytes(req[base + slot.length_offset:][:2], "little")
            if length == 0:  # make the bag non-empty so that the bad ID is live
                req[base + slot.length_offset:base + slot.length_offset + 2] = (1).to_bytes(
                    2, "little")
                length = 1
            k = int(rng.integers(length))
            bad_id = int(rng.integers(slot.rows, min(slot.rows * 4, 2**32 - 1) + 1)) \
                if rng.random() < 0.7 else 2**32 - 1
            off = base + slot.ids_offset + 4 * k
            req[off:off + 4] = bad_id.to_bytes(4, "little")
        elif kind == "zero_onehot":
            slot = next(s for s in layout.slots if s.bag == 1)
            req[base + slot.length_offset:base + slot.length_offset + 2] = bytes(2)
        else:
            slot = layout.slots[int(rng.integers(len(layout.slots)))]
            n = slot.bag + int(rng.integers(1, 4)) if kind == "oversize" else \
                int(rng.integers(slot.bag + 1, 65536))
            req[base + slot.length_offset:base + slot.length_offset + 2] = n.to_bytes(2, "little")
        bad[r] = kind
    return bad


def soak(config: str | AcceleratorConfig = "small", *, minutes: float | None = None,
         inferences: int | None = None, seed: int = 0, max_batch: int = 48,
         p_stall: float = 0.2, allow_no_dense: bool = True, p_bad: float = 0.15,
         p_axi_error: float = 0.08, p_reset: float = 0.05, batches_per_model: int = 4,
         run_timeout: float = 120.0, max_cycles: int = 2_000_000, workdir=None,
         progress=None) -> SoakReport:
    """Soak the Verilator back-end; stop after ``minutes`` or ``inferences`` (whichever first).

    ``allow_no_dense=False`` keeps every model's dense count >= 1 (models without dense features
    exercise the model switch of issue 10 item 1, fixed in the kernel; see the module docs for
    the checks).
    """
    if minutes is None and inferences is None:
        raise ValueError("give minutes or inferences (or both) to bound the soak")
    for name, value in (("max_batch", max_batch), ("batches_per_model", batches_per_model)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
    cfg = soak_config(config)
    rng = np.random.default_rng(seed)
    rep = SoakReport(config=cfg.name, seed=seed)
    t_start, c_start = time.perf_counter(), time.process_time()
    deadline = t_start + 60 * minutes if minutes is not None else math.inf
    target = inferences if inferences is not None else math.inf
    tmp = tempfile.TemporaryDirectory(prefix="recfabric-soak-") if workdir is None else None
    root = Path(workdir) if workdir is not None else Path(tmp.name)
    dev = open_device("verilator", cfg, p_stall=p_stall, seed=seed, max_cycles=max_cycles,
                      mem_latency=int(rng.integers(8, 80)))
    acc = Accelerator(dev)
    cycle0, (sim_wall0, sim_cpu0) = dev.cycle, dev.sim_seconds
    prev_dense = None
    try:
        while rep.inferences < target and time.perf_counter() < deadline:
            spec = random_spec(cfg, rng, f"soak{rep.models + rep.models_refused}",
                               allow_no_dense)
            d = root / spec.name
            try:
                t0 = time.perf_counter()
                compile_model(spec, random_weights(spec, seed=int(rng.integers(1 << 30))), cfg,
                              d, seed=int(rng.integers(1 << 30)), calib_batch=256)
                cm = load_compiled(d)
                rep.compile_seconds += time.perf_counter() - t0
                acc.load(cm)  # a model switch without reset
            except (CompileError, ValueError) as e:
                rep.models_refused += 1
                if len(rep.refused_examples) < 5:
                    rep.refused_examples.append(f"{spec.shape_string()}: {e}")
                continue
            rep.models += 1
            scenario = "after_switch" if prev_dense is None or prev_dense or not spec.dense \
                else "after_switch_to_dense"
            if prev_dense is None:
                scenario = "steady"
            prev_dense = spec.dense > 0
            for _ in range(batches_per_model):
                if rep.inferences >= target or time.perf_counter() > deadline:
                    break
                scenario = _one_run(acc, dev, cm, spec, cfg, rng, rep, scenario, max_batch,
                                    p_bad, p_axi_error, p_reset, run_timeout)
                if progress:
                    progress(rep)
    finally:
        rep.simulated_cycles = dev.cycle - cycle0
        sim_wall, sim_cpu = dev.sim_seconds
        rep.run_wall_seconds, rep.run_cpu_seconds = sim_wall - sim_wall0, sim_cpu - sim_cpu0
        acc.close()
        if tmp is not None:
            tmp.cleanup()
    rep.wall_seconds = time.perf_counter() - t_start
    rep.cpu_seconds = time.process_time() - c_start
    if rep.run_wall_seconds:
        rep.cycles_per_second = rep.simulated_cycles / rep.run_wall_seconds
    if rep.run_cpu_seconds:
        rep.cpu_cycles_per_second = rep.simulated_cycles / rep.run_cpu_seconds
    return rep


def _batch(spec, cm, rng, batch):
    dense_f, sparse = synthetic_batch(spec, batch, seed=int(rng.integers(1 << 30)))
    qm = cm.quantized_model()
    dense = qm.quantize_dense(dense_f)
    out = []
    for f, b in zip(spec.sparse, sparse):
        lengths = b.lengths.copy()
        if f.bag > 1:  # legal empty bags on multi-hot features
            lengths[rng.random(batch) < 0.1] = 0
        ids = b.ids.copy()
        for i in range(batch):
            ids[i, lengths[i]:] = 0
        out.append(Bags(ids, lengths))
    return dense, out


def _one_run(acc, dev, cm, spec, cfg, rng, rep, scenario, max_batch, p_bad, p_axi_error,
             p_reset, timeout) -> str:
    """One run of a random kind; returns the scenario of the next run."""
    batch = int(rng.integers(1, max_batch + 1))
    dense, sparse = _batch(spec, cm, rng, batch)
    t0 = time.perf_counter()
    want = golden_from_images(cm, dense, sparse).scores
    rep.golden_seconds += time.perf_counter() - t0
    layout = acc.layout
    u = rng.random()
    label = {"model": spec.shape_string(), "run": dev.runs + 1, "batch": batch,
             "scenario": scenario}

    def recover():
        dev.reset()
        rep.resets += 1
        acc.load(cm)  # a reset erases the kernel program

    if u < p_reset:  # reset in the middle of a batch
        req = pack_requests(layout, dense, sparse)
        try:
            acc.run_raw(req, wait=False)
            dev.step(int(rng.integers(1, 3000)))
        except DeviceError as e:
            rep.fail("hang", **label, error=str(e))
        recover()
        return "after_reset"

    if u < p_reset + p_axi_error:  # SLVERR/DECERR on one random port
        port = str(rng.choice(dev.ports))
        before = dev.port_stats()[port]["errors_injected"]
        dev.configure_port(port, p_error=float(rng.uniform(0.05, 0.5)))
        req = pack_requests(layout, dense, sparse)
        try:
            counters = acc.run_raw(req, timeout=timeout).counters
            rep.runs += 1
            injected = dev.port_stats()[port]["errors_injected"] - before
            rep.axi_errors_injected += injected
            rep.cycles += counters["cycles"]
            if injected and not counters["errors"] & ERROR_AXI:
                rep.fail("axi_flag", **label, port=port, injected=injected,
                         errors=counters["errors"])
        except DeviceError as e:
            rep.fail("hang", **label, port=port, error=str(e))
        finally:
            dev.configure_port(port, p_error=0.0)
        recover()  # the program may have been read with errors: reset and load again
        return "after_axi_error"

    if u < p_reset + p_axi_error + p_bad and spec.sparse:  # raw bad records interleaved
        req = bytearray(pack_requests(layout, dense, sparse))
        bad = _corrupt(req, layout, spec, rng, batch)
        rep.bad_records += len(bad)
        try:
            r = acc.run_raw(bytes(req), timeout=timeout)
            scores, status, counters = r.scores, r.status, r.counters
        except DeviceError as e:
            rep.fail("hang", **label, bad=bad, error=str(e))
            recover()
            return "after_reset"
        rep.runs += 1
        rep.cycles += counters["cycles"]
        _check_good(rep, label, want, scores, status, counters, batch, skip=set(bad))
        kinds = set(bad.values())
        errors = counters["errors"]
        if "id" in kinds and not errors & ERROR_BAD_INDEX:
            rep.fail("bad_index_flag", **label, bad=bad, errors=errors)
        if kinds & {"oversize", "corrupt_length"} and not errors & ERROR_BAD_REQUEST:
            rep.fail("bad_request_flag", **label, bad=bad, errors=errors)
        if "zero_onehot" in kinds and not errors & ERROR_BAD_REQUEST:
            rep.fail("zero_onehot_flag", **label, bad=bad, errors=errors)
        for r, kind in bad.items():
            flag = ID_RANGE if kind == "id" else BAG_RANGE
            check = {"id": "id_range_record", "zero_onehot": "zero_onehot_record"}.get(
                kind, "bag_range_record")
            if int(status[r]) != VALID | flag:
                rep.fail(check, **label, record=r, kind=kind, status=int(status[r]))
        first = min(bad)
        if counters["first_error_request"] != first:
            rep.fail("first_error_request", **label, bad=bad,
                     got=counters["first_error_request"], want=first)
        return "after_bad"

    # A good batch through the production driver path (Accelerator.infer).
    try:
        r = acc.infer(dense, sparse, fixed_point=True, timeout=timeout)
        counters, scores, status = r.counters, r.scores, r.status
    except KernelError:
        counters = acc.counters()
        rep.fail("errors_clean", **label, errors=counters.get("errors"))
        return scenario
    except ValueError as e:  # the driver refused records: a result record was not VALID
        rep.fail("record_valid", **label, error=str(e))
        return scenario
    except DeviceError as e:
        rep.fail("hang", **label, error=str(e))
        recover()
        return "after_reset"
    rep.runs += 1
    rep.cycles += counters["cycles"]
    _check_good(rep, label, want, scores, status, counters, batch, skip=set())
    return "steady"


def _check_good(rep, label, want, scores, status, counters, batch, skip):
    good = np.array([i for i in range(batch) if i not in skip], dtype=np.int64)
    rep.inferences += len(good)
    if counters["requests_done"] != batch:
        rep.fail("requests_done", **label, got=counters["requests_done"])
    if not len(good):
        return
    bad_status = good[status[good] != VALID]
    if len(bad_status):
        rep.fail("record_valid", len(bad_status), **label, record=int(bad_status[0]),
                 status=int(status[bad_status[0]]))
    wrong = good[np.any(scores[good] != want[good], axis=1)]
    if len(wrong):
        rep.fail("score", len(wrong), **label, record=int(wrong[0]),
                 got=scores[wrong[0]].tolist(), want=want[wrong[0]].tolist())
        rep.mismatches_by_scenario[label["scenario"]] += len(wrong)


def format_report(rep: SoakReport) -> str:
    """Human-readable summary of a soak."""
    lines = [
        f"soak of config {rep.config!r} (seed {rep.seed}): {rep.inferences} inferences over "
        f"{rep.models} model shapes ({rep.models_refused} refused), {rep.runs} runs, "
        f"{rep.bad_records} bad records, {rep.axi_errors_injected} AXI errors injected, "
        f"{rep.resets} resets",
        f"mismatches {rep.mismatches}, hangs {rep.hangs}, flag errors {rep.flag_errors}",
        f"simulated {rep.simulated_cycles} cycles ({rep.cycles} of them counted by the kernel "
        f"in its runs) in {rep.run_wall_seconds:.1f} s wall / {rep.run_cpu_seconds:.1f} s CPU "
        f"inside the Verilator harness: {rep.cycles_per_second:,.0f} cycles/s wall, "
        f"{rep.cpu_cycles_per_second:,.0f} cycles/s CPU",
        f"host: compiles {rep.compile_seconds:.1f} s, golden model {rep.golden_seconds:.1f} s; "
        f"{rep.wall_seconds:.1f} s wall, {rep.cpu_seconds:.1f} s CPU in all",
    ]
    failing = {k: v for k, v in rep.failures.items() if v}
    if failing:
        lines.append("failing checks: " + ", ".join(f"{k} {v}" for k, v in failing.items()))
        by = {k: v for k, v in rep.mismatches_by_scenario.items() if v}
        if by:
            lines.append("mismatches by scenario: " + ", ".join(f"{k} {v}" for k, v in
                                                                by.items()))
        for e in rep.examples[:8]:
            lines.append("  e.g. " + json.dumps(e, default=str)[:300])
    return "\n".join(lines)


def _cmd_soak(args) -> int:
    if args.minutes is None and args.inferences is None:
        args.minutes = 2.0

    t0 = time.perf_counter()
    last = [-1]

    def progress(rep):  # on stderr, so that --json output stays clean
        if rep.runs % 50 or rep.runs == last[0]:
            return
        last[0] = rep.runs
        print(f"[recfabric] soak: {time.perf_counter() - t0:.0f} s, {rep.runs} runs, "
              f"{rep.inferences} inferences, {rep.models} models, {rep.mismatches} mismatches, "
              f"{rep.hangs} hangs, {rep.flag_errors} flag errors, {rep.cycles} kernel cycles",
              file=sys.stderr, flush=True)

    rep = soak(args.config, minutes=args.minutes, inferences=args.inferences, seed=args.seed,
               p_stall=args.p_stall, max_batch=args.max_batch,
               batches_per_model=args.batches_per_model,
               allow_no_dense=not args.dense_only, progress=progress)
    if args.json:
        print(json.dumps(rep.to_json(), indent=1, default=str))
    else:
        print(format_report(rep))
    return 0 if not (rep.mismatches or rep.hangs or rep.flag_errors) else 1


def register(subparsers):
    """Add the ``soak`` verb to ``recfabric``'s subparsers."""
    s = subparsers.add_parser(
        "soak", help="randomized soak of the generated kernel on the Verilator back-end")
    s.add_argument("--config", default="small",
                   help="accelerator preset, or <preset>-int8 for its int8 variant "
                        "(default small)")
    s.add_argument("--minutes", type=float, help="stop after this long (default 2)")
    s.add_argument("--inferences", type=int, help="stop after this many checked inferences")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--p-stall", type=float, default=0.2,
                   help="pause probability per cycle on every AXI channel (default 0.2)")
    s.add_argument("--max-batch", type=int, default=48,
                   help="largest random batch (default 48)")
    s.add_argument("--batches-per-model", type=int, default=4,
                   help="runs per random model before the next switch (default 4; more runs "
                        "per model spend less of the soak compiling models)")
    s.add_argument("--dense-only", action="store_true",
                   help="only models with dense features")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_soak)
