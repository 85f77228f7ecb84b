"""What a point is (minimum, saddle, ...) and the critical points a search found.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from hessian_tools.results._base import Result


__all__ = ['VERDICTS', 'CriticalPointReport', 'CriticalPointSearch', 'FoundPoint']


VERDICTS = ("minimum", "degenerate minimum", "saddle", "maximum", "not critical")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CriticalPointReport(Result):
    """What a point in parameter space is: minimum, saddle, maximum, or not critical.

    Attributes:
      verdict: one of :data:`VERDICTS`.
      detail: one sentence saying why (e.g. ``"degenerate minimum: no descent found along
        the 12 flat directions probed"``).
      loss, grad_norm: the dataset-mean loss and the norm of its full-data gradient.
      num_params: the dimension.
      lambda_max, lambda_max_error, lambda_min, lambda_min_error: the extreme eigenvalues and
        bounds on their error (the explicit residual ``||H v - lambda v||``; for the dense
        path also the asymmetry of the computed matrix, a measure of its rounding error).
      index: the number of negative eigenvalues beyond the zero threshold (see
        ``thresholds``): exact for ``index_method`` ``"dense"`` and ``"lanczos"``, the rounded
        estimate for ``"slq"``, ``None`` when unavailable.
      index_fraction: ``index / num_params``.
      index_interval: ``(low, high)``: a confidence interval (SLQ), a bound (``high`` is
        ``None`` when only ``index >= low`` is known), or ``(index, index)`` when exact.
      index_method: ``"dense"``, ``"lanczos"``, ``"slq"`` or ``"unavailable"``.
      num_flat: eigenvalues with ``|lambda| <=`` the zero threshold (or within their error
        bar of zero). ``num_flat_is_lower_bound`` is True when Lanczos saw only some of them.
      flat_probe: the higher-order probe along flat directions (empty if none was run): numbers
        of directions, radii, whether a decrease (ascent, for a maximum) was found, the best
        change and where.
      thresholds: every threshold used (``grad_tol``, ``tau`` with ``tau_rule``, ``scale``,
        ``eig_tol``, ``decrease_tol``, ``probe_radii``, ``dense_max_params``,
        ``max_lanczos_index``); :meth:`explain` says what each one means.
      notes: further remarks (unconverged eigenvalues, estimates, sign undetermined).
      num_matvecs, wall_time, dtype, seed: provenance.
    """

    verdict: str
    detail: str
    loss: float
    grad_norm: float
    num_params: int
    lambda_max: float
    lambda_max_error: float
    lambda_min: float
    lambda_min_error: float
    index: int | None
    index_fraction: float | None
    index_interval: tuple | None
    index_method: str
    num_flat: int | None
    num_flat_is_lower_bound: bool
    flat_probe: dict
    thresholds: dict
    notes: tuple = ()
    dtype: str = ""

    _tuples = ("index_interval", "notes")

    @property
    def is_critical(self) -> bool:
        return self.verdict != "not critical"

    @property
    def summary(self) -> str:
        """One line: the detail, gradient norm, extreme eigenvalues and index."""
        index = "unavailable" if self.index is None else f"{self.index}"
        return (f"{self.detail} (|grad| {self.grad_norm:.2e}, lambda_min {self.lambda_min:.3g}, "
                f"lambda_max {self.lambda_max:.3g}, index {index}, flat {self._flat_str()})")

    def _flat_str(self) -> str:
        if self.num_flat is None or (self.num_flat_is_lower_bound and self.num_flat == 0):
            return "unknown"
        return f">= {self.num_flat}" if self.num_flat_is_lower_bound else f"{self.num_flat}"

    def _index_str(self) -> str:
        if self.index is None:
            low = self.index_interval[0] if self.index_interval else 0
            return f">= {low} (index estimate unavailable)"
        pct = f"{100 * self.index_fraction:.3g}%"
        lo, hi = self.index_interval if self.index_interval else (self.index, self.index)
        how = {"dense": "exact, dense eigendecomposition",
               "lanczos": "exact count, Lanczos on the smallest eigenvalues",
               "slq": f"SLQ estimate, interval [{lo}, {hi}]"}.get(self.index_method, "")
        return f"{self.index} of {self.num_params} ({pct}; {how})"

    def explain(self) -> str:
        """Every threshold with what it means and how to change it."""
        t = self.thresholds
        lines = [
            f"grad_tol = {t['grad_tol']:.3g}: the point is critical when the full-data gradient "
            "norm is at most this (default 10 sqrt(eps) max(1, |loss|); classify(grad_tol=...)).",
            f"tau = {t['tau']:.3g} ({t['tau_rule']}; spectral scale max|lambda| = "
            f"{t['scale']:.4g}): an eigenvalue counts as negative (index) only below -tau, and as "
            "positive only above tau, each also beyond its own error bar; otherwise it is flat. "
            "The same tau as ht.negative_count and the CLI's negative fraction "
            "(classify(tau=...)).",
            f"eig_tol = {t['eig_tol']:.3g}: relative residual tolerance of the eigensolver.",
            f"decrease_tol = {t['decrease_tol']:.3g}: along a flat direction, a loss change below "
            "-(decrease_tol + r |g.d| + r^2 |d.Hd| / 2) at radius r counts as descent "
            "(the slack covers the residual gradient and curvature within the threshold).",
            f"probe_radii = {_fmt_list(t['probe_radii'])}: radii of the flat-direction probe "
            "(probe_scale x max(1, ||params||)).",
            f"dense_max_params = {t['dense_max_params']}: up to this many parameters the index "
            f"is exact from the dense Hessian; above, Lanczos counts up to max_lanczos_index = "
            f"{t['max_lanczos_index']} negative eigenvalues, and SLQ estimates larger counts.",
        ]
        return "\n".join("  " + line for line in lines)

    def table(self) -> str:
        crit = "<=" if self.grad_norm <= self.thresholds["grad_tol"] else ">"
        rows = [
            f"  loss               {self.loss:.8g}",
            f"  gradient norm      {self.grad_norm:.3e}   ({crit} grad_tol "
            f"{self.thresholds['grad_tol']:.2e})",
            f"  lambda_max         {self.lambda_max:.6g}   (+- {self.lambda_max_error:.1e})",
            f"  lambda_min         {self.lambda_min:.6g}   (+- {self.lambda_min_error:.1e})",
            f"  index              {self._index_str()}",
            f"  flat directions    {self._flat_str()}   (|lambda| <= "
            f"{self.thresholds['tau']:.2e} = tau)",
        ]
        if self.flat_probe:
            p = self.flat_probe
            rows.append(f"  probe              {p['num_directions']} flat directions x "
                        f"{len(p['radii'])} radii x 2 signs: "
                        f"{'change found' if p['found'] else 'no change of the tested sign'} "
                        f"(best {p['best_change']:.2e} at radius {p['best_radius']:.2g})")
        return "\n".join(rows)

    def __str__(self) -> str:
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        return (f"CriticalPointReport: {self.verdict.upper()}\n  {self.detail}\n{self.table()}"
                f"{notes}\n  ({self.num_matvecs} Hessian-vector products, {self.wall_time:.2f} s, "
                f"{self.dtype})\nThresholds:\n{self.explain()}")


def _fmt_list(xs) -> str:
    return "[" + ", ".join(f"{x:.3g}" for x in xs) + "]"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FoundPoint(Result):
    """One run of :func:`find_critical_points` from one start.

    Attributes:
      status: ``"critical"`` (``||grad|| <= grad_tol``), ``"gradient-flat"`` (stuck at a
        small non-zero gradient lying in the near-kernel of the Hessian:
        ``||H g|| <= gradient_flat_tol * max|lambda| * ||g||``), or ``"not converged"``.
      loss, grad_norm, index, index_fraction, verdict: at the final point (index and verdict
        from :func:`classify`).
      flatness: ``||H g|| / (max|lambda| ||g||)`` at the final point (0 = the gradient is
        exactly flat).
      start: position of the start in ``starts``.
      newton_steps, num_matvecs: Newton iterations and HVPs (MINRES and classification).
      grad_norms: the gradient norm after every iteration (the first is at the start).
      report: the :class:`CriticalPointReport` at the final point.
      params: the final parameters (a pytree; ``None`` after a JSON round trip).
    """

    status: str
    loss: float
    grad_norm: float
    index: int | None
    index_fraction: float | None
    verdict: str
    flatness: float
    start: int
    newton_steps: int
    grad_norms: tuple
    report: CriticalPointReport
    params: Any = None

    _tuples = ("grad_norms",)
    _skip = ("params",)
    _results = {"report": CriticalPointReport}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CriticalPointSearch(Result):
    """The points reached by :func:`find_critical_points`, one per start (a sequence).

    Attributes:
      points: tuple of :class:`FoundPoint`, in the order of the starts.
      options: the settings used (tolerances, budgets).
      wall_time: seconds.
    """

    points: tuple
    options: dict

    _results = {"points": FoundPoint}

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self):
        return iter(self.points)

    def __getitem__(self, i):
        return self.points[i]

    @property
    def critical(self) -> tuple:
        """The points that reached ``||grad|| <= grad_tol``."""
        return tuple(p for p in self.points if p.status == "critical")

    @property
    def losses(self) -> np.ndarray:
        return np.array([p.loss for p in self.points])

    @property
    def indices(self) -> np.ndarray:
        """Index of each point (NaN where unavailable)."""
        return np.array([np.nan if p.index is None else p.index for p in self.points])

    @property
    def index_fractions(self) -> np.ndarray:
        return np.array([np.nan if p.index_fraction is None else p.index_fraction
                         for p in self.points])

    def table(self) -> str:
        rows = [f"{'#':>3} {'status':>14} {'verdict':>19} {'loss':>11} {'|grad|':>9} "
                f"{'index':>6} {'flat':>5} {'iters':>5} {'HVPs':>6}"]
        for i, p in enumerate(self.points):
            idx = "?" if p.index is None else str(p.index)
            rows.append(f"{i:>3} {p.status:>14} {p.verdict:>19} {p.loss:>11.5g} "
                        f"{p.grad_norm:>9.2e} {idx:>6} {p.report._flat_str():>5} "
                        f"{p.newton_steps:>5} {p.num_matvecs:>6}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return (f"CriticalPointSearch: {len(self.critical)} critical of {len(self)} starts "
                f"({self.wall_time:.1f} s)\n{self.table()}")
