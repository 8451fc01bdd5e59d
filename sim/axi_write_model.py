"""AXI4 write-slave model for the Amaranth simulator: writes into a byte array, checks protocol.

The write-side twin of :class:`recfabric.sim.hbm_model.HBMModel` (which serves reads). One
background coroutine (:meth:`AXIWriteModel.process`) accepts AW and W with random back-pressure,
applies ``wstrb`` byte by byte, answers each burst on B after ``latency`` cycles (OKAY, or an
injected SLVERR), and raises :class:`~recfabric.sim.hbm_model.AXIProtocolError` on: AW/W valid
dropped or payload changed before the handshake, a non-INCR burst, ``awsize`` other than the
bus width, an unaligned address, a burst crossing 4 KiB, ``wlast`` on the wrong beat, a write
outside the backing memory.

Why a model of our own rather than cocotbext-axi's AxiRamWrite: cocotbext-axi runs only under
cocotb, driving a Verilog simulator (Icarus, Verilator) through cocotb's scheduler; it cannot be
attached to Amaranth's Python simulator, where the block tests and the driver's ``sim`` backend run
(the ResultWriter block tests and the kernel behind the ``sim`` backend; a reset of the master
clears the writes in flight). The Verilog-level tests (``tests/cocotb/``) use cocotbext-axi itself.
"""

from __future__ import annotations

import random
from collections import deque

import numpy as np

from .hbm_model import AXIProtocolError

__all__ = ["AXIWriteModel"]


class AXIWriteModel:
    """Serve the write channels of ``bus`` (a master's AXI4 interface) from ``memory``.

    Parameters
    ----------
    bus : AXI4 interface with write channels
    memory : numpy uint8 array
        Backing store; address ``base + i`` is ``memory[i]``.
    base : int
    latency : int
        Cycles from the last W beat to the B response.
    p_stall : float
        Probability that ``awready`` / ``wready`` is low in a cycle.
    error_writes : set of int
        Indices (0-based, in AW order) of bursts answered with SLVERR.
    """

    def __init__(self, bus, memory: np.ndarray, *, base: int = 0, latency: int = 4,
                 p_stall: float = 0.0, rng: random.Random | None = None,
                 error_writes=()):
        self.bus, self.memory, self.base = bus, memory, base
        self.latency, self.p_stall = latency, p_stall
        self.rng = rng or random.Random(0)
        self.error_writes = set(error_writes)
        self.bursts = 0
        self.beats = 0
        self.data_bytes = len(bus.wdata) // 8

    def _check_aw(self, addr, awlen, awsize, awburst):
        def fail(msg):
            raise AXIProtocolError(f"AXI write burst {self.bursts} at {addr:#x}: {msg}")
        if awburst != 1:
            fail(f"burst type {awburst}, only INCR is supported")
        if 1 << awsize != self.data_bytes:
            fail(f"awsize {awsize} is not the bus width ({self.data_bytes} bytes)")
        if addr % self.data_bytes:
            fail("address not aligned to the bus width")
        end = addr + (awlen + 1) * self.data_bytes
        if addr // 4096 != (end - 1) // 4096:
            fail(f"burst of {awlen + 1} beats crosses a 4 KiB boundary")
        if addr < self.base or end > self.base + len(self.memory):
            fail(f"outside the memory {self.base:#x}..{self.base + len(self.memory):#x}")

    async def process(self, ctx):
        bus = self.bus
        bursts = deque()  # (addr, beats_left, index)
        responses = deque()  # (due cycle, resp)
        cycle = 0
        held_aw = held_w = None
        beat_in_burst = 0
        while True:
            aw_ready = self.rng.random() >= self.p_stall
            w_ready = self.rng.random() >= self.p_stall and bool(bursts)
            ctx.set(bus.awready, aw_ready)
            ctx.set(bus.wready, w_ready)
            b_valid = bool(responses) and responses[0][0] <= cycle
            ctx.set(bus.bvalid, b_valid)
            ctx.set(bus.bresp, responses[0][1] if b_valid else 0)
            ctx.set(bus.bid, 0)
            (_, rst, awvalid, awaddr, awlen, awsize, awburst, wvalid, wdata, wstrb, wlast,
             bready) = await ctx.tick().sample(
                bus.awvalid, bus.awaddr, bus.awlen, bus.awsize, bus.awburst,
                bus.wvalid, bus.wdata, bus.wstrb, bus.wlast, bus.bready)
            if rst:  # the master was reset: its transfers in flight are gone
                bursts.clear()
                responses.clear()
                held_aw = held_w = None
                beat_in_burst = 0
                cycle += 1
                continue
            aw = (awaddr, awlen, awsize, awburst)
            if held_aw is not None and (not awvalid or aw != held_aw):
                raise AXIProtocolError(f"cycle {cycle}: AW dropped or changed before awready")
            w = (wdata, wstrb, wlast)
            if held_w is not None and (not wvalid or w != held_w):
                raise AXIProtocolError(f"cycle {cycle}: W dropped or changed before wready")
            held_aw = aw if awvalid and not aw_ready else None
            held_w = w if wvalid and not w_ready else None
            if awvalid and aw_ready:
                self._check_aw(awaddr, awlen, awsize, awburst)
                bursts.append([awaddr, awlen + 1, self.bursts])
                self.bursts += 1
            if wvalid and w_ready:
                burst = bursts[0]
                addr = burst[0] + beat_in_burst * self.data_bytes - self.base
                for i in range(self.data_bytes):
                    if wstrb >> i & 1:
                        self.memory[addr + i] = (wdata >> (8 * i)) & 0xFF
                beat_in_burst += 1
                self.beats += 1
                is_last = beat_in_burst == burst[1]
                if bool(wlast) != is_last:
                    raise AXIProtocolError(
                        f"cycle {cycle}: wlast={wlast} on beat {beat_in_burst} of a "
                        f"{burst[1]}-beat burst")
                if is_last:
                    bursts.popleft()
                    beat_in_burst = 0
                    resp = 2 if burst[2] in self.error_writes else 0
                    responses.append((cycle + self.latency, resp))
            if b_valid and bready:
                responses.popleft()
            cycle += 1
