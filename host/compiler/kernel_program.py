"""Kernel program: the runtime data of a compiled model, as the kernel's program loader reads it.

The compile step :func:`build_program` turns a planned, quantized model and its memory images into
the command words that program one :class:`~recfabric.hw.kernel.RecFabricKernel` (its blocks'
configuration streams), and :func:`write_program` stores them in the compiled directory as
``kernel_program.bin`` (the bytes the kernel fetches) and ``kernel_program.json`` (what they
are). The runtime reads both with :func:`read_program` and patches in the device addresses of the
table buffers (:meth:`KernelProgramImage.patched`): integer arithmetic only, no Amaranth, no
kernel elaboration.

Program layout (little-endian, :data:`~recfabric.hw.kernel.MODEL_DATA_WIDTH`-bit words)::

    word 0       magic "RFpg" (u32) | words after the header (u32) | format 5 (u32) | zero
    then         command words and blocks, in any order:
      command    target (u8, :class:`~recfabric.hw.kernel.Target`) | payload (the target
                 stream's payload bits, LSB first) | zero
      block      target BLOCK | :class:`~recfabric.hw.kernel.BlockCommandLayout` (sink, sel,
                 addr, beats), then ``beats`` data words, each written whole to the sink
                 (``sel`` and address ``addr + k``), one per cycle

Data beats are dense: an MLP weight beat (top MLP, sink ``MLP``, or bottom MLP, sink
``BOTTOM_MLP``) holds ``512 // data_bits`` weights (32 int16, 64 int8) of one group of PEs at one
weight address, a bias beat ``512 // acc_bits`` biases (:class:`~recfabric.hw.mlp.BeatPacking`),
an on-chip beat two 256-bit RAM words. Descriptors, parser parameters, placements, concat and
interaction descriptors and the ``DATAPATH`` word stay one per command word (they are few).

``kernel_program.json`` (format ``recfabric-kernel-program`` version 5): ``word_bits``,
``words`` (header included), ``commands`` (command words, block commands included), ``beats``
(data words), ``config`` / ``config_hash``, ``sha256`` of the ``.bin``, ``counts`` (words per
kind, a block's command word and its beats counted under its kind) and ``table_addresses``: one
entry per lookup-unit descriptor, ``{"word", "lsb", "width", "channel"}``. The field of
``width`` bits starting at bit ``lsb`` of word ``word`` holds the table's byte offset within
channel ``channel``'s buffer; at load, the buffer's device address is added to it.

Mapping decisions, and why:

* Slot ``g`` of every request is the plan's table group ``g`` (a Cartesian-merged pair is one
  group, one lookup, one pooled vector ``[row_a | row_b]``).
* The concatenated vector is laid out in *hardware order*: the dense part, then the groups in
  slot order, each group's features in their row order. The first top-MLP layer's weight columns
  are permuted to match, so the MLP computes exactly the same integer sums as the golden model
  (a permutation of the terms of an exact integer sum).
* A group's table may be held in several parts (copies x row-range shards, at most
  ``table_parts``; multi-hot tables only on kernels with ``split_pools``, at most that many,
  each given a combiner pool), each a descriptor in its channel or unit;
  its placement lists them (unit, descriptor, first row), copy-major, and the dispatcher routes
  each bag to one of them (:mod:`~recfabric.hw.lookup_dispatcher`). Merged groups of any size
  up to ``max_merge`` become ``HOLD``/``MID``/``LAST`` placements.
  :func:`check_program` asserts what the kernel's capabilities allow.
* On-chip tables are loaded as one block per unit covering the unit's tables, beat by beat from
  the on-chip image, which the one table layout
  (:mod:`~recfabric.host.compiler.table_layout`) already lays out in RAM words.
* A top MLP with fewer layers than engines is padded with identity layers
  (:func:`engine_assignment`): after the last layer when the hidden elements can hold logits
  (int16), else in the middle, after the last hidden layer, or (one-layer models) before it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..numerics import FixedFormat
from ..reference.golden import QLayer
from .compiled import CompileError
from .planner import split_pools_error
from .table_layout import TableLayout

__all__ = ["KernelProgram", "KernelProgramImage", "build_program", "check_program",
           "engine_assignment", "engine_width_errors", "hardware_column_order",
           "top_chain_shapes", "fused_head_layers",
           "dot_hardware_order", "read_program", "write_program",
           "program_word_counts", "onchip_beats",
           "PROGRAM_BIN", "PROGRAM_JSON", "PROGRAM_FORMAT", "PROGRAM_VERSION"]

PROGRAM_BIN = "kernel_program.bin"
PROGRAM_JSON = "kernel_program.json"
PROGRAM_FORMAT = "recfabric-kernel-program"
# 2: one dispatcher placement per feature (streaming request path); 3: packed blocks (dense
# weights, biases and on-chip rows; the header carries the format, the kernel checks it);
# 4: placements list table parts (row splits, copies) and n-way merges; 5: bottom MLP (its
# descriptors and packed blocks), interaction and datapath words (DLRM, multi-task heads)
PROGRAM_VERSION = 5


# ---- checks against the kernel's capabilities (pure Python) -----------------------------------

def engine_assignment(layer_shapes, caps) -> list:
    """Which model layer each top-MLP engine runs: a layer index, or None for an identity layer.

    Parameters
    ----------
    layer_shapes : list of (in, out)
        The top MLP's layers.
    caps : KernelCapabilities

    Raises
    ------
    CompileError
        The layers cannot be spread over the engines (too many, or padding impossible); the
        message says why.
    """
    n, engines = len(layer_shapes), len(caps.top_engines)
    if n > engines:
        raise CompileError(f"top MLP has {n} layers; the kernel has {engines} layer engines")
    pad = engines - n
    if pad == 0:
        return list(range(n))
    if set(range(n - 1, engines)) <= set(caps.logit_engines):
        # the logits fit the hidden elements: identities after the last layer pass them on
        return list(range(n)) + [None] * pad
    if n >= 2:
        return list(range(n - 1)) + [None] * pad + [n - 1]
    width = layer_shapes[0][0]
    if width > caps.max_width:
        raise CompileError(
            f"a one-layer top MLP on {engines} engines needs {pad} identity layer(s) of its "
            f"{width}-wide input before it (int{caps.data_bits} hidden elements cannot hold the "
            f"{caps.logit_bits}-bit logits), but engine outputs are at most max_width "
            f"{caps.max_width} wide")
    return [None] * pad + [0]


def check_program(spec, plan, caps) -> None:
    """Raise :class:`CompileError` naming what of ``plan`` the kernel cannot be programmed with.

    The same check runs in ``compile`` (before any image is written), in the kernel-program step
    and in ``recfabric models``.
    """
    bad = []
    tables = {}
    for t in plan.tables:
        tables.setdefault(t.group, []).append(t)
    for gi, g in enumerate(plan.groups):
        names = " x ".join(spec.sparse[f].name for f in g.features)
        if len(g.features) > caps.max_merge:
            bad.append(f"table group {gi} ({names}) merges {len(g.features)} features, the "
                       f"kernel at most {caps.max_merge}")
        if g.replicas > caps.table_copies:
            bad.append(f"table group {gi} ({names}) has {g.replicas} copies, the kernel serves "
                       f"{caps.table_copies}")
        if g.shards > 1 and not caps.row_split:
            bad.append(f"table group {gi} ({names}) is split over {g.shards} row ranges; the "
                       "kernel cannot route lookups by row range")
        if g.shards > 1 and g.bag > 1 and not caps.split_multi_hot:
            bad.append(f"table group {gi} ({names}) is multi-hot (bag {g.bag}) and split over "
                       f"{g.shards} row ranges; the kernel splits one-hot tables only (it has "
                       "no bag combiner: split_pools is 0)")
        if g.replicas * g.shards > caps.table_parts:
            bad.append(f"table group {gi} ({names}) is held in {g.replicas} copies x "
                       f"{g.shards} row ranges = {g.replicas * g.shards} parts, the kernel "
                       f"lists at most {caps.table_parts} per table")
        if g.dim > caps.max_dim:
            bad.append(f"table group {gi} ({names}) has {g.dim}-element rows, max_dim "
                       f"{caps.max_dim}")
    split_bags = [spec.sparse[g.features[0]].name for g in plan.groups
                  if g.shards > 1 and g.bag > 1]
    if caps.split_multi_hot and len(split_bags) > caps.split_pools:
        bad.append(split_pools_error(split_bags, caps.split_pools))
    per_port = {}
    for t in plan.tables:
        per_port[t.memory, t.location] = per_port.get((t.memory, t.location), 0) + 1
    for (memory, loc), count in sorted(per_port.items()):
        if count > caps.descriptors_per_unit:
            bad.append(f"{memory} {loc} holds {count} tables; a unit holds at most "
                       f"{caps.descriptors_per_unit} descriptors")
    if any(t.memory == "onchip" for t in plan.tables):
        wb = caps.onchip_word_bits // 8
        for u, used in enumerate(plan.onchip_used):
            if used > caps.onchip_words * wb:
                bad.append(f"on-chip unit {u} needs {used // wb} words, has {caps.onchip_words}")
    try:
        top = top_chain_shapes(spec)
        bad += engine_width_errors("top", top, engine_assignment(top, caps), caps)
    except CompileError as e:
        bad.append(str(e))
    if spec.bottom_mlp and caps.bottom_engines:
        bottom = list(spec.layer_shapes()["bottom"])
        pad = max(0, len(caps.bottom_engines) - len(bottom))
        bad += engine_width_errors("bottom", bottom, [*range(len(bottom)), *[None] * pad], caps)
    if bad:
        raise CompileError(f"model {spec.name!r} cannot be programmed into a kernel of "
                           f"configuration {caps.config!r}: " + "; ".join(bad))


def engine_width_errors(which: str, layer_shapes, where, caps) -> list:
    """What of the layers placed on ``which`` ("top"/"bottom") engines by ``where`` (a layer
    index per engine, None for an identity, which keeps the width reaching it) exceeds an
    engine's weight memory (:meth:`KernelCapabilities.engine_limits`): one message each."""
    limits = caps.engine_limits(which)
    field = f"mlp_{which}_widths"
    out = []
    for e, (i, (max_in, max_out)) in enumerate(zip(where, limits)):
        if i is None:
            prev = [j for j in where[:e] if j is not None]
            k = n = layer_shapes[prev[-1]][1] if prev else layer_shapes[0][0]
            what = f"identity layer ({k} wide)"
        else:
            k, n = layer_shapes[i]
            what = f"{which} layer {i} ({k} -> {n})"
        if k > max_in or n > max_out:
            out.append(f"{what} on {which} engine {e} exceeds its weight memory (at most "
                       f"{max_in} inputs, {max_out} outputs: {field})")
    return out


