"""Request and result wire format, version 1: how a batch travels between host and kernel.

A batch of requests is an array of fixed-size *request records*, one per request, back to back in
a buffer the kernel reads over AXI; the kernel writes one fixed-size *result record* per request,
in request order, into a second buffer. Every record is a whole number of memory words
(``word_bits``: 256 for an HBM pseudo-channel, 512 for DDR), so the RequestReader fetches a fixed
number of beats per request and never splits a beat between two requests. The layout is a
function of the model (features, bag sizes, dense count, outputs) and of two widths (the memory
word and the dense element); the model compiler writes it into the manifest
(:meth:`RequestLayout.to_json`) and the hardware receives the offsets as runtime data.

All multi-byte fields are little-endian (AXI byte order: byte 0 of a word is bits 7..0) and
naturally aligned (a field of ``n`` bytes starts at a multiple of ``n``). Bytes not covered by a
field are reserved and zero.

Request record
--------------

========  =====================  ==================================================================
offset    field                  contents
========  =====================  ==================================================================
0         ``length[f]``          u16 per sparse feature, in spec order: IDs in that feature's bag
                                 (exactly 1 for a one-hot feature, 0..bag for a multi-hot one)
L         ``ids[f][0..bag-1]``   u32 per slot, ``bag`` slots per feature, features in spec order;
                                 ``L = align(2 * features, 4)``; slots past ``length[f]`` are zero
D         ``dense[0..dense-1]``  signed ``elem_bits`` integers (two's complement) in the model's
                                 dense fixed-point format (``QuantizedModel.dense_fmt``)
..        padding                zero up to ``record_bytes``, a whole number of words (at least 1)
========  =====================  ==================================================================

Lengths come first so that the first beat tells the Dispatcher which ID slots are live; IDs come
before the dense values so that lookups, the long-latency part, can start on the earliest beats.
IDs are u32: tables of more than ``2**32`` rows are rejected when the layout is built (the
largest published tables have about ``10**7`` rows; a split table is two features).

Result record
-------------

========  =====================  ==================================================================
offset    field                  contents
========  =====================  ==================================================================
0         ``status``             u8, :class:`ResultStatus` flags; ``0x01`` (VALID) = a good score
1         reserved               u8, zero
2         ``score[0..outputs-1]``  u16 per output: the sigmoid output in unsigned Q0.16
                                 (probability = score / 65536), as ``GoldenResult.scores``
..        padding                zero up to ``result_record_bytes``, a whole number of words
========  =====================  ==================================================================

The host zero-fills the result buffer before a run; the kernel sets VALID on every record it
writes, so a record the kernel never wrote (a hang, a short batch) reads as status 0 and
:func:`unpack_results` reports it instead of returning a score of zero. The error flags are for
the kernel's own defensive checks (an ID or bag length out of range that slipped past the host's
validation, or a corrupted buffer): the score of such a record is undefined.

One result per word wastes most of each word (a 64 Ki-request batch is 2 MiB of results at 256
bits instead of 256 KiB), but the ScoreWriter then writes one full beat per request and needs no
gather register; at the published rates (3e5 inferences/s) that is 10 MB/s of a 14 GB/s channel.

Validation happens before anything is packed; every error names the request, the feature and the
value. :func:`pack_requests` takes dense values already in fixed point;
:func:`pack_float_requests` takes float dense values and quantizes them with the layout's dense
format through :func:`recfabric.host.numerics.quantize` (round half away from zero, saturate).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from .. import numerics as nx
from ..model.spec import ModelSpec
from ..numerics import FixedFormat
from ..reference.golden import Bags

__all__ = [
    "WIRE_FORMAT_VERSION",
    "WireFormatError",
    "WireTypeError",
    "ResultStatus",
    "FeatureSlots",
    "RequestLayout",
    "pack_requests",
    "pack_float_requests",
    "unpack_requests",
    "pack_results",
    "unpack_results",
]

#: Version of the layout rules below; written into the manifest, checked on load.
WIRE_FORMAT_VERSION = 1

_MAX_ROWS = 1 << 32  # IDs are u32
_MAX_BAG = (1 << 16) - 1  # lengths are u16
_ELEM_BITS = (8, 16, 32)


class WireFormatError(ValueError):
    """A batch, a buffer or a layout does not fit the wire format; the message says which value."""


class WireTypeError(WireFormatError, TypeError):
    """An argument has the wrong type or dtype (also a :class:`TypeError`)."""


class ResultStatus(enum.IntFlag):
    """Flags of a result record's status byte. A good record has exactly :attr:`VALID`."""

    #: The kernel wrote this record. Zero means the record was never written.
    VALID = 0x01
    #: The kernel found an ID outside its table; the score is undefined.
    ID_RANGE = 0x02
    #: The kernel found a bag length over the feature's maximum (or a one-hot length other than
    #: 1); the score is undefined.
    BAG_RANGE = 0x04
    #: A table read for this request was answered with an AXI error (SLVERR/DECERR); the score
    #: is undefined.
    MEMORY = 0x08


