"""Invertible chains as [flowjax](https://github.com/danielward27/flowjax) bijections.

An optional extra (`pip install invertible[flows]`): import this module only where
flowjax is installed; `import invertible` does not need it.
"""

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

try:
    from flowjax.bijections import AbstractBijection
except ImportError as error:  # say which extra brings it
    raise ImportError(
        "invertible.flowjax needs flowjax: `pip install invertible[flows]` (or "
        "`pip install flowjax`)."
    ) from error

from ._carry import is_invertible
from ._checks import layer_name
from ._method import running


class Bijection(AbstractBijection):
    """An invertible chain (or any invertible layer) as a flowjax bijection.

    The chain maps **data to latent**, `z = chain(x)`, as a flow is trained; flowjax
    orients its bijections the other way, from the base distribution to the data,
    and evaluates densities with the inverse. So the chain's pass runs where
    flowjax asks for the inverse:

    - `inverse_and_log_det(x)` (data to latent, what `Transformed.log_prob` calls)
      is the chain's `forward_and_log_det(x)`: `(z, log |det ∂z/∂x|)`;
    - `transform_and_log_det(z)` (latent to data, for sampling) is the chain's
      `inverse_and_log_det(z)`: `(x, log |det ∂x/∂z|)`, minus the former.

    With `dist = flowjax.distributions.Transformed(base, Bijection(chain, shape))`,
    `dist.log_prob(x) = log p_base(z) + log |det ∂z/∂x|`, and a loss such as
    `-dist.log_prob(x).mean()` differentiated by a transform of `invertible.grad`
    (`mixed_grad`, `moonwalk_grad`, ...) differentiates the chain by its method,
    log-det included, with `eqx.filter_grad`'s gradients. Sampling
    (`dist.sample`) runs the chain's `inverse`. (For a chain that maps latent to
    data instead, wrap the adapter in `flowjax.bijections.Invert`.)

    The chain may change the shape of its input (`invertible.Squeeze`) but not its
    size: the latent is reshaped to `shape`, which leaves densities unchanged, so
    the base distribution has the data's shape. Every layer must be invertible;
    a multi-scale flow with `invertible.FactorOut`, whose log-det already counts
    the factored parts' densities, is not a bijection: use its
    `forward_and_log_det` directly, `log p(x) = log p_base(z) + log_det`.

    A conditional flow passes flowjax's `condition` (one vector per example, of
    shape `cond_shape`) to the chain as its `condition`. No random key reaches
    the chain (flowjax's bijections take none).
    """

    chain: Any
    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)
    latent_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        chain: Any,
        shape: Sequence[int],
        cond_shape: Sequence[int] | None = None,
    ):
        """**Arguments:**

        - `chain`: an `invertible.Sequential`, `invertible.ScannedSequential` or
          invertible layer, mapping one data example to its latent.
        - `shape`: the shape of one data example, e.g. `(C, H, W)`.
        - `cond_shape`: the shape of one example's condition, e.g. `(k,)` for a
          conditional flow; `None` for an unconditional one.

        **Raises:**

        `TypeError` if a layer of `chain` is not invertible; `ValueError` if the
        chain's latent does not have the size of its input.
        """
        if not is_invertible(chain):
            raise TypeError(
                f"invertible.flowjax.Bijection: {layer_name(chain)} is not "
                f"invertible: {_first_not_invertible(chain)} (every layer must be an "
                "`invertible.AbstractInvertible`). A multi-scale flow with "
                "`invertible.FactorOut` is not a bijection: evaluate `log p(x) = "
                "log p_base(z) + log_det` from its `forward_and_log_det` directly."
            )
        self.chain = chain
        self.shape = tuple(int(n) for n in shape)
        self.cond_shape = None if cond_shape is None else tuple(map(int, cond_shape))
        self.latent_shape = self._latent_shape()
        if math.prod(self.latent_shape) != math.prod(self.shape):
            raise ValueError(
                f"invertible.flowjax.Bijection: {layer_name(chain)} maps an input of "
                f"shape {self.shape} to a latent of shape {self.latent_shape}; a "
                "bijection keeps the size."
            )

    def _latent_shape(self) -> tuple[int, ...]:
        dtype = jnp.result_type(float)
        x = jax.ShapeDtypeStruct(self.shape, dtype)
        c = (
            None
            if self.cond_shape is None
            else jax.ShapeDtypeStruct(self.cond_shape, dtype)
        )
        # The shape only: with `running()` no gradient method is set up around it,
        # should the adapter be built inside a loss under a transform.
        with running():
            out = jax.eval_shape(lambda x, c: self.chain(x, **_condition(c)), x, c)
        return tuple(out.shape)

    def transform_and_log_det(
        self, z: Array, condition: Array | None = None
    ) -> tuple[Array, Array]:
        """Latent to data: the chain's `inverse_and_log_det`."""
        x, log_det = self.chain.inverse_and_log_det(
            z.reshape(self.latent_shape), **_condition(condition)
        )
        return x, log_det

    def inverse_and_log_det(
        self, x: Array, condition: Array | None = None
    ) -> tuple[Array, Array]:
        """Data to latent: the chain's `forward_and_log_det`, the pass that the
        transforms of `invertible.grad` differentiate by their method."""
        z, log_det = self.chain.forward_and_log_det(x, **_condition(condition))
        return z.reshape(self.shape), log_det


def _condition(condition: Array | None) -> dict:
    # Only conditional flows pass one: a lone layer's methods need not take it.
    return {} if condition is None else {"condition": condition}


def _first_not_invertible(chain) -> str:
    """Where a chain stops being invertible, for the error: `layer i (Name)`."""
    layers = chain.layout.layer_types() if hasattr(chain, "layout") else (chain,)
    for i, layer in enumerate(layers):
        if not is_invertible(layer):
            return f"layer {i} ({layer_name(layer)})"
    return "one of its layers"
