"""The model compiler as named, resumable steps (as FINN's build steps are).

:func:`compile_model` checks that the model can run on the kernel (:func:`check_fits`, against
the configuration's :class:`~recfabric.hw.config.KernelCapabilities`), then runs
:data:`COMPILE_STEPS` in order. Each step is a function ``step_<name>(state)`` that reads what
earlier steps left in the :class:`CompileState`, writes its output to
``<out>/steps/<n>_<name>/`` and can be reloaded from there (``--from-step`` resumes, ``--to-step``
stops early). ``<out>/steps.json`` records which steps ran and how long each took.

1. ``quantize``: float weights -> fixed point, calibrated on the calibration batch given
   (``calibration=`` / ``--calibration D.npz``) or, only when none is given, on a synthetic one;
   ``calibration.json`` says which and counts saturated values per tensor. Output:
   ``quantized.json``, ``mlp.bin``, ``calibration.json``.
2. ``plan``: table merging and placement within the capabilities
   (:mod:`~recfabric.host.compiler.planner`); :func:`check_program` refuses a plan the kernel
   cannot be programmed with before any image is written. Output: ``plan.json``.
3. ``memory_images``: channel and on-chip table images, descriptor table, MLP program
   (:mod:`~recfabric.host.compiler.memory_image`). Output: the files and ``images.json``.
4. ``kernel_program``: the kernel's program words
   (:mod:`~recfabric.host.compiler.kernel_program`). Output: ``kernel_program.bin`` / ``.json``.
5. ``manifest``: ``manifest.json`` naming every buffer (file, size, sha256, offset, format), the
   plan and its figures, the formats, the calibration, the wire layout, the configuration and
   its capabilities. The compiled directory's files are hard links to the step outputs
   (copies where the file system has no links).

Same inputs give the same bytes in every file but ``steps.json`` (no timestamps, sorted keys).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..model.spec import ModelSpec, SpecError
from ..numerics import FixedFormat, Rounding
from ..reference.golden import (
    QuantizedModel,
    QuantizedTable,
    segment_formats,
    table_formats,
)
from .compiled import FORMATS, MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, CompileError
from .kernel_program import PROGRAM_BIN, PROGRAM_JSON, check_program, read_program
from .memory_image import (
    pack_descriptors,
    pack_mlp,
    sha256_file,
    unpack_descriptors,
    unpack_mlp,
    write_table_images,
)
from .planner import PLANNERS, Plan, oversized_tables, plan

__all__ = ["COMPILE_STEPS", "CompileResult", "CompileState", "check_fits", "compile_model",
           "model_runs", "step_quantize", "step_plan", "step_memory_images",
           "step_kernel_program", "step_manifest"]

#: Step names, in order.
COMPILE_STEPS = ("quantize", "plan", "memory_images", "kernel_program", "manifest")
STEPS_JSON = "steps.json"


def _capabilities(config):
    return config.capabilities() if hasattr(config, "capabilities") else config


def check_fits(spec: ModelSpec, config) -> None:
    """Raise naming every limit of the kernel that ``spec`` exceeds (before anything runs):
    request and MLP limits, and tables no channel can hold whole.

    ``config`` is an ``AcceleratorConfig`` or its ``KernelCapabilities``. Raises ``SpecError``
    for what no kernel implements (dot interaction, heads) and :class:`CompileError` for limits.
    """
    caps = _capabilities(config)
    spec.require_hardware_support()
    bad = []

    def limit(what, have, field_, lim):
        if have > lim:
            bad.append(f"{what} {have} exceeds {field_} {lim}")
    if spec.interaction not in caps.interactions:
        bad.append(f"{spec.interaction} interaction (the kernel implements "
                   f"{', '.join(caps.interactions)})")
    limit("outputs", spec.num_outputs, "max_outputs", caps.max_outputs)
    if spec.bottom_mlp and not caps.bottom_mlp:
        bad.append(f"bottom MLP of {len(spec.bottom_mlp)} layers (this kernel has none)")
    limit("sparse features", len(spec.sparse), "max_features", caps.max_features)
    for f in spec.sparse:
        limit(f"feature {f.name!r}: bag", f.bag, "max_bag", caps.max_bag)
        limit(f"feature {f.name!r}: dim", f.dim, "max_dim", caps.max_dim)
    limit("dense features", spec.dense, "max_dense", caps.max_dense)
    limit("concatenated width", spec.interaction_width, "max_concat", caps.max_concat)
    for i, (_, out) in enumerate(spec.layer_shapes()["top"]):
        limit(f"top layer {i} output width", out, "max_width", caps.max_width)
    limit("top MLP layers", len(spec.top_mlp), "max_top_layers", caps.max_top_layers)
    bad.extend(oversized_tables(spec, caps))
    if bad:
        raise CompileError(f"model {spec.name!r} does not fit configuration {caps.config!r}: "
                           + "; ".join(bad))


def model_runs(spec: ModelSpec, config, planner: str = "default") -> list[str]:
    """Why ``spec`` cannot run on ``config``'s kernel (empty: it runs).

    The same checks ``compile`` makes before writing anything: :func:`check_fits`, the planner
    within the capabilities, and :func:`check_program` on the plan.
    """
    try:
        check_fits(spec, config)
        p = plan(spec, config, planner)
        check_program(spec, p, _capabilities(config))
    except (SpecError, ValueError) as e:
        return [str(e)]
    return []


@dataclass
class CompileResult:
    """What :func:`compile_model` wrote: the directory, its manifest, the plan and the model."""

    directory: Path
    manifest: dict | None
    plan: Plan | None
    qm: QuantizedModel | None
    steps: list = field(default_factory=list)


@dataclass
class CompileState:
    """Inputs of a compilation and what the steps have produced so far.

    Each ``step_<name>`` fills its field(s) and writes them under :meth:`step_dir`; ``load_<name>``
    reads them back from there (``--from-step``).
    """

    spec: ModelSpec
    config: object
    out: Path
    weights: object = None
    planner: str = "default"
    calibration: tuple | None = None
    calibration_source: str | None = None
    calib_batch: int = 1024
    seed: int = 0
    formats: str = "per-table"
    chunk_rows: int | None = None
    say: object = None
    qm: QuantizedModel | None = None
    calibration_info: dict | None = None
    plan: Plan | None = None
    buffers: list | None = None
    program: object = None
    manifest: dict | None = None

    def step_dir(self, name: str) -> Path:
        return self.out / "steps" / f"{COMPILE_STEPS.index(name) + 1}_{name}"

    def tables(self, fmts: list) -> list:
        """The float tables quantized in ``fmts`` (one format per table)."""
        if self.weights is None:
            raise CompileError("resuming after the quantize step needs the float weights again "
                               "(the table images are generated from them)")
        return [QuantizedTable(t, f) for t, f in zip(self.weights.tables, fmts, strict=True)]


# ---- step 1: quantize ----------------------------------------------------------------------

def step_quantize(state: CompileState) -> None:
    """Quantize the float weights, calibrating on the given batch (synthetic only if none)."""
    from ..model.synthetic import synthetic_batch  # noqa: PLC0415
    from ..reference.quantize import quantize_model, saturation_counts  # noqa: PLC0415

    spec, config = state.spec, state.config
    if state.qm is not None:  # an already quantized model was given
        info = {"source": "given quantized model", "requests": None, "saturation": None}
    else:
        if state.weights is None:
            raise ValueError("compile_model needs float weights or a quantized model")
        if state.weights.spec != spec:
            raise SpecError(f"weights are for model {state.weights.spec.name!r}, not "
                            f"{spec.name!r}")
        if state.calibration is None:
            cd, cs = synthetic_batch(spec, state.calib_batch, seed=state.seed + 1)
            info = {"source": "synthetic", "requests": state.calib_batch,
                    "seed": state.seed + 1,
                    "note": "no calibration data was given: formats were calibrated on a "
                            "synthetic Zipf batch (recfabric.host.model.synthetic)"}
        else:
            cd, cs = state.calibration
            info = {"source": state.calibration_source or "given", "requests": len(cd)}
        state.say(f"quantizing to int{config.data_bits}, calibrating on {info['requests']} "
                  f"{'synthetic' if info['source'] == 'synthetic' else 'given'} requests")
        state.qm = quantize_model(state.weights, cd, cs, bits=config.data_bits,
                                  acc_bits=config.acc_bits, formats=state.formats)
        info["formats"] = state.formats
        info["saturation"] = saturation_counts(state.qm, state.weights, cd, cs)
    qm = state.qm
    if qm.spec != spec:
        raise SpecError(f"quantized model is for {qm.spec.name!r}, not {spec.name!r}")
    if qm.bits != config.data_bits or qm.acc_bits != config.acc_bits:
        raise CompileError(f"quantized model is int{qm.bits} with a {qm.acc_bits}-bit "
                           f"accumulator; configuration {config.name!r} has data_bits "
                           f"{config.data_bits}, acc_bits {config.acc_bits}")
    state.calibration_info = info
    d = state.step_dir("quantize")
    _write_json(d / "quantized.json", qm.formats_json())
    (d / "mlp.bin").write_bytes(pack_mlp(qm))
    _write_json(d / "calibration.json", info)


def load_quantize(state: CompileState) -> None:
    d = state.step_dir("quantize")
    f = json.loads((d / "quantized.json").read_text())
    mlp = unpack_mlp((d / "mlp.bin").read_bytes())
    emb = FixedFormat.from_json(f["emb_fmt"])
    itf = f["interaction_fmt"]
    seg = segment_formats(f)
    state.qm = QuantizedModel(state.spec, mlp["bits"], mlp["acc_bits"], emb,
                              FixedFormat.from_json(f["dense_fmt"]),
                              state.tables(table_formats(state.spec, emb, seg)),
                              mlp["bottom"], mlp["top"], mlp["heads"],
                              FixedFormat.from_json(itf) if itf else None, Rounding(f["rounding"]),
                              seg)
    state.calibration_info = json.loads((d / "calibration.json").read_text())


# ---- step 2: plan --------------------------------------------------------------------------

def step_plan(state: CompileState) -> None:
    """Plan the tables within the kernel's capabilities; refuse what cannot be programmed."""
    state.say(f"planning with the {state.planner} planner")
    p = plan(state.spec, state.config, state.planner)
    check_program(state.spec, p, _capabilities(state.config))
    state.plan = p
    _write_json(state.step_dir("plan") / "plan.json", p.to_json(state.spec))


