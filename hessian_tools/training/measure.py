"""One sharpness measurement: the top eigenvalue(s) of the (preconditioned) Hessian at a point,
warm-startable from the previous measurement.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from hessian_tools.algebra import congruence, inverse_sqrt
from hessian_tools.linalg import WarmEigsResult, warm_eigs
from hessian_tools.objective import Objective
from hessian_tools.operators import CurvatureOperator, hessian
from hessian_tools import tree
from hessian_tools._checks import check_key
from hessian_tools.results import SharpnessResult, Status

__all__ = ['sharpness']


@jax.jit
def _apply(matvec_fn, v):
    return matvec_fn(v)


def _make_apply(op: CurvatureOperator, matvec_fn, d):
    """``v -> A v`` (or ``D A D v``, :func:`hessian_tools.algebra.congruence`): one compiled
    call, or a Python loop for streamed data."""
    if d is not None:
        op = congruence(op, d)
        matvec_fn = op.matvec_fn
    if matvec_fn is not None:
        return functools.partial(_apply, matvec_fn)
    return op.apply_unchecked


def _validate_solver_options(k, tol, krylov_dim, num_matvecs, min_steps):
    for name, value in (("k", k), ("krylov_dim", krylov_dim), ("num_matvecs", num_matvecs),
                        ("min_steps", min_steps)):
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
         tol, guard_tol=None, krylov_dim, num_matvecs, min_steps) -> WarmEigsResult:
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
                     krylov_dim=krylov_dim, num_matvecs=num_matvecs, min_steps=min_steps)


def sharpness(source, *, key, v0=None, k: int = 1, tol: float = 1e-3, preconditioner=None,
              krylov_dim: int = 40, num_matvecs: int = 300,
              min_steps: int = 3) -> SharpnessResult:
    """The sharpness ``lambda_max(A)`` (or ``lambda_max(P^{-1/2} A P^{-1/2})``) of an operator.

    ``A`` is ``source`` (a :class:`~hessian_tools.CurvatureOperator`), or the Hessian of an
    :class:`~hessian_tools.Objective`'s dataset-mean loss at its parameters (linearised
    when it fits: :func:`hessian_tools.hessian`). Lanczos with full reorthogonalisation
    runs from ``v0`` (warm start: a previous result, its ``warm_start`` or any vector) or from
    a random vector, and stops when the ``k`` top Ritz pairs have residual estimate
    ``<= tol * |lambda_max|`` and one *guard*, the next Ritz pair, has residual ``<= 10 tol *
    |lambda_max|``. The guard is part of the next warm start: if the runner-up overtakes the
    top eigenvalue between two measurements, it is found rather than missed. Pure: the same
    inputs and key give the same numbers.

    Cost: from a random start typically 15-60 HVPs (more when the top eigenvalues cluster);
    from a warm start at nearby parameters a handful. Each HVP is a forward-over-reverse pass
    over the data. Memory ``(krylov_dim + k + 3) x P`` for ``P`` parameters. Accuracy: the
    eigenvalue error is at most the residual, ``tol * |lambda_max|``, and about
    ``residual^2 / gap`` when the top eigenvalue is separated.

    Args:
      source: an Objective (its Hessian at its parameters) or a curvature operator.
      key: a ``jax.random`` key (the random start vector; with a warm start, only used to
        restart if the start vector spans too small an invariant subspace).
      v0: warm start: a :class:`SharpnessResult`, a vector shaped like the parameters, or a
        stacked basis of such vectors.
      k: how many top eigenvalues to converge.
      tol: relative residual tolerance.
      preconditioner: ``None`` or a pytree ``P`` like the parameters, positive (a
        diagonal preconditioner, e.g. from :func:`adaptive_preconditioner`).
      krylov_dim: basis size before an explicit restart.
      num_matvecs: budget of HVPs.
      min_steps: at least this many Lanczos steps, so that every warm-start direction
        (the top vectors and the guard) is in the Krylov space before convergence is
        declared.

    Returns:
      A :class:`SharpnessResult`.

    Raises:
      TypeError: ``source`` is neither an Objective nor an operator.
      ValueError: bad options, or no key.

    Examples:
      >>> import jax, jax.numpy as jnp, hessian_tools as ht
      >>> A = jnp.diag(jnp.array([3.0, 1.0, -2.0]))
      >>> obj = ht.Objective(lambda p, batch: 0.5 * p @ A @ p, jnp.zeros(3), jnp.zeros((1, 1)))
      >>> round(sharpness(obj, key=jax.random.key(0)).value, 4)
      3.0
    """
    _validate_solver_options(k, tol, krylov_dim, num_matvecs, min_steps)
    check_key(key, "sharpness")
    start = time.perf_counter()
    if isinstance(source, Objective):
        op = hessian(source)
    elif isinstance(source, CurvatureOperator):
        op = source
    else:
        raise TypeError(f"sharpness takes an Objective or a CurvatureOperator, got "
                        f"{type(source).__name__}: pass ht.Objective(loss, params, data).")
    like = op.params_like
    d = None if preconditioner is None else inverse_sqrt(preconditioner, jax.tree.map(
        lambda a: jnp.zeros(a.shape, a.dtype), like))
    res = _top(op, op.matvec_fn, like, _as_warm(v0, like), key, d=d, k_top=k,
               tol=tol, krylov_dim=krylov_dim, num_matvecs=num_matvecs, min_steps=min_steps)
    return SharpnessResult(value=float(res.values[0]), values=np.asarray(res.values, np.float64),
                           residuals=np.asarray(res.residuals, np.float64), vectors=res.vectors,
                           warm_start=res.warm, num_matvecs=res.num_matvecs,
                           status=Status.converged if res.converged else Status.budget,
                           preconditioned=d is not None, wall_time=time.perf_counter() - start,
                           seed=tree.key_bits(key), operator=op.kind)
