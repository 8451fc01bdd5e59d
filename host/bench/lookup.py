"""Cycle-accurate lookup benchmark (``recfabric bench lookup``) and the lookup simulation harness.

The harness (:func:`expected_pooled`, :func:`simulate_lookup_unit`) runs an
:class:`EmbeddingLookupUnit` against :class:`recfabric.sim.hbm_model.HBMModel` in the Amaranth
simulator, and computes what the numerics spec says each bag pools to. Tables are laid out by the
compiler's one table layout (:func:`recfabric.host.compiler.table_layout.pack_tables`). The
unit tests and the benchmark share it.

:func:`run_lookup_bench` measures, per configuration (memory latency x outstanding-read limit x
row size), the sustained lookups per cycle of one channel (one-lookup bags back to back, consumer
always ready; the rate of pooled vectors after the first quarter of them, once the pipeline is
full) and the latency of a single lookup into an idle unit (cycles from the lookup's handshake to
its pooled vector's handshake).
"""

from __future__ import annotations

import json
import random
import sys
import time

import numpy as np

from .. import numerics as nx
from ..compiler.table_layout import TableLayout, pack_tables

__all__ = [
    "expected_pooled",
    "simulate_lookup_unit",
    "run_lookup_bench",
    "register",
    "main",
]


_PERIOD = 4e-9  # 250 MHz; only cycle counts matter


def expected_pooled(tables, descs_valid, lookups, *, data_bits: int, max_dim: int,
                    bad_fn=None):
    """Spec result of a lookup sequence: one dict per bag, in bag order.

    A bag pools to ``numerics.pool_sum`` of its rows (zeros for an empty bag), padded to
    ``max_dim``; a bag with any bad lookup (``kind`` BAD, row out of range, invalid descriptor,
    or ``bad_fn(index, lookup)`` true: an AXI error response) gives ``error=1``, zeros, and
    ``cause`` the :class:`~recfabric.hw.stream_types.LookupErrorCause` value of its first bad
    lookup (0 for a good bag).
    """
    from ...hw.stream_types import LookupErrorCause  # noqa: PLC0415 - hardware harness only

    fmt = nx.FixedFormat(data_bits, 0)
    out, rows, cause = [], [], 0  # cause: LookupErrorCause of the bag's first bad lookup

    def bad(c):
        return cause or c

    for i, lk in enumerate(lookups):
        if lk["first"]:
            rows, cause = [], 0
        kind = lk.get("kind", 0)
        if kind == 2:
            cause = bad(1)  # ROW
        elif kind == 0:
            d = lk["desc"]
            if d >= len(tables) or not descs_valid[d]:
                cause = bad(2)  # DESC
            elif not 0 <= lk["row"] < len(tables[d]):
                cause = bad(1)  # ROW
            elif bad_fn is not None and bad_fn(i, lk):
                cause = bad(3)  # RESP
            else:
                rows.append(np.asarray(tables[d][lk["row"]], dtype=np.int64))
        if lk["last"]:
            vec = [0] * max_dim
            if not cause and rows:
                pooled = nx.pool_sum(np.stack(rows), fmt, axis=0)
                vec[:len(pooled)] = [int(x) for x in pooled]
            out.append({"tag": lk["tag"], "slot": lk["slot"], "error": int(bool(cause)),
                        "cause": LookupErrorCause(cause), "data": vec})
    return out


