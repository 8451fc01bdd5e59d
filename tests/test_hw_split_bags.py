"""Multi-hot tables split by row range over channels (issue 9.3): the bag combiner on its own,
then whole kernels on the ``sim`` back-end, ``==`` the golden model.

The kernel test uses a ``tiny`` kernel with four 64 KiB channels and two combiner pools; its
model has two multi-hot tables larger than a channel (each split over 2 channels; the second
model has one over 3), a one-hot table and dense features. Bags are chosen so that some have
all IDs in one shard, some spread over every shard, some are empty, some short; then random
bags. Random stalls everywhere, and a
switch between two models (and back) without a reset.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from amaranth.sim import Simulator

from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.kernel_program import CompileError, check_program
from recfabric.host.compiler.planner import PLANNERS, PlanError, plan
from recfabric.host.compiler.steps import compile_model, model_runs
from recfabric.host.model.spec import Bags, ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.numerics import FixedFormat, pool_sum
from recfabric.host.runtime.accelerator import Accelerator
from recfabric.hw.bag_combiner import BagCombiner
from recfabric.hw.config import get_preset
from recfabric.hw.stream_types import LookupErrorCause
from recfabric.sim.stream_testing import StreamChecker, payload_value, stream_get, stream_put

# ---- the combiner on its own ----------------------------------------------------------------

DB, DIM, BAG, TAGB, SLOTB = 8, 4, 4, 2, 3


def _combiner_case(rng, n_bags):
    """Bags of pieces (each a row of DIM int8 values, some with errors), pass-through vectors,
    and the expected outputs per (tag, slot)."""
    bags, passes, want = [], [], {}
    used = set()
    for _ in range(n_bags):
        while True:
            tag, pool = rng.randrange(1 << TAGB), rng.randrange(2)
            if (tag, pool) not in used:
                break
        used.add((tag, pool))
        slot = 4 + pool  # slots 4, 5 are split into pools 0, 1
        n = rng.randrange(1, BAG + 1)
        # extreme rows often, so that the sum saturates (and only the final sum may)
        rows = [[rng.choice([-128, 127, rng.randrange(-128, 128)]) for _ in range(DIM)]
                for _ in range(n)]
        errs = [rng.random() < 0.1 for _ in range(n)]
        pieces = [{"tag": tag, "slot": slot, "error": int(e),
                   "cause": LookupErrorCause.ROW if e else LookupErrorCause.NONE,
                   "data": [0] * DIM if e else r} for r, e in zip(rows, errs)]
        data = pool_sum(np.array(rows), FixedFormat(DB, 0)).tolist()
        want[tag, slot] = {"error": int(any(errs)), "data": [0] * DIM if any(errs) else data}
        bags.append((pieces, {"tag": tag, "slot": slot, "pool": pool, "count": n}))
    for tag in range(1 << TAGB):
        for slot in (0, 1):  # not split: passed as they are
            v = {"tag": tag, "slot": slot, "error": 0, "cause": LookupErrorCause.NONE,
                 "data": [rng.randrange(-128, 128) for _ in range(DIM)]}
            passes.append(v)
            want[tag, slot] = {"error": 0, "data": v["data"]}
    return bags, passes, want


def _run_combiner(seed, p=0.4):
    rng = random.Random(seed)
    dut = BagCombiner(tag_bits=TAGB, slot_bits=SLOTB, data_bits=DB, max_dim=DIM, max_bag=BAG,
                      pools=2)
    rounds = [_combiner_case(rng, 6) for _ in range(3)]
    got = []

    finished = []  # rounds whose outputs have all left (a tag is reused only after that)
    mapped = []

    async def wait_round(ctx, r):
        while len(finished) < r or not mapped:
            await ctx.tick()

    async def vectors(ctx):
        for slot in range(1 << SLOTB):
            await stream_put(ctx, dut.i_map, {"slot": slot, "split": int(slot in (4, 5)),
                                              "pool": slot - 4 if slot in (4, 5) else 0})
        mapped.append(1)
        for r, (bags, passes, _) in enumerate(rounds):
            await wait_round(ctx, r)
            # pieces of all bags and the pass-through vectors shuffled (the units' order is any)
            vecs = [v for pieces, _ in bags for v in pieces] + passes
            rng.shuffle(vecs)
            for v in vecs:
                await stream_put(ctx, dut.i_pooled, v, rng=rng, p_idle=p)

    async def counts(ctx):
        # concurrently with the vectors: a count may come before, between or after its pieces
        for r, (bags, _, _) in enumerate(rounds):
            await wait_round(ctx, r)
            cs = [c for _, c in bags]
            rng.shuffle(cs)
            for c in cs:
                await stream_put(ctx, dut.i_count, c, rng=rng, p_idle=0.8)

    async def consumer(ctx):
        for _, _, want in rounds:
            for _ in range(len(want)):
                got.append(payload_value(await stream_get(ctx, dut.o_pooled, rng=rng,
                                                          p_stall=p)))
            finished.append(1)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(StreamChecker(dut.o_pooled, name="o_pooled").process)
    sim.add_testbench(vectors)
    sim.add_testbench(counts)
    sim.add_testbench(consumer)
    sim.run_until(2e-4)
    return rounds, got


@pytest.mark.parametrize("seed", [1, 2])
def test_combiner_pools_split_bags_exactly(seed):
    rounds, got = _run_combiner(seed)
    n = 0
    for _, _, want in rounds:
        out = {(v["tag"], v["slot"]): v for v in got[n:n + len(want)]}
        n += len(want)
        assert set(out) == set(want)  # one vector per bag or pass-through vector, none lost
        for key, w in want.items():
            assert out[key]["error"] == w["error"], key
            assert out[key]["data"] == w["data"], key
    assert n == len(got)


def test_counts_before_and_after_pieces():
    """The count may come first, last or between the pieces; a one-piece bag; back to back
    pieces of one bag (the entry read must see the write of the piece ahead)."""
    dut = BagCombiner(tag_bits=1, slot_bits=2, data_bits=16, max_dim=2, max_bag=3, pools=1)
    got = []

    def piece(tag, d):
        return {"tag": tag, "slot": 3, "error": 0, "cause": 0, "data": d}

    async def tb(ctx):
        await stream_put(ctx, dut.i_map, {"slot": 3, "split": 1, "pool": 0})
        await stream_put(ctx, dut.i_count, {"tag": 0, "slot": 3, "pool": 0, "count": 3})
        for d in ([30000, -5], [30000, -6], [-40000 + 30000, 1]):
            await stream_put(ctx, dut.i_pooled, piece(0, d))
        for d in ([1, 2], [3, 4]):
            await stream_put(ctx, dut.i_pooled, piece(1, d))
        await stream_put(ctx, dut.i_count, {"tag": 1, "slot": 3, "pool": 0, "count": 2})
        await stream_put(ctx, dut.i_pooled, piece(0, [7, 7]))
        await stream_put(ctx, dut.i_count, {"tag": 0, "slot": 3, "pool": 0, "count": 1})

    async def sink(ctx):
        for _ in range(3):
            got.append(payload_value(await stream_get(ctx, dut.o_pooled)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.add_testbench(sink)
    sim.run_until(2e-6)
    assert [(v["tag"], v["data"]) for v in got] == [
        (0, [32767, -10]),  # 30000 + 30000 - 10000 = 50000 saturates once, at the end
        (1, [4, 6]), (0, [7, 7])]


# ---- whole kernels ----------------------------------------------------------------------------

CONFIG = get_preset("tiny").replace(name="tiny-split", mem_channels=4, channel_bytes=64 << 10,
                                    split_pools=2)
SPEC = ModelSpec(
    "split-bags",
    sparse=(SparseFeature("a", 50, 4), SparseFeature("bi", 3000, 4, bag=4),
            SparseFeature("bc", 2500, 4, bag=3)),
    dense=2, top_mlp=(8, 1))
# the second model: one split table in another slot, so a switch re-maps the combiner's slots
SPEC2 = ModelSpec(
    "split-bags-2",
    sparse=(SparseFeature("x", 4500, 4, bag=2), SparseFeature("y", 20, 4)),
    dense=1, top_mlp=(4, 1))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = {}
    for spec in (SPEC, SPEC2):
        d = tmp_path_factory.mktemp("split") / spec.name
        compile_model(spec, random_weights(spec, seed=3), CONFIG, d)
        out[spec.name] = (d, load_compiled(d))
    return out


def _shard_bases(cm, feature):
    d = cm.descriptors
    g = d["features"][feature]["group"]
    tables = sorted((t for t in d["tables"] if t["group"] == g),
                    key=lambda t: (t["replica"], t["shard"]))
    return sorted({t["row_base"] for t in tables})


def _requests(cm, spec, batch, seed):
    """Random requests whose first bags are the interesting cases for every split feature:
    all IDs in one shard, one ID per shard, an empty bag, a one-ID bag, a full bag in the
    last shard (as many of these as the batch has requests)."""
    dense, sparse = synthetic_batch(spec, batch, seed=seed)
    rng = np.random.default_rng(seed)
    for f, feat in enumerate(spec.sparse):
        b = sparse[f]
        if feat.bag == 1:
            continue
        ids = rng.integers(0, feat.rows, size=b.ids.shape)
        lengths = rng.integers(0, feat.bag + 1, size=batch)
        bases = _shard_bases(cm, f)
        assert len(bases) >= 2, "the table must be split"
        ends = bases[1:] + [feat.rows]
        cases = [
            ([bases[0] + k for k in range(feat.bag)], feat.bag),  # all in shard 0
            ([ends[-1] - 1 - k for k in range(feat.bag)], feat.bag),  # all in the last shard
            ([bases[s] for s in range(len(bases))][:feat.bag], min(feat.bag, len(bases))),
            ([ends[s] - 1 for s in range(len(bases))][:feat.bag], min(feat.bag, len(bases))),
            ([0] * feat.bag, 0),  # empty
            ([ends[0]] + [0] * (feat.bag - 1), 1),  # one ID, the second shard's first row
        ]
        for r, (row, n) in enumerate(cases[:batch]):
            ids[r, :] = 0
            ids[r, :len(row)] = row
            lengths[r] = n
        sparse[f] = Bags(ids.astype(b.ids.dtype), lengths.astype(b.lengths.dtype))
    return dense, sparse


def test_the_plan_splits_both_multi_hot_tables():
    p = plan(SPEC, CONFIG)
    check_program(SPEC, p, CONFIG.capabilities())
    shards = {g.features: g.shards for g in p.groups}
    assert shards[(1,)] == 2 and shards[(2,)] == 2
    p2 = plan(SPEC2, CONFIG)
    check_program(SPEC2, p2, CONFIG.capabilities())
    assert {g.features: g.shards for g in p2.groups}[(0,)] == 3


def test_split_multi_hot_tables_beyond_the_pools_are_refused_by_name(tmp_path):
    one_pool = CONFIG.replace(name="tiny-split-1", split_pools=1)
    refusal = (r"2 multi-hot tables are split over row ranges \(bi, bc\); .* at most 1 "
               r"\(split_pools\)")
    # the planner refuses them itself (every planner), so plan, compile and `recfabric models`
    # agree with the kernel-program check
    for planner in PLANNERS:
        with pytest.raises(PlanError, match=refusal):
            plan(SPEC, one_pool, planner)
    assert model_runs(SPEC, one_pool) and re.search(refusal, model_runs(SPEC, one_pool)[0])
    assert model_runs(SPEC, CONFIG) == []
    with pytest.raises(CompileError, match=refusal):  # compile's fit check, before writing
        compile_model(SPEC, random_weights(SPEC, seed=3), one_pool, tmp_path / "one-pool")
    assert not (tmp_path / "one-pool").exists() or not any((tmp_path / "one-pool").iterdir())
    # a plan made for two pools is refused by the kernel-program check on one
    with pytest.raises(CompileError, match=refusal):
        check_program(SPEC, plan(SPEC, CONFIG), one_pool.capabilities())
    # one split multi-hot table fits one pool (SPEC2's x)
    check_program(SPEC2, plan(SPEC2, one_pool), one_pool.capabilities())
    # with room on chip for one of them, no table must be split: the default planner puts bc
    # on chip and splits bi alone; microrec's placement (no split table on chip) and none
    # split both, which plan() refuses after planning
    roomy = one_pool.replace(name="tiny-split-1-onchip", onchip_bytes=1 << 17)
    p = plan(SPEC, roomy)
    check_program(SPEC, p, roomy.capabilities())
    assert {g.features: g.shards for g in p.groups} == {(0,): 1, (1,): 2, (2,): 1}
    assert {t.memory for t in p.tables if t.group == 2} == {"onchip"}
    for planner in ("microrec", "none"):
        with pytest.raises(PlanError, match=refusal):
            plan(SPEC, roomy, planner)
    # no combiner: the planner refuses the table before planning, naming it
    with pytest.raises(PlanError, match=r"table 'bi' .* splits only one-hot tables"):
        plan(SPEC, CONFIG.replace(name="tiny-split-0", split_pools=0))


def _run_switching_models(acc, compiled, runs):
    """Load each ``(model, spec, batch, seed)`` of ``runs`` in turn on ``acc`` without a reset
    and check its scores `==` golden, no error flags, and one lookup per ID of a split bag (one
    for an empty bag), one per bag of the rest."""
    for name, spec, batch, seed in runs:
        d, cm = compiled[name]
        acc.load(d)
        dense, sparse = _requests(cm, spec, batch, seed)
        r = acc.infer(dense, sparse)
        g = golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse)
        assert np.array_equal(r.scores, g.scores), name
        assert r.counters["errors"] == 0 and r.counters["requests_done"] == batch
        want = sum(batch if f.bag == 1 else int(np.maximum(sparse[i].lengths, 1).sum())
                   for i, f in enumerate(spec.sparse))
        assert r.counters["lookups_issued"] == want, name


def test_split_bags_bit_exact_with_stalls_and_a_model_switch(compiled):
    with Accelerator.open("sim", CONFIG, p_stall=0.3, mem_latency=7, seed=11,
                          max_cycles=200_000) as acc:
        _run_switching_models(acc, compiled, (("split-bags", SPEC, 12, 1),
                                              ("split-bags-2", SPEC2, 6, 2),
                                              ("split-bags", SPEC, 6, 3)))


def test_an_id_past_the_split_table_is_flagged(compiled):
    """An ID past the table's end reaches the last shard, whose unit flags it (cause ROW): the
    record's status says ID_RANGE, the run's errors BAD_INDEX, every other record is `==`
    golden, and the next run is `==` golden again. The host refuses such an ID before packing,
    so the bad record is written into the packed batch (what ``recfabric soak`` does)."""
    from recfabric.host.runtime.wire_format import ResultStatus, pack_requests
    from recfabric.hw.register_map import ERROR_BAD_INDEX
    d, cm = compiled["split-bags"]
    dense, sparse = _requests(cm, SPEC, 4, 5)
    qdense = cm.quantized_model().quantize_dense(dense)
    g = golden_from_images(cm, qdense, sparse)
    with Accelerator.open("sim", CONFIG, p_stall=0.2, mem_latency=5, seed=2,
                          max_cycles=100_000) as acc:
        acc.load(d)
        layout = acc.layout
        req = bytearray(pack_requests(layout, qdense, sparse))
        slot, base = layout.slots[1], 2 * layout.record_bytes
        assert SPEC.sparse[1].bag > 1 and slot.rows == SPEC.sparse[1].rows
        req[base + slot.length_offset:base + slot.length_offset + 2] = (1).to_bytes(2, "little")
        off = base + slot.ids_offset
        req[off:off + 4] = (slot.rows + 3).to_bytes(4, "little")
        r = acc.run_raw(bytes(req))
        assert r.counters["errors"] & ERROR_BAD_INDEX
        assert r.status[2] & ResultStatus.ID_RANGE
        assert [int(r.status[i]) for i in (0, 1, 3)] == [int(ResultStatus.VALID)] * 3
        assert np.array_equal(r.scores[[0, 1, 3]], g.scores[[0, 1, 3]])
        again = acc.infer(dense, sparse)
    assert np.array_equal(again.scores, g.scores)


def test_combiner_latency_is_the_modelled_one():
    """A vector passed through an idle combiner leaves COMBINER_CYCLES cycles after it was
    offered (the cycle model's constant, kept in host/ beside the hardware's)."""
    from recfabric.host.compiler import cycle_model
    from recfabric.hw import bag_combiner
    assert cycle_model.COMBINER_CYCLES == bag_combiner.COMBINER_CYCLES
    dut = BagCombiner(tag_bits=1, slot_bits=1, data_bits=8, max_dim=1, max_bag=2, pools=1)
    seen = []

    async def tb(ctx):
        ctx.set(dut.o_pooled.ready, 1)
        ctx.set(dut.i_pooled.payload, {"tag": 1, "slot": 0, "error": 0, "cause": 0,
                                       "data": [5]})
        ctx.set(dut.i_pooled.valid, 1)
        for cycle in range(8):
            _, _, ready, valid = await ctx.tick().sample(dut.i_pooled.ready, dut.o_pooled.valid)
            if ready:
                ctx.set(dut.i_pooled.valid, 0)
            if valid:
                seen.append(cycle)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    # taken at the first edge (cycle 0), out after COMBINER_CYCLES edges
    assert seen == [bag_combiner.COMBINER_CYCLES]


@pytest.mark.slow  # a Verilator build of the tiny-split kernel (~2-8 min here), then seconds
def test_split_bags_on_verilator(compiled):
    """The generated Verilog of the dispatcher's pieces and the combiner, under Verilator: the
    same requests and model switch, `==` golden."""
    from recfabric.sim.cocotb_launch import require_simulator
    from recfabric.sim.verilator_env import have_verilator
    require_simulator(have_verilator(), "Verilator")
    with Accelerator.open("verilator", CONFIG, p_stall=0.3, mem_latency=20, seed=4) as acc:
        _run_switching_models(acc, compiled, (("split-bags", SPEC, 64, 1),
                                              ("split-bags-2", SPEC2, 32, 2),
                                              ("split-bags", SPEC, 32, 3)))
