"""Reusable helpers for testing ``amaranth.lib.stream`` interfaces in the Amaranth simulator.

Every block of RecFabric exchanges data through valid/ready streams, and every block test wants
the same three things: a producer that pushes payloads with random idle cycles, a consumer that
pulls them with random back-pressure, and a checker that fails the test on any violation of the
stream rules. This module provides them, generic over the payload shape.

Typical use::

    rng = random.Random(1)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    checker = StreamChecker(dut.o_result, name="o_result")
    sim.add_process(checker.process)

    async def producer(ctx):
        for item in items:
            await stream_put(ctx, dut.i_item, item, rng=rng, p_idle=0.3)

    async def consumer(ctx):
        for _ in items:
            got.append(await stream_get(ctx, dut.o_result, rng=rng, p_stall=0.3))

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()

The stream rules checked (``amaranth.lib.stream`` and ``DESIGN.md``):

1. a transfer happens on a cycle where ``valid & ready``;
2. once ``valid`` is asserted it stays asserted, with an unchanged ``payload``, until the transfer;
3. (``valid`` never waits for ``ready``, and ``ready`` may depend on ``valid``: not observable as
   a violation from outside, so not checked).
"""

from __future__ import annotations

import random

from amaranth.hdl import Value

__all__ = [
    "StreamChecker",
    "StreamProtocolError",
    "stream_put",
    "stream_get",
    "stream_put_all",
    "stream_get_n",
    "payload_value",
]


class StreamProtocolError(AssertionError):
    """A stream broke the valid/ready rules; the message names the stream, cycle and values."""


def _as_bits(ctx, payload_expr):
    return ctx.get(Value.cast(payload_expr))


def payload_value(const):
    """Convert a ``data.Const`` (or int) read from the simulator into plain Python values.

    Struct constants become dicts, array constants lists, everything else ints. Useful for
    comparing simulator output to golden-model values with ``==``.
    """
    from amaranth.lib import data

    if isinstance(const, data.Const):
        layout = const.shape()
        if isinstance(layout, data.ArrayLayout):
            return [payload_value(const[i]) for i in range(layout.length)]
        return {name: payload_value(const[name]) for name, _ in layout}
    return const


async def _idle(ctx, rng, p):
    if rng is None or p <= 0:
        return
    while rng.random() < p:
        await ctx.tick()


async def stream_put(ctx, stream, payload, *, rng: random.Random | None = None,
                     p_idle: float = 0.0):
    """Send one payload on ``stream`` (a producer-side view: the testbench drives valid/payload).

    Before asserting ``valid`` the helper idles for a geometric random number of cycles with
    probability ``p_idle`` per cycle (no idling when ``rng`` is None). Returns after the cycle of
    the transfer, with ``valid`` deasserted.

    Parameters
    ----------
    ctx : SimulatorContext
    stream : stream.Interface
        Interface whose ``valid``/``payload`` the testbench drives and whose ``ready`` it samples.
    payload : value castable to the payload shape (int, dict for structs, list for arrays)
    rng : random.Random, optional
    p_idle : float
        Probability, per cycle, of one more idle cycle before the payload is offered.
    """
    if not 0 <= p_idle < 1:
        raise ValueError(f"Idle probability must be in [0, 1), not {p_idle!r}")
    await _idle(ctx, rng, p_idle)
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, *, rng: random.Random | None = None, p_stall: float = 0.0):
    """Receive one payload from ``stream`` (a consumer-side view: the testbench drives ready).

    Each cycle, ``ready`` is deasserted with probability ``p_stall`` (never when ``rng`` is None).
    Returns the payload (a ``data.Const`` for struct payloads, an int otherwise) sampled at the
    transfer edge; ``ready`` is left deasserted.
    """
    if not 0 <= p_stall < 1:
        raise ValueError(f"Stall probability must be in [0, 1), not {p_stall!r}")
    while True:
        stall = rng is not None and p_stall > 0 and rng.random() < p_stall
        ctx.set(stream.ready, 0 if stall else 1)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if valid and not stall:
            ctx.set(stream.ready, 0)
            return payload


async def stream_put_all(ctx, stream, payloads, *, rng=None, p_idle=0.0):
    """:func:`stream_put` each of ``payloads`` in order."""
    for p in payloads:
        await stream_put(ctx, stream, p, rng=rng, p_idle=p_idle)


async def stream_get_n(ctx, stream, n: int, *, rng=None, p_stall=0.0) -> list:
    """:func:`stream_get` ``n`` payloads and return them in arrival order."""
    return [await stream_get(ctx, stream, rng=rng, p_stall=p_stall) for _ in range(n)]


class StreamChecker:
    """Passive protocol checker (and transfer recorder) for one stream.

    Add :attr:`process` to the simulator with ``sim.add_process(checker.process)``; it runs in the
    background, samples ``valid``/``ready``/``payload`` at every active clock edge, raises
    :class:`StreamProtocolError` if ``valid`` drops or ``payload`` changes while a transfer is
    pending, and counts transfers (recording their payloads as raw integers when ``record``).

    Parameters
    ----------
    stream : stream.Interface
    name : str
        Used in error messages.
    record : bool
        Keep the raw payload bits of every transfer in :attr:`transfers`, and the cycle number
        (counted from 1 at the first edge) of each in :attr:`transfer_cycles`.
    domain : str
        Clock domain of the stream.
    """

    def __init__(self, stream, *, name: str = "stream", record: bool = False,
                 domain: str = "sync"):
        self.stream = stream
        self.name = name
        self.record = record
        self.domain = domain
        self.transfers: list[int] = []
        self.transfer_cycles: list[int] = []
        self.count = 0
        self.cycles = 0
        self.first_transfer_cycle: int | None = None
        self.last_transfer_cycle: int | None = None

    async def process(self, ctx):
        s = self.stream
        payload_bits = Value.cast(s.payload)
        pending = None  # payload bits offered but not transferred at the previous edge
        while True:
            # One-shot waits: an abandoned async-for iterator makes noise when a test fails.
            _, rst, valid, ready, bits = await ctx.tick(self.domain).sample(
                s.valid, s.ready, payload_bits)
            self.cycles += 1
            if rst:
                pending = None
                continue
            if pending is not None:
                if not valid:
                    raise StreamProtocolError(
                        f"{self.name}: valid dropped at cycle {self.cycles} before the transfer "
                        f"of payload {pending:#x}")
                if bits != pending:
                    raise StreamProtocolError(
                        f"{self.name}: payload changed from {pending:#x} to {bits:#x} at cycle "
                        f"{self.cycles} while valid and not ready")
            if valid and ready:
                self.count += 1
                if self.first_transfer_cycle is None:
                    self.first_transfer_cycle = self.cycles
                self.last_transfer_cycle = self.cycles
                if self.record:
                    self.transfers.append(bits)
                    self.transfer_cycles.append(self.cycles)
                pending = None
            elif valid:
                pending = bits
            else:
                pending = None
