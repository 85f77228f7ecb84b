"""Results about the whole spectrum: a density (kept as its quadrature rules), a trace, a
count of eigenvalues below a threshold, the outliers above the bulk.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


from hessian_tools._checks import check_confidence
from hessian_tools.linalg.slq import (default_sigma, gaussian_cdf, gaussian_smoothing,
                                      quadrature_count_bounds, wasserstein1)
from hessian_tools.results._base import Result

__all__ = ['EigenvalueCount', 'OutlierSplit', 'SpectralDensity', 'TraceEstimate']


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy.special import stdtrit      # not scipy.stats: importing it costs ~2 s per process
    return float(stdtrit(max(dof, 1), 0.5 + confidence / 2.0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TraceEstimate(Result):
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
    method: str
    num_samples: int
    samples: np.ndarray
    low_rank: float = 0.0
    dim: int = 0
    probe: str = "rademacher"
    extra: dict = dataclasses.field(default_factory=dict)

    _arrays = ("samples",)

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """A Student-t confidence interval ``value +- t * stderr``."""
        check_confidence(confidence)
        half = _t_quantile(confidence, self.num_samples - 1) * self.stderr
        return self.value - half, self.value + half

    def __str__(self) -> str:
        return (f"TraceEstimate({self.method}: {self.value:.6g} +- {self.stderr:.2g} (1 s.e.), "
                f"{self.num_matvecs} matvecs)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EigenvalueCount(Result):
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
    num_probes: int = 0
    num_steps: int = 0
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutlierSplit(Result):
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpectralDensity(Result):
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

    Examples:
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
    dtype: str = "float32"
    loop: str = "compiled"
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

    # -- the log-scale spectrum (Papyan 2019)
    @property
    def default_floor(self) -> float:
        """``|lambda|`` below which Ritz values are rounding: ``10 eps(dtype) * scale``."""
        return 10.0 * float(np.finfo(np.dtype(self.dtype)).eps) * self.scale

    @property
    def zero_resolution(self) -> float:
        """How close to zero the quadrature resolves eigenvalues: the median over probes of
        the larger ``|theta|`` of the two Ritz values around zero (the nearest on each side).
        Eigenvalues with ``|lambda|`` below it are lumped onto those two nodes, so their
        sign and size are not resolved: the log-scale spectrum is meaningful above it. A
        probe whose Ritz residuals all vanish (its Krylov space is invariant: the rule is
        its probe measure exactly) resolves everything (width 0)."""
        widths = []
        exact = 100 * float(np.finfo(np.dtype(self.dtype)).eps) * self.scale
        for nodes, weights, residuals in zip(self.nodes, self.weights, self.residuals):
            if np.all(residuals[weights > 0] <= exact):
                widths.append(0.0)
                continue
            x = nodes[weights > 0]
            sides = [np.max(x[x < 0], initial=-np.inf), np.min(x[x > 0], initial=np.inf)]
            finite = [abs(v) for v in sides if np.isfinite(v)]
            widths.append(max(finite) if len(finite) == 2 else min(finite, default=0.0))
        return float(np.median(widths))

    def _log_abs_rule(self, sign: int, floor: float | None):
        if sign not in (1, -1):
            raise ValueError(f"sign={sign!r} must be 1 (positive eigenvalues) or -1 (negative).")
        floor = self.default_floor if floor is None else float(floor)
        keep = (np.sign(self.nodes) == sign) & (np.abs(self.nodes) > floor) & (self.weights > 0)
        logs = np.log10(np.where(keep, np.abs(self.nodes), 1.0))
        return logs, np.where(keep, self.weights, 0.0), keep

    def log_abs_pdf(self, t, *, sign: int = 1, sigma: float = 0.25,
                    floor: float | None = None) -> np.ndarray:
        """The density of ``log10 |lambda|`` over the eigenvalues of one sign: Papyan's
        log-scale spectrum (Papyan 2019), which shows the bulk near zero over decades.

        Each Ritz value ``theta`` of that sign with ``|theta| > floor`` puts its quadrature
        weight at ``log10 |theta|``, smoothed by a Gaussian of ``sigma`` decades. Smoothing
        in log space follows the Gauss nodes, which crowd towards zero where the spectrum
        ends there (a Hessian's bulk); smoothing ``pdf`` in eigenvalue units and changing
        variables would show only the kernel below ``sigma``. On the digits MLP (exact
        Hessian) the default tracks the histogram of the exact ``log10 |lambda|`` from about
        ``1e-6 ||H||`` up; below the lowest Ritz value of a sign nothing is resolved.

        Args:
          t: points ``log10 |lambda|`` (any shape).
          sign: ``1`` for the positive eigenvalues, ``-1`` for the negative ones.
          sigma: the Gaussian width in decades (``> 0``).
          floor: ``|lambda|`` below which Ritz values are left out as rounding (default
            :attr:`default_floor`); their mass is in neither part.

        Returns:
          The density at ``t``: it integrates to the estimated fraction of eigenvalues of
          that sign above ``floor`` (multiply by ``dim`` for eigenvalues per decade). No
          matvecs.
        """
        if not (isinstance(sigma, (int, float, np.floating)) and sigma > 0):
            raise ValueError(f"sigma={sigma!r} must be a positive width in decades, e.g. 0.25.")
        logs, weights, _ = self._log_abs_rule(sign, floor)
        return gaussian_smoothing(logs, weights, t, float(sigma))

    def log_abs_grid(self, num: int = 1000, *, sigma: float = 0.25, floor: float | None = None,
                     pad: float = 4.0) -> np.ndarray:
        """``num`` points ``log10 |lambda|`` covering the Ritz values of both signs above
        ``floor``, ``pad * sigma`` decades beyond them."""
        parts = [logs[keep] for logs, _, keep in (self._log_abs_rule(s, floor) for s in (1, -1))]
        values = np.concatenate(parts)
        if values.size == 0:
            raise ValueError("No Ritz value lies above the floor: the spectrum is zero to "
                             "rounding, and has no log-scale density.")
        return np.linspace(values.min() - pad * sigma, values.max() + pad * sigma, num)

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
        check_confidence(confidence)
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
            threshold=float(threshold), count=float(n * np.mean(est)),
            low=float(max(low, 0.0)), high=float(min(high, n)), dim=n, exact=False,
            method="slq", confidence=confidence, stderr=n * se[0], lambda_min=self.lambda_min,
            lambda_max=self.lambda_max, num_matvecs=self.num_matvecs, num_probes=p,
            num_steps=self.num_steps, seed=list(self.seed), operator=self.operator,
            extra={"quadrature_bracket": [float(n * np.mean(lower)), float(n * np.mean(upper))]})

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
        return TraceEstimate(value=float(np.mean(samples)), stderr=se,
                             num_matvecs=self.num_matvecs, method="slq",
                             num_samples=len(samples), samples=samples, dim=self.dim,
                             probe=self.probe, seed=list(self.seed), operator=self.operator,
                             wall_time=self.wall_time, extra={"num_steps": self.num_steps})

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
