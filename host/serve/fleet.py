"""Discrete-event fleet simulation: N hosts x M cards, driven by the live service's scheduler.

Every host runs one :class:`~recfabric.host.serve.scheduler.Scheduler` (the class the Ray
Serve ingress runs, not a copy) over its cards; SimPy provides time. A card's batch takes the
kernel's modelled time (:func:`~recfabric.host.compiler.cycle_model.kernel_batch_cycles`: the
cycle model of the model on the configuration, at its clock) plus a fixed launch overhead per batch
(``launch_us``: host-side driver, PCIe doorbell and DMA setup; an assumption, see
docs/serving.md). A front end spreads queries over hosts by the power of two choices on the
hosts' expected completion times (what Ray Serve's router does over replicas); the chosen
host's scheduler admits (or refuses, answering overloaded), batches under the SLA and balances
over its cards by least expected completion time.

A query ranks ``items`` candidates (rows); sizes are log-normal with that mean (sigma 0.8,
clipped to 1..``max_items``), arrivals are Poisson at ``load`` x the fleet's capacity, where
capacity = cards x clock / ii / mean rows per query (the MLP-bound rate; per-batch latency and
launch costs make the real capacity lower, which is the point of measuring it).
"""

from __future__ import annotations

import math
import time

import numpy as np

from .scheduler import KernelServiceModel, Overload, Scheduler

__all__ = ["simulate", "sweep", "format_table", "plot_sweep", "fleet_service_model"]


def fleet_service_model(model: str, config: str, *, study: bool = False):
    """The kernel service model of zoo ``model`` on preset ``config`` (no compile needed: the
    plan and the request layout are computed, not written).

    The tables are planned within the kernel's capabilities; ``study`` plans them for
    :func:`~recfabric.host.compiler.planner.study_capabilities` instead (a hypothetical kernel of
    the preset's size that splits tables by row range, as ``recfabric plan --study``), for models
    whose tables the real kernel cannot hold.
    """
    from ...hw.config import get_preset  # noqa: PLC0415
    from ..compiler.cycle_model import kernel_batch_cycles  # noqa: PLC0415
    from ..compiler.planner import PlanError, plan, study_capabilities  # noqa: PLC0415
    from ..model.zoo import get_model  # noqa: PLC0415
    from ..runtime.wire_format import RequestLayout  # noqa: PLC0415
    spec, cfg = get_model(model), get_preset(config)
    try:
        p = plan(spec, study_capabilities(cfg) if study else cfg, "default")
    except PlanError as e:
        hint = "" if study else "; --study plans for a kernel that splits tables by row range"
        raise ValueError(f"model {model!r} on {config!r}: {e}{hint}") from None
    words = RequestLayout.for_model(spec, word_bits=256, elem_bits=cfg.data_bits) \
        .words_per_record
    latency, ii = kernel_batch_cycles(spec, cfg, p.rounds, words,
                                      pooled_inputs=p.pooled_inputs)
    return KernelServiceModel(latency, ii, cfg.clock_mhz)


