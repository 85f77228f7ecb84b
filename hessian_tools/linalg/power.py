"""Power iteration with deflation and shifts (PyHessian's method, kept for parity).

Slower than Lanczos (convergence rate ``|lambda_2 / lambda_1|`` per matvec instead of the
Chebyshev-accelerated rate of a Krylov space), but simple and a useful cross-check.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools.linalg._space import DeviceSpace, orthogonalize

__all__ = ["PowerResult", "power_iteration", "power_eigs"]


@dataclasses.dataclass(frozen=True)
class PowerResult:
    """Result of :func:`power_iteration` (values are of the *unshifted* operator)."""

    value: float
    vector: Any
    residual: float
    num_matvecs: int
    converged: bool


@functools.partial(jax.jit, static_argnames=("pin",))
def _power_step(v, w, deflate, shift, *, pin=None):
    """Given ``w = A v``: Rayleigh quotient and residual of ``B = P (A - shift I) P``."""
    w = tree.sub(tree.pin_vector(w, pin), tree.scale(shift, v))
    if deflate is not None:
        w = orthogonalize(w, deflate)
    value = tree.vdot(v, w)
    residual = tree.norm(tree.sub(w, tree.scale(value, v)))
    return tree.pin_vector(tree.scale(1.0 / tree.norm(w), w), pin), value, residual


@functools.partial(jax.jit, static_argnames=("pin",))
def _normalize(v, deflate, *, pin=None):
    if deflate is not None:
        v = orthogonalize(v, deflate)
    return tree.pin_vector(tree.scale(1.0 / tree.norm(v), v), pin)


def power_iteration(matvec: Callable, v0, *, num_matvecs: int = 100, tol: float = 1e-4,
                    shift: float = 0.0, deflate=None,
                    pin: tree.Placement | None = None) -> PowerResult:
    """The dominant eigenpair of ``B = P (A - shift I) P`` by power iteration.

    ``P`` projects out the rows of the stacked basis ``deflate`` (orthonormal, or zero rows,
    which project out nothing; Hotelling deflation as in PyHessian). Stops when the residual
    ``||B v - mu v|| <= tol * |mu|``.

    Args:
      matvec: ``v -> A v`` for symmetric ``A``.
      v0: start vector (pytree).
      num_matvecs: the budget of products.
      tol: relative residual tolerance.
      shift: ``sigma`` in ``A - sigma I`` (use ``sigma = lambda_max`` to reach ``lambda_min``).
      deflate: optional stacked basis of orthonormal vectors to project out.
      pin: the parameters' placement when they are sharded (vectors keep their shardings).

    Returns:
      A :class:`PowerResult` with ``value = mu + shift`` (an eigenvalue of ``A``). Cost: up to
      ``num_matvecs`` matvecs; memory: three vectors plus ``deflate``.
    """
    v = _normalize(v0, deflate, pin=pin)
    value = residual = jnp.nan
    for it in range(1, num_matvecs + 1):
        v_next, value, residual = _power_step(v, matvec(v), deflate, shift, pin=pin)
        if float(residual) <= tol * abs(float(value)):
            return PowerResult(float(value) + shift, v, float(residual), it, True)
        v = v_next
    return PowerResult(float(value) + shift, v, float(residual), num_matvecs, False)


def power_eigs(matvec: Callable, key, v_like, *, k: int, which: str = "largest",
               tol: float = 1e-4, num_matvecs: int = 1000) -> dict:
    """The ``k`` largest or smallest (algebraic) eigenpairs by power iteration + deflation.

    For ``"largest"``: power iteration finds the eigenvalue of largest magnitude; when that
    is negative the operator is shifted by it so the largest algebraic one dominates. For
    ``"smallest"`` the shift is ``lambda_max``. Each found vector is deflated. Start vectors
    are drawn on the host from ``key`` (as :func:`~hessian_tools.linalg.lanczos_eigs` does)
    and placed with the parameters' shardings.

    Memory: ``k`` found vectors (one buffer, also the returned ``vectors``) plus three
    working vectors: ``k + 3`` parameter-sized vectors in all.

    Returns:
      dict with ``values`` (descending for largest, ascending for smallest), ``vectors``
      (a stacked pytree, row ``i`` for ``values[i]``), ``residuals``, ``num_matvecs``,
      ``converged``.
    """
    space = DeviceSpace(v_like)
    rng = np.random.default_rng(tree.key_bits(key))
    found, values, residuals, used, ok = space.zeros(k), [], [], 0, True

    def run(shift, deflate):
        nonlocal used
        res = power_iteration(matvec, space.draw(rng), num_matvecs=num_matvecs, tol=tol,
                              shift=shift, deflate=deflate, pin=space.pin)
        used += res.num_matvecs
        return res

    shift = 0.0
    if which == "smallest":
        shift = run(0.0, None).value
        top = run(min(shift, 0.0), None) if shift < 0 else None
        shift = top.value if top is not None else shift
    for i in range(k):
        deflate = found if i else None              # rows not found yet are zero
        res = run(shift, deflate)
        if which == "largest" and res.value < shift:   # found the most negative: shift past it
            res = run(res.value, deflate)
        found = space.set_row(found, i, res.vector)
        values.append(res.value)
        residuals.append(res.residual)
        ok &= res.converged
    return {"values": np.array(values), "vectors": found, "residuals": np.array(residuals),
            "num_matvecs": used, "converged": ok}
