"""AXI4 read-slave model of an HBM pseudo-channel (or DDR bank) for the Amaranth simulator.

:class:`HBMModel` serves the AR/R channels of an :class:`~recfabric.hw.axi4.AXI4Signature`
master port from a byte array, as one background testbench coroutine (:meth:`HBMModel.process`).
It models what matters for a lookup unit's performance and robustness:

* a fixed read latency (cycles from the AR handshake to the first R beat being offered), plus an
  optional random extra delay per read;
* an outstanding-read limit (``arready`` low while that many reads are in flight);
* a bandwidth limit in beats per cycle (a token bucket; 1.0 = one beat every cycle);
* random ``arready`` stalls;
* error injection (SLVERR/DECERR on chosen or random reads) and DECERR for reads outside the
  backing memory; errored reads still return all their beats, as AXI requires;
* optionally, out-of-order return across different IDs (same-ID reads always stay in order);
* a protocol checker, raising :class:`AXIProtocolError` at once: ARVALID dropped or AR payload
  changed before the handshake, bursts that are not INCR (unless allowed), ``arsize`` wider than
  the bus, unaligned addresses, bursts over 256 beats, bursts crossing a 4 KiB boundary, reads
  outside ``allowed`` address ranges, and ``rready`` sampling consistency.

Statistics (:attr:`HBMModel.stats`) count reads, beats, the highest number of reads in flight,
and cycles, so that tests and benchmarks can assert on them.

Why a model of our own rather than cocotbext-axi's AxiRamRead: cocotbext-axi runs only under
cocotb, driving a Verilog simulator (Icarus, Verilator) through cocotb's scheduler; it cannot be
attached to Amaranth's Python simulator, where the block tests and the driver's ``sim`` backend run
(the whole generated kernel, or one block, without generating Verilog; a reset of the master clears
the reads in flight). The Verilog-level tests (``tests/cocotb/``) use cocotbext-axi itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from amaranth.hdl import Cat

from recfabric.hw.axi4 import AXIBurst, AXIResp

__all__ = ["AXIProtocolError", "HBMModel", "HBMStats"]


class AXIProtocolError(AssertionError):
    """The master broke an AXI4 rule; the message names the rule, cycle and values."""


@dataclass
class HBMStats:
    reads: int = 0
    beats: int = 0
    error_reads: int = 0
    max_inflight: int = 0
    cycles: int = 0
    first_ar_cycle: int | None = None
    last_r_cycle: int | None = None
    addresses: list = field(default_factory=list)


@dataclass
class _Read:
    arid: int
    addr: int
    beats: int
    size: int
    due: int
    resp: int
    sent: int = 0


class HBMModel:
    """AXI4 read slave for an Amaranth simulation.

    Parameters
    ----------
    bus : interface with an AXI4 read signature (the DUT's master port)
    memory : numpy uint8 array or bytes-like
        Backing store; byte ``i`` lives at address ``base + i``.
    base : int
        Address of ``memory[0]``.
    latency : int
        Cycles from the AR handshake to the first R beat being offered (>= 1).
    max_outstanding : int
        Reads in flight at most (``arready`` is low at the limit).
    extra_delay : int
        Each read gets a uniformly random extra latency in ``0..extra_delay`` cycles.
    beats_per_cycle : float
        Bandwidth limit, in (0, 1].
    p_ar_stall : float
        Probability that ``arready`` is low on a cycle (when otherwise ready).
    p_r_idle : float
        Probability that no R beat is offered on a cycle (when one is due).
    error_fn : callable(addr, arid, index) -> AXIResp or None, optional
        Response of the ``index``-th accepted read (None or OKAY: OKAY).
    p_error : float
        Probability of a random SLVERR/DECERR response per read.
    allowed : list of (lo, hi), optional
        Byte ranges ``[lo, hi)`` a read may touch; touching anything else raises.
    allow_bursts : set of AXIBurst
        Burst types accepted (INCR by default).
    reorder : bool
        Let reads with different IDs overtake each other.
    rng : random.Random, optional
    record_addresses : bool
        Keep every read's address in ``stats.addresses``.
    """

    def __init__(self, bus, memory, *, base: int = 0, latency: int = 32,
                 max_outstanding: int = 64, extra_delay: int = 0, beats_per_cycle: float = 1.0,
                 p_ar_stall: float = 0.0, p_r_idle: float = 0.0, error_fn=None,
                 p_error: float = 0.0, allowed=None, allow_bursts=(AXIBurst.INCR,),
                 reorder: bool = False, rng: random.Random | None = None,
                 record_addresses: bool = False, domain: str = "sync"):
        if not isinstance(latency, int) or latency < 1:
            raise ValueError(f"Latency must be an integer >= 1, not {latency!r}")
        if not isinstance(max_outstanding, int) or max_outstanding < 1:
            raise ValueError(f"Outstanding limit must be an integer >= 1, not {max_outstanding!r}")
        if not 0 < beats_per_cycle <= 1:
            raise ValueError(f"Bandwidth must be in (0, 1] beats per cycle, not {beats_per_cycle}")
        for n, p in (("p_ar_stall", p_ar_stall), ("p_r_idle", p_r_idle), ("p_error", p_error)):
            if not 0 <= p < 1:
                raise ValueError(f"{n} must be in [0, 1), not {p!r}")
        self.bus = bus
        self.memory = np.frombuffer(bytes(memory), dtype=np.uint8) if not isinstance(
            memory, np.ndarray) else memory
        self.base = base
        self.latency, self.max_outstanding, self.extra_delay = latency, max_outstanding, extra_delay
        self.beats_per_cycle = beats_per_cycle
        self.p_ar_stall, self.p_r_idle, self.p_error = p_ar_stall, p_r_idle, p_error
        self.error_fn, self.allowed = error_fn, allowed
        self.allow_bursts = {int(b) for b in allow_bursts}
        self.reorder = reorder
        self.rng = rng or random.Random(0)
        self.record_addresses = record_addresses
        self.domain = domain
        self.data_width = len(bus.rdata)
        self.beat_bytes = self.data_width // 8
        self.stats = HBMStats()

    def _check_ar(self, cycle, arid, addr, arlen, arsize, arburst):
        beats = arlen + 1
        size = 1 << arsize

        def fail(msg):
            raise AXIProtocolError(f"AR at cycle {cycle} (addr {addr:#x}, len {arlen}, size "
                                   f"{arsize}, burst {arburst}): {msg}")
        if arburst not in self.allow_bursts:
            fail(f"burst type {arburst} not allowed (allowed: {sorted(self.allow_bursts)})")
        if size > self.beat_bytes:
            fail(f"arsize {arsize} is wider than the {self.data_width}-bit bus")
        if arburst == AXIBurst.WRAP and (beats not in (2, 4, 8, 16) or addr % size):
            fail("WRAP burst needs 2/4/8/16 beats and an aligned address")
        if arburst == AXIBurst.FIXED and beats > 16:
            fail("FIXED burst longer than 16 beats")
        if addr % size:
            fail(f"address not aligned to the transfer size {size}")
        if arburst == AXIBurst.INCR:
            end = (addr & ~(size - 1)) + beats * size
            if (addr >> 12) != ((end - 1) >> 12):
                fail("burst crosses a 4 KiB boundary")
        end = addr + beats * size
        if self.allowed is not None and not any(lo <= addr and end <= hi
                                                for lo, hi in self.allowed):
            fail(f"reads [{addr:#x}, {end:#x}) outside the allowed ranges "
                 f"{[(hex(lo), hex(hi)) for lo, hi in self.allowed]}")

    def _beat_data(self, rd: _Read) -> int:
        a = rd.addr + rd.sent * rd.size - self.base
        if rd.resp & 2 or a < 0 or a + rd.size > len(self.memory):
            return 0
        lane = (rd.addr + rd.sent * rd.size) % self.beat_bytes
        word = int.from_bytes(self.memory[a:a + rd.size].tobytes(), "little")
        return word << (8 * lane)

    async def process(self, ctx):
        """The slave: add with ``sim.add_testbench(model.process, background=True)``."""
        b = self.bus
        rng = self.rng
        ar_fields = Cat(b.arid, b.araddr, b.arlen, b.arsize, b.arburst)
        id_w, addr_w = len(b.arid), len(b.araddr)
        queue: list[_Read] = []
        cur: _Read | None = None  # read (burst) being returned
        offering = False  # a beat of `cur` is on R (held until taken: RVALID never withdrawn)
        tokens = 1.0
        cycle = 0
        pending_ar = None  # AR payload offered without handshake at the previous edge
        index = 0
        st = self.stats
        ctx.set(b.rvalid, 0)
        ctx.set(b.arready, 0)
        while True:
            # ---- drive this cycle's outputs -----------------------------------------------
            arready = len(queue) < self.max_outstanding and not (
                self.p_ar_stall and rng.random() < self.p_ar_stall)
            ctx.set(b.arready, arready)
            tokens = min(1.0, tokens + self.beats_per_cycle)
            if not offering and tokens >= 1.0 and not (
                    self.p_r_idle and rng.random() < self.p_r_idle):
                if cur is None and queue:
                    cur = self._pick(queue, cycle)
                offering = cur is not None
            if offering:
                ctx.set(b.rvalid, 1)
                ctx.set(b.rid, cur.arid)
                ctx.set(b.rdata, self._beat_data(cur))
                ctx.set(b.rresp, cur.resp)
                ctx.set(b.rlast, cur.sent == cur.beats - 1)
            else:
                ctx.set(b.rvalid, 0)
            # ---- the clock edge -------------------------------------------------------------
            _, rst, arvalid, ar, rready = await ctx.tick(self.domain).sample(
                b.arvalid, ar_fields, b.rready)
            cycle += 1
            st.cycles = cycle
            if rst:
                queue.clear()
                cur, pending_ar, offering = None, None, False
                continue
            if pending_ar is not None:
                if not arvalid:
                    raise AXIProtocolError(f"ARVALID dropped at cycle {cycle} before the "
                                           f"handshake")
                if ar != pending_ar:
                    raise AXIProtocolError(f"AR payload changed at cycle {cycle} while ARVALID "
                                           f"and not ARREADY")
            pending_ar = None
            if arvalid and arready:
                arid = ar & ((1 << id_w) - 1)
                addr = (ar >> id_w) & ((1 << addr_w) - 1)
                rest = ar >> (id_w + addr_w)
                arlen, arsize, arburst = rest & 0xFF, (rest >> 8) & 7, (rest >> 11) & 3
                self._check_ar(cycle, arid, addr, arlen, arsize, arburst)
                resp = AXIResp.OKAY
                if self.error_fn is not None:
                    resp = self.error_fn(addr, arid, index) or AXIResp.OKAY
                if self.p_error and rng.random() < self.p_error:
                    resp = rng.choice((AXIResp.SLVERR, AXIResp.DECERR))
                end = addr + (arlen + 1) * (1 << arsize)
                if addr < self.base or end > self.base + len(self.memory):
                    resp = AXIResp.DECERR
                due = cycle + self.latency - 1 + (
                    rng.randint(0, self.extra_delay) if self.extra_delay else 0)
                queue.append(_Read(arid, addr, arlen + 1, 1 << arsize, due, int(resp)))
                index += 1
                st.reads += 1
                st.error_reads += resp != AXIResp.OKAY
                st.max_inflight = max(st.max_inflight, len(queue))
                if st.first_ar_cycle is None:
                    st.first_ar_cycle = cycle
                if self.record_addresses:
                    st.addresses.append(addr)
            elif arvalid:
                pending_ar = ar
            if offering and rready:
                offering = False
                cur.sent += 1
                tokens -= 1.0
                st.beats += 1
                st.last_r_cycle = cycle
                if cur.sent == cur.beats:
                    queue.remove(cur)
                    cur = None

    def _pick(self, queue, cycle):
        if not self.reorder:
            head = queue[0]
            return head if head.due <= cycle else None
        seen = set()
        for rd in queue:
            if rd.arid in seen:
                continue
            seen.add(rd.arid)
            if rd.due <= cycle:
                return rd
        return None

    @staticmethod
    def image(size: int) -> np.ndarray:
        """A zeroed backing store of ``size`` bytes."""
        return np.zeros(size, dtype=np.uint8)

