"""Memory images: embedding rows per channel and on-chip unit, descriptors, MLP program.

Every format here is documented byte for byte in ``docs/compiler.md``; the summary:

Table images (``channelNN.bin``, ``onchipNN.bin``)
    One file per used channel or unit, holding its tables at the plan's byte offsets (off-chip
    tables start on 4 KiB boundaries, on-chip tables on RAM words), zeros between. A row is the
    group's elements as little-endian two's complement integers of ``data_bits`` bits, followed by
    zero padding up to the row stride (off chip a power-of-two number of beats, on chip whole RAM
    words: :mod:`~recfabric.host.compiler.table_layout`, the one table layout). A merged (Cartesian)
    row ``r = sum(id_i * radix_i)`` holds its members' rows side by side (for a pair, ``r = id_a *
    rows_b + id_b`` holds ``[row_a | row_b]``). A shard holds group rows ``row_base .. row_base +
    rows - 1``.
Descriptor table (``descriptors.bin``)
    A 32-byte header, then one 32-byte *table record* per physical table (base address, row
    stride bytes, row count, dim, ...), one 16-byte *group record* per logical table, one
    16-byte *feature record* per sparse feature; all little-endian, packed.
MLP program (``mlp.bin``)
    A generic, self-describing layer program (header, 32-byte layer records, int8/int16
    weights row-major (out, in), int32 or int64 biases at accumulator width), kept separate
    so that it can be adapted to the MLP hardware's load format.

Images of large tables are written in chunks of rows (never a whole float copy of a table).
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np

from ..numerics import FixedFormat, Rounding
from ..reference.golden import QLayer
from .planner import Plan
from .table_layout import TableLayout
from .table_layout import element_dtype as _element_dtype

__all__ = [
    "DESC_MAGIC", "MLP_MAGIC", "HEADER", "TABLE_RECORD", "GROUP_RECORD", "FEATURE_RECORD",
    "LAYER_RECORD", "ImageError", "group_rows", "write_table_images", "pack_descriptors",
    "unpack_descriptors", "pack_mlp", "unpack_mlp", "element_dtype", "sha256_file",
]

DESC_MAGIC = b"RFDT"
MLP_MAGIC = b"RFML"
VERSION = 1
#: Descriptor header: magic, version, header/table/group/feature record sizes, counts,
#: config hash, data bits, beat bytes, reserved.
HEADER = struct.Struct("<4sHHHHHHHHIHHI")
#: Table record: base, row stride bytes, row count, dim, memory kind, location, row base, group,
#: replica, shard, index in its channel/unit, beats per lookup.
TABLE_RECORD = struct.Struct("<QIIHBBIHBBHH")
#: Group record: first table, replicas, shards, members, bag, dim, rows, first feature, reserved.
GROUP_RECORD = struct.Struct("<HBBBBHIHH")
#: Feature record: group, element offset, dim, member position, bag, rows, radix.
FEATURE_RECORD = struct.Struct("<HHHBBII")
#: MLP header: magic, version, header bytes, layer record bytes, layers, data bits, acc bits,
#: rounding, reserved, total bytes, reserved x3.
MLP_HEADER = struct.Struct("<4sHHHHBBBBIIII")
#: Layer record: path, head, index, relu, in, out, shift, in_frac, w_frac, out_frac, w_bits,
#: out_bits, bias_bits, in_bits, weight offset, weight bytes, bias offset, bias bytes.
LAYER_RECORD = struct.Struct("<BBBBHHbbbbBBBBIIII")
MEMORY_KINDS = {"channel": 0, "onchip": 1}
PATHS = {"bottom": 0, "top": 1, "head": 2}
ROUNDINGS = {Rounding.HALF_UP: 0, Rounding.FLOOR: 1}
_ARRAY_ALIGN = 64
DEFAULT_CHUNK_ROWS = 1 << 17


class ImageError(ValueError):
    """An image or descriptor buffer is malformed; the message names the field and value."""


def element_dtype(bits: int) -> np.dtype:
    """Little-endian numpy dtype of ``bits``-bit integers (8, 16, 32 or 64)."""
    try:
        return _element_dtype(bits)
    except ValueError as e:
        raise ImageError(str(e)) from None


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ---- table images ------------------------------------------------------------------------

def group_rows(tables, group, start: int, count: int) -> np.ndarray:
    """Integer rows ``start .. start + count - 1`` of ``group``'s (product) table.

    Parameters
    ----------
    tables : list
        Per-feature tables with ``gather(ids)`` returning integers (``QuantizedTable``).
    group : Group
    start, count : int

    Returns
    -------
    numpy.ndarray
        ``(count, group.dim)`` int64.
    """
    rows = np.arange(start, start + count, dtype=np.int64)
    ids = group.split_row(rows)
    parts = [np.asarray(tables[f].gather(i), dtype=np.int64) for f, i in zip(group.features, ids)]
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def image_name(memory: str, location: int) -> str:
    """File name of a channel's or unit's image."""
    return f"{'channel' if memory == 'channel' else 'onchip'}{location:02d}.bin"


def write_table_images(plan: Plan, tables, bits: int, directory,
                       chunk_rows: int = DEFAULT_CHUNK_ROWS) -> list:
    """Write every used channel's and unit's image into ``directory``.

    Parameters
    ----------
    plan : Plan
    tables : list
        Per-feature integer tables (``QuantizedTable``: ``gather(ids)`` -> int64 rows).
    bits : int
        Element width in bits.
    directory : path
    chunk_rows : int
        Rows generated and written at once (bounds memory use for huge tables).

    Returns
    -------
    list of dict
        One entry per image: ``name``, ``file``, ``memory``, ``location``, ``size``.
    """
    directory = Path(directory)
    geometry = TableLayout(bits, plan.layout.beat_bytes, plan.layout.onchip_word_bytes * 8)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    out = []
    for memory, used in (("channel", plan.channel_used), ("onchip", plan.onchip_used)):
        for loc, size in enumerate(used):
            if size == 0:
                continue
            name = image_name(memory, loc)
            path = directory / name
            with open(path, "wb") as f:
                f.truncate(size)
                for t in plan.tables:
                    if t.memory != memory or t.location != loc:
                        continue
                    g = plan.groups[t.group]
                    f.seek(t.offset)
                    for start in range(0, t.rows, chunk_rows):
                        n = min(chunk_rows, t.rows - start)
                        rows = group_rows(tables, g, t.row_base + start, n)
                        try:
                            f.write(geometry.encode_rows(rows, t.stride))
                        except ValueError as e:
                            raise ImageError(str(e)) from None
            out.append({"name": name[:-4], "file": name, "memory": memory, "location": loc,
                        "size": size})
    return out


# ---- descriptors -------------------------------------------------------------------------

def _u(value, bits, what):
    if not 0 <= value < (1 << bits):
        raise ImageError(f"{what} {value} does not fit its {bits}-bit descriptor field")
    return value


def pack_descriptors(plan: Plan, spec, config_hash: int, data_bits: int) -> bytes:
    """The runtime descriptor table of ``plan`` (format: module docstring, docs/compiler.md)."""
    order = sorted(plan.tables, key=lambda t: (t.group, t.replica, t.shard))
    first, local, records = {}, {}, []
    for i, t in enumerate(order):
        first.setdefault(t.group, i)
        g = plan.groups[t.group]
        index = local[t.memory, t.location] = local.get((t.memory, t.location), -1) + 1
        records.append(TABLE_RECORD.pack(
            _u(t.offset, 64, "table base"), _u(t.stride, 32, "row stride"),
            _u(t.rows, 32, "row count"), _u(g.dim, 16, "dim"), MEMORY_KINDS[t.memory],
            _u(t.location, 8, "location"), _u(t.row_base, 32, "row base"),
            _u(t.group, 16, "group"), _u(t.replica, 8, "replica"), _u(t.shard, 8, "shard"),
            _u(index, 16, "index in its channel or unit"),
            _u(plan.layout.row_beats(g.dim) if t.memory == "channel" else 1, 16, "beats")))
    for gi, g in enumerate(plan.groups):
        records.append(GROUP_RECORD.pack(
            _u(first[gi], 16, "first table"), _u(g.replicas, 8, "replicas"),
            _u(g.shards, 8, "shards"), _u(len(g.features), 8, "members"), _u(g.bag, 8, "bag"),
            _u(g.dim, 16, "group dim"), _u(g.rows, 32, "group rows"), g.features[0], 0))
    for fi, f in enumerate(spec.sparse):
        gi, pos = plan.feature_group(fi)
        g = plan.groups[gi]
        records.append(FEATURE_RECORD.pack(
            gi, g.elem_offsets[pos], f.dim, pos, _u(f.bag, 8, "bag"), f.rows, g.radices[pos]))
    header = HEADER.pack(DESC_MAGIC, VERSION, HEADER.size, TABLE_RECORD.size, GROUP_RECORD.size,
                         FEATURE_RECORD.size, _u(len(order), 16, "table count"),
                         _u(len(plan.groups), 16, "group count"),
                         _u(len(spec.sparse), 16, "feature count"), config_hash, data_bits,
                         plan.layout.beat_bytes, 0)
    return header + b"".join(records)


def unpack_descriptors(data: bytes) -> dict:
    """Parse :func:`pack_descriptors` output into ``{"header", "tables", "groups", "features"}``."""
    if len(data) < HEADER.size:
        raise ImageError(f"descriptor table of {len(data)} bytes is shorter than its header")
    (magic, version, hsize, tsize, gsize, fsize, nt, ng, nf, chash, bits, beat,
     _) = HEADER.unpack_from(data)
    if magic != DESC_MAGIC:
        raise ImageError(f"descriptor table magic must be {DESC_MAGIC!r}, not {magic!r}")
    if version != VERSION:
        raise ImageError(f"descriptor table version {version} is not supported ({VERSION})")
    want = hsize + nt * tsize + ng * gsize + nf * fsize
    if len(data) != want:
        raise ImageError(f"descriptor table is {len(data)} bytes, its header says {want}")
    pos = hsize
    tables, groups, features = [], [], []
    for _ in range(nt):
        v = TABLE_RECORD.unpack_from(data, pos)
        pos += tsize
        tables.append(dict(zip(("base", "stride", "rows", "dim", "memory", "location",
                                "row_base", "group", "replica", "shard", "local_index", "beats"),
                                v)))
    for _ in range(ng):
        v = GROUP_RECORD.unpack_from(data, pos)
        pos += gsize
        groups.append(dict(zip(("first_table", "replicas", "shards", "members", "bag", "dim",
                                "rows", "first_feature", "reserved"), v)))
    for _ in range(nf):
        v = FEATURE_RECORD.unpack_from(data, pos)
        pos += fsize
        features.append(dict(zip(("group", "elem_offset", "dim", "member", "bag", "rows",
                                  "radix"), v)))
    header = {"version": version, "config_hash": chash, "data_bits": bits, "beat_bytes": beat,
              "tables": nt, "groups": ng, "features": nf}
    return {"header": header, "tables": tables, "groups": groups, "features": features}


# ---- MLP program -------------------------------------------------------------------------

def _layers(qm):
    for i, layer in enumerate(qm.bottom):
        yield "bottom", 0, i, layer
    for i, layer in enumerate(qm.top):
        yield "top", 0, i, layer
    for h, head in enumerate(qm.heads):
        for i, layer in enumerate(head):
            yield "head", h, i, layer


def pack_mlp(qm) -> bytes:
    """The generic MLP layer program of quantized model ``qm`` (format: docs/compiler.md)."""
    layers = list(_layers(qm))
    # biases live at accumulator width (numerics spec): int32 when that fits, else int64
    bias_bits = 32 if qm.acc_bits <= 32 else 64
    pos = _align_up(MLP_HEADER.size + LAYER_RECORD.size * len(layers))
    records, blobs = [], []
    for path, head, idx, layer in layers:
        w = _int_bytes(layer.w, layer.w_fmt.bits, f"{path} layer {idx} weights")
        b = _int_bytes(layer.b, bias_bits, f"{path} layer {idx} biases")
        w_off = pos
        pos = _align_up(pos + len(w))
        b_off = pos
        pos = _align_up(pos + len(b))
        n_in, n_out = layer.shape
        records.append(LAYER_RECORD.pack(
            PATHS[path], head, idx, int(layer.relu), n_in, n_out, layer.shift,
            layer.in_fmt.frac, layer.w_fmt.frac, layer.out_fmt.frac, layer.w_fmt.bits,
            layer.out_fmt.bits, bias_bits, layer.in_fmt.bits, w_off, len(w), b_off, len(b)))
        blobs.append((w_off, w))
        blobs.append((b_off, b))
    out = bytearray(pos)
    out[:MLP_HEADER.size] = MLP_HEADER.pack(MLP_MAGIC, VERSION, MLP_HEADER.size, LAYER_RECORD.size,
                                            len(layers), qm.bits, qm.acc_bits,
                                            ROUNDINGS[qm.rounding], 0, pos, 0, 0, 0)
    out[MLP_HEADER.size:MLP_HEADER.size + LAYER_RECORD.size * len(layers)] = b"".join(records)
    for off, blob in blobs:
        out[off:off + len(blob)] = blob
    return bytes(out)


def unpack_mlp(data: bytes) -> dict:
    """Parse :func:`pack_mlp` output: ``{"bits", "acc_bits", "rounding", "bottom", "top",
    "heads"}`` with :class:`~recfabric.host.reference.golden.QLayer` lists."""
    (magic, version, hsize, lsize, n, bits, acc_bits, rnd, _, total, *_r) = \
        MLP_HEADER.unpack_from(data)
    if magic != MLP_MAGIC:
        raise ImageError(f"MLP program magic must be {MLP_MAGIC!r}, not {magic!r}")
    if version != VERSION or total != len(data):
        raise ImageError(f"MLP program version {version} / size {total} does not match "
                         f"version {VERSION} / {len(data)} bytes")
    out = {"bits": bits, "acc_bits": acc_bits,
           "rounding": {v: k for k, v in ROUNDINGS.items()}[rnd], "bottom": [], "top": [],
           "heads": []}
    for k in range(n):
        (path, head, idx, relu, n_in, n_out, shift, in_frac, w_frac, out_frac, w_bits, out_bits,
         bias_bits, in_bits, w_off, w_len, b_off, b_len) = LAYER_RECORD.unpack_from(
            data, hsize + k * lsize)
        w = np.frombuffer(data, element_dtype(w_bits), w_len * 8 // w_bits, w_off)
        b = np.frombuffer(data, element_dtype(bias_bits), b_len * 8 // bias_bits, b_off)
        layer = QLayer(w.astype(np.int64).reshape(n_out, n_in), b.astype(np.int64),
                       FixedFormat(in_bits, in_frac), FixedFormat(w_bits, w_frac),
                       FixedFormat(out_bits, out_frac), bool(relu))
        if layer.shift != shift:
            raise ImageError(f"layer {k}: stored shift {shift} disagrees with its formats "
                             f"({layer.shift})")
        if path == PATHS["head"]:
            while len(out["heads"]) <= head:
                out["heads"].append([])
            out["heads"][head].append(layer)
        else:
            out["bottom" if path == PATHS["bottom"] else "top"].append(layer)
    return out


def _align_up(n: int) -> int:
    return -(-n // _ARRAY_ALIGN) * _ARRAY_ALIGN


def _int_bytes(values, bits, what) -> bytes:
    dt = element_dtype(bits)
    info = np.iinfo(dt)
    values = np.asarray(values, dtype=np.int64)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise ImageError(f"{what} do not fit {bits} bits: {int(values.min())}.."
                         f"{int(values.max())}")
    return np.ascontiguousarray(values.astype(dt)).tobytes()
