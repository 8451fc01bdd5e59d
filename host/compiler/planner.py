"""Embedding-table planner: Cartesian merging and placement over memory channels and on-chip units.

A planner decides, for a :class:`~recfabric.host.model.spec.ModelSpec` and an
:class:`~recfabric.hw.config.AcceleratorConfig`, which one-hot features are merged into
Cartesian-product tables (one access returns every member's row), and where every (merged,
sharded, replicated) table lives: an off-chip memory channel at a byte offset, or an on-chip
table unit. All planners share one cost model and one result type, :class:`Plan`.

Cost model
----------
- Rows are stored off chip with a stride of a power-of-two number of beats (a row never crosses an
  AXI 4 KiB boundary when tables start on 4 KiB boundaries; address = base + (row << k)), as the
  lookup unit requires. A lookup reads only the beats that hold data:
  ``ceil(row_bytes / beat_bytes)`` beats.
- On chip, a row takes whole RAM words (the unit is word-addressed); a unit returns one row per
  cycle.
- Only what the kernel's capabilities allow is planned: merges of at most ``max_merge`` features,
  ``table_copies`` copies of a table, row splits only if ``row_split``, at most
  ``descriptors_per_unit`` tables per channel or unit (:class:`Layout`).
- A multi-hot feature with bag ``b`` costs ``b`` lookups per request (its worst case). A table
  replicated ``R`` times serves its bags round-robin, one whole bag per replica (the kernel's
  dispatcher; a bag is pooled whole by one unit), so over a stream each replica serves
  ``b / R`` lookups per request on average; it is charged ``ceil(b / R)``. Copies x row-range
  shards of one table are at most ``table_parts``. A table sharded by row range serves each
  lookup from the one shard holding the row; in the worst case all of a replica's lookups hit
  one shard, so every shard is charged the replica's full lookup count (a split multi-hot
  table's bag goes out as one piece per ID, each to the shard holding its row: a bag's beats
  may all land on one channel). The kernel splits multi-hot tables only if it has a bag
  combiner (``split_multi_hot``), and at most ``split_pools`` of them: :func:`plan` refuses a
  model with more multi-hot tables that fit neither one channel nor on chip, and any plan that
  splits more (the message ``check_program`` gives).
- **Rounds** (the objective) = the most loaded memory port's cycles per request: the busiest
  channel's beats per request, or an on-chip unit's lookups per request if that is larger.
  Ties are broken by **stored bytes** (off chip + on chip, including merge products, padding and
  replicas). ``storage_overhead`` = stored bytes / raw bytes - 1, raw bytes being
  ``sum(rows * dim * element_bytes)`` of the model's tables.

Planners
--------
``microrec``
    MicroRec's published heuristic (Jiang et al., MLSys 2021): only the ``n`` smallest one-hot
    tables are merge candidates, only pairs, the smallest paired with the largest among the
    candidates; the smallest remaining tables go on chip while they fit and the unit stays no
    slower than one off-chip round; the rest are spread over channels balancing the *number of
    tables* per channel. Its objective is MicroRec's: access rounds counted in tables per channel,
    ties broken by least storage; ``n`` is searched over every value. One deviation, needed to
    place MicroRec's own 10M-row tables on a configuration without DDR: a table larger than one
    channel is split by row range into the fewest channel-sized shards, each counted as a table.
    The plan it picks is then costed with the shared beat-aware model above.
``none``
    The same placement rules without Cartesian merging (MicroRec's ``n = 0``): the baseline.
``default``
    Beat-aware search: merges pairs and larger products of one-hot features greedily by least
    storage increase (a merge must save a beat or an on-chip lookup), shards tables larger than a
    channel, replicates multi-hot tables whose bag would otherwise dominate a channel, puts tables
    on chip, and packs the rest by access cost (largest first onto the least loaded channel that
    has room) for the smallest feasible round count. It evaluates every step of the merge search,
    the ``microrec`` plan and the ``none`` plan with the same cost model and returns the best by
    (rounds, stored bytes), so it is never worse than ``microrec``.

Only one-hot features are merged: a bag's IDs cannot be combined into one product row.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ..model.spec import ModelSpec
from .table_layout import TABLE_ALIGN, TableLayout, align_up

__all__ = ["PLANNERS", "Group", "Layout", "Plan", "PlanError", "TablePlacement", "plan",
           "study_capabilities", "oversized_tables", "split_pools_error", "TABLE_ALIGN"]

#: Planner names, the default first.
PLANNERS = ("default", "microrec", "none")
#: Largest row count one descriptor can hold (32-bit fields).
MAX_ROWS = (1 << 32) - 1
_MERGE_POOL = 40


class PlanError(ValueError):
    """A model's tables cannot be placed; the message names the table, its size and the limit."""