_STATUS_KNOWN = int(ResultStatus.VALID | ResultStatus.ID_RANGE | ResultStatus.BAG_RANGE
                    | ResultStatus.MEMORY)


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def _is_pow2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class FeatureSlots:
    """Where one sparse feature lives in a request record.

    Parameters
    ----------
    name : str
        Feature name (from the spec).
    rows : int
        Table rows; valid IDs are ``0 .. rows-1``.
    bag : int
        ID slots in the record (the feature's maximum bag).
    length_offset : int
        Byte offset of the feature's u16 bag length.
    ids_offset : int
        Byte offset of the feature's first u32 ID slot.
    """

    name: str
    rows: int
    bag: int
    length_offset: int
    ids_offset: int

    @property
    def min_length(self) -> int:
        """Smallest legal bag length: 1 for one-hot features, 0 for multi-hot ones."""
        return 1 if self.bag == 1 else 0

    def to_json(self) -> dict:
        return {"name": self.name, "rows": self.rows, "bag": self.bag,
                "length_offset": self.length_offset, "ids_offset": self.ids_offset}


@dataclass(frozen=True)
class RequestLayout:
    """Byte layout of request and result records for one model (wire format version 1).

    Build it with :meth:`for_model`, :meth:`for_quantized` or :meth:`for_config`; the offsets are
    computed on construction. See the module docstring for the layout rules.

    Parameters
    ----------
    features : tuple of (str, int, int)
        ``(name, rows, bag)`` of each sparse feature, in spec order.
    dense : int
        Dense feature count.
    outputs : int
        Scores per request (1, or the number of multi-task heads).
    word_bits : int
        Memory word width in bits; records are whole words. A power of two, at least 32.
    elem_bits : int
        Width of a dense value on the wire: 8, 16 or 32.
    dense_frac : int or None
        Fraction bits of the dense fixed-point format, if known (needed by
        :func:`pack_float_requests`; recorded in the manifest).

    Members
    -------
    slots : tuple of FeatureSlots
        Per-feature offsets.
    dense_offset : int
        Byte offset of the first dense value.
    content_bytes : int
        Bytes covered by fields (the rest of the record is padding).
    record_bytes : int
        Size of one request record, a multiple of ``word_bytes``.
    result_record_bytes : int
        Size of one result record, a multiple of ``word_bytes``.
    """

    features: tuple
    dense: int
    outputs: int = 1
    word_bits: int = 256
    elem_bits: int = 16
    dense_frac: int | None = None
    slots: tuple = field(init=False, repr=False, compare=False)
    dense_offset: int = field(init=False, repr=False, compare=False)
    content_bytes: int = field(init=False, repr=False, compare=False)
    record_bytes: int = field(init=False, repr=False, compare=False)
    result_record_bytes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        feats = tuple(tuple(f) for f in self.features)
        object.__setattr__(self, "features", feats)
        if not _is_pow2(self.word_bits) or self.word_bits < 32:
            raise WireFormatError(
                f"memory word width must be a power of two of at least 32 bits, not "
                f"{self.word_bits!r}")
        if self.elem_bits not in _ELEM_BITS or isinstance(self.elem_bits, bool):
            raise WireFormatError(
                f"dense element width must be one of {', '.join(map(str, _ELEM_BITS))} bits, "
                f"not {self.elem_bits!r}")
        if not isinstance(self.dense, int) or isinstance(self.dense, bool) or self.dense < 0:
            raise WireFormatError(f"dense feature count must be an integer >= 0, not "
                                  f"{self.dense!r}")
        if not isinstance(self.outputs, int) or isinstance(self.outputs, bool) \
                or self.outputs < 1:
            raise WireFormatError(f"output count must be an integer >= 1, not {self.outputs!r}")
        if self.dense_frac is not None:
            FixedFormat(self.elem_bits, self.dense_frac)  # validates the range of frac
        if not feats and self.dense == 0:
            raise WireFormatError("a request needs at least one sparse or dense feature")
        for f in feats:
            if len(f) != 3:
                raise WireFormatError(f"feature entries are (name, rows, bag), not {f!r}")
            name, rows, bag = f
            if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
                raise WireFormatError(f"feature {name!r}: rows must be a positive integer, "
                                      f"not {rows!r}")
            if rows > _MAX_ROWS:
                raise WireFormatError(
                    f"feature {name!r}: table of {rows:,} rows does not fit wire format v1, "
                    f"whose IDs are u32 (at most {_MAX_ROWS:,} rows); split the table into "
                    f"several features")
            if not isinstance(bag, int) or isinstance(bag, bool) or not 1 <= bag <= _MAX_BAG:
                raise WireFormatError(f"feature {name!r}: bag must be an integer in "
                                      f"1..{_MAX_BAG} (lengths are u16), not {bag!r}")
        names = [f[0] for f in feats]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise WireFormatError(f"feature names must be unique; repeated: {', '.join(dup)}")

        off = 2 * len(feats)
        off = _align(off, 4)
        slots = []
        for k, (name, rows, bag) in enumerate(feats):
            slots.append(FeatureSlots(name, rows, bag, 2 * k, off))
            off += 4 * bag
        off = _align(off, self.elem_bytes)
        dense_offset = off
        off += self.elem_bytes * self.dense
        wb = self.word_bytes
        object.__setattr__(self, "slots", tuple(slots))
        object.__setattr__(self, "dense_offset", dense_offset)
        object.__setattr__(self, "content_bytes", off)
        object.__setattr__(self, "record_bytes", max(wb, _align(off, wb)))
        object.__setattr__(self, "result_record_bytes", max(wb, _align(2 + 2 * self.outputs, wb)))

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def for_model(cls, spec: ModelSpec, word_bits: int = 256, elem_bits: int = 16,
                  dense_frac: int | None = None) -> RequestLayout:
        """The layout of ``spec``'s requests for a memory word and a dense element width."""
        if not isinstance(spec, ModelSpec):
            raise WireTypeError(f"expected a ModelSpec, not {type(spec).__name__}")
        return cls(tuple((f.name, f.rows, f.bag) for f in spec.sparse), spec.dense,
                   spec.num_outputs, word_bits, elem_bits, dense_frac)

    @classmethod
    def for_quantized(cls, qm, word_bits: int = 256) -> RequestLayout:
        """The layout of a :class:`~recfabric.host.reference.golden.QuantizedModel`'s requests:
        dense values on the wire in ``qm.dense_fmt`` (its width and its fraction bits)."""
        fmt = qm.dense_fmt
        return cls.for_model(qm.spec, word_bits, fmt.bits, fmt.frac)

    @classmethod
    def for_config(cls, model, config) -> RequestLayout:
        """The layout for a model (a ``ModelSpec`` or a ``QuantizedModel``) on an accelerator
        configuration: ``config.mem_data_width`` is the word, ``config.data_bits`` the dense
        element. Anything with those two attributes will do; ``max_features``, ``max_bag`` and
        ``max_dense``, if present, are checked."""
        for attr in ("mem_data_width", "data_bits"):
            if not hasattr(config, attr):
                raise WireTypeError(f"accelerator config {config!r} has no {attr!r}")
        spec = model if isinstance(model, ModelSpec) else getattr(model, "spec", None)
        if not isinstance(spec, ModelSpec):
            raise WireTypeError(f"expected a ModelSpec or QuantizedModel, not "
                                f"{type(model).__name__}")
        limits = [("max_features", len(spec.sparse), "sparse features"),
                  ("max_bag", max((f.bag for f in spec.sparse), default=1), "largest bag"),
                  ("max_dense", spec.dense, "dense features")]
        for attr, have, what in limits:
            lim = getattr(config, attr, None)
            if lim is not None and have > lim:
                raise WireFormatError(f"model {spec.name!r}: {what} {have} exceeds the "
                                      f"configuration's {attr} {lim}")
        if isinstance(model, ModelSpec):
            return cls.for_model(spec, config.mem_data_width, config.data_bits)
        fmt = model.dense_fmt
        if fmt.bits != config.data_bits:
            raise WireFormatError(f"model {spec.name!r}: dense format {fmt} is {fmt.bits} bits, "
                                  f"the configuration's data_bits is {config.data_bits}")
        return cls.for_model(spec, config.mem_data_width, fmt.bits, fmt.frac)

    # ---- derived ---------------------------------------------------------------------------

    @property
    def word_bytes(self) -> int:
        return self.word_bits // 8

    @property
    def elem_bytes(self) -> int:
        return self.elem_bits // 8

    @property
    def words_per_record(self) -> int:
        """Memory words (beats) per request record."""
        return self.record_bytes // self.word_bytes

    @property
    def words_per_result(self) -> int:
        """Memory words (beats) per result record."""
        return self.result_record_bytes // self.word_bytes

    @property
    def dense_fmt(self) -> FixedFormat | None:
        """The dense fixed-point format, or None when the layout was built without one."""
        return None if self.dense_frac is None else FixedFormat(self.elem_bits, self.dense_frac)

    def request_bytes(self, batch: int) -> int:
        """Size of the request buffer for ``batch`` requests."""
        return batch * self.record_bytes

    def result_bytes(self, batch: int) -> int:
        """Size of the result buffer for ``batch`` requests."""
        return batch * self.result_record_bytes

    @property
    def request_dtype(self) -> np.dtype:
        """A numpy structured dtype with the request record's fields at their offsets."""
        names, formats, offsets = [], [], []
        if self.slots:
            names.append("lengths")
            formats.append(("<u2", (len(self.slots),)))
            offsets.append(0)
        for k, s in enumerate(self.slots):
            names.append(f"ids{k}")
            formats.append(("<u4", (s.bag,)))
            offsets.append(s.ids_offset)
        if self.dense:
            names.append("dense")
            formats.append((f"<i{self.elem_bytes}", (self.dense,)))
            offsets.append(self.dense_offset)
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": self.record_bytes})

    @property
    def result_dtype(self) -> np.dtype:
        """A numpy structured dtype with the result record's fields at their offsets."""
        return np.dtype({"names": ["status", "scores"],
                         "formats": ["u1", ("<u2", (self.outputs,))],
                         "offsets": [0, 2], "itemsize": self.result_record_bytes})

    # ---- manifest --------------------------------------------------------------------------

    def to_json(self) -> dict:
        """Everything a driver or a hardware generator needs, for the manifest."""
        etype = f"i{self.elem_bits}"
        return {
            "version": WIRE_FORMAT_VERSION,
            "byte_order": "little",
            "word_bits": self.word_bits,
            "elem_bits": self.elem_bits,
            "request": {
                "record_bytes": self.record_bytes,
                "words_per_record": self.words_per_record,
                "content_bytes": self.content_bytes,
                "features": [s.to_json() for s in self.slots],
                "length_type": "u16",
                "id_type": "u32",
                "dense": {"offset": self.dense_offset, "count": self.dense, "type": etype,
                          "frac": self.dense_frac},
            },
            "result": {
                "record_bytes": self.result_record_bytes,
                "words_per_record": self.words_per_result,
                "status": {"offset": 0, "type": "u8",
                           "flags": {s.name: int(s) for s in ResultStatus}},
                "scores": {"offset": 2, "count": self.outputs, "type": "u16", "frac": 16},
            },
        }

    @classmethod
    def from_json(cls, obj) -> RequestLayout:
        """Rebuild a layout from :meth:`to_json` output; every stored offset is checked against
        the recomputed one, so a manifest written by other layout rules is refused."""
        if not isinstance(obj, dict):
            raise WireFormatError(f"a request layout must be a JSON object, not "
                                  f"{type(obj).__name__}")
        if obj.get("version") != WIRE_FORMAT_VERSION:
            raise WireFormatError(f"wire format version {obj.get('version')!r} is not supported "
                                  f"(this host speaks version {WIRE_FORMAT_VERSION})")
        try:
            req, res = obj["request"], obj["result"]
            layout = cls(
                tuple((f["name"], f["rows"], f["bag"]) for f in req["features"]),
                req["dense"]["count"], res["scores"]["count"], obj["word_bits"],
                obj["elem_bits"], req["dense"]["frac"])
        except (KeyError, TypeError) as e:
            raise WireFormatError(f"request layout JSON is missing or mistypes field {e}") \
                from None
        mine = layout.to_json()
        if mine != obj:
            diffs = _json_diff(mine, obj)
            raise WireFormatError("request layout JSON disagrees with the version 1 rules at "
                                  + "; ".join(diffs[:5]))
        return layout

    def describe(self) -> str:
        """A Markdown table of the request record's fields (as in docs/wire_format.md)."""
        rows = [("offset", "bytes", "field", "type")]
        for s in self.slots:
            rows.append((str(s.length_offset), "2", f"length[{s.name}]", "u16"))
        if self.slots and self.slots[0].ids_offset > 2 * len(self.slots):
            p = 2 * len(self.slots)
            rows.append((str(p), str(self.slots[0].ids_offset - p), "reserved", "zero"))
        for s in self.slots:
            rows.append((str(s.ids_offset), str(4 * s.bag),
                         f"ids[{s.name}][0..{s.bag - 1}]" if s.bag > 1 else f"ids[{s.name}]",
                         "u32" if s.bag == 1 else f"u32 x {s.bag}"))
        end_ids = self.slots[-1].ids_offset + 4 * self.slots[-1].bag if self.slots else 0
        if self.dense_offset > end_ids:
            rows.append((str(end_ids), str(self.dense_offset - end_ids), "reserved", "zero"))
        if self.dense:
            fmt = self.dense_fmt
            t = f"i{self.elem_bits}" + (f" ({fmt})" if fmt else "")
            rows.append((str(self.dense_offset), str(self.elem_bytes * self.dense),
                         f"dense[0..{self.dense - 1}]", t + f" x {self.dense}"))
        if self.record_bytes > self.content_bytes:
            rows.append((str(self.content_bytes), str(self.record_bytes - self.content_bytes),
                         "padding", "zero"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        out = []
        for j, r in enumerate(rows):
            out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
            if j == 0:
                out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(out)


def _json_diff(a, b, path="") -> list:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: {'missing' if k not in b else 'unexpected'}")
            else:
                out += _json_diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in _json_diff(x, y, f"{path}/{i}")]
    return [] if a == b else [f"{path or '/'}: expected {a!r}, found {b!r}"]


# ---- validation --------------------------------------------------------------------------

def _check_layout(layout):
    if not isinstance(layout, RequestLayout):
        raise WireTypeError(f"expected a RequestLayout, not {type(layout).__name__}")


def _int_array(x, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise WireTypeError(f"{what} must be an integer array, not dtype {a.dtype}")
    return a


def _batch_of(layout: RequestLayout, dense, sparse) -> int:
    if isinstance(sparse, (Bags, np.ndarray)) or not isinstance(sparse, (list, tuple)):
        raise WireTypeError(f"sparse must be a list of Bags (one per feature), not "
                            f"{type(sparse).__name__}")
    if len(sparse) != len(layout.slots):
        raise WireFormatError(f"{len(sparse)} sparse features given, the layout has "
                              f"{len(layout.slots)}")
    for s, bags in zip(layout.slots, sparse, strict=True):
        if not isinstance(bags, Bags):
            raise WireTypeError(f"feature {s.name!r}: expected Bags, not {type(bags).__name__}")
    if sparse:
        lengths = np.asarray(sparse[0].lengths)
        if lengths.ndim != 1:
            raise WireFormatError(f"feature {layout.slots[0].name!r}: lengths must be 1-D "
                                  f"(one per request), not shape {lengths.shape}")
        batch = lengths.shape[0]
    else:
        d = np.asarray(dense)
        if d.ndim != 2:
            raise WireFormatError(f"dense must be a 2-D array (batch, {layout.dense}), not "
                                  f"shape {d.shape}")
        batch = d.shape[0]
    if batch == 0:
        raise WireFormatError("empty batch: a request buffer needs at least one request")
    return batch


def _check_bags(layout: RequestLayout, sparse, batch: int) -> list:
    """Validated ``(ids, lengths, mask)`` per feature; ids are cut to ``bag`` columns."""
    out = []
    for s, bags in zip(layout.slots, sparse, strict=True):
        ids = _int_array(bags.ids, f"feature {s.name!r}: IDs")
        lengths = _int_array(bags.lengths, f"feature {s.name!r}: lengths")
        if lengths.shape != (batch,):
            raise WireFormatError(f"feature {s.name!r}: lengths must have shape ({batch},), "
                                  f"not {lengths.shape}")
        if ids.ndim != 2 or ids.shape[0] != batch:
            raise WireFormatError(f"feature {s.name!r}: IDs must have shape ({batch}, bag), "
                                  f"not {ids.shape}")
        cols = min(s.bag, ids.shape[1])
        bad = np.flatnonzero((lengths < s.min_length) | (lengths > s.bag))
        if bad.size:
            b = int(bad[0])
            n = int(lengths[b])
            what = ("a one-hot feature needs exactly 1" if s.bag == 1
                    else f"allowed 0..{s.bag}")
            raise WireFormatError(f"feature {s.name!r}, request {b}: bag of {n} IDs, {what}")
        bad = np.flatnonzero(lengths > cols)
        if bad.size:
            b = int(bad[0])
            raise WireFormatError(f"feature {s.name!r}, request {b}: bag length {int(lengths[b])}"
                                  f" but the IDs array has only {ids.shape[1]} columns")
        ids = ids[:, :cols]
        mask = np.arange(cols)[None, :] < lengths[:, None]
        bad = mask & ((ids < 0) | (ids >= s.rows))
        if bad.any():
            b, k = map(int, np.argwhere(bad)[0])
            raise WireFormatError(f"feature {s.name!r}, request {b}: ID {int(ids[b, k])} "
                                  f"(slot {k}) out of range 0..{s.rows - 1}")
        out.append((ids, lengths, mask))
    return out


def _check_dense_shape(layout: RequestLayout, dense, batch: int) -> np.ndarray:
    if dense is None:
        raise WireTypeError(f"dense must be an array of shape ({batch}, {layout.dense}), "
                            f"not None")
    d = np.asarray(dense)
    if d.ndim != 2:
        raise WireFormatError(f"dense must be a 2-D array ({batch}, {layout.dense}), not shape "
                              f"{d.shape}")
    if d.shape[1] != layout.dense:
        raise WireFormatError(f"dense has {d.shape[1]} columns, the model has {layout.dense} "
                              f"dense features")
    if d.shape[0] != batch:
        raise WireFormatError(f"dense has {d.shape[0]} rows but the sparse features have "
                              f"{batch} requests")
    return d


def _check_dense_q(layout: RequestLayout, dense, batch: int) -> np.ndarray:
    d = _check_dense_shape(layout, dense, batch)
    if d.dtype.kind not in "iu":
        hint = " (use pack_float_requests for float values)" if d.dtype.kind == "f" else ""
        raise WireTypeError(f"fixed-point dense values must be an integer array, not dtype "
                            f"{d.dtype}{hint}")
    fmt = layout.dense_fmt
    lo, hi = -(1 << (layout.elem_bits - 1)), (1 << (layout.elem_bits - 1)) - 1
    bad = (d < lo) | (d > hi)
    if bad.any():
        b, k = map(int, np.argwhere(bad)[0])
        name = str(fmt) if fmt else f"i{layout.elem_bits}"
        raise WireFormatError(f"request {b}, dense feature {k}: {int(d[b, k])} outside the "
                              f"dense format {name} range {lo}..{hi}")
    return d


# ---- requests ----------------------------------------------------------------------------

def pack_requests(layout: RequestLayout, dense_q, sparse) -> bytes:
    """Pack a batch into request records.

    Parameters
    ----------
    layout : RequestLayout
    dense_q : int array, shape (batch, layout.dense)
        Dense values already in the dense fixed-point format (``QuantizedModel.quantize_dense``).
    sparse : list of Bags
        One per feature, in spec order (as for
        :func:`~recfabric.host.reference.golden.golden_forward`).

    Returns
    -------
    bytes
        ``batch * layout.record_bytes`` bytes.

    Raises
    ------
    WireFormatError
        Before anything is packed, naming the feature, request and value: an empty batch,
        mismatched shapes, bags over the maximum (or a one-hot bag that is not 1), IDs out of
        range, dense integers outside the format's range. :class:`WireTypeError` for wrong
        types and dtypes.
    """
    _check_layout(layout)
    batch = _batch_of(layout, dense_q, sparse)
    checked = _check_bags(layout, sparse, batch)
    d = _check_dense_q(layout, dense_q, batch)
    return _pack(layout, batch, d, checked)


def pack_float_requests(layout: RequestLayout, dense, sparse) -> bytes:
    """Like :func:`pack_requests`, with float dense values quantized to ``layout.dense_fmt``.

    Values outside the format's range saturate (the numerics spec's quantization rule); NaN and
    infinity are refused, naming the request and the dense feature.
    """
    _check_layout(layout)
    fmt = layout.dense_fmt
    if fmt is None and layout.dense:
        raise WireFormatError("the layout has no dense fixed-point format (dense_frac is None); "
                              "build it with RequestLayout.for_quantized(qm)")
    batch = _batch_of(layout, dense, sparse)
    d = _check_dense_shape(layout, dense, batch)
    if d.dtype.kind not in "fiu":
        raise WireTypeError(f"float dense values must be a real numeric array, not dtype "
                            f"{d.dtype}")
    bad = ~np.isfinite(d)
    if bad.any():
        b, k = map(int, np.argwhere(bad)[0])
        raise WireFormatError(f"request {b}, dense feature {k}: {d[b, k]} is not a finite "
                              f"number")
    checked = _check_bags(layout, sparse, batch)
    dq = nx.quantize(d, fmt) if layout.dense else np.zeros((batch, 0), np.int64)
    return _pack(layout, batch, dq, checked)


def _pack(layout: RequestLayout, batch: int, dense_q: np.ndarray, checked: list) -> bytes:
    rec = np.zeros(batch, dtype=layout.request_dtype)
    if checked:
        rec["lengths"] = np.stack([lengths for _, lengths, _ in checked], axis=1)
    for k, (ids, _, mask) in enumerate(checked):
        rec[f"ids{k}"][:, :ids.shape[1]] = np.where(mask, ids, 0)
    if layout.dense:
        rec["dense"] = dense_q
    return rec.tobytes()


def _records(buf, batch: int, record_bytes: int, dtype, what: str) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray, memoryview, np.ndarray)):
        raise WireTypeError(f"{what} buffer must be bytes-like, not {type(buf).__name__}")
    if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool):
        raise WireTypeError(f"batch must be an integer, not {batch!r}")
    if batch < 1:
        raise WireFormatError(f"empty batch: batch must be at least 1, not {batch}")
    raw = np.frombuffer(buf, dtype=np.uint8)
    need = int(batch) * record_bytes
    if raw.size < need:
        raise WireFormatError(f"{what} buffer holds {raw.size} bytes, {batch} records of "
                              f"{record_bytes} bytes need {need}")
    raw = raw[:need]
    return raw.view(dtype), raw.reshape(int(batch), record_bytes)


