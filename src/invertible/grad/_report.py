"""The drift report: figures measured in the backward pass, brought out of it.

A chain's backward pass (a `custom_vjp`) can only return cotangents. So, with
`report=True`, every chain differentiated by a method gets one more input, a
*tap*: zeros whose cotangent its backward pass sets to its figures (per-segment
drift, repairs, the rebuild's mismatch, per-layer vijp errors). The transform
traces the loss once abstractly to learn which chains it calls and what each will
report, then differentiates with respect to the model and the taps together.
A chain called several times (in a Python loop) reports each call; a chain in the
body of a `lax.scan` reports the sum of its calls' figures.
"""

import contextlib
import contextvars
import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

_COLLECTING: contextvars.ContextVar = contextvars.ContextVar(
    "invertible_report", default=None
)


class ChainReport(eqx.Module):
    """What one chain's backward pass measured.

    - `drift`: per segment, the relative difference between the swept cotangent at
      the segment's end and the exact one there (the next anchor, or the chain's
      output cotangent).
    - `repaired`: per segment, 1 where the segment drifted past the tolerance and
      was redone exactly (or poisoned, with `on_drift="nan"`).
    - `rebuild_mismatch`: per segment, for a rebuilt phase 1, the relative error of
      the rebuilt segment start (a segment past the tolerance was recomputed), or
      `None`.
    - `vijp_error`: with `check_vijp=True`, per layer, the relative difference
      between the swept cotangent and the vjp of the next one (how far the layer's
      `inverse_jvp` is from inverting its vjp), or `None`.
    - `layers`: the class name of each layer (static).
    - `method`: the method's class name (static).
    """

    drift: Array
    repaired: Array
    rebuild_mismatch: Array | None
    vijp_error: Array | None
    layers: tuple[str, ...] = eqx.field(static=True)
    method: str = eqx.field(static=True)


class Report(eqx.Module):
    """The figures of every chain differentiated by a method, as returned by the
    transforms with `report=True`. A pytree: it works under `jit`, `vmap` and in a
    `lax.scan` training loop.
    """

    chains: tuple[ChainReport, ...]

    @property
    def drift(self) -> Array:
        """The largest drift over all chains and segments (0 without chains)."""
        values = [jnp.max(c.drift) for c in self.chains if c.drift.size]
        return jnp.max(jnp.stack(values)) if values else jnp.zeros(())

    @property
    def repaired(self) -> Array:
        """How many segments were redone (or poisoned), over all chains."""
        values = [jnp.sum(c.repaired) for c in self.chains]
        return jnp.sum(jnp.stack(values)) if values else jnp.zeros(())

    @property
    def vijp_error(self) -> Array:
        """The largest vijp error measured (`check_vijp=True`; 0 otherwise)."""
        values = [
            jnp.max(c.vijp_error) for c in self.chains if c.vijp_error is not None
        ]
        return jnp.max(jnp.stack(values)) if values else jnp.zeros(())

    def worst_layer(self) -> tuple[int, int, str, float]:
        """`(chain, layer, class name, error)` of the largest vijp error, outside
        `jit` (it reads the values). Needs `check_vijp=True`."""
        best = None
        for i, chain in enumerate(self.chains):
            if chain.vijp_error is None or not chain.vijp_error.size:
                continue
            j = int(jnp.nanargmax(chain.vijp_error))
            error = float(chain.vijp_error[j])
            if best is None or not error <= best[3]:
                best = (i, j, chain.layers[j], error)
        if best is None:
            raise ValueError(
                "Report.worst_layer: no vijp errors were measured; pass "
                "`check_vijp=True` to the method."
            )
        return best


@dataclasses.dataclass
class _Collector:
    """Counts the chains a loss calls (`taps is None`), or hands them their taps."""

    taps: list | None = None
    specs: list = dataclasses.field(default_factory=list)
    position: int = 0

    def tap(self, zeros: dict, layers: tuple[str, ...], method: str):
        if self.taps is None:
            self.specs.append((jax.eval_shape(lambda: zeros), layers, method))
            return None
        if self.position >= len(self.taps):
            raise RuntimeError(
                "report=True: the loss called more chains than when it was traced "
                "first; it must call the same chains every time it is traced."
            )
        tap = self.taps[self.position]
        self.position += 1
        return tap


@contextlib.contextmanager
def collecting(taps: list | None = None):
    collector = _Collector(taps)
    token = _COLLECTING.set(collector)
    try:
        yield collector
    finally:
        _COLLECTING.reset(token)


def report_tap(zeros: dict, layers: tuple[str, ...], method: str) -> Any:
    """The tap for the chain being called, or `None` when nothing is reported."""
    collector = _COLLECTING.get()
    if collector is None:
        return None
    return collector.tap(zeros, layers, method)


def zero_taps(specs: list) -> list:
    return [jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), s) for s, _, _ in specs]


def assemble(specs: list, figures: list) -> Report:
    """The report, from the taps' cotangents."""
    chains = []
    for (_, layers, method), fig in zip(specs, figures, strict=True):
        chains.append(
            ChainReport(
                fig["drift"],
                fig["repaired"],
                fig.get("rebuild"),
                fig.get("vijp"),
                layers,
                method,
            )
        )
    return Report(tuple(chains))