def load_plan(state: CompileState) -> None:
    state.plan = Plan.from_json(json.loads((state.step_dir("plan") / "plan.json").read_text()))


# ---- step 3: memory images -----------------------------------------------------------------

def step_memory_images(state: CompileState) -> None:
    """Table images, descriptor table and MLP program (formats: docs/compiler.md)."""
    p, qm, spec, config = state.plan, state.qm, state.spec, state.config
    d = state.step_dir("memory_images")
    for old in d.glob("*.bin"):
        old.unlink()  # a rerun must not leave images of another plan behind
    state.say(f"writing table images ({p.stored_bytes:,} bytes)")
    kw = {} if state.chunk_rows is None else {"chunk_rows": state.chunk_rows}
    images = write_table_images(p, qm.tables, qm.bits, d, **kw)
    buffers = [{**img, "kind": "table-image", "format": FORMATS["table-image"]}
               for img in images]
    (d / "descriptors.bin").write_bytes(pack_descriptors(p, spec, config.config_hash, qm.bits))
    (d / "mlp.bin").write_bytes(pack_mlp(qm))
    buffers.append({"name": "descriptors", "file": "descriptors.bin", "kind": "descriptors",
                    "format": FORMATS["descriptors"], "memory": None, "location": None})
    buffers.append({"name": "mlp", "file": "mlp.bin", "kind": "mlp", "format": FORMATS["mlp"],
                    "memory": None, "location": None})
    for b in buffers:
        path = d / b["file"]
        b["size"] = path.stat().st_size
        b["sha256"] = sha256_file(path)
        b["offset"] = 0
    state.buffers = buffers
    _write_json(d / "images.json", buffers)