def _padding_mask(dtype: np.dtype) -> np.ndarray:
    used = np.zeros(dtype.itemsize, dtype=bool)
    for name in dtype.names:
        ft, off = dtype.fields[name][:2]
        used[off:off + ft.itemsize] = True
    return ~used


def _check_padding(raw2d: np.ndarray, dtype: np.dtype, what: str):
    pad = _padding_mask(dtype)
    bad = raw2d[:, pad] != 0
    if bad.any():
        b, j = map(int, np.argwhere(bad)[0])
        off = int(np.flatnonzero(pad)[j])
        raise WireFormatError(f"{what} {b}: reserved byte {off} is {int(raw2d[b, off])}, "
                              f"must be 0")


def unpack_requests(layout: RequestLayout, buf, batch: int):
    """Read back a request buffer written by :func:`pack_requests` (or by anyone else).

    Parameters
    ----------
    layout : RequestLayout
    buf : bytes-like
        At least ``batch * layout.record_bytes`` bytes; extra bytes are ignored.
    batch : int
        Number of records to read.

    Returns
    -------
    dense_q : int64 array, shape (batch, layout.dense)
    sparse : list of Bags
        ``ids`` int64 of shape (batch, bag) with zeros past each length; ``lengths`` int64.

    Raises
    ------
    WireFormatError
        If the buffer is too short or a record breaks the format: a bag length out of range, an
        ID out of range, a non-zero unused ID slot or reserved byte.
    """
    _check_layout(layout)
    dt = layout.request_dtype
    rec, raw2d = _records(buf, batch, layout.record_bytes, dt, "request")
    sparse = []
    for k, s in enumerate(layout.slots):
        lengths = rec["lengths"][:, k].astype(np.int64)
        ids = rec[f"ids{k}"].astype(np.int64)
        bad = np.flatnonzero((lengths < s.min_length) | (lengths > s.bag))
        if bad.size:
            b = int(bad[0])
            raise WireFormatError(f"request {b}, feature {s.name!r}: bag length "
                                  f"{int(lengths[b])} outside {s.min_length}..{s.bag}")
        mask = np.arange(s.bag)[None, :] < lengths[:, None]
        bad = np.argwhere(mask & (ids >= s.rows))
        if bad.size:
            b, j = map(int, bad[0])
            raise WireFormatError(f"request {b}, feature {s.name!r}: ID {int(ids[b, j])} "
                                  f"(slot {j}) out of range 0..{s.rows - 1}")
        bad = np.argwhere(~mask & (ids != 0))
        if bad.size:
            b, j = map(int, bad[0])
            raise WireFormatError(f"request {b}, feature {s.name!r}: unused ID slot {j} holds "
                                  f"{int(ids[b, j])}, must be 0")
        sparse.append(Bags(ids, lengths))
    _check_padding(raw2d, dt, "request")
    dense = (rec["dense"].astype(np.int64) if layout.dense
             else np.zeros((int(batch), 0), np.int64))
    return dense, sparse