def simulate_lookup_unit(unit, memory, descs, lookups, *, base: int = 0x1000, latency: int = 8,
                         mem_outstanding: int = 64, rng: random.Random | None = None,
                         p_idle: float = 0.0, p_stall: float = 0.0, hbm_kwargs=None,
                         check_streams: bool = True, max_cycles: int = 1_000_000,
                         before=None):
    """Run ``lookups`` through ``unit`` against an :class:`HBMModel` holding ``memory``.

    Returns ``(outputs, info)``: ``outputs`` are the pooled vectors as plain dicts in arrival
    order; ``info`` has the model's ``stats``, the unit's sticky error outputs at the end, the
    cycle numbers of every lookup and output handshake, and the stream checkers.
    """
    from amaranth.sim import Simulator

    from ...sim.hbm_model import HBMModel
    from ...sim.stream_testing import StreamChecker, payload_value, stream_get, stream_put

    rng = rng or random.Random(0)
    kw = dict(base=base, latency=latency, max_outstanding=mem_outstanding, rng=rng)
    kw.update(hbm_kwargs or {})
    hbm = HBMModel(unit.m_axi, memory, **kw)
    sim = Simulator(unit)
    sim.add_clock(_PERIOD)
    in_chk = StreamChecker(unit.i_lookup, name="i_lookup", record=True)
    out_chk = StreamChecker(unit.o_pooled, name="o_pooled", record=True)
    if check_streams:
        sim.add_process(in_chk.process)
        sim.add_process(out_chk.process)
    sim.add_testbench(hbm.process, background=True)
    n_bags = sum(1 for lk in lookups if lk["last"])
    outputs = []
    info = {"hbm": hbm.stats, "in": in_chk, "out": out_chk}
    done = {"producer": False}

    async def producer(ctx):
        for d_i, d in enumerate(descs):
            await stream_put(ctx, unit.i_desc, {"index": d_i, "desc": d})
        if before is not None:
            await before(ctx)
        for lk in lookups:
            lk = {"kind": 0, **lk}
            await stream_put(ctx, unit.i_lookup, lk, rng=rng, p_idle=p_idle)
        done["producer"] = True

    async def consumer(ctx):
        for _ in range(n_bags):
            v = payload_value(await stream_get(ctx, unit.o_pooled, rng=rng, p_stall=p_stall))
            outputs.append(v)
        for _ in range(4):
            await ctx.tick()
        info.update(error=ctx.get(unit.error.flag), error_tag=ctx.get(unit.error.tag),
                    error_slot=ctx.get(unit.error.slot),
                    error_cause=ctx.get(unit.error.cause), idle=ctx.get(unit.idle))

    async def watchdog(ctx):
        await ctx.delay(max_cycles * _PERIOD)
        raise TimeoutError(f"lookup simulation did not finish in {max_cycles} cycles: "
                           f"{len(outputs)} of {n_bags} pooled vectors received")

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(watchdog, background=True)
    sim.run()
    return outputs, info


