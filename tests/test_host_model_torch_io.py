"""PyTorch import/export (host/torch_io.py): float reference vs PyTorch, exact round trips, spec
inference. Skipped as a whole when PyTorch is not installed (it is an optional extra)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from recfabric.host.model import torch_io  # noqa: E402
from recfabric.host.model.spec import ModelSpec, SparseFeature, SpecError  # noqa: E402
from recfabric.host.model.synthetic import synthetic_batch  # noqa: E402
from recfabric.host.model.torch_io import bags_to_torch, from_torch, to_torch  # noqa: E402
from recfabric.host.model.weights import ArrayTable, random_weights  # noqa: E402
from recfabric.host.model.zoo import get_model  # noqa: E402
from recfabric.host.reference.golden import Bags, float_forward  # noqa: E402

DOT_HEADS = ModelSpec(
    name="dot-heads", sparse=(SparseFeature("u", 50, 4, bag=3), SparseFeature("v", 70, 4),
                              SparseFeature("w", 9, 4, bag=2)),
    dense=3, bottom_mlp=(8, 4), interaction="dot", top_mlp=(8,), heads=((4, 1), (1,)))
SPECS = [
    get_model("tiny"),
    get_model("small"),
    DOT_HEADS,
    ModelSpec(name="bottom-concat", sparse=(SparseFeature("a", 20, 3, bag=4),), dense=5,
              bottom_mlp=(6, 2), top_mlp=(7, 1)),
    ModelSpec(name="dense-only", dense=4, top_mlp=(3, 1)),
    ModelSpec(name="sparse-only", sparse=(SparseFeature("a", 30, 5), SparseFeature("b", 6, 2)),
              top_mlp=(1,)),
]


def _probs(model, dense, sparse):
    with torch.no_grad():
        return model(dense, sparse).numpy()


def _assert_same_weights(a, b):
    assert a.spec == b.spec
    for ta, tb in zip(a.tables, b.tables, strict=True):
        np.testing.assert_array_equal(ta.gather(np.arange(ta.rows)), tb.gather(np.arange(tb.rows)))
    pairs = list(zip(a.bottom + a.top, b.bottom + b.top, strict=True))
    pairs += [p for ha, hb in zip(a.heads, b.heads, strict=True)
              for p in zip(ha, hb, strict=True)]
    for la, lb in pairs:
        np.testing.assert_array_equal(la.weight, lb.weight)
        np.testing.assert_array_equal(la.bias, lb.bias)
        assert lb.weight.dtype == np.float32


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_float_reference_matches_pytorch(spec):
    weights = random_weights(spec, seed=7)
    model = to_torch(weights)
    dense, sparse = synthetic_batch(spec, 512, seed=5)
    probs, logits = float_forward(weights, dense, sparse, return_logits=True)
    got = _probs(model, dense, sparse)
    assert got.shape == probs.shape == (512, spec.num_outputs)
    assert np.abs(got - probs).max() < 1e-5
    with torch.no_grad():
        np.testing.assert_allclose(model.logits(dense, sparse).numpy(), logits, rtol=1e-4,
                                   atol=1e-5)
    assert probs.std() > 0.01  # the comparison is over a spread of scores, not a constant


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_weights_torch_weights_round_trip_is_exact(spec):
    weights = random_weights(spec, seed=2)
    back = from_torch(to_torch(weights))
    _assert_same_weights(weights, back)
    assert all(isinstance(t, ArrayTable) for t in back.tables)
    _assert_same_weights(back, from_torch(to_torch(back)))


def test_state_dict_round_trip_through_a_fresh_module():
    """The training workflow: export, save the state dict, load it into a new RecModel."""
    weights = random_weights(DOT_HEADS, seed=4)
    fresh = torch_io.RecModel(DOT_HEADS)
    fresh.load_state_dict(to_torch(weights).state_dict())
    _assert_same_weights(weights, from_torch(fresh))


def test_export_does_not_alias_the_numpy_weights():
    spec = get_model("tiny")
    weights = from_torch(to_torch(random_weights(spec)))
    before = weights.tables[0].values.copy()
    model = to_torch(weights)
    with torch.no_grad():
        model.embeddings[0].weight.add_(1.0)
    np.testing.assert_array_equal(weights.tables[0].values, before)


def test_forward_takes_embedding_bag_offsets_too():
    spec = get_model("small")
    model = to_torch(random_weights(spec))
    dense, sparse = synthetic_batch(spec, 64, seed=1)
    raw = [bags_to_torch(b) for b in sparse]
    np.testing.assert_array_equal(_probs(model, torch.from_numpy(dense), raw),
                                  _probs(model, dense, sparse))


def test_bags_to_torch_layout():
    bags = Bags(np.array([[4, 9, 9], [7, 7, 7], [1, 2, 3]]), np.array([1, 0, 3]))
    ind, off = bags_to_torch(bags)
    assert ind.tolist() == [4, 1, 2, 3] and off.tolist() == [0, 1, 1]
    assert ind.dtype == off.dtype == torch.int64


# ---- spec inference ---------------------------------------------------------------------

class UserDLRM(nn.Module):
    """A model written the way a PyTorch user would: Sequential MLPs, its own forward."""

    def __init__(self, rows, dim, dense, bottom, top):
        super().__init__()
        self.emb = nn.ModuleList(nn.EmbeddingBag(r, dim, mode="sum") for r in rows)
        layers, n = [], dense
        for w in bottom:
            layers += [nn.Linear(n, w), nn.ReLU()]
            n = w
        self.bot = nn.Sequential(*layers)
        layers, n = [], n + dim * len(rows)
        for i, w in enumerate(top):
            layers += [nn.Linear(n, w)] + ([nn.ReLU(), nn.Dropout(0.0)] if i + 1 < len(top)
                                           else [nn.Sigmoid()])
            n = w
        self.mlp = nn.Sequential(*layers)

    def forward(self, dense, sparse):
        x = self.bot(dense)
        pooled = [e(i, o) for e, (i, o) in zip(self.emb, sparse, strict=True)]
        return self.mlp(torch.cat([x, *pooled], dim=1))


@pytest.mark.parametrize("bottom", [(), (6,), (8, 3)])
def test_spec_inference_on_a_user_model(bottom):
    torch.manual_seed(0)
    user = UserDLRM(rows=(11, 40, 7), dim=4, dense=5, bottom=bottom, top=(9, 6, 1))
    weights = from_torch(user, bags=(1, 3, 2), name="user")
    spec = weights.spec
    assert spec.name == "user" and spec.interaction == "concat"
    assert [(f.name, f.rows, f.dim, f.bag) for f in spec.sparse] == [
        ("emb.0", 11, 4, 1), ("emb.1", 40, 4, 3), ("emb.2", 7, 4, 2)]
    assert (spec.dense, spec.bottom_mlp, spec.top_mlp) == (5, bottom, (9, 6, 1))
    dense, sparse = synthetic_batch(spec, 256, seed=3)
    with torch.no_grad():
        want = user(torch.from_numpy(dense), [bags_to_torch(b) for b in sparse]).numpy()
    assert np.abs(float_forward(weights, dense, sparse) - want).max() < 1e-5


def test_spec_inference_of_a_dot_interaction_with_heads():
    """A module with RecModel's attribute names but no spec: dot is inferred from the widths."""
    exported = to_torch(random_weights(DOT_HEADS, seed=1))

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings, self.bottom = exported.embeddings, exported.bottom
            self.top, self.heads = exported.top, exported.heads

    weights = from_torch(Plain(), bags=[3, 1, 2])
    s = weights.spec
    assert (s.interaction, s.dense, s.bottom_mlp, s.top_mlp, s.heads) == (
        "dot", 3, (8, 4), (8,), ((4, 1), (1,)))
    assert [f.bag for f in s.sparse] == [3, 1, 2]
    renamed = ModelSpec.from_json({**s.to_json(), "name": DOT_HEADS.name,
                                   "sparse": [f.to_json() for f in DOT_HEADS.sparse]})
    _assert_same_weights(random_weights(DOT_HEADS, seed=1), from_torch(Plain(), renamed))