# ---- results -----------------------------------------------------------------------------

def pack_results(layout: RequestLayout, scores, status=None) -> bytes:
    """Pack scores into result records, as the kernel's ScoreWriter writes them.

    Parameters
    ----------
    layout : RequestLayout
    scores : int array, shape (batch, layout.outputs)
        Unsigned Q0.16 scores (``GoldenResult.scores``), 0..65535.
    status : int array, shape (batch,), optional
        Status bytes; by default every record is :attr:`ResultStatus.VALID`.
    """
    _check_layout(layout)
    s = _int_array(scores, "scores")
    if s.ndim != 2 or s.shape[1] != layout.outputs:
        raise WireFormatError(f"scores must have shape (batch, {layout.outputs}), not {s.shape}")
    batch = s.shape[0]
    if batch == 0:
        raise WireFormatError("empty batch: no scores to pack")
    bad = (s < 0) | (s > 0xFFFF)
    if bad.any():
        b, k = map(int, np.argwhere(bad)[0])
        raise WireFormatError(f"request {b}, output {k}: score {int(s[b, k])} outside the "
                              f"unsigned Q0.16 range 0..65535")
    if status is None:
        st = np.full(batch, int(ResultStatus.VALID), np.uint8)
    else:
        st = _int_array(status, "status")
        if st.shape != (batch,):
            raise WireFormatError(f"status must have shape ({batch},), not {st.shape}")
        bad = np.flatnonzero((st < 0) | (st > _STATUS_KNOWN))
        if bad.size:
            b = int(bad[0])
            raise WireFormatError(f"request {b}: status {int(st[b])} is not a combination of "
                                  f"ResultStatus flags")
    rec = np.zeros(batch, dtype=layout.result_dtype)
    rec["status"] = st
    rec["scores"] = s
    return rec.tobytes()


