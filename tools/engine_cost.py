"""Yosys ``synth_xilinx -family xcup`` of one MLP layer engine of a preset, hierarchical as
``recfabric report resources`` (:func:`~recfabric.host.bench.resources.synth_hier`), for
several values of the batch-1 latency options (docs/mlp.md, "Batch-1 latency options").

    nice -n 10 .venv/bin/python tools/engine_cost.py u280-int8 2 0,0 7,16

Arguments: preset, top engine index, then ``cascade,broadcast`` pairs. Prints one JSON line
per pair (DSP48E2, LUT, FF, BRAM36, URAM, logic levels; ``glue``: the engine's logic outside
its PEs). Measured on this machine: ~20 min for a 20 x 64 int8 engine under load.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

from amaranth.hdl import UnusedElaboratable

from recfabric.host.bench.resources import synth_hier
from recfabric.hw.config import get_preset
from recfabric.hw.kernel import RecFabricKernel
from recfabric.hw.mlp import LayerEngine


def main(argv):
    preset, idx = argv[0], int(argv[1])
    cfg = get_preset(preset)
    for pair in argv[2:]:
        s, f = (int(v) for v in pair.split(","))
        # shared weight memories (and so UltraRAM engines) need the broadcast
        c = cfg.with_latency_options(s, f)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnusedElaboratable)
            kw = RecFabricKernel(c).mlp.engine_kwargs()[idx]
        t0 = time.monotonic()
        r = synth_hier(LayerEngine(**kw))
        print(json.dumps({"preset": preset, "engine": idx, "shape": [kw["rows"], kw["cols"]],
                          "cascade": s, "broadcast": f,
                          **{k: r[k] for k in ("DSP48E2", "LUT", "FF", "BRAM36", "URAM",
                                               "levels")},
                          "levels_end": r["levels_end"], "glue": r["glue"],
                          "seconds": round(time.monotonic() - t0)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
