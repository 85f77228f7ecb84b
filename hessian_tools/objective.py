"""The thing being analysed: a loss, a point in parameter space, and the data.

An :class:`Objective` holds ``loss(params, batch) -> scalar`` (the *mean* loss over the
batch), the parameters (any pytree), and the data: one batch, a list of batches, or a
callable returning an iterator of batches (streamed, for data that does not fit in
memory). Curvature operators average over the whole dataset, batches weighted by their
sizes, so a ragged last batch is handled exactly.

Optionally it also holds ``predict(params, batch) -> outputs`` and
``output_loss(outputs, batch) -> scalar``: with both, the Gauss-Newton operator exists.
Objectives built from flax models (:meth:`Objective.from_nnx`, :meth:`Objective.from_linen`)
also carry the model's non-differentiated *state* (BatchNorm statistics and other
variables), which :meth:`Objective.with_params` can replace together with the parameters.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hessian_tools import _host, tree
from hessian_tools._callables import (PRECISIONS, ComposedLoss, Embed, LinenPredict,
                                      ModelPredict, NNXPredict, Restricted, Static, WithPrecision,
                                      as_pytree_fn, default_inputs, jaxpr_eqns, unwrap,
                                      with_precision)
from hessian_tools.data import BatchGroups, couples_examples, group_batches, leading_size

__all__ = ["Objective", "BN_MODES", "check_finite"]

BN_MODES = ("eval", "batch")


def check_finite(params, *, what: str = "Parameter") -> None:
    """Raise naming the first leaf with a NaN or infinity (``ValueError``) or a dtype that
    cannot be differentiated (``TypeError``: integer, boolean or complex).

    On a single CPU device NumPy reads the leaves in place (nothing to compile). Elsewhere
    ``jax.Array`` leaves are counted where they live (one compiled reduction over all of
    them; only the counts come back), so sharded parameters, even ones that span other
    processes' devices, are never gathered or read into host memory.
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in flat:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{what} leaf '{tree.path_str(path)}' has dtype {dtype}; only "
                            "real floating-point parameters can be differentiated. Move integer "
                            "state out of the params pytree.")
    on_device = [] if _host.host_is_device() else [
        i for i, (_, leaf) in enumerate(flat) if isinstance(leaf, jax.Array)]
    counts = dict(zip(on_device, np.asarray(_nonfinite_counts([flat[i][1] for i in on_device]))
                      if on_device else []))
    for i, (path, leaf) in enumerate(flat):
        bad = counts[i] if i in counts else int(np.size(leaf) - np.count_nonzero(np.isfinite(
            np.asarray(leaf, np.float64) if jnp.result_type(leaf) == jnp.bfloat16
            else np.asarray(leaf))))
        if bad:
            raise ValueError(f"{what} leaf '{tree.path_str(path)}' (shape {np.shape(leaf)}) has "
                             f"{bad} non-finite entries (NaN or inf). The curvature at such a "
                             "point is undefined: load an earlier checkpoint or fix the training "
                             "run.")


@jax.jit
def _nonfinite_counts(leaves):
    return jnp.stack([jnp.sum(~jnp.isfinite(a), dtype=jnp.int32) for a in leaves])


def _model_of(fn) -> ModelPredict | None:
    """The flax model adapter inside a (wrapped, restricted, composed) function, if any."""
    fn = unwrap(fn)
    if isinstance(fn, ModelPredict):
        return fn
    if isinstance(fn, Restricted):
        return _model_of(fn.fn)
    if isinstance(fn, ComposedLoss):
        return _model_of(fn.predict)
    return None


def _map_model(fn, f, params=None):
    """``fn`` with its model adapter replaced by ``f(adapter, adapter_params)``, the wrappers
    rebuilt around it. ``params`` are ``fn``'s parameters (a restriction embeds them into the
    adapter's full tree); ``None`` passes ``None`` down."""
    if isinstance(fn, (WithPrecision, Restricted)):
        inner = params if params is None or isinstance(fn, WithPrecision) else fn.embed(params)
        return dataclasses.replace(fn, fn=_map_model(fn.fn, f, inner))
    if isinstance(fn, ComposedLoss):
        return dataclasses.replace(fn, predict=_map_model(fn.predict, f, params))
    if isinstance(fn, ModelPredict):
        return f(fn, params)
    return fn


