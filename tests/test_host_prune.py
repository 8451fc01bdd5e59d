"""Structured pruning: widths, the cycle target, exact bias folding of constant neurons, the
neuron choice, and `recfabric prune` on user weights and data (modelled and simulated cycles)."""

import json

import numpy as np
import pytest

from recfabric.host.bench.prune import (
    keep_for_cycles,
    mlp_cycles,
    prune_weights,
    pruned_widths,
)
from recfabric.host.cli import main
from recfabric.host.compiler.cycle_model import MLPCycleModel
from recfabric.host.model.dataset import Dataset, save_dataset
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.reference.golden import float_forward
from recfabric.hw.config import get_preset

SPEC = ModelSpec(name="p", sparse=(SparseFeature("a", 30, 8), SparseFeature("b", 50, 8, bag=3)),
                 dense=4, top_mlp=(24, 12, 1))


def test_widths_and_the_cycle_target():
    assert pruned_widths(SPEC, 0.5) == (12, 6, 1)
    assert pruned_widths(SPEC, 0.01) == (1, 1, 1)
    with pytest.raises(ValueError, match="keep must be a fraction in \\(0, 1\\], not 1.5"):
        pruned_widths(SPEC, 1.5)
    small = get_preset("small")
    m = mlp_cycles(SPEC, small)
    assert m.ii == MLPCycleModel(list(small.mlp_top_shapes), (20, 24, 12, 1)).ii
    target = m.ii / 2
    keep = keep_for_cycles(SPEC, small, target)
    assert mlp_cycles(SPEC, small, pruned_widths(SPEC, keep)).ii <= target
    assert mlp_cycles(SPEC, small, pruned_widths(SPEC, keep + 0.05)).ii > target
    with pytest.raises(ValueError, match="--target-cycles 1 is out of reach on 'small'"):
        keep_for_cycles(SPEC, small, 1)


def _data(spec, n, seed):
    d, s = synthetic_batch(spec, n, seed=seed)
    return Dataset(d, s, None)


def test_constant_neurons_are_removed_exactly():
    """Constant neurons (zero weights, positive bias) have zero spread: activation-based pruning
    removes them first and folds their constant into the next layer's bias, so the pruned model
    computes what the original did."""
    spec = ModelSpec(name="p1", sparse=SPEC.sparse, dense=4, top_mlp=(24, 1))
    w = random_weights(spec, seed=1)
    dead = [3, 7, 11, 19]
    w.top[0].weight[dead] = 0
    w.top[0].bias[dead] = np.array([0.5, 1.0, 0.25, 2.0], np.float32)
    data = _data(spec, 512, 2)
    pruned = prune_weights(w, 20 / 24, "activation", data)
    assert pruned.spec.top_mlp == (20, 1)
    kept = [i for i in range(24) if i not in dead]
    np.testing.assert_array_equal(pruned.top[0].weight, w.top[0].weight[kept])
    want = w.top[1].bias + w.top[1].weight[:, dead] @ w.top[0].bias[dead]
    np.testing.assert_allclose(pruned.top[1].bias, want, rtol=1e-6)
    other = _data(spec, 256, 3)  # exact on any input, not only the statistics batch
    np.testing.assert_allclose(float_forward(pruned, other.dense, other.sparse),
                               float_forward(w, other.dense, other.sparse), atol=1e-6)
    # Without data, nothing is folded: the model changes.
    blind = prune_weights(w, 20 / 24, "magnitude")
    assert not np.allclose(float_forward(blind, other.dense, other.sparse),
                           float_forward(w, other.dense, other.sparse), atol=1e-3)


def test_magnitude_keeps_the_strongest_neurons():
    w = random_weights(SPEC, seed=3)
    w.top[0].weight[5] *= 100  # neuron 5 of layer 0: huge incoming weights
    w.top[1].weight[:, 5] *= 0.001  # ... but almost no outgoing weight: product ~ 0.1x
    w.top[0].weight[9] *= 50
    pruned = prune_weights(w, 0.5, "magnitude")
    rows = {tuple(r) for r in pruned.top[0].weight.round(6)}
    assert tuple(w.top[0].weight[9].round(6)) in rows
    with pytest.raises(ValueError, match="method must be one of magnitude, activation"):
        prune_weights(w, 0.5, "random")
    with pytest.raises(ValueError, match="activation-based pruning needs data"):
        prune_weights(w, 0.5, "activation")


def _files(tmp_path, n=2000):
    w = random_weights(SPEC, seed=4)
    dense, sparse = synthetic_batch(SPEC, n, seed=5)
    p = float_forward(w, dense, sparse)[:, 0]
    labels = np.random.default_rng(6).random(n) < p
    SPEC.save(tmp_path / "p.json")
    w.save(tmp_path / "w.npz")
    save_dataset(tmp_path / "d.npz", dense, sparse, labels)


def test_prune_command_on_user_weights_and_data(tmp_path, capsys):
    _files(tmp_path)
    args = ["prune", str(tmp_path / "p.json"), "--weights", str(tmp_path / "w.npz"), "--data",
            str(tmp_path / "d.npz")]
    assert main([*args, "--keep", "0.5", "--simulate", "-o", str(tmp_path / "out.npz"),
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["top_mlp_pruned"] == [12, 6, 1] and r["requests"] == 400
    assert r["cycles_modelled_pruned"] < r["cycles_modelled"]
    sim = r["simulated"]
    assert sim["original"]["match"] and sim["pruned"]["match"]
    # Simulated steady-state spacing vs the cycle model (which averages bank-bound bursts).
    for k, m in (("original", r["cycles_modelled"]), ("pruned", r["cycles_modelled_pruned"])):
        assert abs(sim[k]["cycles_per_inference"] - m) <= 0.05 * m, (k, sim[k], m)
    assert (tmp_path / "out.npz").exists() and (tmp_path / "out.json").exists()
    assert main([*args, "--target-cycles", "1"]) == 2
    assert "out of reach" in capsys.readouterr().err


def test_fine_tuning_reports_a_control(tmp_path, capsys):
    pytest.importorskip("torch")
    _files(tmp_path)
    assert main(["prune", str(tmp_path / "p.json"), "--weights", str(tmp_path / "w.npz"),
                 "--data", str(tmp_path / "d.npz"), "--keep", "0.5", "--finetune", "1",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["auc_float_change_vs_control"] == pytest.approx(
        r["auc_float_pruned"] - r["auc_float_control"])
