"""AXI4 and AXI4-Lite protocol properties for formal verification (Amaranth ``Assert``/``Assume``).

Each checker watches one bus (any object with the AXI member names of
:class:`~recfabric.hw.axi4.AXI4Signature` / :class:`~recfabric.hw.axi4.AXI4LiteSignature`, e.g. a
block's ``m_axi``) and adds properties to the design it is elaborated in. The side under test
(``dut="master"`` or ``dut="slave"``) gets ``Assert``; the other side, the environment, gets
``Assume``: a formal tool then explores every environment that obeys the protocol and reports any
step where the block under test breaks it.

Rules (AXI spec IHI 0022, sections A3.1-A3.4, B1):

* no ``*VALID`` during reset;
* a ``*VALID`` stays asserted until its ``*READY``, and the channel's payload does not change
  meanwhile (AR, AW, W, R, B);
* a read burst's R beats come after its AR handshake, ``RLAST`` on beat ``ARLEN`` exactly;
* W beats: exactly ``AWLEN + 1`` per burst, ``WLAST`` on the last; a B response only after both
  the burst's AW and its last W beat; one B per burst;
* INCR bursts do not cross a 4 KiB boundary; ``*SIZE`` and ``*BURST`` as the block documents;
* no ``EXOKAY`` response (the blocks never issue exclusive accesses);
* AXI4-Lite: one B per (AW, W) pair, one R per AR, never a response without a request.

Block-documented limits are properties too: the fixed ``ARID``/``AWID``, the largest burst, the
outstanding-transaction bound, W leading AW by at most one burst, the response latency of an
AXI4-Lite slave, and the ``*RESP`` it answers.

The checkers assume responses in order, which AXI guarantees for one ID; the ID check
(``ar.fixed``/``aw.fixed``) asserts that the master uses only the one it documents.

Every property has a short name (``ar.valid_stable``, ``w.wlast``...) that SymbiYosys's reports
carry (see :class:`PropertyWriter`).
"""

from __future__ import annotations

from amaranth.hdl import (
    Array,
    Assert,
    Assume,
    Cat,
    Cover,
    Elaboratable,
    Module,
    Mux,
    ResetSignal,
    Signal,
)

from ..axi4 import AXIBurst, AXIResp

__all__ = ["PropertyWriter", "held", "AXI4ReadChecker", "AXI4WriteChecker",
           "AXI4LiteChecker"]

class PropertyWriter:
    """Adds named properties to a module; which side of a protocol is asserted is a parameter.

    A property's name is also its message, and its source location reads
    ``<name>@<file>`` (line unchanged), so that SymbiYosys, which prints the location of a failed
    assertion or a reached cover, names it (:func:`recfabric.hw.formal.sby.property_name`).

    Parameters
    ----------
    m : Module
    dut : str
        ``"master"`` or ``"slave"``: the side under test (its rules are asserted).
    """

    def __init__(self, m: Module, dut: str = "master"):
        if dut not in ("master", "slave"):
            raise ValueError(f"dut must be 'master' or 'slave', not {dut!r}")
        self.m, self.dut = m, dut

    def _add(self, kind, name, test):
        prop = kind(test, name, src_loc_at=2)
        file, line = prop.src_loc
        prop.src_loc = (f"{name}@{file}", line)
        self.m.d.comb += prop

    def rule(self, side: str, name: str, test):
        """``test`` must hold in every cycle: ``side`` (``"master"``/``"slave"``) ensures it.

        Asserted if ``side`` is the block under test, else assumed of the environment.
        """
        self._add(Assert if side == self.dut else Assume, name, test)

    def check(self, name: str, test):
        """Assert ``test`` (a property of the block under test)."""
        self._add(Assert, name, test)

    def assume(self, name: str, test):
        """Assume ``test`` (a property of the environment)."""
        self._add(Assume, name, test)

    def cover(self, name: str, test):
        """A trace must exist where ``test`` holds."""
        self._add(Cover, name, test)


def _other(side):
    return "slave" if side == "master" else "master"


def held(m, valid, ready, payload, name):
    """``(waited, same)``: ``waited`` is 1 if last cycle had ``valid & ~ready``; ``same`` is 1 if
    ``payload`` equals last cycle's."""
    waited = Signal(name=f"{name}_waited")
    prev = Signal(len(payload), name=f"{name}_prev")
    m.d.sync += [waited.eq(valid & ~ready), prev.eq(payload)]
    return waited, prev == payload


