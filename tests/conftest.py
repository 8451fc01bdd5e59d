"""Waveforms for failing hardware tests.

A test that builds an Amaranth :class:`~amaranth.sim.Simulator` and fails is run once more with
every simulator it creates writing a VCD file (all signals) to
``build/waves/<test name>/sim<N>.vcd``; the failure report lists the files and the session ends
with a summary of them. Passing tests pay nothing (no waveform is recorded the first time).
``RECFABRIC_NO_WAVES=1`` turns the re-run off. Simulations of the generated Verilog
(cocotb + Icarus/Verilator) are not Amaranth simulators and are not covered here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from amaranth.sim import Simulator

_state = {"created": 0, "dir": None, "writers": [], "files": []}
_written: list[tuple[str, list[Path]]] = []
_orig_init = Simulator.__init__


def _init(self, *args, **kwargs):
    _orig_init(self, *args, **kwargs)
    _state["created"] += 1
    if _state["dir"] is not None:  # the waveform re-run of a failed test
        path = _state["dir"] / f"sim{len(_state['files'])}.vcd"
        writer = self.write_vcd(str(path))
        writer.__enter__()
        _state["writers"].append(writer)
        _state["files"].append(path)


Simulator.__init__ = _init


def _close_writers():
    while _state["writers"]:
        try:
            _state["writers"].pop().__exit__(None, None, None)
        except Exception:  # noqa: BLE001 - a half-run simulation still leaves a usable file
            pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _state["created"] = 0
    yield
    item._recfabric_sims = _state["created"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if (rep.when != "call" or not rep.failed or not getattr(item, "_recfabric_sims", 0)
            or os.environ.get("RECFABRIC_NO_WAVES") or hasattr(rep, "wasxfail")):
        return
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)[-150:]
    wdir = Path(item.config.rootpath) / "build" / "waves" / name
    wdir.mkdir(parents=True, exist_ok=True)
    for old in wdir.glob("*.vcd"):
        old.unlink()
    _state.update(dir=wdir, files=[])
    try:
        item.runtest()  # the same test, its fixtures still set up, now recording waveforms
    except BaseException:  # noqa: BLE001 - it is expected to fail again
        pass
    finally:
        _close_writers()
        files = [f for f in _state["files"] if f.exists()]
        _state.update(dir=None, files=[])
    if files:
        _written.append((item.nodeid, files))
        rep.sections.append(("waveforms", "\n".join(f"waveform (VCD): {f}" for f in files)))


def pytest_terminal_summary(terminalreporter):
    if not _written:
        return
    terminalreporter.section("waveforms of failed simulations")
    for nodeid, files in _written:
        for f in files:
            terminalreporter.write_line(f"{nodeid}: {f}")


#: The long work a command may only start after its input checks: emitting or simulating the
#: kernel, compiling or benchmarking a model, building request batches, running a tool.
_WORK = [("recfabric.hw.kernel", "generate_verilog"),
         ("recfabric.hw.boards.ecp5_timing", "run_timing"),
         ("recfabric.host.compiler.steps", "compile_model"),
         ("recfabric.host.model.synthetic", "synthetic_batch"),
         ("recfabric.host.reference.quantize", "accuracy_report"),
         ("recfabric.host.bench.compare", "run_compare"),
         ("amaranth.back.verilog", "convert"),
         ("amaranth.back.rtlil", "convert"),
         ("amaranth.sim", "Simulator"),
         ("subprocess", "run"),
         ("subprocess", "Popen")]


@pytest.fixture
def no_work(monkeypatch):
    """Make every long-work entry point (:data:`_WORK`) fail the test if it is called: a
    user's mistake must be refused before any of it starts (what a wall-clock bound checked
    before, without its noise on a loaded machine). Yields the list of calls (empty if none)."""
    import importlib
    import sys

    from recfabric.host.cli.main import build_parser
    calls = []
    # Import every module before patching any (the CLI's verbs too: building the parser
    # imports them), and patch every loaded module that bound an entry point by name
    # (quantize.py and the soak bench import synthetic_batch so): a module first imported
    # while an entry point is patched would bind the refusing stand-in for good, and later
    # tests in the same process would call it.
    build_parser()
    mods = [importlib.import_module(module) for module, _ in _WORK]
    for mod, (module, name) in zip(mods, _WORK):
        original = getattr(mod, name)

        def refuse(*args, _what=f"{module}.{name}", **kwargs):
            calls.append(_what)
            raise AssertionError(f"{_what} was called before the input was refused")
        monkeypatch.setattr(mod, name, refuse)
        for other in list(sys.modules.values()):
            if (other is not mod and getattr(other, "__name__", "").startswith("recfabric.")
                    and getattr(other, name, None) is original):
                monkeypatch.setattr(other, name, refuse)
    yield calls
    assert calls == [], calls
