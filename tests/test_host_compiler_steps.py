"""Compiler steps: golden model from the images == golden model, same input -> same bytes,
errors, calibration input, resumable steps, capabilities."""

import json
import subprocess
import sys

import numpy as np
import pytest

from recfabric.host.cli.compile import register
from recfabric.host.compiler.compiled import (
    CompiledModel,
    CompileError,
    ImagePooling,
    golden_from_images,
    load_compiled,
)
from recfabric.host.compiler.memory_image import (
    pack_descriptors,
    unpack_descriptors,
    write_table_images,
)
from recfabric.host.compiler.planner import plan, study_capabilities
from recfabric.host.compiler.steps import COMPILE_STEPS, compile_model
from recfabric.host.model.dataset import DatasetError, load_calibration, save_dataset
from recfabric.host.model.spec import ModelSpec, SparseFeature, SpecError
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.host.reference.golden import TablePooling, golden_forward
from recfabric.host.reference.quantize import quantize_model
from recfabric.hw.config import get_preset

MIXED = ModelSpec("mixed", sparse=(SparseFeature("a", 10, 4), SparseFeature("b", 12, 4),
                                   SparseFeature("c", 40_000, 16),
                                   SparseFeature("m", 30, 8, bag=3)),
                  dense=2, top_mlp=(8, 1))
# One 2 MiB channel: the 1.25 MiB table "c" lies whole in it (the kernel cannot split tables),
# and merging saves a beat of the one channel.
MIXED_CONFIG = get_preset("tiny").replace(max_features=8, max_concat=64, onchip_units=0,
                                          mem_channels=1, channel_bytes=2 << 20)

CASES = [
    ("tiny", "tiny", "default"), ("tiny", "tiny", "none"), ("small", "small", "default"),
    ("small", "small", "microrec"), ("small", "u280", "default"), ("mixed", None, "microrec"),
    ("mixed", None, "default"), ("small", "u280-int8", "default"),
]


def _spec_config(model, config):
    if model == "mixed":
        return MIXED, MIXED_CONFIG
    return get_model(model), get_preset(config)


@pytest.mark.parametrize("model,config,planner", CASES)
def test_golden_from_images_equals_golden(tmp_path, model, config, planner):
    spec, cfg = _spec_config(model, config)
    result = compile_model(spec, random_weights(spec, 1), cfg, tmp_path, planner,
                           calib_batch=256)
    dense, sparse = synthetic_batch(spec, 300, seed=7)
    dq = result.qm.quantize_dense(dense)
    want = golden_forward(result.qm, dq, sparse)
    got = golden_from_images(tmp_path, dq, sparse)
    assert np.array_equal(got.scores, want.scores)
    assert np.array_equal(got.logits, want.logits)
    for a, b in zip(got.pooled, want.pooled):
        assert np.array_equal(a, b)


def test_mixed_plans_exercise_merges(tmp_path):
    spec, cfg = MIXED, MIXED_CONFIG
    r = compile_model(spec, random_weights(spec, 1), cfg, tmp_path, "microrec", calib_batch=64)
    assert any(len(g.features) > 1 for g in r.plan.groups)
    assert all(g.shards == 1 and g.replicas == 1 for g in r.plan.groups)


@pytest.mark.parametrize("model,config", [("mixed", None), ("small", "u280")])
def test_image_pooling_reads_shards_and_copies(tmp_path, model, config):
    """The image formats and ImagePooling hold and read row-range shards and table copies,
    which the kernel does not serve yet: planned for the study capabilities, written as images,
    read back through the descriptors, pooled == the golden model's table pooling."""
    spec, cfg = _spec_config(model, config)
    if model == "mixed":
        cfg = cfg.replace(mem_channels=2, channel_bytes=1 << 20)  # "c" needs two shards
    qm = quantize_model(random_weights(spec, 1), *synthetic_batch(spec, 64, seed=2),
                        bits=cfg.data_bits, acc_bits=cfg.acc_bits)
    p = plan(spec, study_capabilities(cfg), "microrec" if model == "mixed" else "default")
    assert any(g.shards > 1 for g in p.groups) if model == "mixed" else \
        any(g.replicas > 1 for g in p.groups)
    images = write_table_images(p, qm.tables, qm.bits, tmp_path)
    desc = unpack_descriptors(pack_descriptors(p, spec, cfg.config_hash, qm.bits))
    maps = {(i["memory"], i["location"]): np.memmap(tmp_path / i["file"], np.uint8, "r")
            for i in images}
    cm = CompiledModel(tmp_path, {}, spec, p, desc, {}, maps)
    dense, sparse = synthetic_batch(spec, 200, seed=5)
    got = ImagePooling(cm)(sparse, qm.emb_fmt)
    want = TablePooling(qm.tables)(sparse, qm.emb_fmt)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)


