"""One model, one initialisation, one data order, several optimizers: their sharpness side by
side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from hessian_tools.objective import Objective
from hessian_tools.results import OptimizerComparison, OptimizerRun
from hessian_tools.training.optimizers import optimizer_info
from hessian_tools.training.tracker import SharpnessTracker

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


def _accuracy(outputs, batch):
    labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
    if labels is None or outputs.ndim != 2 or labels.ndim != 1 or \
            not jnp.issubdtype(labels.dtype, jnp.integer):
        return jnp.asarray(jnp.nan, jnp.float32)
    return jnp.mean(jnp.argmax(outputs, axis=-1) == labels)


def _validate_compare(data, optimizers, train_steps, every, batch_size):
    if not isinstance(optimizers, Mapping) or not optimizers:
        raise TypeError("optimizers must be a non-empty dict {name: optax optimizer}.")
    if not isinstance(train_steps, int) or train_steps < 1:
        raise ValueError(f"train_steps={train_steps!r} must be a positive integer.")
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every={every!r} must be a positive integer.")
    n = int(jax.tree.leaves(data)[0].shape[0])
    if batch_size is not None and not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must lie in [1, {n}] (the data has {n} "
                         "examples), or be None for full-batch training.")
    return n


def _batch_order(key, n, batch_size, train_steps):
    """Indices of every step's minibatch: epochs of a fixed random permutation."""
    if batch_size is None:
        return None
    per_epoch = n // batch_size
    epochs = -(-train_steps // per_epoch)
    keys = jax.random.split(key, epochs)
    perms = [np.asarray(jax.random.permutation(k, n))[:per_epoch * batch_size] for k in keys]
    return np.concatenate(perms).reshape(-1, batch_size)[:train_steps]


def compare_optimizers(obj: Objective, optimizers: Mapping, *,
                       train_steps: int, every: int = 10, key, batch_size: int | None = None,
                       measure_data=None, measure_size: int | None = 512,
                       quantities=("lambda_max",), tol: float = 1e-3,
                       learning_rates: Mapping | None = None, log_dir=None,
                       accuracy_fn: Callable | None = None, k: int = 10,
                       overwrite: bool = False, verbose: bool = False) -> OptimizerComparison:
    """Train one model with several optimizers and track their sharpness side by side.

    Every optimizer starts from the same initialisation (``obj.params``) and sees the same
    minibatches of ``obj.data`` in the same order (full batch when ``batch_size`` is None),
    minimising ``obj.loss``. Every
    ``every`` steps (and at the last step) a :class:`SharpnessTracker` measures
    ``lambda_max`` of the training loss on a fixed measurement set (and, for adaptive
    optimizers, the preconditioned sharpness with ``P`` from the optimizer state), and the
    loss and accuracy on the full ``data`` are recorded. Thresholds come from
    :func:`optimizer_info` (probed) unless ``learning_rates`` are given.

    Cost: ``train_steps`` training steps per optimizer plus about ``train_steps / every``
    warm-started measurements (a few HVPs each on the measurement set; see
    :class:`SharpnessTracker`). Memory: one model and optimizer state at a time.

    Args:
      obj: the model and its training data: ``obj.params`` is the initialisation, the data
        (in memory: one batch or a list of batches, concatenated) is trained on, and with
        ``obj.predict`` the accuracy is recorded too (e.g.
        ``Objective.from_nnx(MyNet(rngs=nnx.Rngs(0)), loss_fn, (x, y))``).
      optimizers: ``{name: optax optimizer}``.
      train_steps: training steps per optimizer.
      every: measurement period.
      key: a ``jax.random`` key (data order, measurement set, solver).
      batch_size: minibatch size (``None``: full-batch gradient descent).
      measure_data: the measurement set (default: ``measure_size`` random examples).
      measure_size: size of the default measurement set (``None``: all data).
      quantities: tracker quantities (see :data:`QUANTITIES`).
      tol: eigenvalue tolerance (relative residual).
      learning_rates: ``{name: eta}`` overriding the probed step sizes (for thresholds).
      log_dir: optional folder for one ``<name>.jsonl`` log per optimizer.
      overwrite: replace existing logs in ``log_dir`` (else an existing log raises).
      accuracy_fn: ``accuracy_fn(outputs, batch) -> scalar``; default: argmax accuracy
        for integer labels in ``batch[1]``, ``NaN`` otherwise.
      k: top-k size for ``"top_k"``/``"grad_overlap"``.
      verbose: print one line per optimizer.

    Returns:
      An :class:`OptimizerComparison` (``.table()``, ``.summary()``, ``.to_dict()``,
      :func:`plot_comparison`).

    Raises:
      TypeError: ``optimizers`` is not a non-empty dict.
      ValueError: a bad ``train_steps``, ``every`` or ``batch_size``, or an existing log in
        ``log_dir`` without ``overwrite``.
    """
    data = _training_data(obj)
    n = _validate_compare(data, optimizers, train_steps, every, batch_size)
    _, k_data, k_measure, k_track = jax.random.split(key, 4)
    params0, full_loss = obj.params, obj.loss
    if measure_data is None:
        measure_data = measurement_subset(data, measure_size, key=k_measure)
    order = _batch_order(k_data, n, batch_size, train_steps)
    evaluate = _make_eval(obj, accuracy_fn or _accuracy)
    runs = {}
    for name, opt in optimizers.items():
        lr = (learning_rates or {}).get(name)
        info = optimizer_info(opt, learning_rate=lr)
        log_path = None if log_dir is None else Path(log_dir) / f"{safe_name(name)}.jsonl"
        tracker = SharpnessTracker(obj.with_data(measure_data), every=every, log_path=log_path,
                                   quantities=quantities, key=k_track, k=k, tol=tol,
                                   optimizer=info, resume=False, overwrite=overwrite)
        runs[name] = _train_one(name, opt, info, full_loss, params0, data, order, train_steps,
                                tracker, evaluate)
        if verbose:
            s = runs[name].summary()
            print(f"{name}: final loss {s['final_loss']:.4g}, final sharpness "
                  f"{s['final_sharpness']}, {s['num_matvecs']} HVPs, "
                  f"{s['train_time']:.1f}+{s['measure_time']:.1f} s")
    config = {"train_steps": train_steps, "every": every, "batch_size": batch_size,
              "measure_size": int(jax.tree.leaves(measure_data)[0].shape[0]),
              "num_examples": n, "quantities": list(quantities), "tol": tol}
    return OptimizerComparison(runs=runs, config=config)


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _training_data(obj: Objective):
    """The objective's data as one in-memory batch (a list of batches is concatenated)."""
    if obj.streaming:
        raise ValueError("compare_optimizers trains on in-memory data; this objective streams "
                         "its data. Pass the data as one batch or a list of batches.")
    batches = obj.data if isinstance(obj.data, list) else [obj.data]
    return jax.tree.map(lambda *xs: jnp.concatenate([jnp.asarray(x) for x in xs]), *batches)


def _make_eval(obj: Objective, accuracy_fn):
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


def _train_one(name, opt, info, full_loss, params, data, order, train_steps, tracker, evaluate):
    """Train, measuring at every due step; times training and measuring separately."""
    step_fn = _make_train_step(full_loss, opt)
    opt_state = opt.init(params)
    losses, evals = [], []
    train_time = measure_time = 0.0
    diverged = False
    segment = time.perf_counter()
    for step in range(train_steps + 1):
        if step % tracker.every == 0 or step == train_steps:
            jax.block_until_ready((params, losses[-1:]))
            now = time.perf_counter()
            train_time += now - segment
            tracker.update(step, params, opt_state=opt_state, learning_rate=info.learning_rate,
                           force=True)
            loss, acc = evaluate(params, data)
            evals.append((step, float(loss), float(acc)))
            measure_time += time.perf_counter() - now
            diverged = bool(losses) and not np.isfinite(float(losses[-1]))
            segment = time.perf_counter()
        if step == train_steps or diverged:
            break
        idx = None if order is None else jnp.asarray(order[step])
        params, opt_state, loss = step_fn(params, opt_state, data, idx)
        losses.append(loss)
    ev = np.array(evals, dtype=np.float64).reshape(-1, 3)
    train_loss = np.asarray(jnp.stack(losses), np.float64) if losses else np.zeros(0)
    return OptimizerRun(name=name, info=info, train_loss=train_loss,
                        eval_steps=ev[:, 0].astype(int), eval_loss=ev[:, 1],
                        eval_accuracy=ev[:, 2], log=tracker.log, train_time=train_time,
                        measure_time=measure_time, diverged=diverged,
                        num_matvecs=tracker.log.total_matvecs)
