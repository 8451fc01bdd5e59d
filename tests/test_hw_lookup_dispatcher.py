"""LookupDispatcher against a naive Python model, with random stalls on every stream."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from recfabric.hw.config import get_preset
from recfabric.hw.lookup_dispatcher import LookupDispatcher, PlaceKind
from recfabric.hw.stream_types import LookupKind
from recfabric.sim.stream_testing import StreamChecker, payload_value, stream_get, stream_put

N_UNITS, MAX_F, MAX_BAG, PARTS = 4, 8, 3, 4


def _radices(rows):
    out, r = [], 1
    for n in reversed(rows):
        out.append(r)
        r *= n
    return list(reversed(out))


def dispatch_model(groups, req, turn):
    """Naive twin, whole-request view: per unit, the lookups of one request.

    ``groups`` is a list of dicts ``slot, feats, rows, shards, copies, parts``: one feature, or
    ``n >= 2`` features of a Cartesian-merged table (members in ``feats`` order, row
    ``sum(id_i * radix_i)``); ``parts[c * shards + s]`` = ``(unit, desc, lo)``. A group's
    lookups are made when its last feature (in feature order) has arrived, so a unit sees its
    groups in that order. ``turn`` (group index -> copy) is the copy round-robin state.
    """
    out = [[] for _ in range(N_UNITS)]
    for gi, g in sorted(enumerate(groups), key=lambda x: max(x[1]["feats"])):
        copy = turn.get(gi, 0)
        turn[gi] = (copy + 1) % g["copies"]
        shards, feats = g["shards"], g["feats"]

        def route(row, kind, first=1, last=1, g=g, copy=copy, shards=shards):
            s = max(k for k in range(shards) if row >= g["parts"][k][2])
            unit, desc, lo = g["parts"][copy * shards + s]
            out[unit].append({"tag": req["tag"], "slot": g["slot"], "desc": desc,
                              "row": row - lo, "kind": kind, "first": first, "last": last})

        if len(feats) > 1:
            lengths = [req["lengths"][f] for f in feats]
            ids = [req["ids"][f][0] for f in feats]
            # A bag length other than 1 is the parser's BAG_RANGE error: EMPTY, not BAD.
            one_hot = all(n == 1 for n in lengths)
            good = one_hot and all(i < r for i, r in zip(ids, g["rows"]))
            row = sum(i * x for i, x in zip(ids, _radices(g["rows"]))) if good else 0
            route(row, LookupKind.EMPTY if not one_hot else
                  LookupKind.ROW if good else LookupKind.BAD)
            continue
        (f,) = feats
        n = req["lengths"][f]
        if shards > 1:  # a split (one-hot) table: one lookup per bag
            route(req["ids"][f][0] if n == 1 else 0,
                  LookupKind.ROW if n == 1 else LookupKind.EMPTY)
            continue
        if n == 0:
            route(0, LookupKind.EMPTY)
        for k in range(n):
            route(req["ids"][f][k], LookupKind.ROW, int(k == 0), int(k == n - 1))
    return out


def placement_words(groups):
    """The per-feature placement writes for ``groups`` (as host/kernel_program.py makes them)."""
    words = {}
    for g in groups:
        parts = [{"unit": u, "desc": d, "lo": lo} for u, d, lo in g["parts"]]
        parts += [{"unit": 0, "desc": 0, "lo": 0}] * (PARTS - len(parts))
        route = {"slot": g["slot"], "shards": g["shards"], "copies": g["copies"],
                 "parts": parts}
        if len(g["feats"]) == 1:
            words[g["feats"][0]] = {**route, "kind": PlaceKind.SINGLE}
            continue
        rows = dict(zip(g["feats"], g["rows"]))
        radix = dict(zip(g["feats"], _radices(g["rows"])))
        order = sorted(g["feats"])
        for k, f in enumerate(order):
            e = {"rows": rows[f], "mult": radix[f], "partner": order[0]}
            if k == 0:
                words[f] = {**e, "kind": PlaceKind.HOLD}
            elif k < len(order) - 1:
                words[f] = {**e, "kind": PlaceKind.MID}
            else:
                words[f] = {**e, **route, "kind": PlaceKind.LAST}
    return [{"feature": f, "entry": words.get(f, {"kind": PlaceKind.NONE})}
            for f in range(MAX_F)]


def _parts(rng, shards, copies, rows):
    """Copy-major parts; shard boundaries at random rows below ``rows``."""
    los = [0] + sorted(rng.sample(range(1, rows), shards - 1)) if shards > 1 else [0]
    return [(rng.randrange(N_UNITS), rng.randrange(4), lo) for _ in range(copies) for lo in los]


def _groups(rng):
    feats = list(range(MAX_F))
    rng.shuffle(feats)
    groups, slot = [], 0
    while feats:
        shards, copies = 1, 1
        if len(feats) >= 2 and (not groups or rng.random() < 0.4):
            n = min(len(feats), rng.choice([2, 2, 3, 4]))
            g = {"feats": tuple(feats.pop() for _ in range(n)),
                 "rows": tuple(rng.randint(1, 6) for _ in range(n))}
            total = int(np.prod(g["rows"]))
            if total >= 4 and rng.random() < 0.5:
                shards = rng.randint(2, min(PARTS, total - 1))
        elif rng.random() < 0.15:
            feats.pop()  # a feature nothing looks up
            continue
        else:
            g = {"feats": (feats.pop(),), "rows": (24,)}
            kind = rng.random()
            if kind < 0.3:
                shards = rng.randint(2, PARTS)
            elif kind < 0.6:
                copies = rng.randint(2, PARTS)
        if shards == 1 and copies == 1 and rng.random() < 0.3:
            copies = rng.randint(2, PARTS)
        rows = int(np.prod(g["rows"]))
        groups.append({**g, "slot": slot, "shards": shards, "copies": copies,
                       "parts": _parts(rng, shards, copies, max(rows, shards + 1))})
        slot += 1
    return groups


def _request(rng, tag, groups):
    """Random bags: multi-hot ones for plain tables; mostly one ID (occasionally 0 or 2, and
    occasionally out of range) for merged and split ones."""
    lengths = [rng.choice([0, 1, 1, 1, 2, 3]) for _ in range(MAX_F)]
    ids = [[rng.randrange(24) for _ in range(MAX_BAG)] for _ in range(MAX_F)]
    for g in groups:
        if len(g["feats"]) == 1 and g["shards"] == 1:
            continue
        total = int(np.prod(g["rows"]))
        for f, rows in zip(g["feats"], g["rows"]):
            lengths[f] = rng.choice([1] * 12 + [0, 2])
            top = rows if len(g["feats"]) > 1 else total + 2
            ids[f] = [rng.randrange(top + (rng.random() < 0.1)) for _ in range(MAX_BAG)]
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


def run_dispatcher(groups, reqs, rng, fifo_depth=2):
    """Simulate the dispatcher on ``reqs`` with random stalls; returns (got, want, counts)."""
    dut = LookupDispatcher(n_units=N_UNITS, max_features=MAX_F, tag_bits=4, slot_bits=3,
                           desc_bits=2, id_bits=32, fifo_depth=fifo_depth, parts=PARTS)
    want = [[] for _ in range(N_UNITS)]
    turn = {}
    for r in reqs:
        for u, seq in enumerate(dispatch_model(groups, r, turn)):
            want[u].extend(seq)
    got = [[] for _ in range(N_UNITS)]
    counts, sent = [], []

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
        sent.append(True)

    def consumer(u):
        async def run(ctx):
            for _ in want[u]:
                v = payload_value(await stream_get(ctx, dut.o_lookup[u], rng=rng,
                                                   p_stall=0.2 + 0.2 * u))
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
        while not sent or any(len(g) < len(w) for g, w in zip(got, want)):
            await ctx.tick()
        await ctx.tick().repeat(3)
        assert ctx.get(dut.idle) == 1
        for u in range(N_UNITS):
            assert ctx.get(dut.o_lookup[u].valid) == 0
        counts.extend(ctx.get(dut.count[u]) for u in range(N_UNITS))

    sim.add_testbench(watchdog, background=True)
    sim.add_testbench(drained)
    sim.run()
    return got, want, counts


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_dispatch_matches_model(seed):
    """Random placements: plain, n-way merged (2..4 members), split by row range, copied, and
    merged-and-split tables, against the naive model."""
    rng = random.Random(seed)
    groups = _groups(rng)
    reqs = [_request(rng, i % 16, groups) for i in range(24)]
    got, want, counts = run_dispatcher(groups, reqs, rng, fifo_depth=2 + seed % 3)
    assert got == want
    assert counts == [len(w) for w in want]  # the per-unit lookup counters
    kinds = {lk["kind"] for seq in want for lk in seq}
    assert kinds == {LookupKind.ROW, LookupKind.EMPTY, LookupKind.BAD}  # every path exercised


def test_copies_are_served_round_robin_per_bag():
    """Policy: a feature's bags go to its copies in turn. On a uniform stream of one-hot bags
    the per-unit lookup counters of the copies are within 1 of each other; a table both split
    (2 row ranges) and copied (2 copies) routes each row to its range in the bag's copy."""
    rng = random.Random(7)
    groups = [
        {"feats": (0,), "rows": (24,), "slot": 0, "shards": 1, "copies": 3,
         "parts": [(0, 0, 0), (1, 1, 0), (2, 2, 0)]},
        {"feats": (1,), "rows": (24,), "slot": 1, "shards": 2, "copies": 2,
         "parts": [(3, 0, 0), (2, 1, 10), (1, 2, 0), (3, 3, 10)]},
    ]
    reqs = []
    for t in range(17):
        ids = [[rng.randrange(24)] + [0] * (MAX_BAG - 1) for _ in range(MAX_F)]
        reqs.append({"tag": t % 16, "lengths": [1, 1] + [0] * (MAX_F - 2), "ids": ids})
    got, want, counts = run_dispatcher(groups, reqs, rng)
    assert got == want
    served = [sum(1 for lk in got[u] if lk["slot"] == 0) for u in range(3)]
    assert sum(served) == 17 and max(served) - min(served) <= 1, served
    assert served == [6, 6, 5]  # copy 0 first: bags 0, 3, 6, ... (the stated policy)
    # the split-and-copied table: each bag in its turn's copy, each row in its range
    for k, r in enumerate(reqs):
        row = r["ids"][1][0]
        unit, desc, lo = groups[1]["parts"][(k % 2) * 2 + (row >= 10)]
        assert {"tag": r["tag"], "slot": 1, "desc": desc, "row": row - lo, "first": 1,
                "last": 1, "kind": LookupKind.ROW} in got[unit]
    assert counts == [len(w) for w in want]


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
                "kind": PlaceKind.SINGLE, "parts": [{"unit": f % 2}], "slot": f}})
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


