"""from_torch's forward-pass check: every silent mis-import of issue 14 is caught or resolved."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from recfabric.host.model.spec import SpecError  # noqa: E402
from recfabric.host.model.synthetic import synthetic_batch  # noqa: E402
from recfabric.host.model.torch_io import bags_to_torch, from_torch, to_torch  # noqa: E402
from recfabric.host.model.weights import random_weights  # noqa: E402
from recfabric.host.reference.golden import float_forward  # noqa: E402


class User(nn.Module):
    """A user's model: EmbeddingBags, a bottom and a top MLP, and a forward() with options that
    change the maths without changing the structure."""

    def __init__(self, rows=(11, 40, 7), dim=4, dense=5, bottom=(), top=(9, 6, 1), *,
                 order="dense-first", act="relu", psw=False, interaction="concat", seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.order, self.act, self.psw, self.kind = order, act, psw, interaction
        self.emb = nn.ModuleList(nn.EmbeddingBag(r, dim, mode="sum") for r in rows)
        n = dense
        self.bot = nn.ModuleList()
        for w in bottom:
            self.bot.append(nn.Linear(n, w))
            n = w
        if interaction == "concat":
            n = n + dim * len(rows)
        else:
            k = len(rows) + 1
            n = n + k * (k - 1) // 2
        self.mlp = nn.ModuleList()
        for w in top:
            self.mlp.append(nn.Linear(n, w))
            n = w

    def forward(self, dense, sparse):
        f = torch.tanh if self.act == "tanh" else torch.relu
        x = dense
        for layer in self.bot:
            x = torch.relu(layer(x))
        pooled = []
        for e, (i, o) in zip(self.emb, sparse):
            if self.psw:  # mean pooling written as weighted sum pooling
                lengths = torch.diff(torch.cat([o, torch.tensor([len(i)])]))
                w = (1.0 / lengths.clamp(min=1).float()).repeat_interleave(lengths)
                pooled.append(e(i, o, per_sample_weights=w))
            else:
                pooled.append(e(i, o))
        if self.kind == "dot":
            v = torch.stack([x, *pooled], dim=1)
            z = torch.bmm(v, v.transpose(1, 2))
            li, lj = np.tril_indices(v.shape[1], k=-1)
            z = torch.cat([x, z[:, li, lj]], dim=1)
        elif self.order == "dense-first":
            z = torch.cat([x, *pooled], dim=1)
        else:
            z = torch.cat([*pooled, x], dim=1)
        for k, layer in enumerate(self.mlp):
            z = layer(z)
            if k + 1 < len(self.mlp):
                z = f(z)
        return torch.sigmoid(z)


def _max_diff(module, weights, n=256, seed=3):
    dense, sparse = synthetic_batch(weights.spec, n, seed=seed)
    with torch.no_grad():
        want = module(torch.from_numpy(dense), [bags_to_torch(b) for b in sparse]).numpy()
    return float(np.abs(float_forward(weights, dense, sparse) - want).max())


def test_a_faithful_module_imports_and_reproduces_its_forward():
    user = User(bottom=(6,))
    w = from_torch(user, bags=(1, 3, 2))
    assert _max_diff(user, w) < 1e-5


def test_concat_with_the_dense_part_last_is_reordered_not_misread():
    user = User(order="dense-last")
    unchecked = from_torch(user, bags=(1, 3, 2), check=False)
    assert _max_diff(user, unchecked) > 0.01, "structure alone imports another model"
    w = from_torch(user, bags=(1, 3, 2))
    assert _max_diff(user, w) < 1e-5
    first = user.mlp[0].weight.detach().numpy()
    np.testing.assert_array_equal(w.top[0].weight[:, :5], first[:, 12:])  # dense columns first


def test_functional_tanh_is_refused_naming_the_difference():
    user = User(act="tanh")
    assert _max_diff(user, from_torch(user, check=False)) > 0.01
    with pytest.raises(SpecError, match=r"does not reproduce the module's forward pass: "
                                        r"probabilities differ by up to 0\.\d+ .*tolerance 1e-05"
                                        r".*Tried: concat, dense first \(0\.\d+\); concat, dense "
                                        r"last \(0\.\d+\)"):
        from_torch(user)


def test_per_sample_weights_are_refused():
    user = User(psw=True)
    assert _max_diff(user, from_torch(user, bags=(2, 3, 4), check=False)) > 1e-3
    with pytest.raises(SpecError, match="per_sample_weights"):
        from_torch(user, bags=(2, 3, 4))


def test_dot_widths_equal_to_concat_widths_are_decided_by_the_check():
    # 3 tables of dim 2 after a bottom MLP to 2: concat 2 + 3*2 = 8 = dot 2 + 4*3/2 inputs.
    dot = User(rows=(9, 13, 6), dim=2, dense=3, bottom=(5, 2), top=(7, 1), interaction="dot")
    unchecked = from_torch(dot, check=False)
    assert unchecked.spec.interaction == "concat" and _max_diff(dot, unchecked) > 1e-3
    w = from_torch(dot)
    assert w.spec.interaction == "dot" and _max_diff(dot, w) < 1e-5
    cat = User(rows=(9, 13, 6), dim=2, dense=3, bottom=(5, 2), top=(7, 1))
    w = from_torch(cat)
    assert w.spec.interaction == "concat" and _max_diff(cat, w) < 1e-5


def test_a_given_spec_is_checked_too():
    user = User(act="tanh")
    spec = from_torch(user, check=False).spec
    with pytest.raises(SpecError, match="does not reproduce"):
        from_torch(user, spec)
    assert from_torch(user, spec, check=False).spec == spec


def test_a_forward_that_cannot_be_called_says_how_to_help():
    class Odd(User):
        def forward(self, batch):  # one dict argument
            return super().forward(batch["dense"], batch["sparse"])
    user = Odd()
    with pytest.raises(SpecError, match=r"cannot check the import: Odd\(dense, \[\(indices, "
                                        r"offsets\), \.\.\.\]\) failed .*pass forward="):
        from_torch(user)
    w = from_torch(user, forward=lambda m, d, s: m({"dense": d, "sparse": s}))
    assert _max_diff(User(), w) < 1e-5  # same seed: the same parameters


def test_exported_models_pass_their_own_check():
    from recfabric.host.model.zoo import get_model
    w = random_weights(get_model("small"), seed=4)
    back = from_torch(to_torch(w), sample=synthetic_batch(w.spec, 32, seed=9))
    assert back.spec == w.spec
