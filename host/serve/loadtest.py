"""Open-loop load test of the serving application.

Requests (one inference each, synthetic Zipf-skewed inputs of the model) are sent at Poisson
arrival times at a target rate, or a step profile (the rate x0.5, x1.5, x0.5 over equal thirds
of the requests), without waiting for answers (open loop: a slow service does not slow the
arrivals). Every answer is checked: ``mismatches`` counts exact answers whose scores differ
(``!=``) from the golden model computed from the compiled images; float answers (a torch/onnx
CPU fallback) are counted apart with their largest probability error. ``lost`` = requests that
got neither an answer nor an error. Latency is measured at the client, from the send to the
answer, in wall time (``measured``).
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np

__all__ = ["run_loadtest", "summarize", "plot_latency", "arrival_times"]


def arrival_times(n: int, rate: float, profile: str = "poisson", seed: int = 0) -> np.ndarray:
    """Send times (seconds from start) of ``n`` requests at ``rate`` per second."""
    if not rate > 0 or n < 1:
        raise ValueError(f"need rate > 0 and at least one request, not rate={rate!r}, n={n!r}")
    rng = np.random.default_rng(seed)
    if profile == "poisson":
        rates = np.full(n, float(rate))
    elif profile == "step":
        rates = np.full(n, float(rate))
        third = n // 3
        rates[:third] *= 0.5
        rates[third:2 * third] *= 1.5
        rates[2 * third:] *= 0.5
    else:
        raise ValueError(f"profile must be 'poisson' or 'step', not {profile!r}")
    return np.cumsum(rng.exponential(1.0 / rates))


async def _drive(call, payloads, times, *, kill_at=None, kill=None, drain_s=60.0):
    """Send payload i at ``times[i]`` via ``await call(payload)``; returns per-request records."""
    n = len(payloads)
    rec = [None] * n
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    pending = set()
    events = {}

    async def one(i):
        sent = time.perf_counter()
        try:
            out = await call(payloads[i])
            rec[i] = {"sent": sent - t0, "latency_ms": (time.perf_counter() - sent) * 1e3,
                      "out": out}
        except Exception as e:  # noqa: BLE001 - counted as an error answer
            rec[i] = {"sent": sent - t0, "latency_ms": (time.perf_counter() - sent) * 1e3,
                      "error": f"{type(e).__name__}: {str(e)[:300]}"}
    for i in range(n):
        delay = t0 + times[i] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if kill is not None and kill_at is not None and i == kill_at:
            events["kill_at_s"] = time.perf_counter() - t0
            events["killed"] = await loop.run_in_executor(None, kill)
        t = loop.create_task(one(i))
        pending.add(t)
        t.add_done_callback(pending.discard)
    events["sent_s"] = time.perf_counter() - t0
    if pending:
        await asyncio.wait(set(pending), timeout=drain_s)
    events["end_s"] = time.perf_counter() - t0
    for t in list(pending):
        t.cancel()
    return rec, events


def summarize(rec, golden_scores, golden_prob, sla_ms: float, events: dict) -> dict:
    """The load test's figures from per-request records."""
    n = len(rec)
    lat, ok_lat, sent = [], [], []
    answered = errors = overloaded = mismatches = floats = sla_miss = 0
    float_err = 0.0
    per_device, engines, error_kinds = {}, {}, {}
    last = 0.0
    for i, r in enumerate(rec):
        if r is None:
            continue
        if "error" in r:
            errors += 1
            k = r["error"].split(":")[0]
            error_kinds[k] = error_kinds.get(k, 0) + 1
            continue
        answered += 1
        out = r["out"]
        last = max(last, r["sent"] + r["latency_ms"] / 1e3)
        lat.append(r["latency_ms"])
        sent.append(r["sent"])
        if out["status"] != "ok":
            overloaded += 1
            continue
        ok_lat.append(r["latency_ms"])
        sla_miss += r["latency_ms"] > sla_ms
        per_device[out["device"]] = per_device.get(out["device"], 0) + 1
        engines[out["engine"]] = engines.get(out["engine"], 0) + 1
        if out["exact"]:
            mismatches += not np.array_equal(np.asarray(out["scores"]), golden_scores[i:i + 1])
        else:
            floats += 1
            float_err = max(float_err, float(np.max(np.abs(
                np.asarray(out["probabilities"]) - golden_prob[i:i + 1]))))
    ok = np.asarray(ok_lat) if ok_lat else np.asarray([np.nan])
    ing = [r["out"]["latency_ms"] for r in rec if r and "out" in r and r["out"]["status"] == "ok"]
    ing = np.asarray(ing) if ing else np.asarray([np.nan])

    def pct(q):
        return round(float(np.percentile(ok, q)), 3)
    dur = max(last, 1e-9)
    return {
        "requests": n, "answered": answered, "lost": n - answered - errors, "errors": errors,
        "error_kinds": error_kinds, "overloaded": overloaded, "scored": len(ok_lat),
        "mismatches": mismatches, "float_answers": floats,
        "float_max_abs_error_vs_golden": round(float_err, 6),
        "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "p99_9_ms": pct(99.9),
        "max_ms": round(float(np.max(ok)), 3),
        "ingress_p50_ms": round(float(np.percentile(ing, 50)), 3),
        "ingress_p99_ms": round(float(np.percentile(ing, 99)), 3),
        "sla_ms": sla_ms, "sla_misses": int(sla_miss),
        "throughput": round(len(ok_lat) / dur, 1), "offered_rate": round(n / events["sent_s"], 1),
        "duration_s": round(dur, 3), "per_device": per_device, "engines": engines,
        "kill_at_s": events.get("kill_at_s"), "killed": events.get("killed"),
        "latency": "measured (client wall time, send to answer)",
    }