_ICARUS_TB = """`timescale 1ns/1ps
module tb;
  reg clk = 0, rst = 1, place_valid = 0, id_valid = 0;
  reg [{wp}:0] place = 0;
  reg [{wi}:0] id = 0;
  wire [{wo}:0] o0, o1;
  wire v0, v1, place_ready, id_ready, idle;
  wire [31:0] c0, c1;
  reg seen0 = 0;
  integer i;
  always #5 clk = ~clk;
  dispatcher dut(.clk(clk), .rst(rst), .count_clear(1'b0),
    .i_place__payload(place), .i_place__valid(place_valid), .i_place__ready(place_ready),
    .i_id__payload(id), .i_id__valid(id_valid), .i_id__ready(id_ready),
    .o_lookup__0__payload(o0), .o_lookup__0__valid(v0), .o_lookup__0__ready(1'b1),
    .o_lookup__1__payload(o1), .o_lookup__1__valid(v1), .o_lookup__1__ready(1'b1),
    .idle(idle), .count__0(c0), .count__1(c1));
  always @(posedge clk) if (!rst && v0 !== 1'b0) seen0 <= 1;
  initial begin
    repeat (3) @(negedge clk);
    rst = 0;
    place = {place}; place_valid = 1;
    @(negedge clk) while (place_ready !== 1'b1) @(negedge clk);
    @(negedge clk) place_valid = 0;
    id = {item}; id_valid = 1;
    @(negedge clk) while (id_ready !== 1'b1) @(negedge clk);
    @(negedge clk) id_valid = 0;
    for (i = 0; i < 40 && v1 !== 1'b1; i = i + 1) @(negedge clk);
    if (v1 === 1'b1) $display("LOOKUP %b unit0=%b", o1, seen0);
    else $display("NO LOOKUP v1=%b id_ready=%b", v1, id_ready);
    $finish;
  end
  initial begin #3000 $display("TIMEOUT id_ready=%b", id_ready); $finish; end
endmodule
"""


