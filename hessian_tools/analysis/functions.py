"""Traces of matrix functions by stochastic Lanczos quadrature: ``tr f(A)``, ``log det A``
and the spectral entropy.

SLQ (Ubaru, Chen & Saad 2017) gives each probe ``v`` (normalised) a Gauss quadrature rule
``(theta_j, w_j)`` of its spectral measure from ``m`` Lanczos steps, so
``v^T f(A) v / ||v||^2 ~ sum_j w_j f(theta_j)`` and ``tr f(A) ~ n mean_p sum_j w_pj
f(theta_pj)``. The rules are exactly those of :func:`hessian_tools.density`
(:class:`~hessian_tools.SpectralDensity` keeps them), so one density serves every function
at no further cost: pass it instead of the operator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from hessian_tools._checks import check_count
from hessian_tools.analysis.spectral import DEFAULT_NUM_PROBES, _check_operator, density
from hessian_tools.results import SpectralDensity
from hessian_tools.results.toolbox import FunctionTrace

__all__ = ["logdet", "spectral_entropy", "trace_function"]


def _density(source, what: str, num_probes, num_steps, key, probe) -> SpectralDensity:
    """``source`` itself if it is a density, else ``density(source, ...)``."""
    if isinstance(source, SpectralDensity):
        return source
    _check_operator(source, what)
    return density(source, key=key, num_probes=num_probes, num_steps=num_steps, probe=probe)


def _rule_values(dens: SpectralDensity, f: Callable, name: str) -> np.ndarray:
    """``f`` at every node with positive weight (0 elsewhere); a non-finite value is an
    error that names the node."""
    keep = dens.weights > 0
    values = np.zeros_like(dens.nodes)
    with np.errstate(all="ignore"):
        values[keep] = np.asarray(f(dens.nodes[keep]), np.float64)
    bad = keep & ~np.isfinite(values)
    if np.any(bad):
        p, j = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(f"{name} is {values[p, j]} at the Ritz value {dens.nodes[p, j]:.6g} "
                         f"(probe {p}): it is not defined on the operator's spectrum, which "
                         f"reaches at least [{dens.lambda_min:.4g}, {dens.lambda_max:.4g}].")
    return values


def _function_trace(dens: SpectralDensity, samples: np.ndarray, value: float, stderr: float,
                    name: str, start: float, extra: dict | None = None) -> FunctionTrace:
    return FunctionTrace(value=float(value), stderr=float(stderr), method="slq",
                         num_samples=len(samples), samples=samples, dim=dens.dim,
                         probe=dens.probe, function=name, num_steps=dens.num_steps,
                         num_matvecs=dens.num_matvecs, seed=list(dens.seed),
                         operator=dens.operator, wall_time=dens.wall_time + time.perf_counter()
                         - start, extra=extra or {})


def trace_function(source, f: Callable, *, num_probes: int = DEFAULT_NUM_PROBES,
                   num_steps: int | None = None, key=None, probe: str = "rademacher",
                   name: str | None = None) -> FunctionTrace:
    """``tr f(A)`` by stochastic Lanczos quadrature, with a standard error across probes.

    Each probe gives ``n sum_j w_j f(theta_j)``; the estimate is their mean and ``stderr``
    their standard deviation over ``sqrt(P)``.

    Accuracy: two errors add. The sampling error is Hutchinson's (``stderr`` measures it;
    it falls like ``1/sqrt(P)``). The quadrature error is exact zero for polynomials of
    degree ``<= 2m - 1`` and falls geometrically in ``m`` for ``f`` analytic on
    ``[lambda_min, lambda_max]``, at a rate set by how close ``f``'s singularities come to
    that interval relative to its length (Ubaru, Chen & Saad 2017, Thm 4.2: for ``log``,
    ``m ~ sqrt(kappa) log(kappa / eps)`` steps for a condition number ``kappa``). It is
    not in ``stderr``: check it by doubling ``num_steps`` (or with ``num_steps = dim``, where
    each probe's value is exact).

    Args:
      source: a :class:`~hessian_tools.CurvatureOperator`, or a
        :class:`~hessian_tools.SpectralDensity` whose rules are reused (no products; the
        other options are then ignored).
      f: a vectorised function of a float64 NumPy array (``np.log``, ``np.exp``,
        ``lambda x: x**2``), defined on the spectrum.
      num_probes: ``P`` (``>= 2`` for a standard error).
      num_steps: ``m`` Lanczos steps per probe (default ``min(80, dim)``).
      key: a ``jax.random`` key (required with an operator).
      probe: ``"rademacher"`` or ``"gaussian"``.
      name: what to call ``f`` in the result (default ``f.__name__``).

    Returns:
      A :class:`~hessian_tools.results.toolbox.FunctionTrace` (``num_matvecs``: the
      density's ``P m`` products). Memory: as :func:`hessian_tools.density`.

    Raises:
      TypeError: ``source`` is neither an operator nor a density, or ``f`` is not callable.
      ValueError: no key, bad counts, or ``f`` not finite at a Ritz value (named).

    Examples:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> from hessian_tools.analysis.functions import trace_function
      >>> A = ht.from_dense(np.diag([4.0, 2.0, 1.0]))
      >>> tr = trace_function(A, np.sqrt, num_probes=2, num_steps=3, key=jax.random.key(0))
      >>> round(tr.value, 6)                                 # 2 + sqrt(2) + 1, exact
      4.414214
    """
    if not callable(f):
        raise TypeError(f"f={f!r} must be a function of a NumPy array, e.g. np.log.")
    start = time.perf_counter()
    name = name or getattr(f, "__name__", "f")
    dens = _density(source, "trace_function", num_probes, num_steps, key, probe)
    samples = dens.dim * np.sum(dens.weights * _rule_values(dens, f, name), axis=1)
    stderr = np.std(samples, ddof=1) / math.sqrt(len(samples)) if len(samples) > 1 else math.nan
    return _function_trace(dens, samples, np.mean(samples), stderr, name, start)


def logdet(source, *, num_probes: int = DEFAULT_NUM_PROBES, num_steps: int | None = None,
           key=None, probe: str = "rademacher") -> FunctionTrace:
    """``log det A = tr log A`` of a positive definite operator, by SLQ.

    Refused for an operator that is not positive definite: Ritz values lie inside
    ``[lambda_min, lambda_max]``, so a Ritz value ``<= 0`` proves an eigenvalue ``<= 0``.
    (All Ritz values positive is evidence, not proof: a negative eigenvalue that no probe
    sees goes unnoticed; a PSD tag, as the Gauss-Newton and Fisher operators carry, is the
    guarantee.) For a singular or indefinite operator use a damped one,
    ``hessian_tools.algebra.shift(op, sigma)``, as Laplace approximations do.

    Accuracy: as :func:`trace_function`; the quadrature needs about ``sqrt(kappa)`` steps
    for a condition number ``kappa`` (the default 80 suit ``kappa`` up to ~1e3; raise
    ``num_steps`` or the damping beyond).

    Args:
      source: an operator or a :class:`~hessian_tools.SpectralDensity`.
      num_probes: see :func:`trace_function`.
      num_steps: see :func:`trace_function`.
      key: see :func:`trace_function`.
      probe: see :func:`trace_function`.

    Returns:
      A :class:`~hessian_tools.results.toolbox.FunctionTrace` with ``function="log"``.

    Raises:
      ValueError: a Ritz value ``<= 0`` (the operator is not positive definite), or as
        :func:`trace_function`.

    Examples:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> from hessian_tools.analysis.functions import logdet
      >>> A = ht.from_dense(np.diag([4.0, 2.0, 1.0]))
      >>> round(logdet(A, num_probes=2, num_steps=3, key=jax.random.key(0)).value, 6)
      2.079442
    """
    dens = _density(source, "logdet", num_probes, num_steps, key, probe)
    lowest = float(np.min(np.where(dens.weights > 0, dens.nodes, np.inf)))
    if lowest <= 0:
        raise ValueError(f"logdet needs a positive definite operator, but SLQ found the Ritz "
                         f"value {lowest:.4g} <= 0, so the operator has an eigenvalue <= "
                         f"{lowest:.4g}. Damp it first: logdet(shift(op, sigma)) with sigma > "
                         f"{-lowest:.3g} (hessian_tools.algebra.shift).")
    return trace_function(dens, np.log, name="log")


def spectral_entropy(source, *, num_probes: int = DEFAULT_NUM_PROBES,
                     num_steps: int | None = None, key=None,
                     probe: str = "rademacher") -> FunctionTrace:
    """The spectral (von Neumann) entropy ``S = -sum_i p_i log p_i`` with
    ``p_i = lambda_i / tr(A)``, of a positive semi-definite operator, by SLQ.

    ``S = log tr(A) - tr(A log A) / tr(A)`` (``0 log 0 = 0``), both traces from the same
    quadrature rules. ``exp(S)`` (``extra["effective_rank"]``) is the effective rank (Roy &
    Vetterli 2007): ``n`` for equal eigenvalues, 1 for rank one. Ritz values within
    rounding of zero (``|theta| <= 100 eps(dtype) max|theta|``) count as zero.

    Accuracy: a ratio of two SLQ estimates. ``stderr`` is the jackknife over the probes
    (``samples`` holds the leave-one-out values); the quadrature error is as in
    :func:`trace_function` for ``x log x``, which is continuous but not analytic at 0, so
    a spectrum crowded at zero (a Hessian's bulk) converges slowly in ``num_steps``.

    Args:
      source: an operator or a :class:`~hessian_tools.SpectralDensity`.
      num_probes: ``P >= 2``.
      num_steps: see :func:`trace_function`.
      key: see :func:`trace_function`.
      probe: see :func:`trace_function`.

    Returns:
      A :class:`~hessian_tools.results.toolbox.FunctionTrace` with
      ``function="spectral_entropy"`` (in nats).

    Raises:
      ValueError: a Ritz value clearly below zero (the operator is indefinite: use the
        Gauss-Newton matrix or a shift), or fewer than 2 probes.
    """
    dens = _density(source, "spectral_entropy", num_probes, num_steps, key, probe)
    check_count("num_probes", dens.num_probes, minimum=2, why=" The jackknife needs two.")
    start = time.perf_counter()
    tiny = 100 * float(np.finfo(np.dtype(dens.dtype)).eps) * dens.scale
    keep = dens.weights > 0
    lowest = float(np.min(np.where(keep, dens.nodes, np.inf)))
    if lowest < -tiny:
        raise ValueError(f"spectral_entropy needs a positive semi-definite operator, but SLQ "
                         f"found the Ritz value {lowest:.4g} < 0. Use the Gauss-Newton matrix "
                         "(ht.gauss_newton) or a shifted operator.")
    positive = keep & (dens.nodes > tiny)
    lam = np.where(positive, dens.nodes, 1.0)
    traces = dens.dim * np.sum(np.where(positive, dens.weights * lam, 0.0), axis=1)
    xlogx = dens.dim * np.sum(np.where(positive, dens.weights * lam * np.log(lam), 0.0), axis=1)
    p = len(traces)

    def entropy(t, e):
        return math.log(t) - e / t
    value = entropy(np.mean(traces), np.mean(xlogx))
    left_out = np.array([entropy((p * np.mean(traces) - traces[i]) / (p - 1),
                                 (p * np.mean(xlogx) - xlogx[i]) / (p - 1)) for i in range(p)])
    stderr = math.sqrt((p - 1) / p * np.sum((left_out - left_out.mean()) ** 2))
    return _function_trace(dens, left_out, value, stderr, "spectral_entropy", start,
                           {"effective_rank": math.exp(value), "trace": float(np.mean(traces))})
