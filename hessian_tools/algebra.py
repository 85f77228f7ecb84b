"""Operator algebra: new curvature operators from old ones.

``shift(A, sigma) = A + sigma I``, ``scale(A, c) = c A``, ``add(A, B) = A + B`` and
``precondition(A, P) = P^{-1/2} A P^{-1/2}`` (a positive diagonal ``P``, as adaptive optimizers
keep) are :class:`~hessian_tools.CurvatureOperator` objects like the ones they are built
from, so every analysis (``ht.eigenvalues``, ``ht.density``, ``ht.trace``, the solves and the
diagonal estimators) takes them as they are. Restricting to a block of parameters is
:meth:`hessian_tools.Objective.restrict`.

What is inherited and what is derived:

* **products** are one compiled pytree callable wrapping the base operators' own
  (``matvec_fn``), so batched and compiled analyses stay batched and compiled; for streamed
  data the products call the bases from Python;
* **counts**: a product of the result is counted on the result and on each base it calls
  (``add(A, B)`` costs one product of ``A`` and one of ``B``);
* ``slow_in_loops`` is inherited (any base that must not run inside a compiled loop);
* **tags** follow the algebra: every result of symmetric operators is symmetric;
  ``"psd"`` survives a shift by ``sigma >= 0``, a scale by ``c >= 0``, a sum of two PSD
  operators and the congruence ``D A D``, and is dropped otherwise (a shift by a negative
  ``sigma`` or a negative scale can make a PSD operator indefinite).

The cost of a derived product is the base products it calls plus a few elementwise vector
operations; nothing is materialised.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools.operators import CurvatureOperator

__all__ = ["AffineMatvec", "CongruenceMatvec", "SumMatvec", "add", "congruence",
           "inverse_sqrt", "precondition", "scale", "shift"]


# ---- the pytree products (usable inside jit; the base product is a field) ----------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AffineMatvec:
    """``v -> c A v + sigma v`` (``shift``: ``c = 1``; ``scale``: ``sigma = 0``)."""

    inner: Any
    c: Any
    sigma: Any

    def __call__(self, v):
        return tree.axpy(self.sigma, v, tree.scale(self.c, self.inner(v)))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SumMatvec:
    """``v -> A v + B v``."""

    first: Any
    second: Any

    def __call__(self, v):
        return tree.add(self.first(v), self.second(v))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CongruenceMatvec:
    """``v -> D A D v`` with ``D = diag(d)``: the operator ``P^{-1/2} A P^{-1/2}`` for
    ``d = P^{-1/2}`` (the preconditioned Hessian of the sharpness tracker and monitor)."""

    inner: Any
    d: Any

    def __call__(self, v):
        mul = functools.partial(jax.tree.map, jnp.multiply)
        return mul(self.d, self.inner(mul(self.d, v)))


@jax.jit
def inverse_sqrt(precond, like):
    """``P^{-1/2}`` cast to the dtypes of ``like`` (zero where ``P`` is infinite: a
    coordinate an adaptive optimizer has frozen)."""
    return jax.tree.map(lambda p, a: jnp.where(jnp.isinf(p), 0.0, jax.lax.rsqrt(p)).astype(
        jnp.result_type(a)), precond, like)


# ---- building derived operators ----------------------------------------------------------

def _check_operator(op, what: str) -> None:
    if not isinstance(op, CurvatureOperator):
        raise TypeError(f"{what} takes a CurvatureOperator (ht.hessian(obj), "
                        f"ht.gauss_newton(obj), ht.from_dense(A), or a result of "
                        f"hessian_tools.algebra), got {type(op).__name__}.")


def _check_real(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)) and not (
            isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0):
        raise TypeError(f"{name}={value!r} must be a real number (a Python or NumPy scalar).")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite real number.")
    return value


def _name(kind: str) -> str:
    return f"({kind})" if " " in kind else kind


class _ForwardCounts:
    """Observer that adds each new product of a derived operator to its bases' counts."""

    def __init__(self, bases):
        self.bases, self.seen = bases, 0

    def __call__(self, count: int) -> None:
        delta, self.seen = count - self.seen, count
        for base in self.bases:
            base.num_matvecs += delta


