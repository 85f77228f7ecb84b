"""Pytree vector arithmetic.

Vectors in hessian_tools are pytrees shaped like the parameters (a flat array is
the one-leaf case). A *stacked basis* is a pytree whose leaves carry one extra
leading axis: row ``i`` of every leaf together form vector ``i``. Nothing here
gathers the leaves into one flat array, so sharded parameters stay sharded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

__all__ = [
    "Placement", "add", "axpy", "basis_combine", "basis_dot", "basis_get", "basis_gram",
    "basis_set", "check_same_structure", "flat_paths", "key_bits", "local_bytes", "norm",
    "normal_like", "path_str", "pin_basis", "pin_vector", "rademacher_like", "ravel", "scale",
    "size", "spec_like", "sub", "vdot",
    "zeros_basis", "zeros_like",
]


_HIGHEST = jax.lax.Precision.HIGHEST
"""The precision of every product in this module: on NVIDIA GPUs JAX's default for float32
is TF32 (about 1e-3 relative), which would cap the orthogonality of Lanczos bases there. On
CPUs it changes nothing."""


def _contract(a, b, lead: int) -> jax.Array:
    """``sum`` over every axis of ``a`` past its first ``lead`` and every axis of ``b`` past
    its first ``lead``, matched in order (the trailing axes are one parameter leaf's).

    ``lax.dot_general`` over the leaf's own axes: no reshape to one flat axis, which for a
    leaf sharded along a later axis would make XLA gather it first (``jnp.vdot`` and
    ``tensordot`` flatten).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    dtype = jnp.promote_types(a.dtype, b.dtype)
    axes = tuple(range(lead, a.ndim)), tuple(range(b.ndim - a.ndim + lead, b.ndim))
    return jax.lax.dot_general(jnp.conj(a.astype(dtype)), b.astype(dtype), (axes, ((), ())),
                               precision=_HIGHEST)


def vdot(x, y) -> jax.Array:
    """Euclidean inner product ``<x, y>`` of two pytrees of the same structure."""
    parts = [_contract(a, b, 0) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y))]
    return sum(parts[1:], parts[0])


def norm(x) -> jax.Array:
    """Euclidean norm of a pytree vector."""
    return jnp.sqrt(vdot(x, x))


def add(x, y):
    return jax.tree.map(jnp.add, x, y)


def sub(x, y):
    return jax.tree.map(jnp.subtract, x, y)


def scale(alpha, x):
    return jax.tree.map(lambda a: (alpha * a).astype(a.dtype), x)


def axpy(alpha, x, y):
    """``alpha * x + y``, keeping the dtype of ``y``."""
    return jax.tree.map(lambda a, b: (alpha * a + b).astype(b.dtype), x, y)


def zeros_like(x):
    return jax.tree.map(jnp.zeros_like, x)


def size(x) -> int:
    """Total number of scalar entries (a Python int)."""
    return int(sum(np.prod(np.shape(leaf), dtype=np.int64) for leaf in jax.tree.leaves(x)))


def _random_like(sample, key, x):
    """One draw of ``size(x)`` numbers, split into leaves: one random kernel, whatever the
    number of leaves (a kernel per leaf costs ~0.5 s of XLA compilation each on CPU)."""
    leaves, treedef = jax.tree.flatten(x)
    dtype = jnp.result_type(*leaves)
    sizes = [int(np.prod(jnp.shape(a), dtype=np.int64)) for a in leaves]
    flat = sample(key, (sum(sizes),), dtype)
    parts = jnp.split(flat, np.cumsum(sizes)[:-1].tolist()) if len(sizes) > 1 else [flat]
    return treedef.unflatten([p.reshape(jnp.shape(a)).astype(jnp.result_type(a))
                              for p, a in zip(parts, leaves)])


def normal_like(key, x):
    """A standard normal pytree shaped like ``x``."""
    return _random_like(jax.random.normal, key, x)


def key_bits(key) -> list[int]:
    """The raw bits of a ``jax.random`` key (typed, or a raw ``uint32`` array) as Python ints:
    what a result records to be reproduced, and what seeds host-side draws."""
    if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(x) for x in np.asarray(key).reshape(-1)]


