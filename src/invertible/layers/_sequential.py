"""Chains: `Sequential` (a tuple of layers) and `ScannedSequential` (a stack)."""

from collections.abc import Iterator, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._abstract import AbstractChain
from .._carry import (
    Carry,
    inverse,
    inverse_jvp,
    is_chain,
    is_invertible,
    is_stateful,
    is_submersive,
    needs_fragment,
)
from .._checks import layer_name
from .._layout import AbstractLayout, Scanned, Unrolled
from .._method import AbstractMethod
from .._run import run_chain

_sentinel = object()


def _describe(layers: Sequence[Any], predicate) -> str:
    return ", ".join(
        f"{i}: {layer_name(layer)}"
        for i, layer in enumerate(layers)
        if predicate(layer)
    )


def _check_method(owner: str, method) -> None:
    if method is not None and not isinstance(method, AbstractMethod):
        raise TypeError(
            f"{owner}: `method` must be a method of `invertible.grad` (e.g. "
            f"`invertible.grad.Mixed()`) or None, got {type(method).__name__}."
        )


class _Chain(AbstractChain):
    """What both chains share: calling, inverting and the vijp, through the layout."""

    def _start(self, x, state, key, condition, log_det: bool) -> Carry:
        stateful = self.is_stateful()
        if stateful and state is _sentinel:
            raise TypeError(
                f"{layer_name(self)} holds stateful layers "
                f"({_describe(self.layout.layer_types(), is_stateful)}): call it as "
                "`chain(x, state)`, with the `eqx.nn.State` from "
                "`eqx.nn.make_with_state`."
            )
        state = None if state is _sentinel else state
        start = jnp.zeros((), jnp.result_type(x)) if log_det else None
        return Carry(x, start, key, state, condition)

    def is_stateful(self) -> bool:
        """Whether some layer is stateful (Equinox's `StatefulLayer` protocol)."""
        return any(map(is_stateful, self.layout.layer_types()))

    def __call__(
        self,
        x: Float[Array, "..."],
        state: Any = _sentinel,
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
    ) -> Any:
        """**Arguments:**

        - `x`: one input example.
        - `state`: an `equinox.nn.State`, for chains of stateful layers (then the
          chain returns `(y, state)`).
        - `key`: a random key, or `None`; layer `i` gets `fold_in(key, i)`.
        - `condition`: passed to every layer that takes a `condition` (conditional
          flows), or `None`.

        **Returns:**

        The output `y`, or `(y, state)` when a state was passed.
        """
        out = run_chain(self, self._start(x, state, key, condition, log_det=False))
        return out.x if state is _sentinel else (out.x, out.state)

    def forward_and_log_det(
        self,
        x: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
    ) -> tuple[Float[Array, "..."], Float[Array, ""]]:
        """The output and the sum of the layers' log-determinants.

        **Arguments:**

        - `x`, `key`, `condition`: as for `__call__`.

        **Returns:**

        `(y, log_det)` with `log_det = log |det ∂y/∂x|`, a scalar; gradient
        transforms differentiate the pair by their method.
        """
        self._require(
            "forward_and_log_det",
            lambda layer: callable(getattr(layer, "forward_and_log_det", None)),
            "log-determinant (`forward_and_log_det`)",
            "Invertible layers (`AbstractInvertible`) and `FactorOut` have one; a "
            "flow can hold only those.",
        )
        out = run_chain(self, self._start(x, _sentinel, key, condition, log_det=True))
        return out.x, out.log_det

    @property
    def is_submersive(self) -> bool:
        """Whether every layer is submersive (`inverse_jvp` needs no fragments)."""
        return is_submersive(self)

    @property
    def is_invertible(self) -> bool:
        """Whether every layer is invertible, so that `inverse` exists."""
        return is_invertible(self)

    def _require(self, what: str, has, lacking: str, advice: str) -> None:
        """A `TypeError` for `what` naming the layers for which `has` is false."""
        bad = _describe(self.layout.layer_types(), lambda layer: not has(layer))
        if bad:
            raise TypeError(
                f"{layer_name(self)}.{what}: these layers have no {lacking}: {bad}. "
                f"{advice}"
            )

    def _inverted(self, y, key, condition, log_det: bool) -> Carry:
        self._require(
            "inverse_and_log_det" if log_det else "inverse",
            is_invertible,
            "`inverse`",
            "Only chains of `AbstractInvertible` layers can be inverted.",
        )
        start = jnp.zeros((), jnp.result_type(y)) if log_det else None
        return self.layout.scan(
            lambda c, layer, index: inverse(layer, c, index),
            Carry(y, start, key, None, condition),
            reverse=True,
        )

    def inverse(
        self,
        y: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
    ) -> Float[Array, "..."]:
        """The inverse of the chain. Raises `TypeError` if a layer is not
        invertible."""
        return self._inverted(y, key, condition, log_det=False).x

    def inverse_and_log_det(
        self,
        y: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
    ) -> tuple[Float[Array, "..."], Float[Array, ""]]:
        """The input and the inverse's log-det (minus the forward one)."""
        out = self._inverted(y, key, condition, log_det=True)
        return out.x, out.log_det

    def inverse_jvp(
        self,
        x: Float[Array, "..."],
        ct_x: Float[Array, "..."],
        fragments: PyTree | None = None,
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        """The vijp of the whole chain, layer by layer.

        **Arguments:**

        - `x`, `ct_x`: the chain's input and its cotangent.
        - `fragments`: for chains holding non-submersive layers, one entry per layer
          (a tuple for `Sequential`, `None` for submersive layers): the fragment of
          each `AbstractNonSubmersive` layer.
        - `key`, `condition`: as for `__call__`.

        **Returns:**

        `(y, ct_y)` with `y == self(x)` and `vjp(self, x)(ct_y) == ct_x`.
        """
        return self._vijp(x, ct_x, None, fragments, key, condition)[::2]

    def inverse_jvp_and_log_det(
        self,
        x: Float[Array, "..."],
        ct_x: Float[Array, "..."],
        ct_log_det: Float[Array, ""],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
    ) -> tuple[Float[Array, "..."], Float[Array, ""], Float[Array, "..."]]:
        """The vijp of the chain with its log-det (see
        `AbstractSubmersive.inverse_jvp_and_log_det`), layer by layer.

        **Returns:**

        `(y, log_det, ct_y)`.
        """
        return self._vijp(x, ct_x, ct_log_det, None, key, condition)

    def _vijp(self, x, ct_x, ct_log_det, fragments, key, condition):
        layout = self.layout
        if fragments is None:
            bad = _describe(layout.layer_types(), needs_fragment)
            if bad:
                raise ValueError(
                    f"{layer_name(self)}.inverse_jvp: these layers are not submersive "
                    f"and need their fragments: {bad}. Pass `fragments`, one per layer."
                )
        elif isinstance(layout, Unrolled) and len(fragments) != len(layout):
            raise ValueError(
                f"{layer_name(self)}.inverse_jvp: got {len(fragments)} fragments for "
                f"{len(layout)} layers."
            )

        def step(state, layer, index):
            carry, ct = state
            piece = None if fragments is None else layout.read(fragments, index)
            return inverse_jvp(layer, carry, ct, ct_log_det, piece, index=index)

        start = None if ct_log_det is None else jnp.zeros((), jnp.result_type(x))
        carry, ct_y = layout.scan(step, (Carry(x, start, key, None, condition), ct_x))
        return carry.x, carry.log_det, ct_y


class Sequential(_Chain, eqx.nn.StatefulLayer):
    """A chain of layers applied one after another, `y = f_L(... f_1(x))`.

    Behaves like `eqx.nn.Sequential` (indexing, slicing, `len`, iteration, keys,
    state) and is submersive (invertible) when all its layers are. It is also the
    unit that the transforms of `invertible.grad` differentiate by their method.

    Layers may be any `AbstractSubmersive`, `AbstractInvertible` or
    `AbstractNonSubmersive`; nested `Sequential`s are flattened, and a nested
    `ScannedSequential` runs as a chain of its own (by the same method).
    """

    layers: tuple[Any, ...]
    method: AbstractMethod | None = eqx.field(default=None, repr=False)

    def __init__(self, layers: Sequence[Any], *, method: AbstractMethod | None = None):
        """**Arguments:**

        - `layers`: the layers, first applied first. Must not be empty.
        - `method`: how gradient transforms (and `eqx.filter_grad`) differentiate
          this chain, e.g. `invertible.grad.Mixed()`; by default the method of the
          transform in use (backprop under `eqx.filter_grad`).
        """
        flat = []
        for layer in layers:
            if isinstance(layer, Sequential):
                flat.extend(layer.layers)
            else:
                flat.append(layer)
        if not flat:
            raise ValueError("Sequential: `layers` is empty; give at least one layer.")
        classes = [
            f"{i}: {c.__name__}" for i, c in enumerate(flat) if isinstance(c, type)
        ]
        if classes:
            raise TypeError(
                f"Sequential: these layers are classes, not layers: "
                f"{', '.join(classes)}. Instantiate them, e.g. "
                "`invertible.LeakyReLU()`."
            )
        bad = _describe(flat, lambda layer: not callable(layer))
        if bad:
            raise TypeError(f"Sequential: these layers are not callable: {bad}.")
        _check_method("Sequential", method)
        self.layers = tuple(flat)
        self.method = method

    @property
    def layout(self) -> AbstractLayout:
        return Unrolled(self.layers)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return Sequential(self.layers[index], method=self.method)
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


class ScannedSequential(_Chain):
    """A chain of `L` identical layers (or blocks) with stacked parameters, run by
    `lax.scan`.

    Compile time and program size do not grow with depth. Build the stack with
    Equinox's idiom:

    ```python
    keys = jax.random.split(key, depth)
    make = lambda k: invertible.AdditiveCoupling(eqx.nn.MLP(2, 2, 16, 1, key=k))
    chain = invertible.ScannedSequential(eqx.filter_vmap(make)(keys))
    ```

    A block of several layers is stacked the same way, as an
    `invertible.Sequential` (e.g. an attention coupling and an MLP coupling):
    `eqx.filter_vmap(lambda k: invertible.Sequential([...]))(keys)`; its layers
    then run in order at every step.

    Indexing gives one stack entry (a layer, or a block), slicing a shorter
    `ScannedSequential`.
    """

    layers: Any
    length: int = eqx.field(static=True)
    method: AbstractMethod | None = eqx.field(default=None, repr=False)

    def __init__(self, layers: Any, *, method: AbstractMethod | None = None):
        """**Arguments:**

        - `layers`: one layer, or an `invertible.Sequential` block, whose array
          leaves carry a leading axis of length `L` (from `eqx.filter_vmap`).
        - `method`: as for `invertible.Sequential`.
        """
        if isinstance(layers, ScannedSequential):
            raise TypeError(
                "ScannedSequential: `layers` must be one stacked layer or block, not "
                "a ScannedSequential."
            )
        if isinstance(layers, Sequential) and any(map(is_chain, layers.layers)):
            raise TypeError(
                "ScannedSequential: a stacked block cannot hold a ScannedSequential."
            )
        if not callable(layers):
            raise TypeError(f"ScannedSequential: {layer_name(layers)} is not callable.")
        _check_method("ScannedSequential", method)
        self.layers = layers
        self.length = _leading_length(layers)
        if self.length == 0:
            raise ValueError(
                "ScannedSequential: the stack is empty (its layer axis has length "
                "0); give at least one layer."
            )
        self.method = method
        stateful = _describe(self.layout.layer_types(), is_stateful)
        if stateful:
            raise TypeError(
                f"ScannedSequential: stateful layers ({stateful}) cannot be stacked "
                "(an `eqx.nn.State` holds one entry per layer). Put them in an "
                "`invertible.Sequential`."
            )

    @property
    def layout(self) -> AbstractLayout:
        size = len(self.layers.layers) if isinstance(self.layers, Sequential) else 1
        return Scanned(self.layers, self.length, size)

    def __getitem__(self, index: int | slice) -> Any:
        dynamic, static = eqx.partition(self.layers, eqx.is_array)
        picked = jax.tree.map(lambda leaf: leaf[index], dynamic)
        if isinstance(index, slice):
            return ScannedSequential(eqx.combine(picked, static), method=self.method)
        return eqx.combine(picked, static)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.length):
            yield self[i]
