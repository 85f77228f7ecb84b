"""Results of curvature during training: one sharpness measurement, a run's log, and a
comparison of optimizers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from hessian_tools.results._base import Result, Status, jsonable

__all__ = ["OptimizerComparison", "OptimizerInfo", "OptimizerRun", "SharpnessLog",
           "SharpnessResult", "stability_threshold"]

_THRESHOLD_KINDS = ("gd", "heavy_ball", "nesterov", "ema")


def stability_threshold(learning_rate: float, *, momentum: float = 0.0,
                        kind: str = "heavy_ball") -> float:
    """The largest curvature at which a quadratic stays stable under a first-order method.

    For the quadratic ``a x^2 / 2`` each method is a linear recursion in ``x``; it diverges
    once ``a`` exceeds this threshold (Cohen et al. 2021, appendix; 2022, section 3):

    * ``"gd"`` (or any kind with ``momentum=0``): ``2 / eta``.
    * ``"heavy_ball"``: ``v <- g + beta v``, ``x <- x - eta v`` (``optax.sgd(eta, beta)``):
      ``(2 + 2 beta) / eta``.
    * ``"nesterov"``: ``optax.sgd(eta, beta, nesterov=True)``:
      ``(2 + 2 beta) / ((1 + 2 beta) eta)``.
    * ``"ema"``: ``m <- beta m + (1 - beta) g``, ``x <- x - eta m`` (Adam's first moment;
      apply it to the *preconditioned* sharpness): ``(2 + 2 beta) / ((1 - beta) eta)``,
      which is ``38 / eta`` for ``beta = 0.9``.

    Args:
      learning_rate: ``eta > 0``.
      momentum: ``beta`` in ``[0, 1)``.
      kind: one of ``"gd"``, ``"heavy_ball"``, ``"nesterov"``, ``"ema"``.

    Returns:
      The threshold as a Python float.

    Raises:
      ValueError: a non-positive learning rate, a momentum outside ``[0, 1)`` or an unknown
        kind.

    Examples:
      >>> stability_threshold(0.1)
      20.0
      >>> round(stability_threshold(1e-3, momentum=0.9, kind="ema"), 6)
      38000.0
    """
    if kind not in _THRESHOLD_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {_THRESHOLD_KINDS}.")
    eta, beta = float(learning_rate), float(momentum)
    if not eta > 0 or not math.isfinite(eta):
        raise ValueError(f"learning_rate={learning_rate!r} must be a positive number.")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"momentum={momentum!r} must lie in [0, 1).")
    if kind == "gd" or beta == 0.0:
        return 2.0 / eta
    if kind == "heavy_ball":
        return (2.0 + 2.0 * beta) / eta
    if kind == "nesterov":
        return (2.0 + 2.0 * beta) / ((1.0 + 2.0 * beta) * eta)
    return (2.0 + 2.0 * beta) / ((1.0 - beta) * eta)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerInfo(Result):
    """What an optax optimizer does, as far as stability thresholds are concerned.

    Attributes:
      kind: ``"sgd"``, ``"momentum"`` (heavy ball), ``"nesterov"``, ``"adam"`` (adam, adamw,
        amsgrad, nadam), ``"rmsprop"``, ``"adagrad"`` or ``"unknown"``.
      learning_rate: ``eta`` (the first step's, for a schedule), or ``None`` if unknown.
      momentum: heavy-ball / Nesterov ``beta``, or Adam's ``b1``.
      b2: the second-moment decay (Adam ``b2``, RMSProp ``decay``), if any.
      eps: the preconditioner's ``eps`` (optax's default for the kind unless recorded by
        ``optax.inject_hyperparams`` or given).
      adaptive: the optimizer has a diagonal preconditioner ``P``.
    """

    kind: str
    learning_rate: float | None = None
    momentum: float = 0.0
    b2: float | None = None
    eps: float | None = None
    adaptive: bool = False

    @property
    def threshold_quantity(self) -> str:
        """Which sharpness the threshold applies to: raw or preconditioned."""
        return "precond_lambda_max" if self.adaptive else "lambda_max"

    def threshold(self, learning_rate: float | None = None) -> float | None:
        """The stability threshold (see :func:`stability_threshold`), ``None`` if unknown."""
        eta = self.learning_rate if learning_rate is None else learning_rate
        if eta is None or not eta > 0 or self.kind == "unknown":
            return None
        kind = {"adam": "ema", "nesterov": "nesterov"}.get(self.kind, "heavy_ball")
        return stability_threshold(eta, momentum=self.momentum, kind=kind)



@dataclasses.dataclass(frozen=True, kw_only=True)
class SharpnessResult(Result):
    """The top eigenvalue(s) of the (preconditioned) Hessian at one point.

    Attributes:
      value: ``lambda_max`` (of ``P^{-1/2} H P^{-1/2}`` when ``preconditioned``).
      values: ``(k,)`` the ``k`` largest eigenvalues, descending.
      residuals: ``(k,)`` Lanczos residual estimates ``|beta_m s_mi|`` (an upper bound on
        each eigenvalue's error; away from clusters the error is about ``residual^2/gap``).
      vectors: stacked pytree basis, row ``i`` the unit eigenvector estimate of ``values[i]``.
      warm_start: stacked vectors to pass as ``v0`` to the next measurement (the top ``k``
        and the guard).
      num_matvecs: Hessian-vector products spent.
      status: ``converged`` when every residual is within ``tol * scale`` (``converged`` is
        the same as a bool), else ``budget``.
      preconditioned: whether a preconditioner was applied.
      wall_time: seconds (compilation included on a first call).
    """

    value: float
    values: np.ndarray
    residuals: np.ndarray
    vectors: Any = None
    warm_start: Any = None
    status: Status
    preconditioned: bool = False

    _arrays = ("values", "residuals")
    _skip = ("vectors", "warm_start")

    @property
    def converged(self) -> bool:
        return self.status is Status.converged


@dataclasses.dataclass(frozen=True, kw_only=True)
class SharpnessLog(Result):
    """Measurements over training, one record per measurement, in order.

    Index it by quantity for arrays: ``log["lambda_max"]`` (``NaN`` where a record lacks
    the quantity), ``log.steps``, ``log["top_k"]`` (2-D). ``meta`` holds the header
    records (one per run start or resume).
    """

    records: tuple = ()
    meta: tuple = ()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def steps(self) -> np.ndarray:
        return np.array([r["step"] for r in self.records], dtype=np.int64)

    @property
    def quantities(self) -> list:
        """Names of the numeric fields present in any record."""
        names = []
        for r in self.records:
            names += [n for n, v in r.items() if n not in names and n != "type"
                      and (isinstance(v, (int, float, list)) or v is None)
                      and not isinstance(v, bool)]
        return names

    def __contains__(self, name) -> bool:
        return any(r.get(name) is not None for r in self.records)

    def __getitem__(self, name: str) -> np.ndarray:
        values = [r.get(name) for r in self.records]
        if any(isinstance(v, list) for v in values):
            width = max(len(v) for v in values if isinstance(v, list))
            return np.array([(v + [np.nan] * (width - len(v))) if isinstance(v, list)
                             else [np.nan] * width for v in values], dtype=np.float64)
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def arrays(self) -> dict:
        """Every quantity as an array (``{"step": ..., "lambda_max": ..., ...}``)."""
        return {n: self[n] for n in self.quantities}

    @property
    def total_matvecs(self) -> int:
        return int(sum(r.get("num_matvecs", 0) or 0 for r in self.records))

    _tuples = ("records", "meta")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerRun(Result):
    """One optimizer's training run in :func:`compare_optimizers`.

    Attributes:
      name: the label.
      info: what the optimizer is (:class:`OptimizerInfo`).
      train_loss: ``(train_steps,)`` the minibatch loss at every step (before its update).
      eval_steps, eval_loss, eval_accuracy: loss and accuracy on the full data at every
        measurement (accuracy ``NaN`` when not a classification problem).
      log: the :class:`SharpnessLog`.
      train_time: seconds spent in training steps; measure_time: seconds measuring (and
        evaluating the stopping criterion).
      diverged: the loss became non-finite (training stopped there).
      steps: training steps taken (fewer than asked when a criterion stopped the run).
      stop_reason: ``"train_steps"`` (all were taken), ``"criterion"`` (the loss or accuracy
        target was met after ``steps`` steps) or ``"diverged"``.
      final_params: the parameters after the last step (a pytree like the objective's;
        not serialised: save them with ``checkpoint_dir``).
      checkpoint: where they were saved (``.npz``), or ``None``.
    """

    name: str
    info: OptimizerInfo
    train_loss: np.ndarray
    eval_steps: np.ndarray
    eval_loss: np.ndarray
    eval_accuracy: np.ndarray
    log: SharpnessLog
    train_time: float
    measure_time: float
    diverged: bool = False
    steps: int = 0
    stop_reason: str = "train_steps"
    final_params: Any = None
    checkpoint: str | None = None

    _arrays = ("train_loss", "eval_loss", "eval_accuracy")
    _results = {"info": OptimizerInfo, "log": SharpnessLog}
    _skip = ("final_params",)

    @property
    def steps_to_criterion(self) -> int | None:
        """Steps taken to meet the stopping criterion (``None`` if it was not met)."""
        return self.steps if self.stop_reason == "criterion" else None

    @property
    def threshold(self) -> float | None:
        return self.info.threshold()

    def summary(self) -> dict:
        """Final and max sharpness (raw and preconditioned), loss, accuracy, times, matvecs."""
        raw, pre = self.log["lambda_max"], self.log["precond_lambda_max"]

        def last(a):
            a = a[np.isfinite(a)] if a.size else a
            return float(a[-1]) if a.size else None

        def peak(a):
            a = a[np.isfinite(a)] if a.size else a
            return float(a.max()) if a.size else None
        return {"optimizer": self.name, "kind": self.info.kind,
                "learning_rate": self.info.learning_rate, "threshold": self.threshold,
                "threshold_applies_to": self.info.threshold_quantity,
                "final_sharpness": last(raw), "max_sharpness": peak(raw),
                "final_precond_sharpness": last(pre), "max_precond_sharpness": peak(pre),
                "final_loss": last(self.eval_loss), "final_accuracy": last(self.eval_accuracy),
                "train_time": self.train_time, "measure_time": self.measure_time,
                "num_matvecs": self.log.total_matvecs, "diverged": self.diverged,
                "steps": self.steps, "stop_reason": self.stop_reason}


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerComparison(Result):
    """The result of :func:`compare_optimizers`: one :class:`OptimizerRun` per optimizer."""

    runs: dict
    config: dict = dataclasses.field(default_factory=dict)

    _results = {"runs": OptimizerRun}

    def summary(self) -> list:
        return [run.summary() for run in self.runs.values()]

    def table(self) -> str:
        """A Markdown table of :meth:`summary` (one row per optimizer)."""
        cols = [("optimizer", "optimizer", "{}"), ("lr", "learning_rate", "{:.3g}"),
                ("threshold", "threshold", "{:.4g}"), ("final λmax", "final_sharpness", "{:.4g}"),
                ("max λmax", "max_sharpness", "{:.4g}"),
                ("final λmax(P⁻¹H)", "final_precond_sharpness", "{:.4g}"),
                ("max λmax(P⁻¹H)", "max_precond_sharpness", "{:.4g}"),
                ("final loss", "final_loss", "{:.4g}"), ("final acc", "final_accuracy", "{:.3f}"),
                ("train s", "train_time", "{:.2f}"), ("measure s", "measure_time", "{:.2f}"),
                ("HVPs", "num_matvecs", "{}")]
        lines = ["| " + " | ".join(c[0] for c in cols) + " |",
                 "|" + "|".join("---" for _ in cols) + "|"]
        for row in self.summary():
            cells = ["—" if row[key] is None else fmt.format(row[key]) for _, key, fmt in cols]
            if row["diverged"]:
                cells[0] += " (diverged)"
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The base serialisation plus the :meth:`summary` rows (dropped again on reading)."""
        return super().to_dict() | {"summary": jsonable(self.summary())}

    @classmethod
    def from_dict(cls, d: dict) -> "OptimizerComparison":
        return super().from_dict({k: v for k, v in d.items() if k != "summary"})
