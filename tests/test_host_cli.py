import json

import pytest

from recfabric.host.cli import main
from recfabric.host.cli.main import models_report
from recfabric.host.compiler.steps import compile_model
from recfabric.host.model.spec import SpecError
from recfabric.host.model.weights import random_weights
from recfabric.host.model.zoo import get_model
from recfabric.hw.config import get_preset


def test_models_lists_whole_zoo(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    for n in ("tiny", "small", "microrec-small", "microrec-large", "kaggle", "rmc1", "rmc2",
              "rmc3", "wnd", "ncf", "mt-wnd", "din", "dien"):
        assert n in names
    assert next(r for r in rows if r["name"] == "kaggle")["hardware"] == []


@pytest.mark.slow  # ~60 s; the default suite's dlrm-small run is tests/test_dlrm.py's
def test_demo_json_runs_dlrm_small_bit_exact(capsys):
    """DLRM in hardware (issue 14 item 7): bottom MLP, dot interaction and two task heads on
    the simulated `small` kernel through `recfabric demo`, both heads' scores `==` golden."""
    assert main(["demo", "--model", "dlrm-small", "--config", "small", "--batch", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["match"] is True and out["outputs"] == 2
    assert out["scores_raw_per_output"] == out["golden_raw_per_output"]
    assert len(out["scores_raw_per_output"]) == 2 and len(out["scores_raw_per_output"][0]) == 2


def test_accuracy_json(capsys):
    assert main(["accuracy", "tiny", "--bits", "8", "--requests", "512", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["bits"] == 8 and r["requests"] == 512 and r["max_abs_error"] > 0


def test_demo_json_runs_the_simulated_kernel(capsys):
    assert main(["demo", "--model", "tiny", "--config", "tiny", "--batch", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["backend"] == "sim" and r["inferences"] == 3 and r["match"] is True
    assert r["scores_raw"] == r["golden_raw"] and len(r["scores"]) == 3
    assert 0 < r["cycles"] < r["cycles_with_model_load"]
    assert all(0 <= s <= 1 for s in r["scores"])
    # simulated figures: batch-1 latency, steady state between batches 1 and 3, program load
    assert r["cycles_source"] == "simulated" and r["cycles_per_inference_batches"] == [1, 3]
    assert 0 < r["latency_cycles"] < r["cycles"]
    assert r["cycles_per_inference"] == (r["cycles"] - r["latency_cycles"]) / 2
    assert r["program_load_cycles"] == r["cycles_with_model_load"] - r["cycles"] > 0
    # the simulator's speed divides by the time inside the simulator, not the demo's wall time
    # (which also holds the kernel's elaboration and the host's work)
    assert r["simulated_cycles"] > r["cycles_with_model_load"] + r["cycles"]
    assert 0 < r["simulation_cpu_seconds"] and 0 < r["simulation_wall_seconds"] < r["wall_seconds"]
    assert r["simulated_cycles_per_simulation_wall_second"] == round(
        r["simulated_cycles"] / r["simulation_wall_seconds"], 1)
    assert "simulated_cycles_per_second" not in r  # the old, misnamed figure


def test_simulation_speed_divides_by_time_in_the_simulator():
    from recfabric.host.cli.main import simulation_speed

    class Simulating:  # as SimDevice / VerilatorDevice: cycles and (wall, CPU) in the simulator
        cycles, sim_seconds = 30_000, (2.0, 1.5)

    f = simulation_speed(Simulating())
    assert f == {"simulated_cycles": 30_000, "simulation_wall_seconds": 2.0,
                 "simulation_cpu_seconds": 1.5,
                 "simulated_cycles_per_simulation_wall_second": 15_000.0}

    class Card:  # xrt: the kernel's cycle counter is measured, nothing simulated
        pass

    assert simulation_speed(Card()) == {}


@pytest.mark.slow
@pytest.mark.parametrize("config", ["tiny", "small"])
def test_demo_json_verilator(capsys, config):
    """`demo --backend verilator --json` on the hierarchical Verilog: bit-exact, with the
    simulated latency, steady-state and program-load figures (a cold Verilator build of `small`
    takes minutes; cached afterwards)."""
    model = "tiny" if config == "tiny" else "small"
    assert main(["demo", "--model", model, "--config", config, "--backend", "verilator",
                 "--batch", "16", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["match"] is True and r["scores_raw"] == r["golden_raw"]
    assert r["cycles_per_inference_batches"] == [1, 16]
    assert 0 < r["latency_cycles"] < r["cycles"] < r["cycles_with_model_load"]
    assert r["cycles_per_inference"] == round((r["cycles"] - r["latency_cycles"]) / 15, 2)
    assert r["program_load_cycles"] == r["cycles_with_model_load"] - r["cycles"]
    # the speed divides by the time inside the Verilated model (VerilatorDevice.sim_seconds)
    assert r["simulated_cycles"] > r["cycles_with_model_load"] + r["cycles"]
    assert 0 < r["simulation_wall_seconds"] < r["wall_seconds"]
    assert r["simulated_cycles_per_simulation_wall_second"] == round(
        r["simulated_cycles"] / r["simulation_wall_seconds"], 1)


def test_demo_cycle_figures():
    from recfabric.host.cli.main import demo_cycle_figures
    f = demo_cycle_figures(64, 1000, 5000, {1: 370})
    assert f["latency_cycles"] == 370 and f["program_load_cycles"] == 4000
    assert f["cycles_per_inference"] == 10.0 and f["cycles_per_inference_batches"] == [1, 64]
    # a batch of 1: the slope comes from the extra batch of 2
    f = demo_cycle_figures(1, 370, 900, {1: 371, 2: 380})
    assert f["latency_cycles"] == 370 and f["cycles_per_inference"] == 10.0
    with pytest.raises(ValueError, match="two batch sizes"):
        demo_cycle_figures(1, 370, 900, {1: 371})


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["accuracy", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


# ---- `recfabric models` is decided by compile's own checks --------------------------------

_REPORT = {r["name"]: r for r in models_report()}
_BIG = 64 << 20  # compiling a model with more table bytes than this is left to `make test-slow`


def _pairs():
    for name, row in _REPORT.items():
        for cname, verdict in row["configs"].items():
            big = get_model(name).table_bytes(get_preset(cname).data_bits // 8) > _BIG
            marks = [pytest.mark.slow] if big and verdict["runs"] else []
            yield pytest.param(name, cname, marks=marks, id=f"{name}-{cname}")


@pytest.mark.parametrize("model,config", list(_pairs()))
def test_models_agrees_with_compile(tmp_path, model, config):
    """Every zoo model on every preset: `models` says it runs exactly when compile (kernel
    program included) succeeds, and names the same reason when it does not."""
    verdict = _REPORT[model]["configs"][config]
    spec = get_model(model)
    try:
        compile_model(spec, random_weights(spec, logit_std=None), get_preset(config), tmp_path,
                      calib_batch=64)
    except (SpecError, ValueError) as e:
        assert not verdict["runs"], f"models says {model} runs on {config}; compile: {e}"
        assert verdict["reasons"] == [str(e)]
    else:
        assert verdict["runs"], f"compile succeeded; models says {verdict['reasons']}"
        assert (tmp_path / "kernel_program.bin").exists()


def test_models_is_truthful_about_the_zoo(capsys):
    runs = {n for n, r in _REPORT.items() if any(v["runs"] for v in r["configs"].values())}
    assert runs == {"tiny", "small", "dlrm-small", "wnd", "kaggle", "microrec-small",
                    "microrec-large", "mt-wnd", "ncf", "dien", "din"}
    # kaggle (dot interaction, bottom MLP): its 10M-row tables are split by row range where
    # one channel is too small (u280's 256 MiB), so every U280-class preset with a bottom MLP
    # runs it (the u50's DSP48E2 budget leaves none)
    assert ([c for c, v in _REPORT["kaggle"]["configs"].items() if v["runs"]]
            == ["u280", "u280-int8", "u280-mt", "u55c"])
    assert "bottom MLP of 4 layers" in _REPORT["kaggle"]["configs"]["u50"]["reasons"][0]
    # mt-wnd's tables fit the same way; its 1,376-wide concatenation and five top layers only
    # on u280-mt (so do dien's 1,376-wide concatenation and ncf's five layers)
    assert "max_concat" in _REPORT["mt-wnd"]["configs"]["u280"]["reasons"][0]
    for name in ("mt-wnd", "ncf", "dien"):
        assert [c for c, v in _REPORT[name]["configs"].items() if v["runs"]] == ["u280-mt"]
    # MicroRec's 10M-row table is split by row range over channels (routed by row)
    assert _REPORT["microrec-small"]["configs"]["u280"]["runs"]
    # DIN's 10M-row behaviour tables are multi-hot: split by row range where the kernel has a
    # bag combiner (split_pools: the U280 class), refused where it has none
    assert ([c for c, v in _REPORT["din"]["configs"].items() if v["runs"]]
            == ["u280", "u280-int8", "u280-mt", "u50", "u55c"])
    assert "splits only one-hot tables" in _REPORT["din"]["configs"]["small"]["reasons"][0]
    assert main(["models", "--config", "small"]) == 0
    out = capsys.readouterr().out
    assert "runs on small" in out and "does not run on small: model 'kaggle'" in out
    assert main(["models", "--config", "u280", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(list(r["configs"]) == ["u280"] for r in rows)


def test_build_writes_the_capabilities(tmp_path, monkeypatch):
    """`recfabric build` writes capabilities.json beside the Verilog (generation stubbed here;
    tests/test_hw_kernel_build.py builds the real Verilog)."""
    import recfabric.hw.kernel as kernel

    monkeypatch.setattr(kernel, "generate_verilog",
                        lambda config, name: f"module {name}(ap_clk);\nendmodule\n")
    assert main(["build", "--config", "u280-int8", "-o", str(tmp_path)]) == 0
    caps = json.loads((tmp_path / "capabilities.json").read_text())
    assert caps == json.loads(json.dumps(get_preset("u280-int8").capabilities().to_json()))
    assert caps["onchip_words"] * caps["onchip_word_bits"] // 8 == caps["onchip_bytes"]
