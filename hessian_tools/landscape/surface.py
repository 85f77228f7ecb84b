"""Loss surfaces on 1-D and 2-D grids, linear interpolation and barriers, planes."""

from __future__ import annotations

import time

import jax
import numpy as np

from hessian_tools.landscape.directions import (Directions, difference_direction, fingerprint,
                                                plane_directions)
from hessian_tools.landscape.evaluate import OutputMetric, _Evaluator, metric_barrier
from hessian_tools.landscape.results import InterpolationPath, LossSurface, barrier
from hessian_tools.landscape.storage import SurfaceStore
from hessian_tools._progress import progress_bar
from hessian_tools.objective import Objective

__all__ = ["interpolate", "loss_surface", "plane"]


def _check_grid(grid, num_dirs: int) -> list[np.ndarray]:
    if isinstance(grid, np.ndarray) and grid.ndim == 1:
        grid = (grid,)
    if not isinstance(grid, (tuple, list)) or not grid:
        raise ValueError(f"grid must be a tuple of one or two 1-D coordinate arrays, e.g. "
                         f"(np.linspace(-1, 1, 51),) * 2; got {type(grid).__name__}.")
    if np.ndim(grid[0]) == 0:                      # a bare list of numbers: one axis
        grid = (grid,)
    axes = [np.asarray(a, np.float64) for a in grid]
    if len(axes) not in (1, 2):
        raise ValueError(f"grid has {len(axes)} axes; loss surfaces are 1-D or 2-D.")
    if len(axes) != num_dirs:
        raise ValueError(f"grid has {len(axes)} axes but the directions hold {num_dirs}: a "
                         "surface needs one direction per axis. Make "
                         f"random_directions(..., num={len(axes)}) or pass {num_dirs} axes.")
    for i, a in enumerate(axes):
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"grid axis {i} must be a non-empty 1-D array of coordinates, got "
                             f"shape {a.shape}.")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"grid axis {i} has non-finite coordinates; pass finite values.")
    return axes


def _metric_name(metric) -> str | None:
    if metric is None:
        return None
    if isinstance(metric, OutputMetric):
        return metric.name
    return getattr(metric, "__name__", type(metric).__name__)


def _data_fingerprint(obj: Objective) -> str | None:
    return None if obj.streaming else fingerprint(obj.data)


def _progress(total: int, enabled: bool, desc: str = "loss surface"):
    """The package's one progress bar (:func:`hessian_tools._progress.progress_bar`)."""
    return progress_bar(total, desc, unit="point", leave=False) if enabled else None


def _origin_index(axes) -> int | None:
    """The flat index of the grid point at coordinates exactly 0, if there is one."""
    idx = []
    for a in axes:
        zero = np.flatnonzero(a == 0.0)
        if zero.size == 0:
            return None
        idx.append(int(zero[0]))
    return int(np.ravel_multi_index(idx, [len(a) for a in axes]))


