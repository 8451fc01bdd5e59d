# amaranth: UnusedElaboratable=no
# (Amaranth's documented per-file lint switch, which must be the first line: a kernel built by
# kernel_for_formats() is never elaborated, the host only asks its blocks for their load
# formats. The lint stays on for kernels built in any other file.)
"""The RecFabric kernel: every block of the dataflow behind the Vitis RTL-kernel interface.

::

    s_axi_control -> ControlRegisters --start--> program loader: RecordFetcher (m_axi_model,
                                                 when flags.LOAD)
                                                      | program words -> every block's runtime port
    m_axi_requests -> RecordFetcher -> RecordParser --feature IDs--> LookupDispatcher
                                            | dense                         | lookups
                                            v                               v
                  [ElementPacker -> MLPPipeline (bottom)]         EmbeddingLookupUnit[i]
                                            |                      (m_axi_tables<i>)
                                            v                     OnChipTable[j]
                                       ConcatStage <- StreamArbiter <-------'
                                            |
                                      [DotInteraction]
                                            v
                                       MLPPipeline (top, sigmoid) -> scores of a request
                                            -> ResultWriter (m_axi_results)

Blocks in brackets exist when the configuration has them (``mlp_bottom_shapes``, ``dot_lanes``);
the program chooses per model whether dense features take the bottom MLP (``DATAPATH`` word)
and whether the interaction is concatenation or dot (``INTERACTION`` descriptor).

A run: the host writes the arguments (:func:`recfabric.hw.register_map.kernel_args`) and
``ap_start``. With ``flags`` bit 0 (LOAD) set, the kernel first executes the *kernel program* in
the model buffer (:mod:`recfabric.host.compiler.kernel_program` builds it): a header word, then
command words ``target | payload << 8`` (:class:`Target`), each routed to a block's configuration
stream, and ``BLOCK`` commands, each followed by its data beats, which go one per cycle to a
block's wide load port (MLP weights and biases, on-chip rows). Then it reads ``batch`` request
records, and finishes (``ap_done``) once every result record and the status block are in memory.

:class:`RecFabricKernel` is the Amaranth component (ports are wiring members, as tests use them);
:func:`vitis_kernel` wraps it with Vitis names (``ap_clk``, ``ap_rst_n``, ``s_axi_control_*``,
``m_axi_<bundle>_*``, ``interrupt``) and :func:`generate_verilog` writes that top.
"""

from __future__ import annotations

import enum
from types import SimpleNamespace

from amaranth.back import verilog
from amaranth.hdl import Cat, ClockDomain, Const, Elaboratable, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .arith import carry_select_add, pipelined_count
from .axi4 import AXI4LiteSignature, AXI4Signature
from .bag_combiner import BagCombiner
from .concat_stage import ConcatStage
from .config import AcceleratorConfig
from .control_registers import ControlRegisters
from .embedding_lookup import EmbeddingLookupUnit
from .hier import HierarchicalEmitter, bind, few_collections
from .interaction import DotInteraction, ElementPacker
from .lookup_dispatcher import LookupDispatcher
from .mlp import MLPPipeline
from .onchip_table import OnChipTable
from .register_map import KERNEL_ID, KERNEL_VERSION, NO_ERROR_REQUEST, kernel_args
from .request_reader import ParserParam, RecordFetcher, RecordParser
from .result_writer import STATUS_WORDS, ResultWriter
from .stream_arbiter import StreamArbiter
from .stream_types import BLOCK_ADDR_BITS, BLOCK_SEL_BITS, RequestFlagsLayout
from .time0 import fire_trigger

__all__ = ["Target", "PROGRAM_MAGIC", "PROGRAM_FORMAT", "MODEL_DATA_WIDTH", "FLAG_LOAD",
           "WATCHDOG_CYCLES", "BlockCommandLayout", "RecFabricKernel",
           "vitis_kernel", "generate_verilog", "KernelUnsupported",
           "kernel_for_formats", "master_data_widths"]

#: First 32 bits of a kernel program's header word ("RFpg").
PROGRAM_MAGIC = 0x67704652
#: Bits 64..95 of the header word: the program format the kernel executes (3: packed blocks;
#: 4: table parts; 5: bottom MLP, interaction and datapath words).
#: A header with another value leaves no valid program, as a wrong magic does.
PROGRAM_FORMAT = 5
#: Width of the model master: a command word holds the widest command payload; a data beat is
#: one word (32 int16 or 64 int8 weights, two on-chip RAM words).
MODEL_DATA_WIDTH = 512
#: ``flags`` argument bit 0: execute the kernel program before the batch.
FLAG_LOAD = 1
#: Default run watchdog (:class:`RecFabricKernel`): cycles without any progress after which a
#: run is ended with ``ERROR_PROGRAM``. A run of a valid program never waits that long (an MLP
#: vector, the longest step without a handshake, takes thousands of cycles at most).
WATCHDOG_CYCLES = 1 << 20


