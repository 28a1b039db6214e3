"""Running a chain, or a lone layer, by the method it finds (see `_method.py`)."""

from typing import Any

import jax.numpy as jnp
import jax.random as jr

from ._carry import Carry, is_chain, is_stateful, replace
from ._layout import Unrolled
from ._method import AbstractMethod, method_for, running


def _parts(layout) -> list:
    """A `Sequential` holding `ScannedSequential`s runs as consecutive chains: the
    inner stacks, and `Unrolled` runs of the layers between them."""
    if not isinstance(layout, Unrolled) or not any(map(is_chain, layout.layers)):
        return [layout]
    parts, run = [], []
    for layer in layout.layers:
        if is_chain(layer):
            parts += [Unrolled(tuple(run))] if run else []
            parts.append(layer.layout)
            run = []
        else:
            run.append(layer)
    return parts + ([Unrolled(tuple(run))] if run else [])


def run_chain(chain: Any, carry: Carry) -> Carry:
    """A chain's output carry: by its method if it finds one, else plainly. Each part
    of a `Sequential` split at inner stacks gets key `fold_in(key, part)`."""
    method, usage = method_for(chain.method)
    parts = _parts(chain.layout)
    if len(parts) == 1:
        return _run_part(method, usage, parts[0], carry)
    key = carry.key
    for i, part in enumerate(parts):
        if key is not None:
            carry = replace(carry, key=jr.fold_in(key, i))
        carry = _run_part(method, usage, part, carry)
    return replace(carry, key=key)


def _run_part(method: AbstractMethod | None, usage, layout, carry: Carry) -> Carry:
    if method is None:
        with running():
            return layout.apply(carry)
    usage.chains += 1
    with running():
        return method(layout, carry)


def run_alone(layer, method: AbstractMethod, x, *args, log_det: bool, **kwargs):
    """`layer(x, ...)` (or `layer.forward_and_log_det(x, ...)`) as a chain of one
    layer, differentiated by `method`. The layer gets exactly the key it was given."""
    state = None
    if is_stateful(layer) and not log_det:
        state = args[0] if args else kwargs.pop("state")
        args = args[1:]
    if args:
        raise TypeError(
            f"{type(layer).__name__}: unexpected positional arguments {args!r}; "
            "pass `key` and `condition` by keyword."
        )
    key = kwargs.pop("key", None)
    condition = kwargs.pop("condition", None)
    if kwargs:
        raise TypeError(
            f"{type(layer).__name__}: unexpected keyword arguments {sorted(kwargs)} "
            "for a layer differentiated by a method of `invertible.grad`."
        )
    start = jnp.zeros((), x.dtype) if log_det else None
    carry = Carry(x, start, key, state, condition)
    with running():
        out = method(Unrolled((layer,), fold_keys=False), carry)
    if log_det:
        return out.x, out.log_det
    return (out.x, out.state) if state is not None else out.x