@dataclass(frozen=True)
class Layout:
    """What the planner may use, taken from a kernel's capabilities.

    Row geometry (strides, beats, on-chip words) is the one table layout,
    :class:`~recfabric.host.compiler.table_layout.TableLayout`; capacities and permissions come
    from :class:`~recfabric.hw.config.KernelCapabilities`, so the planner never plans what the
    kernel cannot serve.

    Parameters
    ----------
    element_bytes : int
        Bytes per embedding element (``data_bits / 8``).
    beat_bytes : int
        Bytes per memory beat of a lookup channel.
    channels : int
        Off-chip memory channels.
    channel_bytes : int
        Capacity of each channel.
    onchip_units : int
        On-chip table units.
    onchip_bytes : int
        Capacity of each on-chip unit in bytes (its RAM words times the word's bytes).
    max_dim : int
        Largest row width (elements) of one table, merged tables included.
    onchip_word_bytes : int
        Bytes of one on-chip RAM word: on-chip rows take whole words.
    table_copies : int
        Copies of a table the kernel serves from (1: no replication).
    row_split : bool
        Whether a table may be split by row range over channels.
    max_merge : int
        Features per Cartesian-merged table.
    tables_per_port : int
        Tables (descriptors) one channel or on-chip unit holds.
    table_parts : int
        Parts (copies x row-range shards) one table may be held in.
    """

    element_bytes: int
    beat_bytes: int
    channels: int
    channel_bytes: int
    onchip_units: int
    onchip_bytes: int
    max_dim: int
    onchip_word_bytes: int = 32
    table_copies: int = 1
    row_split: bool = False
    max_merge: int = 2
    tables_per_port: int = 1 << 16
    table_parts: int = 1 << 16

    @classmethod
    def from_capabilities(cls, caps) -> Layout:
        return cls(caps.data_bits // 8, caps.beat_bytes, caps.mem_channels, caps.channel_bytes,
                   caps.onchip_units, caps.onchip_bytes, caps.max_dim,
                   caps.onchip_word_bits // 8, caps.table_copies, caps.row_split,
                   caps.max_merge, caps.descriptors_per_unit, caps.table_parts)

    @classmethod
    def from_config(cls, config) -> Layout:
        return cls.from_capabilities(config.capabilities())

    @property
    def table(self) -> TableLayout:
        """The row geometry (:class:`TableLayout`)."""
        return _table_layout(self.element_bytes * 8, self.beat_bytes, self.onchip_word_bytes * 8)

    def row_beats(self, dim: int) -> int:
        """Beats one lookup of a ``dim``-element row reads."""
        return self.table.row_beats(dim)

    def offchip_stride(self, dim: int) -> int:
        """Off-chip row stride in bytes: a power-of-two number of beats (see
        :mod:`~recfabric.host.compiler.table_layout`)."""
        return self.table.offchip_stride(dim)

    def onchip_stride(self, dim: int) -> int:
        """On-chip row stride in bytes: whole RAM words."""
        return self.table.onchip_stride(dim)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Group:
    """A logical lookup table: one feature, or a Cartesian product of one-hot features.

    Merged row index of member IDs ``id_0, id_1, ...`` (members in ``features`` order) is
    ``sum(id_i * radix_i)`` with ``radix_last = 1`` and ``radix_i = radix_{i+1} * rows_{i+1}``:
    for a pair ``(a, b)``, ``id_a * rows_b + id_b``. The row holds the members' rows side by side:
    ``[row_a | row_b]``.

    Parameters
    ----------
    features : tuple of int
        Indices (into ``spec.sparse``) of the members, ascending.
    member_rows, member_dims : tuple of int
        Each member's rows and dim.
    bag : int
        Lookups per request (1 for any merged table).
    replicas, shards : int
        Copies of the table, and row-range shards per copy.
    """

    features: tuple
    member_rows: tuple
    member_dims: tuple
    bag: int
    replicas: int = 1
    shards: int = 1

    @property
    def rows(self) -> int:
        return math.prod(self.member_rows)

    @property
    def dim(self) -> int:
        return sum(self.member_dims)

    @property
    def radices(self) -> tuple:
        out, r = [], 1
        for rows in reversed(self.member_rows):
            out.append(r)
            r *= rows
        return tuple(reversed(out))

    @property
    def elem_offsets(self) -> tuple:
        return tuple(sum(self.member_dims[:i]) for i in range(len(self.member_dims)))

    def merged_row(self, ids) -> int:
        """Row index of the product table for member IDs ``ids`` (works on numpy arrays too)."""
        return sum(i * r for i, r in zip(ids, self.radices))

    def split_row(self, row):
        """Member IDs of product row ``row`` (inverse of :meth:`merged_row`)."""
        return tuple((row // r) % n for r, n in zip(self.radices, self.member_rows))

    def to_json(self, spec: ModelSpec | None = None) -> dict:
        out = {"features": list(self.features), "rows": self.rows, "dim": self.dim,
               "bag": self.bag, "replicas": self.replicas, "shards": self.shards,
               "members": [{"feature": f, "rows": r, "dim": d, "elem_offset": o, "radix": x}
                           for f, r, d, o, x in zip(self.features, self.member_rows,
                                                    self.member_dims, self.elem_offsets,
                                                    self.radices)]}
        if spec is not None:
            for m in out["members"]:
                m["name"] = spec.sparse[m["feature"]].name
        return out

    @classmethod
    def from_json(cls, obj) -> Group:
        ms = obj["members"]
        return cls(tuple(m["feature"] for m in ms), tuple(m["rows"] for m in ms),
                   tuple(m["dim"] for m in ms), obj["bag"], obj["replicas"], obj["shards"])


@functools.lru_cache(maxsize=32)
def _table_layout(data_bits: int, beat_bytes: int, onchip_word_bits: int) -> TableLayout:
    """One (frozen) TableLayout per geometry: the packing search asks for it ~10^5 times per
    plan at MicroRec's scale, and building one validates its fields."""
    return TableLayout(data_bits, beat_bytes, onchip_word_bits)


def _single(spec: ModelSpec, i: int) -> Group:
    f = spec.sparse[i]
    return Group((i,), (f.rows,), (f.dim,), f.bag)


def _merge(a: Group, b: Group) -> Group:
    members = sorted(zip(a.features + b.features, a.member_rows + b.member_rows,
                         a.member_dims + b.member_dims))
    return Group(tuple(m[0] for m in members), tuple(m[1] for m in members),
                 tuple(m[2] for m in members), 1)


@dataclass(frozen=True)
class TablePlacement:
    """One physical table (one descriptor): a row range of one replica of a group.

    Parameters
    ----------
    group, replica, shard : int
        Which group, which copy, which row-range shard.
    row_base, rows : int
        The group rows held: ``row_base .. row_base + rows - 1``.
    memory : str
        ``"channel"`` (off-chip) or ``"onchip"``.
    location : int
        Channel or on-chip unit index.
    offset : int
        Byte offset of row ``row_base`` within the channel or unit image.
    stride : int
        Row stride in bytes.
    lookups : int
        Worst-case lookups per request this table serves.
    load : int
        Worst-case port cycles per request (beats off chip, lookups on chip).
    """

    group: int
    replica: int
    shard: int
    row_base: int
    rows: int
    memory: str
    location: int
    offset: int
    stride: int
    lookups: int
    load: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.stride

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out["bytes"] = self.nbytes
        return out

    @classmethod
    def from_json(cls, obj) -> TablePlacement:
        return cls(**{k: v for k, v in obj.items() if k != "bytes"})


@dataclass(frozen=True)
class Plan:
    """A placement and its cost. See the module docstring for the cost model.

    Parameters
    ----------
    planner : str
        Which planner made it (``default`` notes which candidate won in ``notes``).
    model, config : str
        Model and configuration names.
    layout : Layout
    groups : tuple of Group
    tables : tuple of TablePlacement
        Off-chip tables in (channel, offset) order, then on-chip ones in (unit, offset) order.
    notes : tuple of str
    """

    planner: str
    model: str
    config: str
    layout: Layout
    groups: tuple
    tables: tuple
    raw_bytes: int
    notes: tuple = ()

    # ---- figures --------------------------------------------------------------------------

    def _per_port(self, memory: str, count: int, value) -> tuple:
        out = [0] * count
        seen = set()
        for t in self.tables:
            if t.memory != memory:
                continue
            key = (t.location, t.group, t.replica)
            v = value(t)
            if v is None:
                continue
            if value is _load:
                # all shards of one replica on one port share that replica's lookups
                if key in seen:
                    continue
                seen.add(key)
            out[t.location] += v
        return tuple(out)

    @property
    def channel_load(self) -> tuple:
        """Worst-case beats per request of every channel."""
        return self._per_port("channel", self.layout.channels, _load)

    @property
    def onchip_load(self) -> tuple:
        """Worst-case lookups per request of every on-chip unit."""
        return self._per_port("onchip", self.layout.onchip_units, _load)

    @property
    def channel_used(self) -> tuple:
        """Bytes used in every channel (its image size)."""
        return tuple(_extent(self.tables, "channel", c) for c in range(self.layout.channels))

    @property
    def onchip_used(self) -> tuple:
        return tuple(_extent(self.tables, "onchip", u) for u in range(self.layout.onchip_units))

    @property
    def rounds(self) -> int:
        return max(self.channel_load + self.onchip_load + (0,))

    @property
    def pooled_inputs(self) -> int:
        """Pooled vectors (and bag counts) per request into the kernel's concatenation side, one
        per cycle through the arbiter and the bag combiner: one per group, and a split
        multi-hot group's bag as up to ``bag`` pieces plus its count
        (:mod:`recfabric.hw.bag_combiner`)."""
        return sum(g.bag + 1 if g.shards > 1 and g.bag > 1 else 1 for g in self.groups)

    @property
    def stored_bytes(self) -> int:
        return sum(t.nbytes for t in self.tables)

    @property
    def storage_overhead(self) -> float:
        return self.stored_bytes / self.raw_bytes - 1.0 if self.raw_bytes else 0.0

    @property
    def tables_per_channel(self) -> int:
        """MicroRec's round count: most tables (descriptors) on one channel."""
        counts = [0] * self.layout.channels
        for t in self.tables:
            if t.memory == "channel":
                counts[t.location] += 1
        return max(counts + [0])

    def cost(self) -> tuple:
        """``(rounds, stored_bytes)``: smaller is better, compared in this order."""
        return self.rounds, self.stored_bytes

    def feature_group(self, feature: int) -> tuple:
        """``(group index, member position)`` serving ``feature``."""
        for g, group in enumerate(self.groups):
            if feature in group.features:
                return g, group.features.index(feature)
        raise KeyError(f"feature {feature} is served by no group")

    def figures(self) -> dict:
        return {
            "rounds": self.rounds,
            "tables_per_channel": self.tables_per_channel,
            "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
            "storage_overhead": round(self.storage_overhead, 6),
            "offchip_bytes": sum(self.channel_used),
            "onchip_bytes": sum(self.onchip_used),
            "onchip_capacity": self.layout.onchip_units * self.layout.onchip_bytes,
            "tables_onchip": sum(t.memory == "onchip" for t in self.tables),
            "merged_groups": sum(len(g.features) > 1 for g in self.groups),
            "groups": len(self.groups),
            "channel_load": list(self.channel_load),
            "onchip_load": list(self.onchip_load),
            "channel_used": list(self.channel_used),
            "onchip_used": list(self.onchip_used),
        }

    # ---- JSON and text --------------------------------------------------------------------

    def to_json(self, spec: ModelSpec | None = None) -> dict:
        return {
            "planner": self.planner, "model": self.model, "config": self.config,
            "layout": self.layout.to_json(),
            "figures": self.figures(),
            "groups": [g.to_json(spec) for g in self.groups],
            "tables": [t.to_json() for t in self.tables],
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, obj) -> Plan:
        return cls(obj["planner"], obj["model"], obj["config"], Layout(**obj["layout"]),
                   tuple(Group.from_json(g) for g in obj["groups"]),
                   tuple(TablePlacement.from_json(t) for t in obj["tables"]),
                   obj["figures"]["raw_bytes"], tuple(obj["notes"]))

    def text(self, spec: ModelSpec) -> str:
        """Human-readable placement table and cost."""
        lines = [f"plan {self.planner} for model {self.model} on config {self.config}: "
                 f"{self.rounds} rounds per request, stored {_mib(self.stored_bytes)} "
                 f"(raw {_mib(self.raw_bytes)}, overhead {100 * self.storage_overhead:+.2f}%), "
                 f"on chip {_mib(sum(self.onchip_used))} of "
                 f"{_mib(self.layout.onchip_units * self.layout.onchip_bytes)}"]
        lines.append(f"{'memory':<10} {'offset':>12} {'rows':>12} {'stride':>6} {'load':>5}  "
                     "table")
        for t in self.tables:
            g = self.groups[t.group]
            names = " x ".join(spec.sparse[f].name for f in g.features)
            extra = []
            if g.replicas > 1:
                extra.append(f"replica {t.replica}/{g.replicas}")
            if g.shards > 1:
                extra.append(f"rows {t.row_base}..{t.row_base + t.rows - 1}")
            if g.bag > 1:
                extra.append(f"bag {g.bag}")
            where = f"{'ch' if t.memory == 'channel' else 'chip'}{t.location}"
            lines.append(f"{where:<10} {t.offset:>12} {t.rows:>12} {t.stride:>6} {t.load:>5}  "
                         f"{names}{' (' + ', '.join(extra) + ')' if extra else ''}")
        lines.append("channel load (beats/request): "
                     + " ".join(map(str, self.channel_load)))
        if self.layout.onchip_units:
            lines.append("on-chip load (lookups/request): "
                         + " ".join(map(str, self.onchip_load)))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _load(t):
    return t.load


def _extent(tables, memory, location) -> int:
    return max([t.offset + t.nbytes for t in tables
                if t.memory == memory and t.location == location] + [0])


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


# ---- shared placement machinery ----------------------------------------------------------

@dataclass
class _Item:
    group: int
    replica: int
    shard: int
    row_base: int
    rows: int
    nbytes: int
    lookups: int
    load: int


def _shard_rows(layout: Layout, g: Group) -> list:
    """Row ranges of the fewest equal shards that each fit one channel."""
    stride = layout.offchip_stride(g.dim)
    per_channel = min(layout.channel_bytes // stride, MAX_ROWS)
    if per_channel < 1:
        raise PlanError(f"a row of {g.dim} elements ({stride} bytes) does not fit a "
                        f"{layout.channel_bytes}-byte channel")
    n = -(-g.rows // per_channel)
    if n > layout.table_parts:
        raise PlanError(f"a table of {g.rows:,} rows x {g.dim} elements ({g.rows * stride:,} "
                        f"bytes) needs {n} channel-sized row ranges; the kernel holds a table "
                        f"in at most {layout.table_parts} parts")
    if n > 1 and not layout.row_split:
        raise PlanError(f"a table of {g.rows:,} rows x {g.dim} elements ({g.rows * stride:,} "
                        f"bytes) does not fit one {layout.channel_bytes:,}-byte channel, and the "
                        "kernel cannot split a table over channels (row_split is False)")
    size = -(-g.rows // n)
    return [(s * size, min(size, g.rows - s * size)) for s in range(n)]


def _offchip_items(layout: Layout, gi: int, g: Group, replicas: int) -> list:
    stride = layout.offchip_stride(g.dim)
    lookups = -(-g.bag // replicas)
    load = lookups * layout.row_beats(g.dim)
    return [_Item(gi, r, s, base, rows, rows * stride, lookups, load)
            for r in range(replicas) for s, (base, rows) in enumerate(_shard_rows(layout, g))]


def _onchip_fits(layout: Layout, g: Group) -> bool:
    return (layout.onchip_units > 0
            and g.rows * layout.onchip_stride(g.dim) <= layout.onchip_bytes)


class _Ports:
    """Load and space bookkeeping of channels or units (tables placed back to back)."""

    def __init__(self, count: int, capacity: int, align, max_tables: int):
        self.max_tables = max_tables
        self.load = [0] * count
        self.count = [0] * count
        self.used = [0] * count
        self.capacity = capacity
        self.align = align
        self.items = [[] for _ in range(count)]

    def fits(self, p: int, nbytes: int, stride: int) -> bool:
        return (self.count[p] < self.max_tables
                and align_up(self.used[p], self.align(stride)) + nbytes <= self.capacity)

    def put(self, p: int, item: _Item, stride: int):
        off = align_up(self.used[p], self.align(stride))
        self.used[p] = off + item.nbytes
        self.load[p] += item.load
        self.count[p] += 1
        self.items[p].append((item, off))


def _build(planner, spec, config_name, layout, groups, placed_off, placed_on, notes=()) -> Plan:
    """Assemble a Plan from per-port item lists; ``groups`` get their replica/shard counts."""
    reps, shards = {}, {}
    for ports in (placed_off, placed_on):
        for items in ports:
            for it, _ in items:
                reps[it.group] = max(reps.get(it.group, 0), it.replica + 1)
                shards[it.group] = max(shards.get(it.group, 0), it.shard + 1)
    groups = tuple(Group(g.features, g.member_rows, g.member_dims, g.bag, reps[i], shards[i])
                   for i, g in enumerate(groups))
    tables = []
    for memory, ports, stride in (("channel", placed_off, layout.offchip_stride),
                                  ("onchip", placed_on, layout.onchip_stride)):
        for p, items in enumerate(ports):
            for it, off in items:
                tables.append(TablePlacement(it.group, it.replica, it.shard, it.row_base, it.rows,
                                             memory, p, off, stride(groups[it.group].dim),
                                             it.lookups, it.load))
    raw = spec.table_bytes(layout.element_bytes)
    return Plan(planner, spec.name, config_name, layout, groups, tuple(tables), raw, tuple(notes))


def _capacity_error(spec, layout, groups, item) -> PlanError:
    g = groups[item.group]
    names = " x ".join(spec.sparse[f].name for f in g.features)
    total = sum(g.rows * layout.offchip_stride(g.dim) for g in groups)
    return PlanError(
        f"table {names!r} ({g.rows:,} rows x {g.dim} elements, {item.nbytes:,} bytes for rows "
        f"{item.row_base}..{item.row_base + item.rows - 1}) does not fit: no channel has room "
        f"left; the model needs {total:,} bytes off chip and the {layout.channels} channels hold "
        f"{layout.channels * layout.channel_bytes:,} bytes ({layout.channel_bytes:,} each)")


# ---- MicroRec's heuristic ----------------------------------------------------------------

def _microrec_place(spec, layout, groups):
    """MicroRec placement of ``groups``: returns (objective, channel ports, unit ports)."""
    items = []
    for gi, g in enumerate(groups):
        items.extend(_offchip_items(layout, gi, g, 1))
    # smallest remaining tables on chip while they fit and stay no slower than an off-chip round
    units = _Ports(layout.onchip_units, layout.onchip_bytes,
                   lambda s: layout.onchip_word_bytes, layout.tables_per_port)
    on = set()
    n_off = len(items)
    for it in sorted(items, key=lambda it: (it.nbytes, it.group)):
        g = groups[it.group]
        if len(_shard_rows(layout, g)) > 1 or not _onchip_fits(layout, g):
            break
        rounds_after = max(1, -(-(n_off - 1) // layout.channels))
        nbytes = g.rows * layout.onchip_stride(g.dim)
        stride = layout.onchip_stride(g.dim)
        choice = [u for u in range(layout.onchip_units)
                  if units.fits(u, nbytes, stride) and units.count[u] + 1 <= rounds_after]
        if not choice:
            break
        u = min(choice, key=lambda u: (units.count[u], u))
        units.put(u, _Item(it.group, 0, 0, 0, g.rows, nbytes, g.bag, g.bag), stride)
        on.add(id(it))
        n_off -= 1
    # spread the rest balancing the number of tables per channel (largest first, for space)
    chans = _Ports(layout.channels, layout.channel_bytes, lambda s: TABLE_ALIGN,
                   layout.tables_per_port)
    for it in sorted((it for it in items if id(it) not in on),
                     key=lambda it: (-it.nbytes, it.group, it.replica, it.shard)):
        ok = [c for c in range(layout.channels) if chans.fits(c, it.nbytes, 0)]
        if not ok:
            raise _capacity_error(spec, layout, groups, it)
        c = min(ok, key=lambda c: (chans.count[c], c))
        chans.put(c, it, 0)
    objective = max(chans.count + units.count + [0])
    return objective, chans.items, units.items


def _microrec_groups(spec, layout, onehot, n):
    """Groups after MicroRec's pairing of the ``n`` smallest one-hot tables ``onehot[:n]``."""
    cands = onehot[:n] if layout.max_merge >= 2 else []
    n = len(cands)
    merged, used = [], set()
    for k in range(n // 2):
        m = _merge(_single(spec, cands[k]), _single(spec, cands[n - 1 - k]))
        if (m.dim <= layout.max_dim and m.rows <= MAX_ROWS
                and m.rows * layout.offchip_stride(m.dim) <= layout.channel_bytes):
            merged.append(m)
            used.update(m.features)
    groups = [_single(spec, i) for i in range(len(spec.sparse)) if i not in used] + merged
    groups.sort(key=lambda g: g.features)
    return groups, bool(merged)


def _onehot_by_size(spec):
    return sorted((i for i, f in enumerate(spec.sparse) if f.bag == 1),
                  key=lambda i: (spec.sparse[i].rows * spec.sparse[i].dim, i))


def plan_microrec(spec: ModelSpec, layout: Layout, config_name: str = "custom", *,
                  merge: bool = True) -> Plan:
    """MicroRec's heuristic (``merge=False``: the ``none`` baseline). See the module docstring."""
    onehot = _onehot_by_size(spec)
    best = None
    for n in range(len(onehot) + 1) if merge else (0,):
        groups, merged = _microrec_groups(spec, layout, onehot, n)
        if n and not merged:
            continue
        try:
            objective, chans, units = _microrec_place(spec, layout, groups)
        except PlanError:
            if n == 0:
                raise
            continue  # this n's products do not fit: MicroRec rejects it
        plan_ = _build("microrec" if merge else "none", spec, config_name, layout, groups,
                       chans, units, (f"MicroRec candidates n = {n}, objective "
                                      f"{objective} tables per port",))
        key = (objective, plan_.stored_bytes)
        if best is None or key < best[0]:
            best = (key, plan_)
    return best[1]


# ---- the default planner -----------------------------------------------------------------

def _pack(spec, layout, groups, rounds, split=1):
    """Place ``groups`` with no port above ``rounds``; None if this greedy packing cannot.

    Multi-hot tables get the fewest replicas that bring one replica's load to at most
    ``rounds / split`` (``split`` > 1 cuts them finer, to pack better at a storage cost).
    """
    units = _Ports(layout.onchip_units, layout.onchip_bytes,
                   lambda s: layout.onchip_word_bytes, layout.tables_per_port)
    off_groups = []
    for gi in sorted(range(len(groups)),
                     key=lambda i: (groups[i].rows * layout.onchip_stride(groups[i].dim), i)):
        g = groups[gi]
        stride = layout.onchip_stride(g.dim)
        nbytes = g.rows * stride
        choice = [u for u in range(layout.onchip_units)
                  if g.bag <= rounds and _onchip_fits(layout, g)
                  and units.fits(u, nbytes, stride) and units.load[u] + g.bag <= rounds]
        if choice:
            u = min(choice, key=lambda u: (units.load[u], u))
            units.put(u, _Item(gi, 0, 0, 0, g.rows, nbytes, g.bag, g.bag), stride)
        else:
            off_groups.append(gi)
    items = []
    for gi in off_groups:
        g = groups[gi]
        beats = layout.row_beats(g.dim)
        if beats > rounds:
            return None
        per_replica = max(1, rounds // split // beats)
        shards = len(_shard_rows(layout, g))
        replicas = min(layout.table_copies, max(1, layout.table_parts // shards),
                       -(-g.bag // per_replica))
        items.extend(_offchip_items(layout, gi, g, replicas))
    chans = _Ports(layout.channels, layout.channel_bytes, lambda s: TABLE_ALIGN,
                   layout.tables_per_port)
    where = {}
    for it in sorted(items, key=lambda it: (-it.load, -it.nbytes, it.group, it.replica,
                                            it.shard)):
        busy = where.setdefault(it.group, set())
        ok = [c for c in range(layout.channels)
              if chans.load[c] + it.load <= rounds and chans.fits(c, it.nbytes, 0)]
        if not ok:
            return None
        # spread one group's replicas and shards over distinct channels when possible
        c = min(ok, key=lambda c: (c in busy, chans.load[c], chans.used[c], c))
        chans.put(c, it, 0)
        busy.add(c)
    return chans.items, units.items


def _best_packing(spec, layout, config_name, groups, notes=()):
    """Plan for the smallest round count the greedy packing reaches (binary search), or None."""
    splits = (1, 2, 3, 4) if any(g.bag > 1 for g in groups) else (1,)

    def feasible(r):
        for k in splits:
            result = _pack(spec, layout, groups, r, k)
            if result is not None:
                return result
        return None
    total = sum(g.bag * layout.row_beats(g.dim) * len(_shard_rows(layout, g)) for g in groups)
    hi = 1
    result = feasible(hi)
    while result is None and hi <= total:
        hi *= 2
        result = feasible(hi)
    if result is None:
        return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r = feasible(mid)
        if r is None:
            lo = mid
        else:
            hi, result = mid, r
    return _build("default", spec, config_name, layout, groups, *result, notes)


def _best_merge(layout, groups):
    """Merge of two one-hot groups with the least storage increase, or None.

    Only the smallest groups are considered; a merge must fit one channel and ``max_dim``, and
    save a beat per request or fit on chip (where it saves a unit lookup).
    """
    pool = sorted((i for i, g in enumerate(groups) if g.bag == 1),
                  key=lambda i: (groups[i].rows * layout.offchip_stride(groups[i].dim), i))
    pool = pool[:_MERGE_POOL]
    best = None
    for x in range(len(pool)):
        a = groups[pool[x]]
        for y in range(x + 1, len(pool)):
            b = groups[pool[y]]
            dim, rows = a.dim + b.dim, a.rows * b.rows
            if len(a.features) + len(b.features) > layout.max_merge:
                continue
            if dim > layout.max_dim or rows > MAX_ROWS:
                continue
            nbytes = rows * layout.offchip_stride(dim)
            if nbytes > layout.channel_bytes:
                continue
            saves_beat = layout.row_beats(dim) < layout.row_beats(a.dim) + layout.row_beats(b.dim)
            onchip = layout.onchip_units and rows * layout.onchip_stride(dim) <= layout.onchip_bytes
            if not (saves_beat or onchip):
                continue
            cost = (nbytes - a.rows * layout.offchip_stride(a.dim)
                    - b.rows * layout.offchip_stride(b.dim))
            key = (cost, min(pool[x], pool[y]), max(pool[x], pool[y]))
            if best is None or key < best:
                best = key
    return None if best is None else best[1:]


def _greedy(spec, layout, config_name, groups, label):
    """Best plan along a greedy merge path starting at ``groups``."""
    best = _best_packing(spec, layout, config_name, groups, (f"{label}, greedy step 0",))
    step = 0
    while True:
        pair = _best_merge(layout, groups)
        if pair is None:
            return best
        step += 1
        merged = _merge(groups[pair[0]], groups[pair[1]])
        groups = sorted([g for i, g in enumerate(groups) if i not in pair] + [merged],
                        key=lambda g: g.features)
        p = _best_packing(spec, layout, config_name, groups, (f"{label}, greedy step {step}",))
        if p is not None and (best is None or p.cost() < best.cost()):
            best = p


def _better(a, b):
    return b if a is None or (b is not None and b.cost() < a.cost()) else a


def plan_default(spec: ModelSpec, layout: Layout, config_name: str = "custom", *,
                 merge: bool = True, baselines: bool = True) -> Plan:
    """The default planner; see the module docstring.

    Candidates, all costed by the beat-aware model: the greedy least-storage merge path from
    unmerged tables; MicroRec's pairings (every ``n``) packed by access cost, each also extended
    by the greedy path; and, with ``baselines``, the ``microrec`` and ``none`` plans themselves.
    ``merge=False`` keeps every table unmerged (an ablation).
    """
    singles = [_single(spec, i) for i in range(len(spec.sparse))]
    if not merge:
        best = _best_packing(spec, layout, config_name, singles, ("no merging",))
    else:
        best = _greedy(spec, layout, config_name, singles, "from unmerged tables")
        onehot = _onehot_by_size(spec)
        pairing = None
        for n in range(2, len(onehot) + 1):
            groups, merged = _microrec_groups(spec, layout, onehot, n)
            if merged:
                p = _best_packing(spec, layout, config_name, groups,
                                  (f"MicroRec pairing n = {n}, packed by access cost",))
                if p is not None and (pairing is None or p.cost() < pairing[0].cost()):
                    pairing = (p, groups, n)
        if pairing is not None:
            best = _better(best, pairing[0])
            best = _better(best, _greedy(spec, layout, config_name, pairing[1],
                                         f"from MicroRec pairing n = {pairing[2]}"))
    if baselines:
        for name, kw in (("microrec", {"merge": True}), ("none", {"merge": False})):
            try:
                p = plan_microrec(spec, layout, config_name, **kw)
            except PlanError:
                continue
            if best is None or p.cost() < best.cost():
                best = Plan("default", p.model, p.config, p.layout, p.groups, p.tables,
                            p.raw_bytes, (f"the {name} heuristic's plan was the best candidate",
                                          *p.notes))
    if best is None:
        # nothing packs: let MicroRec's placement name the table that finds no room
        _microrec_place(spec, layout, singles)
        raise PlanError(f"model {spec.name!r} does not fit the configuration's memories")
    return best


def study_capabilities(config):
    """Capabilities of a *hypothetical* kernel of ``config``'s size that splits tables by row
    range, serves any number of table copies and merges any number of features.

    The planner comparison (``recfabric plan --study``, ``plan --all``; docs/compiler.md) plans
    for it, to compare the planning algorithms at MicroRec's scale; what the real kernel runs is
    planned with ``config.capabilities()``.
    """
    import dataclasses  # noqa: PLC0415

    return dataclasses.replace(config.capabilities(), table_copies=1 << 16, row_split=True,
                               max_merge=1 << 16, descriptors_per_unit=1 << 16,
                               table_parts=1 << 16, split_multi_hot=True,
                               split_pools=1 << 16)


def oversized_tables(spec: ModelSpec, caps) -> list[str]:
    """One message per table no plan can place on the kernel (checked before anything else):
    larger than a channel when the kernel cannot split it (no row splits, or a multi-hot table
    on a kernel that splits one-hot tables only), or needing more channel-sized row ranges
    than a table's ``table_parts``; and one for more multi-hot tables that fit neither a
    channel nor on chip (so must be split) than the kernel's ``split_pools``."""
    layout = Layout.from_capabilities(caps)
    split_multi = getattr(caps, "split_multi_hot", True)
    out, must_split = [], []
    for i, f in enumerate(spec.sparse):
        nbytes = f.rows * layout.offchip_stride(f.dim)
        if nbytes <= layout.channel_bytes:
            continue
        if f.bag > 1 and not _onchip_fits(layout, _single(spec, i)):
            must_split.append(f.name)
        what = (f"table {f.name!r} ({f.rows:,} rows x {f.dim} elements, {nbytes:,} bytes) does "
                f"not fit one {layout.channel_bytes:,}-byte channel of configuration "
                f"{caps.config!r}")
        per_channel = max(1, layout.channel_bytes // layout.offchip_stride(f.dim))
        need = -(-f.rows // per_channel)
        if not layout.row_split:
            out.append(f"{what}, and the kernel cannot split a table over channels")
        elif f.bag > 1 and not split_multi:
            out.append(f"{what}, and the kernel splits only one-hot tables over channels (this "
                       f"one has bags of {f.bag})")
        elif need > layout.table_parts:
            out.append(f"{what}: it needs {need} channel-sized row ranges, and the kernel "
                       f"holds a table in at most {layout.table_parts} parts")
    pools = getattr(caps, "split_pools", 1 << 16)
    if split_multi and layout.row_split and len(must_split) > pools:
        out.append(split_pools_error(must_split, pools))
    return out


def split_pools_error(names, pools: int) -> str:
    """The one-line refusal of more split multi-hot tables (``names``) than the kernel's
    ``pools`` (``split_pools``); :func:`plan` and ``check_program`` give the same one."""
    return (f"{len(names)} multi-hot tables are split over row ranges ({', '.join(names)}); "
            f"the kernel pools the bags of at most {pools} (split_pools)")


def _split_bag_names(spec: ModelSpec, p: Plan) -> list[str]:
    return [spec.sparse[g.features[0]].name for g in p.groups if g.shards > 1 and g.bag > 1]


def plan(spec: ModelSpec, config, planner: str = "default") -> Plan:
    """Plan ``spec``'s tables for a kernel with the named planner.

    Parameters
    ----------
    spec : ModelSpec
    config : AcceleratorConfig or KernelCapabilities
        The kernel; a configuration is turned into its capabilities, which bound the plan.
    planner : str
        One of :data:`PLANNERS`.

    Returns
    -------
    Plan

    Raises
    ------
    PlanError
        If the tables cannot be placed (the message names the table and the limits), or the
        plan splits more multi-hot tables than the kernel's ``split_pools``.
    """
    caps = config.capabilities() if hasattr(config, "capabilities") else config
    if planner not in PLANNERS:
        raise ValueError(f"planner must be one of {', '.join(PLANNERS)}, not {planner!r}")
    layout = Layout.from_capabilities(caps)
    too_big = oversized_tables(spec, caps)
    if too_big:
        raise PlanError("; ".join(too_big))
    if planner == "default":
        p = plan_default(spec, layout, caps.config)
    elif planner == "microrec":
        p = plan_microrec(spec, layout, caps.config)
    else:
        p = plan_microrec(spec, layout, caps.config, merge=False)
    split = _split_bag_names(spec, p)
    if getattr(caps, "split_multi_hot", False) and len(split) > caps.split_pools:
        raise PlanError(split_pools_error(split, caps.split_pools))
    return p
