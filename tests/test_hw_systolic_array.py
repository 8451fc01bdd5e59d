"""SystolicArray: skewed waves give each row's wrapped dot product (naive numpy twin)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from recfabric.host import numerics as nx
from recfabric.hw.systolic_array import SystolicArray


@pytest.mark.parametrize("wr, wc", [(1, 1), (2, 4), (1, 3)])
def test_array_rows_equal_spec_dot_products(wr, wc):
    """Weights written through the wide port (``wr`` x ``wc`` PEs per write, ragged edges
    included), then waves computed: every row equals the spec's dot product."""
    R, C, depth, bits, acc = 3, 4, 5, 8, 20
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, size=(depth, R, C))
    waves = [(int(rng.integers(depth)), rng.integers(-128, 128, size=C)) for _ in range(12)]
    dut = SystolicArray(rows=R, cols=C, data_bits=bits, acc_bits=acc, depth=depth, ctrl_bits=4,
                        write_rows=wr, write_cols=wc)
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
                i = t - c  # column c carries wave t - c (input skew)
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
        # Row r's first result appears latency(r) cycles after wave 0 entered column 0.
        assert got[r][0][2] == dut.latency(r) - 1 + 0
