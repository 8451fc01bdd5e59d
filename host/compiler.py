"""Model compiler: spec + weights + configuration -> quantized, planned, laid-out images + manifest.

Steps of :func:`compile_model`:

1. check that the model can run on the configuration (:func:`check_fits`: hardware blockers,
   feature/bag/dim/dense/width/layer limits, element width), naming every violation;
2. quantize the float weights (calibrated on a synthetic batch) unless a
   :class:`~recfabric.host.golden.QuantizedModel` is given;
3. plan the tables (:mod:`recfabric.host.planner`);
4. write the channel and on-chip table images, the descriptor table and the MLP program
   (:mod:`recfabric.host.memory_image`), then ``manifest.json`` naming every buffer (file, size,
   sha256, offset, format), the plan and its figures, the numeric formats, the request wire
   layout and the configuration (name, hash, every parameter).

Same inputs give the same bytes (no timestamps, sorted JSON keys). :func:`load_compiled` reads a
compiled directory back (checking sizes and hashes) and :func:`golden_from_images` runs the
golden model from the *images*: rows are fetched through the descriptors, merged tables and
shards included, so an equal score proves the layout right.

Planning alone (``recfabric plan``) also works for models the hardware cannot run yet (DLRM's dot
interaction, multi-task heads): the tables, which are all the planner looks at, are the same.
Compiling refuses them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import numerics as nx
from .golden import GoldenResult, QuantizedModel, check_sparse, interaction, mlp_layer
from .memory_image import (
    element_dtype,
    image_name,
    pack_descriptors,
    pack_mlp,
    sha256_file,
    unpack_descriptors,
    unpack_mlp,
    write_table_images,
)
from .model_spec import ModelSpec, SpecError
from .numerics import FixedFormat
from .planner import PLANNERS, Plan, plan
from .quantize import quantize_model
from .synthetic import synthetic_batch

__all__ = ["CompileError", "CompileResult", "CompiledModel", "check_fits", "compile_model",
           "load_compiled", "golden_from_images", "MANIFEST", "MANIFEST_FORMAT"]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "recfabric-compiled-model"
MANIFEST_VERSION = 1
FORMATS = {"table-image": "recfabric-rows-v1", "descriptors": "recfabric-descriptors-v1",
           "mlp": "recfabric-mlp-v1"}


class CompileError(ValueError):
    """A model cannot be compiled for a configuration; the message names every violation."""


def check_fits(spec: ModelSpec, config) -> None:
    """Raise :class:`CompileError` naming every limit of ``config`` that ``spec`` exceeds.

    Also refuses specs with hardware blockers (:meth:`ModelSpec.require_hardware_support`).
    """
    spec.require_hardware_support()
    bad = []

    def limit(what, have, field):
        lim = getattr(config, field)
        if have > lim:
            bad.append(f"{what} {have} exceeds {field} {lim}")
    limit("sparse features", len(spec.sparse), "max_features")
    for f in spec.sparse:
        limit(f"feature {f.name!r}: bag", f.bag, "max_bag")
        limit(f"feature {f.name!r}: dim", f.dim, "max_dim")
    limit("dense features", spec.dense, "max_dense")
    limit("concatenated width", spec.interaction_width, "max_concat")
    shapes = spec.layer_shapes()
    for kind in ("bottom", "top"):
        for i, (_, out) in enumerate(shapes[kind]):
            limit(f"{kind} layer {i} output width", out, "max_width")
    limit("top MLP layers", len(shapes["top"]), "max_top_layers")
    limit("bottom MLP layers", len(shapes["bottom"]), "max_bottom_layers")
    if bad:
        raise CompileError(f"model {spec.name!r} does not fit configuration {config.name!r}: "
                           + "; ".join(bad))


@dataclass
class CompileResult:
    """What :func:`compile_model` wrote: the directory, its manifest, the plan and the model."""

    directory: Path
    manifest: dict
    plan: Plan
    qm: QuantizedModel


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def compile_model(spec: ModelSpec, weights, config, out_dir, planner: str = "default", *,
                  qm: QuantizedModel | None = None, calib_batch: int = 1024, seed: int = 0,
                  chunk_rows: int | None = None, progress=None) -> CompileResult:
    """Compile ``spec`` with ``weights`` for ``config`` into ``out_dir``.

    Parameters
    ----------
    spec : ModelSpec
    weights : ModelWeights or None
        Float weights; ignored (may be None) when ``qm`` is given.
    config : AcceleratorConfig
    out_dir : path
        Created if missing; existing files of the same names are overwritten.
    planner : str
        One of :data:`recfabric.host.planner.PLANNERS`.
    qm : QuantizedModel, optional
        An already quantized model (its ``bits`` must equal ``config.data_bits``).
    calib_batch, seed : int
        Calibration batch: ``synthetic_batch(spec, calib_batch, seed=seed + 1)``.
    chunk_rows : int, optional
        Rows written at once when generating table images.
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
    from .wire_format import RequestLayout

    say = progress or (lambda msg: None)
    if planner not in PLANNERS:
        raise ValueError(f"planner must be one of {', '.join(PLANNERS)}, not {planner!r}")
    check_fits(spec, config)
    if qm is None:
        if weights is None:
            raise ValueError("compile_model needs float weights or a quantized model")
        if weights.spec != spec:
            raise SpecError(f"weights are for model {weights.spec.name!r}, not {spec.name!r}")
        say(f"quantizing to int{config.data_bits} (calibration batch {calib_batch})")
        cd, cs = synthetic_batch(spec, calib_batch, seed=seed + 1)
        qm = quantize_model(weights, cd, cs, bits=config.data_bits, acc_bits=config.acc_bits)
    if qm.spec != spec:
        raise SpecError(f"quantized model is for {qm.spec.name!r}, not {spec.name!r}")
    if qm.bits != config.data_bits or qm.acc_bits != config.acc_bits:
        raise CompileError(f"quantized model is int{qm.bits} with a {qm.acc_bits}-bit "
                           f"accumulator; configuration {config.name!r} has data_bits "
                           f"{config.data_bits}, acc_bits {config.acc_bits}")
    say(f"planning with the {planner} planner")
    p = plan(spec, config, planner)
    per_port = {}
    for t in p.tables:
        per_port[t.memory, t.location] = per_port.get((t.memory, t.location), 0) + 1
    for (memory, loc), n in sorted(per_port.items()):
        if n > config.max_features:
            raise CompileError(f"{memory} {loc} holds {n} tables; a lookup unit holds at most "
                               f"max_features = {config.max_features} descriptors")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    say(f"writing table images ({p.stored_bytes:,} bytes)")
    kw = {} if chunk_rows is None else {"chunk_rows": chunk_rows}
    images = write_table_images(p, qm.tables, qm.bits, directory, **kw)
    buffers = [{**img, "kind": "table-image", "format": FORMATS["table-image"]}
               for img in images]
    _write(directory, "descriptors.bin", pack_descriptors(p, spec, config.config_hash, qm.bits))
    _write(directory, "mlp.bin", pack_mlp(qm))
    buffers.append({"name": "descriptors", "file": "descriptors.bin", "kind": "descriptors",
                    "format": FORMATS["descriptors"], "memory": None, "location": None})
    buffers.append({"name": "mlp", "file": "mlp.bin", "kind": "mlp", "format": FORMATS["mlp"],
                    "memory": None, "location": None})
    for b in buffers:
        path = directory / b["file"]
        b["size"] = path.stat().st_size
        b["sha256"] = sha256_file(path)
        b["offset"] = 0
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
        "model": spec.to_json(),
        "config": {"name": config.name, "hash": config.config_hash,
                   "hash_hex": f"0x{config.config_hash:08x}", "params": config.to_json()},
        "formats": qm.formats_json(),
        "request_layout": RequestLayout.for_config(qm, config).to_json(),
        "planner": planner,
        "plan": p.to_json(spec),
        "buffers": buffers,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    say(f"wrote {len(buffers)} buffers and {MANIFEST} to {directory}")
    return CompileResult(directory, manifest, p, qm)


