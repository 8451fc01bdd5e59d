"""The kernel's run protocol on the cycle-accurate ``sim`` backend (docs/kernel.md, "Run protocol").

Model switches without a reset, runs without a valid program, per-record flags and the status
block's error fields, each driven through the production driver or the raw register map.
"""

import struct

import numpy as np
import pytest

from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.steps import compile_model
from recfabric.host.model.spec import Bags, ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.runtime.accelerator import Accelerator
from recfabric.host.runtime.device import DeviceError, KernelError
from recfabric.host.runtime.wire_format import pack_float_requests, unpack_results
from recfabric.hw.config import get_preset
from recfabric.hw.kernel import (
    FLAG_LOAD,
    MODEL_DATA_WIDTH,
    PROGRAM_FORMAT,
    PROGRAM_MAGIC,
    Target,
)
from recfabric.hw.register_map import (
    ERROR_AXI,
    ERROR_BAD_INDEX,
    ERROR_BAD_REQUEST,
    ERROR_NO_PROGRAM,
    ERROR_PROGRAM,
    KERNEL_ID,
    NO_ERROR_REQUEST,
    STATUS_BLOCK_BYTES,
    STATUS_REGS,
    status_block_offset,
)

TINY = get_preset("tiny")


def _spec(name, dense, bags=(1, 3, 1), dims=(4, 8, 4), rows=(16, 32, 8), top=(8, 1)):
    sparse = tuple(SparseFeature(f"f{i}", r, d, bag=b)
                   for i, (r, d, b) in enumerate(zip(rows, dims, bags)))
    return ModelSpec(name=name, sparse=sparse, dense=dense, top_mlp=top)


#: Planner per model: the default planner keeps the Cartesian model's small one-hot tables apart
#: on the tiny kernel (on chip, same rounds); MicroRec's heuristic merges f2 x f3.
PLANNER = {"cartesian": "microrec"}


def _compile(tmp_path, spec, seed=0):
    d = tmp_path / spec.name
    compile_model(spec, random_weights(spec, seed=seed), TINY, d,
                  PLANNER.get(spec.name, "default"), seed=seed)
    return d, load_compiled(d)


def _golden(cm, dense, sparse):
    return golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse).scores


def _sim(**kw):
    kw = {"mem_latency": 12, "max_cycles": 20_000, **kw}
    return Accelerator.open("sim", "tiny", **kw)


def _cartesian_spec():
    # f2 and f3 are small one-hot tables: the microrec planner merges them (PLANNER).
    return _spec("cartesian", dense=2, bags=(1, 3, 1, 1), dims=(4, 8, 4, 4), rows=(16, 32, 8, 6))


def _switches(tmp_path, specs, plan):
    """Run ``plan`` [(model index or None to keep the loaded one, batch)] on one device, with
    no reset: every score equals the golden model's and no run hangs."""
    models = [_compile(tmp_path, spec, seed) for seed, spec in enumerate(specs, 1)]
    current = None
    with _sim() as acc:
        for k, (which, batch) in enumerate(plan):
            if which is not None:
                acc.load(models[which][0])
                current = which
            spec, cm = specs[current], models[current][1]
            dense, sparse = synthetic_batch(spec, batch, seed=k)
            r = acc.infer(dense, sparse)
            assert np.array_equal(r.scores, _golden(cm, dense, sparse)), (k, spec.name)
            assert r.counters["errors"] == 0 and r.counters["requests_done"] == batch


def test_model_switch_without_reset_is_exact(tmp_path):
    """No-dense model, then a dense model (flags=LOAD, no reset), then a further batch (the
    issue's case: wrong scores, then a hang). The dense part's tag must follow the requests'
    tags across runs and models."""
    _switches(tmp_path, [_spec("nodense", dense=0), _spec("dense", dense=2)],
              [(0, 3), (1, 5), (None, 4)])


def test_random_model_switches_are_exact(tmp_path):
    """Random switches among three models (one with a Cartesian pair), random batches."""
    rng = np.random.default_rng(9)
    plan = [(int(rng.integers(3)), int(rng.integers(1, 6))) for _ in range(4)]
    assert len({w for w, _ in plan}) > 1
    _switches(tmp_path, [_spec("nodense", dense=0), _spec("dense", dense=2), _cartesian_spec()],
              plan)


