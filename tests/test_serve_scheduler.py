"""The serving scheduler (pure Python, no Ray): SLA batching, least-ECT balancing, admission,
failover, exactly-once."""

import math
import random

import pytest

from recfabric.host.serve.scheduler import (
    KernelServiceModel,
    LinearServiceModel,
    Overload,
    Scheduler,
    SchedulerError,
)

MS = 1e-3


def lin(fixed_ms, per_row_ms):
    return LinearServiceModel(fixed_ms * MS, per_row_ms * MS)


def submit_all(s, n, now, rows=1, start=0):
    out = []
    for i in range(start, start + n):
        out.append(s.submit(s.new_request(i, rows, now), now))
    return out


def test_sla_batching_takes_what_meets_the_deadline():
    s = Scheduler(sla=10 * MS, probe_s=math.inf)
    s.add_device("a", lin(1, 0.1), max_rows=1000)
    # device busy with one batch, so a queue builds
    submit_all(s, 1, 0.0)
    (first,) = s.poll(0.0)
    assert first.rows == 1
    submit_all(s, 200, 0.00055, start=1)
    assert s.poll(0.00055) == []  # one slot, busy
    done = s.complete(first, 0.0011)
    assert [r.id for r in done] == [0]
    (b,) = s.poll(0.0011)
    # deadline 10.55 ms; 1.1 ms + 1 ms + 0.1 ms * n <= 10.55 ms -> n = 84
    assert b.rows == 84
    assert b.start + b.predicted <= min(r.deadline for r in b.requests) + 1e-12
    # requests are taken in order, the rest stays queued
    assert [r.id for r in b.requests] == list(range(1, 85))
    # admission used the same prediction: the other 116 were answered overloaded at arrival
    assert len(s.device("a").queue) == 0 and s.overloaded == 200 - 84


def test_admission_protects_queued_deadlines():
    s = Scheduler(sla=100 * MS, probe_s=math.inf)
    s.add_device("a", lin(1, 0.1), max_rows=64)
    s.submit(s.new_request("urgent", 1, 0.0, sla=2 * MS), 0.0)  # due at 2 ms
    # later requests would join its batch: 1 ms + 0.1 ms * n <= 2 ms admits 9 more
    got = submit_all(s, 20, 0.0)
    assert sum(not isinstance(g, Overload) for g in got) == 9
    (b,) = s.poll(0.0)
    assert b.rows == 10 and b.start + b.predicted <= 2 * MS + 1e-12


def test_batch_respects_max_rows_and_earliest_deadline():
    s = Scheduler(sla=100 * MS, overload="queue")  # queue mode: admission lets all in
    d = s.add_device("a", lin(1, 0.1), max_rows=16)
    s.submit(s.new_request("late", 1, 0.0, sla=2 * MS), 0.0)  # due at 2 ms
    submit_all(s, 40, 0.0)
    (b,) = s.poll(0.0)
    # the first request is due at 2 ms: 1 + 0.1 n <= 2 -> 10 rows
    assert b.rows == 10 and b.requests[0].id == "late"
    s.complete(b, b.predicted)
    (b2,) = s.poll(b.predicted)
    assert b2.rows == 16  # max_rows bounds it now
    assert d.batches == 2


def test_first_request_always_dispatched_even_if_late():
    s = Scheduler(sla=1 * MS, overload="queue")
    s.add_device("a", lin(5, 0))
    s.submit(s.new_request(0, 1, 0.0), 0.0)
    (b,) = s.poll(0.0)
    assert b.rows == 1


def test_least_expected_completion_time_balancing():
    s = Scheduler(sla=1.0)
    fast = s.add_device("fast", lin(1, 0.1), max_rows=64)
    slow = s.add_device("slow", lin(4, 0.4), max_rows=64)
    # idle: fast wins (1.1 ms vs 4.4 ms)
    assert s.submit(s.new_request(0, 1, 0.0), 0.0) is fast
    s.poll(0.0)
    # fast busy until 1.1 ms; its ECT for more rows grows with its queue:
    # fast: 1.1 + 1 + 0.1 q, slow: 4 + 0.4 q'. Fill and check every placement is the argmin.
    for i in range(1, 60):
        e_fast = fast.ect(1, 0.0)
        e_slow = slow.ect(1, 0.0)
        d = s.submit(s.new_request(i, 1, 0.0), 0.0)
        assert d is (fast if e_fast <= e_slow else slow)
    assert len(fast.queue) > 0 and len(slow.queue) > 0
    # the queues split so that both devices finish at about the same time
    assert abs(fast.ect(0, 0.0) - slow.ect(0, 0.0)) < 1.5 * MS


