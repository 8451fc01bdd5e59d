"""LookupDispatcher against a naive Python model, with random stalls on every output."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from recfabric.hw.config import get_preset
from recfabric.hw.embedding_lookup import LookupKind
from recfabric.hw.lookup_dispatcher import LookupDispatcher
from recfabric.sim.stream_testing import StreamChecker, payload_value, stream_get, stream_put

N_UNITS, MAX_F, MAX_BAG = 3, 5, 3


def dispatch_model(placement, req):
    """Naive twin: per unit, the lookups each placement entry makes of one request."""
    out = []
    for entries in placement:
        seq = []
        for e in entries:
            base = {"tag": req["tag"], "slot": e["slot"], "desc": e["desc"]}
            la = req["lengths"][e["feat_a"]]
            if e["cartesian"]:
                lb = req["lengths"][e["feat_b"]]
                ia, ib = req["ids"][e["feat_a"]][0], req["ids"][e["feat_b"]][0]
                good = ia < e["rows_a"] and ib < e["rows_b"]
                row = (ia * e["rows_b"] + ib) & 0xFFFF_FFFF
                kind = (LookupKind.EMPTY if (la, lb) != (1, 1) else
                        LookupKind.ROW if good else LookupKind.BAD)
                seq.append({**base, "row": row, "first": 1, "last": 1, "kind": kind})
            elif la == 0:
                seq.append({**base, "row": 0, "first": 1, "last": 1, "kind": LookupKind.EMPTY})
            else:
                for k in range(la):
                    seq.append({**base, "row": req["ids"][e["feat_a"]][k], "first": int(k == 0),
                                "last": int(k == la - 1), "kind": LookupKind.ROW})
        out.append(seq)
    return out


def _placement(rng):
    slots = list(range(8))
    rng.shuffle(slots)
    placement = [[] for _ in range(N_UNITS)]
    for s in slots[:rng.randint(3, 8)]:
        u = rng.randrange(N_UNITS)
        if len(placement[u]) >= MAX_F:
            continue
        cart = rng.random() < 0.4
        placement[u].append({"slot": s, "desc": rng.randrange(4), "feat_a": rng.randrange(MAX_F),
                             "feat_b": rng.randrange(MAX_F), "cartesian": int(cart),
                             "rows_a": rng.randint(1, 20), "rows_b": rng.randint(1, 20)})
    return placement


def _request(rng, tag):
    lengths = [rng.choice([0, 1, 1, 2, 3]) for _ in range(MAX_F)]
    ids = [[rng.randrange(24) for _ in range(MAX_BAG)] for _ in range(MAX_F)]
    return {"tag": tag, "lengths": lengths, "ids": ids}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dispatch_matches_model(seed):
    rng = random.Random(seed)
    dut = LookupDispatcher(n_units=N_UNITS, max_features=MAX_F, max_bag=MAX_BAG, tag_bits=4,
                           slot_bits=3, desc_bits=2, id_bits=32)
    placement = _placement(rng)
    reqs = [_request(rng, i % 16) for i in range(12)]
    want = [[] for _ in range(N_UNITS)]
    for r in reqs:
        for u, seq in enumerate(dispatch_model(placement, r)):
            want[u].extend(seq)
    got = [[] for _ in range(N_UNITS)]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for u in range(N_UNITS):
        sim.add_process(StreamChecker(dut.o_lookup[u], name=f"o_lookup[{u}]").process)
    sim.add_process(StreamChecker(dut.i_request, name="i_request").process)

    async def producer(ctx):
        for u, entries in enumerate(placement):
            for i, e in enumerate(entries):
                await stream_put(ctx, dut.i_place, {"unit": u, "index": i, "entry": e,
                                                    "set_count": 0, "count": 0})
            await stream_put(ctx, dut.i_place, {"unit": u, "index": 0, "entry": {},
                                                "set_count": 1, "count": len(entries)})
        for r in reqs:
            await stream_put(ctx, dut.i_request, r, rng=rng, p_idle=0.3)

    def consumer(u):
        async def run(ctx):
            for _ in want[u]:
                v = payload_value(await stream_get(ctx, dut.o_lookup[u], rng=rng, p_stall=0.3))
                got[u].append(v)
        return run

    sim.add_testbench(producer)
    for u in range(N_UNITS):
        sim.add_testbench(consumer(u))

    async def watchdog(ctx):
        await ctx.delay(1e-8 * 20_000)
        raise TimeoutError("dispatcher test stuck")

    sim.add_testbench(watchdog, background=True)
    sim.run()
    assert got == want
    kinds = {lk["kind"] for seq in want for lk in seq}
    assert kinds == {LookupKind.ROW, LookupKind.EMPTY, LookupKind.BAD}  # every path exercised


def test_from_config():
    cfg = get_preset("tiny")
    d = LookupDispatcher.from_config(cfg)
    assert len(d.o_lookup) == cfg.mem_channels + cfg.onchip_units
    assert len(d.i_request.payload.lengths) == cfg.max_features
