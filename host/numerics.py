"""RecFabric numerics specification.

This module is the single definition of every number the accelerator computes. The golden model
(:mod:`recfabric.host.reference.golden`) composes these functions into whole-model inference; the
Amaranth arithmetic in :mod:`recfabric.hw` implements the same functions and is tested against them,
bit for bit. Everything in the bit-exact path is integer-only, vectorised numpy on ``int64``.

Choices, and why
----------------
Formats
    Signed two's-complement fixed point with a power-of-two scale per tensor:
    ``value = integer * 2**-frac`` in ``bits`` bits (:class:`FixedFormat`). Power-of-two scales
    make every rescale a shift (no multipliers outside the MAC array, as in RecAccel's int8
    formats). ``frac`` may be negative or exceed ``bits`` (very large / very small tensors).
    Operands are int8 or int16: int8 halves memory traffic and fits two MACs per DSP48E2 slice;
    int16 is MicroRec's narrow format and keeps score error far below a percent.
Quantization (float -> int, host side only)
    Round half away from zero, then saturate. Only the host quantizer uses it, never hardware.
Multiply-accumulate
    Products of two ``bits``-bit operands are exact; they are summed in an accumulator of
    ``acc_bits`` bits that *wraps* (two's complement), as a fixed-width adder does. Wrapping is the
    spec so that hardware and golden model agree even in overflow; the model compiler checks that a
    model cannot overflow its accumulator (:func:`accumulator_headroom_ok`), so in practice the
    accumulator is exact. Default accumulators: 32 bits for int8, 48 bits for int16 (the DSP48E2
    accumulator width).
Bias
    Biases live in the accumulator's format (``frac = frac_x + frac_w``, ``acc_bits`` wide) and
    are the accumulator's initial value. A narrower bias store would saturate small biases of
    layers whose scales are fine (frac_x + frac_w of 35 leaves a 32-bit bias only +-0.0625).
Requantize (accumulator -> activation)
    Arithmetic shift right by ``s = frac_acc - frac_out`` with round-half-up (add ``2**(s-1)`` then
    shift: one adder, no sticky logic, unbiased except at exact ties), then saturate to the output
    format. ``s <= 0`` is an exact left shift followed by saturation. :class:`Rounding` also offers
    ``FLOOR`` (plain truncating shift) for configurations that want to save the adder.
    Legal shifts are ``SHIFT_MIN .. SHIFT_MAX`` = -60 .. 62 (:data:`SHIFT_MIN`, :data:`SHIFT_MAX`):
    the hardware's shift field is a signed byte and its requantizer is proven exact over this
    range; :func:`requantize` is exact for any int64 accumulator over it and refuses any other
    shift. A right shift of 62 already maps every 48-bit accumulator to 0 or -1 and a left shift
    of 60 saturates every non-zero value, so no useful model needs more; the quantizer names the
    layer and the format that made a shift leave the range.
ReLU
    ``max(x, 0)`` on the requantized value (it commutes with requantize, so the order is free).
Pooling
    A bag's rows are summed exactly (a pooling accumulator of ``bits + ceil(log2(max_bag))`` bits
    cannot overflow) and the sum is saturated once to the embedding format at the end of the bag.
    Saturating once, rather than per addition, makes the result independent of the order in which
    rows return from memory, which a multi-channel memory system does not guarantee.
Sigmoid
    A 2048-entry table indexed by the logit in Q3.7 (:data:`SIGMOID_IN`: 11 bits, ``frac`` 7,
    range [-8, 8)), the final layer requantizes straight into that format. Entry ``i`` holds
    ``sigmoid((i - 1024) / 128)`` in unsigned Q0.16 (:data:`SCORE`), rounded to nearest and
    capped at 65535. One RAMB36 holds it. Largest score error from the table alone: the logit
    step 1/128 times the maximum slope 1/4, halved, about 1e-3.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FixedFormat",
    "Rounding",
    "SHIFT_MIN",
    "SHIFT_MAX",
    "SIGMOID_IN",
    "SCORE",
    "SCORE_BITS",
    "SCORE_FRAC",
    "default_acc_bits",
    "wrap",
    "saturate",
    "quantize",
    "dequantize",
    "choose_frac",
    "mac",
    "requantize",
    "relu",
    "pool_sum",
    "pool_acc_bits",
    "sigmoid_table",
    "sigmoid_lookup",
    "dot_interaction",
    "accumulator_headroom_ok",
]


class Rounding(enum.Enum):
    """Rounding mode of a right shift that discards fraction bits."""

    #: Add half an output LSB, then shift (ties go towards +infinity).
    HALF_UP = "half_up"
    #: Plain arithmetic shift (towards -infinity).
    FLOOR = "floor"


@dataclass(frozen=True)
class FixedFormat:
    """Signed fixed-point format: ``bits`` total bits, value = integer * 2**-``frac``.

    Parameters
    ----------
    bits : int
        Total width including the sign bit, 2..64.
    frac : int
        Number of fraction bits (the power-of-two scale). May be negative or exceed ``bits``.
    """

    bits: int
    frac: int

    def __post_init__(self):
        if (not isinstance(self.bits, int) or isinstance(self.bits, bool)
                or not 2 <= self.bits <= 64):
            raise ValueError(f"Fixed-point width must be an integer in 2..64, not {self.bits!r}")
        if not isinstance(self.frac, int) or isinstance(self.frac, bool):
            raise ValueError(f"Fixed-point fraction bits must be an integer, not {self.frac!r}")
        if not -64 <= self.frac <= 64:
            raise ValueError(f"Fixed-point fraction bits must be in -64..64, not {self.frac}")

    @property
    def min_int(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def max_int(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def scale(self) -> float:
        """Value of one LSB."""
        return math.ldexp(1.0, -self.frac)

    @property
    def min_value(self) -> float:
        return self.min_int * self.scale

    @property
    def max_value(self) -> float:
        return self.max_int * self.scale

    def __str__(self):
        return f"Q{self.bits - self.frac}.{self.frac}"

    def to_json(self) -> dict:
        return {"bits": self.bits, "frac": self.frac}

    @classmethod
    def from_json(cls, obj) -> FixedFormat:
        return cls(bits=obj["bits"], frac=obj["frac"])


#: Legal requantize shifts, inclusive (module docstring, "Requantize"). The hardware's
#: requantizer (:class:`recfabric.hw.mlp_engine.Requantizer`) imports these.
SHIFT_MIN, SHIFT_MAX = -60, 62

#: Logit format at the sigmoid's input: Q3.7 in 11 bits, range [-8, 8).
SIGMOID_IN = FixedFormat(bits=11, frac=7)
#: Score format: unsigned Q0.16, value = integer / 65536.
SCORE_BITS = 16
SCORE_FRAC = 16
#: Score format, for documentation and conversion: unsigned 16 bits, 16 fraction bits.
SCORE = (SCORE_BITS, SCORE_FRAC)


def default_acc_bits(bits: int) -> int:
    """Accumulator width for ``bits``-bit operands: 32 for int8, 48 for int16 (DSP48E2)."""
    if bits <= 8:
        return 32
    if bits <= 16:
        return 48
    return 64


def _as_int64(x, what="value") -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iub":
        raise TypeError(f"{what} must be an integer array, not dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def wrap(x, bits: int) -> np.ndarray:
    """Reduce integers to ``bits``-bit two's complement (what a fixed-width adder does)."""
    x = _as_int64(x)
    if bits >= 64:
        return x
    mask = np.int64((1 << bits) - 1)
    half = np.int64(1 << (bits - 1))
    return ((x + half) & mask) - half


