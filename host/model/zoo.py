"""Built-in model zoo: reference shapes addressable by name (``recfabric models`` lists them).

Shapes come from ../shared/MODELS.md (MicroRec, Criteo Kaggle DLRM, DeepRecSys). Table contents of
the published models are private; weights here are synthetic (:mod:`recfabric.host.model.weights`).
Every entry states, in ``unmodelled``, what of the published model the spec cannot express, and
:meth:`ModelSpec.hardware_blockers` says what the hardware does not run yet.
"""

from __future__ import annotations

from .spec import ModelSpec, SparseFeature, SpecError

__all__ = ["ZOO", "get_model", "model_names", "DEFAULT_MODEL"]


def _tables(prefix, groups, bag=1):
    """``groups`` = [(count, rows, dim), ...] -> SparseFeatures named prefix0, prefix1, ..."""
    out = []
    for count, rows, dim in groups:
        for _ in range(count):
            out.append(SparseFeature(f"{prefix}{len(out)}", rows, dim, bag))
    return out


# MicroRec small model, all 47 tables (FleetRec's public kernel constants; MODELS.md).
_MICROREC_SMALL_TABLES = [
    (15, 10_000, 8), (1, 20_000, 8), (1, 30_000, 8), (10, 100_000, 8), (1, 500_000, 16),
    (1, 1_000_000, 16), (1, 10_000_000, 32), (4, 100, 4), (2, 500, 4), (10, 1_000, 4),
    (1, 3_000, 8),
]

_KAGGLE_CARDINALITIES = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]


def _tiny():
    return ModelSpec(
        name="tiny",
        description="Unit-test model: 3 small tables (one multi-hot), 2 dense features, 2 layers.",
        sparse=(SparseFeature("a", 16, 4), SparseFeature("b", 32, 8, bag=3),
                SparseFeature("c", 8, 4)),
        dense=2, top_mlp=(8, 1))


def _small():
    return ModelSpec(
        name="small",
        description="End-to-end CI model: 8 tables (two multi-hot), 4 dense, 3 layers.",
        sparse=tuple(_tables("t", [(2, 100, 8), (2, 1_000, 8), (1, 5_000, 16), (1, 300, 4)])
                     + [SparseFeature("m0", 2_000, 8, bag=4), SparseFeature("m1", 500, 4, bag=2)]),
        dense=4, top_mlp=(32, 16, 1))


def _dlrm_small():
    return ModelSpec(
        name="dlrm-small",
        description="End-to-end CI DLRM: 4 tables of dim 8 (one multi-hot), bottom 4-16-8, dot "
                    "interaction (8 + 10 = 18 wide), top 18-16, two task heads 16-8-1.",
        sparse=(SparseFeature("a", 100, 8), SparseFeature("b", 1_000, 8, bag=3),
                SparseFeature("c", 300, 8), SparseFeature("d", 50, 8)),
        dense=4, bottom_mlp=(16, 8), interaction="dot", top_mlp=(16,),
        heads=((8, 1), (8, 1)))


def _microrec_small():
    return ModelSpec(
        name="microrec-small",
        description="MicroRec small model shape (Alibaba): 47 tables with the published size "
                    "mix, 352-wide concatenation, 352-1024-512-256-1.",
        sparse=tuple(_tables("t", _MICROREC_SMALL_TABLES)), dense=0, top_mlp=(1024, 512, 256, 1))


def _microrec_large():
    extra = [SparseFeature("w0", 2_000_000, 64), SparseFeature("w1", 1_000_000, 64),
             SparseFeature("w2", 500_000, 32), SparseFeature("w3", 50_000, 12)]
    return ModelSpec(
        name="microrec-large",
        description="MicroRec large model shape: 98 tables, 876-wide concatenation, "
                    "876-1024-512-256-1. The large model's table sizes are unpublished: this is "
                    "two copies of the small model's size mix plus four wider tables.",
        sparse=tuple(_tables("t", _MICROREC_SMALL_TABLES * 2) + extra),
        dense=0, top_mlp=(1024, 512, 256, 1))


def _kaggle():
    return ModelSpec(
        name="kaggle",
        description="Facebook DLRM, Criteo Kaggle config: 26 tables with the real cardinalities, "
                    "dim 16, bottom 13-512-256-64-16, dot interaction, top 367-512-256-1.",
        sparse=tuple(SparseFeature(f"C{i + 1}", r, 16)
                     for i, r in enumerate(_KAGGLE_CARDINALITIES)),
        dense=13, bottom_mlp=(512, 256, 64, 16), interaction="dot", top_mlp=(512, 256, 1))


