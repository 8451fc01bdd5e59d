"""SystolicArray: skewed waves give each row's wrapped dot product (naive numpy twin)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from recfabric.host import numerics as nx
from recfabric.hw.systolic_array import SystolicArray


@pytest.mark.parametrize("R,C,acc,packed,wr,wc,seg,bc", [
    # cascade segments (seg) and activation broadcast (bc: register fanout)
    (6, 9, 20, False, 1, 1, 4, 0),    # segments 1 + 4 + 4 columns: a 2-level adder tree
    (6, 9, 20, False, 2, 3, 4, 4),    # and broadcast: 6 slots at fanout 4, one register level
    (5, 8, 32, False, 1, 1, 0, 2),    # broadcast only, 2 register levels; shared weights at once
    (10, 16, 32, True, 1, 1, 7, 0),   # packed: segments 2 + 7 + 7 (no drain), lo/hi trees
    (10, 16, 32, True, 2, 4, 7, 3),   # packed with broadcast (5 slots at fanout 3)
    (3, 17, 20, True, 1, 1, 5, 16),   # packed pair and a plain last row, 4 segments, wrapping
    (3, 17, 20, True, 1, 1, 0, 16),   # broadcast with the drained single cascade
])
def test_array_segments_and_broadcast(R, C, acc, packed, wr, wc, seg, bc):
    test_array_rows_equal_spec_dot_products(R, C, acc, packed, wr, wc, seg, bc)


@pytest.mark.parametrize("R,C,acc,packed,wr,wc", [
    (3, 4, 20, False, 1, 1),
    (3, 4, 20, False, 2, 4),
    (3, 4, 20, False, 1, 3),   # rows 0 and 1 share a memory word, written by two groups
    (3, 4, 20, True, 1, 1),    # one packed pair and a plain last row
    (3, 4, 20, True, 2, 4),    # both halves of a pair's word in one write
    (4, 17, 32, True, 1, 1),   # 17 columns: the packed lower field is drained twice (segments of 7)
    (4, 17, 32, True, 1, 5),   # pairs split across groups: each half through its own byte lane
    (4, 17, 32, True, 4, 3),
    (5, 8, 32, False, 1, 1),
    (5, 8, 32, False, 2, 3),
])
def test_array_rows_equal_spec_dot_products(R, C, acc, packed, wr, wc, seg=0, bc=0, ws=1):
    """Weights written through the wide port (``wr`` x ``wc`` PEs per write, ragged edges
    included), then waves computed: every row equals the spec's dot product."""
    depth, bits = 5, 8
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, size=(depth, R, C))
    waves = [(int(rng.integers(depth)), rng.integers(-128, 128, size=C)) for _ in range(12)]
    # Extremes: every product -128 * -128 (the lower field's worst case), and mixed signs.
    w[0], w[1, ::2], w[1, 1::2] = -128, 127, -128
    waves[:3] = [(0, np.full(C, -128)), (1, np.full(C, -128)), (1, np.full(C, 127))]
    dut = SystolicArray(rows=R, cols=C, data_bits=bits, acc_bits=acc, depth=depth, ctrl_bits=4,
                        packed=packed, write_rows=wr, write_cols=wc, cascade=seg,
                        broadcast=bc, weight_share=ws)
    assert dut.dsp_count == (((R + 1) // 2) if packed else R) * C
    cg = -(-C // wc)
    writes = 0
    got = [[] for _ in range(R)]

    async def tb(ctx):
        nonlocal writes
        for q in range(dut.groups):
            r0, c0 = (q // cg) * wr, (q % cg) * wc
            for a in range(depth):
                lanes = [0] * (wr * wc)
                for r in range(r0, min(R, r0 + wr)):
                    for c in range(c0, min(C, c0 + wc)):
                        lanes[(r % wr) * wc + c % wc] = int(w[a, r, c])
                ctx.set(dut.w_en, 1)
                ctx.set(dut.w_group, q)
                ctx.set(dut.w_addr, a)
                ctx.set(dut.w_data, lanes)
                await ctx.tick()
                writes += 1
        ctx.set(dut.w_en, 0)
        await ctx.tick()
        for t in range(len(waves) + C + R + 6):
            for c in range(C):
                i = t - dut.input_skew(c)  # column c carries wave t - skew(c)
                ok = 0 <= i < len(waves)
                ctx.set(dut.valid_top[c], ok)
                ctx.set(dut.x_top[c], int(waves[i][1][c]) if ok else 0)
                ctx.set(dut.addr_top[c], waves[i][0] if ok else 0)
                ctx.set(dut.ctrl_top[c], i % 16 if ok else 0)
            await ctx.tick()
            for r in range(R):
                if ctx.get(dut.valid_row[r]):
                    got[r].append((ctx.get(dut.psum_row[r]), ctx.get(dut.ctrl_row[r]), t))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert writes == dut.groups * depth == -(-R // wr) * cg * depth
    for r in range(R):
        want = [int(nx.mac(x[None, :], w[a, r][None, :], acc)[0, 0]) for a, x in waves]
        assert [g[0] for g in got[r]] == want
        assert [g[1] for g in got[r]] == [i % 16 for i in range(len(waves))]
        # Row r's first result appears latency(r) cycles after wave 0 entered the top.
        assert got[r][0][2] == dut.latency(r) - 1 + 0
    if seg:
        assert dut.input_skew(C - 1) == seg - 1 and len(dut.segments) == -(-C // seg)
        assert [b - a for a, b in dut.segments][1:] == [seg] * (len(dut.segments) - 1)
    if bc:  # every row at once
        assert len({dut.latency(r) for r in range(R)}) == 1
