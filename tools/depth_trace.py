"""Trace the deepest combinational path of one or more kernel blocks (logic-depth debugging).

    .venv/bin/python tools/depth_trace.py --config small "record parser" "lookup dispatcher"

Synthesises each named block (names as in ``recfabric report resources``) with the report's
Yosys script (:data:`recfabric.host.bench.resources.YOSYS_SCRIPT`), counts its levels the same
way (:func:`~recfabric.host.bench.resources.logic_levels`) and prints the deepest path cell by
cell with the HDL source location Yosys kept (``src`` attribute), so the pipelining work can see
which expression is deep.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from recfabric.host.bench import resources as R


def trace(netlist: dict, top: str = "top", limit: int = 40) -> tuple[float, list]:
    mod = netlist["modules"][top]
    driver = {}
    for name, cell in mod["cells"].items():
        w = R._weight(cell["type"])
        if w is None:
            continue
        dirs = cell.get("port_directions", {})
        ins, outs = [], []
        for port, bits in cell["connections"].items():
            d = dirs.get(port, "output" if port[:1] == "O" or port.startswith("DO") else "input")
            if d == "output":
                outs += [b for b in bits if isinstance(b, int)]
            elif cell["type"] in R._LUTRAM_LUTS and not port.startswith(("A", "ADDR")):
                continue
            else:
                ins += [b for b in bits if isinstance(b, int)]
        for b in outs:
            driver[b] = (name, w, ins)
    names = {}
    for n, net in mod["netnames"].items():
        for b in net["bits"]:
            if isinstance(b, int) and (b not in names or n.startswith("\\") is False
                                       and not n.startswith("$")):
                names.setdefault(b, n)
    depth, via = {}, {}

    def solve(b0):
        stack = [(b0, False)]
        onstack = set()
        while stack:
            b, done = stack.pop()
            if b in depth:
                continue
            if b not in driver:
                depth[b] = 0.0
                continue
            name, w, ins = driver[b]
            if done:
                onstack.discard(b)
                best, arg = 0.0, None
                for i in ins:
                    if depth.get(i, 0.0) > best or arg is None:
                        best, arg = max(best, depth.get(i, 0.0)), i
                depth[b] = best + w
                via[b] = arg
                continue
            onstack.add(b)
            stack.append((b, True))
            for i in ins:
                if i not in depth and i not in onstack:
                    stack.append((i, False))

    for b in list(driver):
        solve(b)
    worst = max(depth, key=depth.get)
    path, b = [], worst
    while b is not None and b in driver and len(path) < limit:
        name, w, _ = driver[b]
        cell = mod["cells"][name]
        src = cell.get("attributes", {}).get("src", "")
        path.append((depth[b], cell["type"], names.get(b, "?"), src))
        b = via.get(b)
    start = names.get(b, "?") if b is not None else "?"
    path.append((0.0, "start", start, ""))
    return depth[worst], path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="small")
    ap.add_argument("blocks", nargs="+")
    a = ap.parse_args()
    from amaranth.back import rtlil

    from recfabric.hw.config import get_preset
    cfg = get_preset(a.config)
    blocks = {b.name: b for b in R.config_blocks(cfg)}
    for name in a.blocks:
        b = blocks[name]
        il = rtlil.convert(b.build(), name="top")
        with tempfile.TemporaryDirectory() as d:
            Path(d, "block.il").write_text(il)
            run = subprocess.run([R._yosys(), "-q", "-p", R._ATTEMPTS[0]], cwd=d,
                                 capture_output=True, text=True)
            if run.returncode:
                print(name, "yosys failed:", R.failure_reason(run.stderr))
                continue
            net = json.loads(Path(d, "net.json").read_text())
        lv, path = trace(net)
        print(f"== {a.config} / {name}: {lv:g} levels")
        for dep, typ, net_name, src in path:
            print(f"  {dep:5.1f} {typ:9s} {net_name[:60]:60s} {src.split('|')[0][-70:]}")


if __name__ == "__main__":
    main()
