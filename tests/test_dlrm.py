"""DLRM in hardware (issue 14 item 7): bottom MLP, dot interaction and multi-task heads on the
simulated kernel, `==` the golden model (the default suite runs dlrm-small once, here;
`recfabric demo --model dlrm-small`, tests/test_host_cli.py, and model switches are slow); the
fused-heads quantization; capabilities and the cycle model."""

import numpy as np
import pytest

from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.cycle_model import (
    KERNEL_OVERHEAD_CYCLES,
    LOOKUP_BRANCH_CYCLES,
    MEM_LATENCY_CYCLES,
    MLPCycleModel,
    dot_interaction_cycles,
    kernel_batch_cycles,
)
from recfabric.host.compiler.kernel_program import fused_head_layers, top_chain_shapes
from recfabric.host.compiler.steps import compile_model, model_runs
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.reference.golden import golden_forward, mlp_layer
from recfabric.host.reference.quantize import quantize_model
from recfabric.host.runtime.accelerator import Accelerator
from recfabric.host.runtime.wire_format import RequestLayout
from recfabric.hw.config import get_preset

#: A concatenation model with a bottom MLP (DeepRecSys RMC style), small enough for `small`.
BOTTOM_CONCAT = ModelSpec(
    "bottom-concat", sparse=(SparseFeature("a", 40, 4), SparseFeature("b", 60, 8, bag=2)),
    dense=3, bottom_mlp=(8, 6), interaction="concat", top_mlp=(8, 1))


def _compile(tmp_path, spec, seed=1):
    d = tmp_path / spec.name
    compile_model(spec, random_weights(spec, seed=seed), get_preset("small"), d, seed=seed)
    return d, load_compiled(d)


def _golden(cm, dense, sparse):
    return golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse).scores


def test_dlrm_small_is_bit_exact_on_the_simulated_small_kernel(tmp_path):
    """The default suite's one dlrm-small run (issue 14 item 7): bottom MLP, dot interaction
    and two heads on the simulated `small` kernel, with stalls, every score `==` golden."""
    spec = get_model("dlrm-small")
    d, cm = _compile(tmp_path, spec)
    dense, sparse = synthetic_batch(spec, 2, seed=3)
    with Accelerator.open("sim", "small", mem_latency=16, p_stall=0.1, seed=5) as acc:
        acc.load(d)
        r = acc.infer(dense, sparse)
    assert r.scores.shape == (2, 2)
    assert np.array_equal(r.scores, _golden(cm, dense, sparse))
    assert (r.status == 1).all()  # VALID, no error flag
    assert not np.array_equal(r.scores[:, 0], r.scores[:, 1])  # two heads, two functions


@pytest.mark.slow
def test_dlrm_small_and_model_switches_are_bit_exact_on_the_simulated_kernel(tmp_path):
    """dlrm-small (bottom MLP, dot, two heads), then a concat model through the bottom MLP,
    then `small` (no bottom MLP: the program's DATAPATH word is reset by the next load), one
    kernel without reset."""
    models = [get_model("dlrm-small"), BOTTOM_CONCAT, get_model("small")]
    with Accelerator.open("sim", "small", mem_latency=16, p_stall=0.1, seed=5) as acc:
        for i, spec in enumerate(models):
            d, cm = _compile(tmp_path, spec, seed=i + 1)
            dense, sparse = synthetic_batch(spec, 4, seed=10 + i)
            acc.load(d)
            r = acc.infer(dense, sparse)
            want = _golden(cm, dense, sparse)
            assert r.scores.shape == (4, spec.num_outputs)
            assert np.array_equal(r.scores, want), spec.name
            assert (r.status == 1).all(), spec.name  # VALID, no error flag
            if i == 0:  # the two heads are different functions (not one score written twice)
                assert not np.array_equal(r.scores[:, 0], r.scores[:, 1])


def test_heads_of_equal_depth_share_formats_and_fuse_exactly():
    spec = ModelSpec("mt", sparse=(SparseFeature("a", 30, 4), SparseFeature("b", 20, 4)),
                     dense=2, top_mlp=(8,), heads=((6, 1), (6, 1), (6, 1)))
    w = random_weights(spec, seed=3)
    dense, sparse = synthetic_batch(spec, 64, seed=4)
    qm = quantize_model(w, dense, sparse)
    for depth in range(2):
        assert len({(h[depth].in_fmt, h[depth].w_fmt, h[depth].out_fmt) for h in qm.heads}) == 1
    g = golden_forward(qm, qm.quantize_dense(dense), sparse)
    # The trunk output through the fused layers equals the per-head logits, exactly.
    trunk = g.features
    for layer in qm.top:
        trunk = mlp_layer(layer, trunk, qm.acc_bits, qm.rounding)
    x = trunk
    for layer in fused_head_layers(qm):
        x = mlp_layer(layer, x, qm.acc_bits, qm.rounding)
    assert np.array_equal(x, g.logits) and g.logits.shape == (64, 3)
    assert top_chain_shapes(spec) == [(10, 8), (8, 18), (18, 3)]


