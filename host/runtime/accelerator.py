"""Host driver: one :class:`Accelerator` API over interchangeable device backends.

The driver core (:class:`Accelerator`) speaks only to an abstract
:class:`~recfabric.host.runtime.device.Device`: allocate, write and read buffers, run the kernel
with arguments and wait for ``ap_done`` with a timeout. Every backend runs the same core code;
:func:`open_device` resolves them by name:

``reference``
    :class:`~recfabric.host.runtime.reference.ReferenceDevice`: a behavioural model of the
    kernel. A run reads the request buffer in wire format, computes with the golden model *from
    the compiled images*, and writes result records and the status block, exactly where the
    kernel would.
``sim``
    :class:`recfabric.sim.sim_device.SimDevice`: the generated kernel, cycle-accurate in the
    Amaranth simulator, behind its real register map and AXI masters (memory models).
``verilator``
    :class:`recfabric.sim.verilator_device.VerilatorDevice`: the generated kernel Verilog
    compiled by Verilator, with C++ AXI memory models (fast; for larger configurations and soaks).
``xrt``
    :class:`~recfabric.host.runtime.xrt.XRTDevice`: an Alveo card through XRT's Python binding
    ``pyxrt`` (import-guarded).

``load`` reads the compiled directory, including the kernel program that ``compile`` wrote,
patches the table buffers' device addresses into it and uploads it: no Amaranth, no kernel
elaboration on the host (only the ``sim`` and ``verilator`` backends import Amaranth, to simulate
the kernel or generate its Verilog).

Typical use::

    acc = Accelerator.open(backend="sim", config="small")
    acc.load("build/small")                     # a directory written by `recfabric compile`
    result = acc.infer(dense, sparse)           # float dense values, list of Bags
    result.probabilities, result.scores, acc.counters()
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from ...hw.config import AcceleratorConfig, get_preset
from ...hw.register_map import (
    ERROR_AXI,
    ERROR_BAD_INDEX,
    ERROR_BAD_REQUEST,
    ERROR_NO_PROGRAM,
    STATUS_BLOCK_BYTES,
    STATUS_REGS,
    UNIT_LOOKUPS_BASE,
    status_block_offset,
)
from ..compiler.compiled import CompiledModel, load_compiled
from .device import Buffer, BumpMemory, Device, DeviceError, KernelError, RegisterDevice
from .wire_format import (
    RequestLayout,
    pack_float_requests,
    pack_requests,
    unpack_results,
)

__all__ = ["Accelerator", "InferenceResult", "open_device", "BACKENDS", "decode_errors",
           "BUFFER_ALIGN", "check_aligned",
           # the device seam, re-exported for code written against recfabric.host.driver
           "Buffer", "BumpMemory", "Device", "DeviceError", "KernelError", "RegisterDevice"]

#: Backend name -> (module, class); modules are imported only when that backend is opened.
BACKENDS = {
    "reference": ("recfabric.host.runtime.reference", "ReferenceDevice"),
    "sim": ("recfabric.sim.sim_device", "SimDevice"),  # Amaranth simulation: only here
    "verilator": ("recfabric.sim.verilator_device", "VerilatorDevice"),  # needs Verilator
    "xrt": ("recfabric.host.runtime.xrt", "XRTDevice"),
}


def open_device(backend: str, config: AcceleratorConfig, **kwargs) -> Device:
    """Open backend ``backend`` (one of :data:`BACKENDS`) for ``config``; ``kwargs`` go to the
    backend's constructor."""
    if backend not in BACKENDS:
        raise DeviceError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    module, cls = BACKENDS[backend]
    return getattr(importlib.import_module(module), cls)(config, **kwargs)


@dataclass
class InferenceResult:
    scores: np.ndarray  # (batch, outputs) unsigned Q0.16
    counters: dict
    status: np.ndarray | None = None  # (batch,) uint8 result status bytes (ResultStatus)

    @property
    def probabilities(self) -> np.ndarray:
        return self.scores.astype(np.float64) / 65536.0


