"""Structured pruning of MLP neurons: fewer MLP cycles per inference for a measured AUC cost.

Removing neuron ``j`` of a hidden top-MLP layer deletes row ``j`` of that layer and column ``j``
of the next; the MLP engines' work per inference is ``ceil(K / cols) * ceil(N / rows)`` per layer
(:mod:`recfabric.host.compiler.cycle_model`), so thinner layers are directly fewer cycles. Every
hidden top layer keeps the same fraction of its neurons (``--keep``), or the largest fraction whose
modelled cycles per inference meet ``--target-cycles``.

Which neurons go (``method``):

``magnitude``
    The smallest ``||w_in_j|| * ||w_out_j||`` (incoming row norm times outgoing column norm).
``activation``
    The smallest ``std(a_j) * ||w_out_j||`` over the data (what removing the neuron changes in
    the next layer once its mean is folded into the next layer's bias).

With data, the removed neurons' mean activations are folded into the next layer's biases (exact
for a neuron that is constant on the data). Optionally the pruned model is fine-tuned with
PyTorch (:func:`recfabric.host.model.training.train`). Cycles are *modelled* (the cycle model on
the configuration's MLP engines); ``simulate=True`` also runs the quantized top MLP through the
cycle-accurate simulation of the configuration's MLP pipeline (*simulated* cycles per inference,
outputs checked ``==`` the golden model).

``recfabric prune --trained wnd --keep 0.5`` or ``recfabric prune MODEL --weights W --data D.npz
(--target-cycles N | --keep F)``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

import numpy as np

from ..compiler.cycle_model import MLPCycleModel
from ..model.dataset import Dataset
from ..model.weights import Layer, ModelWeights
from ..reference.golden import float_forward

__all__ = ["METHODS", "neuron_scores", "prune_weights", "pruned_widths", "mlp_cycles",
           "keep_for_cycles", "simulate_cycles", "prune_report", "register"]

METHODS = ("magnitude", "activation")


def pruned_widths(spec, keep: float) -> tuple:
    """Top MLP widths after keeping ``keep`` of every hidden layer's neurons (at least one)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be a fraction in (0, 1], not {keep}")
    widths = list(spec.top_mlp)
    hidden = len(widths) if spec.heads else len(widths) - 1
    return tuple(max(1, round(keep * w)) if i < hidden else w for i, w in enumerate(widths))


def mlp_cycles(spec, config, top=None) -> MLPCycleModel:
    """Cycle model of the top MLP of ``spec`` (or with widths ``top``) on ``config``'s engines."""
    top = spec.top_mlp if top is None else top
    return MLPCycleModel.for_config(config, (spec.interaction_width, *top))


def keep_for_cycles(spec, config, target: float, step: float = 0.005) -> float:
    """The largest keep fraction (in ``step`` steps) whose modelled cycles per inference are at
    most ``target``; ``ValueError`` naming the best reachable figure if none is."""
    keep = 1.0
    best = None
    while keep > 0:
        ii = mlp_cycles(spec, config, pruned_widths(spec, keep)).ii
        best = ii if best is None else min(best, ii)
        if ii <= target:
            return round(keep, 6)
        keep -= step
    raise ValueError(f"--target-cycles {target:g} is out of reach on {config.name!r}: pruning "
                     f"hidden layers to one neuron still takes {best:g} cycles per inference "
                     "(the input writer and first layer's fan-in remain)")


