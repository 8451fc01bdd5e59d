"""A stand-in for XRT's ``pyxrt``, as strict as the binding on what the xrt driver uses.

No Alveo card is on these machines; ``recfabric.host.runtime.xrt`` is tested against this module
instead. It follows the binding's source (``src/python/pybind11/src/pyxrt.cpp``) and
``xrt_kernel.h`` of the XRT release branches in ``recfabric.host.runtime.xrt.CHECKED_XRT``:

- three flavours: ``"old"`` (2022.1: ``device.load_xclbin`` + ``kernel(device, uuid, name,
  mode)``, no ``hw_context``), ``"new"`` (2023.2 to 2025.2: ``hw_context(device, uuid)`` and
  ``kernel(ctx, name)`` beside the old calls) and ``"master"`` (2026.1 / master: the old calls
  warn ``DeprecationWarning``; ``hw_context.access_mode``);
- argument types as pybind11 checks them: ``set_arg(int, bo)`` / ``set_arg(int, int)`` with the
  int a C ``int`` (signed 32-bit; anything else is the ``TypeError`` pybind11 raises),
  ``wait(unsigned int)``, ``bo(device, size, bo.flags, group)``, ``sync(xclBOSyncDirection,
  size, offset)``;
- ``wait(ms)`` returns an ``ert_cmd_state``; a run that never completes (``Card.hang``, or a
  run queued behind one: pyxrt has no abort) returns ``ERT_CMD_STATE_TIMEOUT``; ``wait(0)`` on
  it would block forever and raises here instead, so a test sees the bug instead of hanging;
- memory banks: the "xclbin" is a file holding the generated ``kernel.xml`` and
  ``connectivity.cfg`` (:func:`write_xclbin`); ``kernel.group_id(i)`` is the ``HBM[n]`` of the
  ``sp=`` line of argument ``i``'s port. A buffer in another bank is copied by XRT into the
  connected bank with a warning (``validate_bo_at_index``): here too, so what the kernel writes
  is lost to the host buffer;
- host and device copies are distinct: data reaches the kernel only after ``sync(TO_DEVICE)``
  and the host only after ``sync(FROM_DEVICE)``;
- a pointer argument never set is a 0 pointer: the kernel reads address 0 and never finishes;
- a card held by another process: ``RuntimeError("failed to open cu context: Device or resource
  busy")`` (the shim's ``system_error``).

The kernel itself is the ``reference`` backend (behavioural model) running on the card's memory.
"""

from __future__ import annotations

import enum
import json
import re
import types
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from recfabric.host.runtime.reference import ReferenceDevice

FLAVOURS = ("old", "new", "master")
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
UINT_MAX = 2**32 - 1


class ert_cmd_state(enum.Enum):  # noqa: N801 - pyxrt's name; values of ert.h (no RUNNING bound)
    ERT_CMD_STATE_NEW = 1
    ERT_CMD_STATE_QUEUED = 2
    ERT_CMD_STATE_COMPLETED = 4
    ERT_CMD_STATE_ERROR = 5
    ERT_CMD_STATE_ABORT = 6
    ERT_CMD_STATE_SUBMITTED = 7
    ERT_CMD_STATE_TIMEOUT = 8
    ERT_CMD_STATE_NORESPONSE = 9
    ERT_CMD_STATE_SKERROR = 10
    ERT_CMD_STATE_SKCRASHED = 11


class xclBOSyncDirection(enum.Enum):  # noqa: N801
    XCL_BO_SYNC_BO_TO_DEVICE = 0
    XCL_BO_SYNC_BO_FROM_DEVICE = 1


def _incompatible(fn: str, *got) -> TypeError:
    return TypeError(f"{fn}(): incompatible function arguments. Invoked with: "
                     + ", ".join(repr(g) for g in got))


def _c_int(v, lo=INT_MIN, hi=INT_MAX) -> bool:
    """pybind11's integer caster: an int (or __index__), no float, within the C type's range."""
    if isinstance(v, float) or not hasattr(v, "__index__"):
        return False
    return lo <= v.__index__() <= hi


