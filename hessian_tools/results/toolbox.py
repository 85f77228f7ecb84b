"""Results of the curvature toolbox: a diagonal, the trace of a matrix function, a solve."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from hessian_tools.results._base import Result, Status
from hessian_tools.results.spectral import TraceEstimate

__all__ = ["DiagonalEstimate", "FunctionTrace", "SolveResult"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiagonalEstimate(Result):
    """The diagonal of a curvature operator (estimated or exact), shaped like the parameters.

    Attributes:
      diagonal: a pytree like the parameters: entry ``j`` is ``A_jj`` (``None`` after a
        JSON round trip; :meth:`by_path` rebuilds it from ``flat``).
      stderr: a pytree like ``diagonal``: the standard error of every entry, or ``None``
        when the method is exact (not serialised either).
      flat: ``(dim,)`` float64, the diagonal with the leaves concatenated in
        ``jax.tree.leaves`` order (``jax.flatten_util.ravel_pytree``'s order).
      flat_stderr: ``(dim,)`` float64 standard errors, or ``None`` for exact methods.
      paths: the leaves' paths (``"layers/0/kernel"``), in the order of ``flat``.
      shapes: the leaves' shapes, in the same order.
      sum_of_squares: ``sum_j A_jj^2``. For the stochastic methods the jackknife
        bias-corrected estimate ``sum_j (d_j^2 - stderr_j^2)``: the plug-in
        ``sum_j d_j^2`` is biased upward by the estimator's variance (it can be many times
        too large at small budgets). The correction can make it negative when the budget
        is far too small.
      sum_of_squares_stderr: its jackknife standard error over the probes (0 when exact).
      method: ``"hutchinson"``, ``"xdiag"``, ``"exact"`` or ``"ggn-exact"``.
      dim: the number of parameters.
      num_samples: probes (Hutchinson) or test vectors (XDiag) behind the standard errors.
      probe: the probe distribution (``"rademacher"``), ``""`` when exact.
      num_matvecs: operator products spent (0 for ``ggn_diagonal``, which uses
        ``extra["vjps_per_example"]`` backward passes per example instead).
    """

    diagonal: Any = None
    stderr: Any = None
    flat: np.ndarray
    flat_stderr: np.ndarray | None = None
    paths: tuple = ()
    shapes: tuple = ()
    sum_of_squares: float
    sum_of_squares_stderr: float = 0.0
    method: str
    dim: int
    num_samples: int = 0
    probe: str = ""
    extra: dict = dataclasses.field(default_factory=dict)

    _arrays = ("flat", "flat_stderr")
    _tuples = ("paths", "shapes")
    _skip = ("diagonal", "stderr")

    @property
    def exact(self) -> bool:
        """Whether the diagonal is exact (no standard errors)."""
        return self.flat_stderr is None

    def by_path(self, *, stderr: bool = False) -> dict:
        """``{path: array}``: the diagonal (or its standard errors) per leaf, from ``flat``
        (available after a JSON round trip)."""
        values = self.flat_stderr if stderr else self.flat
        if values is None:
            raise ValueError(f"The {self.method!r} diagonal is exact: it has no standard errors.")
        out, start = {}, 0
        for path, shape in zip(self.paths, self.shapes):
            size = int(np.prod(shape, dtype=np.int64))
            out[path] = np.asarray(values[start:start + size]).reshape(tuple(shape))
            start += size
        return out

    def __str__(self) -> str:
        err = "exact" if self.exact else (
            f"median s.e. {float(np.median(self.flat_stderr)):.2g}, {self.num_samples} samples")
        return (f"DiagonalEstimate({self.method}, dim {self.dim}, sum of squares "
                f"{self.sum_of_squares:.6g}; {err}; {self.num_matvecs} matvecs)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FunctionTrace(TraceEstimate):
    """An estimate of ``tr f(A)`` (or of a quantity built from such traces), with its
    standard error.

    The fields of :class:`~hessian_tools.TraceEstimate`, plus:

    Attributes:
      function: what was estimated (``"log"``, ``"x**2"``, ``"spectral_entropy"``, or the
        name of the function given).
      num_steps: Lanczos steps per probe for SLQ (0 otherwise).
      samples: per-probe estimates ``n sum_j w_j f(theta_j)`` for SLQ, ``||A v||^2`` for the
        Frobenius norm, the remainders for its Hutch++ form, or the leave-one-out values of
        a jackknife (spectral entropy).
    """

    function: str = ""
    num_steps: int = 0

    def __str__(self) -> str:
        return super().__str__().replace("TraceEstimate(", f"FunctionTrace({self.function}, ", 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SolveResult(Result):
    """The solution of ``(A + damping I) x = b`` by a Krylov method.

    Attributes:
      x: the solution, a pytree like ``b`` (not serialised).
      residual_norms: ``(k + 1,)`` the recurrence's residual norms ``||b - A x_i||``,
        ``i = 0..k`` (``residual_norms[0] = ||b||``).
      residual_norm: the final recurrence residual norm.
      true_residual_norm: ``||b - (A + damping I) x||`` from one more product (``nan``
        when not verified). The recurrence can drift below it in finite precision.
      bnorm: ``||b||``.
      status: :class:`~hessian_tools.Status`: ``converged`` (``||r|| <= tol ||b||``),
        ``least_squares`` (MINRES on a singular, inconsistent system), ``breakdown``,
        ``zero_rhs``, ``negative_curvature`` (CG met ``p^T A p <= 0``) or ``budget``.
      method: ``"cg"`` or ``"minres"``. tol: the relative tolerance. damping: the shift.
      num_matvecs: products of ``A`` spent (the verification's included).
    """

    x: Any = None
    residual_norms: np.ndarray
    residual_norm: float
    true_residual_norm: float = math.nan
    bnorm: float
    status: Status
    method: str
    tol: float
    damping: float = 0.0
    extra: dict = dataclasses.field(default_factory=dict)

    _arrays = ("residual_norms",)
    _skip = ("x",)

    @property
    def converged(self) -> bool:
        """A stopping test was met (not the budget, not negative curvature)."""
        return self.status.ok

    @property
    def relative_residual(self) -> float:
        """``||r|| / ||b||`` (the verified residual when there is one)."""
        r = self.residual_norm if math.isnan(self.true_residual_norm) else \
            self.true_residual_norm
        return r / self.bnorm if self.bnorm > 0 else 0.0

    def __str__(self) -> str:
        return (f"SolveResult({self.method}, {self.status.name}: relative residual "
                f"{self.relative_residual:.2e} after {self.num_matvecs} matvecs)")