# ---- loading back ------------------------------------------------------------------------

@dataclass
class CompiledModel:
    """A compiled directory read back: manifest, spec, plan, descriptors, MLP and images."""

    directory: Path
    manifest: dict
    spec: ModelSpec
    plan: Plan
    descriptors: dict
    mlp: dict
    images: dict  # (memory, location) -> numpy uint8 memmap

    @property
    def config_hash(self) -> int:
        return self.manifest["config"]["hash"]

    def quantized_model(self) -> QuantizedModel:
        """The MLP part as a QuantizedModel (``tables`` is None: rows live in the images)."""
        f = self.manifest["formats"]
        itf = f["interaction_fmt"]
        return QuantizedModel(
            self.spec, self.mlp["bits"], self.mlp["acc_bits"], FixedFormat.from_json(f["emb_fmt"]),
            FixedFormat.from_json(f["dense_fmt"]), None, self.mlp["bottom"], self.mlp["top"],
            self.mlp["heads"], FixedFormat.from_json(itf) if itf else None, self.mlp["rounding"],
            [FixedFormat.from_json(s) for s in f["segment_fmts"]]
            if f.get("segment_fmts") is not None else None)

    def read_rows(self, table: int, local_rows) -> np.ndarray:
        """Rows (indices within descriptor ``table``) as ``(n, dim)`` int64, via the descriptor."""
        d = self.descriptors["tables"][table]
        bits = self.descriptors["header"]["data_bits"]
        local_rows = np.asarray(local_rows, dtype=np.int64)
        if local_rows.size and (local_rows.min() < 0 or local_rows.max() >= d["rows"]):
            raise IndexError(f"row out of range 0..{d['rows'] - 1} of descriptor {table}")
        memory = "channel" if d["memory"] == 0 else "onchip"
        image = self.images[memory, d["location"]]
        nbytes = d["dim"] * bits // 8
        addr = d["base"] + local_rows * d["stride"]
        raw = image[addr[:, None] + np.arange(nbytes)]
        return raw.view(element_dtype(bits)).reshape(len(local_rows), d["dim"]).astype(np.int64)


