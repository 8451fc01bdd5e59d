"""``recfabric report timing``: open-toolchain utilisation and Fmax (Yosys + nextpnr-ecp5);
``recfabric report resources``: UltraScale+ resource counts and logic depth (Yosys xcup).

The flows are :func:`recfabric.hw.boards.ecp5_timing.run_timing` and
:func:`recfabric.host.bench.resources.resource_report`; this module is their command line.
"""

from __future__ import annotations

import json

__all__ = ["register"]


def _cmd_timing(args):
    from ...hw.boards.ecp5_timing import (
        BLOCKS,
        ROUTERS,
        check_synth_options,
        ecp5_part,
        format_timing,
        run_timing,
    )
    from ...hw.config import get_preset
    from .support import progress_for
    config = get_preset(args.config)  # unknown names fail here, before any tool runs
    ecp5_part(args.board)
    if args.block not in BLOCKS:
        raise ValueError(f"unknown block {args.block!r}; blocks: {', '.join(BLOCKS)}")
    if args.router not in ROUTERS:
        raise ValueError(f"unknown router {args.router!r}; routers: {', '.join(ROUTERS)}")
    check_synth_options(args.synth_option)
    prog = progress_for(args)
    with prog.bar(3, f"timing {args.block} of {config.name}", unit="step") as bar:
        def say(msg):
            prog(msg)
            bar.update(1)
        r = run_timing(config, block=args.block, board=args.board, route=not args.no_route,
                       workdir=args.output, freq_mhz=args.freq, seed=args.seed,
                       timeout=args.timeout, progress=say, router=args.router,
                       synth_options=tuple(args.synth_option), tmg_ripup=args.tmg_ripup)
    print(json.dumps(r, indent=1) if args.json else format_timing(r))
    return 0


def _cmd_resources(args):
    from ...hw.config import get_preset
    from ..bench.resources import CARDS, format_resources, resource_report
    from .support import progress_for
    config = get_preset(args.config)  # unknown names fail here, before any tool runs
    if args.card is not None and args.card not in CARDS:
        raise ValueError(f"unknown card {args.card!r}; cards: {', '.join(CARDS)}")
    prog = progress_for(args)
    r = resource_report(config, card=args.card, cache_dir=args.cache, progress=prog,
                        timeout=args.timeout, cached_only=args.cached_only,
                        only=args.block or None)
    if args.flat:
        from ..bench.resources import flat_comparison
        prog("synthesising the whole kernel flat (validation)")
        r["flat"] = flat_comparison(config, r, cache_dir=args.cache, timeout=args.timeout)
    print(json.dumps(r, indent=1) if args.json else format_resources(r))
    return 0 if r["fits"] else 1


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
    t.add_argument("--router", default="router2",
                   help="nextpnr router: router2 (default; converges on the congested whole "
                        "kernel) or router1")
    t.add_argument("--tmg-ripup", action="store_true",
                   help="nextpnr --tmg-ripup: timing-driven rip-up while routing")
    t.add_argument("--synth-option", action="append", default=[], metavar="OPT",
                   help="extra synth_ecp5 option, repeatable (e.g. --synth-option=-nowidelut)")
    t.add_argument("--timeout", type=float, help="seconds each tool may run")
    t.add_argument("-o", "--output", help="work directory (default build/timing-CONFIG-BLOCK)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_cmd_timing)
    r = rep.add_parser(
        "resources", help="UltraScale+ DSP48E2/LUT/FF/BRAM36/URAM and logic depth beside the "
                          "card's capacity (Yosys synth_xilinx -family xcup, per-block synthesis "
                          "x instances: an estimate)")
    r.add_argument("--config", default="small", help="accelerator preset (default small)")
    r.add_argument("--card", help="u280, u50 or u55c (default: the preset's card, else u280)")
    r.add_argument("--cache", default="build/resources",
                   help="synthesis cache, keyed by each block's RTLIL hash "
                        "(default build/resources)")
    r.add_argument("--timeout", type=float, help="seconds each Yosys run may take")
    r.add_argument("--cached-only", action="store_true",
                   help="run no synthesis: report the blocks already in the cache, list the "
                        "others as not synthesised (while a long run fills the cache)")
    r.add_argument("--block", action="append", metavar="NAME",
                   help="only the blocks whose name starts with NAME (repeatable), e.g. "
                        "--block 'concat stage' --block 'mlp ': a part's counts and depth, "
                        "no fit verdict")
    r.add_argument("--flat", action="store_true",
                   help="also synthesise the whole kernel flat and show the estimate's error "
                        "(small configurations only)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_cmd_resources)
