import json

import pytest

from recfabric.host.model.spec import ModelSpec, SparseFeature, SpecError
from recfabric.host.model.zoo import DEFAULT_MODEL, ZOO, get_model


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_json_round_trip(name, tmp_path):
    spec = get_model(name)
    path = tmp_path / f"{name}.json"
    spec.save(path)
    assert ModelSpec.load(path) == spec
    assert get_model(str(path)) == spec


def test_published_shapes():
    ms = get_model("microrec-small")
    assert len(ms.sparse) == 47 and ms.interaction_width == 352
    assert ms.shape_string() == "352-1024-512-256-1"
    ml = get_model("microrec-large")
    assert len(ml.sparse) == 98 and ml.interaction_width == 876
    kg = get_model("kaggle")
    assert len(kg.sparse) == 26 and kg.interaction_width == 367
    assert kg.shape_string() == "367-512-256-1"
    assert [f.rows for f in kg.sparse][:3] == [1460, 583, 10131227]
    assert get_model("wnd").interaction_width == 27 * 32
    assert get_model("rmc1").lookups_per_inference() == 8 * 80
    assert get_model("mt-wnd").num_outputs == 3
    assert DEFAULT_MODEL in ZOO


def test_hardware_blockers_named():
    assert get_model("small").hardware_blockers() == []
    # The kernel runs dot interaction and heads of equal depth (configurations decide limits).
    assert get_model("kaggle").hardware_blockers() == []
    assert get_model("mt-wnd").hardware_blockers() == []
    uneven = ModelSpec("uneven", sparse=(SparseFeature("a", 10, 4),), dense=2, top_mlp=(4,),
                       heads=((4, 1), (1,)))
    with pytest.raises(SpecError, match="multi-task heads of different depths"):
        uneven.require_hardware_support()
    for name in ("din", "dien", "ncf", "wnd"):
        assert get_model(name).unmodelled, f"{name} must state what its spec does not express"


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o["sparse"][0].update(rows=0), "rows must be at least 1, not 0"),
    (lambda o: o["sparse"][0].update(dim="8"), "dim must be an integer, not '8'"),
    (lambda o: o["sparse"][1].update(bag=-2), "bag must be at least 1, not -2"),
    (lambda o: o.update(top_mlp=[8, 2]), "end in one output"),
    (lambda o: o.update(interaction="attention"), "interaction must be one of"),
    (lambda o: o.update(dense=-1), "dense must be at least 0, not -1"),
    (lambda o: o.update(colour="red"), "unknown model spec field"),
    (lambda o: o["sparse"][1].update(name="a"), "repeated: a"),
    (lambda o: o.update(bottom_mlp=[4, 4], interaction="dot"), "dot interaction needs"),
    (lambda o: o["sparse"][0].pop("rows"), "missing field 'rows'"),
])
def test_validation_names_field_and_value(mutate, message):
    obj = get_model("tiny").to_json()
    mutate(obj)
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_json(json.loads(json.dumps(obj)))


def test_count_shorthand_and_bad_json():
    spec = ModelSpec.from_json({"name": "x", "sparse": [{"rows": 10, "dim": 4, "count": 3}],
                                "top_mlp": [1]})
    assert [f.name for f in spec.sparse] == ["f0_0", "f0_1", "f0_2"]
    with pytest.raises(SpecError, match="not valid JSON"):
        ModelSpec.loads("{nope")
    with pytest.raises(SpecError, match="unknown model"):
        get_model("no-such-model")


def test_dot_interaction_width():
    spec = ModelSpec(name="d", sparse=[SparseFeature(f"s{i}", 10, 4) for i in range(3)], dense=5,
                     bottom_mlp=(4,), interaction="dot", top_mlp=(1,))
    assert spec.interaction_width == 4 + 6
