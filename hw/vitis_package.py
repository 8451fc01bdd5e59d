"""Files a Vitis/Vivado flow needs to package and link the RecFabric RTL kernel.

:func:`write_vitis_files` writes, next to the kernel's Verilog:

- ``kernel.xml``: the RTL kernel description (``ap_ctrl_hs``, the control port, one
  ``m_axi_<bundle>`` master per bundle of :func:`recfabric.hw.register_map.kernel_args`, each as
  wide as the Verilog port of that bundle);
- ``package_kernel.tcl`` / ``gen_xo.tcl``: Vivado IP packaging of the Verilog into an ``.xo``
  (``ipx::package_project``, bus interfaces associated with ``ap_clk``, the register map, then
  ``package_xo``), run as ``vivado -mode batch -source gen_xo.tcl -tclargs recfabric.xo``;
- ``connectivity.cfg``: the ``v++ --link`` configuration mapping every master to an HBM
  pseudo-channel (table channel i -> ``HBM[i]``; requests, results and model share the channel
  after the last table channel), SLR placement and the kernel clock;
- a copy of the board's constraints from ``constraints/`` and a README saying how to run it.

One name runs through all of them (UG1393 requires it): the Verilog top module, the packaged IP
(``ipx::package_project`` names the IP after the top module), kernel.xml's ``name`` and ``vlnv``,
``package_xo -kernel_name`` and the ``nk=`` line are all :func:`kernel_name`, which carries the
configuration hash (also readable in the ``config_hash`` register and the status block).
``tests/test_xrt_kernel_xml.py`` checks the files and the Verilog against each other.

Nothing here needs a vendor tool; what the tools do with the files is their documented flow.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from xml.sax.saxutils import quoteattr

from .boards.alveo import ALVEO_BOARDS, get_board
from .config import AcceleratorConfig
from .register_map import CONTROL_RANGE, kernel_args

__all__ = ["BOARDS", "kernel_name", "kernel_xml", "package_tcl", "gen_xo_tcl",
           "connectivity_cfg", "write_vitis_files", "constraints_dir", "check_vitis_config",
           "VERILOG_FILE", "VITIS_ADDR_WIDTH", "KERNEL_VENDOR", "KERNEL_LIBRARY"]

#: The Verilog file ``write_vitis_files`` writes (its top module is :func:`kernel_name`).
VERILOG_FILE = "recfabric_kernel.v"
#: Address width Vitis requires of an RTL kernel's AXI4 masters (UG1393: 64-bit addresses).
VITIS_ADDR_WIDTH = 64
#: ``vlnv`` vendor and library: ``package_tcl`` packages the IP under these.
KERNEL_VENDOR, KERNEL_LIBRARY = "recfabric.org", "kernel"

#: Board facts used for linking (Vitis platform, HBM pseudo-channels, the SLR next to the HBM,
#: part), read from the Alveo platform definitions in :mod:`recfabric.hw.boards.alveo`.
BOARDS = {name: cls().vitis_facts() for name, cls in ALVEO_BOARDS.items()}


def constraints_dir() -> Path:
    """The repository's ``constraints/`` folder (installed as ``recfabric.constraints``)."""
    return Path(str(resources.files("recfabric.constraints")))


def kernel_name(config: AcceleratorConfig) -> str:
    """Kernel name carrying the configuration hash: XRT refuses to open a kernel of another
    configuration by name, before any register is read. It is also the Verilog top module's
    name (``recfabric build``) and so the packaged IP's name."""
    return f"recfabric_{config.config_hash:08x}"


def check_vitis_config(config: AcceleratorConfig) -> None:
    """Refuse a configuration Vitis cannot link as an RTL kernel (cheap; before generation):
    its AXI4 masters must have 64-bit addresses."""
    if config.mem_addr_width < VITIS_ADDR_WIDTH:
        raise ValueError(f"config {config.name!r} has mem_addr_width={config.mem_addr_width}: "
                         f"Vitis requires {VITIS_ADDR_WIDTH}-bit addresses on an RTL kernel's "
                         "AXI4 masters (set mem_addr_width=64 for an Alveo build)")


def _master_width(config: AcceleratorConfig, bundle: str) -> int:
    """Data width of master ``bundle``: the width the kernel gives that port (the model master is
    512 bits whatever ``mem_data_width`` is)."""
    from .kernel import master_data_widths  # noqa: PLC0415 - the kernel's own port widths

    widths = master_data_widths(config)
    if bundle not in widths:
        raise ValueError(f"no AXI master bundle {bundle!r} in the kernel "
                         f"(bundles: {', '.join(widths)})")
    return widths[bundle]


