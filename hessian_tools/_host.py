"""Execution on the host: a single CPU device computes where NumPy reads JAX's arrays without a
copy, so small vector algebra can run in NumPy there (``FlatLayout``, host draws, one-thread
BLAS).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import ThreadpoolController

from hessian_tools.tree import key_bits

__all__ = ["FlatLayout", "available_memory", "host_algebra", "host_is_device", "host_normal_flat",
           "host_normal_leaves", "host_normal_like", "single_threaded_blas"]


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
    leaves, treedef = jax.tree.flatten(x)
    return treedef.unflatten([jnp.asarray(a) for a in host_normal_leaves(key, leaves)])


def host_normal_leaves(key, leaves) -> list[np.ndarray]:
    """The draw of :func:`host_normal_like` as NumPy arrays, one per leaf of ``leaves``."""
    rng = _host_rng(key)
    return [rng.standard_normal(np.shape(a)).astype(np.dtype(jnp.result_type(a)))
            for a in leaves]


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


def host_algebra(like) -> bool:
    """Whether vectors shaped like ``like`` can live on the host as one flat NumPy array
    (:class:`FlatLayout`) at no cost: JAX runs on a single CPU device
    (:func:`host_is_device`) and every leaf has the same dtype."""
    return host_is_device() and len({np.dtype(jnp.result_type(a))
                                     for a in jax.tree.leaves(like)}) == 1


def available_memory() -> tuple[int, str]:
    """``(bytes, where)``: the memory a new allocation can take without swapping or failing.

    On a CPU backend, the host's: ``MemAvailable`` of ``/proc/meminfo`` (the kernel's
    estimate of what can be allocated without swapping), capped by a cgroup's
    ``memory.max`` less its ``memory.current`` (containers). Elsewhere the least free
    memory of this process's devices (``bytes_limit - bytes_in_use``). ``(0, "")`` when it
    cannot be told (the caller then assumes it fits).
    """
    if jax.default_backend() != "cpu":
        free = [stats["bytes_limit"] - stats.get("bytes_in_use", 0)
                for stats in (d.memory_stats() or {} for d in jax.local_devices())
                if "bytes_limit" in stats]
        return (min(free), f"free memory of {jax.local_devices()[0].device_kind}") if free \
            else (0, "")
    found = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        found.append((int(info["MemAvailable"].split()[0]) * 1024, "MemAvailable"))
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            found.append((int(limit) - used, "the cgroup's memory.max less memory.current"))
    return min(found) if found else (0, "")


def single_threaded_blas():
    """A context manager in which NumPy's BLAS runs on one thread (``threadpoolctl``; the
    loaded libraries are found once per process: a fresh search took 0.9 ms per solve).

    Host-side vector algebra runs between XLA calls that already use every core. OpenBLAS's
    worker threads busy-wait after each call and then compete with XLA's. On 2 cores that
    took a warm top-5 solve of the wide digits MLP from 0.85 s to 1.43 s. The host products
    are memory-bound, so one thread loses nothing.
    """
    return _threadpools().limit(limits=1, user_api="blas")


@functools.cache
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()


class FlatLayout:
    """How a pytree vector (one dtype) maps to one flat NumPy array, and back.

    The flat array is float32 for 16-bit leaves (bfloat16, float16), the leaves' dtype
    otherwise; :meth:`tree` casts back.

    For host-side vector algebra on a single CPU device (:func:`host_is_device`), where
    reading a ``jax.Array`` into NumPy costs no copy. Leaves are concatenated in tree order.
    """

    def __init__(self, like):
        leaves, self.treedef = jax.tree.flatten(like)
        self.shapes = [tuple(np.shape(a)) for a in leaves]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.dtypes = [np.dtype(jnp.result_type(a)) for a in leaves]
        # host algebra never runs in 16 bits (NumPy has no bfloat16 BLAS): at least float32
        self.dtype = np.promote_types(jnp.result_type(*leaves), np.float32)
        self.dim = sum(self.sizes)

    def flat(self, x, rows: int | None = None) -> np.ndarray:
        """A vector as a ``(dim,)`` array, or a stacked basis of ``rows`` rows as
        ``(rows, dim)``. May be a read-only view of the leaf when there is one leaf."""
        shape = (-1,) if rows is None else (rows, -1)
        parts = [np.asarray(a, self.dtype).reshape(shape) for a in jax.tree.leaves(x)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)

    def tree(self, flat: np.ndarray, *, once: bool = False):
        """The inverse of :meth:`flat`, with ``jax.Array`` leaves: ``(dim,)`` gives a vector,
        ``(rows, dim)`` a stacked basis.

        Several leaves are cut from one transfer in one compiled call, compiled once per
        layout and shape (0.04-0.1 s): a transfer per leaf took 0.3-0.8 ms a vector, more
        than a Lanczos step's own algebra at 10k parameters. ``once=True`` (a conversion
        made once, e.g. of a solve's results) skips the compilation: a transfer per leaf.
        """
        lead = flat.shape[:-1]
        if len(self.shapes) == 1 or once:
            parts = np.split(flat, np.cumsum(self.sizes)[:-1], axis=-1)
            return self.treedef.unflatten([jnp.asarray(p.reshape(lead + s), d) for p, s, d in
                                           zip(parts, self.shapes, self.dtypes)])
        return self.treedef.unflatten(_unflatten(flat, tuple(self.shapes),
                                                 tuple(self.dtypes)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _unflatten(flat, shapes, dtypes):
    """The leaves of shapes ``shapes`` (and dtypes ``dtypes``) cut from the last axis of
    ``flat``, in order."""
    lead, out, lo = flat.shape[:-1], [], 0
    for shape, dtype in zip(shapes, dtypes):
        size = int(np.prod(shape, dtype=np.int64))
        out.append(flat[..., lo:lo + size].reshape(lead + shape).astype(dtype))
        lo += size
    return out