def _rmc(name, n, rows, dim, bag, bottom, top):
    dense, *bottom_layers = bottom
    return ModelSpec(
        name=name,
        description=f"DeepRecSys {name.upper()}: {n} tables x {rows:,} rows, dim {dim}, {bag} "
                    f"lookups per table, bottom {'-'.join(map(str, bottom))}, top "
                    f"{'-'.join(map(str, top))} (DLRM convention: the top string excludes its "
                    "input).",
        sparse=tuple(SparseFeature(f"t{i}", rows, dim, bag) for i in range(n)),
        dense=dense, bottom_mlp=tuple(bottom_layers), interaction="concat", top_mlp=tuple(top))


def _ncf():
    return ModelSpec(
        name="ncf",
        description="DeepRecSys NCF: 4 tables (140K, 140K, 28K, 28K) x 64, "
                    "MLP 256-256-128-64-64-1.",
        sparse=(SparseFeature("user_mlp", 140_000, 64), SparseFeature("item_mlp", 140_000, 64),
                SparseFeature("user_mf", 28_000, 64), SparseFeature("item_mf", 28_000, 64)),
        dense=0, top_mlp=(256, 128, 64, 64, 1),
        unmodelled=("NCF's GMF branch (element-wise product of user and item embeddings) is "
                    "modelled as plain concatenation",))


def _wnd():
    return ModelSpec(
        name="wnd",
        description="DeepRecSys Wide & Deep: 27 tables x 1M rows, dim 32, MLP 864-1024-512-256-1.",
        sparse=tuple(SparseFeature(f"t{i}", 1_000_000, 32) for i in range(27)),
        dense=0, top_mlp=(1024, 512, 256, 1),
        unmodelled=("the wide (linear, cross-product) part is not modelled; only the deep tower",))


def _mt_wnd_tables():
    return tuple([SparseFeature(f"t{i}", 500_000, 32) for i in range(41)]
                 + [SparseFeature(f"big{i}", 5_000_000, 32) for i in range(2)])


def _mt_wnd():
    return ModelSpec(
        name="mt-wnd",
        description="DeepRecSys multi-task Wide & Deep: 41 x 500K + 2 x 5M tables, dim 32, "
                    "shared trunk 1376-1024-512, three task heads 512-256-128-1.",
        sparse=_mt_wnd_tables(), dense=0, top_mlp=(1024, 512),
        heads=((256, 128, 1),) * 3,
        unmodelled=("the number of tasks is not published in MODELS.md: three heads assumed",
                    "the wide (linear) part is not modelled"))


def _din():
    return ModelSpec(
        name="din",
        description="DeepRecSys DIN: 4 tables (1M, 100K, 10M, 10M) x 32, 3 lookups each, "
                    "MLP 128-200-80-1.",
        sparse=(SparseFeature("user", 1_000_000, 32, bag=3),
                SparseFeature("item", 100_000, 32, bag=3),
                SparseFeature("behav_item", 10_000_000, 32, bag=3),
                SparseFeature("behav_cat", 10_000_000, 32, bag=3)),
        dense=0, top_mlp=(200, 80, 1),
        unmodelled=("attention over user-behaviour sequences (bags are sum-pooled instead)",
                    "DIN's 2-way softmax output is a single sigmoid here"))


def _dien():
    return ModelSpec(
        name="dien",
        description="DeepRecSys DIEN: MT-WnD's tables, dim 32, MLP 1376-200-80-1.",
        sparse=_mt_wnd_tables(), dense=0, top_mlp=(200, 80, 1),
        unmodelled=("the GRU / AUGRU interest-evolution layers over behaviour sequences",
                    "DIEN's 2-way softmax output is a single sigmoid here"))


ZOO = {
    "tiny": _tiny,
    "small": _small,
    "dlrm-small": _dlrm_small,
    "microrec-small": _microrec_small,
    "microrec-large": _microrec_large,
    "kaggle": _kaggle,
    "rmc1": lambda: _rmc("rmc1", 8, 4_000_000, 32, 80, (128, 64, 32), (256, 64, 1)),
    "rmc2": lambda: _rmc("rmc2", 32, 500_000, 64, 120, (256, 128, 64), (128, 64, 1)),
    "rmc3": lambda: _rmc("rmc3", 10, 2_000_000, 32, 20, (2560, 1024, 256, 32), (512, 256, 1)),
    "wnd": _wnd,
    "ncf": _ncf,
    "mt-wnd": _mt_wnd,
    "din": _din,
    "dien": _dien,
}

#: The model the main job runs when none is named.
DEFAULT_MODEL = "small"


def model_names() -> list[str]:
    return list(ZOO)


def get_model(name_or_path) -> ModelSpec:
    """A zoo model by name, or a spec loaded from a JSON file path."""
    key = str(name_or_path)
    if key in ZOO:
        return ZOO[key]()
    if key.endswith(".json"):
        try:
            return ModelSpec.load(key)
        except FileNotFoundError:
            raise SpecError(f"model spec file {key!r} does not exist") from None
    raise SpecError(f"unknown model {key!r}: not a zoo name ({', '.join(ZOO)}) nor a .json file")
