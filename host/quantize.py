"""Quantizer: float weights -> fixed point, with power-of-two scales chosen by calibration.

Every tensor gets the finest power-of-two scale that covers the largest magnitude seen (weights:
over the weights; activations: over a calibration batch run through the float reference), see
:func:`recfabric.host.numerics.choose_frac`. Activation formats are shared where the hardware
needs one format: all embedding tables, the dense part and the pooled sums make up the
concatenated vector and share ``emb_fmt``. The final layer requantizes into the sigmoid's input
format. :func:`accuracy_report` measures what all this costs against the float model.
"""

from __future__ import annotations

import numpy as np

from . import numerics as nx
from .golden import QLayer, QuantizedModel, QuantizedTable, float_forward, golden_forward
from .numerics import FixedFormat, Rounding
from .synthetic import synthetic_batch
from .weights import ModelWeights

__all__ = ["quantize_model", "accuracy_report", "auc", "log_loss"]


def _max_abs(*arrays) -> float:
    m = 0.0
    for a in arrays:
        a = np.asarray(a)
        if a.size:
            m = max(m, float(np.max(np.abs(a))))
    return m


def _fmt(bits, max_abs) -> FixedFormat:
    return FixedFormat(bits, nx.choose_frac(max_abs, bits))


def _qlayer(layer, in_fmt, out_fmt, bits, acc_bits, relu) -> QLayer:
    w_fmt = _fmt(bits, _max_abs(layer.weight))
    acc_fmt = FixedFormat(acc_bits, in_fmt.frac + w_fmt.frac)
    q = QLayer(nx.quantize(layer.weight, w_fmt), nx.quantize(layer.bias, acc_fmt), in_fmt, w_fmt,
               out_fmt, relu)
    if not nx.accumulator_headroom_ok(q.w, q.b, in_fmt, acc_bits):
        raise ValueError(f"a {q.shape[0]}->{q.shape[1]} layer can overflow its {acc_bits}-bit "
                         "accumulator; use a wider accumulator")
    return q


def quantize_model(weights: ModelWeights, calib_dense, calib_sparse, bits: int = 16,
                   acc_bits: int | None = None,
                   rounding: Rounding = Rounding.HALF_UP) -> QuantizedModel:
    """Quantize ``weights`` to ``bits``-bit operands, calibrating on the given batch."""
    if bits not in (8, 16):
        raise ValueError(f"operand width must be 8 or 16 bits, not {bits}")
    acc_bits = nx.default_acc_bits(bits) if acc_bits is None else acc_bits
    spec = weights.spec
    taps = {}
    float_forward(weights, calib_dense, calib_sparse, taps=taps)
    emb_fmt = _fmt(bits, _max_abs(*(t.max_abs() for t in weights.tables), *taps["pooled"],
                                  taps["dense_vec"] if spec.interaction == "concat" else 0,
                                  taps["dense_vec"]))
    dense_fmt = _fmt(bits, _max_abs(calib_dense)) if spec.bottom_mlp else emb_fmt

    def chain(layers, outs, in_fmt, last_fmt, last_relu):
        q = []
        for i, (layer, out) in enumerate(zip(layers, outs)):
            last = i + 1 == len(layers)
            out_fmt = last_fmt if last and last_fmt is not None else _fmt(bits, _max_abs(out))
            q.append(_qlayer(layer, in_fmt, out_fmt, bits, acc_bits, relu=last_relu or not last))
            in_fmt = out_fmt
        return q, in_fmt

    bottom, _ = chain(weights.bottom, taps["bottom"], dense_fmt, emb_fmt, True)
    interaction_fmt = None
    top_in = emb_fmt
    if spec.interaction == "dot":
        interaction_fmt = _fmt(bits, _max_abs(taps["dense_vec"], taps["dots"]))
        top_in = interaction_fmt
    if spec.heads:
        top, trunk_fmt = chain(weights.top, taps["top"], top_in, None, True)
        heads = [chain(h, t, trunk_fmt, nx.SIGMOID_IN, False)[0]
                 for h, t in zip(weights.heads, taps["heads"])]
    else:
        top, _ = chain(weights.top, taps["top"], top_in, nx.SIGMOID_IN, False)
        heads = []
    tables = [QuantizedTable(t, emb_fmt) for t in weights.tables]
    return QuantizedModel(spec, bits, acc_bits, emb_fmt, dense_fmt, tables, bottom, top, heads,
                          interaction_fmt, rounding)


def auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores averaged)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels, probs, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64).ravel()
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy_report(weights: ModelWeights, bits: int = 16, batch: int = 4096,
                    calib_batch: int = 1024, seed: int = 0, progress=None) -> dict:
    """Fixed point vs float on synthetic Zipf-skewed inputs, labels drawn from the float model.

    Returns max/mean absolute score error, AUC of both, log-loss of both and their difference.
    """
    spec = weights.spec
    say = progress or (lambda msg: None)
    say(f"calibrating on {calib_batch} synthetic requests")
    cd, cs = synthetic_batch(spec, calib_batch, seed=seed + 1)
    qm = quantize_model(weights, cd, cs, bits=bits)
    say(f"evaluating {batch} synthetic requests (float reference and golden model)")
    dense, sparse = synthetic_batch(spec, batch, seed=seed + 2)
    p_float = float_forward(weights, dense, sparse).astype(np.float64)
    p_fixed = golden_forward(qm, qm.quantize_dense(dense), sparse).probabilities
    rng = np.random.default_rng(seed + 3)
    labels = rng.random(p_float.shape) < p_float
    err = np.abs(p_fixed - p_float)
    ll_f, ll_q = log_loss(labels, p_float), log_loss(labels, p_fixed)
    return {
        "model": spec.name, "bits": bits, "acc_bits": qm.acc_bits, "requests": batch,
        "outputs": spec.num_outputs,
        "emb_fmt": str(qm.emb_fmt),
        "max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
        "auc_float": auc(labels, p_float), "auc_fixed": auc(labels, p_fixed),
        "logloss_float": ll_f, "logloss_fixed": ll_q, "logloss_diff": ll_q - ll_f,
        "positive_rate": float(labels.mean()),
        "score_std": float(p_float.std()),
    }
