"""The device seam: what the driver core needs from a backend, and nothing that needs Amaranth.

:class:`Device` is the abstract backend (allocate, write and read buffers, run the kernel with
arguments and wait for ``ap_done`` with a timeout). :class:`RegisterDevice` is a device reached
through the kernel's control registers (:mod:`recfabric.hw.register_map`): it implements ``run``
as the register protocol, so a register-level backend (the Amaranth simulation in
:mod:`recfabric.sim.sim_device`, the Verilator harness of :mod:`recfabric.sim.verilator_device`)
only supplies register and buffer access. :class:`BumpMemory` is a flat device memory with a
bump allocator, for backends that model device memory on the host.

Dependencies point one way: back-ends import this module; this module imports numpy and the
pure-Python register map only.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass

import numpy as np

from ...hw.config import AcceleratorConfig
from ...hw.register_map import CTRL, CTRL_DONE, CTRL_START, KERNEL_ID, STATUS_REGS, kernel_args

__all__ = ["Buffer", "BumpMemory", "Device", "DeviceError", "KernelError", "RegisterDevice"]


class DeviceError(RuntimeError):
    """The device could not do what was asked (timeout, missing runtime, mismatched kernel)."""


class KernelError(RuntimeError):
    """The kernel finished a run with error flags set; the message decodes them."""


@dataclass
class Buffer:
    """A device buffer: ``address`` as the kernel sees it, ``size`` in bytes, ``bank`` hint."""

    name: str
    address: int
    size: int
    bank: int | None = None
    handle: object = None


class Device(abc.ABC):
    """What the driver core (:class:`~recfabric.host.runtime.accelerator.Accelerator`) needs.

    Attributes
    ----------
    config : AcceleratorConfig
        The configuration of the kernel this device runs.
    default_timeout : float
        Seconds a run may take when ``Accelerator.infer`` is given no timeout.
    """

    config: AcceleratorConfig
    default_timeout: float = 60.0

    @abc.abstractmethod
    def allocate(self, name: str, size: int, bank: int | None = None) -> Buffer:
        """A buffer of ``size`` bytes; ``bank`` is the memory channel hint for table buffers."""

    @abc.abstractmethod
    def write(self, buf: Buffer, data: bytes, offset: int = 0) -> None:
        """Copy ``data`` into ``buf`` at byte ``offset`` (host to device)."""

    @abc.abstractmethod
    def read(self, buf: Buffer, size: int, offset: int = 0) -> bytes:
        """``size`` bytes of ``buf`` from byte ``offset`` (device to host)."""

    @abc.abstractmethod
    def run(self, args: dict, timeout: float) -> None:
        """Set the kernel arguments (name -> Buffer or int), start, wait for ``ap_done``.

        Raises :class:`DeviceError` if the run does not finish within ``timeout`` seconds.
        """

    def kernel_hash(self) -> int:
        """The running kernel's configuration hash."""
        return self.config.config_hash

    def reset(self) -> None:
        """Reset the kernel (``ap_rst_n``): every block, and the kernel program, is cleared."""
        raise DeviceError(f"the {type(self).__name__} backend cannot reset its kernel")

    def attach_model(self, compiled) -> None:  # noqa: B027 - optional hook
        """Hook for backends that need the compiled model on the host side (the reference
        model); called by ``Accelerator.load`` after the buffers are written."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""


class RegisterDevice(Device):
    """A device reached through the kernel's control registers (simulation, register level).

    Subclasses supply :meth:`read_register`, :meth:`write_register` and buffer access; ``run``
    is :meth:`start` (write the arguments, 64-bit pointers low word first, and set ``ap_start``)
    then :meth:`wait_done` (poll ``ap_done``; a simulation may override it to poll in simulated
    time). A caller that wants to act while the kernel runs (a reset in the middle of a batch)
    calls :meth:`start` alone.
    """

    @abc.abstractmethod
    def read_register(self, offset: int) -> int:
        """The 32-bit control register at byte ``offset``."""

    @abc.abstractmethod
    def write_register(self, offset: int, value: int) -> None:
        """Write the 32-bit control register at byte ``offset``."""

    def kernel_hash(self) -> int:
        kid = self.read_register(STATUS_REGS["id"])
        if kid != KERNEL_ID:
            raise DeviceError(f"no RecFabric kernel answers (ID register {kid:#010x})")
        return self.read_register(STATUS_REGS["config_hash"])

    def run(self, args: dict, timeout: float) -> None:
        self.start(args)
        self.wait_done(timeout)

    def start(self, args: dict) -> None:
        """Write the kernel arguments (name -> Buffer or int) and set ``ap_start``; no wait."""
        for a in kernel_args(self.config.mem_channels):
            if a.name not in args:
                continue
            v = args[a.name]
            v = v.address if isinstance(v, Buffer) else int(v)
            self.write_register(a.offset, v & 0xFFFF_FFFF)
            if a.is_pointer:
                self.write_register(a.offset + 4, v >> 32)
        self.write_register(CTRL, CTRL_START)

    def wait_done(self, timeout: float) -> None:
        """Poll ``ap_done`` until it is set; :class:`DeviceError` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.read_register(CTRL) & CTRL_DONE:
            if time.monotonic() > deadline:
                raise DeviceError(f"kernel did not finish within {timeout} s")


