"""The sharpness as an optax transformation: measured inside the compiled train step and
stored in the optimizer state (modelled on ``optax.snapshot``/``optax.monitor``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from hessian_tools import tree
from hessian_tools._callables import as_pytree_fn
from hessian_tools._checks import check_key
from hessian_tools.data import group_batches
from hessian_tools.linalg import lanczos_tridiag, ritz_pairs
from hessian_tools.operators import _mean_grad
from hessian_tools.algebra import CongruenceMatvec, inverse_sqrt
from hessian_tools.training.optimizers import adaptive_preconditioner, optimizer_info

__all__ = ['SharpnessMonitorState', 'sharpness_monitor']


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


def _lanczos_top(matvec, v0, num_steps):
    """Top Ritz pair after ``num_steps`` Lanczos steps from ``v0`` (traceable)."""
    dec = lanczos_tridiag(matvec, v0, num_steps=num_steps)
    pairs = ritz_pairs(dec)
    return pairs.values[-1], pairs.residuals[-1], pairs.vector(dec, -1)


def sharpness_monitor(loss: Callable, measure_data, *, key, every: int = 10, num_steps: int = 10,
                      name: str = "sharpness", optimizer=None,
                      preconditioned: bool | str = "auto"):
    """An optax transformation that measures the sharpness every ``every`` updates.

    Modelled on ``optax.snapshot``/``optax.monitor``: it passes updates through unchanged
    (or, with ``optimizer``, wraps that optimizer and passes on *its* updates) and stores the
    latest ``lambda_max(H)`` of ``loss`` on ``measure_data`` at the current params in its
    state, readable with ``optax.tree.get(state, name)``. Each measurement runs
    ``num_steps`` Lanczos steps from the previous measurement's top Ritz vector, so the
    estimate keeps improving across measurements (a restarted Lanczos spread over
    training). With ``optimizer`` given and adaptive, it also stores
    ``name + "_preconditioned"``: ``lambda_max(P^{-1/2} H P^{-1/2})`` with ``P`` from the
    wrapped optimizer's new state. Everything runs inside the caller's ``jit`` (a
    ``lax.cond`` skips the work between measurements).

    Cost per measurement: one linearisation of the gradient (about one gradient pass) plus
    ``num_steps`` HVPs on ``measure_data`` (twice with the preconditioned value); memory
    ``(num_steps + 2) x P`` and one or two warm-start vectors in the state. The data are
    compiled into the train step as constants: keep ``measure_data`` small (a subset).
    Accuracy: ``name + "_residual"`` holds the Lanczos residual estimate, an upper bound on
    the eigenvalue error.

    Args:
      loss: ``loss(params, batch) -> scalar``.
      measure_data: one batch or a list of batches.
      every: measure when ``count % every == 0`` (the first update measures).
      num_steps: Lanczos steps per measurement.
      name: the key under which the value is stored.
      key: a ``jax.random`` key for the initial random vector (required).
      optimizer: optional optax transformation to wrap (needed for the preconditioned value).
      preconditioned: ``"auto"`` (if ``optimizer`` is adaptive), ``True`` or ``False``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its ``update`` requires ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> A = jnp.diag(jnp.array([3.0, 1.0, 0.5]))
      >>> loss = lambda p, batch: 0.5 * p @ A @ p
      >>> tx = sharpness_monitor(loss, jnp.zeros((1, 1)), every=1, num_steps=3,
      ...                        key=jax.random.key(0),
      ...                        optimizer=optax.sgd(0.1))
      >>> params = jnp.ones(3); state = tx.init(params)
      >>> updates, state = tx.update(jax.grad(loss)(params, None), state, params)
      >>> round(float(optax.tree.get(state, "sharpness")), 4)
      3.0
    """
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every={every!r} must be a positive integer.")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be a positive integer.")
    groups = group_batches(measure_data if isinstance(measure_data, list) else [measure_data])
    check_key(key, "sharpness_monitor")
    pytree_loss = as_pytree_fn(loss)
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
            lam, res, vec = _lanczos_top(lin, state.warm_vector, num_steps)
            meas = {name: lam, name + "_residual": res}
            pvec = state.precond_warm_vector
            if preconditioned:
                p = adaptive_preconditioner(inner_state, info=info)
                d = inverse_sqrt(p, params) if p is not None else tree.zeros_like(params)
                lam_p, res_p, pvec = _lanczos_top(CongruenceMatvec(lin, d), pvec, num_steps)
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