def master_data_widths(config: AcceleratorConfig) -> dict:
    """Data width of each AXI master bundle (``requests``, ``results``, ``model``,
    ``tables<i>``): the kernel's ports and the Vitis kernel.xml both come from here."""
    widths = {"requests": config.mem_data_width, "results": config.mem_data_width,
              "model": MODEL_DATA_WIDTH}
    widths.update({f"tables{i}": config.mem_data_width for i in range(config.mem_channels)})
    return widths


class KernelUnsupported(ValueError):
    """A configuration the kernel generator does not build (the message says what and why)."""


class Target(enum.IntEnum):
    """Command word targets (bits 7..0 of a program word), and block sinks (``sink`` of a
    :class:`BlockCommandLayout`)."""

    PARSER = 0x01  # RecordParser.i_param
    PLACE = 0x02  # LookupDispatcher.i_place
    CONCAT = 0x03  # ConcatStage.i_desc
    MLP = 0x04  # command: MLPPipeline.i_load (top; descriptors); block sink: its i_block
    BLOCK = 0x05  # a block command: the next ``beats`` words are data beats for ``sink``
    BOTTOM_MLP = 0x06  # command: bottom MLPPipeline.i_load (descriptors); block sink: i_block
    INTERACTION = 0x07  # DotInteraction.i_desc (dot_lanes)
    DATAPATH = 0x08  # DatapathLayout: the kernel's own routing (bottom MLP or not)
    UNIT_DESC = 0x40  # + unit: EmbeddingLookupUnit.i_desc
    ONCHIP_DESC = 0x80  # + unit: OnChipTable.i_desc
    ONCHIP_LOAD = 0xC0  # + unit, block sink: OnChipTable.i_load (packed words)


class BlockCommandLayout(data.StructLayout):
    """Payload of a ``Target.BLOCK`` command: the next ``beats`` program words are data beats
    for block sink ``sink`` (a :class:`Target` code), each handed over as a
    :class:`~recfabric.hw.stream_types.BlockBeatLayout` with this ``sel`` and address ``addr +
    k`` (``k`` the beat's position in the block), one per cycle."""

    def __init__(self):
        super().__init__({"sink": 8, "sel": BLOCK_SEL_BITS, "addr": BLOCK_ADDR_BITS,
                          "beats": 32})


class DatapathLayout(data.StructLayout):
    """The kernel's routing word (``Target.DATAPATH``), reset to zero by every program load.

    Members
    -------
    bottom : unsigned(1)
        Dense features go through the bottom MLP (its output is the dense part); 0: they go to
        the concatenation as they are.
    """

    def __init__(self):
        super().__init__({"bottom": 1})


