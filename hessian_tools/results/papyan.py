"""Results of Papyan's decomposition of the Gauss-Newton matrix: the operators of its parts,
and the overlap of an eigenspace with the span of the class-mean directions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from hessian_tools.results._base import Result

__all__ = ["PapyanDecomposition", "SubspaceOverlap"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PapyanDecomposition(Result):
    """``G = G_class + G_cross + G_within`` (+ ``G_true`` with ``true_class="separate"``):
    the Gauss-Newton matrix of a softmax classifier split by the class structure (Papyan
    2019, 2020). See :func:`hessian_tools.analysis.papyan.papyan_decomposition`.

    Attributes:
      class_means: the :class:`~hessian_tools.CurvatureOperator` of ``G_class`` (rank at most
        ``C``: the class means ``delta_c``; Papyan's ``G_1``).
      cross_class: ``G_cross`` (rank at most ``C (C - 1)`` or ``C^2``: the cross-class
        means ``delta_{c,c'}`` about their class mean; Papyan's ``G_2``).
      within_class: ``G_within`` (the per-example deviations from the cross-class means;
        Papyan's ``E``).
      true_class: ``G_true`` (Papyan's ``G_0``, the terms ``c' = c``) when
        ``true_class_mode == "separate"``, else ``None``.
      num_classes: ``C``.
      class_counts: ``(C,)`` examples of each class in the data.
      true_class_mode: ``"include"`` (the class mean averages all ``C`` targets ``c'``) or
        ``"separate"`` (it averages the ``C - 1`` others; Papyan 2019's convention).
      factor: the compiled product's ingredients (model, labels, data, class weights), used
        by :func:`~hessian_tools.analysis.papyan.class_mean_vectors`; not serialised.
    """

    class_means: Any = None
    cross_class: Any = None
    within_class: Any = None
    true_class: Any = None
    num_classes: int
    class_counts: np.ndarray
    true_class_mode: str = "include"
    factor: Any = None

    _arrays = ("class_counts",)
    _skip = ("class_means", "cross_class", "within_class", "true_class", "factor")

    @property
    def parts(self) -> dict:
        """``{name: operator}`` of the parts that sum to ``G`` (``true_class`` when separate)."""
        names = ("class_means", "cross_class", "within_class", "true_class")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def class_weights(self) -> np.ndarray:
        """``pi_c = n_c / N``: each class's share of the examples."""
        counts = np.asarray(self.class_counts, np.float64)
        return counts / counts.sum()


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubspaceOverlap(Result):
    """How much of an eigenspace lies in the span of a set of directions.

    Attributes:
      per_vector: ``(k,)`` ``||P v_i||^2 / ||v_i||^2`` for each vector ``v_i`` (``P``: the
        orthogonal projector onto the span), in ``[0, 1]``.
      mean: ``||P V||_F^2 / k`` for the orthonormalised vectors ``V``: the mean squared
        cosine of the principal angles, ``1`` when the eigenspace lies in the span.
      cosines: the cosines of the principal angles between the two subspaces, descending.
      span_rank: the numerical rank of the span (class means of empty classes, or
        dependent ones, do not count).
      eigenvalues: the eigenvalues of the vectors, when an ``Eigenpairs`` was given.
      what: what the span is (``"class_means"``).
    """

    per_vector: np.ndarray
    mean: float
    cosines: np.ndarray
    span_rank: int
    eigenvalues: np.ndarray | None = None
    what: str = "class_means"

    _arrays = ("per_vector", "cosines", "eigenvalues")

    def __str__(self) -> str:
        return (f"SubspaceOverlap(mean {self.mean:.4f} of {len(self.per_vector)} vectors in a "
                f"{self.what} span of rank {self.span_rank})")
