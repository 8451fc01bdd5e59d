"""kernel.xml, the packaging Tcl, the connectivity file and the Verilog agree, for every preset.

Every port (name, direction, width), every master's dataWidth and 64-bit address, every argument
(id, offset, size, port) against :mod:`recfabric.hw.register_map`, and one name for the Verilog
top module, the packaged IP (``vlnv``), kernel.xml, ``package_xo`` and ``nk=``.

How the Verilog side is obtained, per preset:

- ``tiny``: the real Verilog written by ``recfabric build`` (the build fixture of
  ``tests/test_hw_kernel_build.py`` calls :func:`check_build_dir`), and here the Verilog of
  :func:`recfabric.sim.verilator_device.kernel_verilog` (memoised on disk, shared with the
  Verilator tests) against the elaborated top's signature;
- ``small``: the real ``recfabric build`` output, in a ``slow`` test (generation takes ~30 s);
- every preset, u280-class included (their Verilog takes minutes): the port list of the kernel's
  *signature* (the ports ``generate_verilog`` gives ``verilog.convert``; for tiny the signature
  is checked equal to the Verilog's port list), and the top module's name that ``recfabric
  build`` passes to ``generate_verilog`` (generation stubbed, recording the name).
"""

import math
import re
import xml.etree.ElementTree as ET

import pytest
from amaranth.lib.wiring import Out

from recfabric.host.cli import main
from recfabric.hw.config import PRESETS, get_preset
from recfabric.hw.register_map import CONTROL_RANGE, STATUS_BASE, kernel_args
from recfabric.hw.vitis_package import (
    KERNEL_LIBRARY,
    KERNEL_VENDOR,
    VERILOG_FILE,
    VITIS_ADDR_WIDTH,
    check_vitis_config,
    connectivity_cfg,
    gen_xo_tcl,
    kernel_name,
    kernel_xml,
    package_tcl,
    write_vitis_files,
)

_PORT_RE = re.compile(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):0\]\s+)?(\w+)\s*;",
                      re.M)


def verilog_ports(text: str, module: str) -> dict:
    """name -> (direction, width) of module ``module``'s ports (ValueError if no such module)."""
    start = text.index(f"module {module}(")
    body = text[start:text.index("endmodule", start)]
    return {m[3]: (m[1], int(m[2] or 0) + 1) for m in _PORT_RE.finditer(body)}


def signature_ports(config) -> dict:
    """The Vitis top's ports from the kernel's signature (what ``vitis_kernel`` hands
    ``verilog.convert``), without generating Verilog."""
    from recfabric.hw.kernel import kernel_for_formats

    kernel = kernel_for_formats(config)
    ports = {"ap_clk": ("input", 1), "ap_rst_n": ("input", 1)}
    for path, member, value in kernel.signature.flatten(kernel):
        ports["_".join(map(str, path))] = ("output" if member.flow == Out else "input",
                                           len(value))
    return ports


