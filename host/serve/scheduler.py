"""The serving scheduler: SLA batching, least-expected-completion-time balancing, admission and
failover bookkeeping, in pure Python.

The scheduler never waits, sleeps or does I/O: it is told the time (``now``, seconds on any
monotonic clock) and what happened (a request arrived, a batch finished, a device failed) and
answers with decisions (put the request on device X, dispatch these batches, answer these
requests). Two drivers run this one class:

- the live Ray Serve application (:mod:`recfabric.host.serve.app`), with asyncio and real
  device replicas, ``now = time.monotonic()``;
- the discrete-event fleet simulation (:mod:`recfabric.host.serve.fleet`), with SimPy and
  ``now = env.now``.

Policies
--------
Service times
    Every device has a :class:`ServiceModel` predicting the time of a batch of ``rows`` rows:
    the cycle model for accelerators (``source = "modelled"``) plus a learned transport
    overhead, an exponentially weighted mean of *observed - modelled* over completed batches
    (never negative), so a card behind a slow link is seen as slow; for CPUs a linear fit
    ``fixed + per_row * rows`` of measured batch times (``source = "measured"``), refitted
    online from every completed batch.
Balancing (:meth:`Scheduler.submit`)
    A new request goes to the healthy device with the least expected completion time (ECT)
    among those that can take it (see Admission):
    when its earliest slot frees, plus the predicted time of its queued rows and the new rows
    (in batches of at most ``max_rows``, spread over its ``slots``).
Admission
    A device can take a request if its ECT meets the request's deadline *and* the earliest
    deadline already queued there (the new rows would join that batch and delay it).
    Primary devices (accelerators) first: the least-ECT primary that can take it; else the
    least-ECT fallback device (CPU) that can (an idle device not heard from for ``probe_s``
    always can: its estimate is refreshed by doing work); otherwise
    the request is answered *overloaded* at once (``overload="reject"``, the default) or put on
    the least-ECT device anyway and counted late (``overload="queue"``). Nothing is dropped.
SLA batching (:meth:`Scheduler.poll`)
    Work conserving: a device with a free slot and a non-empty queue gets a batch at once. The
    batch takes queued requests in order while the rows fit ``max_rows`` and the predicted
    completion ``now + service(rows) + overhead`` still meets the earliest deadline in the batch
    (the first request is always taken). Under light load batches are small and latency is
    minimal; under heavy load queues grow while devices are busy, so batches grow and amortize
    the per-batch cost: the batch size follows the load without a fixed timeout.
Failover (:meth:`Scheduler.fail`, :meth:`Scheduler.expired`)
    A device that errors, or whose batch runs past ``timeout_factor`` x its prediction (at
    least ``timeout_min``), is marked down; its queued and in-flight requests are placed again
    on the other devices (no admission check: they were admitted already), or parked until a
    device recovers. A completion arriving later for a batch of a failed device is ignored.
Exactly once
    Each request is in exactly one place (a device queue, an in-flight batch, the parking lot)
    until it is answered; :meth:`Scheduler.complete` and the overload answers remove it, and
    :attr:`Scheduler.answered` counts it once. :meth:`Scheduler.check_invariants` verifies this.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["ServiceModel", "LinearServiceModel", "KernelServiceModel", "Request", "Batch",
           "DeviceState", "Scheduler", "SchedulerError", "Overload"]


class SchedulerError(ValueError):
    """Bad scheduler input (unknown device, duplicate request ID, bad parameter)."""


class ServiceModel:
    """Predicted service time (seconds) of one batch of ``rows`` rows on a device."""

    #: How the prediction was obtained: ``"modelled"`` (cycle model) or ``"measured"``.
    source = "modelled"

    def predict(self, rows: int) -> float:
        raise NotImplementedError

    def observe(self, rows: int, seconds: float) -> None:  # noqa: B027 - optional hook
        """A batch of ``rows`` rows took ``seconds`` of device time (used by measured models)."""


@dataclass
class LinearServiceModel(ServiceModel):
    """``fixed + per_row * rows`` seconds, refined online from observations.

    The refinement is an exponentially weighted least-squares fit over observed batches
    (weight ``alpha`` per new observation) once batches of at least two sizes were seen;
    until then the prior stands.
    """

    fixed: float
    per_row: float
    alpha: float = 0.05
    source: str = "measured"
    _s: list = field(default_factory=lambda: [0.0] * 5, repr=False)  # w, wx, wy, wxx, wxy
    _sizes: set = field(default_factory=set, repr=False)

    def __post_init__(self):
        if self.fixed < 0 or self.per_row < 0:
            raise SchedulerError(f"service model needs fixed >= 0 and per_row >= 0, not "
                                 f"{self.fixed}, {self.per_row}")

    def predict(self, rows: int) -> float:
        return self.fixed + self.per_row * rows

    def observe(self, rows: int, seconds: float) -> None:
        s, a = self._s, self.alpha
        for i, v in enumerate((1.0, rows, seconds, rows * rows, rows * seconds)):
            s[i] = (1 - a) * s[i] + a * v
        self._sizes.add(rows)
        if len(self._sizes) < 2:
            return
        w, wx, wy, wxx, wxy = s
        det = w * wxx - wx * wx
        if det <= 1e-12 * max(w * wxx, 1e-300):
            return
        slope = (w * wxy - wx * wy) / det
        icpt = (wy - slope * wx) / w
        self.per_row, self.fixed = max(slope, 0.0), max(icpt, 0.0)


@dataclass
class KernelServiceModel(ServiceModel):
    """Accelerator batch time from a cycle model: ``latency + ii * (rows - 1)`` cycles at
    ``clock_mhz`` (see :func:`recfabric.host.serve.devices.kernel_service_model`)."""

    latency_cycles: float
    ii_cycles: float
    clock_mhz: float
    source: str = "modelled"

    def cycles(self, rows: int) -> float:
        return self.latency_cycles + self.ii_cycles * max(rows - 1, 0)

    def predict(self, rows: int) -> float:
        return self.cycles(rows) / (self.clock_mhz * 1e6)


@dataclass(eq=False)
class Request:
    """One request: ``rows`` inferences answered together, due ``deadline`` (absolute)."""

    id: object
    rows: int
    arrival: float
    deadline: float
    payload: object = None
    device: str | None = None
    attempts: int = 0  # devices it was placed on (> 1 after a failover)
    state: str = "new"  # new, queued, inflight, parked, done


@dataclass(eq=False)
class Batch:
    """Requests dispatched together to one device slot."""

    id: int
    device: str
    requests: list
    start: float
    predicted: float  # seconds, service model + overhead
    timeout: float  # absolute time after which the device counts as timed out

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.requests)


@dataclass(eq=False)
class DeviceState:
    """What the scheduler knows of one device (one replica, or an autoscaled pool)."""

    name: str
    model: ServiceModel
    kind: str = "accelerator"
    max_rows: int = 256
    slots: int = 1
    fallback: bool = False
    healthy: bool = True
    queue: deque = field(default_factory=deque)
    due: float = math.inf  # earliest deadline in the queue
    last_done: float = -math.inf  # when its last batch completed
    inflight: dict = field(default_factory=dict)
    overhead: float = 0.0
    overhead_alpha: float = 0.1
    failures: int = 0
    batches: int = 0
    rows_done: int = 0

    def predict(self, rows: int) -> float:
        return self.model.predict(rows) + self.overhead

    def drain_time(self, rows: int) -> float:
        """Predicted time to serve ``rows`` rows in batches of at most ``max_rows``."""
        full, rest = divmod(rows, self.max_rows)
        return full * self.predict(self.max_rows) + (self.predict(rest) if rest else 0.0)

    def queued_rows(self) -> int:
        return sum(r.rows for r in self.queue)

    def ect(self, rows: int, now: float) -> float:
        """Expected completion time of ``rows`` new rows appended to this device's queue."""
        ends = sorted(max(b.start + b.predicted, now) for b in self.inflight.values())
        first_free = ends[len(ends) - self.slots] if len(ends) >= self.slots else now
        return first_free + self.drain_time(self.queued_rows() + rows) / self.slots

    def learn(self, batch: Batch, seconds: float) -> None:
        """Learn from one completed batch: a measured model refits itself (it sees the whole
        time, transport included); a modelled one stays and the overhead tracks the rest."""
        if self.model.source == "measured":
            self.model.observe(batch.rows, seconds)
            return
        extra = max(seconds - self.model.predict(batch.rows), 0.0)
        self.overhead += self.overhead_alpha * (extra - self.overhead)


