"""Request reading: fetch request records over AXI4, parse them into feature IDs and dense values.

Records follow wire format v1 (:mod:`recfabric.host.runtime.wire_format`), whose offsets depend
on the model: they reach the hardware as runtime parameters (:class:`ParserParam`, written through
``i_param`` by the model loader; :func:`parser_param_words` computes them from a
:class:`~recfabric.host.runtime.wire_format.RequestLayout`).

:class:`RecordFetcher` reads ``batch * words`` memory words from ``base`` with INCR bursts (never
crossing 4 KiB), issuing a burst only when its beats have room in the word FIFO, so the R channel
is never back-pressured by the parser. Its first burst issues four cycles after ``start``
(``words * batch`` is a two-stage pipelined product), later ones at most every other cycle (as
the AR handshake allows anyway), which keeps every path within 8 LUT levels.
:class:`RecordParser` parses each record where its words
stand, at the head of the word stream (no register holds a record):

* the bag-length words are stored as they arrive, one word (``data_width / 16`` lengths) per
  cycle, in a memory of ``ceil(2 * max_features / word bytes)`` words; the features' maximum
  bags (runtime parameters) live in a ``max_features``-entry memory;
* then, one item per cycle, it emits one :class:`FeatureIdLayout` item per live ID
  (``first``/``last`` mark the bag), or a single ``empty`` item for a bag of length 0, for every
  feature in order. Dead ID slots are skipped by arithmetic (the next feature's slot is
  ``ids_offset + 4 * (bags before it)``), and a word is popped in the cycle its last wanted
  field is used, so a request costs about one cycle per live ID, plus one per length word, one
  per dense value and one per word holding nothing wanted, plus two;
  a feature sequencer prepares each bag's registered descriptor (clamped length, first slot,
  where the parse goes on) a few cycles ahead, reading a length as soon as its word is stored,
  so the per-item logic only compares registered word indices (<= 8 LUT levels);
* the dense values as a stream of elements (``last`` on the request's last one).

A request gets a tag (its sequence number modulo ``inflight``) only when fewer than ``inflight``
requests are between the parser and the point that returns credits (``credit`` pulses, one per
finished request), so downstream per-tag buffers never overflow. A bag length over the feature's
maximum is clamped to the maximum and flagged (``bad_bag`` on its items, and the sticky
``bad_bag`` output), and so is an empty bag of a one-hot feature (maximum bag 1: the wire format
says its length is exactly 1; its single ``empty`` item carries ``bad_bag``).
"""

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .axi4 import AXI4Signature, AXIBurst
from .stream_types import DenseLayout

__all__ = ["ParserParam", "ParamWriteLayout", "FeatureIdLayout", "RecordFetcher",
           "RecordParser", "parser_param_words"]


def _bits_for(n: int) -> int:
    return max(1, (n - 1).bit_length())


class ParserParam(enum.IntEnum):
    """Runtime parameter addresses (``addr`` of a :class:`ParamWriteLayout` write)."""

    #: Memory words per request record.
    WORDS = 0
    #: Sparse features per request.
    FEATURES = 1
    #: Byte offset of the first ID slot.
    IDS_OFFSET = 2
    #: Byte offset of the first dense value.
    DENSE_OFFSET = 3
    #: Dense values per request.
    DENSE_COUNT = 4
    #: ``BAG + f``: maximum bag of feature ``f``.
    BAG = 8


class ParamWriteLayout(data.StructLayout):
    """A runtime parameter write: ``addr`` (:class:`ParserParam` or ``BAG + feature``), ``data``."""

    def __init__(self, max_features: int):
        super().__init__({"addr": _bits_for(ParserParam.BAG + max_features), "data": 32})