def kernel_xml(config: AcceleratorConfig) -> str:
    name = kernel_name(config)
    args = kernel_args(config.mem_channels)
    bundles = [a.bundle for a in args if a.is_pointer]
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<root versionMajor="1" versionMinor="6">',
        f'  <kernel name="{name}" language="ip_c" '
        f'vlnv="{KERNEL_VENDOR}:{KERNEL_LIBRARY}:{name}:1.0" '
        'attributes="" preferredWorkGroupSizeMultiple="0" workGroupSize="1" interrupt="true" '
        'hwControlProtocol="ap_ctrl_hs">',
        "    <ports>",
        f'      <port name="s_axi_control" mode="slave" range="{CONTROL_RANGE:#x}" '
        'dataWidth="32" portType="addressable" base="0x0"/>',
    ]
    for b in bundles:
        lines.append(f'      <port name="m_axi_{b}" mode="master" range="0xFFFFFFFFFFFFFFFF" '
                     f'dataWidth="{_master_width(config, b)}" portType="addressable" '
                     'base="0x0"/>')
    lines += ["    </ports>", "    <args>"]
    for i, a in enumerate(args):
        port = f"m_axi_{a.bundle}" if a.is_pointer else "s_axi_control"
        typ = "void*" if a.is_pointer else "uint"
        lines.append(
            f'      <arg name={quoteattr(a.name)} addressQualifier="{1 if a.is_pointer else 0}" '
            f'id="{i}" port="{port}" size="{a.size:#x}" offset="{a.offset:#x}" '
            f'hostOffset="0x0" hostSize="{a.size:#x}" type="{typ}"/>')
    lines += ["    </args>", "  </kernel>", "</root>", ""]
    return "\n".join(lines)


def package_tcl(config: AcceleratorConfig, verilog_file: str) -> str:
    args = kernel_args(config.mem_channels)
    out = [
        "# Package the RecFabric RTL kernel as a Vivado IP with the Vitis kernel properties.",
        "# Sourced by gen_xo.tcl; expects $packaged_dir and $tmp_dir.",
        "create_project -force kernel_pack $tmp_dir",
        f"add_files -norecurse [file join [file dirname [info script]] {verilog_file}]",
        f"set_property top {kernel_name(config)} [current_fileset]",
        "update_compile_order -fileset sources_1",
        f"ipx::package_project -root_dir $packaged_dir -vendor {KERNEL_VENDOR} "
        f"-library {KERNEL_LIBRARY} -taxonomy /KernelIP -import_files -set_current false",
        "ipx::unload_core $packaged_dir/component.xml",
        "ipx::edit_ip_in_project -upgrade true -name tmp_edit_project "
        "-directory $packaged_dir $packaged_dir/component.xml",
        "set core [ipx::current_core]",
        "set_property core_revision 1 $core",
        "foreach up [ipx::get_user_parameters] { ipx::remove_user_parameter "
        "[get_property NAME $up] $core }",
    ]
    for a in args:
        if a.is_pointer:
            out.append(f"ipx::associate_bus_interfaces -busif m_axi_{a.bundle} -clock ap_clk $core")
    out += [
        "ipx::associate_bus_interfaces -busif s_axi_control -clock ap_clk $core",
        'set mem_map [::ipx::add_memory_map -quiet "s_axi_control" $core]',
        'set addr_block [::ipx::add_address_block -quiet "reg0" $mem_map]',
        'set reg [::ipx::add_register "CTRL" $addr_block]',
        "set_property address_offset 0x000 $reg",
        "set_property size 32 $reg",
    ]
    for name, off in (("GIER", 0x4), ("IP_IER", 0x8), ("IP_ISR", 0xC)):
        out += [f'set reg [::ipx::add_register "{name}" $addr_block]',
                f"set_property address_offset {off:#05x} $reg", "set_property size 32 $reg"]
    for a in args:
        out += [f'set reg [::ipx::add_register -quiet "{a.name}" $addr_block]',
                f"set_property address_offset {a.offset:#05x} $reg",
                f"set_property size {8 * a.size} $reg"]
        if a.is_pointer:
            out += ["set regparam [::ipx::add_register_parameter -quiet {ASSOCIATED_BUSIF} $reg]",
                    f"set_property value m_axi_{a.bundle} $regparam"]
    out += [
        'set_property slave_memory_map_ref "s_axi_control" '
        '[::ipx::get_bus_interfaces -of $core "s_axi_control"]',
        "set_property xpm_libraries {XPM_MEMORY XPM_FIFO} $core",
        "set_property sdx_kernel true $core",
        "set_property sdx_kernel_type rtl $core",
        "ipx::create_xgui_files $core",
        "ipx::update_checksums $core",
        "ipx::check_integrity -kernel $core",
        "ipx::save_core $core",
        "close_project -delete",
        "",
    ]
    return "\n".join(out)


def gen_xo_tcl(config: AcceleratorConfig) -> str:
    name = kernel_name(config)
    return "\n".join([
        "# vivado -mode batch -source gen_xo.tcl -tclargs <output.xo>",
        "if { $::argc != 1 } { puts \"usage: gen_xo.tcl <output.xo>\"; exit 1 }",
        "set xoname [lindex $::argv 0]",
        "set here [file dirname [info script]]",
        "set packaged_dir [file join $here packaged_kernel]",
        "set tmp_dir [file join $here tmp_kernel_pack]",
        "source -notrace [file join $here package_kernel.tcl]",
        "if {[file exists $xoname]} { file delete -force $xoname }",
        f"package_xo -xo_path $xoname -kernel_name {name} -ip_directory $packaged_dir "
        f"-kernel_xml [file join $here kernel.xml]",
        "",
    ])


