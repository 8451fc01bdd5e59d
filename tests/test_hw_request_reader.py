"""RecordFetcher + RecordParser against wire-format records packed by the host."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.runtime.wire_format import RequestLayout, pack_requests
from recfabric.hw.request_reader import RecordFetcher, RecordParser, parser_param_words
from recfabric.sim.hbm_model import HBMModel
from recfabric.sim.stream_testing import StreamChecker, payload_value, stream_get, stream_put


def expected_items(sparse, batch, inflight):
    items = []
    for b in range(batch):
        for f, bags in enumerate(sparse):
            n = int(bags.lengths[b])
            if n == 0:
                items.append((b % inflight, f, 0, 1, 1, 1))
            for k in range(n):
                items.append((b % inflight, f, int(bags.ids[b, k]), k == 0, k == n - 1, 0))
    return [tuple(int(v) for v in it) for it in items]


def _fetcher_and_parser(buf, *, base, dw, max_burst, fifo_depth, max_features, inflight,
                        latency, rng=None, p_stall=0.0, **parser_kw):
    """A RecordFetcher feeding a RecordParser, ``buf`` at ``base`` of an HBMModel memory (with
    ``p_stall`` pauses on AR and R). Returns (module, fetcher, parser, memory model)."""
    mem = np.zeros(base + len(buf) + 4096, np.uint8)
    mem[base:base + len(buf)] = np.frombuffer(buf, np.uint8)
    m = Module()
    m.submodules.fetch = fetch = RecordFetcher(data_width=dw, max_burst=max_burst,
                                               fifo_depth=fifo_depth)
    m.submodules.parse = parse = RecordParser(data_width=dw, max_features=max_features,
                                              inflight=inflight, **parser_kw)
    wiring.connect(m, fetch.o_word, parse.i_word)
    hbm = HBMModel(fetch.m_axi, mem, latency=latency, p_ar_stall=p_stall, p_r_idle=p_stall,
                   rng=rng)
    return m, fetch, parse, hbm


def _set_fetch(ctx, fetch, base, words, batch):
    """The fetcher's run inputs, with ``start`` raised (the caller ticks and lowers it)."""
    ctx.set(fetch.base, base)
    ctx.set(fetch.words, words)
    ctx.set(fetch.batch, batch)
    ctx.set(fetch.start, 1)


async def _start_reader(ctx, fetch, parse, layout, base, batch):
    """Load the parser's parameter words, then start fetcher and parser together."""
    for w in parser_param_words(layout):
        await stream_put(ctx, parse.i_param, w)
    _set_fetch(ctx, fetch, base, layout.words_per_record, batch)
    ctx.set(parse.batch, batch)
    ctx.set(parse.start, 1)
    await ctx.tick()
    ctx.set(fetch.start, 0)
    ctx.set(parse.start, 0)



SPECS = [
    ModelSpec("p1", sparse=(SparseFeature("a", 70000, 4), SparseFeature("b", 9, 4, bag=3),
                            SparseFeature("c", 5, 4, bag=5)), dense=3, top_mlp=(1,)),
    ModelSpec("p2", sparse=tuple(SparseFeature(f"s{i}", 1000 + i, 8, bag=1 + i % 3)
                                 for i in range(11)), dense=13, top_mlp=(1,)),
    ModelSpec("p3", sparse=(SparseFeature("a", 3, 4),), dense=0, top_mlp=(1,)),
    # Several length words per record (the parser's feature sequencer reads each length as
    # soon as its word is stored), multi-hot and one-hot bags mixed.
    ModelSpec("p4", sparse=tuple(SparseFeature(f"m{i}", 50 + i, 4, bag=1 + i % 4)
                                 for i in range(21)), dense=5, top_mlp=(1,)),
]


@pytest.mark.parametrize("spec, dw, bits", [(SPECS[0], 256, 16), (SPECS[1], 256, 8),
                                             (SPECS[1], 512, 16), (SPECS[2], 256, 16),
                                             (SPECS[3], 128, 16), (SPECS[3], 256, 8)])
