import json

from recfabric.host.cli import main


def test_models_lists_whole_zoo(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    for n in ("tiny", "small", "microrec-small", "microrec-large", "kaggle", "rmc1", "rmc2",
              "rmc3", "wnd", "ncf", "mt-wnd", "din", "dien"):
        assert n in names
    assert next(r for r in rows if r["name"] == "kaggle")["hardware"]


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


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["accuracy", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
