"""The vijp as a function, and a matrix-free fallback by linear solve.

`vijp(f, x, ct_x)` uses a layer's analytic `inverse_jvp` when it has one and
otherwise solves `ct_y J = ct_x` (that is, `Jᵀ ct_yᵀ = ct_xᵀ`) with lineax, touching
`J` only through `jax.vjp` and its transpose. `SolvedInverseJVP` and
`SolvedRightInverseJVP` give a user's module without an `inverse_jvp` the solved one,
so that it can stand in a chain.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._abstract import AbstractInvertible, AbstractSubmersive
from ._carry import is_chain, is_submersive, needs_fragment
from ._checks import layer_name


def default_solver(dtype: Any, *, square: bool) -> lx.AbstractLinearSolver:
    """The solver `solve_vijp` uses when none is given.

    **Arguments:**

    - `dtype`: the floating dtype of the cotangents; it sets the tolerances.
    - `square`: whether the Jacobian is square (`y.size == x.size`).

    **Returns:**

    For a square Jacobian, `lineax.GMRES` (Krylov space of up to 100 vectors before
    a restart) with `rtol = atol = 1e-12` in float64 and `1e-5` in float32. For a
    wide (right-invertible) one, least squares: `lineax.LSMR` with `1e-13` in
    float64, and `lineax.Normal(lineax.CG(...))` with `1e-5` otherwise. The
    tolerances are relative to the largest entry of `ct_x`. A tolerance below what
    the Jacobian's conditioning allows makes the solve fail loudly (stagnation)
    rather than return a poor answer: pass a looser solver for ill-conditioned
    layers.
    """
    dtype = jnp.dtype(dtype)
    double = dtype.itemsize >= 8
    if square:
        tol = 1e-12 if double else 1e-5 if dtype.itemsize == 4 else 3e-2
        return lx.GMRES(rtol=tol, atol=tol, restart=100)
    if double:
        # LSMR does not square the condition number, but (lineax 0.1) fails on
        # float32 when float64 is enabled; CG on the normal equations is the
        # fallback for lower precisions.
        return lx.LSMR(rtol=1e-13, atol=1e-13)
    tol = 1e-5 if dtype.itemsize == 4 else 3e-2
    return lx.Normal(lx.CG(rtol=tol, atol=tol))


def solve_vijp(
    f: Callable[[PyTree[Array]], PyTree[Array]],
    x: PyTree[Float[Array, "..."]],
    ct_x: PyTree[Float[Array, "..."]],
    *,
    solver: lx.AbstractLinearSolver | None = None,
    throw: bool = True,
) -> tuple[PyTree[Array], PyTree[Array]]:
    """The vijp of any function, by a matrix-free linear solve.

    Solves `ct_y J = ct_x` for `ct_y`, with `J = ∂f/∂x` at `x` used only through
    `jax.vjp` (and its transpose, `jax.linear_transpose`, for least squares). Inputs
    and outputs may be arrays of any shape, or pytrees of them: they are flattened.
    The cost is one solve by an iterative method, usually many vjps: prefer an
    analytic `inverse_jvp` where one exists.

    **Arguments:**

    - `f`: the function, `y = f(x)`; its Jacobian must be onto (square and
      invertible, or wide with full row rank) at `x`.
    - `x`: the point.
    - `ct_x`: the input cotangent, the structure of `x`.
    - `solver`: a `lineax.AbstractLinearSolver` for the flattened system
      `Jᵀ c = ct_x`; by default `invertible.default_solver` (GMRES when `J` is
      square, LSMR when it is wide), with tolerances by dtype.
    - `throw`: passed to `lineax.linear_solve`: whether a failed solve (e.g. a
      singular Jacobian) raises.

    **Returns:**

    `(y, ct_y)` with `y == f(x)`. For a wide Jacobian, `ct_y` is the least-squares
    solution; it is exact when `ct_x` is a vjp of `f`.
    """
    y, vjp_fn = jax.vjp(f, x)
    flat_x, _ = ravel_pytree(x)
    flat_y, unravel_y = ravel_pytree(y)
    n, m = flat_x.size, flat_y.size
    if m > n:
        raise ValueError(
            f"solve_vijp: {layer_name(f)} maps {n} numbers to {m}, so its Jacobian "
            "is not onto and the vijp is not unique. A non-submersive layer needs a "
            "fragment: subclass `invertible.AbstractNonSubmersive`."
        )
    dtype = jnp.result_type(flat_x.dtype, flat_y.dtype)

    def transposed_jacobian(flat_ct_y):
        (ct,) = vjp_fn(unravel_y(flat_ct_y))
        return ravel_pytree(ct)[0].astype(dtype)

    operator = lx.FunctionLinearOperator(
        transposed_jacobian, jax.ShapeDtypeStruct((m,), dtype)
    )
    if solver is None:
        solver = default_solver(dtype, square=m == n)
    flat_ct_x = ravel_pytree(ct_x)[0]
    if flat_ct_x.size != n:
        raise ValueError(
            f"solve_vijp: `ct_x` must have the structure of `x` ({n} numbers), got "
            f"{flat_ct_x.size} numbers."
        )
    # The system is linear: solve it for `ct_x / scale` so that the solvers'
    # absolute tolerances act relative to the size of `ct_x`.
    flat_ct_x = flat_ct_x.astype(dtype)
    size = jnp.max(jnp.abs(flat_ct_x), initial=0)
    scale = jnp.where(size > 0, size, 1).astype(dtype)
    solution = lx.linear_solve(operator, flat_ct_x / scale, solver, throw=throw)
    return y, unravel_y(solution.value * scale)


def vijp(
    f: Callable[[Array], Array],
    x: Float[Array, "..."],
    ct_x: Float[Array, "..."],
    *,
    solver: lx.AbstractLinearSolver | None = None,
) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    """The vector-inverse-Jacobian product: the `ct_y` with `vjp(f, x)(ct_y) == ct_x`.

    - An `AbstractSubmersive` layer, or a `Sequential`/`ScannedSequential` of them:
      its analytic `inverse_jvp`.
    - A `Sequential` holding plain callables too: layer by layer, analytic where
      possible and solved (see `solve_vijp`) elsewhere.
    - Any other callable: `solve_vijp`, a matrix-free linear solve.
    - An `AbstractNonSubmersive` layer (or a chain holding one): a `ValueError`,
      since its vijp is not unique without the fragment; call its
      `inverse_jvp(x, ct_x, fragment)`.

    **Arguments:**

    - `f`: the layer or function.
    - `x`: its input.
    - `ct_x`: a cotangent of the input, the shape of `x`.
    - `solver`: the `lineax` solver for the solved case (see `solve_vijp`).

    **Returns:**

    `(y, ct_y)` with `y == f(x)`.
    """
    if needs_fragment(f):
        raise ValueError(
            f"vijp: {layer_name(f)} is not submersive: its vjp loses part of the "
            "output cotangent, so the vijp needs the fragment. Call "
            "`inverse_jvp(x, ct_x, fragment)` with `fragment = layer.fragment(x, "
            "ct_y)`, or use `invertible.grad.mixed_grad`, which records fragments."
        )
    if is_submersive(f):
        return f.inverse_jvp(x, ct_x)
    if is_chain(f):
        # Plain callables too: layer by layer, analytic where possible.
        def step(state, layer, index):
            return vijp(layer, *state, solver=solver)

        return f.layout.scan(step, (x, ct_x))
    return solve_vijp(f, x, ct_x, solver=solver)


def _require_callable(wrapper: str, module: Any) -> None:
    if not callable(module):
        raise TypeError(f"{wrapper}: {layer_name(module)} is not callable.")
    if needs_fragment(module):
        raise TypeError(
            f"{wrapper}: {layer_name(module)} is not submersive; its vijp needs a "
            "fragment, which no solve can supply."
        )


class SolvedInverseJVP(AbstractInvertible):
    """An invertible module with a solved vijp, for use in a chain.

    Wraps any callable module with an `inverse` method (an `eqx.Module` of your own,
    say) whose Jacobian is square and invertible. `__call__` and `inverse` forward
    to it; `inverse_jvp` solves `ct_y J = ct_x` matrix-free with lineax (see
    `invertible.solve_vijp`): correct, but an iterative solve per call. Write an
    analytic `inverse_jvp` (subclass `invertible.AbstractInvertible`) when speed
    matters, and test it with `invertible.check_layer`.

    For a right-invertible module (output smaller, no `inverse`) use
    `invertible.SolvedRightInverseJVP`.
    """

    module: Callable[[Array], Array]
    solver: lx.AbstractLinearSolver | None

    def __init__(
        self,
        module: Callable[[Array], Array],
        *,
        solver: lx.AbstractLinearSolver | None = None,
    ):
        """**Arguments:**

        - `module`: the invertible module, with `__call__` and `inverse`.
        - `solver`: a `lineax` solver for `Jᵀ c = ct_x`; by default GMRES with
          tolerances by dtype (see `invertible.default_solver`).
        """
        _require_callable("SolvedInverseJVP", module)
        if not callable(getattr(module, "inverse", None)):
            raise TypeError(
                f"SolvedInverseJVP: {layer_name(module)} has no `inverse` method. A "
                "right-invertible module (onto Jacobian, output smaller than input) "
                "goes in `invertible.SolvedRightInverseJVP` instead."
            )
        self.module = module
        self.solver = solver

    def __call__(
        self, x: Float[Array, "..."], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "..."]:
        return self.module(x)

    def inverse(
        self, y: Float[Array, "..."], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "..."]:
        return self.module.inverse(y)  # pyright: ignore

    def inverse_jvp(
        self,
        x: Float[Array, "..."],
        ct_x: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        return solve_vijp(self.module, x, ct_x, solver=self.solver)


class SolvedRightInverseJVP(AbstractSubmersive):
    """A right-invertible module with a solved vijp, for use in a chain.

    Wraps any callable module whose Jacobian is onto (full row rank, output no
    larger than input), e.g. a learned downsampling. `inverse_jvp` finds the
    unique `ct_y` with `ct_y J = ct_x` by matrix-free least squares (LSMR by
    default; see `invertible.solve_vijp`). There is no `inverse`: for an invertible
    module use `invertible.SolvedInverseJVP`.
    """

    module: Callable[[Array], Array]
    solver: lx.AbstractLinearSolver | None

    def __init__(
        self,
        module: Callable[[Array], Array],
        *,
        solver: lx.AbstractLinearSolver | None = None,
    ):
        """**Arguments:**

        - `module`: the right-invertible module.
        - `solver`: a `lineax` solver for `Jᵀ c = ct_x`; by default LSMR (GMRES if
          the Jacobian turns out square) with tolerances by dtype.
        """
        _require_callable("SolvedRightInverseJVP", module)
        self.module = module
        self.solver = solver

    def __call__(
        self, x: Float[Array, "..."], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "..."]:
        return self.module(x)

    def inverse_jvp(
        self,
        x: Float[Array, "..."],
        ct_x: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        return solve_vijp(self.module, x, ct_x, solver=self.solver)