class BumpMemory:
    """A flat device memory (numpy bytes) with a bump allocator; buffers are 4 KiB aligned.

    Parameters
    ----------
    size : int
        Bytes of device memory (of address space, with ``backed=False``).
    base : int
        Device address of byte 0 (what the kernel's masters see).
    backed : bool
        Hold the bytes in :attr:`mem`. ``False`` keeps only the allocator and the bounds checks
        (:meth:`address`), for a backend that stores the bytes itself (the Verilator harness's
        sparse pages, where ``size`` may be far beyond the host's memory).

    Attributes
    ----------
    mem : numpy.ndarray or None
        The memory (``uint8``); simulation memory models serve the kernel's masters from it.
        ``None`` when not ``backed``.
    """

    def __init__(self, size: int, base: int = 0x1000_0000, *, backed: bool = True):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"device memory size must be a positive integer, not {size!r}")
        self.size = size
        self.mem = np.zeros(size, dtype=np.uint8) if backed else None
        self.base, self.next = base, 0

    def allocate(self, name: str, size: int, bank: int | None = None) -> Buffer:
        """A new buffer of ``size`` bytes (at least 1); :class:`DeviceError` when full."""
        size = max(size, 1)
        start = (self.next + 4095) // 4096 * 4096
        if start + size > self.size:
            raise DeviceError(f"device memory exhausted allocating {name!r} ({size} bytes; "
                              f"{max(0, self.size - start)} left)")
        self.next = start + size
        return Buffer(name, self.base + start, size, bank)

    def address(self, buf: Buffer, size: int, offset: int = 0) -> int:
        """Device address of ``size`` bytes at ``offset`` in ``buf``; :class:`DeviceError` if
        they are not all inside the buffer."""
        if offset < 0 or offset + size > buf.size:
            raise DeviceError(f"access of {size} bytes at {offset} outside buffer {buf.name!r} "
                              f"of {buf.size} bytes")
        return buf.address + offset

    def _span(self, buf: Buffer, size: int, offset: int) -> slice:
        if self.mem is None:
            raise DeviceError("this BumpMemory holds no bytes (backed=False): the backend "
                              "stores them")
        start = self.address(buf, size, offset) - self.base
        return slice(start, start + size)

    def write(self, buf: Buffer, data: bytes, offset: int = 0) -> None:
        self.mem[self._span(buf, len(data), offset)] = np.frombuffer(data, np.uint8)

    def read(self, buf: Buffer, size: int, offset: int = 0) -> bytes:
        return self.mem[self._span(buf, size, offset)].tobytes()