def top_chain_shapes(spec) -> list:
    """``(in, out)`` of the layers the top MLP's engines run: the top MLP, then the heads fused
    into one layer per depth (heads of equal depth: layer 0 stacks their rows, deeper layers are
    block-diagonal), whose last layer has one logit per head."""
    shapes = list(spec.layer_shapes()["top"])
    heads = spec.layer_shapes()["heads"]
    for i in range(len(heads[0]) if heads else 0):
        shapes.append((sum(h[i][0] for h in heads) if i else heads[0][0][0],
                       sum(h[i][1] for h in heads)))
    return shapes


def fused_head_layers(qm) -> list:
    """The heads of ``qm`` as one QLayer per depth (see :func:`top_chain_shapes`): exact, since
    every head's layer at one depth has the same formats (the quantizer fuses them so) and the
    off-block weights are zero. Raises :class:`CompileError` when the formats differ."""
    heads = qm.heads
    out = []
    for i in range(len(heads[0]) if heads else 0):
        ls = [h[i] for h in heads]
        keys = {(l.in_fmt, l.w_fmt, l.out_fmt, l.relu) for l in ls}
        if len(keys) != 1:
            raise CompileError(f"model {qm.spec.name!r}: head layer {i} has different formats "
                               "per head; the kernel runs the heads as one layer (quantize the "
                               "heads together: equal depths)")
        if i == 0:
            w = np.concatenate([l.w for l in ls], axis=0)
        else:
            w = np.zeros((sum(l.shape[1] for l in ls), sum(l.shape[0] for l in ls)), np.int64)
            r = c = 0
            for l in ls:
                w[r:r + l.shape[1], c:c + l.shape[0]] = l.w
                r, c = r + l.shape[1], c + l.shape[0]
        out.append(QLayer(w, np.concatenate([l.b for l in ls]), ls[0].in_fmt, ls[0].w_fmt,
                          ls[0].out_fmt, ls[0].relu))
    return out


