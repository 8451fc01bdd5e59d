"""ProcessingElement: exhaustive small-width MAC arithmetic against the numerics spec."""

import gc
import itertools
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from recfabric.host import numerics as nx
from recfabric.hw.processing_element import (
    PACK_SHIFT,
    PE_LATENCY,
    PackedPEPair,
    ProcessingElement,
    packed_segment_len,
    unpack,
)


def _run_pe(data_bits, acc_bits, psums, seed=0):
    """Every (x, w) pair of ``data_bits`` operands, with a random partial sum from ``psums``."""
    lo, hi = -(1 << (data_bits - 1)), 1 << (data_bits - 1)
    weights = list(range(lo, hi))
    dut = ProcessingElement(data_bits=data_bits, acc_bits=acc_bits, depth=len(weights),
                            ctrl_bits=3)
    rng = random.Random(seed)
    cases = [(x, a, rng.choice(psums), rng.randrange(8))
             for x, a in itertools.product(range(lo, hi), range(len(weights)))]
    got = []

    async def tb(ctx):
        for a, w in enumerate(weights):
            ctx.set(dut.w_en, 1)
            ctx.set(dut.w_addr, a)
            ctx.set(dut.w_data, w)
            await ctx.tick()
        ctx.set(dut.w_en, 0)
        for i in range(len(cases) + PE_LATENCY):
            if i < len(cases):
                x, a, _, ctrl = cases[i]
                ctx.set(dut.x_in, x)
                ctx.set(dut.addr_in, a)
                ctx.set(dut.ctrl_in, ctrl)
                ctx.set(dut.valid_in, 1)
            else:
                ctx.set(dut.valid_in, 0)
            # psum_in belongs to the wave that entered PE_LATENCY - 1 cycles ago.
            j = i - (PE_LATENCY - 1)
            ctx.set(dut.psum_in, cases[j][2] if 0 <= j < len(cases) else 0)
            await ctx.tick()
            k = i - (PE_LATENCY - 1)
            if 0 <= k < len(cases):
                got.append((ctx.get(dut.psum_out), ctx.get(dut.ctrl_p), ctx.get(dut.valid_p)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    # The spec: one MAC with the incoming partial sum as the accumulator's initial value.
    want = [int(nx.mac(np.array([[x]]), np.array([[weights[a]]]), acc_bits,
                       bias=np.array([p]))[0, 0]) for x, a, p, _ in cases]
    assert [g[0] for g in got] == want
    assert [g[1] for g in got] == [c[3] for c in cases]
    assert all(g[2] == 1 for g in got)


@pytest.mark.parametrize("data_bits,acc_bits", [(4, 8), (4, 9), (3, 6)])
def test_pe_exhaustive_small_width_wraps_like_spec(data_bits, acc_bits):
    # acc_bits == 2 * data_bits makes the cascade adder overflow and wrap for large sums.
    top = 1 << (acc_bits - 1)
    _run_pe(data_bits, acc_bits, psums=[-top, -top + 1, -1, 0, 1, top - 2, top - 1, 5, -7])


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_pe_rejects_narrow_accumulator():
    with pytest.raises(ValueError, match="not 10"):
        ProcessingElement(data_bits=8, acc_bits=10, depth=4, ctrl_bits=1)
    with pytest.raises(TypeError, match="not 0"):
        ProcessingElement(data_bits=8, acc_bits=32, depth=0, ctrl_bits=1)
    gc.collect()  # the rejected half-built component warns when collected: inside the filter


# ---- int8 packing: two MACs per DSP48E2 (WP486) -------------------------------------------------


def _np_unpack(p):
    """:func:`unpack` on numpy int64 arrays."""
    lo = p & ((1 << PACK_SHIFT) - 1)
    sign = lo >> (PACK_SHIFT - 1)
    return lo - (sign << PACK_SHIFT), (p >> PACK_SHIFT) + sign


def test_packing_arithmetic_exhaustive_int8():
    # Every (x, w_lo, w_hi) in int8^3: one 27x18 product gives both products exactly.
    w = np.arange(-128, 128, dtype=np.int64)
    w_lo, w_hi = (a.ravel() for a in np.meshgrid(w, w))
    packed = (w_hi << PACK_SHIFT) + w_lo
    assert packed.min() >= -(1 << 26) and packed.max() < 1 << 26  # the 27-bit A:D input
    for x in range(-128, 128):
        lo, hi = _np_unpack(x * packed)
        assert np.array_equal(lo, x * w_lo) and np.array_equal(hi, x * w_hi), x
    assert unpack(-5 * ((3 << PACK_SHIFT) + 7)) == (-35, -15)


def test_lower_field_holds_seven_int8_products_and_not_eight():
    n = packed_segment_len(8, 8)
    assert n == 7
    rng = np.random.default_rng(0)
    # Random sums of 1..n products, biased towards the extremes, all unpack exactly.
    ext = np.array([-128, -127, -1, 0, 1, 126, 127])
    pick = lambda shape: np.where(rng.random(shape) < 0.5, rng.choice(ext, shape),  # noqa: E731
                                  rng.integers(-128, 128, shape))
    for k in range(1, n + 1):
        x, wl, wh = pick((20000, k)), pick((20000, k)), pick((20000, k))
        p = (x * ((wh << PACK_SHIFT) + wl)).sum(axis=1)
        lo, hi = _np_unpack(p)
        assert np.array_equal(lo, (x * wl).sum(axis=1)) and np.array_equal(hi, (x * wh).sum(axis=1))
    # The worst cases by hand: 7 x (-128 * -128) fits, 8 of them flip into the upper field.
    for k, exact in ((n, True), (n + 1, False)):
        p = k * (-128 * ((-128 << PACK_SHIFT) - 128))
        assert (unpack(p) == (k * 16384, k * 16384)) is exact


def test_packed_pair_equals_two_plain_int8_macs():
    # Every activation against 64 weight pairs (extremes included), random packed partial sums
    # of up to six earlier products: psum_out unpacks to the two plain MACs.
    rng = random.Random(1)
    depth = 64
    w_lo = [-128, 127, -1, 0] + [rng.randrange(-128, 128) for _ in range(depth - 4)]
    w_hi = [-128, -128, 127, 1] + [rng.randrange(-128, 128) for _ in range(depth - 4)]
    dut = PackedPEPair(data_bits=8, depth=depth, ctrl_bits=3)
    six = 6 * 128 * 128

    def psum():
        lo, hi = rng.randrange(-six + 1, six), rng.randrange(-(1 << 28), 1 << 28)
        return lo, hi, (hi << PACK_SHIFT) + lo

    cases = [(x, a, psum(), rng.randrange(8)) for x in range(-128, 128) for a in range(depth)
             if a < 4 or rng.random() < 0.25]
    got = []

    async def tb(ctx):
        # First half: each row's weight alone through its byte lane, with junk on the other
        # lane that must not be written (the second write's junk would stay: lower lane first
        # at even addresses, upper lane first at odd ones); second half: both weights of a pair
        # in one write.
        for a in range(depth):
            ctx.set(dut.w_addr, a)
            if a < depth // 2:
                writes = [(0b01, [w_lo[a], -1]), (0b10, [5, w_hi[a]])]
                for en, lanes in writes[::1 - 2 * (a % 2)]:
                    ctx.set(dut.w_en, en)
                    ctx.set(dut.w_data, lanes)
                    await ctx.tick()
            else:
                ctx.set(dut.w_en, 0b11)
                ctx.set(dut.w_data, [w_lo[a], w_hi[a]])
                await ctx.tick()
        ctx.set(dut.w_en, 0)
        for i in range(len(cases) + PE_LATENCY):
            if i < len(cases):
                x, a, _, ctrl = cases[i]
                ctx.set(dut.x_in, x)
                ctx.set(dut.addr_in, a)
                ctx.set(dut.ctrl_in, ctrl)
            ctx.set(dut.valid_in, i < len(cases))
            j = i - (PE_LATENCY - 1)
            ctx.set(dut.psum_in, cases[j][2][2] if 0 <= j < len(cases) else 0)
            await ctx.tick()
            if 0 <= j < len(cases):
                got.append((ctx.get(dut.psum_out), ctx.get(dut.ctrl_p), ctx.get(dut.valid_p)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    want = [(lo + x * w_lo[a], hi + x * w_hi[a]) for x, a, (lo, hi, _), _ in cases]
    assert [unpack(g[0]) for g in got] == want
    assert [g[1] for g in got] == [c[3] for c in cases]
    assert all(g[2] == 1 for g in got)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_packed_pair_rejects_wide_operands():
    with pytest.raises(ValueError, match="not 16 and 16"):
        PackedPEPair(data_bits=16, depth=4, ctrl_bits=1)
    gc.collect()
