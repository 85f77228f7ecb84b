"""Eigenpairs of a curvature operator."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from hessian_tools.results._base import Result, Status

__all__ = ["Eigenpairs"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Eigenpairs(Result):
    """Extreme eigenpairs of a curvature operator.

    Attributes:
      values: ``(k,)`` eigenvalues in descending order (for ``which="both"`` the first
        ``k`` are the largest, the last ``k`` the smallest).
      vectors: stacked pytree basis, row ``i`` the unit eigenvector of ``values[i]``
        (``None`` after a JSON round trip: vectors are not serialised).
      residuals: ``(k,)`` residual norms ``||A v - lambda v||`` from operator products
        (kept by the solver for ``residual_kind == "explicit"``, fresh ones for
        ``"recompute"``) or Lanczos estimates (``"estimate"``). The eigenvalue error is at
        most the residual.
      num_matvecs: operator products spent, residual checks included.
      status: :class:`Status.converged <hessian_tools.Status>` when every residual is
        within ``tol * scale`` (``converged`` is the same as a bool), else ``budget``.
      which, k, tol, scale: the request and the spectral scale estimate ``max |lambda|``.
      method: ``"lanczos"``, ``"power"`` or ``"dense"``.
      operator: operator kind (``"hessian"``, ``"ggn"``, ...); ``seed``: key data.
      wall_time: seconds, compilation included.
      num_restarts: thick restarts of the Lanczos runs. residual_kind: see ``residuals``.
    """

    values: np.ndarray
    vectors: Any = None
    residuals: np.ndarray
    status: Status
    which: str
    k: int
    tol: float
    scale: float
    method: str = "lanczos"
    num_restarts: int = 0
    residual_kind: str = "explicit"
    extra: dict = dataclasses.field(default_factory=dict)

    _arrays = ("values", "residuals")
    _skip = ("vectors",)

    @property
    def converged(self) -> bool:
        """Every residual is within ``tol * scale`` (``status`` is ``converged``)."""
        return self.status is Status.converged

    @property
    def largest(self) -> np.ndarray:
        """The largest eigenvalues found (descending)."""
        return self.values[:self.k] if self.which in ("largest", "both") else self.values[:0]

    @property
    def smallest(self) -> np.ndarray:
        """The smallest eigenvalues found (ascending)."""
        if self.which == "largest":
            return self.values[:0]
        return self.values[::-1][:self.k]

    @property
    def relative_residuals(self) -> np.ndarray:
        return self.residuals / max(self.scale, np.finfo(float).tiny)

    def table(self) -> str:
        """A plain-text table of the eigenvalues with their residuals."""
        rows = [f"{'#':>3}  {'eigenvalue':>14}  {'residual':>10}"]
        for i, (v, r) in enumerate(zip(self.values, self.residuals)):
            rows.append(f"{i:>3}  {v:>14.6g}  {r:>10.2e}")
        rows.append(f"matvecs: {self.num_matvecs}   converged: {self.converged}   "
                    f"tol: {self.tol:g} (relative to scale {self.scale:.4g})")
        return "\n".join(rows)

    def __str__(self) -> str:
        return f"Eigenpairs(which={self.which!r}, k={self.k}, {self.operator})\n{self.table()}"