def saturate(x, fmt_or_bits) -> np.ndarray:
    """Clamp integers to the range of a signed format (or a signed width in bits)."""
    bits = fmt_or_bits.bits if isinstance(fmt_or_bits, FixedFormat) else int(fmt_or_bits)
    x = _as_int64(x)
    return np.clip(x, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def quantize(x, fmt: FixedFormat) -> np.ndarray:
    """Float -> fixed point: scale, round half away from zero, saturate. Host side only.

    Raises ``ValueError`` on NaN or infinity: no silent conversion of garbage.
    """
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("cannot quantize NaN or infinite values")
    scaled = np.ldexp(a, fmt.frac)
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    rounded = np.clip(rounded, fmt.min_int, fmt.max_int)
    return rounded.astype(np.int64)


def dequantize(q, fmt: FixedFormat) -> np.ndarray:
    """Fixed point -> float64."""
    return np.ldexp(_as_int64(q).astype(np.float64), -fmt.frac)


def choose_frac(max_abs: float, bits: int, *, limit: int = 64) -> int:
    """Largest ``frac`` such that ``max_abs`` is representable in ``bits`` bits without clipping.

    Calibration rule of the quantizer: a power-of-two scale that just covers the largest
    magnitude seen. ``max_abs == 0`` gives the finest scale allowed (``bits - 1``).
    """
    if not math.isfinite(max_abs) or max_abs < 0:
        raise ValueError(f"calibration range must be a finite non-negative number, not {max_abs}")
    top = (1 << (bits - 1)) - 1
    if max_abs == 0:
        return bits - 1
    frac = math.floor(math.log2(top / max_abs))
    # Guard against log2 rounding at exact powers of two.
    while max_abs * 2.0**frac > top:
        frac -= 1
    while max_abs * 2.0 ** (frac + 1) <= top:
        frac += 1
    return max(-limit, min(limit, frac))


def mac(x, w, acc_bits: int, bias=None) -> np.ndarray:
    """Matrix-vector multiply-accumulate: ``wrap(bias + x @ w.T, acc_bits)``.

    Parameters
    ----------
    x : int array, shape (..., K)
        Activations.
    w : int array, shape (N, K)
        Weights, one row per output (the ``nn.Linear`` convention).
    bias : int array, shape (N,), optional
        Initial accumulator values, in the accumulator's format.

    Returns the ``acc_bits``-bit wrapped accumulators, shape (..., N). Exact in int64 for any
    K * 2**(2*16) < 2**63, i.e. any realistic layer; the wrap then reduces to ``acc_bits``.
    """
    x = _as_int64(x, "activations")
    w = _as_int64(w, "weights")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"activation width {x.shape[-1]} does not match weight fan-in {w.shape[1]}")
    acc = x @ w.T
    if bias is not None:
        acc = acc + _as_int64(bias, "bias")
    return wrap(acc, acc_bits)


