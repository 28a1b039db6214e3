"""`flow`: a multi-scale Glow-like normalizing flow trained on scikit-learn's digits
by backprop and by Mixed from the same initial weights on the same batches: test
bits per dimension per epoch, how far the parameters drifted apart, compiled
memory per flow step for backprop, checkpointing, RevBackprop and Mixed, and
samples."""

import dataclasses
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import invertible as inv

from .. import grad as G
from . import _data
from ._measure import methods, temp_bytes
from ._models import lecun_normal
from ._report import (
    Panel,
    device,
    plt,
    progress,
    save_plot,
    table,
    write_csv,
    write_json,
)
from ._train import _distance

LEVELS = 17  # the digits' pixels are integers 0..16
SHAPE = (1, 8, 8)
TRAIN_METHODS = {
    "backprop": eqx.filter_value_and_grad,
    "mixed": G.mixed_value_and_grad,
}
MEMORY_METHODS = ("backprop", "checkpointed", "reversible", "mixed")


@dataclasses.dataclass(frozen=True)
class Config:
    steps: int  # flow steps per scale (two scales)
    hidden: int  # channels inside each coupling's conditioner
    batch: int
    epochs: int
    learning_rate: float  # Adam's
    memory_steps: tuple[int, int]  # steps per scale of the two memory networks
    memory_batch: int
    train_size: int | None = None  # None: the whole training split
    samples: int = 64
    temperature: float = 0.8  # of the base density when sampling, as in Glow


# Sized for about five minutes on two CPU cores: on a CPU, Mixed's step on an
# unrolled chain of small convolutions costs several of backprop's.
FULL = Config(
    steps=6,
    hidden=32,
    batch=64,
    epochs=40,
    learning_rate=1e-3,
    memory_steps=(3, 6),
    memory_batch=256,
)
QUICK = Config(
    steps=1,
    hidden=8,
    batch=64,
    epochs=2,
    learning_rate=1e-3,
    memory_steps=(1, 2),
    memory_batch=64,
    train_size=256,
    samples=16,
)


# ------------------------------------------------------------------------ the model


def _conditioner(c_in: int, c_out: int, hidden: int, seed: int):
    """Glow's conditioner, 3x3 conv, ReLU, 1x1 conv, ReLU, 3x3 conv, with the last
    convolution zero: every coupling starts as the identity."""
    make = lambda k: eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(c_in, hidden, 3, padding=1, key=k),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Conv2d(hidden, hidden, 1, key=k),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Conv2d(hidden, c_out, 3, padding=1, key=k),
        ]
    )
    # Weights drawn with NumPy into a skeleton (see _models): no compile per shape.
    net = lecun_normal(eqx.filter_eval_shape(make, jr.key(0)), seed)
    return eqx.tree_at(
        lambda n: n.layers[-1].weight, net, jnp.zeros_like(net.layers[-1].weight)
    )