def _raw_run(dev, bufs, req: bytes, batch: int, flags: int = 0, record_bytes: int = 32):
    """One run through the register map with raw request bytes: (result bytes, status)."""
    rbuf = dev.allocate("raw requests", max(len(req), 64))
    dev.write(rbuf, req)
    res = batch * record_bytes
    total = status_block_offset(res) + STATUS_BLOCK_BYTES
    obuf = dev.allocate("raw results", total)
    dev.write(obuf, bytes(total))
    dev.run({**bufs, "requests": rbuf, "results": obuf, "batch": batch, "flags": flags}, 30)
    out = dev.read(obuf, total)
    block = np.frombuffer(out[status_block_offset(res):][:STATUS_BLOCK_BYTES], "<u4")
    names = sorted(STATUS_REGS, key=STATUS_REGS.get)
    status = {n: int(block[i]) for i, n in enumerate(names)}
    for n in ("errors", "first_error_request", "requests_done", "cycles_lo", "cycles_hi",
              "lookups_issued"):  # the block equals the registers, cycles included
        assert dev.read_register(STATUS_REGS[n]) == status[n], n
    return out[:res], status


def test_runs_without_a_valid_program_end_and_say_so(tmp_path):
    """After reset, after a LOAD of a bad program, and after a reset that erased a loaded
    program: every run ends with ap_done and a status block whose errors say NO_PROGRAM."""
    spec = _spec("dense", dense=2)
    d, cm = _compile(tmp_path, spec)
    with _sim() as acc:
        dev = acc.device
        junk = {n: dev.allocate(n, 4096) for n in ("model", "tables0", "tables1")}
        for flags in (0, FLAG_LOAD):  # never loaded; a LOAD whose header has no magic
            out, st = _raw_run(dev, junk, bytes(96), 3, flags)
            assert st["errors"] == ERROR_NO_PROGRAM and st["requests_done"] == 0
            assert st["first_error_request"] == NO_ERROR_REQUEST
            assert out == bytes(len(out)), "no result record is written without a program"
        acc.load(d)
        dense, sparse = synthetic_batch(spec, 3, seed=1)
        assert np.array_equal(acc.infer(dense, sparse).scores, _golden(cm, dense, sparse))
        req = pack_float_requests(acc.layout, dense, sparse)
        bad_load = {**acc._buffers, "model": junk["model"]}
        for bufs, flags in ((bad_load, FLAG_LOAD), (acc._buffers, 0)):  # the bad LOAD erased it
            _, st = _raw_run(dev, bufs, req, 3, flags)
            assert st["errors"] == ERROR_NO_PROGRAM and st["requests_done"] == 0
        with pytest.raises(KernelError, match="no valid kernel program"):
            acc.infer(dense, sparse)  # the driver thinks the model is loaded: it reports
        acc.load(d)
        assert np.array_equal(acc.infer(dense, sparse).scores, _golden(cm, dense, sparse))
        dev.reset()  # erases the program
        _, st = _raw_run(dev, acc._buffers, req, 3, 0)
        assert st["errors"] == ERROR_NO_PROGRAM
        acc.reset()  # the driver's reset re-arms the load
        assert np.array_equal(acc.infer(dense, sparse).scores, _golden(cm, dense, sparse))


def test_bad_records_report_their_own_cause(tmp_path):
    spec = _cartesian_spec()
    d, cm = _compile(tmp_path, spec)
    feats = cm.descriptors["features"]
    assert feats[2]["group"] == feats[3]["group"], "the test needs a Cartesian pair"
    with _sim() as acc:
        acc.load(d)
        dense, sparse = synthetic_batch(spec, 9, seed=3)
        for b in sparse[1:2]:
            b.lengths[:] = 2  # room for an out-of-range second ID
        assert np.array_equal(acc.infer(dense, sparse).scores, _golden(cm, dense, sparse))
        lay = acc.layout
        req = bytearray(pack_float_requests(lay, dense, sparse))

        def put(r, fmt, offset, v):
            struct.pack_into(fmt, req, r * lay.record_bytes + offset, v)

        put(1, "<H", lay.slots[0].length_offset, 0)  # one-hot, empty: BAG_RANGE
        put(2, "<H", lay.slots[1].length_offset, 5)  # over the maximum bag 3: BAG_RANGE
        put(3, "<I", lay.slots[1].ids_offset + 4, 32)  # second ID of f1 outside 32 rows
        put(5, "<H", lay.slots[3].length_offset, 0)  # Cartesian member, empty: BAG only
        put(6, "<I", lay.slots[2].ids_offset, 8)  # Cartesian member outside its 8 rows: ID
        put(7, "<I", lay.slots[0].ids_offset, 1 << 31)  # one-hot ID outside its table
        put(8, "<H", lay.slots[2].length_offset, 2)  # Cartesian member with 2 IDs: BAG only
        out, st = _raw_run(acc.device, acc._buffers, bytes(req), 9)
        scores, status = unpack_results(lay, out, 9, check=False)
        V, ID, BAG = 0x01, 0x02, 0x04
        assert status.tolist() == [V, V | BAG, V | BAG, V | ID, V, V | BAG, V | ID, V | ID,
                                   V | BAG]
        good = [0, 4]
        assert np.array_equal(scores[good], _golden(cm, dense, sparse)[good])
        assert st["errors"] == ERROR_BAD_INDEX | ERROR_BAD_REQUEST
        assert st["first_error_request"] == 1 and st["requests_done"] == 9


