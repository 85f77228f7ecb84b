"""The thing being analysed: a loss, a point in parameter space, and the data.

An :class:`Objective` holds ``loss(params, batch) -> scalar`` (the *mean* loss over the
batch), the parameters (any pytree), and the data: one batch, a list of batches, or a
callable returning an iterator of batches (streamed, for data that does not fit in
memory). Curvature operators average over the whole dataset, batches weighted by their
sizes, so a ragged last batch is handled exactly.

Optionally it also holds ``predict(params, batch) -> outputs`` and
``output_loss(outputs, batch) -> scalar``: with both, the Gauss-Newton operator exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Objective", "Static", "BatchGroups", "WithPrecision"]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Static:
    """Wraps a plain function so it travels through ``jit`` as static data.

    Two wrappers of the same function compare equal, so compiled code is reused.
    """

    fn: Callable

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


_PRECISIONS = ("highest", "high", "default", "float32", "tensorfloat32", "bfloat16")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WithPrecision:
    """``fn`` traced under ``jax.default_matmul_precision(precision)``.

    The precision is fixed on every matrix product and convolution as it is traced, and
    their derivatives (JVPs and transposes) inherit it, so gradients, Hessian-vector
    products and Gauss-Newton products of ``fn`` all compute at that precision. On CPUs
    float32 products are float32 whatever the setting; on NVIDIA GPUs JAX's default
    computes them in TF32 (about three decimal digits).
    """

    fn: Callable
    precision: str = dataclasses.field(metadata=dict(static=True))

    def __call__(self, *args, **kwargs):
        with jax.default_matmul_precision(self.precision):
            return self.fn(*args, **kwargs)


def _with_precision(fn, precision):
    if isinstance(fn, WithPrecision):
        fn = fn.fn
    return fn if fn is None or precision is None else WithPrecision(fn, precision)


def _as_pytree_fn(fn):
    """Return ``fn`` if it is a registered pytree callable, else wrap it as :class:`Static`."""
    if fn is None:
        return None
    if not callable(fn):
        raise TypeError(f"Expected a callable, got {type(fn).__name__}: {fn!r}.")
    leaves = jax.tree.leaves(fn)
    if len(leaves) == 1 and leaves[0] is fn:
        return Static(fn)
    return fn


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BatchGroups:
    """The dataset materialised as groups of equal-sized batches.

    ``stacks[g]`` is a batch pytree whose leaves have shape ``(num_batches_g, batch_size_g,
    ...)``; ``weights[g]`` is ``batch_size_g / num_examples``. The mean over the dataset of a
    per-batch mean quantity ``f`` is ``sum_g weights[g] * sum_b f(stacks[g][b])``.
    ``unroll`` (static) asks compiled code to sum the batches with a loop unrolled at trace
    time instead of a ``lax.scan`` (see ``operators._dataset_mean``).
    """

    stacks: tuple
    weights: tuple
    unroll: bool = dataclasses.field(default=False, metadata=dict(static=True))

    @property
    def num_examples(self) -> int:
        return int(sum(_batch_size(s) * _num_batches(s) for s in self.stacks))

    @property
    def num_batches(self) -> int:
        return int(sum(_num_batches(s) for s in self.stacks))

    @property
    def first_batch_spec(self):
        """The first batch's leaves as ``jax.ShapeDtypeStruct`` (slicing ``s[0]`` would
        compile an XLA slice per leaf)."""
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype),
                            self.stacks[0])

    def split(self, max_size: int, *, unroll: bool | None = None) -> "BatchGroups":
        """The same examples in batches of at most ``max_size``, as equal as possible.

        A batch of ``n > max_size`` examples becomes ``ceil(n / max_size)`` consecutive
        chunks whose sizes differ by at most one; smaller batches are kept. Exact for a loss
        that is a per-example mean (the contract of :class:`Objective`): the chunks are
        weighted by their sizes. Runs in NumPy on the host (nothing is compiled).
        """
        if int(max_size) < 1:
            raise ValueError(f"max_size must be a positive number of examples, got {max_size}.")
        total = self.num_examples
        by_size: dict[int, list] = {}
        for stack in self.stacks:
            num, size = _num_batches(stack), _batch_size(stack)
            parts = -(-size // int(max_size))
            q, r = divmod(size, parts)
            start = 0
            for chunk, count in ((q + 1, r), (q, parts - r)):
                if count == 0:
                    continue
                stop = start + chunk * count
                by_size.setdefault(chunk, []).append(jax.tree.map(
                    lambda s, a=start, b=stop, c=chunk, k=count: np.asarray(s)[:, a:b].reshape(
                        (num * k, c) + np.shape(s)[2:]), stack))
                start = stop
        stacks = tuple(jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs)), *pieces)
                       for pieces in by_size.values())
        weights = tuple(size / total for size in by_size)
        return BatchGroups(stacks, weights, self.unroll if unroll is None else bool(unroll))


def _batch_size(stack) -> int:
    return int(jax.tree.leaves(stack)[0].shape[1])


def _num_batches(stack) -> int:
    return int(jax.tree.leaves(stack)[0].shape[0])


def _leading_size(batch, index: int) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError(f"Batch {index} has no array leaves. A batch is a pytree of arrays "
                         "whose leading axis indexes examples, e.g. (x, y).")
    sizes = {int(np.shape(a)[0]) if np.ndim(a) else None for a in leaves}
    if None in sizes:
        raise ValueError(f"Batch {index} has a scalar leaf; every leaf needs a leading "
                         "example axis. Wrap scalars per example or close over them in the loss.")
    if len(sizes) != 1:
        raise ValueError(f"Batch {index} mixes leading sizes {sorted(sizes)}: every leaf of a "
                         "batch must have the same number of examples along axis 0.")
    size = sizes.pop()
    if size == 0:
        raise ValueError(f"Batch {index} is empty (0 examples). Drop it from the data.")
    return size


def _check_batches(batches: Sequence) -> None:
    first = batches[0]
    treedef = jax.tree.structure(first)
    sig = [(np.shape(a)[1:], jnp.result_type(a)) for a in jax.tree.leaves(first)]
    for i, batch in enumerate(batches):
        _leading_size(batch, i)
        if jax.tree.structure(batch) != treedef:
            raise ValueError(f"Batch {i} has structure {jax.tree.structure(batch)}, but batch 0 "
                             f"has {treedef}. All batches must share one structure.")
        got = [(np.shape(a)[1:], jnp.result_type(a)) for a in jax.tree.leaves(batch)]
        if got != sig:
            raise ValueError(f"Batch {i} has per-example shapes/dtypes {got}, but batch 0 has "
                             f"{sig}. All batches must agree except in their batch size.")


def group_batches(batches: Sequence) -> BatchGroups:
    """Stack a list of batches into groups of equal batch size (validated)."""
    if len(batches) == 0:
        raise ValueError("The data is empty: got a list of 0 batches. Pass at least one batch.")
    _check_batches(batches)
    by_size: dict[int, list] = {}
    for i, batch in enumerate(batches):
        by_size.setdefault(_leading_size(batch, i), []).append(batch)
    total = sum(size * len(group) for size, group in by_size.items())
    stacks = tuple(jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *group)
                   for group in by_size.values())
    weights = tuple(size / total for size in by_size)
    return BatchGroups(stacks, weights)


def _path_str(path) -> str:
    """``a/b/c`` for a pytree key path (an NNX variable's trailing ``.value`` is dropped)."""
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def check_finite(params) -> None:
    """Raise ``ValueError`` naming the first parameter leaf with a NaN or infinity."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        arr = np.asarray(leaf)
        if not np.issubdtype(arr.dtype, np.inexact):
            raise TypeError(f"Parameter leaf '{_path_str(path)}' has dtype {arr.dtype}; only "
                            "floating-point parameters can be differentiated. Move integer "
                            "state out of the params pytree.")
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise ValueError(f"Parameter leaf '{_path_str(path)}' (shape {arr.shape}) has {bad} "
                             "non-finite entries (NaN or inf). The curvature at such a point is "
                             "undefined: load an earlier checkpoint or fix the training run.")


@dataclasses.dataclass(frozen=True)
class Objective:
    """A mean loss at a point in parameter space, over a dataset.

    Args:
      loss: ``loss(params, batch) -> scalar``, the mean loss over the examples of ``batch``.
      params: any pytree of floating-point arrays: the point being analysed.
      data: one batch (a pytree of arrays with a leading example axis, e.g. ``(x, y)``), a
        ``list`` of batches (sizes may differ), or a zero-argument callable returning an
        iterator of batches (streamed each pass; use for data too large for memory).
      predict: optional ``predict(params, batch) -> outputs`` (e.g. logits).
      output_loss: optional ``output_loss(outputs, batch) -> scalar`` with
        ``loss(p, b) == output_loss(predict(p, b), b)``. Needed for the Gauss-Newton operator.
      precision: the float32 matrix-product precision of everything computed from the loss
        (gradients, curvature products), as in ``jax.default_matmul_precision``. The default
        ``"highest"`` computes float32 products in float32. It changes nothing on CPUs; on
        NVIDIA GPUs JAX would otherwise use TF32, whose rounding (about 1e-3 relative) puts
        a floor under eigenvalue residuals near the default ``tol`` (measured on an H100:
        top-5 errors of 1.3e-4 against 2.3e-5, see ``benchmarks/RESULTS_gpu.md``). Pass
        ``"default"`` for TF32's speed, or ``None`` to follow JAX's global setting.

    Raises:
      ValueError: non-finite parameters (the leaf is named), empty data, inconsistent
        batches, a loss that does not return a scalar, or an unknown ``precision``.
      TypeError: a non-callable loss or integer parameters.
    """

    loss: Callable
    params: Any
    data: Any
    predict: Callable | None = None
    output_loss: Callable | None = None
    precision: str | None = "highest"

    def __post_init__(self):
        if self.precision is not None and self.precision not in _PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not a matmul precision; use one of "
                             f"{_PRECISIONS} (or None for JAX's global default).")
        if self.loss is None and self.predict is not None and self.output_loss is not None:
            object.__setattr__(self, "loss", _ComposedLoss(_as_pytree_fn(self.predict),
                                                           _as_pytree_fn(self.output_loss)))
        for name in ("loss", "predict", "output_loss"):
            object.__setattr__(self, name, _with_precision(_as_pytree_fn(getattr(self, name)),
                                                           self.precision))
        if self.loss is None:
            raise TypeError("Objective needs a loss(params, batch) -> scalar, or both predict "
                            "and output_loss.")
        if not jax.tree.leaves(self.params):
            raise ValueError("params has no array leaves: there is nothing to differentiate.")
        check_finite(self.params)
        if not self.streaming:
            groups = self.groups  # validates the batches
            self._check_scalar_loss(groups.first_batch_spec)

    # ---- data --------------------------------------------------------------------------

    @property
    def streaming(self) -> bool:
        """True when the data is a callable streamed on every pass."""
        return callable(self.data) and not isinstance(self.data, (list, tuple, dict))

    @property
    def groups(self) -> BatchGroups:
        """The data as stacked groups of equal-sized batches (materialised once)."""
        if self.streaming:
            raise ValueError("This objective streams its data; it has no materialised groups.")
        cached = self.__dict__.get("_groups")
        if cached is None:
            batches = self.data if isinstance(self.data, list) else [self.data]
            cached = group_batches(batches)
            object.__setattr__(self, "_groups", cached)
        return cached

    def batches(self):
        """Iterate over ``(batch, weight_numerator)`` pairs: each batch with its size."""
        if self.streaming:
            for i, batch in enumerate(self.data()):
                yield batch, _leading_size(batch, i)
        else:
            for stack in self.groups.stacks:
                for b in range(_num_batches(stack)):
                    yield jax.tree.map(lambda s: s[b], stack), _batch_size(stack)

    @property
    def num_examples(self) -> int:
        if self.streaming:
            return sum(n for _, n in self.batches())
        return self.groups.num_examples

    @property
    def num_params(self) -> int:
        return int(sum(np.size(a) for a in jax.tree.leaves(self.params)))

    @property
    def has_outputs(self) -> bool:
        """True when ``predict`` and ``output_loss`` are both given (GGN available)."""
        return self.predict is not None and self.output_loss is not None

    def _check_scalar_loss(self, batch) -> None:
        out = jax.eval_shape(self.loss, self.params, batch)
        if not (hasattr(out, "shape") and out.shape == ()):
            shape = getattr(out, "shape", type(out).__name__)
            raise ValueError(f"loss(params, batch) must return a scalar, got {shape}. Return the "
                             "mean over the batch, e.g. jnp.mean(per_example_losses).")

    # ---- derived objectives ------------------------------------------------------------

    def with_params(self, params) -> "Objective":
        """The same loss and data at another point (compiled functions are reused)."""
        _check_same_structure(self.params, params, what="new params")
        new = dataclasses.replace(self, params=params)
        for cached in ("_groups", "_product_groups"):       # same data: keep what was built
            if cached in self.__dict__:
                object.__setattr__(new, cached, self.__dict__[cached])
        return new

    def restrict(self, select) -> "Objective":
        """The objective as a function of a subset of the parameters, the rest held fixed.

        Args:
          select: a string (leaves whose path, written ``a/b/c``, starts with it or contains
            it as a whole path component), a list of such strings, or a predicate
            ``select(path: str, leaf) -> bool``.

        Returns:
          An Objective whose params are a dict ``{path: leaf}`` of the selected leaves.
        """
        from hessian_tools._restrict import restrict_objective
        return restrict_objective(self, select)

    def value_and_grad(self):
        """The dataset-mean loss and its gradient at ``params`` (one pass over the data)."""
        from hessian_tools.operators import value_and_grad
        return value_and_grad(self)

    # ---- adapters ----------------------------------------------------------------------

    @classmethod
    def from_nnx(cls, model, loss_fn: Callable, data, *, inputs: Callable | None = None,
                 wrt=None, precision: str | None = "highest") -> "Objective":
        """An objective from a flax NNX model.

        Only ``nnx.Param`` variables (or the filter ``wrt``) are differentiated; other state
        (BatchNorm statistics, RNG counters) is held fixed, with the model in eval mode
        (a copy is switched with ``model.eval()``; your model is not modified).

        Args:
          model: an ``nnx.Module``.
          loss_fn: ``loss_fn(outputs, batch) -> scalar`` mean loss, where
            ``outputs = model(inputs(batch))``.
          data: see :class:`Objective`.
          inputs: picks the model input from a batch; default ``batch[0]`` for tuples and
            lists, ``batch["x"]`` (or ``"inputs"``, ``"image"``) for dicts, else the batch.
          precision: see :class:`Objective`.
        """
        from flax import nnx
        model = nnx.clone(model)
        model.eval()
        graphdef, params, rest = nnx.split(model, wrt if wrt is not None else nnx.Param, ...)
        predict = _NNXPredict(graphdef, _as_pytree_fn(inputs or default_inputs), rest)
        return cls(None, params, data, predict=predict, output_loss=loss_fn,
                   precision=precision)

    @classmethod
    def from_linen(cls, module, variables, loss_fn: Callable, data, *,
                   inputs: Callable | None = None, apply_kwargs: dict | None = None,
                   precision: str | None = "highest") -> "Objective":
        """An objective from a flax linen module and its ``variables``.

        Only ``variables["params"]`` is differentiated; other collections (``batch_stats``)
        are held fixed. Pass ``apply_kwargs`` for eval-mode flags, e.g.
        ``{"train": False}`` or ``{"deterministic": True}``. ``precision``: see
        :class:`Objective`.
        """
        if "params" not in variables:
            raise ValueError(f"variables has collections {list(variables)}; expected a "
                             "'params' collection (the output of module.init).")
        rest = {k: v for k, v in variables.items() if k != "params"}
        predict = _LinenPredict(Static(module.apply), _as_pytree_fn(inputs or default_inputs),
                                tuple(sorted((apply_kwargs or {}).items())), rest)
        return cls(None, variables["params"], data, predict=predict, output_loss=loss_fn,
                   precision=precision)


def default_inputs(batch):
    """The model input of a batch: ``batch[0]``, or ``batch['x'|'inputs'|'image']``."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("x", "inputs", "input", "image", "images"):
            if key in batch:
                return batch[key]
        raise ValueError(f"Cannot tell the model input in a batch with keys {sorted(batch)}; "
                         "pass inputs=lambda batch: batch['your_key'].")
    return batch


def _check_same_structure(ref, new, *, what: str) -> None:
    ref_flat, ref_def = jax.tree_util.tree_flatten_with_path(ref)
    new_flat, new_def = jax.tree_util.tree_flatten_with_path(new)
    if ref_def != new_def:
        ref_paths = [_path_str(p) for p, _ in ref_flat]
        new_paths = [_path_str(p) for p, _ in new_flat]
        missing = sorted(set(ref_paths) - set(new_paths))[:3]
        extra = sorted(set(new_paths) - set(ref_paths))[:3]
        raise ValueError(f"{what} do not match the parameter tree: missing leaves {missing}, "
                         f"unexpected leaves {extra}.")
    for (path, a), (_, b) in zip(ref_flat, new_flat):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"{what}: leaf '{_path_str(path)}' has shape {np.shape(b)}, "
                             f"expected {np.shape(a)}.")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _ComposedLoss:
    predict: Any
    output_loss: Any

    def __call__(self, params, batch):
        return self.output_loss(self.predict(params, batch), batch)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _NNXPredict:
    graphdef: Any = dataclasses.field(metadata=dict(static=True))
    inputs: Any = dataclasses.field(metadata=dict(static=True))
    rest: Any = None

    def __call__(self, params, batch):
        from flax import nnx
        model = nnx.merge(self.graphdef, params, self.rest)
        return model(self.inputs(batch))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _LinenPredict:
    apply: Any = dataclasses.field(metadata=dict(static=True))
    inputs: Any = dataclasses.field(metadata=dict(static=True))
    kwargs: tuple = dataclasses.field(metadata=dict(static=True))
    rest: Any = None

    def __call__(self, params, batch):
        return self.apply({**self.rest, "params": params}, self.inputs(batch), **dict(self.kwargs))
