"""Papyan's decomposition of the Gauss-Newton matrix of a softmax classifier by its class
structure, and the overlap of an eigenspace with the class-mean directions.

For the softmax cross-entropy, the output Hessian of example ``i`` is ``H_i = diag(p_i) -
p_i p_i^T = S_i^T S_i`` with ``S_i = diag(sqrt(p_i)) (I - 1 p_i^T)``, so

    G = (1/N) sum_i J_i^T H_i J_i = (1/N) sum_i sum_c' delta_{i,c'} delta_{i,c'}^T,
    delta_{i,c'} = sqrt(p_{i,c'}) J_i^T (e_c' - p_i)

(``J_i``: the Jacobian of the logits of example ``i``). Grouping the examples by their true
class ``c`` (``n_c`` of them, ``pi_c = n_c / N``), with the cross-class means ``delta_{c,c'} =
mean_{i in c} delta_{i,c'}`` and the class means ``delta_c = sum_c' w_{c,c'} delta_{c,c'} /
W_c`` (``W_c = sum_c' w_{c,c'}``), Papyan (2019, 2020) splits ``G`` exactly into

    G_class  = sum_c pi_c W_c delta_c delta_c^T                                    (G_1)
    G_cross  = sum_c pi_c sum_c' w_{c,c'} (delta_{c,c'} - delta_c)(...)^T          (G_2)
    G_within = sum_c pi_c mean_{i in c} sum_c' (delta_{i,c'} - delta_{c,c'})(...)^T   (E)
    G_true   = sum_c pi_c delta_{c,c} delta_{c,c}^T      (G_0, only when w_{c,c} = 0)

with ``w = 1`` (``true_class="include"``: three parts) or ``w_{c,c'} = [c' != c]``
(``"separate"``, Papyan 2019 and ``deep-lab/DeepnetHessian``: four parts). ``G_class`` has
rank at most ``C`` and carries the ``C`` outliers of a trained network's spectrum,
``G_cross`` the ``C (C - 1)`` smaller ones, ``G_within`` the bulk.

Every product is matrix-free, the same mechanism as :func:`hessian_tools.gauss_newton` (a
JVP and a VJP through the model per batch, summed by :func:`hessian_tools.data.dataset_mean`
in one compiled call): with ``a_i = S_i J_i v`` (one JVP), the class statistics
``abar_{c,c'} = <delta_{c,c'}, v> = mean_{i in c} a_{i,c'}`` take one pass over the data, and
each part is ``(1/N) sum_i J_i^T S_i^T t_i`` (one VJP) for a cotangent ``t_i`` built from
``a_i`` and ``abar``:  ``w m`` (class means, ``m_c = sum_c' w abar / W_c``), ``w (abar -
m)`` (cross-class), ``a_i - abar`` (within-class), ``(1 - w) abar`` (true class).

References: V. Papyan, *Measurements of three-level hierarchical structure in the outliers
in the spectrum of deepnet Hessians*, ICML 2019; *Traces of class/cross-class structure
pervade deep learning spectra*, JMLR 21 (2020).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools._callables import as_pytree_fn
from hessian_tools._checks import check_choice
from hessian_tools._chunking import check_chunk_size, conv_on_cpu, product_groups
from hessian_tools.data import BatchGroups, dataset_mean, take_examples
from hessian_tools.objective import Objective
from hessian_tools.operators import CurvatureOperator
from hessian_tools.results import Eigenpairs
from hessian_tools.results.papyan import PapyanDecomposition, SubspaceOverlap

__all__ = ["papyan_decomposition", "class_mean_vectors", "class_means_overlap",
           "default_labels", "PARTS"]

PARTS = ("class_means", "cross_class", "within_class", "true_class")
_MODES = ("include", "separate")
_LABEL_KEYS = ("y", "label", "labels", "target", "targets")


def default_labels(batch):
    """The integer class labels of a batch: ``batch[1]``, or ``batch["y"]`` (or
    ``"label"``, ``"labels"``, ``"target"``, ``"targets"``) for dict batches."""
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return batch[1]
    if isinstance(batch, dict):
        for key in _LABEL_KEYS:
            if key in batch:
                return batch[key]
    raise ValueError("Cannot tell the labels of a batch that is neither a tuple (x, y) nor a "
                     f"dict with one of the keys {_LABEL_KEYS}; pass labels=lambda batch: ...")


# ---- the factor S_i and the per-batch products ----------------------------------------------

def _s(prob, u):
    """``S u = sqrt(p) (u - <p, u>)`` per example (rows)."""
    return jnp.sqrt(prob) * (u - jnp.sum(prob * u, axis=-1, keepdims=True))


def _s_t(prob, t):
    """``S^T t = sqrt(p) t - p <sqrt(p), t>`` per example (rows)."""
    r = jnp.sqrt(prob) * t
    return r - prob * jnp.sum(r, axis=-1, keepdims=True)


def _class_sums(predict, labels, params, v, batch, *, num_classes):
    """``(1/B) sum_i onehot(y_i) a_i^T``: ``(C, C)`` class sums of ``a_i = S_i J_i v``."""
    out, jv = jax.jvp(lambda p: predict(p, batch), (params,), (v,))
    a = _s(jax.nn.softmax(out, axis=-1), jv)
    onehot = jax.nn.one_hot(labels(batch), num_classes, dtype=a.dtype)
    return onehot.T @ a / a.shape[0]


def _cotangent(part, a, abar_i, w_i):
    """``t_i`` of a part from ``a_i``, the class statistics ``abar_{y_i}`` and the weights."""
    if part == "within_class":
        return a - abar_i
    if part == "true_class":
        return (1 - w_i) * abar_i
    m = jnp.sum(w_i * abar_i, axis=-1, keepdims=True) / jnp.sum(w_i, axis=-1, keepdims=True)
    return w_i * m if part == "class_means" else w_i * (abar_i - m)


def _part_product(predict, labels, params, weights, v, batch, abar, *, part):
    """``(1/B) sum_i J_i^T S_i^T t_i`` over one batch (one JVP for the within-class part,
    one VJP for every part)."""
    f = lambda p: predict(p, batch)
    out, vjp = jax.vjp(f, params)
    prob = jax.nn.softmax(out, axis=-1)
    y = labels(batch)
    a = _s(prob, jax.jvp(f, (params,), (v,))[1]) if part == "within_class" else None
    t = _cotangent(part, a, abar[y], weights[y].astype(prob.dtype))
    return vjp((_s_t(prob, t) / out.shape[0]).astype(out.dtype))[0]


def _class_vectors_batch(predict, labels, params, weights, inv_prior, batch, *, num_classes):
    """``(1/B) sum_i J_i^T S_i^T t_{i,c}`` for every class ``c`` at once (a vmapped VJP):
    ``t_{i,c} = [y_i = c] (N / n_c) w_{c,:} / W_c``, whose dataset mean is ``delta_c``."""
    out, vjp = jax.vjp(lambda p: predict(p, batch), params)
    prob = jax.nn.softmax(out, axis=-1)
    onehot = jax.nn.one_hot(labels(batch), num_classes, dtype=prob.dtype)
    wn = inv_prior[:, None] * weights / jnp.sum(weights, axis=1, keepdims=True)
    t = onehot.T[:, :, None] * wn[:, None, :].astype(prob.dtype)        # (C, B, C)
    cot = jax.vmap(lambda tc: (_s_t(prob, tc) / out.shape[0]).astype(out.dtype))(t)
    return jax.vmap(lambda c: vjp(c)[0])(cot)


_class_sums_jit = jax.jit(_class_sums, static_argnames=("num_classes",))
_part_product_jit = jax.jit(_part_product, static_argnames=("part",))
_class_vectors_batch_jit = jax.jit(_class_vectors_batch, static_argnames=("num_classes",))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Factor:
    """What every product of the decomposition needs (a pytree: compiled once per
    architecture). ``inv_prior[c] = N / n_c`` (0 for an empty class), ``weights[c, c']``."""

    predict: Any
    labels: Any
    params: Any
    groups: BatchGroups
    inv_prior: jax.Array
    weights: jax.Array
    num_classes: int = dataclasses.field(metadata=dict(static=True))

    def statistics(self, v):
        """``abar_{c,c'} = <delta_{c,c'}, v>``: one pass over the data."""
        sums = dataset_mean(lambda b: _class_sums_jit(self.predict, self.labels, self.params, v,
                                                      b, num_classes=self.num_classes),
                            self.groups)
        return sums * self.inv_prior[:, None].astype(sums.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _PartMatvec:
    factor: _Factor
    part: str = dataclasses.field(metadata=dict(static=True))

    def __call__(self, v):
        f = self.factor
        abar = f.statistics(v)
        return dataset_mean(lambda b: _part_product_jit(f.predict, f.labels, f.params, f.weights,
                                                        v, b, abar, part=self.part), f.groups)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _class_vectors(factor: _Factor, *, num_classes):
    return dataset_mean(lambda b: _class_vectors_batch_jit(
        factor.predict, factor.labels, factor.params, factor.weights, factor.inv_prior, b,
        num_classes=num_classes), factor.groups)


# ---- validation ------------------------------------------------------------------------------

def _check_objective(obj: Objective) -> int:
    """The number of outputs ``C`` of a classifier objective (refusing what does not fit)."""
    if not isinstance(obj, Objective):
        raise TypeError(f"papyan_decomposition takes an Objective, got {type(obj).__name__}.")
    if not obj.has_outputs:
        raise ValueError("papyan_decomposition needs the objective's predict(params, batch) "
                         "(the logits) and output_loss(outputs, batch); build it with "
                         "Objective(..., predict=..., output_loss=...) or Objective.from_nnx.")
    if obj.streaming:
        raise ValueError("papyan_decomposition needs the class statistics of the whole data in "
                         "every product; this objective streams its data. Pass the data as one "
                         "batch or a list of batches.")
    spec = jax.eval_shape(obj.predict, obj.params, obj.groups.first_batch_spec)
    if not (isinstance(spec, jax.ShapeDtypeStruct) and len(spec.shape) == 2):
        shape = getattr(spec, "shape", type(spec).__name__)
        raise ValueError(f"papyan_decomposition needs logits of shape (batch, classes); predict "
                         f"returns {shape}.")
    return int(spec.shape[1])


def _check_softmax_cross_entropy(obj: Objective, batch, n: int) -> None:
    """Refuse an output loss whose Hessian is not ``(diag(p) - p p^T) / B`` (one product on
    up to 8 examples of the first batch)."""
    small = take_examples(batch, 0, min(8, n))
    out = obj.predict(obj.params, small)
    u = jnp.asarray(np.random.default_rng(0).standard_normal(out.shape), out.dtype)
    hu = jax.jvp(lambda o: jax.grad(obj.output_loss)(o, small), (out,), (u,))[1]
    prob = jax.nn.softmax(out, axis=-1)
    ref = _s_t(prob, _s(prob, u)) / out.shape[0]
    err = float(jnp.linalg.norm(hu - ref) / jnp.maximum(jnp.linalg.norm(ref), 1e-300))
    tol = 1e3 * float(jnp.finfo(out.dtype).eps)
    if not err <= tol:
        raise ValueError(f"papyan_decomposition needs output_loss to be the mean softmax "
                         f"cross-entropy of the logits (output Hessian (diag(p) - p p^T) / B), "
                         f"but its Hessian differs from that by {err:.3g} (relative; tolerance "
                         f"{tol:.1g}). Use ht.gauss_newton for other losses.")


def _class_counts(obj: Objective, labels, num_classes: int) -> np.ndarray:
    """Examples per class, after checking every batch's labels (dtype, shape, range)."""
    counts = np.zeros(num_classes, np.int64)
    for i, (batch, n) in enumerate(obj.batches()):
        if i == 0:
            _check_softmax_cross_entropy(obj, batch, n)
        y = np.asarray(labels(batch))
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
            raise ValueError(f"The labels of batch {i} have dtype {y.dtype} and shape {y.shape}; "
                             f"expected integer class indices of shape ({n},). Pass "
                             "labels=lambda batch: ... returning them.")
        bad = y[(y < 0) | (y >= num_classes)]
        if bad.size:
            raise ValueError(f"Batch {i} has label {int(bad[0])} outside [0, {num_classes}) "
                             f"(the model has {num_classes} outputs).")
        counts += np.bincount(y, minlength=num_classes)
    return counts


# ---- the public functions -------------------------------------------------------------------

def papyan_decomposition(obj: Objective, *, labels=None, num_classes: int | None = None,
                         true_class: str = "include",
                         chunk_size="auto") -> PapyanDecomposition:
    """The Gauss-Newton matrix of a softmax classifier split into its class-means,
    cross-class and within-class parts (Papyan 2019, 2020), one operator each.

    The parts (module docstring for the formulas) are positive semi-definite and sum to
    ``ht.gauss_newton(obj)`` exactly: ``G = G_class + G_cross + G_within`` with
    ``true_class="include"``, plus ``G_true`` with ``"separate"`` (Papyan 2019's class mean
    over the ``C - 1`` other targets, as in ``deep-lab/DeepnetHessian``, with the terms of
    the true class as a fourth part). Use ``ht.eigenvalues``, ``ht.density`` or
    ``ht.to_dense`` on each; :func:`class_means_overlap` compares an eigenspace with the
    class means.

    Cost: building it reads every batch's labels once and checks the output loss on up to
    8 examples (no product). Each product of a part costs two passes over the data: one
    JVP (the class statistics) and one VJP (plus one more JVP for ``within_class``), about
    1.5-2 Gauss-Newton products; memory a few parameter-sized vectors. Exact up to rounding.

    Args:
      obj: the objective: ``predict`` returns logits ``(batch, C)`` and ``output_loss`` is
        their mean softmax cross-entropy (checked; label smoothing is fine, since the output
        Hessian does not depend on the targets). Data in memory (one batch or a list).
      labels: ``labels(batch) -> (batch,)`` integer classes, traceable (default
        :func:`default_labels`: ``batch[1]`` or ``batch["y"]``).
      num_classes: ``C``; default the number of logits (which it must equal).
      true_class: ``"include"`` (three parts) or ``"separate"`` (four, as above).
      chunk_size: the batch size the compiled product works in, as in ``ht.hessian``.

    Returns:
      A :class:`~hessian_tools.results.papyan.PapyanDecomposition` (``class_means``,
      ``cross_class``, ``within_class``, ``true_class`` operators; ``class_counts``).

    Raises:
      TypeError: not an Objective, or labels not callable.
      ValueError: no predict/output_loss split, streamed data, logits not 2-D, an output
        loss other than softmax cross-entropy, ``num_classes`` different from the number
        of logits, labels of the wrong dtype, shape or range.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np, optax, hessian_tools as ht
      >>> x, y = jnp.asarray(np.random.default_rng(0).normal(size=(12, 3))), jnp.arange(12) % 3
      >>> ce = lambda out, b: optax.softmax_cross_entropy_with_integer_labels(out, b[1]).mean()
      >>> obj = ht.Objective(None, jnp.ones((3, 3)), (x, y), predict=lambda w, b: b[0] @ w,
      ...                    output_loss=ce)
      >>> parts = papyan_decomposition(obj)
      >>> total = sum(ht.to_dense(op) for op in parts.parts.values())
      >>> bool(np.allclose(total, ht.to_dense(ht.gauss_newton(obj))))
      True
    """
    start = time.perf_counter()
    outputs = _check_objective(obj)
    check_choice("true_class", true_class, _MODES)
    check_chunk_size(chunk_size)
    if num_classes is not None and num_classes != outputs:
        raise ValueError(f"num_classes={num_classes!r} differs from the {outputs} logits the "
                         "model returns; Papyan's decomposition has one class per logit.")
    labels = as_pytree_fn(default_labels if labels is None else labels)
    counts = _class_counts(obj, labels, outputs)
    dtype = obj.dtype
    inv_prior = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    weights = np.ones((outputs, outputs)) - (np.eye(outputs) if true_class == "separate" else 0)
    factor = _Factor(obj.predict, labels, obj.params, product_groups(obj, chunk_size),
                     jnp.asarray(inv_prior, dtype), jnp.asarray(weights, dtype), outputs)
    slow = conv_on_cpu(obj)[0]
    names = PARTS if true_class == "separate" else PARTS[:3]
    ops = {name: CurvatureOperator(f"ggn_{name}", obj.params, _PartMatvec(factor, name),
                                   slow_in_loops=slow, tags=("symmetric", "psd"),
                                   meta={"batches": factor.groups.num_batches,
                                         "decomposition": "papyan"})
           for name in names}
    return PapyanDecomposition(**ops, num_classes=outputs, class_counts=counts,
                               true_class_mode=true_class, factor=factor, operator="ggn",
                               wall_time=time.perf_counter() - start)


def class_mean_vectors(decomposition: PapyanDecomposition):
    """The class means ``delta_c`` (``C`` parameter-sized vectors, a stacked pytree): the
    directions whose span is the range of ``G_class`` (for the classes present).

    Cost: one pass over the data with ``C`` VJPs per batch (vmapped); memory ``C``
    parameter-sized vectors (and ``C`` times a batch's activations while computing).
    """
    if not isinstance(decomposition, PapyanDecomposition) or decomposition.factor is None:
        raise TypeError("class_mean_vectors takes the result of papyan_decomposition(obj) (not "
                        "one read back from JSON: it holds no model).")
    return _class_vectors(decomposition.factor, num_classes=decomposition.num_classes)


def _gram(a, b) -> np.ndarray:
    """``<a_i, b_j>`` for the rows of two stacked pytrees, in float64."""
    return np.asarray(jax.vmap(lambda row: tree.basis_dot(b, row))(a), np.float64)


def _orthonormal_coefficients(gram: np.ndarray, rtol: float) -> np.ndarray:
    """``R`` with ``R^T X`` orthonormal rows spanning the rows of ``X`` (``X X^T = gram``)."""
    values, vectors = np.linalg.eigh((gram + gram.T) / 2)
    keep = values > rtol * max(values.max(initial=0.0), 1e-300)
    return vectors[:, keep] / np.sqrt(values[keep])


def class_means_overlap(eigvecs, decomposition: PapyanDecomposition, *,
                        rtol: float = 1e-10) -> SubspaceOverlap:
    """How much of an eigenspace lies in the span of the class means ``delta_c`` (the range
    of ``G_class``): Papyan's test that the top-``C`` eigenspace of ``G`` (or of the
    Hessian) is spanned by the class means.

    With ``P`` the orthogonal projector onto ``span{delta_c}`` and ``V`` the ``k``
    vectors: ``per_vector[i] = ||P v_i||^2 / ||v_i||^2``, ``cosines`` the cosines of the
    principal angles between ``span V`` and the span, ``mean = sum cosines^2 / rank V``. The
    algebra is on Gram matrices in float64 (``C x C``, ``C x k``, ``k x k``).

    Cost: :func:`class_mean_vectors` (one pass over the data, ``C`` VJPs per batch) unless
    ``vectors`` are passed; no operator products.

    Args:
      eigvecs: an :class:`~hessian_tools.Eigenpairs` (its ``vectors``) or a stacked pytree
        of ``k`` rows shaped like the parameters.
      decomposition: the result of :func:`papyan_decomposition` for the same objective.
      rtol: directions of the span whose Gram eigenvalue is below ``rtol`` times the
        largest are dropped (dependent or empty-class means).

    Returns:
      A :class:`~hessian_tools.results.papyan.SubspaceOverlap`.

    Raises:
      ValueError: eigenpairs without vectors (read back from JSON), vectors not shaped like
        the parameters.
    """
    start = time.perf_counter()
    values = None
    if isinstance(eigvecs, Eigenpairs):
        if eigvecs.vectors is None:
            raise ValueError("These Eigenpairs have no vectors (read back from JSON?); "
                             "recompute them with ht.eigenvalues.")
        values, eigvecs = np.asarray(eigvecs.values, np.float64), eigvecs.vectors
    means = class_mean_vectors(decomposition)
    tree.check_same_structure(jax.tree.map(lambda a: a[0], means),
                              jax.tree.map(lambda a: a[0], eigvecs), what="The eigenvectors")
    r_d = _orthonormal_coefficients(_gram(means, means), rtol)
    r_v = _orthonormal_coefficients(_gram(eigvecs, eigvecs), rtol)
    cross = r_d.T @ _gram(means, eigvecs)                 # (rank, k): Q_D V^T
    norms2 = np.diag(_gram(eigvecs, eigvecs))
    per_vector = np.sum(cross**2, axis=0) / np.maximum(norms2, 1e-300)
    cosines = np.clip(np.linalg.svd(cross @ r_v, compute_uv=False), 0.0, 1.0)
    return SubspaceOverlap(per_vector=per_vector, mean=float(np.sum(cosines**2) / r_v.shape[1]),
                           cosines=cosines, span_rank=int(r_d.shape[1]), eigenvalues=values,
                           what="class_means", operator="ggn",
                           wall_time=time.perf_counter() - start)
