"""Every preset's multipliers fit the DSP48E2 slices of the card it is built for (issue 14):
the MLP engines' MAC units (two per DSP48E2 when int8 rows pack, ``mlp_dsp_slices``), top and
bottom, plus one multiplier per dot-interaction lane."""

import pytest

from recfabric.host.bench.resources import CARDS, PRESET_CARDS
from recfabric.host.compiler.steps import model_runs
from recfabric.host.model.zoo import get_model
from recfabric.hw.config import PRESETS, get_preset


def _dsp(cfg) -> int:
    return cfg.mlp_dsp_slices + cfg.dot_lanes


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_multipliers_fit_its_card(name):
    cfg = PRESETS[name]
    card = PRESET_CARDS.get(name, "u280")  # tiny / small have no card of their own: the U280
    assert _dsp(cfg) <= CARDS[card]["DSP48E2"], f"{name}: {_dsp(cfg)} DSP48E2 on {card}"


def test_dsp_counts_of_the_alveo_presets():
    """The figures hw/config.py's comments quote (so a change to a preset shows up here)."""
    counts = {n: _dsp(get_preset(n)) for n in ("u280", "u280-int8", "u280-mt", "u50", "u55c")}
    assert counts == {"u280": 7696 + 704 + 16, "u280-int8": 7480 + 352 + 16,
                      "u280-mt": 7824 + 704 + 16, "u50": 5744 + 16, "u55c": 7696 + 704 + 16}
    # the u50 is the tight one: its former 704-MAC bottom MLP would not fit
    u50 = get_preset("u50")
    with_bottom = u50.replace(mlp_bottom_shapes=get_preset("u280").mlp_bottom_shapes)
    assert _dsp(with_bottom) > CARDS["u50"]["DSP48E2"] >= _dsp(u50)


def test_u50_states_why_bottom_mlp_models_do_not_run():
    why = model_runs(get_model("kaggle"), get_preset("u50"))
    assert why and "bottom MLP of 4 layers" in why[0]
    assert model_runs(get_model("microrec-small"), get_preset("u50")) == []


# ---- activation-buffer banks (issue 9: u280-int8 <= 100 cycles per inference) --------------


def test_activation_banks_is_checked_hashed_and_serialised():
    import hashlib
    import json

    from recfabric.hw.config import AcceleratorConfig, ConfigError
    small = get_preset("small")
    assert small.activation_banks == 4 and small.to_json()["activation_banks"] == 4
    for bad in (0, 1, 3, 6, -8, True, 4.0):
        with pytest.raises(ConfigError, match=rf"^activation_banks must be .*, not {bad!r}$"):
            small.replace(activation_banks=bad)
    eight = small.replace(activation_banks=8)
    assert eight.to_json()["activation_banks"] == 8
    assert AcceleratorConfig.from_json(eight.to_json()) == eight
    assert eight.config_hash != small.config_hash
    # at the default, the field stays out of the hash: every configuration that leaves it alone
    # keeps the hash (and so the Verilog and compiled models) it had before the field existed
    from recfabric.hw.config import _HASHED_IF_NOT_DEFAULT
    assert all(small.to_json()[k] == v for k, v in _HASHED_IF_NOT_DEFAULT.items())
    params = {k: v for k, v in small.to_json().items()
              if k != "name" and k not in _HASHED_IF_NOT_DEFAULT}
    before = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).digest()[:4]
    assert small.config_hash == int.from_bytes(before, "little")


@pytest.mark.parametrize("name", ["small", "u280-int8"])
def test_the_kernel_builds_the_configured_banks(name):
    # 8, not the presets' 4 (MLPPipeline's default): the kernel must pass the field on
    from recfabric.host.bench import resources as rs
    from recfabric.hw.kernel import RecFabricKernel
    cfg = get_preset(name).replace(activation_banks=8)
    k = RecFabricKernel(cfg)
    assert k.mlp.banks == k.bottom.banks == cfg.activation_banks
    # and the counted activation memory follows: each buffer is banks requests deep
    bufs = rs.activation_memories(cfg)
    assert len(bufs) == len(cfg.mlp_top_shapes) + len(cfg.mlp_bottom_shapes) + 2
    assert all(b["banks"] == cfg.activation_banks and b["words"] % cfg.activation_banks == 0
               for b in bufs)