def neuron_scores(weights: ModelWeights, method: str, taps=None) -> list:
    """Per hidden top layer, one importance score per neuron (higher: keep)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    top = weights.top
    out = []
    for l in range(len(top) - 1):
        w_out = np.linalg.norm(top[l + 1].weight, axis=0)
        if method == "magnitude":
            out.append(np.linalg.norm(top[l].weight, axis=1) * w_out)
        else:
            if taps is None:
                raise ValueError("activation-based pruning needs data")
            out.append(taps["top"][l].std(axis=0) * w_out)
    return out


def prune_weights(weights: ModelWeights, keep: float, method: str = "activation",
                  data: Dataset | None = None) -> ModelWeights:
    """A copy of ``weights`` with ``keep`` of every hidden top layer's neurons (highest scores);
    with ``data``, removed neurons' mean activations are folded into the next layer's biases."""
    spec = weights.spec
    if spec.heads:
        raise ValueError("pruning multi-task models is not supported (heads share the trunk)")
    taps = None
    if data is not None:
        taps = {}
        float_forward(weights, data.dense, data.sparse, taps=taps)
    scores = neuron_scores(weights, method, taps)
    widths = pruned_widths(spec, keep)
    layers = [Layer(l.weight.copy(), l.bias.copy()) for l in weights.top]
    for l, (s, n) in enumerate(zip(scores, widths)):
        kept = np.sort(np.argsort(-s, kind="stable")[:n])
        gone = np.setdiff1d(np.arange(len(s)), kept)
        nxt = layers[l + 1]
        bias = nxt.bias.astype(np.float64)
        if taps is not None and gone.size:
            mean = taps["top"][l].mean(axis=0)[gone].astype(np.float64)
            bias = bias + nxt.weight[:, gone].astype(np.float64) @ mean
        layers[l] = Layer(layers[l].weight[kept], layers[l].bias[kept])
        layers[l + 1] = Layer(nxt.weight[:, kept], bias.astype(np.float32))
    new_spec = replace(spec, name=f"{spec.name}-pruned", top_mlp=widths)
    return ModelWeights(new_spec, weights.tables, weights.bottom, layers, [])


def simulate_cycles(qm, config, x, batch: int = 12) -> dict:
    """Run ``batch`` top-MLP input vectors ``x`` (integers) of quantized model ``qm`` through
    the cycle-accurate simulation of ``config``'s MLP pipeline: steady-state cycles per
    inference (spacing of the last half of the outputs) and whether scores equal the golden."""
    from recfabric.hw.mlp import MLPPipeline

    from .mlp import golden_mlp, simulate_mlp
    pipe = MLPPipeline(**MLPPipeline.config_kwargs(config, "top"))
    x = np.asarray(x[:batch], dtype=np.int64)
    res = simulate_mlp(pipe, qm.top, x, rounding=qm.rounding)
    want = golden_mlp(qm.top, x, qm.acc_bits, qm.rounding)
    ends = res["out_last"]
    k = len(ends) // 2
    per = (ends[-1] - ends[k]) / (len(ends) - 1 - k) if len(ends) - 1 > k else float("nan")
    return {"cycles_per_inference": per, "requests": len(x),
            "match": bool(np.array_equal(res["out"], want))}


def _auc_pair(weights, calib, test, bits=16):
    from ..reference.golden import golden_forward
    from ..reference.quantize import quantize_model
    from .trained import fast_auc
    p = float_forward(weights, test.dense, test.sparse)[:, 0]
    qm = quantize_model(weights, calib.dense, calib.sparse, bits=bits)
    g = golden_forward(qm, qm.quantize_dense(test.dense), test.sparse)
    return fast_auc(test.labels, p), fast_auc(test.labels, g.probabilities[:, 0]), qm, g


def prune_report(weights: ModelWeights, train: Dataset, test: Dataset, config, *,
                 keep: float | None = None, target_cycles: float | None = None,
                 method: str = "activation", finetune_epochs: int = 0, lr: float = 5e-4,
                 simulate: bool = False, stats_requests: int = 8192, progress=None):
    """Prune, optionally fine-tune, and report modelled (and simulated) cycles against AUC.

    Returns ``(report dict, pruned ModelWeights)``.
    """
    say = progress or (lambda msg: None)
    spec = weights.spec
    if (keep is None) == (target_cycles is None):
        raise ValueError("give exactly one of keep and target_cycles")
    if test.labels is None or train.labels is None and finetune_epochs:
        raise ValueError("pruning reports AUC: the data needs labels")
    if target_cycles is not None:
        keep = keep_for_cycles(spec, config, target_cycles)
    stats = train.take(slice(0, stats_requests))
    t0 = time.perf_counter()
    pruned = prune_weights(weights, keep, method, stats)
    say(f"kept {keep:g} of the hidden neurons ({method}): top MLP "
        f"{'-'.join(map(str, (spec.interaction_width, *spec.top_mlp)))} -> "
        f"{'-'.join(map(str, (spec.interaction_width, *pruned.spec.top_mlp)))}")
    if finetune_epochs:
        from ..model.torch_io import from_torch, to_torch
        from ..model.training import train as train_model
        say(f"fine-tuning {finetune_epochs} epoch(s) with PyTorch (Adam lr {lr})")
        model = train_model(pruned.spec, train, model=to_torch(pruned), epochs=finetune_epochs,
                            lr=lr, seed=1, progress=say)
        pruned = from_torch(model, pruned.spec)
    seconds = time.perf_counter() - t0
    control = None
    if finetune_epochs:
        # Fine-tuning is extra training: the fair baseline is the unpruned model trained the
        # same extra epochs, so the report gives the change against it too.
        say(f"control: the unpruned model trained the same {finetune_epochs} epoch(s)")
        model = train_model(spec, train, model=to_torch(weights), epochs=finetune_epochs,
                            lr=lr, seed=1, progress=say)
        control = from_torch(model, spec)
    calib = train.take(slice(0, 4096))
    say("evaluating original and pruned models (float and int16 golden)")
    a_f, a_q, qm0, g0 = _auc_pair(weights, calib, test)
    b_f, b_q, qm1, g1 = _auc_pair(pruned, calib, test)
    c0, c1 = mlp_cycles(spec, config), mlp_cycles(pruned.spec, config)
    report = {
        "model": spec.name, "config": config.name, "method": method, "keep": keep,
        "finetune_epochs": finetune_epochs, "prune_seconds": round(seconds, 2),
        "top_mlp": list(spec.top_mlp), "top_mlp_pruned": list(pruned.spec.top_mlp),
        "macs": spec.macs_per_inference(), "macs_pruned": pruned.spec.macs_per_inference(),
        "cycles_modelled": c0.ii, "cycles_modelled_pruned": c1.ii,
        "cycles_ratio_modelled": c0.ii / c1.ii,
        "latency_modelled": c0.latency, "latency_modelled_pruned": c1.latency,
        "requests": len(test),
        "auc_float": a_f, "auc_float_pruned": b_f, "auc_float_change": b_f - a_f,
        "auc_int16": a_q, "auc_int16_pruned": b_q, "auc_int16_change": b_q - a_q,
        "cycles_note": "modelled: host/mlp_cycle_model.py steady-state initiation interval of "
                       f"the top MLP on {config.name}'s engines {list(config.mlp_top_shapes)}",
    }
    if control is not None:
        c_f, c_q, _, _ = _auc_pair(control, calib, test)
        report.update({"auc_float_control": c_f, "auc_int16_control": c_q,
                       "auc_float_change_vs_control": b_f - c_f,
                       "auc_int16_change_vs_control": b_q - c_q})
    if target_cycles is not None:
        report["target_cycles"] = target_cycles
    if simulate:
        fits = (spec.interaction_width <= config.max_concat
                and max(spec.top_mlp) <= config.max_width
                and len(spec.top_mlp) <= len(config.mlp_top_shapes)
                and spec.interaction == "concat")
        if not fits or qm0.bits != config.data_bits:
            report["simulated"] = (f"not simulated: the model's top MLP does not fit "
                                   f"{config.name!r}'s engines or widths")
        else:
            say("simulating both top MLPs on the configuration's MLP pipeline")
            report["simulated"] = {"original": simulate_cycles(qm0, config, g0.features),
                                   "pruned": simulate_cycles(qm1, config, g1.features)}
    return report, pruned


# ---- command line ---------------------------------------------------------------------------

def _say(msg):
    print(f"[recfabric] {msg}", file=sys.stderr, flush=True)


def _cmd_prune(args):
    from recfabric.hw.config import get_preset

    from ..model.zoo import get_model
    # status lines on stderr; with --json only when stderr is a terminal (the CLI's rule,
    # cli.support.progress_for, which this layer does not import)
    say = _say if not args.json or sys.stderr.isatty() else None
    config = get_preset(args.config)
    if args.trained:
        if args.model or args.weights or args.data:
            raise ValueError("--trained takes no MODEL, --weights or --data")
        from ..model.training import trained_model
        tm = trained_model(args.trained, progress=say)
        weights, train, test = tm.weights, tm.train, tm.test
    else:
        if not (args.model and args.weights and args.data):
            raise ValueError("prune needs MODEL --weights W.npz --data D.npz (or --trained NAME)")
        from ..model.dataset import load_dataset
        spec = get_model(args.model)
        weights = ModelWeights.load(args.weights)
        if weights.spec != spec:
            raise ValueError(f"weights file {args.weights!r} is for model "
                             f"{weights.spec.name!r}, not {spec.name!r}")
        data = load_dataset(args.data, spec, need_labels=True)
        cut = int(len(data) * 0.8)
        if cut < 1 or cut >= len(data):
            raise ValueError(f"{args.data}: {len(data)} requests are too few to split into "
                             "fine-tuning and evaluation parts")
        train, test = data.take(slice(0, cut)), data.take(slice(cut, len(data)))
    report, pruned = prune_report(weights, train, test, config, keep=args.keep,
                                  target_cycles=args.target_cycles, method=args.method,
                                  finetune_epochs=args.finetune, simulate=args.simulate,
                                  progress=say)
    if args.output:
        pruned.save(args.output)
        pruned.spec.save(args.output.removesuffix(".npz") + ".json")
        report["output"] = args.output
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    r = report
    print(f"{r['model']} on {r['config']}: top MLP {r['top_mlp']} -> {r['top_mlp_pruned']} "
          f"({r['method']}, keep {r['keep']:g}, fine-tune {r['finetune_epochs']} epochs)")
    print(f"  cycles/inference (modelled): {r['cycles_modelled']:g} -> "
          f"{r['cycles_modelled_pruned']:g} ({r['cycles_ratio_modelled']:.2f}x fewer); MACs "
          f"{r['macs']:,} -> {r['macs_pruned']:,}")
    if isinstance(r.get("simulated"), dict):
        s = r["simulated"]
        print(f"  cycles/inference (simulated MLP pipeline): "
              f"{s['original']['cycles_per_inference']:g} -> "
              f"{s['pruned']['cycles_per_inference']:g}; outputs == golden: "
              f"{s['original']['match'] and s['pruned']['match']}")
    elif "simulated" in r:
        print(f"  {r['simulated']}")
    print(f"  AUC float {r['auc_float']:.5f} -> {r['auc_float_pruned']:.5f} "
          f"({r['auc_float_change']:+.5f}); int16 {r['auc_int16']:.5f} -> "
          f"{r['auc_int16_pruned']:.5f} ({r['auc_int16_change']:+.5f}) on {r['requests']:,} "
          "held-out requests")
    if "auc_float_control" in r:
        print(f"  control (unpruned, same fine-tuning): AUC float {r['auc_float_control']:.5f}, "
              f"int16 {r['auc_int16_control']:.5f}; pruned vs control: float "
              f"{r['auc_float_change_vs_control']:+.5f}, int16 "
              f"{r['auc_int16_change_vs_control']:+.5f}")
    if args.output:
        print(f"  wrote {args.output} (and its spec .json)")
    return 0


def register(subparsers):
    """Add ``recfabric prune``."""
    s = subparsers.add_parser("prune", help="remove MLP neurons: cycles/inference against AUC")
    s.add_argument("model", nargs="?", help="zoo name or .json spec file")
    s.add_argument("--weights", help="float weights (.npz of ModelWeights.save)")
    s.add_argument("--data", help="labelled requests (D.npz): first 80%% fine-tuning and "
                                  "activation statistics, last 20%% evaluation")
    s.add_argument("--trained", choices=("wnd", "dlrm"), help="a trained benchmark model")
    how = s.add_mutually_exclusive_group(required=True)
    how.add_argument("--keep", type=float, help="fraction of every hidden layer's neurons kept")
    how.add_argument("--target-cycles", type=float,
                     help="modelled cycles per inference to reach (largest keep that does)")
    s.add_argument("--method", choices=METHODS, default="activation")
    s.add_argument("--finetune", type=int, default=0, metavar="EPOCHS",
                   help="fine-tune the pruned model with PyTorch (default 0: no)")
    s.add_argument("--config", default="small", help="accelerator preset for the cycles")
    s.add_argument("--simulate", action="store_true",
                   help="also simulate both top MLPs on the preset's MLP pipeline")
    s.add_argument("-o", "--output", help="write the pruned weights (.npz) and spec (.json)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_prune)



