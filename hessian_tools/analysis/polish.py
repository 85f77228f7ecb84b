"""Critical points made certain: :func:`polish` drives a training end point to a critical
point and classifies it; :func:`find_saddles` searches for saddles of a given index.

A training run stops at a small but non-zero gradient; the index and verdict of
:func:`~hessian_tools.classify` there describe a point *near* a critical point. Second-order
steps close the gap in a few iterations:

* ``polish(method="trust-region")`` (default): trust region on the loss ``L``. Each step
  is Steihaug-Toint truncated CG on ``H d = -g`` inside the radius (stopped at the relative
  residual ``min(0.5, ||g||)``; where CG meets negative curvature the step follows it to the
  boundary), accepted when the actual decrease of ``L`` is at least a tenth of the
  quadratic model's ``g.d + d.H d / 2`` (the ratio test of Nocedal & Wright, ch. 4). The
  loss decreases monotonically and the iteration is not drawn towards saddles. If the
  trust region ends without reaching ``grad_tol``, Newton-MR continues from its last point
  (``fallback="newton-mr"``; ``certified_by`` says which method reached ``grad_tol``).
  The step before 0.3 (Levenberg-Marquardt ``(H + sigma I) d = -g`` by MINRES, scaled to
  the radius) is ``subproblem="lm-minres"``.
* ``polish(method="newton-mr")``: Newton-MR on ``1/2 ||grad L||^2`` (the engine of
  :func:`~hessian_tools.find_critical_points`): converges to the *nearest* critical point,
  of whatever index.

:func:`find_saddles` with ``target_index=k`` follows eigenvectors (partitioned rational
function steps; Cerjan & Miller 1981, Baker 1986, Wales 2003 sec. 6.2): along ``k`` followed
eigenvectors of ``H`` the step goes *up* the loss, in their complement *down*, each as a
shifted Newton step whose shift keeps it the right way; the trust radius caps the step. The
followed modes are tracked from step to step by the overlap of their span with the previous
one (``track_modes``), never a null mode, with a step length that halves on overshooting.
The final iterations are Newton-MR, and every point is classified, so a run has
``reached`` its target only when the point is critical with exactly ``k`` negative
eigenvalues. The index is counted at the zero threshold the following itself uses to tell
null modes apart, ``sqrt(eps) max|lambda|`` (``classify_options={"relative_tau": ...}``),
not at ``classify``'s default of 1%: the saddles next to the minima of a small network have
negative eigenvalues of 1e-5 .. 1e-3 against a top of ~3, and would be counted as index 0.
Without a target the search is Newton-MR from every start (for starts perturbed off known
saddles, Dauphin et al. 2014).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools._checks import check_choice, check_count, check_key, check_positive
from hessian_tools.analysis.critical import default_grad_tol
from hessian_tools.analysis.eigen import eigenvalues
from hessian_tools.analysis.newton_mr import (_check_starts, _newton_mr, _value_grad_at,
                                              classify_found)
from hessian_tools.analysis.solve import solve
from hessian_tools.objective import Objective
from hessian_tools.operators import hessian
from hessian_tools.results.points import FoundSaddle, PolishResult, SaddleSearch

__all__ = ["polish", "find_saddles", "POLISH_METHODS"]

POLISH_METHODS = ("trust-region", "newton-mr")


def _cast(obj, params, what):
    tree.check_same_structure(obj.params, params, what=what)
    x = jax.tree.map(lambda a, b: jnp.asarray(b, jnp.result_type(a)), obj.params, params)
    for path, leaf in jax.tree_util.tree_flatten_with_path(x)[0]:
        if not bool(jnp.all(jnp.isfinite(leaf))):
            raise ValueError(f"{what}: leaf '{tree.path_str(path)}' has non-finite values (NaN "
                             "or inf); pass finite parameters.")
    return x


def _tol(obj, grad_tol, loss):
    return default_grad_tol(obj.dtype, loss) if grad_tol is None else grad_tol


FORCING = ("gradient", "sqrt")
SUBPROBLEMS = ("steihaug-cg", "lm-minres")


def _to_boundary(z, p, radius):
    """The ``tau >= 0`` with ``||z + tau p|| = radius`` (``||z|| <= radius``)."""
    pp, zp, zz = float(tree.vdot(p, p)), float(tree.vdot(z, p)), float(tree.vdot(z, z))
    return (-zp + math.sqrt(max(zp * zp + pp * (radius ** 2 - zz), 0.0))) / pp


def _steihaug_cg(apply, g, radius, rtol, max_iter):
    """Steihaug-Toint truncated CG for ``min g.d + d.H d / 2`` over ``||d|| <= radius``.

    CG on ``H d = -g`` from ``d = 0``; it stops at the relative residual ``rtol``, on the
    boundary when an iterate leaves the ball, or, at a direction of non-positive
    curvature, goes along it to the boundary (so a saddle's negative curvature is used to
    descend, never to climb). Returns ``(d, d.H d, products)``."""
    z, r = tree.zeros_like(g), g
    p, rr, gnorm = tree.scale(-1.0, g), float(tree.vdot(g, g)), float(tree.norm(g))
    zhz = 0.0
    for it in range(max_iter):
        hp = apply(p)
        php = float(tree.vdot(p, hp))
        if php <= 0 or not math.isfinite(php):
            tau = _to_boundary(z, p, radius)
            zhp = float(tree.vdot(z, hp))
            return tree.axpy(tau, p, z), zhz + 2 * tau * zhp + tau * tau * php, it + 1
        alpha = rr / php
        z_new = tree.axpy(alpha, p, z)
        if float(tree.norm(z_new)) >= radius:
            tau = _to_boundary(z, p, radius)
            zhp = float(tree.vdot(z, hp))
            return tree.axpy(tau, p, z), zhz + 2 * tau * zhp + tau * tau * php, it + 1
        zhz += 2 * alpha * float(tree.vdot(z, hp)) + alpha * alpha * php
        z, r = z_new, tree.axpy(alpha, hp, r)
        rr_new = float(tree.vdot(r, r))
        if math.sqrt(rr_new) <= rtol * gnorm:
            return z, zhz, it + 1
        p, rr = tree.axpy(rr_new / rr, p, tree.scale(-1.0, r)), rr_new
    return z, zhz, max_iter


def _trust_region(obj, x, *, grad_tol, max_steps, minres_matvecs, radius, forcing="gradient",
                  subproblem="steihaug-cg"):
    """Trust region on ``L`` from ``x``: Steihaug-Toint CG steps (``"steihaug-cg"``) or
    Levenberg-Marquardt MINRES steps (``"lm-minres"``, the rule before 0.3), the ratio test
    of Nocedal & Wright (ch. 4).

    The inner solve stops at the relative residual ``min(0.5, ||g||)``
    (``forcing="gradient"``) or ``min(0.5, sqrt(||g||))`` (``"sqrt"``). On an
    ill-conditioned Hessian the residual is dominated by its stiff directions, so the loose
    ``sqrt`` rule stops before the flat directions (where most of the distance to the
    minimum lies) are solved for, and the iteration crawls along the valley floor. The
    Levenberg-Marquardt step solves ``(H + sigma I) d = -g`` by MINRES, which on an
    indefinite ``H`` points towards a nearby saddle; Steihaug's CG follows negative
    curvature to the boundary instead.

    Returns ``(params, losses, grad_norms, steps, matvecs, radius)``."""
    loss, g = _value_grad_at(obj, x)
    loss, gnorm = float(loss), float(tree.norm(g))
    losses, norms, matvecs, sigma, scale, steps = [loss], [gnorm], 0, 0.0, 0.0, 0
    radius = max(1.0, float(tree.norm(x))) if radius is None else float(radius)
    eps = float(jnp.finfo(obj.dtype).eps)
    while steps < max_steps and gnorm > _tol(obj, grad_tol, loss):
        steps += 1
        H = hessian(obj.with_params(x))
        rtol = min(0.5, max(gnorm if forcing == "gradient" else math.sqrt(gnorm), 10 * eps))
        if subproblem == "steihaug-cg":
            d, dhd, used = _steihaug_cg(H.apply_unchecked, g, radius, rtol, minres_matvecs)
            matvecs += used
            t, dnorm, gd = 1.0, float(tree.norm(d)), float(tree.vdot(g, d))
        else:
            sol = solve(H, tree.scale(-1.0, g), method="minres", tol=rtol, damping=sigma,
                        num_matvecs=minres_matvecs, verify=False)
            scale = max(scale, sol.extra.get("anorm", 0.0))
            d = sol.x
            dnorm = float(tree.norm(d))
            if not dnorm > 0 or not math.isfinite(dnorm):
                break
            gd, dhd = float(tree.vdot(g, d)), float(tree.vdot(d, H.apply_unchecked(d)))
            matvecs += H.num_matvecs
            t = min(1.0, radius / dnorm)
        model = t * gd + 0.5 * t * t * dhd
        if not model < 0:                     # the model predicts no decrease: damp more
            if subproblem == "steihaug-cg":
                break                         # g = 0 to rounding
            sigma = max(4 * sigma, 1e-3 * max(scale, abs(dhd) / dnorm ** 2, eps))
            continue
        trial = tree.axpy(t, d, x)
        loss_t, g_t = _value_grad_at(obj, trial)
        loss_t = float(loss_t)
        rho = (loss_t - loss) / model if math.isfinite(loss_t) else -math.inf
        if rho >= 0.1:
            x, loss, g = trial, loss_t, g_t
            gnorm = float(tree.norm(g))
            losses.append(loss)
            norms.append(gnorm)
        if rho < 0.25:
            radius = t * dnorm / 4
            sigma = max(2 * sigma, 1e-6 * scale)
        elif rho > 0.75:
            radius = max(radius, 2 * t * dnorm)
            sigma /= 4
        if radius <= 10 * eps * max(1.0, float(tree.norm(x))):
            break                             # no progress possible at this precision
    return x, losses, norms, steps, matvecs, radius


def polish(obj: Objective, params=None, *, key, method: str = "trust-region",
           grad_tol: float | None = None, max_steps: int = 50, minres_matvecs: int = 100,
           radius: float | None = None, gradient_flat_tol: float = 1e-2,
           classify_options: dict | None = None, fallback: str | None = "newton-mr",
           forcing: str = "gradient", subproblem: str = "steihaug-cg") -> PolishResult:
    """Drive ``params`` (a training end point) to a critical point, then classify it.

    ``method="trust-region"`` (default): trust region on the loss (see the module
    docstring): Steihaug-Toint CG on ``H d = -g`` inside the radius (inexact: relative
    residual ``min(0.5, ||g||)``; negative curvature followed to the boundary), accepted
    when the loss falls by at least a tenth of the model's prediction. The loss decreases
    at every accepted step; near a non-degenerate minimum the steps are Newton steps and
    converge quadratically; if ``grad_tol`` is not reached, Newton-MR continues
    (``fallback``). ``method="newton-mr"``: Newton-MR on ``1/2 ||grad L||^2``, which goes to
    the nearest critical point of any index.

    The point reached is classified by :func:`~hessian_tools.classify` (the index and
    verdict, with their error bars). ``status`` is ``"critical"`` when the full-data
    gradient norm is within ``grad_tol``; ``certified_minimum`` when, besides, the verdict
    is ``"minimum"``.

    Cost per step: up to ``minres_matvecs`` Hessian-vector products (CG or MINRES) plus
    one, and one gradient per trial point; memory a few parameter-sized vectors (MINRES:
    8). Then one :func:`~hessian_tools.classify`.

    Args:
      obj: the objective.
      params: the start (a pytree shaped like ``obj.params``; default ``obj.params``).
      key: a ``jax.random`` key (for the classification).
      method: ``"trust-region"`` or ``"newton-mr"``.
      grad_tol: the gradient norm that counts as zero (default
        :func:`~hessian_tools.analysis.critical.default_grad_tol`:
        ``10 sqrt(eps) max(1, |loss|)``).
      max_steps: iterations at most.
      minres_matvecs: MINRES products per iteration at most.
      radius: the initial trust radius (default ``max(1, ||params||)``; trust region only).
      gradient_flat_tol: see :func:`~hessian_tools.find_critical_points`.
      classify_options: keyword arguments for :func:`~hessian_tools.classify`.
      fallback: ``"newton-mr"`` (default) or ``None`` (keyword-only; trust region only).
        When the trust region ends without reaching ``grad_tol`` (its step budget spent or
        its radius collapsed), Newton-MR continues from its last point for up to
        ``max_steps`` more iterations (as ``method="newton-mr"``: up to
        ``minres_matvecs + 1`` products and a few gradients each). Newton-MR goes to the
        nearest critical point, so the point certified may then be a saddle: read
        ``verdict``; ``certified_by`` says which method brought the gradient to ``grad_tol``.
      forcing: the MINRES stopping rule of the trust region (keyword-only):
        ``"gradient"`` (default) stops at the relative residual ``min(0.5, ||g||)``,
        ``"sqrt"`` at ``min(0.5, sqrt(||g||))`` (the rule before 0.3: fewer products per
        step, but on ill-conditioned Hessians, as in small nets with weight decay, the
        flat directions are left unsolved and the iteration needs many more steps).
        Both converge superlinearly near a non-degenerate minimum; ``"gradient"``
        quadratically.
      subproblem: the trust-region step (keyword-only). ``"steihaug-cg"`` (default):
        Steihaug-Toint truncated CG inside the radius, at most ``minres_matvecs``
        products; where it meets negative curvature it follows it to the boundary, so
        starts next to a saddle descend away from it. ``"lm-minres"``: the rule before
        0.3, Levenberg-Marquardt ``(H + sigma I) d = -g`` by MINRES scaled to the radius;
        on an indefinite ``H`` with ``sigma`` small its steps point towards a nearby saddle.

    Returns:
      A :class:`~hessian_tools.results.points.PolishResult` (``method``: the method run,
      ``"trust-region+newton-mr"`` when the fallback ran; ``certified_by``: the one that
      reached ``grad_tol``, ``""`` when none did).

    Raises:
      ValueError: no key, an unknown method, a non-positive budget or radius, ``params``
        not shaped like ``obj.params`` or not finite (the leaf is named).

    Examples:
      >>> import jax, jax.numpy as jnp, hessian_tools as ht
      >>> from hessian_tools.analysis.polish import polish
      >>> loss = lambda p, batch: jnp.sum((p - 1.0) ** 2) + jnp.sum(p) ** 4
      >>> obj = ht.Objective(loss, jnp.zeros(3), (jnp.zeros((1, 1)),))
      >>> res = polish(obj, key=jax.random.key(0))
      >>> res.status, res.verdict
      ('critical', 'minimum')
    """
    if not isinstance(obj, Objective):
        raise TypeError(f"polish expects an ht.Objective, got {type(obj).__name__}.")
    check_key(key, "polish")
    check_choice("method", method, POLISH_METHODS)
    check_choice("fallback", fallback, (None, "newton-mr"))
    check_choice("forcing", forcing, FORCING)
    check_choice("subproblem", subproblem, SUBPROBLEMS)
    check_count("max_steps", max_steps)
    check_count("minres_matvecs", minres_matvecs)
    if radius is not None:
        check_positive("radius", radius)
    check_positive("gradient_flat_tol", gradient_flat_tol)
    if grad_tol is not None:
        check_positive("grad_tol", grad_tol)
    start = time.perf_counter()
    x0 = _cast(obj, obj.params if params is None else params, "params")
    if method == "trust-region":
        x, losses, norms, steps, matvecs, radius = _trust_region(
            obj, x0, grad_tol=grad_tol, max_steps=max_steps, minres_matvecs=minres_matvecs,
            radius=radius, forcing=forcing, subproblem=subproblem)
        certified_by = method if norms[-1] <= _tol(obj, grad_tol, losses[-1]) else ""
        if not certified_by and fallback:
            x, more, iters, used = _newton_mr(obj, x, grad_tol=grad_tol, newton_steps=max_steps,
                                              minres_matvecs=minres_matvecs, patience=10,
                                              flat_tol=1e-2 * gradient_flat_tol)
            norms, steps, matvecs = norms + more[1:], steps + iters, matvecs + used
            method, certified_by = "trust-region+newton-mr", fallback
    else:
        x, norms, steps, matvecs = _newton_mr(obj, x0, grad_tol=grad_tol, newton_steps=max_steps,
                                              minres_matvecs=minres_matvecs, patience=10,
                                              flat_tol=1e-2 * gradient_flat_tol)
        losses, radius, certified_by = [float(_value_grad_at(obj, x0)[0])], None, method
    options = dict(classify_options or {})
    if grad_tol is not None:
        options["grad_tol"] = grad_tol
    rep, status, flatness = classify_found(obj, x, key, options, gradient_flat_tol)
    if method != "trust-region":
        losses.append(rep.loss)
    return PolishResult(status=status, loss=rep.loss, grad_norm=rep.grad_norm, index=rep.index,
                        index_fraction=rep.index_fraction, verdict=rep.verdict,
                        flatness=flatness, start=0, newton_steps=steps,
                        certified_by=certified_by if status == "critical" else "",
                        grad_norms=tuple(norms), report=rep, params=x, method=method,
                        losses=tuple(losses), trust_radius=radius,
                        num_matvecs=matvecs + rep.num_matvecs + 1,
                        wall_time=time.perf_counter() - start, seed=tree.key_bits(key),
                        operator="hessian")


# ---- eigenvector following --------------------------------------------------------------------

def _lowest_modes(H, k, key):
    """``(values, vectors)``: the ``k`` smallest eigenpairs of ``H``, ascending (stacked rows)."""
    method = "dense" if H.dim <= 256 else "lanczos"
    eig = eigenvalues(H, k=min(k, H.dim), which="smallest", key=key, method=method)
    order = np.argsort(eig.values)
    return np.asarray(eig.values)[order], jax.tree.map(lambda a: a[order], eig.vectors)


def _softening(obj, x, v) -> float:
    """The sign of ``d/dt (v.H(x + t v) v)`` at ``t = 0`` (central difference, 2 products):
    positive when the curvature along ``v`` grows in the direction ``+v``."""
    eps = float(jnp.finfo(obj.dtype).eps) ** (1 / 3) * max(1.0, float(tree.norm(x)))
    curv = [float(tree.vdot(v, hessian(obj.with_params(tree.axpy(s * eps, v, x)))
                            .apply_unchecked(v))) for s in (1.0, -1.0)]
    return 1.0 if curv[0] >= curv[1] else -1.0


_NULL_MODES = 4      # null modes (symmetries) tracking can skip: extra eigenpairs computed


def _pick_modes(lam, vecs, k, prev, tracking):
    """Which ``k`` of the computed eigenpairs to follow (indices, ascending in eigenvalue).

    Without ``tracking``: the ``k`` lowest. With it: never a null mode (``|lambda| <=
    sqrt(eps) max |lambda|``, e.g. the shift of a softmax's biases: moving along it changes
    nothing, so a step spent on it is lost), and after the first step the ``k`` whose
    eigenvectors overlap most with the span of the previously followed ``prev`` (the squared
    projection onto it; eigenvectors of near-degenerate eigenvalues mix, their span does
    not)."""
    if not tracking:
        return np.arange(k)
    scale = float(np.max(np.abs(lam)))
    live = np.flatnonzero(np.abs(lam) > math.sqrt(np.finfo(np.float64).eps) * scale)
    if len(live) < k:
        live = np.arange(len(lam))
    if prev is None:
        return live[:k]
    overlap = (np.asarray(tree.basis_gram(prev, vecs), np.float64) ** 2).sum(axis=0)[live]
    return np.sort(live[np.argsort(-overlap, kind="stable")[:k]])


def _follow_step(obj, x, g, k, key, *, radius, minres_matvecs, prev=None, extra=0):
    """One partitioned-rational-function step towards an index-``k`` saddle.

    Along each of the ``k`` followed modes ``(lambda_i, v_i)``: ``s_i = -g_i / (lambda_i -
    mu_i)`` with ``mu_i = (lambda_i + sqrt(lambda_i^2 + 4 g_i^2)) / 2`` (uphill; along a mode of
    positive curvature, of this length towards where its curvature decreases); in the
    complement: ``-(H + sigma I)^-1 g_perp`` with ``sigma = -mu`` for the lowest complement
    mode's shift ``mu = (lambda_c - sqrt(lambda_c^2 + 4 ||g_perp||^2)) / 2`` (downhill),
    projected off the ``k`` modes. The whole step is scaled to at most ``radius``.

    The followed modes are the ``k`` lowest (``prev`` None), or, with ``extra > 0``, the ``k``
    of the ``k + extra`` lowest that overlap most with ``prev`` (mode tracking); a tracked
    mode of positive curvature is climbed along its gradient component (the first step
    chose the side where it softens), not re-decided by the softening test at every step,
    which flips sides where another mode's curvature mixes in. Returns
    ``(new x, products, the followed modes)``."""
    H = hessian(obj.with_params(x))
    lam, vecs = _lowest_modes(H, k + 1 + (extra + _NULL_MODES if extra else 0), key)
    chosen = _pick_modes(lam, vecs, k, prev, tracking=extra > 0)
    rest = np.setdiff1d(np.arange(len(lam)), chosen)
    lam_c = lam[rest].min() if len(rest) else lam[-1]
    up_vecs = jax.tree.map(lambda a: a[chosen], vecs)
    gi = np.asarray(tree.basis_dot(up_vecs, g), np.float64)
    lam_up = lam[chosen]
    denom = (lam_up - np.sqrt(lam_up ** 2 + 4 * gi ** 2)) / 2
    tiny = np.finfo(np.float64).tiny
    up = -gi / np.where(denom < -tiny, denom, -tiny)
    tracking = extra > 0 and prev is not None
    for i in np.flatnonzero(lam_up > 0) if not tracking else ():
        # not yet negative: go where the mode softens (once tracked, keep climbing along it)
        up[i] = -np.abs(up[i]) * _softening(obj, x, jax.tree.map(lambda a: a[i], up_vecs))
    g_perp = tree.sub(g, tree.basis_combine(jnp.asarray(gi, obj.dtype), up_vecs))
    perp_norm = float(tree.norm(g_perp))
    down = tree.zeros_like(g)
    if k < H.dim and perp_norm > 0:
        sigma = -(lam_c - math.sqrt(lam_c ** 2 + 4 * perp_norm ** 2)) / 2
        sol = solve(H, tree.scale(-1.0, g_perp), method="minres", damping=sigma, tol=1e-6,
                    num_matvecs=minres_matvecs, verify=False)
        down = sol.x
        coeff = tree.basis_dot(up_vecs, down)
        down = tree.sub(down, tree.basis_combine(coeff, up_vecs))
    up_step = tree.basis_combine(jnp.asarray(up, obj.dtype), up_vecs)
    step = tree.add(up_step, down)
    norm = float(tree.norm(step))
    if norm > radius:
        step, up_step = tree.scale(radius / norm, step), tree.scale(radius / norm, up_step)
    return tree.add(x, step), H.num_matvecs, up_vecs, up_step


def _follow(obj, x, k, key, *, grad_tol, follow_steps, minres_matvecs, radius, track_extra=0):
    loss, g = _value_grad_at(obj, x)
    losses, norms, matvecs, modes = [float(loss)], [float(tree.norm(g))], 0, None
    extra, r = (track_extra if k else 0), radius
    for sub in jax.random.split(key, follow_steps):
        if norms[-1] <= _tol(obj, grad_tol, losses[-1]):
            break
        x, used, modes, up_step = _follow_step(obj, x, g, k, sub, radius=r,
                                               minres_matvecs=minres_matvecs, prev=modes,
                                               extra=extra)
        loss, g = _value_grad_at(obj, x)
        if extra:                  # overshot the maximum along the followed modes: shorter
            r = max(r / 2, 1e-3 * radius) if float(tree.vdot(g, up_step)) < 0 else \
                min(radius, 1.5 * r)
        losses.append(float(loss))
        norms.append(float(tree.norm(g)))
        matvecs += used
        if not math.isfinite(losses[-1]):
            raise ValueError(f"find_saddles: the loss became {losses[-1]} while following "
                             "eigenvectors; lower radius= (the largest step).")
    return x, losses, norms, len(losses) - 1, matvecs


def find_saddles(obj: Objective, starts: Sequence, *, key, target_index: int | None = None,
                 grad_tol: float | None = None, follow_steps: int = 50,
                 newton_steps: int = 30, minres_matvecs: int = 100, radius: float = 0.5,
                 gradient_flat_tol: float = 1e-2, classify_options: dict | None = None,
                 progress: bool = False, track_modes: int = 4) -> SaddleSearch:
    """Search for saddles of index ``target_index`` from every start, and classify each point.

    With ``target_index=k``: eigenvector following (see the module docstring; up to
    ``follow_steps`` steps, each at most ``radius`` long, each needing the ``k + 1``
    smallest Hessian eigenpairs), then up to ``newton_steps`` Newton-MR iterations to bring
    the gradient to ``grad_tol``. With ``target_index=None``: Newton-MR only, which finds
    the critical point nearest each start (perturb a known saddle to find its neighbours).

    Cost per following step: one ``ht.eigenvalues(k=k+1, which="smallest")`` (exact,
    ``dim`` products, for ``dim <= 256``; Lanczos otherwise) and up to ``minres_matvecs``
    products; Newton-MR as :func:`~hessian_tools.find_critical_points`; one
    :func:`~hessian_tools.classify` per start.

    Args:
      obj: the objective (its ``params`` only fix the structure).
      starts: a sequence of parameter pytrees shaped like ``obj.params``.
      key: a ``jax.random`` key (eigensolves and classifications).
      target_index: the number of negative eigenvalues sought (``0 <= k <= dim``), or
        ``None``.
      grad_tol: the gradient norm that counts as zero (default ``default_grad_tol``).
      follow_steps: eigenvector-following steps at most.
      newton_steps: Newton-MR iterations at most, afterwards.
      minres_matvecs: MINRES products per solve.
      radius: the largest following step (in parameter norm).
      gradient_flat_tol: see :func:`~hessian_tools.find_critical_points`.
      classify_options: keyword arguments for :func:`~hessian_tools.classify`. Unless
        they set ``tau`` or ``relative_tau``, ``relative_tau=sqrt(eps)`` (1.5e-8 in
        float64, 3.5e-4 in float32): an eigenvalue counts as negative when it lies below
        ``-max(sqrt(eps) max|lambda|, its error bar)``. This is the threshold below which
        the following treats a mode as null (a symmetry, eigenvalue ~ ``eps max|lambda|``),
        so the index reported is the one the following aimed at; weakly curved saddles
        (``|lambda| << 1% max|lambda|``) count with their true index. The threshold used is
        in each point's ``report.thresholds["tau"]`` and in ``options``.
      progress: print one line per start.
      track_modes: mode tracking (keyword-only). ``0``: follow the ``k`` lowest
        eigenvectors at every step (ordering by index: where a followed mode's eigenvalue
        crosses another's the search switches modes and can wander off). ``m > 0``:
        compute the ``k + 5 + m`` lowest eigenpairs and follow the ``k`` whose span
        overlaps most with the modes followed at the previous step (the first step takes
        the ``k`` lowest), as eigenvector-following codes do (Wales 2003, sec. 6.2.3);
        null modes (``|lambda| <= sqrt(eps) max |lambda|``: continuous symmetries such as
        the shift of a softmax's biases, along which a step changes nothing) are never
        followed, a tracked mode of positive curvature keeps climbing along its
        gradient component, and the step length adapts (halved, down to ``radius/1000``,
        when the gradient turns against the last uphill step, i.e. it overshot the
        maximum along the followed modes; else grown by 1.5 up to ``radius``). Cost:
        none extra on the dense path (``dim <= 256``); ``m + 4`` more Ritz pairs per step
        on the Lanczos path. Accuracy: the same
        eigensolver tolerance; a tracked mode is lost only when it leaves the computed
        ones, or at an avoided crossing where the eigenvectors rotate within one step.

    Returns:
      A :class:`~hessian_tools.results.points.SaddleSearch` of
      :class:`~hessian_tools.results.points.FoundSaddle` (``.reached``: the critical points
      with the target index; ``ht.plot_index_vs_loss(search)`` draws loss against index).

    Raises:
      ValueError: no key, empty or misshapen starts (the leaf is named), a target index
        outside ``[0, dim]``, or a bad budget.
    """
    _check_starts(obj, starts, key)
    if target_index is not None:
        check_count("target_index", target_index, minimum=0, maximum=obj.num_params,
                    hint="the number of negative Hessian eigenvalues sought")
    check_count("follow_steps", follow_steps, minimum=0)
    check_count("newton_steps", newton_steps, minimum=0)
    check_count("minres_matvecs", minres_matvecs)
    check_positive("radius", radius)
    check_count("track_modes", track_modes, minimum=0)
    begin, found = time.perf_counter(), []
    options = dict(classify_options or {})
    if grad_tol is not None:
        options["grad_tol"] = grad_tol
    if options.get("tau") is None and options.get("relative_tau") is None:
        options["relative_tau"] = math.sqrt(float(jnp.finfo(obj.dtype).eps))
    for i, (x0, sub) in enumerate(zip(starts, jax.random.split(key, len(starts)))):
        k_follow, k_class = jax.random.split(sub)
        x = _cast(obj, x0, f"starts[{i}]")
        losses, norms, steps, matvecs, method = [], [], 0, 0, "newton-mr"
        if target_index is not None and follow_steps:
            x, losses, norms, steps, matvecs = _follow(
                obj, x, target_index, k_follow, grad_tol=grad_tol, follow_steps=follow_steps,
                minres_matvecs=minres_matvecs, radius=radius, track_extra=track_modes)
            method = "eigenvector-following"
        if newton_steps:
            x, more, iters, used = _newton_mr(obj, x, grad_tol=grad_tol,
                                              newton_steps=newton_steps,
                                              minres_matvecs=minres_matvecs, patience=10,
                                              flat_tol=1e-2 * gradient_flat_tol)
            norms, steps, matvecs = norms + more[1 if norms else 0:], steps + iters, matvecs + used
        rep, status, flatness = classify_found(obj, x, k_class, options, gradient_flat_tol)
        found.append(FoundSaddle(
            status=status, loss=rep.loss, grad_norm=rep.grad_norm, index=rep.index,
            index_fraction=rep.index_fraction, verdict=rep.verdict, flatness=flatness,
            start=i, newton_steps=steps, grad_norms=tuple(norms), report=rep, params=x,
            target_index=target_index, method=method, losses=tuple(losses + [rep.loss]),
            num_matvecs=matvecs + rep.num_matvecs + 1, seed=tree.key_bits(sub)))
        if progress:
            p = found[-1]
            print(f"start {i}: {p.status}, index {p.index} (target {target_index}), loss "
                  f"{p.loss:.5g}, |grad| {p.grad_norm:.2e}, {p.num_matvecs} HVPs", flush=True)
    settings = dict(target_index=target_index, grad_tol=grad_tol, follow_steps=follow_steps,
                    newton_steps=newton_steps, minres_matvecs=minres_matvecs, radius=radius,
                    gradient_flat_tol=gradient_flat_tol, classify_options=options,
                    track_modes=track_modes)
    return SaddleSearch(points=tuple(found), options=settings,
                        num_matvecs=sum(p.num_matvecs for p in found),
                        wall_time=time.perf_counter() - begin, seed=tree.key_bits(key))
