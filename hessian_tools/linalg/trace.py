"""Stochastic trace estimators, as pure functions of a matvec.

* :func:`hutchinson_samples`: the samples ``v_i^T A v_i`` of Hutchinson's estimator
  (Hutchinson 1989). Their mean is unbiased for ``tr(A)`` when ``E[v v^T] = I``;
  Rademacher probes have variance ``2 (||A||_F^2 - sum_i A_ii^2)`` per sample, Gaussian
  probes ``2 ||A||_F^2``.
* :func:`xtrace_samples`: XTrace (Epperly, Tropp & Webber 2024), the exchangeable form of
  Hutch++: every test vector serves both the low-rank sketch and the Hutchinson remainder,
  by leaving it out of the sketch in turn.
* :func:`hutchpp`: Hutch++ (Meyer, Musco, Musco & Woodruff 2021): the trace of a rank-``k``
  sketch ``Q^T A Q`` computed exactly, plus Hutchinson on the deflated remainder
  ``(I - Q Q^T) A (I - Q Q^T)``. For a matrix whose spectrum decays (low rank plus noise)
  the remainder is small, and the error falls like ``1/num_matvecs`` instead of
  ``1/sqrt(num_matvecs)``.

Vectors are pytrees; a set of probes is a *stacked* pytree (leaves with a leading probe
axis, see :mod:`hessian_tools.tree`). Products with all probes are batched with
``jax.lax.map(..., batch_size=...)``: ``batch_size`` probes go through one vmapped matvec
at a time (``None``: all at once, the fastest, memory ``num_probes x`` one product's).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools.linalg._space import host_orthogonalize, orthogonalize

__all__ = ["random_probes", "batched_matvec", "hutchinson_samples", "orthonormalize",
           "orthonormalize_numpy", "project_out", "hutchpp", "hutchpp_rows", "xtrace_samples",
           "HostRows", "DeviceRows", "PROBES"]

PROBES = ("rademacher", "gaussian")


def random_probes(key, v_like, num: int, *, kind: str = "rademacher",
                  pin: tree.Placement | None = None):
    """``num`` independent random vectors shaped like ``v_like``, stacked.

    Args:
      key: a ``jax.random`` key; probe ``i`` is drawn with ``jax.random.split(key, num)[i]``
        (the same key and ``num`` give the same probes).
      v_like: a pytree of arrays (or anything with ``.shape``/``.dtype`` leaves).
      num: the number of probes (a Python int).
      kind: ``"rademacher"`` (entries +-1) or ``"gaussian"`` (standard normal).
      pin: the parameters' placement when they are sharded: the probes are created with
        their shardings (the same numbers).

    Returns:
      A stacked pytree: every leaf has shape ``(num, *leaf.shape)``.
    """
    like = jax.tree.map(lambda a: jnp.zeros(jnp.shape(a), jnp.result_type(a)), v_like)
    draw = tree.rademacher_like if kind == "rademacher" else tree.normal_like
    return tree.pin_basis(jax.vmap(lambda k: draw(k, like))(jax.random.split(key, num)), pin)


def batched_matvec(matvec: Callable, vectors, *, batch_size: int | None = None):
    """``A v_i`` for every row of a stacked pytree, ``batch_size`` rows per vmapped call."""
    return jax.lax.map(matvec, vectors, batch_size=batch_size)


def _rowwise_dot(x, y) -> jax.Array:
    """``<x_i, y_i>`` for every row of two stacked pytrees, shape ``(num,)``."""
    return jax.vmap(tree.vdot)(x, y)


def hutchinson_samples(matvec: Callable, probes, *, batch_size: int | None = None) -> jax.Array:
    """The Hutchinson samples ``v_i^T A v_i``, one per probe (shape ``(num_probes,)``).

    Their mean estimates ``tr(A)`` without bias for probes with ``E[v v^T] = I``; their
    sample standard deviation over ``sqrt(num_probes)`` is the standard error. Pure and
    jittable. Cost: one matvec per probe.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> a = jnp.diag(jnp.array([3.0, 1.0, -2.0]))
      >>> v = random_probes(jax.random.key(0), jnp.zeros(3), 4)
      >>> hutchinson_samples(lambda x: a @ x, v).tolist()   # Rademacher: v^T A v = tr(A)
      [2.0, 2.0, 2.0, 2.0]
    """
    return _rowwise_dot(probes, batched_matvec(matvec, probes, batch_size=batch_size))


def orthonormalize(vectors, *, rtol: float | None = None):
    """An orthonormal basis of the span of the rows of a stacked pytree (CGS2, in order).

    Row ``j`` is orthogonalised twice against rows ``0..j-1`` and normalised. A row whose
    remainder is below ``rtol`` times its original norm (the rows are linearly dependent:
    the sketch of a low-rank matrix) becomes zero: zero rows add nothing to ``Q Q^T``.

    Args:
      vectors: stacked pytree of ``k`` rows.
      rtol: dependence tolerance (default ``100 * eps`` of the dtype).

    Returns:
      A stacked pytree like ``vectors`` with orthonormal (or zero) rows.
    """
    rows = jax.tree.leaves(vectors)[0].shape[0]
    dtype = jnp.result_type(*jax.tree.leaves(vectors))
    rtol = 100 * float(jnp.finfo(dtype).eps) if rtol is None else rtol

    def body(j, basis):
        w = tree.basis_get(vectors, j)
        size = tree.norm(w)
        w = orthogonalize(w, basis)                     # zero rows contribute nothing
        rem = tree.norm(w)
        keep = rem > rtol * size
        w = tree.scale(jnp.where(keep, 1.0 / jnp.where(keep, rem, 1.0), 0.0), w)
        return tree.basis_set(basis, j, w)

    return jax.lax.fori_loop(0, rows, body, tree.zeros_like(vectors))


def orthonormalize_numpy(rows: np.ndarray, *, rtol: float) -> np.ndarray:
    """:func:`orthonormalize` for a ``(k, dim)`` NumPy array: the same CGS2 in row order and
    the same zeroing of rows whose remainder is below ``rtol`` times their norm, computed in
    float64 (rows orthonormal to about ``1e-15``). Cost ``O(k^2 dim)`` flops, no matvecs;
    memory one more ``(k, dim)`` array. Used by ``ht.trace`` on a single CPU device."""
    basis = np.zeros(rows.shape, np.float64)
    for j, w in enumerate(rows.astype(np.float64)):
        size = np.linalg.norm(w)
        w = host_orthogonalize(w, basis[:j])
        rem = np.linalg.norm(w)
        basis[j] = w / rem if rem > rtol * size else 0.0
    return basis


def project_out(basis, vectors):
    """``(I - Q^T Q) v_i`` for every row ``v_i`` of ``vectors`` (``Q``: orthonormal rows)."""
    return jax.vmap(lambda v: tree.sub(v, tree.basis_combine(tree.basis_dot(basis, v),
                                                             basis)))(vectors)


def hutchpp(matvec: Callable, sketch, probes, *, batch_size: int | None = None):
    """Hutch++: ``tr(A) ~ tr(Q^T A Q) + mean_i g_i^T (I-QQ^T) A (I-QQ^T) g_i``.

    ``Q`` is an orthonormal basis of ``A S`` for the random ``sketch`` ``S``. The first
    term is exact given ``Q``; the second is Hutchinson's estimator of the deflated
    remainder, unbiased given ``Q``, so its samples give the standard error (Meyer et al.
    2021, Algorithm 1). Pure and jittable.

    The products with ``Q`` and with the deflated probes go through one batched call
    (one copy of the matvec in the compiled code for both).

    Args:
      matvec: ``v -> A v`` for symmetric ``A``.
      sketch: stacked pytree of ``k`` random vectors ``S``.
      probes: stacked pytree of ``l`` random vectors ``G``.
      batch_size: rows per vmapped matvec call (``None``: all at once).

    Returns:
      ``(low_rank_trace, samples)``: the scalar ``tr(Q^T A Q)`` and the ``(l,)`` remainder
      samples. Estimate: ``low_rank_trace + mean(samples)``. Cost ``2k + l`` matvecs; memory
      ``3k + 2l`` vectors.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> a = jnp.diag(jnp.array([3.0, 1.0, -2.0]))
      >>> s = random_probes(jax.random.key(0), jnp.zeros(3), 3, kind="gaussian")  # exact
      >>> g = random_probes(jax.random.key(1), jnp.zeros(3), 2)
      >>> low, samples = hutchpp(lambda x: a @ x, s, g)
      >>> round(float(low), 6), [round(float(x), 6) for x in samples]
      (2.0, [0.0, 0.0])
    """
    return hutchpp_rows(lambda rows: batched_matvec(matvec, rows, batch_size=batch_size),
                        sketch, probes)


def hutchpp_rows(apply_rows: Callable, sketch, probes):
    """:func:`hutchpp` with the products given as ``apply_rows(stacked) -> stacked``: the
    one Hutch++ for every way of running the products (one compiled batched call, or one
    product per row from Python; see ``CurvatureOperator.rows``). Two calls of
    ``apply_rows``: the sketch, then ``Q`` and the deflated probes together."""
    q = orthonormalize(apply_rows(sketch))
    deflated = project_out(q, probes)
    k = jax.tree.leaves(q)[0].shape[0]
    rows = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), q, deflated)
    quad = _rowwise_dot(rows, apply_rows(rows))              # A Q and A (I-QQ^T) G
    return jnp.sum(quad[:k]), quad[k:]


class HostRows:
    """XTrace's parameter-sized algebra on ``(m, n)`` float64 NumPy arrays (a single CPU
    device, where NumPy reads JAX's arrays in place): a Householder QR, Gram matrices."""

    eps = float(np.finfo(np.float64).eps)

    @staticmethod
    def prepare(omega):
        return np.array(omega, np.float64)

    @staticmethod
    def qr(y):
        """``(Q, R)`` with ``Y^T = Q^T R``: orthonormal rows ``Q``, ``R`` an ``(m, m)`` array."""
        q, r = np.linalg.qr(y.T)
        return q.T, r

    @staticmethod
    def gram(a, b) -> np.ndarray:
        return a @ b.T

    @staticmethod
    def scale_rows(x, c):
        return x * np.asarray(c)[:, None]

    @staticmethod
    def orthonormalize(y, rtol):
        return orthonormalize_numpy(y, rtol=rtol)


