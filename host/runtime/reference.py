"""The ``reference`` backend: a behavioural model of the kernel, computed with the golden model.

A run reads the request buffer in wire format, computes the scores with the one golden model
pooling *from the compiled images* (:class:`~recfabric.host.compiler.compiled.ImagePooling`),
and writes the result records and the status block exactly where the kernel would. Its counters
mean what the kernel's mean; there are no cycles (the counter stays 0). It follows the kernel's
run protocol (``docs/kernel.md``): a run with ``flags`` LOAD checks the program's magic, a run
without a valid program (none loaded yet, a bad magic, or after :meth:`ReferenceDevice.reset`)
writes no record and reports ``ERROR_NO_PROGRAM``.
"""

from __future__ import annotations

import numpy as np

from ...hw.config import AcceleratorConfig
from ...hw.register_map import (
    ERROR_NO_PROGRAM,
    KERNEL_ID,
    KERNEL_VERSION,
    NO_ERROR_REQUEST,
    STATUS_REGS,
    status_block_offset,
)
from ..compiler.compiled import CompiledModel, golden_from_images
from .device import BumpMemory, Device, DeviceError
from .wire_format import RequestLayout, pack_results, unpack_requests

__all__ = ["ReferenceDevice"]

#: First 32 bits of a kernel program's header word ("RFpg"; ``hw.kernel.PROGRAM_MAGIC``).
PROGRAM_MAGIC = 0x67704652
#: Bits 64..95 of the header word: the program format the kernel executes
#: (``hw.kernel.PROGRAM_FORMAT``).
PROGRAM_FORMAT = 5


class ReferenceDevice(Device):
    """Behavioural kernel model: golden model from the compiled images, same memory protocol.

    Parameters
    ----------
    config : AcceleratorConfig
    memory_bytes : int, optional
        Modelled device memory; default: every memory channel of ``config`` plus 1 GiB (for the
        program, requests and results), so that any model that compiles for ``config`` loads
        (numpy's zeroed memory takes host pages only where written: GB-scale u280 models cost
        their tables' bytes).
    """

    def __init__(self, config: AcceleratorConfig, memory_bytes: int | None = None):
        self.config = config
        if memory_bytes is None:
            memory_bytes = config.mem_channels * config.channel_bytes + (1 << 30)
        self._mem = BumpMemory(memory_bytes)
        self._model: CompiledModel | None = None
        self._program_valid = False  # as the kernel: a program is valid from a good LOAD on
        self.runs = 0

    def allocate(self, name, size, bank=None):
        return self._mem.allocate(name, size, bank)

    def write(self, buf, data, offset=0):
        self._mem.write(buf, data, offset)

    def read(self, buf, size, offset=0):
        return self._mem.read(buf, size, offset)

    def attach_model(self, compiled):
        self._model = compiled

    def reset(self):
        """As the kernel's reset: the kernel program is erased (the next run must LOAD)."""
        self._program_valid = False

    def run(self, args, timeout):
        if self._model is None:
            raise DeviceError("reference device: no model loaded")
        cm = self._model
        batch = int(args["batch"])
        if int(args.get("flags", 0)) & 1:
            # as the kernel does: a program whose header lacks the magic or has another format
            # leaves no valid program
            header = self.read(args["model"], 12)
            self._program_valid = (int.from_bytes(header[:4], "little") == PROGRAM_MAGIC and
                                   int.from_bytes(header[8:12], "little") == PROGRAM_FORMAT)
        layout = RequestLayout.for_config(cm.quantized_model(), self.config)
        res = args["results"]
        status = {n: 0 for n in STATUS_REGS}
        status.update(id=KERNEL_ID, version=KERNEL_VERSION, config_hash=self.config.config_hash,
                      first_error_request=NO_ERROR_REQUEST)
        if self._program_valid:
            dense, sparse = unpack_requests(
                layout, self.read(args["requests"], batch * layout.record_bytes), batch)
            golden = golden_from_images(cm, dense, sparse)
            self.write(res, pack_results(layout, golden.scores))
            status.update(requests_done=batch,
                          lookups_issued=int(cm.lookups_per_request(sparse).sum()))
        else:  # no request is processed; the status block goes where the batch's would end
            status.update(errors=ERROR_NO_PROGRAM)
        block = np.array([status[n] for n in sorted(STATUS_REGS, key=STATUS_REGS.get)],
                         dtype="<u4").tobytes()
        self.write(res, block, status_block_offset(batch * layout.result_record_bytes))
        self.runs += 1
