"""The Ray Serve application: an ingress running the scheduler, one deployment per device.

Layout of one application (``recfabric serve`` builds it with :func:`build_app`)::

    HTTP POST /recfabric  ─┐
    handle.infer.remote() ─┴─► Ingress (1 replica: the Scheduler, asyncio driver)
                                 ├─► dev-timed-0  (1 replica = 1 device: DeviceWorker)
                                 ├─► dev-timed-1
                                 ├─► dev-xrt-0 ... (one per card)
                                 └─► dev-cpu      (CPU fallback, autoscaled MIN..MAX replicas)

The ingress turns each request into a :class:`~recfabric.host.serve.scheduler.Request`, lets the
scheduler place it (least expected completion time, admission under the SLA), dispatches the
batches the scheduler forms to the device deployments through ``DeploymentHandle``\\ s and
answers each request exactly once: scores, or an ``overloaded`` answer with the reason.

Failures: a device call that raises (the replica died, the device errored) or runs past the
batch timeout marks the device down in the scheduler, which places its queued and in-flight
requests on the other devices. The failed replica reports unhealthy from ``check_health`` (or
is dead), so Ray Serve restarts it; the ingress probes the device until a healthy replica
answers and then gives it work again.

Elasticity: the CPU fallback deployment has a Ray Serve ``autoscaling_config``
(``target_ongoing_requests=1``); the ingress keeps up to two batches per running CPU replica in
flight, so a saturated pool shows Ray Serve two ongoing requests per replica and it adds
replicas (up to MAX), an idle pool shows fewer and it removes them. The ingress reads the
running replica count from ``serve.status()`` every second and gives the scheduler the pool's
slots accordingly.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np

from .devices import (
    DeviceGroup,
    DeviceWorker,
    calibrate,
    compiled_spec,
    kernel_service_model,
    make_payload,
    make_runner,
    payload_from_json,
    payload_rows,
    stack_payloads,
)
from .scheduler import LinearServiceModel, Overload, Scheduler

__all__ = ["build_app", "require_ray", "APP_NAME", "ROUTE", "device_deployment_name",
           "kill_replica"]

APP_NAME = "recfabric"
ROUTE = "/recfabric"
CPU_SLOTS_PER_REPLICA = 2


def require_ray():
    """Import ``ray`` and ``ray.serve`` or say how to install them."""
    try:
        import ray  # noqa: PLC0415
        from ray import serve  # noqa: PLC0415
    except ImportError as e:
        raise ImportError("serving needs Ray Serve, an optional dependency: "
                          "pip install 'recfabric[serve]'") from e
    return ray, serve


def device_deployment_name(kind: str, i: int | None = None) -> str:
    return f"dev-{kind}" if i is None else f"dev-{kind}-{i}"


_CLASSES = None


def _classes():
    """The deployment classes (created on first use: ``ray`` is an optional dependency)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    ray, serve = require_ray()

    class DeviceReplica:
        """One device (or one replica of the CPU pool): a DeviceWorker behind Ray Serve."""

        def __init__(self, compiled_dir, kind, name, options):
            opts = dict(options)
            self.hang_s = opts.pop("hang_s", 30.0)
            runner = make_runner(kind, compiled_dir, **opts)
            self.worker = DeviceWorker(runner, name)

        async def run(self, payload):
            return await asyncio.to_thread(self.worker.run, payload)

        async def ping(self):
            ok, why = self.worker.healthy(self.hang_s)
            return {"ok": ok, "why": why, "pid": self.worker.pid, "engine": self.worker.runner
                    .engine, "exact": self.worker.runner.exact}

        async def mark_failed(self, reason):
            self.worker.error = self.worker.error or reason

        async def inject(self, fault):
            self.worker.inject(fault)

        async def calibrate(self, payload):
            m = await asyncio.to_thread(calibrate, self.worker.runner, payload)
            return m.fixed, m.per_row

        def check_health(self):
            ok, why = self.worker.healthy(self.hang_s)
            if not ok:
                raise RuntimeError(why)

    class Ingress:
        """HTTP JSON and handle ingress; runs the scheduler."""

        def __init__(self, compiled_dir, devices, settings):
            self.compiled_dir = str(compiled_dir)
            self.spec = compiled_spec(compiled_dir)
            self.settings = settings
            self.sched = Scheduler(settings["sla_s"], overload=settings["overload"],
                                   timeout_factor=settings["timeout_factor"],
                                   timeout_min=settings["timeout_s"])
            self.handles = {}
            self.meta = {}
            kmodel = None
            for name, (handle, kind, max_rows) in devices.items():
                self.handles[name] = handle
                if kind == "cpu":
                    model = LinearServiceModel(1e-3, 1e-4)  # prior until calibrated
                    self.sched.add_device(name, model, kind="cpu", max_rows=max_rows,
                                          slots=CPU_SLOTS_PER_REPLICA, fallback=True)
                else:
                    kmodel = kmodel or kernel_service_model(self.compiled_dir)
                    self.sched.add_device(name, kmodel, kind=kind, max_rows=max_rows)
                self.meta[name] = {"kind": kind, "pids": set(), "restarts": 0}
            self.ids = itertools.count()
            self.futures = {}
            self.answers = {"ok": 0, "overloaded": 0}
            self.started = False
            self.tasks = set()

        # -- start-up: calibrate the CPU pool, watch its replica count
        async def _start(self):
            if self.started:
                return
            self.started = True
            from ..model.synthetic import synthetic_batch  # noqa: PLC0415
            d, s = synthetic_batch(self.spec, 64, seed=12345)
            probe = make_payload(d, s)
            for name, h in self.handles.items():
                info = await h.ping.remote()
                self.meta[name].update(engine=info["engine"], exact=info["exact"])
                self.meta[name]["pids"].add(info["pid"])
                if self.meta[name]["kind"] == "cpu":
                    fixed, per_row = await h.calibrate.remote(probe)
                    self.sched.device(name).model = LinearServiceModel(fixed, per_row)
            self._spawn(self._watch_pools())

        def _spawn(self, coro):
            t = asyncio.get_running_loop().create_task(coro)
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

        async def _watch_pools(self):
            while True:
                try:
                    st = await asyncio.to_thread(serve.status)
                    app = st.applications.get(self.settings["app_name"])
                    for name, m in self.meta.items():
                        if m["kind"] == "cpu" and app and name in app.deployments:
                            n = app.deployments[name].replica_states.get("RUNNING", 0)
                            self.sched.set_slots(name, max(n, 1) * CPU_SLOTS_PER_REPLICA)
                            m["replicas"] = n
                except Exception as e:  # status is advisory: keep serving
                    self.meta.setdefault("_status_errors", []).append(repr(e)[:200])
                await asyncio.sleep(1.0)

        # -- requests
        async def infer(self, request):
            """One request: a payload dict (arrays, :func:`make_payload`) or the JSON form."""
            await self._start()
            t0 = time.monotonic()
            if isinstance(request, dict) and "ids" in request:
                payload = request
            else:
                payload = payload_from_json(request, self.spec)
            # deadline propagation: a client's send time (epoch seconds, same host clock or
            # synchronized) starts the SLA clock there, so time spent queued before the ingress
            # counts and requests already too old are answered overloaded at once
            sent = request.get("sent_at") if isinstance(request, dict) else None
            age = min(max(time.time() - float(sent), 0.0), 3600.0) if sent else 0.0
            rid = next(self.ids)
            req = self.sched.new_request(rid, payload_rows(payload), t0 - age, payload)
            got = self.sched.submit(req, t0)
            if isinstance(got, Overload):
                return self._overload(got, None)
            fut = asyncio.get_running_loop().create_future()
            self.futures[rid] = fut
            self._kick()
            return await fut

        async def __call__(self, http_request):
            from starlette.responses import JSONResponse  # noqa: PLC0415 - Ray Serve brings it
            try:
                body = await http_request.json()
                out = await self.infer(body)
            except ValueError as e:
                return JSONResponse({"status": "bad-request", "error": str(e)}, status_code=400)
            code = 200 if out["status"] == "ok" else 503
            return JSONResponse(_jsonable(out), status_code=code)

        def _overload(self, o, t0):
            self.answers["overloaded"] += 1
            return {"id": o.request.id, "status": "overloaded", "reason": o.reason,
                    "attempts": o.request.attempts,
                    "latency_ms": (time.monotonic() - o.request.arrival) * 1e3}

        def _kick(self):
            for b in self.sched.poll(time.monotonic()):
                self._spawn(self._dispatch(b))

        async def _dispatch(self, batch):
            name = batch.device
            payload = stack_payloads([r.payload for r in batch.requests])
            try:
                wait = max(batch.timeout - time.monotonic(), 0.001)
                out = await asyncio.wait_for(self.handles[name].run.remote(payload), wait)
            except Exception as e:  # noqa: BLE001 - any failure fails the device over
                why = "timeout" if isinstance(e, asyncio.TimeoutError) else \
                    f"{type(e).__name__}: {str(e)[:200]}"
                self._fail(name, why)
                return
            now = time.monotonic()
            done = self.sched.complete(batch, now)
            row = 0
            for r in done:
                sl = slice(row, row + r.rows)
                row += r.rows
                fut = self.futures.pop(r.id, None)
                if fut is None or fut.done():
                    continue
                self.answers["ok"] += 1
                fut.set_result({
                    "id": r.id, "status": "ok",
                    "scores": None if out["scores"] is None else
                    np.asarray(out["scores"])[sl].tolist(),
                    "probabilities": np.asarray(out["probabilities"])[sl].tolist(),
                    "device": name, "engine": out["engine"], "exact": out["exact"],
                    "attempts": r.attempts, "latency_ms": (now - r.arrival) * 1e3})
            self.meta[name]["pids"].add(out.get("pid"))
            self._kick()

        def _fail(self, name, why):
            if not self.sched.device(name).healthy:
                return
            now = time.monotonic()
            for o in self.sched.fail(name, now, why):
                fut = self.futures.pop(o.request.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(self._overload(o, None))
            self.meta[name].setdefault("failures", []).append(why)
            self._spawn(self._recover(name, why))
            self._kick()

        async def _recover(self, name, why):
            h = self.handles[name]
            try:  # a live but broken replica: make its health check fail, Serve restarts it
                await asyncio.wait_for(h.mark_failed.remote(why), 2.0)
            except Exception:  # noqa: BLE001 - dead already: Serve is restarting it
                pass
            while True:
                await asyncio.sleep(0.5)
                try:
                    info = await asyncio.wait_for(h.ping.remote(), 5.0)
                except Exception:  # noqa: BLE001 - not back yet
                    continue
                if info["ok"]:
                    if info["pid"] not in self.meta[name]["pids"]:
                        self.meta[name]["restarts"] += 1
                    self.meta[name]["pids"].add(info["pid"])
                    self.sched.recover(name)
                    self._kick()
                    return

        async def inject(self, device, fault):
            """Test hook: make ``device``'s next batch crash, hang or raise."""
            await self.handles[device].inject.remote(fault)

        async def stats(self):
            await self._start()
            st = self.sched.stats()
            for name, m in self.meta.items():
                if name in st["devices"]:
                    st["devices"][name].update(
                        engine=m.get("engine"), exact=m.get("exact"), restarts=m["restarts"],
                        failures=m.get("failures", []), replicas=m.get("replicas"),
                        model=type(self.sched.device(name).model).__name__,
                        source=self.sched.device(name).model.source)
            st["answers"] = dict(self.answers)
            st["sla_ms"] = self.settings["sla_s"] * 1e3
            return st

    _CLASSES = (DeviceReplica, Ingress)
    return _CLASSES


def _jsonable(out):
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in out.items()}