def _crosses_4k(addr, length, size):
    """An INCR burst of ``length + 1`` beats of ``2**size`` bytes from ``addr`` crosses 4 KiB."""
    start = addr[:12] & ~((1 << size) - 1)
    return (start + ((length + 1) << size)) > 4096


class _Queue:
    """A FIFO of register slots in the checker (burst lengths of accepted, unfinished bursts)."""

    def __init__(self, m, depth, width, name):
        self.depth = depth
        self.slots = [Signal(width, name=f"{name}{i}") for i in range(depth)]
        self.wp = Signal(range(depth), name=f"{name}_wp")
        self.rp = Signal(range(depth), name=f"{name}_rp")
        self.count = Signal(range(depth + 1), name=f"{name}_count")
        self.head = Signal(width, name=f"{name}_head")
        m.d.comb += self.head.eq(Array(self.slots)[self.rp])
        self._m = m

    def _next(self, p):
        return Mux(p == self.depth - 1, 0, p + 1)

    def slot(self, k):
        """The ``k``-th oldest entry (valid while ``k < count``)."""
        d = self.depth
        return Array(self.slots)[Mux(self.rp + k >= d, self.rp + k - d, self.rp + k)]

    def live(self, i):
        """Slot ``i`` holds an entry (it is among the ``count`` slots from ``rp``)."""
        d = self.depth
        return Mux(self.rp <= i, i - self.rp, i + d - self.rp) < self.count

    def beats(self):
        """Sum of ``slot + 1`` over the live slots (the beats of the queued bursts)."""
        return sum(Mux(self.live(i), s + 1, 0) for i, s in enumerate(self.slots))

    def consistent(self):
        """The write pointer is ``count`` slots after the read pointer (an invariant of the
        queue itself, stated for k-induction)."""
        d = self.depth
        return ((self.count <= d) & (self.rp < d) & (self.wp < d) &
                (self.wp == Mux(self.rp + self.count >= d, self.rp + self.count - d,
                                self.rp + self.count)))

    def update(self, push, value, pop):
        m = self._m
        with m.If(push):
            for i, s in enumerate(self.slots):
                with m.If(self.wp == i):
                    m.d.sync += s.eq(value)
            m.d.sync += self.wp.eq(self._next(self.wp))
        with m.If(pop):
            m.d.sync += self.rp.eq(self._next(self.rp))
        m.d.sync += self.count.eq(self.count + push - pop)


