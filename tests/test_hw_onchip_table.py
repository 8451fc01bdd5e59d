"""OnChipTable: host-loaded RAM tables, pooled vectors == numerics.pool_sum, under stalls."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from recfabric.host.bench.lookup import expected_pooled
from recfabric.hw.config import get_preset
from recfabric.hw.embedding_lookup import LookupErrorCause, LookupKind
from recfabric.hw.onchip_table import OnChipTable
from recfabric.sim.stream_testing import StreamChecker, payload_value, stream_get, stream_put

WORD = 64  # 4 int16 per word


def _words(tables, depth, *, pad_stride=0):
    """Pack tables into RAM words; returns (words dict addr -> int, descs in words)."""
    words, descs, addr = {}, [], 0
    epw = WORD // 16
    for t in tables:
        rows, dim = t.shape
        beats = -(-dim // epw)
        stride = beats + pad_stride
        descs.append({"base": addr, "stride": stride, "rows": rows, "dim": dim})
        for r in range(rows):
            for b in range(beats):
                w = 0
                for j, x in enumerate(t[r, b * epw:(b + 1) * epw]):
                    w |= (int(x) & 0xFFFF) << (16 * j)
                words[addr + r * stride + b] = w
        addr += rows * stride
    assert addr <= depth
    return words, descs


def _simulate(dut, words, descs, lookups, rng, p=0.3, extra_descs=()):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    checkers = [StreamChecker(dut.i_lookup, name="i_lookup"),
                StreamChecker(dut.o_pooled, name="o_pooled")]
    for c in checkers:
        sim.add_process(c.process)
    outs, info = [], {}
    n_bags = sum(lk["last"] for lk in lookups)

    async def producer(ctx):
        # one beat of words_per_beat consecutive words per transfer (words not given are 0)
        n, wb = dut.words_per_beat, dut.word_bits
        for beat in sorted({a // n for a in words}):
            data = sum(words.get(beat * n + i, 0) << (i * wb) for i in range(n))
            await stream_put(ctx, dut.i_load, {"sel": 0, "addr": beat, "data": data})
        for i, d in [*enumerate(descs), *extra_descs]:
            await stream_put(ctx, dut.i_desc, {"index": i, "desc": d})
        for lk in lookups:
            await stream_put(ctx, dut.i_lookup, {"kind": 0, **lk}, rng=rng, p_idle=p)

    async def consumer(ctx):
        for _ in range(n_bags):
            outs.append(payload_value(await stream_get(ctx, dut.o_pooled, rng=rng, p_stall=p)))
        await ctx.tick().repeat(3)
        info.update(error=ctx.get(dut.error.flag), error_tag=ctx.get(dut.error.tag),
                    error_cause=ctx.get(dut.error.cause), idle=ctx.get(dut.idle))

    async def watchdog(ctx):
        await ctx.delay(1e-8 * 50_000)
        raise TimeoutError(f"on-chip table test stuck after {len(outs)} of {n_bags} vectors")

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(watchdog, background=True)
    sim.run()
    return outs, info


def _bags(rng, tables, n, tag_mod=16):
    lookups = []
    for i in range(n):
        d = rng.randrange(len(tables))
        k_n = rng.randint(0, 4)
        if k_n == 0:
            lookups.append({"tag": i % tag_mod, "slot": d, "desc": d, "row": 0,
                            "kind": LookupKind.EMPTY.value, "first": 1, "last": 1})
        for k in range(k_n):
            lookups.append({"tag": i % tag_mod, "slot": d, "desc": d,
                            "row": rng.randrange(len(tables[d])), "first": int(k == 0),
                            "last": int(k == k_n - 1)})
    return lookups


@pytest.mark.parametrize("seed, beat_bits", [(1, 512), (2, 512), (1, WORD), (2, 4 * WORD)])
def test_pooled_vectors_match_spec(seed, beat_bits):
    """Rows loaded one beat (1, 2 or 4 words) per transfer read back exactly."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    tables = [nrng.integers(-(1 << 15), 1 << 15, size=(r, d)) for r, d in ((12, 3), (9, 8),
                                                                           (6, 6))]
    dut = OnChipTable(data_bits=16, max_dim=8, word_bits=WORD, depth=128, tag_bits=4,
                      slot_bits=2, n_desc=3, max_bag=4, beat_bits=beat_bits)
    assert dut.words_per_beat == beat_bits // WORD
    words, descs = _words(tables, 128, pad_stride=seed - 1)
    lookups = _bags(rng, tables, 30)
    outs, info = _simulate(dut, words, descs, lookups, rng)
    assert outs == expected_pooled(tables, [True] * 3, lookups, data_bits=16, max_dim=8)
    assert info["error"] == 0 and info["idle"] == 1


def test_bad_rows_and_descriptors_flag_errors():
    rng = random.Random(3)
    nrng = np.random.default_rng(3)
    tables = [nrng.integers(-100, 100, size=(5, 4))]
    dut = OnChipTable(data_bits=16, max_dim=8, word_bits=WORD, depth=16, tag_bits=4,
                      slot_bits=2, n_desc=3, max_bag=4)
    words, descs = _words(tables, 16)
    # Descriptor 1 would run past the RAM (5 rows x stride 4 from word 0 > 16 words): invalid.
    extra = [(1, {"base": 0, "stride": 4, "rows": 5, "dim": 4})]
    lookups = [
        {"tag": 1, "slot": 0, "desc": 0, "row": 4, "first": 1, "last": 1},
        {"tag": 2, "slot": 0, "desc": 0, "row": 5, "first": 1, "last": 1},
        {"tag": 3, "slot": 1, "desc": 1, "row": 0, "first": 1, "last": 1},
        {"tag": 4, "slot": 2, "desc": 0, "row": 0, "kind": LookupKind.BAD.value, "first": 1,
         "last": 1},
        {"tag": 5, "slot": 0, "desc": 0, "row": 1, "first": 1, "last": 1},
    ]
    outs, info = _simulate(dut, words, descs, lookups, rng, extra_descs=extra)
    assert outs == expected_pooled(tables + [tables[0]], [True, False], lookups, data_bits=16,
                                   max_dim=8)
    assert [o["error"] for o in outs] == [0, 1, 1, 1, 0]
    assert info["error"] == 1 and info["error_tag"] == 2
    assert info["error_cause"] == LookupErrorCause.ROW


def test_from_config_sizes_the_ram():
    t = OnChipTable.from_config(get_preset("tiny"))
    assert t.depth == 4096 * 8 // 256 and t.word_bits == 256
    assert len(t.o_pooled.payload.data) == 16
