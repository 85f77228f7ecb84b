"""One model, one initialisation, one data order, several optimizers: their sharpness side by
side.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from hessian_tools import tree
from hessian_tools._checks import check_count
from hessian_tools.checkpoints import save_npz
from hessian_tools.objective import Objective
from hessian_tools.results import OptimizerComparison, OptimizerRun
from hessian_tools.training.optimizers import optimizer_info
from hessian_tools.training.tracker import SharpnessTracker

# the training loop and its checks (run_training, stopping_criterion, ...) are shared with
# training/sweep.py; only these are public
__all__ = ['compare_optimizers', 'measurement_subset', 'safe_name']


def measurement_subset(data, num_examples: int | None, *, key=None):
    """A fixed subset of ``num_examples`` examples of an in-memory batch ``data``.

    Random (without replacement) with ``key``, else the first ``num_examples``. ``None`` or a
    size at least the data's returns ``data`` unchanged.
    """
    n = int(jax.tree.leaves(data)[0].shape[0])
    if num_examples is None or num_examples >= n:
        return data
    if num_examples < 1:
        raise ValueError(f"num_examples={num_examples} must be positive.")
    idx = (jnp.arange(num_examples) if key is None
           else jnp.sort(jax.random.permutation(key, n)[:num_examples]))
    return jax.tree.map(lambda a: jnp.asarray(a)[idx], data)


def default_accuracy(outputs, batch):
    """Argmax accuracy for integer labels in ``batch[1]`` and 2-D outputs, else ``NaN``."""
    labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
    if labels is None or outputs.ndim != 2 or labels.ndim != 1 or \
            not jnp.issubdtype(labels.dtype, jnp.integer):
        return jnp.asarray(jnp.nan, jnp.float32)
    return jnp.mean(jnp.argmax(outputs, axis=-1) == labels)


def _validate_compare(data, optimizers, every, batch_size):
    if not isinstance(optimizers, Mapping) or not optimizers:
        raise TypeError("optimizers must be a non-empty dict {name: optax optimizer}.")
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every={every!r} must be a positive integer.")
    return check_batch_size(data, batch_size)


def check_batch_size(data, batch_size) -> int:
    """The number of examples of ``data``, after checking ``batch_size`` against it."""
    n = int(jax.tree.leaves(data)[0].shape[0])
    if batch_size is not None and not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must lie in [1, {n}] (the data has {n} "
                         "examples), or be None for full-batch training.")
    return n


def training_steps(train_steps, epochs, n: int, batch_size) -> int:
    """The number of steps from exactly one of ``train_steps`` and ``epochs`` (an epoch is
    ``n // batch_size`` minibatch steps, or one full-batch step)."""
    if (train_steps is None) == (epochs is None):
        raise ValueError(f"Pass exactly one of train_steps and epochs (got train_steps="
                         f"{train_steps!r}, epochs={epochs!r}).")
    if epochs is not None:
        check_count("epochs", epochs)
        return int(epochs) * (1 if batch_size is None else n // batch_size)
    if not isinstance(train_steps, int) or isinstance(train_steps, bool) or train_steps < 1:
        raise ValueError(f"train_steps={train_steps!r} must be a positive integer.")
    return train_steps


def stopping_criterion(loss: float | None = None, accuracy: float | None = None):
    """``stop(loss, accuracy) -> bool``: the loss on the full data is at most ``loss`` and
    its accuracy at least ``accuracy`` (each only if given); ``None`` when neither is."""
    for name, value in (("stop_at_loss", loss), ("stop_at_accuracy", accuracy)):
        if value is not None and not (isinstance(value, (int, float, np.floating))
                                      and not isinstance(value, bool) and np.isfinite(value)):
            raise ValueError(f"{name}={value!r} must be a finite number.")
    if loss is None and accuracy is None:
        return None

    def stop(value, acc):
        if accuracy is not None and not np.isfinite(acc):
            raise ValueError("stop_at_accuracy needs an accuracy, but it is NaN here: the "
                             "objective has no predict (build it with Objective.from_nnx or "
                             "predict=...), or batch[1] holds no integer labels (pass "
                             "accuracy_fn=...).")
        return (loss is None or value <= loss) and (accuracy is None or acc >= accuracy)
    return stop


def batch_order(key, n, batch_size, train_steps):
    """Indices of every step's minibatch: epochs of a fixed random permutation."""
    if batch_size is None:
        return None
    per_epoch = n // batch_size
    epochs = -(-train_steps // per_epoch)
    keys = jax.random.split(key, epochs)
    perms = [np.asarray(jax.random.permutation(k, n))[:per_epoch * batch_size] for k in keys]
    return np.concatenate(perms).reshape(-1, batch_size)[:train_steps]


def compare_optimizers(obj: Objective, optimizers: Mapping, *,
                       train_steps: int | None = None, epochs: int | None = None,
                       every: int = 10, key, batch_size: int | None = None,
                       measure_data=None, measure_size: int | None = 512,
                       quantities=("lambda_max",), tol: float = 1e-3,
                       learning_rates: Mapping | None = None, log_dir=None,
                       accuracy_fn: Callable | None = None, k: int = 10,
                       stop_at_loss: float | None = None, stop_at_accuracy: float | None = None,
                       checkpoint_dir=None, overwrite: bool = False,
                       verbose: bool = False) -> OptimizerComparison:
    """Train one model with several optimizers and track their sharpness side by side.

    Every optimizer starts from the same initialisation (``obj.params``) and sees the same
    minibatches of ``obj.data`` in the same order (full batch when ``batch_size`` is None),
    minimising ``obj.loss``. Every
    ``every`` steps (and at the last step) a :class:`SharpnessTracker` measures
    ``lambda_max`` of the training loss on a fixed measurement set (and, for adaptive
    optimizers, the preconditioned sharpness with ``P`` from the optimizer state), and the
    loss and accuracy on the full ``data`` are recorded. Thresholds come from
    :func:`optimizer_info` (probed) unless ``learning_rates`` are given.

    A run stops after ``train_steps`` steps (or ``epochs`` passes over the data), when its
    loss becomes non-finite, or as soon as the loss on the full data is at most
    ``stop_at_loss`` and its accuracy at least ``stop_at_accuracy`` (checked before every
    step; the run's ``steps`` is then its time to the criterion, in steps, as Saxe et al.
    2014 measure training time). The last step is always measured. Each run keeps its
    final parameters (``final_params``), saved to ``checkpoint_dir/<name>.npz`` on request
    (``ht.restore(obj, path)`` reads them back).

    Cost: ``train_steps`` training steps per optimizer plus about ``train_steps / every``
    warm-started measurements (a few HVPs each on the measurement set; see
    :class:`SharpnessTracker`); with a stopping criterion, one forward pass over the full
    data per step. Memory: one model and optimizer state at a time, plus each run's final
    parameters.

    Args:
      obj: the model and its training data: ``obj.params`` is the initialisation, the data
        (in memory: one batch or a list of batches, concatenated) is trained on, and with
        ``obj.predict`` the accuracy is recorded too (e.g.
        ``Objective.from_nnx(MyNet(rngs=nnx.Rngs(0)), loss_fn, (x, y))``).
      optimizers: ``{name: optax optimizer}``.
      train_steps: training steps per optimizer (or ``epochs``; exactly one of them).
      epochs: passes over the data (``n // batch_size`` steps each; one step full-batch).
      every: measurement period.
      key: a ``jax.random`` key (data order, measurement set, solver).
      batch_size: minibatch size (``None``: full-batch gradient descent).
      measure_data: the measurement set (default: ``measure_size`` random examples).
      measure_size: size of the default measurement set (``None``: all data).
      quantities: tracker quantities (see :data:`QUANTITIES`).
      tol: eigenvalue tolerance (relative residual).
      learning_rates: ``{name: eta}`` overriding the probed step sizes (for thresholds).
      log_dir: optional folder for one ``<name>.jsonl`` log per optimizer.
      overwrite: replace existing logs in ``log_dir`` and checkpoints in ``checkpoint_dir``
        (else an existing one raises).
      accuracy_fn: ``accuracy_fn(outputs, batch) -> scalar``; default: argmax accuracy
        for integer labels in ``batch[1]``, ``NaN`` otherwise.
      k: top-k size for ``"top_k"``/``"grad_overlap"``.
      stop_at_loss: stop a run once the full-data loss is at most this.
      stop_at_accuracy: stop a run once the full-data accuracy is at least this.
      checkpoint_dir: save each run's final parameters there as ``<name>.npz``.
      verbose: print one line per optimizer.

    Returns:
      An :class:`OptimizerComparison` (``.table()``, ``.summary()``, ``.to_dict()``,
      :func:`plot_comparison`).

    Raises:
      TypeError: ``optimizers`` is not a non-empty dict.
      ValueError: a bad ``train_steps``, ``epochs`` (or both, or neither), ``every``,
        ``batch_size`` or stopping target, an accuracy target without an accuracy, or an
        existing log in ``log_dir`` or checkpoint in ``checkpoint_dir`` without
        ``overwrite``.
    """
    data = training_data(obj)
    n = _validate_compare(data, optimizers, every, batch_size)
    train_steps = training_steps(train_steps, epochs, n, batch_size)
    stop = stopping_criterion(stop_at_loss, stop_at_accuracy)
    _, k_data, k_measure, k_track = jax.random.split(key, 4)
    if measure_data is None:
        measure_data = measurement_subset(data, measure_size, key=k_measure)
    order = batch_order(k_data, n, batch_size, train_steps)
    evaluate = make_evaluate(obj, accuracy_fn or default_accuracy)
    checkpoints = _checkpoint_paths(checkpoint_dir, optimizers, overwrite, obj.params)
    runs = {}
    for name, opt in optimizers.items():
        lr = (learning_rates or {}).get(name)
        info = optimizer_info(opt, learning_rate=lr)
        log_path = None if log_dir is None else Path(log_dir) / f"{safe_name(name)}.jsonl"
        tracker = SharpnessTracker(obj.with_data(measure_data), every=every, log_path=log_path,
                                   quantities=quantities, key=k_track, k=k, tol=tol,
                                   optimizer=info, resume=False, overwrite=overwrite)
        measure = lambda step, p, state, t=tracker, eta=info.learning_rate: t.update(
            step, p, opt_state=state, learning_rate=eta, force=True)
        trace = run_training(opt, obj.loss, obj.params, data, order, train_steps,
                             evaluate=evaluate, every=every, measure=measure, stop=stop)
        path = None if checkpoint_dir is None else str(save_npz(checkpoints[name],
                                                                 trace.params))
        runs[name] = trace.run(name, info, tracker.log, checkpoint=path)
        if verbose:
            s = runs[name].summary()
            print(f"{name}: final loss {s['final_loss']:.4g}, final sharpness "
                  f"{s['final_sharpness']}, {s['num_matvecs']} HVPs, "
                  f"{s['train_time']:.1f}+{s['measure_time']:.1f} s, {s['steps']} steps "
                  f"({s['stop_reason']})")
    config = {"train_steps": train_steps, "every": every, "batch_size": batch_size,
              "measure_size": int(jax.tree.leaves(measure_data)[0].shape[0]),
              "num_examples": n, "quantities": list(quantities), "tol": tol,
              "epochs": epochs, "stop_at_loss": stop_at_loss,
              "stop_at_accuracy": stop_at_accuracy}
    return OptimizerComparison(runs=runs, config=config)


def _checkpoint_paths(checkpoint_dir, optimizers, overwrite, params) -> dict:
    """``{name: checkpoint_dir/<name>.npz}``, refusing existing files (checked before any
    training) unless ``overwrite``, and parameters without names (a checkpoint stores
    arrays by their ``a/b/c`` paths)."""
    if checkpoint_dir is None:
        return {}
    if "" in tree.flat_paths(params):
        raise ValueError("checkpoint_dir needs named parameters (a checkpoint stores arrays by "
                         "their paths), but the parameters are one bare array: build the "
                         "objective with params={'w': params} (and the loss reading p['w']).")
    paths = {name: Path(checkpoint_dir) / f"{safe_name(name)}.npz" for name in optimizers}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"checkpoint {existing[0]} exists: pass overwrite=True to replace it, "
                         "or another checkpoint_dir.")
    return paths


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def training_data(obj: Objective):
    """The objective's data as one in-memory batch (a list of batches is concatenated)."""
    if obj.streaming:
        raise ValueError("compare_optimizers and learning_rate_sweep train on in-memory data; "
                         "this objective streams its data. Pass the data as one batch or a "
                         "list of batches.")
    batches = obj.data if isinstance(obj.data, list) else [obj.data]
    return jax.tree.map(lambda *xs: jnp.concatenate([jnp.asarray(x) for x in xs]), *batches)


def make_evaluate(obj: Objective, accuracy_fn):
    """A compiled ``(params, batch) -> (loss, accuracy)`` (accuracy ``NaN`` without
    ``predict``)."""
    if not obj.has_outputs:
        return jax.jit(lambda params, batch: (obj.loss(params, batch),
                                              jnp.asarray(jnp.nan, jnp.float32)))

    @jax.jit
    def evaluate(params, batch):
        out = obj.predict(params, batch)
        return obj.output_loss(out, batch), accuracy_fn(out, batch)
    return evaluate


def _make_train_step(full_loss, opt):
    @jax.jit
    def step(params, opt_state, data, idx):
        batch = data if idx is None else jax.tree.map(lambda a: a[idx], data)
        loss, grads = jax.value_and_grad(full_loss)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


@dataclasses.dataclass
class TrainingTrace:
    """What :func:`run_training` leaves: the final point, the losses and the evaluations."""

    params: Any
    opt_state: Any
    train_loss: np.ndarray
    evals: np.ndarray                   # (m, 3): step, full-data loss, accuracy
    steps: int
    stop_reason: str
    train_time: float
    measure_time: float

    def run(self, name, info, log, *, checkpoint=None) -> OptimizerRun:
        return OptimizerRun(name=name, info=info, train_loss=self.train_loss,
                            eval_steps=self.evals[:, 0].astype(int), eval_loss=self.evals[:, 1],
                            eval_accuracy=self.evals[:, 2], log=log,
                            train_time=self.train_time, measure_time=self.measure_time,
                            diverged=self.stop_reason == "diverged", steps=self.steps,
                            stop_reason=self.stop_reason, final_params=self.params,
                            checkpoint=checkpoint, num_matvecs=log.total_matvecs)


def run_training(opt, loss, params, data, order, train_steps: int, *, evaluate,
                 every: int, measure=None, stop=None) -> TrainingTrace:
    """Train ``params`` with ``opt`` on ``loss`` for up to ``train_steps`` steps.

    Before step ``s`` (``s = 0 .. train_steps``), when ``s`` is a multiple of ``every`` or
    the last, ``measure(s, params, opt_state)`` runs (if given) and the full-data loss and
    accuracy are recorded; with ``stop`` they are computed before every step, and the run
    ends (measured) once ``stop(loss, accuracy)`` holds. A non-finite loss ends it too.
    Training and measuring are timed separately.
    """
    step_fn = _make_train_step(loss, opt)
    opt_state = opt.init(params)
    losses, evals, reason = [], [], "train_steps"
    train_time = measure_time = 0.0
    segment = time.perf_counter()
    for step in range(train_steps + 1):
        due = step % every == 0 or step == train_steps
        if due or stop is not None:
            jax.block_until_ready((params, losses[-1:]))
            now = time.perf_counter()
            train_time += now - segment
            value, acc = (float(x) for x in evaluate(params, data))
            diverged = not np.isfinite(value) or (bool(losses) and
                                                   not np.isfinite(float(losses[-1])))
            met = stop is not None and not diverged and stop(value, acc)
            if due or met or diverged:
                if measure is not None:
                    measure(step, params, opt_state)
                evals.append((step, value, acc))
            measure_time += time.perf_counter() - now
            reason = "diverged" if diverged else "criterion" if met else reason
            segment = time.perf_counter()
            if met or diverged:
                break
        if step == train_steps:
            break
        idx = None if order is None else jnp.asarray(order[step])
        params, opt_state, value = step_fn(params, opt_state, data, idx)
        losses.append(value)
    train_loss = np.asarray(jnp.stack(losses), np.float64) if losses else np.zeros(0)
    return TrainingTrace(params=params, opt_state=opt_state, train_loss=train_loss,
                         evals=np.array(evals, dtype=np.float64).reshape(-1, 3),
                         steps=len(losses), stop_reason=reason, train_time=train_time,
                         measure_time=measure_time)