def load_memory_images(state: CompileState) -> None:
    state.buffers = json.loads((state.step_dir("memory_images") / "images.json").read_text())


# ---- step 4: kernel program ----------------------------------------------------------------

def step_kernel_program(state: CompileState) -> None:
    """The kernel program (table base fields hold offsets; the runtime adds buffer addresses)."""
    from .kernel_program import build_program, write_program  # noqa: PLC0415 - Amaranth here

    d_img = state.step_dir("memory_images")
    images = {(b["memory"], b["location"]): np.memmap(d_img / b["file"], np.uint8, "r")
              for b in state.buffers if b["kind"] == "table-image"}
    desc = unpack_descriptors((d_img / "descriptors.bin").read_bytes())
    state.say("building the kernel program")
    state.program = build_program(state.spec, state.qm, state.plan, desc, images, state.config)
    write_program(state.step_dir("kernel_program"), state.program)
    counts = ", ".join(f"{n} {k}" for k, n in state.program.meta["counts"].items())
    meta = state.program.meta
    state.say(f"kernel program: {meta['words']:,} words: {meta['commands']:,} commands, "
              f"{meta.get('beats', 0):,} data beats ({counts})")


def load_kernel_program(state: CompileState) -> None:
    state.program = read_program(state.step_dir("kernel_program"))


