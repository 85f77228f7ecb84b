"""Time to a criterion as a function of the learning rate (Saxe, McClelland & Ganguli 2014):
one training run per learning rate, from the same initialisation and data order, each
stopped when the loss (or accuracy) target is met.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from hessian_tools import tree
from hessian_tools._checks import check_count, check_key
from hessian_tools.objective import Objective
from hessian_tools.results.dynamics import LearningRateSweep
from hessian_tools.training.compare import (default_accuracy, batch_order, make_evaluate,
                                            training_data, check_batch_size, run_training,
                                            stopping_criterion)

__all__ = ["learning_rate_sweep", "CRITERIA"]

CRITERIA = ("loss", "accuracy")


def _check_rates(learning_rates) -> np.ndarray:
    rates = np.asarray(learning_rates, np.float64).reshape(-1) if not isinstance(
        learning_rates, (str, bytes)) else np.zeros(0)
    if rates.size == 0 or not np.all(np.isfinite(rates)) or not np.all(rates > 0):
        raise ValueError(f"learning_rates={learning_rates!r} must be a non-empty sequence of "
                         "positive numbers, e.g. np.logspace(-3, 0, 7).")
    return rates


def _check_criterion(criterion) -> dict:
    if not isinstance(criterion, Mapping) or not criterion or set(criterion) - set(CRITERIA):
        raise ValueError(f"criterion={criterion!r} must be a dict with the keys 'loss' (reached "
                         "when the full-data loss is at most it) and/or 'accuracy' (at least "
                         "it), e.g. {'loss': 0.1}.")
    return dict(criterion)


def learning_rate_sweep(obj: Objective, make_optimizer: Callable,
                        learning_rates: Sequence[float], *, criterion: Mapping, key,
                        max_steps: int, batch_size: int | None = None,
                        accuracy_fn: Callable | None = None,
                        verbose: bool = False) -> LearningRateSweep:
    """Training steps to a loss (or accuracy) criterion for each learning rate.

    For every ``eta`` in ``learning_rates`` the model is trained with ``make_optimizer(eta)``
    from ``obj.params`` on the same minibatch order (full batch when ``batch_size`` is
    None), the criterion is checked on the full data before every step, and the run stops
    when it holds, when the loss becomes non-finite, or after ``max_steps`` steps. Saxe et
    al. (2014) measure training time this way, each network at its best learning rate
    (``best_learning_rate``).

    Cost: up to ``max_steps`` training steps and as many full-data forward passes per
    learning rate (the train step is compiled once per optimizer, so once per learning
    rate). Memory: one model and optimizer state at a time.

    Args:
      obj: the model, initialisation and training data (as for ``compare_optimizers``).
      make_optimizer: ``eta -> optax optimizer`` (e.g. ``optax.sgd`` or
        ``lambda eta: optax.sgd(eta, momentum=0.9)``).
      learning_rates: positive learning rates.
      criterion: ``{"loss": L}`` (full-data loss ``<= L``) and/or ``{"accuracy": A}``
        (full-data accuracy ``>= A``); all given must hold.
      key: a ``jax.random`` key (the minibatch order; unused for full-batch training).
      max_steps: the budget of steps per learning rate.
      batch_size: minibatch size (``None``: full batch).
      accuracy_fn: ``accuracy_fn(outputs, batch) -> scalar`` (default: argmax accuracy).
      verbose: print one line per learning rate.

    Returns:
      A :class:`~hessian_tools.results.dynamics.LearningRateSweep` (``steps``,
      ``best_learning_rate``, ``table()``).

    Raises:
      ValueError: bad learning rates, criterion, ``max_steps`` or ``batch_size``; no key;
        an accuracy criterion without an accuracy (no ``predict`` or no integer labels).
      TypeError: ``make_optimizer`` is not callable.
    """
    if not callable(make_optimizer):
        raise TypeError(f"make_optimizer must be a function eta -> optax optimizer, got "
                        f"{type(make_optimizer).__name__}.")
    rates = _check_rates(learning_rates)
    crit = _check_criterion(criterion)
    check_count("max_steps", max_steps)
    check_key(key, "learning_rate_sweep")
    data = training_data(obj)
    n = check_batch_size(data, batch_size)
    stop = stopping_criterion(crit.get("loss"), crit.get("accuracy"))
    order = batch_order(jax.random.split(key)[1], n, batch_size, max_steps)
    evaluate = make_evaluate(obj, accuracy_fn or default_accuracy)
    start = time.perf_counter()
    rows = []
    for eta in rates:
        trace = run_training(make_optimizer(float(eta)), obj.loss, obj.params, data, order,
                             max_steps, evaluate=evaluate, every=max_steps, stop=stop)
        steps = trace.steps if trace.stop_reason == "criterion" else math.nan
        rows.append((steps, trace.stop_reason, trace.evals[-1, 1], trace.evals[-1, 2],
                     trace.train_time))
        if verbose:
            print(f"eta={eta:.4g}: {trace.steps} steps ({trace.stop_reason}), loss "
                  f"{trace.evals[-1, 1]:.4g}")
    steps, reasons, losses, accs, times = zip(*rows)
    return LearningRateSweep(learning_rates=rates, steps=np.asarray(steps, np.float64),
                             stop_reasons=tuple(reasons), final_loss=np.asarray(losses),
                             final_accuracy=np.asarray(accs), train_time=np.asarray(times),
                             criterion=crit, max_steps=max_steps, batch_size=batch_size,
                             seed=tree.key_bits(key), wall_time=time.perf_counter() - start)
