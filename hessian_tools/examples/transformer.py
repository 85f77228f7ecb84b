"""A transformer block (attention + MLP, flax NNX) with tensor-parallel weights: the Hessian
spectrum of a model sharded over a mesh axis.

The digits images are read as sequences (8 tokens of 8 pixels); the block embeds the tokens,
applies pre-norm multi-head self-attention and an MLP with residuals, mean-pools and
classifies. Tensor parallelism in the Megatron layout: the attention's query/key/value
kernels and the MLP's first kernel are split along their output axis (heads, hidden units),
the attention's output kernel and the MLP's second kernel along their input axis; the
embedding, norms and classifier are replicated. :func:`sharded_block_objective` builds the
objective at such parameters over all devices (also under ``jax.distributed``: it is a
``--model`` target for ``hessian-tools spectrum``).

Run it (8 host devices on a CPU)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python -m hessian_tools.examples.transformer --k 5
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hessian_tools import tree
from hessian_tools.analysis.spectral import eigenvalues
from hessian_tools.examples.digits import cross_entropy, load_digits_data
from hessian_tools.objective import Objective
from hessian_tools.operators import hessian

__all__ = ["Block", "attention", "block_objective", "tensor_parallel_specs", "shard_tensor_parallel",
           "sharded_block_objective"]

_COLUMN = ("attention/query/", "attention/key/", "attention/value/", "up/")
"""Split along the output axis (heads, or hidden units): the first half of a parallel pair."""
_ROW = ("attention/out/kernel", "down/kernel")
"""Split along the input axis: the second half (its output is summed over the axis)."""


def attention(query, key, value, bias=None, mask=None, *, precision=None, **_):
    """Softmax self-attention ``(..., tokens, heads, head_dim)`` computed in the inputs'
    dtype (``jax.nn.dot_product_attention``, flax's default, takes its softmax in float32,
    which caps a float64 analysis at float32's accuracy). No mask, no dropout."""
    scores = jnp.einsum("...qhd,...khd->...hqk", query, key, precision=precision)
    scores = scores * query.shape[-1] ** -0.5               # a Python float: keeps the dtype
    return jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(scores, axis=-1), value,
                      precision=precision)


class Block(nnx.Module):
    """Token embedding, pre-norm self-attention and MLP with residuals, mean-pool, classifier.

    With the defaults (``dim=32``, ``heads=8``, ``hidden=64``) on 8x8 digits: 9,418
    parameters. ``heads`` and ``hidden`` must be divisible by the tensor-parallel axis size.
    """

    def __init__(self, *, dim: int = 32, heads: int = 8, hidden: int = 64, tokens: int = 8,
                 features: int = 8, classes: int = 10, rngs: nnx.Rngs):
        self.embed = nnx.Linear(features, dim, rngs=rngs)
        self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (tokens, dim)))
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=dim,
                                                decode=False, attention_fn=attention,
                                                rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.up = nnx.Linear(dim, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, dim, rngs=rngs)
        self.head = nnx.Linear(dim, classes, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x) + self.position[...]
        h = h + self.attention(self.norm1(h))
        h = h + self.down(jax.nn.gelu(self.up(self.norm2(h))))
        return self.head(h.mean(axis=-2))


def block_objective(*, num_examples: int = 256, dtype="float32", seed: int = 0,
                    **block_kwargs) -> Objective:
    """The cross-entropy of an untrained :class:`Block` on the first ``num_examples`` digits
    (as 8 tokens of 8 pixels), unsharded. ``dtype`` ``"float64"`` needs x64 enabled."""
    model = Block(rngs=nnx.Rngs(seed), **block_kwargs)
    x, y = load_digits_data()
    data = (x[:num_examples].reshape(-1, 8, 8), y[:num_examples])
    return Objective.from_nnx(model, cross_entropy, data).astype(jnp.dtype(dtype))


