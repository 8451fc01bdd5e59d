"""Accelerator configuration: every elaboration parameter of a RecFabric kernel, in one place.

Hardware is generated for an :class:`AcceleratorConfig`; models are runtime data. A config is a
frozen dataclass, validated on construction, with derived properties and named presets (small
deltas of one another, as Gemmini's configs are). Its :attr:`~AcceleratorConfig.config_hash` is
exposed by the hardware in a register; the host refuses to drive a kernel whose hash differs from
the one a model was compiled for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

__all__ = ["AcceleratorConfig", "ConfigError", "KernelCapabilities", "MAX_TABLE_PARTS",
           "ONCHIP_WORD_BITS", "PRESETS", "get_preset"]

#: RAM word width of the kernel's on-chip table units (``RecFabricKernel`` builds
#: ``OnChipTable.from_config(config, word_bits=256)``).
ONCHIP_WORD_BITS = 256
#: Most parts (copies x row-range shards) of one table a dispatcher placement lists (each part
#: is a unit, a descriptor index and a 32-bit first row in the placement entry).
MAX_TABLE_PARTS = 4
#: Products a packed int8 lower field holds (``processing_element.packed_segment_len(8, 8)``):
#: the longest cascade segment an int8 configuration may ask for.
_PACKED_SEGMENT = 7
#: Width of the top MLP's logits (the sigmoid table's input, ``numerics.SIGMOID_IN.bits``).
_LOGIT_BITS = 11


#: Fields the config hash includes only when they differ from these values (their defaults).
_HASHED_IF_NOT_DEFAULT = {"activation_banks": 4, "mlp_cascade": 0, "mlp_broadcast": 0,
                          "mlp_weight_share": 1, "split_pools": 0, "mlp_top_uram_engines": []}


def uram_word_fits(weight_share: int, data_bits: int) -> bool:
    """Whether a column's shared weight memory (``2 * weight_share * data_bits`` bits) suits
    a URAM288: wider than a 32-bit pair (one pair alone would waste more than half of the 72-bit
    word) and at most 72 bits."""
    return 32 < 2 * weight_share * data_bits <= 72


class ConfigError(ValueError):
    """An accelerator configuration is invalid; the message names the field and the value."""


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class KernelCapabilities:
    """What the kernel generated for one configuration can run: one description, as data.

    Derived from an :class:`AcceleratorConfig` by :meth:`AcceleratorConfig.capabilities` (as
    Gemmini's generated header derives its facts). The planner plans within it, the compiler's
    checks and the kernel-program step assert against it, and ``recfabric models`` decides with
    it whether a model runs. Every quantity has one unit, named in its field.

    Parameters
    ----------
    config, config_hash
        The configuration's name and hash.
    data_bits, acc_bits : int
        Element and accumulator widths (bits).
    interactions : tuple of str
        Interactions the datapath implements (``"concat"``, and ``"dot"`` with a dot unit).
    max_outputs : int
        Outputs (sigmoid scores) per request; more than 1 runs multi-task heads.
    bottom_mlp : bool
        Whether a bottom MLP exists (False: dense features go to the concatenation as they are).
    max_features, max_bag, max_dim, max_dense : int
        Sparse features (request slots), IDs per bag, elements per table row (a merged table
        counts its summed dims) and dense features, per request.
    max_concat, max_width : int
        Elements of the top MLP's input and of any layer's output.
    top_engines : tuple of (rows, cols)
        Systolic array of each top-MLP layer engine; there are ``len(top_engines)`` layers at most.
    logit_engines : tuple of int
        Engines whose output store holds ``_LOGIT_BITS``-bit logits (the last one only, unless the
        hidden elements are that wide). A model with fewer layers than engines is padded with
        identity layers, which must pass the logits through such an engine.
    mem_channels : int
        Off-chip memory channels with a lookup unit.
    channel_bytes, beat_bytes : int
        Bytes per channel and per memory beat.
    onchip_units : int
        On-chip table units.
    onchip_word_bits, onchip_words : int
        RAM word width (bits) and depth (words) of each on-chip unit.
    descriptors_per_unit : int
        Table descriptors (and dispatcher placement entries) one lookup or on-chip unit holds.
    table_copies : int
        Copies of a table the dispatcher serves lookups from, round-robin per bag
        (:mod:`~recfabric.hw.lookup_dispatcher`).
    row_split : bool
        Whether a table may be split by row range over units (the dispatcher routes each ID to
        the shard holding its row). A multi-hot table only if ``split_multi_hot``.
    max_merge : int
        Features per Cartesian-merged table (the dispatcher sums ``id_i * radix_i`` over any
        number of members).
    table_parts : int
        Parts (copies x row-range shards) one table may be held in: the dispatcher's placement
        entry lists that many (unit, descriptor, first row) parts.
    split_multi_hot : bool
        Whether a multi-hot table may be split by row range: the kernel has a
        :class:`~recfabric.hw.bag_combiner.BagCombiner` (``split_pools`` > 0), which adds the
        pieces of a bag spread over units (the planner study's hypothetical kernel: always).
    split_pools : int
        Multi-hot features of one model that may be split by row range (the combiner's pools).
    bottom_engines : tuple of (rows, cols)
        Systolic array of each bottom-MLP layer engine (empty: no bottom MLP).
    dot_lanes : int
        MACs per cycle of the dot-interaction unit (0: none).
    top_widths, bottom_widths : tuple of int
        Largest output width of each top / bottom engine (its weight memory's depth); engine
        ``l > 0`` takes at most ``widths[l - 1]`` inputs, engine 0 ``max_concat`` (top) or
        ``max_dense`` (bottom). Empty: ``max_width`` for every engine.
    """

    config: str
    config_hash: int
    data_bits: int
    acc_bits: int
    interactions: tuple
    max_outputs: int
    bottom_mlp: bool
    max_features: int
    max_bag: int
    max_dim: int
    max_dense: int
    max_concat: int
    max_width: int
    top_engines: tuple
    logit_engines: tuple
    mem_channels: int
    channel_bytes: int
    beat_bytes: int
    onchip_units: int
    onchip_word_bits: int
    onchip_words: int
    descriptors_per_unit: int
    table_copies: int
    row_split: bool
    max_merge: int
    table_parts: int = 1
    split_multi_hot: bool = False
    split_pools: int = 0
    bottom_engines: tuple = ()
    dot_lanes: int = 0
    top_widths: tuple = ()
    bottom_widths: tuple = ()

    @property
    def max_bottom_layers(self) -> int:
        return len(self.bottom_engines)

    @property
    def max_top_layers(self) -> int:
        return len(self.top_engines)

    @property
    def onchip_bytes(self) -> int:
        """Bytes of one on-chip unit: ``onchip_words`` whole words."""
        return self.onchip_words * self.onchip_word_bits // 8

    @property
    def logit_bits(self) -> int:
        return _LOGIT_BITS

    def engine_limits(self, which: str = "top") -> list:
        """``(max_in, max_out)`` of each ``which`` ("top" or "bottom") engine's weights."""
        engines = self.top_engines if which == "top" else self.bottom_engines
        widths = (self.top_widths if which == "top" else self.bottom_widths) or \
            (self.max_width,) * len(engines)
        first = self.max_concat if which == "top" else max(1, self.max_dense)
        return [(first if l == 0 else widths[l - 1], widths[l]) for l in range(len(engines))]

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["top_widths"] = list(self.top_widths)
        out["bottom_widths"] = list(self.bottom_widths)
        out["top_engines"] = [list(rc) for rc in self.top_engines]
        out["bottom_engines"] = [list(rc) for rc in self.bottom_engines]
        out["max_bottom_layers"] = self.max_bottom_layers
        out["logit_engines"] = list(self.logit_engines)
        out["interactions"] = list(self.interactions)
        out["onchip_bytes"] = self.onchip_bytes
        out["max_top_layers"] = self.max_top_layers
        return out


@dataclass(frozen=True)
class AcceleratorConfig:
    """Elaboration parameters of one RecFabric kernel.

    Parameters
    ----------
    name : str
        Preset name; not part of the hash (two presets with equal parameters are one design).
    data_bits : int
        Element width of embeddings, dense inputs, weights and activations: 8 or 16.
    acc_bits : int
        MAC accumulator width (numerics spec default: 32 for int8, 48 for int16).
    mem_channels : int
        AXI4 memory masters serving embedding lookups (HBM pseudo-channels or DDR banks).
    mem_data_width : int
        AXI data width in bits of each lookup master: 256 (HBM pseudo-channel) or 512 (DDR).
    mem_addr_width : int
        AXI address width (64 for Vitis kernels).
    mem_id_width : int
        AXI ID width of each lookup master.
    channel_bytes : int
        Capacity of one memory channel in bytes (256 MiB on U280/U50, 512 MiB on U55C).
    max_outstanding : int
        Reads each lookup unit keeps in flight (covers memory latency; >= 64 for HBM).
    onchip_units : int
        On-chip table units (each an independent BRAM/URAM lookup port).
    onchip_bytes : int
        Capacity of one on-chip table unit in bytes.
    max_features : int
        Sparse feature slots per request.
    max_bag : int
        Largest bag (IDs per feature per request).
    max_dim : int
        Largest embedding dim of one table (a Cartesian-merged table counts its summed dims).
    max_dense : int
        Largest dense feature count.
    max_concat : int
        Largest top-MLP input width (the concatenated vector).
    max_width : int
        Largest output width of any MLP layer.
    mlp_top_shapes, mlp_bottom_shapes : tuple of (rows, cols)
        Systolic array of each layer engine of the top / bottom MLP (rows = outputs computed
        in parallel, cols = inputs consumed per cycle). An engine's cols equal the previous
        engine's rows (:class:`~recfabric.hw.mlp.MLPPipeline`); sizing engines in
        proportion to their layers' MACs balances the pipeline's initiation interval. The
        number of engines is the layer limit (fewer layers are padded with identity layers).
        ``mlp_bottom_shapes`` empty: no bottom MLP (dense features go to the concatenation as
        they are); else a bottom :class:`~recfabric.hw.mlp.MLPPipeline` runs on the dense
        features of models that have one (others bypass it).
    mlp_top_widths, mlp_bottom_widths : tuple of int
        Largest output width each top / bottom engine holds weights for, one per engine (each
        ``<= max_width``); engine ``l > 0`` takes at most ``widths[l - 1]`` inputs, engine 0
        ``max_concat`` (top) or ``max_dense`` (bottom). An engine's weight memories are
        ``ceil(max_in / cols) * ceil(max_out / rows)`` words deep, so these size the weight
        RAM (:attr:`top_engine_widths`). Empty: ``max_width`` for every engine, except the
        last top engine, which only ever produces logits: ``max_outputs``.
    activation_banks : int
        Banks of every activation buffer of the top and bottom MLP pipelines (a power of two
        >= 2): the requests each stage may hold at once
        (:class:`~recfabric.hw.mlp.ActivationBuffer`). A request holds a bank from its producer
        allocating it until its consumer releases it, so the pipeline's initiation interval is
        at least that occupancy / banks (the cycle model's bank term,
        :class:`~recfabric.host.compiler.cycle_model.MLPCycleModel`). Each bank is one more
        request's worth of activation memory per buffer.
    weight_lutram_depth : int
        Weight memories at most this deep are LUT RAM (``ram_style "distributed"``), deeper
        ones block RAM (``"block"``); 0: no attribute (the synthesis tool chooses).
    mlp_cascade : int
        Columns per row-cascade segment of every MLP engine's systolic array (0: one cascade
        through all columns): each segment's partial sums start afresh, so a wave's input skew
        spans ``mlp_cascade`` columns instead of ``cols``, and a registered adder tree
        (``ceil(log2(segments))`` levels) sums each row's segments
        (:class:`~recfabric.hw.systolic_array.SystolicArray`). At int8 at most 7 (the packed
        lower field's products). Cuts the batch-1 latency; costs the adder trees' LUTs and FFs.
    mlp_broadcast : int
        Fanout of the registers that broadcast activations down every engine's columns (0:
        activations move one PE position per cycle, so rows finish one after another; else
        all rows finish together, ``ceil(log_fanout(slots)) - 1`` register levels down).
    mlp_weight_share : int
        Row pairs (int8 packed pairs, or int16 rows ``2s``, ``2s+1``) of an engine column that
        share one weight memory (1: one ``2 * data_bits``-bit memory per pair). Needs
        ``mlp_broadcast`` (a column's PEs then read the same address in the same cycle): ``G``
        pairs' weights at one address make one ``2 * G * data_bits``-bit word, e.g. four int8
        pairs fill one 512 x 72 RAMB36 where each alone takes a RAMB18
        (:class:`~recfabric.hw.systolic_array.SystolicArray`). Same timing, same results.
    mlp_top_uram_engines : tuple of int
        Top MLP engines whose weight memories are UltraRAM (``ram_style "ultra"``) whatever
        their depth (empty: none; the others follow ``weight_lutram_depth``). A URAM288 is
        4,096 x 72, so each weight memory of such an engine (``2 * mlp_weight_share *
        data_bits`` bits) must be 33..72 bits wide (:func:`uram_word_fits`): int16 needs
        ``mlp_weight_share`` 2 (four rows of a column per URAM), int8 3 or 4; one 32-bit pair
        per URAM would waste more than half of it.
        Frees block RAM or LUTs for the engines that stay there (the ``u50`` and ``u280``
        presets).
    dot_lanes : int
        MACs per cycle of the :class:`~recfabric.hw.interaction.DotInteraction` block (DLRM's
        pairwise dot interaction); 0: no such block (concatenation only).
    max_outputs : int
        Outputs (sigmoid scores) per request: multi-task heads. Every result record is one
        memory word, so at most ``mem_data_width / 16 - 1``.
    inflight : int
        Requests in flight between dispatch and score write-back.
    split_pools : int
        Multi-hot features per model that may be split by row range over memory channels (a
        table larger than a channel): the kernel then has a
        :class:`~recfabric.hw.bag_combiner.BagCombiner` with this many pools (accumulators per
        request in flight) that adds the pieces of such bags. 0: no combiner; only one-hot
        tables are split.
    clock_mhz : float
        Target kernel clock, used to convert simulated cycles into time.
    """

    name: str = "custom"
    data_bits: int = 16
    acc_bits: int = 48
    mem_channels: int = 4
    mem_data_width: int = 256
    mem_addr_width: int = 64
    mem_id_width: int = 6
    channel_bytes: int = 256 << 20
    max_outstanding: int = 64
    onchip_units: int = 2
    onchip_bytes: int = 64 << 10
    max_features: int = 16
    max_bag: int = 4
    max_dim: int = 32
    max_dense: int = 16
    max_concat: int = 128
    max_width: int = 64
    mlp_top_shapes: tuple = ((8, 4), (1, 8), (1, 1))
    mlp_bottom_shapes: tuple = ()
    mlp_top_widths: tuple = ()
    mlp_bottom_widths: tuple = ()
    weight_lutram_depth: int = 0
    activation_banks: int = 4
    mlp_cascade: int = 0
    mlp_broadcast: int = 0
    mlp_weight_share: int = 1
    mlp_top_uram_engines: tuple = ()
    dot_lanes: int = 0
    max_outputs: int = 1
    inflight: int = 8
    split_pools: int = 0
    clock_mhz: float = 250.0

    def __post_init__(self):
        def need(cond, field, msg):
            if not cond:
                raise ConfigError(f"{field} {msg}, not {getattr(self, field)!r}")
        for field in ("mlp_top_shapes", "mlp_bottom_shapes"):
            v = tuple(tuple(x) for x in getattr(self, field))
            object.__setattr__(self, field, v)
            for i, rc in enumerate(v):
                if len(rc) != 2 or any(not isinstance(x, int) or x < 1 for x in rc):
                    raise ConfigError(f"{field}[{i}] must be (rows, cols) positive integers, "
                                      f"not {rc!r}")
                if i and rc[1] != v[i - 1][0]:
                    raise ConfigError(f"{field}[{i}] has {rc[1]} cols; it must equal the "
                                      f"previous engine's {v[i - 1][0]} rows")
        if not self.mlp_top_shapes:
            raise ConfigError("mlp_top_shapes needs at least one engine")
        for field, shapes in (("mlp_top_widths", self.mlp_top_shapes),
                              ("mlp_bottom_widths", self.mlp_bottom_shapes)):
            v = tuple(getattr(self, field))
            object.__setattr__(self, field, v)
            if v and len(v) != len(shapes):
                raise ConfigError(f"{field} needs one width per engine ({len(shapes)}), not "
                                  f"{len(v)}: {v!r}")
            for i, w in enumerate(v):
                if not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= self.max_width:
                    raise ConfigError(f"{field}[{i}] must be an integer in 1..max_width "
                                      f"{self.max_width}, not {w!r}")
        if self.mlp_top_widths and self.mlp_top_widths[-1] < self.max_outputs:
            raise ConfigError(f"mlp_top_widths[-1] must hold max_outputs {self.max_outputs} "
                              f"logits, not {self.mlp_top_widths[-1]!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("mlp_top_shapes", "mlp_bottom_shapes", "mlp_top_widths",
                          "mlp_bottom_widths", "mlp_top_uram_engines"):
                continue
            if f.name == "name":
                need(isinstance(v, str) and v, "name", "must be a non-empty string")
            elif f.name == "clock_mhz":
                need(isinstance(v, (int, float)) and v > 0, f.name, "must be a positive number")
            else:
                need(isinstance(v, int) and not isinstance(v, bool), f.name, "must be an integer")
        need(self.data_bits in (8, 16), "data_bits", "must be 8 or 16")
        need(2 * self.data_bits + 4 <= self.acc_bits <= 64, "acc_bits",
             f"must be in {2 * self.data_bits + 4}..64")
        need(self.mem_channels >= 1, "mem_channels", "must be at least 1")
        need(self.mem_data_width in (32, 64, 128, 256, 512, 1024), "mem_data_width",
             "must be a power of two from 32 to 1024")
        need(32 <= self.mem_addr_width <= 64, "mem_addr_width", "must be in 32..64")
        need(1 <= self.mem_id_width <= 16, "mem_id_width", "must be in 1..16")
        need(self.channel_bytes >= 4096, "channel_bytes", "must be at least 4096")
        need(_pow2(self.max_outstanding) and self.max_outstanding >= 2, "max_outstanding",
             "must be a power of two >= 2")
        need(self.onchip_units >= 0, "onchip_units", "must be >= 0")
        need(self.onchip_bytes >= 0, "onchip_bytes", "must be >= 0")
        for f in ("max_features", "max_bag", "max_dim", "max_concat", "max_width", "inflight"):
            need(getattr(self, f) >= 1, f, "must be at least 1")
        need(self.max_dense >= 0, "max_dense", "must be >= 0")
        need(0 <= self.split_pools <= self.max_features, "split_pools",
             f"must be in 0..max_features {self.max_features}")
        need(self.weight_lutram_depth >= 0, "weight_lutram_depth", "must be >= 0")
        need(_pow2(self.activation_banks) and self.activation_banks >= 2, "activation_banks",
             "must be a power of two >= 2")
        need(self.mlp_cascade >= 0, "mlp_cascade", "must be >= 0")
        if self.data_bits == 8:
            need(self.mlp_cascade <= _PACKED_SEGMENT, "mlp_cascade",
                 f"must be at most {_PACKED_SEGMENT} at int8 (the packed lower field's products)")
        need(self.mlp_broadcast == 0 or self.mlp_broadcast >= 2, "mlp_broadcast",
             "must be 0 (off) or a fanout of at least 2")
        need(self.mlp_weight_share >= 1, "mlp_weight_share", "must be at least 1")
        need(self.mlp_weight_share == 1 or self.mlp_broadcast >= 2, "mlp_weight_share",
             f"needs mlp_broadcast >= 2 (a column's PEs read one address per cycle; "
             f"mlp_broadcast is {self.mlp_broadcast})")
        raw = self.mlp_top_uram_engines
        need(isinstance(raw, (tuple, list)), "mlp_top_uram_engines", "must be a list of engines")
        u = tuple(raw)
        if not (all(isinstance(e, int) and not isinstance(e, bool)
                    and 0 <= e < len(self.mlp_top_shapes) for e in u)
                and list(u) == sorted(set(u))):
            raise ConfigError(f"mlp_top_uram_engines must list top engines "
                              f"0..{len(self.mlp_top_shapes) - 1} in increasing order, not "
                              f"{raw!r}")
        object.__setattr__(self, "mlp_top_uram_engines", u)
        if u and not uram_word_fits(self.mlp_weight_share, self.data_bits):
            raise ConfigError(
                f"mlp_top_uram_engines {list(u)} needs weight memories of 33..72 bits (more "
                f"than one 32-bit URAM288 half, at most its 72-bit word), not "
                f"{2 * self.mlp_weight_share * self.data_bits} (2 * mlp_weight_share "
                f"{self.mlp_weight_share} * data_bits {self.data_bits})")
        need(0 <= self.dot_lanes <= self.mlp_top_shapes[0][1], "dot_lanes",
             f"must be in 0..{self.mlp_top_shapes[0][1]} (the first top engine's columns)")
        need(1 <= self.max_outputs <= self.mem_data_width // 16 - 1, "max_outputs",
             f"must be in 1..{self.mem_data_width // 16 - 1} (one result word per request)")
        need(_pow2(self.inflight), "inflight", "must be a power of two")
        need(self.max_dim * self.data_bits <= 64 * self.mem_data_width, "max_dim",
             "must fit a 64-beat burst")

    # ---- derived ------------------------------------------------------------------------

    @property
    def element_bytes(self) -> int:
        return self.data_bits // 8

    @property
    def beat_bytes(self) -> int:
        """Bytes per memory beat of a lookup master."""
        return self.mem_data_width // 8

    @property
    def elements_per_beat(self) -> int:
        return self.mem_data_width // self.data_bits

    @property
    def max_top_layers(self) -> int:
        return len(self.mlp_top_shapes)

    @property
    def max_bottom_layers(self) -> int:
        return len(self.mlp_bottom_shapes)

    @property
    def mac_units(self) -> int:
        """MAC units of all MLP engines (one per PE)."""
        return sum(r * c for r, c in self.mlp_top_shapes + self.mlp_bottom_shapes)

    @property
    def mlp_dsp_slices(self) -> int:
        """DSP48E2 slices of the MLP engines' multipliers: one per MAC unit, or one per two rows
        at int8 (two MACs per DSP, :class:`~recfabric.hw.processing_element.PackedPEPair`)."""
        def slots(r):
            return (r + 1) // 2 if self.data_bits == 8 and r >= 2 else r
        return sum(slots(r) * c for r, c in self.mlp_top_shapes + self.mlp_bottom_shapes)

    @property
    def top_engine_widths(self) -> tuple:
        """Largest output width of each top engine (:attr:`mlp_top_widths`, derived if empty)."""
        n = len(self.mlp_top_shapes)
        return self.mlp_top_widths or (self.max_width,) * (n - 1) + (self.max_outputs,)

    @property
    def bottom_engine_widths(self) -> tuple:
        """Largest output width of each bottom engine (:attr:`mlp_bottom_widths` or
        ``max_width``)."""
        return self.mlp_bottom_widths or (self.max_width,) * len(self.mlp_bottom_shapes)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for field in ("mlp_top_shapes", "mlp_bottom_shapes"):
            out[field] = [list(rc) for rc in out[field]]
        for field in ("mlp_top_widths", "mlp_bottom_widths", "mlp_top_uram_engines"):
            out[field] = list(out[field])
        return out

    @classmethod
    def from_json(cls, obj: dict) -> AcceleratorConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise ConfigError(f"unknown accelerator config field(s): {', '.join(unknown)}")
        return cls(**obj)

    @property
    def config_hash(self) -> int:
        """32-bit hash of every parameter except the name (the hardware exposes it).

        A field added after the hash was introduced enters it only when it differs from its
        default (:data:`_HASHED_IF_NOT_DEFAULT`), so configurations that leave it alone keep
        their hash, their Verilog and their compiled models."""
        params = {k: v for k, v in self.to_json().items()
                  if k != "name" and _HASHED_IF_NOT_DEFAULT.get(k, ...) != v}
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def capabilities(self) -> KernelCapabilities:
        """What the kernel generated for this configuration can run (see
        :class:`KernelCapabilities`)."""
        engines = self.mlp_top_shapes
        hidden_holds_logits = self.data_bits >= _LOGIT_BITS
        logit = tuple(range(len(engines))) if hidden_holds_logits else (len(engines) - 1,)
        words = max(1, self.onchip_bytes * 8 // ONCHIP_WORD_BITS) if self.onchip_units else 0
        return KernelCapabilities(
            config=self.name, config_hash=self.config_hash, data_bits=self.data_bits,
            acc_bits=self.acc_bits,
            interactions=("concat", "dot") if self.dot_lanes else ("concat",),
            max_outputs=self.max_outputs, bottom_mlp=bool(self.mlp_bottom_shapes),
            bottom_engines=self.mlp_bottom_shapes, dot_lanes=self.dot_lanes,
            max_features=self.max_features, max_bag=self.max_bag, max_dim=self.max_dim,
            max_dense=self.max_dense, max_concat=self.max_concat, max_width=self.max_width,
            top_engines=engines, logit_engines=logit, mem_channels=self.mem_channels,
            channel_bytes=self.channel_bytes, beat_bytes=self.beat_bytes,
            onchip_units=self.onchip_units, onchip_word_bits=ONCHIP_WORD_BITS,
            onchip_words=words, descriptors_per_unit=self.max_features,
            table_copies=self.table_parts, row_split=self.table_parts > 1,
            max_merge=self.max_features, table_parts=self.table_parts,
            split_multi_hot=self.table_parts > 1 and self.split_pools > 0,
            split_pools=self.split_pools if self.table_parts > 1 else 0,
            top_widths=self.top_engine_widths, bottom_widths=self.bottom_engine_widths)

    @property
    def table_parts(self) -> int:
        """Parts (copies x row-range shards) one table may be held in: at most
        :data:`MAX_TABLE_PARTS`, and no more than the kernel has lookup units."""
        return max(1, min(MAX_TABLE_PARTS, self.mem_channels + self.onchip_units))

    def replace(self, **changes) -> AcceleratorConfig:
        return dataclasses.replace(self, **changes)

    def with_weight_share(self, share: int) -> AcceleratorConfig:
        """This configuration with ``mlp_weight_share`` ``share``; its UltraRAM engines
        (``mlp_top_uram_engines``) are kept when that width suits a URAM288 word, else dropped
        (their memories then follow ``weight_lutram_depth``). For studies that vary the
        sharing."""
        keep = uram_word_fits(share, self.data_bits)
        return self.replace(mlp_weight_share=share,
                            mlp_top_uram_engines=self.mlp_top_uram_engines if keep else ())

    def with_latency_options(self, cascade: int, broadcast: int) -> AcceleratorConfig:
        """This configuration with ``mlp_cascade`` ``cascade`` and ``mlp_broadcast``
        ``broadcast``; without the broadcast, no shared weight memories (they need it) and so
        no UltraRAM engines. For studies of the latency options."""
        return self.replace(mlp_cascade=cascade, mlp_broadcast=broadcast,
                            mlp_weight_share=self.mlp_weight_share if broadcast else 1,
                            mlp_top_uram_engines=self.mlp_top_uram_engines if broadcast else ())


_TINY = AcceleratorConfig(
    name="tiny", data_bits=16, acc_bits=48, mem_channels=2, mem_data_width=256, mem_id_width=4,
    channel_bytes=1 << 20, max_outstanding=16, onchip_units=1, onchip_bytes=4 << 10,
    max_features=4, max_bag=4, max_dim=16, max_dense=4, max_concat=32, max_width=16,
    mlp_top_shapes=((4, 2), (1, 4), (1, 1)), inflight=4,
    clock_mhz=250.0)

_SMALL = AcceleratorConfig(
    name="small", data_bits=16, acc_bits=48, mem_channels=4, mem_data_width=256, mem_id_width=6,
    channel_bytes=16 << 20, max_outstanding=64, onchip_units=2, onchip_bytes=64 << 10,
    max_features=16, max_bag=4, max_dim=32, max_dense=16, max_concat=128, max_width=64,
    mlp_top_shapes=((8, 4), (1, 8), (1, 1)), mlp_bottom_shapes=((2, 1), (2, 2)), dot_lanes=1,
    max_outputs=2, inflight=8,
    clock_mhz=250.0)

# U280 / U50: 32 HBM pseudo-channels of 256 MiB, 256-bit AXI at the kernel side. MicroRec used
# 28-32 channels; 28 leaves room for request/score/weight masters. On-chip budget: 8 table units of
# 256 KiB (URAM). MLP engines sized for MicroRec's 352/876-1024-512-256-1 top MLPs: one pipeline
# cannot keep both >= 85% MAC-busy (the 876-wide first layer is 58% of the large model's MACs, the
# 352-wide one 35% of the small's; the best common split is ~81% for both, docs/mlp.md), so the
# engines keep the small model at II 176 and take the large one from II 448 to 240 (cycle model):
# 7,696 MACs (of the U280's 9,024 DSP48E2). The U50 (5,952 DSP48E2) keeps the former 5,904.
# Bottom MLP engines for DLRM Kaggle's 13-512-256-64-16: 704 MACs, initiation interval 256
# cycles (modelled), under the 368 of the 16-MAC dot-interaction unit (one Kaggle pair per
# cycle), which bounds Kaggle; up to 4 task heads per result record.
_U280 = AcceleratorConfig(
    name="u280", data_bits=16, acc_bits=48, mem_channels=28, mem_data_width=256, mem_id_width=6,
    channel_bytes=256 << 20, max_outstanding=64, onchip_units=8, onchip_bytes=256 << 10,
    max_features=128, max_bag=8, max_dim=64, max_dense=64, max_concat=1024, max_width=1024,
    mlp_top_shapes=((64, 60), (48, 64), (16, 48), (1, 16)),
    mlp_bottom_shapes=((32, 1), (16, 32), (8, 16), (4, 8)), dot_lanes=16, max_outputs=4,
    inflight=32, clock_mhz=250.0,
    # DIN's two 10M-row multi-hot tables are split over 3 channels each (docs/lookup.md)
    split_pools=4,
    # Weight memories sized for those MLPs (MicroRec's 1024-512-256-1 tops, Kaggle's
    # 13-512-256-64-16 bottom) rather than max_width everywhere, which needs ~3x the U280's
    # BRAM; the shallow ones in LUT RAM (the fit: host/bench/resources.py, README).
    mlp_top_widths=(1024, 512, 256, 4), mlp_bottom_widths=(512, 256, 64, 16),
    weight_lutram_depth=256,
    # Batch-1 latency (issue 9): row cascades in segments of 8 columns summed by adder trees,
    # activations broadcast down the columns at fanout 16. microrec-small 1,011 -> 742 cycles
    # modelled and simulated (the int16 waves alone, sum T_l = 464, keep it above 600 + memory
    # latency; docs/mlp.md).
    mlp_cascade=8, mlp_broadcast=16,
    # Engine 1's weights (176 words x 48 rows x 64 columns) in UltraRAM: four rows of a column
    # per URAM288 (two row pairs share a 64-bit memory, `mlp_weight_share` 2; the same block
    # RAM and LUT RAM elsewhere as one pair per memory), 768 URAM instead of ~270k LUTs of LUT
    # RAM; that room took engine 0 from 64x52 to 64x60 (microrec-large II 272 -> 240: 1.19x its
    # MAC bound; cycle model).
    mlp_weight_share=2, mlp_top_uram_engines=(1,))

PRESETS = {
    "tiny": _TINY,
    "small": _SMALL,
    "u280": _U280,
    # int8: two MACs per DSP48E2 (hw/processing_element.py, PackedPEPair): 14,936 MACs in
    # 7,480 DSP48E2 (top MLP); II 96 (microrec-small) / 120 (microrec-large: 1.15x its MAC
    # bound, 86.6% MAC-busy), cycle model (`tools/size_engines.py u280-int8 --small-ii 96`).
    # The first engine grew from 80x68 (large: 13 x 13 = 169 waves) to 88x88 (12 x 10 = 120)
    # within the block RAM because two packed pairs of a column share one weight memory
    # (`mlp_weight_share` 2: one 512 x 36 RAMB18 per two pairs, needs the broadcast): 968
    # BRAM36 for engine 0 instead of 1,936. 4 activation-buffer banks suffice with the
    # row-cascade segments and broadcast (without them the small model was bank-bound at II
    # 103-105 and needed 8; docs/mlp.md, "Sizing the u280 presets"). Its 16-bit weight pairs
    # are half as wide: block RAM from 129 words (the first engine's 144), so the 96- and
    # 88-deep engines (LUT RAM) and the first (BRAM) share the load.
    "u280-int8": _U280.replace(name="u280-int8", data_bits=8, acc_bits=32,
                               mlp_top_shapes=((88, 88), (64, 88), (24, 64), (1, 24)),
                               weight_lutram_depth=128, mlp_weight_share=2,
                               mlp_top_uram_engines=(),
                               # segments of 7 columns: a packed segment's lower field holds
                               # 7 products without a drain (docs/mlp.md)
                               mlp_cascade=7),
    # MT-WnD (DeepRecSys multi-task Wide & Deep: 1376-1024-512 trunk, three 512-256-128-1 heads
    # fused into 512-768-384-3) needs five top layers and a 1,376-wide concatenation: the u280
    # card with five top engines sized for its 2.6M MACs per inference (II 352 against a bound
    # of 335, cycle model; `u280` itself keeps its four engines, sized for MicroRec). 7,824 top +
    # 704 bottom MACs + 16 dot lanes = 8,544 of the U280's 9,024 DSP48E2.
    "u280-mt": _U280.replace(name="u280-mt", max_concat=1376,
                             mlp_top_shapes=((64, 64), (24, 64), (48, 24), (20, 48), (4, 20)),
                             # output widths per engine: 1024, 512, then the fused heads'
                             # 3 x 256 and 3 x 128, then the logits
                             mlp_top_widths=(1024, 512, 768, 384, 4),
                             # weight memories up to 320 words deep (engine 3's) in LUT RAM, the
                             # rest in block RAM: 1,712 BRAM36 (85%) and 226k LUTs (counted,
                             # tests/test_weight_memory_sizing.py); at 256, 1,952 BRAM36 (97%)
                             weight_lutram_depth=320, mlp_weight_share=1,
                             mlp_top_uram_engines=()),
    # U50: 5,952 DSP48E2. Top engines of 5,744 MACs + 16 dot lanes = 5,760 (96.8%), leaving 192
    # slices for the kernel's other multipliers; MicroRec II 192 small / 448 large (cycle model;
    # the U280's former 5,904-MAC engines gave 176 but left 32 slices). With u280's 704-MAC
    # bottom MLP they would need 6,464 slices, so the u50 has no bottom MLP: models with one
    # (kaggle, rmc*) do not run on it, and `recfabric models --config u50` says so.
    # Its first engine's weights (512 words) are UltraRAM (576 of 640 URAM with the on-chip
    # tables), so engines 1 and 2 (192 words) fit block RAM (1,344 BRAM36): as LUT RAM they
    # took 327k LUTs (counted) and the kernel 111.6% of the U50's LUTs (Yosys, docs/).
    "u50": _U280.replace(name="u50", mlp_top_shapes=((64, 32), (46, 64), (16, 46), (1, 16)),
                         mlp_bottom_shapes=(), mlp_bottom_widths=(), weight_lutram_depth=128,
                         mlp_top_uram_engines=(0,)),
    "u55c": _U280.replace(name="u55c", channel_bytes=512 << 20),
}


def get_preset(name: str) -> AcceleratorConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown accelerator config {name!r}; presets: "
                          f"{', '.join(PRESETS)}") from None