class _AddressChannelRules:
    """Static rules of an AR or AW request (shared by the read and write checkers)."""

    def __init__(self, *, max_len, burst, size, fixed, aligned):
        self.max_len, self.burst, self.size = max_len, burst, size
        self.fixed, self.aligned = dict(fixed or {}), aligned

    def add(self, p, bus, ch, data_width):
        """Rules for channel ``ch`` ("ar" or "aw") of ``bus``, asserted of the master."""
        valid = getattr(bus, f"{ch}valid")
        ready = getattr(bus, f"{ch}ready")
        addr, length = getattr(bus, f"{ch}addr"), getattr(bus, f"{ch}len")
        size, burst = getattr(bus, f"{ch}size"), getattr(bus, f"{ch}burst")
        m = p.m
        rst = ResetSignal()
        payload = Cat(*(getattr(bus, f"{ch}{f}") for f in
                        ("id", "addr", "len", "size", "burst", "lock", "cache", "prot", "qos")))
        waited, same = held(m, valid, ready, payload, ch)
        max_size = (data_width // 8 - 1).bit_length()
        exp_size = max_size if self.size is None else self.size

        p.rule("master", f"{ch}.reset", ~rst | ~valid)
        with m.If(waited):
            p.rule("master", f"{ch}.valid_stable", valid)
            p.rule("master", f"{ch}.payload_stable", same)
        with m.If(valid):
            p.rule("master", f"{ch}.burst", burst == self.burst)
            p.rule("master", f"{ch}.size", size == exp_size)
            p.rule("master", f"{ch}.max_len", length <= self.max_len)
            if self.burst == AXIBurst.INCR:
                p.rule("master", f"{ch}.no_4k_crossing", ~_crosses_4k(addr, length, exp_size))
            if self.aligned:
                p.rule("master", f"{ch}.aligned", addr[:exp_size] == 0)
            for field, value in self.fixed.items():
                p.rule("master", f"{ch}.fixed", getattr(bus, f"{ch}{field}") == value)


class AXI4ReadChecker(Elaboratable):
    """Protocol properties of an AXI4 read channel pair (AR, R).

    Parameters
    ----------
    bus : interface
        Has the AR and R members of :class:`~recfabric.hw.axi4.AXI4Signature`.
    dut : str
        ``"master"`` (default: the master's rules are asserted, the slave's assumed) or
        ``"slave"``.
    max_outstanding : int
        Bursts accepted on AR and not yet finished (RLAST) at most: asserted of the master.
    arid : int
        The only ID the master uses (asserted); responses then come in order.
    max_len : int
        Largest ``ARLEN`` the master issues.
    size : int or None
        ``ARSIZE`` (default: full data width).
    burst : AXIBurst
        ``ARBURST`` the master uses.
    fixed : dict
        Further AR fields with a documented constant value (``{"cache": 0b0011}``).
    aligned : bool
        ``ARADDR`` is a multiple of the beat size.
    cover_len : int or None
        Cover a complete burst of ``cover_len + 1`` beats (default ``max_len``).
    cover_outstanding : int or None
        Cover this many bursts in flight (default ``max_outstanding``; less where the bound
        asserted is not tight).
    bookkeeping : bool
        Also assert the checker's own invariants (``rd.bookkeeping``: queue pointers, ``owed``
        = the queued bursts' beats not yet delivered), which k-induction needs; they cost BMC
        time on large queues, so only harnesses proved by induction ask for them.

    Attributes
    ----------
    outstanding : Signal
        Bursts accepted and unfinished (for block-level properties).
    owed : Signal
        Beats accepted on AR and not yet delivered on R.
    ar_fire, r_fire, r_end : Value
        AR handshake, R handshake, R handshake of a burst's last beat.
    queue, beat : _Queue, Signal
        After elaboration: the ``ARLEN`` of each burst in flight (oldest first: ``queue.slot(i)``
        is the ``i``-th oldest) and the beats of the oldest one delivered so far (for
        invariants).
    """

    def __init__(self, bus, *, dut="master", max_outstanding, arid, max_len=255, size=None,
                 burst=AXIBurst.INCR, fixed=None, aligned=False, cover_len=None,
                 cover_outstanding=None, bookkeeping=False):
        if not 1 <= max_outstanding <= 1024:
            raise ValueError(f"max_outstanding must be in 1..1024, not {max_outstanding}")
        if not 0 <= max_len <= 255:
            raise ValueError(f"max_len must be in 0..255, not {max_len}")
        self.bus, self.dut, self.max_outstanding, self.arid = bus, dut, max_outstanding, arid
        self.cover_outstanding = (max_outstanding if cover_outstanding is None
                                  else cover_outstanding)
        self.max_len = max_len
        self.bookkeeping = bookkeeping
        self.cover_len = max_len if cover_len is None else cover_len
        self._ar = _AddressChannelRules(max_len=max_len, burst=burst, size=size,
                                        fixed={"id": arid, **(fixed or {})}, aligned=aligned)
        self.outstanding = Signal(range(max_outstanding + 2), name="rd_outstanding")
        self.owed = Signal(range(256 * (max_outstanding + 1) + 1), name="rd_owed")
        self.ar_fire = bus.arvalid & bus.arready
        self.r_fire = bus.rvalid & bus.rready
        self.r_end = self.r_fire & bus.rlast

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        p = PropertyWriter(m, self.dut)
        rst = ResetSignal()
        self._ar.add(p, bus, "ar", len(bus.rdata))

        # Bursts in flight, oldest first; one more slot than allowed, so that the master
        # exceeding its bound is reported (ar.outstanding) before the queue could overflow.
        q = self.queue = _Queue(m, self.max_outstanding + 1, 8, "rd_len")
        beat = self.beat = Signal(8, name="r_beat")
        q.update(self.ar_fire, bus.arlen, self.r_end)
        m.d.comb += self.outstanding.eq(q.count)
        with m.If(self.r_fire):
            m.d.sync += beat.eq(Mux(bus.rlast, 0, beat + 1))

        p.rule("master", "ar.outstanding", q.count <= self.max_outstanding)

        # Beats accepted on AR and not yet delivered on R, and the checker's own bookkeeping
        # invariants (they hold by construction; k-induction needs them stated).
        m.d.sync += self.owed.eq(self.owed + Mux(self.ar_fire, bus.arlen + 1, 0) - self.r_fire)
        if self.bookkeeping:
            p.check("rd.bookkeeping", q.consistent() & (self.owed == q.beats() - beat) &
                    Mux(q.count == 0, beat == 0, beat <= q.head))

        r_payload = Cat(bus.rid, bus.rdata, bus.rresp, bus.rlast)
        r_waited, r_same = held(m, bus.rvalid, bus.rready, r_payload, "r")
        p.rule("slave", "r.reset", ~rst | ~bus.rvalid)
        with m.If(r_waited):
            p.rule("slave", "r.valid_stable", bus.rvalid)
            p.rule("slave", "r.payload_stable", r_same)
        with m.If(bus.rvalid):
            p.rule("slave", "r.after_ar", q.count != 0)
            p.rule("slave", "r.rlast", bus.rlast == (beat == q.head))
            p.rule("slave", "r.rid", bus.rid == self.arid)
            p.rule("slave", "r.resp", bus.rresp != AXIResp.EXOKAY)

        p.cover("cover.read_burst", self.r_end & (q.head == self.cover_len))
        p.cover("cover.read_error", self.r_end & bus.rresp[1])
        p.cover("cover.read_outstanding_max", q.count == self.cover_outstanding)
        return m


class AXI4WriteChecker(Elaboratable):
    """Protocol properties of an AXI4 write channel triple (AW, W, B).

    W may lead AW (the AXI spec allows write data before its address), but by at most one burst:
    a documented property of the RecFabric writers, asserted (``w.lead``).

    Parameters
    ----------
    bus : interface
        Has the AW, W and B members of :class:`~recfabric.hw.axi4.AXI4Signature`.
    dut : str
        ``"master"`` (default) or ``"slave"``.
    max_outstanding : int
        Bursts accepted on AW and not yet answered on B, at most (asserted of the master).
    awid : int
        The only ID the master uses.
    max_len, size, burst, fixed, aligned
        As for :class:`AXI4ReadChecker`, for AW.
    cover_len : int or None
        Cover a complete W burst of ``cover_len + 1`` beats (default ``max_len``).

    Attributes
    ----------
    outstanding : Signal
        Bursts accepted on AW and not answered on B.
    w_bursts, w_head : Signal
        Bursts accepted on AW whose W burst has not ended; the oldest one's ``AWLEN``.
    w_beat : Signal
        Beats of the current W burst accepted so far.
    lead_done, lead_len : Signal
        A whole W burst is waiting for its AW; its ``AWLEN``-to-be.
    b_owed : Signal
        Bursts whose AW and W are both done, not yet answered on B.
    aw_fire, w_fire, b_fire : Value
    """

    def __init__(self, bus, *, dut="master", max_outstanding, awid, max_len=255, size=None,
                 burst=AXIBurst.INCR, fixed=None, aligned=False, cover_len=None):
        if not 1 <= max_outstanding <= 1024:
            raise ValueError(f"max_outstanding must be in 1..1024, not {max_outstanding}")
        if not 0 <= max_len <= 255:
            raise ValueError(f"max_len must be in 0..255, not {max_len}")
        self.bus, self.dut, self.max_outstanding, self.awid = bus, dut, max_outstanding, awid
        self.max_len = max_len
        self.cover_len = max_len if cover_len is None else cover_len
        self._aw = _AddressChannelRules(max_len=max_len, burst=burst, size=size,
                                        fixed={"id": awid, **(fixed or {})}, aligned=aligned)
        self.outstanding = Signal(range(max_outstanding + 2), name="wr_outstanding")
        self.w_bursts = Signal(range(max_outstanding + 3), name="w_bursts")
        self.w_head = Signal(8, name="w_head")
        self.w_beat = Signal(8, name="w_beat")
        self.lead_done = Signal(name="w_lead_done")
        self.lead_len = Signal(8, name="w_lead_len")
        self.b_owed = Signal(range(max_outstanding + 3), name="b_owed")
        self.aw_fire = bus.awvalid & bus.awready
        self.w_fire = bus.wvalid & bus.wready
        self.b_fire = bus.bvalid & bus.bready

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        p = PropertyWriter(m, self.dut)
        rst = ResetSignal()
        self._aw.add(p, bus, "aw", len(bus.wdata))
        aw_fire, w_fire, b_fire = self.aw_fire, self.w_fire, self.b_fire

        # AW bursts accepted whose W burst has not ended, oldest first.
        q = _Queue(m, self.max_outstanding + 2, 8, "wr_len")
        w_beat = self.w_beat  # beats of the current W burst accepted so far
        lead_done = self.lead_done  # a whole W burst is waiting for its AW
        lead_len = self.lead_len
        b_owed = self.b_owed  # bursts whose AW and W are done, not yet answered on B
        aw_out = self.outstanding
        m.d.comb += [self.w_bursts.eq(q.count), self.w_head.eq(q.head)]
        p.check("wr.bookkeeping", q.consistent())

        known_q = q.count != 0
        # This W beat's burst length is known: from the queue, or from an AW accepted this cycle
        # (unless that AW belongs to a W burst that already ended).
        known = known_q | (aw_fire & ~lead_done)
        cur_len = Mux(known_q, q.head, bus.awlen)
        w_end = w_fire & bus.wlast

        with m.If(w_fire):
            m.d.sync += w_beat.eq(Mux(bus.wlast, 0, w_beat + 1))
        lead_ends = w_end & ~known
        m.d.sync += lead_done.eq((lead_done & ~aw_fire) | lead_ends)
        with m.If(lead_ends):
            m.d.sync += lead_len.eq(w_beat)
        push = aw_fire & ~lead_done & ~(~known_q & w_end)
        q.update(push, bus.awlen, w_end & known_q)
        bursts_done = (aw_fire & lead_done) | (w_end & known)
        m.d.sync += [b_owed.eq(b_owed + bursts_done - b_fire),
                     aw_out.eq(aw_out + aw_fire - b_fire)]

        p.rule("master", "aw.outstanding", aw_out <= self.max_outstanding)

        w_payload = Cat(bus.wdata, bus.wstrb, bus.wlast)
        w_waited, w_same = held(m, bus.wvalid, bus.wready, w_payload, "w")
        p.rule("master", "w.reset", ~rst | ~bus.wvalid)
        with m.If(w_waited):
            p.rule("master", "w.valid_stable", bus.wvalid)
            p.rule("master", "w.payload_stable", w_same)
        with m.If(w_fire & known):
            p.rule("master", "w.wlast", bus.wlast == (w_beat == cur_len))
        with m.If(w_fire & ~known):
            p.rule("master", "w.lead", ~lead_done | aw_fire)
            p.rule("master", "w.max_len", w_beat <= self.max_len)
        with m.If(aw_fire & lead_done):
            p.rule("master", "w.wlast", bus.awlen == lead_len)
        with m.If(aw_fire & ~lead_done & ~known_q):
            p.rule("master", "w.wlast", bus.awlen >= w_beat)

        b_payload = Cat(bus.bid, bus.bresp)
        b_waited, b_same = held(m, bus.bvalid, bus.bready, b_payload, "b")
        p.rule("slave", "b.reset", ~rst | ~bus.bvalid)
        with m.If(b_waited):
            p.rule("slave", "b.valid_stable", bus.bvalid)
            p.rule("slave", "b.payload_stable", b_same)
        with m.If(bus.bvalid):
            p.rule("slave", "b.after_aw_w", b_owed != 0)
            p.rule("slave", "b.bid", bus.bid == self.awid)
            p.rule("slave", "b.resp", bus.bresp != AXIResp.EXOKAY)

        p.cover("cover.write_burst", w_end & known & (cur_len == self.cover_len))
        p.cover("cover.write_error", b_fire & bus.bresp[1])
        p.cover("cover.write_outstanding_max", aw_out == self.max_outstanding)
        return m


class AXI4LiteChecker(Elaboratable):
    """Protocol properties of an AXI4-Lite port (all five channels).

    Parameters
    ----------
    bus : interface
        Has the members of :class:`~recfabric.hw.axi4.AXI4LiteSignature`.
    dut : str
        ``"slave"`` (default: the slave's rules are asserted, the master's assumed) or
        ``"master"``.
    max_pending : int
        Requests the slave holds unanswered per direction, at most (writes count the AW and the
        W channel separately).
    max_latency : int or None
        Cycles a slave may hold a complete request before raising its ``BVALID``/``RVALID``.
    resp : AXIResp or None
        The only response the slave gives (None: OKAY, SLVERR or DECERR).

    Attributes
    ----------
    aw_fire, w_fire, b_fire, ar_fire, r_fire : Value
    aw_pending, w_pending, ar_pending : Signal
        Requests accepted and not yet answered, per channel.
    latency : dict
        ``{"b": Signal, "r": Signal}``: cycles the complete request has waited for its response
        (counted when ``max_latency`` is given).
    """

    def __init__(self, bus, *, dut="slave", max_pending=1, max_latency=None, resp=None):
        self.bus, self.dut, self.max_pending = bus, dut, max_pending
        self.max_latency, self.resp = max_latency, resp
        self.aw_fire = bus.awvalid & bus.awready
        self.w_fire = bus.wvalid & bus.wready
        self.b_fire = bus.bvalid & bus.bready
        self.ar_fire = bus.arvalid & bus.arready
        self.r_fire = bus.rvalid & bus.rready
        n = max_pending
        self.aw_pending = Signal(range(n + 2), name="lite_aw_pending")
        self.w_pending = Signal(range(n + 2), name="lite_w_pending")
        self.ar_pending = Signal(range(n + 2), name="lite_ar_pending")
        self.latency = {ch: Signal(range((max_latency or 0) + 2), name=f"lite_{ch}_latency")
                        for ch in ("b", "r")}

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        p = PropertyWriter(m, self.dut)
        rst = ResetSignal()
        n = self.max_pending

        requests = {
            "aw": Cat(bus.awaddr, bus.awprot),
            "w": Cat(bus.wdata, bus.wstrb),
            "ar": Cat(bus.araddr, bus.arprot),
        }
        for ch, payload in requests.items():
            valid, ready = getattr(bus, f"{ch}valid"), getattr(bus, f"{ch}ready")
            waited, same = held(m, valid, ready, payload, f"lite_{ch}")
            p.rule("master", f"{ch}.reset", ~rst | ~valid)
            with m.If(waited):
                p.rule("master", f"{ch}.valid_stable", valid)
                p.rule("master", f"{ch}.payload_stable", same)

        # Requests accepted and not yet answered.
        aw_n, w_n, ar_n = self.aw_pending, self.w_pending, self.ar_pending
        m.d.sync += [aw_n.eq(aw_n + self.aw_fire - self.b_fire),
                     w_n.eq(w_n + self.w_fire - self.b_fire),
                     ar_n.eq(ar_n + self.ar_fire - self.r_fire)]
        p.rule("slave", "lite.pending", (aw_n <= n) & (w_n <= n) & (ar_n <= n))

        for ch, pending, payload in (("b", (aw_n != 0) & (w_n != 0), bus.bresp),
                                     ("r", ar_n != 0, Cat(bus.rdata, bus.rresp))):
            valid, ready = getattr(bus, f"{ch}valid"), getattr(bus, f"{ch}ready")
            resp = getattr(bus, f"{ch}resp")
            waited, same = held(m, valid, ready, payload, f"lite_{ch}")
            p.rule("slave", f"{ch}.reset", ~rst | ~valid)
            with m.If(waited):
                p.rule("slave", f"{ch}.valid_stable", valid)
                p.rule("slave", f"{ch}.payload_stable", same)
            with m.If(valid):
                p.rule("slave", f"{ch}.after_request", pending)
                if self.resp is not None:
                    p.rule("slave", f"{ch}.resp", resp == self.resp)
                else:
                    p.rule("slave", f"{ch}.resp", resp != AXIResp.EXOKAY)
            if self.max_latency is not None:
                wait = self.latency[ch]
                with m.If(pending & ~valid & (wait <= self.max_latency)):
                    m.d.sync += wait.eq(wait + 1)
                with m.Elif(~pending | valid):
                    m.d.sync += wait.eq(0)
                p.rule("slave", f"{ch}.latency", wait <= self.max_latency)

        writes = Signal(2, name="lite_writes")
        with m.If(self.b_fire & (writes != 3)):
            m.d.sync += writes.eq(writes + 1)
        p.cover("cover.lite_write", self.b_fire)
        p.cover("cover.lite_read", self.r_fire)
        p.cover("cover.lite_two_writes", self.b_fire & (writes == 1))
        p.cover("cover.lite_read_during_write", self.r_fire & (aw_n != 0))
        return m