def test_same_input_same_bytes(tmp_path):
    spec, cfg = MIXED, MIXED_CONFIG
    outs = []
    for d in ("one", "two"):
        compile_model(spec, random_weights(spec, 2), cfg, tmp_path / d, calib_batch=128)
        # every file, step outputs included; steps.json alone records run times
        outs.append({str(p.relative_to(tmp_path / d)): p.read_bytes()
                     for p in sorted((tmp_path / d).rglob("*"))
                     if p.is_file() and p.name != "steps.json"})
    assert outs[0].keys() == outs[1].keys()
    assert {"manifest.json", "descriptors.bin", "kernel_program.bin",
            "steps/4_kernel_program/kernel_program.json"} <= set(outs[0])
    for name in outs[0]:
        assert outs[0][name] == outs[1][name], name


def test_manifest_contents(tmp_path):
    spec, cfg = get_model("small"), get_preset("small")
    r = compile_model(spec, random_weights(spec), cfg, tmp_path, calib_batch=64)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["config"]["hash"] == cfg.config_hash and m["config"]["params"] == cfg.to_json()
    assert m["formats"] == r.qm.formats_json()
    assert m["plan"]["figures"]["rounds"] == r.plan.rounds
    for b in m["buffers"]:
        assert (tmp_path / b["file"]).stat().st_size == b["size"]
        assert {"sha256", "offset", "format"} <= set(b)
    loaded = load_compiled(tmp_path)
    assert loaded.plan.cost() == r.plan.cost()


def test_tampered_image_is_refused(tmp_path):
    spec, cfg = get_model("tiny"), get_preset("tiny")
    compile_model(spec, random_weights(spec), cfg, tmp_path, calib_batch=64)
    f = next(tmp_path.glob("channel*.bin"))
    data = bytearray(f.read_bytes())
    data[0] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f.name):
        load_compiled(tmp_path)


def test_refuses_unsupported_and_oversized_models(tmp_path):
    kaggle = get_model("kaggle")
    with pytest.raises(CompileError, match="dot interaction .the kernel implements concat"):
        compile_model(kaggle, None, get_preset("tiny"), tmp_path)
    uneven = ModelSpec("uneven", sparse=(SparseFeature("a", 10, 4),), dense=2, top_mlp=(4,),
                       heads=((4, 1), (1,)))
    with pytest.raises(SpecError, match="heads of different depths"):
        compile_model(uneven, None, get_preset("small"), tmp_path)
    spec = get_model("small")
    with pytest.raises(CompileError, match=r"sparse features 8 exceeds max_features 4"):
        compile_model(spec, random_weights(spec), get_preset("tiny"), tmp_path)
    wide = ModelSpec("wide", sparse=(SparseFeature("w", 10, 64),), top_mlp=(1,))
    with pytest.raises(CompileError, match=r"'w': dim 64 exceeds max_dim 16"):
        compile_model(wide, random_weights(wide), get_preset("tiny"), tmp_path)