def tensor_parallel_specs(params, axis: str = "model"):
    """The ``PartitionSpec`` of each parameter leaf for tensor parallelism over ``axis``:
    query/key/value kernels ``(in, heads, head_dim)`` and biases split over heads, the
    attention output kernel ``(heads, head_dim, out)`` over heads, the MLP's ``up`` over its
    hidden units (kernel columns and bias), ``down``'s kernel over its rows; everything else
    replicated. Leaves are matched by path (``attention/query/kernel``...)."""
    def spec(path, leaf):
        name = tree.path_str(path)
        if name.startswith(_COLUMN):
            if name.startswith("up/"):
                return P(None, axis) if leaf.ndim == 2 else P(axis)
            return P(None, axis, None) if leaf.ndim == 3 else P(axis, None)
        if name.startswith(_ROW):
            return P(axis, *(None,) * (leaf.ndim - 1))
        return P()
    return jax.tree_util.tree_map_with_path(spec, params)


def shard_tensor_parallel(obj: Objective, mesh: Mesh, axis: str = "model") -> Objective:
    """``obj`` with its parameters placed by :func:`tensor_parallel_specs` over ``mesh`` and
    its data replicated (global arrays: every process of a ``jax.distributed`` run passes
    the same values, and each device receives only its blocks)."""
    specs = tensor_parallel_specs(obj.params, axis)
    put = lambda a, s: jax.device_put(np.asarray(a), NamedSharding(mesh, s))
    params = jax.tree.map(put, obj.params, specs)
    data = jax.tree.map(lambda a: put(a, P()), obj.data)
    return Objective(obj.loss, params, data, predict=obj.predict, output_loss=obj.output_loss,
                     precision=obj.precision)


def sharded_block_objective(*, num_devices: int | None = None, axis: str = "model",
                            num_examples: int = 256, dtype="float32", seed: int = 0,
                            **block_kwargs) -> Objective:
    """:func:`block_objective` with tensor-parallel parameters over a 1-D mesh of the first
    ``num_devices`` of ``jax.devices()`` (default all: under ``jax.distributed`` the devices
    of every process, so the weights are split across the processes)."""
    devices = jax.devices()[:num_devices]
    obj = block_objective(num_examples=num_examples, dtype=dtype, seed=seed, **block_kwargs)
    return shard_tensor_parallel(obj, Mesh(np.array(devices), (axis,)), axis)


def _device_bytes(params) -> int:
    """Bytes of one parameter vector held by the first device."""
    first = jax.devices()[0]
    return sum(s.data.nbytes for a in jax.tree.leaves(params)
               for s in a.addressable_shards if s.device == first)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Top-k Hessian eigenvalues of a transformer "
                                "block, tensor-parallel over all devices against one device.")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--num-examples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    kw = {"num_examples": args.num_examples, "dtype": args.dtype, "seed": args.seed}
    rows = {}
    for label, obj in (("one device", block_objective(**kw)),
                       (f"{len(jax.devices())} devices", sharded_block_objective(**kw))):
        start = time.perf_counter()
        eig = eigenvalues(hessian(obj), k=args.k, key=jax.random.key(args.seed))
        rows[label] = (eig, time.perf_counter() - start, _device_bytes(obj.params))
    n = obj.num_params
    print(f"transformer block: {n:,} parameters, {args.num_examples} examples, {args.dtype}")
    for label, (eig, wall, held) in rows.items():
        print(f"{label:>11}: top-{args.k} {np.array2string(np.asarray(eig.values), precision=6)}"
              f"  ({eig.num_matvecs} products, {wall:.1f} s, status {eig.status})")
        print(f"{'':>11}  planned peak {eig.extra['memory_bytes'] / n:.0f} bytes/parameter; "
              f"device 0 holds {held / n:.3f} of each vector ({held:,} of "
              f"{n * jnp.dtype(args.dtype).itemsize:,} bytes)")
    a, b = (np.asarray(e.values) for e, _, _ in rows.values())
    print(f"largest relative difference: {np.max(np.abs(a - b) / np.abs(a)):.2e}")


if __name__ == "__main__":
    main()
