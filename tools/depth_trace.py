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


def trace(netlist: dict, top: str = "top", limit: int = 40,
          ends=frozenset()) -> tuple[float, list]:
    """The deepest path as :func:`~recfabric.host.bench.resources.logic_levels` finds it, with
    each cell's type, the name of the net it drives and its HDL source location."""
    mod = netlist["modules"][top]
    names = {}
    for n, net in mod["netnames"].items():
        for b in net["bits"]:
            if isinstance(b, int) and (b not in names or not n.startswith(("\\", "$"))):
                names.setdefault(b, n)
    r = R.logic_levels(netlist, top, ends=ends)
    path = []
    for dep, name, b in r["path"][:limit]:
        cell = mod["cells"][name]
        path.append((dep, cell["type"], names.get(b, "?"),
                     cell.get("attributes", {}).get("src", "")))
    return r["levels"], path


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
        script, ends = R._ATTEMPTS[0], frozenset()
        if b.glue is not None:  # the block's own logic, its sub-blocks blackboxed
            files, read, ends, _ = R.glue_input(b.build(), b.glue, emit_src=True)
            script = script.replace("read_rtlil block.il", read)
        else:
            files = {"block.il": rtlil.convert(b.build(), name="top")}
        with tempfile.TemporaryDirectory() as d:
            for fname, text in files.items():
                Path(d, fname).write_text(text)
            run = subprocess.run([R._yosys(), "-q", "-p", script], cwd=d,
                                 capture_output=True, text=True)
            if run.returncode:
                print(name, "yosys failed:", R.failure_reason(run.stderr))
                continue
            net = json.loads(Path(d, "net.json").read_text())
        lv, path = trace(net, ends=ends)
        print(f"== {a.config} / {name}: {lv:g} levels")
        for dep, typ, net_name, src in path:
            print(f"  {dep:5.1f} {typ:9s} {net_name[:60]:60s} {src.split('|')[0][-70:]}")


if __name__ == "__main__":
    main()