# ---- step 5: manifest ----------------------------------------------------------------------

def _publish(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def step_manifest(state: CompileState) -> None:
    """Write ``manifest.json`` and make the compiled directory (links to the step outputs)."""
    from ..runtime.wire_format import RequestLayout  # noqa: PLC0415 - a format, numpy only

    spec, config, qm, p = state.spec, state.config, state.qm, state.plan
    d_img, d_prog = state.step_dir("memory_images"), state.step_dir("kernel_program")
    buffers = [dict(b) for b in state.buffers]
    pbin = d_prog / PROGRAM_BIN
    buffers.append({"name": "kernel_program", "file": PROGRAM_BIN, "kind": "kernel-program",
                    "format": FORMATS["kernel-program"], "memory": None, "location": None,
                    "size": pbin.stat().st_size, "sha256": sha256_file(pbin), "offset": 0})
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
        "model": spec.to_json(),
        "config": {"name": config.name, "hash": config.config_hash,
                   "hash_hex": f"0x{config.config_hash:08x}", "params": config.to_json()},
        "capabilities": config.capabilities().to_json(),
        "formats": qm.formats_json(),
        "calibration": state.calibration_info,
        "request_layout": RequestLayout.for_config(qm, config).to_json(),
        "planner": state.planner,
        "plan": p.to_json(spec),
        "kernel_program": {"file": PROGRAM_BIN, "description": PROGRAM_JSON,
                           "commands": state.program.meta["commands"],
                           "counts": state.program.meta["counts"]},
        "steps": list(COMPILE_STEPS),
        "buffers": buffers,
    }
    state.manifest = manifest
    d = state.step_dir("manifest")
    _write_json(d / MANIFEST, manifest)
    for b in state.buffers:
        _publish(d_img / b["file"], state.out / b["file"])
    for name in (PROGRAM_BIN, PROGRAM_JSON):
        _publish(d_prog / name, state.out / name)
    _publish(d / MANIFEST, state.out / MANIFEST)
    state.say(f"wrote {len(buffers)} buffers and {MANIFEST} to {state.out}")


def load_manifest(state: CompileState) -> None:
    state.manifest = json.loads((state.step_dir("manifest") / MANIFEST).read_text())


_STEP_FUNCS = {"quantize": (step_quantize, load_quantize), "plan": (step_plan, load_plan),
               "memory_images": (step_memory_images, load_memory_images),
               "kernel_program": (step_kernel_program, load_kernel_program),
               "manifest": (step_manifest, load_manifest)}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _step_index(name, what) -> int:
    if name not in COMPILE_STEPS:
        raise ValueError(f"{what} must be one of {', '.join(COMPILE_STEPS)}, not {name!r}")
    return COMPILE_STEPS.index(name)


