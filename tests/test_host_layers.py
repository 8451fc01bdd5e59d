"""The host's layers: a numpy-only numerics leaf, a runtime without Amaranth, one-way
dependencies, lazy public names, deprecated aliases of the former flat modules, packaging."""

import ast
import json
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / "host"


def _imports(path: Path) -> list[str]:
    """Every module a file imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT).with_suffix("").parts
    top = {"host": "recfabric.host", "hw": "recfabric.hw", "sim": "recfabric.sim"}[rel[0]]
    package = [*top.split("."), *rel[1:-1]]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.append(mod)
            out.extend(f"{mod}.{a.name}" for a in node.names)
    return out


def test_numerics_is_a_numpy_only_leaf():
    mods = _imports(HOST / "numerics.py")
    bad = [m for m in mods if m.split(".")[0] in ("amaranth", "recfabric")
           or m.startswith(".")]
    assert not bad, f"host/numerics.py imports {bad}"
    assert "numpy" in mods


def test_runtime_imports_no_amaranth_nor_the_generator():
    for path in sorted((HOST / "runtime").glob("*.py")):
        for m in _imports(path):
            assert not m.startswith("amaranth"), f"{path.name} imports {m}"
            assert not m.startswith(("recfabric.hw.kernel", "recfabric.sim",
                                     "recfabric.host.compiler.kernel_program.build")), \
                f"{path.name} imports {m}"


@pytest.mark.parametrize("backend", ["sim_device.py", "verilator_device.py"])
def test_sim_device_plugs_into_the_device_seam_only(backend):
    host_mods = [m for m in _imports(ROOT / "sim" / backend)
                 if m.startswith("recfabric.host")]
    assert host_mods and all(m.startswith("recfabric.host.runtime.device") for m in host_mods), \
        host_mods


def test_lower_layers_never_import_higher_ones():
    order = ["numerics", "model", "reference", "compiler", "runtime", "bench", "cli"]
    # Sanctioned upward edges: the compiler's steps encode the wire layout (a format, numpy
    # only); random_weights scales its last layer with the float reference (inside the function).
    allowed = {("compiler", "recfabric.host.runtime.wire_format"),
               ("model", "recfabric.host.reference.golden")}
    bad = []
    for path in sorted(HOST.rglob("*.py")):
        rel = path.relative_to(HOST).parts
        layer = rel[0].removesuffix(".py")
        if layer not in order:
            continue
        for m in _imports(path):
            if not m.startswith("recfabric.host."):
                continue
            other = m.split(".")[2]
            if other in order and order.index(other) > order.index(layer):
                if not any(layer == a and m.startswith(b) for a, b in allowed):
                    bad.append(f"host/{'/'.join(rel)} ({layer}) imports {m}")
    assert not bad, bad


_NO_AMARANTH = r"""
import json, sys
from recfabric.host import Accelerator
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.zoo import get_model
loaded = {"import": sorted(m for m in sys.modules if m.split(".")[0] == "amaranth")}
spec = get_model("tiny")
dense, sparse = synthetic_batch(spec, 4, seed=3)
with Accelerator.open(backend="reference", config="tiny") as acc:
    acc.load(sys.argv[1])
    result = acc.infer(dense, sparse)
loaded["run"] = sorted(m for m in sys.modules if m.split(".")[0] == "amaranth")
loaded["scores"] = result.scores[:, 0].tolist()
print(json.dumps(loaded))
"""


def test_runtime_path_leaves_no_amaranth_module_loaded(tmp_path):
    """Import, open the reference backend, load a compiled model, infer: in a fresh interpreter
    (this one holds Amaranth already), no ``amaranth`` module may be loaded."""
    from recfabric.host.compiler.compiled import golden_from_images, load_compiled
    from recfabric.host.compiler.steps import compile_model
    from recfabric.host.model.synthetic import synthetic_batch
    from recfabric.host.model.weights import random_weights
    from recfabric.host.model.zoo import get_model
    from recfabric.hw.config import get_preset

    spec = get_model("tiny")
    compile_model(spec, random_weights(spec, 2), get_preset("tiny"), tmp_path, calib_batch=64)
    out = subprocess.run([sys.executable, "-c", _NO_AMARANTH, str(tmp_path)], check=True,
                         capture_output=True, text=True, cwd=tmp_path)
    got = json.loads(out.stdout)
    assert got["import"] == [] and got["run"] == []
    cm = load_compiled(tmp_path)
    dense, sparse = synthetic_batch(spec, 4, seed=3)
    want = golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse).scores
    assert got["scores"] == want[:, 0].tolist()


def test_public_names_are_lazy_and_resolve():
    import recfabric.host as host

    for name in host.__all__:
        assert getattr(host, name) is not None, name
    from recfabric.host.runtime.accelerator import Accelerator
    assert host.Accelerator is Accelerator
    with pytest.raises(AttributeError, match="no_such_name"):
        host.no_such_name  # noqa: B018


@pytest.mark.parametrize("old,name,new", [
    ("driver", "Accelerator", "recfabric.host.runtime.accelerator"),
    ("driver", "ReferenceDevice", "recfabric.host.runtime.reference"),
    ("driver", "_BumpMemory", "recfabric.host.runtime.device"),
    ("compiler_cli", "register", "recfabric.host.cli.compile"),
    ("golden", "golden_forward", "recfabric.host.reference.golden"),
    ("quantize", "quantize_model", "recfabric.host.reference.quantize"),
    ("model_spec", "ModelSpec", "recfabric.host.model.spec"),
    ("model_zoo", "get_model", "recfabric.host.model.zoo"),
    ("weights", "random_weights", "recfabric.host.model.weights"),
    ("torch_io", "to_torch", "recfabric.host.model.torch_io"),
    ("synthetic", "synthetic_batch", "recfabric.host.model.synthetic"),
    ("wire_format", "RequestLayout", "recfabric.host.runtime.wire_format"),
    ("planner", "plan", "recfabric.host.compiler.planner"),
    ("memory_image", "pack_mlp", "recfabric.host.compiler.memory_image"),
    ("kernel_program", "read_program", "recfabric.host.compiler.kernel_program"),
    ("mlp_cycle_model", "MLPCycleModel", "recfabric.host.compiler.cycle_model"),
    ("bench_mlp", "run_mlp_bench", "recfabric.host.bench.mlp"),
    ("bench_lookup", "expected_pooled", "recfabric.host.bench.lookup"),
])
def test_former_modules_import_with_a_deprecation_warning(old, name, new):
    import importlib

    sys.modules.pop(f"recfabric.host.{old}", None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        mod = importlib.import_module(f"recfabric.host.{old}")
    target = importlib.import_module(new)
    want = "BumpMemory" if name == "_BumpMemory" else name
    assert getattr(mod, name) is getattr(target, want)
    assert not (HOST / f"{old}.py").exists(), "no shim files in host/"


def test_moved_compiler_names_keep_their_old_path_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from recfabric.host.compiler import compile_model, golden_from_images, load_compiled
        from recfabric.host.compiler.steps import compile_model as steps_compile
    assert compile_model is steps_compile
    assert callable(golden_from_images) and callable(load_compiled)


def test_pyproject_lists_every_package():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = cfg["package-dir"]
    for top, folder in (("recfabric.host", "host"), ("recfabric.hw", "hw"),
                        ("recfabric.sim", "sim")):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            pkg = ".".join([top, *rel])
            assert pkg in listed, f"{pkg} is missing from pyproject's packages"
            assert (ROOT / dirs[pkg]).resolve() == init.parent.resolve(), pkg
