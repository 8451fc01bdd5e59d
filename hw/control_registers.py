"""The kernel's ``s_axi_control`` slave: Vitis ``ap_ctrl_hs`` control, arguments, status.

Register map: :mod:`recfabric.hw.register_map`.
"""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi4 import AXI4LiteSignature
from .register_map import (
    CTRL,
    GIE,
    IER,
    ISR,
    KERNEL_ID,
    KERNEL_VERSION,
    MAX_UNIT_COUNTERS,
    STATUS_REGS,
    UNIT_LOOKUPS_BASE,
    kernel_args,
)

__all__ = ["ControlRegisters", "STATUS_INPUTS"]

#: Status inputs from the kernel core: name -> width. ``cycles`` is counted here.
STATUS_INPUTS = {
    "errors": 32,
    "first_error_request": 32,
    "requests_done": 32,
    "lookups_issued": 32,
    "stall_memory": 32,
    "stall_mlp": 32,
    "stall_results": 32,
}


class ControlRegisters(wiring.Component):
    """AXI4-Lite control slave implementing ``ap_ctrl_hs`` for a non-pipelined kernel.

    The host writes arguments, then ``ap_start``. When the kernel is idle and ``ap_start`` is
    set, :attr:`start` pulses for one cycle and the kernel is busy (``ap_idle`` low) until the
    core pulses :attr:`done`; then ``ap_done`` and ``ap_ready`` are set (cleared when the host
    reads the control register), ``ap_start`` clears, ISR bit 0 is set if enabled, and
    :attr:`interrupt` follows ``GIE & (ISR & IER)``. A cycle counter runs from ``start`` until
    the core pulses :attr:`freeze` (when it captures the status block, so that the block's
    ``cycles`` equals the register) or :attr:`done`.

    Parameters
    ----------
    num_table_channels : int
        Number of ``tables<i>`` pointer arguments.
    config_hash : int
        32-bit configuration hash, read-only at ``config_hash``.
    num_units : int
        Per-unit lookup counters, read-only at ``UNIT_LOOKUPS_BASE + 4 * u``.

    Members
    -------
    s_axi : In(AXI4LiteSignature(addr_width=12))
        The control port (slave side).
    start : Out(1)
        One-cycle pulse: begin a run with the current arguments.
    done : In(1)
        One-cycle pulse from the core: the run is complete (results and status written).
    freeze : In(1)
        One-cycle pulse from the core: stop the cycle counter for this run.
    busy : Out(1)
        High from ``start`` until ``done``.
    interrupt : Out(1)
        Level interrupt to the platform.
    arg_<name> : Out(64) or Out(32)
        Argument values (pointers 64 bits, ``batch`` 32 bits).
    status_<name> : In(32)
        Status and counters from the core (:data:`STATUS_INPUTS`).
    unit_lookups : In(32).array(num_units)
        Per-unit lookup counters from the core.
    cycles : Out(64)
        Cycles from ``start`` to ``freeze`` (or ``done``) of the current or last run.
    """

    def __init__(self, num_table_channels: int, config_hash: int, num_units: int = 0):
        if not 0 <= config_hash < 1 << 32:
            raise ValueError(f"config hash must be a 32-bit unsigned integer, not {config_hash}")
        if not 0 <= num_units <= MAX_UNIT_COUNTERS:
            raise ValueError(f"num_units must be in 0..{MAX_UNIT_COUNTERS}, not {num_units}")
        self._units = num_units
        self._args = kernel_args(num_table_channels)
        self._hash = config_hash
        members = {
            "s_axi": In(AXI4LiteSignature(addr_width=12)),
            "start": Out(1), "done": In(1), "freeze": In(1), "busy": Out(1),
            "interrupt": Out(1),
            "cycles": Out(64),
        }
        for a in self._args:
            members[f"arg_{a.name}"] = Out(64 if a.is_pointer else 32)
        for name, width in STATUS_INPUTS.items():
            members[f"status_{name}"] = In(width)
        if num_units:
            members["unit_lookups"] = In(32).array(num_units)
        super().__init__(members)

    @property
    def args(self):
        return list(self._args)

    def elaborate(self, platform):
        # One function on purpose (~100 lines): run control and the AXI4-Lite slave read and write
        # the same registers (ap_start/ap_done/ISR); splitting them would pass most of them around.
        m = Module()
        bus = self.s_axi

        ap_start = Signal()
        ap_done = Signal()
        ap_ready = Signal()
        gie = Signal()
        ier = Signal(2)
        isr = Signal(2)
        m.d.comb += self.interrupt.eq(gie & (isr & ier).any())

        # Run control.
        m.d.comb += self.start.eq(ap_start & ~self.busy)
        counting = Signal()
        with m.If(self.start):
            m.d.sync += [self.busy.eq(1), self.cycles.eq(0), counting.eq(1)]
        with m.Elif(self.busy & counting & ~self.freeze):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        with m.If(self.freeze):
            m.d.sync += counting.eq(0)
        with m.If(self.busy & self.done):
            m.d.sync += [self.busy.eq(0), ap_start.eq(0), ap_done.eq(1), ap_ready.eq(1)]
            with m.If(ier[0]):
                m.d.sync += isr[0].eq(1)
            with m.If(ier[1]):
                m.d.sync += isr[1].eq(1)

        # Read-only view of every register.
        regs = {
            CTRL: Cat(ap_start, ap_done, ~self.busy, ap_ready),
            GIE: gie, IER: ier, ISR: isr,
            STATUS_REGS["id"]: Const(KERNEL_ID, 32),
            STATUS_REGS["version"]: Const(KERNEL_VERSION, 32),
            STATUS_REGS["config_hash"]: Const(self._hash, 32),
            STATUS_REGS["cycles_lo"]: self.cycles[:32],
            STATUS_REGS["cycles_hi"]: self.cycles[32:],
        }
        for name in STATUS_INPUTS:
            regs[STATUS_REGS[name]] = getattr(self, f"status_{name}")
        for u in range(self._units):
            regs[UNIT_LOOKUPS_BASE + 4 * u] = self.unit_lookups[u]
        arg_regs = {}
        for a in self._args:
            sig = getattr(self, f"arg_{a.name}")
            arg_regs[a.offset] = sig[:32]
            if a.is_pointer:
                arg_regs[a.offset + 4] = sig[32:]
        regs.update(arg_regs)

        # AXI4-Lite slave. Every handshake output is a register (not decoded from an FSM
        # state): the port is then free of combinational paths from inputs to outputs, and
        # simulators that evaluate `always @*` lazily (Icarus) see the same thing as hardware.
        # Write: take AW and W (in either order), apply, answer OKAY. Writes to read-only or
        # unmapped registers are ignored, as HLS control slaves do.
        waddr = Signal(12)
        wdata = Signal(32)
        have_aw = Signal()
        have_w = Signal()
        awready = Signal(init=1)
        wready = Signal(init=1)
        bvalid = Signal()
        m.d.comb += [bus.awready.eq(awready), bus.wready.eq(wready), bus.bvalid.eq(bvalid),
                     bus.bresp.eq(0)]
        with m.If(bus.awvalid & awready):
            m.d.sync += [waddr.eq(bus.awaddr), have_aw.eq(1), awready.eq(0)]
        with m.If(bus.wvalid & wready):
            m.d.sync += [wdata.eq(bus.wdata), have_w.eq(1), wready.eq(0)]
        with m.If(have_aw & have_w & ~bvalid):
            with m.Switch(waddr[2:]):
                with m.Case(CTRL >> 2):
                    with m.If(wdata[0]):
                        m.d.sync += ap_start.eq(1)
                with m.Case(GIE >> 2):
                    m.d.sync += gie.eq(wdata[0])
                with m.Case(IER >> 2):
                    m.d.sync += ier.eq(wdata[:2])
                with m.Case(ISR >> 2):
                    m.d.sync += isr.eq(isr ^ wdata[:2])
                for off, sig in arg_regs.items():
                    with m.Case(off >> 2):
                        m.d.sync += sig.eq(wdata)
            m.d.sync += [bvalid.eq(1), have_aw.eq(0), have_w.eq(0)]
        with m.If(bvalid & bus.bready):
            m.d.sync += [bvalid.eq(0), awready.eq(1), wready.eq(1)]

        # Read: take the address, select, then hold rdata until taken.
        raddr = Signal(12)
        rdata = Signal(32)
        arready = Signal(init=1)
        rvalid = Signal()
        selecting = Signal()
        m.d.comb += [bus.arready.eq(arready), bus.rvalid.eq(rvalid), bus.rdata.eq(rdata),
                     bus.rresp.eq(0)]
        with m.If(bus.arvalid & arready):
            m.d.sync += [raddr.eq(bus.araddr), arready.eq(0), selecting.eq(1)]
        with m.If(selecting):
            m.d.sync += [rdata.eq(0), selecting.eq(0), rvalid.eq(1)]
            with m.Switch(raddr[2:]):
                for off, sig in regs.items():
                    with m.Case(off >> 2):
                        m.d.sync += rdata.eq(sig)
            with m.If(raddr[2:] == CTRL >> 2):
                # ap_done and ap_ready clear on read (unless set again this cycle).
                with m.If(~(self.busy & self.done)):
                    m.d.sync += [ap_done.eq(0), ap_ready.eq(0)]
        with m.If(rvalid & bus.rready):
            m.d.sync += [rvalid.eq(0), arready.eq(1)]
        return m
