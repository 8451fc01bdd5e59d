"""RecFabric's host side, in layers (each imports only the ones before it):

=====================  ====================================================================
``numerics``           the numerics spec (numpy only; ``hw`` implements it)
``model``              model spec, zoo, float weights, PyTorch import/export, synthetic batches
``reference``          float reference, the one integer golden model, quantizer
``compiler``           compile steps: quantize -> plan -> memory images -> kernel program ->
                       manifest; reading a compiled directory back
``runtime``            driver (:class:`Accelerator`), device seam, wire format, ``reference``
                       and ``xrt`` back-ends: no Amaranth
``bench``              cycle-accurate block benchmarks
``cli``                the ``recfabric`` command
=====================  ====================================================================

Public names are exported lazily (PEP 562): ``from recfabric.host import Accelerator`` loads the
runtime only, never Amaranth. Modules of the former flat layout (``recfabric.host.driver``,
``.compiler_cli``, ``.golden``, ...) still import, for one release, with a
``DeprecationWarning`` naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: Public name -> module (relative to this package) that defines it.
_EXPORTS = {
    "Accelerator": ".runtime.accelerator", "InferenceResult": ".runtime.accelerator",
    "open_device": ".runtime.accelerator", "BACKENDS": ".runtime.accelerator",
    "Device": ".runtime.device", "RegisterDevice": ".runtime.device", "Buffer": ".runtime.device",
    "BumpMemory": ".runtime.device", "DeviceError": ".runtime.device",
    "KernelError": ".runtime.device",
    "RequestLayout": ".runtime.wire_format",
    "compile_model": ".compiler.steps", "check_fits": ".compiler.steps",
    "model_runs": ".compiler.steps", "COMPILE_STEPS": ".compiler.steps",
    "load_compiled": ".compiler.compiled", "CompiledModel": ".compiler.compiled",
    "CompileError": ".compiler.compiled", "golden_from_images": ".compiler.compiled",
    "plan": ".compiler.planner", "PlanError": ".compiler.planner",
    "ModelSpec": ".model.spec", "SparseFeature": ".model.spec", "SpecError": ".model.spec",
    "Bags": ".model.spec",
    "get_model": ".model.zoo", "ZOO": ".model.zoo",
    "ModelWeights": ".model.weights", "random_weights": ".model.weights",
    "synthetic_batch": ".model.synthetic",
    "golden_forward": ".reference.golden", "float_forward": ".reference.golden",
    "QuantizedModel": ".reference.golden",
    "quantize_model": ".reference.quantize", "accuracy_report": ".reference.quantize",
}

#: Former flat module -> the module(s) its names moved to (searched in order).
_MOVED = {
    "driver": (".runtime.accelerator", ".runtime.device", ".runtime.reference",
               ".runtime.xrt"),
    "wire_format": (".runtime.wire_format",),
    "model_spec": (".model.spec",),
    "model_zoo": (".model.zoo",),
    "weights": (".model.weights",),
    "torch_io": (".model.torch_io",),
    "synthetic": (".model.synthetic",),
    "golden": (".reference.golden",),
    "quantize": (".reference.quantize",),
    "planner": (".compiler.planner",),
    "memory_image": (".compiler.memory_image",),
    "kernel_program": (".compiler.kernel_program",),
    "mlp_cycle_model": (".compiler.cycle_model",),
    "bench_mlp": (".bench.mlp",),
    "bench_lookup": (".bench.lookup", ".compiler.table_layout"),
    "compiler_cli": (".cli.compile",),
}

#: Names that were renamed, not only moved.
_RENAMED = {"_BumpMemory": "BumpMemory"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``recfabric.host.<old>`` as a proxy of its new module(s), with a warning.

    The proxy resolves attributes from the new modules on access (PEP 562), so no file of the
    old layout remains in ``host/``.
    """

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.rpartition(".")
        if prefix == __name__ and old in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a plain module object

    def exec_module(self, module):
        old = module.__name__.rpartition(".")[2]
        targets = [importlib.import_module(m, __name__) for m in _MOVED[old]]
        new = " / ".join(t.__name__ for t in targets)
        warnings.warn(f"{module.__name__} is deprecated and will be removed in the next "
                      f"release; import from {new} instead", DeprecationWarning, stacklevel=2)

        def __getattr__(name, _targets=targets):
            name = _RENAMED.get(name, name)
            for t in _targets:
                if hasattr(t, name):
                    return getattr(t, name)
            raise AttributeError(f"module {module.__name__!r} (moved to {new}) has no "
                                 f"attribute {name!r}")

        module.__getattr__ = __getattr__
        module.__doc__ = f"Deprecated alias of {new}."
        module.__all__ = sorted({n for t in targets for n in getattr(t, "__all__", ())})


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
