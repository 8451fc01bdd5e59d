"""Kernel program: the runtime data of a compiled model, as the kernel's ModelLoader reads it.

The model compiler (:mod:`recfabric.host.compiler`) writes hardware-independent images: table
images per memory channel, a descriptor table and an MLP program. This module turns a
:class:`~recfabric.host.compiler.CompiledModel` into the command words that program one
:class:`~recfabric.hw.kernel.RecFabricKernel` (its blocks' configuration streams), once the
device addresses of the table buffers are known (the driver builds it at ``load``).

Program layout (little-endian, :data:`~recfabric.hw.kernel.MODEL_DATA_WIDTH`-bit words)::

    word 0       magic "RFpg" (u32) | command count (u32) | zero
    word 1..n    target (u8, :class:`~recfabric.hw.kernel.Target`) | payload (the target
                 stream's payload bits, LSB first) | zero

Mapping decisions, and why:

* Slot ``g`` of every request is the model's table group ``g`` (a Cartesian-merged pair is one
  group, one lookup, one pooled vector ``[row_a | row_b]``).
* The concatenated vector is laid out in *hardware order*: the dense part, then the groups in
  slot order, each group's features in their row order. The first top-MLP layer's weight columns
  are permuted to match, so the MLP computes exactly the same integer sums as the golden model
  (a permutation of the terms of an exact integer sum).
* A group whose table has copies on several channels is served from copy 0 (every copy holds the
  whole table, so results are the same; the planner's load balance across copies is not used
  yet). A table split by row range over channels is rejected: the dispatcher does not route by
  row range yet.
* On-chip tables are laid out here (the compiler's on-chip image is byte-addressed, the
  OnChipTable is word-addressed): each row starts on a word.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Const

from ..hw.concat_stage import concat_desc_words
from ..hw.kernel import MODEL_DATA_WIDTH, PROGRAM_MAGIC, KernelUnsupported, Target
from ..hw.lookup_dispatcher import PlaceKind
from ..hw.mlp_engine import mlp_load_words
from ..hw.request_reader import parser_param_words
from .golden import QLayer
from .wire_format import RequestLayout

__all__ = ["KernelProgram", "build_program", "hardware_column_order"]


def _encode(layout, fields) -> int:
    return Const.cast(layout.const(fields)).value


class KernelProgram:
    """Command words for one kernel, collected per target, then serialised by :meth:`image`."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.words: list[int] = []
        self.counts: dict[str, int] = {}

    def add(self, target: int, sink, fields, what: str):
        layout = sink.payload.shape()
        self.words.append(int(target) | _encode(layout, fields) << 8)
        self.counts[what] = self.counts.get(what, 0) + 1

    def image(self) -> bytes:
        wb = MODEL_DATA_WIDTH // 8
        header = PROGRAM_MAGIC | len(self.words) << 32
        return b"".join(w.to_bytes(wb, "little") for w in [header, *self.words])


def _groups(cm):
    """Per group: (members sorted by position, table records of copy 0)."""
    d = cm.descriptors
    out = []
    for g in range(len(d["groups"])):
        feats = sorted((f for f in range(len(d["features"])) if d["features"][f]["group"] == g),
                       key=lambda f: d["features"][f]["member"])
        tables = [i for i, t in enumerate(d["tables"]) if t["group"] == g and t["replica"] == 0]
        if len(tables) != 1:
            raise KernelUnsupported(
                f"model {cm.spec.name!r}: table group {g} "
                f"({', '.join(cm.spec.sparse[f].name for f in feats)}) is split over "
                f"{len(tables)} row ranges; the kernel's dispatcher cannot route by row range "
                "yet (use a configuration whose channels hold the table whole)")
        if len(feats) > 2:
            raise KernelUnsupported(
                f"model {cm.spec.name!r}: table group {g} merges {len(feats)} features; the "
                "dispatcher computes Cartesian rows of pairs only")
        out.append((feats, tables[0]))
    return out


def _placements(slot, unit, desc, feats, fa, fb, cart) -> dict:
    """Dispatcher placement entries (feature -> fields) of one table group.

    A single feature is ``SINGLE``. Of a Cartesian pair ``(a, b)`` (row ``id_a * rows_b +
    id_b``), the member the parser sends first (the lower feature index) is ``HOLD``, the other
    ``PAIR``, which emits the lookup (:mod:`recfabric.hw.lookup_dispatcher`).
    """
    common = {"unit": unit, "slot": slot, "desc": desc}
    if not cart:
        return {feats[0]: {**common, "kind": PlaceKind.SINGLE}}
    rows = {feats[0]: fa["rows"], feats[1]: fb["rows"]}
    first, second = sorted(feats)
    return {first: {"kind": PlaceKind.HOLD, "rows": rows[first]},
            second: {**common, "kind": PlaceKind.PAIR, "rows": rows[second],
                     "mult": fb["rows"], "partner": first, "a_held": int(first == feats[0])}}