def test_ect_uses_slots_and_learned_overhead():
    s = Scheduler(sla=1.0)
    pool = s.add_device("cpu", lin(1, 1), slots=2, fallback=True)
    assert pool.ect(4, 0.0) == pytest.approx(5 * MS / 2)
    s.set_slots("cpu", 4)
    assert pool.ect(4, 0.0) == pytest.approx(5 * MS / 4)
    # a card's batch that took 3 ms longer than modelled teaches a transport overhead
    card = s.add_device("card", KernelServiceModel(250, 10, 250.0))  # 1 us + 0.04 us/row
    s.submit(s.new_request(0, 1, 0.0), 0.0)
    assert s.device("card").queue
    (b,) = s.poll(0.0)
    s.complete(b, 0.0 + b.predicted + 3 * MS)
    assert card.overhead == pytest.approx(0.3 * MS)
    assert card.predict(1) == pytest.approx(1e-6 + 0.3 * MS)


def test_admission_fallback_then_overload():
    s = Scheduler(sla=5 * MS, probe_s=math.inf)
    acc = s.add_device("acc", lin(4, 1), max_rows=8)
    cpu = s.add_device("cpu", lin(2, 1), fallback=True, max_rows=8)
    assert s.submit(s.new_request(0, 1, 0.0), 0.0) is acc  # 5 ms: meets 5 ms
    # acc would now finish at 4 + 2 = 6 ms > 5 ms: the fallback takes it (3 ms)
    assert s.submit(s.new_request(1, 1, 0.0), 0.0) is cpu
    assert s.submit(s.new_request(2, 1, 0.0), 0.0) is cpu  # 2 + 2 = 4 ms
    # cpu would take 2 + 3 = 5 ms: still in; then neither can
    assert s.submit(s.new_request(3, 1, 0.0), 0.0) is cpu
    r = s.submit(s.new_request(4, 1, 0.0), 0.0)
    assert isinstance(r, Overload) and r.request.id == 4
    assert "exceeds the SLA of 5.000 ms" in r.reason
    assert s.overloaded == 1 and s.answered == 1
    s.check_invariants()


def test_stale_estimate_is_probed():
    s = Scheduler(sla=5 * MS, probe_s=1.0)
    card = s.add_device("card", KernelServiceModel(250, 10, 250.0))
    card.overhead = 0.5  # learned in a bad moment: 500 ms per batch
    s.submit(s.new_request(0, 1, 0.0), 0.0)  # never served: the probe takes it
    (b,) = s.poll(0.0)
    s.complete(b, 0.001)  # it took 1 ms: the estimate falls
    assert card.overhead < 0.5
    # within probe_s of that batch, the estimate rules again (still 450 ms: refused)
    assert isinstance(s.submit(s.new_request(1, 1, 0.01), 0.01), Overload)
    assert s.submit(s.new_request(2, 1, 1.5), 1.5) is card  # idle 1.5 s: probed again


def test_admission_queue_mode_places_late_requests():
    s = Scheduler(sla=1 * MS, overload="queue")
    s.add_device("acc", lin(4, 1))
    d = s.submit(s.new_request(0, 1, 0.0), 0.0)
    assert d.name == "acc" and s.overloaded == 0


def test_no_device_is_an_overload_answer():
    s = Scheduler(sla=1.0)
    s.add_device("acc", lin(1, 0))
    s.fail("acc", 0.0)
    r = s.submit(s.new_request(0, 1, 0.0), 0.0)
    assert isinstance(r, Overload) and r.reason == "no healthy device"


def test_failover_reruns_inflight_elsewhere_and_ignores_stale_completion():
    s = Scheduler(sla=1.0)
    a = s.add_device("a", lin(1, 0.1), max_rows=4)
    b = s.add_device("b", lin(1, 0.1), max_rows=4)
    submit_all(s, 12, 0.0)
    batches = s.poll(0.0)
    assert {x.device for x in batches} == {"a", "b"}
    on_a = next(x for x in batches if x.device == "a")
    ids_a = {r.id for r in on_a.requests} | {r.id for r in a.queue}
    refused = s.fail("a", 0.001, "injected")
    assert refused == [] and not a.healthy
    assert {r.id for r in b.queue} >= ids_a  # all of a's work now waits on b
    assert all(r.attempts == 2 for r in b.queue if r.id in ids_a)
    s.check_invariants()
    assert s.complete(on_a, 0.002) == []  # the dead device's late answer is ignored
    answered = []
    now = 0.002
    for x in batches:
        if x.device == "b":
            answered += s.complete(x, now)
    while s.open_requests:
        for x in s.poll(now):
            now += x.predicted
            answered += s.complete(x, now)
    assert sorted(r.id for r in answered) == list(range(12))
    assert s.answered == 12 and s.failovers == len(ids_a)