def _bench_one(*, latency: int, outstanding: int, dim: int, n: int, data_bits: int = 16,
               data_width: int = 256, seed: int = 0) -> dict:
    from ...hw.embedding_lookup import EmbeddingLookupUnit

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    lim = 1 << (data_bits - 1)
    table = nrng.integers(-lim, lim, size=(256, dim))
    memory, descs = pack_tables([table], TableLayout(data_bits, data_width // 8))
    unit = EmbeddingLookupUnit(data_bits=data_bits, max_dim=dim, data_width=data_width,
                               max_outstanding=outstanding, tag_bits=4, slot_bits=2, n_desc=1,
                               max_bag=1)
    beats = -(-dim * data_bits // data_width)

    def lk(i):
        return {"tag": i % 16, "slot": 0, "desc": 0, "row": rng.randrange(256), "first": 1,
                "last": 1}

    # Throughput: n one-lookup bags back to back.
    lookups = [lk(i) for i in range(n)]
    outs, info = simulate_lookup_unit(unit, memory, descs, lookups, latency=latency,
                                      mem_outstanding=1 << 20, rng=rng)
    exp = expected_pooled([table], [True], lookups, data_bits=data_bits, max_dim=dim)
    if outs != exp:
        raise AssertionError("benchmark run produced wrong pooled vectors")
    # Steady state: skip the first quarter of the outputs (the pipeline filling up).
    cyc = info["out"].transfer_cycles[len(lookups) // 4:]
    rate = (len(cyc) - 1) / (cyc[-1] - cyc[0])
    # Latency: one lookup into an idle unit.
    one = [lk(0)]
    outs1, info1 = simulate_lookup_unit(unit, memory, descs, one, latency=latency, rng=rng)
    lat = info1["out"].transfer_cycles[0] - info1["in"].transfer_cycles[0]
    return {"memory_latency": latency, "outstanding": outstanding, "dim": dim,
            "beats_per_row": beats, "lookups": n, "lookups_per_cycle": round(rate, 4),
            "beats_per_cycle": round(rate * beats, 4), "single_lookup_latency": lat,
            "max_inflight_seen": info["hbm"].max_inflight}


def run_lookup_bench(*, latencies=(32, 64, 128), outstanding=(8, 32, 128), dims=(16, 64),
                     lookups: int = 400, data_bits: int = 16, data_width: int = 256,
                     progress=None) -> list[dict]:
    """Measure one lookup channel in cycle-accurate simulation.

    Parameters
    ----------
    latencies : iterable of int
        Memory read latencies (cycles) to model.
    outstanding : iterable of int
        The unit's outstanding-read limits to build.
    dims : iterable of int
        Row sizes in elements (16 int16 = one 256-bit beat; 64 = four beats).
    lookups : int
        One-lookup bags per throughput run.
    progress : callable(str), optional
        Called with a line of text before each configuration.

    Returns
    -------
    list of dict
        One per configuration: ``memory_latency``, ``outstanding``, ``dim``, ``beats_per_row``,
        ``lookups``, ``lookups_per_cycle``, ``beats_per_cycle``, ``single_lookup_latency``,
        ``max_inflight_seen``, ``wall_s``.
    """
    results = []
    configs = [(d, o, lat) for d in dims for o in outstanding for lat in latencies]
    for i, (d, o, lat) in enumerate(configs):
        if progress:
            progress(f"[{i + 1}/{len(configs)}] latency {lat}, outstanding {o}, dim {d}")
        t0 = time.perf_counter()
        r = _bench_one(latency=lat, outstanding=o, dim=d, n=lookups, data_bits=data_bits,
                       data_width=data_width, seed=i)
        r["wall_s"] = round(time.perf_counter() - t0, 2)
        results.append(r)
    return results


def format_table(results) -> str:
    """Markdown table of :func:`run_lookup_bench` results."""
    head = ("| mem latency | outstanding | dim | beats/row | lookups/cycle | beats/cycle | "
            "single-lookup latency |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['memory_latency']} | {r['outstanding']} | {r['dim']} | "
                     f"{r['beats_per_row']} | {r['lookups_per_cycle']:.3f} | "
                     f"{r['beats_per_cycle']:.3f} | {r['single_lookup_latency']} |")
    return "\n".join(lines)


def _add_args(p):
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--lookups", type=int, default=400, help="lookups per throughput run")
    p.add_argument("--latency", type=int, nargs="+", default=[32, 64, 128],
                   help="memory latencies in cycles")
    p.add_argument("--outstanding", type=int, nargs="+", default=[8, 32, 128],
                   help="outstanding-read limits")
    p.add_argument("--dim", type=int, nargs="+", default=[16, 64],
                   help="row sizes in int16 elements (16 = one 256-bit beat)")


def _run(args) -> int:
    def progress(msg):
        print(msg, file=sys.stderr, flush=True)
    res = run_lookup_bench(latencies=args.latency, outstanding=args.outstanding, dims=args.dim,
                           lookups=args.lookups, progress=progress)
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0


def register(subparsers):
    """Add the ``lookup`` command to a ``bench`` sub-command's ``subparsers``.

    The parser's ``func`` default is set to a callable taking the parsed ``args`` and returning
    an exit code.
    """
    p = subparsers.add_parser("lookup", help="cycle-accurate lookup-unit throughput and latency")
    _add_args(p)
    p.set_defaults(func=_run)
    return p


def main(argv=None) -> int:
    """Stand-alone entry point: ``python -m recfabric.host.bench.lookup [--json]``."""
    import argparse

    p = argparse.ArgumentParser(prog="recfabric bench lookup", description=__doc__.split("\n")[0])
    _add_args(p)
    return _run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
