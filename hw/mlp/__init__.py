"""Fixed-point MLP: layer engines on systolic arrays, chained into a pipeline across requests.

Modules: :mod:`.load_format` (load words, descriptor fields), :mod:`.activation_buffer`,
:mod:`.requantizer`, :mod:`.layer_engine`, :mod:`.pipeline` (``InputWriter``, ``VectorDrain``,
``MLPPipeline``), :mod:`.load_image` (``mlp_load_image``, host side). The processing element,
the systolic array and the sigmoid are :mod:`recfabric.hw.processing_element`,
:mod:`recfabric.hw.systolic_array` and :mod:`recfabric.hw.sigmoid`.

Structure (one engine per layer, layers pipelined across requests)::

    i_vector -> InputWriter -> buf[0] -> LayerEngine[0] -> buf[1] -> ... -> LayerEngine[L-1]
             -> buf[L] -> VectorDrain -> (Sigmoid) -> o_scores / o_result

Every ``buf`` is an :class:`ActivationBuffer`: one memory per lane and ``banks`` banks, so a
producer fills request i+1 while its consumer still reads request i. Engine ``l`` is a
``rows[l]`` x ``cols[l]`` :class:`~recfabric.hw.systolic_array.SystolicArray`; it reads its input
vector ``cols[l]`` elements per cycle (lane = element index mod ``cols[l]``) and writes output
element ``n`` of row ``n mod rows[l]`` into lane ``n mod rows[l]`` of the next buffer, so
``cols[l+1] == rows[l]``: the next engine reads the lanes the previous one wrote, and no lane is
written twice in a cycle.

A layer with ``K`` inputs and ``N`` outputs takes ``k_tiles * n_tiles`` cycles on its engine
(``k_tiles = ceil(K / cols)``, ``n_tiles = ceil(N / rows)``): one MAC wave per cycle, no bubbles
between tiles or between back-to-back requests. The initiation interval of the pipeline is the
largest of these (see :mod:`recfabric.host.compiler.cycle_model`); sizing ``rows``/``cols`` per
layer in proportion to each layer's MACs balances it.

Runtime data (see :func:`mlp_load_image`): weights and biases as packed beats through
``i_block`` (:class:`BeatPacking`: one beat per cycle writes a whole group of PEs at one
address, docs/mlp.md), and per-engine descriptors through ``i_load`` (:class:`MLPLoadLayout`:
tile counts, requantize shift, rounding, ReLU, saturation width, output length). A model with
narrower layers, or fewer layers (padded with identity layers at the end, int16 only), runs on
the same hardware. Loading while requests are
in flight is not supported.
"""


from ..stream_types import MLPInputLayout
from .activation_buffer import ActivationBuffer, ActivationReadSignature, ActivationWriteSignature
from .layer_engine import ROW_END_LATENCY, LayerEngine
from .load_format import (
    FLAG_FLOOR,
    FLAG_LOGIT,
    FLAG_RELU,
    SHIFT_MAX,
    SHIFT_MIN,
    BeatPacking,
    Desc,
    LoadKind,
    MLPBlockSel,
    MLPLoadLayout,
)
from .load_image import MLPBlock, MLPLoadImage, mlp_load_image
from .pipeline import InputWriter, MLPPipeline, VectorDrain
from .requantizer import REQUANT_LATENCY, Requantizer

__all__ = [
    "LoadKind", "Desc", "MLPLoadLayout", "MLPInputLayout", "ActivationWriteSignature",
    "ActivationReadSignature", "ActivationBuffer", "Requantizer", "LayerEngine", "InputWriter",
    "VectorDrain", "MLPPipeline", "mlp_load_image", "MLPLoadImage", "MLPBlock", "MLPBlockSel",
    "BeatPacking", "SHIFT_MIN", "SHIFT_MAX",
    "ROW_END_LATENCY", "REQUANT_LATENCY", "FLAG_RELU", "FLAG_FLOOR", "FLAG_LOGIT",
]