def connectivity_cfg(config: AcceleratorConfig, board: str) -> str:
    b = BOARDS[board]
    if config.mem_channels + 1 > b["hbm_channels"]:
        raise ValueError(f"{config.mem_channels} table channels plus one for requests, results "
                         f"and weights exceed the {b['hbm_channels']} HBM pseudo-channels of "
                         f"{board}")
    name = kernel_name(config)
    inst = f"{name}_1"
    shared = config.mem_channels
    lines = [
        f"# v++ --link --config connectivity.cfg --platform {b['platform']} "
        f"{name}.xo -o recfabric.xclbin",
        "[connectivity]",
        f"nk={name}:1:{inst}",
        f"slr={inst}:{b['slr']}",
    ]
    for a in kernel_args(config.mem_channels):
        if not a.is_pointer:
            continue
        bank = int(a.bundle[len("tables"):]) if a.bundle.startswith("tables") else shared
        lines.append(f"sp={inst}.m_axi_{a.bundle}:HBM[{bank}]")
    lines += [
        "",
        "[clock]",
        f"freqHz={int(config.clock_mhz * 1e6)}:{inst}.ap_clk",
        "",
    ]
    return "\n".join(lines)


_README = """# RecFabric kernel for {board}: Vitis build files

Generated by `recfabric build --config {config} --board {board}` for configuration
`{config}` (hash `{hash:08x}`, kernel `{name}`).

| file | what |
|---|---|
| `{verilog}` | the kernel RTL (top module `{name}`, the kernel's name) |
| `kernel.xml` | RTL kernel description: ap_ctrl_hs, `s_axi_control`, the AXI4 masters |
| `package_kernel.tcl`, `gen_xo.tcl` | Vivado IP packaging into `{name}.xo` |
| `connectivity.cfg` | `v++` link config: each master to an HBM pseudo-channel, SLR, clock |
| `{xdc}` | board constraints (kernel clock, false paths) for out-of-context runs |
| `config.json` | the accelerator configuration (the host checks its hash) |

With Vitis 2022.1 or newer and the `{platform}` platform installed:

```sh
vivado -mode batch -source gen_xo.tcl -tclargs {name}.xo
v++ --link --target hw --platform {platform} --config connectivity.cfg {name}.xo \\
    -o recfabric.xclbin
```

Then, on the card's host: `recfabric demo --config {config} --backend xrt --xclbin
recfabric.xclbin`, or `Accelerator.open(backend="xrt", config="{config}",
xclbin="recfabric.xclbin")`. The project's docs/alveo.md has every step, and what to do after a
run times out.
"""


def _top_module_check(config: AcceleratorConfig, verilog: str) -> None:
    name = kernel_name(config)
    if not re.search(rf"^module\s+{name}\s*\(", verilog, re.MULTILINE):
        found = re.findall(r"^module\s+(\w+)", verilog, re.MULTILINE)
        raise ValueError(f"the Verilog has no top module {name!r} (modules: "
                         f"{', '.join(found[:5]) or 'none'}{', ...' if len(found) > 5 else ''}): "
                         "the top module must be named after the kernel, as kernel.xml and the "
                         "packaged IP are (generate_verilog(config, name=kernel_name(config)))")


def write_vitis_files(config: AcceleratorConfig, verilog: str, out_dir, board: str = "u280"):
    """Write the Verilog and every Vitis file for ``board`` into ``out_dir``; return the paths.

    ``verilog``'s top module must be :func:`kernel_name` (``recfabric build`` generates it so);
    a configuration with addresses narrower than 64 bits is refused (:func:`check_vitis_config`).
    """
    import json

    get_board(board)  # unknown board: BoardError (a ValueError) naming it
    check_vitis_config(config)
    _top_module_check(config, verilog)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        VERILOG_FILE: verilog,
        "kernel.xml": kernel_xml(config),
        "package_kernel.tcl": package_tcl(config, VERILOG_FILE),
        "gen_xo.tcl": gen_xo_tcl(config),
        "connectivity.cfg": connectivity_cfg(config, board),
        "config.json": json.dumps(config.to_json(), indent=1) + "\n",
    }
    xdc = f"{board}.xdc"
    for fname, text in files.items():
        (out / fname).write_text(text)
    src = constraints_dir() / xdc
    if not src.exists():
        raise FileNotFoundError(f"no constraints for board {board!r} at {src}")
    text = src.read_text().replace("@PERIOD_NS@", f"{1000.0 / config.clock_mhz:.3f}")
    (out / xdc).write_text(text)
    b = BOARDS[board]
    (out / "README.md").write_text(_README.format(
        board=board, config=config.name, hash=config.config_hash, name=kernel_name(config),
        verilog=VERILOG_FILE, xdc=xdc, platform=b["platform"]))
    return sorted(p.name for p in out.iterdir())