#: Alignment the driver requires of every buffer it hands the kernel. The kernel's masters split
#: bursts at 4 KiB boundaries counting from the base, in whole bus words: a base that is not a
#: multiple of the bus word makes RecordFetcher issue bursts across 4 KiB (found by the formal
#: proofs, hw/formal). Page alignment covers every bus width; XRT buffers and
#: :class:`~recfabric.host.runtime.device.BumpMemory` buffers are 4 KiB aligned.
BUFFER_ALIGN = 4096


def check_aligned(buf: Buffer) -> Buffer:
    """``buf``, or :class:`DeviceError` if its device address is not :data:`BUFFER_ALIGN`
    aligned (the kernel would read or write across 4 KiB boundaries)."""
    if buf.address % BUFFER_ALIGN:
        raise DeviceError(f"buffer {buf.name!r} is at device address {buf.address:#x}, not "
                          f"{BUFFER_ALIGN}-byte aligned: the kernel's AXI bursts assume aligned "
                          "buffers (allocate them page-aligned, as BumpMemory and XRT do)")
    return buf


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
        """Open ``backend`` for configuration ``config`` (a preset name or an
        ``AcceleratorConfig``); ``kwargs`` go to the backend (e.g. ``xclbin=`` for ``xrt``)."""
        cfg = get_preset(config) if isinstance(config, str) else config
        return cls(open_device(backend, cfg, **kwargs))

    def close(self):
        self.device.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def load(self, compiled) -> None:
        """Load a compiled model (a directory or a :class:`CompiledModel`).

        Table images go to one buffer per memory channel; the kernel program written by
        ``compile`` gets the buffers' device addresses patched in and goes to the model buffer;
        the next run executes it (``flags`` LOAD).
        """
        cm = compiled if isinstance(compiled, CompiledModel) else load_compiled(compiled)
        have = self.device.kernel_hash()
        if cm.config_hash != have or cm.config_hash != self.config.config_hash:
            raise DeviceError(
                f"model {cm.spec.name!r} was compiled for configuration "
                f"{cm.manifest['config']['name']!r} (hash {cm.config_hash:#010x}); the kernel is "
                f"{self.config.name!r} (hash {have:#010x}): recompile the model for it")
        if cm.program is None:
            raise DeviceError(f"{cm.directory} has no kernel program: recompile the model "
                              "(`recfabric compile`)")
        self.model = cm
        self.layout = RequestLayout.for_config(cm.quantized_model(), self.config)
        addresses = {}
        for ch in range(self.config.mem_channels):
            image = cm.images.get(("channel", ch))
            data = np.asarray(image).tobytes() if image is not None else b""
            buf = check_aligned(self.device.allocate(f"tables{ch}", max(len(data), 4096),
                                                     bank=ch))
            if data:
                self.device.write(buf, data)
            self._buffers[f"tables{ch}"] = buf
            addresses[ch] = buf.address
        program = cm.program.patched(addresses)
        buf = check_aligned(self.device.allocate("model", len(program)))
        self.device.write(buf, program)
        self._buffers["model"] = buf
        self.device.attach_model(cm)
        self._needs_load = True

    def reset(self) -> None:
        """Reset the kernel (after a timeout, for instance); the model loaded before is loaded
        into the kernel again by the next run (a reset erases the kernel program). The ``xrt``
        backend cannot reset a kernel through pyxrt: it raises :class:`DeviceError` saying how to
        reset the card (docs/alveo.md)."""
        self.device.reset()
        self._needs_load = self.model is not None

    def _buffer(self, name, size):
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = check_aligned(self.device.allocate(name, size))
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
        args, obuf, batch = self._stage(req)
        self.device.run(args, self._timeout(timeout))
        self._needs_load = False
        out, counters = self._collect(obuf, batch)
        if counters["errors"]:
            raise KernelError("kernel reported: " + "; ".join(decode_errors(counters["errors"]))
                              + f" (first offending request: index "
                                f"{counters['first_error_request']} of the batch)")
        scores, status = unpack_results(lay, out, batch)
        return InferenceResult(scores, counters, status)

    def run_raw(self, requests: bytes, *, timeout: float | None = None,
                wait: bool = True) -> InferenceResult | None:
        """Run request records exactly as given and report what the kernel wrote, unchecked.

        A hook for test harnesses (``recfabric soak``) that feed the kernel bad records and
        check its error flags against the spec; :meth:`infer` is this plus packing and checks.

        Parameters
        ----------
        requests : bytes
            Whole request records in wire format (e.g. :func:`.wire_format.pack_requests`
            output, corrupted on purpose).
        timeout : float, optional
            Seconds to wait for ``ap_done`` (:class:`DeviceError` after that); default: the
            device's ``default_timeout``.
        wait : bool
            ``False`` only starts the run (the device must have ``start``, as a
            :class:`RegisterDevice` does) and returns ``None``: the caller steps, waits or
            resets the device.

        Returns
        -------
        InferenceResult or None
            Scores and status bytes of every record (whatever the kernel wrote: an unwritten
            record reads as status 0) and the counters, error flags included (never raised as
            :class:`KernelError`); they also become :meth:`counters`.
        """
        if self.model is None:
            raise DeviceError("no model loaded: call load() first")
        args, obuf, batch = self._stage(requests)
        if wait:
            self.device.run(args, self._timeout(timeout))
        else:
            start = getattr(self.device, "start", None)
            if start is None:
                raise DeviceError(f"backend {type(self.device).__name__} cannot start a run "
                                  "without waiting for it")
            start(args)
        self._needs_load = False
        if not wait:
            return None
        out, counters = self._collect(obuf, batch)
        scores, status = unpack_results(self.layout, out, batch, check=False)
        return InferenceResult(scores, counters, status)

    def _timeout(self, timeout: float | None) -> float:
        return self.device.default_timeout if timeout is None else timeout

    def _stage(self, req: bytes):
        """Write a batch of request records and a zeroed results buffer; (args, results
        buffer, batch) for a run."""
        lay = self.layout
        if len(req) % lay.record_bytes:
            raise DeviceError(f"{len(req)} bytes of requests is not a whole number of "
                              f"{lay.record_bytes}-byte records")
        batch = len(req) // lay.record_bytes
        total = status_block_offset(batch * lay.result_record_bytes) + STATUS_BLOCK_BYTES
        rbuf = self._buffer("requests", len(req))
        obuf = self._buffer("results", total)
        self.device.write(rbuf, req)
        self.device.write(obuf, bytes(total))  # zero: unwritten records read as invalid
        args = {"requests": rbuf, "results": obuf, "model": self._buffers["model"],
                "batch": batch, "flags": 1 if self._needs_load else 0}
        for ch in range(self.config.mem_channels):
            args[f"tables{ch}"] = self._buffers[f"tables{ch}"]
        return args, obuf, batch

    def _collect(self, obuf: Buffer, batch: int):
        """(result record bytes, counters) of the finished run of ``batch`` records."""
        res_bytes = batch * self.layout.result_record_bytes
        total = status_block_offset(res_bytes) + STATUS_BLOCK_BYTES
        out = self.device.read(obuf, total)
        block = np.frombuffer(out[status_block_offset(res_bytes):][:STATUS_BLOCK_BYTES], "<u4")
        names = sorted(STATUS_REGS, key=STATUS_REGS.get)
        counters = {n: int(block[i]) for i, n in enumerate(names)}
        counters["cycles"] = counters.pop("cycles_lo") | counters.pop("cycles_hi") << 32
        self._counters = counters
        return out[:res_bytes], counters

    def counters(self) -> dict:
        """Status and performance counters of the last run (from the status block)."""
        return dict(self._counters)

    def unit_lookups(self) -> list:
        """Lookups the dispatcher sent to each lookup unit (memory channels, then on-chip units)
        in the last run: the kernel's per-unit counter registers (``UNIT_LOOKUPS_BASE``).

        Raises :class:`DeviceError` on a backend without control registers.
        """
        if not isinstance(self.device, RegisterDevice):
            raise DeviceError(f"the {type(self.device).__name__} backend has no per-unit "
                              "lookup counters (they are kernel registers)")
        n = self.config.mem_channels + self.config.onchip_units
        return [self.device.read_register(UNIT_LOOKUPS_BASE + 4 * u) for u in range(n)]
