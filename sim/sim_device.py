"""The ``sim`` driver backend: the generated kernel, cycle-accurate, in the Amaranth simulator.

:class:`SimDevice` implements :class:`recfabric.host.runtime.device.RegisterDevice` (the runtime's
device seam, the only part of the host it imports): register accesses are real AXI4-Lite
transactions on ``s_axi_control`` (driven by :class:`~recfabric.sim.axi_lite_master.AXILiteMaster`),
and every AXI master of the kernel is served from one simulated device memory
(:class:`~recfabric.sim.hbm_model.HBMModel` for reads,
:class:`~recfabric.sim.axi_write_model.AXIWriteModel` for the results), so the driver's buffers are
where the kernel reads and writes them. Buffer reads and writes by the host take no simulated time
(they stand for DMA before and after a run).

The simulator is stepped from the driver's thread: each register access or wait queues a command
for a testbench coroutine and advances the simulation until it completes.

A run is bounded twice: by the driver's ``timeout`` in **wall-clock** seconds (what the host
waits, as on a card) and by ``max_cycles`` simulated cycles. Either raises
:class:`~recfabric.host.runtime.device.DeviceError` naming the run; the kernel is then left as it
was (mid-run) and :meth:`SimDevice.reset` pulses its reset (``ap_rst_n``), after which the driver
must load the model again (a reset erases the kernel program).
"""

from __future__ import annotations

import random
import time
from collections import deque
from pathlib import Path

from amaranth.hdl import ClockDomain, Elaboratable, Module, Signal
from amaranth.sim import Simulator

from ..host.runtime.device import BumpMemory, DeviceError, RegisterDevice
from ..hw.config import AcceleratorConfig
from ..hw.kernel import WATCHDOG_CYCLES, RecFabricKernel
from ..hw.register_map import CTRL, CTRL_DONE
from .axi_lite_master import AXILiteMaster
from .axi_write_model import AXIWriteModel
from .hbm_model import HBMModel

__all__ = ["SimDevice"]


