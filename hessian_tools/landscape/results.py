"""Landscape results: frozen, carrying their provenance, round-tripping through JSON."""

from __future__ import annotations

import dataclasses

import numpy as np

from hessian_tools.results import Result

__all__ = ["CurvatureMap", "InterpolationPath", "LossSurface"]


def _with_nan(x):
    """A JSON-ready nested list with NaN written as None (JSON has no NaN)."""
    if x is None:
        return None
    arr = np.asarray(x, np.float64)
    out = arr.astype(object)
    out[~np.isfinite(arr)] = None
    return out.tolist()


def _from_nan(x):
    return None if x is None else np.array(x, dtype=np.float64)


class _JsonResult(Result):
    """The house JSON round trip, with NaN kept (as JSON null) in the float arrays named in
    ``_ARRAYS``, integer arrays in ``_INT_ARRAYS``, and ``grid`` a tuple of axes."""

    _ARRAYS: tuple = ()
    _INT_ARRAYS: tuple = ()

    def to_dict(self) -> dict:
        d = super().to_dict()
        for name in self._ARRAYS:
            d[name] = _with_nan(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: dict):
        kw = {k: v for k, v in d.items() if k != "type"}
        for name in cls._ARRAYS:
            if name in kw:
                kw[name] = _from_nan(kw[name])
        for name in cls._INT_ARRAYS:
            if name in kw:
                kw[name] = np.asarray(kw[name], np.int64)
        if "grid" in kw:
            kw["grid"] = tuple(np.asarray(a, np.float64) for a in kw["grid"])
        return cls(**kw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossSurface(_JsonResult):
    """The dataset-mean loss on a 1-D or 2-D grid of points ``origin + x d1 (+ y d2)``.

    Attributes:
      values: ``(n1,)`` or ``(n1, n2)`` losses; ``values[i, j]`` is at
        ``(grid[0][i], grid[1][j])`` (``ij`` indexing: transpose it for ``contour``).
      metric: the metric on the same grid, or ``None``; ``metric_name`` names it.
      grid: the axes, a tuple of one or two 1-D arrays of coordinates.
      origin_loss, origin_metric: the values at the origin (coordinates 0).
      num_evaluations: forward passes over the data this call spent (points evaluated,
        the origin and the padding of the last chunk included); ``num_reused``: points
        read back from a stored file instead.
      directions: the provenance of the directions (:meth:`Directions.provenance`).
      origin_fingerprint: the fingerprint of the parameters at the origin.
      plan: how the points were evaluated (``"compiled"``: one call per chunk of points,
        ``"stream"``: per batch), with ``vmap_width``, ``chunk_size`` and ``affine`` (the
        affine part shared across points).
      wall_time: seconds, compilation included.
      dtype: the parameters' dtype.
    """

    values: np.ndarray
    grid: tuple
    origin_loss: float
    num_evaluations: int
    directions: dict
    origin_fingerprint: str
    metric: np.ndarray | None = None
    metric_name: str | None = None
    origin_metric: float | None = None
    num_reused: int = 0
    plan: dict = dataclasses.field(default_factory=dict)
    wall_time: float = 0.0
    dtype: str = "float32"
    path: str | None = None

    _ARRAYS = ("values", "metric")

    def __str__(self) -> str:
        shape = " x ".join(str(len(a)) for a in self.grid)
        span = ", ".join(f"[{a[0]:g}, {a[-1]:g}]" for a in self.grid)
        return (f"LossSurface({shape} grid over {span}; loss at the origin "
                f"{self.origin_loss:.4g}, range [{np.nanmin(self.values):.4g}, "
                f"{np.nanmax(self.values):.4g}], {int(np.isnan(self.values).sum())} missing; "
                f"{self.num_evaluations} evaluations, {self.wall_time:.1f} s)")

    @property
    def ndim(self) -> int:
        return len(self.grid)

    @property
    def shape(self) -> tuple:
        return tuple(len(a) for a in self.grid)


def barrier(t, values) -> tuple[float, float]:
    """``max_t [v(t) - ((1 - t) v(0) + t v(1))]`` and its ``t`` (Frankle et al. 2020).

    ``t`` must start at 0 and end at 1; ``v(0)`` and ``v(1)`` are the path's own end
    values, so the barrier is exactly 0 when the path lies below its chord (a convex
    function) and never negative.

    >>> barrier(np.linspace(0, 1, 3), np.array([1.0, 3.0, 1.0]))
    (2.0, 0.5)
    """
    t = np.asarray(t, np.float64)
    v = np.asarray(values, np.float64)
    if t.ndim != 1 or t.shape != v.shape or len(t) < 2 or t[0] != 0.0 or t[-1] != 1.0:
        raise ValueError(f"barrier needs matching 1-D t and values with t[0] = 0 and t[-1] = 1, "
                         f"got shapes {t.shape}, {v.shape}.")
    excess = v - ((1.0 - t) * v[0] + t * v[-1])
    i = int(np.argmax(excess))
    return float(excess[i]), float(t[i])


@dataclasses.dataclass(frozen=True, kw_only=True)
class InterpolationPath(_JsonResult):
    """The loss (and metric) along ``(1 - t) a + t b``.

    Attributes:
      t: ``(num_points,)``, increasing, from 0 to 1 unless ``span`` extended it; always
        contains 0 and 1 (the two ends).
      loss: the dataset-mean loss at each ``t``.
      metric, metric_name: the metric along the path, or ``None``.
      barrier: ``max_t [L(t) - ((1 - t) L(0) + t L(1))]`` (Frankle et al. 2020): how far
        the loss rises above the straight line between the end losses; 0 for a path that
        stays below its chord. ``barrier_t``: where it is reached.
      metric_barrier: the same formula for the metric, oriented so that positive is worse:
        for accuracy (``higher_is_better``) the largest drop below the chord.
      distance: ``||b - a||``.
      fingerprint_a, fingerprint_b: the two end points' fingerprints.
      num_evaluations: forward passes over the data; wall_time: seconds.
    """

    t: np.ndarray
    loss: np.ndarray
    barrier: float
    barrier_t: float
    distance: float
    fingerprint_a: str
    fingerprint_b: str
    num_evaluations: int
    metric: np.ndarray | None = None
    metric_name: str | None = None
    metric_barrier: float | None = None
    wall_time: float = 0.0

    _ARRAYS = ("t", "loss", "metric")

    def __str__(self) -> str:
        metric = ("" if self.metric_name is None else
                  f", {self.metric_name} barrier {self.metric_barrier:.4g}")
        return (f"InterpolationPath({len(self.t)} points, t in [{self.t[0]:g}, {self.t[-1]:g}]"
                f"; loss {self.loss[self.t == 0][0]:.4g} -> {self.loss[self.t == 1][0]:.4g}, "
                f"barrier {self.barrier:.4g} at t={self.barrier_t:.3g}{metric}; distance "
                f"{self.distance:.4g}, {self.num_evaluations} evaluations)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurvatureMap(_JsonResult):
    """The extreme Hessian eigenvalues on a grid (Li et al. 2018, Fig. 8).

    Attributes:
      lambda_max, lambda_min: ``(n1,)`` or ``(n1, n2)`` the largest and smallest Hessian
        eigenvalue at each point.
      ratio: ``|lambda_min / lambda_max|``: near 0 where the surface is locally convex,
        large where negative curvature dominates.
      residuals: ``grid shape + (2,)`` Lanczos residual estimates ``|beta s|`` of the two
        (an upper bound on each eigenvalue's error).
      point_matvecs: Hessian-vector products per point (grid shape); ``num_matvecs`` their
        sum. ``converged``: per point, both residuals within ``tol`` of the scale.
      grid, directions, origin_fingerprint: as in :class:`LossSurface`.
      tol: the relative residual tolerance; ``warm_start``: whether each point started
        from its neighbour's eigenvectors (``order``: the visiting order, ``"snake"``).
      seed: the key bits; wall_time: seconds.
    """

    lambda_max: np.ndarray
    lambda_min: np.ndarray
    ratio: np.ndarray
    residuals: np.ndarray
    point_matvecs: np.ndarray
    num_matvecs: int
    converged: np.ndarray
    grid: tuple
    directions: dict
    origin_fingerprint: str
    tol: float
    seed: list
    warm_start: bool = True
    order: str = "snake"
    wall_time: float = 0.0

    _ARRAYS = ("lambda_max", "lambda_min", "ratio", "residuals")
    _INT_ARRAYS = ("point_matvecs",)

    def __str__(self) -> str:
        shape = " x ".join(str(len(a)) for a in self.grid)
        return (f"CurvatureMap({shape} grid; lambda_max in [{np.nanmin(self.lambda_max):.4g}, "
                f"{np.nanmax(self.lambda_max):.4g}], lambda_min in "
                f"[{np.nanmin(self.lambda_min):.4g}, {np.nanmax(self.lambda_min):.4g}], "
                f"max |lambda_min/lambda_max| {np.nanmax(self.ratio):.3g}; "
                f"{int(np.sum(self.converged))}/{self.converged.size} points converged, "
                f"{self.num_matvecs} products)")

    def __post_init__(self):
        object.__setattr__(self, "converged", np.asarray(self.converged, bool))

    @property
    def shape(self) -> tuple:
        return tuple(len(a) for a in self.grid)
