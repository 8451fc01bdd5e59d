"""The ``recfabric`` command line: one command, one verb per job.

``recfabric models``            list the built-in model zoo
``recfabric accuracy MODEL``    fixed point vs float accuracy report
``recfabric demo``              the main job on the default model
``recfabric plan`` / ``compile``   model compiler (:mod:`recfabric.host.compiler_cli`)
``recfabric bench lookup|mlp``    cycle-accurate block benchmarks
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from .model_spec import SpecError
from .model_zoo import DEFAULT_MODEL, ZOO, get_model

__all__ = ["main"]

# Modules that add their own verbs with ``register(subparsers)``.
_PLUGINS = (".compiler_cli",)
# Modules that add a benchmark below ``recfabric bench`` with ``register(subparsers)``.
_BENCHES = (".bench_lookup", ".bench_mlp")


def _say(msg: str):
    print(f"[recfabric] {msg}", file=sys.stderr, flush=True)


def _cmd_models(args):
    rows = []
    for name in ZOO:
        spec = get_model(name)
        rows.append({
            "name": name,
            "summary": spec.summary(),
            "hardware": spec.hardware_blockers(),
            "unmodelled": list(spec.unmodelled),
            "description": spec.description,
        })
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        hw = "runs on RecFabric hardware" if not r["hardware"] else \
            "hardware lacks: " + "; ".join(r["hardware"])
        print(f"{r['name']:<15} {r['summary']}")
        print(f"{'':<15} {hw}")
        for u in r["unmodelled"]:
            print(f"{'':<15} not modelled: {u}")
    return 0


def _format_accuracy(r: dict) -> str:
    return (f"{r['model']:<15} int{r['bits']:<3} max|err| {r['max_abs_error']:.5f}  "
            f"mean|err| {r['mean_abs_error']:.6f}  AUC float {r['auc_float']:.5f} fixed "
            f"{r['auc_fixed']:.5f}  log-loss diff {r['logloss_diff']:+.2e}  "
            f"({r['requests']} requests, emb {r['emb_fmt']})")


def _cmd_accuracy(args):
    from .quantize import accuracy_report
    from .weights import random_weights
    spec = get_model(args.model)
    t0 = time.perf_counter()
    report = accuracy_report(random_weights(spec, seed=args.seed), bits=args.bits,
                             batch=args.requests, seed=args.seed,
                             progress=None if args.json else _say)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(report, indent=1) if args.json else _format_accuracy(report))
    return 0


def _cmd_demo(args):
    import numpy as np

    from .golden import float_forward, golden_forward
    from .quantize import quantize_model
    from .synthetic import synthetic_batch
    from .weights import random_weights
    spec = get_model(args.model)
    quiet = args.json
    if not quiet:
        _say(f"model {spec.name}: {spec.summary()}")
    weights = random_weights(spec, seed=args.seed)
    cd, cs = synthetic_batch(spec, 1024, seed=args.seed + 1)
    qm = quantize_model(weights, cd, cs, bits=args.bits)
    dense, sparse = synthetic_batch(spec, args.batch, seed=args.seed + 2)
    t0 = time.perf_counter()
    golden = golden_forward(qm, qm.quantize_dense(dense), sparse)
    t_golden = time.perf_counter() - t0
    p_float = float_forward(weights, dense, sparse)
    err = np.abs(golden.probabilities - p_float)
    out = {
        "model": spec.name, "backend": "golden", "bits": args.bits, "inferences": args.batch,
        "scores": golden.probabilities[:, 0].round(6).tolist(),
        "scores_raw": golden.scores[:, 0].tolist(),
        "float_scores": p_float[:, 0].astype(float).round(6).tolist(),
        "max_abs_error_vs_float": float(err.max()),
        "mean_abs_error_vs_float": float(err.mean()),
        "golden_seconds": round(t_golden, 4),
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    show = min(args.batch, 8)
    print(f"{'request':>8} {'score':>9} {'raw Q0.16':>10} {'float':>9}")
    for i in range(show):
        print(f"{i:>8} {out['scores'][i]:>9.5f} {out['scores_raw'][i]:>10} "
              f"{out['float_scores'][i]:>9.5f}")
    if args.batch > show:
        print(f"{'...':>8} ({args.batch - show} more)")
    print(f"int{args.bits} vs float over {args.batch} requests: max |error| "
          f"{out['max_abs_error_vs_float']:.5f}, mean {out['mean_abs_error_vs_float']:.6f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recfabric",
        description="RecFabric: FPGA recommendation-inference accelerator generator.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("models", help="list the built-in model zoo")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("accuracy", help="fixed point vs float accuracy on synthetic inputs")
    s.add_argument("model", help="zoo name or .json spec file")
    s.add_argument("--bits", type=int, choices=(8, 16), default=16)
    s.add_argument("--requests", type=int, default=4096, help="evaluation batch size")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_accuracy)

    s = sub.add_parser("demo", help="main job: run a batch of the default model end to end")
    s.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo name (default {DEFAULT_MODEL})")
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--bits", type=int, choices=(8, 16), default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_demo)

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
        return args.func(args) or 0
    except (SpecError, ValueError) as e:
        print(f"recfabric {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
