"""Launching cocotb tests of generated Verilog from pytest, the same way for every test.

:func:`require_simulator` fails the test under CI (``CI=true``, where ``make install`` must have
set the simulators up) and skips it elsewhere; :func:`run_cocotb` builds and runs one cocotb
module with cocotb 2.x's runner and checks that every cocotb test case passed.

Verilator builds are cached by content (:func:`recfabric.sim.verilator_env.cached_build`: key =
sha256 of the sources, top level, build arguments, Verilator identity and cocotb version; folder
``build/verilator/<key16>/``): a warm run only runs the simulation. cocotb 2.1's Verilator runner
ignores ``always`` and rebuilds whenever the build folder is new, so the cache is the build
folder, and the test runs in the caller's ``build_dir`` with ``hdl_toplevel_lang="verilog"``
(needed when ``build()`` was skipped). Icarus builds in a fraction of a second and is not cached.
"""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .verilator_env import build_key, cached_build, verilator_identity

__all__ = ["IN_CI", "require_simulator", "run_cocotb"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_simulator(available: bool, what: str) -> None:
    """Fail (under CI) or skip (elsewhere) when ``what`` is not available."""
    if available:
        return
    msg = f"{what} is not set up: run `make install`"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def run_cocotb(simulator: str, *, sources, toplevel: str, test_module: str, build_dir: Path,
               expect: list[str]) -> dict:
    """Build ``sources`` for ``simulator`` and run cocotb module ``test_module`` on them.

    The cocotb module must be importable (the caller puts its folder on ``sys.path``, which the
    runner passes on). Asserts that the cases run are exactly ``expect`` and that none failed;
    returns the build and run times in seconds and whether a build ran (``built``; False when a
    cached Verilator build was used).
    """
    import cocotb
    from cocotb_tools.runner import get_runner

    runner = get_runner(simulator)
    # Amaranth's Verilog trips Verilator's width/unused lint warnings; they are not errors.
    build_args = ["-Wno-fatal", "-Wno-lint"] if simulator == "verilator" else []
    timescale = ("1ns", "1ps")
    t0 = time.perf_counter()
    if simulator == "verilator":
        key = build_key("cocotb", cocotb.__version__, verilator_identity(), toplevel,
                        " ".join(build_args), " ".join(timescale),
                        *(Path(s).read_bytes() for s in sources))

        def build(folder: Path) -> None:
            runner.build(sources=list(sources), hdl_toplevel=toplevel, build_dir=folder,
                         timescale=timescale, always=True, build_args=build_args)

        sim_dir, built = cached_build(key, build)
    else:
        sim_dir, built = build_dir, True
        runner.build(sources=list(sources), hdl_toplevel=toplevel, build_dir=build_dir,
                     timescale=timescale, always=True, build_args=build_args)
    t1 = time.perf_counter()
    results = runner.test(test_module=test_module, hdl_toplevel=toplevel, build_dir=sim_dir,
                          test_dir=build_dir, timescale=timescale, hdl_toplevel_lang="verilog")
    t2 = time.perf_counter()
    print(f"{simulator}: build {t1 - t0:.1f} s ({'built' if built else 'cached'}), "
          f"run {t2 - t1:.1f} s")
    cases = ET.parse(results).getroot().findall(".//testcase")
    assert [c.get("name") for c in cases] == expect
    assert all(c.find("failure") is None and c.find("error") is None for c in cases)
    return {"build_s": t1 - t0, "run_s": t2 - t1, "built": built}