def dot_hardware_order(spec, descriptors) -> tuple:
    """``(vectors, columns)`` of a dot-interaction model in the kernel: ``vectors[h]`` is the
    golden model's vector index of the kernel's vector ``h`` (0 the dense vector, feature ``f``
    is ``f + 1``; features in slot order), ``columns`` the golden interaction-output column of
    each kernel output element (the dense vector, then the kernel's pairs ``(h, g)``, ``h > g``,
    row-major). A dot product is symmetric, so the kernel's pair ``(h, g)`` is the golden pair
    of its two vectors, in whichever order."""
    vectors = [0] + [f + 1 for feats, _ in _groups(spec, descriptors) for f in feats]
    d = spec.dense_out
    cols = list(range(d))
    for h in range(1, len(vectors)):
        for g in range(h):
            i, j = max(vectors[h], vectors[g]), min(vectors[h], vectors[g])
            cols.append(d + i * (i - 1) // 2 + j)
    return vectors, cols


# ---- the program image (pure Python: the runtime reads this) ----------------------------------

@dataclass
class KernelProgramImage:
    """A kernel program as compiled: its bytes and their description (``kernel_program.json``).

    Attributes
    ----------
    data : bytes
        Header word and command words, table base fields holding channel-buffer offsets.
    meta : dict
        The JSON description (see the module docstring).
    """

    data: bytes
    meta: dict

    @property
    def word_bytes(self) -> int:
        return self.meta["word_bits"] // 8

    def patched(self, table_addresses: dict) -> bytes:
        """The program with channel ``c``'s buffer address ``table_addresses[c]`` added to every
        table base field of channel ``c``.

        Raises ``ValueError`` if an address is missing or a patched field overflows its width.
        """
        wb = self.word_bytes
        out = bytearray(self.data)
        for f in self.meta["table_addresses"]:
            ch = f["channel"]
            if ch not in table_addresses:
                raise ValueError(f"no buffer address for table channel {ch}")
            lo = f["word"] * wb
            word = int.from_bytes(out[lo:lo + wb], "little")
            mask = (1 << f["width"]) - 1
            value = ((word >> f["lsb"]) & mask) + int(table_addresses[ch])
            if value > mask:
                raise ValueError(f"table base {value:#x} of channel {ch} does not fit its "
                                 f"{f['width']}-bit descriptor field")
            word = word & ~(mask << f["lsb"]) | value << f["lsb"]
            out[lo:lo + wb] = word.to_bytes(wb, "little")
        return bytes(out)


def read_program(directory) -> KernelProgramImage:
    """Read ``kernel_program.bin`` and ``.json`` from a compiled directory, checking them."""
    directory = Path(directory)
    meta_path, bin_path = directory / PROGRAM_JSON, directory / PROGRAM_BIN
    for p in (meta_path, bin_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing: recompile the model (`recfabric compile`)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != PROGRAM_FORMAT or meta.get("version") != PROGRAM_VERSION:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} version "
                         f"{meta.get('version')!r}, expected {PROGRAM_FORMAT!r} "
                         f"{PROGRAM_VERSION}: recompile the model (`recfabric compile`)")
    data = bin_path.read_bytes()
    if len(data) != meta["words"] * meta["word_bits"] // 8:
        raise ValueError(f"{bin_path} has {len(data)} bytes; {meta_path.name} says "
                         f"{meta['words']} words of {meta['word_bits']} bits")
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise ValueError(f"{bin_path} does not match the sha256 in {meta_path.name}")
    return KernelProgramImage(data, meta)


