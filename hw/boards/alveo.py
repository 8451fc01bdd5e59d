"""Alveo U280, U50 and U55C as Amaranth platforms, in the amaranth-boards style.

amaranth-boards defines no Alveo or HBM card, so the three data-centre cards RecFabric targets
are defined here the same way: an :class:`amaranth.vendor.XilinxPlatform` subclass per card with
its part (``device``, ``package``, ``speed``), its board clocks and its few fixed I/Os as
``resources``, plus what a Vitis build needs and Amaranth's platform has no field for: the Vitis
platform (shell) name, the HBM description (stacks, pseudo-channels, capacity, bandwidth) and
the SLR the HBM sits next to.

Pin locations and clock rates are the cards' own (Alveo user guides UG1314 for the U280, UG1371
for the U50, UG1469 for the U55C, and their master XDC files). On an Alveo card the kernel does
not own these pins: the Vitis shell does, and drives ``ap_clk`` itself. They are here so that the
platforms are complete descriptions of the boards (a shell-less design could use them, as
amaranth-boards' platforms are used), and because the board clock and part are what
:mod:`recfabric.hw.vitis_package` and ``recfabric build --board`` read.

:func:`get_board` resolves a ``--board`` name and raises a one-line :class:`BoardError` for an
unknown one, before any Verilog is generated.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.build import Attrs, Clock, DiffPairs, Pins, Resource
from amaranth.vendor import XilinxPlatform

__all__ = ["HBM", "AlveoPlatform", "AlveoU280Platform", "AlveoU50Platform",
           "AlveoU55CPlatform", "ALVEO_BOARDS", "BoardError", "get_board", "check_config"]

MiB = 1 << 20
GiB = 1 << 30


class BoardError(ValueError):
    """An unknown board, or a configuration that does not fit the board (one-line message)."""


@dataclass(frozen=True)
class HBM:
    """High-bandwidth memory of a card, as Vitis exposes it (``HBM[0]`` .. ``HBM[n-1]``)."""

    stacks: int
    pseudo_channels: int
    bytes: int
    bandwidth_gbs: float  # theoretical peak, GB/s

    @property
    def channel_bytes(self) -> int:
        """Capacity of one pseudo-channel."""
        return self.bytes // self.pseudo_channels


def _sysclk(name, number, p, n, hz=100e6):
    return Resource(name, number, DiffPairs(p, n, dir="i"), Clock(hz), Attrs(IOSTANDARD="LVDS"))


def _lvcmos18(name, pin, direction):
    return Resource(name, 0, Pins(pin, dir=direction), Attrs(IOSTANDARD="LVCMOS18"))


class AlveoPlatform(XilinxPlatform):
    """What every Alveo card adds to :class:`~amaranth.vendor.XilinxPlatform`.

    Members
    -------
    vitis_platform : str
        The Vitis target platform (shell) ``v++ --platform`` takes.
    hbm : HBM
    kernel_slr : str
        The SLR next to the HBM, where the kernel is placed.
    """

    vitis_platform: str = ""
    hbm: HBM = None
    kernel_slr = "SLR0"
    connectors = []

    @property
    def part(self) -> str:
        """The full part name (``xcu280-fsvh2892-2L-e``)."""
        return self._part

    def vitis_facts(self) -> dict:
        """The facts :mod:`recfabric.hw.vitis_package` uses."""
        return {"platform": self.vitis_platform, "hbm_channels": self.hbm.pseudo_channels,
                "slr": self.kernel_slr, "part": self.part,
                "channel_bytes": self.hbm.channel_bytes}


class AlveoU280Platform(AlveoPlatform):
    """Alveo U280: XCU280 (3 SLRs), 8 GiB HBM2 in 2 stacks, 2 x 16 GiB DDR4 (not used here)."""

    device = "xcu280"
    package = "fsvh2892"
    speed = "2L-e"
    vitis_platform = "xilinx_u280_gen3x16_xdma_1_202211_1"
    hbm = HBM(stacks=2, pseudo_channels=32, bytes=8 * GiB, bandwidth_gbs=460.0)
    default_clk = "sysclk"
    resources = [
        _sysclk("sysclk", 0, "BJ43", "BJ44"),  # 100 MHz, DDR4 bank 0 reference
        _sysclk("sysclk", 1, "BH6", "BJ6"),  # 100 MHz, DDR4 bank 1 reference
        _sysclk("sysclk", 2, "G31", "F31"),  # 100 MHz
        _lvcmos18("hbm_cattrip", "D32", "o"),  # drive low: HBM catastrophic-temperature trip
        _lvcmos18("reset", "L30", "i"),
    ]


class AlveoU50Platform(AlveoPlatform):
    """Alveo U50: XCU50 (2 SLRs), 8 GiB HBM2 in 2 stacks, no DDR."""

    device = "xcu50"
    package = "fsvh2104"
    speed = "2-e"
    vitis_platform = "xilinx_u50_gen3x16_xdma_5_202210_1"
    hbm = HBM(stacks=2, pseudo_channels=32, bytes=8 * GiB, bandwidth_gbs=316.0)
    default_clk = "sysclk"
    resources = [
        _sysclk("sysclk", 0, "G17", "G16"),  # 100 MHz
        _sysclk("sysclk", 1, "BB18", "BC18"),  # 100 MHz
        _lvcmos18("hbm_cattrip", "J18", "o"),
    ]


class AlveoU55CPlatform(AlveoPlatform):
    """Alveo U55C: XCU55C (3 SLRs), 16 GiB HBM2 in 2 stacks, no DDR."""

    device = "xcu55c"
    package = "fsvh2892"
    speed = "2L-e"
    vitis_platform = "xilinx_u55c_gen3x16_xdma_3_202210_1"
    hbm = HBM(stacks=2, pseudo_channels=32, bytes=16 * GiB, bandwidth_gbs=460.0)
    default_clk = "sysclk"
    resources = [
        _sysclk("sysclk", 0, "BK10", "BL10"),  # 100 MHz
        _sysclk("sysclk", 1, "BK43", "BK44"),  # 100 MHz
        _sysclk("sysclk", 2, "F24", "F23"),  # 100 MHz
        _lvcmos18("hbm_cattrip", "BE45", "o"),
        _lvcmos18("reset", "BG45", "i"),
    ]


#: ``--board`` names.
ALVEO_BOARDS = {"u280": AlveoU280Platform, "u50": AlveoU50Platform, "u55c": AlveoU55CPlatform}


def get_board(name: str) -> AlveoPlatform:
    """The platform of board ``name`` (one of :data:`ALVEO_BOARDS`)."""
    try:
        return ALVEO_BOARDS[name]()
    except KeyError:
        raise BoardError(f"unknown board {name!r}; boards: {', '.join(ALVEO_BOARDS)}") from None


def check_config(config, board: AlveoPlatform) -> None:
    """Refuse a configuration that cannot be linked on ``board`` (cheap; before generation)."""
    name = type(board).__name__
    need = config.mem_channels + 1  # the requests/results/model share one more channel
    if need > board.hbm.pseudo_channels:
        raise BoardError(f"config {config.name!r} needs {need} HBM pseudo-channels "
                         f"({config.mem_channels} table channels + 1); {name} has "
                         f"{board.hbm.pseudo_channels}")
    if config.channel_bytes > board.hbm.channel_bytes:
        raise BoardError(f"config {config.name!r} assumes {config.channel_bytes // MiB} MiB per "
                         f"memory channel; an HBM pseudo-channel of {name} holds "
                         f"{board.hbm.channel_bytes // MiB} MiB")
