"""cocotb test of the generated Verilog of EmbeddingLookupUnit with cocotbext-axi's AxiRamRead.

Launched by tests/test_cocotb_embedding_lookup.py (Icarus and Verilator), which passes the unit's
parameters in $ELU_PARAMS (JSON) and a result file path in $ELU_OUT. Random tables and bags, random
stalls on the lookup and pooled-vector streams and pause generators on AR and R; pooled vectors
must equal the numerics spec (``==``), out-of-range rows must come back flagged with zeros.
"""

import json
import os
import random

import cocotb
import numpy as np
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from cocotbext.axi import AxiRamRead, AxiReadBus

from recfabric.host.bench.lookup import expected_pooled
from recfabric.host.compiler.table_layout import TableLayout, pack_tables
from recfabric.hw.embedding_lookup import (
    DescriptorWriteLayout,
    LookupLayout,
    TableDescriptorLayout,
    index_bits,
)
from recfabric.hw.stream_types import PooledVectorLayout
from recfabric.sim.stream_testing import payload_value

BASE = 0x1000


def _pack(layout, value):
    return layout.const(value).as_value().value


async def _send(dut, name, layout, items, rng, p_idle):
    valid, payload, ready = (getattr(dut, f"{name}__{s}") for s in ("valid", "payload", "ready"))
    for item in items:
        while rng.random() < p_idle:
            await RisingEdge(dut.clk)
        payload.value = _pack(layout, item)
        valid.value = 1
        while True:
            await ReadOnly()
            done = int(ready.value) == 1
            await RisingEdge(dut.clk)
            if done:
                break
        valid.value = 0


async def _receive(dut, name, layout, n, rng, p_stall, out):
    valid, payload, ready = (getattr(dut, f"{name}__{s}") for s in ("valid", "payload", "ready"))
    while len(out) < n:
        ready.value = 0 if rng.random() < p_stall else 1
        await ReadOnly()
        if int(valid.value) and int(ready.value):
            out.append(payload_value(data.Const(layout, int(payload.value))))
        await RisingEdge(dut.clk)
    ready.value = 0


def _pause(rng, p):
    while True:
        yield rng.random() < p


@cocotb.test()
async def pooled_vectors_match_spec(dut):
    prm = json.loads(os.environ["ELU_PARAMS"])
    rng = random.Random(prm["seed"])
    nrng = np.random.default_rng(prm["seed"])
    db, max_dim, width = prm["data_bits"], prm["max_dim"], prm["data_width"]
    dims = [max_dim, max(1, max_dim // 2 + 1), 3]
    tables = [nrng.integers(-(1 << (db - 1)), 1 << (db - 1), size=(rows, d))
              for rows, d in zip((40, 25, 9), dims)]
    memory, descs = pack_tables(tables, TableLayout(db, width // 8), base=BASE)

    desc_bits = index_bits(prm["n_desc"])
    lk_layout = LookupLayout(tag_bits=prm["tag_bits"], slot_bits=prm["slot_bits"],
                             desc_bits=desc_bits, row_bits=32)
    dw_layout = DescriptorWriteLayout(desc_bits=desc_bits, desc_layout=TableDescriptorLayout(
        addr_width=64, stride_bits=16, row_bits=32))
    out_layout = PooledVectorLayout(tag_bits=prm["tag_bits"], slot_bits=prm["slot_bits"],
                                    data_bits=db, max_dim=max_dim)

    lookups = []
    for i in range(prm["bags"]):
        d, n = rng.randrange(3), rng.randint(1, prm["max_bag"])
        for k in range(n):
            row = rng.randrange(len(tables[d]))
            if rng.random() < 0.03:
                row = len(tables[d]) + rng.randrange(100)  # out of range: flagged, never read
            lookups.append({"tag": i % (1 << prm["tag_bits"]), "slot": d, "desc": d, "row": row,
                            "kind": 0, "first": int(k == 0), "last": int(k == n - 1)})
    want = expected_pooled(tables, [True] * 3, lookups, data_bits=db, max_dim=max_dim)

    dut.rst.value = 1
    for name in ("i_lookup", "i_desc"):
        getattr(dut, f"{name}__valid").value = 0
        getattr(dut, f"{name}__payload").value = 0
    dut.o_pooled__ready.value = 0
    dut.error__clear.value = 0
    dut.m_axi__rvalid.value = 0
    dut.m_axi__arready.value = 0
    cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
    await ClockCycles(dut.clk, 3)
    # Icarus does not run an `always @*` block at time 0 unless one of its inputs changes, and
    # `reg x = 0` initialisers make no event: toggle the inputs once, in reset, so that every
    # combinational block of the design has been evaluated.
    for v in (1, 0):
        dut.o_pooled__ready.value = v
        dut.error__clear.value = v
        dut.m_axi__rvalid.value = v
        dut.m_axi__arready.value = v
        await RisingEdge(dut.clk)
    await ReadOnly()
    assert dut.m_axi__rready.value.is_resolvable, f"RREADY is {dut.m_axi__rready.value}"
    await RisingEdge(dut.clk)
    # Start the RAM model once the design's outputs are defined (it samples them every edge).
    ram = AxiRamRead(AxiReadBus.from_prefix(dut, "m_axi", bus_separator="__"), dut.clk, dut.rst,
                     size=BASE + len(memory))
    ram.write(BASE, memory.tobytes())
    ram.ar_channel.set_pause_generator(_pause(rng, prm["p"]))
    ram.r_channel.set_pause_generator(_pause(rng, prm["p"]))
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    await _send(dut, "i_desc", dw_layout,
                [{"index": i, "desc": d} for i, d in enumerate(descs)], rng, 0.0)
    got = []
    cocotb.start_soon(_receive(dut, "o_pooled", out_layout, len(want), rng, prm["p"],
                      got))
    await _send(dut, "i_lookup", lk_layout, lookups, rng, prm["p"])
    for _ in range(len(lookups) * 20 + 2000):  # a hang fails instead of running forever
        if len(got) == len(want):
            break
        await RisingEdge(dut.clk)
    assert len(got) == len(want), f"only {len(got)} of {len(want)} pooled vectors came back"
    await ClockCycles(dut.clk, 4)
    await ReadOnly()
    errors = [i for i, w in enumerate(want) if w["error"]]
    result = {"bags": len(want), "equal": got == want, "bad_bags": len(errors),
              "error": int(dut.error__flag.value), "idle": int(dut.idle.value)}
    if os.environ.get("ELU_OUT"):
        with open(os.environ["ELU_OUT"], "w") as f:
            json.dump(result, f)
    assert got == want, next(f"bag {i}: got {g} want {w}" for i, (g, w) in
                             enumerate(zip(got, want)) if g != w)
    assert result["error"] == int(bool(errors))
    assert result["idle"] == 1