def rademacher_like(key, x):
    """A Rademacher (+-1) pytree shaped like ``x``."""
    return _random_like(jax.random.rademacher, key, x)


def ravel(x) -> jax.Array:
    """Concatenate all leaves into one flat vector (for dense references and tiny models)."""
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(x)])


# ---- paths ---------------------------------------------------------------------------------

def path_str(path) -> str:
    """``a/b/c`` for a pytree key path (an NNX variable's trailing ``.value`` is dropped)."""
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def flat_paths(x) -> dict:
    """``{"a/b/c": leaf}`` for every leaf of a pytree, in tree order."""
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(x)[0]}


def check_same_structure(ref, new, *, what: str) -> None:
    """Raise ``ValueError`` unless ``new`` has the leaves and shapes of ``ref`` (the first
    difference is named, with both shapes)."""
    ref_flat, ref_def = jax.tree_util.tree_flatten_with_path(ref)
    new_flat, new_def = jax.tree_util.tree_flatten_with_path(new)
    if ref_def != new_def:
        ref_paths = [path_str(p) for p, _ in ref_flat]
        new_paths = [path_str(p) for p, _ in new_flat]
        missing = sorted(set(ref_paths) - set(new_paths))[:3]
        extra = sorted(set(new_paths) - set(ref_paths))[:3]
        if not missing and not extra:
            raise ValueError(
                f"{what} have the parameters' leaves but other containers ({type(new).__name__} "
                f"where the parameters are a {type(ref).__name__}; e.g. a plain dict read from "
                "a checkpoint against an nnx.State, or integer keys written as strings). Load "
                "checkpoints with hessian_tools.restore(objective, path), or rebuild the tree "
                "with jax.tree.unflatten(jax.tree.structure(params), jax.tree.leaves(new)).")
        raise ValueError(f"{what} do not match the parameter tree: missing leaves {missing}, "
                         f"unexpected leaves {extra}.")
    for (path, a), (_, b) in zip(ref_flat, new_flat):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"{what}: leaf '{path_str(path)}' has shape {np.shape(b)}, "
                             f"expected {np.shape(a)}.")


# ---- stacked bases: leaves with a leading axis of length m ------------------------------

def zeros_basis(m: int, x):
    """A stacked basis of ``m`` zero vectors shaped like ``x``."""
    return jax.tree.map(lambda a: jnp.zeros((m,) + jnp.shape(a), jnp.result_type(a)), x)


def basis_dot(basis, x) -> jax.Array:
    """``V x``: the inner products of every basis row with ``x``, shape ``(m,)``."""
    parts = [_contract(b, a, 1) for b, a in zip(jax.tree.leaves(basis), jax.tree.leaves(x))]
    return sum(parts[1:], parts[0])


