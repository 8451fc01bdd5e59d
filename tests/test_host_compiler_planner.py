"""Planner invariants over the zoo and hand-made shapes: every feature served once, capacities
respected, merged-index arithmetic, determinism, the default never worse than microrec; plans for
the real kernel stay within its capabilities.

The zoo-wide algorithm checks plan for ``study_capabilities`` (a kernel of the same size with row
splits, copies and any merge), as the planner comparison in docs/compiler.md does: MicroRec's
10M-row tables need row splits."""

import json

import numpy as np
import pytest

from recfabric.host.compiler.planner import (
    PLANNERS,
    TABLE_ALIGN,
    Group,
    Layout,
    Plan,
    PlanError,
    plan,
    study_capabilities,
)
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.zoo import get_model, model_names
from recfabric.hw.config import get_preset

CONFIGS = ("u280", "u280-int8", "small")


def _plans():
    for cname in ("u280", "u280-int8"):
        config = study_capabilities(get_preset(cname))
        for name in model_names():
            spec = get_model(name)
            yield spec, config, {p: plan(spec, config, p) for p in PLANNERS}


ALL = list(_plans())


def check_invariants(spec, config, p: Plan):
    lay = p.layout
    # every feature is served by exactly one group; only one-hot features are merged
    served = sorted(f for g in p.groups for f in g.features)
    assert served == list(range(len(spec.sparse)))
    for g in p.groups:
        if len(g.features) > 1:
            assert all(spec.sparse[f].bag == 1 for f in g.features)
            assert g.bag == 1
            assert g.dim <= lay.max_dim
        assert g.member_rows == tuple(spec.sparse[f].rows for f in g.features)
    # every replica of every group covers the group's rows exactly once, in shard order
    for gi, g in enumerate(p.groups):
        for r in range(g.replicas):
            shards = sorted((t for t in p.tables if t.group == gi and t.replica == r),
                            key=lambda t: t.shard)
            assert [t.shard for t in shards] == list(range(g.shards))
            assert shards[0].row_base == 0
            for a, b in zip(shards, shards[1:]):
                assert b.row_base == a.row_base + a.rows
            assert shards[-1].row_base + shards[-1].rows == g.rows
    # capacities, alignment, no overlap
    for memory, count, cap in (("channel", lay.channels, lay.channel_bytes),
                               ("onchip", lay.onchip_units, lay.onchip_bytes)):
        for loc in range(count):
            ts = sorted((t for t in p.tables if t.memory == memory and t.location == loc),
                        key=lambda t: t.offset)
            for a, b in zip(ts, ts[1:]):
                assert a.offset + a.nbytes <= b.offset
            if ts:
                assert ts[-1].offset + ts[-1].nbytes <= cap
            for t in ts:
                if memory == "channel":
                    assert t.stride & (t.stride - 1) == 0
                    assert t.offset % TABLE_ALIGN == 0
                    assert t.stride % lay.beat_bytes == 0
                else:  # whole RAM words, as the on-chip table unit reads them
                    words = -(-p.groups[t.group].dim * lay.element_bytes // lay.onchip_word_bytes)
                    assert t.stride == words * lay.onchip_word_bytes
                    assert t.offset % lay.onchip_word_bytes == 0
                assert t.stride >= p.groups[t.group].dim * lay.element_bytes
    # the cost figures agree with a naive recount
    load = [0] * lay.channels
    for t in p.tables:
        if t.memory == "channel" and t.shard == 0:
            g = p.groups[t.group]
            shard_locs = {u.location for u in p.tables if u.group == t.group
                          and u.replica == t.replica}
            for loc in shard_locs:
                load[loc] += -(-g.bag // g.replicas) * lay.row_beats(g.dim)
    assert max(load) <= p.rounds
    assert p.stored_bytes >= spec.table_bytes(lay.element_bytes)


@pytest.mark.parametrize("case", range(len(ALL)))
def test_invariants_over_zoo(case):
    spec, config, plans = ALL[case]
    for p in plans.values():
        check_invariants(spec, config, p)


def test_default_never_worse_than_microrec_over_zoo():
    compared = 0
    for spec, config, plans in ALL:
        d, m = plans["default"], plans["microrec"]
        assert d.cost() <= m.cost(), (spec.name, config.config, d.cost(), m.cost())
        assert d.cost() <= plans["none"].cost()
        compared += 1
    assert compared == 2 * len(model_names())


def test_default_beats_microrec_somewhere():
    better = [(s.name, c.config) for s, c, p in ALL if p["default"].rounds < p["microrec"].rounds]
    assert ("microrec-small", "u280") in better
    assert ("rmc1", "u280") in better


def test_determinism_and_json_round_trip():
    spec, config = get_model("microrec-large"), study_capabilities(get_preset("u280"))
    a, b = plan(spec, config), plan(spec, config)
    assert json.dumps(a.to_json(spec)) == json.dumps(b.to_json(spec))
    back = Plan.from_json(json.loads(json.dumps(a.to_json(spec))))
    assert back.to_json(spec) == a.to_json(spec)
    assert back.cost() == a.cost()


def test_merged_index_arithmetic():
    g = Group((0, 1, 2), (5, 7, 3), (4, 8, 2), 1)
    assert g.radices == (21, 3, 1)
    assert g.elem_offsets == (0, 4, 12)
    assert g.rows == 105 and g.dim == 14
    ids = np.stack(np.meshgrid(np.arange(5), np.arange(7), np.arange(3), indexing="ij"),
                   axis=-1).reshape(-1, 3)
    rows = g.merged_row(ids.T)
    assert sorted(rows.tolist()) == list(range(105))
    assert np.array_equal(np.stack(g.split_row(rows), axis=1), ids)
    pair = Group((3, 9), (10, 20), (4, 4), 1)
    assert pair.merged_row((7, 13)) == 7 * 20 + 13


def test_microrec_merges_pairs_of_one_hot_only():
    spec = ModelSpec("m", sparse=(SparseFeature("a", 10, 4), SparseFeature("b", 10, 4, bag=2),
                                  SparseFeature("c", 1000, 4), SparseFeature("d", 20, 4),
                                  SparseFeature("e", 5000, 4)), top_mlp=(1,))
    config = get_preset("tiny").replace(onchip_units=0)
    p = plan(spec, config, "microrec")
    check_invariants(spec, config, p)
    for g in p.groups:
        assert len(g.features) <= 2
        assert 1 not in g.features or len(g.features) == 1
    assert any(len(g.features) == 2 for g in p.groups)


def test_sharding_a_table_larger_than_a_channel():
    spec = ModelSpec("big", sparse=(SparseFeature("huge", 100_000, 16),
                                    SparseFeature("x", 50, 4)), top_mlp=(1,))
    config = study_capabilities(get_preset("tiny").replace(mem_channels=4))  # 1 MiB, 32 B rows
    for name in PLANNERS:
        p = plan(spec, config, name)
        check_invariants(spec, config, p)
        g = p.groups[p.feature_group(0)[0]]
        assert g.shards == -(-100_000 * 32 // config.channel_bytes)
    # the real kernel splits a one-hot table over at most table_parts (4) channels
    real = get_preset("tiny").replace(mem_channels=4)
    assert real.capabilities().table_parts == 4
    for name in PLANNERS:
        p = plan(spec, real, name)
        check_invariants(spec, real.capabilities(), p)
        assert p.groups[p.feature_group(0)[0]].shards == 4
    # ... but neither a table needing more parts nor a multi-hot one: refused, naming the table
    spec5 = ModelSpec("big", sparse=(SparseFeature("huge", 140_000, 16),), top_mlp=(1,))
    with pytest.raises(PlanError, match=r"'huge'.*needs 5 channel-sized row ranges.*at most 4"):
        plan(spec5, real.replace(mem_channels=5))
    multi = ModelSpec("big", sparse=(SparseFeature("huge", 100_000, 16, bag=2),), top_mlp=(1,))
    with pytest.raises(PlanError, match=r"'huge'.*splits only one-hot tables"):
        plan(multi, real)
    with pytest.raises(PlanError, match=r"'huge'.*cannot split"):
        plan(spec, real.replace(mem_channels=1, onchip_units=0))


def test_too_big_model_names_the_table():
    spec = ModelSpec("huge", sparse=(SparseFeature("giant", 10_000_000, 16),), top_mlp=(1,))
    for config in (get_preset("tiny"), study_capabilities(get_preset("tiny"))):
        for name in PLANNERS:
            with pytest.raises(PlanError, match=r"giant.*bytes"):
                plan(spec, config, name)


def test_unknown_planner():
    with pytest.raises(ValueError, match="'fancy'"):
        plan(get_model("tiny"), get_preset("tiny"), "fancy")


def test_layout_costs():
    lay = Layout.from_config(get_preset("u280"))
    assert (lay.row_beats(16), lay.row_beats(17), lay.row_beats(48)) == (1, 2, 3)
    assert (lay.offchip_stride(4), lay.offchip_stride(48)) == (32, 128)
    assert (lay.onchip_stride(12), lay.onchip_stride(17), lay.onchip_stride(64)) == (32, 64, 128)


@pytest.mark.parametrize("cname", ["tiny", "small", "u280", "u280-int8", "u55c"])
@pytest.mark.parametrize("model", ["tiny", "small", "microrec-small", "rmc2", "wnd", "din"])
def test_plans_for_the_kernel_stay_within_its_capabilities(cname, model):
    """Copies x row-range shards within table_parts (splits only if row_split), merges within
    max_merge, at most descriptors_per_unit tables per unit, on-chip use within the unit's
    words: whatever the planner, if it plans at all."""
    config = get_preset(cname)
    caps = config.capabilities()
    spec = get_model(model)
    for name in PLANNERS:
        try:
            p = plan(spec, config, name)
        except PlanError as e:
            assert ("does not fit" in str(e) or "cannot split" in str(e)
                    or "at most" in str(e) and "parts" in str(e))
            continue
        check_invariants(spec, caps, p)
        for g in p.groups:
            assert g.replicas <= caps.table_copies
            assert g.replicas * g.shards <= caps.table_parts
            assert g.shards == 1 or caps.row_split
            assert len(g.features) <= caps.max_merge
        per_port = {}
        for t in p.tables:
            per_port[t.memory, t.location] = per_port.get((t.memory, t.location), 0) + 1
        assert max(per_port.values(), default=0) <= caps.descriptors_per_unit
        assert all(u <= caps.onchip_bytes for u in p.onchip_used)


def test_dense_only_model_plans_empty():
    spec = ModelSpec("dense", dense=3, top_mlp=(4, 1))
    p = plan(spec, get_preset("tiny"))
    assert p.groups == () and p.tables == () and p.rounds == 0
    assert p.storage_overhead == 0.0 and p.figures()["raw_bytes"] == 0