def _cast_floating(x, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a).astype(dtype)
                        if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, x)


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
        a floor under eigenvalue residuals near the default ``tol``. Pass ``"default"`` for
        TF32's speed, or ``None`` to follow JAX's global setting.
      couples_examples: whether the loss couples the examples of a batch (batch
        statistics, in-batch negatives): then a batch is the unit of the loss and is never
        split into chunks, and per-example quantities (the empirical Fisher) are refused.
        ``None`` (default): detected when it matters (see
        :func:`hessian_tools.data.couples_examples`).

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
    couples_examples: bool | None = None

    def __post_init__(self):
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not a matmul precision; use one of "
                             f"{PRECISIONS} (or None for JAX's global default).")
        if self.loss is None and self.predict is not None and self.output_loss is not None:
            object.__setattr__(self, "loss", ComposedLoss(as_pytree_fn(unwrap(self.predict)),
                                                          as_pytree_fn(unwrap(self.output_loss))))
        for name in ("loss", "predict", "output_loss"):
            object.__setattr__(self, name, with_precision(as_pytree_fn(getattr(self, name)),
                                                          self.precision))
        if self.loss is None:
            raise TypeError("Objective needs a loss(params, batch) -> scalar, or both predict "
                            "and output_loss.")
        if not jax.tree.leaves(self.params):
            raise ValueError("params has no array leaves: there is nothing to differentiate.")
        check_finite(self.params)
        if self.state is not None:
            check_finite(self.state, what="Model state")
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
                yield batch, leading_size(batch, i)
        else:
            for stack in self.groups.stacks:
                num = int(jax.tree.leaves(stack)[0].shape[0])
                for b in range(num):
                    batch = jax.tree.map(lambda s: s[b], stack)
                    yield batch, leading_size(batch, b)

    @property
    def num_examples(self) -> int:
        if self.streaming:
            return sum(n for _, n in self.batches())
        return self.groups.num_examples

    @property
    def num_params(self) -> int:
        return int(sum(np.size(a) for a in jax.tree.leaves(self.params)))

    @property
    def dtype(self):
        """The floating dtype of the parameters (the widest among the leaves)."""
        return jnp.result_type(*[jnp.result_type(a) for a in jax.tree.leaves(self.params)])

    @property
    def has_outputs(self) -> bool:
        """True when ``predict`` and ``output_loss`` are both given (GGN available)."""
        return self.predict is not None and self.output_loss is not None

    def _check_scalar_loss(self, batch) -> None:
        try:
            out = jax.eval_shape(self.loss, self.params, batch)
        except Exception as err:
            if type(err).__name__ == "ModifyScopeVariableError":      # linen, train mode
                raise ValueError(
                    "The model tried to update its batch statistics while being analysed: it "
                    f"runs in training mode ({err}). Pass apply_kwargs that switch it to "
                    "evaluation (e.g. {'train': False}) for bn_mode='eval', or bn_mode='batch' "
                    "to analyse it with the statistics of each batch.") from None
            raise
        if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == ()):
            shape = getattr(out, "shape", type(out).__name__)
            raise ValueError(f"loss(params, batch) must return a scalar, got {shape}. Return the "
                             "mean over the batch, e.g. jnp.mean(per_example_losses).")

    def examples_coupled(self) -> bool:
        """Whether the loss couples the examples of a batch (declared, else detected once on
        the first batch: see :func:`hessian_tools.data.couples_examples`)."""
        if self.couples_examples is not None:
            return self.couples_examples
        cached = self.__dict__.get("_coupled")
        if cached is None:
            batch = next(iter(self.batches()))[0]
            cached = couples_examples(self.loss, self.params, batch)
            object.__setattr__(self, "_coupled", cached)
        return cached

    # ---- the model's state ---------------------------------------------------------------

    @property
    def state(self):
        """The model's non-differentiated variables (BatchNorm statistics, ...) for objectives
        built from flax models (``None`` otherwise)."""
        model = _model_of(self.predict) or _model_of(self.loss)
        return None if model is None else model.state

    @property
    def required_state(self):
        """The part of :attr:`state` the loss depends on: what a checkpoint must provide
        (BatchNorm statistics are not needed with ``bn_mode="batch"``)."""
        model = _model_of(self.predict) or _model_of(self.loss)
        return None if model is None else model.required_state

    @property
    def bn_mode(self) -> str | None:
        """``"eval"`` or ``"batch"`` for objectives built from flax models, else ``None``."""
        model = _model_of(self.predict) or _model_of(self.loss)
        return None if model is None else model.bn_mode

    def with_state(self, state) -> "Objective":
        """The same objective with the model's state replaced (same structure and shapes)."""
        if self.state is None:
            raise ValueError("This objective has no model state (it was not built from a flax "
                             "model with non-parameter variables).")
        tree.check_same_structure(self.state, state, what="The new model state's leaves")
        replace = lambda model, _: model.with_state(state)
        new = dataclasses.replace(self, loss=_map_model(self.loss, replace),
                                  predict=_map_model(self.predict, replace))
        return self._keep_caches(new)

    # ---- derived objectives ------------------------------------------------------------

    def with_params(self, params, *, state=None) -> "Objective":
        """The same loss and data at another point (compiled functions are reused).

        Args:
          params: a pytree like ``self.params``.
          state: optionally, the model state at that point (like :attr:`state`).
        """
        tree.check_same_structure(self.params, params, what="new params")
        new = self if state is None else self.with_state(state)
        return self._keep_caches(dataclasses.replace(new, params=params))

    def with_data(self, data) -> "Objective":
        """The same loss at the same point on other data (one batch, a list, or a stream)."""
        return dataclasses.replace(self, data=data)

    def _keep_caches(self, new: "Objective") -> "Objective":
        for cached in ("_groups", "_coupled"):       # same data and function: keep them
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
        match = _selector(select)
        flat, treedef = jax.tree_util.tree_flatten_with_path(self.params)
        paths = [tree.path_str(p) for p, _ in flat]
        chosen = [bool(match(path, leaf)) for path, (_, leaf) in zip(paths, flat)]
        if not any(chosen):
            raise ValueError(f"select={select!r} matched none of the parameter leaves. "
                             f"Available paths: {paths[:20]}{' ...' if len(paths) > 20 else ''}.")
        embed = Embed(treedef, tuple(zip(paths, chosen)),
                      tuple(leaf for (_, leaf), c in zip(flat, chosen) if not c))
        sub = {path: leaf for path, (_, leaf), c in zip(paths, flat, chosen) if c}
        predict = Restricted(unwrap(self.predict), embed) if self.predict is not None else None
        return Objective(Restricted(unwrap(self.loss), embed), sub, self.data, predict=predict,
                         output_loss=self.output_loss, precision=self.precision,
                         couples_examples=self.couples_examples)

    def astype(self, dtype) -> "Objective":
        """The objective computed in ``dtype``: parameters, data, model state and, for flax
        NNX models, every module's ``dtype``/``param_dtype`` are cast.

        ``jnp.float64`` needs ``jax.config.update("jax_enable_x64", True)``. Operations the
        model pins to another dtype (a module or function with an explicit float32 dtype)
        stay there; a ``RuntimeWarning`` lists them, since they cap the accuracy of the
        analysis at their precision.
        """
        dtype = jnp.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"dtype={dtype} is not a floating dtype; use jnp.float32 or "
                             "jnp.float64.")
        if dtype == jnp.float64 and not jax.config.jax_enable_x64:
            raise ValueError("float64 needs x64: call jax.config.update('jax_enable_x64', True) "
                             "at start-up (or set JAX_ENABLE_X64=1).")
        cast = lambda x: _cast_floating(x, dtype)
        recast = lambda fn: cast(_map_model(fn, functools.partial(_recast, dtype=dtype),
                                            self.params))
        data = _CastStream(self.data, dtype) if self.streaming else cast(self.data)
        new = Objective(recast(self.loss), cast(self.params), data,
                        predict=recast(self.predict),
                        output_loss=self.output_loss, precision=self.precision,
                        couples_examples=self.couples_examples)
        if not new.streaming:
            _warn_other_dtypes(new, dtype)
        return new

    def describe(self) -> dict:
        """What is analysed, for reports: dtype, precision, BatchNorm mode, sizes."""
        return {"dtype": str(jnp.dtype(self.dtype)), "precision": self.precision,
                "bn_mode": self.bn_mode, "num_params": self.num_params,
                "num_examples": None if self.streaming else self.num_examples}

    # ---- adapters ----------------------------------------------------------------------

    @classmethod
    def from_nnx(cls, model, output_loss: Callable, data, *, inputs: Callable | None = None,
                 wrt=None, precision: str | None = "highest", bn_mode: str = "eval",
                 dtype=None) -> "Objective":
        """An objective from a flax NNX model.

        Only ``nnx.Param`` variables (or the filter ``wrt``) are differentiated. The other
        variables are the model's *state* (:attr:`Objective.state`): BatchNorm statistics
        and any other ``nnx.Variable`` are held fixed at their values in ``model``; RNG
        state is carried but unused, since the analysed copy runs deterministically (dropout
        off; your model is not modified).

        Args:
          model: an ``nnx.Module``.
          output_loss: ``output_loss(outputs, batch) -> scalar`` mean loss, where
            ``outputs = model(inputs(batch))``.
          data: see :class:`Objective`.
          inputs: picks the model input from a batch; default ``batch[0]`` for tuples and
            lists, ``batch["x"]`` (or ``"inputs"``, ``"image"``) for dicts, else the batch.
          wrt: the variables to differentiate (an NNX filter; default ``nnx.Param``).
          precision: see :class:`Objective`.
          bn_mode: ``"eval"`` (default): BatchNorm normalises with the running statistics in
            the model's state, the function the trained model computes at test time.
            ``"batch"``: with the statistics of each batch, as in training (the Hessian of
            the training loss that Ghorbani et al. 2019 study, in which BatchNorm suppresses
            the outlier eigenvalues). A batch is then the unit of the loss: it is never split
            into chunks, and the dataset mean weights whole batches by their sizes.
          dtype: cast the analysis to this dtype (see :meth:`astype`), e.g. ``jnp.float64``.

        Raises:
          ValueError: an unknown ``bn_mode``, or ``bn_mode="batch"`` for a model without
            ``nnx.BatchNorm`` layers.
        """
        _check_bn_mode(bn_mode)
        model = nnx.clone(model)
        model.eval()
        if bn_mode == "batch":
            if not any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_modules(model)):
                raise ValueError("bn_mode='batch' asks for batch statistics, but the model has "
                                 "no nnx.BatchNorm layer. Use bn_mode='eval'.")
            model.set_attributes(nnx.BatchNorm, use_running_average=False)
        predict = _split_nnx(model, wrt, as_pytree_fn(inputs or default_inputs), bn_mode)
        obj = cls(None, predict.params, data, predict=predict.predict, output_loss=output_loss,
                  precision=precision, couples_examples=True if bn_mode == "batch" else None)
        return obj if dtype is None else obj.astype(dtype)

    @classmethod
    def from_linen(cls, module, variables, output_loss: Callable, data, *,
                   inputs: Callable | None = None, apply_kwargs: dict | None = None,
                   precision: str | None = "highest", bn_mode: str = "eval",
                   dtype=None) -> "Objective":
        """An objective from a flax linen module and its ``variables``.

        Only ``variables["params"]`` is differentiated; the other collections are the
        model's *state* (``batch_stats``, ...), held fixed. Linen modules switch BatchNorm
        with their own flags: pass them in ``apply_kwargs``, e.g. ``{"train": False}`` for
        ``bn_mode="eval"`` and ``{"train": True}`` for ``bn_mode="batch"`` (then the
        statistics collections are mutable and their updates discarded). ``precision``,
        ``bn_mode`` and ``dtype``: see :meth:`from_nnx`.

        Raises:
          ValueError: no ``params`` collection; a model that updates its statistics in
            ``"eval"`` mode, or does not compute batch statistics in ``"batch"`` mode.
        """
        _check_bn_mode(bn_mode)
        if "params" not in variables:
            raise ValueError(f"variables has collections {list(variables)}; expected a "
                             "'params' collection (the output of module.init).")
        rest = {k: v for k, v in variables.items() if k != "params"}
        predict = LinenPredict(apply=Static(module.apply),
                               inputs=as_pytree_fn(inputs or default_inputs),
                               kwargs=tuple(sorted((apply_kwargs or {}).items())), state=rest,
                               bn_mode=bn_mode)
        obj = cls(None, variables["params"], data, predict=predict, output_loss=output_loss,
                  precision=precision, couples_examples=True if bn_mode == "batch" else None)
        if bn_mode == "batch":
            _check_linen_batch_mode(obj, module, predict)
        return obj if dtype is None else obj.astype(dtype)


