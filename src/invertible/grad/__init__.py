"""Gradient transforms that drop in where `eqx.filter_grad` stands.

`mixed_grad` and `moonwalk_grad` (and their `value_and_grad` forms) give exactly
the gradients of `eqx.filter_grad` with far less memory. The comparison methods of
the paper share the calling convention.
"""

from ._api import (
    checkpointed_grad as checkpointed_grad,
    mixed_grad as mixed_grad,
    mixed_value_and_grad as mixed_value_and_grad,
    moonwalk_grad as moonwalk_grad,
    moonwalk_value_and_grad as moonwalk_value_and_grad,
    reversible_grad as reversible_grad,
)
from ._forward import (
    forward_grad as forward_grad,
    projected_forward_grad as projected_forward_grad,
)
