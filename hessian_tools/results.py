"""Result objects: frozen, carrying how they were computed, round-tripping through JSON."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

__all__ = ["Eigenpairs"]


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


@dataclasses.dataclass(frozen=True)
class Eigenpairs:
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
      converged: every residual is within ``tol * scale``.
      which, k, tol, scale: the request and the spectral scale estimate ``max |lambda|``.
      method: ``"lanczos"``, ``"power"`` or ``"dense"``.
      operator: operator kind (``"hessian"``, ``"ggn"``, ...); ``seed``: key data if known.
      wall_time: seconds, compilation included.
    """

    values: np.ndarray
    vectors: Any
    residuals: np.ndarray
    num_matvecs: int
    converged: bool
    which: str
    k: int
    tol: float
    scale: float
    method: str = "lanczos"
    operator: str = ""
    wall_time: float = 0.0
    num_restarts: int = 0
    residual_kind: str = "explicit"
    extra: dict = dataclasses.field(default_factory=dict)

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

    def to_dict(self) -> dict:
        d = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
             if f.name != "vectors"}
        d["type"] = "Eigenpairs"
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> "Eigenpairs":
        d = {k: v for k, v in d.items() if k != "type"}
        d["values"] = np.asarray(d["values"], dtype=np.float64)
        d["residuals"] = np.asarray(d["residuals"], dtype=np.float64)
        return cls(vectors=None, **d)

    @classmethod
    def from_json(cls, text: str) -> "Eigenpairs":
        return cls.from_dict(json.loads(text))

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
