"""Golden model: against a naive per-request twin, against the float reference, input checks."""

import numpy as np
import pytest

from recfabric.host import numerics as nx
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import ModelWeights, random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.reference.golden import Bags, float_forward, golden_forward
from recfabric.host.reference.quantize import quantize_model

from .test_host_numerics import naive_requantize, naive_saturate, naive_wrap


def naive_golden(qm, dense_q, sparse):
    """One request at a time, Python integers only: the spec read literally."""
    spec = qm.spec
    out = []
    for b in range(len(dense_q)):
        def layer(x, l):
            y = []
            for n in range(l.w.shape[0]):
                acc = naive_wrap(int(l.b[n]) + sum(int(a) * int(w) for a, w in zip(x, l.w[n])),
                                 qm.acc_bits)
                v = naive_requantize(acc, l.shift, l.out_fmt.bits, qm.rounding)
                y.append(max(v, 0) if l.relu else v)
            return y
        x = [int(v) for v in dense_q[b]]
        for l in qm.bottom:
            x = layer(x, l)
        vec = list(x) if spec.dense_out else []
        for t, bags in zip(qm.tables, sparse):
            acc = [0] * t.dim
            for k in range(int(bags.lengths[b])):
                row = t.gather(np.array([bags.ids[b, k]]))[0]
                acc = [a + int(r) for a, r in zip(acc, row)]
            vec += [naive_saturate(a, qm.emb_fmt.bits) for a in acc]
        for l in qm.top:
            vec = layer(vec, l)
        table = nx.sigmoid_table()
        out.append([int(table[v + 1024]) for v in vec])
    return out


@pytest.mark.parametrize("model, bits", [("tiny", 8), ("tiny", 16), ("small", 16)])
def test_golden_equals_naive_twin(model, bits):
    spec = get_model(model)
    w = random_weights(spec, seed=3)
    qm = quantize_model(w, *synthetic_batch(spec, 256, seed=4), bits=bits)
    dense, sparse = synthetic_batch(spec, 24, seed=5)
    dq = qm.quantize_dense(dense)
    assert golden_forward(qm, dq, sparse).scores.tolist() == naive_golden(qm, dq, sparse)


@pytest.mark.parametrize("model", ["tiny", "small", "kaggle", "mt-wnd"])
def test_golden_tracks_float_at_16_bits(model):
    """float vs fixed: a tolerance, reported by `recfabric accuracy` as an accuracy figure."""
    spec = get_model(model)
    w = random_weights(spec, seed=1)
    qm = quantize_model(w, *synthetic_batch(spec, 512, seed=2), bits=16)
    dense, sparse = synthetic_batch(spec, 256, seed=6)
    g = golden_forward(qm, qm.quantize_dense(dense), sparse)
    p = float_forward(w, dense, sparse)
    assert g.scores.shape == (256, spec.num_outputs)
    assert np.abs(g.probabilities - p).max() < 0.01


def test_empty_multi_hot_bag_pools_to_zero():
    spec = get_model("tiny")
    w = random_weights(spec)
    qm = quantize_model(w, *synthetic_batch(spec, 64), bits=16)
    dense, sparse = synthetic_batch(spec, 2)
    sparse[1] = Bags(sparse[1].ids, np.array([0, 2]))
    g = golden_forward(qm, qm.quantize_dense(dense), sparse)
    assert g.pooled[1][0].tolist() == [0] * spec.sparse[1].dim


def test_input_errors_name_feature_and_request():
    spec = get_model("tiny")
    w = random_weights(spec)
    dense, sparse = synthetic_batch(spec, 4)
    bad = list(sparse)
    bad[0] = Bags(sparse[0].ids.copy(), sparse[0].lengths)
    bad[0].ids[2, 0] = 16
    with pytest.raises(ValueError, match=r"feature 'a', request 2: ID 16 out of range 0..15"):
        float_forward(w, dense, bad)
    bad[0] = Bags(sparse[0].ids, np.array([1, 1, 0, 1]))
    with pytest.raises(ValueError, match="request 2: bag of 0 IDs, allowed 1..1"):
        float_forward(w, dense, bad)
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        float_forward(w, dense[:, :1], sparse)
    with pytest.raises(ValueError, match="NaN"):
        float_forward(w, np.full_like(dense, np.nan), sparse)
    qm = quantize_model(w, dense, sparse, bits=8)
    with pytest.raises(ValueError, match="outside the dense format"):
        golden_forward(qm, np.full(dense.shape, 200), sparse)
    with pytest.raises(ValueError, match="2 sparse features given, model has 3"):
        float_forward(w, dense, sparse[:2])


def test_weights_checked_against_spec_and_saved(tmp_path):
    spec = get_model("tiny")
    w = random_weights(spec)
    with pytest.raises(ValueError, match="top layer 0 is 8->1, spec says 18->8"):
        ModelWeights(spec, w.tables, [], [w.top[1], w.top[1]])
    path = tmp_path / "w.npz"
    w.save(path)
    w2 = ModelWeights.load(path)
    dense, sparse = synthetic_batch(spec, 8)
    assert np.array_equal(float_forward(w, dense, sparse), float_forward(w2, dense, sparse))


def test_hashed_tables_deterministic_and_in_range():
    spec = get_model("microrec-small")
    t1 = random_weights(spec, seed=7).tables[29]  # the 10M-row table, never materialized
    t2 = random_weights(spec, seed=7).tables[29]
    ids = np.array([0, 9_999_999, 12345])
    assert np.array_equal(t1.gather(ids), t2.gather(ids))
    assert np.array_equal(t1.gather(ids)[1], t1.gather(np.array([9_999_999]))[0])
    assert np.abs(t1.gather(ids)).max() <= t1.max_abs()
    with pytest.raises(IndexError):
        t1.gather(np.array([10_000_000]))
