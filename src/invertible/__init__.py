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
from ._check_layer import check_layer as check_layer
from ._vijp import (
    SolvedInverseJVP as SolvedInverseJVP,
    SolvedRightInverseJVP as SolvedRightInverseJVP,
    default_solver as default_solver,
    solve_vijp as solve_vijp,
    vijp as vijp,
)
from .layers import (
    ActNorm as ActNorm,
    AdditiveCoupling as AdditiveCoupling,
    AffineCoupling as AffineCoupling,
    Asinh as Asinh,
    AvgPool2d as AvgPool2d,
    ChannelPad as ChannelPad,
    FactorOut as FactorOut,
    Invertible1x1Conv as Invertible1x1Conv,
    InvertibleLinear as InvertibleLinear,
    KeepChannels as KeepChannels,
    LeakyReLU as LeakyReLU,
    Permute as Permute,
    ReLU as ReLU,
    ScannedSequential as ScannedSequential,
    Sequential as Sequential,
    Squeeze as Squeeze,
    SurjectiveLinear as SurjectiveLinear,
)

__version__ = "0.1.0"
