"""``python -m recfabric.hw.formal``: run the formal AXI proofs (``make formal`` runs all).

Examples::

    python -m recfabric.hw.formal                       # every block: its proof + cover
    python -m recfabric.hw.formal --block result_writer --depth 40
    python -m recfabric.hw.formal --block lookup_unit --mutation arvalid_drop   # must FAIL
    python -m recfabric.hw.formal --list

By default each block runs its own proof (k-induction where it closes, else BMC; ``--list``
shows which) and its covers. Exit status 0 when every job gives the expected verdict (PASS;
FAIL for a mutation or for the BMC of a block listed with a known finding, which run only when
named with --block), else 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .harness import BLOCKS, MUTATION_DEPTH, build_harness
from .sby import MODES, FormalToolsMissing, run_sby, warm_tools


def _parser():
    ap = argparse.ArgumentParser(prog="python -m recfabric.hw.formal",
                                 description="Formal AXI protocol proofs with SymbiYosys.")
    ap.add_argument("--block", action="append", metavar="NAME",
                    help=f"block to check (repeatable; default all): {', '.join(BLOCKS)}")
    ap.add_argument("--mode", action="append", choices=MODES,
                    help="bmc, cover and/or prove (k-induction; default: bmc and cover)")
    ap.add_argument("--depth", type=int, help="steps for every job (default: the block's own)")
    ap.add_argument("--mutation", metavar="NAME",
                    help="inject a protocol bug (with one --block); the BMC must then FAIL")
    ap.add_argument("--out", type=Path, default=Path("build/formal"),
                    help="work directory (sby jobs and traces); default build/formal")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--list", action="store_true", help="list blocks and mutations, then exit")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name, b in BLOCKS.items():
            muts = ", ".join(b.mutations) or "none"
            extra = f"; known finding (BMC fails): {b.finding}" if b.finding else ""
            proof = "k-induction, k" if b.proof == "prove" else "BMC depth"
            print(f"{name:22} {b.port}; {proof} {b.depth}, cover {b.cover_depth}; "
                  f"mutations: {muts}{extra}")
        return 0
    blocks = args.block or [name for name, b in BLOCKS.items() if not b.finding]
    for name in blocks:
        if name not in BLOCKS:
            print(f"error: unknown block {name!r}; known: {', '.join(BLOCKS)}", file=sys.stderr)
            return 2
    if args.depth is not None and args.depth < 1:
        print(f"error: depth must be a positive integer, not {args.depth}", file=sys.stderr)
        return 2
    if args.mutation is not None:
        if len(blocks) != 1:
            print("error: --mutation needs exactly one --block", file=sys.stderr)
            return 2
        if args.mutation not in BLOCKS[blocks[0]].mutations:
            print(f"error: unknown mutation {args.mutation!r} for {blocks[0]}; known: "
                  f"{', '.join(BLOCKS[blocks[0]].mutations)}", file=sys.stderr)
            return 2
    try:
        warm_tools()
    except FormalToolsMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    results, ok = [], True
    for name in blocks:
        b = BLOCKS[name]
        if args.mutation is not None:
            modes = ["bmc"]
        else:
            modes = args.mode or [b.proof, "cover"]
        for mode in modes:
            if args.mutation is not None:
                depth = args.depth or MUTATION_DEPTH
            else:
                depth = args.depth or {"bmc": b.depth, "cover": b.cover_depth,
                                       "prove": b.depth}[mode]
            job = f"{name}_{mode}" + (f"_{args.mutation}" if args.mutation else "")
            r = run_sby(build_harness(name, args.mutation), name=job, mode=mode, depth=depth,
                        workdir=args.out / job)
            expected = "FAIL" if args.mutation or (b.finding and mode == "bmc") else "PASS"
            verdict = "ok" if r.status == expected else "UNEXPECTED"
            ok &= r.status == expected
            print(r.summary() + f"\n  -> expected {expected}: {verdict}", flush=True)
            results.append({"block": name, "mode": mode, "depth": depth,
                            "mutation": args.mutation, "status": r.status,
                            "seconds": round(r.seconds, 1), "failed": r.failed,
                            "reached": r.reached, "unreached": r.unreached,
                            "traces": [str(t) for t in r.traces]})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
