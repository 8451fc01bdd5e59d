"""The ``reference`` backend: a behavioural model of the kernel, computed with the golden model.

A run reads the request buffer in wire format, computes the scores with the one golden model
pooling *from the compiled images* (:class:`~recfabric.host.compiler.compiled.ImagePooling`),
and writes the result records and the status block exactly where the kernel would. Its counters
mean what the kernel's mean; there are no cycles (the counter stays 0).
"""

from __future__ import annotations

import numpy as np

from ...hw.config import AcceleratorConfig
from ...hw.register_map import (
    ERROR_BAD_REQUEST,
    KERNEL_ID,
    KERNEL_VERSION,
    STATUS_REGS,
    status_block_offset,
)
from ..compiler.compiled import CompiledModel, golden_from_images
from .device import BumpMemory, Device, DeviceError
from .wire_format import RequestLayout, pack_results, unpack_requests

__all__ = ["ReferenceDevice"]

#: First 32 bits of a kernel program's header word ("RFpg"; ``hw.kernel.PROGRAM_MAGIC``).
PROGRAM_MAGIC = 0x67704652


class ReferenceDevice(Device):
    """Behavioural kernel model: golden model from the compiled images, same memory protocol.

    Parameters
    ----------
    config : AcceleratorConfig
    memory_bytes : int
        Modelled device memory.
    """

    def __init__(self, config: AcceleratorConfig, memory_bytes: int = 1 << 30):
        self.config = config
        self._mem = BumpMemory(memory_bytes)
        self._model: CompiledModel | None = None
        self.runs = 0

    def allocate(self, name, size, bank=None):
        return self._mem.allocate(name, size, bank)

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
        errors = 0
        if int(args.get("flags", 0)) & 1:
            # as the kernel does: a program whose header lacks the magic is skipped and flagged
            header = self.read(args["model"], 8)
            if int.from_bytes(header[:4], "little") != PROGRAM_MAGIC:
                errors |= ERROR_BAD_REQUEST
        layout = RequestLayout.for_config(cm.quantized_model(), self.config)
        req, res = args["requests"], args["results"]
        dense, sparse = unpack_requests(layout, self.read(req, batch * layout.record_bytes),
                                        batch)
        golden = golden_from_images(cm, dense, sparse)
        results = pack_results(layout, golden.scores)
        self.write(res, results)
        status = {n: 0 for n in STATUS_REGS}
        status.update(id=KERNEL_ID, version=KERNEL_VERSION, config_hash=self.config.config_hash,
                      requests_done=batch, errors=errors,
                      lookups_issued=int(cm.lookups_per_request(sparse).sum()))
        block = np.array([status[n] for n in sorted(STATUS_REGS, key=STATUS_REGS.get)],
                         dtype="<u4").tobytes()
        self.write(res, block, status_block_offset(len(results)))
        self.runs += 1