def test_dlrm_capabilities_and_refusals_name_the_limit():
    assert model_runs(get_model("dlrm-small"), get_preset("small")) == []
    why = model_runs(get_model("dlrm-small"), get_preset("tiny"))[0]
    for part in ("dot interaction (the kernel implements concat)",
                 "outputs 2 exceeds max_outputs 1", "bottom MLP of 2 layers"):
        assert part in why
    big = ModelSpec("big", sparse=tuple(SparseFeature(f"t{i}", 30, 8) for i in range(16)),
                    dense=3, bottom_mlp=(8,), interaction="dot", top_mlp=(4, 1))
    assert "dot interaction input (vectors x dim) 136 exceeds max_concat 128" in \
        model_runs(big, get_preset("small"))[0]


def test_cycle_model_covers_bottom_dot_and_heads():
    u280 = get_preset("u280")
    kg = get_model("kaggle")
    dot_latency, dot_ii = dot_interaction_cycles(27, 16, u280.mlp_top_shapes[0][1], 16)
    assert dot_ii == 1 + 16 + 351  # one pair per cycle: the block's simulated interval
    latency, ii = kernel_batch_cycles(kg, u280, 1, 1)
    assert ii == dot_ii  # the dot unit bounds Kaggle on u280
    opts = dict(cascade=u280.mlp_cascade, broadcast=u280.mlp_broadcast)
    bottom = MLPCycleModel(shapes=list(u280.mlp_bottom_shapes), widths=(13, 512, 256, 64, 16),
                           **opts)
    top = MLPCycleModel(shapes=list(u280.mlp_top_shapes), widths=(367, 512, 256, 1), **opts)
    # The bottom MLP runs beside the lookups; the dot unit and the top MLP follow them (the top
    # MLP's writer takes its ceil(367 / 60) = 7 input chunks as the dot unit packs them).
    # The lookup branch's own overhead cycles count only when the lookups are the later branch.
    assert u280.mlp_top_shapes[0] == (64, 60)
    assert latency == (KERNEL_OVERHEAD_CYCLES - LOOKUP_BRANCH_CYCLES
                       + max(MEM_LATENCY_CYCLES + LOOKUP_BRANCH_CYCLES, bottom.latency)
                       + dot_latency + top.latency - 7)
    # top engines 64x60, 48x64, 16x48, 1x16: engine 0's 7 x 8 tiles bound the top MLP (the bank
    # term is 37)
    assert (bottom.ii, top.ii) == (256, 56)
    assert top.ii == top.stage_ii["engine0"] and top.stage_ii["banks"] == 37
    # Multi-task heads are the top MLP's last layers: mt-wnd needs a fifth engine.
    with pytest.raises(ValueError, match="5 layers do not fit 4 engines"):
        kernel_batch_cycles(get_model("mt-wnd"), u280, 1, 1)
    five = u280.replace(mlp_top_shapes=((64, 32), (48, 64), (32, 48), (16, 32), (1, 16)),
                        mlp_top_widths=(1024, 512, 768, 384, 4), max_concat=2048)
    assert kernel_batch_cycles(get_model("mt-wnd"), five, 1, 1)[1] == 688  # 1376x1024 on 64x32


@pytest.mark.slow  # program load and two batches of the small kernel in simulation
def test_kernel_cycle_model_tracks_the_simulated_dlrm_small(tmp_path):
    """As tools/measure_dlrm.py: simulated cycles of dlrm-small within 5% of the model."""
    spec = get_model("dlrm-small")
    d, cm = _compile(tmp_path, spec)
    lat, ii = kernel_batch_cycles(spec, get_preset("small"), cm.plan.rounds,
                                  RequestLayout.for_config(cm.quantized_model(),
                                                           get_preset("small")).words_per_record)
    with Accelerator.open("sim", "small") as acc:
        acc.load(d)
        acc.infer(*synthetic_batch(spec, 1, seed=1))  # the program load run
        for batch in (1, 8):
            dense, sparse = synthetic_batch(spec, batch, seed=batch)
            r = acc.infer(dense, sparse)
            assert np.array_equal(r.scores, _golden(cm, dense, sparse))
            simulated, modelled = r.counters["cycles"], lat + ii * (batch - 1)
            assert abs(modelled - simulated) <= 0.05 * simulated, (batch, simulated, modelled)
