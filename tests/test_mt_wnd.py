"""mt-wnd at U280 scale (issue 14 item 7): the `u280-mt` preset runs it (five top engines, a
1,376-wide concatenation), by the same capability checks `compile` uses; its modelled II and
latency; the three heads fused into the top MLP's last three layers, proven in simulation on a
reduced mt-wnd-like model and, at full size, the compiled images `==` the golden model on the
`reference` backend."""

import numpy as np
import pytest

from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.cycle_model import (
    COMBINER_CYCLES,
    FIT_IDS_PER_REQUEST,
    KERNEL_OVERHEAD_CYCLES,
    MLPCycleModel,
    kernel_batch_cycles,
)
from recfabric.host.compiler.kernel_program import top_chain_shapes
from recfabric.host.compiler.steps import compile_model, model_runs
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.reference.golden import golden_forward
from recfabric.host.runtime.accelerator import Accelerator
from recfabric.hw.config import get_preset

#: mt-wnd's shape, reduced: a two-layer trunk and three two-layer heads with one logit each, so
#: the top MLP runs five layers (the trunk's two, the heads fused one per depth: 8-24-12-3).
MINI_MT = ModelSpec(
    "mini-mt", sparse=(SparseFeature("a", 40, 4), SparseFeature("b", 60, 8, bag=2),
                       SparseFeature("c", 30, 4)),
    dense=2, top_mlp=(16, 8), heads=((8, 4, 1),) * 3)

#: The `small` preset with five top engines and three outputs per result record.
SMALL_MT = get_preset("small").replace(
    name="small-mt", mlp_top_shapes=((8, 4), (4, 8), (6, 4), (4, 6), (3, 4)), max_outputs=3)


def test_u280_mt_runs_mt_wnd_and_u280_does_not():
    spec = get_model("mt-wnd")
    assert model_runs(spec, get_preset("u280-mt")) == []
    assert "max_concat 1024" in model_runs(spec, get_preset("u280"))[0]
    assert top_chain_shapes(spec) == [(1376, 1024), (1024, 512), (512, 768), (768, 384),
                                      (384, 3)]


def test_mt_wnd_cycle_model_on_u280_mt():
    """Modelled (cycle model): 2.6M MACs per inference on 7,824 MAC units, bound 335 cycles."""
    cfg = get_preset("u280-mt")
    spec = get_model("mt-wnd")
    top = MLPCycleModel(shapes=list(cfg.mlp_top_shapes), widths=(1376, 1024, 512, 768, 384, 3),
                        cascade=cfg.mlp_cascade, broadcast=cfg.mlp_broadcast)
    # engine 0: 1376/64 chunks x 1024/64 tiles = 22 x 16; engine 1: 16 x 22; the heads' 512x768
    # on 48x24: 22 x 16
    assert top.stage_ii["engine0"] == top.stage_ii["engine1"] == top.stage_ii["engine2"] == 352
    assert top.ii == 352 and top.mac_units == 7824 and round(top.bound) == 335
    latency, ii = kernel_batch_cycles(spec, cfg, 1, 1)
    assert ii == 352
    # + the memory round, the kernel overhead, one cycle per ID beyond the fitted model's (its
    # 43 one-hot features' IDs leave the dispatcher one per cycle) and the bag combiner
    assert latency == (top.latency + 64 + KERNEL_OVERHEAD_CYCLES + 43 - FIT_IDS_PER_REQUEST
                       + COMBINER_CYCLES)


@pytest.mark.slow  # ~75 s: compile, elaborate and simulate the five-engine small kernel
def test_mini_mt_on_five_engines_is_bit_exact_in_simulation(tmp_path):
    """The fused five-layer heads path on the simulated kernel, with stalls: every score of
    the three heads `==` golden."""
    assert len(top_chain_shapes(MINI_MT)) == 5 == SMALL_MT.max_top_layers
    assert model_runs(MINI_MT, get_preset("small"))  # two outputs, three engines: refused
    w = random_weights(MINI_MT, seed=2)
    qm = compile_model(MINI_MT, w, SMALL_MT, tmp_path, seed=2).qm
    cm = load_compiled(tmp_path)
    dense, sparse = synthetic_batch(MINI_MT, 3, seed=4)
    with Accelerator.open("sim", SMALL_MT, mem_latency=16, p_stall=0.1, seed=5) as acc:
        acc.load(tmp_path)
        r = acc.infer(dense, sparse)
    want = golden_forward(qm, qm.quantize_dense(dense), sparse).scores
    assert r.scores.shape == (3, 3)
    assert np.array_equal(r.scores, want)
    assert np.array_equal(want, golden_from_images(cm, qm.quantize_dense(dense), sparse).scores)
    assert (r.status == 1).all()  # VALID, no error flag
    assert len({tuple(r.scores[:, h]) for h in range(3)}) == 3  # three heads, three functions


@pytest.mark.slow  # compiles mt-wnd's 1.8 GiB of table images
def test_mt_wnd_compiled_for_u280_mt_equals_golden_on_reference(tmp_path):
    spec = get_model("mt-wnd")
    cfg = get_preset("u280-mt")
    qm = compile_model(spec, random_weights(spec, seed=1), cfg, tmp_path, seed=1).qm
    assert (tmp_path / "kernel_program.bin").exists()
    dense, sparse = synthetic_batch(spec, 16, seed=3)
    with Accelerator.open("reference", cfg, memory_bytes=3 << 30) as acc:
        acc.load(tmp_path)
        r = acc.infer(dense, sparse)
    want = golden_forward(qm, qm.quantize_dense(dense), sparse).scores
    assert r.scores.shape == (16, 3)
    assert np.array_equal(r.scores, want)
    assert (r.status == 1).all()
