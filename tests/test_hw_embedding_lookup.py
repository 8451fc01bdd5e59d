"""EmbeddingLookupUnit against the HBM model: pooled vectors == the golden model's, under stalls."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest

from recfabric.host import numerics as nx
from recfabric.host.bench.lookup import expected_pooled, simulate_lookup_unit
from recfabric.host.compiler.table_layout import TableLayout, pack_tables
from recfabric.host.reference import golden
from recfabric.hw.axi4 import AXIResp
from recfabric.hw.config import get_preset
from recfabric.hw.embedding_lookup import EmbeddingLookupUnit, LookupErrorCause, LookupKind

# 64-bit bus, int16: 4 elements per beat, rows of up to 8 elements take 1..2 beats.
SMALL = dict(data_bits=16, max_dim=8, data_width=64, max_outstanding=8, tag_bits=4,
             slot_bits=2, n_desc=3, max_bag=4)


class _Table:
    """Duck-typed QuantizedTable over an integer array (what golden.pool_features needs)."""

    def __init__(self, t):
        self.t = t

    @property
    def dim(self):
        return self.t.shape[1]

    def gather(self, ids):
        return self.t[np.asarray(ids)]


def _random_tables(nrng, dims, rows):
    return [nrng.integers(-(1 << 15), 1 << 15, size=(r, d)) for d, r in zip(dims, rows)]


def _requests_to_lookups(sparse, feat_desc, batch):
    """Serialize a batch: request by request, feature (= slot) by feature, bag in ID order."""
    lookups = []
    for b in range(batch):
        for f, bags in enumerate(sparse):
            n = int(bags.lengths[b])
            if n == 0:
                lookups.append({"tag": b % 16, "slot": f, "desc": feat_desc[f], "row": 0,
                                "kind": LookupKind.EMPTY.value, "first": 1, "last": 1})
            for k in range(n):
                lookups.append({"tag": b % 16, "slot": f, "desc": feat_desc[f],
                                "row": int(bags.ids[b, k]), "first": int(k == 0),
                                "last": int(k == n - 1)})
    return lookups


@pytest.mark.parametrize("seed", [1, 2])
def test_pooled_vectors_equal_golden_pool_features(seed):
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    dims, rows = [3, 8, 5], [40, 17, 9]
    tables = _random_tables(nrng, dims, rows)
    feat_desc = [0, 1, 2, 1]  # feature 3 shares table 1 with feature 1
    batch = 6
    sparse = []
    for d in feat_desc:
        lengths = nrng.integers(0, 5, size=batch)
        ids = nrng.integers(0, rows[d], size=(batch, 4))
        sparse.append(golden.Bags(ids, lengths))
    emb_fmt = nx.FixedFormat(16, 10)
    qm = SimpleNamespace(tables=[_Table(tables[d]) for d in feat_desc], emb_fmt=emb_fmt)
    want_pooled = golden.pool_features(qm, sparse)

    unit = EmbeddingLookupUnit(**SMALL)
    memory, descs = pack_tables(tables, TableLayout(16, 8))
    lookups = _requests_to_lookups(sparse, feat_desc, batch)
    outs, info = simulate_lookup_unit(
        unit, memory, descs, lookups, latency=6, rng=rng, p_idle=0.3, p_stall=0.3,
        hbm_kwargs=dict(extra_delay=5, p_ar_stall=0.3, p_r_idle=0.3))
    want = []
    for b in range(batch):
        for f in range(len(feat_desc)):
            vec = [int(x) for x in want_pooled[f][b]] + [0] * (8 - dims[feat_desc[f]])
            want.append({"tag": b % 16, "slot": f, "error": 0,
                         "cause": LookupErrorCause.NONE, "data": vec})
    assert outs == want
    # The spec's own saturation happened (random int16 bags of up to 4 saturate often).
    assert any(abs(x) == 32767 or x == -32768 for o in outs for x in o["data"])
    assert info["error"] == 0 and info["idle"] == 1
    assert info["hbm"].reads == sum(1 for lk in lookups if lk.get("kind", 0) == 0)


def test_full_width_rows_hbm_beat_and_bags():
    """One 256-bit beat per row (the HBM case) with max-size bags, back to back."""
    rng = random.Random(7)
    nrng = np.random.default_rng(7)
    tables = _random_tables(nrng, [16, 11], [64, 30])
    unit = EmbeddingLookupUnit(data_bits=16, max_dim=16, data_width=256, max_outstanding=16,
                               tag_bits=3, slot_bits=1, n_desc=2, max_bag=4)
    memory, descs = pack_tables(tables, TableLayout(16, 32))
    lookups = []
    for i in range(40):
        d, n = i % 2, rng.randint(1, 4)
        for k in range(n):
            lookups.append({"tag": i % 8, "slot": d, "desc": d,
                            "row": rng.randrange(len(tables[d])),
                            "first": int(k == 0), "last": int(k == n - 1)})
    outs, info = simulate_lookup_unit(unit, memory, descs, lookups, latency=12, rng=rng,
                                      p_stall=0.2, hbm_kwargs=dict(p_r_idle=0.2))
    assert outs == expected_pooled(tables, [True, True], lookups, data_bits=16, max_dim=16)


def test_bad_rows_are_never_read_and_flag_the_first_tag():
    rng = random.Random(3)
    nrng = np.random.default_rng(3)
    tables = _random_tables(nrng, [4, 7], [10, 5])
    unit = EmbeddingLookupUnit(**SMALL)
    memory, descs = pack_tables(tables, TableLayout(16, 8))
    # The model raises if any read touches bytes outside a table's rows.
    allowed = [(d["base"], d["base"] + d["rows"] * d["stride"]) for d in descs]
    lookups = [
        {"tag": 1, "slot": 0, "desc": 0, "row": 3, "first": 1, "last": 1},
        {"tag": 2, "slot": 1, "desc": 1, "row": 4, "first": 1, "last": 0},
        {"tag": 2, "slot": 1, "desc": 1, "row": 5, "first": 0, "last": 1},  # rows == 5: bad
        {"tag": 3, "slot": 0, "desc": 0, "row": 0xFFFF_FFFF, "first": 1, "last": 1},
        {"tag": 4, "slot": 0, "desc": 2, "row": 0, "first": 1, "last": 1},  # no desc 2 loaded
        {"tag": 5, "slot": 2, "desc": 0, "row": 1, "kind": LookupKind.BAD.value, "first": 1,
         "last": 1},
        {"tag": 6, "slot": 3, "desc": 1, "row": 0, "first": 1, "last": 1},
    ]

    async def invalidate_desc2(ctx):  # desc 2: dim 0 is invalid
        from recfabric.sim.stream_testing import stream_put
        await stream_put(ctx, unit.i_desc, {"index": 2, "desc": {"base": 0x1000, "stride": 8,
                                                                 "rows": 1, "dim": 0}})

    outs, info = simulate_lookup_unit(unit, memory, descs, lookups, latency=4, rng=rng,
                                      p_idle=0.2, p_stall=0.2, before=invalidate_desc2,
                                      hbm_kwargs=dict(allowed=allowed))
    assert outs == expected_pooled(tables, [True, True, False], lookups, data_bits=16, max_dim=8)
    assert [o["error"] for o in outs] == [0, 1, 1, 1, 1, 0]
    assert info["error"] == 1 and info["error_tag"] == 2 and info["error_slot"] == 1
    assert info["error_cause"] == LookupErrorCause.ROW
    assert info["hbm"].reads == 3


def test_axi_error_responses_flag_the_bag_and_never_hang():
    rng = random.Random(4)
    nrng = np.random.default_rng(4)
    tables = _random_tables(nrng, [8], [32])
    unit = EmbeddingLookupUnit(**SMALL)
    memory, descs = pack_tables(tables, TableLayout(16, 8))
    lookups = [{"tag": i % 16, "slot": 0, "desc": 0, "row": rng.randrange(32), "first": 1,
                "last": 1} for i in range(24)]
    bad = {5: AXIResp.SLVERR, 6: AXIResp.DECERR, 17: AXIResp.SLVERR}
    outs, info = simulate_lookup_unit(
        unit, memory, descs, lookups, latency=5, rng=rng, p_stall=0.3,
        hbm_kwargs=dict(error_fn=lambda addr, arid, i: bad.get(i), p_r_idle=0.3))
    want = expected_pooled(tables, [True], lookups, data_bits=16, max_dim=8,
                           bad_fn=lambda i, lk: i in bad)
    assert outs == want
    assert [i for i, o in enumerate(outs) if o["error"]] == sorted(bad)
    assert info["error"] == 1 and info["error_tag"] == 5
    assert info["error_cause"] == LookupErrorCause.RESP


@pytest.mark.parametrize("limit", [2, 8])
def test_outstanding_limit_is_reached_and_respected(limit):
    rng = random.Random(5)
    nrng = np.random.default_rng(5)
    tables = _random_tables(nrng, [4], [64])
    unit = EmbeddingLookupUnit(**{**SMALL, "max_outstanding": limit})
    memory, descs = pack_tables(tables, TableLayout(16, 8))
    lookups = [{"tag": i % 16, "slot": 0, "desc": 0, "row": i, "first": 1, "last": 1}
               for i in range(40)]
    outs, info = simulate_lookup_unit(unit, memory, descs, lookups, latency=20, rng=rng)
    assert outs == expected_pooled(tables, [True], lookups, data_bits=16, max_dim=8)
    assert info["hbm"].max_inflight == limit


def test_throughput_one_lookup_per_cycle_when_outstanding_covers_latency():
    rng = random.Random(6)
    nrng = np.random.default_rng(6)
    tables = _random_tables(nrng, [16], [128])
    unit = EmbeddingLookupUnit(data_bits=16, max_dim=16, data_width=256, max_outstanding=32,
                               tag_bits=4, slot_bits=1, n_desc=1, max_bag=1)
    memory, descs = pack_tables(tables, TableLayout(16, 32))
    lookups = [{"tag": i % 16, "slot": 0, "desc": 0, "row": rng.randrange(128), "first": 1,
                "last": 1} for i in range(120)]
    outs, info = simulate_lookup_unit(unit, memory, descs, lookups, latency=16, rng=rng)
    assert outs == expected_pooled(tables, [True], lookups, data_bits=16, max_dim=16)
    cyc = info["out"].transfer_cycles
    assert cyc[-1] - cyc[0] == len(cyc) - 1  # one pooled vector every cycle
    lat1 = cyc[0] - info["in"].transfer_cycles[0]
    assert 16 <= lat1 <= 16 + 4


@pytest.mark.filterwarnings("ignore::UserWarning")  # UnusedElaboratable of the failed builds
def test_from_config_and_parameter_errors():
    unit = EmbeddingLookupUnit.from_config(get_preset("tiny"))
    assert unit.m_axi.signature.data_width == 256
    assert unit.m_axi.signature.addr_width == 64
    assert unit.max_outstanding == 16
    assert len(unit.o_pooled.payload.data) == 16
    with pytest.raises(ValueError, match="Outstanding read limit must be an integer >= 2, not 1"):
        EmbeddingLookupUnit(max_outstanding=1)
    with pytest.raises(TypeError, match="max_dim must be a positive integer, not 0"):
        EmbeddingLookupUnit(max_dim=0)
    with pytest.raises(ValueError, match="Read ID must fit 2 bits, not 4"):
        EmbeddingLookupUnit(id_width=2, arid=4)
