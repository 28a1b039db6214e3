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
    ActNorm as ActNorm,
    AdditiveCoupling as AdditiveCoupling,
    AffineCoupling as AffineCoupling,
    Asinh as Asinh,
    Invertible1x1Conv as Invertible1x1Conv,
    InvertibleLinear as InvertibleLinear,
    LeakyReLU as LeakyReLU,
    Permute as Permute,
    ScannedSequential as ScannedSequential,
    Sequential as Sequential,
    Squeeze as Squeeze,
)

__version__ = "0.1.0"
