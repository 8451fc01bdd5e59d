"""Host driver: one :class:`Accelerator` API over interchangeable device backends.

The driver core (:class:`Accelerator`) speaks only to an abstract :class:`Device`: allocate,
write and read buffers, write and read control registers, run the kernel with arguments and wait
for ``ap_done`` with a timeout. Every backend runs the same core code:

``reference``
    :class:`ReferenceDevice`: a behavioural model of the kernel. A run reads the request buffer
    in wire format, computes with the golden model *from the compiled images*, and writes result
    records and the status block, exactly where the kernel would.
``sim``
    :class:`recfabric.sim.sim_device.SimDevice`: the generated kernel, cycle-accurate in the
    Amaranth simulator, behind its real register map and AXI masters (memory models).
``xrt``
    :class:`XRTDevice`: an Alveo card through XRT's Python binding ``pyxrt`` (import-guarded).

Typical use::

    acc = Accelerator.open(backend="sim", config="small")
    acc.load("build/small")                     # a directory written by `recfabric compile`
    result = acc.infer(dense, sparse)           # float dense values, list of Bags
    result.probabilities, result.scores, acc.counters()
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..hw.config import AcceleratorConfig, get_preset
from ..hw.register_map import (
    CTRL,
    CTRL_DONE,
    CTRL_START,
    ERROR_AXI,
    ERROR_BAD_INDEX,
    ERROR_BAD_REQUEST,
    ERROR_NO_PROGRAM,
    KERNEL_ID,
    KERNEL_VERSION,
    NO_ERROR_REQUEST,
    STATUS_BLOCK_BYTES,
    STATUS_REGS,
    kernel_args,
    status_block_offset,
)
from .compiler import CompiledModel, golden_from_images, load_compiled
from .wire_format import (
    RequestLayout,
    pack_float_requests,
    pack_requests,
    pack_results,
    unpack_requests,
    unpack_results,
)

__all__ = ["Device", "Buffer", "RegisterDevice", "ReferenceDevice", "XRTDevice", "Accelerator",
           "InferenceResult", "DeviceError", "KernelError", "open_device", "BACKENDS"]

BACKENDS = ("reference", "sim", "xrt")


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
    """What the driver core needs from a backend."""

    config: AcceleratorConfig
    #: The device runs the generated kernel, which loads the model from a kernel program.
    runs_kernel_program: bool = True
    #: Seconds a run may take when ``infer`` is given no timeout.
    default_timeout: float = 60.0

    @abc.abstractmethod
    def allocate(self, name: str, size: int, bank: int | None = None) -> Buffer: ...

    @abc.abstractmethod
    def write(self, buf: Buffer, data: bytes, offset: int = 0) -> None: ...

    @abc.abstractmethod
    def read(self, buf: Buffer, size: int, offset: int = 0) -> bytes: ...

    @abc.abstractmethod
    def run(self, args: dict, timeout: float) -> None:
        """Set the kernel arguments (name -> Buffer or int), start, wait for done."""

    def kernel_hash(self) -> int:
        """The running kernel's configuration hash."""
        return self.config.config_hash

    def reset(self) -> None:
        """Reset the kernel (``ap_rst_n``): every block, and the kernel program, is cleared."""
        raise DeviceError(f"the {type(self).__name__} backend cannot reset its kernel")

    def attach_model(self, compiled: CompiledModel) -> None:  # noqa: B027 - optional hook
        """Hook for backends that need the model on the host side (the reference model)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""


class RegisterDevice(Device):
    """A device reached through the kernel's control registers (simulation, register-level)."""

    @abc.abstractmethod
    def read_register(self, offset: int) -> int: ...

    @abc.abstractmethod
    def write_register(self, offset: int, value: int) -> None: ...

    def kernel_hash(self) -> int:
        kid = self.read_register(STATUS_REGS["id"])
        if kid != KERNEL_ID:
            raise DeviceError(f"no RecFabric kernel answers (ID register {kid:#010x})")
        return self.read_register(STATUS_REGS["config_hash"])

    def run(self, args: dict, timeout: float) -> None:
        for a in kernel_args(self.config.mem_channels):
            if a.name not in args:
                continue
            v = args[a.name]
            v = v.address if isinstance(v, Buffer) else int(v)
            self.write_register(a.offset, v & 0xFFFF_FFFF)
            if a.is_pointer:
                self.write_register(a.offset + 4, v >> 32)
        self.write_register(CTRL, CTRL_START)
        self.wait_done(timeout)

    def wait_done(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.read_register(CTRL) & CTRL_DONE:
            if time.monotonic() > deadline:
                raise DeviceError(f"kernel did not finish within {timeout} s")


class _BumpMemory:
    """A flat byte array with a bump allocator (buffers aligned to 4 KiB)."""

    def __init__(self, size: int, base: int = 0x1000_0000):
        self.mem = np.zeros(size, dtype=np.uint8)
        self.base, self.next = base, 0

    def allocate(self, name, size, bank=None) -> Buffer:
        size = max(size, 1)
        start = (self.next + 4095) // 4096 * 4096
        if start + size > len(self.mem):
            raise DeviceError(f"device memory exhausted allocating {name!r} ({size} bytes; "
                              f"{len(self.mem) - start} left)")
        self.next = start + size
        return Buffer(name, self.base + start, size, bank)

    def _span(self, buf, size, offset):
        if offset < 0 or offset + size > buf.size:
            raise DeviceError(f"access of {size} bytes at {offset} outside buffer {buf.name!r} "
                              f"of {buf.size} bytes")
        start = buf.address - self.base + offset
        return slice(start, start + size)

    def write(self, buf, data, offset=0):
        self.mem[self._span(buf, len(data), offset)] = np.frombuffer(data, np.uint8)

    def read(self, buf, size, offset=0) -> bytes:
        return self.mem[self._span(buf, size, offset)].tobytes()


class ReferenceDevice(Device):
    """Behavioural kernel model: golden model from the compiled images, same memory protocol."""

    runs_kernel_program = False  # it computes from the compiled images directly

    def __init__(self, config: AcceleratorConfig, memory_bytes: int = 1 << 30):
        self.config = config
        self._mem = _BumpMemory(memory_bytes)
        self._model: CompiledModel | None = None
        self._buffers: dict[int, Buffer] = {}
        self.runs = 0

    def allocate(self, name, size, bank=None):
        buf = self._mem.allocate(name, size, bank)
        self._buffers[buf.address] = buf
        return buf

    def write(self, buf, data, offset=0):
        self._mem.write(buf, data, offset)

    def read(self, buf, size, offset=0):
        return self._mem.read(buf, size, offset)

    def attach_model(self, compiled):
        self._model = compiled

    def run(self, args, timeout):
        if self._model is None:
            raise DeviceError("reference device: no model loaded")
        cm = self._model
        batch = int(args["batch"])
        layout = RequestLayout.for_config(cm.quantized_model(), self.config)
        req, res = args["requests"], args["results"]
        dense, sparse = unpack_requests(layout, self.read(req, batch * layout.record_bytes),
                                        batch)
        golden = golden_from_images(cm, dense, sparse)
        results = pack_results(layout, golden.scores)
        self.write(res, results)
        status = {n: 0 for n in STATUS_REGS}
        status.update(id=KERNEL_ID, version=KERNEL_VERSION, config_hash=self.config.config_hash,
                      requests_done=batch, first_error_request=NO_ERROR_REQUEST,
                      lookups_issued=int(sum(b.lengths.sum() for b in sparse)))
        # No hardware, no cycles: the cycle counter stays 0 on this backend.
        block = np.array([status[n] for n in sorted(STATUS_REGS, key=STATUS_REGS.get)],
                         dtype="<u4").tobytes()
        self.write(res, block, status_block_offset(len(results)))
        self.runs += 1


class XRTDevice(Device):
    """An Alveo card running the RecFabric xclbin, through XRT's ``pyxrt`` binding.

    The kernel's name carries the configuration hash
    (:func:`recfabric.hw.vitis_package.kernel_name`): opening a kernel built for another
    configuration fails here, before anything runs. ``pyxrt`` cannot read arbitrary registers of
    an ``ap_ctrl_hs`` kernel; counters come from the status block, as on every backend.
    """

    def __init__(self, config: AcceleratorConfig, xclbin: str | Path, device_index: int = 0):
        try:
            import pyxrt  # noqa: PLC0415 - optional runtime, only on hosts with XRT
        except ImportError as e:
            raise DeviceError(
                "the xrt backend needs XRT's Python binding pyxrt (source "
                "/opt/xilinx/xrt/setup.sh on a host with an Alveo card)") from e
        from ..hw.vitis_package import kernel_name

        self.config = config
        self._xrt = pyxrt
        self.device = pyxrt.device(device_index)
        self.uuid = self.device.load_xclbin(str(xclbin))
        name = kernel_name(config)
        try:
            self.kernel = pyxrt.kernel(self.device, self.uuid, name,
                                       pyxrt.kernel.cu_access_mode.exclusive)
        except Exception as e:
            raise DeviceError(f"{xclbin} has no kernel {name!r}: it was built for another "
                              f"configuration than {config.name!r}") from e
        self._arg_index = {a.name: i for i, a in enumerate(kernel_args(config.mem_channels))}

    def allocate(self, name, size, bank=None):
        argno = self._arg_index.get(name.split(":")[0], self._arg_index["model"])
        bo = self._xrt.bo(self.device, max(size, 4096), self._xrt.bo.normal,
                          self.kernel.group_id(argno))
        return Buffer(name, bo.address(), size, bank, bo)

    def write(self, buf, data, offset=0):
        buf.handle.write(np.frombuffer(data, np.uint8), offset)
        buf.handle.sync(self._xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, len(data), offset)

    def read(self, buf, size, offset=0):
        buf.handle.sync(self._xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE, size, offset)
        return bytes(buf.handle.read(size, offset))

    def run(self, args, timeout):
        r = self._xrt.run(self.kernel)
        for name, i in self._arg_index.items():
            v = args.get(name, 0)
            r.set_arg(i, v.handle if isinstance(v, Buffer) else int(v))
        r.start()
        state = r.wait(int(timeout * 1000))
        if state != self._xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise DeviceError(f"kernel run ended in state {state} (timeout {timeout} s)")


def open_device(backend: str, config: AcceleratorConfig, **kwargs) -> Device:
    if backend == "reference":
        return ReferenceDevice(config, **kwargs)
    if backend == "sim":
        from ..sim.sim_device import SimDevice  # noqa: PLC0415 - Amaranth simulation only here
        return SimDevice(config, **kwargs)
    if backend == "xrt":
        return XRTDevice(config, **kwargs)
    raise DeviceError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


@dataclass
class InferenceResult:
    scores: np.ndarray  # (batch, outputs) unsigned Q0.16
    counters: dict

    @property
    def probabilities(self) -> np.ndarray:
        return self.scores.astype(np.float64) / 65536.0


def decode_errors(errors: int) -> list[str]:
    names = []
    if errors & ERROR_BAD_INDEX:
        names.append("row index out of range (its vector was zeroed)")
    if errors & ERROR_AXI:
        names.append("AXI error response")
    if errors & ERROR_BAD_REQUEST:
        names.append("bad bag length in a request record")
    if errors & ERROR_NO_PROGRAM:
        names.append("no valid kernel program (the kernel was reset or the load failed): "
                     "load the model again")
    return names


class Accelerator:
    """A RecFabric kernel on some backend, with a compiled model loaded."""

    def __init__(self, device: Device):
        self.device = device
        self.config = device.config
        self.model: CompiledModel | None = None
        self.layout: RequestLayout | None = None
        self._buffers: dict[str, Buffer] = {}
        self._needs_load = False
        self._counters: dict = {}

    @classmethod
    def open(cls, backend: str = "reference", config: str | AcceleratorConfig = "small",
             **kwargs) -> Accelerator:
        cfg = get_preset(config) if isinstance(config, str) else config
        return cls(open_device(backend, cfg, **kwargs))

    def close(self):
        self.device.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def load(self, compiled) -> None:
        """Load a compiled model (a directory or a :class:`CompiledModel`): table images and the
        kernel program are written to device buffers; the next run executes the program."""
        cm = compiled if isinstance(compiled, CompiledModel) else load_compiled(compiled)
        have = self.device.kernel_hash()
        if cm.config_hash != have or cm.config_hash != self.config.config_hash:
            raise DeviceError(
                f"model {cm.spec.name!r} was compiled for configuration "
                f"{cm.manifest['config']['name']!r} (hash {cm.config_hash:#010x}); the kernel is "
                f"{self.config.name!r} (hash {have:#010x}): recompile the model for it")
        self.model = cm
        self.layout = RequestLayout.for_config(cm.quantized_model(), self.config)
        addresses = {}
        for ch in range(self.config.mem_channels):
            image = cm.images.get(("channel", ch))
            data = np.asarray(image).tobytes() if image is not None else b""
            buf = self.device.allocate(f"tables{ch}", max(len(data), 4096), bank=ch)
            if data:
                self.device.write(buf, data)
            self._buffers[f"tables{ch}"] = buf
            addresses[ch] = buf.address
        program = self._program(cm, addresses)
        buf = self.device.allocate("model", len(program))
        self.device.write(buf, program)
        self._buffers["model"] = buf
        self.device.attach_model(cm)
        self._needs_load = True

    def _program(self, cm, addresses) -> bytes:
        if not self.device.runs_kernel_program:
            return b"\0" * 64
        from ..hw.kernel import kernel_for_formats  # noqa: PLC0415
        from .kernel_program import build_program  # noqa: PLC0415
        kernel = getattr(self.device, "kernel_component", None) or \
            kernel_for_formats(self.config)
        return build_program(kernel, cm, addresses).image()

    def reset(self) -> None:
        """Reset the kernel (after a timeout, for instance); the model loaded before is loaded
        into the kernel again by the next run (a reset erases the kernel program)."""
        self.device.reset()
        self._needs_load = self.model is not None

    def _buffer(self, name, size):
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = self.device.allocate(name, size)
            self._buffers[name] = buf
        return buf

    def infer(self, dense, sparse, *, timeout: float | None = None, fixed_point: bool = False):
        """Run one batch. ``dense`` is float (quantized with the model's dense format) or, with
        ``fixed_point=True``, integers already in it; ``sparse`` a list of Bags per feature.
        ``timeout``: seconds to wait for the run (default: the device's ``default_timeout``);
        a run that takes longer raises :class:`DeviceError` naming it (then ``reset()``)."""
        if self.model is None:
            raise DeviceError("no model loaded: call load() first")
        lay = self.layout
        req = pack_requests(lay, dense, sparse) if fixed_point else \
            pack_float_requests(lay, dense, sparse)
        batch = len(req) // lay.record_bytes
        res_bytes = batch * lay.result_record_bytes
        total = status_block_offset(res_bytes) + STATUS_BLOCK_BYTES
        rbuf = self._buffer("requests", len(req))
        obuf = self._buffer("results", total)
        self.device.write(rbuf, req)
        self.device.write(obuf, bytes(total))  # zero: unwritten records read as invalid
        args = {"requests": rbuf, "results": obuf, "model": self._buffers["model"],
                "batch": batch, "flags": 1 if self._needs_load else 0}
        for ch in range(self.config.mem_channels):
            args[f"tables{ch}"] = self._buffers[f"tables{ch}"]
        self.device.run(args, self.device.default_timeout if timeout is None else timeout)
        self._needs_load = False
        out = self.device.read(obuf, total)
        block = np.frombuffer(out[status_block_offset(res_bytes):][:STATUS_BLOCK_BYTES], "<u4")
        names = sorted(STATUS_REGS, key=STATUS_REGS.get)
        counters = {n: int(block[i]) for i, n in enumerate(names)}
        counters["cycles"] = counters.pop("cycles_lo") | counters.pop("cycles_hi") << 32
        self._counters = counters
        if counters["errors"]:
            raise KernelError("kernel reported: " + "; ".join(decode_errors(counters["errors"]))
                              + f" (first offending request: index "
                                f"{counters['first_error_request']} of the batch)")
        scores, _ = unpack_results(lay, out[:res_bytes], batch)
        return InferenceResult(scores, counters)

    def counters(self) -> dict:
        """Status and performance counters of the last run (from the status block)."""
        return dict(self._counters)
