"""Audit of Yosys's time-0 trigger under Icarus Verilog: which ``always @*`` blocks never ran,
and which registers hold X at the end of a simulation.

Root cause of the hazard. Amaranth turns a ``m.d.comb`` assignment made under ``If``/``Switch``
(or a multi-part one) into an RTLIL process, and Yosys' ``write_verilog`` (without ``-sv``)
writes such a process as an ``always @*`` block. ``always @*`` runs only when something it reads
changes, so a block whose inputs never change would never run; for that case ``write_verilog``
declares one trigger register per module, ``reg \\$auto$verilog_backend.cc:…:dump_module$N = 0;``,
and makes every ``always @*`` block read it (``if (<trigger>) begin end``): under Verilog-2005
semantics the declaration's initialisation is an assignment at time 0 whose change (X to 0)
wakes the blocks. Under SystemVerilog semantics (IEEE 1800-2017 §6.8: a variable's declaration
initialiser is applied before any process starts, and raises no event), which is what
``iverilog -g2012`` and so cocotb's Icarus runner use, the trigger never changes: a block runs
only when one of its real inputs changes. Its outputs (``reg`` without an initialiser) stay X
until then, for the whole run if the inputs are constant (configuration-derived values,
registers that keep their reset value in a run). Verilator evaluates every combinational block
at start, so it never shows the difference. (amaranth-lang/amaranth#1629 is this hazard;
YosysHQ/yosys#2273 added the trigger.) A continuous assignment (``assign``, what a single
unconditional ``m.d.comb`` of one expression, e.g. a ``Mux`` chain, becomes) is evaluated at
time 0 in both semantics.

:func:`instrument` rewrites generated Verilog so that a simulation reports, at its end (a
``final`` block), every instance's ``always @*`` blocks that never ran and every register
(assigned in an ``always @(posedge …)`` block, declared with an initial value) that holds an X
bit; :func:`parse_report` reads
that report. The instrumented design behaves as the original (each block also sets a flag bit,
which nothing reads during the run). :func:`fire_trigger` is the fix: the trigger changes at
``#0`` of time 0, so every block runs once at time 0 under either semantics.

What is applied now: :func:`recfabric.hw.kernel.generate_verilog` (and so ``recfabric build``,
the Vitis packaging, the Verilator back-end and the cocotb runs) returns its Verilog with
:func:`fire_trigger` applied to every module (it lives in :mod:`recfabric.hw.time0` and is
re-exported here); :func:`instrument` remains the audit, and on that Verilog it finds no block
that never ran. Verilog from a plain :func:`amaranth.back.verilog.convert` (tests of single
blocks) does not have it: apply :func:`fire_trigger` yourself before simulating under
``-g2012``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..hw.time0 import TRIGGER_DECL as _TRIGGER_DECL
from ..hw.time0 import fire_trigger
from ..hw.time0 import modules as _modules

__all__ = ["REPORT_FILE", "Time0Report", "fire_trigger", "instrument", "parse_report"]

#: File the instrumented design appends its report to (relative to the simulator's directory).
REPORT_FILE = "rf_time0_report.txt"

_IDENT = r"(?:\\\S+ |[A-Za-z_][\w$]*)"
_ARRAY_DECL = re.compile(rf"^\s*reg\s*(?:\[[^\]]*\])?\s*({_IDENT})\s*\[[^\]]*\]\s*;", re.M)
_INIT_REG_DECL = re.compile(rf"^\s*reg\s*(?:\[[^\]]*\])?\s*({_IDENT})\s*=[^;]*;", re.M)
_NONBLOCKING_LHS = re.compile(rf"^\s*({_IDENT})\s*(?:\[[^\]]*\]\s*)*<=", re.M)


@dataclass
class Time0Report:
    """What an instrumented simulation reported: ``never_ran`` maps an instance path to the
    (module-local) indices of its ``always @*`` blocks that never ran; ``x_registers`` lists
    ``instance.register`` names holding an X bit at the end."""
    never_ran: dict[str, list[int]] = field(default_factory=dict)
    x_registers: list[str] = field(default_factory=list)


def _instrument_module(src: str, blocks: dict, name: str) -> str:
    decl = _TRIGGER_DECL.search(src)
    regs = set()
    # registers: the left-hand sides of non-blocking assignments in clocked blocks
    # (Yosys writes ``<=`` only in clocked blocks; a comparison never starts a line)
    regs.update(_NONBLOCKING_LHS.findall(src))
    # Only registers declared with their initial value (every Amaranth ``sync`` signal): they
    # start defined, so an X in one came in through its data. (Yosys' memory read-port
    # registers have none and stay X until their port is first enabled.)
    arrays = set(_ARRAY_DECL.findall(src))
    initialised = set(_INIT_REG_DECL.findall(src))
    regs = sorted(r for r in regs if r not in arrays and r in initialised)
    n = 0

    def flag(_m):
        nonlocal n
        n += 1
        return f"rf_time0_ran[{n - 1}] = 1'b1;"

    if decl:  # process blocks: a flag set next to the trigger read
        read = f"if ({decl.group(2)}) begin end"
        src = src.replace(read, "\0")
        src = re.sub("\0", lambda m: f"{flag(m)} {read}", src)
    # connections to (part of) a process's register: ``always @*`` and one statement, with no
    # trigger at all (a constant right-hand side never runs, in either semantics)
    src = re.sub(r"^(\s*)always @\*\n(\s*)([^\n]*;)$",
                 lambda m: f"{m.group(1)}always @* begin\n{m.group(2)}{flag(m)}\n"
                           f"{m.group(2)}{m.group(3)}\n{m.group(1)}end", src, flags=re.M)
    if n:
        header = re.search(r"^module [^;]*;\n", src, re.M | re.S)
        src = (src[:header.end()] + f"  reg [{n - 1}:0] rf_time0_ran = {n}'h0;\n"
               + src[header.end():])
    blocks[name] = n
    if not n and not regs:
        return src
    # (Icarus 11 skips a ``final`` block that declares a variable: the handle is module-level)
    lines = ["  integer rf_time0_fd;", "  final begin",
             f'    rf_time0_fd = $fopen("{REPORT_FILE}", "a");']
    for i in range(n):
        lines.append(f"    if (rf_time0_ran[{i}] !== 1'b1) "
                     f'$fdisplay(rf_time0_fd, "never_ran %m {i}");')
    for r in regs:
        shown = r.strip().lstrip("\\")
        lines.append(f'    if (^({r}) === 1\'bx) $fdisplay(rf_time0_fd, "x_register %m {shown}");')
    lines += ["    $fclose(rf_time0_fd);", "  end"]
    return src[:src.rindex("endmodule")] + "\n".join(lines) + "\nendmodule\n"


def instrument(text: str) -> tuple[str, dict[str, int]]:
    """``text`` (Verilog from :func:`amaranth.back.verilog.convert` / ``generate_verilog``)
    with the report added; also ``{module: number of always @* blocks}``."""
    out, pos, blocks = [], 0, {}
    for start, end in _modules(text):
        out.append(text[pos:start])
        src = text[start:end]
        name = re.match(r"module (\\\S+ |[^\s(]+) ?\(", src).group(1).strip()
        out.append(_instrument_module(src, blocks, name))
        pos = end
    out.append(text[pos:])
    return "".join(out), blocks


def parse_report(report: str) -> Time0Report:
    """Read the report an instrumented simulation wrote (:data:`REPORT_FILE`)."""
    rep = Time0Report()
    for line in report.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "never_ran":
            path, index = rest.rsplit(" ", 1)
            rep.never_ran.setdefault(path, []).append(int(index))
        elif kind == "x_register":
            path, reg = rest.rsplit(" ", 1)
            rep.x_registers.append(f"{path}.{reg}")
    return rep