def _derived(kind: str, bases, make, tags, meta) -> CurvatureOperator:
    """The operator whose product is ``make(*base_products)``: compiled pytree products when
    every base has one (counts forwarded to the bases), else the bases' own Python products
    (which count themselves)."""
    compiled = all(b.matvec_fn is not None for b in bases)
    fn = make(*[b.matvec_fn if compiled else b.apply_unchecked for b in bases])
    symmetric = all("symmetric" in b.tags for b in bases)
    tags = frozenset(t for t, keep in (("symmetric", symmetric), ("psd", tags)) if keep)
    op = CurvatureOperator(kind, bases[0].params_like, fn if compiled else None,
                           None if compiled else fn,
                           slow_in_loops=any(b.slow_in_loops for b in bases),
                           meta=meta | {"of": [b.kind for b in bases]}, tags=tags)
    if compiled:
        op.observe(_ForwardCounts(bases))
    return op


def _scalar_like(value: float, op: CurvatureOperator):
    return jnp.asarray(value, op.dtype)


def shift(op: CurvatureOperator, sigma: float) -> CurvatureOperator:
    """``A + sigma I``: the operator shifted by ``sigma`` (damping, or a spectral shift).

    Eigenvalues move by ``sigma``, eigenvectors stay. Tags: symmetric as ``A``; PSD when
    ``A`` is PSD and ``sigma >= 0``.

    Args:
      op: the operator ``A``.
      sigma: the shift, a finite real number (negative allowed).

    Returns:
      A :class:`~hessian_tools.CurvatureOperator`. Cost per product: one product of ``A``
      and one vector update.

    Raises:
      TypeError: ``op`` is not an operator, or ``sigma`` is not a real number.
      ValueError: ``sigma`` is not finite.

    Examples:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> from hessian_tools.algebra import shift
      >>> A = shift(ht.from_dense(np.diag([3.0, 1.0, -2.0])), 2.0)
      >>> ht.eigenvalues(A, k=1, which="both", key=jax.random.key(0)).values.round(6).tolist()
      [5.0, 0.0]
    """
    _check_operator(op, "shift")
    sigma = _check_real("sigma", sigma)
    return _derived(f"{_name(op.kind)} {'+' if sigma >= 0 else '-'} {abs(sigma):g} I", [op],
                    lambda inner: AffineMatvec(inner, _scalar_like(1.0, op),
                                               _scalar_like(sigma, op)),
                    "psd" in op.tags and sigma >= 0, {"algebra": "shift", "sigma": sigma})


def scale(op: CurvatureOperator, c: float) -> CurvatureOperator:
    """``c A``: the operator times a real number.

    Tags: symmetric as ``A``; PSD when ``A`` is PSD and ``c >= 0`` (a negative ``c`` turns
    a PSD operator negative semi-definite).

    Args:
      op: the operator ``A``.
      c: a finite real number.

    Returns:
      A :class:`~hessian_tools.CurvatureOperator`. Cost per product: one product of ``A``.

    Raises:
      TypeError: ``op`` is not an operator, or ``c`` is not a real number.
      ValueError: ``c`` is not finite.
    """
    _check_operator(op, "scale")
    c = _check_real("c", c)
    return _derived(f"{c:g} * {_name(op.kind)}", [op],
                    lambda inner: AffineMatvec(inner, _scalar_like(c, op),
                                               _scalar_like(0.0, op)),
                    "psd" in op.tags and c >= 0, {"algebra": "scale", "c": c})


