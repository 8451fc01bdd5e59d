"""Per-engine weight-memory sizing (issue 9.7, "every preset fits its card"): the engines'
depths follow the configuration's per-engine widths, the weight memories' BRAM36 / LUT RAM /
DSP48E2 count (no synthesis) fits each preset's card, models that need deeper memories are
refused in one line, and the models the presets were sized for still run."""

import dataclasses
import math

import pytest

from recfabric.host.bench import resources as rs
from recfabric.hw.config import ConfigError, get_preset

PRESETS = sorted(rs.PRESET_CARDS)
#: The models the u280-class presets were sized for (``recfabric models --config C``).
SIZED_FOR = ("microrec-small", "microrec-large", "wnd", "kaggle")


def test_block_ram_and_lut_ram_counting_rules():
    # 320 x 32: one RAMB18 in 512 x 36; 1024 x 32: one RAMB36 in 1K x 36 (or two RAMB18).
    assert rs.block_ram36(320, 32) == 0.5
    assert rs.block_ram36(1024, 32) == 1.0
    assert rs.block_ram36(208, 16) == 0.5  # 1K x 18
    assert rs.block_ram36(4096, 512) == 57  # 4K x 9 RAMB36s: 57 wide (512 x 72: 64)
    # LUT RAM, as measured with Yosys on the PE memories: 176 x (2 lanes x 16 b) is 18
    # RAM64M8 (3 banks x 2 lanes x 3) = 144 LUTs plus 32 LUT6 read muxes (Yosys: 182 LUTs).
    assert rs.lut_ram(176, 2, 16) == 144 + 32
    assert rs.lut_ram(104, 2, 8) == 8 * 2 * 2 * 2 + 16  # Yosys: 8 RAM64M8
    assert rs.lut_ram(64, 1, 16) == 24  # one bank, no multiplexer (Yosys: 3 RAM64M8)


#: Yosys synth_xilinx LUTs / BRAM36 of the u280 (4 banks) activation buffers, by (mlp, lanes,
#: words): docs/resources-u280.json (`recfabric report resources --config u280`).
U280_BUFFERS_MEASURED = {
    ("bottom", 1, 256): (17, 0.5), ("bottom", 32, 64): (784, 0), ("bottom", 16, 64): (400, 0),
    ("bottom", 8, 32): (144, 0), ("bottom", 4, 16): (80, 0), ("mlp", 60, 128): (3976, 0),
    ("mlp", 64, 64): (1552, 0), ("mlp", 48, 64): (1168, 0), ("mlp", 16, 64): (400, 0),
    ("mlp", 1, 16): (32, 0)}


def test_activation_buffers_are_counted_as_yosys_maps_them():
    # The banks' cost: every buffer is `activation_banks` requests deep. The counting rule
    # (LUT RAM up to 128 words, else block RAM; no pointer logic) against the synthesised u280
    # buffers: block RAM exact, LUTs 2% under in total (the pointers and flags are not counted).
    bufs = rs.activation_memories(get_preset("u280"))
    counted = {(b["mlp"], b["lanes"], b["words"]): (b["LUT"], b["BRAM36"]) for b in bufs}
    assert counted.keys() == U280_BUFFERS_MEASURED.keys()
    for key, (_lut, bram) in U280_BUFFERS_MEASURED.items():
        assert counted[key][1] == bram, key
    got, want = (sum(v[0] for v in d.values()) for d in (counted, U280_BUFFERS_MEASURED))
    assert 0.95 * want <= got <= want, (got, want)
    # doubling the banks doubles each buffer's depth; u280-int8 would pay 5,952 more LUTs for 8
    c = get_preset("u280-int8")
    eight, four = (rs.activation_memories(c.replace(activation_banks=b)) for b in (8, 4))
    assert [b["words"] for b in eight] == [2 * b["words"] for b in four]
    assert sum(b["LUT"] for b in eight) - sum(b["LUT"] for b in four) == 11152 - 5200
    total = rs.analytic_estimate(c)["total"]
    assert total["LUT"] == sum(e["LUT"] for e in rs.weight_memories(c) + four)


@pytest.mark.parametrize("name", PRESETS)
def test_engine_depths_follow_the_per_engine_widths(name):
    c = get_preset(name)
    for label, shapes, widths, first in (
            ("mlp", c.mlp_top_shapes, c.top_engine_widths, c.max_concat),
            ("bottom", c.mlp_bottom_shapes, c.bottom_engine_widths, max(1, c.max_dense))):
        engines = [e for e in rs.weight_memories(c) if e["mlp"] == label]
        assert len(engines) == len(shapes)
        ins = (first,) + tuple(widths[:-1])
        for l, ((r, col), e) in enumerate(zip(shapes, engines)):
            assert (e["max_in"], e["max_out"]) == (ins[l], widths[l])
            assert e["words"] == math.ceil(ins[l] / col) * math.ceil(widths[l] / r)
            assert e["ram_style"] == (
                "ultra" if label == "mlp" and l in c.mlp_top_uram_engines
                else "distributed" if e["words"] <= c.weight_lutram_depth else "block")
    # The last top engine only ever produces logits (its weights: max_outputs rows).
    assert c.top_engine_widths[-1] == c.max_outputs
    assert sum(e["DSP48E2"] for e in rs.weight_memories(c)) == c.mlp_dsp_slices


def _fit_params():
    out = []
    for name in PRESETS:
        for res in ("BRAM36", "URAM", "DSP48E2", "LUT"):
            out.append(pytest.param(name, res, id=f"{name}-{res}"))
    return out


