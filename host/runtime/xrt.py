"""The ``xrt`` backend: an Alveo card running the RecFabric xclbin, through XRT's ``pyxrt``.

``pyxrt`` is imported when a device is opened (it exists only on hosts with XRT installed); its
code path is tested against a stand-in with the binding's documented surface
(``tests/test_host_runtime_accelerator.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...hw.config import AcceleratorConfig
from ...hw.register_map import kernel_args
from .device import Buffer, Device, DeviceError

__all__ = ["XRTDevice"]


class XRTDevice(Device):
    """An Alveo card running the RecFabric xclbin, through XRT's ``pyxrt`` binding.

    The kernel's name carries the configuration hash
    (:func:`recfabric.hw.vitis_package.kernel_name`): opening a kernel built for another
    configuration fails here, before anything runs. ``pyxrt`` cannot read arbitrary registers of
    an ``ap_ctrl_hs`` kernel; counters come from the status block, as on every backend.

    Parameters
    ----------
    config : AcceleratorConfig
    xclbin : path
        The linked binary (``v++ --link`` output).
    device_index : int
        Which card (``xbutil examine`` order).
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
