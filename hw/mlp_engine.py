"""Former home of the MLP blocks, now the package :mod:`recfabric.hw.mlp` (one module per
component). Kept so that imports written before the split keep working; new code imports
:mod:`recfabric.hw.mlp`."""

from .mlp import *  # noqa: F403
from .mlp import __all__  # noqa: F401
