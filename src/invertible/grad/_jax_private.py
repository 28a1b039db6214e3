"""The one place that relies on JAX beyond its documented API.

Whether the innermost transformation being traced is `vmap` (and its axis name)
has no public query. `jax.extend.core.find_top_trace` returns the current trace;
a `vmap`'s trace carries `axis_data`. If a JAX release changes this, `innermost_vmap`
warns once and reports no `vmap`: gradients stay exact, but a chain `vmap`-ed
inside the loss then keeps a `(batch, parameters)` array per layer (JAX batches
the backward pass and sums the parameter cotangents after it). The test suite
checks that the batched path is taken (`tests/test_batching.py`).
"""

import warnings
from typing import Any

import jax.extend.core as jex_core

_warned = False


def innermost_vmap() -> tuple[bool, Any]:
    """`(True, axis_name)` if the innermost transformation is `jax.vmap` (the axis
    name is an opaque object when none was given), else `(False, None)`."""
    global _warned
    try:
        trace = jex_core.find_top_trace(())
        is_vmap = type(trace).__name__ == "BatchTrace"
        return (True, trace.axis_data.name) if is_vmap else (False, None)
    except (AttributeError, TypeError) as error:  # pragma: no cover (JAX changed)
        if not _warned:
            _warned = True
            warnings.warn(
                "invertible: cannot tell whether a chain is directly under `vmap` "
                f"with this JAX ({error}); chains `vmap`-ed inside the loss run per "
                "example, with much more memory. Please report this.",
                RuntimeWarning,
                stacklevel=3,
            )
        return False, None