def test_u280_int8_sizing_meets_the_cycle_goal():
    """microrec-small <= 96 cycles per inference (modelled; the goal is 100 and the simulation
    has run ~1 cycle over the model) and microrec-large within 1.2x its MAC bound, >= 85%
    MAC-busy (issue 9.4). With the latency options (cascade segments, broadcast) 4 banks
    suffice; without them the same engines are bank-bound above 100 at 4 banks and need 8.
    The first engine's size is what the shared weight memories (`mlp_weight_share` 2) buy:
    with one memory per pair it needs more block RAM than the card has."""
    from recfabric.host.bench import resources as rs
    from recfabric.host.compiler.cycle_model import MLPCycleModel
    cfg = get_preset("u280-int8")
    small, large = ((k0, 1024, 512, 256, 1) for k0 in (352, 876))
    s = MLPCycleModel.for_config(cfg, small)
    assert s.ii <= 96 and s.banks == cfg.activation_banks == 4
    assert s.stage_ii["banks"] < s.ii
    big = MLPCycleModel.for_config(cfg, large)
    assert big.ii <= 1.2 * big.bound and big.bound / big.ii >= 0.85, (big.ii, big.bound)
    plain = cfg.replace(mlp_cascade=0, mlp_broadcast=0, mlp_weight_share=1)
    four = MLPCycleModel.for_config(plain, small)
    assert four.ii > 100 and four.ii == four.stage_ii["banks"]
    assert MLPCycleModel.for_config(plain.replace(activation_banks=8), small).ii <= 96
    bram = {g: sum(e["BRAM36"] for e in rs.weight_memories(cfg.replace(mlp_weight_share=g)))
            for g in (1, 2)}
    assert bram[2] <= 0.9 * CARDS["u280"]["BRAM36"] < bram[1], bram
    # every whole-kernel use of the model sees the configured banks (compile / serving
    # predictions, bench compare's modelled rows, the pruning study)
    from recfabric.host.bench.prune import mlp_cycles
    from recfabric.host.compiler.cycle_model import kernel_batch_cycles
    spec = get_model("microrec-small")
    assert kernel_batch_cycles(spec, cfg, 1, 1)[1] == s.ii == mlp_cycles(spec, cfg).ii
    assert kernel_batch_cycles(spec, plain, 1, 1)[1] == four.ii
    with pytest.raises(ValueError, match="^which must be 'top' or 'bottom', not 'side'$"):
        MLPCycleModel.for_config(cfg, small, "side")
    with pytest.raises(ValueError, match="^config 'u50' has no bottom MLP engines$"):
        MLPCycleModel.for_config(get_preset("u50"), (13, 16), "bottom")


def test_mlp_pipelines_for_a_config_are_the_kernels():
    """Everything that builds a configuration's MLP (kernel, pruning simulation, ECP5 timing
    block) takes MLPPipeline.config_kwargs: the kernel's pipelines have its fields."""
    from recfabric.hw.kernel import RecFabricKernel
    from recfabric.hw.mlp import MLPPipeline
    cfg = get_preset("small").replace(activation_banks=8, mlp_cascade=4, mlp_broadcast=4)
    k = RecFabricKernel(cfg)
    k._MustUse__silence = True  # built for its pipelines' fields, never elaborated
    for which, pipe in (("top", k.mlp), ("bottom", k.bottom)):
        alone = MLPPipeline(**MLPPipeline.config_kwargs(cfg, which))
        alone._MustUse__silence = True  # built to compare its fields, never elaborated
        for attr in ("shapes", "max_widths", "banks", "cascade", "broadcast", "sigmoid",
                     "weight_lutram_depth", "max_in"):
            assert getattr(alone, attr) == getattr(pipe, attr), (which, attr)
    assert (k.mlp.banks, k.mlp.cascade, k.mlp.broadcast) == (8, 4, 4)
    with pytest.raises(ValueError, match="^which must be 'top' or 'bottom', not 'side'$"):
        MLPPipeline.config_kwargs(cfg, "side")
