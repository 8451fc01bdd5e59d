"""Modelled (kernel cycle model, not simulated) cycles per inference of the DLRM and multi-task
benchmarks at U280 scale: `kaggle` on `u280`, `mt-wnd` on `u280-mt` (five top engines and a
1,376-wide concatenation, sized for it). Usage: .venv/bin/python tools/model_dlrm.py
Prints one JSON object per model (README's U280 DLRM table comes from these). Lookup rounds and
request words are taken as 1 here (compiling these models writes GBs of table images): the MLPs
and the dot unit bound them by far (kaggle's plan: 1 round, 6 request words; mt-wnd's on
u280-mt: 4 rounds, docs/compiler.md)."""

import json

from recfabric.host.compiler.cycle_model import (
    MLPCycleModel,
    dot_interaction_cycles,
    kernel_batch_cycles,
)
from recfabric.host.compiler.kernel_program import top_chain_shapes
from recfabric.host.model.zoo import get_model
from recfabric.hw.config import get_preset


def main():
    for name, cfg in (("kaggle", get_preset("u280")), ("mt-wnd", get_preset("u280-mt"))):
        spec = get_model(name)
        latency, ii = kernel_batch_cycles(spec, cfg, 1, 1)
        out = {"model": name, "config": cfg.name, "how": "modelled", "ii": ii,
               "latency": latency, "inferences_per_s_at_clock": round(cfg.clock_mhz * 1e6 / ii)}
        b = spec.layer_shapes()["bottom"]
        if b:
            out["bottom_ii"] = MLPCycleModel.for_config(
                cfg, (b[0][0], *[o for _, o in b]), "bottom").ii
        t = top_chain_shapes(spec)
        out["top_ii"] = MLPCycleModel.for_config(cfg, (t[0][0], *[o for _, o in t])).ii
        if spec.interaction == "dot":
            out["dot_ii"] = dot_interaction_cycles(len(spec.sparse) + 1, spec.dense_out,
                                                   cfg.mlp_top_shapes[0][1], cfg.dot_lanes)[1]
        print(json.dumps(out))


if __name__ == "__main__":
    main()
