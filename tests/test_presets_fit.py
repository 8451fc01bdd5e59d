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
    assert counts == {"u280": 7184 + 704 + 16, "u280-int8": 6540 + 352 + 16,
                      "u280-mt": 7824 + 704 + 16, "u50": 5744 + 16, "u55c": 7184 + 704 + 16}
    # the u50 is the tight one: its former 704-MAC bottom MLP would not fit
    u50 = get_preset("u50")
    with_bottom = u50.replace(mlp_bottom_shapes=get_preset("u280").mlp_bottom_shapes)
    assert _dsp(with_bottom) > CARDS["u50"]["DSP48E2"] >= _dsp(u50)


def test_u50_states_why_bottom_mlp_models_do_not_run():
    why = model_runs(get_model("kaggle"), get_preset("u50"))
    assert why and "bottom MLP of 4 layers" in why[0]
    assert model_runs(get_model("microrec-small"), get_preset("u50")) == []
