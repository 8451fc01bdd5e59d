"""Modelled kernel-program size and load cycles of zoo models on a configuration, including plans
the kernel cannot run yet (row splits allowed: issue 9.3). Usage:
.venv/bin/python tools/program_load_model.py [--config C ...] MODEL ...
Prints one JSON object per (model, config): program words by kind (``program_word_counts``) and
``program_load_cycles`` (modelled: cycle model fitted to the simulated small/tiny loads)."""

import argparse
import dataclasses
import json

from recfabric.host.compiler.cycle_model import program_load_cycles
from recfabric.host.compiler.kernel_program import program_word_counts
from recfabric.host.compiler.planner import plan
from recfabric.host.model.zoo import get_model
from recfabric.hw.config import get_preset


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--config", action="append", default=None)
    args = ap.parse_args(argv)
    for name in args.models:
        spec = get_model(name)
        for cname in args.config or ["u280", "u280-int8"]:
            cfg = get_preset(cname)
            caps = dataclasses.replace(cfg.capabilities(), row_split=True)
            counts = program_word_counts(spec, plan(spec, caps, "default"), cfg)
            print(json.dumps({"model": name, "config": cname, "row_split_plan": True,
                              **counts, "program_load_cycles": program_load_cycles(
                                  counts["words"]), "how": "modelled"}), flush=True)


if __name__ == "__main__":
    main()
