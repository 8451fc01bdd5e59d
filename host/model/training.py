"""Trained benchmark models: synthetic click data with a planted signal, PyTorch training, cache.

Two models, trained the way users train them (Adam on a click log, PyTorch's or DLRM's own
initialisation), so that the fixed-point accuracy figures describe trained weights rather than
random ones:

``wnd``
    Wide-and-deep style deep tower: 8 sparse features (two multi-hot) of dim 8 and 8 dense
    features, concatenated (72 wide), top MLP 72-64-32-1. PyTorch's default initialisation
    (``nn.EmbeddingBag``: N(0, 1)). Fits the ``small`` hardware preset.
``dlrm``
    DLRM style: 8 dense features through a bottom MLP 8-32-16, 8 sparse features of dim 16, DLRM's
    pairwise dot interaction (16 + 36 = 52 wide), top MLP 52-64-32-1, DLRM's initialisation
    (tables uniform in +-sqrt(1/rows), layers normal with Glorot's variance). The golden model
    computes the dot interaction; the hardware does not run it yet.

Click data (:func:`click_data`): sparse IDs Zipf(1.1)-skewed as in
:func:`recfabric.host.model.synthetic.zipf_ids`, dense features ``log1p`` of exponential counts. The
planted signal: every table row has a hidden bias and a hidden 4-vector; the true logit is an
offset plus the bag-summed row biases, the pairwise dot products of the bag-summed hidden
vectors (scaled), a linear term and one product term of the dense features. Labels are drawn
from the true probability (positive rate about 0.25), so the best possible AUC is below 1 and
the trained model approaches it.

Everything is seeded: the same recipe gives the same data on every machine and, with one
PyTorch thread, the same weights. :func:`trained_model` caches weights and data under
``$RECFABRIC_CACHE`` (default ``~/.cache/recfabric``) in ``trained/<name>-<hash of the recipe>``
and re-makes them when they are missing (or when asked to).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .dataset import Dataset, load_dataset, save_dataset
from .spec import Bags, ModelSpec, SparseFeature
from .synthetic import zipf_ids
from .weights import ModelWeights

__all__ = ["Recipe", "RECIPES", "TRAINED_MODELS", "click_data", "train", "trained_model",
           "TrainedModel", "cache_dir"]

RECIPE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """How one benchmark model is made: shape, data sizes, initialisation, optimiser, seeds."""

    name: str
    rows: tuple = (1000, 5000, 20000, 500, 100, 2000, 10000, 300)
    bags: tuple = (1, 1, 1, 1, 1, 3, 4, 1)
    dim: int = 8
    dense: int = 8
    bottom: tuple = ()
    interaction: str = "concat"
    top: tuple = (64, 32, 1)
    init: str = "torch"  # "torch" (PyTorch defaults) or "dlrm"
    train_requests: int = 100_000
    test_requests: int = 25_000
    epochs: int = 4
    batch: int = 512
    lr: float = 2e-3
    data_seed: int = 14
    train_seed: int = 15

    def spec(self) -> ModelSpec:
        sparse = tuple(SparseFeature(f"f{i}", r, self.dim, b)
                       for i, (r, b) in enumerate(zip(self.rows, self.bags)))
        return ModelSpec(name=f"trained-{self.name}", sparse=sparse, dense=self.dense,
                         bottom_mlp=self.bottom, interaction=self.interaction,
                         top_mlp=self.top,
                         description=f"trained benchmark model {self.name!r} "
                                     "(recfabric.host.model.training)")

    def digest(self) -> str:
        text = json.dumps({"v": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


RECIPES = {
    "wnd": Recipe(name="wnd"),
    "dlrm": Recipe(name="dlrm", dim=16, bottom=(32, 16), interaction="dot", init="dlrm",
                   epochs=2),
}
TRAINED_MODELS = tuple(RECIPES)


# ---- click data with a planted signal ----------------------------------------------------

def _world(spec: ModelSpec, seed: int):
    """The hidden truth: per-row biases and 4-vectors, dense coefficients, the offset."""
    rng = np.random.default_rng([seed, 1])
    biases = [rng.normal(0.0, 0.6, f.rows) for f in spec.sparse]
    vecs = [rng.normal(0.0, 0.55, (f.rows, 4)) for f in spec.sparse]
    coef = rng.normal(0.0, 0.5 / np.sqrt(max(spec.dense, 1)), spec.dense)
    return biases, vecs, coef


def _true_logit(spec, world, dense, sparse):
    biases, vecs, coef = world
    z = np.zeros(len(dense))
    summed = []
    for bags, b, v in zip(sparse, biases, vecs):
        m = bags.mask()
        ids = np.where(m, bags.ids, 0)
        z += (b[ids] * m).sum(axis=1)
        summed.append((v[ids] * m[..., None]).sum(axis=1))
    for i in range(len(summed)):
        for j in range(i):
            z += 0.35 * (summed[i] * summed[j]).sum(axis=1)
    if spec.dense:
        xs = (dense - 1.5) / 0.8
        z += xs @ coef
        if spec.dense >= 2:
            z += 0.4 * np.tanh(xs[:, 0] * xs[:, 1])
    return z


def click_data(spec: ModelSpec, n: int, seed: int, part: int) -> Dataset:
    """``n`` labelled requests of ``spec`` from the planted-signal world of ``seed``; ``part``
    selects an independent sample (0: training, 1: held-out) of the same world."""
    world = _world(spec, seed)
    rng = np.random.default_rng([seed, 2, part])
    dense = np.log1p(rng.exponential(scale=4.0, size=(n, spec.dense))).astype(np.float32)
    sparse = []
    for i, f in enumerate(spec.sparse):
        ids = zipf_ids(rng, f.rows, (n, f.bag), 1.1, salt=i)
        lengths = (np.ones(n, np.int64) if f.bag == 1
                   else rng.integers(1, f.bag + 1, size=n).astype(np.int64))
        sparse.append(Bags(ids, lengths))
    z = _true_logit(spec, world, dense, sparse)
    # Offset chosen on a fixed reference so that about a quarter of requests are clicks.
    ref = np.random.default_rng([seed, 3])
    z0 = _true_logit(spec, world, *_reference_batch(spec, ref))
    offset = -1.9 - float(np.median(z0))
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-(z + offset)))).astype(np.int64)
    return Dataset(dense, sparse, labels)


def _reference_batch(spec, rng, n=4096):
    dense = np.log1p(rng.exponential(scale=4.0, size=(n, spec.dense))).astype(np.float32)
    sparse = []
    for i, f in enumerate(spec.sparse):
        ids = zipf_ids(rng, f.rows, (n, f.bag), 1.1, salt=i)
        sparse.append(Bags(ids, np.ones(n, np.int64)))
    return dense, sparse


# ---- training ---------------------------------------------------------------------------

def _dlrm_init(torch, model):
    """DLRM's initialisation: tables U(+-sqrt(1/rows)), layers N(0, 2/(in+out)) with biases
    N(0, 1/out)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for emb in model.embeddings:
            n = emb.num_embeddings
            emb.weight.uniform_(-np.sqrt(1.0 / n), np.sqrt(1.0 / n), generator=g)
        for lin in [*model.bottom, *model.top]:
            fan_out, fan_in = lin.weight.shape
            lin.weight.normal_(0.0, np.sqrt(2.0 / (fan_in + fan_out)), generator=g)
            lin.bias.normal_(0.0, np.sqrt(1.0 / fan_out), generator=g)


