"""Quantizer: float weights -> fixed point, with power-of-two scales chosen by calibration.

Every tensor gets the finest power-of-two scale that covers the largest magnitude seen (weights:
over the weights; activations: over a calibration batch run through the float reference), see
:func:`recfabric.host.numerics.choose_frac`. The concatenated vector (the dense part, each
embedding table's pooled sums) is one vector to the hardware, but its segments need not share a
format: with ``formats="per-table"`` (the default) each segment ``s`` gets its own frac ``f_s``
and the first top layer's weight columns of segment ``s`` are quantized with frac
``acc_frac - f_s``, ``acc_frac = min_s(f_s + natural weight frac of s)``, so that every product
lands in one accumulator format without saturating a column: exact on the unchanged hardware,
which sees only integers and one shift. ``formats="shared"`` gives every segment ``emb_fmt``.
The final layer requantizes into the sigmoid's input format. Every layer's requantize shift is
checked against the numerics spec's range; :class:`QuantizeError` names the layer and the format
that made it extreme. :func:`accuracy_report` measures what all this costs against the float
model on synthetic data (:mod:`recfabric.host.bench.trained` on trained models and real data).
"""

from __future__ import annotations

import numpy as np

from .. import numerics as nx
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
           "QuantizeError", "FORMATS"]


def _max_abs(*arrays) -> float:
    m = 0.0
    for a in arrays:
        a = np.asarray(a)
        if a.size:
            m = max(m, float(np.max(np.abs(a))))
    return m


def _fmt(bits, max_abs) -> FixedFormat:
    return FixedFormat(bits, nx.choose_frac(max_abs, bits))


class QuantizeError(ValueError):
    """A model cannot be quantized; the message names the layer and the cause."""


def _cause(parts, too_big: bool) -> str:
    """Which of a layer's formats pushed its shift (or accumulator frac) out of range.

    ``parts`` is ``[(what, fmt, max_abs, sign), ...]``: ``sign`` is +1 for formats whose frac
    adds to the shift (input, weights), -1 for the output's. The culprit is the format whose scale
    is furthest from "values near 1" (``frac = bits - 1``) in the offending direction.
    """
    def excess(p):
        _, fmt, _, sign = p
        e = sign * (fmt.frac - (fmt.bits - 1))
        return e if too_big else -e
    what, fmt, m, _ = max(parts, key=excess)
    size = "tiny" if fmt.frac > fmt.bits - 1 else "huge"
    return (f"the {what} format {fmt} (frac {fmt.frac}) was calibrated on {size} values "
            f"(largest magnitude {m:.3g})")


def _formats_text(parts) -> str:
    plus = " + ".join(f"{w} frac {f.frac}" for w, f, _, sg in parts if sg > 0)
    minus = "".join(f" - {w} frac {f.frac}" for w, f, _, sg in parts if sg < 0)
    return plus + minus


