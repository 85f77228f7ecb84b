"""Sharpness during training: a cheap tracker for any optax loop, and comparing optimizers.

*Sharpness* is the largest eigenvalue ``lambda_max(H)`` of the loss Hessian. Gradient descent
with step size ``eta`` is unstable along any direction whose curvature exceeds ``2 / eta``
(heavy-ball momentum ``beta``: ``(2 + 2 beta) / eta``); full-batch training drives the
sharpness up to that threshold and then hovers there, the *edge of stability* (Cohen et al.
2021). For adaptive optimizers the relevant quantity is the *preconditioned sharpness*
``lambda_max(P^{-1/2} H P^{-1/2})`` with ``P`` the optimizer's diagonal preconditioner, and
for Adam the threshold is ``(2 + 2 beta_1) / ((1 - beta_1) eta)``, 38/eta for beta_1 = 0.9
(Cohen et al. 2022).

Pieces, inner to outer:

* :func:`sharpness`: a pure function, one measurement (warm-startable Lanczos).
* :func:`stability_threshold`, :func:`optimizer_info`, :func:`adaptive_preconditioner`: the
  thresholds, the hyperparameters of an optax optimizer, and ``P`` read from its state.
* :func:`sharpness_monitor`: an optax ``GradientTransformation`` that measures inside the
  compiled train step and stores the value in its state (like ``optax.snapshot``).
* :class:`SharpnessTracker`: measures every few steps from the Python training loop, warm
  started, writing a crash-safe JSON-lines log (:func:`read_sharpness_log`).
* :func:`compare_optimizers`: one model, one initialisation, one data order, several
  optimizers; :func:`plot_sharpness` and :func:`plot_comparison` draw the results.

Warm start: each measurement starts Lanczos from the previous measurement's top Ritz vectors
(plus two runners-up). Parameters move little between measurements, so the start vector is
nearly an eigenvector and a measurement costs a handful of Hessian-vector products instead
of the 20-60 of a cold start. All compiled pieces take the parameters as arguments: they are
compiled on the first measurement and reused, never re-traced.

References: Cohen, Kaur, Li, Kolter & Talwalkar 2021 (edge of stability); Cohen et al. 2022
(adaptive gradient methods at the edge of stability); Gur-Ari, Roberts & Dyer 2018 (gradient
descent happens in a tiny subspace); Hutchinson 1989 (trace); Keskar et al. 2017 (large
batches and sharp minima).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hessian_tools import tree
from hessian_tools.linalg import WarmEigsResult, lanczos_tridiag, ritz_pairs, warm_eigs
from hessian_tools._callables import as_pytree_fn
from hessian_tools.data import group_batches
from hessian_tools.objective import Objective
from hessian_tools.operators import CurvatureOperator, _mean_grad, hessian, value_and_grad

__all__ = [
    "QUANTITIES", "OptimizerComparison", "OptimizerInfo", "OptimizerRun", "SharpnessLog",
    "SharpnessMonitorState", "SharpnessResult", "SharpnessTracker", "adaptive_preconditioner",
    "compare_optimizers", "measurement_subset", "optimizer_info",
    "plot_comparison", "plot_sharpness", "read_sharpness_log", "sharpness", "sharpness_monitor",
    "stability_threshold",
]

#: The quantities a :class:`SharpnessTracker` can measure (``lambda_max`` always is).
QUANTITIES = ("lambda_max", "top_k", "lambda_min", "trace", "grad_overlap", "loss",
              "precond_lambda_max")

_LOG_VERSION = 1


# =========================================================================================
# Stability thresholds
# =========================================================================================

_THRESHOLD_KINDS = ("gd", "heavy_ball", "nesterov", "ema")


def stability_threshold(learning_rate: float, *, momentum: float = 0.0,
                        kind: str = "heavy_ball") -> float:
    """The largest curvature at which a quadratic stays stable under a first-order method.

    For the quadratic ``a x^2 / 2`` each method is a linear recursion in ``x``; it diverges
    once ``a`` exceeds this threshold (Cohen et al. 2021, appendix; 2022, section 3):

    * ``"gd"`` (or any kind with ``momentum=0``): ``2 / eta``.
    * ``"heavy_ball"``: ``v <- g + beta v``, ``x <- x - eta v`` (``optax.sgd(eta, beta)``):
      ``(2 + 2 beta) / eta``.
    * ``"nesterov"``: ``optax.sgd(eta, beta, nesterov=True)``:
      ``(2 + 2 beta) / ((1 + 2 beta) eta)``.
    * ``"ema"``: ``m <- beta m + (1 - beta) g``, ``x <- x - eta m`` (Adam's first moment;
      apply it to the *preconditioned* sharpness): ``(2 + 2 beta) / ((1 - beta) eta)``,
      which is ``38 / eta`` for ``beta = 0.9``.

    Args:
      learning_rate: ``eta > 0``.
      momentum: ``beta`` in ``[0, 1)``.
      kind: one of ``"gd"``, ``"heavy_ball"``, ``"nesterov"``, ``"ema"``.

    Returns:
      The threshold as a Python float.

    Raises:
      ValueError: a non-positive learning rate, a momentum outside ``[0, 1)`` or an unknown
        kind.

    Example:
      >>> stability_threshold(0.1)
      20.0
      >>> round(stability_threshold(1e-3, momentum=0.9, kind="ema"), 6)
      38000.0
    """
    if kind not in _THRESHOLD_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {_THRESHOLD_KINDS}.")
    eta, beta = float(learning_rate), float(momentum)
    if not eta > 0 or not math.isfinite(eta):
        raise ValueError(f"learning_rate={learning_rate!r} must be a positive number.")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"momentum={momentum!r} must lie in [0, 1).")
    if kind == "gd" or beta == 0.0:
        return 2.0 / eta
    if kind == "heavy_ball":
        return (2.0 + 2.0 * beta) / eta
    if kind == "nesterov":
        return (2.0 + 2.0 * beta) / ((1.0 + 2.0 * beta) * eta)
    return (2.0 + 2.0 * beta) / ((1.0 - beta) * eta)


# =========================================================================================
# Optimizers: what they are, and their preconditioner
# =========================================================================================

_ADAM_STATES = ("ScaleByAdamState", "ScaleByAmsgradState")
_RMS_STATES = ("ScaleByRmsState", "ScaleByRmsWithCountState")
_STDDEV_STATES = ("ScaleByRStdDevState", "ScaleByRStdDevWithCountState")
_RSS_STATES = ("ScaleByRssState",)
_INJECT_STATES = ("InjectHyperparamsState", "InjectStatefulHyperparamsState")
_DEFAULT_EPS = {"adam": 1e-8, "rmsprop": 1e-8, "adagrad": 1e-7}


def _is_namedtuple(x) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _find_states(state, names) -> list:
    """Every optax sub-state (a NamedTuple) whose class name is in ``names``, depth first."""
    found = []
    if _is_namedtuple(state):
        if type(state).__name__ in names:
            found.append(state)
        children = list(state)
    elif isinstance(state, (tuple, list)):
        children = list(state)
    elif isinstance(state, Mapping):
        children = list(state.values())
    else:
        children = []
    for child in children:
        found += _find_states(child, names)
    return found


def _injected_hyperparams(state) -> dict:
    """Scalar hyperparameters recorded by ``optax.inject_hyperparams`` (floats)."""
    out = {}
    for s in _find_states(state, _INJECT_STATES):
        for name, value in s.hyperparams.items():
            try:
                out.setdefault(name, float(value))
            except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
                continue
    return out


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
    """What an optax optimizer does, as far as stability thresholds are concerned.

    Attributes:
      kind: ``"sgd"``, ``"momentum"`` (heavy ball), ``"nesterov"``, ``"adam"`` (adam, adamw,
        amsgrad, nadam), ``"rmsprop"``, ``"adagrad"`` or ``"unknown"``.
      learning_rate: ``eta`` (the first step's, for a schedule), or ``None`` if unknown.
      momentum: heavy-ball / Nesterov ``beta``, or Adam's ``b1``.
      b2: the second-moment decay (Adam ``b2``, RMSProp ``decay``), if any.
      eps: the preconditioner's ``eps`` (optax's default for the kind unless recorded by
        ``optax.inject_hyperparams`` or given).
      adaptive: the optimizer has a diagonal preconditioner ``P``.
    """

    kind: str
    learning_rate: float | None = None
    momentum: float = 0.0
    b2: float | None = None
    eps: float | None = None
    adaptive: bool = False

    @property
    def threshold_quantity(self) -> str:
        """Which sharpness the threshold applies to: raw or preconditioned."""
        return "precond_lambda_max" if self.adaptive else "lambda_max"

    def threshold(self, learning_rate: float | None = None) -> float | None:
        """The stability threshold (see :func:`stability_threshold`), ``None`` if unknown."""
        eta = self.learning_rate if learning_rate is None else learning_rate
        if eta is None or not eta > 0 or self.kind == "unknown":
            return None
        kind = {"adam": "ema", "nesterov": "nesterov"}.get(self.kind, "heavy_ball")
        return stability_threshold(eta, momentum=self.momentum, kind=kind)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def optimizer_info(optimizer, *, learning_rate: float | None = None) -> OptimizerInfo:
    """Identify an optax optimizer and its step size by probing it on a one-number problem.

    ``optax.sgd(0.05)`` does not expose its learning rate, so this runs two updates with
    gradient 1 on a single zero parameter and reads the step size, momentum and moment
    decays from the updates and the state (exact for sgd, heavy-ball and Nesterov momentum,
    adam/adamw/amsgrad, rmsprop and adagrad; the first step's value for a schedule). Values
    recorded by ``optax.inject_hyperparams`` take precedence; ``eps`` cannot be probed
    reliably and is optax's default for the kind unless injected. Costs two optimizer steps
    on one number.

    Args:
      optimizer: an ``optax.GradientTransformation``.
      learning_rate: overrides the probed step size.

    Returns:
      An :class:`OptimizerInfo` (``kind="unknown"`` when the probe fails, e.g. for
      optimizers whose update needs extra arguments).
    """
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(f"Expected an optax GradientTransformation, got "
                        f"{type(optimizer).__name__}.")
    try:
        info = _probe(optimizer)
    except Exception as err:  # noqa: BLE001 - any failure just means "unknown"
        warnings.warn(f"Could not probe the optimizer ({type(err).__name__}: {err}); its "
                      "stability threshold is unknown. Pass learning_rate explicitly.",
                      stacklevel=2)
        info = OptimizerInfo("unknown")
    if learning_rate is not None:
        info = dataclasses.replace(info, learning_rate=float(learning_rate))
    return info


def _probe(optimizer) -> OptimizerInfo:
    def two_updates(p, g):
        u0, s1 = optimizer.update(g, optimizer.init(p), p)
        u1, s2 = optimizer.update(g, s1, p)
        return u0, s1, u1, s2
    u0, s1, u1, s2 = jax.jit(two_updates)(jnp.zeros((1,), jnp.float32),
                                          jnp.ones((1,), jnp.float32))
    inj = _injected_hyperparams(s1)
    u0, u1 = float(u0[0]), float(u1[0])
    adam, rms = _find_states(s1, _ADAM_STATES), _find_states(s1, _RMS_STATES + _STDDEV_STATES)
    rss, trace1 = _find_states(s1, _RSS_STATES), _find_states(s1, ("TraceState",))
    if adam:
        b1 = inj.get("b1", 1.0 - float(adam[0].mu[0]))
        b2 = inj.get("b2", 1.0 - float(adam[0].nu[0]))
        eps = inj.get("eps", _DEFAULT_EPS["adam"])
        eta = inj.get("learning_rate", -u0 * (1.0 + eps))
        # Adam's first step is -eta * (1 +- 1e-5) in float32 (bias corrections of 0.1 and
        # 0.001 are inexact): four significant digits recover the step size.
        return OptimizerInfo("adam", _sig(eta, 4 if "learning_rate" not in inj else 6),
                             _sig(b1), _sig(b2), _sig(eps), True)
    kind, b2, eps, scale1, scale2 = "sgd", None, None, 1.0, 1.0
    if rms:
        kind, b2 = "rmsprop", inj.get("decay", 1.0 - float(rms[0].nu[0]))
        eps = inj.get("eps", _DEFAULT_EPS["rmsprop"])
        rms2 = _find_states(s2, _RMS_STATES + _STDDEV_STATES)[0]
        scale1 = 1.0 / float(_preconditioner(rms[0], b2, eps)[0])
        scale2 = 1.0 / float(_preconditioner(rms2, b2, eps)[0])
    elif rss:
        kind, eps = "adagrad", inj.get("eps", _DEFAULT_EPS["adagrad"])
        scale1 = 1.0 / math.sqrt(float(rss[0].sum_of_squares[0]) + eps)
    adaptive = kind != "sgd"
    if not trace1:
        return OptimizerInfo(kind, _sig(inj.get("learning_rate", -u0 / scale1)), 0.0, _sig(b2),
                             _sig(eps), adaptive)
    t1 = float(trace1[0].trace[0])
    t2 = float(_find_states(s2, ("TraceState",))[0].trace[0])
    beta, nesterov, eta = _probe_momentum(u0, u1, t1, t2, scale1, scale2)
    beta, eta = inj.get("momentum", beta), inj.get("learning_rate", eta)
    if kind == "sgd":
        kind = "nesterov" if nesterov else "momentum"
    return OptimizerInfo(kind, _sig(eta), _sig(beta), _sig(b2), _sig(eps), adaptive)


def _probe_momentum(u0, u1, t1, t2, scale1, scale2):
    """Momentum, Nesterov-ness and step size from two probe updates (gradient 1).

    ``t_k`` is the momentum trace after update ``k``, ``scale_k`` the preconditioner's factor
    ``1 / P_k``. optax's ``sgd`` traces before the learning rate (``u = -eta t``, trace > 0);
    ``rmsprop`` traces after it (``u = t``, trace < 0). Nesterov outputs ``x + beta t``.
    """
    post = t1 < 0
    eta_post = -t1 / scale1
    x1, x2 = (-eta_post * scale1, -eta_post * scale2) if post else (scale1, scale2)
    beta = (t2 - x2) / t1
    out_nv = (x1 + beta * t1, x2 + beta * t2)
    if post:
        err_hb = abs(u0 - t1) + abs(u1 - t2)
        err_nv = abs(u0 - out_nv[0]) + abs(u1 - out_nv[1])
        return beta, bool(err_nv < err_hb and beta > 0), eta_post
    eta_hb, eta_nv = -u0 / t1, -u0 / out_nv[0]
    err_hb = abs(-eta_hb * t2 - u1)
    err_nv = abs(-eta_nv * out_nv[1] - u1)
    nesterov = bool(err_nv < err_hb and beta > 0)
    return beta, nesterov, eta_nv if nesterov else eta_hb


def _sig(x, digits: int = 6):
    """Round a probed float32 value to ``digits`` significant digits (0.05, not 0.0500000007)."""
    return None if x is None else float(f"{float(x):.{digits}g}")


def adaptive_preconditioner(opt_state, *, info: OptimizerInfo | None = None,
                            b2: float | None = None, eps: float | None = None):
    """The diagonal preconditioner ``P`` an adaptive optax optimizer divides its step by.

    Read from the optimizer state (the update is ``-eta m / P``):

    * adam / adamw / nadam: ``P = sqrt(nu / (1 - b2^t)) + eps`` (bias-corrected, as in
      Cohen et al. 2022); amsgrad: ``sqrt(nu_max) + eps``.
    * rmsprop: ``P = sqrt(nu + eps)`` (``nu`` bias-corrected when the optimizer does so);
      centred: ``sqrt(nu - mu^2 + eps)``.
    * adagrad: ``P = sqrt(sum_of_squares + eps)``.

    ``b2`` and ``eps`` are not stored in the state: they come from the arguments, else from
    ``optax.inject_hyperparams`` values in the state, else from ``info``, else optax's
    defaults. Traceable (usable inside ``jit``). Cost: a few elementwise operations.

    Args:
      opt_state: an optax optimizer state (any nesting of chains and wrappers).
      info: an :class:`OptimizerInfo` for the hyperparameters.
      b2, eps: explicit hyperparameters.

    Returns:
      A pytree like the parameters (positive entries; ``inf`` where adagrad has seen no
      gradient), or ``None`` when the state has no adaptive preconditioner or Adam has taken
      no step yet.
    """
    adam = _find_states(opt_state, _ADAM_STATES)
    rms = _find_states(opt_state, _RMS_STATES + _STDDEV_STATES)
    rss = _find_states(opt_state, _RSS_STATES)
    kind = "adam" if adam else "rmsprop" if rms else "adagrad" if rss else None
    if kind is None:
        return None
    inj = _injected_hyperparams(opt_state)      # concrete values only (traced ones skipped)
    eps = eps if eps is not None else inj.get("eps", info.eps if info and info.eps is not None
                                              else _DEFAULT_EPS[kind])
    state = (adam or rms or rss)[0]
    if kind == "adam":
        b2 = b2 if b2 is not None else inj.get("b2", info.b2 if info and info.b2 else 0.999)
        try:
            if int(state.count) == 0:
                return None       # no step taken yet: nu is zero and P would be only eps
        except (TypeError, jax.errors.ConcretizationTypeError):
            pass                  # traced inside jit: measured after an update
    elif kind == "rmsprop":
        b2 = b2 if b2 is not None else inj.get("decay", info.b2 if info and info.b2 else 0.9)
    return _preconditioner(state, float(b2 or 0.0), float(eps))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _preconditioner(state, b2: float, eps: float):
    """``P`` from one adaptive sub-state (compiled once per state type and hyperparameters)."""
    fields = state._fields
    if "nu_max" in fields:                                        # amsgrad
        return jax.tree.map(lambda n: jnp.sqrt(n) + eps, state.nu_max)
    if "sum_of_squares" in fields:                                # adagrad
        return jax.tree.map(lambda s: jnp.where(s > 0, jnp.sqrt(s + eps), jnp.inf),
                            state.sum_of_squares)
    nu = state.nu
    if "count" in fields:                                         # bias correction
        t = jnp.maximum(state.count, 1)
        nu = jax.tree.map(lambda n: n / (1 - jnp.asarray(b2, n.dtype) ** t), nu)
    if type(state).__name__ in _ADAM_STATES:                      # adam: eps outside the root
        return jax.tree.map(lambda n: jnp.sqrt(n) + eps, nu)
    if "mu" in fields:                                            # centred rmsprop
        nu = jax.tree.map(lambda n, m: n - jnp.abs(m) ** 2, nu, state.mu)
    return jax.tree.map(lambda n: jnp.sqrt(jnp.maximum(n, 0) + eps), nu)


def _align_to_params(precond, params):
    """``precond`` with the tree structure of ``params``.

    ``nnx.Optimizer`` keeps its moments as ``OptVariable``s while the parameters are
    ``nnx.Param``s: the same leaves in the same order under different node types. Leaves are
    matched in order and must agree in shape.
    """
    p_leaves, p_def = jax.tree.flatten(precond)
    x_leaves, x_def = jax.tree.flatten(params)
    if p_def == x_def:
        return precond
    if len(p_leaves) != len(x_leaves):
        raise ValueError(f"The preconditioner has {len(p_leaves)} leaves but the parameters have "
                         f"{len(x_leaves)}: pass the optimizer state of these parameters (for "
                         "nnx.Optimizer: wrt=nnx.Param), or preconditioner=callable.")
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for path, p, x in zip(paths, p_leaves, x_leaves):
        if np.shape(p) != np.shape(x):
            raise ValueError(f"The preconditioner's leaf for parameter {path} has shape "
                             f"{np.shape(p)}, the parameter {np.shape(x)}: the optimizer state "
                             "does not belong to these parameters.")
    return jax.tree.unflatten(x_def, p_leaves)


@jax.jit
def _inverse_sqrt(precond, like):
    """``P^{-1/2}`` cast to the dtypes of ``like`` (zero where ``P`` is infinite)."""
    return jax.tree.map(lambda p, a: jnp.where(jnp.isinf(p), 0.0, jax.lax.rsqrt(p)).astype(
        jnp.result_type(a)), precond, like)


# =========================================================================================
# The warm-started Lanczos solver (host-driven, compiled step)
# =========================================================================================

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _ScaledMatvec:
    """``v -> D A D v`` with ``D = diag(d)``: the operator ``P^{-1/2} A P^{-1/2}``."""

    inner: Any
    d: Any

    def __call__(self, v):
        mul = functools.partial(jax.tree.map, jnp.multiply)
        return mul(self.d, self.inner(mul(self.d, v)))



@jax.jit
def _apply(matvec_fn, v):
    return matvec_fn(v)


def _make_apply(op: CurvatureOperator, matvec_fn, d):
    """``v -> A v`` (or ``D A D v``): one compiled call, or a Python loop for streamed data."""
    if matvec_fn is not None:
        fn = matvec_fn if d is None else _ScaledMatvec(matvec_fn, d)
        return functools.partial(_apply, fn)
    if d is None:
        return op.apply_unchecked
    return lambda v: _scale_by(d, op.apply_unchecked(_scale_by(d, v)))


_scale_by = jax.jit(functools.partial(jax.tree.map, jnp.multiply))


# =========================================================================================
# One measurement: the pure function
# =========================================================================================

@dataclasses.dataclass(frozen=True)
class SharpnessResult:
    """The top eigenvalue(s) of the (preconditioned) Hessian at one point.

    Attributes:
      value: ``lambda_max`` (of ``P^{-1/2} H P^{-1/2}`` when ``preconditioned``).
      values: ``(k,)`` the ``k`` largest eigenvalues, descending.
      residuals: ``(k,)`` Lanczos residual estimates ``|beta_m s_mi|`` (an upper bound on
        each eigenvalue's error; away from clusters the error is about ``residual^2/gap``).
      vectors: stacked pytree basis, row ``i`` the unit eigenvector estimate of ``values[i]``.
      warm_start: stacked vectors to pass as ``v0`` to the next measurement (the top ``k``
        and the guard).
      num_matvecs: Hessian-vector products spent.
      converged: every residual is within ``tol * scale``.
      preconditioned: whether a preconditioner was applied.
      wall_time: seconds (compilation included on a first call).
    """

    value: float
    values: np.ndarray
    residuals: np.ndarray
    vectors: Any
    warm_start: Any
    num_matvecs: int
    converged: bool
    preconditioned: bool = False
    wall_time: float = 0.0

    def to_dict(self) -> dict:
        return {"value": self.value, "values": self.values.tolist(),
                "residuals": self.residuals.tolist(), "num_matvecs": self.num_matvecs,
                "converged": self.converged, "preconditioned": self.preconditioned,
                "wall_time": self.wall_time}


def _validate_solver_options(k, tol, krylov_dim, max_matvecs, min_iters):
    for name, value in (("k", k), ("krylov_dim", krylov_dim), ("max_matvecs", max_matvecs),
                        ("min_iters", min_iters)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    if not 0 < float(tol) < 1:
        raise ValueError(f"tol={tol!r} must lie in (0, 1): it is a residual relative to the "
                         "largest eigenvalue, e.g. 1e-3.")
    if krylov_dim < k + 2:
        raise ValueError(f"krylov_dim={krylov_dim} must be at least k + 2 = {k + 2}.")


def _as_warm(v0, params):
    """``v0`` as a stacked basis (a single vector gets a leading axis of one)."""
    if v0 is None:
        return None
    if isinstance(v0, SharpnessResult):
        return v0.warm_start
    p_leaves, v_leaves = jax.tree.leaves(params), jax.tree.leaves(v0)
    if jax.tree.structure(params) != jax.tree.structure(v0) or len(p_leaves) != len(v_leaves):
        raise ValueError("v0 must be shaped like the parameters (one vector) or a stacked "
                         "basis of such vectors (e.g. a previous result's warm_start).")
    if all(np.shape(v) == np.shape(p) for v, p in zip(v_leaves, p_leaves)):
        return jax.tree.map(lambda a, p: jnp.asarray(a, jnp.result_type(p))[None], v0, params)
    if all(np.shape(v)[1:] == np.shape(p) for v, p in zip(v_leaves, p_leaves)):
        return jax.tree.map(lambda a, p: jnp.asarray(a, jnp.result_type(p)), v0, params)
    raise ValueError("v0's leaves match neither the parameter shapes nor a stacked basis of "
                     "them.")


def _top(op, matvec_fn, params, warm, key, *, d=None, k_top=1, k_bottom=0, num_guard=1,
         tol, guard_tol=None, krylov_dim, max_matvecs, min_iters) -> WarmEigsResult:
    """Lanczos on ``H`` (or ``D H D``) from a warm (or random) start:
    :func:`hessian_tools.linalg.warm_eigs` with the operator's compiled product.

    The warm start is a weighted sum of the previous measurement's Ritz vectors: the wanted
    ones (weight 1) and the converged runner-up, the guard (weight 0.3). With the guard in
    the start vector its direction is in the Krylov space after a step or two, so a
    runner-up that overtakes the top eigenvalue between two measurements is found, not
    missed.
    """
    return warm_eigs(_make_apply(op, matvec_fn, d), params, key, start=warm, k_top=k_top,
                     k_bottom=k_bottom, num_guard=num_guard, tol=tol, guard_tol=guard_tol,
                     krylov_dim=krylov_dim, max_matvecs=max_matvecs, min_steps=min_iters)


def sharpness(loss_fn: Callable, params, data, *, key, v0=None, k: int = 1, tol: float = 1e-3,
              preconditioner=None, krylov_dim: int = 40, max_matvecs: int = 300,
              min_iters: int = 3, linearize="auto") -> SharpnessResult:
    """The sharpness ``lambda_max(H)`` (or ``lambda_max(P^{-1/2} H P^{-1/2})``) at ``params``.

    ``H`` is the Hessian of the dataset-mean loss. Lanczos with full reorthogonalisation
    runs from ``v0`` (warm start: a previous result, its ``warm_start`` or any vector) or from
    a random vector, and stops when the ``k`` top Ritz pairs have residual estimate
    ``<= tol * |lambda_max|`` and one *guard*, the next Ritz pair, has residual ``<= 10 tol *
    |lambda_max|``. The guard is part of the next warm start: if the runner-up overtakes the
    top eigenvalue between two measurements, it is found rather than missed. Pure: the same
    inputs and key give the same numbers.

    Cost: from a random start typically 15-60 HVPs (more when the top eigenvalues cluster);
    from a warm start at nearby parameters a handful. Each HVP is a forward-over-reverse pass
    over ``data``. Memory ``(krylov_dim + k + 3) x P`` for ``P`` parameters. Accuracy: the
    eigenvalue error is at most the residual, ``tol * |lambda_max|``, and about
    ``residual^2 / gap`` when the top eigenvalue is separated.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` mean loss.
      params: the point (pytree of float arrays).
      data: one batch, a list of batches or a callable streaming batches (see
        :class:`hessian_tools.Objective`).
      key: a ``jax.random`` key (the random start vector; with a warm start, only used to
        restart if the start vector spans too small an invariant subspace).
      v0: warm start: a :class:`SharpnessResult`, a vector shaped like ``params``, or a
        stacked basis of such vectors.
      k: how many top eigenvalues to converge.
      tol: relative residual tolerance.
      preconditioner: ``None`` or a pytree ``P`` like ``params`` with positive entries (a
        diagonal preconditioner, e.g. from :func:`adaptive_preconditioner`).
      krylov_dim: basis size before an explicit restart.
      max_matvecs: budget of HVPs.
      min_iters: at least this many Lanczos steps, so that every warm-start direction
        (the top vectors and the guard) is in the Krylov space before convergence is
        declared.
      linearize: passed to :func:`hessian_tools.hessian`.

    Returns:
      A :class:`SharpnessResult`.

    Raises:
      ValueError: bad options, or parameters/data that :class:`Objective` rejects.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> A = jnp.diag(jnp.array([3.0, 1.0, -2.0]))
      >>> loss = lambda p, batch: 0.5 * p @ A @ p
      >>> res = sharpness(loss, jnp.zeros(3), jnp.zeros((1, 1)), key=jax.random.key(0))
      >>> round(res.value, 4)
      3.0
    """
    _validate_solver_options(k, tol, krylov_dim, max_matvecs, min_iters)
    start = time.perf_counter()
    obj = Objective(loss_fn, params, data)
    op = hessian(obj, linearize=linearize)
    d = None if preconditioner is None else _inverse_sqrt(preconditioner, obj.params)
    res = _top(op, op.matvec_fn, obj.params, _as_warm(v0, obj.params), key, d=d, k_top=k,
               tol=tol, krylov_dim=krylov_dim, max_matvecs=max_matvecs, min_iters=min_iters)
    return SharpnessResult(float(res.values[0]), np.asarray(res.values, np.float64),
                           np.asarray(res.residuals, np.float64), res.vectors, res.warm,
                           res.num_matvecs, res.converged, d is not None,
                           time.perf_counter() - start)


# =========================================================================================
# The optax transformation: measure inside the compiled train step
# =========================================================================================

class SharpnessMonitorState(NamedTuple):
    """State of :func:`sharpness_monitor`.

    ``measurements`` maps ``name`` (and ``name + "_preconditioned"``, and the ``_residual``
    of each) to the latest values; read them with ``optax.tree.get(state, name)``.
    """

    measure_count: jax.Array
    measurements: dict
    warm_vector: Any
    precond_warm_vector: Any
    inner_state: Any


def _lanczos_top(matvec, v0, num_iters):
    """Top Ritz pair after ``num_iters`` Lanczos steps from ``v0`` (traceable)."""
    dec = lanczos_tridiag(matvec, v0, num_iters=num_iters)
    pairs = ritz_pairs(dec)
    return pairs.values[-1], pairs.residuals[-1], pairs.vector(dec, -1)


def sharpness_monitor(loss_fn: Callable, measure_data, *, every: int = 10, num_iters: int = 10,
                      name: str = "sharpness", key=None, optimizer=None,
                      preconditioned: bool | str = "auto"):
    """An optax transformation that measures the sharpness every ``every`` updates.

    Modelled on ``optax.snapshot``/``optax.monitor``: it passes updates through unchanged
    (or, with ``optimizer``, wraps that optimizer and passes on *its* updates) and stores the
    latest ``lambda_max(H)`` of ``loss_fn`` on ``measure_data`` at the current params in its
    state, readable with ``optax.tree.get(state, name)``. Each measurement runs
    ``num_iters`` Lanczos steps from the previous measurement's top Ritz vector, so the
    estimate keeps improving across measurements (a restarted Lanczos spread over
    training). With ``optimizer`` given and adaptive, it also stores
    ``name + "_preconditioned"``: ``lambda_max(P^{-1/2} H P^{-1/2})`` with ``P`` from the
    wrapped optimizer's new state. Everything runs inside the caller's ``jit`` (a
    ``lax.cond`` skips the work between measurements).

    Cost per measurement: one linearisation of the gradient (about one gradient pass) plus
    ``num_iters`` HVPs on ``measure_data`` (twice with the preconditioned value); memory
    ``(num_iters + 2) x P`` and one or two warm-start vectors in the state. The data are
    compiled into the train step as constants: keep ``measure_data`` small (a subset).
    Accuracy: ``name + "_residual"`` holds the Lanczos residual estimate, an upper bound on
    the eigenvalue error.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      measure_data: one batch or a list of batches.
      every: measure when ``count % every == 0`` (the first update measures).
      num_iters: Lanczos steps per measurement.
      name: the key under which the value is stored.
      key: PRNG key for the initial random vector (default ``jax.random.key(0)``).
      optimizer: optional optax transformation to wrap (needed for the preconditioned value).
      preconditioned: ``"auto"`` (if ``optimizer`` is adaptive), ``True`` or ``False``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its ``update`` requires ``params``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> A = jnp.diag(jnp.array([3.0, 1.0, 0.5]))
      >>> loss = lambda p, batch: 0.5 * p @ A @ p
      >>> tx = sharpness_monitor(loss, jnp.zeros((1, 1)), every=1, num_iters=3,
      ...                        optimizer=optax.sgd(0.1))
      >>> params = jnp.ones(3); state = tx.init(params)
      >>> updates, state = tx.update(jax.grad(loss)(params, None), state, params)
      >>> round(float(optax.tree.get(state, "sharpness")), 4)
      3.0
    """
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every={every!r} must be a positive integer.")
    if not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"num_iters={num_iters!r} must be a positive integer.")
    groups = group_batches(measure_data if isinstance(measure_data, list) else [measure_data])
    pytree_loss = as_pytree_fn(loss_fn)
    key = jax.random.key(0) if key is None else key
    inner = None if optimizer is None else optax.with_extra_args_support(optimizer)
    info = None if optimizer is None else optimizer_info(optimizer)
    if preconditioned == "auto":
        preconditioned = bool(info and info.adaptive)
    if preconditioned and optimizer is None:
        raise ValueError("preconditioned=True needs the adaptive optimizer: pass "
                         "optimizer=optax.adam(...) to wrap it.")
    names = [name] + ([name + "_preconditioned"] if preconditioned else [])

    def init(params):
        dtype = jnp.result_type(*jax.tree.leaves(params))
        nan = jnp.full((), jnp.nan, jnp.finfo(dtype).dtype)
        meas = {n: nan for n in names} | {n + "_residual": nan for n in names}
        k1, k2 = jax.random.split(key)
        pv = tree.normal_like(k2, params) if preconditioned else None
        return SharpnessMonitorState(jnp.zeros((), jnp.int32), meas,
                                     tree.normal_like(k1, params), pv,
                                     inner.init(params) if inner else optax.EmptyState())

    def update(updates, state, params=None, **extra):
        if params is None:
            raise ValueError("sharpness_monitor needs the parameters: call "
                             "update(grads, state, params).")
        inner_state = state.inner_state
        if inner is not None:
            updates, inner_state = inner.update(updates, inner_state, params, **extra)

        def measure(_):
            lin = jax.linearize(lambda p: _mean_grad(pytree_loss, p, groups), params)[1]
            lam, res, vec = _lanczos_top(lin, state.warm_vector, num_iters)
            meas = {name: lam, name + "_residual": res}
            pvec = state.precond_warm_vector
            if preconditioned:
                p = adaptive_preconditioner(inner_state, info=info)
                d = _inverse_sqrt(p, params) if p is not None else tree.zeros_like(params)
                lam_p, res_p, pvec = _lanczos_top(_ScaledMatvec(lin, d), pvec, num_iters)
                meas |= {name + "_preconditioned": lam_p,
                         name + "_preconditioned_residual": res_p}
            meas = {n: v.astype(state.measurements[n].dtype) for n, v in meas.items()}
            return meas, vec, pvec

        def keep(_):
            return state.measurements, state.warm_vector, state.precond_warm_vector

        due = state.measure_count % every == 0
        meas, vec, pvec = jax.lax.cond(due, measure, keep, None)
        return updates, SharpnessMonitorState(state.measure_count + 1, meas, vec, pvec,
                                              inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


# =========================================================================================
# Logs: append-only JSON lines
# =========================================================================================

@dataclasses.dataclass(frozen=True)
class SharpnessLog:
    """Measurements over training, one record per measurement, in order.

    Index it by quantity for arrays: ``log["lambda_max"]`` (``NaN`` where a record lacks
    the quantity), ``log.steps``, ``log["top_k"]`` (2-D). ``meta`` holds the header
    records (one per run start or resume).
    """

    records: tuple = ()
    meta: tuple = ()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def steps(self) -> np.ndarray:
        return np.array([r["step"] for r in self.records], dtype=np.int64)

    @property
    def quantities(self) -> list:
        """Names of the numeric fields present in any record."""
        names = []
        for r in self.records:
            names += [n for n, v in r.items() if n not in names and n != "type"
                      and (isinstance(v, (int, float, list)) or v is None)
                      and not isinstance(v, bool)]
        return names

    def __contains__(self, name) -> bool:
        return any(r.get(name) is not None for r in self.records)

    def __getitem__(self, name: str) -> np.ndarray:
        values = [r.get(name) for r in self.records]
        if any(isinstance(v, list) for v in values):
            width = max(len(v) for v in values if isinstance(v, list))
            return np.array([(v + [np.nan] * (width - len(v))) if isinstance(v, list)
                             else [np.nan] * width for v in values], dtype=np.float64)
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def arrays(self) -> dict:
        """Every quantity as an array (``{"step": ..., "lambda_max": ..., ...}``)."""
        return {n: self[n] for n in self.quantities}

    @property
    def total_matvecs(self) -> int:
        return int(sum(r.get("num_matvecs", 0) or 0 for r in self.records))

    def to_dict(self) -> dict:
        return {"type": "SharpnessLog", "records": list(self.records), "meta": list(self.meta)}

    @classmethod
    def from_dict(cls, d: dict) -> "SharpnessLog":
        return cls(tuple(d.get("records", ())), tuple(d.get("meta", ())))


def read_sharpness_log(path, *, strict: bool = True) -> SharpnessLog:
    """Read a JSON-lines sharpness log written by :class:`SharpnessTracker`.

    A last line that is not valid JSON (a crash in the middle of a write) is skipped with a
    ``RuntimeWarning``; everything before it is returned.

    Args:
      path: the ``.jsonl`` file.
      strict: raise on an invalid line that is *not* the last (real corruption); with
        ``strict=False`` such lines are skipped with a warning too.

    Returns:
      A :class:`SharpnessLog`.

    Raises:
      FileNotFoundError: no such file.
      ValueError: an invalid line before the last one (with ``strict``).
    """
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    records, meta = [], []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            last = i == len(lines) - 1
            if last or not strict:
                what = "truncated last line" if last else f"invalid line {i + 1}"
                warnings.warn(f"{path}: skipped a {what} ({len(raw)} bytes; probably a crash "
                              "while writing).", RuntimeWarning, stacklevel=2)
                continue
            raise ValueError(f"{path}: line {i + 1} is not a valid JSON record ({err}); the "
                             "log is corrupted. Pass strict=False to skip such lines.") from err
        (meta if rec.get("type") == "meta" else records).append(rec)
    return SharpnessLog(tuple(records), tuple(meta))


def _drop_partial_line(path: Path) -> None:
    """Cut a trailing partial record (no newline) left by a crash, with a warning."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
            f.write(b"\n")              # a complete record that only lacks its newline
            return
        except ValueError:
            pass
        f.truncate(cut)
    warnings.warn(f"{path}: removed a partial last record ({len(data) - cut} bytes) left by "
                  "an interrupted write before appending.", RuntimeWarning, stacklevel=3)


def _json_value(x):
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, np.ndarray):
        return [_json_value(v) for v in x.tolist()]
    if isinstance(x, (list, tuple)):
        return [_json_value(v) for v in x]
    if isinstance(x, dict):
        return {k: _json_value(v) for k, v in x.items()}
    return x


def _append_line(path: Path, record: dict, fsync: bool) -> None:
    line = json.dumps(_json_value(record), allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


# =========================================================================================
# The tracker
# =========================================================================================

class SharpnessTracker:
    """Measures curvature every ``every`` steps of a training loop, warm started.

    ``update(step, params, opt_state=..., learning_rate=...)`` measures when ``step % every
    == 0`` and returns the record (else ``None``). Every measurement computes
    ``lambda_max`` of the Hessian of ``loss_fn`` on the fixed ``measure_data`` (its top-k
    Ritz pairs, converged to ``tol``), and optionally:

    * ``"top_k"``: the ``k`` largest eigenvalues (``k`` Ritz pairs converged);
    * ``"lambda_min"``: the smallest eigenvalue (in the same Lanczos run; slower to
      converge, since the bottom of a Hessian spectrum is a dense bulk);
    * ``"trace"``: a stochastic estimate with ``num_trace_samples`` products and its standard
      error (Hutch++ via :func:`hessian_tools.trace`; Hutchinson if that is unavailable);
    * ``"grad_overlap"``: ``||P_k g||^2 / ||g||^2``, the fraction of the gradient in the
      top-k eigenspace (Gur-Ari et al. 2018), and ``"loss"`` on the measurement set;
    * ``"precond_lambda_max"``: ``lambda_max(P^{-1/2} H P^{-1/2})``, measured automatically
      whenever ``preconditioner`` resolves to a ``P`` (by default: read from an adaptive
      optimizer's ``opt_state``).

    Records go to ``tracker.log`` (a :class:`SharpnessLog`) and, with ``log_path``, to an
    append-only JSON-lines file, one line per measurement, flushed (and fsynced) when
    written. A tracker opened on an existing log resumes it: old records are loaded, steps
    already logged are not measured again, and new records are appended.

    Cost per measurement: with a warm start typically 3-10 HVPs for ``lambda_max`` (reported
    per record as ``num_matvecs``), the same again for the preconditioned value,
    ``num_trace_samples`` for the trace, one gradient for ``grad_overlap``/``loss``, and one
    linearisation of the gradient (about one gradient pass) when the operator is
    linearised. Memory: the Lanczos basis ``(krylov_dim + 1) x P`` during a measurement,
    ``(k + 2) x P`` warm-start vectors between measurements (top ``k``, one guard, and the
    bottom vector with ``"lambda_min"``) per operator. Compiled functions take the
    parameters as arguments: compiled at the first measurement, never re-traced.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` mean loss.
      measure_data: the fixed measurement set: one batch, a list of batches, or a callable
        streaming batches (see :class:`hessian_tools.Objective`); a subset of the training
        data (:func:`measurement_subset`) keeps measurements cheap.
      every: measurement period in steps.
      log_path: optional ``.jsonl`` path (parent folders are created).
      quantities: names from :data:`QUANTITIES`.
      key: a ``jax.random`` key (start vectors and trace probes).
      k: eigenvalues for ``"top_k"`` and ``"grad_overlap"`` (default 10, one per class for
        a 10-class problem).
      tol: relative residual tolerance of each eigenvalue (see :func:`sharpness`).
      preconditioner: ``"auto"`` (from ``opt_state``), ``None`` (never), or a callable
        ``preconditioner(params, opt_state) -> P`` (a pytree like params, positive).
      optimizer: optional optax optimizer, probed once (:func:`optimizer_info`) for the
        learning rate, momentum and ``b2``/``eps`` used for thresholds and ``P`` (or an
        :class:`OptimizerInfo`). Without it the threshold is ``2/eta`` for a plain state,
        read from ``optax.inject_hyperparams`` values, or Adam's for an Adam state.
      num_trace_samples: operator products per trace estimate (at least 2; 4 or more for
        Hutch++).
      warm_start: start each measurement from the previous one (``False``: random start,
        for comparison).
      krylov_dim, max_matvecs, min_iters: solver options (see :func:`sharpness`).
      resume: append to an existing log (``False`` with an existing file raises unless
        ``overwrite``).
      overwrite: replace an existing log.
      fsync: ``os.fsync`` after every record (crash-safe on power loss, ~ms per record).

    Raises:
      ValueError: unknown quantities, bad options, an existing log with ``resume=False``.
    """

    def __init__(self, loss_fn: Callable, measure_data, *, every: int = 10,
                 log_path=None, quantities=("lambda_max",), key=None, k: int = 10,
                 tol: float = 1e-3, preconditioner="auto", optimizer=None,
                 num_trace_samples: int = 10, warm_start: bool = True, krylov_dim: int = 40,
                 max_matvecs: int = 300, min_iters: int = 3, linearize="auto",
                 resume: bool = True, overwrite: bool = False, fsync: bool = True):
        self._validate(loss_fn, every, quantities, key, k, preconditioner, num_trace_samples)
        self.loss_fn, self.measure_data, self.every = loss_fn, measure_data, every
        self.quantities = tuple(dict.fromkeys(("lambda_max",) + tuple(quantities)))
        self.k = k if ("top_k" in self.quantities or "grad_overlap" in self.quantities) else 1
        _validate_solver_options(self.k, tol, krylov_dim, max_matvecs, min_iters)
        self.tol, self.krylov_dim, self.max_matvecs = float(tol), krylov_dim, max_matvecs
        self.min_iters, self.linearize, self.fsync = min_iters, linearize, fsync
        self.preconditioner, self.num_trace_samples = preconditioner, num_trace_samples
        self.warm_start = warm_start
        self.info = (optimizer if isinstance(optimizer, OptimizerInfo) or optimizer is None
                     else optimizer_info(optimizer))
        self._key = key
        self._obj: Objective | None = None
        self._treedef = None
        self._warm: dict = {}
        self._records: list = []
        self._meta: list = []
        self._warned: set = set()
        self.log_path = None if log_path is None else Path(log_path)
        if self.log_path is not None:
            self._open_log(resume, overwrite)

    # ---- setup ------------------------------------------------------------------------

    @staticmethod
    def _validate(loss_fn, every, quantities, key, k, preconditioner, num_trace_samples):
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}.")
        if not isinstance(every, (int, np.integer)) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every={every!r} must be a positive integer (steps between "
                             "measurements).")
        if isinstance(quantities, str):
            raise TypeError(f"quantities must be a tuple of names, got the string "
                            f"{quantities!r}; write quantities=({quantities!r},).")
        unknown = [q for q in quantities if q not in QUANTITIES]
        if unknown:
            raise ValueError(f"Unknown quantities {unknown}; choose from {list(QUANTITIES)}.")
        if key is None:
            raise ValueError("SharpnessTracker needs an explicit PRNG key: pass "
                             "key=jax.random.key(0).")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k={k!r} must be a positive integer.")
        if not (preconditioner in ("auto", None) or callable(preconditioner)):
            raise ValueError(f"preconditioner={preconditioner!r} must be 'auto', None or a "
                             "callable preconditioner(params, opt_state) -> P.")
        if not isinstance(num_trace_samples, int) or num_trace_samples < 2:
            raise ValueError(f"num_trace_samples={num_trace_samples!r} must be an integer >= "
                             "2 (the standard error needs two probes).")

    def _open_log(self, resume, overwrite):
        path = self.log_path
        header = {"type": "meta", "version": _LOG_VERSION, "every": self.every,
                  "quantities": list(self.quantities), "tol": self.tol, "k": self.k,
                  "created": time.time(), "resumed": False}
        if path.exists() and path.stat().st_size > 0:
            if overwrite:
                path.unlink()
            elif not resume:
                raise ValueError(f"The log {path} exists. Pass resume=True to append to it, "
                                 "overwrite=True to replace it, or another log_path.")
            else:
                _drop_partial_line(path)
                old = read_sharpness_log(path)
                self._records, self._meta = list(old.records), list(old.meta)
                header["resumed"] = True
        path.parent.mkdir(parents=True, exist_ok=True)
        self._meta.append(header)
        _append_line(path, header, self.fsync)

    # ---- public -----------------------------------------------------------------------

    @property
    def log(self) -> SharpnessLog:
        """All records so far (including those of a resumed log)."""
        return SharpnessLog(tuple(self._records), tuple(self._meta))

    @property
    def records(self) -> list:
        return list(self._records)

    @property
    def total_matvecs(self) -> int:
        """HVPs spent by all measurements of this log."""
        return self.log.total_matvecs

    def due(self, step: int) -> bool:
        """Whether ``update(step, ...)`` would measure."""
        return int(step) % self.every == 0 and not self._logged(int(step))

    def update(self, step: int, params, *, opt_state=None, learning_rate=None,
               force: bool = False) -> dict | None:
        """Measure if ``step`` is due (or ``force``); return the record or ``None``.

        Args:
          step: the training step (an int).
          params: the current parameters (pytree).
          opt_state: the optimizer state (for the preconditioner, and for hyperparameters
            recorded by ``optax.inject_hyperparams``).
          learning_rate: the step size now (for the thresholds); defaults to an injected
            value or the probed optimizer's.
          force: measure even when not due (a step already logged is still skipped).
        """
        step = int(step)
        if not (force or step % self.every == 0) or self._logged(step):
            return None
        return self.measure(step, params, opt_state=opt_state, learning_rate=learning_rate)

    def measure(self, step: int, params, *, opt_state=None, learning_rate=None) -> dict:
        """Measure now, append the record to the log, and return it."""
        start = time.perf_counter()
        record = {"step": int(step), "time": time.time()}
        if not bool(_all_finite(params)):          # a diverged run: nothing to measure
            return self._record_failure(record, "non-finite parameters", start)
        obj = self._objective(params)
        op = hessian(obj, linearize=self.linearize)
        self._measure_hessian(record, op, obj.params)
        self._measure_preconditioned(record, op, params, obj.params, opt_state)
        if "trace" in self.quantities:
            self._measure_trace(record, op, obj.params)
        if "grad_overlap" in self.quantities or "loss" in self.quantities:
            self._measure_gradient(record, obj)
        self._thresholds(record, opt_state, learning_rate)
        record["num_matvecs"] = sum(v for n, v in record.items() if n.startswith("matvecs_"))
        record["wall_time"] = time.perf_counter() - start
        return self._append(record)

    # ---- measurements -----------------------------------------------------------------

    def _objective(self, params) -> Objective:
        """The measurement objective at ``params``, on the parameters' leaves.

        Internally the vectors are plain lists of arrays: a pytree such as ``nnx.State``
        builds Python ``Variable`` objects whenever a compiled step returns a vector, which
        cost about 7 ms per measurement on the wide digits MLP (160 unflattenings).
        """
        leaves, treedef = jax.tree.flatten(params)
        if self._obj is None or treedef != self._treedef:
            self._treedef, self._warm = treedef, {}
            self._obj = Objective(_LeafLoss(self.loss_fn, treedef), leaves, self.measure_data)
            return self._obj
        return self._obj.with_params(leaves)

    def _next_key(self):
        self._key, sub = jax.random.split(self._key)
        return sub

    def _solve(self, name, op, params, *, d=None, k_top=1, k_bottom=0):
        warm = self._warm.get(name) if self.warm_start else None
        res = _top(op, op.matvec_fn, params, warm, self._next_key(), d=d, k_top=k_top,
                   k_bottom=k_bottom, tol=self.tol, krylov_dim=self.krylov_dim,
                   max_matvecs=self.max_matvecs, min_iters=self.min_iters)
        self._warm[name] = res.warm
        return res

    def _measure_hessian(self, record, op, params):
        k_bottom = 1 if "lambda_min" in self.quantities else 0
        res = self._solve("hessian", op, params, k_top=self.k, k_bottom=k_bottom)
        k_top = min(self.k, op.dim)
        top = np.asarray(res.values[:k_top], np.float64)
        record.update(lambda_max=float(top[0]), lambda_max_residual=float(res.residuals[0]),
                      converged=bool(res.converged), matvecs_lambda_max=res.num_matvecs)
        if "top_k" in self.quantities:
            record["top_k"] = top.tolist()
        if k_bottom:
            record["lambda_min"] = float(res.values[-1])
            record["lambda_min_residual"] = float(res.residuals[-1])
        self._top_vectors = _first_rows(res.vectors, k_top)

    def _resolve_preconditioner(self, params, opt_state):
        if self.preconditioner is None:
            return None
        if callable(self.preconditioner):
            p = self.preconditioner(params, opt_state)
        elif opt_state is None:
            return None
        else:
            p = adaptive_preconditioner(opt_state, info=self.info)
        return None if p is None else jax.tree.leaves(_align_to_params(p, params))

    def _measure_preconditioned(self, record, op, user_params, params, opt_state):
        p = self._resolve_preconditioner(user_params, opt_state)
        if p is None:
            if opt_state is not None and _find_states(opt_state, _ADAM_STATES):
                if "precond_lambda_max" in self.quantities:   # adam before its first step
                    record["precond_lambda_max"] = None
                return
            if "precond_lambda_max" in self.quantities:
                self._warn_once("precond", "precond_lambda_max was requested but no "
                                "preconditioner was found (pass the adaptive optimizer's "
                                "opt_state, or preconditioner=callable); recording None.")
                record["precond_lambda_max"] = None
            return
        d = _inverse_sqrt(p, params)
        res = self._solve("precond", op, params, d=d)
        record.update(precond_lambda_max=float(res.values[0]),
                      precond_residual=float(res.residuals[0]),
                      matvecs_precond=res.num_matvecs)

    def _measure_trace(self, record, op, params):
        mean, stderr, n = _trace(op, params, self._next_key(), self.num_trace_samples)
        record.update(trace=mean, trace_stderr=stderr, matvecs_trace=n)

    def _measure_gradient(self, record, obj):
        loss, grad = value_and_grad(obj)
        record["loss"] = float(loss)
        record["grad_norm"] = float(tree.norm(grad))
        if "grad_overlap" in self.quantities:
            record["grad_overlap"] = float(_overlap(self._top_vectors, grad))

    def _thresholds(self, record, opt_state, learning_rate):
        inj = _injected_hyperparams(opt_state) if opt_state is not None else {}
        info = self.info or _info_from_state(opt_state, inj)
        eta = learning_rate if learning_rate is not None else inj.get("learning_rate",
                                                                      info.learning_rate)
        record["learning_rate"] = None if eta is None else float(eta)
        if info.kind == "unknown" and eta is not None:
            self._warn_once("unknown", "The optimizer's momentum is unknown, so no stability "
                            "threshold is recorded: pass optimizer=<the optax optimizer> to "
                            "SharpnessTracker.")
        value = info.threshold(None if eta is None else float(eta))
        record["threshold"] = None if info.adaptive else value
        record["precond_threshold"] = value if info.adaptive else None

    def _record_failure(self, record, err, start):
        self._warn_once("nonfinite", f"Skipping measurements at non-finite parameters "
                        f"(first at step {record['step']}).")
        self._warm = {}
        record.update(lambda_max=None, converged=False, num_matvecs=0, error=str(err)[:200],
                      wall_time=time.perf_counter() - start)
        return self._append(record)

    def _warn_once(self, tag, message):
        if tag not in self._warned:
            self._warned.add(tag)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _append(self, record):
        record = _json_value(record)
        self._records.append(record)
        if self.log_path is not None:
            _append_line(self.log_path, record, self.fsync)
        return record

    def _logged(self, step: int) -> bool:
        if not self._records:
            return False
        steps = self.__dict__.setdefault("_steps_cache", set())
        if len(steps) != len(self._records):
            steps.clear()
            steps.update(r["step"] for r in self._records)
        return step in steps


def _info_from_state(opt_state, inj: dict) -> OptimizerInfo:
    """An :class:`OptimizerInfo` guessed from state types (no learning rate)."""
    if opt_state is None:
        return OptimizerInfo("sgd")
    if _find_states(opt_state, _ADAM_STATES):
        return OptimizerInfo("adam", None, inj.get("b1", 0.9), adaptive=True)
    adaptive = bool(_find_states(opt_state, _RMS_STATES + _STDDEV_STATES + _RSS_STATES))
    kind = "rmsprop" if adaptive else "sgd"
    if _find_states(opt_state, ("TraceState",)):
        if "momentum" not in inj:
            return OptimizerInfo("unknown", adaptive=adaptive)
        return OptimizerInfo(kind if adaptive else "momentum", None, inj["momentum"],
                             adaptive=adaptive)
    return OptimizerInfo(kind, adaptive=adaptive)


@jax.jit
def _all_finite(params):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(params)]))


@jax.jit
def _quadratic_form(matvec_fn, z):
    return tree.vdot(z, matvec_fn(z))


@functools.partial(jax.jit, static_argnums=(1,))
def _first_rows(vectors, k):
    return jax.tree.map(lambda a: a[:k], vectors)


@jax.jit
def _overlap(vectors, g):
    c = tree.basis_dot(vectors, g)
    return jnp.sum(c * c) / tree.vdot(g, g)


def _trace(op: CurvatureOperator, params, key, num_matvecs: int):
    """Trace estimate, standard error, matvecs: ``ht.trace`` (Hutch++) when available."""
    try:
        from hessian_tools.spectral_density import trace
    except ImportError:                  # the density module is optional here
        return _hutchinson(op, params, key, num_matvecs)
    est = trace(op, method="hutch++" if num_matvecs >= 4 else "hutchinson",
                num_matvecs=num_matvecs, key=key)
    return float(est.value), float(est.stderr), int(est.num_matvecs)


def _hutchinson(op: CurvatureOperator, params, key, num_samples: int):
    """Hutchinson's trace estimate with Rademacher probes: mean, standard error, matvecs."""
    values = []
    for sub in jax.random.split(key, num_samples):
        z = tree.rademacher_like(sub, params)
        if op.matvec_fn is not None:
            values.append(_quadratic_form(op.matvec_fn, z))
        else:
            values.append(tree.vdot(z, op.apply_unchecked(z)))
    values = np.asarray(jnp.stack(values), np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(num_samples)), num_samples


# =========================================================================================
# Comparing optimizers
# =========================================================================================

def measurement_subset(data, num_examples: int | None, *, key=None):
    """A fixed subset of ``num_examples`` examples of an in-memory batch ``data``.

    Random (without replacement) with ``key``, else the first ``num_examples``. ``None`` or a
    size at least the data's returns ``data`` unchanged.
    """
    n = int(jax.tree.leaves(data)[0].shape[0])
    if num_examples is None or num_examples >= n:
        return data
    if num_examples < 1:
        raise ValueError(f"num_examples={num_examples} must be positive.")
    idx = (jnp.arange(num_examples) if key is None
           else jnp.sort(jax.random.permutation(key, n)[:num_examples]))
    return jax.tree.map(lambda a: jnp.asarray(a)[idx], data)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _LeafLoss:
    """``loss(params, batch)`` as a function of the parameters' leaves (a list of arrays)."""

    loss: Callable
    treedef: Any

    def __call__(self, leaves, batch):
        return self.loss(jax.tree.unflatten(self.treedef, leaves), batch)


@dataclasses.dataclass(frozen=True)
class OptimizerRun:
    """One optimizer's training run in :func:`compare_optimizers`.

    Attributes:
      name: the label.
      info: what the optimizer is (:class:`OptimizerInfo`).
      train_loss: ``(num_steps,)`` the minibatch loss at every step (before its update).
      eval_steps, eval_loss, eval_accuracy: loss and accuracy on the full data at every
        measurement (accuracy ``NaN`` when not a classification problem).
      log: the :class:`SharpnessLog`.
      train_time: seconds spent in training steps; measure_time: seconds measuring.
      diverged: the loss became non-finite (training stopped there).
    """

    name: str
    info: OptimizerInfo
    train_loss: np.ndarray
    eval_steps: np.ndarray
    eval_loss: np.ndarray
    eval_accuracy: np.ndarray
    log: SharpnessLog
    train_time: float
    measure_time: float
    diverged: bool = False

    @property
    def threshold(self) -> float | None:
        return self.info.threshold()

    def summary(self) -> dict:
        """Final and max sharpness (raw and preconditioned), loss, accuracy, times, matvecs."""
        raw, pre = self.log["lambda_max"], self.log["precond_lambda_max"]

        def last(a):
            a = a[np.isfinite(a)] if a.size else a
            return float(a[-1]) if a.size else None

        def peak(a):
            a = a[np.isfinite(a)] if a.size else a
            return float(a.max()) if a.size else None
        return {"optimizer": self.name, "kind": self.info.kind,
                "learning_rate": self.info.learning_rate, "threshold": self.threshold,
                "threshold_applies_to": self.info.threshold_quantity,
                "final_sharpness": last(raw), "max_sharpness": peak(raw),
                "final_precond_sharpness": last(pre), "max_precond_sharpness": peak(pre),
                "final_loss": last(self.eval_loss), "final_accuracy": last(self.eval_accuracy),
                "train_time": self.train_time, "measure_time": self.measure_time,
                "num_matvecs": self.log.total_matvecs, "diverged": self.diverged}

    def to_dict(self) -> dict:
        return _json_value({"name": self.name, "info": self.info.to_dict(),
                            "train_loss": self.train_loss, "eval_steps": self.eval_steps,
                            "eval_loss": self.eval_loss, "eval_accuracy": self.eval_accuracy,
                            "log": self.log.to_dict(), "train_time": self.train_time,
                            "measure_time": self.measure_time, "diverged": self.diverged})


@dataclasses.dataclass(frozen=True)
class OptimizerComparison:
    """The result of :func:`compare_optimizers`: one :class:`OptimizerRun` per optimizer."""

    runs: dict
    config: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> list:
        return [run.summary() for run in self.runs.values()]

    def table(self) -> str:
        """A Markdown table of :meth:`summary` (one row per optimizer)."""
        cols = [("optimizer", "optimizer", "{}"), ("lr", "learning_rate", "{:.3g}"),
                ("threshold", "threshold", "{:.4g}"), ("final λmax", "final_sharpness", "{:.4g}"),
                ("max λmax", "max_sharpness", "{:.4g}"),
                ("final λmax(P⁻¹H)", "final_precond_sharpness", "{:.4g}"),
                ("max λmax(P⁻¹H)", "max_precond_sharpness", "{:.4g}"),
                ("final loss", "final_loss", "{:.4g}"), ("final acc", "final_accuracy", "{:.3f}"),
                ("train s", "train_time", "{:.2f}"), ("measure s", "measure_time", "{:.2f}"),
                ("HVPs", "num_matvecs", "{}")]
        lines = ["| " + " | ".join(c[0] for c in cols) + " |",
                 "|" + "|".join("---" for _ in cols) + "|"]
        for row in self.summary():
            cells = ["—" if row[key] is None else fmt.format(row[key]) for _, key, fmt in cols]
            if row["diverged"]:
                cells[0] += " (diverged)"
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"type": "OptimizerComparison", "config": _json_value(self.config),
                "summary": _json_value(self.summary()),
                "runs": {n: r.to_dict() for n, r in self.runs.items()}}


def _accuracy(outputs, batch):
    labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
    if labels is None or outputs.ndim != 2 or labels.ndim != 1 or \
            not jnp.issubdtype(labels.dtype, jnp.integer):
        return jnp.asarray(jnp.nan, jnp.float32)
    return jnp.mean(jnp.argmax(outputs, axis=-1) == labels)


def _validate_compare(data, optimizers, num_steps, every, batch_size):
    if not isinstance(optimizers, Mapping) or not optimizers:
        raise TypeError("optimizers must be a non-empty dict {name: optax optimizer}.")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be a positive integer.")
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every={every!r} must be a positive integer.")
    n = int(jax.tree.leaves(data)[0].shape[0])
    if batch_size is not None and not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must lie in [1, {n}] (the data has {n} "
                         "examples), or be None for full-batch training.")
    return n


def _batch_order(key, n, batch_size, num_steps):
    """Indices of every step's minibatch: epochs of a fixed random permutation."""
    if batch_size is None:
        return None
    per_epoch = n // batch_size
    epochs = -(-num_steps // per_epoch)
    keys = jax.random.split(key, epochs)
    perms = [np.asarray(jax.random.permutation(k, n))[:per_epoch * batch_size] for k in keys]
    return np.concatenate(perms).reshape(-1, batch_size)[:num_steps]


def compare_optimizers(obj: Objective, optimizers: Mapping, *,
                       num_steps: int, every: int = 10, key, batch_size: int | None = None,
                       measure_data=None, measure_size: int | None = 512,
                       quantities=("lambda_max",), tol: float = 1e-3,
                       learning_rates: Mapping | None = None, log_dir=None,
                       accuracy_fn: Callable | None = None, k: int = 10,
                       overwrite: bool = False, verbose: bool = False) -> OptimizerComparison:
    """Train one model with several optimizers and track their sharpness side by side.

    Every optimizer starts from the same initialisation (``obj.params``) and sees the same
    minibatches of ``obj.data`` in the same order (full batch when ``batch_size`` is None),
    minimising ``obj.loss``. Every
    ``every`` steps (and at the last step) a :class:`SharpnessTracker` measures
    ``lambda_max`` of the training loss on a fixed measurement set (and, for adaptive
    optimizers, the preconditioned sharpness with ``P`` from the optimizer state), and the
    loss and accuracy on the full ``data`` are recorded. Thresholds come from
    :func:`optimizer_info` (probed) unless ``learning_rates`` are given.

    Cost: ``num_steps`` training steps per optimizer plus about ``num_steps / every``
    warm-started measurements (a few HVPs each on the measurement set; see
    :class:`SharpnessTracker`). Memory: one model and optimizer state at a time.

    Args:
      obj: the model and its training data: ``obj.params`` is the initialisation, the data
        (in memory: one batch or a list of batches, concatenated) is trained on, and with
        ``obj.predict`` the accuracy is recorded too (e.g.
        ``Objective.from_nnx(MyNet(rngs=nnx.Rngs(0)), loss_fn, (x, y))``).
      optimizers: ``{name: optax optimizer}``.
      num_steps: training steps per optimizer.
      every: measurement period.
      key: a ``jax.random`` key (data order, measurement set, solver).
      batch_size: minibatch size (``None``: full-batch gradient descent).
      measure_data: the measurement set (default: ``measure_size`` random examples).
      measure_size: size of the default measurement set (``None``: all data).
      quantities: tracker quantities (see :data:`QUANTITIES`).
      tol: eigenvalue tolerance (relative residual).
      learning_rates: ``{name: eta}`` overriding the probed step sizes (for thresholds).
      log_dir: optional folder for one ``<name>.jsonl`` log per optimizer.
      overwrite: replace existing logs in ``log_dir`` (else an existing log raises).
      accuracy_fn: ``accuracy_fn(outputs, batch) -> scalar``; default: argmax accuracy
        for integer labels in ``batch[1]``, ``NaN`` otherwise.
      k: top-k size for ``"top_k"``/``"grad_overlap"``.
      verbose: print one line per optimizer.

    Returns:
      An :class:`OptimizerComparison` (``.table()``, ``.summary()``, ``.to_dict()``,
      :func:`plot_comparison`).

    Raises:
      TypeError: ``optimizers`` is not a non-empty dict.
      ValueError: a bad ``num_steps``, ``every`` or ``batch_size``, or an existing log in
        ``log_dir`` without ``overwrite``.
    """
    data = _training_data(obj)
    n = _validate_compare(data, optimizers, num_steps, every, batch_size)
    _, k_data, k_measure, k_track = jax.random.split(key, 4)
    params0, full_loss = obj.params, obj.loss
    if measure_data is None:
        measure_data = measurement_subset(data, measure_size, key=k_measure)
    order = _batch_order(k_data, n, batch_size, num_steps)
    evaluate = _make_eval(obj, accuracy_fn or _accuracy)
    runs = {}
    for name, opt in optimizers.items():
        lr = (learning_rates or {}).get(name)
        info = optimizer_info(opt, learning_rate=lr)
        log_path = None if log_dir is None else Path(log_dir) / f"{safe_name(name)}.jsonl"
        tracker = SharpnessTracker(full_loss, measure_data, every=every, log_path=log_path,
                                   quantities=quantities, key=k_track, k=k, tol=tol,
                                   optimizer=info, resume=False, overwrite=overwrite)
        runs[name] = _train_one(name, opt, info, full_loss, params0, data, order, num_steps,
                                tracker, evaluate)
        if verbose:
            s = runs[name].summary()
            print(f"{name}: final loss {s['final_loss']:.4g}, final sharpness "
                  f"{s['final_sharpness']}, {s['num_matvecs']} HVPs, "
                  f"{s['train_time']:.1f}+{s['measure_time']:.1f} s")
    config = {"num_steps": num_steps, "every": every, "batch_size": batch_size,
              "measure_size": int(jax.tree.leaves(measure_data)[0].shape[0]),
              "num_examples": n, "quantities": list(quantities), "tol": tol}
    return OptimizerComparison(runs, config)


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _training_data(obj: Objective):
    """The objective's data as one in-memory batch (a list of batches is concatenated)."""
    if obj.streaming:
        raise ValueError("compare_optimizers trains on in-memory data; this objective streams "
                         "its data. Pass the data as one batch or a list of batches.")
    batches = obj.data if isinstance(obj.data, list) else [obj.data]
    return jax.tree.map(lambda *xs: jnp.concatenate([jnp.asarray(x) for x in xs]), *batches)


def _make_eval(obj: Objective, accuracy_fn):
    if not obj.has_outputs:
        return jax.jit(lambda params, batch: (obj.loss(params, batch),
                                              jnp.asarray(jnp.nan, jnp.float32)))

    @jax.jit
    def evaluate(params, batch):
        out = obj.predict(params, batch)
        return obj.output_loss(out, batch), accuracy_fn(out, batch)
    return evaluate


def _make_train_step(full_loss, opt):
    @jax.jit
    def step(params, opt_state, data, idx):
        batch = data if idx is None else jax.tree.map(lambda a: a[idx], data)
        loss, grads = jax.value_and_grad(full_loss)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


def _train_one(name, opt, info, full_loss, params, data, order, num_steps, tracker, evaluate):
    """Train, measuring at every due step; times training and measuring separately."""
    step_fn = _make_train_step(full_loss, opt)
    opt_state = opt.init(params)
    losses, evals = [], []
    train_time = measure_time = 0.0
    diverged = False
    segment = time.perf_counter()
    for step in range(num_steps + 1):
        if step % tracker.every == 0 or step == num_steps:
            jax.block_until_ready((params, losses[-1:]))
            now = time.perf_counter()
            train_time += now - segment
            tracker.update(step, params, opt_state=opt_state, learning_rate=info.learning_rate,
                           force=True)
            loss, acc = evaluate(params, data)
            evals.append((step, float(loss), float(acc)))
            measure_time += time.perf_counter() - now
            diverged = bool(losses) and not np.isfinite(float(losses[-1]))
            segment = time.perf_counter()
        if step == num_steps or diverged:
            break
        idx = None if order is None else jnp.asarray(order[step])
        params, opt_state, loss = step_fn(params, opt_state, data, idx)
        losses.append(loss)
    ev = np.array(evals, dtype=np.float64).reshape(-1, 3)
    train_loss = np.asarray(jnp.stack(losses), np.float64) if losses else np.zeros(0)
    return OptimizerRun(name, info, train_loss, ev[:, 0].astype(int), ev[:, 1], ev[:, 2],
                        tracker.log, train_time, measure_time, diverged)


# =========================================================================================
# Plots (take results and an optional ax, return the ax; never savefig)
# =========================================================================================

def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(6, 3.5))
    return ax


_YLABELS = {"lambda_max": "sharpness λmax(H)",
            "precond_lambda_max": "preconditioned sharpness λmax(P⁻¹ᐟ²HP⁻¹ᐟ²)",
            "lambda_min": "λmin(H)", "trace": "trace(H)", "grad_overlap": "gradient overlap"}


def plot_sharpness(log: SharpnessLog, ax=None, *, learning_rate: float | None = None,
                   momentum: float = 0.0, kind: str = "heavy_ball",
                   quantity: str = "lambda_max", threshold: float | None = None,
                   label: str | None = None, color=None, show_threshold: bool = True):
    """Sharpness against training step, with the stability threshold as a dashed line.

    The threshold is ``threshold`` if given, else :func:`stability_threshold` of
    ``learning_rate`` (``2/eta`` for gradient descent), else the ``threshold`` (or
    ``precond_threshold``) column of the log when it has one.

    Args:
      log: a :class:`SharpnessLog` (``tracker.log`` or :func:`read_sharpness_log`).
      ax: a matplotlib axes (a new figure when ``None``).
      learning_rate, momentum, kind: for the threshold line.
      quantity: the column to plot (``"lambda_max"``, ``"precond_lambda_max"``, ...).
      threshold: an explicit threshold value.
      label, color: for the curve.
      show_threshold: draw the threshold line.

    Returns:
      The axes.
    """
    ax = _axes(ax)
    steps, values = log.steps, log[quantity]
    if values.ndim == 2:
        values = values[:, 0]
    line, = ax.plot(steps, values, marker=".", ms=3, lw=1.2, color=color,
                    label=label or quantity)
    if show_threshold:
        _draw_threshold(ax, log, steps, quantity, learning_rate, momentum, kind, threshold,
                        line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel(_YLABELS.get(quantity, quantity))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def _draw_threshold(ax, log, steps, quantity, learning_rate, momentum, kind, threshold, color):
    if threshold is None and learning_rate is not None:
        threshold = stability_threshold(learning_rate, momentum=momentum, kind=kind)
    if threshold is not None:
        name = "2/η" if momentum == 0 and learning_rate is not None else "threshold"
        ax.axhline(threshold, ls="--", lw=1, color=color, label=f"{name} = {threshold:.4g}")
        return
    column = "precond_threshold" if quantity == "precond_lambda_max" else "threshold"
    values = log[column] if len(log) else np.array([])
    if values.size and np.isfinite(values).any():
        ax.plot(steps, values, ls="--", lw=1, color=color, drawstyle="steps-post",
                label=f"threshold ({np.nanmax(values):.4g})")


def plot_comparison(comparison: OptimizerComparison, axes=None):
    """Overlay the runs of :func:`compare_optimizers`: loss, sharpness, preconditioned
    sharpness and accuracy against step, thresholds dashed in each run's colour.

    Args:
      comparison: an :class:`OptimizerComparison`.
      axes: four matplotlib axes (a new 2x2 figure when ``None``).

    Returns:
      The four axes (``axes[0].figure`` is the figure).
    """
    if axes is None:
        import matplotlib.pyplot as plt
        _, grid = plt.subplots(2, 2, figsize=(11, 7))
        axes = grid.ravel()
    ax_loss, ax_raw, ax_pre, ax_acc = axes
    for i, (name, run) in enumerate(comparison.runs.items()):
        color = f"C{i}"
        ax_loss.plot(np.arange(len(run.train_loss)), run.train_loss, color=color, lw=1,
                     label=name)
        raw_thr = None if run.info.adaptive else run.threshold
        plot_sharpness(run.log, ax_raw, label=name, color=color, threshold=raw_thr,
                       show_threshold=raw_thr is not None)
        if run.info.adaptive and "precond_lambda_max" in run.log:
            plot_sharpness(run.log, ax_pre, quantity="precond_lambda_max", label=name,
                           color=color, threshold=run.threshold,
                           show_threshold=run.threshold is not None)
        ax_acc.plot(run.eval_steps, run.eval_accuracy, marker=".", color=color, label=name)
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    ax_raw.set_title("sharpness (dashed: 2/η or (2+2β)/η)")
    ax_raw.set_yscale("log")
    ax_pre.set_title("preconditioned sharpness (dashed: adaptive threshold)")
    if ax_pre.has_data():
        ax_pre.set_yscale("log")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy (full data)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return axes