def build_app(compiled_dir, groups: list[DeviceGroup], *, sla_ms: float, cpu_engine="golden",
              float_weights=None, xclbin=None, max_rows: int = 256, cpu_max_rows: int = 64,
              overload: str = "reject", timeout_s: float = 2.0, timeout_factor: float = 20.0,
              hang_s: float = 10.0, replica_cpus: float = 0.0, app_name: str = APP_NAME):
    """The Serve application for ``compiled_dir`` on the devices of ``groups``.

    ``replica_cpus`` is the CPU reservation of every replica (0: they share the machine, right
    for a local cluster); ``timeout_s`` the least time a batch may take before its device is
    failed over (``timeout_factor`` x the prediction if larger).
    """
    _, serve = require_ray()
    DeviceReplica, Ingress = _classes()
    if not sla_ms > 0:
        raise ValueError(f"--sla-ms must be positive, not {sla_ms!r}")
    opts = {"ray_actor_options": {"num_cpus": replica_cpus}, "health_check_period_s": 1.0,
            "health_check_timeout_s": 10.0}
    dev_cls = serve.deployment(DeviceReplica)
    devices = {}
    for g in groups:
        if g.is_cpu:
            name = device_deployment_name("cpu")
            if name in devices:
                raise ValueError("give the cpu fallback once in --devices (cpu:N or cpu:MIN-MAX)")
            scale = {"num_replicas": g.max_replicas} if g.min_replicas == g.max_replicas else {
                "autoscaling_config": {
                    "min_replicas": g.min_replicas, "initial_replicas": max(g.min_replicas, 1),
                    "max_replicas": g.max_replicas, "target_ongoing_requests": 1,
                    "upscale_delay_s": 2.0, "downscale_delay_s": 20.0,
                    "metrics_interval_s": 1.0, "look_back_period_s": 5.0}}
            d = dev_cls.options(name=name, max_ongoing_requests=CPU_SLOTS_PER_REPLICA + 2,
                                **scale, **opts)
            devices[name] = (d.bind(str(compiled_dir), "cpu", name,
                                    {"cpu_engine": cpu_engine, "float_weights": float_weights,
                                     "hang_s": hang_s}), "cpu", cpu_max_rows)
            continue
        for i in range(g.count):
            idx = g.indices[i] if g.indices else i
            name = device_deployment_name(g.kind, idx)
            d = dev_cls.options(name=name, num_replicas=1, max_ongoing_requests=4, **opts)
            extra = {"xclbin": xclbin, "device_index": idx} if g.kind == "xrt" else {}
            devices[name] = (d.bind(str(compiled_dir), g.kind, name, {**extra,
                                                                      "hang_s": hang_s}),
                             g.kind, max_rows)
    if not devices:
        raise ValueError("no devices to serve on")
    settings = {"sla_s": sla_ms / 1e3, "overload": overload, "timeout_s": timeout_s,
                "timeout_factor": timeout_factor, "app_name": app_name}
    ingress = serve.deployment(Ingress).options(
        name="ingress", num_replicas=1, max_ongoing_requests=100_000,
        ray_actor_options={"num_cpus": replica_cpus})
    return ingress.bind(str(compiled_dir), devices, settings)


def kill_replica(deployment: str, app_name: str = APP_NAME) -> str:
    """Kill the (first) replica actor of ``deployment`` with ``ray.kill``: a real process death.
    Returns the actor's name."""
    ray, _ = require_ray()
    from ray.util import list_named_actors  # noqa: PLC0415
    for a in list_named_actors(all_namespaces=True):
        name = a["name"] if isinstance(a, dict) else a
        ns = a.get("namespace", "serve") if isinstance(a, dict) else "serve"
        if name.startswith("SERVE_REPLICA::") and f"{app_name}#{deployment}#" in name:
            ray.kill(ray.get_actor(name, namespace=ns), no_restart=True)
            return name
    raise RuntimeError(f"no running replica of deployment {deployment!r} in {app_name!r}")
