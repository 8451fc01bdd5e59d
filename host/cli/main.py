"""The ``recfabric`` command line: one command, one verb per job.

``recfabric models``            the built-in model zoo, and which presets run each model
``recfabric accuracy MODEL``    fixed point vs float accuracy report (``--trained wnd|dlrm``:
                                trained benchmark models; ``--weights W --data D.npz``: yours)
``recfabric prune MODEL``       structured MLP pruning (:mod:`recfabric.host.bench.prune`)
``recfabric demo``              the main job on the default model
``recfabric plan`` / ``compile``   model compiler (:mod:`recfabric.host.cli.compile`)
``recfabric bench lookup|mlp``    cycle-accurate block benchmarks
``recfabric bench compare MODEL``  the accelerator vs PyTorch, ONNX Runtime, CUDA
                                (:mod:`recfabric.host.bench.compare`,
                                command line in :mod:`.compare`)
``recfabric report timing``     ECP5 place-and-route timing evidence (:mod:`.report`)
``recfabric soak``              randomized soak on the Verilator back-end (``host/bench/soak.py``)
``recfabric serve`` / ``loadtest`` / ``fleet``   serving on Ray Serve (:mod:`recfabric.host.serve`)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from ..model.spec import SpecError
from ..model.zoo import DEFAULT_MODEL, ZOO, get_model
from .support import progress_for

__all__ = ["main"]

# Modules that add their own verbs with ``register(subparsers)``.
_PLUGINS = (".compile", ".report", "..bench.soak", "..bench.prune", "..serve.cli")
# Modules that add a benchmark below ``recfabric bench`` with ``register(subparsers)``.
_BENCHES = ("..bench.lookup", "..bench.mlp", ".compare")


def _say(msg: str):
    print(f"[recfabric] {msg}", file=sys.stderr, flush=True)


def models_report(config_names=None) -> list:
    """Per zoo model: summary, and per configuration whether it runs and why not.

    The verdict is :func:`~recfabric.host.compiler.steps.model_runs`: the same checks ``compile``
    makes (limits, planning within the kernel's capabilities, the kernel-program check).
    """
    from ...hw.config import PRESETS, get_preset  # noqa: PLC0415
    from ..compiler.steps import model_runs  # noqa: PLC0415

    configs = [get_preset(c) for c in (config_names or PRESETS)]
    rows = []
    for name in ZOO:
        spec = get_model(name)
        verdicts = {}
        for config in configs:
            reasons = model_runs(spec, config)
            verdicts[config.name] = {"runs": not reasons, "reasons": reasons}
        rows.append({
            "name": name,
            "summary": spec.summary(),
            "hardware": spec.hardware_blockers(),
            "configs": verdicts,
            "unmodelled": list(spec.unmodelled),
            "description": spec.description,
        })
    return rows


def _cmd_models(args):
    rows = models_report([args.config] if args.config else None)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(f"{r['name']:<15} {r['summary']}")
        runs = [c for c, v in r["configs"].items() if v["runs"]]
        fails = {c: v["reasons"] for c, v in r["configs"].items() if not v["runs"]}
        if args.config:
            verdict = f"runs on {args.config}" if runs else \
                f"does not run on {args.config}: " + "; ".join(fails[args.config])
            print(f"{'':<15} {verdict}")
        else:
            print(f"{'':<15} runs on: {', '.join(runs) if runs else 'no preset'}")
            reasons = {}
            for c, why in fails.items():
                reasons.setdefault("; ".join(why), []).append(c)
            for why, cs in reasons.items():
                print(f"{'':<15} not on {', '.join(cs)}: {why}")
        for u in r["unmodelled"]:
            print(f"{'':<15} not modelled: {u}")
    return 0


def _format_accuracy(r: dict) -> str:
    return (f"{r['model']:<15} int{r['bits']:<3} max|err| {r['max_abs_error']:.5f}  "
            f"mean|err| {r['mean_abs_error']:.6f}  AUC float {r['auc_float']:.5f} fixed "
            f"{r['auc_fixed']:.5f}  log-loss diff {r['logloss_diff']:+.2e}  "
            f"({r['requests']} requests, emb {r['emb_fmt']})")


def _cmd_accuracy(args):
    if args.trained or args.data:
        return _cmd_accuracy_trained(args)
    if args.weights:
        raise ValueError("--weights needs --data D.npz (held-out requests with labels)")
    if not args.model:
        raise ValueError("accuracy needs a MODEL (zoo name or .json spec) or --trained NAME")
    from ..model.weights import random_weights
    from ..reference.quantize import accuracy_report
    spec = get_model(args.model)
    if args.requests < 1:
        raise ValueError(f"--requests must be at least 1, not {args.requests}")
    t0 = time.perf_counter()
    report = accuracy_report(random_weights(spec, seed=args.seed), bits=args.bits or 16,
                             batch=args.requests, seed=args.seed,
                             progress=progress_for(args),
                             formats=args.formats or "per-table")
    report["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(report, indent=1) if args.json else _format_accuracy(report))
    return 0


def _cmd_accuracy_trained(args):
    """Trained weights and labelled data: float vs int16 vs int8 with bootstrap intervals."""
    from ..bench.trained import VARIANTS, accuracy_trained, accuracy_user, format_report
    from ..model.training import TRAINED_MODELS
    say = progress_for(args)
    variants = [v for v in VARIANTS if args.bits in (None, v[0])
                and args.formats in (None, v[1])]
    kw = {"resamples": args.bootstrap, "progress": say, "variants": variants}
    if args.trained:
        if args.model or args.weights or args.data:
            raise ValueError("--trained takes no MODEL, --weights or --data")
        names = TRAINED_MODELS if args.trained == "all" else (args.trained,)
        reports = [accuracy_trained(n, retrain=args.retrain, **kw) for n in names]
    else:
        if not args.model or not args.weights:
            raise ValueError("--data needs a MODEL and --weights W.npz")
        reports = [accuracy_user(get_model(args.model), args.weights, args.data, **kw)]
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=1))
    else:
        print("\n".join(format_report(r) for r in reports))
    return 0


def _cmd_demo(args):
    """Main job: compile the model, run a batch through a backend, compare with the golden
    model, report cycles, latency and throughput at the configuration's clock."""
    import tempfile

    import numpy as np

    from ...hw.config import get_preset
    from ..compiler.compiled import golden_from_images, load_compiled
    from ..compiler.steps import check_fits, compile_model
    from ..model.synthetic import synthetic_batch
    from ..model.weights import random_weights
    from ..reference.golden import float_forward
    from ..runtime.accelerator import Accelerator
    from .support import check_batch, check_file

    say = progress_for(args)  # status lines (with --json only on a terminal) and bars
    spec = get_model(args.model)
    config = get_preset(args.config)
    # User mistakes are refused here, before compiling or simulating anything.
    if args.backend == "xrt":
        if not args.xclbin:
            raise ValueError("demo --backend xrt needs --xclbin FILE (the card's bitstream, "
                             "built from `recfabric build` output by v++)")
        check_file(args.xclbin, "--xclbin file")
    if args.waves and (args.backend != "sim" or not args.waves.endswith(".vcd")):
        raise ValueError(f"--waves {args.waves!r}: waveforms come from the sim backend as "
                         f"FILE.vcd (backend here: {args.backend})")
    check_fits(spec, config)
    check_batch(spec, config, args.batch, args.backend)
    weights = random_weights(spec, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="recfabric-demo-") as tmp:
        out_dir = args.out or tmp
        with say.bar(None, "compile", unit="step", ticks=True):
            say(f"compiling {spec.name} for config {config.name} into {out_dir}")
            compile_model(spec, weights, config, out_dir, seed=args.seed, progress=say)
        cm = load_compiled(out_dir)
        dense, sparse = synthetic_batch(spec, args.batch, seed=args.seed + 2)
        qm = cm.quantized_model()
        golden = golden_from_images(cm, qm.quantize_dense(dense), sparse)
        p_float = float_forward(weights, dense, sparse)
        # batch sizes besides N for the latency / steady-state figures: 1, and 2 when N is 1
        small_batches = {}
        for n in ([1, 2] if args.batch == 1 else [1]):
            d_n, s_n = synthetic_batch(spec, n, seed=args.seed + 3 + n)
            small_batches[n] = (d_n, s_n, golden_from_images(cm, qm.quantize_dense(d_n), s_n))
        kwargs = {"xclbin": args.xclbin} if args.backend == "xrt" else {}
        bar = say.bar(None, f"{args.backend} run", unit="cycle")
        if args.backend == "sim":
            def sim_progress(n):
                if say.bars:  # the bar counts cycles; without one, a status line
                    bar.update(max(0, n - bar.n))
                else:
                    say(f"  ... {n:,} cycles simulated")
            kwargs.update(progress=sim_progress, progress_every=2_000 if say.bars else 20_000)
            if args.waves:
                kwargs["waves"] = args.waves
        say(f"opening the {args.backend} backend")
        t0 = time.perf_counter()
        with bar, Accelerator.open(args.backend, config, **kwargs) as acc:
            acc.load(out_dir)
            say(f"running a batch of {args.batch} (first run also executes the model program)")
            first = acc.infer(dense, sparse)
            load_cycles = first.counters["cycles"]
            say("running the batch again, model loaded: the steady-state measurement")
            result = acc.infer(dense, sparse)
            # Latency and steady state: a batch of 1 and a second batch size (the slope between
            # the two is cycles per inference without the per-run overhead).
            say("running batches of 1 (latency) and of a second size (steady state)")
            extra = {n: acc.infer(*small_batches[n][:2]) for n in small_batches}
            wall = time.perf_counter() - t0
            speed = simulation_speed(acc.device)
    cycles = result.counters["cycles"]
    match = bool(np.array_equal(result.scores, golden.scores)
                 and np.array_equal(first.scores, golden.scores)
                 and all(np.array_equal(extra[n].scores, small_batches[n][2].scores)
                         for n in extra))
    err = np.abs(result.probabilities - p_float)
    out = {
        "model": spec.name, "config": config.name, "backend": args.backend,
        "inferences": args.batch, "match": match,
        "cycles": cycles if args.backend != "reference" else None,
        "cycles_with_model_load": load_cycles if args.backend != "reference" else None,
        "clock_mhz": config.clock_mhz,
        "scores": result.probabilities[:, 0].round(6).tolist(),
        "scores_raw": result.scores[:, 0].tolist(),
        "golden_raw": golden.scores[:, 0].tolist(),
        "max_abs_error_vs_float": float(err.max()),
        "outputs": spec.num_outputs,
        "counters": result.counters,
        "wall_seconds": round(wall, 3),
    }
    if args.backend != "reference":
        t_us = cycles / config.clock_mhz
        out.update(demo_cycle_figures(args.batch, cycles, load_cycles,
                                      {n: r.counters["cycles"] for n, r in extra.items()},
                                      "measured" if args.backend == "xrt" else "simulated"))
        out["batch_time_us"] = round(t_us, 3)
        out["throughput_per_s"] = round(args.batch / (t_us * 1e-6), 1)
        out.update(speed)  # sim, verilator: how fast the simulator ran (none for xrt)
    if spec.num_outputs > 1:  # multi-task heads: the score fields above are output 0's
        out["scores_raw_per_output"] = result.scores.tolist()
        out["golden_raw_per_output"] = golden.scores.tolist()
    if args.waves:
        out["waves"] = args.waves
    if args.json:
        print(json.dumps(out, indent=1))
        return 0 if match else 1
    if args.waves:
        print(f"waveforms: {args.waves} (GTKWave: gtkwave {args.waves[:-4]}.gtkw)")
    show = min(args.batch, 8)
    if spec.num_outputs > 1:
        print(f"{spec.num_outputs} outputs per request (task heads); output 0 shown, all compared")
    print(f"{'request':>8} {'score':>9} {'raw Q0.16':>10} {'golden':>8} {'float':>9}")
    for i in range(show):
        print(f"{i:>8} {out['scores'][i]:>9.5f} {out['scores_raw'][i]:>10} "
              f"{out['golden_raw'][i]:>8} {float(p_float[i, 0]):>9.5f}")
    if args.batch > show:
        print(f"{'...':>8} ({args.batch - show} more)")
    print(f"{args.backend} backend vs golden model: "
          f"{'MATCH (bit-exact)' if match else 'MISMATCH'} over {args.batch} inferences")
    print(f"int{config.data_bits} vs float: max |score error| {out['max_abs_error_vs_float']:.5f}")
    if args.backend != "reference":
        print(f"cycles: {cycles:,} for the batch ({load_cycles:,} with the model load); at "
              f"{config.clock_mhz:g} MHz: {out['batch_time_us']:.2f} us, "
              f"{out['throughput_per_s']:,.0f} inferences/s")
        print(f"batch-1 latency {out['latency_cycles']:,} cycles; steady state "
              f"{out['cycles_per_inference']:,} cycles/inference (batches "
              f"{out['cycles_per_inference_batches']}); program load "
              f"{out['program_load_cycles']:,} cycles")
        if speed:
            print(f"simulation: {speed['simulated_cycles']:,} cycles in "
                  f"{speed['simulation_wall_seconds']:.2f} s inside the simulator, "
                  f"{speed['simulated_cycles_per_simulation_wall_second']:,.0f} cycles/s "
                  f"(the demo's wall time {wall:.2f} s also holds elaboration or the library "
                  "load, the program load and the host's work)")
        c = result.counters
        print(f"counters: lookups {c['lookups_issued']:,}, memory stalls {c['stall_memory']:,}, "
              f"MLP-input stalls {c['stall_mlp']:,}, result stalls {c['stall_results']:,}")
    return 0 if match else 1


def simulation_speed(device) -> dict:
    """``demo --json``'s simulation-speed figures from a simulating device (``sim``,
    ``verilator``: ``cycles`` and ``sim_seconds``); ``{}`` for the others (``reference`` has no
    cycles, ``xrt``'s are measured on a card, not simulated).

    ``simulated_cycles`` counts every cycle simulated since the device was opened (resets,
    program load, register accesses, polling, the runs); ``simulation_wall_seconds`` and
    ``simulation_cpu_seconds`` the time spent inside the simulator's calls, without the
    elaboration (``sim``) or library load (``verilator``) and without the host's Python work
    between calls. ``simulated_cycles_per_simulation_wall_second`` divides the first by the
    second: the simulator's speed, not the demo's (``wall_seconds`` holds all of that too).
    """
    sim_seconds = getattr(device, "sim_seconds", None)
    if sim_seconds is None:
        return {}
    cycles, (sim_wall, sim_cpu) = int(device.cycles), sim_seconds
    return {"simulated_cycles": cycles,
            "simulation_wall_seconds": sim_wall,
            "simulation_cpu_seconds": sim_cpu,
            "simulated_cycles_per_simulation_wall_second":
                round(cycles / sim_wall, 1) if sim_wall > 0 else None}


def demo_cycle_figures(batch: int, cycles: int, load_cycles: int, by_batch: dict,
                       source: str = "simulated") -> dict:
    """``demo --json``'s cycle figures (all simulated) from a run of ``batch`` requests taking
    ``cycles`` (``load_cycles`` when it also executed the model program) and runs of other batch
    sizes (``{n: cycles}``, holding 1 and a second size when ``batch`` is 1).

    ``latency_cycles`` is the batch of 1; ``cycles_per_inference`` the steady-state slope
    between the two batch sizes (the run's fixed overhead cancels); ``program_load_cycles`` the
    extra cycles of the first run, which executed the model program before the same requests.
    ``source`` says where the cycles come from: ``"simulated"`` (sim, verilator) or
    ``"measured"`` (the kernel's cycle counter on a card, xrt).
    """
    runs = {**by_batch, batch: cycles}
    lo, hi = min(runs), max(runs)
    if lo == hi:
        raise ValueError(f"need two batch sizes for a steady-state figure, got {sorted(runs)}")
    return {"latency_cycles": runs[1],
            "cycles_per_inference": round((runs[hi] - runs[lo]) / (hi - lo), 2),
            "cycles_per_inference_batches": [lo, hi],
            "program_load_cycles": load_cycles - cycles,
            "cycles_source": source}


def _cmd_build(args):
    """Generate the kernel Verilog, the Vitis packaging files and ``capabilities.json``."""
    from pathlib import Path  # noqa: PLC0415

    from ...hw.boards.alveo import check_config, get_board
    from ...hw.config import get_preset
    from ...hw.kernel import generate_verilog
    from ...hw.vitis_package import check_vitis_config, kernel_name, write_vitis_files
    from .support import Progress
    config = get_preset(args.config)
    # Board and configuration are checked before the (long) Verilog generation.
    check_config(config, get_board(args.board))
    check_vitis_config(config)
    say = Progress()
    t0 = time.perf_counter()
    with say.bar(2, f"build {config.name}", unit="step", ticks=True):
        say(f"generating Verilog for config {config.name} (hash {config.config_hash:08x})")
        # top module named after the kernel: kernel.xml, the packaged IP and XRT use that name
        text = generate_verilog(config, name=kernel_name(config))
        say(f"writing the Vitis files for {args.board}")
        files = write_vitis_files(config, text, args.output, board=args.board)
    # the hardware/software contract of this build, as data (what the compiler plans for)
    caps = Path(args.output) / "capabilities.json"
    caps.write_text(json.dumps(config.capabilities().to_json(), indent=1, sort_keys=True) + "\n")
    files = [*files, caps.name]
    _say(f"wrote {len(files)} files to {args.output} in {time.perf_counter() - t0:.1f} s: "
         f"{', '.join(files)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recfabric",
        description="RecFabric: FPGA recommendation-inference accelerator generator.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("models", help="the built-in model zoo: which configurations run each")
    s.add_argument("--config", help="check this preset only (default: every preset)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("accuracy", help="fixed point vs float accuracy (synthetic, trained or "
                                         "the user's weights and data)")
    s.add_argument("model", nargs="?", help="zoo name or .json spec file")
    s.add_argument("--bits", type=int, choices=(8, 16), default=None,
                   help="operand width (synthetic report: default 16; trained/user data: both)")
    s.add_argument("--formats", choices=("per-table", "shared"), default=None,
                   help="activation formats (default per-table; trained/user data: both)")
    s.add_argument("--requests", type=int, default=4096, help="evaluation batch size")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--trained", choices=("wnd", "dlrm", "all"),
                   help="a trained benchmark model (trained on first use, then cached)")
    s.add_argument("--retrain", action="store_true", help="re-make the trained model's cache")
    s.add_argument("--weights", help="the user's float weights (.npz of ModelWeights.save)")
    s.add_argument("--data", help="the user's labelled requests (D.npz, see README)")
    s.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_accuracy)

    s = sub.add_parser("demo", help="main job: the default model through the simulated kernel")
    s.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo name (default {DEFAULT_MODEL})")
    s.add_argument("--config", default="small", help="accelerator preset (default small)")
    s.add_argument("--backend", default="sim", choices=("sim", "reference", "verilator", "xrt"))
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--xclbin", metavar="FILE", help="bitstream for --backend xrt (required there)")
    s.add_argument("--waves", metavar="FILE.vcd",
                   help="sim backend: write every signal of the run to this VCD file")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="keep the compiled model in this directory")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("build", help="generate kernel Verilog and Vitis packaging files")
    s.add_argument("--config", default="u280", help="accelerator preset (default u280)")
    s.add_argument("--board", default="u280",
                   help="u280, u50 or u55c (Alveo platforms in recfabric.hw.boards.alveo)")
    s.add_argument("-o", "--output", required=True, help="output directory")
    s.set_defaults(func=_cmd_build)

    for mod in _PLUGINS:
        importlib.import_module(mod, __package__).register(sub)
    s = sub.add_parser("bench", help="cycle-accurate benchmarks of hardware blocks")
    bench = s.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for mod in _BENCHES:
        importlib.import_module(mod, __package__).register(bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return rc
    except (SpecError, ValueError, RuntimeError) as e:
        print(f"recfabric {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`recfabric models --json | head`): not an error of ours. Point
        # stdout at /dev/null so that the interpreter's final flush does not fail again.
        import os
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by SIGPIPE
    except OSError as e:  # missing or unreadable files named on the command line
        msg = e.strerror and e.filename and f"{e.strerror}: {e.filename!r}" or str(e)
        print(f"recfabric {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"recfabric {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
