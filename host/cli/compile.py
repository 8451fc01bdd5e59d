"""``recfabric plan`` and ``recfabric compile``: the model compiler's command-line verbs.

:func:`register` adds both verbs to the ``recfabric`` parser's subparsers. ``plan --all`` prints
the comparison table of docs/compiler.md (every planner, plus the default placement without
merging, on the zoo's measured models, with planner run times).
"""

from __future__ import annotations

import json
import sys
import time

from ..compiler.planner import PLANNERS, Layout, plan, plan_default, study_capabilities
from ..compiler.steps import COMPILE_STEPS
from ..model.zoo import get_model

__all__ = ["register", "compare_planners", "MEASURED_MODELS"]

#: Models of the planner comparison (docs/compiler.md), each on the int16 and int8 U280 presets.
MEASURED_MODELS = ("microrec-small", "microrec-large", "kaggle", "rmc1", "rmc2", "rmc3", "wnd",
                   "ncf", "mt-wnd", "din", "dien")


def _say(msg: str):
    print(f"[recfabric] {msg}", file=sys.stderr, flush=True)


def compare_planners(models=MEASURED_MODELS, configs=("u280", "u280-int8")) -> list:
    """Rounds, storage and run time of ``none``, ``microrec``, ``default`` without merging and
    ``default`` for every model and configuration: a list of dicts (one per model/config).

    Plans for :func:`~recfabric.host.compiler.planner.study_capabilities` (row splits, copies and
    any merge allowed): a comparison of the planning algorithms at MicroRec's scale, not of what
    the current kernel runs."""
    from recfabric.hw.config import get_preset
    rows = []
    for cname in configs:
        config = study_capabilities(get_preset(cname))
        for name in models:
            spec = get_model(name)
            row = {"model": name, "config": cname, "raw_bytes": spec.table_bytes(
                config.data_bits // 8)}
            runs = [(p, lambda s, c, p=p: plan(s, c, p)) for p in ("none", "microrec")]
            runs.append(("default-nomerge", lambda s, c: plan_default(
                s, Layout.from_capabilities(c), c.config, merge=False, baselines=False)))
            runs.append(("default", lambda s, c: plan(s, c, "default")))
            for label, fn in runs:
                t0 = time.perf_counter()
                try:
                    p = fn(spec, config)
                except ValueError as e:
                    row[label] = {"error": str(e)}
                    continue
                row[label] = {"rounds": p.rounds, "stored_bytes": p.stored_bytes,
                              "storage_overhead": round(p.storage_overhead, 4),
                              "tables_per_channel": p.tables_per_channel,
                              "merged_groups": sum(len(g.features) > 1 for g in p.groups),
                              "seconds": round(time.perf_counter() - t0, 3)}
            rows.append(row)
    return rows


def _cell(r: dict) -> str:
    if "error" in r:
        return "does not fit"
    return f"{r['rounds']} / {100 * r['storage_overhead']:+.1f}%"


def format_comparison(rows) -> str:
    """Markdown table of :func:`compare_planners` output."""
    out = ["| model | config | raw MiB | none | microrec | default, no merging | default | "
           "default merges | default s |",
           "|---|---|---:|---|---|---|---|---:|---:|"]
    for r in rows:
        d = r["default"]
        out.append(f"| {r['model']} | {r['config']} | {r['raw_bytes'] / 2**20:,.1f} | "
                   f"{_cell(r['none'])} | {_cell(r['microrec'])} | "
                   f"{_cell(r['default-nomerge'])} | {_cell(d)} | "
                   f"{d.get('merged_groups', '-')} | {d.get('seconds', '-')} |")
    return "\n".join(out)


def _config(args):
    from recfabric.hw.config import get_preset
    config = get_preset(args.config)
    bits = getattr(args, "bits", None)
    if bits is not None and bits != config.data_bits:
        raise ValueError(f"--bits {bits} does not match configuration {config.name!r} "
                         f"(data_bits {config.data_bits}); pick a configuration built for "
                         f"int{bits}, e.g. --config u280-int8")
    return config


def _cmd_plan(args):
    if args.all:
        rows = compare_planners()
        print(json.dumps(rows, indent=1) if args.json else format_comparison(rows))
        return 0
    if not args.model:
        raise ValueError("plan needs a MODEL (zoo name or .json spec) or --all")
    spec = get_model(args.model)
    config = _config(args)
    t0 = time.perf_counter()
    p = plan(spec, study_capabilities(config) if args.study else config, args.planner)
    seconds = time.perf_counter() - t0
    if args.json:
        out = p.to_json(spec)
        out["seconds"] = round(seconds, 4)
        out["hardware_blockers"] = spec.hardware_blockers()
        print(json.dumps(out, indent=1))
    else:
        print(p.text(spec))
        print(f"planned in {seconds:.3f} s")
        for b in spec.hardware_blockers():
            print(f"note: compile will refuse this model: {b}")
    return 0


def _cmd_compile(args):
    from ..compiler.steps import COMPILE_STEPS, compile_model
    from ..model.weights import ModelWeights, random_weights
    spec = get_model(args.model)
    config = _config(args)
    if args.weights:
        weights = ModelWeights.load(args.weights)
        if weights.spec != spec:
            raise ValueError(f"weights file {args.weights!r} is for model "
                             f"{weights.spec.name!r}, not {spec.name!r}")
    else:
        weights = random_weights(spec, seed=args.seed)
    result = compile_model(spec, weights, config, args.output, args.planner, seed=args.seed,
                           calibration=args.calibration, formats=args.formats,
                           from_step=args.from_step,
                           to_step=args.to_step, progress=None if args.json else _say)
    ran = [s["name"] for s in result.steps if s["status"] == "ran"]
    cal = None
    if result.qm is not None:
        cal = json.loads((result.directory / "steps" / "1_quantize" /
                          "calibration.json").read_text())
    if args.json:
        print(json.dumps({"directory": str(result.directory), "steps": result.steps,
                          "calibration": cal,
                          "figures": result.plan.figures() if result.plan else None,
                          "buffers": result.manifest["buffers"] if result.manifest else None},
                         indent=1))
        return 0
    if cal is not None:
        if cal["source"] == "synthetic":
            print(f"calibration: SYNTHETIC ({cal['requests']} Zipf requests, seed "
                  f"{cal['seed']}): no --calibration data was given")
        else:
            print(f"calibration: {cal['source']} ({cal['requests']} requests)")
        if cal.get("saturation"):
            sat = {k: v for k, v in cal["saturation"]["saturated"].items() if v}
            print("saturated values on the calibration batch: " + (", ".join(
                f"{k} {v:,}" for k, v in sat.items()) if sat else "none"))
    if result.plan is not None:
        print(result.plan.text(spec))
    if result.manifest is not None:
        for b in result.manifest["buffers"]:
            print(f"{b['file']:<18} {b['size']:>12,} bytes  sha256 {b['sha256'][:16]}  "
                  f"{b['format']}")
    else:
        print(f"ran steps {', '.join(ran)}; stopped before "
              f"{COMPILE_STEPS[COMPILE_STEPS.index(ran[-1]) + 1] if ran else '-'} "
              f"(resume with --from-step)")
    return 0


def register(subparsers):
    """Add the ``plan`` and ``compile`` verbs to ``recfabric``'s subparsers."""
    s = subparsers.add_parser("plan", help="plan table merging and placement for a model")
    s.add_argument("model", nargs="?", help="zoo name or .json spec file")
    s.add_argument("--planner", choices=PLANNERS, default="default")
    s.add_argument("--config", default="u280", help="accelerator preset (default u280)")
    s.add_argument("--bits", type=int, choices=(8, 16),
                   help="element width; must match the configuration's data_bits")
    s.add_argument("--all", action="store_true",
                   help="compare every planner on the measured models (docs/compiler.md)")
    s.add_argument("--study", action="store_true",
                   help="plan for a hypothetical kernel of this size that splits tables, serves "
                        "copies and merges any number of features (what --all compares)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_plan)

    s = subparsers.add_parser("compile", help="compile a model into memory images + manifest")
    s.add_argument("model", help="zoo name or .json spec file")
    s.add_argument("--weights", help=".npz written by ModelWeights.save (default: synthetic)")
    s.add_argument("--calibration", metavar="D.npz",
                   help="calibration requests (D.npz, format: docs/compiler.md; labels are "
                        "ignored; default: a synthetic batch, and the manifest says so)")
    s.add_argument("--formats", choices=("per-table", "shared"), default="per-table",
                   help="activation formats: one per table, folded into the first layer "
                        "(default), or one shared by all tables and the dense part")
    s.add_argument("--from-step", choices=COMPILE_STEPS,
                   help="resume: reload earlier steps' outputs from -o DIR/steps")
    s.add_argument("--to-step", choices=COMPILE_STEPS, help="stop after this step")
    s.add_argument("--config", default="small", help="accelerator preset (default small)")
    s.add_argument("--planner", choices=PLANNERS, default="default")
    s.add_argument("--bits", type=int, choices=(8, 16),
                   help="element width; must match the configuration's data_bits")
    s.add_argument("--seed", type=int, default=0, help="synthetic weights and calibration seed")
    s.add_argument("-o", "--output", required=True, help="output directory")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_compile)
