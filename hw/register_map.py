"""The kernel's control register map and argument list: one definition for hardware and host.

The control port is the Vitis ``ap_ctrl_hs`` AXI4-Lite slave ``s_axi_control``:

========  ==========================================================================
offset    register
========  ==========================================================================
0x00      control: bit0 ap_start (RW, cleared by the kernel when it starts), bit1 ap_done
          (clear on read), bit2 ap_idle, bit3 ap_ready (clear on read)
0x04      global interrupt enable (bit0)
0x08      IP interrupt enable (bit0 done, bit1 ready)
0x0C      IP interrupt status (bit0 done, bit1 ready; toggle on write)
0x10...   kernel arguments (:data:`ARGS`): 64-bit pointers take two words, low word first
0x200...  read-only identification, status and performance counters (:data:`STATUS_REGS`)
0x300...  read-only lookups sent to each lookup unit (:data:`UNIT_LOOKUPS_BASE`; not in the
          status block, so not readable through ``pyxrt``)
========  ==========================================================================

XRT's Python binding (``pyxrt``) sets arguments and waits for ``ap_done`` but cannot read
arbitrary registers of an ``ap_ctrl_hs`` kernel, so the kernel also writes the status registers
as a *status block* to the end of the results buffer when a run finishes (see
:func:`status_block_offset`). The driver reads counters from there on every backend; simulation
tests check that the block equals the registers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CTRL", "GIE", "IER", "ISR", "CTRL_START", "CTRL_DONE", "CTRL_IDLE", "CTRL_READY",
    "KernelArg", "kernel_args", "STATUS_REGS", "STATUS_BASE", "KERNEL_ID", "KERNEL_VERSION",
    "ERROR_BAD_INDEX", "ERROR_AXI", "ERROR_BAD_REQUEST", "ERROR_NO_PROGRAM", "ERROR_BITS",
    "NO_ERROR_REQUEST", "status_block_offset", "UNIT_LOOKUPS_BASE", "MAX_UNIT_COUNTERS",
    "STATUS_BLOCK_BYTES", "CONTROL_RANGE",
]

CTRL, GIE, IER, ISR = 0x00, 0x04, 0x08, 0x0C
CTRL_START, CTRL_DONE, CTRL_IDLE, CTRL_READY = 1 << 0, 1 << 1, 1 << 2, 1 << 3
CONTROL_RANGE = 0x1000

#: ASCII "RFab" read from the ID register.
KERNEL_ID = 0x62614652
#: Major << 16 | minor of the register map and wire format. 1.1: ERROR_NO_PROGRAM, the MEMORY
#: result flag, ``first_error_request`` as a batch index (all ones: none), ``cycles`` ending when
#: the status block is captured.
KERNEL_VERSION = 0x0001_0001

#: Sticky error flags of the ``errors`` register (cleared by ap_start); docs/kernel.md says what
#: the host should do about each.
#: A lookup outside its table (or through an invalid descriptor); that bag's vector is zero and
#: the request's record has ID_RANGE.
ERROR_BAD_INDEX = 1 << 0
#: SLVERR/DECERR on any master (tables: the request's record has MEMORY; request records,
#: results, program: no per-record flag).
ERROR_AXI = 1 << 1
#: A request record's bag length over the feature's maximum, or an empty one-hot bag; the
#: request's record has BAG_RANGE.
ERROR_BAD_REQUEST = 1 << 2
#: The run had no valid kernel program (none loaded since reset, or this run's LOAD found a bad
#: magic or an AXI error): no request was processed, only the status block was written.
ERROR_NO_PROGRAM = 1 << 3
#: Every error bit, by name.
ERROR_BITS = {"BAD_INDEX": ERROR_BAD_INDEX, "AXI": ERROR_AXI, "BAD_REQUEST": ERROR_BAD_REQUEST,
              "NO_PROGRAM": ERROR_NO_PROGRAM}
#: ``first_error_request`` when no request of the run was at fault.
NO_ERROR_REQUEST = 0xFFFF_FFFF


@dataclass(frozen=True)
class KernelArg:
    """One kernel argument: a 64-bit buffer pointer on a master bundle, or a 32-bit scalar."""

    name: str
    offset: int
    bundle: str | None  # AXI master bundle for pointers (m_axi_<bundle>), None for scalars
    description: str

    @property
    def is_pointer(self) -> bool:
        return self.bundle is not None

    @property
    def size(self) -> int:
        return 8 if self.is_pointer else 4


def kernel_args(num_table_channels: int) -> list[KernelArg]:
    """Argument list, in XRT argument-index order."""
    if num_table_channels < 1:
        raise ValueError(f"a kernel needs at least one table channel, not {num_table_channels}")
    args = [
        KernelArg("requests", 0x10, "requests", "request records (wire format v1)"),
        KernelArg("results", 0x18, "results", "score records, then the status block"),
        KernelArg("model", 0x20, "model", "descriptor tables, on-chip table and weight images"),
        KernelArg("batch", 0x28, None, "number of requests in the request buffer"),
        KernelArg("flags", 0x30, None, "bit 0: execute the kernel program (load the model) "
                                       "before the batch"),
    ]
    for i in range(num_table_channels):
        args.append(KernelArg(f"tables{i}", 0x38 + 8 * i, f"tables{i}",
                              f"embedding table image of memory channel {i}"))
    if args[-1].offset + 8 > STATUS_BASE:
        raise ValueError(f"{num_table_channels} table channels do not fit below the status "
                         f"registers at {STATUS_BASE:#x}")
    return args


STATUS_BASE = 0x200
#: Read-only registers: name -> offset. 64-bit counters are two words, low first.
STATUS_REGS = {
    "id": 0x200,
    "version": 0x204,
    "config_hash": 0x208,
    "errors": 0x20C,
    "first_error_request": 0x210,  # batch index of the first flagged request, or all ones
    "requests_done": 0x214,
    "cycles_lo": 0x218,
    "cycles_hi": 0x21C,
    "lookups_issued": 0x220,
    "stall_memory": 0x224,  # cycles a lookup unit had a lookup but could not issue its read
    "stall_mlp": 0x228,  # cycles the concat stage held a full vector the MLP did not take
    "stall_results": 0x22C,  # cycles a score waited for the results master
}
#: Per-unit lookup counters (read-only, not in the status block): lookups the dispatcher sent to
#: lookup unit ``u`` (memory channels, then on-chip units) since ``ap_start``, at
#: ``UNIT_LOOKUPS_BASE + 4 * u``.
UNIT_LOOKUPS_BASE = 0x300
MAX_UNIT_COUNTERS = 64
#: Size of the status block appended to the results (one 64-byte line).
STATUS_BLOCK_BYTES = 64


def status_block_offset(results_bytes: int) -> int:
    """Byte offset of the status block in the results buffer (after the score records)."""
    return (results_bytes + STATUS_BLOCK_BYTES - 1) // STATUS_BLOCK_BYTES * STATUS_BLOCK_BYTES