def basis_gram(a, b) -> jax.Array:
    """``A B^T``: the inner products of every row of stacked basis ``a`` with every row of
    ``b``, shape ``(rows of a, rows of b)``."""
    parts = [jax.lax.dot_general(u, w, ((tuple(range(1, u.ndim)),) * 2, ((), ())),
                                 precision=_HIGHEST)
             for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return sum(parts[1:], parts[0])


def basis_combine(coeffs, basis):
    """``V^T c``: the combination ``sum_i c_i V_i``; ``coeffs`` has shape ``(m,)`` or ``(m, k)``.

    With 2-D ``coeffs`` the result is itself a stacked basis of ``k`` vectors.
    """
    c = coeffs if jnp.ndim(coeffs) == 1 else coeffs.T
    return jax.tree.map(lambda b: jnp.tensordot(c.astype(b.dtype), b, axes=1,
                                                precision=_HIGHEST), basis)


def basis_get(basis, i):
    """Row ``i`` of a stacked basis (``i`` may be traced)."""
    return jax.tree.map(lambda b: jax.lax.dynamic_index_in_dim(b, i, keepdims=False), basis)


def basis_set(basis, i, x):
    """A copy of ``basis`` with row ``i`` replaced by ``x`` (``i`` may be traced)."""
    return jax.tree.map(
        lambda b, a: jax.lax.dynamic_update_index_in_dim(b, a.astype(b.dtype), i, 0), basis, x)


# ---- where the leaves live: sharded parameters ------------------------------------------

def _sharding(a):
    return a.sharding if isinstance(a, (jax.Array, jax.ShapeDtypeStruct)) else None


def spec_like(x):
    """``jax.ShapeDtypeStruct`` leaves shaped like ``x``, keeping each leaf's sharding."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a),
                                                       sharding=_sharding(a)), x)


@dataclasses.dataclass(frozen=True)
class Placement:
    """The shardings of a vector's leaves when the parameters are spread over a mesh.

    Compiled vector algebra pins its outputs to them (``with_sharding_constraint``): a
    vector keeps each leaf's ``NamedSharding``, a stacked basis the same with its row axis
    unsharded. Without the pins XLA chooses, and has returned a product replicated, which
    then replicated every basis built from it. Hashable, so it is a static argument of the
    compiled functions. :meth:`of` is ``None`` for parameters on one device, so those
    compile exactly as before.
    """

    treedef: Any
    vector_shardings: tuple
    basis_shardings: tuple

    @staticmethod
    def of(x) -> Placement | None:
        """The placement of vectors shaped like ``x`` (arrays or ``ShapeDtypeStruct``), or
        ``None`` when no leaf is a ``NamedSharding`` over several devices."""
        leaves, treedef = jax.tree.flatten(x)
        found = [s if isinstance(s, NamedSharding) and len(s.device_set) > 1 else None
                 for s in map(_sharding, leaves)]
        if not any(found):
            return None
        rows = [None if s is None else
                NamedSharding(s.mesh, PartitionSpec(None, *s.spec), memory_kind=s.memory_kind)
                for s in found]
        return Placement(treedef, tuple(found), tuple(rows))

    def vector(self, x):
        """``x`` (traced) constrained to the parameters' shardings."""
        return self._pin(x, self.vector_shardings)

    def basis(self, x):
        """A stacked basis (traced) constrained to the rows' shardings."""
        return self._pin(x, self.basis_shardings)

    def _pin(self, x, shardings):
        leaves = [a if s is None else jax.lax.with_sharding_constraint(a, s)
                  for a, s in zip(jax.tree.leaves(x), shardings)]
        return jax.tree.unflatten(self.treedef, leaves)

    def put(self, leaves, *, stacked: bool = False):
        """Host (NumPy) leaves as ``jax.Array`` leaves with these shardings: each device
        receives only its own block (``jax.make_array_from_callback``; every process must
        hold the same host values), so nothing is gathered or sent whole."""
        shardings = self.basis_shardings if stacked else self.vector_shardings
        out = [jnp.asarray(a) if s is None else
               jax.make_array_from_callback(np.shape(a), s, lambda idx, a=a: a[idx])
               for a, s in zip(leaves, shardings)]
        return jax.tree.unflatten(self.treedef, out)


def pin_vector(x, placement: Placement | None):
    """:meth:`Placement.vector`, or ``x`` itself when ``placement`` is ``None``."""
    return x if placement is None else placement.vector(x)


def pin_basis(x, placement: Placement | None):
    """:meth:`Placement.basis`, or ``x`` itself when ``placement`` is ``None``."""
    return x if placement is None else placement.basis(x)


def local_bytes(x) -> int:
    """Bytes one vector shaped like ``x`` takes in the memory that limits this process: on
    CPU devices host memory, so every local shard (replicas included); on an accelerator
    one device's shards. Unsharded leaves count whole."""
    cpu = jax.default_backend() == "cpu"
    total = 0
    for a in jax.tree.leaves(x):
        s, shape = _sharding(a), np.shape(a)
        itemsize = np.dtype(jnp.result_type(a)).itemsize
        if isinstance(s, NamedSharding):
            per = int(np.prod(s.shard_shape(shape), dtype=np.int64)) * itemsize
            total += per * (len(s.addressable_devices) if cpu else 1)
        else:
            total += int(np.prod(shape, dtype=np.int64)) * itemsize
    return total
