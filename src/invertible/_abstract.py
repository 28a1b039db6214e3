"""The three kinds of layer: invertible, submersive (right-invertible), and neither."""

import abc

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray, PyTree


class AbstractSubmersive(eqx.Module):
    """A layer `y = f(x)` whose Jacobian `J = ∂y/∂x` is onto (full row rank).

    For every input cotangent `ct_x` there is then exactly one output cotangent `ct_y`
    with `ct_y J = ct_x`: the *vector-inverse-Jacobian product* (vijp). This is what
    lets Moonwalk carry gradients forwards through the network.

    Invertible layers (square, invertible `J`) are submersive; so are right-invertible
    ones whose output is smaller than their input (average pooling, dropping
    channels, a surjective linear map).

    Subclasses implement `__call__` and `inverse_jvp`. Layers act on a single example
    (no batch axis), channel-first for images; use `jax.vmap` for a batch.
    """

    @abc.abstractmethod
    def __call__(
        self, x: Float[Array, "..."], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "..."]:
        """**Arguments:**

        - `x`: one input example.
        - `key`: ignored; keyword-only. Accepted, as by every Equinox layer, so that
          layers sit in `eqx.nn.Sequential`, which passes one. The gradient
          transforms call `layer(x)`: a layer must not need a key.

        **Returns:**

        The output `y = f(x)`.
        """

    @abc.abstractmethod
    def inverse_jvp(
        self, x: Float[Array, "..."], ct_x: Float[Array, "..."]
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        """The vector-inverse-Jacobian product.

        **Arguments:**

        - `x`: the input of the layer.
        - `ct_x`: a cotangent of the input, the shape of `x`.

        **Returns:**

        A pair `(y, ct_y)`: the output `y == self(x)`, and the unique output cotangent
        with `jax.vjp(self, x)[1](ct_y) == (ct_x,)`.
        """


class AbstractInvertible(AbstractSubmersive):
    """A bijective layer: a submersive layer with an `inverse`."""

    @abc.abstractmethod
    def inverse(self, y: Float[Array, "..."]) -> Float[Array, "..."]:
        """**Arguments:**

        - `y`: an output of the layer.

        **Returns:**

        The input `x` with `self(x) == y`.
        """


class AbstractNonSubmersive(eqx.Module):
    """A layer whose Jacobian is *not* onto: it loses part of the output cotangent.

    Zero-padding, channel expansion and plain ReLU are examples: `vjp` maps several
    output cotangents to the same input cotangent, so the vijp is not unique. Moonwalk
    handles such a layer by *fragmental checkpointing*: during the reverse pass that
    computes the first input cotangent, it records the **fragment**, the part of `ct_y`
    that the vjp discards, and hands it back to `inverse_jvp` in the forward sweep.

    Subclasses implement `__call__`, `fragment` and `inverse_jvp`.
    """

    @abc.abstractmethod
    def __call__(
        self, x: Float[Array, "..."], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "..."]:
        """**Arguments:**

        - `x`: one input example.
        - `key`: ignored; keyword-only. Accepted, as by every Equinox layer, so that
          layers sit in `eqx.nn.Sequential`, which passes one. The gradient
          transforms call `layer(x)`: a layer must not need a key.

        **Returns:**

        The output `y = f(x)`.
        """

    @abc.abstractmethod
    def fragment(
        self, x: Float[Array, "..."], ct_y: Float[Array, "..."]
    ) -> PyTree[Float[Array, "..."]]:
        """The part of an output cotangent that `vjp` loses. Linear in `ct_y`.

        **Arguments:**

        - `x`: the input of the layer.
        - `ct_y`: a cotangent of the output.

        **Returns:**

        The fragment: whatever `inverse_jvp` needs, besides `ct_x`, to rebuild `ct_y`.
        """

    @abc.abstractmethod
    def inverse_jvp(
        self,
        x: Float[Array, "..."],
        ct_x: Float[Array, "..."],
        fragment: PyTree[Float[Array, "..."]],
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        """Rebuild the output cotangent from the input cotangent and the fragment.

        **Arguments:**

        - `x`: the input of the layer.
        - `ct_x`: the input cotangent, `vjp(ct_y)`.
        - `fragment`: `self.fragment(x, ct_y)`.

        **Returns:**

        A pair `(y, ct_y)` with `y == self(x)`.
        """
