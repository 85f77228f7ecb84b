"""Linear solves with a curvature operator: ``(A + damping I) x = b`` by conjugate gradients
or MINRES (Newton steps, influence functions ``H^{-1} g``, Laplace approximations)."""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools._checks import check_choice, check_count, check_positive, check_tol
from hessian_tools.algebra import shift
from hessian_tools.analysis.spectral import _check_operator
from hessian_tools.linalg.cg import cg
from hessian_tools.linalg.minres import minres
from hessian_tools.objective import check_finite
from hessian_tools.operators import CurvatureOperator
from hessian_tools.results import Status
from hessian_tools.results.toolbox import SolveResult

__all__ = ["DEFAULT_SOLVE_MATVECS", "default_solve_tol", "solve"]

DEFAULT_SOLVE_MATVECS = 1000


def default_solve_tol(dtype) -> float:
    """The default relative residual ``||r|| / ||b||``: 1e-10 in float64, 1e-5 otherwise."""
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def solve(op: CurvatureOperator, b, *, method: str = "auto", tol: float | None = None,
          num_matvecs: int = DEFAULT_SOLVE_MATVECS, damping: float = 0.0,
          verify: bool = True) -> SolveResult:
    """Solve ``(A + damping I) x = b`` for ``x`` shaped like the parameters.

    Methods:

    * ``"cg"``: conjugate gradients (:func:`hessian_tools.linalg.cg.cg`), for operators
      tagged positive semi-definite (``ht.gauss_newton``, ``ht.empirical_fisher``, their
      shifts by ``sigma >= 0``...). Fastest for PSD systems; on a singular but consistent
      system it converges to the minimum-norm solution.
    * ``"minres"``: MINRES (:func:`hessian_tools.linalg.minres.minres`), for any symmetric
      operator, indefinite or singular (a Hessian away from a minimum); on an
      inconsistent singular system it returns a least-squares solution
      (``Status.least_squares``).
    * ``"auto"`` (default): ``"cg"`` when the (damped) operator is tagged ``"psd"``, else
      ``"minres"``.

    Both start from ``x = 0`` and stop when the residual ``||b - (A + damping I) x||``
    (from the recurrence) is at most ``tol * ||b||``, or when the budget is spent
    (``Status.budget``: raise ``num_matvecs``, loosen ``tol``, or damp). ``damping`` is
    applied as :func:`hessian_tools.algebra.shift`.

    Accuracy: the returned ``true_residual_norm`` is ``||b - (A + damping I) x||`` from one
    more product (with ``verify``): the error is at most ``true_residual_norm /
    lambda_min(A + damping I)``. Convergence takes about ``sqrt(kappa) log(2 / tol)``
    products for CG on a condition number ``kappa``; damping bounds ``kappa``.

    Args:
      op: the operator.
      b: the right-hand side, a pytree shaped like the parameters (a gradient, say).
      method: ``"auto"``, ``"cg"`` or ``"minres"``.
      tol: relative residual in ``(0, 1)`` (default :func:`default_solve_tol` of the
        operator's dtype: 1e-10 in float64, 1e-5 in float32).
      num_matvecs: the budget of products.
      damping: ``>= 0``, added to the diagonal.
      verify: spend one more product on the true residual.

    Returns:
      A :class:`~hessian_tools.results.toolbox.SolveResult` (``x``, the residual history,
      ``status``, ``num_matvecs``). Cost: one product per iteration (plus one to verify),
      counted on ``op``; memory 4 (CG) or 8 (MINRES) parameter-sized vectors.

    Raises:
      TypeError: ``op`` is not an operator, or ``b`` has integer leaves.
      ValueError: ``b`` not shaped like the parameters or not finite (the leaf is named),
        ``tol`` outside ``(0, 1)``, a negative ``damping``, an unknown method, or
        ``method="cg"`` on an operator not tagged PSD.

    Examples:
      >>> import numpy as np, hessian_tools as ht
      >>> from hessian_tools.analysis.solve import solve
      >>> A = ht.from_dense(np.diag([3.0, 1.0, -2.0]))
      >>> res = solve(A, np.array([3.0, 1.0, 4.0]))        # indefinite: MINRES
      >>> np.round(np.asarray(res.x), 6).tolist(), res.method, res.converged
      ([1.0, 1.0, -2.0], 'minres', True)
    """
    _check_operator(op, "solve")
    check_choice("method", method, ("auto", "cg", "minres"))
    tree.check_same_structure(op.params_like, b, what="The right-hand side b's leaves")
    check_finite(b, what="Right-hand side b")
    check_tol("tol", tol, relative_to="||b||")
    check_count("num_matvecs", num_matvecs)
    check_positive("damping", damping, allow_zero=True)
    tol = default_solve_tol(op.dtype) if tol is None else float(tol)
    system = shift(op, damping) if damping else op
    if method == "auto":
        method = "cg" if "psd" in system.tags else "minres"
    if method == "cg" and "psd" not in system.tags:
        raise ValueError(
            f"method='cg' needs an operator tagged positive semi-definite, but the "
            f"{system.kind} operator has tags {sorted(system.tags)} (a Hessian can be "
            "indefinite, and CG then diverges or stops). Use method='minres' (or 'auto'), "
            "or a PSD operator: ht.gauss_newton(obj), or shift(op, sigma) of a PSD one.")
    start, before = time.perf_counter(), op.num_matvecs
    b = jax.tree.map(lambda a, like: jnp.asarray(a, like.dtype), b, op.params_like)
    history = [float(tree.norm(b))]
    record = lambda k, rnorm: history.append(float(rnorm))          # noqa: E731
    solver = cg if method == "cg" else minres
    res = solver(system.apply_unchecked, b, num_matvecs=num_matvecs, rtol=tol, callback=record)
    true_residual = math.nan
    if verify and res.status is not Status.zero_rhs:
        true_residual = float(tree.norm(tree.sub(b, system.apply_unchecked(res.x))))
    extra = {} if method == "cg" else {"normal_residual": res.normal_residual,
                                       "anorm": res.anorm}
    return SolveResult(x=res.x, residual_norms=np.asarray(history),
                       residual_norm=float(res.residual_norm),
                       true_residual_norm=true_residual, bnorm=history[0], status=res.status,
                       method=method, tol=tol, damping=float(damping),
                       num_matvecs=op.num_matvecs - before, operator=op.kind,
                       wall_time=time.perf_counter() - start, extra=extra)
