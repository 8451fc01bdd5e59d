"""The ``xrt`` backend: an Alveo card running the RecFabric xclbin, through XRT's ``pyxrt``.

``pyxrt`` is imported when a device is opened (it exists only on hosts with XRT installed). The
calls below were checked against the binding's source (``src/python/pybind11/src/pyxrt.cpp``),
XRT's ``xrt_kernel.h`` and its Python tests on the release branches listed in
:data:`CHECKED_XRT` (docs/alveo.md says what each flavour does). The code path is tested against
a stand-in as strict as pyxrt on what is used here (``tests/pyxrt_standin.py``,
``tests/test_xrt_driver.py``): argument types and signed 32-bit ranges, the
``ERT_CMD_STATE_TIMEOUT`` of a run that never completes, the memory bank of every buffer against
the ``sp=`` lines of the generated connectivity file, DeprecationWarning on the old calls.

Facts from the binding that shape this driver:

- ``run.wait(timeout_ms)`` takes an ``unsigned int`` of milliseconds, ``0`` meaning *wait
  forever*, and returns an ``ert_cmd_state`` (``ERT_CMD_STATE_TIMEOUT`` when it timed out).
  ``wait2`` returns ``std::cv_status``, for which pyxrt registers no Python type: not used.
- pyxrt binds no ``run.abort()``. A timed-out run stays queued on the compute unit and later runs
  queue behind it: after a timeout this device refuses every run until the card is reset.
- ``run.set_arg(i, int)`` converts to a C ``int``: scalars are signed 32-bit.
- ``xrt.bo(device, size, flags, group)``; ``kernel.group_id(i)`` is the memory bank the
  ``sp=`` line connected argument ``i`` to. A buffer in another bank is *copied* by XRT into a
  local buffer with a warning (``validate_bo_at_index``): what the kernel writes there never
  reaches the host buffer. The driver checks the bank of every buffer before a run.
- Since XRT 2023.2 ``pyxrt.hw_context(device, uuid)`` + ``pyxrt.kernel(ctx, name)`` exist (the
  context loads the xclbin onto the card: ``Runtime.hw_context`` is true by default); on XRT's
  master ``device.load_xclbin`` and ``kernel(device, uuid, name, mode)`` warn as deprecated.
  The new calls are used whenever ``pyxrt.hw_context`` exists, the old ones otherwise.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...hw.config import AcceleratorConfig
from ...hw.register_map import kernel_args
from .device import Buffer, Device, DeviceError

__all__ = ["XRTDevice", "CHECKED_XRT", "SCALAR_MAX", "recovery_hint"]

#: XRT release branches whose pyxrt binding (and xrt_kernel.h, hw_context, shim) this code path
#: was read against (github.com/Xilinx/XRT). 2022.1: old API only; 2023.2 to 2025.2: both;
#: 2026.1 and master (2026-08): both, the old calls warn DeprecationWarning.
CHECKED_XRT = ("2022.1", "2023.2", "2024.2", "2025.2", "2026.1", "master (2026-08-20)")

#: Largest scalar argument: the kernel's scalars are unsigned, pyxrt's ``set_arg`` takes a C int.
SCALAR_MAX = 2**31 - 1
#: Largest timeout ``run.wait`` takes (``unsigned int`` milliseconds).
_WAIT_MS_MAX = 2**32 - 1


def recovery_hint(device_index: int = 0) -> str:
    """How to get a card back after a run that did not complete (one line)."""
    return (f"reset the card (`xrt-smi reset --device <BDF of card {device_index}>`, or "
            "`xbutil reset` before XRT 2024.2), then open the device again and load the model")


@dataclass
class _BO:
    """An XRT buffer object and the memory bank (group id) it was allocated in."""

    bo: object
    group: int
    argno: int

    # the driver core reads and writes through these
    def write(self, data, offset):
        self.bo.write(data, offset)

    def read(self, size, offset):
        return self.bo.read(size, offset)

    def sync(self, direction, size, offset):
        self.bo.sync(direction, size, offset)


class XRTDevice(Device):
    """An Alveo card running the RecFabric xclbin, through XRT's ``pyxrt`` binding.

    The kernel's name carries the configuration hash
    (:func:`recfabric.hw.vitis_package.kernel_name`): an xclbin built for another configuration
    is refused here, before anything runs, and told apart from a card that cannot be opened
    (busy, no such card: XRT's own message is included). ``pyxrt`` cannot read arbitrary
    registers of an ``ap_ctrl_hs`` kernel; counters come from the status block, as on every
    backend.

    After a run that does not complete (timeout, or any state but ``ERT_CMD_STATE_COMPLETED``)
    the device is *unusable*: pyxrt cannot abort the run, so every later run would queue behind
    it. Every further :meth:`run` raises :class:`DeviceError` saying how to recover
    (:func:`recovery_hint`). :meth:`reset` cannot reset the kernel through pyxrt and says the
    same.

    Parameters
    ----------
    config : AcceleratorConfig
    xclbin : path
        The linked binary (``v++ --link`` output).
    device_index : int
        Which card (``xrt-smi examine`` / ``xbutil examine`` order).
    """

    def __init__(self, config: AcceleratorConfig, xclbin: str | Path, device_index: int = 0):
        try:
            import pyxrt  # noqa: PLC0415 - optional runtime, only on hosts with XRT
        except ImportError as e:
            raise DeviceError(
                "the xrt backend needs XRT's Python binding pyxrt (source "
                "/opt/xilinx/xrt/setup.sh on a host with an Alveo card)") from e
        from ...hw.vitis_package import kernel_name  # noqa: PLC0415 - pure Python, no Amaranth

        self.config = config
        self._xrt = pyxrt
        self.device_index = device_index
        self.name = name = kernel_name(config)
        self._args = kernel_args(config.mem_channels)
        self._arg_index = {a.name: i for i, a in enumerate(self._args)}
        self._unusable: str | None = None
        self._runs = 0
        path = Path(xclbin)
        try:
            xb = pyxrt.xclbin(str(path))
            names = [k.get_name() for k in xb.get_kernels()]
        except Exception as e:  # noqa: BLE001 - XRT raises RuntimeError; its message is the point
            raise DeviceError(f"cannot read xclbin {path}: XRT says: {e}") from e
        if name not in names:
            raise DeviceError(self._wrong_configuration(path, names))
        try:
            self.device = pyxrt.device(device_index)
        except Exception as e:  # noqa: BLE001
            raise DeviceError(f"cannot open Alveo card {device_index}: XRT says: {e} "
                              "(`xrt-smi examine` lists the cards)") from e
        try:
            if hasattr(pyxrt, "hw_context"):  # XRT >= 2023.2: no deprecated call
                self.api = "hw_context"
                self.uuid = self.device.register_xclbin(xb)
                modes = getattr(pyxrt.hw_context, "access_mode", None)
                self.context = (pyxrt.hw_context(self.device, self.uuid, modes.exclusive)
                                if modes is not None else pyxrt.hw_context(self.device, self.uuid))
                self.kernel = pyxrt.kernel(self.context, name)
            else:  # XRT 2022.1 to 2023.1
                self.api = "load_xclbin"
                self.context = None
                self.uuid = self.device.load_xclbin(xb)
                self.kernel = pyxrt.kernel(self.device, self.uuid, name,
                                           pyxrt.kernel.cu_access_mode.exclusive)
        except Exception as e:  # noqa: BLE001
            raise DeviceError(
                f"cannot open kernel {name} of {path} on Alveo card {device_index}: XRT says: "
                f"{e} (the xclbin is for this configuration; if another process holds the card, "
                "close it; `xrt-smi examine` shows the card's state)") from e

    def _wrong_configuration(self, path: Path, names: list[str]) -> str:
        from ...hw.config import PRESETS  # noqa: PLC0415

        built = []
        for n in names:
            h = n.removeprefix("recfabric_")
            preset = [p.name for p in PRESETS.values() if f"{p.config_hash:08x}" == h]
            built.append(f"{n} (preset {preset[0]!r})" if preset else n)
        return (f"{path} was built for another configuration: it has kernel(s) "
                f"{', '.join(built) or 'none'}, configuration {self.config.name!r} is kernel "
                f"{self.name} (hash {self.config.config_hash:#010x}); open it with the "
                "configuration it was built for, or build one with `recfabric build --config "
                f"{self.config.name}` and v++")

    # -- buffers ----------------------------------------------------------------------------

    def allocate(self, name, size, bank=None):
        """A buffer in the memory bank of the kernel argument ``name`` (``tables<i>``,
        ``model``, ``requests``, ``results``; other names: the model's bank, the channel shared
        by requests, results and model)."""
        argno = self._arg_index.get(name.split(":")[0], self._arg_index["model"])
        group = self.kernel.group_id(argno)
        bo = self._xrt.bo(self.device, max(size, 4096), self._xrt.bo.normal, group)
        return Buffer(name, bo.address(), size, bank, _BO(bo, group, argno))

    def write(self, buf, data, offset=0):
        buf.handle.write(np.frombuffer(data, np.uint8), offset)
        buf.handle.sync(self._xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, len(data), offset)

    def read(self, buf, size, offset=0):
        buf.handle.sync(self._xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE, size, offset)
        return bytes(buf.handle.read(size, offset))

    # -- runs -------------------------------------------------------------------------------

    @staticmethod
    def timeout_ms(timeout: float) -> int:
        """``timeout`` seconds as ``run.wait``'s milliseconds, rounded *up* (so a timeout under
        1 ms waits 1 ms and never becomes 0, which XRT reads as "wait forever"); a timeout that
        is not a positive finite number, or over 2**32 - 1 ms, is refused."""
        if not isinstance(timeout, numbers.Real) or not math.isfinite(timeout) or timeout <= 0:
            raise DeviceError(f"timeout {timeout!r}: give a positive number of seconds (XRT's "
                              "wait(0) would wait forever)")
        ms = max(1, math.ceil(timeout * 1000))
        if ms > _WAIT_MS_MAX:
            raise DeviceError(f"timeout {timeout!r} s exceeds XRT's largest wait, "
                              f"{_WAIT_MS_MAX} ms")
        return ms

    def _set_args(self, r, args: dict) -> None:
        missing = [a.name for a in self._args if a.name not in args]
        if missing:
            raise DeviceError(f"kernel argument(s) {', '.join(missing)} not given: the kernel "
                              "would use a 0 pointer or a stale value")
        unknown = sorted(set(args) - set(self._arg_index))
        if unknown:
            raise DeviceError(f"unknown kernel argument(s) {', '.join(unknown)} (the kernel takes "
                              f"{', '.join(self._arg_index)})")
        values = []
        for i, a in enumerate(self._args):
            v = args[a.name]
            if a.is_pointer:
                if not isinstance(v, Buffer) or not isinstance(v.handle, _BO):
                    raise DeviceError(f"kernel argument {a.name!r} must be a buffer of this xrt "
                                      f"device, not {v!r}")
                want = self.kernel.group_id(i)
                if v.handle.group != want:
                    raise DeviceError(
                        f"buffer {v.name!r} for kernel argument {a.name!r} is in memory bank "
                        f"{v.handle.group}; the connectivity file connects {a.name!r} to bank "
                        f"{want} (XRT would copy it and the kernel's writes would be lost): "
                        f"allocate it as {a.name!r}")
                values.append(v.handle.bo)
            else:
                if isinstance(v, bool) or not isinstance(v, numbers.Integral) \
                        or not 0 <= int(v) <= SCALAR_MAX:
                    raise DeviceError(f"kernel argument {a.name!r} = {v!r}: scalars must be "
                                      f"integers in 0..{SCALAR_MAX} (unsigned in the kernel, "
                                      "a signed 32-bit int in pyxrt)")
                values.append(int(v))
        for i, v in enumerate(values):
            r.set_arg(i, v)

    def run(self, args, timeout):
        if self._unusable is not None:
            raise DeviceError(self._unusable)
        ms = self.timeout_ms(timeout)
        r = self._xrt.run(self.kernel)
        self._set_args(r, args)
        self._runs += 1
        what = f"kernel run {self._runs} (batch {args['batch']})"
        try:
            r.start()
        except Exception as e:  # noqa: BLE001 - nothing was queued: the device stays usable
            raise DeviceError(f"{what} could not start: XRT says: {e}") from e
        try:
            state = r.wait(ms)
        except Exception as e:  # noqa: BLE001 - the run's fate is unknown: as a timeout
            self._unusable = (f"xrt device unusable: waiting for {what} failed ({e}); "
                              f"{recovery_hint(self.device_index)}")
            raise DeviceError(self._unusable) from e
        states = self._xrt.ert_cmd_state
        if state == states.ERT_CMD_STATE_COMPLETED:
            return
        name = getattr(state, "name", str(state))
        why = (f"did not finish within {ms / 1000:g} s" if state == states.ERT_CMD_STATE_TIMEOUT
               else "ended abnormally")
        self._unusable = (f"xrt device unusable: {what} {why} ({name}) and pyxrt cannot abort "
                          f"it; {recovery_hint(self.device_index)}")
        raise DeviceError(f"{what} {why} ({name}); pyxrt cannot abort it, so this device "
                          f"refuses further runs: {recovery_hint(self.device_index)}")

    @property
    def usable(self) -> bool:
        """False after a run that did not complete (see the class docstring)."""
        return self._unusable is None

    def reset(self) -> None:
        """pyxrt cannot reset an ``ap_ctrl_hs`` kernel: raise :class:`DeviceError` saying how to
        reset the card instead (the model is loaded again by ``load`` on the reopened device)."""
        raise DeviceError("the xrt backend cannot reset the kernel through pyxrt: close this "
                          f"device, {recovery_hint(self.device_index)}")

    def close(self) -> None:
        """Drop the kernel, context and device handles (XRT closes them)."""
        self.kernel = self.context = None
        self._unusable = self._unusable or "xrt device closed: open it again"
