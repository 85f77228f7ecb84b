"""The dataset-mean loss (and a metric) at many points of one architecture.

Every landscape quantity is a set of points ``origin + sum_k c_k d_k`` in parameter space,
each evaluated over the whole dataset with the exact size-weighted batch mean of the
curvature operators (:func:`hessian_tools.data.dataset_mean`). :func:`evaluate_points`
runs one compiled call per chunk of points (one call per batch of streamed data), chosen
per model from measurements (``benchmarks/RESULTS_landscape.md``):

* **A ``lax.map`` over the points that vmaps ``vmap_width`` of them per step.** Batched
  matrix products ran 1.2-1.5x slower per point than plain ones on the digits MLP
  64-512-512-10 on the CPU, and vmapped convolutions become grouped ones, 2-4x slower per
  point on the digits CNN. So the width comes from the model's largest activation (1 for
  the wide MLP, up to 16 for small MLPs, where a few points per step gained 10-20%), and is
  1 for convolutional losses on the CPU. A compiled loop over points costs the forward
  convolutions nothing (one call per point measured the same), unlike the kernel-gradient
  convolutions of DEVELOPERS.md rule 3, so convolutional losses stay in the loop.
* **The work affine in the coordinates is shared** (:mod:`.affine`): the first layer's
  pre-activation is computed once per batch as ``1 + K`` stacked arrays and combined per
  point. It was faster on every digits model measured (the CNN 1.3-1.4x, whose 1-channel
  first convolution is slow for its arithmetic; the MLPs 1.05-1.5x), so it is on wherever
  some matrix product or convolution is affine.

The points' parameters are built inside the compiled call (``origin + c @ D``, fused into
their first use), so no parameter-sized copy crosses the host.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._callables import as_pytree_fn, with_precision
from hessian_tools._chunking import (_conv_activation_cached, conv_on_cpu, product_groups,
                                    spec_cached)
from hessian_tools.data import dataset_mean
from hessian_tools.landscape.affine import affine_split
from hessian_tools.landscape.directions import Directions
from hessian_tools.landscape.results import barrier
from hessian_tools.objective import Objective

__all__ = ["OutputMetric", "accuracy", "evaluate_points", "on_outputs"]


# ---- metrics ---------------------------------------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OutputMetric:
    """A metric of the model outputs, ``fn(outputs, batch) -> scalar`` mean over the batch.

    Evaluated from the same forward pass as the loss (the objective's ``predict``), so a
    surface with this metric costs one forward pass per point, not two. ``higher_is_better``
    orients barriers: for accuracy a barrier is a drop below the chord, for an error a rise.
    """

    fn: Any = dataclasses.field(metadata=dict(static=True))
    name: str = dataclasses.field(default="metric", metadata=dict(static=True))
    higher_is_better: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def __call__(self, outputs, batch):
        return self.fn(outputs, batch)


def on_outputs(fn, *, name: str | None = None, higher_is_better: bool = False) -> OutputMetric:
    """Wrap ``fn(outputs, batch) -> scalar`` as a metric of the model outputs
    (``higher_is_better``: an accuracy-like metric, whose barriers are drops).

    >>> m = on_outputs(lambda out, batch: (out > 0).mean(), name="positive")
    >>> m.name
    'positive'
    """
    if not callable(fn):
        raise TypeError(f"on_outputs needs a callable fn(outputs, batch), got {fn!r}.")
    return OutputMetric(fn, name or getattr(fn, "__name__", "metric"), bool(higher_is_better))


def metric_barrier(t, values, metric) -> float:
    """The barrier of a metric along a path, positive when the metric gets worse than the
    chord between its ends: a rise for an error-like metric, a drop for an
    :class:`OutputMetric` with ``higher_is_better`` (accuracy)."""
    values = np.asarray(values, np.float64)
    up = isinstance(metric, OutputMetric) and metric.higher_is_better
    return barrier(t, -values if up else values)[0]


def _labels(batch):
    if isinstance(batch, (tuple, list)):
        return batch[1]
    if isinstance(batch, dict):
        for key in ("y", "label", "labels", "target", "targets"):
            if key in batch:
                return batch[key]
    raise ValueError("accuracy needs integer labels at batch[1] or batch['y'|'label'|'labels']; "
                     "write your own metric with on_outputs(fn) for other batches.")


def _accuracy(outputs, batch):
    return jnp.mean(jnp.argmax(outputs, axis=-1) == _labels(batch)).astype(outputs.dtype)


accuracy = OutputMetric(_accuracy, "accuracy", higher_is_better=True)
"""Classification accuracy from logits ``(n, classes)`` and integer labels (``batch[1]``)."""


# ---- the per-point, per-batch values ---------------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Values:
    """``(params, batch) -> (m,)``: the loss, and the metric if any, on one batch."""

    loss: Any
    predict: Any = None
    output_loss: Any = None
    metric: Any = None
    shared: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def __call__(self, params, batch):
        if self.shared:                      # one forward pass for the loss and the metric
            outputs = self.predict(params, batch)
            parts = [self.output_loss(outputs, batch), self.metric(outputs, batch)]
        else:
            parts = [self.loss(params, batch)]
            if self.metric is not None:
                parts.append(self.metric(params, batch))
        return jnp.stack([jnp.asarray(p, jnp.result_type(parts[0])) for p in parts])


def _values_fn(obj: Objective, metric) -> _Values:
    if metric is None:
        return _Values(obj.loss)
    if isinstance(metric, OutputMetric):
        if not obj.has_outputs:
            raise ValueError("A metric of the outputs (on_outputs, accuracy) needs an objective "
                             "with predict and output_loss (Objective.from_nnx/from_linen, or "
                             "Objective(..., predict=, output_loss=)); pass metric(params, batch) "
                             "otherwise.")
        return _Values(obj.loss, obj.predict, obj.output_loss, metric, shared=True)
    if not callable(metric):
        raise TypeError(f"metric must be a callable metric(params, batch) -> scalar or an "
                        f"OutputMetric (ht.landscape.on_outputs(fn)), got {metric!r}.")
    return _Values(obj.loss, metric=with_precision(as_pytree_fn(metric), obj.precision))


_values_batch = jax.jit(lambda fn, params, batch: fn(params, batch))


def _point(origin, basis, c):
    """``origin + sum_k c_k basis_k`` (a short explicit sum: exact in float64)."""
    def leaf(p, d):
        total = p
        for k in range(d.shape[0]):
            total = total + c[k].astype(p.dtype) * d[k]
        return total
    return jax.tree.map(leaf, origin, basis)


def _mean_at(fn, origin, basis, c, groups):
    params = _point(origin, basis, c)
    return dataset_mean(lambda b: _values_batch(fn, params, b), groups)


@functools.partial(jax.jit, static_argnames=("width",))
def _many_points(fn, origin, basis, coords, groups, *, width):
    return jax.lax.map(lambda c: _mean_at(fn, origin, basis, c, groups), coords,
                       batch_size=width)


@functools.partial(jax.jit, static_argnames=("width",))
def _many_points_on_batch(fn, origin, basis, coords, batch, *, width):
    return jax.lax.map(lambda c: _values_batch(fn, _point(origin, basis, c), batch), coords,
                       batch_size=width)


@functools.partial(jax.jit, static_argnames=("width",))
def _affine_on_batch(fn, origin, basis, coords, batch, *, width):
    """All points on one batch, the affine part shared (:mod:`.affine`)."""
    split = affine_split(fn, origin, batch)
    env = split.shared(fn, origin, basis, batch)
    return jax.lax.map(lambda c: split.at(env, c)[0], coords, batch_size=width)


@functools.partial(jax.jit, static_argnames=("width",))
def _many_points_affine(fn, origin, basis, coords, groups, *, width):
    return dataset_mean(lambda b: _affine_on_batch(fn, origin, basis, coords, b, width=width),
                         groups)


# ---- the plan ---------------------------------------------------------------------------------

_CPU_STEP_BYTES = 4 * 1024**2       # activations of one vmapped step, CPU (cache-sized)
_DEVICE_STEP_BYTES = 512 * 1024**2  # the same on accelerators
_MAX_WIDTH_CPU = 16
_MAX_WIDTH_DEVICE = 256
_MIN_CHUNK = 64


@dataclasses.dataclass(frozen=True)
class _Plan:
    kind: str           # "compiled" or "stream"
    width: int          # points vmapped per step
    chunk: int          # points per compiled call (per write, per progress update)
    affine: bool = False    # share the affine part across the points (compiled, stream)


def _activation_bytes_per_point(obj: Objective) -> float:
    groups = obj.groups
    batch = max(int(jax.tree.leaves(s)[0].shape[1]) for s in groups.stacks)
    _, per_example = spec_cached(_conv_activation_cached, obj.loss, obj.params,
                                  groups.first_batch_spec)
    return per_example * batch


def _first_batch_spec(obj: Objective):
    if not obj.streaming:
        return obj.groups.first_batch_spec
    batch = next(iter(obj.data()), None)
    if batch is None:
        raise ValueError("The data stream yielded no batches.")
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), batch)


def _shares_products(obj: Objective, fn) -> bool:
    """Whether some matrix product or convolution of ``fn`` is affine in the coordinates."""
    return affine_split(fn, obj.params, _first_batch_spec(obj)).num_shared_products > 0


def _plan(obj: Objective, num_points: int, chunk_size, vmap_width, *, fn=None,
          affine=None) -> _Plan:
    cpu = jax.default_backend() == "cpu"
    kind = "stream" if obj.streaming else "compiled"
    if vmap_width is None:
        if obj.streaming or conv_on_cpu(obj)[0]:
            width = 1
        else:
            budget, cap = ((_CPU_STEP_BYTES, _MAX_WIDTH_CPU) if cpu
                           else (_DEVICE_STEP_BYTES, _MAX_WIDTH_DEVICE))
            width = int(np.clip(budget // max(_activation_bytes_per_point(obj), 1.0), 1, cap))
    else:
        width = _positive_int(vmap_width, "vmap_width")
    width = min(width, max(num_points, 1))
    if chunk_size is None:
        chunk = max(_MIN_CHUNK, 16 * width)
    else:
        chunk = _positive_int(chunk_size, "chunk_size")
    chunk = max(min(chunk, max(num_points, 1)), width)
    parts = math.ceil(max(num_points, 1) / chunk)      # equal chunks (one compilation), the
    chunk = math.ceil(max(num_points, 1) / parts)      # last padded by fewer than ``parts``
    if affine is None:
        affine = fn is not None and _shares_products(obj, fn)
    return _Plan(kind, width, chunk, bool(affine))


def _positive_int(value, name) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer (or None for automatic).")
    return int(value)


class _Evaluator:
    """Evaluates chunks of coordinates at ``origin + C @ basis`` with one plan."""

    def __init__(self, obj: Objective, origin, basis, *, metric=None, num_points: int,
                 chunk_size=None, vmap_width=None):
        self.obj = obj
        self.fn = _values_fn(obj, metric)
        self.origin = origin
        self.basis = basis
        self.dtype = jnp.result_type(*jax.tree.leaves(origin))
        self.plan = _plan(obj, num_points, chunk_size, vmap_width, fn=self.fn)
        self.groups = None if obj.streaming else product_groups(obj, "auto")
        self.num_values = 1 if metric is None else 2
        self.num_evaluations = 0

    def chunks(self, num: int):
        """``(start, stop)`` of the chunks covering ``num`` points."""
        return [(s, min(s + self.plan.chunk, num)) for s in range(0, num, self.plan.chunk)]

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        """Values ``(n, m)`` (float64) at the ``(n, K)`` coordinates, one plan chunk."""
        n = coords.shape[0]
        if n == 0:
            return np.zeros((0, self.num_values))
        padded = np.concatenate([coords, np.repeat(coords[-1:], self.plan.chunk - n, 0)]) \
            if n < self.plan.chunk else coords
        c = jnp.asarray(padded, self.dtype)
        width = self.plan.width
        if self.plan.kind == "compiled":
            many = _many_points_affine if self.plan.affine else _many_points
            out = np.asarray(many(self.fn, self.origin, self.basis, c, self.groups, width=width))
        else:
            out = self._stream(c, width)
        self.num_evaluations += int(padded.shape[0])
        return np.asarray(out[:n], np.float64)

    def _stream(self, c, width):
        total, count = 0.0, 0
        on_batch = _affine_on_batch if self.plan.affine else _many_points_on_batch
        for batch, size in self.obj.batches():
            part = np.asarray(on_batch(self.fn, self.origin, self.basis, c, batch, width=width),
                              np.float64)
            total, count = total + size * part, count + size
        if count == 0:
            raise ValueError("The data stream yielded no batches.")
        return total / count


def _as_basis(directions, params):
    if not isinstance(directions, Directions):
        leaves, p_leaves = jax.tree.leaves(directions), jax.tree.leaves(params)
        if (jax.tree.structure(directions) != jax.tree.structure(params)
                or any(np.ndim(d) != np.ndim(p) + 1 for d, p in zip(leaves, p_leaves))):
            raise ValueError("directions must be a Directions or a stacked basis whose leaves "
                             "have shape (num, *param_leaf.shape) for the objective's "
                             "parameters.")
        directions = Directions(vectors=directions, kind="custom")
    directions.check_matches(params, check_fingerprint=False)
    return directions.vectors


def _check_coords(coords, num):
    coords = np.asarray(coords, np.float64)
    if coords.ndim == 1 and num == 1:
        coords = coords[:, None]
    if coords.ndim != 2 or coords.shape[1] != num:
        raise ValueError(f"coords must have shape (num_points, {num}) for {num} direction(s), "
                         f"got {coords.shape}.")
    if coords.shape[0] == 0:
        raise ValueError("coords is empty: pass at least one point.")
    if not np.all(np.isfinite(coords)):
        raise ValueError("coords has non-finite entries (NaN or inf); pass finite coordinates.")
    return coords


def evaluate_points(obj: Objective, directions, coords, *, metric=None, chunk_size=None,
                    vmap_width=None):
    """The dataset-mean loss (and metric) at ``obj.params + sum_k coords[:, k] d_k``.

    The batch weighting is the operators' (exact size-weighted mean); chunks of points run
    as one compiled call each (see the module docstring for the plans).

    Args:
      obj: the objective; its ``params`` are the origin.
      directions: a :class:`Directions`, or a stacked basis pytree (leaves ``(K, ...)``).
      coords: ``(num_points, K)`` coordinates (``(num_points,)`` for one direction).
      metric: ``metric(params, batch) -> scalar`` mean over the batch (one more forward
        pass per point), or an :class:`OutputMetric` such as :data:`accuracy`, computed from
        the loss's own forward pass.
      chunk_size: points per compiled call (default: at least 64; the last chunk is padded
        to the same size, so there is one compilation).
      vmap_width: points vmapped per step (default: from the model's activation size).

    Returns:
      ``(loss, metric)``: float64 arrays of shape ``(num_points,)``; ``metric`` is None
      without one. Cost: one forward pass over the data per point (plus the padding of the
      last chunk); memory: ``vmap_width`` points' activations and parameters.

    Raises:
      ValueError: mismatched directions (the leaf named), bad coordinates.
    """
    basis = _as_basis(directions, obj.params)
    coords = _check_coords(coords, jax.tree.leaves(basis)[0].shape[0])
    ev = _Evaluator(obj, obj.params, basis, metric=metric, num_points=coords.shape[0],
                    chunk_size=chunk_size, vmap_width=vmap_width)
    out = np.concatenate([ev(coords[a:b]) for a, b in ev.chunks(coords.shape[0])])
    return out[:, 0], (out[:, 1] if metric is not None else None)
