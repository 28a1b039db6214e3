"""`check_layer`: test a layer's `inverse_jvp`, `inverse` and `fragment` by autodiff."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._carry import is_invertible, is_submersive, needs_fragment
from ._checks import check_float, layer_name

# Default (rtol, atol) by the itemsize of the input's dtype. An output passes when
# max|got - want| <= atol + rtol * max|want|: loose enough for the round-off of a
# reasonably conditioned layer, far too tight for a wrong formula.
_TOLERANCES = {8: (1e-7, 1e-10), 4: (1e-3, 1e-6), 2: (3e-2, 1e-3)}


def _random_like(key: PRNGKeyArray, tree: PyTree[Array]) -> PyTree[Array]:
    leaves, treedef = jax.tree.flatten(tree)
    keys = jr.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            jr.normal(k, leaf.shape, leaf.dtype)
            for k, leaf in zip(keys, leaves, strict=True)
        ],
    )


def _form(tree: PyTree[Array]) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [(jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves]


@eqx.filter_jit
def _evaluate(layer: Any, x: Array, key: PRNGKeyArray) -> dict[str, tuple]:
    """Pairs `(got, want)` for every property, computed under one `jit`."""
    k1, k2 = jr.split(key)
    y, vjp = jax.vjp(layer, x)
    ct_y = _random_like(k1, y)
    (ct_x,) = vjp(ct_y)
    pairs = {}
    if needs_fragment(layer):
        fragment = layer.fragment(x, ct_y)
        y_out, ct_y_out = layer.inverse_jvp(x, ct_x, fragment)
        # Linearity of the fragment in ct_y, on a random combination.
        other = _random_like(k2, y)
        combined = jax.tree.map(lambda a, b: 2.0 * a - 3.0 * b, ct_y, other)
        want = jax.tree.map(
            lambda a, b: 2.0 * a - 3.0 * b, fragment, layer.fragment(x, other)
        )
        pairs["fragment is linear in ct_y"] = (layer.fragment(x, combined), want)
    else:
        y_out, ct_y_out = layer.inverse_jvp(x, ct_x)
    pairs["inverse_jvp output y == layer(x)"] = (y_out, y)
    pairs["inverse_jvp cotangent ct_y (from ct_x = vjp(ct_y))"] = (ct_y_out, ct_y)
    if _form(ct_y_out) == _form(y):
        (ct_x_again,) = vjp(ct_y_out)
        pairs["vjp(inverse_jvp ct_y) == ct_x"] = (ct_x_again, ct_x)
    if is_invertible(layer):
        pairs["inverse(layer(x)) == x"] = (layer.inverse(y), x)
    return pairs


def _worst(got: PyTree[Array], want: PyTree[Array]) -> tuple[float, float, str]:
    """`(max |got - want|, max |want|, problem)`; `problem` is "" if comparable."""
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    if jax.tree.structure(got) != jax.tree.structure(want):
        return (
            0.0,
            0.0,
            (
                f"structure {jax.tree.structure(got)}, expected "
                f"{jax.tree.structure(want)}"
            ),
        )
    error, scale = 0.0, 0.0
    for a, b in zip(got_leaves, want_leaves, strict=True):
        if a.shape != b.shape or a.dtype != b.dtype:
            return (
                0.0,
                0.0,
                (f"shape/dtype {a.shape}/{a.dtype}, expected {b.shape}/{b.dtype}"),
            )
        if a.size:
            error = max(error, float(jnp.max(jnp.abs(a - b))))
            scale = max(scale, float(jnp.max(jnp.abs(b))))
    return error, scale, ""


def check_layer(
    layer: Any,
    x: Float[Array, "..."],
    *,
    key: PRNGKeyArray | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> dict[str, float]:
    """Check a layer's `inverse_jvp` (and `inverse`, `fragment`) against autodiff.

    Run it on your own layer before training with it. At the input `x`, with a
    random output cotangent `ct_y` and `ct_x = vjp(ct_y)` (so that right-invertible
    layers are covered too), it checks that

    - `inverse_jvp(x, ct_x)` returns `y == layer(x)` and gives back `ct_y`, and that
      the vjp of its `ct_y` is `ct_x`;
    - `inverse(layer(x)) == x`, for an invertible layer;
    - for an `AbstractNonSubmersive` layer, that `inverse_jvp(x, ct_x,
      fragment(x, ct_y))` gives back `ct_y` and that `fragment` is linear in
      `ct_y`.

    A value passes when `max|got - want| <= atol + rtol * max|want|`.

    **Arguments:**

    - `layer`: an `invertible.AbstractSubmersive` (invertible or right-invertible)
      or `invertible.AbstractNonSubmersive` layer, or a submersive `Sequential`.
    - `x`: one input example, floating point. Use float64
      (`jax.config.update("jax_enable_x64", True)`) for the most telling check.
    - `key`: a `jax.random.PRNGKey` for the random cotangents; `PRNGKey(0)` if left
      out.
    - `rtol`, `atol`: tolerances; by default by the dtype of `x`: `1e-7, 1e-10` in
      float64, `1e-3, 1e-6` in float32, `3e-2, 1e-3` in 16 bits.

    **Returns:**

    A dict from each property checked to its relative error,
    `max|got - want| / max|want|`.

    **Raises:**

    `AssertionError`, naming the layer, the property and the worst error, if a
    property fails; `TypeError` if `layer` has no `inverse_jvp` to check.
    """
    name = layer_name(layer)
    if not (is_submersive(layer) or needs_fragment(layer)):
        raise TypeError(
            f"check_layer: {name} is neither an `invertible.AbstractSubmersive` nor "
            "an `invertible.AbstractNonSubmersive` layer (nor a submersive chain), so "
            "it has no `inverse_jvp` to check. Wrap an invertible module in "
            "`invertible.SolvedInverseJVP`, or check a chain's layers one by one."
        )
    check_float(layer, x)
    default_rtol, default_atol = _TOLERANCES.get(
        jnp.dtype(x.dtype).itemsize, (1e-3, 1e-6)
    )
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    key = jr.key(0) if key is None else key
    report, failures = {}, []
    for what, (got, want) in _evaluate(layer, x, key).items():
        error, scale, problem = _worst(got, want)
        if problem:
            failures.append(f"  - {what}: wrong {problem}")
            continue
        report[what] = error / scale if scale else error
        if error > atol + rtol * scale:
            failures.append(
                f"  - {what}: worst error {error:.3g} (relative {report[what]:.3g}) "
                f"exceeds atol + rtol * {scale:.3g} with rtol={rtol:g}, atol={atol:g}"
            )
    if failures:
        raise AssertionError(
            f"check_layer: {name} fails at input shape {x.shape} ({x.dtype}):\n"
            + "\n".join(failures)
        )
    return report