def requantize(acc, shift: int, out: FixedFormat, rounding: Rounding = Rounding.HALF_UP):
    """Narrow an accumulator: shift right by ``shift`` bits with ``rounding``, then saturate.

    ``shift = frac_acc - out.frac``, an integer in ``SHIFT_MIN .. SHIFT_MAX`` (anything else is
    a ``ValueError``). A negative shift is an exact left shift (then saturation). Exact for every
    int64 accumulator: HALF_UP adds the discarded half-LSB bit after shifting (``(acc >> s) +
    ((acc >> (s - 1)) & 1)``, equal to ``(acc + 2**(s-1)) >> s`` without its overflow), and a
    left shift saturates the accumulators it would push out of ``out`` before shifting.
    """
    if (not isinstance(shift, (int, np.integer)) or isinstance(shift, bool)
            or not SHIFT_MIN <= shift <= SHIFT_MAX):
        raise ValueError(f"requantize shift {shift!r} is outside the numerics spec's range "
                         f"{SHIFT_MIN}..{SHIFT_MAX}")
    shift = int(shift)
    acc = _as_int64(acc, "accumulator")
    if shift > 0:
        if rounding is Rounding.HALF_UP:
            acc = (acc >> np.int64(shift)) + ((acc >> np.int64(shift - 1)) & np.int64(1))
        elif rounding is Rounding.FLOOR:
            acc = acc >> np.int64(shift)
        else:
            raise ValueError(f"unknown rounding mode {rounding!r}")
    elif shift < 0:
        # Accumulators beyond out's range after the shift saturate; clip them first so that the
        # int64 shift cannot overflow (|bound| << k stays within out's range, plus one LSB).
        k = -shift
        hi = np.int64(out.max_int >> k)
        lo = np.int64(out.min_int >> k)  # floor: lo << k <= min_int
        big = acc > hi
        small = acc < lo
        acc = np.clip(acc, lo, hi) << np.int64(k)
        acc = np.where(big, np.int64(out.max_int), np.where(small, np.int64(out.min_int), acc))
    return saturate(acc, out)