def test_given_spec_overrides_and_is_checked():
    spec = ModelSpec(name="given", sparse=(SparseFeature("a", 16, 4), SparseFeature("b", 32, 4, 3),
                                           SparseFeature("c", 8, 4)), dense=2, top_mlp=(8, 1))
    user = UserDLRM(rows=(16, 32, 8), dim=4, dense=2, bottom=(), top=(8, 1))
    weights = from_torch(user, spec)  # names and bag sizes from the spec
    assert weights.spec == spec
    assert from_torch(user).spec.sparse[1].bag == 1  # what inference alone would say
    with pytest.raises(SpecError, match=r"module has 2 Linear layers, spec 'small' has 3"):
        from_torch(user, get_model("small"))
    wrong_rows = ModelSpec.from_json({**spec.to_json(), "sparse": [
        {"name": "a", "rows": 17, "dim": 4}, {"name": "b", "rows": 32, "dim": 4, "bag": 3},
        {"name": "c", "rows": 8, "dim": 4}]})
    with pytest.raises(SpecError, match=r"table for 'a' is 16 x 4, spec says 17 x 4"):
        from_torch(user, wrong_rows)


# ---- errors ---------------------------------------------------------------------------------

def test_unsupported_modules_are_named():
    user = UserDLRM(rows=(5,), dim=2, dense=1, bottom=(), top=(1,))
    user.emb[0] = nn.EmbeddingBag(5, 2, mode="mean")
    with pytest.raises(SpecError, match=r"emb\.0: EmbeddingBag mode must be 'sum', not 'mean'"):
        from_torch(user)
    user.emb[0] = nn.EmbeddingBag(5, 2, mode="sum", padding_idx=0)
    with pytest.raises(SpecError, match=r"emb\.0: EmbeddingBag padding_idx 0 is not supported"):
        from_torch(user)
    user.emb[0] = nn.Embedding(5, 2)
    with pytest.raises(SpecError, match=r"emb\.0: nn\.Embedding is not supported"):
        from_torch(user)
    user.emb[0] = nn.EmbeddingBag(5, 2, mode="sum")
    user.mlp.append(nn.BatchNorm1d(1))
    with pytest.raises(SpecError, match=r"mlp\.2: BatchNorm1d is not supported"):
        from_torch(user)
    with pytest.raises(TypeError, match=r"from_torch needs an nn\.Module, not dict"):
        from_torch({})
    with pytest.raises(TypeError, match=r"to_torch needs ModelWeights, not ModelSpec"):
        to_torch(get_model("tiny"))


