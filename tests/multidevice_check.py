"""Data-parallel gradients on a 4-device mesh equal single-device gradients.

Run by `tests/test_multidevice.py` in a fresh process with
`XLA_FLAGS=--xla_force_host_platform_device_count=4`, which gives the CPU four
devices (the flag must be set before JAX starts, hence the subprocess). Runnable by
hand too:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/multidevice_check.py

The batch is sharded over a `jax.sharding.Mesh` with a `NamedSharding`, the model is
replicated, and `eqx.filter_jit` partitions the gradient computation (JAX's SPMD):
each device differentiates its quarter of the batch and the parameter gradients are
summed across devices by XLA collectives. Prints one JSON line per method and exits
non-zero if any gradient differs from the single-device one.
"""

import json
import sys

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import invertible as inv  # noqa: E402
from invertible import grad as G  # noqa: E402

DEVICES = 4
FEATURES = 4


class Model(eqx.Module):
    stem: eqx.nn.Linear
    chain: inv.Sequential | inv.ScannedSequential
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(self.chain(self.stem(x)))


def coupling(key, swap=False):
    mlp = eqx.nn.MLP(FEATURES // 2, FEATURES // 2, 8, 1, jnp.tanh, key=key)
    return inv.AdditiveCoupling(mlp, swap=swap)


def make_model(kind: str, key) -> Model:
    k = jr.split(key, 6)
    if kind == "invertible":
        chain = inv.Sequential(
            [
                coupling(k[0]),
                inv.LeakyReLU(0.2),
                inv.InvertibleLinear(FEATURES, key=k[1]),
                coupling(k[2], swap=True),
            ]
        )
    elif kind == "fragments":  # ReLU: a fragment, only Mixed and Checkpointed
        chain = inv.Sequential([coupling(k[0]), inv.ReLU(), coupling(k[2], swap=True)])
    else:  # scanned
        stack = eqx.filter_vmap(lambda kk: coupling(kk, swap=True))(jr.split(k[0], 3))
        chain = inv.ScannedSequential(stack)
    return Model(
        eqx.nn.Linear(FEATURES, FEATURES, key=k[3]),
        chain,
        eqx.nn.Linear(FEATURES, 2, key=k[4]),
    )


def loss(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


CASES = [
    ("mixed", "invertible", G.mixed_grad(loss)),
    ("mixed", "fragments", G.mixed_grad(loss)),
    ("mixed", "scanned", G.mixed_grad(loss)),
    ("moonwalk", "invertible", G.moonwalk_grad(loss, chunk_size=3)),
    ("reversible", "invertible", G.reversible_grad(loss)),
    ("checkpointed", "fragments", G.checkpointed_grad(loss)),
    ("forward", "invertible", G.forward_grad(loss)),
    ("projected_forward", "invertible", G.projected_forward_grad(loss)),
]


def relative_difference(a, b) -> float:
    return max(
        float(jnp.linalg.norm(p - q) / max(float(jnp.linalg.norm(q)), 1e-300))
        for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def main() -> int:
    devices = jax.devices()
    if len(devices) != DEVICES:
        print(f"expected {DEVICES} devices, got {len(devices)}", file=sys.stderr)
        return 2
    mesh = Mesh(np.array(devices), ("batch",))
    by_example = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())

    x = jr.normal(jr.key(1), (2 * DEVICES, FEATURES))
    y = jr.normal(jr.key(2), (2 * DEVICES, 2))
    xs, ys = jax.device_put(x, by_example), jax.device_put(y, by_example)
    assert len(xs.sharding.device_set) == DEVICES

    failed = False
    exact = {}  # eqx.filter_grad on one device, per model
    for method, kind, grad in CASES:
        model = make_model(kind, jr.key(0))
        if kind not in exact:
            exact[kind] = eqx.filter_jit(eqx.filter_grad(loss))(model, x, y)
        extra = {"tangent_key": jr.key(3)} if method == "projected_forward" else {}
        grad_fn = eqx.filter_jit(lambda m, x, y, g=grad, e=extra: g(m, x, y, **e))
        single = grad_fn(model, x, y)  # every array on one device

        replicated_model = eqx.filter_shard(model, replicated)
        compiled = grad_fn.lower(replicated_model, xs, ys).compile()
        sharded = compiled(replicated_model, xs, ys)
        hlo = compiled.compiled.as_text()
        result = {
            "method": method,
            "chain": kind,
            "vs_single_device": relative_difference(sharded, single),
            "vs_filter_grad": relative_difference(sharded, exact[kind]),
            # The parameter gradients are summed across the devices' shards.
            "all_reduce": " all-reduce(" in hlo or " all-reduce-start(" in hlo,
            "grads_replicated": all(
                leaf.sharding.is_fully_replicated
                and len(leaf.sharding.device_set) == DEVICES
                for leaf in jax.tree.leaves(sharded)
            ),
        }
        ok = (
            result["vs_single_device"] < 1e-10
            and result["all_reduce"]
            and result["grads_replicated"]
            and (method == "projected_forward" or result["vs_filter_grad"] < 1e-10)
        )
        result["ok"] = ok
        failed |= not ok
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