def _qlayer(name, layer, in_fmt, out_fmt, bits, acc_bits, relu, *, in_max, out_max,
            col_fracs=None) -> QLayer:
    """Quantize one layer. ``col_fracs`` (per input column, optional): the columns' input fracs
    for per-segment formats; the column weights then get frac ``acc_frac - col_fracs[c]`` so that
    every product lands in the one accumulator format (``acc_frac = min over columns of
    col_frac + the natural weight frac of the column's segment``)."""
    w_max = _max_abs(layer.weight)
    w_fmt = _fmt(bits, w_max)
    if col_fracs is None:
        acc_frac = in_fmt.frac + w_fmt.frac
        w_scale = np.full(layer.weight.shape[1], w_fmt.frac)
    else:
        col_fracs = np.asarray(col_fracs, dtype=np.int64)
        acc_frac = None
        for f in np.unique(col_fracs):
            cols = col_fracs == f
            acc = int(f) + nx.choose_frac(_max_abs(layer.weight[:, cols]), bits)
            acc_frac = acc if acc_frac is None else min(acc_frac, acc)
        w_scale = acc_frac - col_fracs
        # Nominal formats: the input format the QLayer records, the weights' in that frame.
        w_fmt = FixedFormat(bits, int(acc_frac - in_fmt.frac)) if (
            -64 <= acc_frac - in_fmt.frac <= 64) else None
    parts = [("input", in_fmt, in_max, 1), ("weight", w_fmt or _fmt(bits, w_max), w_max, 1),
             ("output", out_fmt, out_max, -1)]
    shift = acc_frac - out_fmt.frac
    if not nx.SHIFT_MIN <= shift <= nx.SHIFT_MAX:
        raise QuantizeError(
            f"{name}: requantize shift {shift} = {_formats_text(parts)} is outside the "
            f"numerics spec's {nx.SHIFT_MIN}..{nx.SHIFT_MAX}; cause: "
            f"{_cause(parts, shift > nx.SHIFT_MAX)}")
    if not -64 <= acc_frac <= 64 or w_fmt is None:
        raise QuantizeError(
            f"{name}: accumulator fraction bits {acc_frac} are outside -64..64; cause: "
            f"{_cause(parts[:2], acc_frac > 64)}")
    acc_fmt = FixedFormat(acc_bits, acc_frac)
    scaled = np.ldexp(np.asarray(layer.weight, np.float64), w_scale[None, :].astype(np.int64))
    w_int = np.clip(np.sign(scaled) * np.floor(np.abs(scaled) + 0.5), w_fmt.min_int,
                    w_fmt.max_int).astype(np.int64)
    q = QLayer(w_int, nx.quantize(layer.bias, acc_fmt), in_fmt, w_fmt, out_fmt, relu)
    if not nx.accumulator_headroom_ok(q.w, q.b, in_fmt, acc_bits):
        raise QuantizeError(f"{name} ({q.shape[0]}->{q.shape[1]}) can overflow its {acc_bits}-bit "
                            "accumulator; use a wider accumulator")
    return q


def _fuse_heads(heads) -> list:
    """Float heads of equal depth as one chain: layer 0 stacks the heads' rows (they share the
    trunk's output), deeper layers are block-diagonal (each head sees only its own outputs)."""
    from ..model.weights import Layer  # noqa: PLC0415

    out = []
    for i in range(len(heads[0])):
        ls = [h[i] for h in heads]
        if i == 0:
            w = np.concatenate([l.weight for l in ls], axis=0)
        else:
            w = np.zeros((sum(l.shape[1] for l in ls), sum(l.shape[0] for l in ls)), np.float32)
            r = c = 0
            for l in ls:
                w[r:r + l.shape[1], c:c + l.shape[0]] = l.weight
                r, c = r + l.shape[1], c + l.shape[0]
        out.append(Layer(w, np.concatenate([l.bias for l in ls])))
    return out


def _split_heads(fused, widths) -> list:
    """Per-head QLayers of a fused, quantized head chain (:func:`_fuse_heads`); ``widths[h]``
    are head ``h``'s output widths per layer. Off-block weights quantize to exact zeros, so each
    head's layers compute what the fused layer computes for its rows."""
    heads = [[] for _ in widths]
    for i, q in enumerate(fused):
        r = c = 0
        for h, ws in enumerate(widths):
            n = ws[i]
            cols = slice(None) if i == 0 else slice(c, c + widths[h][i - 1])
            heads[h].append(QLayer(q.w[r:r + n, cols], q.b[r:r + n], q.in_fmt, q.w_fmt,
                                   q.out_fmt, q.relu))
            r += n
            if i:
                c += widths[h][i - 1]
    return heads


#: Activation format choices of :func:`quantize_model`.
FORMATS = ("per-table", "shared")