@dataclass(frozen=True)
class Overload:
    """The answer to a request no device can serve within its SLA (or at all)."""

    request: Request
    reason: str


class Scheduler:
    """SLA-bounded batching and least-ECT balancing over heterogeneous devices.

    Parameters
    ----------
    sla : float
        Latency bound in seconds; a request's deadline is ``arrival + sla``.
    overload : {"reject", "queue"}
        What admission does with a request no device can serve in time: answer it overloaded
        at once, or queue it on the least-ECT device (it will be late).
    timeout_factor, timeout_min : float
        A batch still running ``max(timeout_min, timeout_factor * predicted)`` seconds after
        dispatch marks its device as failed (:meth:`expired`).
    max_attempts : int
        Placements per request before failover gives up and answers it overloaded.
    probe_s : float
        An idle device whose last batch finished this long ago takes one request regardless of
        its estimate, which refreshes the estimate (:meth:`_probe`).
    """

    def __init__(self, sla: float, *, overload: str = "reject", timeout_factor: float = 10.0,
                 timeout_min: float = 1.0, max_attempts: int = 4, probe_s: float = 1.0):
        if not sla > 0:
            raise SchedulerError(f"sla must be a positive number of seconds, not {sla!r}")
        if overload not in ("reject", "queue"):
            raise SchedulerError(f"overload must be 'reject' or 'queue', not {overload!r}")
        self.sla = float(sla)
        self.overload = overload
        self.timeout_factor = timeout_factor
        self.timeout_min = timeout_min
        self.max_attempts = max_attempts
        self.probe_s = probe_s
        self.devices: dict[str, DeviceState] = {}
        self.parked: deque = deque()
        self._open: dict = {}  # request id -> Request, until answered
        self._batch_ids = itertools.count()
        self.answered = 0
        self.overloaded = 0
        self.failovers = 0  # requests placed again after a device failure

    # ---- devices ------------------------------------------------------------------------

    def add_device(self, name: str, model: ServiceModel, *, kind: str = "accelerator",
                   max_rows: int = 256, slots: int = 1, fallback: bool = False) -> DeviceState:
        if name in self.devices:
            raise SchedulerError(f"device {name!r} is already registered")
        if max_rows < 1 or slots < 1:
            raise SchedulerError(f"device {name!r}: max_rows and slots must be >= 1, not "
                                 f"{max_rows}, {slots}")
        d = DeviceState(name, model, kind, max_rows, slots, fallback)
        self.devices[name] = d
        return d

    def device(self, name: str) -> DeviceState:
        try:
            return self.devices[name]
        except KeyError:
            raise SchedulerError(f"unknown device {name!r}; devices: "
                                 f"{', '.join(self.devices)}") from None

    def set_slots(self, name: str, slots: int) -> None:
        """Change a device's concurrency (an autoscaled pool's replica count changed)."""
        self.device(name).slots = max(int(slots), 1)

    # ---- requests -----------------------------------------------------------------------

    def new_request(self, rid, rows: int, now: float, payload=None,
                    sla: float | None = None) -> Request:
        if rows < 1:
            raise SchedulerError(f"request {rid!r} has {rows} rows; it needs at least 1")
        return Request(rid, int(rows), now, now + (self.sla if sla is None else sla), payload)

    def _best(self, rows: int, now: float, fallback: bool, deadline: float):
        """``(feasible, any)``: the least-ECT device whose ECT meets ``deadline`` and the
        deadlines of the requests already queued there (the new rows join their batch), and
        the least-ECT device regardless; each ``(ect, device)`` or None."""
        feasible = best = None
        for d in self.devices.values():
            if d.healthy and d.fallback == fallback:
                t = d.ect(rows, now)
                if best is None or t < best[0]:
                    best = (t, d)
                meets = t <= min(deadline, d.due) or self._probe(d, now)
                if meets and (feasible is None or t < feasible[0]):
                    feasible = (t, d)
        return feasible, best

    def _probe(self, d: DeviceState, now: float) -> bool:
        """An idle device that has not finished a batch for ``probe_s`` takes a request even if
        its estimate says it is too slow: estimates learned in a bad moment (a CPU-starved
        host, a slow first call) would otherwise shut a device out for good, since only
        completed batches correct them."""
        return not d.inflight and not d.queue and now - d.last_done >= self.probe_s

    def _place(self, req: Request, d: DeviceState) -> None:
        req.device, req.state = d.name, "queued"
        req.attempts += 1
        d.queue.append(req)
        d.due = min(d.due, req.deadline)

    def submit(self, req: Request, now: float):
        """Admit ``req`` onto a device (returns the :class:`DeviceState`) or refuse it (returns
        an :class:`Overload`, and the request counts as answered)."""
        if req.id in self._open:
            raise SchedulerError(f"request ID {req.id!r} is already in the scheduler")
        if req.state != "new":
            raise SchedulerError(f"request {req.id!r} was submitted before ({req.state})")
        self._open[req.id] = req
        for fallback in (False, True):
            ok, _ = self._best(req.rows, now, fallback, req.deadline)
            if ok:
                self._place(req, ok[1])
                return ok[1]
        options = [o for fb in (False, True) if (o := self._best(req.rows, now, fb, 0)[1])]
        if self.overload == "queue" and options:
            d = min(options, key=lambda o: o[0])[1]
            self._place(req, d)
            return d
        why = "no healthy device" if not options else (
            f"expected completion {1e3 * (min(o[0] for o in options) - req.arrival):.3f} ms "
            f"after arrival exceeds the SLA of {1e3 * (req.deadline - req.arrival):.3f} ms")
        return self._refuse(req, why)

    def _refuse(self, req: Request, why: str) -> Overload:
        req.state = "done"
        del self._open[req.id]
        self.answered += 1
        self.overloaded += 1
        return Overload(req, why)

    # ---- batching -----------------------------------------------------------------------

    def poll(self, now: float) -> list[Batch]:
        """Batches to dispatch now: one per free slot of every healthy device with work."""
        self._unpark(now)
        out = []
        for d in self.devices.values():
            while d.healthy and d.queue and len(d.inflight) < d.slots:
                out.append(self._form(d, now))
        return out

    def _form(self, d: DeviceState, now: float) -> Batch:
        take, rows, due = [], 0, math.inf
        while d.queue:
            r = d.queue[0]
            if take:
                if rows + r.rows > d.max_rows:
                    break
                if now + d.predict(rows + r.rows) > min(due, r.deadline):
                    break
            take.append(d.queue.popleft())
            rows += r.rows
            due = min(due, r.deadline)
        d.due = min((r.deadline for r in d.queue), default=math.inf)
        predicted = d.predict(rows)
        b = Batch(next(self._batch_ids), d.name, take, now, predicted,
                  now + max(self.timeout_min, self.timeout_factor * predicted))
        for r in take:
            r.state = "inflight"
        d.inflight[b.id] = b
        d.batches += 1
        return b

    def complete(self, batch: Batch, now: float, seconds: float | None = None) -> list:
        """``batch`` finished; returns its requests, now answered. A batch of a device that
        failed meanwhile returns ``[]`` (its requests were placed again): exactly once.
        ``seconds`` is the measured device time (default ``now - batch.start``)."""
        d = self.device(batch.device)
        if d.inflight.pop(batch.id, None) is None:
            return []
        d.learn(batch, (now - batch.start) if seconds is None else seconds)
        d.last_done = now
        d.rows_done += batch.rows
        for r in batch.requests:
            r.state = "done"
            del self._open[r.id]
        self.answered += len(batch.requests)
        return list(batch.requests)

    # ---- failures -----------------------------------------------------------------------

    def expired(self, now: float) -> list[str]:
        """Healthy devices with a batch running past its timeout (call :meth:`fail` on them)."""
        return [d.name for d in self.devices.values()
                if d.healthy and any(b.timeout < now for b in d.inflight.values())]

    def fail(self, name: str, now: float, reason: str = "") -> list[Overload]:
        """Mark ``name`` down and place its queued and in-flight requests elsewhere.

        Returns the requests that had to be answered overloaded (placed ``max_attempts`` times
        already). Requests that find no healthy device are parked until one recovers.
        """
        d = self.device(name)
        d.healthy = False
        d.failures += 1
        orphans = [r for b in d.inflight.values() for r in b.requests] + list(d.queue)
        d.inflight.clear()
        d.queue.clear()
        d.due = math.inf
        refused = []
        for r in sorted(orphans, key=lambda r: r.arrival):
            self.failovers += 1
            if r.attempts >= self.max_attempts:
                refused.append(self._refuse(r, f"failed on {r.attempts} devices (last "
                                               f"{name}: {reason or 'device failure'})"))
            else:
                self._replace(r, now)
        return refused

    def _replace(self, r: Request, now: float) -> None:
        best = None
        for d in self.devices.values():
            if d.healthy:
                t = d.ect(r.rows, now)
                if best is None or t < best[0]:
                    best = (t, d)
        if best is None:
            r.state, r.device = "parked", None
            self.parked.append(r)
        else:
            self._place(r, best[1])

    def _unpark(self, now: float) -> None:
        if self.parked and any(d.healthy for d in self.devices.values()):
            waiting, self.parked = self.parked, deque()
            for r in waiting:
                self._replace(r, now)

    def recover(self, name: str) -> None:
        """``name`` works again (its replica was restarted)."""
        self.device(name).healthy = True

    # ---- introspection ------------------------------------------------------------------

    @property
    def open_requests(self) -> int:
        return len(self._open)

    def check_invariants(self) -> None:
        """Every open request is in exactly one place; raise AssertionError otherwise."""
        seen = {}
        for d in self.devices.values():
            for r in d.queue:
                seen.setdefault(r.id, []).append(f"{d.name} queue")
            for b in d.inflight.values():
                for r in b.requests:
                    seen.setdefault(r.id, []).append(f"{d.name} batch {b.id}")
        for r in self.parked:
            seen.setdefault(r.id, []).append("parked")
        dup = {k: v for k, v in seen.items() if len(v) > 1}
        if dup:
            raise AssertionError(f"requests in more than one place: {dup}")
        if set(seen) != set(self._open):
            raise AssertionError(f"open requests {sorted(self._open, key=str)} != placed "
                                 f"{sorted(seen, key=str)}")

    def stats(self) -> dict:
        return {"answered": self.answered, "overloaded": self.overloaded,
                "failovers": self.failovers, "open": self.open_requests,
                "devices": {d.name: {"kind": d.kind, "healthy": d.healthy, "slots": d.slots,
                                     "batches": d.batches, "rows": d.rows_done,
                                     "failures": d.failures,
                                     "overhead_ms": round(d.overhead * 1e3, 4),
                                     "queued": len(d.queue), "inflight": len(d.inflight)}
                            for d in self.devices.values()}}