class _ResettableTop(Elaboratable):
    """The kernel in a ``sync`` domain whose reset the host drives (``ap_rst_n`` on a card)."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.rst = Signal()

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += cd.rst.eq(self.rst)
        m.submodules.kernel = self.kernel
        return m


class SimDevice(RegisterDevice):
    """Cycle-accurate simulation of :class:`~recfabric.hw.kernel.RecFabricKernel`.

    Parameters
    ----------
    config : AcceleratorConfig
    memory_bytes : int
        Simulated device memory.
    mem_latency : int
        Read latency of the table channels (cycles), as an HBM pseudo-channel behind the
        Vitis memory subsystem (200-300 ns is 50-75 cycles at 250 MHz).
    p_stall : float
        Random AXI back-pressure on every memory port (0 for benchmarks).
    max_cycles : int
        A run that takes more simulated cycles raises
        :class:`~recfabric.host.runtime.device.DeviceError` (as does one that takes longer
        than the driver's wall-clock ``timeout``).
    progress : callable, optional
        Called as ``progress(cycles)`` every ``progress_every`` simulated cycles of a run.
    waves : path, optional
        Write every signal of the session to this VCD file (and a GTKWave save file next to
        it); complete once the device is closed. The Amaranth simulator writes VCD only.
    watchdog_cycles : int
        The kernel's run watchdog (:class:`~recfabric.hw.kernel.RecFabricKernel`).
    default_timeout : float
        Wall-clock seconds a run may take when the driver is given no timeout (the Amaranth
        simulator runs a few hundred to a few thousand kernel cycles per second).
    """

    def __init__(self, config: AcceleratorConfig, *, memory_bytes: int = 64 << 20,
                 mem_latency: int = 64, p_stall: float = 0.0, seed: int = 0,
                 max_cycles: int = 5_000_000, progress=None, progress_every: int = 20_000,
                 default_timeout: float = 1800.0, waves=None,
                 watchdog_cycles: int = WATCHDOG_CYCLES):
        self.config = config
        self.default_timeout = default_timeout
        self.kernel_component = dut = RecFabricKernel(config, watchdog_cycles=watchdog_cycles)
        self._mem = BumpMemory(memory_bytes)
        rng = random.Random(seed)
        mem, base = self._mem.mem, self._mem.base
        self.max_cycles, self.progress, self.progress_every = max_cycles, progress, \
            progress_every
        self.cycles = 0
        self.run_cycles = 0
        self.runs = 0
        self._sim_wall = self._sim_cpu = 0.0  # time inside simulator calls (sim_seconds)
        self._run_desc = "run 0"
        self._top = _ResettableTop(dut)
        sim = Simulator(self._top)
        sim.add_clock(1e-9 * 1000 / config.clock_mhz)
        readers = [("requests", dut.m_axi_requests, 32), ("model", dut.m_axi_model, 32)]
        readers += [(f"tables{i}", getattr(dut, f"m_axi_tables{i}"), mem_latency)
                    for i in range(config.mem_channels)]
        self.memory_models = {}
        for name, bus, lat in readers:
            model = HBMModel(bus, mem, base=base, latency=lat,
                             max_outstanding=max(config.max_outstanding, 64),
                             p_ar_stall=p_stall, p_r_idle=p_stall,
                             rng=random.Random(rng.random()))
            self.memory_models[name] = model
            sim.add_process(model.process)
        writer = AXIWriteModel(dut.m_axi_results, mem, base=base, latency=8, p_stall=p_stall,
                               rng=random.Random(rng.random()))
        sim.add_process(writer.process)
        self.memory_models["results"] = writer
        self._master = AXILiteMaster(dut.s_axi_control)
        self._ops: deque = deque()
        sim.add_testbench(self._host, background=True)
        sim.add_process(self._count)
        self.sim = sim
        self.waves, self._waves_writer = None, None
        if waves is not None:
            path = Path(waves)
            if path.suffix != ".vcd":
                raise DeviceError(f"waves file {str(waves)!r}: the Amaranth simulator writes VCD; "
                                  "name it FILE.vcd")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._waves_writer = sim.write_vcd(str(path), str(path.with_suffix(".gtkw")),
                                               traces=[dut.s_axi_control, dut.interrupt])
            self._waves_writer.__enter__()
            self.waves = path

    async def _count(self, ctx):
        async for _ in ctx.tick():
            self.cycles += 1

    async def _host(self, ctx):
        while True:
            if not self._ops:
                await ctx.tick()
                continue
            op = self._ops[0]
            kind = op["kind"]
            if kind == "write":
                await self._master.write(ctx, op["addr"], op["value"])
            elif kind == "read":
                op["result"] = await self._master.read(ctx, op["addr"])
            elif kind == "reset":
                ctx.set(self._top.rst, 1)
                for _ in range(op["cycles"]):  # (tick().repeat() raises DomainReset here)
                    await ctx.tick()
                ctx.set(self._top.rst, 0)
                await ctx.tick()
            elif kind == "wait":
                # The driver's polling loop, inside the simulation: read CTRL until ap_done.
                start = self.cycles
                while True:
                    before = self.cycles
                    ctrl = await self._master.read(ctx, CTRL)
                    if ctrl & CTRL_DONE:
                        break
                    await ctx.tick().repeat(op["interval"])
                    spent = self.cycles - start
                    if spent > op["limit"]:
                        op["error"] = (f"{self._run_desc}: the kernel did not finish within "
                                       f"{op['limit']} simulated cycles (max_cycles); reset() "
                                       f"the device and load the model again")
                        break
                    if time.monotonic() > op["deadline"]:
                        op["error"] = (f"{self._run_desc}: the kernel did not finish within the "
                                       f"timeout of {op['timeout']} s (wall clock; {spent} "
                                       f"simulated cycles); reset() the device and load the "
                                       f"model again")
                        break
                    if self.progress and (self.cycles // self.progress_every
                                          != before // self.progress_every):
                        self.progress(self.cycles - start)
                op["result"] = self.cycles - start
            op["done"] = True
            self._ops.popleft()

    def _do(self, **op):
        op["done"] = False
        self._ops.append(op)
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            while not op["done"]:
                self.sim.advance()
        finally:
            self._sim_wall += time.perf_counter() - w0
            self._sim_cpu += time.thread_time() - c0
        if "error" in op:
            raise DeviceError(op["error"])
        return op.get("result")

    @property
    def sim_seconds(self) -> tuple[float, float]:
        """(wall, CPU) seconds spent advancing the simulator: resets, register reads and
        writes, :meth:`wait_done` (CPU time is this thread's), as
        :attr:`recfabric.sim.verilator_device.VerilatorDevice.sim_seconds`. ``cycles /
        sim_seconds[0]`` is the simulation's speed in cycles per wall second, every simulated
        cycle counted, the elaboration and the host's Python work between calls not."""
        return self._sim_wall, self._sim_cpu

    def read_register(self, offset):
        return self._do(kind="read", addr=offset)

    def write_register(self, offset, value):
        self._do(kind="write", addr=offset, value=value)

    def run(self, args, timeout):
        self.runs += 1
        self._run_desc = (f"run {self.runs} (batch {int(args.get('batch', 0))}, flags "
                          f"{int(args.get('flags', 0)):#x})")
        super().run(args, timeout)

    def wait_done(self, timeout):
        t0 = time.perf_counter()
        self.run_cycles = self._do(kind="wait", interval=16, limit=self.max_cycles,
                                   timeout=timeout, deadline=time.monotonic() + timeout)
        self.wall_seconds = time.perf_counter() - t0

    def close(self):
        """Finish the waveform file, if one is being written."""
        if self._waves_writer is not None:
            writer, self._waves_writer = self._waves_writer, None
            writer.__exit__(None, None, None)
    def reset(self, cycles: int = 4):
        """Pulse the kernel's reset (``ap_rst_n`` low for ``cycles`` cycles). Every block and
        the memory models' in-flight transfers are cleared; the kernel program is erased."""
        self._do(kind="reset", cycles=cycles)

    def allocate(self, name, size, bank=None):
        return self._mem.allocate(name, size, bank)

    def write(self, buf, data, offset=0):
        self._mem.write(buf, data, offset)

    def read(self, buf, size, offset=0):
        return self._mem.read(buf, size, offset)
