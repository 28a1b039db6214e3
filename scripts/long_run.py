"""Long-run accuracy: Mixed's float32 gradient error along a real training run.

Trains a classifier on scikit-learn's digits (8x8 images, 64 features, 10 classes)
with `invertible.grad.mixed_grad` and Adam, in float32. Every `every` steps, at the
current parameters and minibatch, it compares three gradients:

- Mixed in float32 (the one training uses),
- backprop (`eqx.filter_grad`) in float32,
- a float64 oracle: `eqx.filter_grad` on the same weights and data cast to float64,

and reports relative errors (worst leaf of ‖g - ref‖ / ‖ref‖, DESIGN.md §4): Mixed
vs backprop, Mixed vs the oracle, and backprop vs the oracle beside it.

The model is a linear stem-free chain on the 64 pixels: `depth` additive couplings
(`y = (x2 + MLP(x1), x1)`, LeCun-normal MLPs with one hidden ReLU layer) in an
`invertible.Sequential`, then a linear head to the 10 logits.

Run (needs scikit-learn, in the `bench` extra):

    python scripts/long_run.py                    # 1000 steps, depth 16
    python scripts/long_run.py --steps 3000 --depth 32 --out run.json

`long_run(...)` returns the measurements for reuse (e.g. by the benchmarks).
"""

import argparse
import json
import time

import jax

jax.config.update("jax_enable_x64", True)  # for the float64 oracle only

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import invertible as inv  # noqa: E402
from invertible import grad as G  # noqa: E402

FEATURES, CLASSES = 64, 10


class Classifier(eqx.Module):
    chain: inv.Sequential
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(self.chain(x))


def _lecun(linear: eqx.nn.Linear, key) -> eqx.nn.Linear:
    fan_in = linear.weight.shape[1]
    weight = jr.normal(key, linear.weight.shape) / jnp.sqrt(fan_in)
    return eqx.tree_at(
        lambda m: (m.weight, m.bias), linear, (weight, jnp.zeros_like(linear.bias))
    )


def make_classifier(depth: int, width: int, key) -> Classifier:
    half = FEATURES // 2

    def coupling(key):
        k_mlp, k1, k2 = jr.split(key, 3)
        mlp = eqx.nn.MLP(half, half, width, 1, jax.nn.relu, key=k_mlp)
        mlp = eqx.tree_at(
            lambda m: m.layers,
            mlp,
            (_lecun(mlp.layers[0], k1), _lecun(mlp.layers[1], k2)),
        )
        return inv.AdditiveCoupling(mlp, swap=True)

    k_chain, k_head = jr.split(key)
    chain = inv.Sequential([coupling(k) for k in jr.split(k_chain, depth)])
    return Classifier(chain, eqx.nn.Linear(FEATURES, CLASSES, key=k_head))


def cast(tree, dtype):
    return jax.tree.map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree
    )


def loss(model, x, labels):
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def relative_error(got, want) -> float:
    """Worst leaf of ‖got - want‖ / ‖want‖, in float64."""
    return max(
        float(jnp.linalg.norm((g.astype(jnp.float64) - w).ravel()))
        / max(float(jnp.linalg.norm(w.ravel())), 1e-300)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    )


def load_digits_data(test_fraction: float = 0.2, seed: int = 0):
    """Standardised pixels and labels, split into (train, test) at random."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(test_fraction * len(y))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def long_run(
    steps: int = 1000,
    every: int = 100,
    depth: int = 16,
    width: int = 64,
    batch: int = 128,
    learning_rate: float = 1e-3,
    anchor_every: int | None = 8,
    seed: int = 0,
    log=print,
) -> list[dict]:
    """Train with Mixed in float32 for `steps` steps and measure gradient errors
    every `every` steps (and at the last step). Returns one dict per measurement."""
    (x_all, y_all), (x_test, y_test) = load_digits_data(seed=seed)
    key_model, key_data = jr.split(jr.key(seed))
    model = cast(make_classifier(depth, width, key_model), jnp.float32)
    optimiser = optax.adam(learning_rate)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimiser.init(params)
    mixed = G.mixed_grad(loss, anchor_every=anchor_every)

    @eqx.filter_jit
    def train_step(params, opt_state, x, y):
        grads = mixed(eqx.combine(params, static), x, y)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return eqx.apply_updates(params, updates), opt_state

    mixed_jit = eqx.filter_jit(mixed)
    backprop_jit = eqx.filter_jit(eqx.filter_grad(loss))
    loss_jit = eqx.filter_jit(loss)

    @eqx.filter_jit
    def accuracy(model, x, y):
        return jnp.mean(jnp.argmax(jax.vmap(model)(x), -1) == y)

    n = x_all.shape[0]
    rows = []
    start = time.perf_counter()
    for step in range(steps + 1):
        index = jr.choice(jr.fold_in(key_data, step), n, (batch,), replace=False)
        x = jnp.asarray(x_all)[index]
        y = jnp.asarray(y_all)[index]
        if step % every == 0 or step == steps:
            model = eqx.combine(params, static)
            g_mixed = mixed_jit(model, x, y)
            g_backprop = backprop_jit(model, x, y)
            model64, x64 = cast(model, jnp.float64), x.astype(jnp.float64)
            g_oracle = backprop_jit(model64, x64, y)
            row = {
                "step": step,
                "loss": float(loss_jit(model, x, y)),
                "train_accuracy": float(accuracy(model, x_all, y_all)),
                "test_accuracy": float(accuracy(model, x_test, y_test)),
                "mixed_vs_backprop": relative_error(g_mixed, g_backprop),
                "mixed_vs_float64": relative_error(g_mixed, g_oracle),
                "backprop_vs_float64": relative_error(g_backprop, g_oracle),
            }
            rows.append(row)
            log(
                f"step {step:5d}  loss {row['loss']:.4f}  "
                f"acc {row['train_accuracy']:.3f}/{row['test_accuracy']:.3f}  "
                f"mixed/backprop {row['mixed_vs_backprop']:.2e}  "
                f"mixed/f64 {row['mixed_vs_float64']:.2e}  "
                f"backprop/f64 {row['backprop_vs_float64']:.2e}  "
                f"({time.perf_counter() - start:.0f} s)"
            )
        if step < steps:
            params, opt_state = train_step(params, opt_state, x, y)
    return rows


def summarise(rows: list[dict]) -> dict:
    keys = ["mixed_vs_backprop", "mixed_vs_float64", "backprop_vs_float64"]
    return {f"max_{k}": max(r[k] for r in rows) for k in keys} | {
        "final_loss": rows[-1]["loss"],
        "final_train_accuracy": rows[-1]["train_accuracy"],
        "final_test_accuracy": rows[-1]["test_accuracy"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--anchor-every", type=int, default=8, help="0 turns anchors off"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the measurements as JSON here")
    args = parser.parse_args()
    config = dict(
        steps=args.steps,
        every=args.every,
        depth=args.depth,
        width=args.width,
        batch=args.batch,
        learning_rate=args.lr,
        anchor_every=args.anchor_every or None,
        seed=args.seed,
    )
    print(f"digits, float32, Mixed + Adam: {config}")
    rows = long_run(**config)
    summary = summarise(rows)
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": config, "rows": rows, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
