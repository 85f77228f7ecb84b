"""Eigenvalues of a curvature operator: the friendly API over the eigensolvers.
"""

from __future__ import annotations

import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from hessian_tools import _host, tree
from hessian_tools._checks import check_tol
from hessian_tools._progress import progress_bar
from hessian_tools.linalg._space import COLUMN_BLOCK
from hessian_tools.linalg.memory import plan as memory_plan
from hessian_tools.linalg.eigsolve import lanczos_eigs
from hessian_tools.linalg.power import power_eigs
from hessian_tools.operators import CurvatureOperator, to_dense
from hessian_tools.results import Eigenpairs, Status

__all__ = ['default_tol', 'eigenvalues', 'KEPT_PRODUCTS_MAX_BYTES']


_WHICH = ("largest", "smallest", "both")


def default_tol(dtype) -> float:
    """The default relative residual tolerance: 1e-4 in float32, 1e-8 in float64."""
    return 1e-8 if jnp.dtype(dtype) == jnp.float64 else 1e-4


def _validate(op, k, which, key, method, tol):
    if not isinstance(op, CurvatureOperator):
        raise TypeError(f"Expected a CurvatureOperator (ht.hessian(obj), ht.gauss_newton(obj), "
                        f"ht.from_dense(A)), got {type(op).__name__}.")
    if which not in _WHICH:
        raise ValueError(f"which={which!r} is not one of {_WHICH}.")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k={k!r} must be a positive integer.")
    wanted = 2 * k if which == "both" else k
    if wanted > op.dim:
        raise ValueError(f"k={k} with which={which!r} asks for {wanted} eigenvalues, but the "
                         f"operator has dimension {op.dim}. Pass k <= "
                         f"{op.dim // 2 if which == 'both' else op.dim}.")
    if method not in ("lanczos", "power", "dense", "exact"):
        raise ValueError(f"method={method!r} is not one of 'lanczos', 'power', 'dense' "
                         "('exact' is an alias of 'dense').")
    check_tol("tol", tol)
    if key is None and method not in ("dense", "exact"):
        raise ValueError("eigenvalues needs an explicit PRNG key for its start vectors: pass "
                         "key=jax.random.key(0).")


@jax.jit
def _residuals(vectors, products, values):
    return jax.vmap(lambda v, w, lam: tree.norm(tree.sub(w, tree.scale(lam, v))))(
        vectors, products, values)


_row = jax.jit(tree.basis_get)


_concat = jax.jit(lambda xs: jax.tree.map(lambda *a: jnp.concatenate(a), *xs))
_take = jax.jit(lambda x, idx: jax.tree.map(lambda a: a[idx], x))


def _explicit_residuals(op, vectors, values):
    """``||A v_i - lambda_i v_i||`` with one product per vector, one vector at a time (a
    product and its residual, never all of them at once).

    On a single CPU device the arithmetic is NumPy's, in float64 (nothing to compile);
    elsewhere it stays on the device in compiled code.
    """
    out = []
    for i, value in enumerate(values):
        v = _row(vectors, i)
        w = op.apply_unchecked(v)
        if _host.host_is_device():
            layout = _host.FlatLayout(op.params_like)
            out.append(_host_residuals(layout.flat(v)[None], layout.flat(w)[None], [value])[0])
        else:
            out.append(float(_residuals(_expand(v), _expand(w),
                                        jnp.asarray([value], op.dtype))[0]))
    return np.array(out)


_expand = jax.jit(lambda x: jax.tree.map(lambda a: a[None], x))


KEPT_PRODUCTS_MAX_BYTES = 2 * 1024**3


def _memory_plan(op, k, which, krylov_dim, residuals):
    """The solve's :class:`~hessian_tools.linalg.memory.MemoryPlan` and the residual kind:
    ``"explicit"`` becomes ``"recompute"`` when the kept products would take more than
    ``KEPT_PRODUCTS_MAX_BYTES`` or would not fit in the memory available."""
    keep = residuals == "explicit"
    need = memory_plan(op.params_like, k, which, krylov_dim, keep_products=keep)
    kept = (need.krylov_dim + 1 + need.lock_rows) * need.vector_bytes
    if keep and (kept > KEPT_PRODUCTS_MAX_BYTES or not need.fits):
        residuals = "recompute"      # the same residuals, for k products instead of memory
        need = memory_plan(op.params_like, k, which, krylov_dim, keep_products=False)
    return need, residuals


def _product_residuals(op, vectors, products, values):
    """``||A v_i - lambda_i v_i||`` from products ``A v_i`` the solver kept (no matvec)."""
    if _host.host_is_device():
        layout = _host.FlatLayout(op.params_like)
        return _host_residuals(layout.flat(vectors, len(values)),
                               layout.flat(products, len(values)), values)
    return np.asarray(_residuals(vectors, products, jnp.asarray(values, op.dtype)), np.float64)