def test_first_error_request_is_the_batch_index_and_clears_at_start(tmp_path):
    """A bad record at index 10 (beyond the 4 requests in flight) is named by its index; the
    next clean run reports no error and no offending request."""
    spec = _spec("dense", dense=2)
    d, cm = _compile(tmp_path, spec)
    with _sim() as acc:
        acc.load(d)
        dense, sparse = synthetic_batch(spec, 12, seed=4)
        acc.infer(dense[:1], [Bags(b.ids[:1], b.lengths[:1]) for b in sparse])
        lay = acc.layout
        req = bytearray(pack_float_requests(lay, dense, sparse))
        struct.pack_into("<I", req, 10 * lay.record_bytes + lay.slots[2].ids_offset, 99)
        _, st = _raw_run(acc.device, acc._buffers, bytes(req), 12)
        assert st["errors"] == ERROR_BAD_INDEX and st["first_error_request"] == 10
        r = acc.infer(dense, sparse)
        assert r.counters["errors"] == 0
        assert r.counters["first_error_request"] == NO_ERROR_REQUEST
        assert np.array_equal(r.scores, _golden(cm, dense, sparse))


def test_sim_timeout_is_wall_clock_names_the_run_and_the_device_resets(tmp_path):
    spec = _spec("dense", dense=2)
    d, cm = _compile(tmp_path, spec)
    with _sim(max_cycles=1_000_000) as acc:
        acc.load(d)
        dense, sparse = synthetic_batch(spec, 64, seed=5)
        with pytest.raises(DeviceError, match=r"run 1 \(batch 64, flags 0x1\).*timeout of "
                                              r"0.05 s \(wall clock"):
            acc.infer(dense, sparse, timeout=0.05)
        acc.reset()
        r = acc.infer(dense[:4], [Bags(b.ids[:4], b.lengths[:4]) for b in sparse])
        assert np.array_equal(r.scores, _golden(cm, dense[:4], [Bags(b.ids[:4], b.lengths[:4])
                                                                for b in sparse]))


def test_axi_errors_flag_records_and_name_the_first_request(tmp_path):
    """SLVERR on a table read: that request's record has MEMORY; on a result write: the
    record's index; on the status block's write: no index, but the block says so; on the
    request records' read: the first record of the failed burst. Every one sets ERROR_AXI
    (and first_error_request, when a request was at fault). On the program read: no program is left
    (NO_PROGRAM), and the next run does not inherit the AXI bit. A clean run is clean again."""
    spec = _spec("dense", dense=2)
    d, cm = _compile(tmp_path, spec)
    slverr = 2  # AXIResp.SLVERR
    with _sim() as acc:
        acc.load(d)
        dense, sparse = synthetic_batch(spec, 6, seed=6)
        assert np.array_equal(acc.infer(dense, sparse).scores, _golden(cm, dense, sparse))
        lay, dev = acc.layout, acc.device
        req = pack_float_requests(lay, dense, sparse)
        models = dev.memory_models

        table = models["tables0"]
        n = table.stats.reads  # the next table-0 read serves request 0
        table.error_fn = lambda addr, arid, i: slverr if i == n else None
        out, st = _raw_run(dev, acc._buffers, req, 6)
        table.error_fn = None
        _, status = unpack_results(lay, out, 6, check=False)
        assert status.tolist() == [0x09] + [0x01] * 5  # VALID | MEMORY
        assert st["errors"] == ERROR_AXI and st["first_error_request"] == 0

        writes = models["results"]
        writes.error_writes = {writes.bursts + 3}  # the 4th record's write
        out, st = _raw_run(dev, acc._buffers, req, 6)
        writes.error_writes = set()
        assert st["errors"] == ERROR_AXI and st["first_error_request"] == 3

        # The status block's own write (soak finding: the block said errors = 0): the block
        # is written again and carries the bit; no request was at fault.
        writes.error_writes = {writes.bursts + 6}
        out, st = _raw_run(dev, acc._buffers, req, 6)
        writes.error_writes = set()
        assert st["errors"] == ERROR_AXI and st["first_error_request"] == NO_ERROR_REQUEST
        assert st["requests_done"] == 6
        assert np.array_equal(unpack_results(lay, out, 6)[0], _golden(cm, dense, sparse))

        records = models["requests"]
        n = records.stats.reads
        records.error_fn = lambda addr, arid, i: slverr if i == n else None
        _, st = _raw_run(dev, acc._buffers, req, 6)
        records.error_fn = None
        assert st["errors"] & ERROR_AXI and st["first_error_request"] == 0

        program = models["model"]
        n = program.stats.reads  # read n is the header, n + 1 the first program burst
        program.error_fn = lambda addr, arid, i: slverr if i == n + 1 else None
        _, st = _raw_run(dev, acc._buffers, req, 6, FLAG_LOAD)
        program.error_fn = None
        assert st["errors"] == ERROR_AXI | ERROR_NO_PROGRAM and st["requests_done"] == 0
        assert st["first_error_request"] == NO_ERROR_REQUEST
        _, st = _raw_run(dev, acc._buffers, req, 6)  # no program left, and no stale AXI bit
        assert st["errors"] == ERROR_NO_PROGRAM

        acc.load(d)
        r = acc.infer(dense, sparse)
        assert r.counters["errors"] == 0 and r.counters["first_error_request"] == NO_ERROR_REQUEST
        assert np.array_equal(r.scores, _golden(cm, dense, sparse))