def add(a: CurvatureOperator, b: CurvatureOperator) -> CurvatureOperator:
    """``A + B``: the sum of two operators on the same parameters.

    Tags: symmetric when both are; PSD when both are PSD.

    Args:
      a: an operator.
      b: an operator whose vectors have the same leaves, shapes and dtypes as ``a``'s.

    Returns:
      A :class:`~hessian_tools.CurvatureOperator`. Cost per product: one product of each
      (both counted on their own operators too).

    Raises:
      TypeError: either is not an operator.
      ValueError: the two act on differently shaped parameters (the first differing leaf
        is named).
    """
    _check_operator(a, "add")
    _check_operator(b, "add")
    tree.check_same_structure(a.params_like, b.params_like,
                              what="The second operator's vectors")
    for path, (x, y) in zip(tree.flat_paths(a.params_like),
                            zip(jax.tree.leaves(a.params_like), jax.tree.leaves(b.params_like))):
        if x.dtype != y.dtype:
            raise ValueError(f"add: leaf '{path}' is {x.dtype} in the first operator and "
                             f"{y.dtype} in the second. Build both from objectives of one "
                             "dtype (obj.astype(...)).")
    return _derived(f"{_name(a.kind)} + {_name(b.kind)}", [a, b], SumMatvec,
                    "psd" in a.tags and "psd" in b.tags, {"algebra": "add"})


def congruence(op: CurvatureOperator, d) -> CurvatureOperator:
    """``D A D`` with ``D = diag(d)``, for ``d`` a pytree like the parameters.

    The mechanism behind :func:`precondition` and the sharpness tracker's preconditioned
    sharpness (``d = P^{-1/2}`` there). Tags: symmetric as ``A``; PSD when ``A`` is
    (a congruence keeps the signs of the eigenvalues). ``d`` is not validated here.
    """
    _check_operator(op, "congruence")
    return _congruence(op, d, f"D {_name(op.kind)} D", "congruence")


def _congruence(op, d, kind, algebra):
    return _derived(kind, [op], lambda inner: CongruenceMatvec(inner, d), "psd" in op.tags,
                    {"algebra": algebra})


def precondition(op: CurvatureOperator, P) -> CurvatureOperator:
    """``P^{-1/2} A P^{-1/2}``: the operator seen by a diagonal preconditioner ``P``.

    The curvature an adaptive optimizer's update ``-lr P^{-1} g`` sees (Cohen et al. 2022:
    Adam's stability threshold is on ``lambda_max`` of this operator). ``P`` is a pytree
    like the parameters with positive entries, e.g. from
    :func:`hessian_tools.adaptive_preconditioner`; an entry ``+inf`` freezes that coordinate
    (its row and column become zero, as adagrad's before its first gradient). The
    sharpness tracker's preconditioned sharpness is ``lambda_max`` of this operator (one
    mechanism: :func:`congruence`).

    Tags: symmetric as ``A``; PSD when ``A`` is.

    Args:
      op: the operator ``A``.
      P: a pytree with the leaves and shapes of the parameters, entries ``> 0`` (or
        ``inf``).

    Returns:
      A :class:`~hessian_tools.CurvatureOperator`. Cost per product: one product of ``A``
      and two elementwise products.

    Raises:
      TypeError: ``op`` is not an operator.
      ValueError: ``P`` is not shaped like the parameters, or has an entry that is not
        positive (zero, negative or NaN): the leaf is named.

    Examples:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> from hessian_tools.algebra import precondition
      >>> A = precondition(ht.from_dense(np.diag([4.0, 1.0])), np.array([4.0, 0.5]))
      >>> ht.eigenvalues(A, k=2, method="dense").values.round(6).tolist()
      [2.0, 1.0]
    """
    _check_operator(op, "precondition")
    tree.check_same_structure(op.params_like, P, what="The preconditioner P's leaves")
    for path, leaf in tree.flat_paths(P).items():
        arr = np.asarray(leaf)
        bad = ~(arr > 0)                          # NaN compares False
        if np.any(bad):
            raise ValueError(f"precondition: leaf '{path}' of P has {int(np.sum(bad))} "
                             f"entries that are not positive (e.g. {arr[bad].ravel()[0]!r}). "
                             "P must be > 0 everywhere (inf freezes a coordinate); add the "
                             "optimizer's eps, e.g. jnp.sqrt(nu) + 1e-8.")
    like = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), op.params_like)
    return _congruence(op, inverse_sqrt(P, like), f"P^-1/2 {_name(op.kind)} P^-1/2",
                       "precondition")