def _torch_batches(data: Dataset, order, batch: int):
    from .torch_io import bags_to_torch, require_torch
    torch = require_torch()
    out = []
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        part = data.take(idx)
        out.append((torch.from_numpy(part.dense), [bags_to_torch(b) for b in part.sparse],
                    torch.from_numpy(part.labels.astype(np.float32))))
    return out


def train(spec: ModelSpec, data: Dataset, *, init: str = "torch", epochs: int = 4,
          batch: int = 512, lr: float = 2e-3, seed: int = 0, model=None, progress=None):
    """Train ``spec`` (or continue training ``model``, a RecModel) on ``data`` with Adam and
    binary cross-entropy; one PyTorch thread, fixed seed. Returns the RecModel."""
    from .torch_io import _rec_model_class, require_torch
    torch = require_torch()
    say = progress or (lambda msg: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        if model is None:
            model = _rec_model_class()(spec)
            if init == "dlrm":
                _dlrm_init(torch, model)
            elif init != "torch":
                raise ValueError(f"init must be 'torch' or 'dlrm', not {init!r}")
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        rng = np.random.default_rng(seed)
        model.train()
        for epoch in range(epochs):
            t0 = time.perf_counter()
            total = 0.0
            batches = _torch_batches(data, rng.permutation(len(data)), batch)
            for dense, sparse, y in batches:
                opt.zero_grad()
                loss = loss_fn(model.logits(dense, sparse)[:, 0], y)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(y)
            say(f"epoch {epoch + 1}/{epochs}: training log-loss {total / len(data):.4f} "
                f"({time.perf_counter() - t0:.1f} s)")
        model.eval()
    finally:
        torch.set_num_threads(threads)
    return model


# ---- cache -------------------------------------------------------------------------------

def cache_dir() -> Path:
    """``$RECFABRIC_CACHE`` or ``~/.cache/recfabric``."""
    return Path(os.environ.get("RECFABRIC_CACHE", Path.home() / ".cache" / "recfabric"))


@dataclass
class TrainedModel:
    """A benchmark model with its data: float weights, training and held-out requests."""

    recipe: Recipe
    weights: ModelWeights
    train: Dataset
    test: Dataset
    directory: Path
    info: dict


def trained_model(name: str, *, retrain: bool = False, directory=None,
                  recipe: Recipe | None = None, progress=None) -> TrainedModel:
    """The benchmark model ``name`` (:data:`TRAINED_MODELS`), trained on first use and cached.

    ``recipe`` overrides the named recipe (tests train small ones); ``directory`` overrides the
    cache location; ``retrain`` re-makes data and weights even when cached.
    """
    from .torch_io import from_torch
    say = progress or (lambda msg: None)
    if recipe is None:
        if name not in RECIPES:
            raise ValueError(f"unknown trained model {name!r}: choose one of "
                             f"{', '.join(TRAINED_MODELS)}")
        recipe = RECIPES[name]
    spec = recipe.spec()
    d = Path(directory) if directory else cache_dir() / "trained" / f"{name}-{recipe.digest()}"
    files = [d / f for f in ("weights.npz", "train.npz", "test.npz", "info.json")]
    if not retrain and all(f.exists() for f in files):
        weights = ModelWeights.load(files[0])
        if weights.spec == spec:
            return TrainedModel(recipe, weights, load_dataset(files[1], spec),
                                load_dataset(files[2], spec), d,
                                json.loads(files[3].read_text()))
        say(f"cached weights in {d} are for another spec; re-making them")
    d.mkdir(parents=True, exist_ok=True)
    say(f"making {recipe.train_requests:,} training and {recipe.test_requests:,} held-out "
        f"requests (planted signal, seed {recipe.data_seed})")
    train_set = click_data(spec, recipe.train_requests, recipe.data_seed, part=0)
    test_set = click_data(spec, recipe.test_requests, recipe.data_seed, part=1)
    say(f"training {spec.name} ({recipe.init} init, Adam lr {recipe.lr}, {recipe.epochs} "
        f"epochs, batch {recipe.batch}) into {d}")
    t0 = time.perf_counter()
    model = train(spec, train_set, init=recipe.init, epochs=recipe.epochs, batch=recipe.batch,
                  lr=recipe.lr, seed=recipe.train_seed, progress=say)
    seconds = time.perf_counter() - t0
    weights = from_torch(model, spec)
    import torch
    info = {"recipe": asdict(recipe), "digest": recipe.digest(),
            "train_seconds": round(seconds, 2), "torch": torch.__version__,
            "positive_rate_train": float(train_set.labels.mean()),
            "positive_rate_test": float(test_set.labels.mean())}
    weights.save(files[0])
    save_dataset(files[1], train_set.dense, train_set.sparse, train_set.labels)
    save_dataset(files[2], test_set.dense, test_set.sparse, test_set.labels)
    files[3].write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return TrainedModel(recipe, weights, train_set, test_set, d, info)