def write_program(directory, program: KernelProgramImage) -> list:
    """Write ``kernel_program.bin`` and ``.json`` into ``directory``; returns the file names."""
    directory = Path(directory)
    (directory / PROGRAM_BIN).write_bytes(program.data)
    (directory / PROGRAM_JSON).write_text(json.dumps(program.meta, indent=1, sort_keys=True)
                                          + "\n")
    return [PROGRAM_BIN, PROGRAM_JSON]


# ---- building (the compile step; encodes with the kernel's Amaranth payload layouts) ----------

@functools.lru_cache(maxsize=16)
def _kernel_formats(config):
    """The kernel's program sinks' payload layouts and geometry, for ``config``.

    Constructs (never elaborates) a kernel with :func:`~recfabric.hw.kernel.kernel_for_formats`
    to ask its blocks: 0.03 s for ``tiny``, 0.24 s for ``u280`` (measured), and it stays exactly
    what the hardware decodes. Such a kernel warns about nothing when it is dropped.
    Cached per configuration (a frozen, hashable dataclass: equal configurations build equal
    kernels), so a process that compiles many models (``recfabric soak``) builds it once; the
    result is read-only (``engine_kwargs()`` hands out fresh copies).
    """
    from types import SimpleNamespace  # noqa: PLC0415

    from ...hw.kernel import kernel_for_formats  # noqa: PLC0415

    def shape(port):
        return port.payload.shape()

    from ...hw.kernel import BlockCommandLayout  # noqa: PLC0415

    k = kernel_for_formats(config)
    c, mlp = k.concat, k.mlp
    kw = mlp.engine_kwargs()
    bottom = None
    if k.bottom is not None:
        bkw = k.bottom.engine_kwargs()
        bottom = SimpleNamespace(load=shape(k.bottom.i_load), engines=len(bkw),
                                 block_sel=k.bottom.block_sel,
                                 pipeline=SimpleNamespace(engine_kwargs=lambda: [
                                     dict(e) for e in bkw],
                                                          data_bits=k.bottom.data_bits))
    interact = None
    if k.interact is not None:
        it = k.interact
        interact = SimpleNamespace(desc=shape(it.i_desc), block=SimpleNamespace(
            max_vectors=it.max_vectors, dot_lanes=it.dot_lanes, max_in=it.max_in,
            lanes=it.lanes))
    return SimpleNamespace(
        bottom=bottom, interact=interact, datapath=k.datapath_layout,
        parser=shape(k.parser.i_param), place=shape(k.dispatcher.i_place),
        concat=shape(c.i_desc), mlp=shape(mlp.i_load), mlp_block_sel=mlp.block_sel,
        block=BlockCommandLayout(),
        onchip_words_per_beat=[t.words_per_beat for t in k.onchip],
        unit_desc=[shape(u.i_desc) for u in k.units],
        onchip_desc=[shape(t.i_desc) for t in k.onchip],
        onchip_load=[shape(t.i_load) for t in k.onchip],
        onchip_depth=[t.depth for t in k.onchip],
        onchip_word_bits=[t.word_bits for t in k.onchip],
        concat_stage=SimpleNamespace(max_slots=c.max_slots, max_concat=c.max_concat,
                                     max_dim=c.max_dim, max_dense=c.max_dense, lanes=c.lanes),
        pipeline=SimpleNamespace(engine_kwargs=lambda: [dict(e) for e in kw],
                                 data_bits=mlp.data_bits))


_WHOLE = object()  # key of a nested layout's own (offset, width) in FieldEncoder leaves


class FieldEncoder:
    """Packs dicts of a ``data.StructLayout``'s fields into an integer, as
    ``Const.cast(layout.const(fields)).value`` does, at integer speed.

    The layout is flattened once into ``(path, offset, width)`` leaves; fields left out are zero.
    The first value of every layout is cross-checked against Amaranth's own encoding.
    """

    def __init__(self, layout):
        self.layout = layout
        self.leaves = self._flatten(layout, 0)
        self.checked = False

    @classmethod
    def _flatten(cls, layout, base):
        from amaranth.lib import data  # noqa: PLC0415

        out = {}
        for name, f in layout:
            shape = f.shape
            if isinstance(shape, (data.StructLayout, data.ArrayLayout)):
                out[name] = cls._flatten(shape, base + f.offset)
                out[name][_WHOLE] = (base + f.offset, f.width)
            else:
                out[name] = (base + f.offset, f.width)
        return out

    @staticmethod
    def _pack(leaves, fields) -> int:
        value = 0
        for name, v in fields.items():
            leaf = leaves[name]
            if isinstance(leaf, dict) and not isinstance(v, int):
                value |= FieldEncoder._pack(leaf, v if isinstance(v, dict) else dict(enumerate(v)))
                continue
            if isinstance(leaf, dict):  # a whole struct or array given as its bits
                leaf = leaf[_WHOLE]
            offset, width = leaf
            v = int(getattr(v, "value", v))
            if not -(1 << width) < v < (1 << width):
                raise CompileError(f"field {name!r} value {v} does not fit {width} bits")
            value |= (v & ((1 << width) - 1)) << offset
        return value

    def __call__(self, fields) -> int:
        value = self._pack(self.leaves, fields)
        if not self.checked:
            from amaranth.hdl import Const  # noqa: PLC0415

            want = Const.cast(self.layout.const(fields)).value
            if want != value:
                raise AssertionError(f"field encoder disagrees with Amaranth for {fields!r}")
            self.checked = True
        return value


