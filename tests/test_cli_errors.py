"""User mistakes give one line on stderr and exit code 2, before any long work; no tracebacks."""

import os
import subprocess
import sys

import pytest

from recfabric.host.cli import main
from recfabric.host.cli.support import check_batch
from recfabric.host.model.zoo import get_model
from recfabric.hw.config import get_preset


@pytest.mark.parametrize("argv,msg", [
    (["demo", "--model", "nope"], "unknown model 'nope'"),
    (["demo", "--config", "nope"], "unknown accelerator config 'nope'"),
    (["demo", "--batch", "0"], "--batch must be at least 1, not 0"),
    (["demo", "--batch", "10000000"], "of sim device memory"),
    (["demo", "--backend", "reference", "--batch", "10000000"], "at most 8,388,608 per batch"),
    (["demo", "--backend", "xrt"], "demo --backend xrt needs --xclbin FILE"),
    (["demo", "--backend", "xrt", "--xclbin", "no/such.xclbin"],
     "--xclbin file 'no/such.xclbin' does not exist"),
    (["demo", "--model", "microrec-small"], "does not fit configuration 'small'"),
    (["compile", "small", "--weights", "no/such.npz", "-o", "unused"],
     "--weights file 'no/such.npz' does not exist"),
    (["accuracy", "nope"], "unknown model 'nope'"),
    (["accuracy", "small", "--requests", "0"], "--requests must be at least 1"),
    (["plan", "small", "--config", "nope"], "unknown accelerator config 'nope'"),
    (["build", "--board", "vu9p", "-o", "unused"], "unknown board 'vu9p'"),
    (["bench", "compare", "small", "--batches", "1,0"], "at least 1, not 0"),
    (["bench", "compare", "small", "--batches", "1,1000000000"], "GiB of host memory"),
])
def test_one_line_error_before_any_work(argv, msg, capsys, tmp_path, monkeypatch, no_work):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert no_work == []  # no long work started (conftest.no_work)
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], out.err
    assert lines[0].startswith(f"recfabric {argv[0]}: error: ")
    assert not os.listdir(tmp_path)  # nothing written


def test_batch_limits_follow_the_backend_memory():
    spec, cfg = get_model("small"), get_preset("small")
    check_batch(spec, cfg, 524_288, "sim")
    with pytest.raises(ValueError, match="at most 524,288 per batch"):
        check_batch(spec, cfg, 524_289, "sim")


def test_closed_output_pipe_is_quiet():
    r, w = os.pipe()
    p = subprocess.Popen([sys.executable, "-m", "recfabric.host.cli", "models", "--json"],
                         stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    os.close(r)  # the reader is gone before anything is written, as with `| head -0`
    _, err = p.communicate(timeout=60)
    assert err == b"" and p.returncode == 141