class DeviceRows:
    """XTrace's parameter-sized algebra on stacked pytrees, in compiled functions (CGS2
    for the QR, ``R`` and every Gram matrix by :func:`hessian_tools.tree.basis_gram`), so
    rows keep the parameters' shardings and only ``(m, m)`` matrices reach the host, where
    the rest of XTrace runs in float64. The vectors stay in the parameters' dtype."""

    def __init__(self, like, pin: tree.Placement | None = None):
        self.pin = pin
        self.eps = float(jnp.finfo(jnp.result_type(*jax.tree.leaves(like))).eps)

    @staticmethod
    def prepare(omega):
        return omega

    def qr(self, y):
        q = _orthonormalize_jit(y, None, pin=self.pin)
        return q, self.gram(q, y)

    @staticmethod
    def gram(a, b) -> np.ndarray:
        return np.asarray(_gram_jit(a, b), np.float64)

    def scale_rows(self, x, c):
        return _scale_rows_jit(x, jnp.asarray(c), pin=self.pin)

    def orthonormalize(self, y, rtol):
        return _orthonormalize_jit(y, rtol, pin=self.pin)


@functools.partial(jax.jit, static_argnames=("rtol", "pin"))
def _orthonormalize_jit(y, rtol, *, pin):
    return tree.pin_basis(orthonormalize(y, rtol=rtol), pin)


