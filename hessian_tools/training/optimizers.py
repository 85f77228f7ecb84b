"""Optimizers as far as curvature is concerned: stability thresholds, the hyperparameters of an
optax optimizer (probed), and the diagonal preconditioner of adaptive ones read from their
state.

References: Cohen, Kaur, Li, Kolter & Talwalkar 2021 (edge of stability); Cohen et al. 2022
(adaptive gradient methods at the edge of stability).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Mapping

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np



from hessian_tools.results.training import OptimizerInfo, stability_threshold

__all__ = ["OptimizerInfo", "adaptive_preconditioner", "optimizer_info", "stability_threshold"]






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
        info = OptimizerInfo(kind="unknown")
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
        return OptimizerInfo(kind="adam",
                             learning_rate=_sig(eta, 4 if "learning_rate" not in inj else 6),
                             momentum=_sig(b1), b2=_sig(b2), eps=_sig(eps), adaptive=True)
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
        return OptimizerInfo(kind=kind, learning_rate=_sig(inj.get("learning_rate", -u0 / scale1)),
                             momentum=0.0, b2=_sig(b2), eps=_sig(eps), adaptive=adaptive)
    t1 = float(trace1[0].trace[0])
    t2 = float(_find_states(s2, ("TraceState",))[0].trace[0])
    beta, nesterov, eta = _probe_momentum(u0, u1, t1, t2, scale1, scale2)
    beta, eta = inj.get("momentum", beta), inj.get("learning_rate", eta)
    if kind == "sgd":
        kind = "nesterov" if nesterov else "momentum"
    return OptimizerInfo(kind=kind, learning_rate=_sig(eta), momentum=_sig(beta), b2=_sig(b2),
                         eps=_sig(eps), adaptive=adaptive)


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
      b2: explicit hyperparameters.
      eps: see ``b2``.

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
