"""AXI4 and AXI4-Lite interface signatures.

Members are named exactly as the AXI signals (``araddr``, ``arvalid``, ``rdata``...), without
channel grouping, so that a flattened port reads ``<prefix>__araddr``: the form cocotbext-axi
accepts with ``AxiBus.from_prefix(dut, "<prefix>", bus_separator="__")``, and which
``verilog.convert(..., ports=...)`` can rename to the vendor's ``m_axi_<name>_araddr`` form.

Directions are those of a master (``flip()`` gives the slave's view): the address, write data
and the ``*ready`` of the R and B channels are outputs, the rest inputs.
"""

from __future__ import annotations

import enum

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXIBurst", "AXIResp", "AXI4Signature", "AXI4LiteSignature"]


class AXIBurst(enum.IntEnum):
    """``AxBURST`` encodings."""

    FIXED = 0
    INCR = 1
    WRAP = 2


class AXIResp(enum.IntEnum):
    """``xRESP`` encodings. Bit 1 set means an error (SLVERR or DECERR)."""

    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


def _check_width(name, value, allowed=None, lo=1, hi=None):
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (
            hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise TypeError(f"{name} must be an integer in {rng}, not {value!r}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, not {value}")


_DATA_WIDTHS = (8, 16, 32, 64, 128, 256, 512, 1024)


class AXI4Signature(wiring.Signature):
    """AXI4 (full) master signature.

    Parameters
    ----------
    addr_width : int
        Address width in bits (64 for Vitis kernels).
    data_width : int
        Data width in bits: a power of two from 8 to 1024.
    id_width : int
        ID width in bits, at least 1.
    read : bool
        Include the read channels (AR, R).
    write : bool
        Include the write channels (AW, W, B).

    Members
    -------
    arid, araddr, arlen, arsize, arburst, arlock, arcache, arprot, arqos, arvalid : Out
    arready : In
    rid, rdata, rresp, rlast, rvalid : In
    rready : Out
    awid, awaddr, awlen, awsize, awburst, awlock, awcache, awprot, awqos, awvalid : Out
    awready : In
    wdata, wstrb, wlast, wvalid : Out
    wready : In
    bid, bresp, bvalid : In
    bready : Out
    """

    def __init__(self, *, addr_width: int, data_width: int, id_width: int,
                 read: bool = True, write: bool = True):
        _check_width("Address width", addr_width, hi=64)
        _check_width("Data width", data_width, allowed=_DATA_WIDTHS)
        _check_width("ID width", id_width, hi=32)
        if not (read or write):
            raise ValueError("An AXI4 signature needs read or write channels, not neither")
        self._addr_width, self._data_width, self._id_width = addr_width, data_width, id_width
        self._read, self._write = bool(read), bool(write)
        members = {}
        for ch, on in (("ar", read), ("aw", write)):
            if not on:
                continue
            members.update({
                f"{ch}id": Out(id_width), f"{ch}addr": Out(addr_width), f"{ch}len": Out(8),
                f"{ch}size": Out(3), f"{ch}burst": Out(2), f"{ch}lock": Out(1),
                f"{ch}cache": Out(4), f"{ch}prot": Out(3), f"{ch}qos": Out(4),
                f"{ch}valid": Out(1), f"{ch}ready": In(1),
            })
        if read:
            members.update({
                "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
                "rvalid": In(1), "rready": Out(1),
            })
        if write:
            members.update({
                "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
                "wvalid": Out(1), "wready": In(1),
                "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            })
        super().__init__(members)

    addr_width = property(lambda self: self._addr_width)
    data_width = property(lambda self: self._data_width)
    id_width = property(lambda self: self._id_width)
    read = property(lambda self: self._read)
    write = property(lambda self: self._write)

    @property
    def beat_bytes(self) -> int:
        """Bytes per data beat."""
        return self._data_width // 8

    def __eq__(self, other):
        return (type(other) is type(self) and
                (self._addr_width, self._data_width, self._id_width, self._read, self._write) ==
                (other._addr_width, other._data_width, other._id_width, other._read,
                 other._write))

    def __hash__(self):
        return hash((type(self), self._addr_width, self._data_width, self._id_width,
                     self._read, self._write))

    def __repr__(self):
        return (f"AXI4Signature(addr_width={self._addr_width}, data_width={self._data_width}, "
                f"id_width={self._id_width}, read={self._read}, write={self._write})")


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite master signature (the kernel's ``s_axi_control`` is its ``flip()``).

    Parameters
    ----------
    addr_width : int
        Address width in bits.
    data_width : int
        Data width in bits: 32 or 64.

    Members
    -------
    awaddr, awprot, awvalid : Out
    awready : In
    wdata, wstrb, wvalid : Out
    wready : In
    bresp, bvalid : In
    bready : Out
    araddr, arprot, arvalid : Out
    arready : In
    rdata, rresp, rvalid : In
    rready : Out
    """

    def __init__(self, *, addr_width: int, data_width: int = 32):
        _check_width("Address width", addr_width, hi=64)
        _check_width("Data width", data_width, allowed=(32, 64))
        self._addr_width, self._data_width = addr_width, data_width
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1),
            "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })

    addr_width = property(lambda self: self._addr_width)
    data_width = property(lambda self: self._data_width)

    def __eq__(self, other):
        return (type(other) is type(self) and
                (self._addr_width, self._data_width) == (other._addr_width, other._data_width))

    def __hash__(self):
        return hash((type(self), self._addr_width, self._data_width))

    def __repr__(self):
        return f"AXI4LiteSignature(addr_width={self._addr_width}, data_width={self._data_width})"