def write_xclbin(path, config, board: str = "u55c") -> Path:
    """Write the stand-in's "xclbin" for ``config``: JSON holding the generated kernel.xml and
    connectivity.cfg (what ``v++ --link`` consumes; a real xclbin carries what they say)."""
    from recfabric.hw.vitis_package import connectivity_cfg, kernel_xml

    path = Path(path)
    path.write_text(json.dumps({"kernel.xml": kernel_xml(config),
                                "connectivity.cfg": connectivity_cfg(config, board)}))
    return path


class XclbinFiles:
    """What the stand-in reads from an "xclbin" (:func:`write_xclbin`)."""

    def __init__(self, path: str):
        try:
            files = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            raise RuntimeError(f"Could not open xclbin file '{path}'") from None
        k = ET.fromstring(files["kernel.xml"]).find("kernel")
        self.kernel = k.get("name")
        self.args = [(a.get("name"), a.get("port"), int(a.get("addressQualifier")))
                     for a in sorted(k.find("args"), key=lambda a: int(a.get("id")))]
        text = files["connectivity.cfg"]
        self.banks = {m[2]: int(m[3]) for m in re.finditer(
            r"^sp=(\w+)_1\.(\w+):HBM\[(\d+)\]$", text, re.MULTILINE) if m[1] == self.kernel}
        self.uuid = f"uuid-{self.kernel}"


class Card:
    """The emulated Alveo card: device memory, the kernel (reference model), its state.

    Attributes
    ----------
    hang : bool
        The kernel never raises ap_done (every run from now on).
    held_by_other : bool
        Another process holds the compute unit.
    pending : bool
        A run started and never completed; later runs queue behind it (no abort in pyxrt).
    warnings : list of str
        XRT's warning messages (bank copies).
    calls : list
        The pyxrt calls the driver made, in order.
    cycles : int
        If not 0, written as each run's ``cycles`` counter (a placeholder, not a measurement:
        the reference model counts no cycles).
    """

    def __init__(self, config, compiled=None):
        self.config = config
        self.ref = ReferenceDevice(config)
        self.compiled = compiled
        self.hang = False
        self.held_by_other = False
        self.pending = False
        self.loaded: XclbinFiles | None = None
        self.warnings: list[str] = []
        self.calls: list = []
        self.cycles = 0  # if set: written as the status block's cycles (a placeholder)
        self.completed = 0


