"""Measure the Verilator build of a configuration's kernel (the `verilator` backend's library).

Usage: .venv/bin/python tools/measure_verilator_build.py CONFIG [--jobs N] [--cxx-opt -O1]
[--output-groups N]

Builds (or finds in the cache) the library of ``recfabric.sim.verilator_device.build_library``
and prints one JSON object: seconds for the Verilog (``verilog_s``, 0 when memoised) and the build
(``build_s``), the CPU seconds and peak RSS of the child processes (Verilator, make, the C++
compiler; measured with ``getrusage``), and Verilator's own summary lines from the build log
(sources read, C++ written, verilation wall/CPU time and memory). Run it under ``nice``: at u280
scale it takes many minutes.
"""

import argparse
import json
import re
import resource
import time
from pathlib import Path

from recfabric.hw.config import get_preset
from recfabric.sim.verilator_device import build_library


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cxx-opt", default=None,
                    help="C++ optimisation (default: build_library's, by configuration size)")
    ap.add_argument("--output-groups", type=int, default=None,
                    help="Verilator --output-groups (default: build_library's, by size)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    path, info = build_library(get_preset(args.config), jobs=args.jobs,
                               cxx_opt=args.cxx_opt, output_groups=args.output_groups)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = Path(info["folder"]) / "build.log"
    summary = [ln.strip() for ln in log.read_text().splitlines()
               if re.match(r"\s*- Verilator: (Built|Walltime)", ln)] if log.is_file() else []
    cpp = sum(f.stat().st_size for f in (Path(info["folder"]) / "obj").glob("*.cpp"))
    print(json.dumps({
        "config": args.config, "cxx_opt": args.cxx_opt,
        "output_groups": args.output_groups, "library": str(path), "built": info["built"],
        "verilog_s": round(info["verilog_s"], 1), "build_s": round(info["build_s"], 1),
        "wall_s": round(wall, 1),
        "children_cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
        "children_max_rss_mb": ru.ru_maxrss // 1024,
        "cpp_mb": round(cpp / 1e6, 1), "verilator_summary": summary,
        "how": "measured (wall and CPU of this machine)"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