class FeatureIdLayout(data.StructLayout):
    """One ID of a request's feature.

    Members
    -------
    tag : unsigned(tag_bits)
    feature : unsigned(feature_bits)
    id : unsigned(32)
    first, last : unsigned(1)
        First / last item of the feature's bag.
    empty : unsigned(1)
        The bag is empty (this item carries no ID).
    bad_bag : unsigned(1)
        The record's bag length exceeded the feature's maximum (clamped).
    """

    def __init__(self, *, tag_bits: int, feature_bits: int):
        super().__init__({"tag": tag_bits, "feature": feature_bits, "id": 32, "first": 1,
                          "last": 1, "empty": 1, "bad_bag": 1})


def parser_param_words(layout) -> list:
    """Parameter writes (``{"addr", "data"}`` dicts) for a ``RequestLayout``."""
    words = [
        {"addr": ParserParam.WORDS, "data": layout.words_per_record},
        {"addr": ParserParam.FEATURES, "data": len(layout.slots)},
        {"addr": ParserParam.IDS_OFFSET,
         "data": layout.slots[0].ids_offset if layout.slots else 0},
        {"addr": ParserParam.DENSE_OFFSET, "data": layout.dense_offset},
        {"addr": ParserParam.DENSE_COUNT, "data": layout.dense},
    ]
    for f, s in enumerate(layout.slots):
        words.append({"addr": ParserParam.BAG + f, "data": s.bag})
    return words