class KernelProgram:
    """Command words for one kernel, collected in order, then serialised by :meth:`image`."""

    def __init__(self, config, word_bits: int):
        self.config = config
        self.word_bits = word_bits
        self.words: list[int] = []
        self.commands = 0
        self.counts: dict[str, int] = {}
        self.table_fields: list[dict] = []
        self._encoders: dict[int, FieldEncoder] = {}

    def encode(self, layout, fields) -> int:
        """``fields`` packed as ``layout`` (:class:`FieldEncoder`, one per layout)."""
        enc = self._encoders.get(id(layout))
        if enc is None or enc.layout is not layout:
            enc = self._encoders[id(layout)] = FieldEncoder(layout)
        return enc(fields)

    def add(self, target: int, layout, fields, what: str) -> int:
        """Append one command; returns its word index (the header is word 0)."""
        value = self.encode(layout, fields)
        if value >> (self.word_bits - 8):
            raise CompileError(f"{what} payload does not fit a {self.word_bits}-bit word")
        self.words.append(int(target) | value << 8)
        self.commands += 1
        self.counts[what] = self.counts.get(what, 0) + 1
        return len(self.words)

    def add_block(self, block_layout, sink: int, sel: int, addr: int, beats, what: str) -> None:
        """Append a ``BLOCK`` command for ``sink`` (``sel`` already encoded) and its beats
        (integers of at most ``word_bits`` bits), written to addresses ``addr, addr + 1, ...``."""
        from ...hw.kernel import Target  # noqa: PLC0415

        beats = list(beats)
        if not beats:
            return
        self.add(Target.BLOCK, block_layout,
                 {"sink": int(sink), "sel": sel, "addr": addr, "beats": len(beats)}, what)
        for b in beats:
            if b >> self.word_bits:
                raise CompileError(f"{what} beat does not fit a {self.word_bits}-bit word")
        self.words.extend(beats)
        self.counts[what] += len(beats)

    def image(self) -> KernelProgramImage:
        from ...hw.kernel import PROGRAM_FORMAT as HW_FORMAT  # noqa: PLC0415
        from ...hw.kernel import PROGRAM_MAGIC  # noqa: PLC0415

        if HW_FORMAT != PROGRAM_VERSION:
            raise AssertionError(f"the kernel executes program format {HW_FORMAT}, this encoder "
                                 f"writes {PROGRAM_VERSION}")
        wb = self.word_bits // 8
        header = PROGRAM_MAGIC | len(self.words) << 32 | PROGRAM_VERSION << 64
        data = b"".join(w.to_bytes(wb, "little") for w in [header, *self.words])
        meta = {"format": PROGRAM_FORMAT, "version": PROGRAM_VERSION,
                "word_bits": self.word_bits, "words": len(self.words) + 1,
                "commands": self.commands, "beats": len(self.words) - self.commands,
                "config": self.config.name,
                "config_hash": self.config.config_hash,
                "sha256": hashlib.sha256(data).hexdigest(), "counts": dict(self.counts),
                "table_addresses": list(self.table_fields)}
        return KernelProgramImage(data, meta)