def make_pyxrt(card: Card, flavour: str = "master") -> types.ModuleType:
    """A ``pyxrt`` module for ``card`` in XRT flavour ``flavour`` (:data:`FLAVOURS`)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour {flavour!r}: one of {FLAVOURS}")
    m = types.ModuleType("pyxrt")
    m.ert_cmd_state = ert_cmd_state
    m.xclBOSyncDirection = xclBOSyncDirection
    deprecating = flavour == "master"

    def deprecated(msg):
        if deprecating:
            warnings.warn(msg, DeprecationWarning, stacklevel=3)

    class uuid:
        def __init__(self, text):
            self.text = text

        def to_string(self):
            return self.text

    class xclbin:
        class xclbinkernel:
            def __init__(self, name):
                self.name = name

            def get_name(self):
                return self.name

        def __init__(self, filename):
            if not isinstance(filename, str):
                raise _incompatible("__init__", filename)
            self.files = XclbinFiles(filename)
            card.calls.append(("xclbin", filename))

        def get_kernels(self):
            return [xclbin.xclbinkernel(self.files.kernel)]

        def get_uuid(self):
            return uuid(self.files.uuid)

    class device:
        def __init__(self, index):
            if not _c_int(index, 0, UINT_MAX):
                raise _incompatible("__init__", index)
            if index != 0:
                raise RuntimeError(f"No such device index '{index}'")
            self.xclbins = {}

        def _load(self, xb):
            if not isinstance(xb, (str, xclbin)):
                raise _incompatible("load_xclbin", xb)
            xb = xb if isinstance(xb, xclbin) else xclbin(xb)
            card.loaded = xb.files
            self.xclbins[xb.files.uuid] = xb.files
            return uuid(xb.files.uuid)

        def load_xclbin(self, xb):
            deprecated("pyxrt.device.load_xclbin() is deprecated; use pyxrt.hw_context(device, "
                       "xclbin) or pyxrt.hw_context(device, xclbin_path) instead")
            card.calls.append(("load_xclbin",))
            return self._load(xb)

    class hw_context:
        class access_mode(enum.Enum):  # noqa: N801
            exclusive = 0
            shared = 1

        def __init__(self, dev, u, mode=None):
            if not isinstance(dev, device) or not isinstance(u, uuid) or (
                    mode is not None and not isinstance(mode, hw_context.access_mode)):
                raise _incompatible("__init__", dev, u, mode)
            if u.text not in dev.xclbins:
                raise RuntimeError(f"xclbin with uuid {u.text} is not registered")
            card.loaded = dev.xclbins[u.text]  # Runtime.hw_context=true: the context loads it
            card.calls.append(("hw_context", mode))
            self.device, self.uuid = dev, u

    if flavour != "master":  # access_mode is bound on master only
        del hw_context.access_mode

    def register_xclbin(self, xb):
        if not isinstance(xb, xclbin):
            raise _incompatible("register_xclbin", xb)
        card.calls.append(("register_xclbin",))
        self.xclbins[xb.files.uuid] = xb.files
        return uuid(xb.files.uuid)

    class kernel:
        class cu_access_mode(enum.Enum):  # noqa: N801
            exclusive = 0
            shared = 1
            none = 2

        def __init__(self, *args):
            if flavour != "old" and len(args) == 2 and isinstance(args[0], hw_context):
                ctx, name = args
                files = ctx.device.xclbins[ctx.uuid.text]
                card.calls.append(("kernel", "hw_context"))
            elif len(args) in (3, 4) and isinstance(args[0], device) and \
                    isinstance(args[1], uuid) and isinstance(args[2], str) and \
                    (len(args) == 3 or isinstance(args[3], kernel.cu_access_mode)):
                deprecated("kernel(device, uuid, name[, mode]) is deprecated; use "
                           "kernel(hw_context, name) instead.")
                dev, u, name = args[:3]
                files = dev.xclbins.get(u.text)
                if files is None or card.loaded is not files:
                    raise RuntimeError(f"xclbin {u.text} is not loaded on the device")
                card.calls.append(("kernel", "device"))
            else:
                raise _incompatible("__init__", *args)
            if not isinstance(name, str):
                raise _incompatible("__init__", *args)
            if name != files.kernel:
                raise RuntimeError(f"No compute units matching '{name}'.")
            if card.held_by_other:
                raise RuntimeError("failed to open cu context: Device or resource busy")
            self.files, self.name = files, name

        def group_id(self, argno):
            if not _c_int(argno):
                raise _incompatible("group_id", argno)
            if not 0 <= argno < len(self.files.args):
                raise RuntimeError(f"Invalid kernel argument index '{argno}'")
            _, port, qualifier = self.files.args[argno]
            if qualifier != 1:
                return UINT_MAX  # a scalar has no memory group
            return self.files.banks[port]

    class bo:
        class flags(enum.Enum):  # noqa: N801
            normal = 0
            cacheable = 1
            device_only = 2
            host_only = 3
            p2p = 4
            svm = 5

        def __init__(self, dev, size, flags, group):
            if not isinstance(dev, device) or not _c_int(size, 1, 2**64 - 1) or \
                    not isinstance(flags, bo.flags) or not _c_int(group, 0, UINT_MAX):
                raise _incompatible("__init__", dev, size, flags, group)
            banks = set(card.loaded.banks.values()) if card.loaded else set()
            if group not in banks:
                raise RuntimeError(f"Memory group {group} is not a memory bank of the xclbin")
            self.group, self._size = group, size
            self.dev_buf = card.ref.allocate(f"bo{group}", size)
            self.host = np.zeros(size, np.uint8)
            card.calls.append(("bo", size, group))

        def address(self):
            return self.dev_buf.address

        def size(self):
            return self._size

        def write(self, data, seek):
            view = np.frombuffer(memoryview(data).cast("B"), np.uint8)
            if not _c_int(seek, 0, 2**64 - 1) or seek + len(view) > self._size:
                raise RuntimeError("attempting to write past buffer size")
            self.host[seek:seek + len(view)] = view

        def read(self, size, skip):
            if skip + size > self._size:
                raise RuntimeError("attempting to read past buffer size")
            return self.host[skip:skip + size].view(np.int8).copy()

        def sync(self, direction, size, offset):
            if not isinstance(direction, xclBOSyncDirection) or not _c_int(size, 0, 2**64 - 1) \
                    or not _c_int(offset, 0, 2**64 - 1):
                raise _incompatible("sync", direction, size, offset)
            if offset + size > self._size:
                raise RuntimeError("sync past buffer size")
            card.calls.append(("sync", direction, size, offset))
            if direction is xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE:
                card.ref.write(self.dev_buf, self.host[offset:offset + size].tobytes(), offset)
            else:
                self.host[offset:offset + size] = np.frombuffer(
                    card.ref.read(self.dev_buf, size, offset), np.uint8)

    class run:
        def __init__(self, k):
            if not isinstance(k, kernel):
                raise _incompatible("__init__", k)
            self.kernel, self.args, self._state = k, {}, ert_cmd_state.ERT_CMD_STATE_NEW

        def set_arg(self, i, v):
            if not _c_int(i) or not (isinstance(v, bo) or _c_int(v)):
                raise _incompatible("set_arg", i, v)
            if not 0 <= i < len(self.kernel.files.args):
                raise RuntimeError(f"Invalid kernel argument index '{i}'")
            if isinstance(v, bo):
                want = self.kernel.group_id(i)
                if v.group != want:  # validate_bo_at_index: warn, copy into the connected bank
                    card.warnings.append(
                        f"Kernel {self.kernel.name} has no compute units with connectivity "
                        f"required for global argument at index {i}. The argument is allocated "
                        f"in bank {v.group}, the compute unit is connected to bank {want}. "
                        "Allocating local copy of argument buffer in connected bank.")
                    copy = card.ref.allocate(f"copy{i}", v._size)
                    card.ref.write(copy, card.ref.read(v.dev_buf, v._size))
                    self.args[i] = copy
                    return
                self.args[i] = v.dev_buf
            else:
                self.args[i] = v.__index__() & UINT_MAX

        def start(self):
            card.calls.append(("start",))
            names = [n for n, _, _ in self.kernel.files.args]
            zero_pointer = any(q == 1 and i not in self.args
                               for i, (_, _, q) in enumerate(self.kernel.files.args))
            if card.hang or card.pending or zero_pointer:
                card.pending = True  # never completes; everything after queues behind it
                self._state = ert_cmd_state.ERT_CMD_STATE_SUBMITTED
                return
            card.ref.attach_model(card.compiled)
            args = {n: self.args.get(i, 0) for i, n in enumerate(names)}
            card.ref.run(args, 1.0)
            if card.cycles:  # the reference model counts no cycles; a placeholder if asked
                from recfabric.host.runtime.wire_format import RequestLayout
                from recfabric.hw.register_map import STATUS_BASE, STATUS_REGS, status_block_offset

                lay = RequestLayout.for_config(card.compiled.quantized_model(), card.config)
                at = status_block_offset(args["batch"] * lay.result_record_bytes) + \
                    STATUS_REGS["cycles_lo"] - STATUS_BASE
                card.ref.write(args["results"], card.cycles.to_bytes(4, "little"), at)
            card.completed += 1
            self._state = ert_cmd_state.ERT_CMD_STATE_COMPLETED

        def wait(self, timeout_ms=0):
            if not _c_int(timeout_ms, 0, UINT_MAX):
                raise _incompatible("wait", timeout_ms)
            card.calls.append(("wait", timeout_ms))
            if self._state is ert_cmd_state.ERT_CMD_STATE_COMPLETED:
                return self._state
            if timeout_ms == 0:
                raise RuntimeError("stand-in: wait(0) waits forever on a run that never "
                                   "completes (XRT would block here)")
            return ert_cmd_state.ERT_CMD_STATE_TIMEOUT

        def state(self):
            return self._state

    for enum_ in (bo.flags, kernel.cu_access_mode):  # pybind11's export_values()
        for member in enum_:
            setattr(bo if enum_ is bo.flags else kernel, member.name, member)
    if flavour != "old":
        device.register_xclbin = register_xclbin
        m.hw_context = hw_context
    m.uuid, m.xclbin, m.device, m.kernel, m.bo, m.run = uuid, xclbin, device, kernel, bo, run
    return m
