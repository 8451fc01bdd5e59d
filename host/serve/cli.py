"""``recfabric serve``, ``recfabric loadtest`` and ``recfabric fleet`` (registered by the main
command line through :func:`register`)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

__all__ = ["register", "local_cluster", "deploy"]


def _say(msg: str):
    print(f"[recfabric] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def local_cluster(address=None, *, http_port=None, namespace=None):
    """Start (or join, with ``address``) a Ray cluster and Serve; shut both down on exit."""
    from .app import require_ray
    ray, serve = require_ray()
    # Ray's processes print status lines to fd 1; keep stdout for our own (JSON) output
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    ray.init(address=address, namespace=namespace or f"recfabric-{uuid.uuid4().hex[:8]}",
             include_dashboard=False, log_to_driver=False, ignore_reinit_error=False,
             **({} if address else {"num_cpus": max(os.cpu_count() or 1, 4)}))
    try:
        http = {"location": "NoServer"} if http_port is None else \
            {"host": "127.0.0.1", "port": http_port}
        serve.start(http_options=http)
        yield ray, serve
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def deploy(compiled_dir, devices: str, *, sla_ms, app_name=None, route_prefix=None, **kw):
    """Build and run the application; returns the ingress handle."""
    from .app import APP_NAME, build_app, require_ray
    from .devices import parse_devices
    _, serve = require_ray()
    name = app_name or APP_NAME
    app = build_app(compiled_dir, parse_devices(devices), sla_ms=sla_ms, app_name=name, **kw)
    return serve.run(app, name=name, route_prefix=route_prefix)


def _app_kwargs(args) -> dict:
    return {"cpu_engine": args.cpu_engine, "float_weights": args.float_weights,
            "xclbin": getattr(args, "xclbin", None), "max_rows": args.max_batch,
            "overload": args.overload, "timeout_s": args.timeout}


def _cmd_serve(args):
    from .app import APP_NAME, ROUTE
    from .devices import parse_devices
    parse_devices(args.devices)  # fail fast on a bad specification
    with local_cluster(args.address, http_port=args.port) as (_, serve):
        t0 = time.perf_counter()
        deploy(args.compiled_dir, args.devices, sla_ms=args.sla_ms, route_prefix=ROUTE,
               **_app_kwargs(args))
        _say(f"serving {args.compiled_dir} on {args.devices} (SLA {args.sla_ms:g} ms) at "
             f"http://127.0.0.1:{args.port}{ROUTE} and as Serve application {APP_NAME!r} "
             f"(deployed in {time.perf_counter() - t0:.1f} s); Ctrl-C stops")
        if args.detach:
            return 0
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            _say("stopping")
    return 0


def _requests(spec, n, seed):
    from ..model.synthetic import synthetic_batch
    from .devices import make_payload
    dense, sparse = synthetic_batch(spec, n, seed=seed)
    whole = make_payload(dense, sparse)
    payloads = [{"dense": whole["dense"][i:i + 1], "ids": [x[i:i + 1] for x in whole["ids"]],
                 "lengths": [x[i:i + 1] for x in whole["lengths"]]} for i in range(n)]
    return dense, sparse, payloads


def _cmd_loadtest(args):
    from ...hw.config import get_preset
    from ..compiler.compiled import golden_from_images, load_compiled
    from ..compiler.steps import compile_model
    from ..model.weights import random_weights
    from ..model.zoo import get_model
    from .app import device_deployment_name, kill_replica
    from .devices import parse_devices
    from .loadtest import dumps, run_loadtest

    if args.requests < 1:
        raise ValueError(f"--requests must be at least 1, not {args.requests}")
    if args.devices:
        devices = args.devices
    else:
        if args.replicas < 2:
            raise ValueError(f"--replicas must be at least 2 (accelerators and CPU "
                             f"fallbacks), not {args.replicas}")
        acc = args.replicas // 2
        devices = f"timed:{acc},cpu:{args.replicas - acc}"
    groups = parse_devices(devices)
    quiet = args.json
    say = (lambda m: None) if quiet else _say
    with tempfile.TemporaryDirectory(prefix="recfabric-loadtest-") as tmp:
        if args.compiled_dir:
            compiled, float_w = args.compiled_dir, args.float_weights
        else:
            if not args.local:
                raise ValueError("give COMPILED_DIR, or --local to compile --model here")
            spec = get_model(args.model)
            weights = random_weights(spec, seed=args.seed)
            say(f"compiling {spec.name} for {args.config}")
            compile_model(spec, weights, get_preset(args.config), tmp, seed=args.seed)
            float_w = str(Path(tmp) / "float-weights.npz")
            weights.save(float_w)
            compiled = tmp
        cm = load_compiled(compiled)
        dense, sparse, payloads = _requests(cm.spec, args.requests, args.seed + 7)
        g = golden_from_images(cm, cm.quantized_model().quantize_dense(dense), sparse)
        kill = None
        if args.kill_one:
            victim = next((g_ for g_ in groups if not g_.is_cpu), None)
            if victim is None:
                raise ValueError("--kill-one needs an accelerator replica in --devices")
            dep = device_deployment_name(victim.kind,
                                         victim.indices[0] if victim.indices else 0)

            def kill():
                return kill_replica(dep)
        t0 = time.perf_counter()
        with local_cluster(args.address) as _:
            say(f"Ray up in {time.perf_counter() - t0:.1f} s; deploying {devices}")
            kw = _app_kwargs(args)
            kw["float_weights"] = args.float_weights or float_w
            handle = deploy(compiled, devices, sla_ms=args.sla_ms, **kw)
            handle.stats.remote().result()  # start-up (calibration) before the clock runs
            say(f"deployed in {time.perf_counter() - t0:.1f} s; sending {args.requests} "
                f"requests at {args.rate:g}/s ({args.profile})")
            report = run_loadtest(handle, payloads, g.scores, g.probabilities, rate=args.rate,
                                  sla_ms=args.sla_ms, profile=args.profile, seed=args.seed,
                                  kill=kill, plot=args.plot or None,
                                  title=f"{cm.spec.name}: {devices}, {args.rate:g}/s "
                                        f"{args.profile}, SLA {args.sla_ms:g} ms")
            stats = handle.stats.remote().result()
    report.update(model=cm.spec.name, devices=devices, failovers=stats["failovers"],
                  scheduler=stats["devices"],
                  restarts={k: v["restarts"] for k, v in stats["devices"].items()},
                  setup_s=round(time.perf_counter() - t0 - report["duration_s"], 1))
    if args.json:
        print(dumps(report))
    else:
        print(f"{report['requests']} requests: answered {report['answered']} "
              f"(overloaded {report['overloaded']}), errors {report['errors']}, lost "
              f"{report['lost']}, mismatches {report['mismatches']}; p50 {report['p50_ms']} ms "
              f"p99 {report['p99_ms']} ms p99.9 {report['p99_9_ms']} ms; SLA misses "
              f"{report['sla_misses']}; throughput {report['throughput']}/s; failovers "
              f"{report['failovers']}; restarts {report['restarts']}")
        if report.get("plot"):
            print(f"plot: {report['plot']}")
    ok = report["lost"] == 0 and report["mismatches"] == 0 and report["errors"] == 0
    return 0 if ok else 1


def _cmd_fleet(args):
    from ..cli.support import progress_for
    from .fleet import format_table, sweep
    rows = sweep(cards=[int(c) for c in args.cards.split(",")],
                 loads=[float(x) for x in args.loads.split(",")],
                 cards_per_host=args.cards_per_host, model=args.model, config=args.config,
                 study=args.study, sla_ms=args.sla_ms, queries=args.queries, items=args.items,
                 seed=args.seed, progress=progress_for(args))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows))
    if args.plot:
        from .fleet import plot_sweep
        plot_sweep(rows, args.plot)
        if not args.json:
            print(f"plot: {args.plot}")
    return 0


def _common(s):
    from .devices import CPU_ENGINES
    s.add_argument("--cpu-engine", choices=CPU_ENGINES, default="golden",
                   help="CPU fallback: golden (bit-exact quantized model, default), torch or "
                        "onnx (the float model; needs --float-weights)")
    s.add_argument("--float-weights", help="float weights .npz (ModelWeights.save) for the "
                                           "torch/onnx fallback")
    s.add_argument("--max-batch", type=int, default=256, help="largest accelerator batch")
    s.add_argument("--overload", choices=("reject", "queue"), default="reject",
                   help="a request no device can serve within the SLA: answer overloaded "
                        "(default) or queue it late")
    s.add_argument("--timeout", type=float, default=2.0,
                   help="seconds before a batch's device is failed over (or 20x its "
                        "prediction if larger); raise it for the sim back-end")
    s.add_argument("--address", help="join this Ray cluster (default: start a local one)")


def register(sub) -> None:
    s = sub.add_parser("serve", help="serve a compiled model on Ray Serve (HTTP and handles)")
    s.add_argument("compiled_dir", help="directory written by `recfabric compile`")
    s.add_argument("--devices", default="timed:2,cpu:1-4",
                   help="device replicas, e.g. 'xrt:0+1,cpu:1-8' or 'timed:2,cpu:2' "
                        "(kinds: timed, reference, sim, verilator, xrt, cpu)")
    s.add_argument("--sla-ms", type=float, required=True, help="latency bound per request")
    s.add_argument("--xclbin", help="the kernel's xclbin (xrt devices)")
    s.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    s.add_argument("--detach", action="store_true",
                   help="leave the application running in the cluster (with --address)")
    _common(s)
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("loadtest", help="open-loop Poisson load test of the serving layer")
    s.add_argument("compiled_dir", nargs="?", help="compiled model (or --local --model M)")
    s.add_argument("--local", action="store_true", help="compile --model and start a local "
                                                       "Ray cluster for the test")
    s.add_argument("--model", default="small", help="zoo model for --local (default small)")
    s.add_argument("--config", default="small", help="accelerator preset (default small)")
    s.add_argument("--replicas", type=int, default=4,
                   help="half timed accelerators, half CPU fallbacks (default 4)")
    s.add_argument("--devices", help="explicit device specification instead of --replicas")
    s.add_argument("--requests", type=int, default=20000)
    s.add_argument("--rate", type=float, default=100.0, help="requests per second")
    s.add_argument("--profile", choices=("poisson", "step"), default="poisson")
    s.add_argument("--sla-ms", type=float, default=100.0)
    s.add_argument("--kill-one", action="store_true",
                   help="kill one accelerator replica halfway (ray.kill)")
    s.add_argument("--plot", default="loadtest.png", help="latency-over-time PNG ('' = none)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    _common(s)
    s.set_defaults(func=_cmd_loadtest)

    s = sub.add_parser("fleet", help="discrete-event fleet simulation (same scheduler code)")
    s.add_argument("--cards", default="8,64,256,1024", help="fleet sizes (cards)")
    s.add_argument("--cards-per-host", type=int, default=8)
    s.add_argument("--loads", default="0.3,0.6,0.8,0.9", help="offered load / capacity")
    s.add_argument("--model", default="small", help="zoo model (default small)")
    s.add_argument("--config", default="u280", help="accelerator preset (default u280)")
    s.add_argument("--study", action="store_true",
                   help="plan the tables for a kernel that splits them by row range (as "
                        "'recfabric plan --study'), for models the real kernel cannot hold")
    s.add_argument("--sla-ms", type=float, default=10.0)
    s.add_argument("--queries", type=int, default=50000, help="queries per point")
    s.add_argument("--items", type=int, default=64, help="mean candidates per query")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--plot", help="PNG of throughput scaling and p99 vs load")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_fleet)
