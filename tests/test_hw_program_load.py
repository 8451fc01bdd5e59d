"""Dense kernel programs (format 4): packed weight, bias and on-chip beats load at one word per
cycle into the engines' wide write ports, bit-exact, with random stalls on every master
(docs/kernel.md, "Kernel program"; docs/mlp.md, "Loading weights")."""

import json

import numpy as np
import pytest

from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.cycle_model import program_load_cycles
from recfabric.host.compiler.kernel_program import (
    PROGRAM_JSON,
    PROGRAM_VERSION,
    program_word_counts,
    read_program,
)
from recfabric.host.compiler.steps import compile_model
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.runtime.accelerator import Accelerator
from recfabric.hw.config import get_preset
from recfabric.hw.mlp import BeatPacking
from recfabric.hw.register_map import ERROR_NO_PROGRAM

TINY = get_preset("tiny")
#: Engine 0 of 12 x 4 PEs: two weight groups (8 + 4 rows) and two bias groups (10 + 2 rows)
#: at int16, so beats are ragged in both.
WIDE = TINY.replace(name="tiny-wide", mlp_top_shapes=((12, 4), (1, 12), (1, 1)))
INT8 = TINY.replace(name="tiny-int8", data_bits=8, acc_bits=32)


def _spec(top=(14, 1)):
    # 3 dense + 3 + 5 + 4 pooled = 15 inputs: no layer's weight count is a multiple of a beat
    sparse = (SparseFeature("a", 16, 3), SparseFeature("b", 40, 5, bag=3),
              SparseFeature("c", 9, 4))
    return ModelSpec("ragged", sparse=sparse, dense=3, top_mlp=top)


def _compile(tmp_path, spec, cfg, seed=0):
    d = tmp_path / f"{spec.name}-{cfg.name}"
    compile_model(spec, random_weights(spec, seed=seed), cfg, d, seed=seed, calib_batch=64)
    return d, load_compiled(d)


def _golden(cm, dense, sparse):
    return golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse).scores


def test_packing_of_the_test_engines_is_ragged():
    """The configurations below exercise what they claim to."""
    pk = BeatPacking(rows=12, cols=4, data_bits=16, acc_bits=48, beat_bits=512)
    assert (pk.g, pk.w, pk.groups, pk.gb, pk.bias_groups) == (8, 4, 2, 10, 2)
    assert 15 * 14 % pk.lanes and 14 % pk.bias_lanes


@pytest.mark.parametrize("cfg, top", [(WIDE, (14, 1)), (INT8, (7, 3, 1))],
                         ids=["int16-ragged", "int8"])
def test_packed_program_is_bit_exact_with_stalls(tmp_path, cfg, top):
    """Weights, biases and on-chip rows arrive as packed beats while every master (the model's
    included) stalls at random; scores equal the golden model's, in two runs (the second
    without LOAD)."""
    spec = _spec(top)
    d, cm = _compile(tmp_path, spec, cfg, seed=3)
    meta = cm.program.meta
    for kind in ("MLP weights", "MLP biases", "on-chip rows"):
        assert meta["counts"].get(kind, 0) > 0, kind
    with Accelerator.open("sim", cfg, p_stall=0.3, mem_latency=16, seed=5,
                          max_cycles=60_000) as acc:
        assert acc.device.memory_models["model"].p_ar_stall == 0.3
        acc.load(d)
        for batch, seed in ((4, 1), (3, 2)):
            dense, sparse = synthetic_batch(spec, batch, seed=seed)
            r = acc.infer(dense, sparse)
            assert np.array_equal(r.scores, _golden(cm, dense, sparse))
            assert r.counters["errors"] == 0 and r.counters["requests_done"] == batch


def test_program_loads_at_one_word_per_cycle(tmp_path):
    """Without stalls the load costs the modelled ``words + overhead`` cycles (the model's
    overhead was fitted on ``small``; this is ``tiny``): the loader streams."""
    spec = get_model("tiny")
    d, cm = _compile(tmp_path, spec, TINY)
    words = cm.program.meta["words"]
    dense, sparse = synthetic_batch(spec, 1, seed=1)
    with Accelerator.open("sim", TINY, max_cycles=20_000) as acc:
        acc.load(d)
        first = acc.infer(dense, sparse)
        again = acc.infer(dense, sparse)
    assert np.array_equal(first.scores, again.scores)
    load = first.counters["cycles"] - again.counters["cycles"]
    print(f"tiny: {words} program words, load {load} cycles (simulated)")
    assert load == program_load_cycles(words), (words, load)


def test_other_program_formats_leave_no_program(tmp_path):
    """A program whose header names another format is refused by the kernel (NO_PROGRAM, as a
    missing magic is) and by the host (read_program names the version)."""
    spec = get_model("tiny")
    d, cm = _compile(tmp_path, spec, TINY)
    dense, sparse = synthetic_batch(spec, 2, seed=1)
    with Accelerator.open("sim", TINY, max_cycles=20_000, mem_latency=8) as acc:
        acc.load(d)
        model = acc._buffers["model"]
        header = bytearray(acc.device.read(model, 64))
        assert int.from_bytes(header[8:12], "little") == PROGRAM_VERSION
        acc.device.write(model, bytes(header[:8]) + (3).to_bytes(4, "little") +
                         bytes(header[12:]))
        with pytest.raises(Exception, match="no valid kernel program"):
            acc.infer(dense, sparse)
        assert acc.counters()["errors"] == ERROR_NO_PROGRAM
        acc.device.write(model, bytes(header))
        acc.load(d)  # the next run carries FLAG_LOAD again
        assert np.array_equal(acc.infer(dense, sparse).scores, _golden(cm, dense, sparse))
    meta = json.loads((d / PROGRAM_JSON).read_text())
    (d / PROGRAM_JSON).write_text(json.dumps({**meta, "version": 3}))
    with pytest.raises(ValueError, match=f"version 3, expected 'recfabric-kernel-program' "
                                         f"{PROGRAM_VERSION}"):
        read_program(d)


@pytest.mark.parametrize("model, cfg", [("tiny", TINY), ("small", get_preset("small")),
                                        ("tiny", INT8), ("tiny", WIDE)])
def test_word_counts_without_building_equal_the_program(tmp_path, model, cfg):
    """program_word_counts (used for the modelled load of plans the kernel cannot run yet)
    counts exactly the words build_program writes."""
    spec = get_model(model)
    d, cm = _compile(tmp_path, spec, cfg)
    n = program_word_counts(spec, cm.plan, cfg)
    meta = cm.program.meta
    assert (n["words"], n["commands"], n["beats"]) == (meta["words"], meta["commands"],
                                                       meta["beats"])
    units = len({t.location for t in cm.plan.tables if t.memory == "onchip"})
    # a block's command word and its beats count under its kind
    assert meta["counts"].get("on-chip rows", 0) == n["onchip_rows"] + units
    assert meta["counts"]["MLP biases"] > n["mlp_biases"] > 0
    assert meta["counts"]["MLP weights"] > n["mlp_weights"] > 0
