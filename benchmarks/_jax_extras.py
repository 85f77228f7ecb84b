"""JAX helpers for the benchmark: a no-scan Hessian operator, flat matvecs, an oracle, timing.

The no-scan operator is the workaround measured next to the library operator: for data that
is one batch it linearises ``jax.grad`` of the loss on that batch directly, without the
``lax.scan`` over stacked batches that ``ht.hessian`` always uses. XLA's CPU backend runs
the kernel-gradient convolutions of a conv net ~40x slower inside a loop body (scan, fori
or while), so the library's CNN operator pays that even when called from Python.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

import hessian_tools as ht

__all__ = ["noscan_hessian", "direct_grad_fn", "direct_hvp_fn", "FlatOperator", "timeit",
           "oracle_steps", "block", "cached_eig_reference", "cached_trace_reference", "weights_sha",
           "package_fingerprint"]


def cached_eig_reference(out, model: str) -> np.ndarray:
    """The float64 top eigenvalues ``bench_eigs.py`` caches in ``<out>/reference_<model>.json``
    (exits with a hint when it has not run)."""
    import json
    from pathlib import Path
    path = Path(out) / f"reference_{model}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run benchmarks/peers/bench_eigs.py --models {model} "
                         "first (it computes and caches the float64 reference).")
    return np.asarray(json.loads(path.read_text())["values"])


def cached_trace_reference(out, model: str, sha: str | None = None) -> float | None:
    """The reference trace cached in ``<out>``: the exact one (the sum of the dense float64
    spectrum in ``reference_density_<model>.json``) or else the Hutch++ reference in
    ``reference_trace_<model>.json`` (both written by ``bench_density.py``). With ``sha``
    only a file for those weights counts. None when there is none."""
    import json
    from pathlib import Path
    for name, value in ((f"reference_density_{model}.json", lambda d: float(np.sum(d["eigenvalues"]))),
                        (f"reference_trace_{model}.json", lambda d: float(d["value"]))):
        path = Path(out) / name
        if path.exists():
            data = json.loads(path.read_text())
            if sha is None or data.get("weights_sha256") == sha:
                return value(data)
    return None


def weights_sha(params) -> str:
    """The first 16 hex digits of the SHA-256 of the float32 parameter leaves: the key under
    which the float64 references in ``results/`` are cached."""
    import hashlib
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()[:16]


def package_fingerprint() -> dict:
    """Where hessian_tools was imported from and a hash of its sources (it is under edit)."""
    import hashlib
    from pathlib import Path
    root = Path(ht.__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.read_bytes())
    return {"path": str(root), "sources_sha256": h.hexdigest()[:16]}


def block(x):
    """Wait for every array in ``x``; return ``x``."""
    return jax.block_until_ready(x)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _LinearizedNoScan:
    lin: Any

    def __call__(self, v):
        return self.lin(v)


@jax.jit
def _linearize_direct(loss, params, batch):
    return jax.linearize(lambda p: jax.grad(loss)(p, batch), params)[1]


def noscan_hessian(obj) -> ht.CurvatureOperator:
    """The linearised Hessian of a one-batch objective, without the scan over batches."""
    if not isinstance(obj.data, tuple):
        raise ValueError("noscan_hessian needs the data as one (x, y) batch.")
    fn = _LinearizedNoScan(_linearize_direct(obj.loss, obj.params, obj.data))
    return ht.CurvatureOperator("hessian", obj.params, fn, meta={"linearized": True,
                                                                 "noscan": True})


direct_grad_fn = jax.jit(lambda loss, p, b: jax.grad(loss)(p, b))
direct_hvp_fn = jax.jit(lambda loss, p, v, b: jax.jvp(lambda q: jax.grad(loss)(q, b),
                                                      (p,), (v,))[1])


class FlatOperator:
    """``x -> ravel(A unravel(x))`` for a CurvatureOperator, on flat float vectors."""

    def __init__(self, op: ht.CurvatureOperator):
        self.op = op
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), op.params_like)
        self.zeros_flat, self.unravel = jax.flatten_util.ravel_pytree(zeros)
        self.dim = self.zeros_flat.size
        unravel = self.unravel
        self._apply = jax.jit(lambda mv, x: jax.flatten_util.ravel_pytree(mv(unravel(x)))[0])

    def __call__(self, x):
        return self._apply(self.op.matvec_fn, x)

    def ravel(self, tree):
        return jax.flatten_util.ravel_pytree(tree)[0]

    def residuals(self, values, vectors) -> np.ndarray:
        """``||A v_i - lambda_i v_i|| / ||v_i||`` for flat vectors (rows of ``vectors``)."""
        out = []
        for lam, v in zip(values, vectors):
            v = jnp.asarray(v, self.zeros_flat.dtype)
            v = v / jnp.linalg.norm(v)
            out.append(float(jnp.linalg.norm(self(v) - float(lam) * v)))
        return np.array(out)


def timeit(fn, *, repeats: int, budget_s: float = 30.0, warmup: bool = True) -> dict:
    """Median/min wall time of ``fn()`` (which must block), after one untimed warm-up call."""
    if warmup:
        fn()
    times, start = [], time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "n": len(times)}


@jax.jit
def _cgs2_step(basis, j, w):
    h = basis @ w
    w = w - basis.T @ h
    h2 = basis @ w
    w = w - basis.T @ h2
    beta = jnp.linalg.norm(w)
    basis = basis.at[j + 1].set(w / beta)
    return basis, w / beta, h + h2, beta


def oracle_steps(flat_mv, v0, *, k: int, tol: float, max_steps: int) -> int | None:
    """Fewest steps of full-reorthogonalisation Lanczos from ``v0`` after which the top-``k``
    Ritz residual estimates ``|beta_m s_{m,i}|`` are all ``<= tol * max|theta|``.

    This is what a user of a fixed-length Lanczos (hessian-eigenthings, matfree) would have
    to guess: the benchmark hands them this oracle value (optimistic for them) and then
    checks the explicit residual of what they return.
    """
    v0 = jnp.asarray(v0, jnp.float32)
    q = v0 / jnp.linalg.norm(v0)
    basis = jnp.zeros((max_steps + 1, v0.size), v0.dtype).at[0].set(q)
    proj = np.zeros((max_steps, max_steps))
    for j in range(max_steps):
        basis, q, h, beta = _cgs2_step(basis, j, flat_mv(q))
        h = np.asarray(h, np.float64)
        proj[:j + 1, j] = proj[j, :j + 1] = h[:j + 1]
        m = j + 1
        if m < k:
            continue
        theta, s = np.linalg.eigh(proj[:m, :m])
        res = abs(float(beta)) * np.abs(s[-1, -k:])
        if np.all(res <= tol * np.max(np.abs(theta))):
            return m
    return None
