"""The requantize shift range: stated in the numerics spec, exact over all of it, enforced, and
quantizer errors that name the layer and the format that made a shift extreme."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from recfabric.host import numerics as nx
from recfabric.host.model.spec import ModelSpec, SparseFeature
from recfabric.host.model.synthetic import synthetic_batch
from recfabric.host.model.weights import random_weights
from recfabric.host.numerics import FixedFormat, Rounding
from recfabric.host.reference.quantize import QuantizeError, quantize_model
from recfabric.hw import mlp_engine

from .test_host_numerics import naive_requantize

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)


def test_range_is_stated_once_and_hardware_uses_it():
    assert (nx.SHIFT_MIN, nx.SHIFT_MAX) == (-60, 62)
    assert (mlp_engine.SHIFT_MIN, mlp_engine.SHIFT_MAX) == (nx.SHIFT_MIN, nx.SHIFT_MAX)


@settings(max_examples=600, deadline=None)
@given(acc=INT64, shift=st.integers(nx.SHIFT_MIN, nx.SHIFT_MAX), bits=st.integers(2, 64),
       rounding=st.sampled_from(list(Rounding)))
@example(acc=(1 << 63) - 1, shift=62, bits=16, rounding=Rounding.HALF_UP)  # rounding add overflow
@example(acc=(1 << 63) - 1, shift=1, bits=64, rounding=Rounding.HALF_UP)
@example(acc=1, shift=-60, bits=64, rounding=Rounding.HALF_UP)
@example(acc=1, shift=-60, bits=61, rounding=Rounding.FLOOR)  # saturates to max
@example(acc=-1, shift=-60, bits=61, rounding=Rounding.FLOOR)  # exactly min
@example(acc=-(1 << 63), shift=-1, bits=64, rounding=Rounding.HALF_UP)
def test_requantize_equals_python_int_reference_over_the_whole_range(acc, shift, bits,
                                                                     rounding):
    got = nx.requantize(np.array([acc], dtype=np.int64), shift, FixedFormat(bits, 0), rounding)
    assert int(got[0]) == naive_requantize(acc, shift, bits, rounding)


@pytest.mark.parametrize("shift", [nx.SHIFT_MIN, nx.SHIFT_MIN + 1, -33, -1, 0, 1, 47, 61,
                                   nx.SHIFT_MAX])
@pytest.mark.parametrize("rounding", list(Rounding))
def test_requantize_range_ends_on_extreme_accumulators(shift, rounding):
    accs = [-(1 << 63), -(1 << 63) + 1, -(1 << 47), -3, -2, -1, 0, 1, 2, 3, (1 << 47) - 1,
            (1 << 62), (1 << 63) - 1]
    for bits in (8, 11, 16, 48, 64):
        got = nx.requantize(np.array(accs, dtype=np.int64), shift, FixedFormat(bits, 0),
                            rounding)
        assert got.tolist() == [naive_requantize(a, shift, bits, rounding) for a in accs]


@pytest.mark.parametrize("shift", [nx.SHIFT_MIN - 1, -62, -64, nx.SHIFT_MAX + 1, 64, 100])
def test_requantize_refuses_shifts_outside_the_range(shift):
    with pytest.raises(ValueError, match=f"shift {shift} is outside .*-60..62"):
        nx.requantize(np.array([5]), shift, FixedFormat(16, 0))


def test_dot_interaction_shares_the_check():
    v = np.ones((1, 3, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="shift 70 is outside"):
        nx.dot_interaction(v, 48, 70, FixedFormat(16, 0))


SPEC = ModelSpec(name="extreme", sparse=(SparseFeature("a", 20, 4), SparseFeature("b", 9, 4)),
                 dense=3, top_mlp=(8, 6, 1))


@pytest.mark.parametrize("formats", ["per-table", "shared"])
def test_tiny_weights_name_the_layer_and_the_weight_format(formats):
    """Tiny weights, large biases: the output format is coarse, the weights' fine."""
    w = random_weights(SPEC, seed=1)
    w.top[1].weight = (w.top[1].weight * 1e-12).astype(np.float32)
    w.top[1].bias = np.full(6, 3e5, np.float32)
    cd, cs = synthetic_batch(SPEC, 64, seed=2)
    with pytest.raises(QuantizeError) as e:
        quantize_model(w, cd, cs, bits=16, formats=formats)
    msg = str(e.value)
    assert msg.startswith("top layer 1 (8->6): requantize shift "), msg
    assert "is outside the numerics spec's -60..62; cause: the weight format" in msg, msg
    assert "tiny values (largest magnitude " in msg, msg


def test_tiny_layer_names_the_accumulator_and_the_weight_format():
    """Tiny weights and biases: the accumulator's own scale leaves what a format can hold."""
    w = random_weights(SPEC, seed=1)
    w.top[1].weight = (w.top[1].weight * 1e-19).astype(np.float32)
    w.top[1].bias = (w.top[1].bias * 1e-19).astype(np.float32)
    cd, cs = synthetic_batch(SPEC, 64, seed=2)
    with pytest.raises(QuantizeError, match=r"^top layer 1 \(8->6\): accumulator fraction bits "
                       r"\d+ are outside -64..64; cause: the weight format .* tiny values"):
        quantize_model(w, cd, cs, bits=16)
