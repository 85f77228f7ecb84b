"""Pytree vector arithmetic.

Vectors in hessian_tools are pytrees shaped like the parameters (a flat array is
the one-leaf case). A *stacked basis* is a pytree whose leaves carry one extra
leading axis: row ``i`` of every leaf together form vector ``i``. Nothing here
gathers the leaves into one flat array, so sharded parameters stay sharded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "FlatLayout", "add", "axpy", "basis_combine", "basis_dot", "basis_get", "basis_set",
    "host_algebra", "host_is_device", "host_normal_flat", "host_normal_like", "key_bits",
    "norm", "normal_like", "rademacher_like", "ravel", "scale", "single_threaded_blas",
    "size", "sub", "vdot", "zeros_basis", "zeros_like", "path_str", "flat_paths",
    "check_same_structure",
]


_HIGHEST = jax.lax.Precision.HIGHEST
"""The precision of every product in this module: on NVIDIA GPUs JAX's default for float32
is TF32 (about 1e-3 relative), which would cap the orthogonality of Lanczos bases there. On
CPUs it changes nothing."""


def vdot(x, y) -> jax.Array:
    """Euclidean inner product ``<x, y>`` of two pytrees of the same structure."""
    parts = [jnp.vdot(a, b, precision=_HIGHEST)
             for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y))]
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


def _host_rng(key_or_rng) -> np.random.Generator:
    if isinstance(key_or_rng, np.random.Generator):
        return key_or_rng
    return np.random.default_rng(key_bits(key_or_rng))


def host_normal_like(key, x):
    """A standard normal pytree shaped like ``x``, drawn by NumPy from the key's bits.

    The same key gives the same vector. Nothing is compiled: a random kernel costs about
    0.5 s of XLA compilation on CPU, paid on the first call of every new shape. Use it for
    start vectors drawn outside ``jit``; inside traced code use :func:`normal_like`.
    ``key`` may also be a ``numpy.random.Generator``, which the draw advances (a stream of
    vectors from one key); :func:`host_normal_flat` draws the same numbers as one array.
    """
    rng = _host_rng(key)
    leaves, treedef = jax.tree.flatten(x)
    return treedef.unflatten([jnp.asarray(rng.standard_normal(np.shape(a)).astype(
        np.dtype(jnp.result_type(a)))) for a in leaves])


def host_normal_flat(key, shapes, dtype) -> np.ndarray:
    """The draw of :func:`host_normal_like` for leaves of ``shapes``, as one flat NumPy array."""
    rng = _host_rng(key)
    parts = [rng.standard_normal(s).astype(dtype).reshape(-1) for s in shapes]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def host_is_device() -> bool:
    """Whether JAX computes on this process's CPU with a single device.

    Then a ``jax.Array`` already lives in host memory and NumPy reads it without a copy,
    so small vector algebra can run in NumPy with nothing to compile.
    """
    return jax.default_backend() == "cpu" and jax.local_device_count() == 1


def rademacher_like(key, x):
    """A Rademacher (+-1) pytree shaped like ``x``."""
    return _random_like(jax.random.rademacher, key, x)


def ravel(x) -> jax.Array:
    """Concatenate all leaves into one flat vector (for dense references and tiny models)."""
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(x)])


def host_algebra(like) -> bool:
    """Whether vectors shaped like ``like`` can live on the host as one flat NumPy array
    (:class:`FlatLayout`) at no cost: JAX runs on a single CPU device
    (:func:`host_is_device`) and every leaf has the same dtype."""
    return host_is_device() and len({np.dtype(jnp.result_type(a))
                                     for a in jax.tree.leaves(like)}) == 1


def single_threaded_blas():
    """A context manager in which NumPy's BLAS runs on one thread (``threadpoolctl``).

    Host-side vector algebra runs between XLA calls that already use every core. OpenBLAS's
    worker threads busy-wait after each call and then compete with XLA's. On 2 cores that
    took a warm top-5 solve of the wide digits MLP from 0.85 s to 1.43 s. The host products
    are memory-bound, so one thread loses nothing.
    """
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1, user_api="blas")


class FlatLayout:
    """How a pytree vector (one dtype) maps to one flat NumPy array, and back.

    For host-side vector algebra on a single CPU device (:func:`host_is_device`), where
    reading a ``jax.Array`` into NumPy costs no copy. Leaves are concatenated in tree order.
    """

    def __init__(self, like):
        leaves, self.treedef = jax.tree.flatten(like)
        self.shapes = [tuple(np.shape(a)) for a in leaves]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.splits = np.cumsum(self.sizes)[:-1]
        self.dtypes = [np.dtype(jnp.result_type(a)) for a in leaves]
        self.dtype = np.dtype(jnp.result_type(*leaves))
        self.dim = sum(self.sizes)

    def flat(self, x, rows: int | None = None) -> np.ndarray:
        """A vector as a ``(dim,)`` array, or a stacked basis of ``rows`` rows as
        ``(rows, dim)``. May be a read-only view of the leaf when there is one leaf."""
        shape = (-1,) if rows is None else (rows, -1)
        parts = [np.asarray(a, self.dtype).reshape(shape) for a in jax.tree.leaves(x)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)

    def tree(self, flat: np.ndarray):
        """The inverse of :meth:`flat`, with ``jax.Array`` leaves: ``(dim,)`` gives a vector,
        ``(rows, dim)`` a stacked basis."""
        lead = flat.shape[:-1]
        parts = np.split(flat, self.splits, axis=-1)
        return self.treedef.unflatten([jnp.asarray(p.reshape(lead + s), d) for p, s, d in
                                       zip(parts, self.shapes, self.dtypes)])


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
    parts = [jnp.tensordot(b, a, axes=a.ndim, precision=_HIGHEST) for b, a in
             zip(jax.tree.leaves(basis), jax.tree.leaves(x))]
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