def onchip_beats(image, beat_bytes: int, start: int, end: int) -> list:
    """The load beats (integers) of on-chip image bytes ``start .. end``, widened to whole
    ``beat_bytes`` beats (the image's own bytes on either side, zero past its end)."""
    lo = start // beat_bytes * beat_bytes
    hi = -(-end // beat_bytes) * beat_bytes
    raw = np.zeros(hi - lo, dtype=np.uint8)
    have = np.asarray(image[lo:min(hi, len(image))], dtype=np.uint8)
    raw[:len(have)] = have
    raw = raw.tobytes()
    return [int.from_bytes(raw[i:i + beat_bytes], "little") for i in range(0, len(raw), beat_bytes)]


def _groups(spec, descriptors):
    """Per group: (member features in member order, its table records' indices in (copy,
    shard) order)."""
    d = descriptors
    out = []
    for g in range(len(d["groups"])):
        feats = sorted((f for f in range(len(d["features"])) if d["features"][f]["group"] == g),
                       key=lambda f: d["features"][f]["member"])
        tables = sorted((i for i, t in enumerate(d["tables"]) if t["group"] == g),
                        key=lambda i: (d["tables"][i]["replica"], d["tables"][i]["shard"]))
        gr = d["groups"][g]
        if len(tables) != gr["replicas"] * gr["shards"] or not feats:
            raise CompileError(f"model {spec.name!r}: table group {g} has {len(tables)} tables "
                               f"for {gr['replicas']} copies x {gr['shards']} row ranges")
        out.append((feats, tables))
    return out


def _placements(slot, parts, feats, members, shards=1, copies=1, pool=None) -> dict:
    """Dispatcher placement entries (feature -> fields) of one table group.

    Parameters
    ----------
    slot : int
        The group's slot.
    parts : list of dict
        ``{"unit", "desc", "lo"}`` per table part, copy-major (``parts[c * shards + s]``).
    feats : list of int
        The member features, in member (radix) order.
    members : list of dict
        Their feature records (``rows``, ``radix``).
    pool : int or None
        The combiner pool of a multi-hot table split by row range (its bags go out as pieces,
        :mod:`recfabric.hw.bag_combiner`); None otherwise.

    A single feature is ``SINGLE``. Of a merged group (row ``sum(id_i * radix_i)``), the member
    the parser sends first (the lowest feature index) is ``HOLD``, the one it sends last
    ``LAST`` (it emits the lookup), the others ``MID`` (:mod:`recfabric.hw.lookup_dispatcher`).
    """
    from ...hw.lookup_dispatcher import PlaceKind  # noqa: PLC0415

    route = {"slot": slot, "shards": shards, "copies": copies, "parts": list(parts)}
    if len(feats) == 1:
        if pool is not None:
            route.update(pieces=1, pool=pool)
        return {feats[0]: {**route, "kind": PlaceKind.SINGLE}}
    rec = dict(zip(feats, members))
    order = sorted(feats)
    out = {}
    for k, f in enumerate(order):
        fields = {"rows": rec[f]["rows"], "mult": rec[f]["radix"]}
        if k == 0:
            out[f] = {**fields, "kind": PlaceKind.HOLD}
        elif k < len(order) - 1:
            out[f] = {**fields, "kind": PlaceKind.MID, "partner": order[0]}
        else:
            out[f] = {**fields, **route, "kind": PlaceKind.LAST, "partner": order[0]}
    return out


def hardware_column_order(spec, descriptors) -> list:
    """Spec positions of the top MLP's input, in the kernel's concatenation order."""
    offsets, pos = [], spec.dense_out
    for f in spec.sparse:
        offsets.append(pos)
        pos += f.dim
    order = list(range(spec.dense_out))
    for feats, _ in _groups(spec, descriptors):
        for f in feats:
            order.extend(range(offsets[f], offsets[f] + spec.sparse[f].dim))
    return order


def _identity(width: int, fmt: FixedFormat) -> QLayer:
    return QLayer(np.eye(width, dtype=np.int64), np.zeros(width, dtype=np.int64), fmt,
                  FixedFormat(2, 0), fmt, False)


def engine_layers(layers, caps) -> list:
    """``layers`` (QLayers) spread over the kernel's engines, identity layers where
    :func:`engine_assignment` puts them (exact: an identity keeps every value and format)."""
    where = engine_assignment([l.shape for l in layers], caps)
    out = []
    for e, i in enumerate(where):
        if i is not None:
            out.append(layers[i])
            continue
        after = [j for j in where[:e] if j is not None]
        if after:
            prev = layers[after[-1]]
            out.append(_identity(prev.shape[1], prev.out_fmt))
        else:
            out.append(_identity(layers[0].shape[0], layers[0].in_fmt))
    return out


def _program_table(prog, fm, geometry, caps, ti, t, Target, onchip_spans) -> int:
    """Commands that describe table record ``t``; returns its unit. An on-chip table widens
    ``onchip_spans[unit]`` (first word, end word), loaded afterwards as one block per unit."""
    if t["memory"] == 0:
        unit = t["location"]
        lay = fm.unit_desc[unit]
        desc = {"base": t["base"], "stride": t["stride"], "rows": t["rows"], "dim": t["dim"]}
        word = prog.add(Target.UNIT_DESC + unit, lay,
                        {"index": t["local_index"], "desc": desc}, "unit descriptors")
        base_field = lay["desc"].shape["base"]
        prog.table_fields.append({
            "word": word, "lsb": 8 + lay["desc"].offset + base_field.offset,
            "width": base_field.width, "channel": unit})
        return unit
    wbytes = geometry.onchip_word_bytes
    j = t["location"]
    if fm.onchip_word_bits[j] != caps.onchip_word_bits:
        raise CompileError(f"on-chip unit {j} has {fm.onchip_word_bits[j]}-bit words, "
                           f"the capabilities say {caps.onchip_word_bits}")
    row_words = geometry.onchip_row_words(t["dim"])
    if t["stride"] != row_words * wbytes or t["base"] % wbytes:
        raise CompileError(f"on-chip table {ti} is not laid out in whole words")
    base = t["base"] // wbytes
    if base + row_words * t["rows"] > fm.onchip_depth[j]:
        raise CompileError(f"on-chip unit {j} needs {base + row_words * t['rows']} "
                           f"words, has {fm.onchip_depth[j]}")
    prog.add(Target.ONCHIP_DESC + j, fm.onchip_desc[j],
             {"index": t["local_index"],
              "desc": {"base": base, "stride": row_words, "rows": t["rows"],
                       "dim": t["dim"]}}, "on-chip descriptors")
    lo, hi = onchip_spans.get(j, (base, base))
    onchip_spans[j] = (min(lo, base), max(hi, base + row_words * t["rows"]))
    return caps.mem_channels + j


def build_program(spec, qm, plan, descriptors, images, config) -> KernelProgramImage:
    """The program that loads a compiled model into the kernel of ``config``.

    Parameters
    ----------
    spec : ModelSpec
    qm : QuantizedModel
        Its MLP layers and formats (tables are not needed: rows come from ``images``).
    plan : Plan
    descriptors : dict
        :func:`~recfabric.host.compiler.memory_image.unpack_descriptors` of the plan.
    images : dict
        ``(memory, location) -> uint8 array`` table images (on-chip ones are loaded word by word).
    config : AcceleratorConfig

    Raises
    ------
    CompileError
        The model does not fit the kernel's capabilities (:func:`check_program`).
    """
    from ...hw.concat_stage import concat_desc_words  # noqa: PLC0415
    from ...hw.kernel import MODEL_DATA_WIDTH, Target  # noqa: PLC0415
    from ...hw.mlp import mlp_load_image  # noqa: PLC0415
    from ...hw.request_reader import parser_param_words  # noqa: PLC0415
    from ..runtime.wire_format import RequestLayout  # noqa: PLC0415

    caps = config.capabilities()
    spec.require_hardware_support()
    check_program(spec, plan, caps)
    if descriptors["header"]["config_hash"] != config.config_hash:
        raise CompileError(f"descriptors are for config hash "
                           f"{descriptors['header']['config_hash']:#010x}, the kernel is "
                           f"{config.config_hash:#010x}")
    fm = _kernel_formats(config)
    prog = KernelProgram(config, MODEL_DATA_WIDTH)
    layout = RequestLayout.for_config(qm, config)
    for w in parser_param_words(layout):
        prog.add(Target.PARSER, fm.parser, w, "parser")

    geometry = TableLayout.from_capabilities(caps)
    groups = _groups(spec, descriptors)
    d = descriptors
    placements = {}  # feature -> PlacementLayout fields
    onchip_spans = {}  # on-chip unit -> (first word, end word) of its tables
    pools = 0  # combiner pools given to split multi-hot tables so far
    for g, (feats, tis) in enumerate(groups):
        parts = []
        for ti in tis:
            t = d["tables"][ti]
            unit = _program_table(prog, fm, geometry, caps, ti, t, Target, onchip_spans)
            parts.append({"unit": unit, "desc": t["local_index"], "lo": t["row_base"]})
        gr = d["groups"][g]
        pool = None
        if gr["shards"] > 1 and gr["bag"] > 1:
            pool, pools = pools, pools + 1
        placements.update(_placements(g, parts, feats, [d["features"][f] for f in feats],
                                      gr["shards"], gr["replicas"], pool))
    for j, (lo, hi) in sorted(onchip_spans.items()):
        wbytes = geometry.onchip_word_bytes
        prog.add_block(fm.block, Target.ONCHIP_LOAD + j, 0, lo // fm.onchip_words_per_beat[j],
                       onchip_beats(images["onchip", j], wbytes * fm.onchip_words_per_beat[j],
                                    lo * wbytes, hi * wbytes), "on-chip rows")
    # One placement per feature (LookupDispatcher keeps them in a memory indexed by feature).
    for f in range(len(spec.sparse)):
        prog.add(Target.PLACE, fm.place, {"feature": f, "entry": placements[f]}, "placements")

    # Routing: dense features through the bottom MLP (if the model has one), and the
    # interaction's mode (kernels that have these blocks).
    if fm.bottom is not None:
        prog.add(Target.DATAPATH, fm.datapath, {"bottom": int(bool(spec.bottom_mlp))},
                 "datapath")
    elif spec.bottom_mlp:
        raise CompileError(f"model {spec.name!r} has a bottom MLP; configuration "
                           f"{config.name!r} has none")
    first_cols = hardware_column_order(spec, descriptors)
    try:
        if spec.bottom_mlp:
            layers = list(qm.bottom)
            pad = fm.bottom.engines - len(layers)
            if pad < 0:
                raise CompileError(f"model {spec.name!r}: bottom MLP has {len(layers)} layers, "
                                   f"the kernel {fm.bottom.engines} bottom engines")
            layers += [_identity(layers[-1].shape[1], layers[-1].out_fmt)] * pad
            image = mlp_load_image(fm.bottom.pipeline, layers, qm.rounding)
            for blk in image.blocks:
                what = ("bottom MLP weights" if blk.sel["kind"].name == "WEIGHT"
                        else "bottom MLP biases")
                prog.add_block(fm.block, Target.BOTTOM_MLP,
                               prog.encode(fm.bottom.block_sel, blk.sel), blk.addr, blk.beats,
                               what)
            for w in image.descriptors:
                prog.add(Target.BOTTOM_MLP, fm.bottom.load, w, "bottom MLP descriptors")
        if fm.interact is not None or spec.interaction == "dot":
            from ...hw.interaction import InteractionMode, interaction_desc_words  # noqa: PLC0415

            if fm.interact is None:
                raise CompileError(f"model {spec.name!r}: dot interaction; configuration "
                                   f"{config.name!r} has no dot unit (dot_lanes 0)")
            if spec.interaction == "dot":
                vectors, first_cols = dot_hardware_order(spec, descriptors)
                n = len(vectors)
                fmts = (list(qm.segment_fmts) if qm.segment_fmts is not None
                        else [qm.emb_fmt] * n)
                words = interaction_desc_words(
                    fm.interact.block, mode=InteractionMode.DOT, n=n, dim=spec.dense_out,
                    out_frac=qm.interaction_fmt.frac, fracs=[fmts[v].frac for v in vectors],
                    floor=qm.rounding.value == "floor")
            else:
                words = interaction_desc_words(fm.interact.block, mode=InteractionMode.CONCAT)
            for w in words:
                prog.add(Target.INTERACTION, fm.interact.desc, w, "interaction descriptor")
    except ValueError as e:
        if isinstance(e, CompileError):
            raise
        raise CompileError(f"model {spec.name!r}: {e}") from None

    # Concatenation: dense part first, then the groups in slot order.
    slots, pos = [], spec.dense_out
    for feats, _ in groups:
        length = sum(spec.sparse[f].dim for f in feats)
        slots.append((pos, length))
        pos += length
    try:
        for w in concat_desc_words(fm.concat_stage, slots, dense=(0, spec.dense_out),
                                   total=pos):
            prog.add(Target.CONCAT, fm.concat, w, "concat descriptors")
        first = qm.top[0]
        layers = [QLayer(first.w[:, first_cols], first.b, first.in_fmt, first.w_fmt,
                         first.out_fmt, first.relu), *qm.top[1:], *fused_head_layers(qm)]
        image = mlp_load_image(fm.pipeline, engine_layers(layers, caps), qm.rounding)
        for blk in image.blocks:
            what = "MLP weights" if blk.sel["kind"].name == "WEIGHT" else "MLP biases"
            prog.add_block(fm.block, Target.MLP, prog.encode(fm.mlp_block_sel, blk.sel),
                           blk.addr, blk.beats, what)
        for w in image.descriptors:
            prog.add(Target.MLP, fm.mlp, w, "MLP descriptors")
    except ValueError as e:
        if isinstance(e, CompileError):
            raise
        raise CompileError(f"model {spec.name!r}: {e}") from None
    return prog.image()


def program_word_counts(spec, plan, config) -> dict:
    """Words of the program that loads ``spec`` planned as ``plan`` into the kernel of
    ``config``, counted without building it (no weights, no table images): what
    :func:`build_program` writes (``tests/test_host_compiler_kernel_program.py`` checks the
    two agree), and what :func:`~recfabric.host.compiler.cycle_model.program_load_cycles`
    models for plans the kernel cannot run yet (the ``plan`` may come from capabilities the
    kernel does not have: the counts follow the same rules).

    Returns a dict: ``words`` (header included), ``commands``, ``beats``, and the beats of
    ``mlp_weights``, ``mlp_biases`` (top MLP and fused heads), ``bottom_weights``,
    ``bottom_biases`` (bottom MLP) and ``onchip_rows``.
    """
    import math  # noqa: PLC0415

    from ...hw.concat_stage import concat_desc_words  # noqa: PLC0415
    from ...hw.mlp import BeatPacking  # noqa: PLC0415

    caps = config.capabilities()
    fm = _kernel_formats(config)
    n_sparse = len(spec.sparse)
    commands = 5 + n_sparse + n_sparse  # parser parameters, placements
    commands += sum(1 for t in plan.tables)  # unit and on-chip descriptors
    slots, pos = [], spec.dense_out
    for g in plan.groups:
        length = sum(spec.sparse[f].dim for f in g.features)
        slots.append((pos, length))
        pos += length
    commands += len(concat_desc_words(fm.concat_stage, slots, dense=(0, spec.dense_out),
                                      total=pos))
    beats = {"mlp_weights": 0, "mlp_biases": 0, "bottom_weights": 0, "bottom_biases": 0,
             "onchip_rows": 0}

    def mlp(engine_kwargs, layers, where, key):
        nonlocal commands
        for e, (kw, i) in enumerate(zip(engine_kwargs, where)):
            if i is None:  # an identity layer keeps the width of what reaches it
                prev = [j for j in where[:e] if j is not None]
                k = n = layers[prev[-1]][1] if prev else layers[0][0]
            else:
                k, n = layers[i]
            pk = BeatPacking(rows=kw["rows"], cols=kw["cols"], data_bits=kw["data_bits"],
                             acc_bits=kw["acc_bits"], beat_bits=kw["beat_bits"])
            kt, nt = math.ceil(k / pk.cols), math.ceil(n / pk.rows)
            beats[f"{key}_weights"] += pk.groups * kt * nt
            beats[f"{key}_biases"] += pk.bias_groups * nt
            commands += pk.groups + pk.bias_groups + 5  # block commands, descriptors

    layers = top_chain_shapes(spec)
    mlp(fm.pipeline.engine_kwargs(), layers, engine_assignment(layers, caps), "mlp")
    if fm.bottom is not None:
        commands += 1  # the DATAPATH word
        if spec.bottom_mlp:  # padded with identity layers after the last (build_program)
            layers = spec.layer_shapes()["bottom"]
            bkw = fm.bottom.pipeline.engine_kwargs()
            mlp(bkw, layers, [*range(len(layers)), *[None] * (len(bkw) - len(layers))],
                "bottom")
    if fm.interact is not None:
        from ...hw.interaction import InteractionMode, interaction_desc_words  # noqa: PLC0415

        if spec.interaction == "dot":
            n = 1 + n_sparse
            commands += len(interaction_desc_words(
                fm.interact.block, mode=InteractionMode.DOT, n=n, dim=spec.dense_out,
                fracs=[0] * n))
        else:
            commands += len(interaction_desc_words(fm.interact.block,
                                                   mode=InteractionMode.CONCAT))
    for j in range(caps.onchip_units):
        spans = [(t.offset, t.offset + t.nbytes) for t in plan.tables
                 if t.memory == "onchip" and t.location == j]
        if spans:
            beat_bytes = caps.onchip_word_bits // 8 * fm.onchip_words_per_beat[j]
            lo = min(a for a, _ in spans) // beat_bytes
            hi = -(-max(b for _, b in spans) // beat_bytes)
            beats["onchip_rows"] += hi - lo
            commands += 1
    total = sum(beats.values())
    return {"words": 1 + commands + total, "commands": commands, "beats": total, **beats}