#: Share of the card the counted parts may take: the rest (control, lookup units, buffers,
#: engines' own logic) is what the synthesised report adds (README resources table).
# DSP48E2: the count holds every MLP engine and dot lane; the other users (address and
# merge multiplies in the fetchers, dispatcher and on-chip tables) take tens of slices, so
# 3% of the card (270 slices on the U280) is their room.
SHARE = {"BRAM36": 0.9, "URAM": 0.9, "DSP48E2": 0.97, "LUT": 0.5}


@pytest.mark.parametrize(("name", "res"), _fit_params())
def test_each_presets_memories_and_multipliers_fit_its_card(name, res):
    r = rs.analytic_estimate(get_preset(name))
    assert r["card"] == rs.PRESET_CARDS[name]
    cap = rs.CARDS[r["card"]][res]
    assert r["total"][res] <= SHARE[res] * cap, (r["total"][res], cap)


def test_max_width_everywhere_would_not_fit_the_u280():
    # What the per-engine widths fix: every engine sized max_width x max_width (the former
    # sizing) needs more block RAM than the card has, even with the same LUT RAM threshold.
    c = get_preset("u280")
    wide = c.replace(mlp_top_widths=(c.max_width,) * 3 + (c.max_outputs,),
                     mlp_bottom_widths=(c.max_width,) * 4)
    assert rs.analytic_estimate(wide)["total"]["BRAM36"] > rs.CARDS["u280"]["BRAM36"]


def test_bad_widths_are_refused_in_one_line():
    c = get_preset("u280")
    with pytest.raises(ConfigError, match=r"^mlp_top_widths needs one width per engine \(4\), "
                                          r"not 3: \(1024, 512, 256\)$"):
        c.replace(mlp_top_widths=(1024, 512, 256))
    with pytest.raises(ConfigError, match=r"^mlp_bottom_widths\[1\] must be an integer in "
                                          r"1\.\.max_width 1024, not 2048$"):
        c.replace(mlp_bottom_widths=(512, 2048, 64, 16))
    with pytest.raises(ConfigError, match=r"^mlp_top_widths\[-1\] must hold max_outputs 4 "
                                          r"logits, not 2$"):
        c.replace(mlp_top_widths=(1024, 512, 256, 2))
    with pytest.raises(ConfigError, match="weight_lutram_depth must be >= 0, not -1"):
        c.replace(weight_lutram_depth=-1)


@pytest.mark.parametrize("name", ["u280", "u280-int8"])
def test_a_layer_wider_than_its_engine_is_refused_naming_the_engine(name):
    from recfabric.host.compiler.steps import model_runs
    from recfabric.host.model.zoo import get_model
    c = get_preset(name)
    spec = dataclasses.replace(get_model("microrec-small"), top_mlp=(1024, 768, 256, 1))
    why = model_runs(spec, c)
    assert len(why) == 1 and "\n" not in why[0]
    assert (f"top layer 1 (1024 -> 768) on top engine 1 exceeds its weight memory (at most "
            f"1024 inputs, {c.top_engine_widths[1]} outputs: mlp_top_widths)") in why[0]
    spec = dataclasses.replace(get_model("kaggle"), bottom_mlp=(512, 512, 64, 16))
    why = model_runs(spec, c)
    assert len(why) == 1
    assert ("bottom layer 1 (512 -> 512) on bottom engine 1 exceeds its weight memory (at most "
            f"512 inputs, {c.bottom_engine_widths[1]} outputs: mlp_bottom_widths)") in why[0]


@pytest.mark.parametrize("name", PRESETS)
def test_the_models_the_presets_were_sized_for_fit_every_engine(name):
    # The check the sizing adds (compile runs it in check_program), on every engine.
    from recfabric.host.compiler.kernel_program import (
        engine_assignment,
        engine_width_errors,
        top_chain_shapes,
    )
    from recfabric.host.model.zoo import get_model
    caps = get_preset(name).capabilities()
    for model in SIZED_FOR:
        spec = get_model(model)
        top = top_chain_shapes(spec)
        assert engine_width_errors("top", top, engine_assignment(top, caps), caps) == []
        bottom = list(spec.layer_shapes()["bottom"])
        if bottom:  # kaggle
            where = [*range(len(bottom)), *[None] * (len(caps.bottom_engines) - len(bottom))]
            assert engine_width_errors("bottom", bottom, where, caps) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("model", SIZED_FOR)
def test_the_models_the_presets_were_sized_for_still_run(name, model):
    # Every compile check (recfabric models), ~3 s each: slow. The u50 has no bottom MLP
    # (docs/mlp.md): kaggle is refused there, with the reason.
    from recfabric.host.compiler.steps import model_runs
    from recfabric.host.model.zoo import get_model
    spec, cfg = get_model(model), get_preset(name)
    if spec.bottom_mlp and not cfg.mlp_bottom_shapes:
        assert model_runs(spec, cfg) == [f"model '{model}' does not fit configuration "
                                         f"'{name}': bottom MLP of {len(spec.bottom_mlp)} "
                                         f"layers (this kernel has none)"]
    else:
        assert model_runs(spec, cfg) == []


def test_weight_memories_carry_their_ram_style():
    from amaranth.back import rtlil

    from recfabric.hw.mlp import LayerEngine
    kw = dict(rows=2, cols=2, data_bits=16, acc_bits=48, max_in=8, max_out=8)
    for depth, style in ((16, "distributed"), (15, "block"), (0, None)):
        e = LayerEngine(**kw, weight_lutram_depth=depth)
        assert e.wdepth == 16 and e.weight_ram_style == style
        text = rtlil.convert(e)
        for s in ("distributed", "block"):
            assert (f'attribute \\ram_style "{s}"' in text) == (s == style), (depth, s)
