"""Curvature maps: the extreme Hessian eigenvalues at every point of a grid (Li et al. 2018).

Li et al. map ``|lambda_min / lambda_max|`` over a filter-normalised plane to show where a
surface is locally convex (near 0) and where negative curvature is as strong as positive
(near 1 or above). Each point needs the top and bottom Hessian eigenvalue: a Lanczos solve.
Neighbouring points have nearly the same eigenvectors, so the points are visited in
snake order (row by row, every other row reversed: each point is next to the previous
one) and each solve starts from the previous point's Ritz vectors (the top, its
runner-up and the bottom, combined), the warm start of the sharpness tracker
(:mod:`hessian_tools.training.measure`). ``benchmarks/RESULTS_landscape.md`` measures the saving
against independent cold solves at the same tolerance.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from hessian_tools import _host, tree
from hessian_tools.landscape.directions import Directions, fingerprint
from hessian_tools.landscape.evaluate import _point
from hessian_tools.landscape.results import CurvatureMap
from hessian_tools.landscape.surface import _check_grid, _progress
from hessian_tools.objective import Objective
from hessian_tools.operators import hessian
from hessian_tools.training.measure import _top

__all__ = ["curvature_map", "snake_order"]


def _extremes(op, params, warm, key, *, tol, krylov_dim, num_matvecs, min_steps):
    """The largest and smallest eigenpair of ``op`` by warm-started Lanczos.

    The one adapter to the tracker's solver (``training.measure._top``): it returns ``.values``
    (top, then bottom), ``.residuals`` (Lanczos estimates ``|beta s|``), ``.warm`` (the
    next start), ``.num_matvecs`` and ``.converged``.
    """
    return _top(op, op.matvec_fn, params, warm, key, k_top=1, k_bottom=1, tol=tol,
                krylov_dim=krylov_dim, num_matvecs=num_matvecs, min_steps=min_steps)


def snake_order(shape: tuple) -> np.ndarray:
    """Flat (C-order) indices of a 1-D or 2-D grid, row by row with every other row
    reversed, so consecutive points are neighbours.

    >>> snake_order((2, 3)).tolist()
    [0, 1, 2, 5, 4, 3]
    """
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    if idx.ndim == 2:
        idx[1::2] = idx[1::2, ::-1]
    return idx.reshape(-1)


_point_jit = jax.jit(_point)


def _check_solver(tol, krylov_dim, num_matvecs, min_steps):
    if not 0 < float(tol) < 1:
        raise ValueError(f"tol={tol!r} must lie in (0, 1): a residual relative to the largest "
                         "|eigenvalue|, e.g. 1e-3.")
    for name, value, low in (("krylov_dim", krylov_dim, 6), ("num_matvecs", num_matvecs, 1),
                             ("min_steps", min_steps, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}.")


def curvature_map(obj: Objective, dirs: Directions, *, grid, key, tol: float = 1e-3,
                  warm_start: bool = True, krylov_dim: int = 40, num_matvecs: int = 300,
                  min_steps: int = 3, check_origin: bool = True,
                  progress: bool = False) -> CurvatureMap:
    """``lambda_max``, ``lambda_min`` and ``|lambda_min / lambda_max|`` of the Hessian on a grid.

    At each point ``obj.params + x d1 (+ y d2)`` the dataset-mean Hessian
    (:func:`hessian_tools.hessian`, linearised at the point) is solved for its largest and
    smallest eigenvalue by Lanczos with full reorthogonalisation, to a residual estimate
    ``|beta s| <= tol * max|theta|`` for both. With ``warm_start`` the points are visited in
    :func:`snake_order` and each solve starts from the previous point's Ritz vectors.

    Args:
      obj: the objective (origin: its ``params``).
      dirs: :class:`Directions` with one direction per grid axis.
      grid: one or two 1-D coordinate arrays (a coarse grid: every point is a solve).
      key: a ``jax.random`` key (start vectors; one per point without warm start).
      tol: relative residual tolerance of both eigenvalues (their error is at most
        ``tol * max|lambda|``, and about its square over the spectral gap).
      warm_start: start each point from its neighbour (``False``: independent cold
        solves, the reference the benchmark compares with).
      krylov_dim: the solver's basis size (it restarts beyond it).
      num_matvecs: the cap on products per point.
      min_steps: the fewest Lanczos steps per point.
      check_origin: refuse directions made for other parameters.
      progress: a progress bar over the points.

    Returns:
      :class:`CurvatureMap`. Cost per point: one linearisation (about a gradient) plus
      ``num_matvecs`` Hessian-vector products (each about two gradients); memory: the
      Krylov basis, ``krylov_dim`` parameter-sized vectors.

    Raises:
      ValueError: no key, mismatched directions or grid, bad solver options.
    """
    start = time.perf_counter()
    if key is None:
        raise ValueError("curvature_map needs an explicit PRNG key for its start vectors: pass "
                         "key=jax.random.key(0).")
    if not isinstance(dirs, Directions):
        raise TypeError(f"dirs must be a Directions, got {type(dirs).__name__}.")
    _check_solver(tol, krylov_dim, num_matvecs, min_steps)
    axes = _check_grid(grid, dirs.num)
    dirs.check_matches(obj.params, check_fingerprint=check_origin)
    shape = tuple(len(a) for a in axes)
    mesh = np.stack([m.reshape(-1) for m in np.meshgrid(*axes, indexing="ij")], axis=1)
    dtype = np.dtype(_host.FlatLayout(obj.params).dtype)
    n = mesh.shape[0]
    values, residuals = np.full((n, 2), np.nan), np.full((n, 2), np.nan)
    matvecs, converged = np.zeros(n, np.int64), np.zeros(n, bool)
    keys = jax.random.split(key, n)
    warm = None
    bar = _progress(n, progress, desc="curvature map")
    for i in snake_order(shape):
        params = _point_jit(obj.params, dirs.vectors, np.asarray(mesh[i], dtype))
        op = hessian(obj.with_params(params))
        res = _extremes(op, params, warm if warm_start else None, keys[i], tol=tol,
                        krylov_dim=krylov_dim, num_matvecs=num_matvecs, min_steps=min_steps)
        values[i], residuals[i] = res.values[[0, -1]], res.residuals[[0, -1]]
        matvecs[i], converged[i] = res.num_matvecs, res.converged
        warm = res.warm
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    lmax, lmin = values[:, 0].reshape(shape), values[:, 1].reshape(shape)
    return CurvatureMap(
        lambda_max=lmax, lambda_min=lmin,
        ratio=np.abs(lmin) / np.maximum(np.abs(lmax), np.finfo(float).tiny),
        residuals=residuals.reshape(shape + (2,)), point_matvecs=matvecs.reshape(shape),
        num_matvecs=int(matvecs.sum()), converged=converged.reshape(shape),
        grid=tuple(axes), directions=dirs.provenance(),
        origin_fingerprint=fingerprint(obj.params), tol=float(tol), seed=tree.key_bits(key),
        warm_start=bool(warm_start), order="snake" if warm_start else "independent",
        wall_time=time.perf_counter() - start)