def _status_text(v: int) -> str:
    if v == 0:
        return "record not written by the kernel"
    names = [f.name for f in ResultStatus if f is not ResultStatus.VALID and v & f]
    if v & ~_STATUS_KNOWN:
        names.append(f"unknown bits 0x{v & ~_STATUS_KNOWN & 0xFF:02x}")
    if not v & ResultStatus.VALID:
        names.append("VALID not set")
    return "kernel reported " + ", ".join(names)


def unpack_results(layout: RequestLayout, buf, batch: int, *, check: bool = True):
    """Read a result buffer.

    Parameters
    ----------
    layout : RequestLayout
    buf : bytes-like
        At least ``batch * layout.result_record_bytes`` bytes.
    batch : int
    check : bool
        Raise :class:`WireFormatError` on the first record whose status is not exactly VALID
        (never written, or flagged by the kernel) or whose reserved bytes are not zero.

    Returns
    -------
    scores : int64 array, shape (batch, layout.outputs)
        Unsigned Q0.16 scores; divide by 65536 for probabilities.
    status : uint8 array, shape (batch,)
    """
    _check_layout(layout)
    dt = layout.result_dtype
    rec, raw2d = _records(buf, batch, layout.result_record_bytes, dt, "result")
    status = rec["status"].copy()
    if check:
        bad = np.flatnonzero(status != int(ResultStatus.VALID))
        if bad.size:
            b = int(bad[0])
            raise WireFormatError(f"result record {b}: status 0x{int(status[b]):02x}, "
                                  f"{_status_text(int(status[b]))} ({bad.size} of {batch} "
                                  f"records not VALID)")
        _check_padding(raw2d, dt, "result record")
    return rec["scores"].astype(np.int64), status