def quantize_model(weights: ModelWeights, calib_dense, calib_sparse, bits: int = 16,
                   acc_bits: int | None = None,
                   rounding: Rounding = Rounding.HALF_UP,
                   formats: str = "per-table") -> QuantizedModel:
    """Quantize ``weights`` to ``bits``-bit operands, calibrating on the given batch.

    ``formats="per-table"`` (concat models): every segment of the concatenated vector (the dense
    part, each embedding table) gets its own format, folded into the first top layer's weight
    columns (exact on unchanged hardware, see the module docstring). ``"shared"``: one format for
    all tables and the dense part. Dot-interaction models (golden model only): per-table formats
    give each interacting vector its own format and each pair its own requantize shift.
    """
    if bits not in (8, 16):
        raise ValueError(f"operand width must be 8 or 16 bits, not {bits}")
    if formats not in FORMATS:
        raise ValueError(f"formats must be one of {', '.join(FORMATS)}, not {formats!r}")
    acc_bits = nx.default_acc_bits(bits) if acc_bits is None else acc_bits
    spec = weights.spec
    taps = {}
    float_forward(weights, calib_dense, calib_sparse, taps=taps)
    per_table = formats == "per-table"
    table_max = [max(t.max_abs(), _max_abs(p)) for t, p in zip(weights.tables, taps["pooled"])]
    emb_max = _max_abs(*table_max, taps["dense_vec"])
    emb_fmt = _fmt(bits, emb_max)
    dense_max = _max_abs(calib_dense)
    dense_fmt = _fmt(bits, dense_max) if spec.bottom_mlp or per_table else emb_fmt
    dense_vec_max = _max_abs(taps["dense_vec"])
    dense_vec_fmt = _fmt(bits, dense_vec_max) if per_table else emb_fmt
    table_fmts = [_fmt(bits, m) for m in table_max] if per_table else [emb_fmt] * len(table_max)

    def chain(kind, layers, outs, in_fmt, in_max, last_fmt, last_relu, col_fracs=None):
        q = []
        for i, (layer, out) in enumerate(zip(layers, outs)):
            last = i + 1 == len(layers)
            out_max = _max_abs(out)
            out_fmt = last_fmt if last and last_fmt is not None else _fmt(bits, out_max)
            q.append(_qlayer(f"{kind} layer {i} ({layer.shape[0]}->{layer.shape[1]})", layer,
                             in_fmt, out_fmt, bits, acc_bits, relu=last_relu or not last,
                             in_max=in_max, out_max=out_max,
                             col_fracs=col_fracs if i == 0 else None))
            in_fmt, in_max = out_fmt, out_max
        return q, in_fmt, in_max

    bottom, _, _ = chain("bottom", weights.bottom, taps["bottom"], dense_fmt, dense_max,
                         dense_vec_fmt, True)
    interaction_fmt = None
    top_in, top_max, col_fracs = emb_fmt, emb_max, None
    segment_fmts = None
    if spec.interaction == "dot":
        interaction_fmt = _fmt(bits, _max_abs(taps["dense_vec"], taps["dots"]))
        top_in, top_max = interaction_fmt, _max_abs(taps["dense_vec"], taps["dots"])
        if per_table:
            segment_fmts = [dense_vec_fmt, *table_fmts]
            emb_fmt = max(segment_fmts, key=lambda f: f.frac)
    elif per_table:
        segment_fmts = ([dense_vec_fmt] if spec.dense_out else []) + table_fmts
        widths = ([spec.dense_out] if spec.dense_out else []) + [f.dim for f in spec.sparse]
        col_fracs = np.repeat([f.frac for f in segment_fmts], widths)
        # The first layer's nominal input format: the segment with the finest scale. Its
        # weights' frac is then acc_frac - that frac; other segments' columns are rescaled.
        top_in = max(segment_fmts, key=lambda f: f.frac)
        emb_fmt = top_in
    if spec.heads:
        top, trunk_fmt, trunk_max = chain("top", weights.top, taps["top"], top_in, top_max,
                                          None, True, col_fracs)
        if len({len(h) for h in weights.heads}) == 1:
            # Heads of equal depth share one format per depth (quantized as one block-diagonal
            # layer, then split): the kernel runs them as that one layer, one shift per engine.
            fused = _fuse_heads(weights.heads)
            fused_taps = [np.concatenate([t[i] for t in taps["heads"]], axis=1)
                          for i in range(len(fused))]
            fq = chain("heads", fused, fused_taps, trunk_fmt, trunk_max, nx.SIGMOID_IN,
                       False)[0]
            heads = _split_heads(fq, [[l.shape[1] for l in h] for h in weights.heads])
        else:
            heads = [chain(f"head {h}", hl, t, trunk_fmt, trunk_max, nx.SIGMOID_IN, False)[0]
                     for h, (hl, t) in enumerate(zip(weights.heads, taps["heads"]))]
    else:
        top, _, _ = chain("top", weights.top, taps["top"], top_in, top_max, nx.SIGMOID_IN,
                          False, col_fracs)
        heads = []
    tables = [QuantizedTable(t, f) for t, f in zip(weights.tables, table_fmts)]
    return QuantizedModel(spec, bits, acc_bits, emb_fmt, dense_fmt, tables, bottom, top, heads,
                          interaction_fmt, rounding, segment_fmts)


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
                    calib_batch: int = 1024, seed: int = 0, progress=None,
                    formats: str = "per-table") -> dict:
    """Fixed point vs float on synthetic Zipf-skewed inputs, labels drawn from the float model.

    Returns max/mean absolute score error, AUC of both, log-loss of both and their difference.
    """
    spec = weights.spec
    say = progress or (lambda msg: None)
    say(f"calibrating on {calib_batch} synthetic requests")
    cd, cs = synthetic_batch(spec, calib_batch, seed=seed + 1)
    qm = quantize_model(weights, cd, cs, bits=bits, formats=formats)
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
        "emb_fmt": str(qm.emb_fmt), "formats": formats,
        "max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
        "auc_float": auc(labels, p_float), "auc_fixed": auc(labels, p_fixed),
        "logloss_float": ll_f, "logloss_fixed": ll_q, "logloss_diff": ll_q - ll_f,
        "positive_rate": float(labels.mean()),
        "score_std": float(p_float.std()),
    }


