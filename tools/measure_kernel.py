"""Measure the simulated kernel on the small preset: cycles per batch, latency, throughput,
stall counters and simulation speed. Usage: .venv/bin/python tools/measure_kernel.py [batches...]
Prints one JSON object per batch (the README's table comes from these)."""

import json
import sys
import tempfile
import time

import numpy as np

from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.steps import compile_model
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.runtime.accelerator import Accelerator
from recfabric.hw.config import get_preset


def main(batches):
    spec, cfg = get_model("small"), get_preset("small")
    d = tempfile.mkdtemp()
    compile_model(spec, random_weights(spec), cfg, d)
    cm = load_compiled(d)
    acc = Accelerator.open("sim", cfg)
    acc.load(d)
    dense, sparse = synthetic_batch(spec, 1, seed=1)
    t0 = time.perf_counter()
    first = acc.infer(dense, sparse)
    print(json.dumps({"what": "first run (model program + 1 request)",
                      "cycles": first.counters["cycles"],
                      "wall_s": round(time.perf_counter() - t0, 2)}), flush=True)
    for batch in batches:
        dense, sparse = synthetic_batch(spec, batch, seed=batch)
        g = golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse)
        c0 = acc.device.cycles
        t0 = time.perf_counter()
        r = acc.infer(dense, sparse)
        wall = time.perf_counter() - t0
        cyc = r.counters["cycles"]
        print(json.dumps({
            "batch": batch, "match": bool(np.array_equal(r.scores, g.scores)), "cycles": cyc,
            "us_at_clock": round(cyc / cfg.clock_mhz, 3),
            "cycles_per_inference": round(cyc / batch, 1),
            "inferences_per_s": round(batch * cfg.clock_mhz * 1e6 / cyc),
            "counters": r.counters,
            "sim_cycles_per_s": round((acc.device.cycles - c0) / wall),
            "wall_s": round(wall, 2)}), flush=True)


if __name__ == "__main__":
    main([int(b) for b in sys.argv[1:]] or [1, 16, 256])