def test_parked_requests_wait_for_recovery():
    s = Scheduler(sla=1.0)
    s.add_device("a", lin(1, 0))
    submit_all(s, 3, 0.0)
    (b,) = s.poll(0.0)
    s.fail("a", 0.0)
    assert len(s.parked) == 3 and s.poll(0.1) == []
    s.check_invariants()
    s.recover("a")
    (b2,) = s.poll(0.2)
    assert sorted(r.id for r in b2.requests) == [0, 1, 2]
    assert len(s.complete(b2, 0.3)) == 3 and s.open_requests == 0


def test_timeout_marks_device_and_max_attempts_answers_overload():
    s = Scheduler(sla=1.0, timeout_factor=2, timeout_min=0.01, max_attempts=1)
    s.add_device("a", lin(10, 0))
    s.add_device("b", lin(10, 0))
    s.submit(s.new_request(0, 1, 0.0), 0.0)
    (b,) = s.poll(0.0)
    assert b.timeout == pytest.approx(0.02)
    assert s.expired(0.019) == []
    assert s.expired(0.021) == [b.device]
    refused = s.fail(b.device, 0.021, "timeout")
    assert len(refused) == 1 and "failed on 1 devices" in refused[0].reason
    assert s.answered == 1 and s.open_requests == 0


def test_exactly_once_under_random_failures():
    rng = random.Random(7)
    s = Scheduler(sla=20 * MS, overload="reject")
    for i in range(3):
        s.add_device(f"acc{i}", lin(0.5, 0.05), max_rows=32)
    s.add_device("cpu", lin(1, 0.5), slots=2, fallback=True, max_rows=8)
    answers = {}
    running = []
    now, nid = 0.0, 0

    def answer(rid, what):
        assert rid not in answers, f"request {rid} answered twice"
        answers[rid] = what
    while nid < 3000 or s.open_requests:
        now += rng.expovariate(2000.0)
        if nid < 3000:
            r = s.submit(s.new_request(nid, rng.choice((1, 1, 2, 4)), now), now)
            if isinstance(r, Overload):
                answer(r.request.id, "overload")
            nid += 1
        if rng.random() < 0.004:
            victim = rng.choice([d for d in s.devices if d != "cpu"])
            for o in s.fail(victim, now, "random"):
                answer(o.request.id, "overload")
        for name, d in s.devices.items():
            if not d.healthy and rng.random() < 0.05:
                s.recover(name)
        running += s.poll(now)
        still = []
        for b in running:
            if b.start + b.predicted <= now:
                for r in s.complete(b, now, seconds=b.predicted):
                    answer(r.id, "scores")
            else:
                still.append(b)
        running = still
        s.check_invariants()
    assert sorted(answers) == list(range(3000))
    assert s.answered == 3000 and s.failovers > 0
    assert sum(1 for v in answers.values() if v == "scores") > 2500


def test_linear_model_learns_from_observations():
    m = LinearServiceModel(0.0, 0.0)
    for _ in range(200):
        for rows in (1, 10, 50):
            m.observe(rows, 0.002 + 0.0001 * rows)
    assert m.fixed == pytest.approx(0.002, rel=1e-3)
    assert m.per_row == pytest.approx(0.0001, rel=1e-3)


def test_kernel_model_cycles():
    k = KernelServiceModel(361, 68, 250.0)
    assert k.cycles(1) == 361 and k.cycles(16) == 361 + 15 * 68
    assert k.predict(256) == pytest.approx((361 + 255 * 68) / 250e6)


def test_bad_inputs_are_named():
    with pytest.raises(SchedulerError, match="sla must be a positive"):
        Scheduler(sla=0)
    with pytest.raises(SchedulerError, match="overload must be"):
        Scheduler(sla=1, overload="drop")
    s = Scheduler(sla=1)
    s.add_device("a", lin(1, 0))
    with pytest.raises(SchedulerError, match="already registered"):
        s.add_device("a", lin(1, 0))
    with pytest.raises(SchedulerError, match="unknown device 'zz'"):
        s.fail("zz", 0)
    with pytest.raises(SchedulerError, match="has 0 rows"):
        s.new_request(1, 0, 0.0)
    s.submit(s.new_request(1, 1, 0.0), 0.0)
    with pytest.raises(SchedulerError, match="already in the scheduler"):
        s.submit(s.new_request(1, 1, 0.0), 0.0)
    with pytest.raises(SchedulerError, match="fixed >= 0"):
        LinearServiceModel(-1, 0)