# ---- saturation --------------------------------------------------------------------------

def _outside(values, fmt: FixedFormat) -> int:
    v = np.asarray(values)
    return int(np.count_nonzero((v < fmt.min_int) | (v > fmt.max_int)))


def saturation_counts(qm: QuantizedModel, weights: ModelWeights, dense, sparse) -> dict:
    """How many values saturate, per tensor, when ``qm`` runs the batch ``(dense, sparse)``.

    Counts values whose exact result lies outside the tensor's format before the spec's
    saturation: the quantized dense inputs, the embedding rows gathered (each in its table's
    format), each feature's pooled sum (``pooled:<name>``) and each MLP layer's requantized
    output (``bottom[i]``, ``top[i]``, ``heads[h][i]``; the last top layer's is the sigmoid's
    input). Also ``values``: how many
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
    for f, t, fmt, bags in zip(qm.spec.sparse, weights.tables, qm.table_fmts(), sparse):
        m = bags.mask()
        ids = np.where(m, bags.ids, 0)
        rows = np.asarray(t.gather(ids.reshape(-1)), np.float64).reshape(*ids.shape, t.dim)
        scaled = np.ldexp(rows, fmt.frac)
        r = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
        rows_sat += _outside(r[m], fmt)
        rows_seen += int(r[m].size)
        q = nx.quantize(rows, fmt) * m[..., None]
        total = q.sum(axis=1)
        sat[f"pooled:{f.name}"], seen[f"pooled:{f.name}"] = _outside(total, fmt), \
            int(total.size)
        pooled.append(nx.saturate(total, fmt))
    sat["embedding_rows"], seen["embedding_rows"] = rows_sat, rows_seen
    z = interaction(qm, dense_vec, pooled)
    trunk = layers("top", qm.top, z)
    for h, head in enumerate(qm.heads):
        layers(f"heads[{h}]", head, trunk)
    return {"saturated": sat, "values": seen}
