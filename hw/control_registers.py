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
    STATUS_REGS,
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
    :attr:`interrupt` follows ``GIE & (ISR & IER)``. A cycle counter runs while busy.

    Parameters
    ----------
    num_table_channels : int
        Number of ``tables<i>`` pointer arguments.
    config_hash : int
        32-bit configuration hash, read-only at ``config_hash``.

    Members
    -------
    s_axi : In(AXI4LiteSignature(addr_width=12))
        The control port (slave side).
    start : Out(1)
        One-cycle pulse: begin a run with the current arguments.
    done : In(1)
        One-cycle pulse from the core: the run is complete (results and status written).
    busy : Out(1)
        High from ``start`` until ``done``.
    interrupt : Out(1)
        Level interrupt to the platform.
    arg_<name> : Out(64) or Out(32)
        Argument values (pointers 64 bits, ``batch`` 32 bits).
    status_<name> : In(32)
        Status and counters from the core (:data:`STATUS_INPUTS`).
    cycles : Out(64)
        Cycles from ``start`` to ``done`` of the current or last run.
    """

    def __init__(self, num_table_channels: int, config_hash: int):
        if not 0 <= config_hash < 1 << 32:
            raise ValueError(f"config hash must be a 32-bit unsigned integer, not {config_hash}")
        self._args = kernel_args(num_table_channels)
        self._hash = config_hash
        members = {
            "s_axi": In(AXI4LiteSignature(addr_width=12)),
            "start": Out(1), "done": In(1), "busy": Out(1), "interrupt": Out(1),
            "cycles": Out(64),
        }
        for a in self._args:
            members[f"arg_{a.name}"] = Out(64 if a.is_pointer else 32)
        for name, width in STATUS_INPUTS.items():
            members[f"status_{name}"] = In(width)
        super().__init__(members)

    @property
    def args(self):
        return list(self._args)

    def elaborate(self, platform):
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
        with m.If(self.start):
            m.d.sync += [self.busy.eq(1), self.cycles.eq(0)]
        with m.Elif(self.busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)
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
        arg_regs = {}
        for a in self._args:
            sig = getattr(self, f"arg_{a.name}")
            arg_regs[a.offset] = sig[:32]
            if a.is_pointer:
                arg_regs[a.offset + 4] = sig[32:]
        regs.update(arg_regs)

        # AXI4-Lite write: take address and data together, answer OKAY (writes to read-only or
        # unmapped registers are ignored, as HLS control slaves do).
        waddr = Signal(12)
        wdata = Signal(32)
        with m.FSM(name="write"):
            with m.State("IDLE"):
                m.d.comb += [bus.awready.eq(bus.wvalid), bus.wready.eq(bus.awvalid)]
                with m.If(bus.awvalid & bus.wvalid):
                    m.d.sync += [waddr.eq(bus.awaddr), wdata.eq(bus.wdata)]
                    m.next = "APPLY"
            with m.State("APPLY"):
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
                m.next = "RESP"
            with m.State("RESP"):
                m.d.comb += [bus.bvalid.eq(1), bus.bresp.eq(0)]
                with m.If(bus.bready):
                    m.next = "IDLE"

        # AXI4-Lite read: one cycle to select, then hold rdata until taken.
        rdata = Signal(32)
        with m.FSM(name="read"):
            with m.State("IDLE"):
                m.d.comb += bus.arready.eq(1)
                with m.If(bus.arvalid):
                    m.d.sync += rdata.eq(0)
                    with m.Switch(bus.araddr[2:]):
                        for off, sig in regs.items():
                            with m.Case(off >> 2):
                                m.d.sync += rdata.eq(sig)
                    with m.If(bus.araddr[2:] == CTRL >> 2):
                        # ap_done and ap_ready clear on read (unless set again this cycle).
                        with m.If(~(self.busy & self.done)):
                            m.d.sync += [ap_done.eq(0), ap_ready.eq(0)]
                    m.next = "RESP"
            with m.State("RESP"):
                m.d.comb += [bus.rvalid.eq(1), bus.rdata.eq(rdata), bus.rresp.eq(0)]
                with m.If(bus.rready):
                    m.next = "IDLE"
        return m