def test_uninferable_widths_ask_for_a_spec():
    m = nn.Sequential(nn.EmbeddingBag(5, 4, mode="sum"), nn.Linear(2, 3), nn.Linear(20, 1))
    with pytest.raises(SpecError, match=r"cannot infer the interaction: the top MLP takes 20 "
                                        r"inputs.*pass spec="):
        from_torch(m)
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(7, 4), nn.Linear(9, 1))
    with pytest.raises(SpecError, match=r"Linear 2 takes 9 inputs but the previous layer gives 4"):
        from_torch(m)
    with pytest.raises(SpecError, match=r"2 bag sizes given for 1 EmbeddingBags"):
        from_torch(nn.Sequential(nn.EmbeddingBag(5, 4, mode="sum"), nn.Linear(4, 1)),
                   bags=[1, 2])


def test_forward_validates_its_inputs():
    spec = get_model("tiny")
    model = to_torch(random_weights(spec))
    dense, sparse = synthetic_batch(spec, 4)
    sparse[0].ids[2, 0] = 99
    with pytest.raises(ValueError, match=r"feature 'a', request 2: ID 99 out of range 0\.\.15"):
        model(dense, sparse)
    with pytest.raises(ValueError, match=r"dense input must have shape \(batch, 2\), not "
                                         r"\(4, 3\)"):
        model(np.zeros((4, 3), np.float32), synthetic_batch(spec, 4)[1])


def test_missing_torch_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'recfabric\[torch\]'.*torch==2\.13\.0"):
        to_torch(random_weights(get_model("tiny")))
