"""The kernel's run protocol on the cycle-accurate ``sim`` backend (docs/kernel.md, "Run protocol").

Model switches without a reset, runs without a valid program, per-record flags and the status
block's error fields, each driven through the production driver or the raw register map.
"""

import numpy as np

from recfabric.host.compiler import compile_model, golden_from_images, load_compiled
from recfabric.host.driver import Accelerator
from recfabric.host.model_spec import ModelSpec, SparseFeature
from recfabric.host.synthetic import synthetic_batch
from recfabric.host.weights import random_weights
from recfabric.hw.config import get_preset

TINY = get_preset("tiny")


def _spec(name, dense, bags=(1, 3, 1), dims=(4, 8, 4), rows=(16, 32, 8), top=(8, 1)):
    sparse = tuple(SparseFeature(f"f{i}", r, d, bag=b)
                   for i, (r, d, b) in enumerate(zip(rows, dims, bags)))
    return ModelSpec(name=name, sparse=sparse, dense=dense, top_mlp=top)


def _compile(tmp_path, spec, seed=0):
    d = tmp_path / spec.name
    compile_model(spec, random_weights(spec, seed=seed), TINY, d, seed=seed)
    return d, load_compiled(d)


def _golden(cm, dense, sparse):
    return golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse).scores


def _sim(**kw):
    kw = {"mem_latency": 12, "max_cycles": 20_000, **kw}
    return Accelerator.open("sim", "tiny", **kw)


def test_model_switch_without_reset_is_exact(tmp_path):
    """No-dense model, then a dense model (flags=LOAD, no reset), then a further batch: exact,
    no hang. The dense part's tag must follow the requests' tags across runs and models."""
    a_spec, b_spec = _spec("nodense", dense=0), _spec("dense", dense=2)
    (da, ca), (db, cb) = _compile(tmp_path, a_spec, 1), _compile(tmp_path, b_spec, 2)
    with _sim() as acc:
        for d, cm, spec, batch, seed in ((da, ca, a_spec, 3, 5), (db, cb, b_spec, 5, 6),
                                         (None, cb, b_spec, 6, 7)):
            if d is not None:
                acc.load(d)
            dense, sparse = synthetic_batch(spec, batch, seed=seed)
            r = acc.infer(dense, sparse)
            assert np.array_equal(r.scores, _golden(cm, dense, sparse)), spec.name
            assert r.counters["errors"] == 0 and r.counters["requests_done"] == batch
