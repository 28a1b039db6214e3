"""`check_layer`: test a layer's `inverse_jvp`, `inverse`, `fragment` and log-dets by
autodiff, at several inputs."""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._abstract import DENSE_LOG_DET_LIMIT, AbstractInvertible, AbstractSubmersive
from ._carry import is_chain, is_invertible, is_submersive, needs_fragment
from ._checks import check_float, layer_name

# Default (rtol, atol) by the itemsize of the input's dtype. An output passes when
# max|got - want| <= atol + rtol * max|want|: loose enough for the round-off of a
# reasonably conditioned layer, far too tight for a wrong formula.
_TOLERANCES = {8: (1e-7, 1e-10), 4: (1e-3, 1e-6), 2: (3e-2, 1e-3)}


def random_like(key: PRNGKeyArray, tree: PyTree[Array]) -> PyTree[Array]:
    """Standard normal arrays shaped like the leaves of `tree`."""
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


def has_log_det(layer: Any) -> bool:
    """Whether `forward_and_log_det` is defined: an invertible layer, or a
    submersive one that overrides it (such as `invertible.FactorOut`)."""
    if is_chain(layer):
        return all(map(has_log_det, layer.layout.layer_types()))
    if isinstance(layer, AbstractInvertible):
        return True
    own = getattr(type(layer), "forward_and_log_det", None)
    return isinstance(layer, AbstractSubmersive) and (
        own is not AbstractSubmersive.forward_and_log_det
    )


def _analytic_log_det(layer: Any) -> bool:
    return type(layer).forward_and_log_det is not AbstractInvertible.forward_and_log_det


def _pairs(layer: Any, x: Array, key: PRNGKeyArray) -> dict[str, tuple]:
    """Pairs `(got, want)` for every property at one input."""
    k1, k2, k3 = jr.split(key, 3)
    y, vjp = jax.vjp(layer, x)
    ct_y = random_like(k1, y)
    (ct_x,) = vjp(ct_y)
    pairs = {}
    if needs_fragment(layer):
        fragment = layer.fragment(x, ct_y)
        y_out, ct_y_out = layer.inverse_jvp(x, ct_x, fragment)
        # Linearity of the fragment in ct_y, on a random combination.
        other = random_like(k2, y)
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
    if has_log_det(layer) and (
        _analytic_log_det(layer) or x.size <= DENSE_LOG_DET_LIMIT
    ):
        _log_det_pairs(layer, x, y, k3, pairs)
    return pairs


def _log_det_pairs(layer, x, y, key, pairs) -> None:
    (y_ld, log_det), vjp = jax.vjp(layer.forward_and_log_det, x)
    pairs["forward_and_log_det output y == layer(x)"] = (y_ld, y)
    ct_y = random_like(key, y)
    ct_log_det = jr.normal(jr.fold_in(key, 1), (), log_det.dtype)
    (ct_x,) = vjp((ct_y, ct_log_det))
    y_out, log_det_out, ct_y_out = layer.inverse_jvp_and_log_det(x, ct_x, ct_log_det)
    pairs["inverse_jvp_and_log_det log_det"] = (log_det_out, log_det)
    pairs["inverse_jvp_and_log_det ct_y (augmented vijp)"] = (ct_y_out, ct_y)
    if is_invertible(layer):
        x_back, inverse_log_det = layer.inverse_and_log_det(y)
        pairs["inverse_and_log_det == (x, -log_det)"] = (
            (x_back, inverse_log_det),
            (x, -log_det),
        )
        if x.size <= DENSE_LOG_DET_LIMIT and _analytic_log_det(layer):
            flat = x.reshape(-1)
            jacobian = jax.jacfwd(lambda f: layer(f.reshape(x.shape)).reshape(-1))(flat)
            pairs["log_det == slogdet(dense Jacobian)"] = (
                log_det,
                jnp.linalg.slogdet(jacobian)[1],
            )


@eqx.filter_jit
def _evaluate(layer: Any, xs: Array, key: PRNGKeyArray) -> dict[str, Any]:
    """The pairs at every input of `xs` (stacked on axis 0), under one `jit`;
    for each property, per input, `(max |got - want|, max |want|)`, or a string
    describing a mismatch of structure."""
    keys = jr.split(key, xs.shape[0])
    pairs = jax.vmap(lambda x, k: _pairs(layer, x, k))(xs, keys)
    return {what: _errors(*pair) for what, pair in pairs.items()}


