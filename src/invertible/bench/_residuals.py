"""The gradient methods compared on the residual kinds (`_models.RESIDUALS`), shared
by `memory` and `time`: every transform is `transform(loss) -> grad(model, x)`,
built for a chain of `L` couplings.
"""

import math
from collections.abc import Callable

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp

from .. import grad as G
from ._models import Residual

STRATEGIES = ("residuals", "bits", "inputs", "recompute", "rebuild")
BINOMIAL = "binomial (Equinox internal)"
SQRT = "checkpointed (√L segments)"
# Every table's rows, in order.
METHODS = (
    "backprop",
    "checkpointed",
    SQRT,
    BINOMIAL,
    "reversible",
    "mixed",
    *(f"mixed ({s})" for s in STRATEGIES),
)


def binomial_checkpoints(entries: int) -> int:
    """Checkpoints of the binomial baseline: about √n for a scan of `n` steps (as
    Equinox's own default, which is proportional to √n)."""
    return max(1, round(math.sqrt(entries)))


def segment_length(layers: int, residual: Residual) -> int:
    """√L segments, `L` counted in couplings, as stack entries (a transformer
    block is two couplings): the same segments in both chain forms."""
    return max(1, round(math.sqrt(layers) / residual.per_entry))


def binomial_grad(checkpoints: int) -> Callable:
    """A bench-only baseline: backprop through `equinox.internal.scan(...,
    kind="checkpointed")` over the stacked layers of a `ScannedSequential`, which
    places `checkpoints` checkpoints by the binomial (treeverse) schedule. `loss`
    must be `mean(vmap(model)(x) ** 2)` (`squared_loss`): the chain is run here,
    step by step on the whole batch, instead of by the chain itself."""

    def transform(loss):
        def scanned_loss(model, x):
            dynamic, static = eqx.partition(model.layers, eqx.is_array)

            def step(h, params):
                return jax.vmap(eqx.combine(params, static))(h), None

            h, _ = eqxi.scan(
                step, x, dynamic, kind="checkpointed", checkpoints=checkpoints
            )
            return jnp.mean(h**2)

        return eqx.filter_grad(scanned_loss)

    return transform


def _forced(strategy: str) -> Callable:
    return lambda loss: G.filter_grad(loss, method=G.Mixed(strategy=strategy))


def applies(method: str, residual: Residual, scanned: bool) -> bool:
    """Whether `method` is measured on this kind and chain form: the binomial
    baseline needs a stack, and the "bits" strategy ReLU units (elsewhere it is
    the "residuals" strategy)."""
    if method == BINOMIAL:
        return scanned
    if method == "mixed (bits)":
        return residual.relu
    return True


def transforms(
    names, residual: Residual, layers: int, scanned: bool
) -> dict[str, Callable]:
    """The transforms of `names` that apply to this chain of `layers` couplings."""
    entries = layers // residual.per_entry if scanned else layers
    every = {
        "backprop": eqx.filter_grad,
        "checkpointed": G.checkpointed_grad,
        SQRT: lambda loss: G.checkpointed_grad(
            loss, segment_length=segment_length(layers, residual)
        ),
        BINOMIAL: binomial_grad(binomial_checkpoints(entries)),
        "reversible": G.reversible_grad,
        "mixed": G.mixed_grad,
        **{f"mixed ({s})": _forced(s) for s in STRATEGIES},
    }
    return {n: every[n] for n in names if applies(n, residual, scanned)}


def example_input(residual: Residual, size: dict, key: int = 0):
    shape = (size["batch"], *residual.example(size))
    return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def describe(residual: Residual, size: dict) -> str:
    """The kind and its sizes, for table titles."""
    shape = "x".join(map(str, (size["batch"], *residual.example(size))))
    extra = {k: v for k, v in size.items() if k in ("width", "hidden", "heads")}
    details = ", ".join(f"{k} {v}" for k, v in extra.items())
    return f"{residual.label}, input {shape}" + (f", {details}" if details else "")
