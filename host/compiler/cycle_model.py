"""Analytical cycle model of :class:`recfabric.hw.mlp.MLPPipeline`.

Stages and their per-request occupancy (cycles a stage is busy with one request):

==================  =========================================================================
input writer        ``chunks = ceil(K0 / cols[0])`` (one chunk per cycle)
layer engine ``l``  ``T_l = ceil(K_l / cols[l]) * ceil(N_l / rows[l])`` (one MAC wave per cycle,
                    back to back across tiles and requests)
drain               ``N + 1`` (one element per cycle, one idle cycle between requests)
==================  =========================================================================

Latency of a stage (from its input bank becoming visible as filled to its output bank becoming
visible as filled): ``D_l = T_l + cols[l] + slots[l] + 9`` for an engine: one cycle to take the
bank, ``T_l`` waves, ``cols + slots - 1`` cycles of skew through the array, three PE stages, bias
and accumulate (2), requantize (4: decode, round, shift, saturate; each <= 8 LUT levels) and the
commit. ``slots = rows``, or ``ceil(rows / 2)`` when
int8 engines pack two rows per DSP48E2 (``packed``: the activations pass ``ceil(rows / 2)``
PE positions down a column). With the latency options
(:class:`~recfabric.hw.array_timing.ArrayTiming`) the skew terms change::

    D_l = T_l + S_l + B_l + levels_l + 9

``S_l = min(cascade, cols)`` (columns per row-cascade segment; ``cols`` without), ``levels_l =
ceil(log2(ceil(cols / S_l)))`` registered adder levels summing a row's segments, ``B_l = slots``
without broadcast, else ``1 +`` the broadcast register levels (the fewest ``L`` with ``fanout **
(L + 1) >= slots``). Without either option ``S + B + levels = cols + slots``.
The drain adds ``N + 2`` (one take cycle, one
cycle per element, read register, sigmoid ROM register). So, on an empty pipeline, from the
first input chunk to the last output::

    latency = chunks + sum_l D_l + N + 2

Steady state: every stage must keep pace, and each activation buffer's ``banks`` banks
(``AcceleratorConfig.activation_banks``; :meth:`MLPCycleModel.for_config`) must
cover the time a request holds a bank (from its producer allocating it to its consumer releasing
it: ``O = D_producer + D_consumer`` with the writer's ``D = chunks``, the drain's ``D = N + 1``)::

    II = max(chunks, max_l T_l, N + 1, max_buffers O / banks)

(When the bank term dominates, requests leave in bursts of ``banks`` and ``II`` is the average
spacing over a burst period.)

The bound the MAC array is measured against is ``sum_l K_l * N_l / sum_l rows[l] * cols[l]``
(MAC units, not DSP slices: a packed int8 DSP is two MAC units).

The whole kernel (:func:`kernel_batch_cycles`, the serving layer's service-time prediction and the
modelled rows of ``recfabric bench compare``): a batch of ``B`` requests takes ``latency + ii * (B
- 1)`` cycles, with ``ii = max(MLP II, the plan's lookup rounds (beats per request on the busiest
port), request words per record)`` and ``latency = top MLP latency + max(memory read
latency + LOOKUP_BRANCH_CYCLES + max(0, IDs per request - FIT_IDS_PER_REQUEST), bottom MLP
latency) + KERNEL_OVERHEAD_CYCLES -
LOOKUP_BRANCH_CYCLES`` (the bottom MLP runs beside the lookups;
multi-task heads are the top MLP's last layers, fused one per depth; a dot interaction adds the
latency of :func:`dot_interaction_cycles` less the top MLP's input chunks, which the writer takes
as the dot unit packs them, and bounds ``ii`` by its interval; ``dlrm-small`` on ``small`` with
both: 417 / 1,040 / 3,176 cycles modelled for batches 1 / 8 / 32, simulated 401 / 1,033 / 3,168,
``tools/measure_dlrm.py``, after the logic-depth pipelining: 4.0% high at batch 1, the bottom MLP
and the lookups overlap more than the fitted overhead assumes).
``KERNEL_OVERHEAD_CYCLES`` (request fetch and parse, dispatch, concat, result and status writes)
is fitted to the simulation: the single-request run of the ``small`` model on the ``small`` preset
takes 365 cycles (``tools/measure_kernel.py 1 16 256``, with the streaming request path, the
four-stage requantizer, the merged load/routing changes and the pipelining of the request path
and the lookup side to <= 8 logic levels, which added 12 cycles to 352, and the concatenation
stage's placement read, 1 more), of which the MLP model accounts for 218 and the simulated HBM
read latency for 64. The model then gives 1,385 cycles
for a batch of 16 (simulated: 1,391) and 17,705 for 256 (simulated 17,708 before the placement
read's cycle). The
slow tests of ``tests/test_bench_compare.py`` check it against simulation: within 1% on
``small``, within 20% on ``tiny``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...hw.array_timing import ArrayTiming

#: The bag combiner's latency (``hw/bag_combiner.py``, kernels with ``split_pools``); the value
#: is repeated here so that the host does not import Amaranth.
COMBINER_CYCLES = 3

__all__ = ["MLPCycleModel", "ENGINE_OVERHEAD", "DRAIN_OVERHEAD", "KERNEL_OVERHEAD_CYCLES",
           "LOOKUP_BRANCH_CYCLES", "FIT_IDS_PER_REQUEST", "COMBINER_CYCLES",
           "MEM_LATENCY_CYCLES", "kernel_batch_cycles", "dot_interaction_cycles",
           "DOT_PIPELINE_CYCLES", "program_load_cycles", "PROGRAM_LOAD_OVERHEAD_CYCLES",
           "PROGRAM_LOAD_RATE"]

#: Engine stage latency beyond ``T + cols + rows``.
ENGINE_OVERHEAD = 9
#: Drain + sigmoid latency beyond ``N``.
DRAIN_OVERHEAD = 2
#: Kernel cycles per batch beyond the MLP latency and the memory read latency (module doc).
#: 70 + 12 for the logic-depth pipelining to <= 8 LUT levels: the request path +9 (request
#: fetcher +3, parser +2, dispatcher +4) and the lookup side +3 (the pooler's word register, the
#: concatenation stage's input register, the result writer's SNAPSHOT cycle); + 1 for the
#: concatenation stage's placement-memory read (stage P, u280 depth; simulated 364 -> 365).
KERNEL_OVERHEAD_CYCLES = 83
#: The part of :data:`KERNEL_OVERHEAD_CYCLES` on the lookup branch only (the dispatcher's 4
#: pipeline stages, the pooler's word register and the concatenation stage's placement read):
#: the bottom MLP, which runs beside the lookups, hides it when it is the later of the two
#: branches.
LOOKUP_BRANCH_CYCLES = 6
#: IDs per request of the model :data:`KERNEL_OVERHEAD_CYCLES` was fitted with (the ``small``
#: model: 8 features, bags of up to 12 IDs). A request's IDs leave the parser and the
#: dispatcher one per cycle (and its pooled vectors reach the concatenation one per cycle), so
#: each ID beyond these adds a cycle to the lookup branch: fitted on Verilator at u280 (README
#: "Verilator back-end and soak"): microrec-small's 47 IDs +35 = 840 / 1,016 cycles (int8 /
#: int16, simulated 840 / 1,016), microrec-large's 98 +86 and wnd's 27 +15 (within 1.3% of
#: the simulated latencies).
FIT_IDS_PER_REQUEST = 12
#: Memory read latency assumed for HBM, in kernel cycles (the simulation's HBM model).
MEM_LATENCY_CYCLES = 64
#: Program words the kernel's program loader takes per cycle (one 512-bit word per cycle:
#: every sink takes a word, or a whole packed beat, per cycle; :func:`program_load_cycles`).
PROGRAM_LOAD_RATE = 1.0
#: Program-load cycles beyond one per word, fitted to the simulation (:func:`program_load_cycles`).
PROGRAM_LOAD_OVERHEAD_CYCLES = 77


@dataclass
class MLPCycleModel:
    """Cycle model of one model (``widths``) on one pipeline (``shapes``, ``banks``).

    Parameters
    ----------
    shapes : list of (rows, cols)
        Engine array shapes.
    widths : sequence of int
        Layer widths ``K0, N0(=K1), ..., N_last``; fewer layers than engines are padded with
        identity layers of width ``N_last`` (what :func:`~recfabric.hw.mlp.mlp_load_image`
        does).
    banks : int
        Banks per activation buffer.
    packed : bool
        int8 engines with two rows per DSP48E2 (``MLPPipeline.packed``).
    cascade, broadcast : int
        The engines' row-cascade segment length and activation broadcast fanout (0: off;
        ``AcceleratorConfig.mlp_cascade`` / ``mlp_broadcast``).
    """

    shapes: list
    widths: tuple
    banks: int = 4
    packed: bool = False
    cascade: int = 0
    broadcast: int = 0
    stage_ii: dict = field(init=False)
    ii: float = field(init=False)
    latency: int = field(init=False)

    def __post_init__(self):
        widths = list(self.widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least an input and an output width, not {widths}")
        n_layers = len(widths) - 1
        if n_layers > len(self.shapes):
            raise ValueError(f"{n_layers} layers do not fit {len(self.shapes)} engines")
        widths += [widths[-1]] * (len(self.shapes) - n_layers)
        chunks = math.ceil(widths[0] / self.shapes[0][1])
        n_out = widths[-1]
        tiles = [math.ceil(k / c) * math.ceil(n / r)
                 for (r, c), k, n in zip(self.shapes, widths[:-1], widths[1:])]
        delays = [t + self.skew(r, c) + ENGINE_OVERHEAD for t, (r, c) in zip(tiles, self.shapes)]
        stage = [chunks, *delays, n_out + 1]
        occupancy = [stage[i] + stage[i + 1] for i in range(len(stage) - 1)]
        self.stage_ii = {"writer": chunks, **{f"engine{l}": t for l, t in enumerate(tiles)},
                         "drain": n_out + 1,
                         "banks": max(o / self.banks for o in occupancy)}
        self.ii = max(self.stage_ii.values())
        self.latency = chunks + sum(delays) + n_out + DRAIN_OVERHEAD
        self.macs = sum(k * n for k, n in zip(self.widths[:-1], self.widths[1:]))
        self.mac_units = sum(r * c for r, c in self.shapes)
        self.dsp_slices = sum(self.timing(r, c).slots * c for r, c in self.shapes)

    @classmethod
    def for_config(cls, config, widths, which: str = "top") -> MLPCycleModel:
        """The model of layer widths ``widths`` on ``config``'s ``which`` ("top" or "bottom")
        pipeline, as the kernel builds it: its engine shapes, ``config.activation_banks`` banks
        per activation buffer, int8 rows packed two per DSP48E2 at ``data_bits`` 8, and the
        latency options ``mlp_cascade`` / ``mlp_broadcast``."""
        if which not in ("top", "bottom"):
            raise ValueError(f"which must be 'top' or 'bottom', not {which!r}")
        shapes = config.mlp_top_shapes if which == "top" else config.mlp_bottom_shapes
        if not shapes:
            raise ValueError(f"config {config.name!r} has no {which} MLP engines")
        return cls(shapes=list(shapes), widths=tuple(widths), banks=config.activation_banks,
                   packed=config.data_bits == 8, cascade=config.mlp_cascade,
                   broadcast=config.mlp_broadcast)

    def timing(self, rows: int, cols: int) -> ArrayTiming:
        """The wave timing of an engine's ``rows`` x ``cols`` array (the hardware's own
        arithmetic, :class:`~recfabric.hw.array_timing.ArrayTiming`)."""
        return ArrayTiming(rows, cols, self.packed and rows >= 2, self.cascade, self.broadcast)

    def skew(self, rows: int, cols: int) -> int:
        """An engine's latency beyond its waves and :data:`ENGINE_OVERHEAD`: ``S + B + levels``
        (module doc; ``cols + slots`` without the latency options), ``B`` being the last row's
        slot delay plus one."""
        t = self.timing(rows, cols)
        return t.seg_len + t.slot_delay(rows - 1) + 1 + t.tree_levels

    @property
    def bound(self) -> float:
        """MACs per inference / MAC units: the cycles per inference of a perfect machine."""
        return self.macs / self.mac_units

    @property
    def utilization(self) -> float:
        return self.macs / (self.mac_units * self.ii)

    def to_json(self) -> dict:
        return {"ii": self.ii, "latency": self.latency, "bound": self.bound,
                "utilization": self.utilization, "mac_units": self.mac_units,
                "dsp_slices": self.dsp_slices, "stage_ii": dict(self.stage_ii)}


def kernel_batch_cycles(spec, config, rounds: int, words_per_record: int, *,
                        mem_latency_cycles: int = MEM_LATENCY_CYCLES,
                        pooled_inputs: int = 0) -> tuple[int, float]:
    """Modelled ``(latency, ii)`` of the whole kernel in cycles (module doc): a batch of ``B``
    requests takes ``latency + ii * (B - 1)``.

    Parameters
    ----------
    spec : ModelSpec
        The model (its ``layer_shapes()``).
    config : AcceleratorConfig
        The kernel's MLP engine shapes (``mlp_bottom_shapes``, ``mlp_top_shapes``), element
        width and activation-buffer banks (:meth:`MLPCycleModel.for_config`).
    rounds : int
        The plan's lookup rounds (beats per request on the busiest memory port).
    words_per_record : int
        Request words per record (the wire format's record length).
    mem_latency_cycles : int
        Memory read latency in kernel cycles.
    pooled_inputs : int
        Pooled vectors and bag counts per request through the arbiter and the bag combiner,
        one per cycle (:attr:`~recfabric.host.compiler.planner.Plan.pooled_inputs`; 0: not
        counted). A kernel with a bag combiner (``config.split_pools``) adds
        :data:`~recfabric.hw.bag_combiner.COMBINER_CYCLES` to the lookup branch's latency.
    """
    from .kernel_program import top_chain_shapes  # noqa: PLC0415

    shapes = {"bottom": spec.layer_shapes()["bottom"], "top": top_chain_shapes(spec)}
    ii = max(rounds, words_per_record, pooled_inputs)
    latency = KERNEL_OVERHEAD_CYCLES - LOOKUP_BRANCH_CYCLES
    # The dense path (bottom MLP) runs beside the lookups: the later of the two reaches the
    # concatenation.
    ids = sum(f.bag for f in spec.sparse)
    before_concat = mem_latency_cycles + LOOKUP_BRANCH_CYCLES + max(0, ids - FIT_IDS_PER_REQUEST)
    if getattr(config, "split_pools", 0):
        before_concat += COMBINER_CYCLES
    for kind in ("bottom", "top"):
        layers = shapes[kind]
        if not layers:
            continue
        m = MLPCycleModel.for_config(config, (layers[0][0], *[o for _, o in layers]), kind)
        ii = max(ii, m.ii)
        if kind == "bottom":
            before_concat = max(before_concat, m.latency)
        else:
            latency += m.latency
    latency += before_concat
    if spec.interaction == "dot":
        cols = config.mlp_top_shapes[0][1]
        dot_latency, dot_ii = dot_interaction_cycles(
            len(spec.sparse) + 1, spec.dense_out, cols, max(1, config.dot_lanes))
        # The dot unit's input chunks are the concatenation's output (what the top MLP's input
        # writer takes in a concat model); its output chunks go to the writer as they are
        # packed, so the writer's chunks are inside the dot unit's latency.
        top_chunks = math.ceil(shapes["top"][0][0] / cols)
        ii, latency = max(ii, dot_ii), latency + dot_latency - top_chunks
    return latency, ii


#: DotInteraction latency beyond its input chunks and its reads: from the last read to the last
#: output chunk, through the four-stage requantizer and the chunk packer. Fitted to the block's
#: simulation (one request into an idle block: first input chunk to last output chunk, both
#: counted; equal for four geometries, tests/test_dot_latency.py; 7 before the requantizer
#: grew from two stages to four).
#: Each adder level of the product sum beyond the first
#: (:func:`~recfabric.hw.interaction.sum_stages`, ``dot_lanes`` > 2) adds one.
DOT_PIPELINE_CYCLES = 10


def dot_interaction_cycles(n: int, d: int, lanes: int, dot_lanes: int) -> tuple[int, int]:
    """``(latency, ii)`` of :class:`~recfabric.hw.interaction.DotInteraction` for ``n`` vectors
    of ``d`` elements: the vector is taken one ``lanes``-wide chunk per cycle into a free buffer
    (``chunks = ceil(n*d / lanes)``) while the previous request computes; the computation issues
    one read per cycle, ``d`` dense elements and ``ceil(d / dot_lanes)`` per pair, plus one idle
    cycle per request. ``ii = max(chunks, 1 + d + n(n-1)/2 * ceil(d / dot_lanes))`` (equal to
    the block's simulation, ``tests/test_dot_latency.py``), ``latency = chunks + compute +``
    :data:`DOT_PIPELINE_CYCLES` ``+ ceil(log2(dot_lanes)) - 1`` (for ``dot_lanes`` > 2; equal to
    the block's simulation, ``tests/test_dot_latency.py``)."""
    chunks = math.ceil(n * d / lanes)
    compute = 1 + d + n * (n - 1) // 2 * math.ceil(d / dot_lanes)
    sum_extra = max(1, (dot_lanes - 1).bit_length()) - 1  # hw.interaction.sum_stages - 1
    return chunks + compute + DOT_PIPELINE_CYCLES + sum_extra, max(chunks, compute)


def program_load_cycles(words: int, *, rate: float = PROGRAM_LOAD_RATE,
                        overhead: int = PROGRAM_LOAD_OVERHEAD_CYCLES) -> int:
    """Cycles a run with ``flags.LOAD`` spends executing a kernel program of ``words`` words
    (header included; :func:`~recfabric.host.compiler.kernel_program.program_word_counts`
    counts them for a plan) before its batch starts: ``ceil(words / rate) + overhead``.

    The loader reads the program in 16-beat bursts with 128 words of FIFO (reads stay in flight
    over the memory latency) and every sink takes one word per cycle, so ``rate`` is 1. The
    ``overhead`` (the header's round trip, then the first burst's latency of the program's
    body) is fitted to the simulation (model port latency 32 cycles, ``tools/measure_kernel.py``:
    the first run minus a batch-1 run without the load): ``small`` model on ``small``, 986
    words (format 5), 1,063 cycles; ``tiny`` on ``tiny``, 81 words, 158 cycles (both exactly
    ``words + 77``, with the fetcher pipelined to <= 8 LUT levels: +3 cycles per fetch run;
    ``tests/test_hw_program_load.py`` checks it). Modelled, not simulated, at any other size
    (``tools/program_load_model.py``: microrec-small on ``u280``, 38,729 words, 38,806 cycles;
    format 5).
    """
    if words < 1:
        raise ValueError(f"a kernel program has at least its header word, not {words}")
    return math.ceil(words / rate) + overhead
