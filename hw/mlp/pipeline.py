"""MLPPipeline: layer engines chained through activation buffers, pipelined across requests."""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from recfabric.host import numerics as nx

from ..sigmoid import LogitLayout, ScoreLayout, Sigmoid
from ..stream_types import BLOCK_SEL_BITS, BlockBeatLayout, MLPInputLayout
from ..stream_types import index_bits as _bits_for
from .activation_buffer import ActivationBuffer, ActivationReadSignature, ActivationWriteSignature
from .layer_engine import LayerEngine
from .load_format import BeatPacking, MLPBlockSel, MLPLoadLayout


def _pos(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise TypeError(f"{name} must be a positive integer, not {v!r}")

__all__ = ["InputWriter", "VectorDrain", "MLPPipeline"]


class InputWriter(wiring.Component):
    """Writes a stream of input-vector chunks into the first activation buffer.

    Chunk ``j`` of a request goes to word ``j`` of a freshly allocated bank, all lanes at once;
    the chunk with ``last`` commits the bank. Not ready while no bank is free.

    Members
    -------
    i_vector : In(stream.Signature(MLPInputLayout(bits, lanes)))
    act_out : Out(ActivationWriteSignature)
    """

    def __init__(self, *, lanes: int, bits: int, local_bits: int, banks: int):
        self.lanes, self.bits, self.local_bits, self.banks = lanes, bits, local_bits, banks
        super().__init__({
            "i_vector": In(stream.Signature(MLPInputLayout(bits=bits, lanes=lanes))),
            "act_out": Out(ActivationWriteSignature(lanes=lanes, bits=bits,
                                                    local_bits=local_bits, banks=banks)),
        })

    def elaborate(self, platform):
        m = Module()
        active = Signal()
        cnt = Signal(self.local_bits)
        bank = Signal(_bits_for(self.banks))
        cur_bank = Mux(active, bank, self.act_out.bank)
        m.d.comb += self.i_vector.ready.eq(active | self.act_out.can_start)
        go = self.i_vector.valid & self.i_vector.ready
        for lane in range(self.lanes):
            m.d.comb += [self.act_out.en[lane].eq(go),
                         self.act_out.addr[lane].eq(Cat(cnt, cur_bank)),
                         self.act_out.data[lane].eq(self.i_vector.payload.data[lane])]
        with m.If(go):
            m.d.comb += self.act_out.start.eq(~active)
            m.d.sync += [bank.eq(cur_bank), active.eq(1), cnt.eq(cnt + 1)]
            with m.If(self.i_vector.payload.last):
                m.d.comb += self.act_out.commit.eq(1)
                m.d.sync += [active.eq(0), cnt.eq(0)]
        return m


class VectorDrain(wiring.Component):
    """Streams the first ``out_len`` elements of each filled bank of the last buffer, in order.

    Element ``n`` is lane ``n mod lanes``, word ``n // lanes``. One element per cycle, plus one
    idle cycle between requests.

    Members
    -------
    act_in : Out(ActivationReadSignature)
    out_len : In(16)
    o_result : Out(stream.Signature(LogitLayout(bits)))
    """

    def __init__(self, *, lanes: int, bits: int, local_bits: int, banks: int):
        self.lanes, self.bits, self.local_bits, self.banks = lanes, bits, local_bits, banks
        super().__init__({
            "act_in": Out(ActivationReadSignature(lanes=lanes, bits=bits, local_bits=local_bits,
                                                  banks=banks)),
            "out_len": In(16),
            "o_result": Out(stream.Signature(LogitLayout(bits))),
        })

    def elaborate(self, platform):
        m = Module()
        active = Signal()
        bank = Signal(_bits_for(self.banks))
        n = Signal(16)
        lane = Signal(range(self.lanes))
        word = Signal(self.local_bits)
        lane_d = Signal(range(self.lanes))
        last_d = Signal()
        o = self.o_result
        free = ~o.valid | o.ready
        adv = active & free
        for k in range(self.lanes):
            m.d.comb += self.act_in.addr[k].eq(Cat(word, bank))
        m.d.comb += [self.act_in.en.eq(adv), o.payload.data.eq(self.act_in.data[lane_d]),
                     o.payload.last.eq(last_d)]
        with m.If(free):
            m.d.sync += o.valid.eq(adv)
        with m.If(adv):
            is_last = n + 1 >= self.out_len
            m.d.sync += [lane_d.eq(lane), last_d.eq(is_last), n.eq(n + 1)]
            if self.lanes > 1:
                with m.If(lane == self.lanes - 1):
                    m.d.sync += [lane.eq(0), word.eq(word + 1)]
                with m.Else():
                    m.d.sync += lane.eq(lane + 1)
            else:
                m.d.sync += word.eq(word + 1)
            with m.If(is_last):
                m.d.comb += self.act_in.release.eq(1)
                m.d.sync += active.eq(0)
        with m.Elif(~active & self.act_in.filled):
            m.d.comb += self.act_in.take.eq(1)
            m.d.sync += [active.eq(1), bank.eq(self.act_in.bank), n.eq(0), lane.eq(0),
                         word.eq(0)]
        return m


class MLPPipeline(wiring.Component):
    """A multi-layer perceptron: one :class:`LayerEngine` per layer, pipelined across requests.

    Parameters
    ----------
    shapes : sequence of (rows, cols)
        Array shape of each layer engine; ``cols[l+1] == rows[l]``.
    data_bits, acc_bits : int
        Operand and accumulator widths.
    max_in : int
        Largest input vector (first layer fan-in).
    max_width : int
        Largest output width of every layer.
    max_widths : sequence of int, optional
        Largest output width of each engine (default ``max_width`` for each): engine ``l``
        holds the weights of layers of at most ``max_widths[l - 1]`` (engine 0: ``max_in``)
        inputs and ``max_widths[l]`` outputs, which sets its weight memories' depth.
    weight_lutram_depth : int, optional
        Weight memories at most this deep are LUT RAM, deeper ones block RAM (0, the default:
        no attribute; :class:`LayerEngine`).
    banks : int
        Banks per activation buffer (requests each stage may have in flight), power of two.
    sigmoid : bool
        True (top MLP): the last layer's outputs go through :class:`Sigmoid` to ``o_scores``.
        False (bottom MLP): the outputs leave on ``o_result``.
    pack_int8 : bool
        int8 engines compute two rows per DSP48E2 (:class:`LayerEngine`; default True).
    beat_bits : int
        Width of the weight/bias beats on ``i_block`` (default 512, the program loader's word).
    cascade, broadcast : int
        Every engine's row-cascade segment length and activation broadcast fanout (0: off;
        :class:`LayerEngine`).
    weight_share : int
        Row pairs per weight memory of every engine's array columns (1: one memory per pair;
        more needs ``broadcast``; :class:`LayerEngine`).
    uram_engines : sequence of int, optional
        Engines whose weight memories are UltraRAM (:class:`LayerEngine` ``weight_uram``;
        default none).

    Members
    -------
    i_vector : In(stream.Signature(MLPInputLayout(data_bits, cols[0])))
        Input vectors, ``cols[0]`` elements per transfer, ``last`` on a request's last chunk.
    i_load : In(stream.Signature(MLPLoadLayout))
        Descriptor words; always ready.
    i_block : In(stream.Signature(BlockBeatLayout(beat_bits)))
        Weight and bias beats (``sel`` an :class:`MLPBlockSel` of :attr:`block_sel`), one per
        cycle; always ready.
    o_scores : Out(stream.Signature(ScoreLayout()))
        (``sigmoid``) One score per output of the last layer; ``last`` ends a request.
    o_result : Out(stream.Signature(LogitLayout(data_bits)))
        (not ``sigmoid``) The last layer's outputs, one per transfer; ``last`` ends a request.
    """

    @classmethod
    def config_kwargs(cls, config, which: str = "top", **overrides) -> dict:
        """Constructor arguments of the ``which`` ("top" or "bottom") pipeline exactly as the
        kernel builds it from an :class:`~recfabric.hw.config.AcceleratorConfig`: engine shapes
        and widths, activation banks, weight memory placement and the latency options
        and weight sharing (``mlp_cascade``, ``mlp_broadcast``, ``mlp_weight_share``);
        ``overrides`` replace any of them (the kernel
        passes ``beat_bits=MODEL_DATA_WIDTH``). Everything that builds a configuration's MLP (the
        kernel, the pruning study's simulation, the ECP5 timing block) uses
        ``MLPPipeline(**MLPPipeline.config_kwargs(config, which))`` (constructed in the caller's
        file, so its ``UnusedElaboratable`` setting applies)."""
        c = config
        if which == "top":
            shapes, widths, max_in, sigmoid = (c.mlp_top_shapes, c.top_engine_widths,
                                               c.max_concat, True)
        elif which == "bottom":
            shapes, widths, max_in, sigmoid = (c.mlp_bottom_shapes, c.bottom_engine_widths,
                                               max(1, c.max_dense), False)
        else:
            raise ValueError(f"which must be 'top' or 'bottom', not {which!r}")
        args = dict(shapes=shapes, data_bits=c.data_bits, acc_bits=c.acc_bits, max_in=max_in,
                    max_width=c.max_width, sigmoid=sigmoid, max_widths=widths,
                    weight_lutram_depth=c.weight_lutram_depth, banks=c.activation_banks,
                    cascade=c.mlp_cascade, broadcast=c.mlp_broadcast,
                    weight_share=c.mlp_weight_share)
        if which == "top" and c.mlp_top_uram_engines:
            args["uram_engines"] = c.mlp_top_uram_engines
        args.update(overrides)
        return args

    def __init__(self, *, shapes, data_bits: int, acc_bits: int, max_in: int, max_width: int,
                 banks: int = 4, sigmoid: bool = True, beat_bits: int = 512,
                 pack_int8: bool = True, max_widths=None, weight_lutram_depth: int = 0,
                 cascade: int = 0, broadcast: int = 0, weight_share: int = 1,
                 uram_engines=()):
        shapes = [tuple(s) for s in shapes]
        if not shapes:
            raise ValueError("An MLP pipeline needs at least one layer engine, not 0")
        if not (isinstance(uram_engines, (tuple, list)) and all(
                isinstance(e, int) and not isinstance(e, bool) and 0 <= e < len(shapes)
                for e in uram_engines) and list(uram_engines) == sorted(set(uram_engines))):
            raise ValueError(f"uram_engines must list engines 0..{len(shapes) - 1} in "
                             f"increasing order, not {uram_engines!r}")
        self.uram_engines = tuple(uram_engines)
        for i, (r, c) in enumerate(shapes):
            _pos(f"shapes[{i}] rows", r)
            _pos(f"shapes[{i}] cols", c)
        widths = tuple(max_widths) if max_widths is not None else (max_width,) * len(shapes)
        if len(widths) != len(shapes):
            raise ValueError(f"max_widths needs one width per engine ({len(shapes)}), not "
                             f"{widths!r}")
        for i, w in enumerate(widths):
            _pos(f"max_widths[{i}]", w)
        self.max_widths, self.weight_lutram_depth = widths, weight_lutram_depth
        for i in range(1, len(shapes)):
            if shapes[i][1] != shapes[i - 1][0]:
                raise ValueError(f"Engine {i} has {shapes[i][1]} columns but engine {i - 1} has "
                                 f"{shapes[i - 1][0]} rows; they must be equal")
        if data_bits not in (8, 16) and data_bits < 2:
            raise ValueError(f"data_bits must be a positive width, not {data_bits!r}")
        self.shapes, self.data_bits, self.acc_bits = shapes, data_bits, acc_bits
        self.max_in, self.max_width, self.banks, self.sigmoid = max_in, max_width, banks, sigmoid
        self.pack_int8 = pack_int8
        self.cascade, self.broadcast = cascade, broadcast
        _pos("weight_share", weight_share)
        if weight_share > 1 and not broadcast:
            raise ValueError(f"weight_share {weight_share} needs the activation broadcast "
                             f"(broadcast >= 2, not {broadcast})")
        self.weight_share = weight_share
        #: Whether the engines pack two int8 MACs per DSP (what the cycle model needs to know).
        self.packed = pack_int8 and data_bits <= 8
        self.out_bits = max(data_bits, nx.SIGMOID_IN.bits) if sigmoid else data_bits
        L = len(shapes)
        ins = (max_in,) + widths[:-1]
        depth = max(math.ceil(ins[l] / c) * math.ceil(widths[l] / r)
                    for l, (r, c) in enumerate(shapes))
        self.beat_bits = beat_bits
        groups = []
        for r, c in shapes:
            pk = BeatPacking(rows=r, cols=c, data_bits=data_bits, acc_bits=acc_bits,
                             beat_bits=beat_bits)
            groups += [pk.groups, pk.bias_groups]
        self.block_sel = MLPBlockSel(engines=L, groups=max(groups))
        if self.block_sel.size > BLOCK_SEL_BITS:
            raise ValueError(f"{max(groups)} beat groups per engine do not fit the "
                             f"{BLOCK_SEL_BITS}-bit block select field")
        self.load_layout = MLPLoadLayout(engines=L, rows=max(r for r, _ in shapes),
                                         cols=max(c for _, c in shapes), depth=depth,
                                         acc_bits=acc_bits)
        members = {
            "i_vector": In(stream.Signature(MLPInputLayout(bits=data_bits, lanes=shapes[0][1]))),
            "i_load": In(stream.Signature(self.load_layout)),
            "i_block": In(stream.Signature(BlockBeatLayout(beat_bits))),
        }
        if sigmoid:
            members["o_scores"] = Out(stream.Signature(ScoreLayout()))
        else:
            members["o_result"] = Out(stream.Signature(LogitLayout(data_bits)))
        super().__init__(members)

    def engine_kwargs(self) -> list:
        """Constructor arguments of each :class:`LayerEngine` the pipeline builds."""
        L = len(self.shapes)
        w = self.max_widths
        return [dict(index=l, rows=r, cols=c, data_bits=self.data_bits, acc_bits=self.acc_bits,
                     max_in=self.max_in if l == 0 else w[l - 1], max_out=w[l],
                     banks=self.banks,
                     out_bits=self.out_bits if l == L - 1 else self.data_bits,
                     load_layout=self.load_layout, beat_bits=self.beat_bits,
                     block_sel=self.block_sel, pack_int8=self.pack_int8,
                     weight_lutram_depth=self.weight_lutram_depth, cascade=self.cascade,
                     broadcast=self.broadcast, weight_share=self.weight_share,
                     **({"weight_uram": True} if l in self.uram_engines else {}))
                for l, (r, c) in enumerate(self.shapes)]

    def elaborate(self, platform):
        m = Module()
        engines = [LayerEngine(**kw) for kw in self.engine_kwargs()]
        e0 = engines[0]
        m.submodules.writer = writer = InputWriter(lanes=e0.cols, bits=self.data_bits,
                                                   local_bits=e0.in_local_bits, banks=self.banks)
        wiring.connect(m, wiring.flipped(self.i_vector), writer.i_vector)
        m.submodules.buf0 = buf = ActivationBuffer(lanes=e0.cols, bits=self.data_bits,
                                                   local_bits=e0.in_local_bits, banks=self.banks)
        wiring.connect(m, writer.act_out, buf.wr)
        ld, blk = self.i_load, self.i_block
        m.d.comb += [ld.ready.eq(1), blk.ready.eq(1)]
        blk_engine = data.View(self.block_sel, blk.payload.sel[:self.block_sel.size]).engine
        for l, eng in enumerate(engines):
            m.submodules[f"engine{l}"] = eng
            wiring.connect(m, eng.act_in, buf.rd)
            m.d.comb += [eng.i_load.payload.eq(ld.payload),
                         eng.i_load.valid.eq(ld.valid & (ld.payload.engine == l)),
                         eng.i_block.payload.eq(blk.payload),
                         eng.i_block.valid.eq(blk.valid & (blk_engine == l))]
            buf = ActivationBuffer(lanes=eng.rows, bits=eng.out_bits,
                                   local_bits=eng.out_local_bits, banks=self.banks)
            m.submodules[f"buf{l + 1}"] = buf
            wiring.connect(m, eng.act_out, buf.wr)
        last = engines[-1]
        m.submodules.drain = drain = VectorDrain(lanes=last.rows, bits=last.out_bits,
                                                 local_bits=last.out_local_bits, banks=self.banks)
        wiring.connect(m, drain.act_in, buf.rd)
        m.d.comb += drain.out_len.eq(last.out_len)
        if self.sigmoid:
            m.submodules.sigmoid = sig = Sigmoid(in_bits=last.out_bits)
            wiring.connect(m, drain.o_result, sig.i_logit)
            wiring.connect(m, sig.o_score, wiring.flipped(self.o_scores))
        else:
            wiring.connect(m, drain.o_result, wiring.flipped(self.o_result))
        return m