def loss_surface(obj: Objective, dirs: Directions, *, grid, metric=None, path=None,
                 chunk_size=None, vmap_width=None, progress: bool = False,
                 check_origin: bool = True) -> LossSurface:
    """The dataset-mean loss on a grid ``obj.params + x d1 (+ y d2)``.

    Every point is a forward pass over the whole dataset, batches weighted by their sizes
    exactly as in the curvature operators; chunks of points run as one compiled call each
    (:func:`~hessian_tools.landscape.evaluate_points`). With ``path`` the surface is stored
    as it fills (see :mod:`~hessian_tools.landscape.storage`): run it again after an
    interruption and only the missing points are computed.

    Args:
      obj: the objective; its ``params`` are the origin (for trajectory directions, the
        final checkpoint: ``obj.with_params(final)``).
      dirs: :class:`Directions` with one direction per grid axis.
      grid: one or two 1-D arrays of coordinates, e.g. ``(np.linspace(-1, 1, 51),) * 2``.
      metric: ``metric(params, batch) -> scalar`` or an :class:`OutputMetric` (e.g.
        ``ht.landscape.accuracy``), on the same grid.
      path: an ``.npz`` file to store (and resume) the surface in.
      chunk_size: points per compiled call (default chosen per model; see
        :func:`evaluate_points`).
      vmap_width: points per vmapped step (default chosen per model).
      progress: show a progress bar (tqdm) over the points.
      check_origin: refuse directions made for other parameters (their fingerprint).

    Returns:
      :class:`LossSurface`. Cost: one forward pass per grid point (one more for the origin
      unless the grid contains it), plus the padding of the last chunk.

    Raises:
      ValueError: directions that do not match the parameters (the leaf named) or were made
        at another point, an empty or non-finite grid, a stored file made with other
        settings (the differences listed).
    """
    start = time.perf_counter()
    if not isinstance(dirs, Directions):
        raise TypeError(f"dirs must be a Directions (random_directions, trajectory_directions, "
                        f"...), got {type(dirs).__name__}.")
    axes = _check_grid(grid, dirs.num)
    dirs.check_matches(obj.params, check_fingerprint=check_origin)
    num_values = 1 if metric is None else 2
    meta = {"directions": dirs.provenance(), "origin_fingerprint": fingerprint(obj.params),
            "data_fingerprint": _data_fingerprint(obj), "metric": _metric_name(metric),
            "dtype": str(np.dtype(jax.tree.leaves(obj.params)[0].dtype))}
    store = SurfaceStore(path, axes=axes, meta=meta, num_values=num_values)
    mesh = np.stack([m.reshape(-1) for m in np.meshgrid(*axes, indexing="ij")], axis=1)
    todo = store.missing()
    origin_at = _origin_index(axes)
    need_origin = not store.origin_done and origin_at is None
    coords = mesh[todo]
    if need_origin:
        coords = np.concatenate([coords, np.zeros((1, len(axes)))])
    ev = _Evaluator(obj, obj.params, dirs.vectors, metric=metric, num_points=len(coords),
                    chunk_size=chunk_size, vmap_width=vmap_width)
    bar = _progress(len(coords), progress)
    try:
        for a, b in ev.chunks(len(coords)):
            values = ev(coords[a:b])
            idx = np.arange(a, b)
            grid_part = idx < len(todo)
            origin = values[~grid_part][0] if not grid_part.all() else None
            store.update(todo[idx[grid_part]], values[grid_part], origin=origin)
            if bar is not None:
                bar.update(b - a)
    finally:
        if bar is not None:
            bar.close()
    if origin_at is not None and not store.origin_done:
        store.update([], np.zeros((0, num_values)),
                     origin=store.values.reshape(num_values, -1)[:, origin_at])
    return LossSurface(
        values=store.values[0], metric=store.values[1] if metric is not None else None,
        grid=tuple(axes), origin_loss=float(store.origin[0]),
        origin_metric=float(store.origin[1]) if metric is not None else None,
        metric_name=meta["metric"], num_evaluations=ev.num_evaluations,
        num_reused=store.num_reused, directions=meta["directions"],
        origin_fingerprint=meta["origin_fingerprint"],
        plan={"kind": ev.plan.kind, "vmap_width": ev.plan.width, "chunk_size": ev.plan.chunk,
              "affine": ev.plan.affine},
        wall_time=time.perf_counter() - start, dtype=meta["dtype"],
        path=None if path is None else str(path))