class RecordFetcher(wiring.Component):
    """Reads ``batch * words`` memory words from ``base`` into a word stream (AXI4 read master).

    Parameters
    ----------
    data_width, addr_width, id_width : int
    max_burst : int
        Beats per burst (power of two, <= 256).
    fifo_depth : int
        Word FIFO depth; bursts are issued only into reserved FIFO space.

    Members
    -------
    m_axi : Out(AXI4Signature(read only))
    start : In(1)
        Pulse: sample ``base``, ``words`` and ``batch`` and begin. Allowed at any time: a run
        still in progress is abandoned (its words in the FIFO are dropped, an AR request still
        waiting for ARREADY stays up until accepted, and the beats it and earlier bursts still
        owe are dropped when they arrive, before the new run's).
    base : In(64)
        First word's address; its bits below the word size are ignored (read as 0), so every
        burst is word-aligned and never crosses a 4 KiB boundary.
    words : In(32)
        Words per record.
    batch : In(32)
    o_word : Out(stream.Signature(data_width))
    axi_error : Out(1)
        Sticky until ``start``: a read answered SLVERR/DECERR (the data is passed on anyway).
        A beat of an abandoned run answered with an error sets it too, even after ``start``
        (an error is never hidden; the kernel never abandons a run).
    """

    def __init__(self, *, data_width: int = 256, addr_width: int = 64, id_width: int = 1,
                 max_burst: int = 16, fifo_depth: int = 32):
        if max_burst & (max_burst - 1) or not 1 <= max_burst <= 256:
            raise ValueError(f"max_burst must be a power of two in 1..256, not {max_burst}")
        if fifo_depth < max_burst:
            raise ValueError(f"fifo_depth {fifo_depth} must hold a burst of {max_burst}")
        self._dw, self._burst, self._depth = data_width, max_burst, fifo_depth
        super().__init__({
            "m_axi": Out(AXI4Signature(addr_width=addr_width, data_width=data_width,
                                       id_width=id_width, read=True, write=False)),
            "start": In(1), "base": In(64), "words": In(32), "batch": In(32),
            "o_word": Out(stream.Signature(data_width)),
            "axi_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.m_axi
        wb = self._dw // 8
        low = (wb - 1).bit_length()  # address bits below the word
        pw = 12 - low  # word-index bits within a 4 KiB page
        bb = (self._burst - 1).bit_length()
        # ``start`` empties the FIFO: words of an abandoned run are not handed on.
        m.submodules.fifo = fifo = ResetInserter(self.start)(
            SyncFIFOBuffered(width=self._dw, depth=self._depth))

        # Logic depth (<= 8 LUT levels, docs/kernel.md): wide quantities are split and their
        # next values precomputed a cycle ahead, which the AR handshake allows (a burst is issued
        # at most every other cycle: ARVALID is up in the cycle after an issue).
        # * The address is a page (``addr[12:]``) and a word offset in it (``off``): a burst never
        #   crosses 4 KiB, so the page only steps to ``page + 1`` (precomputed, ``page_p1``).
        # * ``remaining`` (words not yet requested) is ``Cat(rem_lo, rem_hi)``; a burst subtracts
        #   from the 12-bit ``rem_lo`` and borrows ``rem_hi - 1`` (precomputed, ``rem_hi_m1``).
        # * ``burst_r`` (the next burst's length) is registered from them every cycle.
        # * ``words * batch`` is four 16x16 partial products (DSP), then two additions: the run's
        #   first burst issues 4 cycles after ``start`` (``phase``).
        page = Signal(64 - 12)
        page_p1 = Signal(64 - 12, init=1)
        off = Signal(pw)
        addr = Signal(64)
        m.d.comb += addr.eq(Cat(Const(0, low), off, page))
        rem_lo = Signal(12)
        rem_hi = Signal(36)
        rem_hi_m1 = Signal(36, init=(1 << 36) - 1)
        remaining = Signal(48)  # words not yet requested
        m.d.comb += remaining.eq(Cat(rem_lo, rem_hi))
        burst_r = Signal(range(self._burst + 1))
        room = Signal(range(self._depth + 1), init=self._depth)  # FIFO words not promised
        reserved = Signal(range(self._depth + 1))  # FIFO entries promised to issued bursts
        m.d.comb += reserved.eq(self._depth - room)
        phase = Signal(range(5), init=4)
        prods = [Signal(32, name=f"prod{i}{j}") for i in range(2) for j in range(2)]
        mid = Signal(33)

        m.d.comb += [
            bus.arid.eq(0), bus.arburst.eq(AXIBurst.INCR), bus.arsize.eq((wb - 1).bit_length()),
            bus.arcache.eq(0b0011), bus.arprot.eq(0), bus.arlock.eq(0), bus.arqos.eq(0),
            fifo.w_data.eq(bus.rdata), bus.rready.eq(1),
            self.o_word.payload.eq(fifo.r_data), self.o_word.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o_word.ready),
        ]
        # The next burst: at most ``max_burst``, the words remaining and the words left in the
        # page (at least 1); 0 only when nothing remains.
        rem_small = (rem_hi == 0) & (rem_lo[bb:] == 0) if bb < 12 else rem_hi == 0
        capped = Mux(rem_small, rem_lo[:bb], self._burst)
        to_boundary = Signal(pw + 1)
        m.d.comb += to_boundary.eq((1 << pw) - off)
        m.d.sync += [burst_r.eq(Mux(to_boundary < capped, to_boundary, capped)),
                     rem_hi_m1.eq(rem_hi - 1), page_p1.eq(page + 1)]

        popped = fifo.r_en & fifo.r_rdy
        issue = Signal()
        r_fire = bus.rvalid & bus.rready
        # Beats of the bursts issued (ARVALID raised) and not yet received, and how many of them
        # belong to a run that a ``start`` abandoned: those are dropped when they arrive.
        owed = Signal(32)
        discard = Signal(32)
        dropping = discard != 0
        m.d.comb += fifo.w_en.eq(bus.rvalid & ~dropping)
        w = [self.words[16 * i:16 * (i + 1)] for i in range(2)]
        b = [self.batch[16 * i:16 * (i + 1)] for i in range(2)]
        with m.If(self.start):
            # A waiting AR request stays up until accepted (AXI4 A3.2.1); its beats, and those
            # still in flight, are the abandoned run's.
            m.d.sync += [page.eq(self.base[12:]), off.eq(self.base[low:12]),
                         phase.eq(1), self.axi_error.eq(0),
                         bus.arvalid.eq(bus.arvalid & ~bus.arready),
                         discard.eq(owed - r_fire), room.eq(self._depth)]
            m.d.sync += [prods[2 * i + j].eq(w[i] * b[j]) for i in range(2) for j in range(2)]
        with m.Else():
            with m.If(phase == 1):
                m.d.sync += [mid.eq(prods[1] + prods[2]), phase.eq(2)]
            with m.If(phase == 2):
                m.d.sync += [Cat(rem_lo, rem_hi).eq(Cat(prods[0], prods[3]) + (mid << 16)),
                             phase.eq(3)]
            with m.If(phase == 3):
                m.d.sync += phase.eq(4)
            with m.If(bus.arvalid):
                with m.If(bus.arready):
                    m.d.sync += bus.arvalid.eq(0)
            with m.Elif((phase == 4) & (burst_r != 0) & (burst_r <= room)):
                m.d.comb += issue.eq(1)
                borrow = Signal()
                end = Signal(pw + 1)
                m.d.comb += end.eq(off + burst_r)
                lo_next = Signal(13)
                m.d.comb += [lo_next.eq(rem_lo - burst_r), borrow.eq(lo_next[12])]
                m.d.sync += [bus.arvalid.eq(1), bus.araddr.eq(addr), bus.arlen.eq(burst_r - 1),
                             off.eq(end[:pw]), rem_lo.eq(lo_next[:12])]
                with m.If(end[pw]):
                    m.d.sync += page.eq(page_p1)
                with m.If(borrow):
                    m.d.sync += rem_hi.eq(rem_hi_m1)
            m.d.sync += room.eq(Mux(issue, room - burst_r + popped, room + popped))
            with m.If(r_fire & dropping):
                m.d.sync += discard.eq(discard - 1)
        with m.If(bus.rvalid & bus.rresp[1]):  # even an abandoned run's: never hidden
            m.d.sync += self.axi_error.eq(1)
        m.d.sync += owed.eq(Mux(issue, owed + burst_r - r_fire, owed - r_fire))
        return m


class RecordParser(wiring.Component):
    """Parses request records (a word stream) into feature IDs and dense values (module docs).

    Parameters
    ----------
    data_width : int
        Memory word width.
    max_features : int
    inflight : int
        Requests in flight (tags ``0 .. inflight-1``), a power of two.
    data_bits : int
        Dense element width (8 or 16).

    Members
    -------
    i_word : In(stream.Signature(data_width))
    i_param : In(stream.Signature(ParamWriteLayout))
    start : In(1)
        Pulse: begin a run of ``batch`` requests (tags continue from the previous run).
    batch : In(32)
    credit : In(1)
        Pulse: one request has left the per-tag buffers downstream.
    o_id : Out(stream.Signature(FeatureIdLayout))
    o_dense : Out(stream.Signature(DenseLayout))
        Dense elements, tagged with their request's tag.
    parsed : Out(32)
        Requests parsed in this run.
    bad_bag : Out(1)
        Sticky until ``start``: some record had a bag length over its feature's maximum, or
        an empty bag of a one-hot feature (maximum 1).
    """

    def __init__(self, *, data_width: int = 256, max_features: int = 16, inflight: int = 8,
                 data_bits: int = 16):
        if inflight & (inflight - 1) or inflight < 1:
            raise ValueError(f"inflight must be a power of two, not {inflight}")
        if data_bits not in (8, 16):
            raise ValueError(f"data_bits must be 8 or 16, not {data_bits}")
        self._dw, self._maxf, self._inflight, self._bits = data_width, max_features, inflight, \
            data_bits
        self.tag_bits = _bits_for(inflight)
        self.feature_bits = _bits_for(max_features)
        super().__init__({
            "i_word": In(stream.Signature(data_width)),
            "i_param": In(stream.Signature(ParamWriteLayout(max_features))),
            "start": In(1), "batch": In(32), "credit": In(1),
            "o_id": Out(stream.Signature(FeatureIdLayout(tag_bits=self.tag_bits,
                                                         feature_bits=self.feature_bits))),
            "o_dense": Out(stream.Signature(DenseLayout(tag_bits=self.tag_bits,
                                                        data_bits=data_bits))),
            "parsed": Out(32), "bad_bag": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        wb = self._dw // 8
        eb = self._bits // 8
        wshift = wb.bit_length() - 1  # byte offset -> word index
        lanes16 = wb // 2  # bag lengths per word
        n_len_words = -(-2 * self._maxf // wb)

        words = Signal(16)
        features = Signal(range(self._maxf + 1))
        ids_offset = Signal(16)
        dense_offset = Signal(16)
        dense_count = Signal(16)
        # Per-feature state lives in memories: the maximum bags (runtime parameters) and the
        # record's length words, stored as they arrive (one write per word, whatever the width).
        m.submodules.bags = bags = Memory(shape=unsigned(16), depth=max(2, self._maxf), init=[])
        m.submodules.lens = lens = Memory(shape=unsigned(self._dw), depth=max(2, n_len_words),
                                          init=[])
        bag_w, len_w = bags.write_port(), lens.write_port()

        p = self.i_param
        m.d.comb += p.ready.eq(1)
        m.d.comb += [bag_w.addr.eq(p.payload.addr - ParserParam.BAG), bag_w.data.eq(p.payload.data),
                     bag_w.en.eq(p.valid & (p.payload.addr >= ParserParam.BAG) &
                                 (p.payload.addr < ParserParam.BAG + self._maxf))]
        with m.If(p.valid):
            with m.Switch(p.payload.addr):
                with m.Case(ParserParam.WORDS):
                    m.d.sync += words.eq(p.payload.data)
                with m.Case(ParserParam.FEATURES):
                    m.d.sync += features.eq(p.payload.data)
                with m.Case(ParserParam.IDS_OFFSET):
                    m.d.sync += ids_offset.eq(p.payload.data)
                with m.Case(ParserParam.DENSE_OFFSET):
                    m.d.sync += dense_offset.eq(p.payload.data)
                with m.Case(ParserParam.DENSE_COUNT):
                    m.d.sync += dense_count.eq(p.payload.data)

        # Derived parameters, registered (parameters are written while idle, long before a run).
        n_len = Signal(range(n_len_words + 1))  # length words per record
        after_ids = Signal(24)  # where the first dense value (or the record's end) is
        m.d.sync += [n_len.eq((features * 2 + wb - 1) >> wshift),
                     after_ids.eq(Mux(dense_count != 0, dense_offset, words << wshift))]

        batch = Signal(32)
        todo = Signal(32)  # requests of the run not yet parsed
        tag = Signal(self.tag_bits)
        inuse = Signal(range(self._inflight + 1))
        take_credit = Signal()
        with m.If(self.start):
            m.d.sync += inuse.eq(0)  # a run starts with nothing in flight
        with m.Elif(take_credit & ~self.credit):
            m.d.sync += inuse.eq(inuse + 1)
        with m.Elif(~take_credit & self.credit):
            m.d.sync += inuse.eq(inuse - 1)

        # The record's words are parsed where they stand, at the head of ``i_word``: ``hidx`` is
        # the head's index in the record. A field is available when its word is the head; the
        # head is popped in the cycle that uses its last wanted field.
        #
        # Logic depth (<= 8 LUT levels): a feature sequencer runs ahead of the ID emitter. It
        # reads feature ``fq``'s length word (as soon as it is stored: the read is transparent
        # to the store) and maximum bag (stage R), selects the length (stage 1), and clamps it
        # and places the bag in the record (stage D: the descriptor ``d_*``), one feature per
        # cycle. The emitter then only compares registered word indices with ``hidx``: the
        # item's own (``pos``), and at a bag's last item the one the parse goes on from
        # (``d_next_word``); within a bag the word changes after its last slot.
        head, hv = self.i_word.payload, self.i_word.valid
        hidx = Signal(16)
        lw = Signal(range(n_len_words + 1))  # length words stored
        pop = Signal()
        m.d.comb += self.i_word.ready.eq(pop)
        with m.If(pop):
            m.d.sync += hidx.eq(hidx + 1)
        lanes_log = lanes16.bit_length() - 1
        ids_word = ids_offset[wshift:]

        # Feature sequencer, stage R: issue feature ``fq``'s reads.
        bag_r = bags.read_port()
        len_r = lens.read_port(transparent_for=(len_w,))
        fs_on = Signal()  # the current record still has features to sequence
        fq = Signal(range(self._maxf + 1))
        v0, v1, dv = Signal(), Signal(), Signal()
        adv0, adv1, adv_d, consumed = Signal(), Signal(), Signal(), Signal()
        m.d.comb += [adv_d.eq(~dv | consumed), adv1.eq(~v1 | adv_d), adv0.eq(~v0 | adv1)]
        wi = fq >> lanes_log
        avail = (wi < lw) | ((wi == lw) & len_w.en)
        issue = Signal()
        m.d.comb += [issue.eq(adv0 & fs_on & avail),
                     bag_r.addr.eq(fq), bag_r.en.eq(adv0), len_r.addr.eq(wi), len_r.en.eq(adv0)]
        f0 = Signal.like(fq)
        final0 = Signal()
        with m.If(adv0):
            m.d.sync += [v0.eq(issue), f0.eq(fq), final0.eq(fq + 1 == features)]
        with m.If(issue):
            m.d.sync += fq.eq(fq + 1)
            with m.If(fq + 1 == features):
                m.d.sync += fs_on.eq(0)

        # Stage 1: the feature's raw length and maximum bag.
        raw1, bag1 = Signal(16), Signal(16)
        f1 = Signal.like(fq)
        final1 = Signal()
        sel = f0[:lanes_log] if lanes16 > 1 else 0
        with m.If(adv1):
            m.d.sync += [v1.eq(v0), f1.eq(f0), final1.eq(final0), bag1.eq(bag_r.data),
                         raw1.eq(len_r.data.word_select(sel, 16) if lanes16 > 1
                                 else len_r.data[:16])]

        # Stage D: the descriptor of the bag the emitter works on: clamped length (as ``last``,
        # ``rem`` and ``empty``), error, where its slots start (``pos``) and where the parse goes
        # on after it (``d_next_word``: the next feature's first slot, or ``after_ids``).
        over = raw1 > bag1
        bad1 = over | ((raw1 == 0) & (bag1 == 1))
        raw_m1 = Mux(raw1 == 0, 0, raw1 - 1)
        bag_m1 = Mux(bag1 == 0, 0, bag1 - 1)
        pos_acc = Signal(24)  # byte position of the next feature's first slot
        end = Signal(24)
        m.d.comb += end.eq(pos_acc + (bag1 << 2))
        d_f = Signal.like(fq)
        d_empty, d_bad, d_final = Signal(), Signal(), Signal()
        d_next_word = Signal(16)
        pos = Signal(24)
        rem = Signal(16)  # items of the bag after the current one
        first, last = Signal(), Signal()
        with m.If(adv_d):
            m.d.sync += dv.eq(v1)
            with m.If(v1):
                m.d.sync += [d_f.eq(f1), d_final.eq(final1), d_bad.eq(bad1),
                             d_empty.eq(Mux(over, bag1 == 0, raw1 == 0)),
                             d_next_word.eq(Mux(final1, after_ids, end) >> wshift),
                             pos.eq(pos_acc), pos_acc.eq(end),
                             rem.eq(Mux(over, bag_m1, raw_m1)), first.eq(1),
                             last.eq(Mux(over, bag1 <= 1, raw1 <= 1))]

        # Dense values: position and count left.
        dpos = Signal(24)
        drem = Signal(16)

        o = self.o_id
        with m.If(self.start):
            # Tags keep counting across runs: downstream blocks expect requests in tag order.
            m.d.sync += [batch.eq(self.batch), todo.eq(self.batch), self.parsed.eq(0),
                         self.bad_bag.eq(0)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~self.start & (todo != 0) & (inuse < self._inflight)):
                    m.d.comb += take_credit.eq(1)
                    m.d.sync += [lw.eq(0), hidx.eq(0), fq.eq(0), fs_on.eq(features != 0),
                                 v0.eq(0), v1.eq(0), dv.eq(0), pos_acc.eq(ids_offset),
                                 dpos.eq(dense_offset), drem.eq(dense_count)]
                    m.next = "LEN"
            with m.State("LEN"):
                # One length word per cycle into ``lens``; the word holding the first ID slot
                # stays at the head.
                with m.If(lw == n_len):
                    m.next = "IDS"
                with m.Elif(hv):
                    m.d.comb += [len_w.addr.eq(lw), len_w.data.eq(head), len_w.en.eq(1),
                                 pop.eq(ids_word != hidx)]
                    m.d.sync += lw.eq(lw + 1)
                    with m.If(lw + 1 == n_len):
                        m.next = "IDS"
            with m.State("IDS"):
                # One item per cycle: the live IDs of the descriptor's bag (or one ``empty``
                # item), skipping words of dead slots.
                lane32 = head.word_select(pos[2:wshift], 32) if wb > 4 else head[:32]
                with m.If(features == 0):
                    m.next = "DENSE"
                with m.Elif(~dv):
                    pass  # the sequencer has not caught up yet
                with m.Elif(pos[wshift:] != hidx):
                    m.d.comb += pop.eq(hv)  # a word of dead slots
                with m.Elif(hv):
                    m.d.comb += [
                        o.payload.tag.eq(tag), o.payload.feature.eq(d_f), o.payload.id.eq(lane32),
                        o.payload.first.eq(first), o.payload.last.eq(last),
                        o.payload.empty.eq(d_empty), o.payload.bad_bag.eq(d_bad),
                        o.valid.eq(1),
                    ]
                    with m.If(o.ready):
                        with m.If(d_bad):
                            m.d.sync += self.bad_bag.eq(1)
                        with m.If(last):
                            m.d.comb += [consumed.eq(1), pop.eq(d_next_word != hidx)]
                            with m.If(d_final):
                                m.next = "DENSE"
                        with m.Else():
                            m.d.comb += pop.eq(pos[2:wshift].all() if wb > 4 else 1)
                            m.d.sync += [pos.eq(pos + 4), rem.eq(rem - 1), first.eq(0),
                                         last.eq(rem == 1)]
            with m.State("DENSE"):
                lane_e = head.word_select(dpos[eb.bit_length() - 1:wshift], self._bits)
                dlast = drem == 1
                with m.If(drem == 0):
                    m.next = "SKIP"
                with m.Elif(dpos[wshift:] != hidx):
                    m.d.comb += pop.eq(hv)
                with m.Elif(hv):
                    m.d.comb += [self.o_dense.payload.tag.eq(tag),
                                 self.o_dense.payload.data.eq(lane_e.as_signed()),
                                 self.o_dense.payload.last.eq(dlast),
                                 self.o_dense.valid.eq(1)]
                    with m.If(self.o_dense.ready):
                        lane_end = dpos[eb.bit_length() - 1:wshift].all() \
                            if wb > eb else 1
                        m.d.comb += pop.eq(dlast | lane_end)
                        m.d.sync += [dpos.eq(dpos + eb), drem.eq(drem - 1)]
                        with m.If(dlast):
                            m.next = "SKIP"
            with m.State("SKIP"):
                with m.If(hidx < words):
                    m.d.comb += pop.eq(hv)
                with m.Else():
                    m.d.sync += [self.parsed.eq(self.parsed + 1), todo.eq(todo - 1),
                                 tag.eq(tag + 1)]
                    m.next = "IDLE"
        return m