def load_compiled(directory) -> CompiledModel:
    """Read a directory written by :func:`compile_model`, checking every buffer's size and hash."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no {MANIFEST}: not a compiled model")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: format {manifest.get('format')!r} version "
                         f"{manifest.get('version')!r}, expected {MANIFEST_FORMAT!r} "
                         f"{MANIFEST_VERSION}")
    for b in manifest["buffers"]:
        f = directory / b["file"]
        if not f.exists():
            raise FileNotFoundError(f"buffer {b['name']!r}: file {f} is missing")
        if f.stat().st_size != b["size"] or sha256_file(f) != b["sha256"]:
            raise ValueError(f"buffer {b['name']!r}: {f} does not match the manifest's size "
                             f"{b['size']} / sha256 {b['sha256'][:16]}...")
    spec = ModelSpec.from_json(manifest["model"])
    images = {}
    for b in manifest["buffers"]:
        if b["kind"] == "table-image":
            images[b["memory"], b["location"]] = np.memmap(directory / b["file"], np.uint8, "r")
    desc = unpack_descriptors((directory / "descriptors.bin").read_bytes())
    if desc["header"]["config_hash"] != manifest["config"]["hash"]:
        raise ValueError(f"descriptor table is for config hash "
                         f"0x{desc['header']['config_hash']:08x}, the manifest says "
                         f"{manifest['config']['hash_hex']}")
    mlp = unpack_mlp((directory / "mlp.bin").read_bytes())
    return CompiledModel(directory, manifest, spec, Plan.from_json(manifest["plan"]), desc, mlp,
                         images)


def _pool_from_images(cm: CompiledModel, sparse, emb_fmt: FixedFormat) -> list:
    """Pooled vectors per feature, fetching rows through the descriptor table only."""
    d = cm.descriptors
    batch = sparse[0].batch
    pooled = [None] * len(d["features"])
    for gi, g in enumerate(d["groups"]):
        members = [fi for fi, f in enumerate(d["features"]) if f["group"] == gi]
        if g["members"] > 1:
            # a Cartesian product: one lookup from every member's (single) ID
            rows = sum(np.asarray(sparse[fi].ids[:, 0], np.int64) * d["features"][fi]["radix"]
                       for fi in members)[:, None]
            mask = np.ones((batch, 1), dtype=bool)
        else:
            rows, mask = np.asarray(sparse[members[0]].ids, np.int64), sparse[members[0]].mask()
        shards = [d["tables"][g["first_table"] + s] for s in range(g["shards"])]
        bases = np.array([s["row_base"] for s in shards], dtype=np.int64)
        values = np.zeros((*rows.shape, g["dim"]), dtype=np.int64)
        for k in range(rows.shape[1]):
            live = mask[:, k]
            r = rows[live, k]
            shard = np.searchsorted(bases, r, side="right") - 1
            replica = k % g["replicas"]
            out = np.zeros((len(r), g["dim"]), dtype=np.int64)
            for s in np.unique(shard):
                t = g["first_table"] + replica * g["shards"] + int(s)
                sel = shard == s
                out[sel] = cm.read_rows(t, r[sel] - d["tables"][t]["row_base"])
            values[live, k] = out
        for fi in members:
            f = d["features"][fi]
            part = values[..., f["elem_offset"]:f["elem_offset"] + f["dim"]]
            pooled[fi] = nx.pool_sum(part, emb_fmt, axis=1)
    return pooled


def golden_from_images(compiled, dense_q, sparse) -> GoldenResult:
    """Run the golden model from a compiled directory's images.

    Parameters
    ----------
    compiled : path or CompiledModel
    dense_q : int array (batch, dense)
        Dense inputs in the model's ``dense_fmt``.
    sparse : list of Bags

    Returns
    -------
    GoldenResult
        Equal (``==``) to :func:`~recfabric.host.golden.golden_forward` on the model the images
        were compiled from.
    """
    cm = compiled if isinstance(compiled, CompiledModel) else load_compiled(compiled)
    qm = cm.quantized_model()
    spec = cm.spec
    batch = sparse[0].batch if sparse else np.asarray(dense_q).shape[0]
    check_sparse(spec, sparse, batch)
    x = np.asarray(dense_q)
    if x.shape != (batch, spec.dense) or (x.size and x.dtype.kind not in "iu"):
        raise ValueError(f"dense input must be an integer array of shape ({batch}, "
                         f"{spec.dense}), not {x.dtype} {x.shape}")
    x = x.astype(np.int64)
    for layer in qm.bottom:
        x = mlp_layer(layer, x, qm.acc_bits, qm.rounding)
    pooled = _pool_from_images(cm, sparse, qm.emb_fmt)
    z = interaction(qm, x, pooled)

    def run(v, layers):
        for layer in layers:
            v = mlp_layer(layer, v, qm.acc_bits, qm.rounding)
        return v
    if spec.heads:
        trunk = run(z, qm.top)
        logits = np.concatenate([run(trunk, h) for h in qm.heads], axis=1)
    else:
        logits = run(z, qm.top)
    return GoldenResult(nx.sigmoid_lookup(logits), logits, pooled, z)


def image_file(memory: str, location: int) -> str:
    """File name of a channel's or on-chip unit's image in a compiled directory."""
    return image_name(memory, location)
