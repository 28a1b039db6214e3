"""invertible: exact gradients with far less memory for invertible networks.

Implements *Moonwalk: Inverse-Forward Differentiation* (Krylov, Karamzade, Fox;
arXiv 2402.14212) on JAX and Equinox.
"""

from . import grad as grad, layers as layers
from ._abstract import (
    AbstractInvertible as AbstractInvertible,
    AbstractNonSubmersive as AbstractNonSubmersive,
    AbstractSubmersive as AbstractSubmersive,
)
from .layers import (
    AdditiveCoupling as AdditiveCoupling,
    LeakyReLU as LeakyReLU,
    ScannedSequential as ScannedSequential,
    Sequential as Sequential,
)

__version__ = "0.1.0"