def _errors(got: PyTree[Array], want: PyTree[Array]):
    if jax.tree.structure(got) != jax.tree.structure(want):
        return (
            f"structure {jax.tree.structure(got)}, expected {jax.tree.structure(want)}"
        )
    errors, scales = [], []
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        if a.shape != b.shape or a.dtype != b.dtype:
            return (
                f"shape/dtype {a.shape[1:]}/{a.dtype}, expected {b.shape[1:]}/{b.dtype}"
            )
        if a.size:
            axes = tuple(range(1, a.ndim))
            errors.append(jnp.max(jnp.abs(a - b), axis=axes))
            scales.append(jnp.max(jnp.abs(b), axis=axes))
    if not errors:
        return None
    return jnp.max(jnp.stack(errors), axis=0), jnp.max(jnp.stack(scales), axis=0)


def check_layer(
    layer: Any,
    x: Float[Array, "..."],
    *,
    key: PRNGKeyArray | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    scales: Sequence[float] = (1.0, 0.1, 3.0),
    random_inputs: bool = True,
) -> dict[str, float]:
    """Check a layer's `inverse_jvp` (and `inverse`, `fragment`, log-dets) against
    autodiff, at several inputs.

    Run it on your own layer before training with it. At each input, with a
    random output cotangent `ct_y` and `ct_x = vjp(ct_y)` (so that right-invertible
    layers are covered too), it checks that

    - `inverse_jvp(x, ct_x)` returns `y == layer(x)` and gives back `ct_y`, and that
      the vjp of its `ct_y` is `ct_x`;
    - `inverse(layer(x)) == x`, for an invertible layer;
    - for an `AbstractNonSubmersive` layer, that `inverse_jvp(x, ct_x,
      fragment(x, ct_y))` gives back `ct_y` and that `fragment` is linear in
      `ct_y`;
    - for a layer with a log-determinant: that `forward_and_log_det` returns
      `layer(x)`, that `inverse_jvp_and_log_det` inverts the vjp of the pair
      `(y, log_det)`, that `inverse_and_log_det` returns `(x, -log_det)` and, for
      inputs of at most 1024 entries, that an analytic `log_det` equals
      `slogdet` of the dense Jacobian.

    The inputs are `x` and a standard normal draw of its shape, each times every
    entry of `scales`: a wrong vijp often hides at one point (near zero, or
    where an activation does not bend) and shows at another. A value passes when
    `max|got - want| <= atol + rtol * max|want|` at every input.

    **Arguments:**

    - `layer`: an `invertible.AbstractSubmersive` (invertible or right-invertible)
      or `invertible.AbstractNonSubmersive` layer, or a submersive `Sequential`.
    - `x`: one input example, floating point. Use float64
      (`jax.config.update("jax_enable_x64", True)`) for the most telling check.
    - `key`: a `jax.random.PRNGKey` for the random inputs and cotangents;
      `PRNGKey(0)` if left out.
    - `rtol`, `atol`: tolerances; by default by the dtype of `x`: `1e-7, 1e-10` in
      float64, `1e-3, 1e-6` in float32, `3e-2, 1e-3` in 16 bits.
    - `scales`: the factors applied to each input.
    - `random_inputs`: whether to add the random input (turn it off for a layer
      defined on part of the space only, and pass inputs from that part).

    **Returns:**

    A dict from each property checked to its worst relative error over the inputs,
    `max|got - want| / max|want|`.

    **Raises:**

    `AssertionError`, naming the layer, the property, the input and the worst
    error, if a property fails; `TypeError` if `layer` has no `inverse_jvp` to
    check.
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
    draw, key = jr.split(key)
    bases = [("x", x)]
    if random_inputs:
        bases.append(("a standard normal input", jr.normal(draw, x.shape, x.dtype)))
    inputs = [(f"{what} times {s:g}", base * s) for what, base in bases for s in scales]
    xs = jnp.stack([value for _, value in inputs])
    report, failures = {}, []
    for what, result in _evaluate(layer, xs, key).items():
        if result is None:
            continue
        if isinstance(result, str):
            failures.append(f"  - {what}: wrong {result}")
            continue
        errors, sizes = (jnp.asarray(r).tolist() for r in result)
        relative = [e / s if s else e for e, s in zip(errors, sizes, strict=True)]
        report[what] = max(relative)
        for (where, _), error, size in zip(inputs, errors, sizes, strict=True):
            if not error <= atol + rtol * size:  # NaN fails too
                failures.append(
                    f"  - {what}, at {where}: worst error {error:.3g} (relative "
                    f"{error / size if size else error:.3g}) exceeds atol + rtol * "
                    f"{size:.3g} with rtol={rtol:g}, atol={atol:g}"
                )
                break
    if failures:
        raise AssertionError(
            f"check_layer: {name} fails at input shape {x.shape} ({x.dtype}):\n"
            + "\n".join(failures)
        )
    return report