_gram_jit = jax.jit(tree.basis_gram)


@functools.partial(jax.jit, static_argnames=("pin",))
def _scale_rows_jit(x, c, *, pin):
    return tree.pin_basis(jax.tree.map(lambda a: (a * c.reshape((-1,) + (1,) * (a.ndim - 1))
                                                  ).astype(a.dtype), x), pin)


def xtrace_samples(omega, products: Callable, *, sphere: bool, jackknife: bool = False,
                   rows=HostRows):
    """XTrace's ``m`` leave-one-out estimates of ``tr(A)`` (Epperly, Tropp & Webber 2024).

    With ``Y = A Omega`` (test vectors as the rows of ``omega``) and ``Q`` an orthonormal basis
    of ``Y``, estimate ``i`` is Hutch++ with the sketch ``Y`` minus its column ``i`` and the
    single probe ``omega_i``: ``tr(Q_i^T A Q_i) + u^T A u`` with ``u = (I - Q_i Q_i^T)
    omega_i``. ``range(Q_i)`` is the part of ``range(Q)`` orthogonal to ``s_i``, the
    normalised column ``i`` of ``R^{-T}`` (``Y = QR``), so every ``A Q_i`` and ``A u`` is a
    combination of ``Y`` and ``Z = A Q``, and all ``m`` estimates cost ``O(m^2 n + m^3)``
    flops past the ``2m`` products. Each is unbiased; their mean is the estimate, and their
    spread over ``sqrt(m)`` the paper's error estimate.

    Only the QR of ``Y`` and five ``(m, m)`` Gram matrices touch parameter-sized vectors;
    ``rows`` says where: :class:`HostRows` (``(m, n)`` float64 NumPy arrays) or a
    :class:`DeviceRows` (stacked pytrees in compiled code, sharded parameters staying
    sharded). The rest runs on the host in float64 either way.

    ``sphere=True`` is the paper's improved form: ``omega`` rows are rescaled to norm
    ``sqrt(n)`` (uniform on the sphere from Gaussian rows), and then each is scaled so that
    its part outside ``range(Q_i)`` has squared norm ``n - m + 1``, the dimension it is
    sampled from. Use it with Gaussian rows; Rademacher rows are used as they are.

    Args:
      omega: ``m >= 2`` test vectors: an ``(m, n)`` array for :class:`HostRows`, a stacked
        pytree for :class:`DeviceRows`.
      products: ``rows -> A rows`` in the same form (``A`` symmetric).
      sphere: the improved normalisation (see above).
      jackknife: also return XTrace's estimate with each test vector left out of the whole
        computation (sketch and probes), ``theta_(j)`` for ``j < m``, from the same products
        (the left-out sketches span subspaces of ``range(Q)``): ``O(m^4)`` more flops. The
        jackknife variance ``(m - 1)/m * sum_j (theta_(j) - mean)^2`` does not understate
        the variance in expectation (Efron & Stein 1981; for the estimate on ``m - 1``
        vectors, which varies at least as much as the one on ``m`` in our checks).
      rows: :class:`HostRows` (default) or a :class:`DeviceRows`.

    Returns:
      ``(m,)`` float64 estimates, or ``(estimates, theta_minus_j)`` with ``jackknife``. When
      ``Y`` is rank-deficient (``A`` of rank below ``m``, so the sketch captures all of it)
      every estimate is the exact ``tr(Q^T A Q)``.
    """
    omega = rows.prepare(omega)
    m, n = jax.tree.leaves(omega)[0].shape[0], tree.size(omega) // jax.tree.leaves(
        omega)[0].shape[0]
    if sphere:
        norms = np.sqrt(np.diag(rows.gram(omega, omega)))
        omega = rows.scale_rows(omega, math.sqrt(n) / norms)
    y = products(omega)                                   # rows A omega_i
    q, r = rows.qr(y)                                     # Y = QR, Y's columns A omega_i
    diag = np.abs(np.diag(r))
    if diag.min() <= 100 * rows.eps * max(diag.max(), 1e-300) * m:
        basis = rows.orthonormalize(y, 100 * float(np.finfo(np.float32).eps))
        low = np.full(m, float(np.trace(rows.gram(basis, products(basis)))))
        return (low, low.copy()) if jackknife else low
    z = products(q)                                       # rows of A Q
    w = rows.gram(q, omega)                               # Q^T Omega
    s = np.linalg.solve(r, np.eye(m)).T                   # columns: R^{-T} e_i
    s /= np.linalg.norm(s, axis=0, keepdims=True)
    h = rows.gram(q, z)
    h = (h + h.T) / 2                                     # Q^T A Q, symmetric
    t = (rows.gram(z, omega) + r) / 2                     # Q^T A omega_i, two ways (Z, R)
    quad0 = np.diag(rows.gram(omega, y)).copy()           # omega_i^T A omega_i
    jack = _xtrace_left_out(h, w, t, quad0, s, n, sphere) if jackknife else None
    c = np.einsum("ki,ki->i", s, w)                       # s_i^T w_i
    if sphere:
        scale = math.sqrt(n - m + 1) / np.sqrt(n - np.sum(w * w, axis=0) + c * c)
        w, c, t, quad0 = w * scale, c * scale, t * scale, quad0 * scale ** 2
    hs, hw = h @ s, h @ w
    quad = (quad0 - 2 * np.einsum("ki,ki->i", t, w) + np.einsum("ki,ki->i", w, hw)
            + 2 * c * (np.einsum("ki,ki->i", t, s) - np.einsum("ki,ki->i", s, hw))
            + c * c * np.einsum("ki,ki->i", s, hs))
    est = np.trace(h) - np.einsum("ki,ki->i", s, hs) + quad
    return (est, jack) if jackknife else est


