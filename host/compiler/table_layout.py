"""The one table layout: how embedding rows sit in channel images and on-chip words.

Every producer and consumer of table bytes uses this module: the planner (strides and
capacities), the memory images (:mod:`~recfabric.host.compiler.memory_image`), the kernel
program (on-chip load words), the compiled-model reader (:class:`ImagePooling`) and the
block tests of the lookup units (:func:`pack_tables`).

Off chip (a memory channel, read by :class:`~recfabric.hw.embedding_lookup.EmbeddingLookupUnit`)
    A row is its ``dim`` elements as little-endian two's-complement integers of ``data_bits``
    bits, zero-padded to the row *stride*: a power-of-two number of memory beats, so that the
    address of row ``r`` is ``base + (r << k)`` and, with tables starting on 4 KiB boundaries
    (:data:`TABLE_ALIGN`), no row crosses a 4 KiB boundary (an AXI burst must not). A lookup
    reads only the ``row_beats(dim)`` beats that hold data.
On chip (:class:`~recfabric.hw.onchip_table.OnChipTable`, word-addressed)
    A row is ``onchip_row_words(dim) = ceil(dim * data_bits / word_bits)`` consecutive RAM words,
    element 0 in the low bits of the first word. The on-chip image is the unit's RAM as bytes
    (word ``w`` at bytes ``w * word_bytes ..``, little-endian), so a row's byte stride is
    ``onchip_row_words(dim) * word_bytes`` and a table's byte offset is a whole number of words.
    The kernel program loads the image word by word.

Pure Python and numpy: the runtime reads images through this module without Amaranth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TABLE_ALIGN", "TableLayout", "pack_tables", "pow2_ceil", "align_up", "element_dtype"]

#: Alignment of every off-chip table's base address (AXI bursts must not cross 4 KiB).
TABLE_ALIGN = 4096


def pow2_ceil(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 << max(0, (n - 1).bit_length())


def align_up(n: int, a: int) -> int:
    """``n`` rounded up to a multiple of ``a``."""
    return -(-n // a) * a


def element_dtype(bits: int) -> np.dtype:
    """Little-endian numpy dtype of ``bits``-bit integers (8, 16, 32 or 64)."""
    if bits not in (8, 16, 32, 64):
        raise ValueError(f"element width must be 8, 16, 32 or 64 bits, not {bits}")
    return np.dtype({8: "<i1", 16: "<i2", 32: "<i4", 64: "<i8"}[bits])


@dataclass(frozen=True)
class TableLayout:
    """Row geometry for one element width, memory beat and on-chip word.

    Parameters
    ----------
    data_bits : int
        Element width (8 or 16).
    beat_bytes : int
        Bytes per memory beat of a lookup channel (``mem_data_width / 8``).
    onchip_word_bits : int
        On-chip RAM word width (:attr:`KernelCapabilities.onchip_word_bits`).
    """

    data_bits: int
    beat_bytes: int
    onchip_word_bits: int = 256

    def __post_init__(self):
        element_dtype(self.data_bits)
        for name in ("beat_bytes", "onchip_word_bits"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, not {v!r}")
        if self.onchip_word_bits % self.data_bits:
            raise ValueError(f"onchip_word_bits {self.onchip_word_bits} is not a multiple of "
                             f"data_bits {self.data_bits}")

    @classmethod
    def from_capabilities(cls, caps) -> TableLayout:
        """The layout of a kernel's :class:`~recfabric.hw.config.KernelCapabilities`."""
        return cls(caps.data_bits, caps.beat_bytes, caps.onchip_word_bits)

    @property
    def element_bytes(self) -> int:
        return self.data_bits // 8

    @property
    def onchip_word_bytes(self) -> int:
        return self.onchip_word_bits // 8

    def row_bytes(self, dim: int) -> int:
        """Bytes of data in a ``dim``-element row."""
        return dim * self.element_bytes

    def row_beats(self, dim: int) -> int:
        """Beats one off-chip lookup of a ``dim``-element row reads."""
        return -(-self.row_bytes(dim) // self.beat_bytes)

    def offchip_stride(self, dim: int) -> int:
        """Off-chip row stride in bytes: a power-of-two number of beats."""
        return pow2_ceil(self.row_beats(dim)) * self.beat_bytes

    def onchip_row_words(self, dim: int) -> int:
        """On-chip RAM words of a ``dim``-element row."""
        return -(-self.row_bytes(dim) // self.onchip_word_bytes)

    def onchip_stride(self, dim: int) -> int:
        """On-chip row stride in bytes (whole words)."""
        return self.onchip_row_words(dim) * self.onchip_word_bytes

    def stride(self, memory: str, dim: int) -> int:
        """Row stride in bytes in ``memory`` (``"channel"`` or ``"onchip"``)."""
        if memory == "channel":
            return self.offchip_stride(dim)
        if memory == "onchip":
            return self.onchip_stride(dim)
        raise ValueError(f"memory must be 'channel' or 'onchip', not {memory!r}")

    # ---- bytes -------------------------------------------------------------------------

    def encode_rows(self, values, stride: int) -> bytes:
        """Rows ``(n, dim)`` of integers as bytes, each zero-padded to ``stride`` bytes.

        Raises ``ValueError`` naming the range if a value does not fit ``data_bits``.
        """
        values = np.asarray(values, dtype=np.int64)
        dt = element_dtype(self.data_bits)
        info = np.iinfo(dt)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise ValueError(f"embedding value out of the {self.data_bits}-bit range: "
                             f"{int(values.min())}..{int(values.max())}")
        raw = values.astype(dt).view(np.uint8).reshape(len(values), -1)
        if raw.shape[1] > stride:
            raise ValueError(f"a row of {raw.shape[1]} bytes does not fit a stride of {stride}")
        if raw.shape[1] == stride:
            return raw.tobytes()
        out = np.zeros((len(values), stride), dtype=np.uint8)
        out[:, :raw.shape[1]] = raw
        return out.tobytes()

    def decode_rows(self, image, base: int, stride: int, rows, dim: int) -> np.ndarray:
        """Rows ``rows`` (indices from ``base``) of a table in ``image`` as ``(n, dim)`` int64."""
        rows = np.asarray(rows, dtype=np.int64)
        addr = base + rows * stride
        raw = np.asarray(image)[addr[:, None] + np.arange(self.row_bytes(dim))]
        dt = element_dtype(self.data_bits)
        return raw.view(dt).reshape(len(rows), dim).astype(np.int64)

    def onchip_words(self, image, offset: int, nbytes: int) -> list:
        """The RAM words (Python ints) of ``image[offset : offset + nbytes]``, in order."""
        wb = self.onchip_word_bytes
        if offset % wb or nbytes % wb:
            raise ValueError(f"on-chip span {offset}+{nbytes} is not whole {wb}-byte words")
        data = np.asarray(image[offset:offset + nbytes], dtype=np.uint8).tobytes()
        return [int.from_bytes(data[i:i + wb], "little") for i in range(0, nbytes, wb)]


def pack_tables(tables, layout: TableLayout, *, base: int = 0x1000, memory: str = "channel"):
    """Lay integer tables out back to back in one image, as the compiler lays out a channel.

    Parameters
    ----------
    tables : list of int arrays, shape (rows, dim)
    layout : TableLayout
    base : int
        Address of the image's byte 0 (4 KiB aligned off chip). Descriptors hold
        ``base + offset``; on chip, ``base`` is a word address and descriptors are in words.
    memory : str
        ``"channel"``: tables start on 4 KiB boundaries, byte descriptors (the lookup unit's).
        ``"onchip"``: tables start on words, word descriptors (the on-chip table's).

    Returns
    -------
    image : numpy uint8 array
    descs : list of dict(base, stride, rows, dim)
        Descriptors ready for the unit's descriptor port.
    """
    if memory == "channel" and base % TABLE_ALIGN:
        raise ValueError(f"image base must be {TABLE_ALIGN}-byte aligned, not {base:#x}")
    align = TABLE_ALIGN if memory == "channel" else layout.onchip_word_bytes
    chunks, descs, pos = [], [], 0
    for t in tables:
        t = np.asarray(t, dtype=np.int64)
        rows, dim = t.shape
        stride = layout.stride(memory, dim)
        data = np.frombuffer(layout.encode_rows(t, stride), np.uint8)
        if memory == "channel":
            descs.append({"base": base + pos, "stride": stride, "rows": rows, "dim": dim})
        else:
            wb = layout.onchip_word_bytes
            descs.append({"base": base + pos // wb, "stride": stride // wb, "rows": rows,
                          "dim": dim})
        pad = align_up(len(data), align) - len(data)
        chunks.append(np.concatenate([data, np.zeros(pad, np.uint8)]))
        pos += len(data) + pad
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)), descs
