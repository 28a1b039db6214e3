"""Mixed mode: `h_0` by an input-only reverse pass, then the forward sweep.

Phase 1 shares the primal forward pass: the chain is linearised with respect to its
input alone (parameters held constant), so reverse mode keeps only what the
*input* path needs (a ReLU mask, never a layer input). Identity taps record the
anchors and fragments during that reverse pass. Phase 2 is the forward sweep.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._abstract import AbstractNonSubmersive
from ..layers._sequential import Sequential
from ._batching import batch_aware
from ._chain import (
    Chain,
    check_chain_input,
    example_layers,
    fenced,
    identity,
    keep_perturbed,
    require_known,
    split_stack,
    stacked_layer,
    tap,
    zeros_of,
)
from ._segments import segment_starts, split_segments
from ._sweep import sweep_layers, sweep_stack


def mixed_rule(anchor_every: int | None):
    """The chain rule used by `mixed_grad`."""
    if anchor_every is not None and (
        not isinstance(anchor_every, int) or anchor_every < 1
    ):
        raise ValueError(
            f"mixed_grad: `anchor_every` must be a positive int or None, got "
            f"{anchor_every!r}."
        )

    def rule(chain: Chain, x: Array) -> Array:
        require_known(example_layers(chain), "mixed_grad")
        check_chain_input(chain, x)
        if isinstance(chain, Sequential):
            apply = lambda layers, x, _: _mixed_layers((layers, x), anchor_every)
        else:
            length = chain.length
            apply = lambda stack, x, _: _mixed_stack((stack, x), anchor_every, length)
        return batch_aware(apply)(chain.layers, x)

    return rule


def _saveable(primitive, *_, **__) -> bool:
    # Phase 1 keeps whatever the input path needs, except broadcasts: `jax.nn.relu`'s
    # JVP rule broadcasts a zero to the layer's width, and keeping it would cost four
    # times the mask it sits beside. It is recomputed instead.
    return primitive is not jax.lax.broadcast_in_dim_p


def linearize_input_path(forward, *args):
    """`jax.vjp` of the chain with the parameters held constant (closed over), so
    reverse mode keeps only what the input path needs."""
    return jax.vjp(jax.checkpoint(forward, policy=_saveable), *args)


# ---------------------------------------------------------------- tuple of layers


def _phase1_layers(layers, starts):
    """The chain as a function of its input and of zero 'tap' inputs whose
    cotangents are the anchors (at `starts[1:]`) and the fragments."""

    def forward(x, anchor_taps, fragment_taps):
        anchor_taps, fragment_taps = iter(anchor_taps), iter(fragment_taps)
        for i, layer in enumerate(layers):
            if i in starts[1:]:
                x = tap((x, next(anchor_taps)), identity)
            y = fenced(layer, x)
            if isinstance(layer, AbstractNonSubmersive):
                y = tap(
                    (y, next(fragment_taps)),
                    eqx.Partial(layer.fragment, jax.lax.stop_gradient(x)),
                )
            x = y
        return x

    def tap_shapes(x):
        anchors, fragments = [], []
        for i, layer in enumerate(layers):
            if i in starts[1:]:
                anchors.append(x)
            y = layer(x)
            if isinstance(layer, AbstractNonSubmersive):
                fragments.append(layer.fragment(x, y))
            x = y
        return anchors, fragments

    return forward, tap_shapes


@eqx.filter_custom_vjp
def _mixed_layers(vjp_arg, anchor_every):
    layers, x = vjp_arg
    for layer in layers:
        x = layer(x)
    return x


@_mixed_layers.def_fwd
def _mixed_layers_fwd(perturbed, vjp_arg, anchor_every):
    del perturbed
    layers, x0 = vjp_arg
    forward, tap_shapes = _phase1_layers(
        layers, segment_starts(len(layers), anchor_every)
    )
    taps = zeros_of(jax.eval_shape(tap_shapes, x0))
    y, pullback = linearize_input_path(forward, x0, *taps)
    return y, pullback


@_mixed_layers.def_bwd
def _mixed_layers_bwd(pullback, ct_y, perturbed, vjp_arg, anchor_every):
    layers, x0 = vjp_arg
    h0, anchors, fragments = pullback(ct_y)
    starts = segment_starts(len(layers), anchor_every)
    grads = sweep_layers(layers, starts, x0, h0, anchors, fragments)
    return keep_perturbed((grads, h0), perturbed)


# ---------------------------------------------------------------- stacked layers


def _phase1_stack(stack: Any, head, tail):
    nonsubmersive = isinstance(stack, AbstractNonSubmersive)

    def run_layers(x, params, fragment_taps):
        def step(x, item):
            p, fragment_tap = item
            layer = stacked_layer(stack, p)
            y = layer(x)
            if nonsubmersive:
                y = tap(
                    (y, fragment_tap),
                    eqx.Partial(layer.fragment, jax.lax.stop_gradient(x)),
                )
            return y, None

        return jax.lax.scan(step, x, (params, fragment_taps))[0]

    def forward(x, anchor_taps, fragment_taps):
        def segment(x, item):
            p, anchor_tap, fragment_tap = item
            return run_layers(tap((x, anchor_tap), identity), p, fragment_tap), None

        x = jax.lax.scan(segment, x, (head, anchor_taps[0], fragment_taps[0]))[0]
        if tail is not None:
            x = run_layers(tap((x, anchor_taps[1]), identity), tail, fragment_taps[1])
        return x

    return forward


def _stack_taps(stack, head, tail, x0):
    """Zeros shaped like the anchors (one per segment) and the fragments (one per
    layer, for a non-submersive stack) of a segmented stack."""
    n_segments, segment_length = jax.tree.leaves(head)[0].shape[:2]
    anchors = (
        jnp.zeros((n_segments, *x0.shape), x0.dtype),
        None if tail is None else jnp.zeros_like(x0),
    )
    if not isinstance(stack, AbstractNonSubmersive):
        return anchors, (None, None)
    first = stacked_layer(stack, jax.tree.map(lambda a: a[0, 0], head))
    fragment = jax.eval_shape(lambda x: first.fragment(x, first(x)), x0)

    def per_layer(*lead):
        return jax.tree.map(lambda s: jnp.zeros((*lead, *s.shape), s.dtype), fragment)

    n_tail = None if tail is None else jax.tree.leaves(tail)[0].shape[0]
    return anchors, (
        per_layer(n_segments, segment_length),
        None if tail is None else per_layer(n_tail),
    )


@eqx.filter_custom_vjp
def _mixed_stack(vjp_arg, anchor_every, length):
    stack, x = vjp_arg

    def step(x, params):
        return stacked_layer(stack, params)(x), None

    return jax.lax.scan(step, x, split_stack(stack))[0]


@_mixed_stack.def_fwd
def _mixed_stack_fwd(perturbed, vjp_arg, anchor_every, length):
    del perturbed
    stack, x0 = vjp_arg
    head, tail = split_segments(split_stack(stack), length, anchor_every)
    forward = _phase1_stack(stack, head, tail)
    anchors, fragments = _stack_taps(stack, head, tail, x0)
    return linearize_input_path(forward, x0, anchors, fragments)


@_mixed_stack.def_bwd
def _mixed_stack_bwd(pullback, ct_y, perturbed, vjp_arg, anchor_every, length):
    stack, x0 = vjp_arg
    h0, anchors, fragments = pullback(ct_y)
    head, tail = split_segments(split_stack(stack), length, anchor_every)
    grads = sweep_stack(stack, head, tail, x0, anchors, fragments)
    return keep_perturbed((grads, h0), perturbed)
