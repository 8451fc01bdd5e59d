import gc
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from recfabric.host.runtime.wire_format import RequestLayout, ResultStatus, unpack_results
from recfabric.hw.register_map import NO_ERROR_REQUEST, STATUS_BLOCK_BYTES, status_block_offset
from recfabric.hw.result_writer import STATUS_WORDS, ResultWriter
from recfabric.sim.axi_write_model import AXIWriteModel
from recfabric.sim.stream_testing import stream_put


async def _pulse_start(ctx, dut, batch, *, base=None, status=None):
    """Set the run's inputs (``base`` and ``status`` when given) and pulse ``start``."""
    if base is not None:
        ctx.set(dut.base, base)
    ctx.set(dut.batch, batch)
    if status is not None:
        ctx.set(dut.status, status)
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)


def _simulate(dut, model, control, producer=None):
    """Run the writer with its AXI write model, ``control`` and an optional background
    ``producer`` testbench, until ``control`` returns."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(model.process)
    sim.add_testbench(control)
    if producer is not None:
        sim.add_testbench(producer, background=True)
    sim.run()



@pytest.mark.parametrize("batch, p_stall, dw", [(0, 0.0, 256), (1, 0.0, 256), (23, 0.4, 256),
                                               (9, 0.3, 512)])
def test_results_and_status_block_reach_memory(batch, p_stall, dw):
    rng = random.Random(batch)
    dut = ResultWriter(data_width=dw, max_outstanding=4)
    word = dw // 8
    base = 0x1000
    mem = np.zeros(16384, np.uint8)
    model = AXIWriteModel(dut.m_axi, mem, base=base, latency=3, p_stall=p_stall, rng=rng)
    scores = [rng.randrange(1 << 16) for _ in range(batch)]
    flags = [{"id_range": int(rng.random() < 0.15), "bag_range": int(rng.random() < 0.15),
              "memory": int(rng.random() < 0.15)} for _ in range(batch)]
    status = [rng.getrandbits(32) for _ in STATUS_WORDS]
    log = {}

    async def control(ctx):
        await _pulse_start(ctx, dut, batch, base=base, status=status)
        cycles = 0
        while not ctx.get(dut.done):
            await ctx.tick()
            cycles += 1
            assert cycles < 5000, "ResultWriter never finished"
        log["written"] = ctx.get(dut.written)
        log["axi_error"] = ctx.get(dut.axi_error)
        log["first_error"] = ctx.get(dut.first_error)

    async def producer(ctx):
        await ctx.tick()
        for s, f in zip(scores, flags):
            await stream_put(ctx, dut.i_result, {"score": s, "flags": f}, rng=rng, p_idle=0.3)

    _simulate(dut, model, control, producer)

    layout = RequestLayout((("f", 10, 1),), 0, 1, word_bits=dw)
    if batch:
        got, st = unpack_results(layout, mem[:batch * word].tobytes(), batch, check=False)
        assert got[:, 0].tolist() == scores
        want = [int(ResultStatus.VALID | (ResultStatus.ID_RANGE if f["id_range"] else 0)
                    | (ResultStatus.BAG_RANGE if f["bag_range"] else 0)
                    | (ResultStatus.MEMORY if f["memory"] else 0)) for f in flags]
        assert st.tolist() == want
    off = status_block_offset(batch * word)
    block = mem[off: off + STATUS_BLOCK_BYTES].view("<u4")
    assert block[:len(STATUS_WORDS)].tolist() == status
    assert log["written"] == batch and log["axi_error"] == 0
    flagged = [i for i, f in enumerate(flags) if any(f.values())]
    assert log["first_error"] == (flagged[0] if flagged else NO_ERROR_REQUEST)


@pytest.mark.parametrize("flagged", [None, 0, 2])
def test_axi_error_is_sticky_and_does_not_hang(flagged):
    """Write 1 is answered SLVERR: sticky error, and ``first_error`` is the lowest index of a
    failed write or a flagged record."""
    dut = ResultWriter(max_outstanding=2)
    mem = np.zeros(4096, np.uint8)
    model = AXIWriteModel(dut.m_axi, mem, error_writes={1})
    log = {}

    async def control(ctx):
        await _pulse_start(ctx, dut, 3)
        for i in range(3):
            await stream_put(ctx, dut.i_result, {"score": 5, "flags": {"memory": i == flagged}})
        n = 0
        while not ctx.get(dut.done):
            await ctx.tick()
            n += 1
            assert n < 1000
        log["err"] = ctx.get(dut.axi_error)
        log["first"] = ctx.get(dut.first_error)

    _simulate(dut, model, control)
    assert log["err"] == 1
    assert log["first"] == (0 if flagged == 0 else 1)


@pytest.mark.parametrize("batch, failing", [(b, f) for b in (0, 1, 4) for f in range(b + 1)])
def test_error_on_any_write_reaches_the_status_block(batch, failing):
    """SLVERR on each write in turn, the status block's own write included (soak finding:
    an error on the block's write left ``errors`` = 0 in the block). The testbench feeds the
    sticky ``axi_error`` back into status word 0, as the kernel's ``errors`` word does: the
    block in memory must show it, whichever write failed."""
    word = 32  # write ``failing`` == ``batch`` is the status block's
    dut = ResultWriter(data_width=8 * word, max_outstanding=2)
    mem = np.zeros(4096, np.uint8)
    model = AXIWriteModel(dut.m_axi, mem, error_writes={failing}, p_stall=0.3,
                          rng=random.Random(failing))
    log = {"snapshots": 0}

    async def control(ctx):
        await _pulse_start(ctx, dut, batch)
        for i in range(batch):
            await stream_put(ctx, dut.i_result, {"score": i, "flags": {}})
        n = 0
        while not ctx.get(dut.done):
            log["snapshots"] += ctx.get(dut.snapshot)
            ctx.set(dut.status, [ctx.get(dut.axi_error)] + [7] * (len(STATUS_WORDS) - 1))
            await ctx.tick()
            n += 1
            assert n < 1000, "ResultWriter never finished"
        log["err"] = ctx.get(dut.axi_error)
        log["first"] = ctx.get(dut.first_error)

    _simulate(dut, model, control)
    off = status_block_offset(batch * word)
    block = mem[off: off + STATUS_BLOCK_BYTES].view("<u4")
    assert log["err"] == 1, failing
    assert block[0] == 1, f"status block misses the error of write {failing}"
    assert log["first"] == (failing if failing < batch else NO_ERROR_REQUEST)
    assert log["snapshots"] == (2 if failing == batch else 1)
    assert model.bursts == batch + (2 if failing == batch else 1)


def test_abort_ends_the_run_with_the_status_block():
    """``abort`` (the kernel's watchdog): no more records are taken, the ones taken are
    answered, and the status block is written at its place after ``batch`` records."""
    dut = ResultWriter(max_outstanding=2)
    mem = np.zeros(4096, np.uint8)
    model = AXIWriteModel(dut.m_axi, mem, latency=6)
    log = {}

    async def control(ctx):
        await _pulse_start(ctx, dut, 9, status=[0xAB] * len(STATUS_WORDS))
        for i in range(3):
            await stream_put(ctx, dut.i_result, {"score": 100 + i, "flags": {}})
        ctx.set(dut.abort, 1)
        await ctx.tick()
        ctx.set(dut.abort, 0)
        ctx.set(dut.i_result.valid, 1)  # a result offered after the abort is not taken
        n = 0
        while not ctx.get(dut.done):
            assert not ctx.get(dut.i_result.ready)
            await ctx.tick()
            n += 1
            assert n < 1000, "ResultWriter never finished after abort"
        log["written"] = ctx.get(dut.written)

    _simulate(dut, model, control)
    assert log["written"] == 3 and model.bursts == 4
    off = status_block_offset(9 * 32)
    assert mem[off: off + STATUS_BLOCK_BYTES].view("<u4")[0] == 0xAB


def test_multi_output_records_hold_every_score():
    """Multi-task heads: one record per request with `outputs` u16 scores (wire format v1's
    score[0..outputs-1]), read back by the driver's unpack_results with its padding check."""
    rng = random.Random(5)
    outputs, batch, dw = 3, 11, 256
    dut = ResultWriter(data_width=dw, max_outstanding=4, outputs=outputs)
    mem = np.zeros(8192, np.uint8)
    model = AXIWriteModel(dut.m_axi, mem, base=0x1000, latency=3, p_stall=0.3, rng=rng)
    scores = [[rng.randrange(1 << 16) for _ in range(outputs)] for _ in range(batch)]
    flag0 = {"id_range": 0, "bag_range": 0, "memory": 0}

    async def control(ctx):
        await _pulse_start(ctx, dut, batch, base=0x1000)
        await ctx.tick().until(dut.done)

    async def producer(ctx):
        await ctx.tick()
        for s in scores:
            await stream_put(ctx, dut.i_result, {"score": s[0], "more_scores": s[1:],
                                                 "flags": flag0}, rng=rng, p_idle=0.3)

    _simulate(dut, model, control, producer)
    layout = RequestLayout((("f", 10, 1),), 0, outputs, word_bits=dw)
    got, st = unpack_results(layout, mem[:batch * dw // 8].tobytes(), batch)
    assert got.tolist() == scores and st.tolist() == [int(ResultStatus.VALID)] * batch


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_more_outputs_than_a_record_holds_are_refused():
    with pytest.raises(ValueError, match="8 outputs do not fit a 128-bit result record"):
        ResultWriter(data_width=128, outputs=8)
    gc.collect()  # the half-built writer's warning is dropped here, under this test's filter
