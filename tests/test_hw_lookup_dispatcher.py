"""LookupDispatcher against a naive Python model, with random stalls on every stream."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from recfabric.hw.config import get_preset
from recfabric.hw.lookup_dispatcher import LookupDispatcher, PlaceKind
from recfabric.hw.stream_types import LookupKind
from recfabric.sim.stream_testing import StreamChecker, payload_value, stream_get, stream_put

N_UNITS, MAX_F, MAX_BAG = 3, 7, 3


def dispatch_model(groups, req):
    """Naive twin, whole-request view: per unit, the lookups of one request.

    ``groups`` is a list of dicts ``unit, slot, desc, feats`` (one feature, or ``(a, b)`` of a
    Cartesian pair with ``rows``). A group's lookups are made when its last feature (in feature
    order) has arrived, so a unit sees its groups in that order.
    """
    out = [[] for _ in range(N_UNITS)]
    for g in sorted(groups, key=lambda g: max(g["feats"])):
        seq = out[g["unit"]]
        base = {"tag": req["tag"], "slot": g["slot"], "desc": g["desc"]}
        if len(g["feats"]) == 2:
            (fa, fb), (ra, rb) = g["feats"], g["rows"]
            la, lb = req["lengths"][fa], req["lengths"][fb]
            ia, ib = req["ids"][fa][0], req["ids"][fb][0]
            # A bag length other than 1 is the parser's BAG_RANGE error: EMPTY, not BAD.
            one_hot = la == 1 and lb == 1
            good = one_hot and ia < ra and ib < rb
            seq.append({**base, "row": (ia * rb + ib) if good else 0, "first": 1, "last": 1,
                        "kind": (LookupKind.EMPTY if not one_hot else
                                 LookupKind.ROW if good else LookupKind.BAD)})
            continue
        (f,) = g["feats"]
        n = req["lengths"][f]
        if n == 0:
            seq.append({**base, "row": 0, "first": 1, "last": 1, "kind": LookupKind.EMPTY})
        for k in range(n):
            seq.append({**base, "row": req["ids"][f][k], "first": int(k == 0),
                        "last": int(k == n - 1), "kind": LookupKind.ROW})
    return out


def placement_words(groups):
    """The per-feature placement writes for ``groups`` (as host/kernel_program.py makes them)."""
    words = {}
    for g in groups:
        common = {"unit": g["unit"], "slot": g["slot"], "desc": g["desc"]}
        if len(g["feats"]) == 1:
            words[g["feats"][0]] = {**common, "kind": PlaceKind.SINGLE}
            continue
        (fa, fb), (ra, rb) = g["feats"], g["rows"]
        first, second = sorted((fa, fb))
        rows = {fa: ra, fb: rb}
        words[first] = {"kind": PlaceKind.HOLD, "rows": rows[first]}
        words[second] = {**common, "kind": PlaceKind.PAIR, "rows": rows[second], "mult": rb,
                         "partner": first, "a_held": int(first == fa)}
    return [{"feature": f, "entry": words.get(f, {"kind": PlaceKind.NONE})}
            for f in range(MAX_F)]


def _groups(rng):
    feats = list(range(MAX_F))
    rng.shuffle(feats)
    groups, slot = [], 0
    while feats:
        if len(feats) >= 2 and (not groups or rng.random() < 0.4):
            g = {"feats": (feats.pop(), feats.pop()),
                 "rows": (rng.randint(1, 20), rng.randint(1, 20))}
        elif rng.random() < 0.15:
            feats.pop()  # a feature nothing looks up
            continue
        else:
            g = {"feats": (feats.pop(),)}
        groups.append({**g, "unit": rng.randrange(N_UNITS), "slot": slot,
                       "desc": rng.randrange(4)})
        slot += 1
    return groups


def _request(rng, tag):
    lengths = [rng.choice([0, 1, 1, 1, 2, 3]) for _ in range(MAX_F)]
    ids = [[rng.randrange(24) for _ in range(MAX_BAG)] for _ in range(MAX_F)]
    return {"tag": tag, "lengths": lengths, "ids": ids}


def id_items(req):
    """The parser's items for ``req`` (features in order, one per live ID or one empty)."""
    items = []
    for f, n in enumerate(req["lengths"]):
        base = {"tag": req["tag"], "feature": f, "bad_bag": 0}
        if n == 0:
            items.append({**base, "id": 0, "first": 1, "last": 1, "empty": 1})
        for k in range(n):
            items.append({**base, "id": req["ids"][f][k], "first": int(k == 0),
                          "last": int(k == n - 1), "empty": 0})
    return items


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_dispatch_matches_model(seed):
    rng = random.Random(seed)
    dut = LookupDispatcher(n_units=N_UNITS, max_features=MAX_F, tag_bits=4, slot_bits=3,
                           desc_bits=2, id_bits=32, fifo_depth=2 + seed % 3)
    groups = _groups(rng)
    reqs = [_request(rng, i % 16) for i in range(16)]
    want = [[] for _ in range(N_UNITS)]
    for r in reqs:
        for u, seq in enumerate(dispatch_model(groups, r)):
            want[u].extend(seq)
    got = [[] for _ in range(N_UNITS)]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for u in range(N_UNITS):
        sim.add_process(StreamChecker(dut.o_lookup[u], name=f"o_lookup[{u}]").process)
    sim.add_process(StreamChecker(dut.i_id, name="i_id").process)

    async def producer(ctx):
        for w in placement_words(groups):
            await stream_put(ctx, dut.i_place, w)
        for r in reqs:
            for item in id_items(r):
                await stream_put(ctx, dut.i_id, item, rng=rng, p_idle=0.3)

    def consumer(u):
        async def run(ctx):
            for _ in want[u]:
                v = payload_value(await stream_get(ctx, dut.o_lookup[u], rng=rng,
                                                   p_stall=0.2 + 0.25 * u))
                got[u].append(v)
        return run

    sim.add_testbench(producer)
    for u in range(N_UNITS):
        sim.add_testbench(consumer(u))

    async def watchdog(ctx):
        await ctx.delay(1e-8 * 20_000)
        raise TimeoutError("dispatcher test stuck")

    async def drained(ctx):
        # Nothing is left behind: once every lookup is out, the dispatcher is idle.
        while any(len(g) < len(w) for g, w in zip(got, want)):
            await ctx.tick()
        await ctx.tick()
        assert ctx.get(dut.idle) == 1
        for u in range(N_UNITS):
            assert ctx.get(dut.o_lookup[u].valid) == 0

    sim.add_testbench(watchdog, background=True)
    sim.add_testbench(drained)
    sim.run()
    assert got == want
    kinds = {lk["kind"] for seq in want for lk in seq}
    assert kinds == {LookupKind.ROW, LookupKind.EMPTY, LookupKind.BAD}  # every path exercised


