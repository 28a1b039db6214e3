"""Invertible, right-invertible and fragmental layers, and their composition."""

from ._activation import LeakyReLU as LeakyReLU
from ._coupling import AdditiveCoupling as AdditiveCoupling
from ._sequential import (
    ScannedSequential as ScannedSequential,
    Sequential as Sequential,
)
