"""The streaming request path end to end (parser -> dispatcher -> units) with Cartesian pairs.

The zoo's tiny/small models have no merged tables, so this model is made for the planner to
merge ``a`` and ``b`` (features 0 and 2) with a multi-hot feature between them: the dispatcher
holds ``a``'s ID while ``m``'s bag streams past, then emits the merged lookup at ``b``.
"""

import numpy as np
import pytest
from amaranth.lib import data

from recfabric.host.compiler.compiled import golden_from_images, load_compiled
from recfabric.host.compiler.kernel_program import _kernel_formats, _placements, read_program
from recfabric.host.compiler.steps import compile_model
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.runtime.accelerator import Accelerator
from recfabric.hw.config import get_preset
from recfabric.hw.kernel import Target
from recfabric.hw.lookup_dispatcher import PlaceKind

SPEC = ModelSpec("pairs", sparse=(SparseFeature("a", 6, 4), SparseFeature("m", 40, 4, bag=3),
                                  SparseFeature("b", 5, 4), SparseFeature("c", 7, 4)),
                 dense=2, top_mlp=(4, 1))


def _compiled(tmp_path, planner):
    d = tmp_path / planner
    compile_model(SPEC, random_weights(SPEC, seed=2), get_preset("tiny"), d, planner=planner)
    cm = load_compiled(d)
    feats = cm.descriptors["features"]
    if planner == "microrec":  # main's default planner merges only to save beats: not here
        assert feats[0]["group"] == feats[2]["group"], "the planner no longer merges a and b"
    return d, cm


def test_program_places_a_pair_as_hold_and_pair(tmp_path):
    d, cm = _compiled(tmp_path, "microrec")
    image = read_program(d)
    wb = image.word_bytes
    words = [int.from_bytes(image.data[i:i + wb], "little")
             for i in range(wb, len(image.data), wb)]  # word 0 is the header
    layout = _kernel_formats(get_preset("tiny")).place
    place = [data.Const(layout, (w >> 8) & ((1 << layout.size) - 1)) for w in words
             if w & 0xFF == Target.PLACE]
    entries = {int(p.feature): p.entry for p in place}
    assert sorted(entries) == [0, 1, 2, 3]
    # row = id_0 * rows_2 + id_2: feature 0 holds id_0 * 5, feature 2 adds id_2 * 1 and emits
    assert entries[0].kind == PlaceKind.HOLD
    assert (int(entries[0].rows), int(entries[0].mult)) == (6, 5)
    pair = entries[2]
    assert pair.kind == PlaceKind.LAST
    assert (int(pair.partner), int(pair.rows), int(pair.mult)) == (0, 5, 1)
    assert (int(pair.shards), int(pair.copies)) == (1, 1)
    assert entries[1].kind == PlaceKind.SINGLE and entries[3].kind == PlaceKind.SINGLE
    assert len({int(entries[f].slot) for f in (1, 2, 3)}) == 3


@pytest.mark.parametrize("planner", ["default", "microrec"])
def test_merged_pair_is_bit_exact_with_stalls(tmp_path, planner):
    d, cm = _compiled(tmp_path, planner)
    dense, sparse = synthetic_batch(SPEC, 6, seed=5)
    sparse[1].lengths[2] = 0  # an empty bag between the pair's members
    with Accelerator.open("sim", "tiny", p_stall=0.25, mem_latency=12, seed=3,
                          max_cycles=50_000) as acc:
        acc.load(d)
        r = acc.infer(dense, sparse)
    g = golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse)
    assert np.array_equal(r.scores, g.scores)
    c = r.counters
    assert c["errors"] == 0 and c["requests_done"] == 6
    # One lookup per ID of an unmerged feature (one for an empty bag), one per request for a
    # merged pair.
    groups = {}
    for f, feat in enumerate(cm.descriptors["features"]):
        groups.setdefault(feat["group"], []).append(f)
    want = sum(6 if len(fs) == 2 else int(np.maximum(sparse[fs[0]].lengths, 1).sum())
               for fs in groups.values())
    assert c["lookups_issued"] == want


def test_pair_whose_member_b_arrives_first():
    # Group members in row-product order (a = feature 4, b = feature 1): b is sent first.
    parts = [{"unit": 1, "desc": 2, "lo": 0}]
    e = _placements(3, parts, [4, 1], [{"rows": 10, "radix": 7}, {"rows": 7, "radix": 1}])
    assert e[1] == {"kind": PlaceKind.HOLD, "rows": 7, "mult": 1}
    assert e[4] == {"slot": 3, "shards": 1, "copies": 1, "parts": parts, "kind": PlaceKind.LAST,
                    "rows": 10, "mult": 7, "partner": 1}