def _host_residuals(v, w, values):
    """Row norms of ``w - values v`` for ``(rows, dim)`` NumPy arrays, in float64, a block
    of columns at a time (no float64 copy of the vectors)."""
    values = np.asarray(values, np.float64)[:, None]
    total = np.zeros(len(values))
    for lo in range(0, v.shape[1], COLUMN_BLOCK):
        d = w[:, lo:lo + COLUMN_BLOCK].astype(np.float64) - values * v[:, lo:lo + COLUMN_BLOCK]
        total += np.einsum("rn,rn->r", d, d)
    return np.sqrt(total)


def _progress(total, enabled, desc):
    if not enabled:
        return None, lambda: None
    bar = progress_bar(total, desc, leave=False)

    def update(n):
        bar.n = min(n, total)
        bar.refresh()
    return update, bar.close


def eigenvalues(op: CurvatureOperator, *, k: int = 1, which: str = "largest", key=None,
                tol: float | None = None, method: str = "lanczos",
                krylov_dim: int | None = None, num_matvecs: int | None = None,
                verify: bool = True, residuals: str = "explicit",
                progress: bool = False) -> Eigenpairs:
    """Extreme eigenvalues (and eigenvectors) of a symmetric curvature operator.

    ``method="lanczos"`` (default): restarted Lanczos with full reorthogonalisation and
    locking (:func:`hessian_tools.linalg.lanczos_eigs`); repeated eigenvalues are returned
    with their multiplicity. ``"power"``: power iteration with deflation (PyHessian's
    method; slower, kept for cross-checks). ``"dense"``: the explicit matrix and
    ``numpy.linalg.eigh`` (``dim`` matvecs, ``dim^2`` memory; exact; small models only;
    ``"exact"`` is an alias).

    Accuracy: every returned pair has an explicitly computed residual
    ``r = ||A v - lambda v||`` (by default from the products ``A v`` the solver kept: see
    ``residuals``); ``converged`` means the solver's residual estimates reached
    ``tol * scale`` (``scale``: the largest ``|eigenvalue|`` seen) and every explicit residual
    is within ``10 * tol * scale`` (rounding in the products can put the explicit residual a
    little above the estimate). Then ``|lambda - lambda_true| <= r`` and, away from clusters,
    ``<= r^2 / gap``.

    Cost: Lanczos needs roughly ``k + 20-60`` matvecs per run for well separated ends,
    plus one verification run. Memory at the peak: ``2 (krylov_dim + 2k + 9) + 6``
    parameter-sized vectors with the default ``residuals="explicit"``, ``(krylov_dim + 2k +
    9) + 6`` otherwise (``4k + 8`` locked rows for ``"both"``; see
    :mod:`hessian_tools.linalg.memory`). Before solving, that is compared with the memory
    available (host memory on CPUs, the device's free memory on an accelerator): the kept
    products are dropped (``"recompute"``) when they would not fit, and a solve that still
    would not fit is refused with the numbers and the fixes. ``method="power"`` needs
    ``k + 3`` vectors (``2k + 3`` for ``"both"``).

    Args:
      op: the operator (``ht.hessian(obj)``, ``ht.gauss_newton(obj)``, ``ht.from_dense(A)``).
      k: how many eigenvalues at each requested end.
      which: ``"largest"``, ``"smallest"`` (algebraic) or ``"both"``.
      key: a ``jax.random`` key (required for Lanczos and power iteration).
      tol: relative residual tolerance (default :func:`default_tol` of the operator dtype).
      method: ``"lanczos"``, ``"power"`` or ``"dense"``.
      krylov_dim: basis rows before a thick restart (default ``max(3k + 30, 60)``, or
        ``max(6k + 40, 100)`` for ``"both"``), or ``"auto"``: the largest up to the default
        that fits in 90% of the available memory (the same answer; a smaller basis
        restarts more often). The budget ``num_matvecs`` defaults to 50 times it.
      num_matvecs: see ``krylov_dim``.
      verify: the final search for missed copies of repeated eigenvalues (see
        ``lanczos_eigs``; ``False`` saves about a third of the matvecs).
      residuals: how ``Eigenpairs.residuals`` is obtained.

        * ``"explicit"`` (default): ``||A v - lambda v||`` with ``A v`` assembled from the
          operator's own products of the basis vectors, which the solver keeps and carries
          through restarts and locking (``A`` is linear, so ``A V^T s = (A V^T) s``). A
          guaranteed bound up to rounding in that combination; no extra matvec; one more
          basis of memory. When that would exceed ``KEPT_PRODUCTS_MAX_BYTES`` (2 GiB: about
          7M float32 parameters with the default ``krylov_dim`` for ``k=5``) it falls back
          to ``"recompute"``, which the result's ``residual_kind`` then says.
        * ``"recompute"``: the same residual from ``k`` (``2k`` for ``"both"``) fresh
          products after the solve: no extra memory.
        * ``"estimate"``: the Lanczos estimates ``|beta s_mi|``, free and accurate to
          rounding with full reorthogonalisation.
      progress: show a progress bar (matvecs done / budget) on stderr.

    Returns:
      :class:`Eigenpairs` with values in descending order.

    Raises:
      ValueError: ``k`` larger than the dimension, an unknown ``which``/``method``, no key;
        a Lanczos solve that would not fit in the available memory (the message gives the
        sizes, ``krylov_dim="auto"`` and ``method="power"``).

    Examples:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> H = ht.from_dense(np.diag([3.0, 1.0, -2.0]))
      >>> eig = ht.eigenvalues(H, k=1, which="both", key=jax.random.key(0))
      >>> np.round(eig.values, 6).tolist()
      [3.0, -2.0]
    """
    _validate(op, k, which, key, method, tol)
    if residuals not in ("explicit", "recompute", "estimate"):
        raise ValueError(f"residuals={residuals!r} is not one of 'explicit', 'recompute', "
                         "'estimate'.")
    tol = default_tol(op.dtype) if tol is None else float(tol)
    start, before = time.perf_counter(), op.num_matvecs
    if method in ("dense", "exact"):
        return _dense_eigs(op, k, which, tol, start, before)
    if method == "power":
        return _power(op, k, which, key, tol, num_matvecs, start, before)
    need, residuals = _memory_plan(op, k, which, krylov_dim, residuals)
    need.check()
    budget = num_matvecs or 50 * need.krylov_dim
    update, close = _progress(budget, progress, f"Lanczos ({op.kind})")
    try:
        res = lanczos_eigs(op.apply_unchecked, key, op.params_like, k=k, which=which, tol=tol,
                           krylov_dim=need.krylov_dim, num_matvecs=num_matvecs, verify=verify,
                           callback=update, keep_products=residuals == "explicit")
    finally:
        close()
    if residuals == "explicit" and len(res.values):
        residuals_ = _product_residuals(op, res.vectors, res.products, res.values)
    elif residuals == "recompute" and len(res.values):
        residuals_ = _explicit_residuals(op, res.vectors, res.values)
    else:
        residuals_ = np.asarray(res.residual_estimates, np.float64)
    scale = max(res.scale, float(np.max(np.abs(res.values), initial=0.0)))
    converged = res.converged and bool(np.all(residuals_ <= max(tol * scale, 1e-300) * 10))
    return Eigenpairs(values=res.values, vectors=res.vectors, residuals=residuals_,
                      num_matvecs=op.num_matvecs - before,
                      status=Status.converged if converged else Status.budget, which=which, k=k,
                      tol=tol, scale=scale, method="lanczos", operator=op.kind,
                      wall_time=time.perf_counter() - start, num_restarts=res.num_restarts,
                      residual_kind=residuals, seed=tree.key_bits(key),
                      extra={"verify": verify, "krylov_dim": need.krylov_dim,
                             "memory_bytes": need.bytes})


