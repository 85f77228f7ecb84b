"""Curvature operators: ``v -> H v`` (Hessian), ``G v`` (Gauss-Newton), ``F v`` (Fisher).

Vectors are pytrees shaped like the parameters. Every product is the dataset mean, batches
weighted by their sizes, computed inside one compiled function that scans over stacked
batches (or, for streamed data, one compiled call per batch).

Compiled functions take the objective's arrays as arguments, so a second operator of the
same architecture (another checkpoint, another point) reuses the compiled code.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from hessian_tools import _host, tree
from hessian_tools._callables import jaxpr_eqns
from hessian_tools.data import BatchGroups, dataset_mean, stream_mean
from hessian_tools._chunking import (check_chunk_size, conv_on_cpu,
                                     product_groups, spec_cached)
from hessian_tools.objective import Objective

__all__ = ["CurvatureOperator", "hessian", "gauss_newton", "empirical_fisher", "from_dense",
           "dense_hessian", "to_dense", "value_and_grad", "gradient"]


def _grad_batch(loss, params, batch):
    return jax.grad(loss)(params, batch)


def _hvp_batch(loss, params, v, batch):
    grad = lambda p: jax.grad(loss)(p, batch)
    return jax.jvp(grad, (params,), (v,))[1]


def _ggn_batch(predict, output_loss, params, v, batch):
    f = lambda p: predict(p, batch)
    out, jv = jax.jvp(f, (params,), (v,))
    hjv = jax.jvp(lambda o: jax.grad(output_loss)(o, batch), (out,), (jv,))[1]
    return jax.vjp(f, params)[1](hjv)[0]


def _fisher_batch(loss, params, v, batch):
    """``(1/n) sum_i g_i (g_i . v)`` without forming per-example gradients."""
    def per_example(p):
        return jax.vmap(lambda ex: loss(p, jax.tree.map(lambda a: a[None], ex)))(batch)
    _, dirs = jax.jvp(per_example, (params,), (v,))          # g_i . v for every example
    dirs = jax.lax.stop_gradient(dirs)
    return jax.grad(lambda p: jnp.mean(dirs * per_example(p)))(params)


# Per-batch functions as their own jitted calls: inside a compiled dataset mean they are traced
# once per batch shape (an unrolled loop over 8 chunks of the digits CNN traced 8 times: +1 s).
_grad_batch_jit = jax.jit(_grad_batch)
_hvp_batch_jit = jax.jit(_hvp_batch)
_ggn_batch_jit = jax.jit(_ggn_batch)
_fisher_batch_jit = jax.jit(_fisher_batch)
_value_and_grad_batch_jit = jax.jit(lambda loss, p, b: jax.value_and_grad(loss)(p, b))


# ---- pytree matvecs (the compiled, reusable form) -----------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _HessianMatvec:
    loss: Any
    params: Any
    groups: BatchGroups

    def __call__(self, v):
        return dataset_mean(lambda b: _hvp_batch_jit(self.loss, self.params, v, b),
                             self.groups)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _LinearizedMatvec:
    """The Hessian as the linearisation of the dataset gradient (forward pass done once)."""

    lin: Any

    def __call__(self, v):
        return self.lin(v)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _GGNMatvec:
    predict: Any
    output_loss: Any
    params: Any
    groups: BatchGroups

    def __call__(self, v):
        return dataset_mean(
            lambda b: _ggn_batch_jit(self.predict, self.output_loss, self.params, v, b),
            self.groups)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _FisherMatvec:
    loss: Any
    params: Any
    groups: BatchGroups

    def __call__(self, v):
        return dataset_mean(lambda b: _fisher_batch_jit(self.loss, self.params, v, b),
                             self.groups)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _DenseMatvec:
    matrix: jax.Array

    def __call__(self, v):              # full float32 on GPUs too (not TF32), as Objective
        return jnp.matmul(self.matrix, v, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=("pin",))
def _apply(matvec, v, *, pin=None):
    """``A v``; with sharded parameters (``pin``) the input and the product keep their
    shardings (XLA has returned a product replicated otherwise)."""
    return tree.pin_vector(matvec(tree.pin_vector(v, pin)), pin)


def _mean_grad(loss, params, groups):
    return dataset_mean(lambda b: _grad_batch_jit(loss, params, b), groups)


@jax.jit
def _linearize(loss, params, groups):
    return jax.linearize(lambda p: _mean_grad(loss, p, groups), params)[1]


@jax.jit
def _value_and_grad(loss, params, groups):
    return dataset_mean(lambda b: _value_and_grad_batch_jit(loss, params, b), groups)


_batch_products = {
    "hessian": _hvp_batch_jit,
    "fisher": _fisher_batch_jit,
    "ggn": jax.jit(lambda fns, p, v, b: _ggn_batch(fns[0], fns[1], p, v, b)),
}


# ---- the operator --------------------------------------------------------------------------

TAGS = {"hessian": frozenset({"symmetric"}), "ggn": frozenset({"symmetric", "psd"}),
        "fisher": frozenset({"symmetric", "psd"}), "dense": frozenset({"symmetric"})}
"""What each kind of operator is known to be (lineax's tags): every curvature operator is
symmetric; the Gauss-Newton and empirical Fisher matrices are positive semi-definite (the
GGN for an output loss convex in the outputs)."""


class CurvatureOperator:
    """A symmetric linear operator on parameter-shaped pytrees, ``v -> A v``, that owns how
    its products are run.

    Call it like a function: ``H(v)``. For many vectors at once use :meth:`rows` (stacked
    pytrees) or :meth:`flat_rows` (a ``(k, dim)`` NumPy array): they run the products as one
    compiled, batched call where that is fast, and one at a time from Python where it is not
    (streamed data; convolutions on XLA:CPU, ~36-50x slower inside compiled loops and under
    ``vmap``). Analyses never decide that again. Every product is counted in
    ``num_matvecs``.

    Attributes:
      kind: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"dense"``.
      tags: what the operator is known to be (``"symmetric"``, ``"psd"``): by ``kind``
        unless given (:mod:`hessian_tools.algebra` derives them for its results).
      matvec_fn: a pytree callable ``v -> A v`` usable inside ``jit``; ``None`` when the
        data are streamed (then every product is a Python loop over batches).
      slow_in_loops: products must not be put inside compiled loops or ``vmap`` (streamed
        data, or convolutions on the CPU); fixed when the operator is built.
      params_like: a pytree of ``jax.ShapeDtypeStruct`` describing the vectors (with the
        parameters' shardings).
      placement: the parameters' :class:`~hessian_tools.tree.Placement` when they are
        sharded over several devices (products and solver buffers are pinned to it),
        else ``None``.
      dim: the number of parameters (the operator's size).
      dtype: the floating dtype of the vectors.
      num_matvecs: products computed so far with this operator.
      meta: how the products are computed (linearised, batches, streaming), for reports.
    """

    def __init__(self, kind: str, params_like, matvec_fn=None, stream_fn=None, *,
                 slow_in_loops: bool | None = None, meta: dict | None = None,
                 tags=None):
        self.kind = kind
        self.tags = frozenset(tags) if tags is not None else TAGS.get(kind,
                                                                     frozenset({"symmetric"}))
        self.params_like = tree.spec_like(params_like)        # shardings kept
        self.placement = tree.Placement.of(self.params_like)
        self.matvec_fn = matvec_fn
        self._stream_fn = stream_fn
        self.meta = dict(meta or {})
        self._observers: list = []
        self._num_matvecs = 0
        dtypes = {jnp.dtype(a.dtype) for a in jax.tree.leaves(self.params_like)}
        self.dtype = jnp.result_type(*dtypes)
        self.dim = tree.size(self.params_like)
        if slow_in_loops is None:
            slow_in_loops = matvec_fn is None or _slow_matvec(matvec_fn, self.params_like)
        self.slow_in_loops = bool(slow_in_loops or matvec_fn is None)

    @property
    def num_matvecs(self) -> int:
        """Products computed so far with this operator."""
        return self._num_matvecs

    @num_matvecs.setter
    def num_matvecs(self, value: int) -> None:
        self._num_matvecs = int(value)
        for observer in self._observers:
            observer(self._num_matvecs)

    def observe(self, callback):
        """Call ``callback(num_matvecs)`` whenever the count changes (progress bars, ETA).

        Returns a function that removes the observer.
        """
        self._observers.append(callback)
        return lambda: self._observers.remove(callback) if callback in self._observers else None

    def __repr__(self) -> str:
        return (f"CurvatureOperator(kind={self.kind!r}, dim={self.dim}, dtype={self.dtype}, "
                f"num_matvecs={self.num_matvecs})")

    def __call__(self, v):
        self.check_vector(v)
        return self.apply_unchecked(v)

    def apply_unchecked(self, v):
        """``A v`` without validating ``v`` (for solvers that built ``v`` themselves)."""
        self.num_matvecs += 1
        if self.matvec_fn is not None:
            return _apply(self.matvec_fn, v, pin=self.placement)
        return self._stream_fn(v)

    def rows(self, vectors, *, batch_size: int | None = None):
        """``A v_i`` for every row of a stacked pytree: one compiled call (``batch_size``
        rows per vmapped product) unless :attr:`slow_in_loops`, then one product per row."""
        num = int(jax.tree.leaves(vectors)[0].shape[0])
        if self.slow_in_loops:
            outs = [self.apply_unchecked(_row(vectors, i)) for i in range(num)]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        self.num_matvecs += num
        return _apply_rows(self.matvec_fn, vectors, batch_size=batch_size, pin=self.placement)

    def flat_rows(self, x, *, batch_size: int | None = None) -> np.ndarray:
        """:meth:`rows` on a ``(k, dim)`` array in :class:`~hessian_tools._host.FlatLayout`
        order, returned as a NumPy array of the operator's dtype (one transfer per call
        instead of one per leaf)."""
        layout = _host.FlatLayout(self.params_like)
        x = np.asarray(x, layout.dtype)
        if self.slow_in_loops or len({np.dtype(d) for d in layout.dtypes}) > 1:
            return layout.flat(self.rows(layout.tree(x)), len(x))
        self.num_matvecs += len(x)
        return np.asarray(_flat_rows(self.matvec_fn, x, treedef=layout.treedef,
                                     shapes=tuple(layout.shapes), batch_size=batch_size))

    def check_vector(self, v) -> None:
        """Raise ``ValueError`` if ``v`` is not shaped like the parameters (naming the leaf)."""
        tree.check_same_structure(self.params_like, v, what="The vector's leaves")

    def random_vector(self, key):
        """A standard normal vector shaped like the parameters."""
        return tree.normal_like(key, self.params_like)

    def check_determinism(self, key, *, rtol: float | None = None) -> float:
        """Apply the operator twice to one random vector; raise if the results differ.

        Catches dropout or random data augmentation left on in the loss or the data stream.
        Costs 2 matvecs. Returns the relative difference.
        """
        v = self.random_vector(key)
        a, b = self.apply_unchecked(v), self.apply_unchecked(v)
        diff = float(tree.norm(tree.sub(a, b)) / jnp.maximum(tree.norm(a), 1e-300))
        tol = rtol if rtol is not None else 1e3 * float(jnp.finfo(self.dtype).eps)
        if not diff <= tol:
            raise ValueError(
                f"Two products of the {self.kind} operator with the same vector differ by "
                f"{diff:.3g} (relative; tolerance {tol:.1g}). The loss or the data are random: "
                "switch off dropout (model.eval(), deterministic=True) and random augmentation "
                "for the measurement data.")
        return diff


_row = jax.jit(tree.basis_get)


@functools.partial(jax.jit, static_argnames=("batch_size", "pin"))
def _apply_rows(matvec_fn, vectors, *, batch_size, pin=None):
    return tree.pin_basis(jax.lax.map(matvec_fn, tree.pin_basis(vectors, pin),
                                      batch_size=batch_size), pin)


@functools.partial(jax.jit, static_argnames=("treedef", "shapes", "batch_size"))
def _flat_rows(matvec_fn, flat, *, treedef, shapes, batch_size):
    """Batched products on ``(rows, dim)`` arrays (the FlatLayout order)."""
    sizes = np.cumsum([int(np.prod(s, dtype=np.int64)) for s in shapes])[:-1]
    parts = jnp.split(flat, sizes, axis=1)
    vectors = jax.tree.unflatten(treedef, [p.reshape((flat.shape[0],) + s)
                                           for p, s in zip(parts, shapes)])
    out = jax.lax.map(matvec_fn, vectors, batch_size=batch_size)
    return jnp.concatenate([a.reshape(flat.shape[0], -1).astype(flat.dtype)
                            for a in jax.tree.leaves(out)], axis=1)


def _slow_matvec(matvec_fn, params_like) -> bool:
    """Whether a traceable product has convolutions and JAX computes on the CPU (traced
    once here, nothing compiled)."""
    if jax.default_backend() != "cpu":
        return False
    zeros = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), params_like)
    try:
        jaxpr = jax.make_jaxpr(matvec_fn)(zeros)
    except Exception:  # noqa: BLE001  (cannot trace: keep the compiled loop)
        return False
    return any(eqn.primitive.name == "conv_general_dilated" for eqn in jaxpr_eqns(jaxpr))


def _validated_groups(obj: Objective):
    return None if obj.streaming else obj.groups


def _residual_bytes(obj: Objective, groups: BatchGroups) -> int:
    """Bytes of the residuals ``jax.linearize`` would store (traced once per architecture)."""
    return spec_cached(_residual_bytes_cached, obj.loss, obj.params, groups)


@functools.lru_cache(maxsize=64)
def _residual_bytes_cached(loss, treedef, leaves) -> int:
    params, groups = jax.tree.unflatten(treedef, leaves)
    shapes = jax.eval_shape(_linearize, loss, params, groups)
    return int(sum(np.prod(s.shape, dtype=np.int64) * jnp.dtype(s.dtype).itemsize
                   for s in jax.tree.leaves(shapes)))


# ---- chunking convolutional products on the CPU ------------------------------------------


def _stream_product(obj: Objective, kind: str, fn_arg):
    product = _batch_products[kind]
    return lambda v: stream_mean(lambda batch: product(fn_arg, obj.params, v, batch),
                                 obj.batches())


def hessian(obj: Objective, *, linearize: bool | str = "auto",
            max_residual_bytes: int = 2 * 1024**3, chunk_size="auto") -> CurvatureOperator:
    """The Hessian of the dataset-mean loss, ``v -> H v`` (Pearlmutter 1994).

    Computed forward-over-reverse: ``jax.jvp`` of ``jax.grad``. With ``linearize`` the
    gradient is linearised once at the point (``jax.linearize``: the forward pass and its
    residuals are stored), and each product then costs only the tangent pass, about 0.5-0.7x
    of a jvp-of-grad product on CPU. Exact up to floating-point rounding.

    Args:
      obj: the objective.
      linearize: ``True``, ``False`` or ``"auto"`` (linearise if the stored residuals take
        at most ``max_residual_bytes``; they grow with the dataset, like the activations of
        one forward pass over all of it). Streamed data is never linearised.
      max_residual_bytes: the memory budget for ``"auto"``.
      chunk_size: ``"auto"`` (default), ``None`` or an int: the batch size the compiled
        product works in. ``"auto"`` splits the batches of a convolutional loss on the CPU
        into chunks whose activations fit in cache (``CHUNK_BYTES``; the digits CNN's HVP
        runs about 2x faster) and leaves every other case as given; an int splits batches
        larger than it. Exact for a per-example-mean loss (the :class:`Objective` contract),
        up to float rounding in the sum; a loss that couples the examples of a batch
        (contrastive, batch statistics) needs ``chunk_size=None``. Data sharded over
        several devices is never split (an int raises: splitting on the host would drop
        the sharding).

    Returns:
      A :class:`CurvatureOperator`. Cost: one product is one HVP (about 2-4 gradient
      evaluations); memory: a few parameter-sized vectors (+ the residuals if linearised).
    """
    check_chunk_size(chunk_size)         # streamed data is never chunked
    if obj.streaming:
        return CurvatureOperator("hessian", obj.params,
                                 stream_fn=_stream_product(obj, "hessian", obj.loss),
                                 meta={"linearized": False, "streaming": True})
    groups = product_groups(obj, chunk_size)
    if linearize == "auto":
        linearize = _residual_bytes(obj, groups) <= max_residual_bytes
    if linearize:
        fn = _LinearizedMatvec(_linearize(obj.loss, obj.params, groups))
    else:
        fn = _HessianMatvec(obj.loss, obj.params, groups)
    return CurvatureOperator("hessian", obj.params, fn, slow_in_loops=conv_on_cpu(obj)[0],
                             meta={"linearized": bool(linearize),
                                   "batches": groups.num_batches})


def gauss_newton(obj: Objective, *, chunk_size="auto") -> CurvatureOperator:
    """The generalized Gauss-Newton matrix ``G = J^T H_out J`` (Schraudolph 2002).

    ``J`` is the Jacobian of ``predict`` and ``H_out`` the Hessian of ``output_loss`` with
    respect to the outputs. ``G`` is positive semi-definite whenever the output loss is
    convex in the outputs (cross-entropy, squared error). Cost per product: one JVP and one
    VJP through the model (about one HVP); memory: a few parameter-sized vectors.

    Args:
      obj: the objective, with ``predict`` and ``output_loss``.
      chunk_size: the batch size the compiled product works in, as in :func:`hessian`.

    Raises:
      ValueError: if the objective has no ``predict``/``output_loss`` split.
    """
    if not obj.has_outputs:
        raise ValueError("The Gauss-Newton operator needs the objective's predict(params, batch) "
                         "and output_loss(outputs, batch); build it with Objective(..., "
                         "predict=..., output_loss=...) or Objective.from_nnx/from_linen.")
    check_chunk_size(chunk_size)         # streamed data is never chunked
    if obj.streaming:
        return CurvatureOperator("ggn", obj.params, stream_fn=_stream_product(
            obj, "ggn", (obj.predict, obj.output_loss)), meta={"streaming": True})
    groups = product_groups(obj, chunk_size)
    fn = _GGNMatvec(obj.predict, obj.output_loss, obj.params, groups)
    return CurvatureOperator("ggn", obj.params, fn, slow_in_loops=conv_on_cpu(obj)[0],
                             meta={"batches": groups.num_batches})


def empirical_fisher(obj: Objective, *, chunk_size="auto") -> CurvatureOperator:
    """The empirical Fisher ``F = (1/N) sum_i g_i g_i^T`` of per-example loss gradients.

    Per-example losses are ``loss(params, example[None])``. Each product costs one JVP and
    one VJP through the per-example losses (no per-example gradients are stored). ``F`` is
    PSD; note it differs from the true Fisher and from the Hessian (Kunstner et al. 2019).

    Args:
      obj: the objective.
      chunk_size: the batch size the compiled product works in, as in :func:`hessian`.

    Raises:
      ValueError: a loss that couples the examples of a batch (BatchNorm with batch
        statistics, in-batch negatives): it has no per-example losses.
    """
    check_chunk_size(chunk_size)         # streamed data is never chunked
    if obj.examples_coupled():
        raise ValueError("The empirical Fisher needs per-example losses, but this loss couples "
                         "the examples of a batch (e.g. BatchNorm with batch statistics): a "
                         "single example is not a batch of it. Use ht.hessian or "
                         "ht.gauss_newton, or bn_mode='eval'.")
    if obj.streaming:
        return CurvatureOperator("fisher", obj.params,
                                 stream_fn=_stream_product(obj, "fisher", obj.loss),
                                 meta={"streaming": True})
    groups = product_groups(obj, chunk_size)
    return CurvatureOperator("fisher", obj.params, _FisherMatvec(obj.loss, obj.params, groups),
                             slow_in_loops=conv_on_cpu(obj)[0],
                             meta={"batches": groups.num_batches})


def from_dense(matrix, *, tags=()) -> CurvatureOperator:
    """An operator from an explicit symmetric matrix (vectors are flat arrays).

    Args:
      matrix: a square symmetric matrix.
      tags: further tags; ``("psd",)`` declares it positive semi-definite (checked with
        ``eigvalsh``: the smallest eigenvalue must be ``>= -1e3 eps ||A||``), so that
        conjugate gradients accept it.

    Raises:
      ValueError: if ``matrix`` is not square or not symmetric, an unknown tag, or a
        ``"psd"`` tag on a matrix with a negative eigenvalue.
    """
    matrix = jnp.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"from_dense needs a square matrix, got shape {matrix.shape}.")
    asym = float(jnp.max(jnp.abs(matrix - matrix.T)))
    scale = float(jnp.max(jnp.abs(matrix))) or 1.0
    if asym > 1e3 * float(jnp.finfo(matrix.dtype).eps) * scale:
        raise ValueError(f"from_dense needs a symmetric matrix; max |A - A^T| = {asym:.3g}. "
                         "Symmetrise it with (A + A.T) / 2.")
    tags = frozenset(tags)
    if not tags <= {"symmetric", "psd"}:
        raise ValueError(f"tags={sorted(tags)!r}: the known tags are 'symmetric' and 'psd'.")
    lowest = float(np.linalg.eigvalsh(np.asarray(matrix, np.float64))[0]) if "psd" in tags else 0
    if lowest < -1e3 * float(jnp.finfo(matrix.dtype).eps) * scale:
        raise ValueError(f"from_dense(..., tags=('psd',)): the matrix has the eigenvalue "
                         f"{lowest:.4g} < 0, so it is not positive semi-definite.")
    return CurvatureOperator("dense", jnp.zeros(matrix.shape[0], matrix.dtype),
                             _DenseMatvec(matrix), slow_in_loops=False,
                             tags=tags | {"symmetric"})


def to_dense(op: CurvatureOperator, *, chunk: int = 256) -> np.ndarray:
    """The explicit matrix of an operator, column by column (``dim`` matvecs; small ``dim`` only).

    Columns are computed ``chunk`` at a time by one compiled, vmapped product (compiled once
    per operator architecture and chunk width, not per call); an operator without a
    traceable matvec runs them through :meth:`CurvatureOperator.rows`.
    """
    like = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), op.params_like)
    flat0, unravel = jax.flatten_util.ravel_pytree(like)
    n = flat0.size
    cols = []
    for start in range(0, n, chunk):
        eye = jnp.eye(n, min(chunk, n - start), -start, dtype=flat0.dtype)
        if op.matvec_fn is not None:
            out = _dense_columns(op.matvec_fn, eye, like)
            op.num_matvecs += eye.shape[1]
        else:            # the operator runs (and counts) its products: streamed, or batched
            out = _ravel_rows(op.rows(jax.vmap(unravel, in_axes=1)(eye))).T
        cols.append(np.asarray(out))
    return np.concatenate(cols, axis=1)


@jax.jit
def _ravel_rows(stacked):
    return jax.vmap(lambda v: jax.flatten_util.ravel_pytree(v)[0])(stacked)


@jax.jit
def _dense_columns(matvec_fn, eye, like):
    unravel = jax.flatten_util.ravel_pytree(like)[1]
    return jax.vmap(lambda e: jax.flatten_util.ravel_pytree(matvec_fn(unravel(e)))[0],
                    in_axes=1, out_axes=1)(eye)


def dense_hessian(obj: Objective, *, chunk_size: int = 128) -> np.ndarray:
    """The exact Hessian matrix of the dataset-mean loss, by ``jax.hessian`` (not by HVPs).

    The parameters are raveled in ``jax.tree.leaves`` order (``jax.flatten_util.ravel_pytree``).
    Batches are split into chunks of ``chunk_size`` examples (the loss is a per-example mean,
    so chunks are combined weighted by their sizes) to bound the memory of forward-mode
    differentiation at about ``P x chunk_size x`` activations; a loss that couples the
    examples of a batch is never split. Result memory ``O(P^2)``: for models up to a few
    thousand parameters. Use x64 for references.
    """
    flat, unravel = jax.flatten_util.ravel_pytree(obj.params)
    if flat.size > 20000:
        raise ValueError(f"dense_hessian of {flat.size} parameters needs {flat.size**2 * 8 / 1e9:.1f} "
                         "GB; it is meant for models up to a few thousand parameters. Use "
                         "ht.eigenvalues on ht.hessian(obj) instead.")
    total = np.zeros((flat.size, flat.size), dtype=np.asarray(flat).dtype)
    count = 0
    if obj.examples_coupled():
        chunk_size = max(n for _, n in obj.batches())
    for batch, n in obj.batches():
        for start in range(0, n, chunk_size):
            chunk = jax.tree.map(lambda a: a[start:start + chunk_size], batch)
            size = min(chunk_size, n - start)
            total += size * np.asarray(_dense_hessian_jit(flat, chunk, obj.loss, unravel))
            count += size
    return total / count


@functools.partial(jax.jit, static_argnums=3)
def _dense_hessian_jit(flat, batch, loss, unravel):
    return jax.hessian(lambda x: loss(unravel(x), batch))(flat)


def value_and_grad(obj: Objective):
    """The dataset-mean loss and its gradient (a pytree like params); one pass over the data."""
    if obj.streaming:
        return stream_mean(lambda batch: _value_and_grad_batch_jit(obj.loss, obj.params, batch),
                           obj.batches())
    value, grad = _value_and_grad(obj.loss, obj.params, product_groups(obj, "auto"))
    return value, grad


def gradient(obj: Objective):
    """The dataset-mean gradient (a pytree like params)."""
    return value_and_grad(obj)[1]