def _xtrace_left_out(h, w, t, quad0, s, n, sphere) -> np.ndarray:
    """``theta_(j)``: XTrace on every test vector but ``j``, in the coordinates of ``Q``.

    Without vector ``j``, estimate ``i`` sketches ``Y`` minus columns ``i`` and ``j``, whose
    range is ``Q (I - B B^T)`` with ``B`` an orthonormal basis of ``{s_i, s_j}``. With
    ``p = (I - B B^T) w_i`` the estimate is ``tr(H) - tr(B^T H B) + omega_i^T A omega_i
    - 2 t_i^T p + p^T H p`` (``H = Q^T A Q``, ``t_i = Q^T A omega_i``), its quadratic part
    scaled by ``(n - m + 2) / (n - |p|^2)`` in the sphere form.
    """
    m = h.shape[0]
    out = np.empty(m)
    trace_h, ww = np.trace(h), np.sum(w * w, axis=0)
    for j in range(m):
        keep = np.arange(m) != j
        sj, g = s[:, j], s[:, keep].T @ s[:, j]
        b2 = (s[:, keep] - np.outer(sj, g)) / np.sqrt(np.maximum(1.0 - g * g, 1e-300))
        wi = w[:, keep]
        c1, c2 = sj @ wi, np.einsum("ki,ki->i", b2, wi)
        p = wi - np.outer(sj, c1) - b2 * c2
        quad = (quad0[keep] - 2 * np.einsum("ki,ki->i", t[:, keep], p)
                + np.einsum("ki,ki->i", p, h @ p))
        if sphere:
            quad = quad * (n - m + 2) / (n - (ww[keep] - c1 * c1 - c2 * c2))
        out[j] = np.mean(trace_h - sj @ h @ sj - np.einsum("ki,ki->i", b2, h @ b2) + quad)
    return out
