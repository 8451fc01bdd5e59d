"""A compiled model directory, read back: manifest, images, descriptors, MLP, kernel program.

``recfabric compile`` (:func:`~recfabric.host.compiler.steps.compile_model`) writes the
directory; :func:`load_compiled` reads it back, checking every buffer's size and sha256 against
``manifest.json``. This module is what the runtime needs of the compiler: numpy only, no
Amaranth.

:class:`ImagePooling` is the golden model's pooling source that fetches rows from the *images*
through the descriptor table (merged tables and shards included), so that
:func:`golden_from_images` equal to the golden model on the quantized tables proves the layout
right. The ``reference`` backend computes with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import numerics as nx
from ..model.spec import ModelSpec
from ..numerics import FixedFormat
from ..reference.golden import GoldenResult, QuantizedModel, golden_forward, segment_formats
from .memory_image import image_name, sha256_file, unpack_descriptors, unpack_mlp
from .planner import Plan
from .table_layout import TableLayout

__all__ = ["CompileError", "CompiledModel", "ImagePooling", "MANIFEST", "MANIFEST_FORMAT",
           "MANIFEST_VERSION", "FORMATS", "golden_from_images", "image_file", "load_compiled"]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "recfabric-compiled-model"
MANIFEST_VERSION = 2
FORMATS = {"table-image": "recfabric-rows-v1", "descriptors": "recfabric-descriptors-v1",
           "mlp": "recfabric-mlp-v1", "kernel-program": "recfabric-kernel-program-v1"}


class CompileError(ValueError):
    """A model cannot be compiled for a configuration; the message names every violation."""


@dataclass
class CompiledModel:
    """A compiled directory read back: manifest, spec, plan, descriptors, MLP and images.

    Attributes
    ----------
    directory : Path
    manifest : dict
    spec : ModelSpec
    plan : Plan
    descriptors : dict
        :func:`~recfabric.host.compiler.memory_image.unpack_descriptors` output.
    mlp : dict
        :func:`~recfabric.host.compiler.memory_image.unpack_mlp` output.
    images : dict
        ``(memory, location) -> numpy uint8 memmap``.
    program : KernelProgramImage or None
        ``kernel_program.bin`` / ``.json`` (None for a directory compiled ``--to-step`` before
        the kernel program).
    """

    directory: Path
    manifest: dict
    spec: ModelSpec
    plan: Plan
    descriptors: dict
    mlp: dict
    images: dict
    program: object = None

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
            segment_formats(f))

    def read_rows(self, table: int, local_rows) -> np.ndarray:
        """Rows (indices within descriptor ``table``) as ``(n, dim)`` int64, via the descriptor."""
        d = self.descriptors["tables"][table]
        h = self.descriptors["header"]
        local_rows = np.asarray(local_rows, dtype=np.int64)
        if local_rows.size and (local_rows.min() < 0 or local_rows.max() >= d["rows"]):
            raise IndexError(f"row out of range 0..{d['rows'] - 1} of descriptor {table}")
        memory = "channel" if d["memory"] == 0 else "onchip"
        geometry = TableLayout(h["data_bits"], h["beat_bytes"])
        return geometry.decode_rows(self.images[memory, d["location"]], d["base"], d["stride"],
                                    local_rows, d["dim"])

    def lookups_per_request(self, sparse) -> np.ndarray:
        """Lookups the kernel issues per request, as its ``lookups_issued`` counter counts them.

        One lookup per ID of a bag (one ``EMPTY`` lookup for an empty bag) per table group, and
        one per request for a Cartesian-merged group (its members' IDs make one product row).
        """
        d = self.descriptors
        batch = sparse[0].batch if sparse else 0
        total = np.zeros(batch, dtype=np.int64)
        for gi, g in enumerate(d["groups"]):
            if g["members"] > 1:
                total += 1
                continue
            f = next(fi for fi, f in enumerate(d["features"]) if f["group"] == gi)
            total += np.maximum(np.asarray(sparse[f].lengths, np.int64), 1)
        return total


def load_compiled(directory) -> CompiledModel:
    """Read a directory written by ``compile``, checking every buffer's size and hash."""
    from .kernel_program import PROGRAM_JSON, read_program  # noqa: PLC0415 - pure Python

    directory = Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no {MANIFEST}: not a compiled model")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: format {manifest.get('format')!r} version "
                         f"{manifest.get('version')!r}, expected {MANIFEST_FORMAT!r} "
                         f"{MANIFEST_VERSION}: recompile the model")
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
    program = read_program(directory) if (directory / PROGRAM_JSON).exists() else None
    if program is not None and program.meta["config_hash"] != manifest["config"]["hash"]:
        raise ValueError(f"kernel program is for config hash "
                         f"{program.meta['config_hash']:#010x}, the manifest says "
                         f"{manifest['config']['hash_hex']}")
    return CompiledModel(directory, manifest, spec, Plan.from_json(manifest["plan"]), desc, mlp,
                         images, program)


class ImagePooling:
    """Pooling source of :func:`~recfabric.host.reference.golden.golden_forward` that fetches
    every row from a compiled model's images, through its descriptor table only."""

    def __init__(self, compiled: CompiledModel):
        self.cm = compiled

    def __call__(self, sparse, emb_fmt: FixedFormat) -> list:
        cm = self.cm
        d = cm.descriptors
        batch = sparse[0].batch if sparse else 0
        pooled = [None] * len(d["features"])
        for gi, g in enumerate(d["groups"]):
            members = [fi for fi, f in enumerate(d["features"]) if f["group"] == gi]
            if g["members"] > 1:
                # a Cartesian product: one lookup from every member's (single) ID
                rows = sum(np.asarray(sparse[fi].ids[:, 0], np.int64) * d["features"][fi]["radix"]
                           for fi in members)[:, None]
                mask = np.ones((batch, 1), dtype=bool)
            else:
                rows, mask = np.asarray(sparse[members[0]].ids, np.int64), \
                    sparse[members[0]].mask()
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
    """The golden model of a compiled directory, pooling from its images.

    Parameters
    ----------
    compiled : path or CompiledModel
    dense_q : int array (batch, dense)
        Dense inputs in the model's ``dense_fmt``.
    sparse : list of Bags

    Returns
    -------
    GoldenResult
        ``golden_forward(qm, dense_q, sparse, pool=ImagePooling(cm))``: equal (``==``) to the
        golden model on the quantized tables the images were compiled from.
    """
    cm = compiled if isinstance(compiled, CompiledModel) else load_compiled(compiled)
    return golden_forward(cm.quantized_model(), dense_q, sparse, pool=ImagePooling(cm))


def image_file(memory: str, location: int) -> str:
    """File name of a channel's or on-chip unit's image in a compiled directory."""
    return image_name(memory, location)
