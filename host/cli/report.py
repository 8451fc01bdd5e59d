"""``recfabric report timing``: open-toolchain utilisation and Fmax (Yosys + nextpnr-ecp5).

The flow is :func:`recfabric.hw.boards.ecp5_timing.run_timing`; this module is its command line.
"""

from __future__ import annotations

import json

__all__ = ["register"]


def _cmd_timing(args):
    from ...hw.boards.ecp5_timing import BLOCKS, ecp5_part, format_timing, run_timing
    from ...hw.config import get_preset
    from .support import progress_for
    config = get_preset(args.config)  # unknown names fail here, before any tool runs
    ecp5_part(args.board)
    if args.block not in BLOCKS:
        raise ValueError(f"unknown block {args.block!r}; blocks: {', '.join(BLOCKS)}")
    prog = progress_for(args)
    with prog.bar(3, f"timing {args.block} of {config.name}", unit="step") as bar:
        def say(msg):
            prog(msg)
            bar.update(1)
        r = run_timing(config, block=args.block, board=args.board, route=not args.no_route,
                       workdir=args.output, freq_mhz=args.freq, seed=args.seed,
                       timeout=args.timeout, progress=say)
    print(json.dumps(r, indent=1) if args.json else format_timing(r))
    return 0


def register(subparsers):
    s = subparsers.add_parser("report", help="reports on the generated hardware")
    rep = s.add_subparsers(dest="report", metavar="REPORT", required=True)
    t = rep.add_parser(
        "timing", help="utilisation and Fmax on an ECP5 (ULX3S 85F) with Yosys + nextpnr-ecp5, "
                       "out of context")
    t.add_argument("--config", default="small", help="accelerator preset (default small)")
    t.add_argument("--block", default="kernel",
                   help="kernel (whole), mlp (top MLP pipeline) or lookup (one lookup unit)")
    t.add_argument("--board", default="ulx3s-85f", help="ECP5 board from amaranth-boards")
    t.add_argument("--no-route", action="store_true",
                   help="stop after placement: a quicker, placement-only Fmax estimate")
    t.add_argument("--freq", type=float, help="target MHz (default: the configuration's clock)")
    t.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    t.add_argument("--timeout", type=float, help="seconds each tool may run")
    t.add_argument("-o", "--output", help="work directory (default build/timing-CONFIG-BLOCK)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_cmd_timing)
