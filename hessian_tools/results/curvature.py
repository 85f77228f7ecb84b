"""Results of curvature metrics at a point: the curvature evaluator's report (init2winit's
metrics) and Keskar et al.'s epsilon-sharpness.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from hessian_tools.results._base import Result, Status
from hessian_tools.results.spectral import SpectralDensity

__all__ = ["CurvatureReport", "EpsilonSharpness"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurvatureReport(Result):
    """What a curvature evaluator reports at one point (init2winit's metrics), in one result.

    Attributes:
      top: ``(k,)`` the largest eigenvalues, descending; ``residuals`` their residual norms.
      status: the eigensolver's :class:`~hessian_tools.Status`.
      loss: the dataset-mean loss; ``grad_norm`` the norm of its gradient ``g``.
      grad_weights: ``(k,)`` ``<g, v_i>^2 / ||g||^2``: the gradient's spectral measure on
        the top eigenvectors (``grad_overlap`` is their sum).
      block_norms: ``{block: ||v_1 restricted to the block||}`` for the top eigenvector
        ``v_1`` (their squares sum to 1).
      block_sizes: ``{block: number of parameters}``.
      layer_lambda_max: ``{block: lambda_max of the block's own curvature}`` (the operator
        of the objective restricted to that block, the other parameters fixed).
      layer_densities: ``{block: SpectralDensity}`` (empty without ``density``).
      density: the whole operator's :class:`SpectralDensity` (``None`` without ``density``).
      grad_density: the spectral measure of the gradient, ``sum_i <g, u_i>^2 / ||g||^2
        delta(lambda_i)`` over all eigenpairs: Lanczos quadrature started from ``g``
        (``None`` at a zero gradient).
      k: how many top eigenpairs.
    """

    top: np.ndarray
    residuals: np.ndarray
    status: Status
    loss: float
    grad_norm: float
    grad_weights: np.ndarray
    block_norms: dict = dataclasses.field(default_factory=dict)
    block_sizes: dict = dataclasses.field(default_factory=dict)
    layer_lambda_max: dict = dataclasses.field(default_factory=dict)
    layer_densities: dict = dataclasses.field(default_factory=dict)
    density: SpectralDensity | None = None
    grad_density: SpectralDensity | None = None
    k: int = 0
    extra: dict = dataclasses.field(default_factory=dict)

    _arrays = ("top", "residuals", "grad_weights")
    _results = {"density": SpectralDensity, "grad_density": SpectralDensity,
                "layer_densities": SpectralDensity}

    @property
    def lambda1(self) -> float:
        return float(self.top[0])

    @property
    def lambda2(self) -> float:
        return float(self.top[1])

    @property
    def ratio(self) -> float:
        """``lambda_1 / lambda_2`` (``inf`` when ``lambda_2 == 0``)."""
        return self.lambda1 / self.lambda2 if self.lambda2 != 0 else float("inf")

    @property
    def grad_overlap(self) -> float:
        """``||P_k g||^2 / ||g||^2``: the fraction of the gradient in the top-k eigenspace."""
        return float(np.sum(self.grad_weights))

    def summary(self) -> dict:
        """The scalar metrics by name (init2winit's vocabulary in comments)."""
        return {"lambda1": self.lambda1, "lambda2": self.lambda2, "ratio": self.ratio,
                "grad_overlap": self.grad_overlap, "grad_norm": self.grad_norm,
                "loss": self.loss, "num_matvecs": self.num_matvecs}

    def __str__(self) -> str:
        s = self.summary()
        return (f"CurvatureReport({self.operator}: lambda1 {s['lambda1']:.4g}, lambda2 "
                f"{s['lambda2']:.4g}, ratio {s['ratio']:.3g}, gradient overlap (top {self.k}) "
                f"{s['grad_overlap']:.3f}, {len(self.block_norms)} blocks, "
                f"{self.num_matvecs} matvecs)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpsilonSharpness(Result):
    """Keskar et al.'s (2017) sharpness: ``100 (max_{y in C_eps} L(x + A y) - L(x)) / (1 +
    L(x))``, the largest relative rise of the loss in a box around the point.

    Attributes:
      value: the sharpness (a percentage).
      loss: ``L(x)``; ``max_loss`` the largest loss found in the box.
      epsilon: the box's relative size; ``subspace_dim``: ``p`` of a random subspace
        (``None``: the full space).
      method: ``"projected_gradient"`` or ``"l-bfgs-b"``.
      num_evaluations: loss-and-gradient evaluations over the data (the starting point's
        included); ``num_steps`` iterations over all starts; ``num_starts`` starts.
      stops: why each start stopped: ``"stationary"`` (a stationary point of the box
        problem), ``"no ascent"`` (no rise left at the loss's rounding) or ``"steps"``.
      status: ``budget`` when a start ran out of steps, else ``converged``.
      history: ``(num_steps,)`` the best loss after each iteration, over all starts.
      perturbation: the maximiser ``A y`` (a pytree like the parameters; not serialised).
    """

    value: float
    loss: float
    max_loss: float
    epsilon: float
    subspace_dim: int | None = None
    method: str = "projected_gradient"
    num_evaluations: int = 0
    num_steps: int = 0
    num_starts: int = 1
    stops: tuple = ()
    status: Status
    history: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    perturbation: Any = None

    _arrays = ("history",)
    _tuples = ("stops",)
    _skip = ("perturbation",)

    def __str__(self) -> str:
        space = "full space" if self.subspace_dim is None else f"{self.subspace_dim}-dim subspace"
        return (f"EpsilonSharpness({self.value:.4g}% at epsilon={self.epsilon:g}, {space}; "
                f"loss {self.loss:.4g} -> {self.max_loss:.4g}, {self.num_evaluations} "
                f"evaluations, {self._status_text()})")

    def _status_text(self) -> str:
        """``Status.budget``'s generic advice names ``num_matvecs``; here the knob is
        ``steps`` (the ascent's iterations per start)."""
        if self.status is Status.budget:
            return (f"budget: {sum(s == 'steps' for s in self.stops)} of {len(self.stops)} "
                    "starts used every step before the ascent stalled: raise steps")
        return str(self.status)
