"""Yosys's time-0 trigger, fired: the emitted Verilog's ``always @*`` blocks all run at time 0
under SystemVerilog semantics too (``iverilog -g2012``, cocotb's Icarus mode).

Yosys' ``write_verilog`` (what :func:`amaranth.back.verilog.convert` runs) writes a ``m.d.comb``
assignment made under ``If``/``Switch`` as an ``always @*`` block, and makes every such block read a
per-module trigger ``reg \\$auto$verilog_backend.cc:N:dump_module$M = 0;`` so that it runs at time
0. Under Verilog-2005 semantics the declaration's initialiser is an event at time 0; under
SystemVerilog's (IEEE 1800-2017 §6.8) it is applied before any process starts and raises none, so a
block whose inputs keep their initial values never runs and its outputs stay X
(amaranth-lang/amaranth#1629; ``recfabric.sim.icarus_time0`` explains it in full and audits a
simulation for it). :func:`fire_trigger` is applied by :func:`recfabric.hw.kernel.generate_verilog`
to every kernel Verilog RecFabric hands out. It changes text only: the RTLIL and what synthesis
reads are unchanged (the added ``initial`` is inside ```ifndef SYNTHESIS``).
"""

from __future__ import annotations

import re

__all__ = ["TRIGGER_DECL", "fire_trigger", "fired_modules", "modules"]

#: A module's trigger declaration as Yosys writes it (group 2: the trigger's escaped name).
TRIGGER_DECL = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;$",
                          re.M)
# the one-statement ``always @*`` Yosys writes to connect (part of) a process's register (a
# literal first, so the search is fast; its line's indentation is checked in _connections)
_CONNECTION = re.compile(r"always @\*\n([ \t]*)([^\n]*;)$", re.M)


def _fire(trigger: str) -> str:
    return f"initial #0 {trigger} = 1'b1;"


def modules(text: str):
    """(start, end) offsets of every ``module … endmodule`` in ``text`` (each from a line
    starting ``module `` to the end of the next line starting ``endmodule``, newline included).
    String search, not a regular expression: 0.08 s instead of 1.8 s on a 25 MB u280 kernel."""
    pos = 0
    while True:
        start = text.find("module ", pos)
        while start > 0 and text[start - 1] != "\n":
            start = text.find("module ", start + 1)
        end = text.find("\nendmodule", start) if start >= 0 else -1
        if end < 0:
            return
        end += len("\nendmodule")
        end += text.startswith("\n", end)
        yield start, end
        pos = end


def _wrap_connections(src: str, trigger: str) -> str:
    """``src`` with every one-statement ``always @*`` (alone on its line) made a block that
    reads ``trigger`` first."""
    out, pos = [], 0
    for m in _CONNECTION.finditer(src):
        line = src.rfind("\n", 0, m.start()) + 1
        indent = src[line:m.start()]
        if indent.strip(" \t"):
            continue  # not at the start of its line
        out += [src[pos:m.start()], f"always @* begin\n{m.group(1)}if ({trigger}) begin end\n"
                f"{m.group(1)}{m.group(2)}\n{indent}end"]
        pos = m.end()
    out.append(src[pos:])
    return "".join(out)


def fire_trigger(text: str) -> str:
    """``text`` with Yosys's time-0 trigger made to fire under SystemVerilog semantics too:
    every module's trigger changes (0 to 1) at ``#0`` of time 0, when every ``always @*``
    block already waits on it (the inactive region, after all processes started), so each
    block runs once at time 0 as Verilog-2005 semantics (and Verilator) have it; the
    one-statement ``always @*`` connections Yosys writes for part of a process's register (no
    trigger at all) read it too. Inside ``ifndef SYNTHESIS``/``VERILATOR``: synthesis ignores
    it, and Verilator (which evaluates every block at start anyway) needs no delay.
    Idempotent: a module whose trigger is already fired is left as it is.
    """
    out, pos = [], 0
    for start, end in modules(text):
        out.append(text[pos:start])
        src = text[start:end]
        decl = TRIGGER_DECL.search(src)
        if decl and _fire(decl.group(2)) not in src:
            trigger = decl.group(2)
            src = _wrap_connections(src, trigger)
            src = src.replace(decl.group(0), decl.group(0) + (
                "\n`ifndef SYNTHESIS\n`ifndef VERILATOR\n"
                f"{decl.group(1)}{_fire(trigger)}\n"
                "`endif\n`endif"), 1)
        out.append(src)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def fired_modules(text: str) -> dict[str, bool]:
    """``{module name: fixed}`` for every module of ``text`` with an ``always @*`` block:
    ``fixed`` when its trigger is fired at time 0 and every ``always @*`` block reads it (what
    :func:`fire_trigger` makes of Yosys's output; tests check the emitted kernel with it)."""
    result = {}
    for start, end in modules(text):
        src = text[start:end]
        n_blocks = len(re.findall(r"^\s*always @\*", src, re.M))
        if not n_blocks:
            continue
        name = re.match(r"module (\\\S+ |[^\s(]+) ?\(", src).group(1).strip()
        decl = TRIGGER_DECL.search(src)
        result[name] = bool(
            decl and _fire(decl.group(2)) in src
            and len(re.findall(r"^\s*always @\* begin\n\s*if \(" + re.escape(decl.group(2))
                               + r"\) begin end$", src, re.M)) == n_blocks)
    return result