class RecFabricKernel(wiring.Component):
    """The kernel for one :class:`~recfabric.hw.config.AcceleratorConfig` (see module docs).

    Parameters
    ----------
    config : AcceleratorConfig
    watchdog_cycles : int
        A run in which no stream or AXI channel of the datapath moves for this many cycles is
        ended (``ERROR_PROGRAM``, docs/kernel.md "Run protocol"); tests use small values.

    Members
    -------
    s_axi_control : In(AXI4LiteSignature(addr_width=12))
    m_axi_<bundle> : Out(AXI4Signature)
        ``requests``, ``results``, ``model`` and ``tables<i>`` (one per memory channel).
    interrupt : Out(1)
    """

    def __init__(self, config: AcceleratorConfig, *, watchdog_cycles: int = WATCHDOG_CYCLES):
        if not isinstance(watchdog_cycles, int) or watchdog_cycles < 16:
            raise ValueError(f"watchdog_cycles must be an integer >= 16, not {watchdog_cycles!r}")
        self.watchdog_cycles = watchdog_cycles
        self.config = c = config
        self.args = kernel_args(c.mem_channels)
        widths = master_data_widths(c)
        mk = dict(addr_width=c.mem_addr_width, id_width=1)
        members = {
            "s_axi_control": In(AXI4LiteSignature(addr_width=12)),
            "interrupt": Out(1),
            "m_axi_requests": Out(AXI4Signature(data_width=widths["requests"], read=True,
                                                write=False, **mk)),
            "m_axi_results": Out(AXI4Signature(data_width=widths["results"], read=False,
                                               write=True, **mk)),
            "m_axi_model": Out(AXI4Signature(data_width=widths["model"], read=True,
                                             write=False, **mk)),
        }
        for i in range(c.mem_channels):
            members[f"m_axi_tables{i}"] = Out(AXI4Signature(
                data_width=widths[f"tables{i}"], addr_width=c.mem_addr_width,
                id_width=c.mem_id_width, read=True, write=False))
        super().__init__(members)
        # Blocks are built here so that the host can ask them for their load formats.
        self.ctrl = ControlRegisters(c.mem_channels, c.config_hash,
                                     num_units=c.mem_channels + c.onchip_units)
        # The program loader streams: 128 words of FIFO keep bursts in flight over ~100 cycles
        # of read latency, so it sustains one word per cycle (docs/kernel.md).
        self.model_fetch = RecordFetcher(data_width=MODEL_DATA_WIDTH,
                                         addr_width=c.mem_addr_width, max_burst=16,
                                         fifo_depth=128)
        self.fetch = RecordFetcher(data_width=c.mem_data_width, addr_width=c.mem_addr_width,
                                   max_burst=16, fifo_depth=32)
        self.parser = RecordParser(data_width=c.mem_data_width, max_features=c.max_features,
                                   inflight=c.inflight, data_bits=c.data_bits)
        # Built here from config_kwargs, not from_config: blocks built in this file share its
        # lint switch (first line), so a kernel_for_formats() kernel warns about nothing.
        self.dispatcher = LookupDispatcher(**LookupDispatcher.config_kwargs(c))
        self.units = [EmbeddingLookupUnit(**EmbeddingLookupUnit.config_kwargs(c, arid=0))
                      for _ in range(c.mem_channels)]
        self.onchip = [OnChipTable(**OnChipTable.config_kwargs(c, word_bits=256,
                                                               beat_bits=MODEL_DATA_WIDTH))
                       for _ in range(c.onchip_units)]
        pooled_shape = (self.units + self.onchip)[0].o_pooled.payload.shape()
        self.arbiter = StreamArbiter(pooled_shape, len(self.units) + len(self.onchip))
        # Split multi-hot tables: the pieces of their bags meet here (hw/bag_combiner.py).
        self.combiner = (BagCombiner(**BagCombiner.config_kwargs(c))
                         if self.dispatcher.pools else None)
        lanes = c.mlp_top_shapes[0][1]
        self.bottom = self.dense_packer = None
        if c.mlp_bottom_shapes:
            self.bottom = MLPPipeline(**MLPPipeline.config_kwargs(
                c, "bottom", beat_bits=MODEL_DATA_WIDTH))
            self.dense_packer = ElementPacker(lanes=c.mlp_bottom_shapes[0][1], bits=c.data_bits)
        self.concat = ConcatStage(lanes=lanes, data_bits=c.data_bits, max_dim=c.max_dim,
                                  max_slots=c.max_features, max_concat=c.max_concat,
                                  max_dense=max(c.max_dense,
                                                c.max_width if self.bottom else 0),
                                  inflight=c.inflight)
        self.interact = None
        if c.dot_lanes:
            self.interact = DotInteraction(lanes=lanes, data_bits=c.data_bits,
                                           acc_bits=c.acc_bits, max_vectors=c.max_features + 1,
                                           max_in=c.max_concat, dot_lanes=c.dot_lanes)
        self.datapath_layout = DatapathLayout()
        self.mlp = MLPPipeline(**MLPPipeline.config_kwargs(
            c, "top", beat_bits=MODEL_DATA_WIDTH))
        self.writer = ResultWriter(data_width=c.mem_data_width, addr_width=c.mem_addr_width,
                                   outputs=c.max_outputs)

    def elaborate(self, platform):
        m = Module()
        for name in ("ctrl", "model_fetch", "fetch", "parser", "dispatcher", "arbiter",
                     "concat", "mlp", "writer"):
            m.submodules[name] = getattr(self, name)
        for i, u in enumerate(self.units):
            m.submodules[f"unit{i}"] = u
        for i, t in enumerate(self.onchip):  # one module for all when hierarchical (hw/hier.py)
            m.submodules[f"onchip{i}"] = bind(platform, t)
        for name in ("bottom", "dense_packer", "interact", "combiner"):
            if getattr(self, name) is not None:
                m.submodules[name] = getattr(self, name)
        m.submodules.flag_fifo = flag_fifo = SyncFIFOBuffered(
            width=RequestFlagsLayout().size, depth=2 * len(self.config.mlp_top_shapes) + 4)

        self._connect_ports(m)
        run = self._sequence_runs(m)
        self._connect_datapath(m, run, flag_fifo)
        self._watchdog(m, run)
        self._status(m, run, flag_fifo)
        return m

    def _connect_ports(self, m):
        ctrl = self.ctrl
        wiring.connect(m, wiring.flipped(self.s_axi_control), ctrl.s_axi)
        m.d.comb += self.interrupt.eq(ctrl.interrupt)
        wiring.connect(m, self.model_fetch.m_axi, wiring.flipped(self.m_axi_model))
        wiring.connect(m, self.fetch.m_axi, wiring.flipped(self.m_axi_requests))
        wiring.connect(m, self.writer.m_axi, wiring.flipped(self.m_axi_results))
        for i, u in enumerate(self.units):
            wiring.connect(m, u.m_axi, wiring.flipped(getattr(self, f"m_axi_tables{i}")))

    def _sequence_runs(self, m):
        """Run sequencing: optional program load (flags.LOAD), then the batch.

        The kernel holds a valid program from the end of a LOAD whose header had the magic,
        whose reads were all answered OKAY and whose command words all had a target of this
        kernel, until reset, the next LOAD, or a run ended by the watchdog. A run without one
        processes no request: its batch is taken as 0 (results untouched, the status block is
        written at its place) and ``ERROR_NO_PROGRAM`` is set. An unknown target or the
        watchdog sets ``ERROR_PROGRAM`` (``run.program_error``).
        """
        ctrl = self.ctrl
        run = SimpleNamespace(start_batch=Signal(), batch=Signal(32), skip=Signal(),
                              no_program=Signal(), model_axi_error=Signal(),
                              words_per_record=Signal(16), program_error=Signal(),
                              running=Signal(), abort=Signal(),
                              datapath=Signal(self.datapath_layout))
        program_valid = Signal()  # reset: no program
        prog_words = Signal(32)
        block = SimpleNamespace(left=Signal(32), sink=Signal(8), sel=Signal(BLOCK_SEL_BITS),
                                addr=Signal(BLOCK_ADDR_BITS))
        word = self.model_fetch.o_word
        m.d.comb += self.model_fetch.batch.eq(1)
        loading = Signal()  # the program loader's sticky error belongs to this run only then
        with m.If(ctrl.start):
            m.d.sync += [run.no_program.eq(0), run.model_axi_error.eq(0),
                         run.program_error.eq(0)]
        with m.Elif(loading & self.model_fetch.axi_error):
            m.d.sync += run.model_axi_error.eq(1)
        with m.FSM(name="run"):
            with m.State("IDLE"):
                with m.If(ctrl.start):
                    with m.If(ctrl.arg_flags[0]):
                        m.d.comb += [self.model_fetch.start.eq(1),
                                     self.model_fetch.base.eq(ctrl.arg_model),
                                     self.model_fetch.words.eq(1)]
                        m.d.sync += [program_valid.eq(0), run.datapath.eq(0),
                                     block.left.eq(0)]
                        m.next = "HEADER"
                    with m.Else():
                        m.next = "BATCH"
            with m.State("HEADER"):
                m.d.comb += [word.ready.eq(1), loading.eq(1)]
                with m.If(word.valid):
                    m.d.sync += prog_words.eq(word.payload[32:64])
                    with m.If((word.payload[:32] != PROGRAM_MAGIC) |
                              (word.payload[64:96] != PROGRAM_FORMAT)):
                        m.next = "BATCH"  # bad program: nothing is loaded, the run says so
                    with m.Else():
                        m.next = "PROGRAM_START"
            with m.State("PROGRAM_START"):
                m.d.comb += [self.model_fetch.start.eq(1), loading.eq(1),
                             # (carry-select: a 64-bit ripple add was 8.5 logic levels)
                             self.model_fetch.base.eq(carry_select_add(
                                 ctrl.arg_model, MODEL_DATA_WIDTH // 8, len(ctrl.arg_model))),
                             self.model_fetch.words.eq(prog_words)]
                with m.If(prog_words == 0):
                    m.d.sync += program_valid.eq(~run.model_axi_error)
                    m.next = "BATCH"
                with m.Else():
                    m.next = "PROGRAM"
            with m.State("PROGRAM"):
                m.d.comb += loading.eq(1)
                known = self._route_program(m, word, run, block)
                with m.If(word.valid & word.ready):
                    m.d.sync += prog_words.eq(prog_words - 1)
                    # The rest of the program is still read (and routed). Words read with an
                    # error response are not judged: that is ERROR_AXI's (and no program).
                    with m.If(~known & ~(run.model_axi_error | self.model_fetch.axi_error)):
                        m.d.sync += run.program_error.eq(1)
                    with m.If(prog_words == 1):
                        m.d.sync += program_valid.eq(~(run.model_axi_error |
                                                       self.model_fetch.axi_error |
                                                       run.program_error | ~known))
                        m.next = "BATCH"
            with m.State("BATCH"):
                m.d.comb += run.start_batch.eq(1)
                with m.If(~program_valid):
                    m.d.sync += run.no_program.eq(1)
                m.next = "RUNNING"
            with m.State("RUNNING"):
                m.d.comb += run.running.eq(1)
                with m.If(run.abort):  # the watchdog: end the run, drop the program
                    m.d.sync += [program_valid.eq(0), run.program_error.eq(1)]
                with m.If(self.writer.done):
                    m.next = "IDLE"
        m.d.comb += [run.batch.eq(Mux(program_valid, ctrl.arg_batch, 0)),
                     run.skip.eq(~program_valid)]
        return run

    def _connect_datapath(self, m, run, flag_fifo):
        """Record fetch -> parser -> dispatcher -> lookup units -> concat -> MLP -> writer."""
        ctrl = self.ctrl
        m.d.comb += [
            self.fetch.start.eq(run.start_batch), self.fetch.base.eq(ctrl.arg_requests),
            self.fetch.batch.eq(run.batch),
            self.parser.start.eq(run.start_batch), self.parser.batch.eq(run.batch),
            self.writer.start.eq(run.start_batch), self.writer.base.eq(ctrl.arg_results),
            self.writer.batch.eq(ctrl.arg_batch), self.writer.skip.eq(run.skip),
            self.writer.abort.eq(run.abort),
            ctrl.done.eq(self.writer.done), ctrl.freeze.eq(self.writer.snapshot),
        ]
        words_per_record = run.words_per_record
        m.d.comb += self.fetch.words.eq(words_per_record)
        # The parser parameter the kernel itself needs (words per record, for the fetcher).
        pp = self.parser.i_param
        with m.If(pp.valid & pp.ready & (pp.payload.addr == ParserParam.WORDS)):
            m.d.sync += words_per_record.eq(pp.payload.data)

        wiring.connect(m, self.fetch.o_word, self.parser.i_word)
        wiring.connect(m, self.parser.o_id, self.dispatcher.i_id)
        for k, unit in enumerate(self.units + self.onchip):
            wiring.connect(m, self.dispatcher.o_lookup[k], unit.i_lookup)
            wiring.connect(m, unit.o_pooled, self.arbiter.i[k])
            m.d.comb += unit.error.clear.eq(ctrl.start)
        if self.combiner is not None:
            wiring.connect(m, self.arbiter.o, self.combiner.i_pooled)
            wiring.connect(m, self.dispatcher.o_count, self.combiner.i_count)
            wiring.connect(m, self.dispatcher.o_map, self.combiner.i_map)
            wiring.connect(m, self.combiner.o_pooled, self.concat.i_pooled)
        else:
            wiring.connect(m, self.arbiter.o, self.concat.i_pooled)
        self._connect_dense(m, run)
        m.d.comb += self.parser.credit.eq(self.concat.released)
        if self.interact is not None:
            wiring.connect(m, self.concat.o_vector, self.interact.i_vector)
            wiring.connect(m, self.interact.o_vector, self.mlp.i_vector)
        else:
            wiring.connect(m, self.concat.o_vector, self.mlp.i_vector)

        # Per-request flags: a bad bag is flagged on the parser's first item of the feature;
        # the concat stage adds its pooled vectors' errors and hands the flags over, in request
        # order, before the request's vector; they meet the score at the writer.
        ids = self.parser.o_id
        m.d.comb += [
            self.concat.i_bag_error.valid.eq(ids.valid & ids.ready & ids.payload.bad_bag &
                                             ids.payload.first),
            self.concat.i_bag_error.payload.tag.eq(ids.payload.tag),
            flag_fifo.w_en.eq(self.concat.o_flags.valid),
            flag_fifo.w_data.eq(self.concat.o_flags.payload),
            self.concat.o_flags.ready.eq(flag_fifo.w_rdy),
        ]
        self._collect_scores(m, flag_fifo)

    def _connect_dense(self, m, run):
        """Dense elements to the concatenation: as they are, or through the bottom MLP.

        The bottom MLP keeps request order; a FIFO of the requests' tags (one per request in
        the bottom MLP, at most ``inflight``) tags its outputs for the concatenation stage.
        """
        dense, sink = self.parser.o_dense, self.concat.i_dense
        if self.bottom is None:
            wiring.connect(m, dense, sink)
            return
        m.submodules.bottom_tags = tags = SyncFIFOBuffered(width=self.concat.tag_bits,
                                                           depth=self.config.inflight)
        wiring.connect(m, self.dense_packer.o_vector, self.bottom.i_vector)
        out = self.bottom.o_result
        with m.If(run.datapath.bottom):
            pk = self.dense_packer.i_elem
            m.d.comb += [pk.valid.eq(dense.valid & tags.w_rdy),
                         pk.payload.data.eq(dense.payload.data),
                         pk.payload.last.eq(dense.payload.last),
                         dense.ready.eq(pk.ready & tags.w_rdy),
                         tags.w_en.eq(dense.valid & dense.ready & dense.payload.last),
                         tags.w_data.eq(dense.payload.tag)]
            m.d.comb += [sink.valid.eq(out.valid & tags.r_rdy),
                         sink.payload.data.eq(out.payload.data),
                         sink.payload.last.eq(out.payload.last),
                         sink.payload.tag.eq(tags.r_data),
                         out.ready.eq(sink.ready & tags.r_rdy),
                         tags.r_en.eq(out.valid & sink.ready & out.payload.last)]
        with m.Else():
            wiring.connect(m, dense, sink)

    def _collect_scores(self, m, flag_fifo):
        """A request's scores (one per output, ``last`` on the final one) and its flags, as one
        result record for the writer: earlier scores are held, the final one passes straight
        through with them (no added cycle); outputs the model lacks are zero."""
        k = self.config.max_outputs
        scores, result = self.mlp.o_scores, self.writer.i_result
        cur, is_last = scores.payload.score, scores.payload.last
        m.d.comb += [result.valid.eq(scores.valid & is_last & flag_fifo.r_rdy),
                     result.payload.flags.eq(flag_fifo.r_data),
                     scores.ready.eq(~is_last | (result.ready & flag_fifo.r_rdy)),
                     flag_fifo.r_en.eq(result.valid & result.ready)]
        if k == 1:
            m.d.comb += result.payload.score.eq(cur)
            return
        held = [Signal(16, name=f"held_score{i}") for i in range(k - 1)]
        idx = Signal(range(k))
        m.d.comb += result.payload.score.eq(Mux(idx == 0, cur, held[0]))
        for i in range(k - 1):
            later = held[i + 1] if i + 1 < k - 1 else 0
            m.d.comb += result.payload.more_scores[i].eq(
                Mux(idx == i + 1, cur, Mux(idx > i + 1, later, 0)))
        with m.If(scores.valid & scores.ready):
            with m.If(is_last):
                m.d.sync += idx.eq(0)
            with m.Else():
                for i in range(k - 1):
                    with m.If(idx == i):
                        m.d.sync += held[i].eq(cur)
                m.d.sync += idx.eq(Mux(idx < k - 1, idx + 1, idx))

    def _status(self, m, run, flag_fifo):
        """Status registers and the status block (docs/kernel.md, "Errors")."""
        ctrl = self.ctrl
        units = self.units + self.onchip

        # Sticky error bits, from the per-request flags and every master's error responses.
        sticky = Signal(RequestFlagsLayout())
        taken = self.concat.o_flags.valid & self.concat.o_flags.ready
        flags = self.concat.o_flags.payload
        with m.If(ctrl.start):
            m.d.sync += sticky.eq(0)
        with m.Elif(taken):
            m.d.sync += sticky.eq(sticky.as_value() | flags.as_value())
        # The batch's blocks clear their own sticky outputs when the batch starts (after a
        # program load): until then they show the last run's, so they count from then on.
        in_batch = Signal()
        with m.If(ctrl.start):
            m.d.sync += in_batch.eq(0)
        with m.Elif(run.start_batch):
            m.d.sync += in_batch.eq(1)
        axi_err = (sticky.memory | run.model_axi_error |
                   (in_batch & (self.fetch.axi_error | self.writer.axi_error)))
        errors = Signal(32)
        m.d.comb += errors.eq(Cat(sticky.id_range, axi_err, sticky.bag_range, run.no_program,
                                  run.program_error))

        # First offending request (its index in the batch): flagged or failed result records
        # (the writer), and request records whose read was answered with an error.
        rd = self.m_axi_requests
        beat, rec = Signal(16), Signal(32)
        fetch_err = Signal(32, init=NO_ERROR_REQUEST)
        with m.If(run.start_batch):
            m.d.sync += [beat.eq(0), rec.eq(0), fetch_err.eq(NO_ERROR_REQUEST)]
        with m.Elif(rd.rvalid & rd.rready):
            with m.If(beat + 1 >= run.words_per_record):
                m.d.sync += [beat.eq(0), rec.eq(rec + 1)]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)
            with m.If(rd.rresp[1] & (fetch_err == NO_ERROR_REQUEST)):
                m.d.sync += fetch_err.eq(rec)
        first = Mux(~in_batch, NO_ERROR_REQUEST,
                    Mux(fetch_err < self.writer.first_error, fetch_err, self.writer.first_error))

        lookups = Signal(32)
        stall_mem = Signal(32)
        stall_mlp = Signal(32)
        # The lookups of each cycle, counted over all units in two registered stages (one sum
        # of 36 units into the 32-bit counter was 11.5 logic levels at u280); a run's status
        # is read long after its last lookup, so the two cycles never show.
        issued_now = pipelined_count(
            m, Cat(u.i_lookup.valid & u.i_lookup.ready for u in units), clear=ctrl.start,
            name="issued_now")
        mem_stall = Cat(u.i_lookup.valid & ~u.i_lookup.ready for u in self.units).any() \
            if self.units else Const(0)
        # Per-unit lookup counters (the dispatcher's, cleared at start): registers only.
        m.d.comb += self.dispatcher.count_clear.eq(ctrl.start)
        for u, count in enumerate(self.dispatcher.count):
            m.d.comb += ctrl.unit_lookups[u].eq(count)
        with m.If(ctrl.start):
            m.d.sync += [lookups.eq(0), stall_mem.eq(0), stall_mlp.eq(0)]
        with m.Else():
            m.d.sync += lookups.eq(lookups + issued_now)
            with m.If(mem_stall):
                m.d.sync += stall_mem.eq(stall_mem + 1)
            with m.If(self.concat.o_vector.valid & ~self.concat.o_vector.ready):
                m.d.sync += stall_mlp.eq(stall_mlp + 1)
        status = {
            "errors": errors, "first_error_request": first,
            "requests_done": self.writer.written, "lookups_issued": lookups,
            "stall_memory": stall_mem, "stall_mlp": stall_mlp,
            "stall_results": self.writer.stall,
        }
        for name, sig in status.items():
            m.d.comb += getattr(ctrl, f"status_{name}").eq(sig)
        # Status block: the registers in register order, as ControlRegisters shows them.
        block = {"id": Const(KERNEL_ID, 32), "version": Const(KERNEL_VERSION, 32),
                 "config_hash": Const(self.config.config_hash, 32),
                 "cycles_lo": ctrl.cycles[:32], "cycles_hi": ctrl.cycles[32:], **status}
        for i, name in enumerate(STATUS_WORDS):
            m.d.comb += self.writer.status[i].eq(block[name])

    def block_sinks(self) -> list:
        """``(Target code, port)`` of every block sink: the wide load ports that take a
        ``BLOCK`` command's data beats (:class:`~recfabric.hw.stream_types.BlockBeatLayout`).
        One more pipeline is one more entry."""
        sinks = [(Target.MLP, self.mlp.i_block)]
        if self.bottom is not None:
            sinks.append((Target.BOTTOM_MLP, self.bottom.i_block))
        sinks += [(Target.ONCHIP_LOAD + i, t.i_load) for i, t in enumerate(self.onchip)]
        return sinks

    def _watchdog(self, m, run):
        """End a run that stopped moving (``run.abort``, docs/kernel.md "Run protocol").

        Progress is a handshake on any stream of the datapath or any channel of the batch's AXI
        masters; ``watchdog_cycles`` cycles in a row without one end the run: the writer takes
        no more results and writes the status block, with ``ERROR_PROGRAM``. Nothing in the
        datapath is reset (a master may still have requests in flight): the host resets the
        kernel before loading again.
        """
        streams = [self.fetch.o_word, self.parser.o_id, self.parser.o_dense, self.arbiter.o,
                   self.concat.o_vector, self.concat.o_flags, self.mlp.o_scores,
                   self.writer.i_result]
        streams += [u.i_lookup for u in self.units + self.onchip]
        if self.bottom is not None:
            streams += [self.bottom.o_result]
        if self.interact is not None:
            streams += [self.interact.o_vector]
        if self.combiner is not None:
            streams += [self.combiner.o_pooled, self.combiner.i_count]
        moved = [s.valid & s.ready for s in streams]
        buses = [self.m_axi_requests] + [getattr(self, f"m_axi_tables{i}")
                                         for i in range(len(self.units))]
        for bus in buses:
            moved += [bus.arvalid & bus.arready, bus.rvalid & bus.rready]
        res = self.m_axi_results
        moved += [res.awvalid & res.awready, res.wvalid & res.wready, res.bvalid & res.bready]
        idle = Signal(range(self.watchdog_cycles))
        # ``abort`` is a register: the writer's ``ready`` (one of the handshakes) depends on it.
        m.d.sync += run.abort.eq(0)
        with m.If(~run.running | Cat(*moved).any()):
            m.d.sync += idle.eq(0)
        with m.Elif(idle == self.watchdog_cycles - 1):
            m.d.sync += [run.abort.eq(1), idle.eq(0)]
        with m.Else():
            m.d.sync += idle.eq(idle + 1)

    def _route_program(self, m, word, run, block):
        """Route one program word: a command to its target's configuration stream, a ``BLOCK``
        command into ``block`` (sink, sel, address, beats left), a block's data beat to its sink
        (one per cycle while the sink is ready), a ``DATAPATH`` command into ``run.datapath``.
        Returns a signal that is 1 when the word is one of this kernel's: a command with a known
        target or a data beat for a known sink (any other word is dropped, and the caller turns
        it into ``ERROR_PROGRAM``)."""
        tgt = word.payload[:8]
        body = word.payload[8:]
        in_block = block.left != 0
        sinks = [(Target.PARSER, self.parser.i_param), (Target.PLACE, self.dispatcher.i_place),
                 (Target.CONCAT, self.concat.i_desc), (Target.MLP, self.mlp.i_load)]
        if self.bottom is not None:
            sinks.append((Target.BOTTOM_MLP, self.bottom.i_load))
        if self.interact is not None:
            sinks.append((Target.INTERACTION, self.interact.i_desc))
        with m.If(word.valid & ~in_block & (tgt == Target.DATAPATH)):
            m.d.sync += run.datapath.eq(body[:len(run.datapath.as_value())])
        for i, u in enumerate(self.units):
            sinks.append((Target.UNIT_DESC + i, u.i_desc))
        for i, t in enumerate(self.onchip):
            sinks.append((Target.ONCHIP_DESC + i, t.i_desc))
        ready = Const(1)
        hits = []
        for code, sink in sinks:
            width = len(sink.payload.as_value())
            if width > len(body):
                raise KernelUnsupported(f"{code!r} payload of {width} bits does not fit a "
                                        f"{len(word.payload)}-bit program word")
            hit = ~in_block & (tgt == int(code))
            hits.append(hit)
            m.d.comb += [sink.payload.eq(body[:width]), sink.valid.eq(word.valid & hit)]
            ready = ready & (~hit | sink.ready)
        for code, sink in self.block_sinks():
            hit = in_block & (block.sink == int(code))
            hits.append(hit)
            m.d.comb += [sink.payload.sel.eq(block.sel), sink.payload.addr.eq(block.addr),
                         sink.payload.data.eq(word.payload), sink.valid.eq(word.valid & hit)]
            ready = ready & (~hit | sink.ready)
        m.d.comb += word.ready.eq(ready)
        hits.append(~in_block & ((tgt == Target.BLOCK) | (tgt == Target.DATAPATH)))
        cmd = data.View(BlockCommandLayout(), body[:BlockCommandLayout().size])
        with m.If(word.valid & word.ready):
            with m.If(in_block):
                m.d.sync += [block.left.eq(block.left - 1), block.addr.eq(block.addr + 1)]
            with m.Elif(tgt == Target.BLOCK):
                m.d.sync += [block.left.eq(cmd.beats), block.sink.eq(cmd.sink),
                             block.sel.eq(cmd.sel), block.addr.eq(cmd.addr)]
        known = Signal()
        m.d.comb += known.eq(Cat(*hits).any())
        return known


class _VitisTop(Elaboratable):
    """Clock/reset adaptation: ``ap_clk``, active-low ``ap_rst_n``."""

    def __init__(self, kernel: RecFabricKernel):
        self.kernel = kernel
        self.ap_clk = Signal()
        self.ap_rst_n = Signal()

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd = ClockDomain("sync", local=True)
        m.d.comb += [cd.clk.eq(self.ap_clk), cd.rst.eq(~self.ap_rst_n)]
        m.submodules.kernel = self.kernel
        return m


def kernel_for_formats(config: AcceleratorConfig) -> RecFabricKernel:
    """A kernel that is never elaborated, for asking its blocks for their load formats (the
    kernel program's encoder does); building it warns about nothing."""
    return RecFabricKernel(config)


def vitis_kernel(config: AcceleratorConfig):
    """``(top, ports)`` for :func:`amaranth.back.verilog.convert` with Vitis port names.

    Ports are given as ``{name: (value, None)}``: ``verilog.convert`` infers each direction
    from the design (the top's signals are driven inside it or not at all).
    """
    kernel = RecFabricKernel(config)
    top = _VitisTop(kernel)
    ports = {"ap_clk": (top.ap_clk, None), "ap_rst_n": (top.ap_rst_n, None)}
    for path, _member, value in kernel.signature.flatten(kernel):
        name = "_".join(map(str, path))
        value = value.as_value() if hasattr(value, "as_value") else value
        ports[name] = (value, None)
    return top, ports


def generate_verilog(config: AcceleratorConfig, name: str = "recfabric_kernel", *,
                     hierarchical: bool = True) -> str:
    """Verilog of the kernel with Vitis port names (top module ``name``).

    ``hierarchical`` (default) emits each distinct processing element once as its own module
    (``NAME__processingelement_<hash>``) and instantiates it (:mod:`.hier`): the same logic as
    the flat design (tested by simulating both), generated in a fraction of the time and memory
    at u280 scale. ``False`` converts the plain design, as the Amaranth simulator sees it.

    Every module's Yosys time-0 trigger is fired (:func:`.time0.fire_trigger`), so the
    ``always @*`` blocks run at time 0 under SystemVerilog semantics too (Icarus ``-g2012``,
    cocotb); synthesis and Verilator do not see the added ``initial``.
    """
    with few_collections():
        top, ports = vitis_kernel(config)
        if not hierarchical:
            return fire_trigger(verilog.convert(top, name=name, ports=ports, emit_src=False))
        emitter = HierarchicalEmitter(prefix=name)
        text = verilog.convert(top, name=name, ports=ports, emit_src=False, platform=emitter)
        return fire_trigger(emitter.verilog(text))
