"""``hw`` is a leaf layer: it imports Amaranth, numpy, the standard library and the numerics
spec, nothing else of the project's (issue 11: layers without circles)."""

import ast
import sys
from pathlib import Path

HW = Path(__file__).parents[1] / "hw"
ALLOWED_PROJECT = ("recfabric.hw", "recfabric.host.numerics")


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    pkg = "recfabric." + ".".join(path.relative_to(HW.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            yield from (f"{module}.{a.name}" for a in node.names)


def test_hw_imports_only_amaranth_numpy_stdlib_and_the_numerics_spec():
    files = sorted(HW.rglob("*.py"))
    assert len(files) > 20
    bad = []
    for f in files:
        for name in _imports(f):
            top = name.split(".")[0]
            if top in ("amaranth", "numpy") or top in sys.stdlib_module_names \
                    or top == "__future__":
                continue
            if not any(name == a or name.startswith(a + ".") for a in ALLOWED_PROJECT):
                bad.append(f"{f.relative_to(HW.parent)}: {name}")
    assert bad == []