def plot_latency(rec, path, sla_ms: float, events: dict, title: str = "") -> None:
    """Latency over time (PNG): every answer, a rolling p99, the SLA and the kill."""
    import matplotlib  # noqa: PLC0415 - optional (serve extra)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    ok = [(r["sent"], r["latency_ms"]) for r in rec if r and "out" in r
          and r["out"]["status"] == "ok"]
    ov = [(r["sent"], r["latency_ms"]) for r in rec if r and "out" in r
          and r["out"]["status"] != "ok"]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    if ok:
        t, y = np.array(ok).T
        ax.scatter(t, y, s=2, alpha=0.35, label="answered (scores)", color="tab:blue")
        order = np.argsort(t)
        t, y = t[order], y[order]
        w = max(len(y) // 50, 20)
        if len(y) > w:
            p99 = [np.percentile(y[i:i + w], 99) for i in range(0, len(y) - w, w // 2)]
            ax.plot(t[w // 2:len(y) - w // 2:w // 2][:len(p99)], p99, color="tab:red",
                    label=f"rolling p99 ({w} requests)")
    if ov:
        t, y = np.array(ov).T
        ax.scatter(t, y, s=4, color="tab:orange", label="overloaded answer")
    ax.axhline(sla_ms, color="k", ls="--", lw=1, label=f"SLA {sla_ms:g} ms")
    if events.get("kill_at_s") is not None:
        ax.axvline(events["kill_at_s"], color="tab:purple", lw=1.5,
                   label=f"replica killed ({events.get('killed', '')[-30:]})")
    ax.set_yscale("log")
    ax.set_xlabel("send time (s)")
    ax.set_ylabel("latency (ms, measured)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_loadtest(handle, payloads, golden_scores, golden_prob, *, rate: float, sla_ms: float,
                 profile: str = "poisson", seed: int = 0, kill=None, kill_fraction: float = 0.5,
                 drain_s: float = 60.0, plot=None, title: str = ""):
    """Drive ``handle.infer`` (a Ray Serve DeploymentHandle) and summarize."""
    times = arrival_times(len(payloads), rate, profile, seed)

    async def call(p):
        return await handle.infer.remote({**p, "sent_at": time.time()})
    kill_at = int(len(payloads) * kill_fraction) if kill else None
    rec, events = asyncio.run(_drive(call, payloads, times, kill_at=kill_at, kill=kill,
                                     drain_s=drain_s))
    out = summarize(rec, golden_scores, golden_prob, sla_ms, events)
    out["profile"], out["target_rate"] = profile, rate
    if plot:
        plot_latency(rec, plot, sla_ms, events, title)
        out["plot"] = str(plot)
    return out


def dumps(report: dict) -> str:
    return json.dumps(report, indent=1, sort_keys=False, default=str)
