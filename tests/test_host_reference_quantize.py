import numpy as np
import pytest

from recfabric.host import numerics as nx
from recfabric.host.model.synthetic import synthetic_batch, zipf_ids
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.reference.quantize import accuracy_report, auc, log_loss, quantize_model


def test_auc_against_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.4
    s = np.round(rng.random(200), 1)  # many ties
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auc(y, s) == pytest.approx(pairwise, abs=1e-12)
    assert auc([0, 1], [0.1, 0.9]) == 1.0
    assert np.isnan(auc([1, 1], [0.1, 0.9]))
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))


def test_formats_cover_calibration_and_final_layer_feeds_sigmoid():
    spec = get_model("small")
    w = random_weights(spec)
    cd, cs = synthetic_batch(spec, 512, seed=1)
    qm = quantize_model(w, cd, cs, bits=8, formats="shared")
    assert qm.top[-1].out_fmt == nx.SIGMOID_IN and not qm.top[-1].relu
    assert all(l.relu for l in qm.top[:-1])
    for layer, fl in zip(qm.top, w.top):
        assert np.abs(layer.w).max() <= 127
        # The weight scale is the tightest one that covers the largest weight.
        assert layer.w_fmt.frac == nx.choose_frac(float(np.abs(fl.weight).max()), 8)
    assert qm.acc_bits == 32 and qm.dense_fmt == qm.emb_fmt


def test_bottom_mlp_output_lands_in_embedding_format():
    spec = get_model("rmc1")
    qm = quantize_model(random_weights(spec), *synthetic_batch(spec, 64, seed=1), bits=16,
                        formats="shared")
    assert qm.bottom[-1].out_fmt == qm.emb_fmt
    assert qm.bottom[0].in_fmt == qm.dense_fmt
    assert qm.top[0].in_fmt == qm.emb_fmt


def test_bad_width_rejected():
    spec = get_model("tiny")
    with pytest.raises(ValueError, match="8 or 16 bits, not 12"):
        quantize_model(random_weights(spec), *synthetic_batch(spec, 8), bits=12)


def test_zipf_ids_skewed_and_in_range():
    rng = np.random.default_rng(0)
    ids = zipf_ids(rng, 1000, 20000, a=1.1)
    assert ids.min() >= 0 and ids.max() < 1000
    counts = np.sort(np.bincount(ids, minlength=1000))[::-1]
    assert counts[:10].sum() > 0.3 * len(ids), "the ten hottest IDs should carry much traffic"


def test_accuracy_report_figures_consistent():
    r = accuracy_report(random_weights(get_model("tiny")), bits=16, batch=2048)
    assert 0 <= r["mean_abs_error"] <= r["max_abs_error"] < 0.01
    assert 0.5 < r["auc_float"] <= 1 and abs(r["auc_fixed"] - r["auc_float"]) < 0.01
    assert r["logloss_diff"] == pytest.approx(r["logloss_fixed"] - r["logloss_float"])
    r8 = accuracy_report(random_weights(get_model("tiny")), bits=8, batch=2048)
    assert r8["mean_abs_error"] > r["mean_abs_error"], "int8 must cost more accuracy than int16"
