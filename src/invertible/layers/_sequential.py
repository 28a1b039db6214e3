"""Composition of layers: `Sequential` (a Python loop) and `ScannedSequential`."""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._abstract import AbstractInvertible, AbstractNonSubmersive, AbstractSubmersive
from .._checks import layer_name

# A gradient transform of `invertible.grad` marks a chain with a rule that replaces
# its `__call__` (a `jax.custom_vjp`, or per-layer checkpoints). Unmarked chains are
# plain compositions. The rule is an ordinary (non-array, so static under
# `eqx.filter_jit`) leaf rather than a static field: a marked chain then has the
# treedef of an unmarked one, and `eqx.combine(marked_trainable, unmarked_frozen)`
# still works, as Equinox users expect.
Rule = Callable[["Sequential | ScannedSequential", Array], Array]


def _describe(layers: Sequence[Any], predicate) -> str:
    return ", ".join(
        f"{i}: {layer_name(layer)}"
        for i, layer in enumerate(layers)
        if predicate(layer)
    )


class Sequential(eqx.Module):
    """A chain of layers applied one after another, `y = f_L(... f_1(x))`.

    Behaves like `eqx.nn.Sequential` (indexing, slicing, `len`, iteration) and is
    submersive (invertible) when all its layers are. It is also the unit that the
    transforms of `invertible.grad` differentiate by their method.

    Layers may be any `AbstractSubmersive`, `AbstractInvertible` or
    `AbstractNonSubmersive`; nested `Sequential`s are flattened.
    """

    layers: tuple[Any, ...]
    rule: Rule | None = eqx.field(default=None, repr=False)

    def __init__(self, layers: Sequence[Any], *, rule: Rule | None = None):
        """**Arguments:**

        - `layers`: the layers, first applied first. Must not be empty.
        - `rule`: used by `invertible.grad`; leave it out.
        """
        flat = []
        for layer in layers:
            if isinstance(layer, Sequential):
                flat.extend(layer.layers)
            else:
                flat.append(layer)
        if not flat:
            raise ValueError("Sequential: `layers` is empty; give at least one layer.")
        bad = _describe(flat, lambda layer: not callable(layer))
        if bad:
            raise TypeError(f"Sequential: these layers are not callable: {bad}.")
        classes = [
            f"{i}: {c.__name__}" for i, c in enumerate(flat) if isinstance(c, type)
        ]
        if classes:
            raise TypeError(
                f"Sequential: these layers are classes, not layers: "
                f"{', '.join(classes)}. Instantiate them, e.g. "
                "`invertible.LeakyReLU()`."
            )
        self.layers = tuple(flat)
        self.rule = rule

    def __call__(
        self, x: Float[Array, "..."], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "..."]:
        if self.rule is not None:
            return self.rule(self, x)
        for layer in self.layers:
            x = layer(x)
        return x

    @property
    def is_submersive(self) -> bool:
        """Whether every layer is submersive (`inverse_jvp` needs no fragments)."""
        return all(_is_submersive(layer) for layer in self.layers)

    @property
    def is_invertible(self) -> bool:
        """Whether every layer is invertible, so that `inverse` exists."""
        return all(_is_invertible(layer) for layer in self.layers)

    def inverse(self, y: Float[Array, "..."]) -> Float[Array, "..."]:
        """The inverse of the chain. Raises `TypeError` if a layer is not invertible."""
        bad = _describe(self.layers, lambda layer: not _is_invertible(layer))
        if bad:
            raise TypeError(
                f"Sequential.inverse: these layers have no `inverse`: {bad}. Only "
                "chains of `AbstractInvertible` layers can be inverted."
            )
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y

    def inverse_jvp(
        self,
        x: Float[Array, "..."],
        ct_x: Float[Array, "..."],
        fragments: Sequence[PyTree[Array] | None] | None = None,
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        """The vijp of the whole chain, layer by layer.

        **Arguments:**

        - `x`, `ct_x`: the chain's input and its cotangent.
        - `fragments`: one entry per layer, the fragment for each
          `AbstractNonSubmersive` layer and `None` elsewhere. Needed only when the
          chain holds non-submersive layers.

        **Returns:**

        `(y, ct_y)` with `y == self(x)` and `vjp(self, x)(ct_y) == ct_x`.
        """
        if fragments is None:
            bad = _describe(self.layers, lambda layer: not _is_submersive(layer))
            if bad:
                raise ValueError(
                    f"Sequential.inverse_jvp: these layers are not submersive and need "
                    f"their fragments: {bad}. Pass `fragments`, one per layer."
                )
            fragments = (None,) * len(self.layers)
        if len(fragments) != len(self.layers):
            raise ValueError(
                f"Sequential.inverse_jvp: got {len(fragments)} fragments for "
                f"{len(self.layers)} layers."
            )
        for layer, fragment in zip(self.layers, fragments, strict=True):
            if isinstance(layer, AbstractNonSubmersive):
                x, ct_x = layer.inverse_jvp(x, ct_x, fragment)
            else:
                x, ct_x = _inverse_jvp(layer, x, ct_x)
        return x, ct_x

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return Sequential(self.layers[index])
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Any]:
        yield from self.layers


