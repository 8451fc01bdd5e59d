"""The committed resource reports (``docs/resources-<preset>.json``, what the README's
resources section quotes) describe today's presets: each is complete, fits its card, has every
block within the level limit, lists exactly the MLP engines the preset builds (shape and weight
depth), and its synthesised URAM equals what the preset's memories count to (on-chip tables and
UltraRAM weight memories). A preset changed without re-running its report fails here."""

import json
from pathlib import Path

import pytest

from recfabric.host.bench import resources as rs
from recfabric.hw.config import get_preset

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("name", sorted(rs.PRESET_CARDS))
def test_committed_report_matches_the_preset(name):
    r = json.loads((DOCS / f"resources-{name}.json").read_text())
    cfg = get_preset(name)
    assert (r["config"], r["card"]) == (name, rs.PRESET_CARDS[name])
    assert r["complete"] and not r["failed_blocks"]
    assert r["fits"] is True and all(r["utilization"][k] <= 1 for k in r["utilization"])
    assert r["max_levels"] <= rs.MAX_LEVELS and not r["blocks_over_levels"]
    engines = {b["block"] for b in r["blocks"] if " engine" in b["block"]}
    want = {f"{e['mlp']} engine{e['engine']} ({e['rows']}x{e['cols']}, {e['words']} words)"
            for e in rs.weight_memories(cfg)}
    assert engines == want
    assert r["total"]["URAM"] == rs.analytic_estimate(cfg)["total"]["URAM"]