def _check_bn_mode(bn_mode) -> None:
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode={bn_mode!r} is not one of {BN_MODES}: 'eval' uses the "
                         "running statistics, 'batch' the statistics of each batch.")


@dataclasses.dataclass(frozen=True)
class _SplitNNX:
    params: Any
    predict: NNXPredict


def _split_nnx(model, wrt, inputs, bn_mode) -> _SplitNNX:
    graphdef, params, rngs, state = nnx.split(model, wrt if wrt is not None else nnx.Param,
                                              nnx.RngState, ...)
    return _SplitNNX(params, NNXPredict(graphdef=graphdef, inputs=inputs, rngs=rngs,
                                        state=state, bn_mode=bn_mode))


def _recast(model: ModelPredict, params, *, dtype) -> ModelPredict:
    """The adapter with its state cast and, for NNX, every module's ``dtype`` and
    ``param_dtype`` attributes set to ``dtype`` (``params``: the model's parameters)."""
    if isinstance(model, NNXPredict):
        full = nnx.merge(model.graphdef, params, model.rngs, model.state)
        full.set_attributes(dtype=dtype, param_dtype=dtype, raise_if_not_found=False)
        model = dataclasses.replace(model, graphdef=nnx.graphdef(full))
    return model.with_state(_cast_floating(model.state, dtype))


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _CastStream:
    """A data stream whose batches are cast to ``dtype`` (floating leaves only)."""

    stream: Callable
    dtype: Any

    def __call__(self):
        for batch in self.stream():
            yield _cast_floating(batch, self.dtype)


