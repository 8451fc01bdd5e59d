"""Tables held in parts, end to end on the ``sim`` back-end, ``==`` the golden model.

A reduced-scale MicroRec-like model (one-hot tables only, as MicroRec's, plus one multi-hot
table): a table larger than a channel split by row range over three channels, a multi-hot
table held in copies, 3-, 4- and 2-way Cartesian-merged groups on chip and off chip, and plain
tables, all in one kernel of the ``small`` configuration with 1 MiB channels (``slow``: ~30 s
of CPU). The default suite runs the same kinds of groups on a ``tiny`` kernel. Plans are made
by hand from the planner's own packing (:func:`_best_packing`), so that every kind of group is
present whatever the default planner's search prefers.
"""

import numpy as np
import pytest

from recfabric.host.compiler import steps
from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.kernel_program import check_program
from recfabric.host.compiler.planner import Layout, _best_packing, _merge, _single
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.runtime.accelerator import Accelerator
from recfabric.hw.config import get_preset

SPEC = ModelSpec(
    "microrec-mini",
    sparse=tuple([SparseFeature(f"t{i}", 6, 4) for i in range(9)]
                 + [SparseFeature("m", 20000, 8), SparseFeature("big", 40000, 32),
                    SparseFeature("u", 300, 8, bag=4), SparseFeature("s", 2000, 8)]),
    top_mlp=(16, 8, 1))
CONFIG = get_preset("small").replace(name="small-1m", channel_bytes=1 << 20)
MERGES = ((0, 1, 2), (3, 4, 5, 6), (7, 8))
# tiny, with room for 5 features: a 3-way merge, a table split over both channels, a copied
# multi-hot table
TINY_SPEC = ModelSpec(
    "parts-tiny",
    sparse=(SparseFeature("a", 5, 4), SparseFeature("u", 200, 4, bag=3),
            SparseFeature("b", 3, 4), SparseFeature("c", 4, 4),
            SparseFeature("big", 40000, 12)),
    dense=2, top_mlp=(4, 1))
TINY = get_preset("tiny").replace(name="tiny-5", max_features=5)
TINY_MERGES = ((0, 2, 3),)


def hand_plan(spec, config, planner="default"):
    """The planner's packing of a fixed grouping: MERGES (TINY_MERGES for the tiny model)
    merged, the rest single."""
    merges = TINY_MERGES if spec is TINY_SPEC else MERGES
    caps = config.capabilities() if hasattr(config, "capabilities") else config
    layout = Layout.from_capabilities(caps)
    groups = []
    for feats in merges:
        g = _single(spec, feats[0])
        for f in feats[1:]:
            g = _merge(g, _single(spec, f))
        groups.append(g)
    merged = {f for m in merges for f in m}
    groups += [_single(spec, i) for i in range(len(spec.sparse)) if i not in merged]
    groups.sort(key=lambda g: g.features)
    return _best_packing(spec, layout, caps.config, groups, ("hand grouping",))


def _compile(tmp_path_factory, spec, config):
    d = tmp_path_factory.mktemp("parts") / spec.name
    mp = pytest.MonkeyPatch()
    mp.setattr(steps, "plan", hand_plan)
    try:
        steps.compile_model(spec, random_weights(spec, seed=4), config, d)
    finally:
        mp.undo()
    return d, load_compiled(d)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return _compile(tmp_path_factory, SPEC, CONFIG)


def _run_and_check(d, cm, spec, config, batch, seed):
    dense, sparse = synthetic_batch(spec, batch, seed=seed)
    with Accelerator.open("sim", config, p_stall=0.2, mem_latency=10, seed=5,
                          max_cycles=100_000) as acc:
        acc.load(d)
        r = acc.infer(dense, sparse)
        units = acc.unit_lookups()
    g = golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse)
    assert np.array_equal(r.scores, g.scores)
    c = r.counters
    assert c["errors"] == 0 and c["requests_done"] == batch
    # one lookup per bag of a merged or split group (bags of one-hot features are one ID), one
    # per ID (one for an empty bag) of the others
    groups = {}
    for f, feat in enumerate(cm.descriptors["features"]):
        groups.setdefault(feat["group"], []).append(f)
    want = sum(batch if len(fs) > 1 or spec.sparse[fs[0]].bag == 1
               else int(np.maximum(sparse[fs[0]].lengths, 1).sum()) for fs in groups.values())
    assert c["lookups_issued"] == want
    assert units == unit_lookups_model(cm, spec, sparse, config)
    return units


def unit_lookups_model(cm, spec, sparse, config):
    """Lookups per unit the placement implies: a split table's bag goes to the shard holding
    its row, a copied table's bags to copies 0, 1, ... in turn (round-robin per bag)."""
    d = cm.descriptors
    out = [0] * (config.mem_channels + config.onchip_units)
    batch = sparse[0].batch
    for gi, gr in enumerate(d["groups"]):
        feats = sorted((f for f, r in enumerate(d["features"]) if r["group"] == gi),
                       key=lambda f: d["features"][f]["member"])
        tables = sorted((t for t in d["tables"] if t["group"] == gi),
                        key=lambda t: (t["replica"], t["shard"]))
        for b in range(batch):
            copy = b % gr["replicas"]
            n = int(sparse[feats[0]].lengths[b])
            if len(feats) > 1:
                row = sum(int(sparse[f].ids[b, 0]) * d["features"][f]["radix"] for f in feats)
            else:
                row = int(sparse[feats[0]].ids[b, 0])
            shard = max(s for s in range(gr["shards"])
                        if row >= tables[copy * gr["shards"] + s]["row_base"])
            t = tables[copy * gr["shards"] + shard]
            unit = t["location"] + (config.mem_channels if t["memory"] else 0)
            out[unit] += 1 if len(feats) > 1 or gr["shards"] > 1 else max(n, 1)
    return out


def test_tiny_split_copies_and_3way_merge_are_bit_exact(tmp_path_factory):
    d, cm = _compile(tmp_path_factory, TINY_SPEC, TINY)
    p = hand_plan(TINY_SPEC, TINY)
    by_feat = {g.features: g for g in p.groups}
    assert by_feat[(4,)].shards == 2 and by_feat[(1,)].replicas >= 2
    assert by_feat[(0, 2, 3)].rows == 60
    _run_and_check(d, cm, TINY_SPEC, TINY, 8, 3)


def test_the_plan_has_every_kind_of_group(compiled):
    _, cm = compiled
    p = hand_plan(SPEC, CONFIG)
    check_program(SPEC, p, CONFIG.capabilities())
    by_feat = {g.features: g for g in p.groups}
    assert by_feat[(10,)].shards == 3  # 2.56 MB over 1 MiB channels
    assert by_feat[(11,)].replicas >= 2  # the multi-hot table is copied
    assert sorted(len(g.features) for g in p.groups if len(g.features) > 1) == [2, 3, 4]
    assert {t.memory for t in p.tables} == {"channel", "onchip"}
    assert len(cm.descriptors["tables"]) == len(p.tables)


@pytest.mark.slow
def test_parts_and_merges_are_bit_exact_with_stalls(compiled):
    d, cm = compiled
    _run_and_check(d, cm, SPEC, CONFIG, 12, 9)