def interpolate(obj: Objective, params_a, params_b, *, num_points: int = 25, metric=None,
                chunk_size=None, span: tuple[float, float] = (0.0, 1.0)) -> InterpolationPath:
    """The loss (and metric) along the segment ``(1 - t) a + t b``, and its barrier.

    The barrier is Frankle et al. (2020)'s ``max_t [L(t) - ((1 - t) L(a) + t L(b))]``
    with ``L(a)``, ``L(b)`` the path's own end values (:func:`barrier`): zero when the
    loss never rises above the straight line between the ends (two points in one convex
    basin), positive when the path crosses a ridge.

    Args:
      obj: the objective (its loss and data; its parameters are not used).
      params_a: the first end point (``t = 0``), a pytree like ``obj.params``.
      params_b: the second end point (``t = 1``), a pytree like ``obj.params``.
      num_points: points on the line, ``t = linspace(*span, num_points)`` (with ``t = 0``
        and ``t = 1`` added where the grid misses them).
      metric: as in :func:`loss_surface`.
      chunk_size: points per compiled call.
      span: the range of ``t``, containing ``[0, 1]``: ``(-1, 2)`` extends the line beyond
        both ends (Keskar et al. 2017, Fig. 3; Goodfellow et al. 2015). The barrier is
        measured on ``[0, 1]`` only.

    Returns:
      :class:`InterpolationPath`. Cost: ``num_points`` forward passes over the data.

    Raises:
      ValueError: mismatched or non-finite parameters, ``num_points < 2``, a ``span`` that
        does not contain ``[0, 1]``.
    """
    start = time.perf_counter()
    if not isinstance(num_points, (int, np.integer)) or isinstance(num_points, bool) \
            or num_points < 2:
        raise ValueError(f"num_points={num_points!r} must be an integer >= 2 (the two ends "
                         "are included).")
    try:
        lo, hi = (float(v) for v in span)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= 0.0 and hi >= 1.0):
        raise ValueError(f"span={span!r} must be two finite numbers (lo, hi) with lo <= 0 and "
                         "hi >= 1: the line must contain both end points, e.g. (-1, 2).")
    dirs = difference_direction(params_a, params_b)
    obj_a = obj.with_params(params_a)
    t = np.union1d(np.linspace(lo, hi, int(num_points)), [0.0, 1.0])
    ev = _Evaluator(obj_a, params_a, dirs.vectors, metric=metric, num_points=len(t),
                    chunk_size=chunk_size)
    values = np.concatenate([ev(t[a:b, None]) for a, b in ev.chunks(len(t))])
    inside = (t >= 0.0) & (t <= 1.0)
    height, at = barrier(t[inside], values[inside, 0])
    metric_values = values[:, 1] if metric is not None else None
    return InterpolationPath(
        t=t, loss=values[:, 0], barrier=height, barrier_t=at,
        distance=float(dirs.extra["distance"]), fingerprint_a=dirs.fingerprint,
        fingerprint_b=dirs.extra["fingerprint_b"], num_evaluations=ev.num_evaluations,
        metric=metric_values, metric_name=_metric_name(metric),
        metric_barrier=None if metric is None else metric_barrier(t[inside],
                                                                  metric_values[inside], metric),
        wall_time=time.perf_counter() - start)


def _plane_axes(coords: np.ndarray, n: int, margin: float) -> tuple:
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    pad = margin * np.max(hi - lo)
    return tuple(np.linspace(lo[i] - pad, hi[i] + pad, n) for i in range(2))


def plane(obj: Objective, params_a, params_b, params_c, *, grid=21, margin: float = 0.2,
          metric=None, path=None, chunk_size=None, vmap_width=None,
          progress: bool = False) -> LossSurface:
    """The loss on the plane through three points (Garipov et al. 2018, Fig. 1).

    Coordinates are distances along an orthonormal basis of the plane
    (:func:`plane_directions`): ``a`` at ``(0, 0)``, ``b`` on the first axis, ``c`` above
    it; ``surf.directions["coordinates"]`` holds the three points.

    Args:
      obj: the objective (its loss and data).
      params_a: the first point, at the plane's origin.
      params_b: the second point, on the first axis.
      params_c: the third point.
      grid: ``n`` for an ``n x n`` grid spanning the three points with ``margin`` (a
        fraction of their spread) on every side, or two axes of plane coordinates.
      metric: as in :func:`loss_surface`.
      path: as in :func:`loss_surface`.
      chunk_size: as in :func:`loss_surface`.
      vmap_width: as in :func:`loss_surface`.
      progress: as in :func:`loss_surface`.

    Returns:
      :class:`LossSurface` in the plane's coordinates. Cost: one forward pass per point.
    """
    dirs = plane_directions(params_a, params_b, params_c)
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        if grid < 2:
            raise ValueError(f"grid={grid} must be at least 2 points per axis.")
        grid = _plane_axes(dirs.coordinates, int(grid), float(margin))
    return loss_surface(obj.with_params(params_a), dirs, grid=grid, metric=metric, path=path,
                        chunk_size=chunk_size, vmap_width=vmap_width, progress=progress)
