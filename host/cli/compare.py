"""``recfabric bench compare``: the command line of :mod:`recfabric.host.bench.compare`.

The comparison itself (platforms, score checks, crossovers, tables, plots) lives in the ``bench``
layer; this module parses the arguments, refuses batches this machine cannot hold before any
work, and shows progress (off with ``--json`` or when stderr is not a terminal).
"""

from __future__ import annotations

import json

from ..bench.compare import (
    SIM_MEMORY_BYTES,
    format_table,
    parse_batches,
    plot_rows,
    run_compare,
)

__all__ = ["register"]


def _cmd(args):
    from ..model.zoo import get_model
    from .support import check_batch, progress_for
    batches = parse_batches(args.batches)
    spec = get_model(args.model)
    check_batch(spec, None, batches[-1], flag="--batches")  # host memory, before any work
    plats = None if not args.platforms else {p.strip() for p in args.platforms.split(",")}
    prog = progress_for(args)
    result = run_compare(spec, config=None if args.config == "none" else args.config,
                         model_config=None if args.model_config == "none" else args.model_config,
                         batches=batches, sim_max_batch=args.sim_max_batch, platforms=plats,
                         seed=args.seed, threads=args.threads or None, timer=args.timer,
                         progress=prog)
    if args.plot:
        plot_rows(result, args.plot)
        result["plot"] = args.plot
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_table(result))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0 if all(r["scores_ok"] for r in result["rows"]) else 1


def register(subparsers):
    s = subparsers.add_parser(
        "compare", help="the model on the accelerator (simulated/modelled) vs PyTorch, ONNX "
                        "Runtime (and CUDA) per batch size")
    s.add_argument("model", help="zoo name or .json spec file")
    s.add_argument("--config", default="small",
                   help="configuration simulated with the sim backend (default small; none: "
                        "skip; skipped with a note when the model does not fit it or the sim "
                        f"backend's {SIM_MEMORY_BYTES >> 20} MiB of device memory)")
    s.add_argument("--model-config", default="u280",
                   help="configuration of the cycle-model rows (default u280; none: skip)")
    s.add_argument("--batches", default="1,2,4,8,16,64,256,1024,4096",
                   help="comma-separated batch sizes")
    s.add_argument("--sim-max-batch", type=int, default=16,
                   help="largest batch simulated; larger ones are extrapolated (default 16)")
    s.add_argument("--platforms", default="",
                   help="subset: sim,model,torch-eager,torch-script,onnxruntime,torch-cuda")
    s.add_argument("--threads", type=int, default=1,
                   help="CPU framework intra-op threads (default 1; 0: framework default)")
    s.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                   help="CPU rows: wall time (default) or process CPU time per call (for a "
                        "shared machine; equal on an idle one with --threads 1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--plot", metavar="FILE.png", help="write latency/throughput plots")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd)