def compile_model(spec: ModelSpec, weights, config, out_dir, planner: str = "default", *,
                  qm: QuantizedModel | None = None, calibration=None, calib_batch: int = 1024,
                  seed: int = 0, formats: str = "per-table", chunk_rows: int | None = None,
                  from_step: str | None = None,
                  to_step: str | None = None, progress=None) -> CompileResult:
    """Compile ``spec`` with ``weights`` for ``config`` into ``out_dir``, step by step.

    Parameters
    ----------
    spec : ModelSpec
    weights : ModelWeights or None
        Float weights; may be None when ``qm`` is given and the tables are not needed.
    config : AcceleratorConfig
    out_dir : path
        Created if missing; existing files of the same names are overwritten.
    planner : str
        One of :data:`recfabric.host.compiler.planner.PLANNERS`.
    qm : QuantizedModel, optional
        An already quantized model (its ``bits`` must equal ``config.data_bits``).
    calibration : (dense, sparse) or path, optional
        The calibration batch (float dense ``(n, dense)`` and one Bags per feature), or a
        ``D.npz`` file of it (:func:`~recfabric.host.model.dataset.load_calibration`; labels,
        if present, are ignored). When not given, ``synthetic_batch(spec, calib_batch,
        seed=seed + 1)`` is used and the manifest says so.
    calib_batch, seed : int
        Size and seed of the synthetic calibration batch.
    formats : str
        Activation formats of the quantizer (:data:`~recfabric.host.reference.quantize.FORMATS`):
        ``"per-table"`` (default; one format per concat segment, folded into the first layer's
        weight columns, exact on the unchanged kernel) or ``"shared"`` (one for all).
    chunk_rows : int, optional
        Rows written at once when generating table images.
    from_step, to_step : str, optional
        First and last step to run (:data:`COMPILE_STEPS`); earlier steps are reloaded from
        ``out_dir/steps``.
    progress : callable, optional
        Called with progress messages.

    Returns
    -------
    CompileResult

    Raises
    ------
    CompileError, PlanError, SpecError
        The model does not fit (the message names the table or limit), or inputs disagree.
    """
    from ..model.dataset import load_calibration  # noqa: PLC0415
    from ..reference.quantize import FORMATS  # noqa: PLC0415

    say = progress or (lambda msg: None)
    if planner not in PLANNERS:
        raise ValueError(f"planner must be one of {', '.join(PLANNERS)}, not {planner!r}")
    if formats not in FORMATS:
        raise ValueError(f"formats must be one of {', '.join(FORMATS)}, not {formats!r}")
    first = _step_index(from_step or COMPILE_STEPS[0], "from_step")
    last = _step_index(to_step or COMPILE_STEPS[-1], "to_step")
    if first > last:
        raise ValueError(f"from_step {from_step!r} comes after to_step {to_step!r}")
    check_fits(spec, config)
    source = None
    if isinstance(calibration, (str, os.PathLike)):
        source = f"file {Path(calibration).name}"
        calibration = load_calibration(calibration, spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = CompileState(spec, config, out, weights, planner, calibration, source, calib_batch,
                         seed, formats, chunk_rows, say, qm)
    record = []
    t_all = time.perf_counter()
    for i, name in enumerate(COMPILE_STEPS[:last + 1]):
        run, load = _STEP_FUNCS[name]
        entry = {"index": i + 1, "name": name,
                 "directory": str(state.step_dir(name).relative_to(out))}
        t0 = time.perf_counter()
        if i < first:
            if not state.step_dir(name).exists():
                raise CompileError(f"cannot resume at step {from_step!r}: step {name!r} has no "
                                   f"output in {state.step_dir(name)}")
            load(state)
            entry["status"] = "loaded"
        else:
            say(f"step {i + 1}/{len(COMPILE_STEPS)}: {name}")
            state.step_dir(name).mkdir(parents=True, exist_ok=True)
            run(state)
            entry["status"] = "ran"
        entry["seconds"] = round(time.perf_counter() - t0, 4)
        record.append(entry)
    for name in COMPILE_STEPS[last + 1:]:
        record.append({"index": COMPILE_STEPS.index(name) + 1, "name": name,
                       "status": "not run"})
    _write_json(out / STEPS_JSON, {"steps": record,
                                   "seconds": round(time.perf_counter() - t_all, 4)})
    return CompileResult(out, state.manifest, state.plan, state.qm, record)
