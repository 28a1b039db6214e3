"""Methods as values, and how a chain (or a lone layer) finds the one to use.

A *method* says how a chain is differentiated: `invertible.grad.Mixed(...)`,
`Moonwalk(...)`, `Reversible()`, `Checkpointed(...)`, or one of your own. It is a
small frozen, hashable configuration, called as `method(layout, carry) -> carry`.

A chain finds its method in this order:

1. while a method is running layers (inside its phase 1, sweep or recomputation),
   none: layers and inner chains are plain functions there;
2. the chain's own `method` field, set by a transform of `invertible.grad` on the
   chains of the model it differentiates, or by the user;
3. the method of the transform being traced (a context variable), which covers
   chains built inside the loss (`chain[:4]`, `Sequential(list(chain.layers))`),
   chains in other arguments, and invertible layers called outside any chain;
4. none: plain composition, differentiated by ordinary reverse mode.

The method field is a pytree *leaf* (a frozen dataclass, not an `eqx.Module`):
under `eqx.filter_jit` it is static, and a marked chain keeps the tree structure of
an unmarked one, so that `eqx.combine(marked_trainable, unmarked_frozen)` works.
"""

import abc
import contextlib
import contextvars
import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._carry import Carry
    from ._layout import AbstractLayout


class AbstractMethod(abc.ABC):
    """How a chain is differentiated. Subclasses are frozen dataclasses.

    `__call__(layout, carry)` returns the chain's output carry, computed so that
    reverse-mode autodiff of it gives the method's gradients (usually through a
    `jax.custom_vjp`).
    """

    @abc.abstractmethod
    def __call__(self, layout: "AbstractLayout", carry: "Carry") -> "Carry":
        """**Arguments:**

        - `layout`: the chain's layers (`invertible.grad.Unrolled` or `Scanned`).
        - `carry`: the chain's input.

        **Returns:**

        The chain's output carry.
        """

    def handles(self, layer: Any) -> bool:
        """Whether the method can differentiate `layer` (in a chain, or alone)."""
        return True


@dataclasses.dataclass
class Usage:
    """What the chains and layers called under a transform did (for its warnings)."""

    name: str | None = None  # the public transform's, for messages
    chains: int = 0
    lone_layers: dict[str, int] = dataclasses.field(default_factory=dict)
    unhandled: dict[str, int] = dataclasses.field(default_factory=dict)
    collect: Any = None  # the report collector of `invertible.grad`, if any


_DEFAULT: contextvars.ContextVar = contextvars.ContextVar(
    "invertible_default_method", default=None
)
_RUNNING: contextvars.ContextVar = contextvars.ContextVar(
    "invertible_method_running", default=False
)


@contextlib.contextmanager
def default_method(method: AbstractMethod | None, usage: Usage | None = None):
    """Within this block, chains without a method of their own (and lone
    invertible layers) are differentiated by `method`."""
    token = _DEFAULT.set(None if method is None else (method, usage or Usage()))
    try:
        yield
    finally:
        _DEFAULT.reset(token)


@contextlib.contextmanager
def running():
    """Within this block a method is running layers: they are plain functions."""
    token = _RUNNING.set(True)
    try:
        yield
    finally:
        _RUNNING.reset(token)


def method_for(own: AbstractMethod | None) -> tuple[AbstractMethod | None, Usage]:
    """The method a chain (whose own method is `own`) or a lone layer (`None`)
    runs now, and the usage record to update."""
    if _RUNNING.get():
        return None, Usage()
    default = _DEFAULT.get()
    usage = Usage() if default is None else default[1]
    if own is not None:
        return own, usage
    return (None if default is None else default[0]), usage


def is_running() -> bool:
    return _RUNNING.get()


def transform_name(default: str) -> str:
    """The name of the public transform being traced (for messages), else
    `default`."""
    active = _DEFAULT.get()
    name = None if active is None else active[1].name
    return default if name is None else name
