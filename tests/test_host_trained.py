"""Trained-model accuracy benchmark: D.npz data format, AUC and bootstrap, training and cache,
`recfabric accuracy --trained` / `--weights --data`."""

import json

import numpy as np
import pytest

from recfabric.host.bench.trained import bootstrap, evaluate, fast_auc
from recfabric.host.cli import main
from recfabric.host.model.dataset import (
    DatasetError,
    bags_from_offsets,
    load_calibration,
    load_dataset,
    save_dataset,
)
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.reference.golden import Bags, float_forward
from recfabric.host.reference.quantize import auc


def test_fast_auc_equals_the_reference_auc_with_ties():
    rng = np.random.default_rng(1)
    for n in (5, 17, 3000):
        y = np.arange(n) % 3 == 0  # both classes present
        rng.shuffle(y)
        s = np.round(rng.random(n), 2)  # many ties
        assert fast_auc(y, s) == pytest.approx(auc(y, s), abs=1e-12)
    assert np.isnan(fast_auc([1, 1], [0.2, 0.3]))


def test_bootstrap_intervals_bracket_the_estimates():
    rng = np.random.default_rng(2)
    p = rng.random(4000)
    y = rng.random(4000) < p
    q = np.clip(p + rng.normal(0, 0.02, 4000), 0, 1)
    ci = bootstrap(y, p, q, resamples=100)
    assert ci["auc_float"][0] < fast_auc(y, p) < ci["auc_float"][1]
    assert ci["auc_diff"][0] <= fast_auc(y, q) - fast_auc(y, p) <= ci["auc_diff"][1]
    assert ci["auc_float"][1] - ci["auc_float"][0] > 0.005  # a real interval, not a point


def _user_files(tmp_path, n=600):
    spec = get_model("tiny")
    w = random_weights(spec, seed=3)
    dense, sparse = synthetic_batch(spec, n, seed=4)
    labels = np.random.default_rng(5).random(n) < float_forward(w, dense, sparse)[:, 0]
    w.save(tmp_path / "w.npz")
    save_dataset(tmp_path / "d.npz", dense, sparse, labels)
    return spec, w, dense, sparse, labels


def test_dataset_round_trip(tmp_path):
    spec, _, dense, sparse, labels = _user_files(tmp_path)
    d = load_dataset(tmp_path / "d.npz", spec)
    np.testing.assert_array_equal(d.dense, dense)
    np.testing.assert_array_equal(d.labels, labels.astype(np.int64))
    for a, b in zip(d.sparse, sparse):
        np.testing.assert_array_equal(a.lengths, b.lengths)
        np.testing.assert_array_equal(np.where(a.mask(), a.ids, -1)[:, :b.ids.shape[1]],
                                      np.where(b.mask(), b.ids, -1)[:, :a.ids.shape[1]])
    cd, cs = load_calibration(tmp_path / "d.npz", spec, max_requests=100)
    assert cd.shape == (100, spec.dense) and all(b.batch == 100 for b in cs)


def test_offsets_in_both_conventions():
    a = bags_from_offsets(np.array([4, 5, 6, 7]), np.array([0, 1, 1]), 3)
    b = bags_from_offsets(np.array([4, 5, 6, 7]), np.array([0, 1, 1, 4]), 3)
    for bags in (a, b):
        assert bags.lengths.tolist() == [1, 0, 3]
        assert bags.ids[2].tolist() == [5, 6, 7] and bags.ids[0, 0] == 4


def test_dataset_errors_name_the_key_feature_and_request(tmp_path):
    spec, _, dense, sparse, labels = _user_files(tmp_path, n=20)
    bad = [Bags(b.ids.copy(), b.lengths.copy()) for b in sparse]
    bad[1].ids[7, 0] = 999
    save_dataset(tmp_path / "bad.npz", dense, bad, labels)
    with pytest.raises(DatasetError, match=r"feature 'b', request 7: ID 999 out of range"):
        load_dataset(tmp_path / "bad.npz", spec)
    np.savez(tmp_path / "missing.npz", dense=dense)
    with pytest.raises(DatasetError, match="missing ids_0, ids_1, ids_2, offsets_0"):
        load_dataset(tmp_path / "missing.npz", spec)
    save_dataset(tmp_path / "nolabels.npz", dense, sparse)
    with pytest.raises(DatasetError, match="no 'labels'"):
        load_dataset(tmp_path / "nolabels.npz", spec, need_labels=True)
    with pytest.raises(DatasetError, match="dense must be a numeric \\(N, 2\\) array"):
        save_dataset(tmp_path / "wide.npz", np.zeros((20, 3)), sparse, labels)
        load_dataset(tmp_path / "wide.npz", spec)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope.npz", spec)


def test_accuracy_on_user_weights_and_data(tmp_path, capsys):
    _user_files(tmp_path)
    assert main(["accuracy", "tiny", "--weights", str(tmp_path / "w.npz"), "--data",
                 str(tmp_path / "d.npz"), "--bootstrap", "20", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["requests"] == 600 and r["calibration"].startswith("first 600 requests")
    got = {(v["bits"], v["formats"]): v for v in r["variants"]}
    assert set(got) == {(16, "per-table"), (16, "shared"), (8, "per-table"), (8, "shared")}
    assert abs(got[16, "per-table"]["auc_diff"]) < 0.002
    for v in got.values():
        lo, hi = v["ci"]["auc_diff"]
        assert lo <= v["auc_diff"] <= hi
    assert main(["accuracy", "small", "--weights", str(tmp_path / "w.npz"), "--data",
                 str(tmp_path / "d.npz")]) == 2
    assert "is for model 'tiny', not 'small'" in capsys.readouterr().err


torch = pytest.importorskip("torch")


def test_training_is_cached_and_deterministic(tmp_path):
    from recfabric.host.model.training import Recipe, trained_model
    recipe = Recipe(name="t", rows=(50, 80, 30), bags=(1, 2, 1), dim=4, dense=3, top=(8, 1),
                    train_requests=3000, test_requests=1500, epochs=2, lr=1e-2)
    a = trained_model("t", recipe=recipe, directory=tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "info.json", "test.npz", "train.npz", "weights.npz"]
    b = trained_model("t", recipe=recipe, directory=tmp_path / "b")  # trained again
    c = trained_model("t", recipe=recipe, directory=tmp_path / "a")  # from the cache
    for other in (b, c):
        np.testing.assert_array_equal(other.weights.top[0].weight, a.weights.top[0].weight)
        np.testing.assert_array_equal(other.weights.tables[1].values, a.weights.tables[1].values)
        np.testing.assert_array_equal(other.test.labels, a.test.labels)
    r = evaluate(a.weights, a.train.take(slice(0, 1000)), a.test, resamples=20)
    assert r["auc_float"] > 0.6, "the planted signal must be learnable"
    v16 = next(v for v in r["variants"] if v["bits"] == 16 and v["formats"] == "per-table")
    assert abs(v16["auc_diff"]) < 0.001 and v16["max_abs_error"] < 0.01


def test_unknown_trained_model_is_refused():
    from recfabric.host.model.training import trained_model
    with pytest.raises(ValueError, match="unknown trained model 'x': choose one of wnd, dlrm"):
        trained_model("x")
