"""`recfabric report timing`: the small configuration's blocks through Yosys + nextpnr-ecp5.

Slow (minutes of synthesis and place-and-route on one core); `make test-slow` runs them.
"""

import json

import pytest

from recfabric.host.cli import main
from recfabric.hw.config import get_preset


@pytest.mark.slow
def test_small_mlp_places_and_routes_on_ecp5(tmp_path, capsys):
    assert main(["report", "timing", "--config", "small", "--block", "mlp", "--json",
                 "-o", str(tmp_path)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["routed"] and r["device"] == "LFE5U-85F"
    assert 10 < r["fmax_mhz"] < 500
    # one 18x18 multiplier per MAC unit of the small configuration's top MLP
    top = get_preset("small").mlp_top_shapes  # the block is the top MLP (mac_units has both)
    assert r["utilization"]["MULT18X18D"]["used"] == sum(rows * cols for rows, cols in top)
    assert (tmp_path / "report.json").exists() and (tmp_path / "nextpnr.log").exists()


@pytest.mark.slow
def test_small_lookup_unit_placement_estimate(tmp_path, capsys):
    assert main(["report", "timing", "--config", "small", "--block", "lookup", "--no-route",
                 "-o", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "placement-only estimate (not routed)" in text and "TRELLIS_COMB" in text