def _select(values, k, which):
    """Indices of the wanted eigenvalues of an ascending ``values`` array, descending order."""
    n = len(values)
    if which == "largest":
        idx = list(range(n - 1, n - 1 - k, -1))
    elif which == "smallest":
        idx = list(range(k - 1, -1, -1))
    else:
        idx = list(range(n - 1, n - 1 - k, -1)) + list(range(k - 1, -1, -1))
    return np.array(idx, dtype=int)


def _dense_eigs(op, k, which, tol, start, before):
    matrix = to_dense(op)
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    idx = _select(values, k, which)
    _, unravel = jax.flatten_util.ravel_pytree(
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), op.params_like))
    stacked = jax.vmap(unravel)(jnp.asarray(vectors[:, idx].T, op.dtype))
    residuals = np.linalg.norm(matrix @ vectors[:, idx] - vectors[:, idx] * values[idx], axis=0)
    return Eigenpairs(values=values[idx], vectors=stacked, residuals=residuals,
                      num_matvecs=op.num_matvecs - before, status=Status.converged, which=which,
                      k=k, tol=tol, scale=float(np.max(np.abs(values))), method="dense",
                      operator=op.kind, wall_time=time.perf_counter() - start)


def _power(op, k, which, key, tol, num_matvecs, start, before):
    ends = ["largest", "smallest"] if which == "both" else [which]
    values, vectors, ok = [], [], True
    for end in ends:
        key, sub = jax.random.split(key)
        out = power_eigs(op.apply_unchecked, sub, op.params_like, k=k, which=end, tol=tol,
                         num_matvecs=num_matvecs or 1000)
        values += list(out["values"])
        vectors.append(out["vectors"])
        ok &= out["converged"]
    order = np.argsort(-np.array(values), kind="stable")
    values = np.array(values)[order]
    stacked = _take(vectors[0] if len(vectors) == 1 else _concat(vectors), jnp.asarray(order))
    residuals = _explicit_residuals(op, stacked, values)
    scale = float(np.max(np.abs(values)))
    return Eigenpairs(values=values, vectors=stacked, residuals=residuals,
                      num_matvecs=op.num_matvecs - before,
                      status=Status.converged if ok else Status.budget, which=which, k=k, tol=tol,
                      scale=scale, method="power", operator=op.kind,
                      wall_time=time.perf_counter() - start, seed=tree.key_bits(key))
