"""`train`: a RevNet classifier trained with backprop, Mixed and reversible gradients
from the same initial weights on the same batches (the paper's Fig 5)."""

import dataclasses
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import grad as G
from . import _data
from ._models import revnet_classifier
from ._report import Panel, device, progress, save_plot, table, write_csv, write_json

METHODS = {
    "backprop": eqx.filter_grad,
    "mixed": G.mixed_grad,
    "reversible": G.reversible_grad,
}


@dataclasses.dataclass(frozen=True)
class Config:
    layers_per_block: int
    padding: int  # channels after zero-padding the input
    hidden: int  # channels inside each residual
    batch: int
    epochs: int
    learning_rate: float  # Adam's, decayed by 5% per epoch (the paper: Adam, 1e-3,
    # exponential decay)
    eval_size: int = 5000  # training accuracy on at most this many examples


DIGITS_FULL = Config(
    layers_per_block=3, padding=8, hidden=16, batch=64, epochs=30, learning_rate=1e-3
)
DIGITS_QUICK = Config(
    layers_per_block=2, padding=8, hidden=8, batch=64, epochs=4, learning_rate=3e-3
)
CIFAR10_FULL = Config(
    layers_per_block=3, padding=8, hidden=32, batch=128, epochs=10, learning_rate=1e-3
)
CIFAR10_QUICK = dataclasses.replace(DIGITS_QUICK, epochs=1)


def _loss(model, x, y):
    logits = jax.vmap(model)(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, loss  # the value again as `aux`: every method returns it then


def _make_step(transform, optimizer):
    grad_fn = transform(_loss, has_aux=True)

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        grads, loss = grad_fn(model, x, y)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss

    return step


@eqx.filter_jit
def _correct(model, x, y):
    return jnp.sum(jnp.argmax(jax.vmap(model)(x), axis=-1) == y)


def _accuracy(model, x, y, chunk: int = 1000) -> float:
    correct = sum(
        int(_correct(model, x[i : i + chunk], y[i : i + chunk]))
        for i in range(0, len(x), chunk)
    )
    return correct / len(x)


def _distance(model, reference) -> float:
    """‖θ - θ_ref‖ / ‖θ_ref‖ over all parameters: how far a trajectory drifted."""
    a, b = (eqx.filter(m, eqx.is_inexact_array) for m in (model, reference))
    diff = sum(
        float(jnp.sum((u - v) ** 2))
        for u, v in zip(*map(jax.tree.leaves, (a, b)), strict=True)
    )
    norm = sum(float(jnp.sum(v**2)) for v in jax.tree.leaves(b))
    return (diff / norm) ** 0.5


def train(config: Config, data: _data.Dataset, out, seed: int = 0) -> dict:
    batch = min(config.batch, len(data.x_train))
    steps_per_epoch = len(data.x_train) // batch
    schedule = optax.exponential_decay(
        config.learning_rate, transition_steps=steps_per_epoch, decay_rate=0.95
    )
    optimizer = optax.adam(schedule)
    initial = revnet_classifier(
        config.layers_per_block,
        padded_channels=config.padding,
        classes=data.classes,
        hidden=config.hidden,
        key=seed,
    )
    models = {m: initial for m in METHODS}
    states = {
        m: optimizer.init(eqx.filter(initial, eqx.is_inexact_array)) for m in METHODS
    }
    steps = {m: _make_step(t, optimizer) for m, t in METHODS.items()}
    seconds = dict.fromkeys(METHODS, 0.0)
    curves = {
        m: {"train_loss": [], "train_accuracy": [], "test_accuracy": []}
        for m in METHODS
    }
    x_eval, y_eval = data.x_train[: config.eval_size], data.y_train[: config.eval_size]

    epochs = progress(range(1, config.epochs + 1), f"train on {data.name}")
    for epoch in epochs:
        losses = {m: [] for m in METHODS}
        # The same batches, in the same order, for every method.
        rng = np.random.default_rng([seed, epoch])
        for index in _data.batches(len(data.x_train), batch, rng):
            x, y = jnp.asarray(data.x_train[index]), jnp.asarray(data.y_train[index])
            for m in METHODS:
                start = time.perf_counter()
                models[m], states[m], loss = steps[m](models[m], states[m], x, y)
                losses[m].append(float(loss))  # waits for the step
                if epoch > 1 or len(losses[m]) > 1:  # the first step compiles
                    seconds[m] += time.perf_counter() - start
        for m in METHODS:
            curves[m]["train_loss"].append(float(np.mean(losses[m])))
            curves[m]["train_accuracy"].append(_accuracy(models[m], x_eval, y_eval))
            curves[m]["test_accuracy"].append(
                _accuracy(models[m], data.x_test, data.y_test)
            )
        epochs.set_postfix(
            {m: f"{c['test_accuracy'][-1]:.3f}" for m, c in curves.items()}
        )

    drift = {m: _distance(models[m], models["backprop"]) for m in METHODS}
    timed_steps = max(config.epochs * steps_per_epoch - 1, 1)
    table(
        f"{data.name}: RevNet classifier, {config.layers_per_block} layers per block, "
        f"{config.hidden} hidden channels, input padded to {config.padding} channels; "
        f"{config.epochs} epochs of {steps_per_epoch} Adam steps (batch {batch}), "
        "the same initial weights and batches for every method",
        [
            "method",
            "final train loss",
            "final test accuracy",
            "best test accuracy",
            "parameters vs backprop's (relative distance)",
            f"seconds per step ({device()})",
        ],
        [
            [
                m,
                c["train_loss"][-1],
                c["test_accuracy"][-1],
                max(c["test_accuracy"]),
                drift[m],
                seconds[m] / timed_steps,
            ]
            for m, c in curves.items()
        ],
    )
    epoch_numbers = list(range(1, config.epochs + 1))
    save_plot(
        out,
        "train.png",
        *(
            Panel(
                f"{data.name}: {label}",
                "epoch",
                label,
                {m: (epoch_numbers, c[key]) for m, c in curves.items()},
                logy=key == "train_loss",
            )
            for key, label in (
                ("train_loss", "training loss"),
                ("train_accuracy", "training accuracy"),
                ("test_accuracy", "test accuracy"),
            )
        ),
    )
    write_csv(
        out,
        "train.csv",
        [
            {"method": m, "epoch": e, **{k: v[e - 1] for k, v in c.items()}}
            for m, c in curves.items()
            for e in epoch_numbers
        ],
    )
    results = {
        "device": device(),
        "dataset": data.name,
        "train_size": len(data.x_train),
        "test_size": len(data.x_test),
        "config": dataclasses.asdict(config),
        "curves": curves,
        "final_test_accuracy": {m: c["test_accuracy"][-1] for m, c in curves.items()},
        "distance_to_backprop": drift,
        "seconds_per_step": {m: s / timed_steps for m, s in seconds.items()},
    }
    write_json(out, "train.json", results)
    return results
