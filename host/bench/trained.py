"""Accuracy of the fixed-point model on trained weights and real(istic) data.

:func:`evaluate` compares the float reference with the integer golden model at int16 and int8
(per-table formats and one shared format) on held-out requests with labels: AUC and log-loss of
each, their differences to float, and percentile bootstrap intervals of everything (paired: the
same resampled requests for float and fixed point). Calibration uses the user's (training)
requests, never synthetic ones.

``recfabric accuracy --trained wnd|dlrm|all`` runs it on the trained benchmark models of
:mod:`recfabric.host.model.training`; ``recfabric accuracy MODEL --weights W.npz --data D.npz``
on the user's own weights and data (:mod:`recfabric.host.model.dataset`).
"""

from __future__ import annotations

import time

import numpy as np

from .. import numerics as nx
from ..model.dataset import Dataset
from ..reference.golden import float_forward, golden_forward
from ..reference.quantize import quantize_model

__all__ = ["fast_auc", "log_loss", "bootstrap", "evaluate", "accuracy_trained",
           "accuracy_user", "format_report", "VARIANTS"]

#: (bits, formats) of the fixed-point variants measured.
VARIANTS = ((16, "per-table"), (16, "shared"), (8, "per-table"), (8, "shared"))


def fast_auc(labels, scores) -> float:
    """Area under the ROC curve (ties averaged), vectorised: equal to
    :func:`recfabric.host.reference.quantize.auc`."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    uniq, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first member
    ranks = first + (counts + 1) / 2.0   # average 1-based rank of the tie group
    r = ranks[inv]
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels, probs, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64).ravel()
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _ll_terms(y, p, eps=1e-7):
    p = np.clip(np.asarray(p, np.float64).ravel(), eps, 1 - eps)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def bootstrap(labels, p_float, p_fixed, resamples: int = 200, seed: int = 0,
              level: float = 0.95) -> dict:
    """Paired percentile bootstrap over requests: intervals of AUC (float, fixed, difference)
    and log-loss difference. Returns ``{name: [low, high]}``."""
    y = np.asarray(labels).astype(np.float64).ravel()
    pf, pq = np.asarray(p_float).ravel(), np.asarray(p_fixed).ravel()
    lf, lq = _ll_terms(y, pf), _ll_terms(y, pq)
    rng = np.random.default_rng(seed)
    n = len(y)
    stats = {"auc_float": [], "auc_fixed": [], "auc_diff": [], "logloss_diff": []}
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        a_f, a_q = fast_auc(y[idx], pf[idx]), fast_auc(y[idx], pq[idx])
        stats["auc_float"].append(a_f)
        stats["auc_fixed"].append(a_q)
        stats["auc_diff"].append(a_q - a_f)
        stats["logloss_diff"].append(float(lq[idx].mean() - lf[idx].mean()))
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))]
            for k, v in stats.items()}


def _zero_fraction(qm) -> float:
    """Fraction of embedding values (over rows seen nowhere in particular: every row) that
    quantize to zero while their float value is not zero."""
    zero = total = 0
    for t in qm.tables:
        rows = np.arange(min(t.rows, 1 << 16))
        f = t.table.gather(rows)
        q = t.gather(rows)
        zero += int(((q == 0) & (f != 0)).sum())
        total += f.size
    return zero / max(total, 1)


def evaluate(weights, calib: Dataset, test: Dataset, *, variants=VARIANTS,
             resamples: int = 200, seed: int = 0, progress=None) -> dict:
    """Float vs fixed point on ``test`` (labels needed), calibrated on ``calib``."""
    say = progress or (lambda msg: None)
    if test.labels is None:
        raise ValueError("the evaluation data has no labels: AUC and log-loss need them")
    y = test.labels
    say(f"float reference on {len(test):,} held-out requests")
    p_float = float_forward(weights, test.dense, test.sparse)[:, 0].astype(np.float64)
    out = {"model": weights.spec.name, "requests": len(test), "calibration_requests": len(calib),
           "positive_rate": float(y.mean()), "auc_float": fast_auc(y, p_float),
           "logloss_float": log_loss(y, p_float), "resamples": resamples, "variants": []}
    for bits, formats in variants:
        say(f"int{bits} ({formats} formats): quantizing and running the golden model")
        qm = quantize_model(weights, calib.dense, calib.sparse, bits=bits, formats=formats)
        g = golden_forward(qm, qm.quantize_dense(test.dense), test.sparse)
        p_q = g.probabilities[:, 0]
        # Requests with a pooled value at its format's limit (saturated, or exactly there).
        lim = (1 << (bits - 1)) - 1
        pooled_sat = int(np.any([np.any((p >= lim) | (p <= -lim - 1), axis=1)
                                 for p in g.pooled], axis=0).sum()) if g.pooled else 0
        err = np.abs(p_q - p_float)
        dense_sat = float(np.mean(np.abs(test.dense) > qm.dense_fmt.max_value))
        ci = bootstrap(y, p_float, p_q, resamples=resamples, seed=seed)
        a_q = fast_auc(y, p_q)
        out["variants"].append({
            "bits": bits, "formats": formats, "auc_fixed": a_q,
            "auc_diff": a_q - out["auc_float"], "logloss_fixed": log_loss(y, p_q),
            "logloss_diff": log_loss(y, p_q) - out["logloss_float"],
            "max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
            "embedding_zero_fraction": _zero_fraction(qm),
            "dense_saturated_fraction": dense_sat,
            "pooled_saturated_requests": pooled_sat,
            "table_formats": sorted({str(t.fmt) for t in qm.tables}),
            "ci": ci})
    return out


def accuracy_trained(name: str, *, resamples: int = 200, calib_requests: int = 4096,
                     retrain: bool = False, progress=None, variants=VARIANTS) -> dict:
    """:func:`evaluate` on a trained benchmark model (calibrated on its first
    ``calib_requests`` training requests)."""
    from ..model.training import trained_model
    t0 = time.perf_counter()
    tm = trained_model(name, retrain=retrain, progress=progress)
    r = evaluate(tm.weights, tm.train.take(slice(0, calib_requests)), tm.test,
                 resamples=resamples, progress=progress, variants=variants)
    r["trained"] = name
    r["cache"] = str(tm.directory)
    r["train_seconds"] = tm.info.get("train_seconds")
    r["seconds"] = round(time.perf_counter() - t0, 2)
    return r


def accuracy_user(spec, weights_path, data_path, *, calib_requests: int = 4096,
                  resamples: int = 200, progress=None, variants=VARIANTS) -> dict:
    """:func:`evaluate` on the user's weights (``ModelWeights.save`` .npz) and data (``D.npz``):
    calibration on the first ``calib_requests`` requests, evaluation on the rest (on all of them
    when there are no more than ``calib_requests``; the report says which)."""
    from ..model.dataset import load_dataset
    from ..model.weights import ModelWeights
    weights = ModelWeights.load(weights_path)
    if weights.spec != spec:
        raise ValueError(f"weights file {str(weights_path)!r} is for model "
                         f"{weights.spec.name!r}, not {spec.name!r}")
    data = load_dataset(data_path, spec, need_labels=True)
    n = len(data)
    if n > calib_requests:
        calib, test, split = data.take(slice(0, calib_requests)), data.take(
            slice(calib_requests, n)), "disjoint"
    else:
        calib, test, split = data, data, "same requests"
    r = evaluate(weights, calib, test, resamples=resamples, progress=progress, variants=variants)
    r["calibration"] = f"first {len(calib):,} requests of {data_path} ({split})"
    return r


def format_report(r: dict) -> str:
    """Human-readable lines of an :func:`evaluate` report."""
    lines = [f"{r['model']}: {r['requests']:,} held-out requests (positive rate "
             f"{r['positive_rate']:.3f}), calibration on {r['calibration_requests']:,} "
             f"requests; 95% intervals from {r['resamples']} paired bootstrap resamples",
             f"  float      AUC {r['auc_float']:.5f}  log-loss {r['logloss_float']:.5f}"]
    for v in r["variants"]:
        ci = v["ci"]
        lines.append(
            f"  int{v['bits']:<2} {v['formats']:<9} AUC {v['auc_fixed']:.5f} "
            f"(diff {v['auc_diff']:+.5f}, CI {ci['auc_diff'][0]:+.5f}..{ci['auc_diff'][1]:+.5f})"
            f"  log-loss diff {v['logloss_diff']:+.2e}  max|err| {v['max_abs_error']:.4f}  "
            f"emb->0 {100 * v['embedding_zero_fraction']:.1f}%  pooled saturated in "
            f"{v['pooled_saturated_requests']} requests")
    return "\n".join(lines)


assert nx.SCORE_FRAC == 16  # probabilities below are golden scores / 2**16