def simulate(*, hosts: int, cards_per_host: int, kernel, load: float, sla_ms: float,
             queries: int, items: float = 64, max_items: int = 512, max_rows: int = 1024,
             launch_us: float = 20.0, warmup: float = 0.1, seed: int = 0) -> dict:
    """Simulate one operating point; returns its figures (times are simulated, from models)."""
    import simpy  # noqa: PLC0415 - optional (serve extra)
    rng = np.random.default_rng(seed)
    cards = hosts * cards_per_host
    sigma = 0.8
    mu = math.log(items) - sigma ** 2 / 2
    sizes = np.clip(np.rint(rng.lognormal(mu, sigma, queries)), 1, max_items).astype(int)
    per_row = kernel.ii_cycles / (kernel.clock_mhz * 1e6)
    capacity = cards / (per_row * sizes.mean())
    gaps = rng.exponential(1.0 / (load * capacity), queries)
    launch = launch_us * 1e-6
    env = simpy.Environment()
    scheds = []
    for h in range(hosts):
        s = Scheduler(sla_ms / 1e3)
        for c in range(cards_per_host):
            d = s.add_device(f"h{h}c{c}", kernel, max_rows=max_rows)
            d.overhead = launch  # what the service learns from its completed batches
        scheds.append(s)
    lat = np.full(queries, np.nan)
    refused = np.zeros(queries, bool)
    busy = np.zeros(hosts)
    batches = [0]

    def run(s, h, b):
        dt = kernel.predict(b.rows) + launch
        busy[h] += dt
        yield env.timeout(dt)
        for r in s.complete(b, env.now):
            lat[r.id] = env.now - r.arrival
        kick(s, h)

    def kick(s, h):
        for b in s.poll(env.now):
            batches[0] += 1
            env.process(run(s, h, b))

    def host_ect(s, rows, now):
        return min((d.ect(rows, now) for d in s.devices.values()), default=math.inf)

    def arrivals():
        for i in range(queries):
            yield env.timeout(gaps[i])
            now = env.now
            a, b = rng.integers(hosts, size=2)
            rows = int(sizes[i])
            h = a if host_ect(scheds[a], rows, now) <= host_ect(scheds[b], rows, now) else b
            s = scheds[h]
            got = s.submit(s.new_request(i, rows, now), now)
            if isinstance(got, Overload):
                refused[i] = True
                lat[i] = 0.0
            else:
                kick(s, h)
    t0 = time.perf_counter()
    env.process(arrivals())
    env.run()
    wall = time.perf_counter() - t0
    for s in scheds:
        s.check_invariants()
        assert s.open_requests == 0
    keep = np.arange(queries) >= int(warmup * queries)
    served = keep & ~refused
    start = gaps.cumsum()[keep][0]
    end = np.nanmax((gaps.cumsum() + lat)[served])
    l_ms = lat[served] * 1e3
    return {
        "hosts": hosts, "cards": cards, "load": load, "queries": queries,
        "mean_items": round(float(sizes.mean()), 1),
        "offered_qps": round(load * capacity, 1),
        "throughput_qps": round(served.sum() / (end - start), 1),
        "throughput_inferences_per_s": round(sizes[served].sum() / (end - start), 1),
        "overloaded_pct": round(100 * refused[keep].mean(), 3),
        "p50_ms": round(float(np.percentile(l_ms, 50)), 4),
        "p99_ms": round(float(np.percentile(l_ms, 99)), 4),
        "sla_ms": sla_ms, "sla_miss_pct": round(100 * float((l_ms > sla_ms).mean()), 4),
        "card_utilization": round(float(busy.sum() / (cards * env.now)), 3),
        "mean_batch_rows": round(float(sizes[~refused].sum() / max(batches[0], 1)), 1),
        "sim_wall_s": round(wall, 2), "figures": "simulated (cycle model + assumptions)",
    }


def sweep(*, cards, loads, cards_per_host: int = 8, model: str = "small",
          config: str = "u280", study: bool = False, sla_ms: float = 10.0, queries: int = 50000,
          items: float = 64, seed: int = 0, progress=None, **kw) -> list[dict]:
    kernel = fleet_service_model(model, config, study=study)
    rows = []
    for n in cards:
        if n % cards_per_host:
            raise ValueError(f"--cards {n} is not a multiple of --cards-per-host "
                             f"{cards_per_host}")
        for load in loads:
            if not 0 < load:
                raise ValueError(f"loads must be positive, not {load}")
            r = simulate(hosts=n // cards_per_host, cards_per_host=cards_per_host, kernel=kernel,
                         load=load, sla_ms=sla_ms, queries=queries, items=items, seed=seed, **kw)
            r.update(model=model, config=config, study=study)
            rows.append(r)
            if progress:
                progress(f"{n} cards, load {load}: {r['throughput_qps']:,.0f} q/s, p99 "
                         f"{r['p99_ms']} ms ({r['sim_wall_s']} s)")
    return rows


def format_table(rows) -> str:
    head = ("| cards | hosts | load | offered q/s | served q/s | inferences/s | p50 ms | p99 ms | "
            "overloaded % | card util |")
    out = [head, "|" + "---|" * 10]
    for r in rows:
        out.append(f"| {r['cards']} | {r['hosts']} | {r['load']} | {r['offered_qps']:,.0f} | "
                   f"{r['throughput_qps']:,.0f} | {r['throughput_inferences_per_s']:.3g} | "
                   f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['overloaded_pct']} | "
                   f"{r['card_utilization']} |")
    return "\n".join(out)


def plot_sweep(rows, path) -> None:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    loads = sorted({r["load"] for r in rows})
    cards = sorted({r["cards"] for r in rows})
    for load in loads:
        pts = sorted((r["cards"], r["throughput_qps"]) for r in rows if r["load"] == load)
        a.plot(*zip(*pts), marker="o", label=f"load {load}")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("cards")
    a.set_ylabel("served queries/s (simulated)")
    a.set_title("throughput scaling")
    a.legend(fontsize=7)
    for n in cards:
        pts = sorted((r["load"], r["p99_ms"]) for r in rows if r["cards"] == n)
        b.plot(*zip(*pts), marker="o", label=f"{n} cards")
    b.axhline(rows[0]["sla_ms"], color="k", ls="--", lw=1, label="SLA")
    b.set_xlabel("offered load / capacity")
    b.set_ylabel("p99 latency (ms, simulated)")
    b.set_title("p99 vs load")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