def check_against(config, ports: dict, module: str, files: dict) -> None:
    """Assert that ``files`` (kernel.xml, package_kernel.tcl, gen_xo.tcl, connectivity.cfg
    texts) describe a top module ``module`` with ``ports``."""
    name = kernel_name(config)
    k = ET.fromstring(files["kernel.xml"]).find("kernel")
    # one name: Verilog top == kernel.xml name == vlnv's name == packaged IP == package_xo == nk
    assert module == name
    assert k.get("name") == name
    assert k.get("vlnv") == f"{KERNEL_VENDOR}:{KERNEL_LIBRARY}:{name}:1.0"
    tcl = files["package_kernel.tcl"]
    assert f"set_property top {name} [current_fileset]" in tcl
    assert f"-vendor {KERNEL_VENDOR} -library {KERNEL_LIBRARY} " in tcl
    assert f"-kernel_name {name} " in files["gen_xo.tcl"]
    assert f"nk={name}:1:{name}_1" in files["connectivity.cfg"]

    # ports: the clock, reset, interrupt, and one interface per kernel.xml port, nothing else
    xml_ports = {p.get("name"): p for p in k.find("ports")}
    assert ports["ap_clk"] == ("input", 1) and ports["ap_rst_n"] == ("input", 1)
    assert ports["interrupt"] == ("output", 1)
    interfaces = {p.rsplit("_", 1)[0] for p in ports if p.startswith(("m_axi_", "s_axi_"))}
    assert interfaces == set(xml_ports)
    assert set(ports) - {"ap_clk", "ap_rst_n", "interrupt"} == \
        {p for p in ports if p.rsplit("_", 1)[0] in interfaces}

    ctl = xml_ports["s_axi_control"]
    assert ctl.get("mode") == "slave" and int(ctl.get("range"), 16) == CONTROL_RANGE
    addr = int(math.log2(CONTROL_RANGE))
    assert ports["s_axi_control_awaddr"] == ("input", addr)
    assert ports["s_axi_control_araddr"] == ("input", addr)
    assert ports["s_axi_control_wdata"] == ("input", int(ctl.get("dataWidth")))
    assert ports["s_axi_control_rdata"] == ("output", int(ctl.get("dataWidth")))

    masters = {n for n in xml_ports if n.startswith("m_axi_")}
    for m in masters:
        p = xml_ports[m]
        width = int(p.get("dataWidth"))
        assert p.get("mode") == "master" and int(p.get("range"), 16) == 2**64 - 1
        reads, writes = f"{m}_rdata" in ports, f"{m}_wdata" in ports
        assert reads or writes, m
        if reads:
            assert ports[f"{m}_rdata"] == ("input", width), m
            assert ports[f"{m}_araddr"] == ("output", VITIS_ADDR_WIDTH), m
        if writes:
            assert ports[f"{m}_wdata"] == ("output", width), m
            assert ports[f"{m}_wstrb"] == ("output", width // 8), m
            assert ports[f"{m}_awaddr"] == ("output", VITIS_ADDR_WIDTH), m
        assert f"sp={name}_1.{m}:HBM[" in files["connectivity.cfg"], m

    # arguments: kernel.xml ids, offsets, sizes and ports == the register map == the Tcl
    args = kernel_args(config.mem_channels)
    xml_args = sorted(k.find("args"), key=lambda a: int(a.get("id")))
    assert [int(a.get("id")) for a in xml_args] == list(range(len(args)))
    end = 0x10
    for a, x in zip(args, xml_args, strict=True):
        assert x.get("name") == a.name
        assert int(x.get("offset"), 16) == a.offset and a.offset >= end  # in order, no overlap
        end = a.offset + a.size
        assert int(x.get("size"), 16) == a.size == int(x.get("hostSize"), 16)
        if a.is_pointer:
            assert x.get("port") == f"m_axi_{a.bundle}" and x.get("port") in masters
            assert x.get("addressQualifier") == "1" and x.get("type") == "void*"
            assert f"set_property value m_axi_{a.bundle} $regparam" in tcl
        else:
            assert x.get("port") == "s_axi_control" and x.get("addressQualifier") == "0"
        assert re.search(rf'add_register -quiet "{a.name}" \$addr_block\]\n'
                         rf"set_property address_offset {a.offset:#05x} \$reg\n"
                         rf"set_property size {8 * a.size} \$reg", tcl), a.name
    assert end <= STATUS_BASE <= CONTROL_RANGE
    assert {x.get("port") for x in xml_args if x.get("addressQualifier") == "1"} == masters


def files_for(config, board="u280") -> dict:
    return {"kernel.xml": kernel_xml(config), "package_kernel.tcl": package_tcl(config, "k.v"),
            "gen_xo.tcl": gen_xo_tcl(config), "connectivity.cfg": connectivity_cfg(config, board)}


def check_build_dir(build_dir, config) -> None:
    """The files ``recfabric build`` wrote to ``build_dir`` against its real Verilog."""
    text = (build_dir / VERILOG_FILE).read_text()
    files = {f: (build_dir / f).read_text() for f in
             ("kernel.xml", "package_kernel.tcl", "gen_xo.tcl", "connectivity.cfg")}
    module = kernel_name(config)
    check_against(config, verilog_ports(text, module), module, files)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_tiny_verilog_ports_are_the_signature_ports():
    """The signature path (used for u280-class presets) gives exactly the Verilog's ports."""
    from recfabric.sim.verilator_device import TOP, kernel_verilog

    cfg = get_preset("tiny")
    ports = verilog_ports(kernel_verilog(cfg), TOP)
    assert ports == signature_ports(cfg) and len(ports) > 100
    check_against(cfg, ports, kernel_name(cfg), files_for(cfg, "u55c"))


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_kernel_xml_matches_its_ports(preset, tmp_path, monkeypatch):
    """Signature path (see the module docstring), and `recfabric build` with generation stubbed:
    the top module is named after the kernel, and the files it writes pass the same check."""
    import recfabric.hw.kernel as kernel

    cfg = get_preset(preset)
    named = []

    def fake_generate(config, name="recfabric_kernel"):
        named.append(name)
        return f"module {name}(ap_clk);\n  input ap_clk;\nendmodule\n"

    monkeypatch.setattr(kernel, "generate_verilog", fake_generate)
    board = "u55c" if preset in ("tiny", "small") else preset.split("-")[0]
    assert main(["build", "--config", preset, "--board", board, "-o", str(tmp_path)]) == 0
    assert named == [kernel_name(cfg)]
    files = {f: (tmp_path / f).read_text() for f in
             ("kernel.xml", "package_kernel.tcl", "gen_xo.tcl", "connectivity.cfg")}
    assert files == files_for(cfg, board) | {"package_kernel.tcl": package_tcl(cfg, VERILOG_FILE)}
    check_against(cfg, signature_ports(cfg), named[0], files)


def test_model_master_is_512_bits_in_kernel_xml():
    """Issue 15.1: m_axi_model is declared as wide as its Verilog port (512), not 256."""
    for cfg in PRESETS.values():
        k = ET.fromstring(kernel_xml(cfg)).find("kernel")
        widths = {p.get("name"): int(p.get("dataWidth")) for p in k.find("ports")}
        assert widths["m_axi_model"] == 512
        assert widths["m_axi_tables0"] == cfg.mem_data_width


def test_vitis_files_refuse_narrow_addresses_and_misnamed_tops(tmp_path):
    cfg = get_preset("tiny")
    narrow = cfg.replace(name="tiny-a48", mem_addr_width=48)
    with pytest.raises(ValueError, match="mem_addr_width=48: Vitis requires 64-bit addresses"):
        check_vitis_config(narrow)
    with pytest.raises(ValueError, match="mem_addr_width=48"):
        write_vitis_files(narrow, f"module {kernel_name(narrow)}(a);\nendmodule\n", tmp_path)
    with pytest.raises(ValueError, match=rf"no top module '{kernel_name(cfg)}' \(modules: "
                                         r"recfabric_kernel\)"):
        write_vitis_files(cfg, "module recfabric_kernel(a);\nendmodule\n", tmp_path)
    assert not (tmp_path / "kernel.xml").exists(), "nothing written for a refused build"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_small_build_verilog_matches_kernel_xml(tmp_path):
    """The real `recfabric build --config small` output (Verilog generation ~30 s)."""
    assert main(["build", "--config", "small", "--board", "u55c", "-o", str(tmp_path)]) == 0
    check_build_dir(tmp_path, get_preset("small"))
    ports = verilog_ports((tmp_path / VERILOG_FILE).read_text(), kernel_name(get_preset("small")))
    assert ports == signature_ports(get_preset("small"))
