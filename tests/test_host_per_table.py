"""Per-table formats: each concat segment has its own format, folded into the first layer's
weight columns; exact on the unchanged hardware (sim backend scores == golden model)."""

import numpy as np
import pytest

from recfabric.host import numerics as nx
from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.steps import compile_model
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import ArrayTable, random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.reference.golden import float_forward, golden_forward, mlp_layer
from recfabric.host.reference.quantize import quantize_model
from recfabric.host.runtime.accelerator import Accelerator
from recfabric.hw.config import get_preset


def skewed_weights(spec, seed=0):
    """Tables of very different scales (DLRM's init gives +-sqrt(1/rows)), the dense part
    larger still: one shared format would round the small tables to a few levels."""
    w = random_weights(spec, seed=seed)
    rng = np.random.default_rng(seed)
    scales = [0.03, 1.5, 0.2, 0.7, 0.05, 0.4, 0.1, 0.9][:len(spec.sparse)]
    w.tables = [ArrayTable(rng.uniform(-s, s, (f.rows, f.dim)))
                for s, f in zip(scales, spec.sparse)]
    return w


def test_segments_get_their_own_formats_and_products_share_the_accumulator():
    spec = get_model("tiny")
    w = skewed_weights(spec)
    cd, cs = synthetic_batch(spec, 256, seed=1)
    qm = quantize_model(w, cd, cs, bits=16)
    segs = qm.segment_fmts
    assert len(segs) == 1 + len(spec.sparse) and segs[0] == qm.dense_fmt
    assert [t.fmt for t in qm.tables] == segs[1:]
    assert len({f.frac for f in segs}) >= 3
    for f, t, ft in zip(spec.sparse, qm.tables, w.tables):
        m = float(np.abs(ft.values).max())
        assert t.fmt.max_value >= m
        if f.bag == 1:  # pooled = one row: the table's own range sets the format
            assert t.fmt.frac == nx.choose_frac(m, 16)
    first = qm.top[0]
    acc_frac = first.acc_frac
    widths = [spec.dense] + [f.dim for f in spec.sparse]
    start = 0
    fw = w.top[0].weight
    nat = []
    for fmt, width in zip(segs, widths):
        cols = slice(start, start + width)
        start += width
        # Weight columns of the segment: value = integer * 2**-(acc_frac - segment frac).
        wf = acc_frac - fmt.frac
        np.testing.assert_array_equal(first.w[:, cols], nx.quantize(fw[:, cols], nx.FixedFormat(
            16, wf)))
        nat.append(fmt.frac + nx.choose_frac(float(np.abs(fw[:, cols]).max()), 16))
    assert acc_frac == min(nat), "the finest accumulator format in which no column saturates"
    assert np.abs(first.w).max() <= 32767


@pytest.mark.parametrize("bits", [8, 16])
def test_per_table_is_closer_to_float_than_shared(bits):
    spec = get_model("small")
    w = skewed_weights(spec, seed=2)
    cd, cs = synthetic_batch(spec, 1024, seed=3)
    dense, sparse = synthetic_batch(spec, 2048, seed=4)
    p = float_forward(w, dense, sparse)[:, 0]
    err = {}
    for formats in ("per-table", "shared"):
        qm = quantize_model(w, cd, cs, bits=bits, formats=formats)
        got = golden_forward(qm, qm.quantize_dense(dense), sparse).probabilities[:, 0]
        err[formats] = float(np.abs(got - p).mean())
    assert err["per-table"] < err["shared"], err


def test_dot_interaction_vectors_get_their_own_formats():
    spec = ModelSpec(name="dot", sparse=(SparseFeature("a", 30, 4), SparseFeature("b", 40, 4)),
                     dense=3, bottom_mlp=(4,), interaction="dot", top_mlp=(6, 1))
    w = skewed_weights(spec, seed=5)
    cd, cs = synthetic_batch(spec, 512, seed=6)
    qm = quantize_model(w, cd, cs, bits=8)
    assert len({f.frac for f in qm.segment_fmts}) > 1
    dense, sparse = synthetic_batch(spec, 7, seed=7)
    r = golden_forward(qm, qm.quantize_dense(dense), sparse)
    # The pairwise dots by hand: pair (i, j) in frac_i + frac_j, requantized to interaction_fmt.
    fr = [f.frac for f in qm.segment_fmts]
    dense_vec = mlp_layer(qm.bottom[0], qm.quantize_dense(dense), qm.acc_bits)
    vecs = [dense_vec, *r.pooled]
    out = qm.interaction_fmt
    want = []
    for i, j in zip(*np.tril_indices(3, k=-1)):
        acc = (vecs[i] * vecs[j]).sum(axis=1)
        want.append(nx.requantize(acc, fr[i] + fr[j] - out.frac, out))
    np.testing.assert_array_equal(r.features[:, 4:], np.stack(want, axis=1))
    np.testing.assert_array_equal(r.features[:, :4],
                                  nx.requantize(dense_vec, fr[0] - out.frac, out))


def test_sim_backend_is_bit_exact_with_per_table_formats(tmp_path):
    spec = get_model("tiny")
    w = skewed_weights(spec, seed=8)
    config = get_preset("tiny")
    qm = quantize_model(w, *synthetic_batch(spec, 512, seed=9), bits=16)
    assert len({f.frac for f in qm.segment_fmts}) >= 3
    compile_model(spec, None, config, tmp_path, qm=qm)
    cm = load_compiled(tmp_path)
    assert cm.quantized_model().segment_fmts == qm.segment_fmts
    dense, sparse = synthetic_batch(spec, 6, seed=10)
    want = golden_forward(qm, qm.quantize_dense(dense), sparse).scores
    np.testing.assert_array_equal(golden_from_images(cm, qm.quantize_dense(dense), sparse).scores,
                                  want)
    with Accelerator.open("sim", config, max_cycles=50_000) as acc:
        acc.load(tmp_path)
        r = acc.infer(dense, sparse)
    assert np.array_equal(r.scores, want)
    assert len(np.unique(want)) > 3  # scores spread, not a constant