def relu(x) -> np.ndarray:
    """Rectified linear unit on integers."""
    return np.maximum(_as_int64(x), 0)


def pool_acc_bits(bits: int, max_bag: int) -> int:
    """Width of an exact pooling accumulator for bags of up to ``max_bag`` ``bits``-bit rows."""
    if max_bag < 1:
        raise ValueError(f"maximum bag size must be at least 1, not {max_bag}")
    return bits + max(0, math.ceil(math.log2(max_bag)))


def pool_sum(rows, fmt: FixedFormat, axis: int = 0) -> np.ndarray:
    """Sum-pool embedding rows exactly, then saturate once to ``fmt`` (order-independent)."""
    rows = _as_int64(rows, "embedding rows")
    return saturate(rows.sum(axis=axis), fmt)


def sigmoid_table() -> np.ndarray:
    """The sigmoid table: 2048 unsigned 16-bit scores indexed by ``logit_q + 1024``."""
    return _SIGMOID_TABLE.copy()


def _make_sigmoid_table() -> np.ndarray:
    n = 1 << SIGMOID_IN.bits
    logits = (np.arange(n, dtype=np.float64) - n // 2) / (1 << SIGMOID_IN.frac)
    p = 1.0 / (1.0 + np.exp(-logits))
    q = np.floor(p * (1 << SCORE_FRAC) + 0.5)
    return np.minimum(q, (1 << SCORE_BITS) - 1).astype(np.int64)


_SIGMOID_TABLE = _make_sigmoid_table()


def sigmoid_lookup(logit_q) -> np.ndarray:
    """Score (unsigned Q0.16 integer) of logits already in :data:`SIGMOID_IN` format."""
    logit_q = _as_int64(logit_q, "logit")
    if np.any(logit_q < SIGMOID_IN.min_int) or np.any(logit_q > SIGMOID_IN.max_int):
        raise ValueError(f"logit outside the sigmoid input format {SIGMOID_IN}")
    return _SIGMOID_TABLE[logit_q - SIGMOID_IN.min_int]


def dot_interaction(vectors, acc_bits: int, shift, out: FixedFormat,
                    rounding: Rounding = Rounding.HALF_UP) -> np.ndarray:
    """DLRM pairwise dot interaction on integer vectors.

    ``vectors`` has shape (batch, n, d); returns, for each pair i > j in row-major order of the
    strictly lower triangle (DLRM's order), ``requantize(wrap(v_i . v_j), shift, out)``.
    ``shift`` is one integer, or one per pair (vectors in their own formats: pair (i, j) has
    frac ``frac_i + frac_j``, so its shift is ``frac_i + frac_j - out.frac``).
    """
    v = _as_int64(vectors, "interaction vectors")
    n = v.shape[1]
    z = np.einsum("bnd,bmd->bnm", v, v)
    li, lj = np.tril_indices(n, k=-1)
    acc = wrap(z[:, li, lj], acc_bits)
    if np.ndim(shift) == 0:
        return requantize(acc, int(shift), out, rounding)
    shifts = np.asarray(shift, dtype=np.int64)
    if shifts.shape != (len(li),):
        raise ValueError(f"{len(li)} pairs need {len(li)} shifts, not {shifts.shape}")
    res = np.empty_like(acc)
    for s in np.unique(shifts):
        cols = shifts == s
        res[:, cols] = requantize(acc[:, cols], int(s), out, rounding)
    return res


def accumulator_headroom_ok(w, b, x_fmt: FixedFormat, acc_bits: int) -> bool:
    """True when no input in ``x_fmt`` can overflow ``acc_bits`` for weights ``w`` (N, K) and
    biases ``b`` (N,): for every output, sum|w| * max|x| + |b| < 2**(acc_bits-1)."""
    w, b = _as_int64(w, "weights"), _as_int64(b, "bias")
    worst = np.abs(w).sum(axis=1) * (1 << (x_fmt.bits - 1)) + np.abs(b)
    return bool(np.all(worst <= (1 << (acc_bits - 1)) - 1))
