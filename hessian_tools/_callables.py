"""Functions that travel through ``jit`` as pytrees.

Compiled functions in hessian_tools take the loss (and the model's forward pass) as an
argument, so that a second checkpoint of the same architecture reuses the compiled code.
For that, a function must be a pytree whose *structure* says which code runs and whose
*leaves* are the arrays it closes over (BatchNorm statistics, fixed parameters):

* :class:`Static`: a plain Python function, as static data (no leaves).
* :class:`WithPrecision`: a function traced under a fixed matmul precision.
* :class:`ComposedLoss`: ``output_loss(predict(params, batch), batch)``.
* :class:`ModelPredict` and its two forms, :class:`NNXPredict` and :class:`LinenPredict`:
  a flax model's forward pass, holding the model's non-differentiated state as leaves.
* :class:`Embed` and :class:`Restricted`: a function of a subset of the parameters, the
  rest held fixed (``Objective.restrict``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
from flax import nnx

__all__ = ["Static", "WithPrecision", "ComposedLoss", "ModelPredict", "NNXPredict",
           "LinenPredict", "Embed", "Restricted", "PRECISIONS", "as_pytree_fn", "unwrap",
           "with_precision", "default_inputs", "jaxpr_eqns"]

PRECISIONS = ("highest", "high", "default", "float32", "tensorfloat32", "bfloat16")


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Static:
    """Wraps a plain function so it travels through ``jit`` as static data.

    Two wrappers of the same function compare equal, so compiled code is reused.
    """

    fn: Callable

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


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


def unwrap(fn):
    """``fn`` without its :class:`WithPrecision` wrapper."""
    return fn.fn if isinstance(fn, WithPrecision) else fn


def with_precision(fn, precision):
    """``fn`` under ``precision`` (one wrapper level; ``None`` leaves it unwrapped)."""
    fn = unwrap(fn)
    return fn if fn is None or precision is None else WithPrecision(fn, precision)


def as_pytree_fn(fn):
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
class ComposedLoss:
    """``output_loss(predict(params, batch), batch)``."""

    predict: Any
    output_loss: Any

    def __call__(self, params, batch):
        return self.output_loss(self.predict(params, batch), batch)


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelPredict:
    """A flax model's forward pass ``predict(params, batch) -> outputs``.

    Attributes:
      state: the model's variables that are not differentiated but change the function
        (BatchNorm statistics, other non-parameter variables), a pytree. They are leaves of
        this callable, so replacing them (:meth:`with_state`) reuses compiled code.
      bn_mode: ``"eval"`` (BatchNorm normalises with ``state``'s running statistics) or
        ``"batch"`` (with the statistics of each batch, as in training; ``state``'s
        statistics are then unused).
    """

    state: Any = None
    bn_mode: str = dataclasses.field(default="eval", metadata=dict(static=True))

    def with_state(self, state) -> "ModelPredict":
        return dataclasses.replace(self, state=state)

    @property
    def required_state(self):
        """The part of ``state`` the function's value depends on (a checkpoint must hold it):
        all of it, less the BatchNorm statistics in ``"batch"`` mode."""
        return self.state


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class NNXPredict(ModelPredict):
    """The forward pass of an NNX model split as ``graphdef, params, rngs, state``.

    ``rngs`` (``nnx.RngState``: dropout keys and counters) are carried but never required
    from a checkpoint: the model is analysed deterministically.
    """

    graphdef: Any = dataclasses.field(metadata=dict(static=True))
    inputs: Any = dataclasses.field(metadata=dict(static=True))
    rngs: Any = None

    def __call__(self, params, batch):
        # copy: the merged variables belong to this trace even when the state is a constant
        # closed over by it (BatchNorm updates its statistics in "batch" mode)
        model = nnx.merge(self.graphdef, params, self.rngs, self.state, copy=True)
        return model(self.inputs(batch))

    @property
    def required_state(self):
        if self.bn_mode != "batch" or self.state is None:
            return self.state
        return nnx.filter_state(self.state, lambda path, v: not isinstance(v, nnx.BatchStat))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class LinenPredict(ModelPredict):
    """``module.apply({**state, "params": params}, inputs(batch), **kwargs)``.

    In ``"batch"`` mode the non-parameter collections are mutable (BatchNorm computes and
    updates its statistics from the batch); the updated values are discarded.
    """

    apply: Any = dataclasses.field(metadata=dict(static=True))
    inputs: Any = dataclasses.field(metadata=dict(static=True))
    kwargs: tuple = dataclasses.field(default=(), metadata=dict(static=True))

    def __call__(self, params, batch):
        variables = {**(self.state or {}), "params": params}
        if self.bn_mode == "batch":
            out, _ = self.apply(variables, self.inputs(batch), mutable=list(self.state or {}),
                                **dict(self.kwargs))
            return out
        return self.apply(variables, self.inputs(batch), **dict(self.kwargs))

    @property
    def required_state(self):
        if self.bn_mode != "batch" or not self.state:
            return self.state
        return {k: v for k, v in self.state.items() if k != "batch_stats"}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Embed:
    """Rebuild the full parameter tree from the selected leaves and the fixed rest."""

    treedef: Any = dataclasses.field(metadata=dict(static=True))
    selected: tuple = dataclasses.field(metadata=dict(static=True))
    fixed: tuple = ()

    def __call__(self, sub: dict):
        leaves, fixed = [], iter(self.fixed)
        for path, chosen in self.selected:
            leaves.append(sub[path] if chosen else next(fixed))
        return self.treedef.unflatten(leaves)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Restricted:
    """``fn(embed(sub), batch)``: ``fn`` as a function of the selected parameters."""

    fn: Any
    embed: Embed

    def __call__(self, sub, batch):
        return self.fn(self.embed(sub), batch)


def jaxpr_eqns(jaxpr):
    """Every equation of a (closed) jaxpr, those of sub-jaxprs (jit, scan, cond) included."""
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in (value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(sub, (jex.Jaxpr, jex.ClosedJaxpr)):
                    yield from jaxpr_eqns(sub)