def _leading_length(stacked: PyTree) -> int:
    lengths = {
        leaf.shape[0] if leaf.ndim else None
        for leaf in jax.tree.leaves(eqx.filter(stacked, eqx.is_array))
    }
    if not lengths:
        raise ValueError(
            "ScannedSequential: `layers` holds no arrays, so there is no layer axis "
            "to scan over. Repeat a parameter-free layer with `Sequential([layer] * "
            "depth)`."
        )
    if len(lengths) != 1 or None in lengths:
        raise ValueError(
            "ScannedSequential: every array of `layers` must carry the same leading "
            f"(layer) axis; found leading sizes {sorted(map(str, lengths))}. Build "
            "the stack with `eqx.filter_vmap(make_layer)(keys)`."
        )
    return lengths.pop()


class ScannedSequential(eqx.Module):
    """A chain of `L` identical layers with stacked parameters, run by `lax.scan`.

    Compile time and program size do not grow with depth. Build the stack with
    Equinox's idiom:

    ```python
    keys = jax.random.split(key, depth)
    make = lambda k: invertible.AdditiveCoupling(eqx.nn.MLP(2, 2, 16, 1, key=k))
    chain = invertible.ScannedSequential(eqx.filter_vmap(make)(keys))
    ```

    Indexing gives one layer, slicing a shorter `ScannedSequential`.
    """

    layers: Any
    length: int = eqx.field(static=True)
    rule: Rule | None = eqx.field(default=None, repr=False)

    def __init__(self, layers: Any, *, rule: Rule | None = None):
        """**Arguments:**

        - `layers`: one layer whose array leaves carry a leading axis of length `L`
          (from `eqx.filter_vmap`).
        - `rule`: used by `invertible.grad`; leave it out.
        """
        if isinstance(layers, Sequential | ScannedSequential):
            raise TypeError(
                "ScannedSequential: `layers` must be one stacked layer, not a chain."
            )
        if not callable(layers):
            raise TypeError(f"ScannedSequential: {layer_name(layers)} is not callable.")
        self.layers = layers
        self.length = _leading_length(layers)
        if self.length == 0:
            raise ValueError(
                "ScannedSequential: the stack is empty (its layer axis has length "
                "0); give at least one layer."
            )
        self.rule = rule

    def __call__(
        self, x: Float[Array, "..."], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "..."]:
        if self.rule is not None:
            return self.rule(self, x)
        dynamic, static = eqx.partition(self.layers, eqx.is_array)

        def step(x, params):
            return eqx.combine(params, static)(x), None

        return jax.lax.scan(step, x, dynamic)[0]

    @property
    def is_submersive(self) -> bool:
        """Whether the layer is submersive."""
        return _is_submersive(self.layers)

    @property
    def is_invertible(self) -> bool:
        """Whether the layer is invertible."""
        return _is_invertible(self.layers)

    def inverse(self, y: Float[Array, "..."]) -> Float[Array, "..."]:
        """The inverse of the chain; `TypeError` if the layer is not invertible."""
        if not self.is_invertible:
            raise TypeError(
                f"ScannedSequential.inverse: {layer_name(self.layers)} has no "
                "`inverse`; only stacks of `AbstractInvertible` layers can be inverted."
            )
        dynamic, static = eqx.partition(self.layers, eqx.is_array)

        def step(y, params):
            return eqx.combine(params, static).inverse(y), None

        return jax.lax.scan(step, y, dynamic, reverse=True)[0]

    def inverse_jvp(
        self, x: Float[Array, "..."], ct_x: Float[Array, "..."]
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        """The vijp of the whole chain. See `Sequential.inverse_jvp`."""
        if not self.is_submersive:
            raise ValueError(
                f"ScannedSequential.inverse_jvp: {layer_name(self.layers)} is not "
                "submersive; its fragments are handled by `invertible.grad.mixed_grad`."
            )
        dynamic, static = eqx.partition(self.layers, eqx.is_array)

        def step(carry, params):
            return _inverse_jvp(eqx.combine(params, static), *carry), None

        return jax.lax.scan(step, (x, ct_x), dynamic)[0]

    def __getitem__(self, index: int | slice) -> Any:
        dynamic, static = eqx.partition(self.layers, eqx.is_array)
        picked = jax.tree.map(lambda leaf: leaf[index], dynamic)
        if isinstance(index, slice):
            return ScannedSequential(eqx.combine(picked, static))
        return eqx.combine(picked, static)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.length):
            yield self[i]


def _is_submersive(layer: Any) -> bool:
    if isinstance(layer, Sequential | ScannedSequential):
        return layer.is_submersive
    return isinstance(layer, AbstractSubmersive)


def _is_invertible(layer: Any) -> bool:
    if isinstance(layer, Sequential | ScannedSequential):
        return layer.is_invertible
    return isinstance(layer, AbstractInvertible)


def _inverse_jvp(layer: Any, x: Array, ct_x: Array) -> tuple[Array, Array]:
    if isinstance(layer, AbstractSubmersive | Sequential | ScannedSequential):
        return layer.inverse_jvp(x, ct_x)
    raise TypeError(
        f"{layer_name(layer)} is not an `invertible.AbstractSubmersive`, so it has no "
        "`inverse_jvp`. Wrap an invertible module in `invertible.SolvedInverseJVP`, or "
        "subclass `AbstractSubmersive` and write one."
    )
