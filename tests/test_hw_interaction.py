"""DotInteraction and ElementPacker: random vectors, formats and stalls, `==` the golden model's
own interaction function (host.reference.golden.interaction)."""

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
from amaranth.sim import Simulator

from recfabric.host.numerics import FixedFormat, Rounding
from recfabric.host.reference.golden import interaction
from recfabric.hw.interaction import (
    DotInteraction,
    ElementPacker,
    InteractionMode,
    interaction_desc_words,
)
from recfabric.sim.stream_testing import (
    StreamChecker,
    payload_value,
    stream_get,
    stream_put,
    stream_put_all,
)


def _golden(n, d, vecs, fracs, out_frac, bits, acc_bits, rounding, per_vector):
    """Top-MLP input of golden.interaction for vectors ``vecs`` (n, d) of one request."""
    fmts = [FixedFormat(bits, f) for f in fracs]
    qm = SimpleNamespace(spec=SimpleNamespace(interaction="dot"),
                         interaction_fmt=FixedFormat(bits, out_frac),
                         segment_fmts=fmts if per_vector else None, emb_fmt=fmts[0],
                         rounding=rounding, acc_bits=acc_bits)
    v = np.asarray(vecs, dtype=np.int64)
    return interaction(qm, v[None, 0], [v[None, i] for i in range(1, n)])[0]


def _run_dot(seed, *, lanes, dot_lanes, n, d, n_req, bits=16, acc_bits=48, p=0.3,
             per_vector=True, mode=InteractionMode.DOT):
    rng = random.Random(seed)
    rounding = rng.choice([Rounding.HALF_UP, Rounding.FLOOR])
    dut = DotInteraction(lanes=lanes, data_bits=bits, acc_bits=acc_bits, max_vectors=n + 1,
                         max_in=n * d + 3, dot_lanes=dot_lanes)
    fracs = [rng.randrange(4, 14) for _ in range(n)] if per_vector else [rng.randrange(4, 14)] * n
    out_frac = rng.randrange(0, 10)
    words = interaction_desc_words(dut, mode=mode, n=n, dim=d, out_frac=out_frac, fracs=fracs,
                                   floor=rounding is Rounding.FLOOR)
    top = 1 << (bits - 1)
    # Extreme values too: saturation and wide sums are exercised.
    reqs = [[[rng.choice([rng.randrange(-top, top), top - 1, -top, 0]) for _ in range(d)]
             for _ in range(n)] for _ in range(n_req)]
    chunks = math.ceil(n * d / lanes)
    ins = []
    for r in reqs:
        flat = [x for v in r for x in v] + [0] * (chunks * lanes - n * d)
        ins += [{"data": flat[c * lanes:(c + 1) * lanes], "last": c == chunks - 1}
                for c in range(chunks)]
    if mode == InteractionMode.DOT:
        want = [_golden(n, d, r, fracs, out_frac, bits, acc_bits, rounding, per_vector)
                for r in reqs]
    else:
        want = [np.asarray([x for v in r for x in v]) for r in reqs]
    got = []

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for s in (dut.i_vector, dut.o_vector):
        sim.add_process(StreamChecker(s, name="stream").process)
    state = {"loaded": False}

    async def desc(ctx):
        await stream_put_all(ctx, dut.i_desc, words)
        state["loaded"] = True

    async def producer(ctx):
        while not state["loaded"]:
            await ctx.tick()
        for x in ins:
            await stream_put(ctx, dut.i_vector, x, rng=rng, p_idle=p)

    async def consumer(ctx):
        for _ in range(n_req):
            elems = []
            while True:
                c = payload_value(await stream_get(ctx, dut.o_vector, rng=rng, p_stall=p))
                elems += list(c["data"])
                if c["last"]:
                    break
            got.append(elems)

    sim.add_testbench(desc)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    for r, (g, w) in enumerate(zip(got, want)):
        width = len(w)
        assert len(g) == math.ceil(width / lanes) * lanes, r
        assert g[:width] == [int(x) for x in w], f"request {r}"
        if mode == InteractionMode.DOT:
            assert g[width:] == [0] * (len(g) - width)  # packer zero-pads the last chunk


@pytest.mark.parametrize("seed,lanes,dot_lanes,n,d", [
    (1, 4, 1, 5, 8), (2, 3, 2, 4, 4), (3, 1, 1, 2, 3), (4, 8, 4, 6, 8), (5, 4, 1, 1, 5),
    (6, 3, 3, 4, 5), (7, 5, 2, 3, 7), (8, 2, 2, 3, 1), (9, 4, 4, 3, 4)])
def test_dot_interaction_equals_golden_with_stalls(seed, lanes, dot_lanes, n, d):
    # d not a multiple of dot_lanes (masked products), dot_lanes == lanes, non-power-of-two
    # lanes, one-element vectors; four requests cover both buffers twice.
    _run_dot(seed, lanes=lanes, dot_lanes=dot_lanes, n=n, d=d, n_req=4)


def test_dot_interaction_shared_format_wraps_like_golden():
    # A narrow accumulator wraps: the hardware wraps exactly as numerics.mac/dot_interaction.
    _run_dot(7, lanes=4, dot_lanes=2, n=4, d=8, n_req=2, acc_bits=36, per_vector=False)


def test_concat_mode_passes_vectors_through():
    _run_dot(8, lanes=4, dot_lanes=1, n=3, d=4, n_req=3, mode=InteractionMode.CONCAT)


def test_desc_words_refuse_bad_models():
    dut = SimpleNamespace(max_vectors=4, max_in=32, dot_lanes=2, lanes=4)  # block geometry
    with pytest.raises(ValueError, match="5 vectors"):
        interaction_desc_words(dut, mode=1, n=5, dim=2, fracs=[0] * 5)
    with pytest.raises(ValueError, match="vector width must be at least 1, not 0"):
        interaction_desc_words(dut, mode=1, n=2, dim=0, fracs=[0] * 2)
    with pytest.raises(ValueError, match="exceeds max_in 32"):
        interaction_desc_words(dut, mode=1, n=4, dim=10, fracs=[0] * 4)


def test_element_packer_chunks_requests_with_stalls():
    rng = random.Random(3)
    dut = ElementPacker(lanes=3, bits=8)
    lengths = [1, 3, 4, 7, 2]
    reqs = [[rng.randrange(-128, 128) for _ in range(n)] for n in lengths]
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(StreamChecker(dut.o_vector, name="o").process)

    async def producer(ctx):
        for r in reqs:
            for i, x in enumerate(r):
                await stream_put(ctx, dut.i_elem, {"data": x, "last": i == len(r) - 1},
                                 rng=rng, p_idle=0.4)

    async def consumer(ctx):
        for n in lengths:
            for _ in range(math.ceil(n / 3)):
                got.append(payload_value(await stream_get(ctx, dut.o_vector, rng=rng,
                                                          p_stall=0.4)))

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    i = 0
    for r in reqs:
        chunks = math.ceil(len(r) / 3)
        flat = [x for c in got[i:i + chunks] for x in c["data"]]
        assert flat == r + [0] * (chunks * 3 - len(r))
        assert [c["last"] for c in got[i:i + chunks]] == [0] * (chunks - 1) + [1]
        i += chunks
