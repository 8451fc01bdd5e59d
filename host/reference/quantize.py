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

from .. import numerics as nx
from ..model.spec import Bags, ModelSpec, SpecError, check_sparse
from ..model.synthetic import synthetic_batch
from ..model.weights import ModelWeights
from ..numerics import FixedFormat, Rounding
from .golden import (
    QLayer,
    QuantizedModel,
    QuantizedTable,
    float_forward,
    golden_forward,
    interaction,
)

__all__ = ["quantize_model", "accuracy_report", "auc", "log_loss", "saturation_counts",
           "load_calibration", "save_calibration"]


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


# ---- calibration data and saturation ------------------------------------------------------

def save_calibration(path, spec: ModelSpec, dense, sparse) -> None:
    """Write a calibration batch as ``.npz`` (format: ``docs/compiler.md``, "Calibration data").

    Keys: ``dense`` (float, ``(n, spec.dense)``); per sparse feature ``ids:<name>`` (int,
    ``(n, bag)``) and ``lengths:<name>`` (int, ``(n,)``).
    """
    batch = sparse[0].batch if sparse else np.asarray(dense).shape[0]
    check_sparse(spec, sparse, batch)
    arrays = {"dense": np.asarray(dense, dtype=np.float32).reshape(batch, spec.dense)}
    for f, b in zip(spec.sparse, sparse):
        arrays[f"ids:{f.name}"] = np.asarray(b.ids, dtype=np.int64)
        arrays[f"lengths:{f.name}"] = np.asarray(b.lengths, dtype=np.int64)
    np.savez(path, **arrays)


def load_calibration(path, spec: ModelSpec):
    """Read a calibration ``.npz`` for ``spec``: ``(dense float32, [Bags per feature])``.

    ``lengths:<name>`` may be left out for one-hot features (every length is 1). Errors name the
    file and the missing or malformed key.
    """
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SpecError(f"calibration file {str(path)!r} is not a readable .npz: {e}") from None
    with data:
        keys = set(data.files)
        if "dense" not in keys:
            raise SpecError(f"calibration file {str(path)!r} has no 'dense' array")
        dense = np.asarray(data["dense"], dtype=np.float32)
        if dense.ndim != 2 or dense.shape[1] != spec.dense:
            raise SpecError(f"calibration file {str(path)!r}: 'dense' has shape {dense.shape}, "
                            f"model {spec.name!r} needs (n, {spec.dense})")
        sparse = []
        for f in spec.sparse:
            ids_key, len_key = f"ids:{f.name}", f"lengths:{f.name}"
            if ids_key not in keys:
                raise SpecError(f"calibration file {str(path)!r} has no {ids_key!r} array")
            ids = np.asarray(data[ids_key])
            if ids.ndim == 1:
                ids = ids[:, None]
            if len_key in keys:
                lengths = np.asarray(data[len_key])
            elif f.bag == 1:
                lengths = np.ones(len(ids), dtype=np.int64)
            else:
                raise SpecError(f"calibration file {str(path)!r} has no {len_key!r} array "
                                f"(feature {f.name!r} is multi-hot)")
            sparse.append(Bags(ids, lengths))
        extra = sorted(keys - {"dense"} - {f"{k}:{f.name}" for f in spec.sparse
                                           for k in ("ids", "lengths")})
        if extra:
            raise SpecError(f"calibration file {str(path)!r} has arrays the model "
                            f"{spec.name!r} does not know: {', '.join(extra)}")
    if not len(dense):
        raise SpecError(f"calibration file {str(path)!r} holds no requests")
    check_sparse(spec, sparse, len(dense))
    return dense, sparse


def _outside(values, fmt: FixedFormat) -> int:
    v = np.asarray(values)
    return int(np.count_nonzero((v < fmt.min_int) | (v > fmt.max_int)))


def saturation_counts(qm: QuantizedModel, weights: ModelWeights, dense, sparse) -> dict:
    """How many values saturate, per tensor, when ``qm`` runs the batch ``(dense, sparse)``.

    Counts values whose exact result lies outside the tensor's format before the spec's
    saturation: the quantized dense inputs, the embedding rows gathered, each feature's pooled
    sum (``pooled:<name>``) and each MLP layer's requantized output (``bottom[i]``, ``top[i]``,
    ``heads[h][i]``; the last top layer's is the sigmoid's input). Also ``values``: how many
    values of each tensor were seen. The integer path is the golden model's (same functions).
    """
    sat, seen = {}, {}
    x = np.asarray(dense, dtype=np.float64)
    raw = np.sign(np.ldexp(x, qm.dense_fmt.frac)) * np.floor(
        np.abs(np.ldexp(x, qm.dense_fmt.frac)) + 0.5)
    sat["dense_input"], seen["dense_input"] = _outside(raw, qm.dense_fmt), int(raw.size)
    x = qm.quantize_dense(dense)

    def layers(prefix, ls, v):
        for i, l in enumerate(ls):
            acc = nx.mac(v, l.w, qm.acc_bits, bias=l.b)
            wide = nx.requantize(acc, l.shift, FixedFormat(64, l.out_fmt.frac), qm.rounding)
            name = f"{prefix}[{i}]"
            sat[name], seen[name] = _outside(wide, l.out_fmt), int(wide.size)
            v = nx.requantize(acc, l.shift, l.out_fmt, qm.rounding)
            v = nx.relu(v) if l.relu else v
        return v

    dense_vec = layers("bottom", qm.bottom, x)
    rows_sat = rows_seen = 0
    pooled = []
    for f, t, bags in zip(qm.spec.sparse, weights.tables, sparse):
        m = bags.mask()
        ids = np.where(m, bags.ids, 0)
        rows = np.asarray(t.gather(ids.reshape(-1)), np.float64).reshape(*ids.shape, t.dim)
        scaled = np.ldexp(rows, qm.emb_fmt.frac)
        r = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
        rows_sat += _outside(r[m], qm.emb_fmt)
        rows_seen += int(r[m].size)
        q = nx.quantize(rows, qm.emb_fmt) * m[..., None]
        total = q.sum(axis=1)
        sat[f"pooled:{f.name}"], seen[f"pooled:{f.name}"] = _outside(total, qm.emb_fmt), \
            int(total.size)
        pooled.append(nx.saturate(total, qm.emb_fmt))
    sat["embedding_rows"], seen["embedding_rows"] = rows_sat, rows_seen
    z = interaction(qm, dense_vec, pooled)
    trunk = layers("top", qm.top, z)
    for h, head in enumerate(qm.heads):
        layers(f"heads[{h}]", head, trunk)
    return {"saturated": sat, "values": seen}