def test_parser_and_fetcher_match_the_wire_format(spec, dw, bits):
    rng = random.Random(3)
    batch, inflight = 7, 4
    layout = RequestLayout.for_model(spec, word_bits=dw, elem_bits=bits)
    dense_f, sparse = synthetic_batch(spec, batch, seed=5)
    for bags in sparse:  # some empty multi-hot bags
        if bags.ids.shape[1] > 1:
            bags.lengths[1] = 0
    dense = np.random.default_rng(1).integers(-(1 << (bits - 1)), 1 << (bits - 1),
                                              size=(batch, spec.dense))
    buf = pack_requests(layout, dense, sparse)
    base = 0x3000
    m, fetch, parse, hbm = _fetcher_and_parser(
        buf, base=base, dw=dw, max_burst=4, fifo_depth=8, max_features=max(16, len(spec.sparse)),
        inflight=inflight, data_bits=bits, latency=9, rng=rng, p_stall=0.2)
    id_check = StreamChecker(parse.o_id, name="o_id")
    checkers = [id_check, StreamChecker(parse.o_dense, name="o_dense"),
                StreamChecker(parse.i_word, name="i_word")]
    want = expected_items(sparse, batch, inflight)
    want_dense = [(b % inflight, int(v), int(i == spec.dense - 1))
                  for b, row in enumerate(dense) for i, v in enumerate(row)]
    got, got_dense = [], []

    async def control(ctx):
        await _start_reader(ctx, fetch, parse, layout, base, batch)

    async def ids(ctx):
        per_tag_last = {}
        while len(got) < len(want):
            v = payload_value(await stream_get(ctx, parse.o_id, rng=rng, p_stall=0.3))
            got.append((v["tag"], v["feature"], v["id"], v["first"], v["last"], v["empty"]))
            per_tag_last[v["tag"]] = v["feature"]

    async def dense_sink(ctx):
        while len(got_dense) < len(want_dense):
            v = payload_value(await stream_get(ctx, parse.o_dense, rng=rng, p_stall=0.3))
            got_dense.append((v["tag"], v["data"], v["last"]))

    async def credits(ctx):
        # Return a credit a while after each request's last item, as the concat stage would.
        returned = 0
        while returned < batch:
            done = sum(1 for g in got if g[1] == len(spec.sparse) - 1 and g[4]) if spec.sparse \
                else 0
            if done > returned and rng.random() < 0.2:
                ctx.set(parse.credit, 1)
                await ctx.tick()
                ctx.set(parse.credit, 0)
                returned += 1
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_process(hbm.process)
    for c in checkers:
        sim.add_process(c.process)
    sim.add_testbench(control)
    sim.add_testbench(ids)
    sim.add_testbench(dense_sink)
    sim.add_testbench(credits, background=True)
    sim.run()
    assert got == want
    assert got_dense == want_dense
    assert hbm.stats.beats == batch * layout.words_per_record


def _run_parser(spec, buf, layout, batch, *, dw=256, inflight=8, rng=None, p_stall=0.0,
                max_features=None):
    """Fetcher + parser over ``buf``; returns (items, dense values, o_id checker, bad_bag)."""
    base = 0x1000
    m, fetch, parse, hbm = _fetcher_and_parser(
        buf, base=base, dw=dw, max_burst=16, fifo_depth=32,
        max_features=max_features or len(spec.sparse), inflight=inflight, latency=4, rng=rng)
    id_check = StreamChecker(parse.o_id, name="o_id")
    dense_check = StreamChecker(parse.o_dense, name="o_dense")
    got, got_dense, flags = [], [], []

    async def control(ctx):
        await _start_reader(ctx, fetch, parse, layout, base, batch)
        await ctx.tick().until(parse.parsed == batch)
        await ctx.tick()
        flags.append(ctx.get(parse.bad_bag))

    async def ids(ctx):
        while True:
            v = payload_value(await stream_get(ctx, parse.o_id, rng=rng, p_stall=p_stall))
            got.append(v)

    async def dense_sink(ctx):
        while True:
            got_dense.append(payload_value(await stream_get(ctx, parse.o_dense, rng=rng,
                                                            p_stall=p_stall))["data"])

    async def credits(ctx):
        # A credit as soon as a request's last item is out: credits never limit the parser.
        returned = 0
        while True:
            done = sum(1 for g in got if g["feature"] == len(spec.sparse) - 1 and g["last"])
            ctx.set(parse.credit, done > returned)
            returned += done > returned
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_process(hbm.process)
    sim.add_process(id_check.process)
    sim.add_process(dense_check.process)
    sim.add_testbench(control)
    sim.add_testbench(ids, background=True)
    sim.add_testbench(dense_sink, background=True)
    sim.add_testbench(credits, background=True)
    sim.run()
    return got, got_dense, id_check, flags[0]


def test_parser_keeps_up_one_item_per_live_id():
    """MicroRec-small's shape (47 one-hot features, 9 words per record): the parser spends about
    one cycle per ID, not two cycles per feature (lengths are parsed a word at a time)."""
    from recfabric.host.model.zoo import get_model
    spec = get_model("microrec-small")
    batch = 6
    layout = RequestLayout.for_model(spec, word_bits=256, elem_bits=16)
    dense, sparse = synthetic_batch(spec, batch, seed=2)
    buf = pack_requests(layout, np.zeros((batch, 0), np.int64), sparse)
    got, _, check, bad = _run_parser(spec, buf, layout, batch, max_features=128)
    want = [{"tag": b % 8, "feature": f, "id": int(sparse[f].ids[b, 0]), "first": 1, "last": 1,
             "empty": 0, "bad_bag": 0} for b in range(batch) for f in range(len(spec.sparse))]
    assert got == want
    assert bad == 0
    span = check.last_transfer_cycle - check.first_transfer_cycle + 1
    per_request = span / batch
    # 47 IDs + 3 length words + the request's fixed cost; the old field-per-cycle parser
    # needed 2 x 47 + 9 word fetches.
    assert per_request <= len(spec.sparse) + 3 + 3, f"{per_request:.1f} cycles per request"


