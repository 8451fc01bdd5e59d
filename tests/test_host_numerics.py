"""Numerics spec against naive Python twins: exhaustive at small widths, hypothesis at large."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recfabric.host import numerics as nx
from recfabric.host.numerics import FixedFormat, Rounding


def naive_saturate(v, bits):
    return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, v))


def naive_requantize(acc, shift, out_bits, rounding):
    """Exact rational arithmetic: value / 2**shift, rounded per the mode, then saturated."""
    q = Fraction(acc, 1) / Fraction(2) ** shift
    if rounding is Rounding.HALF_UP:
        r = math.floor(q + Fraction(1, 2))
    else:
        r = math.floor(q)
    return naive_saturate(r, out_bits)


def naive_wrap(v, bits):
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("shift", [-3, -1, 0, 1, 2, 5])
def test_requantize_exhaustive_small(shift, rounding):
    accs = np.arange(-(1 << 9), 1 << 9)  # every 10-bit accumulator value
    out = FixedFormat(5, 0)
    got = nx.requantize(accs, shift, out, rounding)
    want = [naive_requantize(int(a), shift, 5, rounding) for a in accs]
    assert got.tolist() == want


@given(acc=st.integers(-(1 << 47), (1 << 47) - 1), shift=st.integers(-20, 40),
       bits=st.sampled_from([8, 11, 16]), rounding=st.sampled_from(list(Rounding)))
def test_requantize_large(acc, shift, bits, rounding):
    got = int(nx.requantize(np.array([acc]), shift, FixedFormat(bits, 0), rounding)[0])
    assert got == naive_requantize(acc, shift, bits, rounding)


def test_wrap_exhaustive_small():
    v = np.arange(-300, 300)
    assert nx.wrap(v, 6).tolist() == [naive_wrap(int(x), 6) for x in v]


def test_mac_exhaustive_int4_pairs():
    """Every pair of 4-bit operands, 3-term dot products with a bias, 8-bit wrapping accumulator."""
    vals = np.arange(-8, 8)
    x = np.array(np.meshgrid(vals, vals, vals)).reshape(3, -1).T  # all 4096 activation triples
    w = np.array([[7, -8, 3], [-1, -1, -1]])
    b = np.array([100, -128])
    got = nx.mac(x, w, 8, bias=b)
    want = [[naive_wrap(int(b[n] + sum(int(x[i, k]) * int(w[n, k]) for k in range(3))), 8)
             for n in range(2)] for i in range(len(x))]
    assert got.tolist() == want


@settings(max_examples=50)
@given(data=st.data(), k=st.integers(1, 40), n=st.integers(1, 5), bits=st.sampled_from([8, 16]))
def test_mac_matches_python_ints(data, k, n, bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    x = data.draw(st.lists(st.integers(lo, hi), min_size=k, max_size=k))
    w = [data.draw(st.lists(st.integers(lo, hi), min_size=k, max_size=k)) for _ in range(n)]
    acc_bits = nx.default_acc_bits(bits)
    got = nx.mac(np.array([x]), np.array(w), acc_bits)[0].tolist()
    assert got == [naive_wrap(sum(a * b for a, b in zip(x, row)), acc_bits) for row in w]


def test_quantize_rounds_half_away_and_saturates():
    f = FixedFormat(8, 2)
    got = nx.quantize([0.125, -0.125, 0.375, 100.0, -100.0, 31.75, -32.0], f)
    assert got.tolist() == [1, -1, 2, 127, -128, 127, -128]
    assert nx.dequantize(got, f).tolist() == [0.25, -0.25, 0.5, 31.75, -32.0, 31.75, -32.0]


def test_quantize_rejects_nan_and_inf():
    with pytest.raises(ValueError, match="NaN"):
        nx.quantize([1.0, float("nan")], FixedFormat(8, 2))
    with pytest.raises(ValueError, match="infinite"):
        nx.quantize([float("inf")], FixedFormat(8, 2))


@given(st.floats(1e-6, 1e6), st.sampled_from([8, 16]))
def test_choose_frac_is_tightest_covering_scale(max_abs, bits):
    frac = nx.choose_frac(max_abs, bits)
    top = (1 << (bits - 1)) - 1
    assert max_abs * 2.0**frac <= top
    assert max_abs * 2.0 ** (frac + 1) > top


def test_fixed_format_validation_names_value():
    with pytest.raises(ValueError, match="not 0"):
        FixedFormat(0, 0)
    with pytest.raises(ValueError, match="1.5"):
        FixedFormat(8, 1.5)
    assert str(FixedFormat(16, 13)) == "Q3.13"


def test_pool_sum_saturates_once_at_end():
    f = FixedFormat(8, 0)
    rows = np.array([[[120], [120], [-100]]])  # 120+120 overflows alone; the total fits
    assert nx.pool_sum(rows, f, axis=1).tolist() == [[127]]
    rows2 = np.array([[[120], [-100], [120]]])
    # Order independence: a per-addition saturating sum would give different answers.
    assert nx.pool_sum(rows2, f, axis=1).tolist() == nx.pool_sum(rows, f, axis=1).tolist()
    assert nx.pool_sum(np.array([[[100], [100]]]), f, axis=1).tolist() == [[127]]
    assert nx.pool_acc_bits(16, 80) == 23


def test_sigmoid_table_definition():
    t = nx.sigmoid_table()
    assert len(t) == 2048 and t.dtype == np.int64
    assert np.all(np.diff(t) >= 0), "sigmoid table must be monotonic"
    assert t[1024] == 32768  # sigmoid(0) = 0.5
    for i in (0, 100, 1024, 1500, 2047):
        x = (i - 1024) / 128
        assert t[i] == min(65535, math.floor(65536 / (1 + math.exp(-x)) + 0.5))
    assert nx.sigmoid_lookup(np.array([-1024, 0, 1023])).tolist() == [t[0], t[1024], t[2047]]
    with pytest.raises(ValueError, match="outside"):
        nx.sigmoid_lookup(np.array([1024]))


def test_integer_only_path_rejects_floats():
    with pytest.raises(TypeError, match="integer"):
        nx.mac(np.array([[0.5]]), np.array([[1]]), 32)
    with pytest.raises(TypeError, match="integer"):
        nx.requantize(np.array([1.0]), 1, FixedFormat(8, 0))


def test_dot_interaction_lower_triangle_order():
    v = np.array([[[1, 2], [3, 4], [5, 6]]])  # 3 vectors
    got = nx.dot_interaction(v, 32, 0, FixedFormat(16, 0))
    # pairs (1,0), (2,0), (2,1) in DLRM's tril order
    assert got.tolist() == [[1 * 3 + 2 * 4, 1 * 5 + 2 * 6, 3 * 5 + 4 * 6]]


def test_accumulator_headroom():
    x = FixedFormat(16, 0)
    w = np.full((1, 1024), 32767)
    assert nx.accumulator_headroom_ok(w, np.zeros(1, np.int64), x, 48)
    assert not nx.accumulator_headroom_ok(w, np.zeros(1, np.int64), x, 32)
