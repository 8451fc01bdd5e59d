"""Engine shapes with shared weight memories (``mlp_weight_share``) for the u280-class presets:
which top-MLP shapes bring microrec-large within ``--ratio`` (1.2) of its MAC bound while keeping
microrec-small's II and batch-1 latency, within the card's DSP48E2, BRAM36, URAM and LUTs
(docs/mlp.md, "Sizing the u280 presets"; issue 9.4). A study: it changes no preset.

    .venv/bin/python tools/size_engines.py u280-int8          # the table in docs/mlp.md
    .venv/bin/python tools/size_engines.py u280                # limits: the preset's own

Everything is modelled or counted, nothing synthesised: cycles per inference (II) and the
bound from :meth:`~recfabric.host.compiler.cycle_model.MLPCycleModel.for_config` (MicroRec's
352/876-1024-512-256-1 top MLPs), batch-1 latency from ``tools/model_latency.py``'s
:func:`modelled` (``kernel_batch_cycles``, the whole kernel), DSP48E2 as
``config.mlp_dsp_slices + dot_lanes`` (bottom MLP and dot unit included), BRAM36 and LUTs from
:func:`~recfabric.host.bench.resources.analytic_estimate` (weight, bias and activation
memories; it leaves the control logic out, so the LUT limit is a floor). Four top engines
``R0 x C0, R1 x R0, R2 x R1, 1 x R2`` (the presets' chain) are searched on a grid; for each
shape that meets the cycle goals, every ``weight_share`` up to one 72-bit block RAM word is
counted, and the first one that fits is kept (the preset's UltraRAM engines stay in URAM where
that sharing suits it: ``AcceleratorConfig.with_weight_share``). Prints one JSON line per row:
the preset, then the fitting shapes, fewest DSP48E2 first (``--sort ratio``: best ratio first).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from amaranth.hdl import UnusedElaboratable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_latency import modelled  # noqa: E402  (tools/ is not a package)

from recfabric.host.bench import resources as rs  # noqa: E402
from recfabric.host.compiler.cycle_model import MLPCycleModel  # noqa: E402
from recfabric.hw.config import get_preset  # noqa: E402

SMALL, LARGE = (352, 1024, 512, 256, 1), (876, 1024, 512, 256, 1)
#: microrec-small's II and batch-1 latency must not exceed these: issue 9's goals (II 100,
#: latency 664 cycles) for u280-int8; other presets keep their own (modelled) figures.
LIMITS = {"u280-int8": (100, 664)}


def row(cfg, card: str = "u280") -> dict:
    """Modelled cycles and counted resources of ``cfg``'s top MLP for MicroRec."""
    s, lg = (MLPCycleModel.for_config(cfg, w) for w in (SMALL, LARGE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        est = rs.analytic_estimate(cfg, card)
    e0 = next(e for e in est["engines"] if e["mlp"] == "mlp" and e["engine"] == 0)
    return {"shapes": [list(x) for x in cfg.mlp_top_shapes],
            "weight_share": cfg.mlp_weight_share, "MACs": s.mac_units,
            "DSP48E2": cfg.mlp_dsp_slices + cfg.dot_lanes,
            "BRAM36": est["total"]["BRAM36"], "BRAM36_util": est["utilization"]["BRAM36"],
            "LUT_util": est["utilization"]["LUT"], "URAM_util": est["utilization"]["URAM"],
            "uram_engines": list(cfg.mlp_top_uram_engines), "engine0_words": e0["words"],
            "engine0_BRAM36": e0["BRAM36"], "ii_small": s.ii, "ii_large": lg.ii,
            "bound_large": round(lg.bound, 1), "ratio_large": round(lg.ii / lg.bound, 3),
            "util_large": round(lg.utilization, 3),
            "latency_small": modelled("microrec-small", cfg)["latency"],
            "latency_large": modelled("microrec-large", cfg)["latency"], "how": "modelled"}


def search(base, *, ratio: float, small_ii: float, latency: int, limit: float = 0.9,
           card: str = "u280", top: int = 8, by: str = "dsp"):
    """Fitting rows (dicts of :func:`row`): fewest DSP48E2 first, then the best ratio (``by``
    "ratio": the other way round)."""
    dsp_cap = rs.CARDS[card]["DSP48E2"]
    shares = range(1, 72 // (2 * base.data_bits) + 1)
    found = []
    for r0 in range(64, 129, 4):
        for c0 in range(max(base.dot_lanes, 60), 101, 4):
            for r1 in range(48, 113, 4):
                for r2 in range(12, 37, 4):
                    shapes = ((r0, c0), (r1, r0), (r2, r1), (1, r2))
                    cfg = base.replace(mlp_top_shapes=shapes)
                    if cfg.mlp_dsp_slices + cfg.dot_lanes > dsp_cap:
                        continue
                    lg = MLPCycleModel.for_config(cfg, LARGE)
                    if lg.ii > ratio * lg.bound:
                        continue
                    if MLPCycleModel.for_config(cfg, SMALL).ii > small_ii:
                        continue
                    key = (lg.ii / lg.bound, cfg.mlp_dsp_slices)
                    found.append((key if by == "ratio" else key[::-1], cfg))
    found.sort(key=lambda f: f[0])
    rows = []
    for _, cfg in found:
        if modelled("microrec-small", cfg)["latency"] > latency:
            continue
        for g in shares:
            c = cfg.with_weight_share(g)
            r = row(c, card)
            if max(r["BRAM36_util"], r["LUT_util"], r["URAM_util"]) <= limit:
                rows.append(r)
                break
        if len(rows) >= top:
            break
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("preset")
    p.add_argument("--ratio", type=float, default=1.2, help="II / MAC bound of microrec-large")
    p.add_argument("--small-ii", type=float, help="largest microrec-small II")
    p.add_argument("--latency", type=int, help="largest microrec-small batch-1 latency")
    p.add_argument("--top", type=int, default=6, help="rows to print")
    p.add_argument("--sort", choices=("dsp", "ratio"), default="dsp")
    a = p.parse_args(argv)
    base = get_preset(a.preset)
    card = rs.PRESET_CARDS.get(a.preset, "u280")
    now = row(base, card)
    print(json.dumps({"preset": a.preset, **now}), flush=True)
    small_ii, latency = LIMITS.get(a.preset, (now["ii_small"], now["latency_small"]))
    small_ii = a.small_ii if a.small_ii is not None else small_ii
    latency = a.latency if a.latency is not None else latency
    for r in search(base, ratio=a.ratio, small_ii=small_ii, latency=latency, card=card,
                    top=a.top, by=a.sort):
        print(json.dumps({"preset": a.preset, **r}), flush=True)


if __name__ == "__main__":
    main()
