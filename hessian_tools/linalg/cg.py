"""Conjugate gradients on pytrees (Hestenes & Stiefel 1952): a pure solver of a matvec, for
symmetric positive (semi-)definite systems.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools.results._base import Result, Status

__all__ = ["CGResult", "cg"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CGResult(Result):
    """Output of :func:`cg`.

    Attributes:
      x: the solution estimate (a pytree like ``b``; not serialised).
      residual_norm: ``||b - A x||`` from the recurrence.
      residual_norms: the recurrence's ``||r_i||`` for ``i = 0..k`` (``||r_0|| = ||b||``).
      status: ``converged`` (``||r|| <= rtol ||b||``), ``zero_rhs``, ``negative_curvature``
        (a direction with ``p^T A p <= 0``: ``x`` is the last iterate before it) or
        ``budget``.
      num_matvecs: products spent.
    """

    x: Any = None
    residual_norm: float
    residual_norms: np.ndarray
    status: Status

    _arrays = ("residual_norms",)
    _skip = ("x",)


@jax.jit
def _cg_step(state, ap):
    """One CG iteration given ``ap = A p``; returns the state and ``(||r||^2, p^T A p,
    ||p||^2)``."""
    x, r, p, rr = state
    pap = tree.vdot(p, ap)
    alpha = rr / jnp.where(pap > 0, pap, 1.0)
    x, r = tree.axpy(alpha, p, x), tree.axpy(-alpha, ap, r)
    rr_new = tree.vdot(r, r)
    p = tree.axpy(rr_new / jnp.where(rr > 0, rr, 1.0), p, r)
    return (x, r, p, rr_new), (rr_new, pap, tree.vdot(state[2], state[2]))


def cg(matvec: Callable, b, *, num_matvecs: int = 100, rtol: float = 1e-6,
       callback: Callable | None = None) -> CGResult:
    """Solve ``A x = b`` for symmetric positive semi-definite ``A`` by conjugate gradients,
    on pytree vectors, from ``x_0 = 0``.

    Each iterate minimises the ``A``-norm of the error over the Krylov space
    ``K_k(A, b)``; the loop runs on the host with a compiled update, one product per step,
    no reorthogonalisation (memory: 4 vectors). On a singular but consistent system
    (``b`` in the range of ``A``) the iterates stay in the range and converge to the
    minimum-norm solution. A direction with ``p^T A p <= 0`` (an indefinite operator, or
    an inconsistent singular system) stops the iteration with ``Status.negative_curvature``
    and the last good iterate.

    Args:
      matvec: ``v -> A v`` on pytrees shaped like ``b``.
      b: the right-hand side.
      num_matvecs: the budget.
      rtol: stop when ``||r|| <= rtol ||b||`` (the recurrence's residual).
      callback: called as ``callback(k, residual_norm)`` after each step.

    Returns:
      A :class:`CGResult`. Cost: at most ``num_matvecs`` products; one host sync per step.

    Examples:
      >>> import numpy as np, jax.numpy as jnp
      >>> A = jnp.diag(jnp.array([3.0, 1.0, 2.0]))
      >>> res = cg(lambda v: A @ v, jnp.array([3.0, 1.0, 4.0]), rtol=1e-10)
      >>> np.round(np.asarray(res.x), 6).tolist(), res.status.name, res.num_matvecs
      ([1.0, 1.0, 2.0], 'converged', 3)
    """
    bnorm = float(tree.norm(b))
    zeros = tree.zeros_like(b)
    if bnorm == 0.0:
        return CGResult(x=zeros, residual_norm=0.0, residual_norms=np.zeros(1),
                        status=Status.zero_rhs)
    state = (zeros, b, b, jnp.asarray(bnorm ** 2, jnp.result_type(*jax.tree.leaves(b))))
    history, status, k = [bnorm], Status.budget, 0
    tiny = 100 * float(jnp.finfo(state[3].dtype).eps)
    anorm = 0.0                                       # running max of p^T A p / ||p||^2
    for k in range(1, num_matvecs + 1):
        new, (rr, pap, pp) = _cg_step(state, matvec(state[2]))
        rr, pap, pp = float(rr), float(pap), float(pp)
        anorm = max(anorm, abs(pap) / pp) if pp > 0 else anorm
        if not pap > tiny * anorm * pp:              # p^T A p <= 0 (to rounding), or NaN
            status = Status.negative_curvature
            break
        state = new
        history.append(rr ** 0.5)
        if callback is not None:
            callback(k, history[-1])
        if history[-1] <= rtol * bnorm:
            status = Status.converged
            break
    return CGResult(x=state[0], residual_norm=history[-1], residual_norms=np.asarray(history),
                    status=status, num_matvecs=k)