def _warn_other_dtypes(obj: Objective, dtype) -> None:
    """Warn when the loss still computes floating operations in another dtype."""
    jaxpr = jax.make_jaxpr(obj.loss)(obj.params, obj.groups.first_batch_spec)
    other = collections.Counter()
    for eqn in jaxpr_eqns(jaxpr):
        for var in eqn.outvars:
            dt = getattr(var.aval, "dtype", None)
            if dt is not None and jnp.issubdtype(dt, jnp.floating) and jnp.dtype(dt) != dtype:
                other[f"{eqn.primitive.name} ({jnp.dtype(dt)})"] += 1
    if other:
        listed = ", ".join(f"{name} x{n}" for name, n in other.most_common(6))
        warnings.warn(f"The loss cast to {dtype} still computes {sum(other.values())} "
                      f"operations in another floating dtype: {listed}. The model fixes their "
                      f"dtype (e.g. a layer with an explicit dtype, or a float32 softmax), so "
                      f"results are only as accurate as that dtype there.", RuntimeWarning,
                      stacklevel=3)


def _check_linen_batch_mode(obj: Objective, module, predict: LinenPredict) -> None:
    """``bn_mode="batch"`` must make the model compute batch statistics: one forward pass on
    the first batch has to change the statistics collections."""
    if not predict.state:
        raise ValueError("bn_mode='batch' asks for batch statistics, but the variables hold no "
                         "collection besides 'params'. Use bn_mode='eval'.")
    batch = next(iter(obj.batches()))[0]
    _, updated = module.apply({**predict.state, "params": obj.params}, predict.inputs(batch),
                              mutable=list(predict.state), **dict(predict.kwargs))
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                        {k: updated[k] for k in updated}, {k: predict.state[k] for k in updated})
    if all(jax.tree.leaves(same)):
        raise ValueError(f"bn_mode='batch', but with apply_kwargs={dict(predict.kwargs)} the model "
                         "did not compute batch statistics (its statistics did not change). Pass "
                         "the flag that puts BatchNorm in training mode, e.g. "
                         "apply_kwargs={'train': True}.")


def _selector(select):
    if callable(select):
        return select
    patterns = [select] if isinstance(select, str) else list(select)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"select must be a string, a list of strings or a predicate "
                        f"(path, leaf) -> bool; got {select!r}.")

    def match(path: str, leaf) -> bool:
        parts = path.split("/")
        return any(path.startswith(p) or p in parts or f"/{p}/" in f"/{path}/" for p in patterns)
    return match
