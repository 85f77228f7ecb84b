"""The friendly API for the whole spectrum: density, trace, counts, outliers.

* :func:`density`: the eigenvalue density by stochastic Lanczos quadrature (SLQ), all
  probes in one compiled call; returns a :class:`SpectralDensity` that keeps every probe's
  quadrature nodes and weights, so it can be re-smoothed, counted and plotted without
  new matvecs.
* :func:`trace`: Hutch++, Hutchinson, SLQ or the exact (dense) trace, as a
  :class:`TraceEstimate` with a standard error.
* :func:`negative_count`: how many eigenvalues lie below ``-tau``, with a confidence
  interval (SLQ), or exactly (dense ``eigh``; or converged Lanczos Ritz values when the
  count is small), plus the ratio ``|lambda_min| / lambda_max``.
* :func:`outliers`: the eigenvalues above the bulk (Sagun et al. 2017; Papyan 2019).

Default thresholds (see :func:`default_threshold`): an eigenvalue counts as negative when
it lies below ``-tau`` with ``tau = scale * max(1e-2, 10 * eps(dtype))`` and ``scale`` the
spectral scale ``max |lambda|``. The default smoothing width is
``sigma = (lambda_max - lambda_min) / (2 * num_steps)`` (see :func:`default_sigma`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools.linalg.slq import (gaussian_cdf, gaussian_smoothing, quadrature_count_bounds,
                                      slq_quadrature, slq_quadrature_host,
                                      slq_quadrature_numpy, wasserstein1)
from hessian_tools.linalg.trace import (PROBES, hutchinson_samples, hutchpp, hutchpp_rows,
                                        orthonormalize_numpy, random_probes, xtrace_samples)
from hessian_tools.operators import CurvatureOperator, to_dense
from hessian_tools.results import Eigenpairs, _jsonable

__all__ = ["SpectralDensity", "TraceEstimate", "EigenvalueCount", "OutlierSplit", "density",
           "trace", "negative_count", "outliers", "default_threshold", "default_sigma",
           "DEFAULT_NUM_PROBES", "DEFAULT_NUM_STEPS"]

DEFAULT_NUM_PROBES = 10
DEFAULT_NUM_STEPS = 80
DEFAULT_TRACE_MATVECS = 90
_BASIS_BUDGET_BYTES = 2 * 1024**3


# ---- documented defaults -------------------------------------------------------------------

def default_threshold(scale: float, dtype=jnp.float32) -> float:
    """The default ``tau``: eigenvalues in ``[-tau, tau]`` are treated as zero.

    ``tau = scale * max(1e-2, 10 * eps(dtype))`` with ``scale = max |lambda|`` (an
    estimate of ``||H||_2``).

    Why 1% of the scale: it is SLQ's resolution at the default 80 steps. A neural-network
    Hessian has hundreds of eigenvalues within 0.1% of ``||H||`` of zero; SLQ's quadrature
    puts one node on that cluster, and a threshold inside it gets a count bracket spanning
    much of the cluster (honest, but uninformative). At 1% the threshold sits outside the
    cluster and SLQ's interval is narrow (on the digits MLPs: ~3% of ``n`` wide, covering
    the exact count). It is far above rounding: float32 Hessian-vector products carry relative
    errors of ~1e-6 to 1e-4 of ``||H||``. The ``10 * eps`` term takes over only in half
    precision (bfloat16: ~8%). For finer thresholds pass ``tau`` and use more Lanczos steps,
    or the exact ``"dense"``/``"lanczos"`` counts.

    Example:
      >>> default_threshold(2.0, "float32")
      0.02
    """
    eps = float(jnp.finfo(jnp.dtype(dtype)).eps)
    return float(scale) * max(1e-2, 10.0 * eps)


def default_sigma(lambda_min: float, lambda_max: float, num_steps: int) -> float:
    """The default Gaussian smoothing width: ``(lambda_max - lambda_min) / (2 m)``.

    An ``m``-point Gauss rule spaces its nodes about ``range / m`` apart where the density
    is flat; half that spacing smooths the averaged rules into a curve without washing out
    features wider than the quadrature can resolve. (Lin, Saad & Yang 2016 discuss the
    trade-off.) A degenerate range falls back to ``max(|lambda|, 1) * 1e-3``.
    """
    width = float(lambda_max) - float(lambda_min)
    if not width > 0:
        return max(abs(float(lambda_max)), 1.0) * 1e-3
    return width / (2.0 * num_steps)


# ---- helpers ----------------------------------------------------------------------------------

def _zeros(like):
    """Shape templates for the compiled functions: NumPy zeros on a single CPU device (no XLA
    kernel compiled per leaf shape, about 0.03 s each), device zeros elsewhere."""
    make = np.zeros if tree.host_is_device() else jnp.zeros
    return jax.tree.map(lambda s: make(s.shape, s.dtype), like)


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy.stats import t
    return float(t.ppf(0.5 + confidence / 2.0, max(dof, 1)))


def _check_confidence(confidence):
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must lie strictly between 0 and 1, e.g. 0.95.")


def _check_operator(op, what: str):
    if not isinstance(op, CurvatureOperator):
        raise TypeError(f"{what} expects a CurvatureOperator (ht.hessian(obj), "
                        f"ht.gauss_newton(obj), ht.from_dense(A)), got {type(op).__name__}.")


def _check_key(key, what: str):
    if key is None:
        raise ValueError(f"{what} is stochastic and needs an explicit PRNG key: pass "
                         "key=jax.random.key(0).")


def _check_count(name: str, value, *, minimum: int = 1, maximum: int | None = None,
                 hint: str = "", why: str = ""):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.{why}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} exceeds {hint} {maximum}. Pass {name} <= {maximum}.")


class _Serializable:
    """``to_dict``/``from_dict``/``to_json``/``from_json`` for frozen result dataclasses."""

    _arrays: tuple = ()

    def to_dict(self) -> dict:
        d = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        d["type"] = type(self).__name__
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict):
        d = {k: v for k, v in d.items() if k != "type"}
        for name in cls._arrays:
            if d.get(name) is not None:
                d[name] = np.asarray(d[name], dtype=np.float64)
        return cls(**d)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


# ---- result objects ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TraceEstimate(_Serializable):
    """A trace estimate with its standard error.

    Attributes:
      value: the estimate of ``tr(A)``.
      stderr: its standard error (sample standard deviation of the samples over
        ``sqrt(num_samples)``; 0 for the exact ``"dense"`` method; for Hutch++ the error of
        the deflated remainder, the low-rank part being exact given the sketch; for XTrace
        the jackknife over its test vectors).
      num_matvecs: operator products spent.
      method: ``"hutch++"``, ``"xtrace"``, ``"hutchinson"``, ``"slq"`` or ``"dense"``.
      num_samples: the number of random samples behind ``stderr``.
      samples: the samples (``v^T A v`` for Hutchinson, ``n * sum_j w_j theta_j`` for SLQ,
        the deflated remainders for Hutch++, the leave-one-out estimates for XTrace).
      low_rank: Hutch++'s exact part ``tr(Q^T A Q)`` (0 otherwise).
      dim: the operator's dimension. probe: probe distribution. seed: the key's data.
      operator: the operator kind. wall_time: seconds, compilation included.
    """

    value: float
    stderr: float
    num_matvecs: int
    method: str
    num_samples: int
    samples: np.ndarray
    low_rank: float = 0.0
    dim: int = 0
    probe: str = "rademacher"
    seed: list = dataclasses.field(default_factory=list)
    operator: str = ""
    wall_time: float = 0.0
    extra: dict = dataclasses.field(default_factory=dict)

    _arrays = ("samples",)

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """A Student-t confidence interval ``value +- t * stderr``."""
        _check_confidence(confidence)
        half = _t_quantile(confidence, self.num_samples - 1) * self.stderr
        return self.value - half, self.value + half

    def __str__(self) -> str:
        return (f"TraceEstimate({self.method}: {self.value:.6g} +- {self.stderr:.2g} (1 s.e.), "
                f"{self.num_matvecs} matvecs)")


@dataclasses.dataclass(frozen=True)
class EigenvalueCount(_Serializable):
    """How many eigenvalues lie below a threshold, with a confidence interval.

    Attributes:
      threshold: the count is of eigenvalues ``< threshold`` (``-tau`` for negative counts).
      count: the estimate (an exact integer when ``exact``).
      low, high: the confidence interval for the count (equal to ``count`` when exact).
      dim: the dimension ``n``; ``fraction = count / n`` (see the properties).
      exact: the count is certified: from ``eigh`` of the dense matrix, or from converged
        Lanczos Ritz values, each farther than its residual from the threshold.
      method: ``"slq"``, ``"lanczos"`` or ``"dense"``.
      confidence: the interval's nominal coverage (SLQ only).
      stderr: the sampling standard error of the SLQ count (0 when exact).
      tau: the threshold's magnitude for negative counts (``threshold = -tau``).
      lambda_min, lambda_max: the extreme eigenvalues (exact, or SLQ's extreme Ritz values,
        which lie inside ``[lambda_min, lambda_max]`` and converge first).
      num_matvecs: operator products spent to obtain the count (the density's included).
      num_probes, num_steps: SLQ parameters (0 when unused). seed: key data.
      wall_time: seconds. extra: diagnostics (e.g. why an exact count was not certified).
    """

    threshold: float
    count: float
    low: float
    high: float
    dim: int
    exact: bool
    method: str
    confidence: float = 0.95
    stderr: float = 0.0
    tau: float = 0.0
    lambda_min: float = math.nan
    lambda_max: float = math.nan
    num_matvecs: int = 0
    num_probes: int = 0
    num_steps: int = 0
    seed: list = dataclasses.field(default_factory=list)
    wall_time: float = 0.0
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """``count / n``."""
        return self.count / self.dim

    @property
    def fraction_interval(self) -> tuple[float, float]:
        """``(low / n, high / n)``."""
        return self.low / self.dim, self.high / self.dim

    @property
    def ratio(self) -> float:
        """``|lambda_min| / lambda_max`` (Li et al. 2018 map it over loss landscapes)."""
        return abs(self.lambda_min) / self.lambda_max if self.lambda_max > 0 else math.nan

    def __str__(self) -> str:
        kind = ("exact" if self.exact else
                f"{self.confidence:.0%} CI [{self.low:.1f}, {self.high:.1f}]")
        return (f"EigenvalueCount(#(lambda < {self.threshold:.3g}) = {self.count:.1f} of "
                f"{self.dim} ({self.fraction:.2%}), {kind}, {self.method}, "
                f"{self.num_matvecs} matvecs)")


@dataclasses.dataclass(frozen=True)
class OutlierSplit(_Serializable):
    """The top eigenvalues split into outliers and the bulk below them.

    Attributes:
      outliers: the outlier eigenvalues, descending.
      top: all top eigenvalues examined (descending); ``top[num_outliers]`` is the highest
        bulk eigenvalue.
      bulk_edge: the upper edge of the bulk (``top[num_outliers]``).
      gap: the gap between the lowest outlier and the bulk edge (0 without outliers).
      gap_factor: the rule's factor (see :func:`outliers`). reference_gap: the typical bulk
        spacing the gaps were compared with.
      num_matvecs: products spent. method: where the eigenvalues came from.
      slq_count_above: SLQ's estimate of the number of eigenvalues above the middle of the
        gap, with its interval (a cross-check; ``None`` without a density).
    """

    outliers: np.ndarray
    top: np.ndarray
    bulk_edge: float
    gap: float
    gap_factor: float
    reference_gap: float
    num_matvecs: int = 0
    method: str = "lanczos"
    slq_count_above: list | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    _arrays = ("outliers", "top")

    @property
    def num_outliers(self) -> int:
        return int(len(self.outliers))

    def __str__(self) -> str:
        vals = ", ".join(f"{v:.4g}" for v in self.outliers)
        return (f"OutlierSplit({self.num_outliers} outliers [{vals}] above the bulk edge "
                f"{self.bulk_edge:.4g}; gap {self.gap:.3g})")


@dataclasses.dataclass(frozen=True)
class SpectralDensity(_Serializable):
    """An SLQ estimate of the eigenvalue density, kept as per-probe quadrature rules.

    The estimated spectral measure is ``mu = (1/P) sum_p sum_j w_pj delta(theta_pj)``
    (each probe's weights sum to 1); the eigenvalue count in a set is ``n mu(set)``.

    Attributes:
      nodes: ``(P, m)`` Ritz values (quadrature nodes), ascending per probe.
      weights: ``(P, m)`` Gauss quadrature weights (0 for nodes beyond a breakdown).
      residuals: ``(P, m)`` Ritz residual estimates: node ``theta_pj`` lies within
        ``residuals[p, j]`` of an eigenvalue (converged nodes are real eigenvalues).
      dim: ``n``. num_probes: ``P``. num_steps: ``m``. probe: ``"rademacher"``/``"gaussian"``.
      num_matvecs: ``P m``. operator: the operator kind. seed: the key's data.
      dtype: the operator dtype. loop: ``"compiled"`` or ``"host"``. wall_time: seconds.

    Example:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> H = ht.from_dense(np.diag([3.0, 1.0, -2.0]))
      >>> dens = ht.density(H, num_probes=4, num_steps=3, key=jax.random.key(0))
      >>> float(np.round(dens.trace().value, 6))              # exact: 3 + 1 - 2
      2.0
      >>> round(dens.num_below(0.0).count, 6)                  # one negative eigenvalue
      1.0
    """

    nodes: np.ndarray
    weights: np.ndarray
    residuals: np.ndarray
    dim: int
    num_probes: int
    num_steps: int
    probe: str = "rademacher"
    num_matvecs: int = 0
    operator: str = ""
    seed: list = dataclasses.field(default_factory=list)
    dtype: str = "float32"
    loop: str = "compiled"
    wall_time: float = 0.0
    extra: dict = dataclasses.field(default_factory=dict)

    _arrays = ("nodes", "weights", "residuals")

    # -- the measure
    def measure(self) -> tuple[np.ndarray, np.ndarray]:
        """The averaged quadrature measure: flat ``(nodes, weights)``, weights summing to 1."""
        x = self.nodes.reshape(-1)
        w = self.weights.reshape(-1) / self.num_probes
        keep = w > 0
        return x[keep], w[keep]

    @property
    def lambda_min(self) -> float:
        """The smallest Ritz value over all probes (``>= lambda_min`` of the operator)."""
        return float(np.min(self.measure()[0]))

    @property
    def lambda_max(self) -> float:
        """The largest Ritz value over all probes (``<= lambda_max`` of the operator)."""
        return float(np.max(self.measure()[0]))

    @property
    def scale(self) -> float:
        """The spectral scale ``max |theta|`` (an estimate of ``||A||_2``)."""
        return max(abs(self.lambda_min), abs(self.lambda_max))

    @property
    def ratio(self) -> float:
        """``|lambda_min| / lambda_max`` from the extreme Ritz values."""
        return abs(self.lambda_min) / self.lambda_max if self.lambda_max > 0 else math.nan

    def ends(self) -> dict:
        """The extreme Ritz values with their residual bounds, over all probes."""
        x, r, w = self.nodes.reshape(-1), self.residuals.reshape(-1), self.weights.reshape(-1)
        x, r = x[w > 0], r[w > 0]
        lo, hi = int(np.argmin(x)), int(np.argmax(x))
        return {"lambda_min": float(x[lo]), "lambda_min_residual": float(r[lo]),
                "lambda_max": float(x[hi]), "lambda_max_residual": float(r[hi])}

    @property
    def default_sigma(self) -> float:
        """See :func:`default_sigma`."""
        return default_sigma(self.lambda_min, self.lambda_max, self.num_steps)

    # -- smoothing
    def grid(self, num: int = 1000, *, sigma: float | None = None, pad: float = 5.0) -> np.ndarray:
        """``num`` evenly spaced points covering the Ritz values, ``pad * sigma`` beyond them."""
        s = self.default_sigma if sigma is None else float(sigma)
        return np.linspace(self.lambda_min - pad * s, self.lambda_max + pad * s, num)

    def pdf(self, grid, *, sigma: float | None = None) -> np.ndarray:
        """The Gaussian-smoothed density ``p(x)`` on ``grid`` (integrates to 1).

        Multiply by ``dim`` for eigenvalues per unit. ``sigma`` defaults to
        :attr:`default_sigma`. No matvecs: the stored rules are re-smoothed.
        """
        s = self.default_sigma if sigma is None else float(sigma)
        if not s > 0:
            raise ValueError(f"sigma={sigma!r} must be positive.")
        return gaussian_smoothing(self.nodes, self.weights, grid, s)

    def cdf(self, x, *, sigma: float = 0.0) -> np.ndarray:
        """The estimated fraction of eigenvalues ``<= x``.

        ``sigma=0`` (default) gives the step function of the quadrature measure; ``sigma > 0``
        the distribution function of the smoothed density :meth:`pdf`.
        """
        return gaussian_cdf(self.nodes, self.weights, x, float(sigma))

    # -- counting
    def num_below(self, threshold: float, *, confidence: float = 0.95) -> EigenvalueCount:
        """The number of eigenvalues ``< threshold``, with a confidence interval.

        Estimate: ``n * mean_p Q_p`` with ``Q_p`` the probe's quadrature mass below the
        threshold (unbiased up to quadrature error). The interval combines the guaranteed
        per-probe quadrature bracket ``[L_p, U_p]`` (Chebyshev-Markov-Stieltjes, see
        :func:`hessian_tools.linalg.slq.quadrature_count_bounds`) with the probe-to-probe
        spread: ``[n (mean L - t se_L), n (mean U + t se_U)]``, ``t`` the Student quantile
        at ``P - 1`` degrees of freedom, clipped to ``[0, n]``. Coverage is at least
        ``confidence`` as far as the probe means are normal; with one probe there is no
        spread to measure and the interval is ``[0, n]``.
        """
        _check_confidence(confidence)
        est, lower, upper = quadrature_count_bounds(self.nodes, self.weights, threshold,
                                                    self.residuals)
        n, p = self.dim, self.num_probes
        if p > 1:
            t = _t_quantile(confidence, p - 1)
            se = [float(np.std(a, ddof=1) / math.sqrt(p)) for a in (est, lower, upper)]
            low = n * (np.mean(lower) - t * se[1])
            high = n * (np.mean(upper) + t * se[2])
        else:
            se, low, high = [math.nan] * 3, 0.0, float(n)
        return EigenvalueCount(
            float(threshold), float(n * np.mean(est)), float(max(low, 0.0)),
            float(min(high, n)), n, False, "slq", confidence, n * se[0], 0.0, self.lambda_min,
            self.lambda_max, self.num_matvecs, p, self.num_steps, list(self.seed), 0.0,
            {"quadrature_bracket": [float(n * np.mean(lower)), float(n * np.mean(upper))]})

    def num_above(self, threshold: float, *, confidence: float = 0.95) -> EigenvalueCount:
        """The number of eigenvalues ``> threshold`` (the count below, of ``-A``)."""
        flipped = dataclasses.replace(self, nodes=-self.nodes[:, ::-1],
                                      weights=self.weights[:, ::-1],
                                      residuals=self.residuals[:, ::-1])
        out = flipped.num_below(-threshold, confidence=confidence)
        return dataclasses.replace(out, threshold=float(threshold), lambda_min=self.lambda_min,
                                   lambda_max=self.lambda_max, extra={**out.extra, "above": True})

    # -- derived estimates
    def trace(self, *, confidence: float | None = None) -> TraceEstimate:
        """The SLQ trace ``n * mean_p sum_j w_pj theta_pj`` (no new matvecs).

        The Gauss rule integrates ``x`` exactly, so this is Hutchinson's estimator with
        normalised probes ``n v^T A v / ||v||^2``: its error is purely statistical.
        """
        samples = self.dim * np.sum(self.weights * self.nodes, axis=1)
        se = float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 \
            else math.nan
        return TraceEstimate(float(np.mean(samples)), se, self.num_matvecs, "slq", len(samples),
                             samples, 0.0, self.dim, self.probe, list(self.seed), self.operator,
                             self.wall_time, {"num_steps": self.num_steps})

    def wasserstein1(self, eigenvalues) -> float:
        """The Wasserstein-1 distance from the exact spectral measure of ``eigenvalues``.

        ``W1 = int |F_slq(x) - F(x)| dx``, in units of eigenvalue. Divide by
        ``lambda_max - lambda_min`` for a scale-free number.
        """
        return wasserstein1(self.nodes, self.weights, np.asarray(eigenvalues))

    def __str__(self) -> str:
        return (f"SpectralDensity({self.operator}, n={self.dim}, {self.num_probes} probes x "
                f"{self.num_steps} steps = {self.num_matvecs} matvecs, Ritz range "
                f"[{self.lambda_min:.4g}, {self.lambda_max:.4g}])")


# ---- density ----------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("num_probes", "num_steps", "kind", "batch_size"))
def _slq_compiled(matvec_fn, key, zeros, *, num_probes, num_steps, kind, batch_size):
    probes = random_probes(key, zeros, num_probes, kind=kind)
    return slq_quadrature(matvec_fn, probes, num_steps=num_steps, batch_size=batch_size)


_probes_jit = jax.jit(random_probes, static_argnames=("num", "kind"))


def _auto_batch(num_probes: int, rows: int, op: CurvatureOperator) -> int | None:
    """Probes per vmapped call so that their Lanczos bases fit in ``_BASIS_BUDGET_BYTES``."""
    per_probe = rows * op.dim * jnp.dtype(op.dtype).itemsize
    batch = max(1, _BASIS_BUDGET_BYTES // max(per_probe, 1))
    return None if batch >= num_probes else int(batch)


def _numpy_basis(op: CurvatureOperator) -> bool:
    """Whether a host-driven loop keeps its Lanczos bases in NumPy: on a single CPU device
    (no copies, nothing to compile, only filled rows swept) with one parameter dtype."""
    return tree.host_algebra(op.params_like)


def density(op: CurvatureOperator, *, key=None, num_probes: int = DEFAULT_NUM_PROBES,
            num_steps: int | None = None, probe: str = "rademacher", loop: str = "auto",
            batch_size: int | None = None) -> SpectralDensity:
    """The eigenvalue density of a symmetric operator by stochastic Lanczos quadrature.

    ``num_probes`` random probes (Rademacher or Gaussian, normalised) each run
    ``num_steps`` Lanczos steps with full reorthogonalisation; each probe's tridiagonal
    matrix gives an ``m``-point Gauss quadrature rule of its probe measure, whose average
    estimates the spectral measure ``(1/n) sum_i delta(lambda_i)`` (Ubaru, Chen & Saad 2017;
    Ghorbani, Krishnan & Xiao 2019). All probes run in one compiled call (``jax.vmap`` of
    :func:`~hessian_tools.linalg.lanczos_tridiag` inside ``jax.jit``, the operator's matvec
    passed as an argument, so another operator of the same architecture reuses the compiled
    code); streamed operators fall back to a Python loop.

    Accuracy: each probe's rule matches ``2m`` moments of its probe measure; the extreme
    Ritz values converge first (to the ends of the spectrum and to outliers) and their
    ``residuals`` bound their error. The averaged measure has a sampling error of order
    ``1 / sqrt(n P)`` per unit mass; in Wasserstein-1 distance the error falls roughly like
    ``range / m`` plus ``range / sqrt(n P)`` (Chen, Trogdon & Ubaru 2021). On the test
    matrices (semicircle, Marchenko-Pastur, low rank plus bulk, a saddle; n = 300) and the
    exact Hessian of a digits MLP (n = 1210) the defaults give
    ``W1 < 0.02 (lambda_max - lambda_min)`` (tested).

    Args:
      op: the operator (``ht.hessian(obj)``, ``ht.gauss_newton(obj)``, ``ht.from_dense(A)``).
      key: a ``jax.random`` key (required): the probes are ``split(key, num_probes)``.
      num_probes: ``P``, the number of random probes (``>= 2`` for error bars).
      num_steps: ``m``, Lanczos steps per probe (default ``min(80, dim)``; at most ``dim``).
      probe: ``"rademacher"`` (default, lower variance) or ``"gaussian"``.
      loop: ``"compiled"`` (one ``fori_loop`` per probe batch inside ``jit``), ``"host"``
        (steps driven from Python, all probes batched per step) or ``"auto"``: host for
        streamed data and on a single CPU device, compiled otherwise. On a single CPU
        device the host loop keeps the Lanczos bases in NumPy
        (:func:`~hessian_tools.linalg.slq.slq_quadrature_numpy`): only the batched product
        is compiled, each step sweeps only the filled rows, a step's products cross as
        one flat array, and the probes run as two interleaved halves (one half's products
        are computed while the other half is reorthogonalised). On the 3.5k-parameter
        digits MLP, 10 x 80 took 1.5 s cold and 0.6 s warm this way, against 3.6 s / 0.93
        s for the compiled loop (benchmarks/RESULTS_density.md). Products with
        convolutions on CPU are applied one probe at a time: XLA:CPU runs a conv net's
        HVP about 50x slower inside a compiled loop, and as slowly under ``vmap``.
        ``extra["basis"]`` of the result says where the bases were (``"numpy"`` or
        ``"device"``).
      batch_size: probes per vmapped call (default: all that fit in 2 GiB of Lanczos basis).

    Returns:
      A :class:`SpectralDensity`. Cost: ``P m`` matvecs (added to ``op.num_matvecs``);
      memory ``batch_size (m + 1)`` parameter-sized vectors.

    Raises:
      TypeError: ``op`` is not a CurvatureOperator.
      ValueError: no key, a bad ``probe``/``loop``, or ``num_steps`` larger than the dimension.

    Example:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> H = ht.from_dense(np.diag([3.0, 1.0, -2.0]))
      >>> dens = ht.density(H, num_probes=2, num_steps=3, key=jax.random.key(0))
      >>> np.round(np.unique(np.round(dens.nodes, 8)), 6).tolist()
      [-2.0, 1.0, 3.0]
    """
    _check_operator(op, "density")
    _check_key(key, "density")
    _check_count("num_probes", num_probes)
    num_steps = min(DEFAULT_NUM_STEPS, op.dim) if num_steps is None else num_steps
    _check_count("num_steps", num_steps, maximum=op.dim, hint="the operator dimension")
    if probe not in PROBES:
        raise ValueError(f"probe={probe!r} is not one of {PROBES}.")
    if loop not in ("auto", "compiled", "host"):
        raise ValueError(f"loop={loop!r} is not one of 'auto', 'compiled', 'host'.")
    if loop == "compiled" and op.matvec_fn is None:
        raise ValueError("loop='compiled' needs a traceable matvec, but this operator streams "
                         "its data (matvec_fn is None). Use loop='auto' or 'host'.")
    if batch_size is not None:
        _check_count("batch_size", batch_size)
    if loop == "auto":
        loop = "host" if op.slow_in_loops or _numpy_basis(op) else "compiled"
    batch = _auto_batch(num_probes, num_steps + 1, op) if batch_size is None else (
        None if batch_size >= num_probes else batch_size)
    numpy_basis = loop == "host" and _numpy_basis(op)
    start = time.perf_counter()
    zeros = _zeros(op.params_like)
    if loop == "compiled":
        rule = _slq_compiled(op.matvec_fn, key, zeros, num_probes=num_probes,
                             num_steps=num_steps, kind=probe, batch_size=batch)
        op.num_matvecs += num_probes * num_steps
    else:
        probes = _probes_jit(key, zeros, num=num_probes, kind=probe)
        if numpy_basis:       # the operator runs (and counts) the products
            rule = slq_quadrature_numpy(functools.partial(op.flat_rows, batch_size=batch),
                                        probes, num_steps=num_steps, group_size=batch,
                                        flat=True, interleave=1 if op.slow_in_loops else 2)
        else:
            rule = slq_quadrature_host(functools.partial(op.rows, batch_size=batch), probes,
                                       num_steps=num_steps)
    nodes, weights, residuals = (np.asarray(a, np.float64) for a in
                                 (rule.nodes, rule.weights, rule.residuals))
    return SpectralDensity(nodes, weights, residuals, op.dim, num_probes, num_steps, probe,
                           num_probes * num_steps, op.kind, tree.key_bits(key),
                           str(jnp.dtype(op.dtype)), loop, time.perf_counter() - start,
                           {"batch_size": batch, "basis": "numpy" if numpy_basis else "device"})


# ---- trace ------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("num", "kind", "batch_size"))
def _hutchinson_compiled(matvec_fn, key, zeros, *, num, kind, batch_size):
    probes = random_probes(key, zeros, num, kind=kind)
    return hutchinson_samples(matvec_fn, probes, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("k", "num", "kind", "batch_size"))
def _hutchpp_compiled(matvec_fn, key, zeros, *, k, num, kind, batch_size):
    k1, k2 = jax.random.split(key)
    sketch = random_probes(k1, zeros, k, kind=kind)
    probes = random_probes(k2, zeros, num, kind=kind)
    return hutchpp(matvec_fn, sketch, probes, batch_size=batch_size)


def _hutchpp_split(num_matvecs: int) -> tuple[int, int]:
    """``(k, l)`` with ``2k + l = num_matvecs``: thirds, as in Meyer et al. (2021)."""
    k = num_matvecs // 3
    return k, num_matvecs - 2 * k


def _trace_rows(op, key, method, num_matvecs, probe, batch_size):
    """Hutchinson / Hutch++ with the operator's batched products (:meth:`CurvatureOperator.rows`:
    one product per row for streamed data and convolutions on the CPU) and the algebra of
    :mod:`hessian_tools.linalg.trace` on the device."""
    zeros = _zeros(op.params_like)
    rows = functools.partial(op.rows, batch_size=batch_size)
    if method == "hutchinson":
        probes = _probes_jit(key, zeros, num=num_matvecs, kind=probe)
        return 0.0, _dots(probes, rows(probes))
    k, num = _hutchpp_split(num_matvecs)
    k1, k2 = jax.random.split(key)
    return hutchpp_rows(rows, _probes_jit(k1, zeros, num=k, kind=probe),
                        _probes_jit(k2, zeros, num=num, kind=probe))


_dots = jax.jit(jax.vmap(tree.vdot))


def _host_products(op, layout, batch_size):
    """``rows -> A rows`` on ``(k, dim)`` float64 NumPy arrays (the operator counts them)."""
    return lambda x: np.asarray(op.flat_rows(np.asarray(x, layout.dtype), batch_size=batch_size),
                                np.float64)


def _flat_probes(key, op, layout, num, probe):
    """``num`` probes as a ``(num, dim)`` float64 NumPy array: the compiled draw's probes."""
    return layout.flat(_probes_jit(key, _zeros(op.params_like), num=num, kind=probe),
                       num).astype(np.float64)


def _trace_numpy(op, key, method, num_matvecs, probe):
    """Hutchinson / Hutch++ on a single CPU device: the same probes as the compiled form
    (``_probes_jit``), the products by ``_flat_rows`` (one compiled function per row count:
    Hutch++'s three calls share one when ``num_matvecs`` is a multiple of 3), and the
    orthonormalisation and quadratic forms in NumPy, in float64. A cold call compiles
    about a third of what the single compiled Hutch++ function does."""
    layout = tree.FlatLayout(op.params_like)
    products = _host_products(op, layout, None)           # counts its products

    def draw(sub, num):
        return _flat_probes(sub, op, layout, num, probe)

    def quad(x):
        return np.einsum("pn,pn->p", x, products(x))

    with tree.single_threaded_blas():
        if method == "hutchinson":
            return 0.0, quad(draw(key, num_matvecs))
        k, num = _hutchpp_split(num_matvecs)
        k1, k2 = jax.random.split(key)
        rtol = 100 * float(np.finfo(layout.dtype).eps)
        q = orthonormalize_numpy(products(draw(k1, k)), rtol=rtol)
        g = draw(k2, num)
        return float(np.sum(quad(q))), quad(g - (g @ q.T) @ q)


def _trace_xtrace(op, key, num_matvecs, probe, batch_size):
    """XTrace's leave-one-out samples with ``num_matvecs // 2`` test vectors (the same
    probes as Hutchinson's with that key), the algebra in NumPy in float64, and the
    jackknife standard error over the test vectors."""
    layout = tree.FlatLayout(op.params_like)
    num = num_matvecs // 2
    omega = _flat_probes(key, op, layout, num, probe)
    with tree.single_threaded_blas():
        samples, left_out = xtrace_samples(omega, _host_products(op, layout, batch_size),
                                           sphere=probe == "gaussian", jackknife=True)
    stderr = math.sqrt((num - 1) / num * np.sum((left_out - np.mean(left_out)) ** 2))
    return samples, stderr


def trace(op: CurvatureOperator, *, method: str = "hutch++", num_matvecs: int | None = None,
          key=None, probe: str = "rademacher", num_steps: int = 1,
          batch_size: int | None = None) -> TraceEstimate:
    """The trace of a symmetric operator, with a standard error.

    Methods:

    * ``"hutch++"`` (default; Meyer, Musco, Musco & Woodruff 2021): ``k = num_matvecs // 3``
      products sketch the top of the spectrum, ``k`` more give ``tr(Q^T A Q)`` exactly, and
      the remaining ``l`` run Hutchinson on the deflated remainder. For a spectrum that
      decays (a few outliers over a small bulk, as in neural-network Hessians) the error is
      far below Hutchinson's at equal cost.
    * ``"xtrace"`` (Epperly, Tropp & Webber 2024): Hutch++ that uses every sample twice.
      ``m = num_matvecs // 2`` test vectors and ``A Q`` for a basis ``Q`` of their products
      give ``m`` estimates, each leaving one vector out of the sketch and using it as the
      Hutchinson probe; the estimate is their mean. At equal matvecs its error is several
      times below Hutch++'s when a spectrum's outliers outnumber Hutch++'s sketch (tested
      on a low-rank-plus-noise matrix), and level or better past that (digits MLP:
      1.3-1.9x smaller at 12-48 matvecs; notebook 02: level). With ``probe="gaussian"`` it
      uses the paper's improved (sphere) normalisation. ``stderr`` is the jackknife over
      the test vectors: XTrace redone with each left out, from the same products (no
      matvecs, ``O(m^4)`` flops). It does not understate the error in expectation (Efron &
      Stein 1981) and ran 1.1-2.7x the actual error on our test matrices and the digits
      MLPs (7x on a rank-10-plus-noise matrix with 12 test vectors, where leaving one out
      nearly stops the sketch from covering the outliers); the paper's spread of the
      leave-one-out estimates over ``sqrt(m)`` ran 0.7-1.0x, and is
      ``np.std(samples, ddof=1) / sqrt(m)`` if wanted. The algebra runs on the host in
      float64: memory about ``2 num_matvecs`` float64 vectors.
    * ``"hutchinson"`` (Hutchinson 1989): the mean of ``v^T A v`` over ``num_matvecs``
      probes. Rademacher variance per sample ``2 (||A||_F^2 - sum_i A_ii^2)``.
    * ``"slq"``: ``n`` times the Gauss-rule mean of ``num_matvecs // num_steps`` probes with
      ``num_steps`` Lanczos steps each; with ``num_steps=1`` this is Hutchinson with
      normalised probes. Worth it only when the density is wanted too
      (``ht.density(...).trace()`` costs nothing extra).
    * ``"dense"``: the exact trace of the explicit matrix (``dim`` matvecs; small models).

    Accuracy: the stochastic estimates are unbiased; ``stderr`` is the sample standard
    deviation over ``sqrt(samples)`` (for Hutch++, of the deflated remainder, conditional on
    the sketch). ``interval()`` gives a Student-t confidence interval. The samples are
    quadratic forms, skewed to the right, so with few samples (under ~20) of a small or
    low-rank remainder the interval undercovers now and then; give the estimator
    more matvecs when the standard error itself matters.

    Args:
      op: the operator.
      method: ``"hutch++"``, ``"xtrace"``, ``"hutchinson"``, ``"slq"`` or ``"dense"``.
      num_matvecs: the budget (default 90; at least 4 for Hutch++, 6 for XTrace, 2
        otherwise). XTrace spends an even number, ``2 * (num_matvecs // 2)``; with only two
        test vectors neither its jackknife nor the paper's estimate can see any error.
      key: a ``jax.random`` key (required except for ``"dense"``).
      probe: ``"rademacher"`` or ``"gaussian"``.
      num_steps: Lanczos steps per probe for ``"slq"``.
      batch_size: vectors per vmapped matvec call (default: all at once). On CPU, products
        with convolutions are not vmapped: XLA:CPU runs a batched conv HVP far slower than
        the same products one by one, so each vector is applied by its own call. On a
        single CPU device with the default, the products are batched calls and the rest
        (the sketch's orthonormal basis, projections, quadratic forms) runs in NumPy in
        float64: the same probes and numbers as the single compiled function that a
        ``batch_size`` or an accelerator gets, with about a third of its compilation
        (Hutch++ with 48 matvecs on the 3.5k-parameter digits MLP: 1.2 s cold against
        2.4 s).

    Returns:
      A :class:`TraceEstimate`. Cost ``num_matvecs`` products (``dim`` for ``"dense"``);
      memory ``num_matvecs`` parameter-sized vectors (fewer with ``batch_size``).

    Raises:
      ValueError: an unknown method or probe, no key, or too small a budget.

    Example:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> H = ht.from_dense(np.diag([3.0, 1.0, -2.0]))
      >>> tr = ht.trace(H, num_matvecs=9, key=jax.random.key(0), probe="gaussian")
      >>> round(tr.value, 6), tr.num_matvecs       # a rank-3 sketch is exact here
      (2.0, 9)
    """
    _check_operator(op, "trace")
    methods = ("hutch++", "xtrace", "hutchinson", "slq", "dense")
    if method not in methods:
        raise ValueError(f"method={method!r} is not one of {methods}.")
    if probe not in PROBES:
        raise ValueError(f"probe={probe!r} is not one of {PROBES}.")
    start, before = time.perf_counter(), op.num_matvecs
    if method == "dense":
        value = float(np.trace(to_dense(op)))
        return TraceEstimate(value, 0.0, op.num_matvecs - before, "dense", 0, np.zeros(0), 0.0,
                             op.dim, "", [], op.kind, time.perf_counter() - start)
    _check_key(key, "trace")
    num_matvecs = DEFAULT_TRACE_MATVECS if num_matvecs is None else num_matvecs
    minimum = {"hutch++": 4, "xtrace": 6, "hutchinson": 2, "slq": 2 * num_steps}[method]
    _check_count("num_matvecs", num_matvecs, minimum=minimum, why=(
        " XTrace needs at least 3 test vectors (2 products each) for a standard error."
        if method == "xtrace" else ""))
    if method == "slq":
        dens = density(op, key=key, num_probes=num_matvecs // num_steps, num_steps=num_steps,
                       probe=probe, batch_size=batch_size)
        return dataclasses.replace(dens.trace(), wall_time=time.perf_counter() - start)
    zeros = _zeros(op.params_like)
    stderr = None
    if method == "xtrace":
        low = 0.0
        samples, stderr = _trace_xtrace(op, key, num_matvecs, probe, batch_size)
    elif _numpy_basis(op) and batch_size is None:
        low, samples = _trace_numpy(op, key, method, num_matvecs, probe)
    elif op.slow_in_loops:
        low, samples = _trace_rows(op, key, method, num_matvecs, probe, batch_size)
    elif method == "hutchinson":
        low = 0.0
        samples = _hutchinson_compiled(op.matvec_fn, key, zeros, num=num_matvecs, kind=probe,
                                       batch_size=batch_size)
        op.num_matvecs += num_matvecs
    else:
        k, num = _hutchpp_split(num_matvecs)
        low, samples = _hutchpp_compiled(op.matvec_fn, key, zeros, k=k, num=num, kind=probe,
                                         batch_size=batch_size)
        op.num_matvecs += num_matvecs
    samples = np.asarray(samples, np.float64)
    value = float(low) + float(np.mean(samples))
    if stderr is None:
        stderr = float(np.std(samples, ddof=1) / math.sqrt(len(samples)))
    return TraceEstimate(value, stderr, op.num_matvecs - before, method, len(samples), samples,
                         float(low), op.dim, probe, tree.key_bits(key), op.kind,
                         time.perf_counter() - start)


# ---- counting negative eigenvalues ----------------------------------------------------------

def _dense_count(values, tau, before_matvecs, start, extra=None) -> EigenvalueCount:
    values = np.sort(np.asarray(values, np.float64))
    count = float(np.sum(values < -tau))
    return EigenvalueCount(-tau, count, count, count, len(values), True, "dense", 1.0, 0.0,
                           tau, float(values[0]), float(values[-1]), before_matvecs, 0, 0, [],
                           time.perf_counter() - start, dict(extra or {}))


def _lanczos_count(op, key, tau, scale, k_start, max_exact, max_matvecs):
    """Certify the count below ``-tau`` with converged smallest Ritz values.

    Returns ``(count, eig, reason)``; ``count`` is None when it could not be certified.
    """
    from hessian_tools.spectrum import default_tol, eigenvalues
    tol = max(default_tol(op.dtype), 0.01 * tau / max(scale, 1e-300))
    k = max(1, min(k_start, max_exact + 1, op.dim))
    while True:
        key, sub = jax.random.split(key)
        eig = eigenvalues(op, k=k, which="smallest", key=sub, tol=tol, max_matvecs=max_matvecs)
        vals, res = eig.smallest, eig.residuals[::-1]       # ascending, with residuals
        if not eig.converged:
            return None, eig, f"Lanczos did not converge for k={k} (tol={tol:.2g})"
        if np.any(np.abs(vals + tau) <= res):
            return None, eig, "a Ritz value lies within its residual of -tau"
        if vals[-1] - res[-1] >= -tau or k >= op.dim:
            return int(np.sum(vals < -tau)), eig, ""
        if k >= max_exact + 1:
            return None, eig, f"more than max_exact={max_exact} eigenvalues below -tau"
        k = min(2 * k, max_exact + 1, op.dim)


def negative_count(source, *, key=None, tau: float | None = None, method: str = "auto",
                   num_probes: int = DEFAULT_NUM_PROBES, num_steps: int | None = None,
                   confidence: float = 0.95, max_exact: int = 20,
                   max_dense_dim: int = 2000, lanczos_max_matvecs: int | None = None,
                   probe: str = "rademacher") -> EigenvalueCount:
    """The number and fraction of eigenvalues below ``-tau``, with a confidence interval.

    Methods:

    * ``"slq"``: from a stochastic Lanczos density (or the :class:`SpectralDensity` passed
      as ``source``); the interval is :meth:`SpectralDensity.num_below`'s: a guaranteed
      quadrature bracket widened by the probe-to-probe spread.
    * ``"lanczos"``: exact when small: the ``k`` smallest eigenvalues by restarted Lanczos
      (``ht.eigenvalues``), ``k`` doubling up to ``max_exact + 1`` until the largest of them
      lies above ``-tau``; certified when every Ritz value is farther from ``-tau`` than its
      residual. Otherwise falls back to SLQ (``extra["lanczos"]`` says why).
    * ``"dense"``: exact, from ``eigh`` of the explicit matrix (``dim`` matvecs, ``dim^2``
      memory). ``source`` may also be the matrix itself (e.g. ``ht.dense_hessian(obj)``).
    * ``"auto"``: ``"dense"`` when ``dim <= min(max_dense_dim, num_probes * num_steps)``
      (then it is no dearer than SLQ); else SLQ, refined by ``"lanczos"`` when the SLQ
      interval's upper end is at most ``max_exact``.

    The threshold: ``tau`` defaults to :func:`default_threshold` of the spectral scale
    (``max |lambda|``, from the same computation) and dtype: ``scale * max(1e-2,
    10 eps)``. The result also carries ``lambda_min``, ``lambda_max`` and their ratio
    ``|lambda_min| / lambda_max`` (Li et al. 2018).

    Args:
      source: a CurvatureOperator, a SpectralDensity (no new matvecs), or a dense matrix.
      key: a ``jax.random`` key (required for ``"slq"``/``"lanczos"`` on an operator).
      tau: the threshold magnitude (``>= 0``); default as above.
      method: ``"auto"``, ``"slq"``, ``"lanczos"`` or ``"dense"``.
      num_probes, num_steps, probe: SLQ parameters (see :func:`density`).
      confidence: the interval's nominal coverage.
      max_exact: the largest count the Lanczos path will certify.
      max_dense_dim: the largest dimension ``"auto"`` handles densely.
      lanczos_max_matvecs: the budget of each Lanczos call (default: ``ht.eigenvalues``'s).

    Returns:
      An :class:`EigenvalueCount` (``count``, ``low``, ``high``, ``fraction``, ``exact``,
      ``ratio``, ``num_matvecs``).

    Raises:
      TypeError: an unsupported ``source``. ValueError: bad ``method``, ``tau`` or no key.

    Example:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> H = ht.from_dense(np.diag([3.0, 1.0, -2.0]))
      >>> neg = ht.negative_count(H, method="dense")
      >>> neg.count, neg.exact, round(neg.ratio, 4)
      (1.0, True, 0.6667)
    """
    start = time.perf_counter()
    methods = ("auto", "slq", "lanczos", "dense")
    if method not in methods:
        raise ValueError(f"method={method!r} is not one of {methods}.")
    if tau is not None and not tau >= 0:
        raise ValueError(f"tau={tau!r} must be >= 0 (the count is of eigenvalues < -tau).")
    _check_confidence(confidence)
    if isinstance(source, SpectralDensity):
        if method not in ("auto", "slq"):
            raise ValueError(f"A SpectralDensity supports only method='slq', got {method!r}.")
        return _slq_count(source, tau, confidence, start)
    if isinstance(source, (np.ndarray, jax.Array)):
        matrix = np.asarray(source, np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"A dense source must be a square matrix, got shape {matrix.shape}.")
        values = np.linalg.eigvalsh((matrix + matrix.T) / 2)
        tau = default_threshold(np.max(np.abs(values)), source.dtype) if tau is None else tau
        return _dense_count(values, tau, 0, start)
    _check_operator(source, "negative_count")
    op = source
    steps = min(DEFAULT_NUM_STEPS, op.dim) if num_steps is None else num_steps
    if method == "auto" and op.dim <= min(max_dense_dim, num_probes * steps):
        method = "dense"
    before = op.num_matvecs
    if method == "dense":
        values = np.linalg.eigvalsh(to_dense(op))
        tau = default_threshold(np.max(np.abs(values)), op.dtype) if tau is None else tau
        return _dense_count(values, tau, op.num_matvecs - before, start)
    _check_key(key, "negative_count")
    key_slq, key_lanczos = jax.random.split(key)
    dens = density(op, key=key_slq, num_probes=num_probes, num_steps=steps, probe=probe)
    slq = _slq_count(dens, tau, confidence, start)
    if method == "slq" or (method == "auto" and slq.high > max_exact):
        return slq
    count, eig, reason = _lanczos_count(op, key_lanczos, slq.tau, dens.scale,
                                        int(math.ceil(slq.high)) + 2, max_exact,
                                        lanczos_max_matvecs)
    spent = op.num_matvecs - before
    if count is None:
        return dataclasses.replace(slq, num_matvecs=spent, wall_time=time.perf_counter() - start,
                                   extra={**slq.extra, "lanczos": reason})
    lam_min = float(min(eig.smallest[0], dens.lambda_min))
    return EigenvalueCount(-slq.tau, float(count), float(count), float(count), op.dim, True,
                           "lanczos", confidence, 0.0, slq.tau, lam_min, dens.lambda_max, spent,
                           num_probes, steps, tree.key_bits(key), time.perf_counter() - start,
                           {"lanczos_k": int(eig.k), "slq": [slq.count, slq.low, slq.high]})


def _slq_count(dens: SpectralDensity, tau, confidence, start) -> EigenvalueCount:
    tau = default_threshold(dens.scale, dens.dtype) if tau is None else float(tau)
    out = dens.num_below(-tau, confidence=confidence)
    return dataclasses.replace(out, tau=tau, wall_time=dens.wall_time + time.perf_counter() - start)


# ---- outliers ---------------------------------------------------------------------------------

def outliers(source, *, key=None, k: int = 30, gap_factor: float = 10.0,
             dens: SpectralDensity | None = None, tol: float | None = None) -> OutlierSplit:
    """Split the top of the spectrum into outliers and the bulk (Sagun et al. 2017; Papyan 2019).

    Rule: take the top ``k`` eigenvalues ``lambda_1 >= ... >= lambda_k`` and their gaps
    ``g_i = lambda_i - lambda_{i+1}``. The reference spacing ``g_ref`` is the median gap in
    the lower half of the list (inside the bulk, where eigenvalues are packed densely). The
    outliers are ``lambda_1 .. lambda_j`` for the largest ``j < k/2`` with
    ``g_j > gap_factor * g_ref``: everything above the last large gap. Neural-network
    Hessians typically show about one outlier per class (Papyan 2019); a spectrum without a
    clear gap gives none. The default ``gap_factor=10`` is calibrated on spectra without
    outliers (Wigner and Marchenko-Pastur, ``n = 300-1000``, ``k = 30``): there the largest
    ratio ``g_j / g_ref`` has median ~4, 95th percentile ~7 and maximum ~9 over 40 draws
    (the Tracy-Widom edge is sparser than the bulk). With ``dens`` the SLQ count above the
    middle of the gap is reported as a cross-check (it should be close to the number of
    outliers).

    Args:
      source: a CurvatureOperator (the top ``k`` are computed with ``ht.eigenvalues``), an
        :class:`~hessian_tools.Eigenpairs` with ``which`` in ``"largest"``/``"both"``, or an
        array of eigenvalues (e.g. from ``eigh``).
      key: a ``jax.random`` key (for an operator).
      k: how many top eigenvalues to examine (``>= 4``).
      gap_factor: how much larger than the bulk spacing a gap must be.
      dens: an optional density for the cross-check.
      tol: Lanczos tolerance (default ``ht.default_tol``).

    Returns:
      An :class:`OutlierSplit`. Cost (operator source): one ``ht.eigenvalues(k=k)`` call,
      typically ``k + 50-150`` matvecs.

    Example:
      >>> import numpy as np, hessian_tools as ht
      >>> split = ht.outliers(np.r_[10.0, 7.0, np.linspace(1.0, 0.0, 40)], k=20)
      >>> split.outliers.tolist(), split.bulk_edge
      ([10.0, 7.0], 1.0)
    """
    _check_count("k", k, minimum=4)
    if not gap_factor > 1:
        raise ValueError(f"gap_factor={gap_factor!r} must be > 1.")
    matvecs, method = 0, "eigenvalues"
    if isinstance(source, CurvatureOperator):
        _check_key(key, "outliers")
        if k > source.dim:
            raise ValueError(f"k={k} exceeds the operator dimension {source.dim}. Pass k <= "
                             f"{source.dim}.")
        from hessian_tools.spectrum import eigenvalues
        eig = eigenvalues(source, k=k, which="largest", key=key, tol=tol)
        top, matvecs, method = np.sort(eig.largest)[::-1], eig.num_matvecs, "lanczos"
    elif isinstance(source, Eigenpairs):
        if source.which not in ("largest", "both"):
            raise ValueError("outliers needs the largest eigenvalues; got Eigenpairs with "
                             f"which={source.which!r}.")
        top, method = np.sort(np.asarray(source.largest))[::-1][:k], source.method
    else:
        top = np.sort(np.asarray(source, np.float64).reshape(-1))[::-1][:k]
    if len(top) < 4:
        raise ValueError(f"outliers needs at least 4 top eigenvalues, got {len(top)}.")
    return _split_top(top, gap_factor, matvecs, method, dens)


def _split_top(top, gap_factor, matvecs, method, dens) -> OutlierSplit:
    gaps = top[:-1] - top[1:]
    half = len(top) // 2
    ref = float(np.median(gaps[half - 1:]))
    big = [j for j in range(half) if gaps[j] > gap_factor * max(ref, 1e-300)]
    j = (big[-1] + 1) if big else 0
    edge = float(top[j])
    gap = float(top[j - 1] - top[j]) if j else 0.0
    check = None
    if dens is not None and j:
        c = dens.num_above(edge + gap / 2)
        check = [c.count, c.low, c.high]
    return OutlierSplit(top[:j].copy(), top.copy(), edge, gap, float(gap_factor), ref, matvecs,
                        method, check)