def test_cli_plan_and_compile(tmp_path, capsys):
    import argparse
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["plan", "microrec-small", "--planner", "microrec", "--json",
                              "--study"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["planner"] == "microrec" and out["figures"]["rounds"] >= 1
    # the real U280 kernel splits MicroRec's 10M-row table over 3 channels, and DIN's multi-hot
    # behaviour tables (its bag combiner); `small` has none: the planner says which
    args = parser.parse_args(["plan", "microrec-small", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    t29 = [g for g in out["groups"] if [m["name"] for m in g["members"]] == ["t29"]]
    assert len(t29) == 1 and t29[0]["shards"] == 3
    args = parser.parse_args(["plan", "din", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    behav = [g for g in out["groups"] if [m["name"] for m in g["members"]] == ["behav_item"]]
    assert len(behav) == 1 and behav[0]["shards"] == 3
    args = parser.parse_args(["plan", "din", "--config", "small", "--json"])
    with pytest.raises(ValueError, match="'behav_item'.*splits only one-hot tables"):
        args.func(args)
    args = parser.parse_args(["compile", "tiny", "--config", "tiny", "-o", str(tmp_path)])
    assert args.func(args) == 0
    assert (tmp_path / "manifest.json").exists()
    args = parser.parse_args(["compile", "tiny", "--config", "tiny", "--bits", "8", "-o",
                              str(tmp_path)])
    with pytest.raises(ValueError, match="--bits 8"):
        args.func(args)


def test_onchip_tables_are_exercised(tmp_path):
    spec = get_model("small")
    r = compile_model(spec, random_weights(spec), get_preset("small"), tmp_path, calib_batch=64)
    assert any(t.memory == "onchip" for t in r.plan.tables)


# ---- steps, calibration, resume -----------------------------------------------------------

def test_each_step_writes_its_output_and_steps_json(tmp_path):
    spec = get_model("tiny")
    r = compile_model(spec, random_weights(spec, 1), get_preset("tiny"), tmp_path,
                      calib_batch=64)
    assert [s["name"] for s in r.steps] == list(COMPILE_STEPS)
    assert all(s["status"] == "ran" and s["seconds"] >= 0 for s in r.steps)
    assert json.loads((tmp_path / "steps.json").read_text())["steps"] == r.steps
    want = {"1_quantize": {"quantized.json", "mlp.bin", "calibration.json"},
            "2_plan": {"plan.json"},
            "3_memory_images": {"images.json", "descriptors.bin", "mlp.bin"},
            "4_kernel_program": {"kernel_program.bin", "kernel_program.json"},
            "5_manifest": {"manifest.json"}}
    for d, files in want.items():
        assert files <= {p.name for p in (tmp_path / "steps" / d).iterdir()}, d
    # the compiled directory's files are the step outputs
    for name in ("descriptors.bin", "kernel_program.bin", "manifest.json"):
        src = next((tmp_path / "steps").rglob(name))
        assert (tmp_path / name).read_bytes() == src.read_bytes()


def test_resume_gives_the_same_bytes(tmp_path):
    spec, cfg = MIXED, MIXED_CONFIG
    w = random_weights(spec, 3)
    full = compile_model(spec, w, cfg, tmp_path / "full", calib_batch=128)
    # per-table formats (the default) differ between tables; resuming must restore each one
    assert len({t.fmt for t in full.qm.tables}) > 1
    part = tmp_path / "part"
    r = compile_model(spec, w, cfg, part, calib_batch=128, to_step="plan")
    assert [s["status"] for s in r.steps] == ["ran", "ran", "not run", "not run", "not run"]
    assert r.manifest is None and not (part / "manifest.json").exists()
    r = compile_model(spec, w, cfg, part, calib_batch=128, from_step="memory_images")
    assert [s["status"] for s in r.steps] == ["loaded", "loaded", "ran", "ran", "ran"]
    assert [t.fmt for t in r.qm.tables] == [t.fmt for t in full.qm.tables]
    assert r.qm.segment_fmts == full.qm.segment_fmts
    for name in ("manifest.json", "descriptors.bin", "mlp.bin", "kernel_program.bin",
                 "channel00.bin"):
        assert (part / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    r = compile_model(spec, w, cfg, part, from_step="manifest")
    assert r.steps[-1]["status"] == "ran" and r.steps[0]["status"] == "loaded"
    with pytest.raises(CompileError, match="cannot resume at step 'plan'"):
        compile_model(spec, w, cfg, tmp_path / "empty", from_step="plan")
    with pytest.raises(ValueError, match="comes after"):
        compile_model(spec, w, cfg, part, from_step="manifest", to_step="plan")
    with pytest.raises(ValueError, match="'bogus'"):
        compile_model(spec, w, cfg, part, to_step="bogus")


def test_calibration_data_is_an_input(tmp_path):
    spec = get_model("tiny")
    w = random_weights(spec, 1)
    dense, sparse = synthetic_batch(spec, 200, seed=21)
    dense = dense * 4  # wider dense range than the synthetic batch: the formats must follow
    path = tmp_path / "cal.npz"
    save_dataset(path, dense, sparse)
    given = compile_model(spec, w, get_preset("tiny"), tmp_path / "given", calibration=path)
    synth = compile_model(spec, w, get_preset("tiny"), tmp_path / "synth", calib_batch=200)
    cal = given.manifest["calibration"]
    assert cal["source"] == "file cal.npz" and cal["requests"] == 200
    assert synth.manifest["calibration"]["source"] == "synthetic"
    assert "no calibration data was given" in synth.manifest["calibration"]["note"]
    want = quantize_model(w, *load_calibration(path, spec), bits=16, acc_bits=48)
    assert given.qm.formats_json() == want.formats_json()
    # the dense part's range is 4x wider: its format (per-table: its own segment's) is coarser
    assert given.qm.dense_fmt.frac < synth.qm.dense_fmt.frac
    assert given.qm.segment_fmts[0].frac < synth.qm.segment_fmts[0].frac
    shared = compile_model(spec, w, get_preset("tiny"), tmp_path / "shared", calibration=path,
                           formats="shared")
    assert shared.qm.segment_fmts is None and shared.manifest["calibration"]["formats"] == "shared"
    assert shared.qm.formats_json() == quantize_model(w, *load_calibration(path, spec), bits=16,
                                                      acc_bits=48, formats="shared").formats_json()
    sat = cal["saturation"]
    assert set(sat["saturated"]) == set(sat["values"]) >= {"dense_input", "embedding_rows",
                                                           "top[0]", "top[1]", "pooled:a"}
    # a tuple works as well as a file
    same = compile_model(spec, w, get_preset("tiny"), tmp_path / "tuple",
                         calibration=(dense, sparse))
    assert same.qm.formats_json() == given.qm.formats_json()


def test_saturation_counts_are_real(tmp_path):
    """Logits far outside the sigmoid's Q3.7 input saturate; the count matches a recount."""
    spec = get_model("tiny")
    w = random_weights(spec, 1, logit_std=40.0)
    r = compile_model(spec, w, get_preset("tiny"), tmp_path, calib_batch=300)
    sat = r.manifest["calibration"]["saturation"]["saturated"]
    dense, sparse = synthetic_batch(spec, 300, seed=1)  # the synthetic calibration batch
    logits = golden_forward(r.qm, r.qm.quantize_dense(dense), sparse).logits
    at_rail = int(np.count_nonzero((logits == -1024) | (logits == 1023)))
    assert 0 < sat["top[1]"] <= at_rail
    assert sat["dense_input"] == 0  # formats are calibrated to cover this very batch


def test_calibration_file_errors_name_the_key(tmp_path):
    spec = get_model("tiny")
    dense, sparse = synthetic_batch(spec, 10, seed=2)
    np.savez(tmp_path / "bad.npz", dense=dense, ids_0=sparse[0].ids.ravel(),
             offsets_0=np.arange(10))
    with pytest.raises(DatasetError, match="missing ids_1, ids_2, offsets_1, offsets_2"):
        load_calibration(tmp_path / "bad.npz", spec)
    save_dataset(tmp_path / "bad2.npz", dense[:, :1], sparse)
    with pytest.raises(DatasetError, match=r"dense must be a numeric \(N, 2\)"):
        compile_model(spec, random_weights(spec, 1), get_preset("tiny"), tmp_path / "c2",
                      calibration=tmp_path / "bad2.npz")
    with pytest.raises(DatasetError, match="does not exist"):
        load_calibration(tmp_path / "missing.npz", spec)


def test_dense_only_model_compiles(tmp_path):
    """Issue 10.7: a model without sparse features crashed the planner (ZeroDivisionError)."""
    spec = ModelSpec("dense", dense=3, top_mlp=(4, 1))
    r = compile_model(spec, random_weights(spec, 0), get_preset("tiny"), tmp_path,
                      calib_batch=64)
    assert r.plan.groups == () and r.manifest["plan"]["figures"]["storage_overhead"] == 0.0
    dense = np.random.default_rng(0).random((7, 3)).astype(np.float32)
    dq = r.qm.quantize_dense(dense)
    assert np.array_equal(golden_from_images(tmp_path, dq, []).scores,
                          golden_forward(r.qm, dq, []).scores)


def test_compile_builds_the_program_without_amaranth_warnings(tmp_path):
    """The kernel-program step constructs, never elaborates, the kernel and leaves no
    UnusedElaboratable warning behind (checked in a fresh interpreter)."""
    code = ("import sys; from recfabric.host import compile_model, get_model, random_weights;"
            "from recfabric.hw.config import get_preset; s = get_model('tiny');"
            "compile_model(s, random_weights(s), get_preset('tiny'), sys.argv[1],"
            " calib_batch=32)")
    out = subprocess.run([sys.executable, "-W", "always", "-c", code, str(tmp_path)],
                         capture_output=True, text=True, check=True)
    assert "UnusedElaboratable" not in out.stderr and "never used" not in out.stderr
    assert (tmp_path / "kernel_program.bin").exists()
