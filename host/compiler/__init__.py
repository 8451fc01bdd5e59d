"""The model compiler: spec + weights + configuration -> a compiled directory.

Steps (:mod:`.steps`): quantize -> plan (:mod:`.planner`) -> memory images (:mod:`.memory_image`,
rows laid out by :mod:`.table_layout`) -> kernel program (:mod:`.kernel_program`) -> manifest. A
compiled directory is read back by :mod:`.compiled` (numpy only; what the runtime uses).
:mod:`.cycle_model` is the MLP's analytical cycle model.

Names are resolved lazily, so that importing this package loads neither the planner nor Amaranth.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "compile_model": ".steps", "check_fits": ".steps", "model_runs": ".steps",
    "CompileResult": ".steps", "COMPILE_STEPS": ".steps",
    "CompileError": ".compiled", "CompiledModel": ".compiled", "load_compiled": ".compiled",
    "golden_from_images": ".compiled", "ImagePooling": ".compiled", "MANIFEST": ".compiled",
    "MANIFEST_FORMAT": ".compiled", "image_file": ".compiled",
    "plan": ".planner", "Plan": ".planner", "PlanError": ".planner", "PLANNERS": ".planner",
    "TableLayout": ".table_layout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
