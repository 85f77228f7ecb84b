"""MINRES on pytrees (Paige & Saunders 1975): a pure solver of a matvec, for symmetric and
possibly indefinite or singular systems (Newton steps at saddles).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools.results._base import Result, Status

__all__ = ["MinresResult", "minres"]

_STATUS = {"residual": Status.converged, "least-squares": Status.least_squares,
           "breakdown": Status.breakdown, "zero rhs": Status.zero_rhs, "budget": Status.budget}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MinresResult(Result):
    """Output of :func:`minres`.

    Attributes:
      x: the solution estimate (a pytree like ``b``; not serialised).
      residual_norm: ``||b - A x||`` (MINRES's recurrence estimate).
      normal_residual: ``||A r|| / ||A b||`` (of the previous iterate): small at a
        least-squares solution of an inconsistent (singular) system.
      num_matvecs: products spent.
      status: ``converged`` (``||r|| <= rtol ||b||``), ``least_squares``, ``breakdown``
        (invariant Krylov space: ``x`` is the exact minimiser over it), ``zero_rhs`` or
        ``budget``; ``converged`` (a bool) says whether any stopping test was met.
      anorm: the estimate of ``||A||`` (Frobenius norm of the projected matrix, or the hint).
      ab_norm: ``||A b||`` (from the first step).
    """

    x: Any = None
    residual_norm: float
    normal_residual: float
    status: Status
    anorm: float = 0.0
    ab_norm: float = 0.0

    _skip = ("x",)

    @property
    def converged(self) -> bool:
        """A stopping test was met (not just the budget)."""
        return self.status.ok


def _result(x, rnorm, normal, used, reason, anorm, ab_norm=0.0) -> MinresResult:
    return MinresResult(x=x, residual_norm=float(rnorm), normal_residual=float(normal),
                        num_matvecs=int(used), status=_STATUS[reason], anorm=float(anorm),
                        ab_norm=float(ab_norm))


def _minres_init(b):
    beta1 = tree.norm(b)
    safe = jnp.where(beta1 > 0, beta1, 1.0)
    zeros = tree.zeros_like(b)
    scalars = dict(beta=beta1, oldb=jnp.zeros_like(beta1), dbar=jnp.zeros_like(beta1),
                   epsln=jnp.zeros_like(beta1), phibar=beta1, cs=-jnp.ones_like(beta1),
                   sn=jnp.zeros_like(beta1), tnorm2=jnp.zeros_like(beta1), k=jnp.zeros((), int))
    return dict(v=tree.scale(1.0 / safe, b), r1=b, r2=b, w=zeros, w2=zeros, x=zeros,
                x_prev=zeros, **scalars)


@jax.jit
def _minres_step(s, av, anorm_hint):
    """One MINRES iteration given ``av = A v_k`` (Paige & Saunders 1975; scipy's recurrences)."""
    beta, oldb = s["beta"], s["oldb"]
    y = tree.sub(av, tree.scale(jnp.where(s["k"] > 0, beta / jnp.where(oldb > 0, oldb, 1.0),
                                          0.0), s["r1"]))
    alfa = tree.vdot(s["v"], y)
    y = tree.sub(y, tree.scale(alfa / beta, s["r2"]))
    new_beta = tree.norm(y)
    tnorm2 = s["tnorm2"] + alfa ** 2 + jnp.where(s["k"] > 0, beta ** 2, 0.0) + new_beta ** 2
    delta = s["cs"] * s["dbar"] + s["sn"] * alfa            # apply the previous rotation
    gbar = s["sn"] * s["dbar"] - s["cs"] * alfa
    epsln, dbar = s["sn"] * new_beta, -s["cs"] * new_beta
    root = jnp.hypot(gbar, dbar)
    gamma = jnp.maximum(jnp.hypot(gbar, new_beta), jnp.finfo(beta.dtype).tiny)
    cs, sn = gbar / gamma, new_beta / gamma                  # the new rotation
    phi, phibar = cs * s["phibar"], sn * s["phibar"]
    w = tree.scale(1.0 / gamma, tree.sub(tree.sub(s["v"], tree.scale(s["epsln"], s["w2"])),
                                         tree.scale(delta, s["w"])))
    out = dict(v=tree.scale(1.0 / jnp.where(new_beta > 0, new_beta, 1.0), y), r1=s["r2"], r2=y,
               w=w, w2=s["w"], x=tree.axpy(phi, w, s["x"]), x_prev=s["x"], beta=new_beta,
               oldb=beta, dbar=dbar, epsln=epsln, phibar=phibar, cs=cs, sn=sn, tnorm2=tnorm2,
               k=s["k"] + 1)
    anorm = jnp.maximum(jnp.maximum(jnp.sqrt(tnorm2), anorm_hint), jnp.finfo(beta.dtype).tiny)
    # ||r_k||, ||A r_{k-1}||, and beta_{k+1}, gamma_k relative to ||A||
    return out, (phibar, s["phibar"] * root, new_beta / anorm, gamma / anorm, anorm)


def minres(matvec: Callable, b, *, num_matvecs: int = 100, rtol: float = 1e-6,
           anorm_hint: float = 0.0, callback: Callable | None = None) -> MinresResult:
    """Solve ``A x = b`` (or ``min ||A x - b||``) for symmetric, possibly indefinite or
    singular ``A``, by MINRES (Paige & Saunders 1975), on pytree vectors.

    The iterate minimises ``||b - A x||`` over the Krylov space ``K_k(A, b)``, so the
    residual never grows; for a singular, inconsistent system it converges to a
    least-squares solution. The loop runs on the host with a compiled update, calling
    ``matvec`` once per step (as :func:`hessian_tools.linalg.lanczos_eigs` does). No
    reorthogonalisation: memory is 8 vectors. On a singular, inconsistent system the iterate
    that meets the least-squares test is returned before MINRES can drift along the null
    space (Choi, Paige & Saunders 2011).

    Args:
      matvec: ``v -> A v`` for symmetric ``A`` on pytrees shaped like ``b``.
      b: the right-hand side (any pytree of floating arrays).
      num_matvecs: the matvec budget.
      rtol: stop when ``||r|| <= rtol ||b||`` or ``||A r|| <= rtol ||A b||`` (the second is
        the least-squares test, Newton-MR's inexactness condition).
      anorm_hint: a known estimate of ``||A||`` (e.g. from an earlier solve). Breakdown and
        singularity are judged relative to it; without it, a ``b`` lying in the (near)
        null space of ``A`` cannot be told from a tiny ``A``.
      callback: called as ``callback(k, residual_norm)`` after each step (the recurrence's
        ``||r_k||``), e.g. to record the residual history.

    Returns:
      A :class:`MinresResult`. Cost: ``num_matvecs`` matvecs at most; one host sync per step.

    Examples:
      >>> import numpy as np, jax.numpy as jnp
      >>> A = jnp.diag(jnp.array([3.0, 1.0, -2.0]))
      >>> res = minres(lambda v: A @ v, jnp.array([3.0, 1.0, 4.0]), rtol=1e-10)
      >>> np.round(np.asarray(res.x), 4).tolist(), res.status.name
      ([1.0, 1.0, -2.0], 'breakdown')
    """
    state = _minres_init(b)
    bnorm = float(state["beta"])
    if bnorm == 0.0:
        return _result(state["x"], 0.0, 0.0, 0, "zero rhs", anorm_hint)
    tiny = 100 * float(jnp.finfo(state["beta"].dtype).eps)
    rnorm, normal, ab_norm, prev_rnorm, anorm = bnorm, 1.0, None, bnorm, anorm_hint
    hint = jnp.asarray(anorm_hint, state["beta"].dtype)
    for k in range(num_matvecs):
        state, stats = _minres_step(state, matvec(state["v"]), hint)
        rnorm, ar_norm, rel_beta, rel_gamma, anorm = (float(a) for a in stats)
        ab_norm = ar_norm if ab_norm is None else ab_norm       # ||A b|| from the first step
        if callback is not None:
            callback(k + 1, rnorm)
        normal = ar_norm / max(ab_norm, np.finfo(float).tiny)
        done = _minres_stop(k, rnorm <= rtol * bnorm, normal <= rtol, rel_gamma <= tiny,
                            rel_beta <= tiny)
        if done == "least-squares":
            # x_{k-1} is a least-squares solution; on a singular, inconsistent system the
            # next iterate can blow up along the null space (gamma_k -> 0), so return x_{k-1}
            return _result(state["x_prev"], prev_rnorm, normal, k + 1, done, anorm, ab_norm)
        if done:
            return _result(state["x"], rnorm, normal, k + 1, done, anorm, ab_norm)
        prev_rnorm = rnorm
    return _result(state["x"], rnorm, normal, num_matvecs, "budget", anorm, ab_norm or 0.0)


def _minres_stop(k, small_residual, small_normal, singular, breakdown):
    """Which stopping test fired (``""`` for none), in order of precedence."""
    if singular:                     # gamma_k ~ 0: the new direction lies in the null space
        return "least-squares"
    if small_residual:
        return "residual"
    if k > 0 and small_normal:
        return "least-squares"
    return "breakdown" if breakdown else ""
