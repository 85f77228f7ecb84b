"""Where are the critical points? :func:`find_critical_points` drives the gradient norm to zero
from given starts (Newton-MR: Gauss-Newton on ``1/2 ||grad L||^2`` with MINRES on the
Hessian) and classifies each point reached; points stuck at a small but non-zero gradient
are reported as *gradient-flat* (Frye et al. 2021), not as critical points.

References: Roosta, Liu, Xu & Mahoney 2018 (Newton-MR); Frye, Wadia, DeWeese & Bouchard
2019/2021; Dauphin et al. 2014.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools.analysis.critical import classify, default_grad_tol
from hessian_tools.linalg.minres import minres
from hessian_tools.objective import Objective
from hessian_tools._chunking import product_groups
from hessian_tools.operators import _value_and_grad, hessian, value_and_grad
from hessian_tools.results import CriticalPointSearch, FoundPoint

__all__ = ["find_critical_points"]


def _value_grad_at(obj: Objective, params):
    """Loss and gradient at ``params`` without re-validating the objective (hot loop)."""
    if obj.streaming:
        return value_and_grad(obj.with_params(params))
    return _value_and_grad(obj.loss, params, product_groups(obj, "auto"))


def _phi(obj, params):
    """``(1/2 ||g||^2, g, loss)`` at ``params``; ``inf`` when the loss is not finite."""
    loss, g = _value_grad_at(obj, params)
    phi = 0.5 * float(tree.vdot(g, g))
    return (phi if np.isfinite(phi) and np.isfinite(float(loss)) else np.inf), g, float(loss)


def _newton_mr_step(obj, point, h_scale, *, minres_matvecs, flat_tol, c1=1e-4,
                    min_step=2.0 ** -30):
    """One Newton-MR iteration: ``d = argmin ||H d + g||`` by MINRES, Armijo on ``phi``.

    ``point`` is ``(params, g, phi, loss)``; ``h_scale`` the largest ``||H||`` estimate so
    far. No step is taken when the gradient lies in the near-kernel of ``H``
    (``||H g|| <= flat_tol ||H|| ||g||``): there ``grad phi = H g`` vanishes and MINRES would
    only amplify rounding. Returns ``(point, matvecs, h_scale, accepted)``.
    """
    params, g, phi, _ = point
    H = hessian(obj.with_params(params))
    rtol = min(0.5, float(np.sqrt(np.sqrt(2 * phi))))        # inexact Newton (Eisenstat-Walker)
    sol = minres(H.apply_unchecked, tree.scale(-1.0, g), num_matvecs=minres_matvecs, rtol=rtol,
                 anorm_hint=h_scale)
    h_scale = max(h_scale, sol.anorm)
    if sol.ab_norm <= flat_tol * h_scale * np.sqrt(2 * phi):
        return point, H.num_matvecs, h_scale, False
    slope = float(tree.vdot(g, H.apply_unchecked(sol.x)))     # d/dt phi(x + t d) at t = 0
    t = 1.0
    while slope < 0 and t >= min_step:
        trial = tree.axpy(t, sol.x, params)
        phi_t, g_t, loss_t = _phi(obj, trial)
        if phi_t <= phi + c1 * t * slope:
            return (trial, g_t, phi_t, loss_t), H.num_matvecs, h_scale, True
        t *= 0.5
    return point, H.num_matvecs, h_scale, False


def _newton_mr(obj, params, *, grad_tol, newton_steps, minres_matvecs, patience, flat_tol):
    """Drive ``||grad L||`` down from ``params``; returns ``(params, norms, iters, matvecs)``."""
    phi, g, loss = _phi(obj, params)
    point, norms, matvecs, stalled, h_scale = (params, g, phi, loss), [float(np.sqrt(2 * phi))], 0, 0, 0.0
    for it in range(newton_steps):
        tol = default_grad_tol(obj.dtype, point[3]) if grad_tol is None else grad_tol
        if norms[-1] <= tol:
            return point[0], norms, it, matvecs
        point, used, h_scale, accepted = _newton_mr_step(
            obj, point, h_scale, minres_matvecs=minres_matvecs, flat_tol=flat_tol)
        matvecs += used
        norms.append(float(np.sqrt(2 * point[2])))
        stalled = stalled + 1 if norms[-1] > 0.9 * norms[-2] else 0
        if not accepted or stalled >= patience:
            return point[0], norms, it + 1, matvecs
    return point[0], norms, newton_steps, matvecs


def _flatness(obj, params, scale) -> float:
    """``||H g|| / (scale ||g||)`` at ``params`` (one gradient, one HVP)."""
    _, g = _value_grad_at(obj, params)
    hg = float(tree.norm(hessian(obj.with_params(params)).apply_unchecked(g)))
    return hg / max(scale * float(tree.norm(g)), np.finfo(float).tiny)


def find_critical_points(obj: Objective, starts: Sequence, *, key, grad_tol: float | None = None,
                         newton_steps: int = 50, minres_matvecs: int = 100, patience: int = 10,
                         gradient_flat_tol: float = 1e-2, classify_options: dict | None = None,
                         progress: bool = False) -> CriticalPointSearch:
    """Find critical points (of any index) near each start by Newton-MR, and classify them.

    Minimises ``phi(x) = 1/2 ||grad L(x)||^2`` with Gauss-Newton steps: the direction
    ``d = argmin ||H d + g||`` comes from MINRES on the Hessian (HVPs only; indefinite and
    singular ``H`` are fine), and a backtracking (Armijo) line search on ``phi`` along ``d``
    (``<grad phi, d> = <g, H d> < 0`` for MINRES iterates; Roosta et al. 2018). Unlike
    gradient descent on ``L``, this converges to saddles as readily as to minima, which is
    what a map of the critical points needs (Dauphin et al. 2014; Frye et al. 2019).

    Each point reached gets a status: ``"critical"`` when ``||g|| <= grad_tol``;
    ``"gradient-flat"`` when the method stalled with ``||g|| > grad_tol`` but the gradient
    lies in the near-kernel of the Hessian, ``||H g|| <= gradient_flat_tol * max|lambda| *
    ||g||``, so that ``grad phi = H g`` is (almost) zero although ``g`` is not: a
    gradient-flat region (Frye et al. 2021), not a critical point; otherwise
    ``"not converged"``. Every point is then classified with :func:`classify` (index,
    verdict).

    Cost per iteration: up to ``minres_matvecs`` HVPs (MINRES) + 1 HVP + one gradient per
    line-search trial; memory a few parameter-sized vectors. Per point, one
    :func:`classify` (``dim`` HVPs on the dense path).

    Args:
      obj: the objective (its ``params`` only fix the structure).
      starts: a sequence of parameter pytrees shaped like ``obj.params``.
      key: a ``jax.random`` key for the classifications.
      grad_tol: the gradient norm that counts as zero (default :func:`default_grad_tol`).
      newton_steps: Newton iterations per start.
      minres_matvecs: MINRES iterations (HVPs) per Newton step.
      patience: stop after this many iterations without a 10% decrease of ``||g||``.
      gradient_flat_tol: the relative ``||H g||`` below which a stalled point is
        gradient-flat (the iteration itself stops once ``||H g||`` falls below 1% of this,
        where MINRES could only amplify rounding).
      classify_options: keyword arguments for :func:`classify` (``grad_tol`` is passed on).
      progress: print one line per start.

    Returns:
      A :class:`CriticalPointSearch` (a sequence of :class:`FoundPoint`).

    Raises:
      ValueError: an empty ``starts``, a start not shaped like ``obj.params`` (the leaf is
        named), or no key.
    """
    _check_starts(obj, starts, key)
    begin, found = time.perf_counter(), []
    keys = jax.random.split(key, len(starts))
    options = dict(classify_options or {})
    if grad_tol is not None:
        options["grad_tol"] = grad_tol
    for i, (x0, sub) in enumerate(zip(starts, keys)):
        found.append(_search_one(obj, x0, i, sub, grad_tol=grad_tol, newton_steps=newton_steps,
                                 minres_matvecs=minres_matvecs, patience=patience,
                                 gradient_flat_tol=gradient_flat_tol, options=options))
        if progress:
            p = found[-1]
            print(f"start {i}: {p.status}, loss {p.loss:.5g}, |grad| {p.grad_norm:.2e}, "
                  f"index {p.index}, {p.newton_steps} Newton steps, {p.num_matvecs} HVPs", flush=True)
    settings = dict(grad_tol=grad_tol, newton_steps=newton_steps, minres_matvecs=minres_matvecs,
                    patience=patience, gradient_flat_tol=gradient_flat_tol,
                    classify_options=options)
    return CriticalPointSearch(points=tuple(found), options=settings,
                               num_matvecs=sum(p.num_matvecs for p in found),
                               wall_time=time.perf_counter() - begin, seed=tree.key_bits(key))


def _check_starts(obj, starts, key):
    if key is None:
        raise ValueError("find_critical_points needs an explicit PRNG key: pass "
                         "key=jax.random.key(0).")
    if isinstance(starts, (dict, jax.Array, np.ndarray)) or not isinstance(starts, Sequence):
        raise TypeError(f"starts must be a list of parameter pytrees, got "
                        f"{type(starts).__name__}. Wrap a single start as [params].")
    if len(starts) == 0:
        raise ValueError("starts is empty: pass at least one parameter pytree.")
    for i, x0 in enumerate(starts):
        tree.check_same_structure(obj.params, x0, what=f"starts[{i}]")


def classify_found(obj, params, key, options, gradient_flat_tol):
    """``(report, status, flatness)`` at a point a search reached: :func:`classify`, then
    ``"critical"``, ``"gradient-flat"`` or ``"not converged"`` (see :func:`find_critical_points`)."""
    rep = classify(obj.with_params(params), key=key, **options)
    flatness = _flatness(obj, params, max(abs(rep.lambda_max), abs(rep.lambda_min)))
    if rep.grad_norm <= rep.thresholds["grad_tol"]:
        status = "critical"
    else:
        status = "gradient-flat" if flatness <= gradient_flat_tol else "not converged"
    return rep, status, flatness


def _search_one(obj, x0, i, key, *, grad_tol, newton_steps, minres_matvecs, patience,
                gradient_flat_tol, options):
    x0 = jax.tree.map(lambda a, b: jnp.asarray(b, jnp.result_type(a)), obj.params, x0)
    params, norms, iters, matvecs = _newton_mr(obj, x0, grad_tol=grad_tol, newton_steps=newton_steps,
                                               minres_matvecs=minres_matvecs, patience=patience,
                                               flat_tol=1e-2 * gradient_flat_tol)
    rep, status, flatness = classify_found(obj, params, key, options, gradient_flat_tol)
    return FoundPoint(status=status, loss=rep.loss, grad_norm=rep.grad_norm, index=rep.index,
                      index_fraction=rep.index_fraction, verdict=rep.verdict, flatness=flatness,
                      start=i, newton_steps=iters, num_matvecs=matvecs + rep.num_matvecs + 1,
                      grad_norms=tuple(norms), report=rep, params=params,
                      seed=tree.key_bits(key))