def test_one_item_per_cycle():
    """Without stalls the dispatcher takes an item every cycle (it keeps up with the parser)."""
    dut = LookupDispatcher(n_units=2, max_features=4, tag_bits=2, slot_bits=2, desc_bits=1)
    items = [{"tag": t, "feature": f, "id": 10 * t + f, "first": 1, "last": 1, "empty": 0,
              "bad_bag": 0} for t in range(4) for f in range(4)]
    seen = [[], []]
    in_check = StreamChecker(dut.i_id, name="i_id")

    async def producer(ctx):
        for f in range(4):
            await stream_put(ctx, dut.i_place, {"feature": f, "entry": {
                "kind": PlaceKind.SINGLE, "unit": f % 2, "slot": f, "desc": 0}})
        for it in items:
            await stream_put(ctx, dut.i_id, it)

    def consumer(u):
        async def run(ctx):
            while len(seen[u]) < 8:
                seen[u].append(payload_value(await stream_get(ctx, dut.o_lookup[u]))["row"])
        return run

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(in_check.process)
    sim.add_testbench(producer)
    sim.add_testbench(consumer(0))
    sim.add_testbench(consumer(1))
    sim.run()
    assert seen == [[10 * t + f for t in range(4) for f in (0, 2)],
                    [10 * t + f for t in range(4) for f in (1, 3)]]
    span = in_check.last_transfer_cycle - in_check.first_transfer_cycle + 1
    assert in_check.count == len(items) and span == len(items), \
        f"{len(items)} items took {span} cycles"


def test_from_config():
    cfg = get_preset("tiny")
    d = LookupDispatcher.from_config(cfg)
    assert len(d.o_lookup) == cfg.mem_channels + cfg.onchip_units
    assert d.max_features == cfg.max_features


@pytest.mark.parametrize("bad, msg", [
    (dict(n_units=0), "n_units must be a positive integer, not 0"),
    (dict(fifo_depth=1), "fifo_depth must be at least 2, not 1"),
    (dict(id_bits=40), "id_bits must be at most 32"),
])
def test_bad_parameters(bad, msg):
    args = {**dict(n_units=2, max_features=4), **bad}
    with pytest.raises((TypeError, ValueError), match=msg):
        LookupDispatcher(**args)
