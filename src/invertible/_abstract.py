"""The three kinds of layer (invertible, submersive, neither) and chains of them."""

import abc
import functools as ft
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._checks import layer_name
from ._method import AbstractMethod, method_for
from ._signatures import only_taken

if TYPE_CHECKING:
    from ._layout import AbstractLayout


# The dense-Jacobian log-det fallback forms an `n x n` matrix: for small inputs only.
DENSE_LOG_DET_LIMIT = 1024


class _Lone:
    """Runs a layer called outside any chain, under a transform of `invertible.grad`,
    as a chain of one layer differentiated by the transform's method: invertible
    layers in `eqx.nn.Sequential`, lists or dicts get the method too."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("__call__", "forward_and_log_det"):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_runs_alone", False):
                setattr(cls, name, _run_alone_when_due(fn, log_det=name != "__call__"))


def _run_alone_when_due(fn, *, log_det: bool):
    @ft.wraps(fn)
    def call(self, x, *args, **kwargs):
        method, usage = method_for(None)
        # A layer without parameters (a squeeze, a padding, a fixed activation)
        # keeps no more under backprop than under any method: leave it plain.
        if method is None or not _has_parameters(self):
            return fn(self, x, *args, **kwargs)
        name = type(self).__name__
        if not method.handles(self):
            usage.unhandled[name] = usage.unhandled.get(name, 0) + 1
            return fn(self, x, *args, **kwargs)
        from ._run import run_alone  # which imports this module

        usage.lone_layers[name] = usage.lone_layers.get(name, 0) + 1
        return run_alone(self, method, x, *args, log_det=log_det, **kwargs)

    call._runs_alone = True
    return call


def _has_parameters(layer) -> bool:
    return any(map(eqx.is_inexact_array, jax.tree.leaves(layer)))


class AbstractSubmersive(_Lone, eqx.Module):
    """A layer `y = f(x)` whose Jacobian `J = ∂y/∂x` is onto (full row rank).

    For every input cotangent `ct_x` there is then exactly one output cotangent `ct_y`
    with `ct_y J = ct_x`: the *vector-inverse-Jacobian product* (vijp). This is what
    lets Moonwalk carry gradients forwards through the network.

    Invertible layers (square, invertible `J`) are submersive; so are right-invertible
    ones whose output is smaller than their input (average pooling, dropping
    channels, a surjective linear map).

    Subclasses implement `__call__` and `inverse_jvp`. Layers act on a single example
    (no batch axis), channel-first for images; use `jax.vmap` for a batch. Every
    method takes a keyword-only `key` (the chain passes each layer its own, the same
    in every recomputation); layers that use a condition take it as the keyword
    `condition`.
    """

    @abc.abstractmethod
    def __call__(
        self, x: Float[Array, "..."], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "..."]:
        """**Arguments:**

        - `x`: one input example.
        - `key`: a random key for layers that need one (e.g. a residual with
          dropout); keyword-only, as in every Equinox layer. A chain passes layer
          `i` the key `jax.random.fold_in(key, i)`.

        **Returns:**

        The output `y = f(x)`.
        """

    @abc.abstractmethod
    def inverse_jvp(
        self,
        x: Float[Array, "..."],
        ct_x: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        """The vector-inverse-Jacobian product.

        **Arguments:**

        - `x`: the input of the layer.
        - `ct_x`: a cotangent of the input, the shape of `x`.
        - `key`: the key `__call__` gets, for layers that use one.

        **Returns:**

        A pair `(y, ct_y)`: the output `y == self(x)`, and the unique output cotangent
        with `jax.vjp(self, x)[1](ct_y) == (ct_x,)`.
        """

    def forward_and_log_det(
        self, x: Float[Array, "..."], **kwargs
    ) -> tuple[Float[Array, "..."], Float[Array, ""]]:
        """The output and the log-determinant of the Jacobian, for flows.

        A submersive layer that is not a bijection has no log-determinant; a layer
        that adds a log-density instead (`invertible.FactorOut`) overrides this.

        **Raises:**

        `TypeError`, unless overridden.
        """
        raise TypeError(
            f"{layer_name(self)} is not a bijection, so it has no log-determinant. "
            "A flow's layers are invertible; to send channels to a base density "
            "use `invertible.FactorOut`."
        )

    def inverse_jvp_and_log_det(
        self,
        x: Float[Array, "..."],
        ct_x: Float[Array, "..."],
        ct_log_det: Float[Array, ""],
        **kwargs,
    ) -> tuple[Float[Array, "..."], Float[Array, ""], Float[Array, "..."]]:
        """The vijp of the augmented map `(x, a) -> (y, a + log_det(x))`.

        Its Jacobian is `[[J, 0], [∇log_det, 1]]`, so the log-det's cotangent passes
        through unchanged and `ct_y = (ct_x - ct_log_det ∇log_det) J⁻¹`. This
        default takes `∇log_det` with one extra vjp through `forward_and_log_det`;
        layers whose log-det does not depend on `x`, or that get it from the same
        computation as their vijp, override it.

        **Arguments:**

        - `x`: the input of the layer.
        - `ct_x`: a cotangent of the input.
        - `ct_log_det`: the cotangent of the accumulated log-det (a scalar).
        - `kwargs`: `key` and `condition`, as for `__call__`.

        **Returns:**

        `(y, log_det, ct_y)`.
        """
        ld_kwargs = only_taken(self, "forward_and_log_det", kwargs)
        log_det, vjp = jax.vjp(lambda x: self.forward_and_log_det(x, **ld_kwargs)[1], x)
        (through,) = vjp(ct_log_det)
        y, ct_y = self.inverse_jvp(
            x, ct_x - through, **only_taken(self, "inverse_jvp", kwargs)
        )
        return y, log_det, ct_y


class AbstractInvertible(AbstractSubmersive):
    """A bijective layer: a submersive layer with an `inverse`.

    Log-determinants (`forward_and_log_det`, `inverse_and_log_det`) come with it: a
    generic dense-Jacobian fallback for small inputs, analytic ones for the layers
    the library ships.
    """

    @abc.abstractmethod
    def inverse(
        self, y: Float[Array, "..."], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "..."]:
        """**Arguments:**

        - `y`: an output of the layer.
        - `key`: the key `__call__` got, for layers that use one.

        **Returns:**

        The input `x` with `self(x) == y`.
        """

    def forward_and_log_det(
        self, x: Float[Array, "..."], **kwargs
    ) -> tuple[Float[Array, "..."], Float[Array, ""]]:
        """The output and `log |det ∂y/∂x|` for one example.

        This default forms the dense Jacobian with `jax.jacfwd` and takes
        `jnp.linalg.slogdet`: exact, but for inputs of at most 1024 entries.
        Layers with a cheaper log-det override it.

        **Arguments:**

        - `x`: one input example.
        - `kwargs`: `key` and `condition`, as for `__call__`.

        **Returns:**

        `(y, log_det)`, `log_det` a scalar.

        **Raises:**

        `ValueError` for a larger input: implement `forward_and_log_det`.
        """
        kwargs = only_taken(self, "__call__", kwargs)
        return self(x, **kwargs), dense_log_det(self, lambda x: self(x, **kwargs), x)

    def inverse_and_log_det(
        self, y: Float[Array, "..."], **kwargs
    ) -> tuple[Float[Array, "..."], Float[Array, ""]]:
        """The input and the inverse's log-det, `-log |det ∂y/∂x|` at that input.

        **Arguments:**

        - `y`: an output of the layer.
        - `kwargs`: `key` and `condition`, as for `__call__`.

        **Returns:**

        `(x, log_det)` with `self(x) == y`.
        """
        x = self.inverse(y, **only_taken(self, "inverse", kwargs))
        ld_kwargs = only_taken(self, "forward_and_log_det", kwargs)
        return x, -self.forward_and_log_det(x, **ld_kwargs)[1]


def dense_log_det(layer, fn, x: Array) -> Array:
    """`log |det ∂fn/∂x|` from the dense Jacobian (`layer` names the error)."""
    if x.size > DENSE_LOG_DET_LIMIT:
        raise ValueError(
            f"{layer_name(layer)} has no analytic log-determinant, and the dense-"
            f"Jacobian fallback is for inputs of at most {DENSE_LOG_DET_LIMIT} "
            f"entries; got shape {x.shape}. Implement `forward_and_log_det`."
        )
    flat = x.reshape(-1)
    jacobian = jax.jacfwd(lambda f: fn(f.reshape(x.shape)).reshape(-1))(flat)
    if jacobian.shape[0] != jacobian.shape[1]:
        raise ValueError(
            f"{layer_name(layer)} maps {flat.size} numbers to {jacobian.shape[0]}: "
            "its Jacobian is not square, so there is no log-determinant."
        )
    return jnp.linalg.slogdet(jacobian)[1]


class AbstractNonSubmersive(_Lone, eqx.Module):
    """A layer whose Jacobian is *not* onto: it loses part of the output cotangent.

    Zero-padding, channel expansion and plain ReLU are examples: `vjp` maps several
    output cotangents to the same input cotangent, so the vijp is not unique. Moonwalk
    handles such a layer by *fragmental checkpointing*: during the reverse pass that
    computes the first input cotangent, it records the **fragment**, the part of `ct_y`
    that the vjp discards, and hands it back to `inverse_jvp` in the forward sweep.

    Subclasses implement `__call__`, `fragment` and `inverse_jvp`, each taking a
    keyword-only `key` as `AbstractSubmersive`'s do.
    """

    @abc.abstractmethod
    def __call__(
        self, x: Float[Array, "..."], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "..."]:
        """**Arguments:**

        - `x`: one input example.
        - `key`: a random key for layers that need one; keyword-only.

        **Returns:**

        The output `y = f(x)`.
        """

    @abc.abstractmethod
    def fragment(
        self,
        x: Float[Array, "..."],
        ct_y: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> PyTree[Float[Array, "..."]]:
        """The part of an output cotangent that `vjp` loses. Linear in `ct_y`.

        **Arguments:**

        - `x`: the input of the layer.
        - `ct_y`: a cotangent of the output.
        - `key`: the key `__call__` gets.

        **Returns:**

        The fragment: whatever `inverse_jvp`, besides `ct_x`, needs to rebuild `ct_y`.
        """

    @abc.abstractmethod
    def inverse_jvp(
        self,
        x: Float[Array, "..."],
        ct_x: Float[Array, "..."],
        fragment: PyTree[Float[Array, "..."]],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        """Rebuild the output cotangent from the input cotangent and the fragment.

        **Arguments:**

        - `x`: the input of the layer.
        - `ct_x`: the input cotangent, `vjp(ct_y)`.
        - `fragment`: `self.fragment(x, ct_y)`.
        - `key`: the key `__call__` gets.

        **Returns:**

        A pair `(y, ct_y)` with `y == self(x)`.
        """


class AbstractChain(eqx.Module):
    """A composition of layers that a method of `invertible.grad` differentiates as
    a whole: `invertible.Sequential` and `invertible.ScannedSequential`."""

    method: eqx.AbstractVar[AbstractMethod | None]

    @property
    @abc.abstractmethod
    def layout(self) -> "AbstractLayout":
        """The chain's layers, as the methods see them."""
