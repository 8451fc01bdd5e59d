"""Modelled batch-1 latency and II of microrec-small / -large on the u280-class presets, without
and with the batch-1 latency options (``mlp_cascade``, ``mlp_broadcast``; docs/mlp.md).

    .venv/bin/python tools/model_latency.py              # each preset: off, and as preset
    .venv/bin/python tools/model_latency.py 4,16 7,16    # also these (cascade, broadcast)

Modelled (:func:`~recfabric.host.compiler.cycle_model.kernel_batch_cycles`, memory latency
``MEM_LATENCY_CYCLES``), not simulated. A model the kernel cannot place is planned for the
study capabilities (``recfabric plan --study``) and marked so.
"""

from __future__ import annotations

import json
import sys

from recfabric.host.compiler.cycle_model import kernel_batch_cycles
from recfabric.host.compiler.planner import PlanError, plan, study_capabilities
from recfabric.host.model.zoo import get_model
from recfabric.host.runtime.wire_format import RequestLayout
from recfabric.hw.config import get_preset

PRESETS = ("u280", "u280-int8", "u280-mt", "u50", "u55c")
MODELS = ("microrec-small", "microrec-large")


def modelled(model: str, cfg) -> dict:
    spec = get_model(model)
    try:
        p, study = plan(spec, cfg, "default"), False
    except PlanError:
        p, study = plan(spec, study_capabilities(cfg), "default"), True
    words = RequestLayout.for_model(spec, word_bits=256,
                                    elem_bits=cfg.data_bits).words_per_record
    latency, ii = kernel_batch_cycles(spec, cfg, p.rounds, words, pooled_inputs=p.pooled_inputs)
    return {"latency": latency, "ii": ii, "study_plan": study}


def main(argv):
    extra = [tuple(int(v) for v in a.split(",")) for a in argv]
    for name in PRESETS:
        base = get_preset(name)
        opts = [(0, 0), (base.mlp_cascade, base.mlp_broadcast), *extra]
        for model in MODELS:
            for s, f in dict.fromkeys(opts):
                if base.data_bits == 8 and s > 7:
                    continue
                # shared weight memories (and so UltraRAM engines) need the broadcast; they
                # change no timing
                cfg = base.with_latency_options(s, f)
                print(json.dumps({"config": name, "model": model, "mlp_cascade": s,
                                  "mlp_broadcast": f, "how": "modelled",
                                  **modelled(model, cfg)}))


if __name__ == "__main__":
    main(sys.argv[1:])
