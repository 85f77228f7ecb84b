"""Gradient flow, ``d theta / dt = -grad L(theta)``, integrated by Runge-Kutta: the
continuous-time baseline of edge-of-stability studies (Cohen et al. 2021 compare gradient
descent with it: the flow follows the sharpness up, gradient descent stops at ``2 / eta``).

Two integrators, each step one compiled call over the whole dataset:

* ``"dopri5"`` (``dt=None``): Dormand & Prince's embedded 5(4) pair with the standard
  error control (Hairer, Norsett & Wanner, *Solving ODEs I*, II.4), first-same-as-last, so
  six gradients per accepted step. An explicit method is stable for ``dt lambda_max``
  below about 3.3 (``lambda_max``: the sharpness); the error control keeps the steps
  there on its own, so a sharp region costs many small steps.
* ``"rk4"`` (``dt`` given): the classical fourth-order method with a fixed step, four
  gradients per step. Stable for ``dt lambda_max < 2.79``; error ``O(dt^4)``.
* ``"rk4"`` with ``alpha``: the step control of Cohen et al.'s code, ``dt = alpha /
  lambda_max`` with ``lambda_max`` measured at every output time (capped by ``dt``).

The steps land exactly on every requested output time.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools._checks import check_count, check_key, check_positive, check_tol
from hessian_tools._chunking import product_groups
from hessian_tools.data import dataset_mean
from hessian_tools.objective import Objective
from hessian_tools.operators import value_and_grad
from hessian_tools.results import Status
from hessian_tools.results.dynamics import GradientFlow
from hessian_tools.training.measure import sharpness as measure_sharpness

__all__ = ["gradient_flow", "DOPRI5", "RK4"]

DOPRI5 = {
    "a": ((1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
          (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
          (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656)),
    "b": (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    # b - b_hat, with the FSAL stage k7 = f(y_new) last
    "e": (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40),
}
"""Dormand & Prince (1980): the stages' coefficients ``a``, the fifth-order weights ``b`` and
the error weights ``e`` (fifth minus fourth order)."""

RK4 = {"a": ((1 / 2,), (0.0, 1 / 2), (0.0, 0.0, 1.0)), "b": (1 / 6, 1 / 3, 1 / 3, 1 / 6)}


def _velocity(loss, groups, params):
    """``-grad L``: the dataset-mean gradient, negated."""
    grad = dataset_mean(lambda b: jax.grad(loss)(params, b), groups)
    return tree.scale(-1.0, grad)


def _combine(y, h, coeffs, stages):
    out = y
    for c, k in zip(coeffs, stages):
        if c != 0.0:
            out = tree.axpy(h * c, k, out)
    return out


def _stages(loss, groups, y, k1, h, table):
    ks = [k1]
    for row in table["a"]:
        ks.append(_velocity(loss, groups, _combine(y, h, row, ks)))
    return ks


@jax.jit
def _dopri5_step(loss, groups, y, k1, h, rtol, atol):
    """One Dormand-Prince step: ``(y_new, f(y_new), scaled error norm)``."""
    ks = _stages(loss, groups, y, k1, h, DOPRI5)
    y_new = _combine(y, h, DOPRI5["b"], ks)
    k7 = _velocity(loss, groups, y_new)
    err = _combine(tree.zeros_like(y), h, DOPRI5["e"], ks + [k7])
    ratio = jax.tree.map(lambda e, a, b: e / (atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))),
                         err, y, y_new)
    return y_new, k7, jnp.sqrt(tree.vdot(ratio, ratio) / tree.size(y))


@jax.jit
def _rk4_step(loss, groups, y, h):
    ks = _stages(loss, groups, y, _velocity(loss, groups, y), h, RK4)
    return _combine(y, h, RK4["b"], ks)


_velocity_jit = jax.jit(_velocity)


def _check_times(t_max, times, num_points) -> np.ndarray:
    check_positive("t_max", t_max)
    if times is None:
        check_count("num_points", num_points, minimum=2)
        return np.linspace(0.0, float(t_max), num_points)
    times = np.asarray(times, np.float64).reshape(-1)
    if times.size == 0 or not np.all(np.isfinite(times)) or times[0] < 0 or \
            times[-1] > t_max or np.any(np.diff(times) <= 0):
        raise ValueError(f"times must be strictly increasing numbers in [0, t_max={t_max}]; "
                         f"got {times.tolist()[:6]}{' ...' if times.size > 6 else ''}.")
    return times


class _Integrator:
    """Advances ``y`` to each output time; counts steps, rejections and gradients."""

    def __init__(self, obj, dt, rtol, atol):
        self.loss, self.groups = obj.loss, product_groups(obj, "auto")
        self.dt, self.rtol, self.atol = dt, rtol, atol
        self.num_steps = self.num_rejected = self.num_grads = 0
        self.accepted: list = []
        self.h = None                       # dopri5's proposed next step
        self.k1 = None

    def advance(self, y, t, t_end, budget):
        while t < t_end * (1 - 1e-15) and self.num_steps + self.num_rejected < budget:
            y, t = self._rk4(y, t, t_end) if self.dt is not None else self._dopri5(y, t, t_end)
        return y, t

    def _rk4(self, y, t, t_end):
        h = min(self.dt, t_end - t)
        y = _rk4_step(self.loss, self.groups, y, h)
        self.num_steps, self.num_grads = self.num_steps + 1, self.num_grads + 4
        self.accepted.append(h)
        return y, t + h

    def _dopri5(self, y, t, t_end):
        if self.k1 is None:
            self.k1, self.num_grads = _velocity_jit(self.loss, self.groups, y), 1
            self.h = self._first_step(y, t_end - t)
        h = min(self.h, t_end - t)
        y_new, k7, err = _dopri5_step(self.loss, self.groups, y, self.k1, h, self.rtol,
                                      self.atol)
        self.num_grads += 6
        err = float(err)
        factor = 5.0 if err == 0 else 0.9 * err ** -0.2 if math.isfinite(err) else 0.1
        if math.isfinite(err) and err <= 1.0:
            self.num_steps += 1
            self.accepted.append(h)
            proposal = h * min(5.0, factor)
            # a step cut short to land on an output time keeps the earlier proposal
            self.h = max(proposal, self.h) if h < self.h else proposal
            self.k1 = k7
            return y_new, t + h
        self.num_rejected += 1
        self.h = h * max(0.1, min(0.9, factor))
        return y, t

    def _first_step(self, y, span):
        """Hairer's starting step: ``0.01 ||y|| / ||f(y)||`` in the error norm's scale."""
        scale = jax.tree.map(lambda a: self.atol + self.rtol * jnp.abs(a), y)
        d0 = float(tree.norm(jax.tree.map(jnp.divide, y, scale)))
        d1 = float(tree.norm(jax.tree.map(jnp.divide, self.k1, scale)))
        h = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-6
        return min(h, span)


def gradient_flow(obj: Objective, *, t_max: float, times=None, num_points: int = 101,
                  dt: float | None = None, rtol: float = 1e-6, atol: float = 1e-9,
                  alpha: float | None = None, max_steps: int = 100_000,
                  sharpness: bool = False, key=None,
                  sharpness_tol: float = 1e-3) -> GradientFlow:
    """Integrate gradient flow ``d theta / dt = -grad L(theta)`` from ``obj.params``.

    The loss is the objective's dataset mean (every gradient is over all of its data, as
    in full-batch gradient descent, whose small-step limit this is). The trajectory is
    returned at ``times`` (default ``num_points`` evenly spaced in ``[0, t_max]``), with
    the loss and gradient norm there and, with ``sharpness=True``, ``lambda_max`` of the
    Hessian (``ht.sharpness``, warm-started from the previous time), the quantity Cohen et
    al. (2021) follow along the flow.

    Accuracy: ``"dopri5"`` keeps the local error of every step below ``atol + rtol
    |theta|`` (per parameter, root mean square), so the global error grows at most about
    linearly in the number of steps; ``"rk4"`` has global error ``O(dt^4)``. Tested against
    ``theta(t) = exp(-A t) theta_0`` for quadratics (relative error below ``1e-8`` at
    ``rtol=1e-10``) and the closed-form flow of ``theta^4 / 4``.

    Cost: six gradients per accepted ``dopri5`` step (and per rejected one), four per
    ``rk4`` step; one loss-and-gradient per output time; with ``sharpness`` a warm-started
    Lanczos solve per output time (a few HVPs). The number of steps grows with ``t_max
    lambda_max`` (explicit methods are limited to ``dt`` of about ``3 / lambda_max``).
    Memory: eight parameter-sized vectors, plus the parameters at each output time.

    Args:
      obj: the objective; its parameters are the starting point.
      t_max: the final time (``> 0``).
      times: strictly increasing output times in ``[0, t_max]``.
      num_points: the number of evenly spaced output times when ``times`` is not given.
      dt: a fixed step (``rk4``); ``None`` for the adaptive ``dopri5``. With ``alpha``, the
        largest step (``None``: no cap).
      alpha: Cohen et al.'s step control: ``rk4`` with the step ``alpha / lambda_max``,
        ``lambda_max`` re-measured at every output time (so ``sharpness`` is on, and a key
        is needed); their code uses ``alpha`` well below RK4's stability limit of 2.79
        (e.g. 0.5) and caps the step (``dt``). A segment where ``lambda_max <= 0`` takes
        the cap (or goes to the next output time in one step without one).
      rtol: relative error tolerance (``dopri5``), in ``(0, 1)`` and not below the
        parameters' rounding unit (``1.2e-7`` in float32).
      atol: absolute error tolerance (``dopri5``), ``> 0``.
      max_steps: the budget of (accepted and rejected) steps.
      sharpness: measure ``lambda_max`` at every output time.
      key: a ``jax.random`` key (needed with ``sharpness``).
      sharpness_tol: the relative residual tolerance of each sharpness.

    Returns:
      A :class:`~hessian_tools.results.dynamics.GradientFlow`.

    Raises:
      TypeError: not an Objective.
      ValueError: bad times, ``dt``, ``alpha``, tolerances or budget; ``sharpness`` or
        ``alpha`` without a key; streamed data.

    Examples:
      >>> import jax.numpy as jnp, numpy as np, hessian_tools as ht
      >>> obj = ht.Objective(lambda p, b: 0.5 * jnp.sum(p**2), jnp.ones(2), jnp.zeros((1, 1)))
      >>> flow = gradient_flow(obj, t_max=1.0, num_points=2, rtol=1e-6, atol=1e-9)
      >>> bool(np.allclose(flow.params[-1], np.exp(-1.0), rtol=1e-5))   # theta' = -theta
      True
    """
    if not isinstance(obj, Objective):
        raise TypeError(f"gradient_flow takes an Objective, got {type(obj).__name__}.")
    if obj.streaming:
        raise ValueError("gradient_flow integrates the full-data gradient in compiled steps; "
                         "this objective streams its data. Pass it as a batch or a list.")
    times = _check_times(t_max, times, num_points)
    if dt is not None:
        check_positive("dt", dt)
    check_tol("rtol", rtol)
    eps = max(float(jnp.finfo(a.dtype).eps) for a in jax.tree.leaves(obj.params))
    if dt is None and alpha is None and rtol < eps:
        raise ValueError(f"rtol={rtol} is below the parameters' rounding unit {eps:.3g}: no "
                         "step can meet it. Loosen rtol, or integrate in float64 "
                         "(jax_enable_x64 and obj.astype(jnp.float64)).")
    check_positive("atol", atol)
    check_count("max_steps", max_steps)
    if sharpness:
        check_key(key, "gradient_flow(sharpness=True)")
    if alpha is not None:
        check_positive("alpha", alpha)
        sharpness = True
    if sharpness:
        check_key(key, "gradient_flow(sharpness=True)" if alpha is None else
                  "gradient_flow(alpha=...)")
    start = time.perf_counter()
    fixed = dt is not None or alpha is not None
    run = _Integrator(obj, dt, float(rtol), float(atol))
    record = _Recorder(obj, key if sharpness else None, sharpness_tol)
    y, t, reached = obj.params, 0.0, []
    if alpha is not None and times[0] > 0:          # Cohen et al.'s step needs lambda_max now
        record.sharpness(y, len(times))
    for i, t_out in enumerate(times):
        if alpha is not None:                       # RK4 at alpha / lambda_max (dt the cap)
            top = record.previous.value if record.previous is not None else 0.0
            run.dt = min(alpha / top if top > 0 else math.inf,
                         math.inf if dt is None else float(dt))
        y, t = run.advance(y, t, float(t_out), max_steps)
        if t < t_out * (1 - 1e-12):
            break
        reached.append(y)
        record(y, i)
    return GradientFlow(
        times=times[:len(reached)], params=tuple(reached), method="rk4" if fixed else "dopri5",
        rtol=None if fixed else float(rtol), atol=None if fixed else float(atol),
        dt=None if dt is None else float(dt), alpha=None if alpha is None else float(alpha),
        num_steps=run.num_steps, num_rejected=run.num_rejected,
        num_gradient_evals=run.num_grads, dt_min=min(run.accepted, default=math.nan),
        dt_max=max(run.accepted, default=math.nan),
        status=Status.converged if len(reached) == len(times) else Status.budget,
        seed=[] if key is None else tree.key_bits(key), operator="hessian" if sharpness else "",
        wall_time=time.perf_counter() - start, **record.fields())


class _Recorder:
    """Loss, gradient norm and (with a key) the warm-started sharpness at each point."""

    def __init__(self, obj, key, tol):
        self.obj, self.key, self.tol = obj, key, tol
        self.losses, self.norms, self.tops, self.residuals = [], [], [], []
        self.num_matvecs, self.previous = 0, None

    def sharpness(self, params, i):
        self.previous = measure_sharpness(self.obj.with_params(params),
                                          key=jax.random.fold_in(self.key, i),
                                          v0=self.previous, tol=self.tol)
        self.num_matvecs += self.previous.num_matvecs
        return self.previous

    def __call__(self, params, i):
        value, grad = value_and_grad(self.obj.with_params(params))
        self.losses.append(float(value))
        self.norms.append(float(tree.norm(grad)))
        if self.key is not None:
            top = self.sharpness(params, i)
            self.tops.append(top.value)
            self.residuals.append(float(top.residuals[0]))

    def fields(self) -> dict:
        on = self.key is not None
        return {"loss": np.asarray(self.losses), "grad_norm": np.asarray(self.norms),
                "sharpness": np.asarray(self.tops) if on else None,
                "sharpness_residuals": np.asarray(self.residuals) if on else None,
                "num_matvecs": self.num_matvecs}
