"""Board platforms: Alveo cards as Amaranth Xilinx platforms; bad --board refused before work."""


import pytest
from amaranth.vendor import XilinxPlatform

from recfabric.host.cli import main
from recfabric.hw.boards.alveo import ALVEO_BOARDS, BoardError, check_config, get_board
from recfabric.hw.boards.ecp5_timing import ecp5_part
from recfabric.hw.config import get_preset
from recfabric.hw.vitis_package import BOARDS, connectivity_cfg


@pytest.mark.parametrize("name,part,hbm_gib", [("u280", "xcu280-fsvh2892-2L-e", 8),
                                               ("u50", "xcu50-fsvh2104-2-e", 8),
                                               ("u55c", "xcu55c-fsvh2892-2L-e", 16)])
def test_alveo_platforms_describe_the_cards(name, part, hbm_gib):
    plat = get_board(name)
    assert isinstance(plat, XilinxPlatform)
    assert plat.family == "ultrascaleplus" and plat.part == part
    assert plat.default_clk_frequency == 100e6
    assert plat.lookup("hbm_cattrip").attrs["IOSTANDARD"] == "LVCMOS18"
    assert plat.hbm.bytes == hbm_gib << 30 and plat.hbm.pseudo_channels == 32
    # vitis_package reads its link facts from the platform
    assert BOARDS[name]["part"] == part
    assert BOARDS[name]["platform"] == plat.vitis_platform


def test_link_config_uses_the_board_platform():
    text = connectivity_cfg(get_preset("u280"), "u50")
    assert "--platform xilinx_u50_gen3x16_xdma_5_202210_1" in text
    assert "sp=" in text and "HBM[27]" in text and "HBM[28]" in text


def test_unknown_board_is_one_line_error():
    with pytest.raises(BoardError, match=r"unknown board 'vu9p'; boards: u280, u50, u55c"):
        get_board("vu9p")


def test_config_must_fit_the_board():
    with pytest.raises(BoardError, match="512 MiB per memory channel"):
        check_config(get_preset("u55c"), get_board("u50"))
    with pytest.raises(BoardError, match="needs 33 HBM pseudo-channels"):
        check_config(get_preset("u280").replace(mem_channels=32), get_board("u280"))
    check_config(get_preset("u55c"), get_board("u55c"))


def test_build_refuses_a_bad_board_before_generating(tmp_path, capsys, no_work):
    assert main(["build", "--config", "u280", "--board", "u999", "-o", str(tmp_path)]) == 2
    assert no_work == []  # generating u280 Verilog (minutes) never started
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["recfabric build: error: unknown board 'u999'; boards: u280, u50, u55c"]
    assert not any(tmp_path.iterdir())


def test_ecp5_timing_part_comes_from_amaranth_boards():
    part = ecp5_part("ulx3s-85f")
    assert part["device"] == "LFE5U-85F" and part["nextpnr"][:3] == ["--85k", "--package",
                                                                      "CABGA381"]
    with pytest.raises(ValueError, match="unknown ECP5 board 'icebreaker'"):
        ecp5_part("icebreaker")


def test_every_alveo_board_has_constraints():
    from recfabric.hw.vitis_package import constraints_dir
    for name in ALVEO_BOARDS:
        assert (constraints_dir() / f"{name}.xdc").exists()


def test_placement_only_fmax_comes_from_the_log():
    from recfabric.hw.boards.ecp5_timing import _fmax_from_log
    log = ("Info: Max frequency for clock 'clk': 45.72 MHz (FAIL at 250.00 MHz)\n"
           "Info: Routing..\n"
           "Warning: Max frequency for clock 'clk': 50.72 MHz (FAIL at 250.00 MHz)\n")
    assert _fmax_from_log(log) == {"clk": {"achieved": 50.72}}
    assert _fmax_from_log("Info: Program finished normally.\n") == {}