def hardware_column_order(cm) -> list:
    """Spec positions of the top MLP's input, in the kernel's concatenation order."""
    spec = cm.spec
    offsets, pos = [], spec.dense_out
    for f in spec.sparse:
        offsets.append(pos)
        pos += f.dim
    order = list(range(spec.dense_out))
    for feats, _ in _groups(cm):
        for f in feats:
            order.extend(range(offsets[f], offsets[f] + spec.sparse[f].dim))
    return order


def build_program(kernel, cm, table_addresses: dict) -> KernelProgram:
    """The program that loads compiled model ``cm`` into ``kernel``.

    ``table_addresses[channel]`` is the device address of memory channel ``channel``'s table
    buffer (the compiler's table base addresses are offsets into it).
    """
    c = kernel.config
    spec = cm.spec
    spec.require_hardware_support()
    if spec.bottom_mlp:
        raise KernelUnsupported(f"model {spec.name!r} has a bottom MLP; this kernel has none")
    if cm.manifest["config"]["hash"] != c.config_hash:
        raise KernelUnsupported(
            f"model compiled for config hash {cm.manifest['config']['hash']:#010x}, kernel is "
            f"{c.config_hash:#010x}")
    prog = KernelProgram(kernel)
    qm = cm.quantized_model()
    layout = RequestLayout.for_config(qm, c)
    for w in parser_param_words(layout):
        prog.add(Target.PARSER, kernel.parser.i_param, w, "parser")

    groups = _groups(cm)
    d = cm.descriptors
    bits = c.data_bits
    n_mem = c.mem_channels
    placements = {}  # feature -> PlacementLayout fields
    onchip_next = [0] * c.onchip_units
    onchip_words = kernel.onchip[0].depth if kernel.onchip else 0
    word_bits = kernel.onchip[0].word_bits if kernel.onchip else 0
    for g, (feats, ti) in enumerate(groups):
        t = d["tables"][ti]
        fa = d["features"][feats[0]]
        cart = len(feats) == 2
        fb = d["features"][feats[1]] if cart else fa
        if t["memory"] == 0:
            unit = t["location"]
            desc = {"base": table_addresses[unit] + t["base"], "stride": t["stride"],
                    "rows": t["rows"], "dim": t["dim"]}
            prog.add(Target.UNIT_DESC + unit, kernel.units[unit].i_desc,
                     {"index": t["local_index"], "desc": desc}, "unit descriptors")
        else:
            j = t["location"]
            unit = n_mem + j
            tbl = kernel.onchip[j]
            row_words = -(-t["dim"] * bits // word_bits)
            base = onchip_next[j]
            onchip_next[j] += row_words * t["rows"]
            if onchip_next[j] > onchip_words:
                raise KernelUnsupported(f"on-chip unit {j} needs {onchip_next[j]} words, has "
                                        f"{onchip_words}")
            prog.add(Target.ONCHIP_DESC + j, tbl.i_desc,
                     {"index": t["local_index"],
                      "desc": {"base": base, "stride": row_words, "rows": t["rows"],
                               "dim": t["dim"]}}, "on-chip descriptors")
            rows = cm.read_rows(ti, np.arange(t["rows"]))
            mask = (1 << bits) - 1
            for r in range(t["rows"]):
                value = 0
                for e, x in enumerate(rows[r]):
                    value |= (int(x) & mask) << (e * bits)
                for k in range(row_words):
                    prog.add(Target.ONCHIP_LOAD + j, tbl.i_load,
                             {"addr": base + r * row_words + k,
                              "data": (value >> (k * word_bits)) & ((1 << word_bits) - 1)},
                             "on-chip rows")
        placements.update(_placements(g, unit, t["local_index"], feats, fa, fb, cart))
    place = kernel.dispatcher.i_place
    for f in range(len(spec.sparse)):
        prog.add(Target.PLACE, place, {"feature": f, "entry": placements[f]}, "placements")

    # Concatenation: dense part first, then the groups in slot order.
    slots, pos = [], spec.dense_out
    for feats, _ in groups:
        length = sum(spec.sparse[f].dim for f in feats)
        slots.append((pos, length))
        pos += length
    for w in concat_desc_words(kernel.concat, slots, dense=(0, spec.dense_out), total=pos):
        prog.add(Target.CONCAT, kernel.concat.i_desc, w, "concat descriptors")

    order = hardware_column_order(cm)
    first = qm.top[0]
    layers = [QLayer(first.w[:, order], first.b, first.in_fmt, first.w_fmt, first.out_fmt,
                     first.relu), *qm.top[1:]]
    for w in mlp_load_words(kernel.mlp, layers, qm.rounding):
        prog.add(Target.MLP, kernel.mlp.i_load, w, "MLP weights")
    return prog
