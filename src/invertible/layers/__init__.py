"""Invertible, right-invertible and fragmental layers, and their composition."""

from ._activation import Asinh as Asinh, LeakyReLU as LeakyReLU, ReLU as ReLU
from ._actnorm import ActNorm as ActNorm
from ._channels import ChannelPad as ChannelPad, KeepChannels as KeepChannels
from ._coupling import (
    AdditiveCoupling as AdditiveCoupling,
    AffineCoupling as AffineCoupling,
)
from ._factor import (
    FactorOut as FactorOut,
    standard_normal_log_density as standard_normal_log_density,
)
from ._linear import (
    Invertible1x1Conv as Invertible1x1Conv,
    InvertibleLinear as InvertibleLinear,
)
from ._permute import Permute as Permute
from ._pool import AvgPool2d as AvgPool2d
from ._reshape import Squeeze as Squeeze
from ._sequential import (
    ScannedSequential as ScannedSequential,
    Sequential as Sequential,
)
from ._surjective import SurjectiveLinear as SurjectiveLinear
