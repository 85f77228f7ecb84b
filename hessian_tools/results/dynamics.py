"""Results of training-dynamics baselines: a gradient-flow trajectory and a learning-rate
sweep's time to a criterion.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from hessian_tools.results._base import Result, Status

__all__ = ["GradientFlow", "LearningRateSweep"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradientFlow(Result):
    """A trajectory of ``d theta / dt = -grad L(theta)`` at the requested times.

    Attributes:
      times: ``(m,)`` the times reached (all requested ones unless the budget ran out).
      loss: ``(m,)`` the loss there; ``grad_norm`` the gradient's norm.
      sharpness: ``(m,)`` ``lambda_max`` of the Hessian there (``None`` unless asked);
        ``sharpness_residuals`` their residual bounds.
      params: the parameters at each time (a tuple of pytrees; not serialised).
      method: ``"dopri5"`` (adaptive Dormand-Prince 5(4)) or ``"rk4"`` (fixed step).
      rtol, atol: the error tolerances (``dopri5``); ``dt``: the fixed step (``rk4``), or
        the cap on the step with ``alpha`` (Cohen et al.'s ``dt = alpha / lambda_max``).
      num_steps: accepted steps; ``num_rejected``: rejected ones (``dopri5``);
        ``num_gradient_evals``: gradients over the data (the integrator's).
      dt_min, dt_max: the smallest and largest accepted step.
      status: ``converged`` when every requested time was reached, else ``budget``.
    """

    times: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    sharpness: np.ndarray | None = None
    sharpness_residuals: np.ndarray | None = None
    params: Any = None
    method: str = "dopri5"
    rtol: float | None = None
    atol: float | None = None
    dt: float | None = None
    alpha: float | None = None
    num_steps: int = 0
    num_rejected: int = 0
    num_gradient_evals: int = 0
    dt_min: float = math.nan
    dt_max: float = math.nan
    status: Status

    _arrays = ("times", "loss", "grad_norm", "sharpness", "sharpness_residuals")
    _skip = ("params",)

    def __str__(self) -> str:
        if len(self.times) == 0:
            return (f"GradientFlow({self.method}: no output time reached; {self.num_steps} "
                    f"steps, {self.status})")
        top = "" if self.sharpness is None else f", sharpness {self.sharpness[-1]:.4g}"
        return (f"GradientFlow({self.method}: t = {self.times[-1]:.4g}, loss "
                f"{self.loss[0]:.4g} -> {self.loss[-1]:.4g}{top}; {self.num_steps} steps, "
                f"{self.num_gradient_evals} gradients, {self.status})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LearningRateSweep(Result):
    """Time to a criterion (training steps) for each learning rate (Saxe et al. 2014).

    Attributes:
      learning_rates: ``(r,)`` as given.
      steps: ``(r,)`` steps taken to meet the criterion, ``NaN`` where it was not met
        (``stop_reasons`` says why: ``"train_steps"`` ran out, or ``"diverged"``).
      final_loss, final_accuracy: ``(r,)`` on the full data when the run ended.
      train_time: ``(r,)`` seconds of training per learning rate.
      criterion: ``{"loss": ..., "accuracy": ...}`` as given.
      max_steps: the budget per learning rate; ``batch_size`` (``None``: full batch).
    """

    learning_rates: np.ndarray
    steps: np.ndarray
    stop_reasons: tuple
    final_loss: np.ndarray
    final_accuracy: np.ndarray
    train_time: np.ndarray
    criterion: dict
    max_steps: int
    batch_size: int | None = None

    _arrays = ("learning_rates", "steps", "final_loss", "final_accuracy", "train_time")
    _tuples = ("stop_reasons",)

    @property
    def reached(self) -> np.ndarray:
        return np.isfinite(self.steps)

    @property
    def best_learning_rate(self) -> float | None:
        """The learning rate that met the criterion in the fewest steps (the smallest among
        ties), ``None`` if none did."""
        if not self.reached.any():
            return None
        steps = np.where(self.reached, self.steps, np.inf)
        return float(self.learning_rates[int(np.argmin(steps))])

    def table(self) -> str:
        """A Markdown table: learning rate, steps to the criterion, final loss and accuracy."""
        lines = ["| learning rate | steps to criterion | final loss | final accuracy |",
                 "|---|---|---|---|"]
        for lr, s, reason, loss, acc in zip(self.learning_rates, self.steps, self.stop_reasons,
                                           self.final_loss, self.final_accuracy):
            steps = f"{int(s)}" if np.isfinite(s) else f"— ({reason})"
            lines.append(f"| {lr:.4g} | {steps} | {loss:.4g} | {acc:.3f} |")
        return "\n".join(lines)
