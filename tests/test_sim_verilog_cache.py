"""The Verilog memo's key (``sim.verilator_device._hw_sources_digest``) covers every hardware
source, nested packages included, so a change anywhere under hw/ regenerates the Verilog."""

from __future__ import annotations

import shutil
from pathlib import Path

from recfabric import hw
from recfabric.sim.verilator_device import _hw_source_files, _hw_sources_digest


def test_digest_covers_nested_hw_sources(tmp_path):
    real = Path(hw.__file__).resolve().parent
    names = {f.relative_to(real.parent).as_posix() for f in _hw_source_files(real)}
    assert {"hw/kernel.py", "hw/mlp/pipeline.py", "host/numerics.py"} <= names
    assert any(n.startswith("hw/boards/") for n in names), sorted(names)

    # A copy of the package's hw/ tree and numerics spec: editing any file changes the digest.
    root = tmp_path / "pkg"
    shutil.copytree(real, root / "hw", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "host").mkdir()
    shutil.copy(real.parent / "host" / "numerics.py", root / "host" / "numerics.py")
    base = _hw_sources_digest(root / "hw")
    assert base == _hw_sources_digest(real)  # same bytes under the same relative paths
    for rel in ("hw/kernel.py", "hw/mlp/pipeline.py", "host/numerics.py"):
        f = root / rel
        text = f.read_bytes()
        f.write_bytes(text + b"\n# changed\n")
        assert _hw_sources_digest(root / "hw") != base, rel
        f.write_bytes(text)
        assert _hw_sources_digest(root / "hw") == base, rel
    # A new file in a nested package is a new digest too.
    (root / "hw" / "mlp" / "extra.py").write_text("X = 1\n")
    assert _hw_sources_digest(root / "hw") != base
