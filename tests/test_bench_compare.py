"""`recfabric bench compare`: every platform's scores checked; rows, crossovers, plots, JSON."""

import json

import numpy as np
import pytest

from recfabric.host.bench.compare import (
    crossovers,
    format_table,
    parse_batches,
    run_compare,
    to_onnx,
)
from recfabric.host.cli import main
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.reference.golden import float_forward

FAST = {"min_seconds": 0.0, "max_reps": 3}


@pytest.mark.parametrize("spec", [
    ModelSpec("dot", sparse=(SparseFeature("a", 50, 8), SparseFeature("b", 40, 8, bag=3)),
              dense=5, bottom_mlp=(16, 8), interaction="dot", top_mlp=(12, 1)),
    ModelSpec("heads", sparse=(SparseFeature("a", 30, 4, bag=2),), dense=3,
              top_mlp=(8, 6), heads=((4, 1), (1,))),
])
def test_onnx_graph_computes_the_float_reference(spec):
    ort = pytest.importorskip("onnxruntime")
    w = random_weights(spec, seed=3)
    dense, sparse = synthetic_batch(spec, 37, seed=4)
    sess = ort.InferenceSession(to_onnx(w, [f.bag for f in spec.sparse]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    feed = {"dense": dense}
    for i, b in enumerate(sparse):
        feed[f"ids{i}"] = b.ids
        feed[f"mask{i}"] = b.mask().astype(np.float32)
    got = sess.run(["prob"], feed)[0]
    np.testing.assert_allclose(got, float_forward(w, dense, sparse), atol=1e-6, rtol=0)


def test_cpu_platforms_and_cycle_model_rows():
    pytest.importorskip("onnxruntime")
    r = run_compare("tiny", config=None, model_config="tiny", batches=[1, 8],
                    platforms={"model", "torch-eager", "torch-script", "onnxruntime",
                               "torch-cuda"}, **FAST)
    plats = {row["platform"] for row in r["rows"]}
    assert {"recfabric-tiny model", "torch-eager", "torch-script", "onnxruntime"} <= plats
    for row in r["rows"]:
        assert row["scores_ok"], row
        assert row["batch"] in (1, 8)
        assert row["latency_us"] > 0
        assert row["throughput"] == pytest.approx(row["batch"] / row["latency_us"] * 1e6,
                                                  rel=1e-3)
        if row["platform"].startswith("recfabric"):
            assert row["source"] == "modelled" and row["golden_exact"] is True
            assert row["clock"] == "assumed"
        else:
            assert row["source"] == "measured"
            assert row["max_abs_error_vs_float"] <= 1e-4
    if "torch-cuda" not in plats:
        assert any(n.startswith("torch-cuda: not available") for n in r["notes"])
    text = format_table(r)
    assert "recfabric-tiny model" in text and "onnxruntime" in text


@pytest.mark.slow  # ~40 s: program load and three batches in the Amaranth simulation
def test_simulated_rows_match_golden_and_the_cycle_model_tracks_them():
    r = run_compare("tiny", config="tiny", model_config="tiny", batches=[1, 2, 6],
                    sim_max_batch=2, platforms={"sim", "model"}, **FAST)
    sim = {row["batch"]: row for row in r["rows"] if row["platform"] == "recfabric-tiny sim"}
    mod = {row["batch"]: row for row in r["rows"] if row["platform"] == "recfabric-tiny model"}
    assert sim[1]["source"] == sim[2]["source"] == "simulated"
    assert sim[6]["source"] == "modelled" and "extrapolated" in sim[6]["method"]
    assert all(row["golden_exact"] and row["scores_ok"] for row in sim.values())
    # the extrapolation continues the simulated marginal cost
    per = sim[2]["cycles"] - sim[1]["cycles"]
    assert sim[6]["cycles"] == sim[2]["cycles"] + 4 * per
    for b in (1, 2):  # the analytical kernel model stays within 20% of the simulated kernel
        assert abs(mod[b]["cycles"] - sim[b]["cycles"]) <= 0.2 * sim[b]["cycles"], (mod, sim)


@pytest.mark.slow  # ~1 min: program load and two batches of the small kernel in simulation
def test_kernel_cycle_model_matches_the_simulated_small_kernel():
    """kernel_batch_cycles is fitted on the small model and preset (one request); it must then
    predict the batch of 16 too (cycle_model's docstring: 355 and 1,379 cycles simulated)."""
    r = run_compare("small", config="small", model_config="small", batches=[1, 16],
                    sim_max_batch=16, platforms={"sim", "model"}, **FAST)
    sim = {row["batch"]: row for row in r["rows"] if row["platform"] == "recfabric-small sim"}
    mod = {row["batch"]: row for row in r["rows"] if row["platform"] == "recfabric-small model"}
    for b in (1, 16):
        assert sim[b]["source"] == "simulated" and sim[b]["golden_exact"]
        assert abs(mod[b]["cycles"] - sim[b]["cycles"]) <= 0.01 * sim[b]["cycles"], (mod, sim)


def test_crossovers_find_where_the_faster_platform_changes():
    rows = [{"platform": "acc", "batch": b, "throughput": t} for b, t in
            ((1, 100.0), (4, 400.0), (16, 500.0))]
    rows += [{"platform": "cpu", "batch": b, "throughput": t} for b, t in
             ((1, 10.0), (4, 450.0), (16, 2000.0))]
    assert crossovers(rows) == [{"between": [1, 4], "faster_below": "acc",
                                 "faster_above": "cpu"}]


def test_cli_json_rows_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "cmp.png"
    rc = main(["bench", "compare", "tiny", "--config", "none", "--model-config", "tiny",
               "--platforms", "model,torch-eager", "--batches", "1,2", "--json",
               "--plot", str(png)])
    out = capsys.readouterr()
    assert rc == 0
    result = json.loads(out.out)
    for row in result["rows"]:
        assert {"platform", "batch", "latency_us", "throughput", "source"} <= set(row)
        assert row["source"] in ("simulated", "modelled", "measured")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.err == ""  # --json: no status lines, no bars


@pytest.mark.parametrize("text,msg", [("1,0", "at least 1, not 0"), ("1,x", "'x' is not")])
def test_bad_batches_are_one_line_errors(text, msg, capsys):
    with pytest.raises(ValueError, match=msg):
        parse_batches(text)
    assert main(["bench", "compare", "tiny", "--batches", text]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_a_model_too_large_for_the_sim_backend_gets_modelled_rows_not_a_simulation():
    """`--config u280` for a model whose tables exceed the sim backend's memory (microrec-small):
    the simulation is skipped before anything is elaborated, with a note naming both sizes, and
    the accelerator row is the u280 cycle model with scores from the reference backend."""
    spec = get_model("tiny")
    memory = spec.table_bytes(2) - 1  # one byte short of the raw int16 tables
    r = run_compare(spec, config="u280", model_config="u280", batches=[1, 4],
                    platforms={"sim", "model"}, sim_memory_bytes=memory, **FAST)
    assert {row["platform"] for row in r["rows"]} == {"recfabric-u280 model"}
    for row in r["rows"]:
        assert row["source"] == "modelled" and row["clock"] == "assumed"
        assert row["golden_exact"] is True and row["scores_ok"], row
    note = next(n for n in r["notes"] if n.startswith("sim: skipped"))
    assert "tiny's tables need at least 0.0 MiB on u280" in note, note
    assert "the accelerator rows are modelled (u280)" in note


@pytest.mark.slow  # ~25 s (70 s at load 10): compiling microrec-small for u280 (727 MB images)
def test_microrec_small_has_a_modelled_u280_row_checked_against_golden(capsys):
    rc = main(["bench", "compare", "microrec-small", "--config", "u280", "--platforms",
               "sim,model", "--batches", "1,2", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0
    rows = {row["batch"]: row for row in result["rows"]}
    assert sorted(rows) == [1, 2] and all(r["platform"] == "recfabric-u280 model"
                                          for r in rows.values())
    assert all(r["golden_exact"] and r["scores_ok"] and r["source"] == "modelled"
               for r in rows.values())
    assert any(n.startswith("sim: skipped, microrec-small's tables") for n in result["notes"])