def test_oversize_bags_are_clamped_and_flagged():
    spec = SPECS[0]  # a: one-hot, b: bag 3, c: bag 5
    batch = 3
    layout = RequestLayout.for_model(spec, word_bits=256, elem_bits=16)
    dense, sparse = synthetic_batch(spec, batch, seed=7)
    dq = np.zeros((batch, spec.dense), np.int64)
    buf = bytearray(pack_requests(layout, dq, sparse))
    rec = layout.record_bytes
    # Request 1: feature b claims 7 IDs (its maximum is 3): the parser takes the first 3.
    off = rec + layout.slots[1].length_offset
    buf[off:off + 2] = (7).to_bytes(2, "little")
    for k in range(3):
        o = rec + layout.slots[1].ids_offset + 4 * k
        buf[o:o + 4] = (k + 1).to_bytes(4, "little")
    rng = random.Random(4)
    got, _, _, bad = _run_parser(spec, bytes(buf), layout, batch, rng=rng, p_stall=0.3,
                                 max_features=4)
    b_items = [g for g in got if g["tag"] == 1 and g["feature"] == 1]
    assert [(g["id"], g["first"], g["last"], g["bad_bag"]) for g in b_items] == \
        [(1, 1, 0, 1), (2, 0, 0, 1), (3, 0, 1, 1)]
    assert all(g["bad_bag"] == 0 for g in got if not (g["tag"] == 1 and g["feature"] == 1))
    assert len(got) == sum(int(min(n, s.bag)) if n else 1
                           for bags, s in zip(sparse, spec.sparse)
                           for n in bags.lengths) + (3 - int(sparse[1].lengths[1]))
    assert bad == 1


def _fetch_words(base, words, batch, *, restart=None, p_ar_stall=0.0, seed=0):
    """Run a RecordFetcher (256-bit words, 4-beat bursts) against HBMModel (which raises on a
    4 KiB crossing or a withdrawn ARVALID); ``restart = (base, words, batch)`` starts a second
    run while the first one's AR request waits for ARREADY. Returns the words delivered after
    the last start, and the run's end state."""
    rng = random.Random(seed)
    mem = np.frombuffer(np.random.default_rng(seed).bytes(0x4000), np.uint8).copy()
    dut = RecordFetcher(data_width=256, max_burst=4, fifo_depth=8)
    hbm = HBMModel(dut.m_axi, mem, latency=5, p_ar_stall=p_ar_stall, p_r_idle=0.2, rng=rng)
    total = (restart or (base, words, batch))
    want = total[1] * total[2]
    got, log = [], {}

    async def control(ctx):
        _set_fetch(ctx, dut, base, words, batch)
        await ctx.tick()
        ctx.set(dut.start, 0)
        if restart:  # wait for an AR request held up, after one burst was accepted
            ctx.set(dut.o_word.ready, 1)  # the first run's words flow (and are not kept)
            accepted, n = 0, 0
            while True:
                _, _, arvalid, arready = await ctx.tick().sample(dut.m_axi.arvalid,
                                                                 dut.m_axi.arready)
                if arvalid and not arready and accepted:
                    break
                accepted += arvalid and arready
                n += 1
                assert n < 500, "no AR request waited for ARREADY"
            _set_fetch(ctx, dut, *restart)
            log["arvalid_at_start"] = ctx.get(dut.m_axi.arvalid)
            await ctx.tick()
            ctx.set(dut.start, 0)
        n = 0
        while len(got) < want or n < 200:  # and nothing more after the last word
            if ctx.get(dut.o_word.valid):
                got.append(ctx.get(dut.o_word.payload))
            ctx.set(dut.o_word.ready, 1)
            await ctx.tick()
            n += 1
            assert n < 3000, f"fetcher delivered {len(got)} of {want} words"
        log["arvalid"] = ctx.get(dut.m_axi.arvalid)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(hbm.process, background=True)
    sim.add_testbench(control)
    sim.run()
    return got, mem, log


def _words_at(mem, addr, n):
    return [int.from_bytes(mem[addr + 32 * i: addr + 32 * (i + 1)].tobytes(), "little")
            for i in range(n)]


def test_fetcher_unaligned_base_reads_whole_words_within_4k():
    """Formal finding: an unaligned base gave 0 beats to the 4 KiB boundary and ARLEN=255
    bursts across it, for ever. The base's bits below the word are ignored now."""
    base = 0x1FF3  # 13 bytes before 4 KiB; its word starts at 0x1FE0
    got, mem, log = _fetch_words(base, 3, 3)
    assert got == _words_at(mem, 0x1FE0, 9)
    assert log["arvalid"] == 0


def test_fetcher_start_while_arvalid_waits_keeps_it_and_drops_the_old_run():
    """Formal finding: a ``start`` while ARVALID waited withdrew it (HBMModel raises on that).
    Now ARVALID stays up until accepted, and only the new run's words come out."""
    for seed in range(4):
        got, mem, log = _fetch_words(0x0FC0, 4, 6, restart=(0x2000, 2, 5), p_ar_stall=0.7,
                                     seed=seed)
        assert log["arvalid_at_start"] == 1
        assert got == _words_at(mem, 0x2000, 10), seed
