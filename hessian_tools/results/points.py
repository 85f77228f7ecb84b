"""Results over many points (one result per point), polished points and found saddles."""

from __future__ import annotations

import dataclasses

import numpy as np

from hessian_tools.results._base import Result
from hessian_tools.results.critical import CriticalPointReport, CriticalPointSearch, FoundPoint
from hessian_tools.results.eigen import Eigenpairs
from hessian_tools.results.spectral import TraceEstimate

__all__ = ["PointResults", "PolishResult", "FoundSaddle", "SaddleSearch"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PointResults(Result):
    """One analysis at each of ``P`` points of one architecture: a sequence of results.

    ``res[i]`` is what the single-point function (``ht.eigenvalues``, ``ht.classify``,
    ``ht.trace``) returns for point ``i`` with the key ``jax.random.split(key, P)[i]``.

    Attributes:
      results: the per-point results (:class:`Eigenpairs`, :class:`CriticalPointReport` or
        :class:`TraceEstimate`), in point order.
      analysis: ``"eigenvalues"``, ``"classify"`` or ``"trace"``.
      mode: ``"batched"`` (the products of all points in shared compiled calls) or
        ``"sequential"`` (one point after another).
      reason: why ``mode`` was chosen when it was not asked for (e.g. convolutions on the CPU).
      num_points: ``P``.
      num_rounds: rounds of batched products (``0`` when sequential).
      num_calls: compiled calls of the stacked product (several per round when the points
        asked for different numbers of vectors).
      num_matvecs: products over all points (each point's own count is in its result).
    """

    results: tuple
    analysis: str
    mode: str
    reason: str = ""
    num_points: int
    num_rounds: int = 0
    num_calls: int = 0

    _types = {t.__name__: t for t in (Eigenpairs, CriticalPointReport, TraceEstimate)}

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self):
        return iter(self.results)

    def __getitem__(self, i):
        return self.results[i]

    @property
    def converged(self) -> bool:
        """Every point's eigenvalues converged (``Eigenpairs.converged``); True for
        analyses without a convergence test."""
        return all(getattr(r, "converged", True) for r in self.results)

    @property
    def values(self) -> np.ndarray:
        """``(P, ...)``: the eigenvalues of every point (``"eigenvalues"``) or the trace
        estimates (``"trace"``)."""
        if self.analysis == "classify":
            raise AttributeError("classify results have no values: use .verdicts, .indices, "
                                 ".losses or the reports themselves.")
        return np.stack([np.asarray(r.values if self.analysis == "eigenvalues" else r.value,
                                    np.float64) for r in self.results])

    @property
    def verdicts(self) -> tuple:
        return tuple(r.verdict for r in self.results)

    @property
    def indices(self) -> np.ndarray:
        """Index of each point (NaN where unavailable), for ``"classify"``."""
        return np.array([np.nan if r.index is None else r.index for r in self.results])

    @property
    def losses(self) -> np.ndarray:
        return np.array([r.loss for r in self.results])

    @classmethod
    def _restore(cls, key, value, field):
        if key == "results":
            return tuple(cls._types[d["type"]].from_dict(d) for d in value)
        return super()._restore(key, value, field)

    def __str__(self) -> str:
        head = (f"PointResults: {self.analysis} at {self.num_points} points ({self.mode}"
                f"{'; ' + self.reason if self.reason else ''}), {self.num_matvecs} products, "
                f"{self.wall_time:.2f} s")
        return "\n".join([head] + [f"  [{i}] {_line(r)}" for i, r in enumerate(self.results)])


def _line(r) -> str:
    if isinstance(r, Eigenpairs):
        vals = ", ".join(f"{v:.5g}" for v in r.values)
        return f"[{vals}]  max residual {np.max(r.residuals, initial=0):.1e}  {r.status.name}"
    if isinstance(r, CriticalPointReport):
        return r.summary
    return f"{r.value:.6g} +- {r.stderr:.2g}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolishResult(FoundPoint):
    """A point driven to a critical point by :func:`hessian_tools.polish`, and classified.

    Everything :class:`FoundPoint` has (``status``: ``"critical"`` when the full-data
    gradient norm reached ``grad_tol``, ``"gradient-flat"`` or ``"not converged"``; the
    final ``loss``, ``grad_norm``, ``index``, ``verdict``, the :class:`CriticalPointReport`
    ``report`` and the final ``params``), plus:

    Attributes:
      method: ``"trust-region"`` or ``"newton-mr"``.
      losses: the loss after every accepted step (the first at the start).
      certified_minimum: the report's verdict is ``"minimum"`` and the gradient reached
        ``grad_tol``: a certified strict local minimum (within the thresholds reported).
      trust_radius: the final trust-region radius (trust-region method; ``None`` otherwise).
      certified_by: the method whose iterations brought the gradient to ``grad_tol``
        (``"trust-region"`` or ``"newton-mr"``, the latter also as the trust region's
        fallback); ``""`` when the point is not critical.
    """

    method: str
    losses: tuple
    trust_radius: float | None = None
    certified_by: str = ""

    _tuples = FoundPoint._tuples + ("losses",)

    @property
    def certified_minimum(self) -> bool:
        return self.status == "critical" and self.verdict == "minimum"

    def __str__(self) -> str:
        return (f"PolishResult ({self.method}): {self.status}, loss {self.losses[0]:.6g} -> "
                f"{self.loss:.6g}, |grad| {self.grad_norms[0]:.2e} -> {self.grad_norm:.2e} in "
                f"{self.newton_steps} steps, {self.num_matvecs} products\n  {self.report.summary}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FoundSaddle(FoundPoint):
    """One run of :func:`hessian_tools.find_saddles`: a :class:`FoundPoint` with its target.

    Attributes:
      target_index: the index searched for (``None``: any critical point, by Newton-MR).
      method: ``"eigenvector-following"`` or ``"newton-mr"``.
      reached: the point is critical and its index (from :func:`classify`) is the target.
      losses: the loss after every step (the first at the start).
    """

    target_index: int | None
    method: str
    losses: tuple = ()

    _tuples = FoundPoint._tuples + ("losses",)

    @property
    def reached(self) -> bool:
        return self.status == "critical" and (self.target_index is None
                                              or self.index == self.target_index)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SaddleSearch(CriticalPointSearch):
    """The points :func:`hessian_tools.find_saddles` reached: a sequence of
    :class:`FoundSaddle`, one per (start, target index), in that order.

    ``ht.plot_index_vs_loss(search)`` draws loss against index (Dauphin et al. 2014, Fig. 1).
    """

    _results = {"points": FoundSaddle}

    @property
    def reached(self) -> tuple:
        """The points that are critical with the index searched for."""
        return tuple(p for p in self.points if p.reached)

    def table(self) -> str:
        rows = [f"{'#':>3} {'start':>5} {'target':>6} {'status':>14} {'index':>6} {'loss':>11} "
                f"{'|grad|':>9} {'steps':>5} {'HVPs':>6}"]
        for i, p in enumerate(self.points):
            target = "any" if p.target_index is None else str(p.target_index)
            idx = "?" if p.index is None else str(p.index)
            rows.append(f"{i:>3} {p.start:>5} {target:>6} {p.status:>14} {idx:>6} "
                        f"{p.loss:>11.5g} {p.grad_norm:>9.2e} {p.newton_steps:>5} "
                        f"{p.num_matvecs:>6}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return (f"SaddleSearch: {len(self.reached)} of {len(self)} runs reached their target "
                f"({self.wall_time:.1f} s)\n{self.table()}")
