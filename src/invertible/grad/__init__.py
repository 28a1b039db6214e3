"""Gradient transforms that drop in where `eqx.filter_grad` stands.

`mixed_grad` and `moonwalk_grad` (and their `value_and_grad` forms) give exactly
the gradients of `eqx.filter_grad` with far less memory. The comparison methods of
the paper share the calling convention. Each transform differentiates the chains
by a *method*, a small configuration (`Mixed`, `Moonwalk`, `Reversible`,
`Checkpointed`, `Backprop`) that `filter_grad(fun, method=...)` takes directly and
that a chain may also carry itself (`invertible.Sequential(layers, method=...)`).
"""

from .._carry import Carry as Carry
from .._layout import Scanned as Scanned, Unrolled as Unrolled
from .._method import AbstractMethod as AbstractMethod
from ._api import (
    checkpointed_grad as checkpointed_grad,
    filter_grad as filter_grad,
    filter_value_and_grad as filter_value_and_grad,
    mixed_grad as mixed_grad,
    mixed_value_and_grad as mixed_value_and_grad,
    moonwalk_grad as moonwalk_grad,
    moonwalk_value_and_grad as moonwalk_value_and_grad,
    reversible_grad as reversible_grad,
)
from ._checkpointed import Backprop as Backprop, Checkpointed as Checkpointed
from ._dispatch import (
    can_rebuild as can_rebuild,
    keep_inputs as keep_inputs,
    pack_bits as pack_bits,
)
from ._forward import (
    forward_grad as forward_grad,
    projected_forward_grad as projected_forward_grad,
)
from ._mixed import Mixed as Mixed
from ._moonwalk import Moonwalk as Moonwalk
from ._report import ChainReport as ChainReport, Report as Report
from ._reversible import Reversible as Reversible
from ._rule import AbstractRuleMethod as AbstractRuleMethod, Cotangents as Cotangents
