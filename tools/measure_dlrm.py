"""Measure the simulated kernel on a DLRM / multi-task model (default ``dlrm-small`` on the
``small`` preset): cycles per batch against the kernel cycle model, and bit-exactness.
Usage: .venv/bin/python tools/measure_dlrm.py [model] [batches...]
Prints one JSON object per batch (README's DLRM rows come from these)."""

import json
import sys
import tempfile
import time

import numpy as np

from recfabric.host.bench.compare import kernel_cycles
from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.steps import compile_model
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.runtime.accelerator import Accelerator
from recfabric.host.runtime.wire_format import RequestLayout
from recfabric.hw.config import get_preset


def main(model, batches):
    spec, cfg = get_model(model), get_preset("small")
    d = tempfile.mkdtemp()
    compile_model(spec, random_weights(spec, seed=1), cfg, d, seed=1)
    cm = load_compiled(d)
    words = RequestLayout.for_config(cm.quantized_model(), cfg).words_per_record
    kc = kernel_cycles(spec, cfg, cm.plan, words)
    acc = Accelerator.open("sim", cfg)
    acc.load(d)
    dense, sparse = synthetic_batch(spec, 1, seed=1)
    acc.infer(dense, sparse)  # the program load run
    for batch in batches:
        dense, sparse = synthetic_batch(spec, batch, seed=batch)
        g = golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse)
        t0 = time.perf_counter()
        r = acc.infer(dense, sparse)
        cyc = r.counters["cycles"]
        print(json.dumps({
            "model": model, "batch": batch, "outputs": spec.num_outputs,
            "match": bool(np.array_equal(r.scores, g.scores)), "cycles_simulated": cyc,
            "cycles_modelled": round(kc.cycles(batch)),
            "modelled_ii": kc.ii, "modelled_latency": kc.latency1,
            "wall_s": round(time.perf_counter() - t0, 2)}), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    name = args.pop(0) if args and not args[0].isdigit() else "dlrm-small"
    main(name, [int(a) for a in args] or [1, 8])
