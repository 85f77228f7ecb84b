"""Keskar et al.'s epsilon-sharpness: the largest relative rise of the loss in a small box
around the point, in the full parameter space or a random subspace.

    phi(x, eps, A) = 100 (max_{y in C_eps} L(x + A y) - L(x)) / (1 + L(x)),
    C_eps = {y in R^p : |y_i| <= eps (|(A^+ x)_i| + 1)}

(Keskar, Mudigere, Nocedal, Smelyanskiy & Tang, *On large-batch training for deep learning:
generalization gap and sharp minima*, ICLR 2017, eq. 3), with ``A = I`` for the full space.
The box problem is solved by projected gradient ascent with Barzilai-Borwein steps and a
backtracking line search (a spectral projected gradient method, Birgin, Martinez & Raydan
2000), or by L-BFGS-B through SciPy, Keskar et al.'s own solver. Both work on flat float64
vectors on the host; every evaluation is one loss-and-gradient pass over the data.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from hessian_tools import tree
from hessian_tools._checks import (check_choice, check_count, check_finite_loss, check_key,
                                   check_positive, check_tol)
from hessian_tools._host import FlatLayout
from hessian_tools.objective import Objective
from hessian_tools.operators import value_and_grad
from hessian_tools.results import Status
from hessian_tools.results.curvature import EpsilonSharpness

__all__ = ["epsilon_sharpness", "random_subspace", "METHODS", "DEFAULT_SUBSPACE_DIM"]

METHODS = ("projected_gradient", "l-bfgs-b")
DEFAULT_SUBSPACE_DIM = 100


def random_subspace(key, dim: int, p: int) -> np.ndarray:
    """``A^T``: ``p`` random directions in ``R^dim`` as the rows of a ``(p, dim)`` float64
    array, Gaussian with unit norm (the columns of ``A = I`` have unit norm too), drawn by
    NumPy from the key's bits."""
    rows = np.random.default_rng(tree.key_bits(key)).standard_normal((p, dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class _BoxProblem:
    """``y -> (L(x + A y), A^T grad L)`` in float64, counting evaluations and the best."""

    def __init__(self, obj: Objective, rows: np.ndarray | None):
        self.obj, self.layout, self.rows = obj, FlatLayout(obj.params), rows
        self.x = self.layout.flat(obj.params).astype(np.float64)
        self.num_evaluations, self.best = 0, (-math.inf, None)

    def perturbation(self, y) -> np.ndarray:
        return y if self.rows is None else self.rows.T @ y

    def __call__(self, y):
        point = self.layout.tree((self.x + self.perturbation(y)).astype(self.layout.dtype))
        loss, grad = value_and_grad(self.obj.with_params(point))
        self.num_evaluations += 1
        loss = check_finite_loss(loss, "inside the epsilon box")
        grad = self.layout.flat(grad).astype(np.float64)
        if loss > self.best[0]:
            self.best = (loss, np.array(y))
        return loss, grad if self.rows is None else self.rows @ grad

    def bounds(self, epsilon: float) -> np.ndarray:
        if self.rows is None:
            return epsilon * (np.abs(self.x) + 1.0)
        coords = np.linalg.lstsq(self.rows.T, self.x, rcond=None)[0]      # A^+ x
        return epsilon * (np.abs(coords) + 1.0)


def _stationarity(y, g, b) -> float:
    """``||P(y + s g) - y|| / ||b||`` for a step ``s`` of one box size along ``g``: zero
    exactly at a stationary point of the box problem (KKT)."""
    gn = np.linalg.norm(g)
    if not gn > 0:
        return 0.0
    step = np.linalg.norm(b) / gn
    return float(np.linalg.norm(np.clip(y + step * g, -b, b) - y) / np.linalg.norm(b))


def _projected_gradient(f, y, b, steps, tol, history) -> str:
    """Spectral projected gradient ascent from ``y``; returns why it stopped: ``"stationary"``,
    ``"no ascent"`` (backtracking to 1/128 of the step found no rise: the loss's rounding)
    or ``"steps"``."""
    fy, g = f(y)
    scale = np.linalg.norm(b) / max(np.linalg.norm(g), 1e-300)
    alpha = scale
    for _ in range(steps):
        if _stationarity(y, g, b) <= tol:
            return "stationary"
        d = np.clip(y + alpha * g, -b, b) - y
        t, slope = 1.0, float(g @ d)
        while True:                                     # Armijo backtracking on [y, y + d]
            f_new, g_new = f(y + t * d)
            if f_new >= fy + 1e-4 * t * slope or t < 1e-2:
                break
            t *= 0.5
        history.append(f.best[0])
        if f_new < fy:                                  # no ascent left along d
            return "no ascent"
        s, r = t * d, g_new - g
        curvature = -float(s @ r)                       # s^T (-Hessian) s along the step
        alpha = float(s @ s) / curvature if curvature > 0 else 1e6 * scale
        alpha = min(max(alpha, 1e-10 * scale), 1e6 * scale)
        y, fy, g = y + s, f_new, g_new
    return "stationary" if _stationarity(y, g, b) <= tol else "steps"


def _lbfgsb(f, y, b, steps, tol, history) -> str:
    """SciPy's L-BFGS-B on ``-L``; returns why it stopped (as :func:`_projected_gradient`)."""
    def negated(z):
        value, grad = f(z)
        return -value, -grad
    import scipy.optimize                   # here: its import costs ~0.6 s, paid by its users only
    out = scipy.optimize.minimize(negated, y, jac=True, method="L-BFGS-B",
                                  bounds=np.stack([-b, b], axis=1),
                                  callback=lambda _: history.append(f.best[0]),
                                  options={"maxiter": steps, "ftol": tol * tol, "gtol": 0.0})
    return {0: "stationary", 1: "steps"}.get(int(out.status), "no ascent")


def _subspace_rows(subspace, key, obj: Objective, layout: FlatLayout):
    """``A^T`` as a ``(p, dim)`` float64 array (``None`` for the full space), validated."""
    dim = layout.dim
    if subspace is None:
        return None
    if isinstance(subspace, str):
        check_choice("subspace", subspace, ("random",))
        return random_subspace(key, dim, min(DEFAULT_SUBSPACE_DIM, dim))
    if isinstance(subspace, (int, np.integer)):
        check_count("subspace", subspace, maximum=dim, hint="the number of parameters")
        return random_subspace(key, dim, int(subspace))
    leads = {np.shape(a)[0] if np.ndim(a) else None for a in jax.tree.leaves(subspace)}
    if len(leads) != 1 or None in leads:
        raise ValueError("subspace must be None, 'random', an int p, or a stacked pytree of p "
                         "rows shaped like the parameters (every leaf with the same leading "
                         f"axis p); got leading sizes {sorted(leads, key=str)}.")
    tree.check_same_structure(obj.params, jax.tree.map(lambda a: np.asarray(a)[0], subspace),
                              what="The rows of the subspace basis")
    return layout.flat(subspace, leads.pop()).astype(np.float64)


def epsilon_sharpness(obj: Objective, *, key, epsilon: float = 1e-3, subspace=None,
                      steps: int = 20, num_starts: int = 3,
                      method: str = "projected_gradient", tol: float = 1e-6) -> EpsilonSharpness:
    """Keskar et al.'s (2017) epsilon-sharpness of the loss at the objective's point.

    ``100 (max_{y in C_eps} L(x + A y) - L(x)) / (1 + L(x))`` with the box ``|y_i| <= eps
    (|(A^+ x)_i| + 1)``: in the full space (``A = I``, a box of ``eps (|x_i| + 1)`` around
    every parameter) or a random ``p``-dimensional subspace (``A``: ``p`` Gaussian
    directions of unit norm, :func:`random_subspace`; or your own basis). The maximum is
    sought from ``num_starts`` points (the point itself, ``y = 0``, then uniform draws in the
    box) by ``method``:

    * ``"projected_gradient"``: ascent along the projected gradient with Barzilai-Borwein
      steps and Armijo backtracking (spectral projected gradient). Where the loss is convex
      in the box the steps jump to a vertex, where the maximum of a convex function lies.
    * ``"l-bfgs-b"``: SciPy's L-BFGS-B (Keskar et al.'s solver), ``steps`` iterations.

    Accuracy: a lower bound on the true maximum (every value is attained at a point in the
    box); each start ends at a stationary point of the box problem or after ``steps``
    iterations, and a non-concave loss can have several local maxima, which is what the
    extra starts are for. Each start stops at a stationary point (projected-gradient
    measure below ``tol``), where no rise is left at the loss's rounding, or after
    ``steps`` iterations (``stops``); ``status`` is ``budget`` when any start ran out of
    steps, else ``converged``.

    Cost: per start, one loss-and-gradient evaluation per iteration plus its backtracking
    (typically 1-2 per iteration): about ``num_starts x steps x 1.5`` passes over the data.
    Memory: a few flat float64 copies of the parameters on the host, plus ``p x dim``
    values for a subspace.

    Args:
      obj: the objective at the point ``x``.
      key: a ``jax.random`` key (the random starts and the random subspace).
      epsilon: the box's relative size (``> 0``; Keskar et al. report ``1e-3`` and ``5e-4``).
      subspace: ``None`` (the full space), ``"random"`` (``p = 100`` or the dimension if
        smaller), an int ``p``, or a stacked pytree of ``p`` rows shaped like the
        parameters (the columns of ``A``).
      steps: iterations per start.
      num_starts: starting points (the first is ``y = 0``).
      method: ``"projected_gradient"`` or ``"l-bfgs-b"``.
      tol: the stationarity tolerance (relative to the box size).

    Returns:
      An :class:`~hessian_tools.results.curvature.EpsilonSharpness` (``value`` in percent,
      ``loss``, ``max_loss``, ``perturbation`` ``A y``, ``history``, ``num_evaluations``).

    Raises:
      TypeError: not an Objective.
      ValueError: no key, bad ``epsilon``, ``subspace``, ``steps``, ``num_starts``,
        ``method`` or ``tol``; a basis not shaped like the parameters; a non-finite loss;
        ``1 + L(x) <= 0`` (the formula divides by it).

    Examples:
      >>> import jax, jax.numpy as jnp, hessian_tools as ht
      >>> a = jnp.diag(jnp.array([2.0, 1.0, -1.0]))
      >>> obj = ht.Objective(lambda p, b: 0.5 * p @ a @ p, jnp.zeros(3), jnp.zeros((1, 1)))
      >>> out = epsilon_sharpness(obj, epsilon=0.1, key=jax.random.key(0))
      >>> round(out.value, 6)         # 100 * (2 + 1) * 0.1**2 / 2: two vertices, one zero
      1.5
    """
    if not isinstance(obj, Objective):
        raise TypeError(f"epsilon_sharpness takes an Objective, got {type(obj).__name__}.")
    check_key(key, "epsilon_sharpness")
    check_positive("epsilon", epsilon)
    check_count("steps", steps)
    check_count("num_starts", num_starts)
    check_choice("method", method, METHODS)
    check_tol("tol", tol)
    start_time = time.perf_counter()
    k_sub, k_start = jax.random.split(key)
    layout = FlatLayout(obj.params)
    rows = _subspace_rows(subspace, k_sub, obj, layout)
    problem = _BoxProblem(obj, rows)
    b = problem.bounds(float(epsilon))
    loss0 = problem(np.zeros_like(b))[0]
    if not 1.0 + loss0 > 0:
        raise ValueError(f"L(x) = {loss0:.4g}: epsilon-sharpness divides by 1 + L(x), which must "
                         "be positive (a loss bounded below by 0, as Keskar et al. assume).")
    rng = np.random.default_rng(tree.key_bits(k_start))
    solve = _projected_gradient if method == "projected_gradient" else _lbfgsb
    history, stops = [], []
    for i in range(num_starts):
        y0 = np.zeros_like(b) if i == 0 else rng.uniform(-b, b)
        stops.append(solve(problem, y0, b, steps, tol, history))
    max_loss, y_best = problem.best
    return EpsilonSharpness(
        value=100.0 * (max_loss - loss0) / (1.0 + loss0), loss=loss0, max_loss=max_loss,
        epsilon=float(epsilon), subspace_dim=None if rows is None else int(rows.shape[0]),
        method=method, num_evaluations=problem.num_evaluations, num_steps=len(history),
        num_starts=num_starts, stops=tuple(stops),
        status=Status.budget if "steps" in stops else Status.converged,
        history=np.asarray(history, np.float64),
        perturbation=layout.tree(problem.perturbation(y_best).astype(layout.dtype)),
        seed=tree.key_bits(key), wall_time=time.perf_counter() - start_time)