def glow(steps: int, hidden: int, seed: int = 0) -> inv.Sequential:
    """Digits `(1, 8, 8)` to a latent `(8, 2, 2)`: squeeze to `(4, 4, 4)`, `steps`
    steps (ActNorm, invertible 1x1 convolution, affine coupling), factor half the
    channels out, squeeze to `(8, 2, 2)`, `steps` steps."""
    seeds = iter(range(seed * 10_000, (seed + 1) * 10_000))

    def scale(channels):
        return [
            layer
            for _ in range(steps)
            for layer in (
                inv.ActNorm(channels),
                inv.Invertible1x1Conv(channels, key=jr.key(next(seeds))),
                inv.AffineCoupling(
                    _conditioner(channels // 2, channels, hidden, next(seeds))
                ),
            )
        ]

    return inv.Sequential(
        [inv.Squeeze(), *scale(4), inv.FactorOut(2), inv.Squeeze(), *scale(8)]
    )


@eqx.filter_jit
def initialise(chain: inv.Sequential, x) -> inv.Sequential:
    """Glow's data-dependent initialisation: every ActNorm normalises its input on
    the batch `x`."""
    layers = []
    for layer in chain:
        if isinstance(layer, inv.ActNorm):
            layer = inv.ActNorm.from_data(x)
        layers.append(layer)
        x = jax.vmap(layer)(x)
    return inv.Sequential(layers)


def bits_per_dim(chain, x):
    """The mean negative log-likelihood of dequantised digits `x` in `[0, 1)`, in
    bits per dimension of the discrete data (pixel values 0..16)."""

    def nll(x):
        z, log_det = chain.forward_and_log_det(x)
        return -(inv.layers.standard_normal_log_density(z) + log_det)

    dims = math.prod(x.shape[1:])
    # x = (pixels + u) / 17: the density of pixels + u is p(x) / 17^dims.
    return (jnp.mean(jax.vmap(nll)(x)) / dims + math.log(LEVELS)) / math.log(2)


def _factor_inputs(chain, shape) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """The input shape of every FactorOut, and the latent's shape."""
    h, inputs = jax.ShapeDtypeStruct(shape, jnp.float32), []
    for layer in chain:
        if isinstance(layer, inv.FactorOut):
            inputs.append(h.shape)
        h = jax.eval_shape(layer, h)
    return inputs, h.shape


def sample(chain, key, shape=SHAPE, temperature: float = 1.0):
    """One draw: a latent from the base density, through the chain's inverse,
    segment by segment, with each factored part drawn by its FactorOut."""
    layers = list(chain)
    cuts = [i for i, layer in enumerate(layers) if isinstance(layer, inv.FactorOut)]
    bounds = [-1, *cuts, len(layers)]
    segments = [layers[a + 1 : b] for a, b in zip(bounds, bounds[1:], strict=False)]
    inputs, latent = _factor_inputs(chain, shape)
    keys = jr.split(key, len(cuts) + 1)
    y = temperature * jr.normal(keys[0], latent)
    for i in reversed(range(len(segments))):
        if segments[i]:  # the invertible layers between two FactorOuts
            y = inv.Sequential(segments[i]).inverse(y)
        if i > 0:
            factor = layers[cuts[i - 1]]
            z = factor.sample_factored(y, inputs[i - 1][0], key=keys[i])
            y = factor.inverse(y, z=temperature * z)
    return y


@eqx.filter_jit
def _samples(chain, key, count: int, temperature: float):
    return jax.vmap(lambda k: sample(chain, k, temperature=temperature))(
        jr.split(key, count)
    )


# ------------------------------------------------------------------------- the data


def digits_pixels(test_fraction: float = 0.2, seed: int = 0):
    """The digits' integer pixels `(N, 1, 8, 8)`, split as `_data.digits` splits
    them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    images = images.reshape(-1, *SHAPE).astype(np.float32)
    x_train, x_test = train_test_split(
        images, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return x_train, x_test


def dequantise(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform dequantisation to `[0, 1)`: `(pixels + u) / 17`, `u ~ U[0, 1)`."""
    u = rng.random(pixels.shape, dtype=np.float32)
    return (pixels + u) / LEVELS


# --------------------------------------------------------------------- the benchmark


def _make_step(transform, optimizer):
    value_and_grad = transform(bits_per_dim)

    @eqx.filter_jit
    def step(model, opt_state, x):
        loss, grads = value_and_grad(model, x)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss

    return step


_evaluate = eqx.filter_jit(bits_per_dim)


def _memory(config: Config) -> dict:
    """Compiled temporary memory of one gradient of the bits/dim at two depths,
    and its growth per flow step (two steps per added step per scale)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, LEVELS, (config.memory_batch, *SHAPE))
    x = jnp.asarray(dequantise(pixels.astype(np.float32), rng))
    transforms = methods(MEMORY_METHODS)
    lo, hi = config.memory_steps
    models = {k: glow(k, config.hidden) for k in (lo, hi)}
    mb = {
        (m, k): temp_bytes(transforms[m], bits_per_dim, models[k], x) / 1e6
        for m, k in progress(
            [(m, k) for m in MEMORY_METHODS for k in (lo, hi)], "flow memory"
        )
    }
    per_step = {m: (mb[m, hi] - mb[m, lo]) / (2 * (hi - lo)) for m in MEMORY_METHODS}
    table(
        f"Glow-like flow on {config.memory_batch}x1x8x8 digits, {config.hidden} "
        f"hidden channels: temp_size_in_bytes (MB) of one gradient at {lo} and {hi} "
        "steps per scale (two scales)",
        [
            "method",
            f"MB @{2 * lo} steps",
            f"MB @{2 * hi} steps",
            "MB per flow step",
            "vs backprop",
        ],
        [
            [
                m,
                mb[m, lo],
                mb[m, hi],
                per_step[m],
                per_step[m] / per_step["backprop"],
            ]
            for m in MEMORY_METHODS
        ],
    )
    return {
        "batch": config.memory_batch,
        "steps_per_scale": [lo, hi],
        "MB": {m: [mb[m, lo], mb[m, hi]] for m in MEMORY_METHODS},
        "MB_per_flow_step": per_step,
    }


def _tile(images: np.ndarray) -> np.ndarray:
    """A square grid of `(1, 8, 8)` images with one-pixel gaps."""
    side = math.ceil(math.sqrt(len(images)))
    grid = np.full((side * 9 + 1, side * 9 + 1), 0.3)  # grey gaps
    for i, image in enumerate(images):
        r, c = divmod(i, side)
        grid[1 + 9 * r : 9 * r + 9, 1 + 9 * c : 9 * c + 9] = image[0]
    return grid


def _save_samples(out, name: str, samples: dict, temperature: float):
    figure, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 4.3))
    for ax, (method, images) in zip(np.atleast_1d(axes), samples.items(), strict=True):
        ax.imshow(_tile(np.clip(images, 0, 1)), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"{method}, temperature {temperature}")
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(out / name, dpi=100)
    plt.close(figure)


def flow(config: Config, out, seed: int = 0) -> dict:
    x_train_pixels, x_test_pixels = digits_pixels()
    if config.train_size is not None:
        x_train_pixels = x_train_pixels[: config.train_size]
    # The test set is dequantised once, so that every epoch and method sees the
    # same numbers.
    x_test = jnp.asarray(dequantise(x_test_pixels, np.random.default_rng([seed, 0])))
    batch = min(config.batch, len(x_train_pixels))
    steps_per_epoch = len(x_train_pixels) // batch
    optimizer = optax.adam(config.learning_rate)

    init_rng = np.random.default_rng([seed, 1])
    init_batch = dequantise(x_train_pixels[:512], init_rng)
    initial = initialise(glow(config.steps, config.hidden, seed), init_batch)
    parameters = sum(
        x.size for x in jax.tree.leaves(eqx.filter(initial, eqx.is_inexact_array))
    )
    models = dict.fromkeys(TRAIN_METHODS, initial)
    states = {
        m: optimizer.init(eqx.filter(initial, eqx.is_inexact_array))
        for m in TRAIN_METHODS
    }
    steps = {m: _make_step(t, optimizer) for m, t in TRAIN_METHODS.items()}
    seconds = dict.fromkeys(TRAIN_METHODS, 0.0)
    start_bpd = float(_evaluate(initial, x_test))
    curves = {m: {"train_bpd": [], "test_bpd": [start_bpd]} for m in TRAIN_METHODS}

    epochs = progress(range(1, config.epochs + 1), "flow on digits")
    for epoch in epochs:
        losses = {m: [] for m in TRAIN_METHODS}
        # The same batches and dequantisation noise, in the same order, for both.
        rng = np.random.default_rng([seed, 2, epoch])
        for index in _data.batches(len(x_train_pixels), batch, rng):
            x = jnp.asarray(dequantise(x_train_pixels[index], rng))
            for m in TRAIN_METHODS:
                start = time.perf_counter()
                models[m], states[m], loss = steps[m](models[m], states[m], x)
                losses[m].append(float(loss))  # waits for the step
                if epoch > 1 or len(losses[m]) > 1:  # the first step compiles
                    seconds[m] += time.perf_counter() - start
        for m in TRAIN_METHODS:
            curves[m]["train_bpd"].append(float(np.mean(losses[m])))
            curves[m]["test_bpd"].append(float(_evaluate(models[m], x_test)))
        epochs.set_postfix({m: f"{c['test_bpd'][-1]:.3f}" for m, c in curves.items()})

    drift = _distance(models["mixed"], models["backprop"])
    timed_steps = max(config.epochs * steps_per_epoch - 1, 1)
    size = (
        f"{2 * config.steps} flow steps ({config.steps} per scale, two scales), "
        f"{config.hidden} hidden channels, {parameters} parameters"
    )
    epoch_numbers = list(range(config.epochs + 1))
    b, mx = curves["backprop"]["test_bpd"], curves["mixed"]["test_bpd"]
    table(
        f"digits: Glow-like flow, {size}; test bits/dim per epoch (0: after the "
        f"data-dependent initialisation); {steps_per_epoch} Adam steps per epoch "
        f"(batch {batch}, learning rate {config.learning_rate}), the same initial "
        "weights, batches and dequantisation for both methods",
        ["epoch", "backprop", "mixed", "mixed - backprop"],
        [[e, b[e], mx[e], f"{mx[e] - b[e]:.2g}"] for e in epoch_numbers],
    )
    table(
        "digits flow: summary",
        [
            "method",
            "final test bits/dim",
            "best test bits/dim",
            "final train bits/dim",
            "parameters vs backprop's (relative distance)",
            f"seconds per step ({device()})",
        ],
        [
            [
                m,
                c["test_bpd"][-1],
                min(c["test_bpd"]),
                c["train_bpd"][-1],
                drift if m == "mixed" else 0.0,
                seconds[m] / timed_steps,
            ]
            for m, c in curves.items()
        ],
    )
    memory = _memory(config)

    save_plot(
        out,
        "flow.png",
        Panel(
            "digits flow: test bits/dim",
            "epoch",
            "bits/dim",
            {m: (epoch_numbers, c["test_bpd"]) for m, c in curves.items()},
        ),
        Panel(
            "digits flow: training bits/dim",
            "epoch",
            "bits/dim",
            {m: (epoch_numbers[1:], c["train_bpd"]) for m, c in curves.items()},
        ),
    )
    key = jr.key(seed)
    samples = {
        m: np.asarray(_samples(models[m], key, config.samples, config.temperature))
        for m in TRAIN_METHODS
    }
    _save_samples(out, "flow_samples.png", samples, config.temperature)
    write_csv(
        out,
        "flow.csv",
        [
            {
                "method": m,
                "epoch": e,
                "train_bpd": c["train_bpd"][e - 1] if e else float("nan"),
                "test_bpd": c["test_bpd"][e],
            }
            for m, c in curves.items()
            for e in epoch_numbers
        ],
    )
    results = {
        "device": device(),
        "dataset": "digits",
        "train_size": len(x_train_pixels),
        "test_size": len(x_test_pixels),
        "config": dataclasses.asdict(config),
        "parameters": parameters,
        "curves": curves,
        "final_test_bpd": {m: c["test_bpd"][-1] for m, c in curves.items()},
        "distance_to_backprop": drift,
        "seconds_per_step": {m: s / timed_steps for m, s in seconds.items()},
        "memory": memory,
        "samples_finite": all(bool(np.isfinite(s).all()) for s in samples.values()),
    }
    write_json(out, "flow.json", results)
    return results