def _garbage_program(rng, targets, n, p_unknown):
    """A valid header, then ``n`` command words with random payloads: each targets one of
    ``targets`` or, with probability ``p_unknown``, a code the kernel does not have."""
    wb = MODEL_DATA_WIDTH // 8
    words = [(PROGRAM_MAGIC | n << 32 | PROGRAM_FORMAT << 64).to_bytes(wb, "little")]
    unknown = False
    for _ in range(n):
        if rng.random() < p_unknown:
            # BLOCK is left out: its data beats are judged by their sink, not their first byte
            code = int(rng.choice([c for c in range(256)
                                   if c not in targets and c != Target.BLOCK]))
            unknown = True
        else:
            code = int(rng.choice(targets))
        words.append(bytes([code]) + rng.bytes(wb - 1))
    return b"".join(words), unknown


def test_nonsense_programs_end_every_run_and_the_kernel_recovers(tmp_path):
    """Random command words behind a valid header (known targets with random payloads, and
    unknown targets): every run ends with ap_done and a status block (the run watchdog ends a
    run that stops moving); an unknown target or the watchdog says ERROR_PROGRAM and drops the
    program; after the driver's reset a real model is exact again (docs/kernel.md)."""
    spec = _spec("dense", dense=2)
    d, cm = _compile(tmp_path, spec)
    c = TINY
    targets = [int(Target.PARSER), int(Target.PLACE), int(Target.CONCAT), int(Target.MLP)]
    targets += [int(Target.UNIT_DESC) + i for i in range(c.mem_channels)]
    targets += [int(Target.ONCHIP_DESC) + i for i in range(c.onchip_units)]
    targets += [int(Target.ONCHIP_LOAD) + i for i in range(c.onchip_units)]
    rng = np.random.default_rng(10)
    seen = {"unknown": 0, "watchdog": 0, "completed": 0}
    with _sim(watchdog_cycles=256, max_cycles=20_000) as acc:
        dev = acc.device
        acc.load(d)
        dense, sparse = synthetic_batch(spec, 3, seed=1)
        req = pack_float_requests(acc.layout, dense, sparse)
        tables = {k: v for k, v in acc._buffers.items() if k.startswith("tables")}
        for seed in range(14):
            prog, unknown = _garbage_program(rng, targets, int(rng.integers(1, 25)),
                                             0.0 if seed % 2 else 0.1)
            model = dev.allocate(f"garbage{seed}", len(prog))
            dev.write(model, prog)
            out, st = _raw_run(dev, {**tables, "model": model}, req, 3, FLAG_LOAD)
            assert st["id"] == KERNEL_ID, f"seed {seed}: no status block"
            if unknown:
                seen["unknown"] += 1
                assert st["errors"] & (ERROR_PROGRAM | ERROR_NO_PROGRAM) == \
                    ERROR_PROGRAM | ERROR_NO_PROGRAM, (seed, st)
                assert st["requests_done"] == 0 and out == bytes(len(out)), seed
            elif st["errors"] & ERROR_PROGRAM:
                seen["watchdog"] += 1
                assert st["requests_done"] < 3, (seed, st)
            else:
                seen["completed"] += 1
                assert st["requests_done"] == 3, (seed, st)
            if st["errors"] & ERROR_PROGRAM:
                # The program is dropped: a run without LOAD says NO_PROGRAM, and ends.
                _, st2 = _raw_run(dev, {**tables, "model": model}, req, 3, 0)
                assert st2["errors"] == ERROR_NO_PROGRAM, (seed, st2)
                dev.reset()  # what the driver does on ERROR_PROGRAM
        assert seen["unknown"] and seen["watchdog"], seen
        acc.reset()
        assert np.array_equal(acc.infer(dense, sparse).scores, _golden(cm, dense, sparse))