def test_unsharded_lookup_under_icarus(tmp_path):
    """The dispatcher's Verilog under 4-state Icarus (``-g2012``, as cocotb runs it): an item of
    an unsharded table reaches its unit with a fully defined lookup, and nothing else does.

    Regression: the shard choice was an ``always @*`` block reading only the registered shard
    compares, which never change when no table is sharded; Icarus never ran that block, so the
    part (and the unit) chosen stayed X and the pipeline hung (kernel test under Icarus).
    """
    import subprocess

    from amaranth.back import verilog
    from amaranth.hdl import Const

    from recfabric.sim.cocotb_launch import require_simulator
    from recfabric.sim.verilator_env import have_icarus

    require_simulator(have_icarus(), "Icarus Verilog >= 11")  # fails under CI, skips elsewhere
    dut = LookupDispatcher(n_units=2, max_features=4, tag_bits=2, slot_bits=2, desc_bits=1,
                           parts=2)

    def bits(stream, value):
        c = Const.cast(stream.payload.shape().const(value))
        return f"{len(c)}'d{c.value}", len(c)

    place, wp = bits(dut.i_place, {"feature": 2, "entry": {
        "kind": PlaceKind.SINGLE, "slot": 1, "parts": [{"unit": 1, "desc": 1, "lo": 0}]}})
    item, wi = bits(dut.i_id, {"tag": 3, "feature": 2, "id": 5, "first": 1, "last": 1,
                               "empty": 0, "bad_bag": 0})
    want = Const.cast(dut.o_lookup[1].payload.shape().const({
        "tag": 3, "slot": 1, "desc": 1, "row": 5, "kind": LookupKind.ROW, "first": 1,
        "last": 1}))
    wo = len(want)
    (tmp_path / "dispatcher.v").write_text(verilog.convert(dut, name="dispatcher"))
    (tmp_path / "tb.v").write_text(_ICARUS_TB.format(wp=wp - 1, wi=wi - 1, wo=wo - 1,
                                                     place=place, item=item))
    subprocess.run(["iverilog", "-g2012", "-s", "tb", "-o", "sim", "tb.v", "dispatcher.v"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=120)
    out = subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert f"LOOKUP {want.value:0{wo}b} unit0=0" in out, out
