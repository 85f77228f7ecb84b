"""Aligning the hidden units of one network to another's: weight and activation matching.

Two networks trained from different seeds compute similar features in a different order.
Alignment finds, for every permutation group of a :class:`PermutationSpec`, the reordering
of network B's units that best matches network A's (Ainsworth et al. 2023, "Git Re-Basin";
Entezari et al. 2022), after which linear interpolation between A and the aligned B often
crosses no loss barrier.

* **Weight matching** maximises ``sum over leaves <w_A, P(w_B)>`` (equivalently minimises
  ``||w_A - P(w_B)||``) by coordinate descent: each group in turn is the solution of a
  linear assignment problem with the other groups held fixed, until a sweep improves none.
* **Activation matching** matches each group's hidden units by the correlation of their
  activations on data, one assignment per group.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from hessian_tools import tree
from hessian_tools.objective import Objective
from hessian_tools.symmetry._imports import path_str
from hessian_tools.symmetry.derive import activation_fn, as_model, find_taps, trace
from hessian_tools.symmetry.spec import (
    PermutationSpec,
    apply_permutation,
    identity_permutation,
    index_map,
    occurrence_rows,
)

__all__ = ["Alignment", "activation_matching", "align", "weight_matching"]

METHODS = ("weights", "activations")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Alignment(Mapping):
    """The permutation that aligns network B to network A, with how it was found.

    It is a mapping ``{group: index array}`` itself, so it can be passed wherever a
    permutation is expected (``apply_permutation(params_b, spec, alignment)``).

    Attributes:
      perm: ``{group: index array}``; unit ``i`` of the aligned B is unit ``perm[g][i]`` of B.
      method: ``"weights"`` or ``"activations"``.
      num_iters: sweeps over the groups (weight matching; 1 for activation matching).
      converged: the last sweep improved no group (always true for activation matching).
      objective_before: weight matching: ``sum <w_A, P(w_B)>`` over the
        matched parameter leaves; activation matching: the mean correlation of matched
        units (over all groups' units). ``before`` is at the identity permutation.
      objective_after: the same at the permutation found.
      distance_before: ``||w_A - w_B||`` over all parameters (Euclidean norm).
      distance_after: ``||w_A - P(w_B)||`` over all parameters.
      num_samples: activation samples per unit (examples times spatial positions, summed
        over the layers that read the group; 0 for weight matching).
      seed: the key bits that ordered the sweeps (``None``: the spec's order).
      wall_time: seconds.
    """

    perm: Mapping[str, np.ndarray]
    method: str
    num_iters: int
    converged: bool
    objective_before: float
    objective_after: float
    distance_before: float
    distance_after: float
    num_samples: int = 0
    seed: list[int] | None = None
    wall_time: float = 0.0

    def __getitem__(self, group: str) -> np.ndarray:
        return self.perm[group]

    def __iter__(self) -> Iterator[str]:
        return iter(self.perm)

    def __len__(self) -> int:
        return len(self.perm)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["perm"] = {k: np.asarray(v).tolist() for k, v in self.perm.items()}
        d["type"] = "Alignment"
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> Alignment:
        d = {k: v for k, v in d.items() if k != "type"}
        d["perm"] = {k: np.asarray(v, dtype=np.int64) for k, v in d["perm"].items()}
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> Alignment:
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        return (f"Alignment(method={self.method!r}, groups={list(self.perm)}, "
                f"num_iters={self.num_iters}, converged={self.converged}, objective "
                f"{self.objective_before:.6g} -> {self.objective_after:.6g}, distance "
                f"{self.distance_before:.6g} -> {self.distance_after:.6g})")


# ---- weight matching ----------------------------------------------------------------------

def _host_leaves(params) -> dict[str, np.ndarray]:
    return {path_str(p): np.asarray(x, dtype=np.float64)
            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def _permuted(w: np.ndarray, entries, perm, skip_axis=None, skip=None) -> np.ndarray:
    for axis, e in enumerate(entries):
        if e is not None:
            index = index_map(e, w.shape[axis], perm, skip if axis == skip_axis else None)
            w = np.take(w, index, axis=axis)
    return w


def _rows(w: np.ndarray, axis: int, rows: slice, dims: tuple, factor: int) -> np.ndarray:
    """The ``(units, rest)`` matrix of one group occurrence in ``w``."""
    w = np.moveaxis(w, axis, 0)[rows]
    w = w.reshape(dims + w.shape[1:])
    return np.moveaxis(w, factor, 0).reshape(dims[factor], -1)


def _occurrences(spec: PermutationSpec) -> dict[str, list]:
    occ = {g: [] for g in spec.sizes}
    for path, entries in spec.axes_to_perm.items():
        for axis, e in enumerate(entries):
            for name, skip, rows, dims, factor in occurrence_rows(e, spec.sizes):
                occ[name].append((path, axis, skip, rows, dims, factor))
    return occ


def _inner(a: dict, b: dict, spec: PermutationSpec, perm) -> float:
    return float(sum(np.vdot(a[k], _permuted(b[k], spec.axes_to_perm[k], perm)) for k in a))


def _distance(a: dict, b: dict, spec: PermutationSpec, perm) -> float:
    return float(np.sqrt(sum(np.sum((a[k] - _permuted(b[k], spec.axes_to_perm[k], perm)) ** 2)
                             for k in a)))


def weight_matching(params_a, params_b, spec: PermutationSpec, *, key=None,
                    max_iter: int = 100) -> Alignment:
    """Ainsworth et al.'s weight matching: the permutation of B closest to A in weights.

    Maximises ``sum over parameter leaves <w_A, P(w_B)>`` over the permutations allowed by
    ``spec``, by coordinate descent: for each group ``g``, with the other groups fixed, the
    objective is ``trace(C_g Pi_g)`` for a cost matrix ``C_g = sum_leaves W_A W_B^T`` (rows:
    the group's units), maximised exactly by ``scipy.optimize.linear_sum_assignment``. Sweeps
    repeat until none improves a group (a local optimum; exact for one hidden layer).

    Args:
      params_a: parameter pytrees of the same architecture, described by ``spec``.
      params_b: as ``params_a``.
      spec: a :class:`PermutationSpec`.
      key: optional ``jax.random`` key: each sweep visits the groups in a fresh random order
        drawn from it (Ainsworth et al.). Without a key the groups are visited in the spec's
        order. Either way the result is deterministic.
      max_iter: the most sweeps.

    Returns:
      An :class:`Alignment` (``method="weights"``). Cost per sweep: one ``n x n`` assignment
      (``O(n^3)``) and ``O(n * leaf size)`` products per group occurrence, on the host in
      float64; no model evaluation.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = {"w1": rng.normal(size=(3, 4)), "w2": rng.normal(size=(4, 2))}
    >>> spec = PermutationSpec.from_axes_to_perm({"w1": (None, "P"), "w2": ("P", None)}, a)
    >>> b = apply_permutation(a, spec, {"P": np.array([2, 0, 3, 1])})
    >>> weight_matching(a, b, spec)["P"].tolist()       # the inverse of the planted order
    [1, 3, 0, 2]
    """
    start = time.perf_counter()
    spec.validate(params_a)
    spec.validate(params_b)
    a, b = _host_leaves(params_a), _host_leaves(params_b)
    perm = identity_permutation(spec)
    occ = _occurrences(spec)
    groups = list(spec.sizes)
    rng = None if key is None else np.random.default_rng(tree.key_bits(key))
    before = _inner(a, b, spec, perm)
    num_iters, converged = 0, not groups
    while num_iters < max_iter and not converged:
        num_iters += 1
        order = groups if rng is None else [groups[i] for i in rng.permutation(len(groups))]
        progress = False
        for g in order:
            cost = np.zeros((spec.sizes[g],) * 2)
            for path, axis, skip, rows, dims, factor in occ[g]:
                w_b = _permuted(b[path], spec.axes_to_perm[path], perm, axis, skip)
                cost += _rows(a[path], axis, rows, dims, factor) @ \
                    _rows(w_b, axis, rows, dims, factor).T
            _, cols = linear_sum_assignment(cost, maximize=True)
            old, new = _trace_at(cost, perm[g]), _trace_at(cost, cols)
            progress |= new > old + 1e-12 * max(1.0, abs(old))
            perm[g] = cols if new > old else perm[g]
        converged = not progress
    return Alignment(perm=perm, method="weights", num_iters=num_iters, converged=converged,
                     objective_before=before, objective_after=_inner(a, b, spec, perm),
                     distance_before=_distance(a, b, spec, identity_permutation(spec)),
                     distance_after=_distance(a, b, spec, perm),
                     seed=None if key is None else tree.key_bits(key),
                     wall_time=time.perf_counter() - start)


def _trace_at(cost: np.ndarray, cols: np.ndarray) -> float:
    return float(cost[np.arange(len(cols)), cols].sum())


# ---- activation matching ------------------------------------------------------------------

class _Moments:
    """Running sums for the correlation matrix of two sets of unit activations."""

    def __init__(self, n: int):
        self.count = 0
        self.sa, self.sb = np.zeros(n), np.zeros(n)
        self.saa, self.sbb = np.zeros(n), np.zeros(n)
        self.sab = np.zeros((n, n))

    def add(self, xa, xb) -> None:
        xa, xb = np.asarray(xa, dtype=np.float64), np.asarray(xb, dtype=np.float64)
        self.count += len(xa)
        self.sa += xa.sum(0)
        self.sb += xb.sum(0)
        self.saa += (xa * xa).sum(0)
        self.sbb += (xb * xb).sum(0)
        self.sab += xa.T @ xb

    def correlation(self) -> np.ndarray:
        n = max(self.count, 1)
        ma, mb = self.sa / n, self.sb / n
        cov = self.sab / n - np.outer(ma, mb)
        sd_a = np.sqrt(np.maximum(self.saa / n - ma ** 2, 0.0))
        sd_b = np.sqrt(np.maximum(self.sbb / n - mb ** 2, 0.0))
        return cov / (np.outer(sd_a, sd_b) + 1e-12)


def _batches(data, predict) -> list:
    if data is None:
        if isinstance(predict, Objective):
            return [batch for batch, _ in predict.batches()]
        raise ValueError("method='activations' needs data: pass data=x (a batch of model inputs, "
                         "or a list of batches), or an Objective as predict.")
    return list(data) if isinstance(data, list) else [data]


def activation_matching(params_a, params_b, spec: PermutationSpec, *, predict, data=None,
                        state_a=None, state_b=None) -> Alignment:
    """Match hidden units by the correlation of their activations on data.

    For each group, the activations of A's and B's units where they enter the next layer
    (:func:`~hessian_tools.symmetry.hidden_activations`) are collected over ``data``, their
    Pearson correlation matrix ``C[i, j] = corr(a_i, b_j)`` is formed, and the assignment
    maximising ``sum_i C[i, pi(i)]`` is taken (Ainsworth et al. 2023, after Li et al. 2015).
    Groups are matched independently: a unit's activations do not depend on how the other
    layers are ordered. Units that never vary (dead ReLUs) correlate with nothing and are
    matched arbitrarily among themselves.

    Args:
      params_a: parameter pytrees described by ``spec``.
      params_b: as ``params_a``.
      spec: a :class:`PermutationSpec` (derived, or hand-written with every group the whole
        axis of some parameter).
      predict: the model: an ``nnx.Module``, an :class:`~hessian_tools.Objective` (its data
        is the default ``data``), a linen module, or ``predict(params, x)``.
      data: a batch of model inputs (for an Objective, a batch of its data), or a list.
      state_a: each network's non-parameter state (BatchNorm statistics); by
        default the model's own.
      state_b: as ``state_a``.

    Returns:
      An :class:`Alignment` (``method="activations"``). Cost: two forward passes over the
      data (one compilation per batch shape) and one ``n x n`` assignment per group; memory
      ``O(n^2)`` per group for the running correlation sums.
    """
    start = time.perf_counter()
    spec.validate(params_a)
    spec.validate(params_b)
    model = as_model(predict, params=params_a, state=state_a,
                     variables={"params": params_a, **(state_a or {})})
    state_b = model.state if state_b is None else state_b
    moments = {g: _Moments(n) for g, n in spec.sizes.items()}
    compiled: dict[Any, Any] = {}
    for batch in _batches(data, predict):
        shapes = jax.tree.map(lambda x: (np.shape(x), str(jnp.result_type(x))), batch)
        key = jax.tree.structure(batch), tuple(jax.tree.leaves(shapes))
        if key not in compiled:
            t = trace(model, batch)
            compiled[key] = activation_fn(t, find_taps(t, spec))
        acts_a = compiled[key](params_a, model.state, batch)
        acts_b = compiled[key](params_b, state_b, batch)
        for g in spec.sizes:
            moments[g].add(acts_a[g], acts_b[g])
    perm, before, after, units = {}, 0.0, 0.0, 0
    for g, mom in moments.items():
        corr = mom.correlation()
        _, cols = linear_sum_assignment(corr, maximize=True)
        perm[g] = cols
        before += float(np.trace(corr))
        after += _trace_at(corr, cols)
        units += len(cols)
    a, b = _host_leaves(params_a), _host_leaves(params_b)
    return Alignment(perm=perm, method="activations", num_iters=1, converged=True,
                     objective_before=before / max(units, 1),
                     objective_after=after / max(units, 1),
                     distance_before=_distance(a, b, spec, identity_permutation(spec)),
                     distance_after=_distance(a, b, spec, perm),
                     num_samples=min((m.count for m in moments.values()), default=0),
                     wall_time=time.perf_counter() - start)


def align(params_a, params_b, spec: PermutationSpec, *, method: str = "weights", data=None,
          predict=None, state_a=None, state_b=None, key=None, max_iter: int = 100):
    """Permute network B's hidden units to match network A's.

    Args:
      params_a: parameter pytrees of two networks of the same architecture.
      params_b: as ``params_a``.
      spec: their :class:`PermutationSpec` (e.g. ``permutation_spec(model, x)``).
      method: ``"weights"`` (:func:`weight_matching`, needs no data) or ``"activations"``
        (:func:`activation_matching`, needs ``predict`` and ``data``).
      data: for activation matching (see there).
      predict: as ``data``.
      state_a: as ``data``.
      state_b: B's non-parameter state (BatchNorm statistics). When given it is permuted
        with B's parameters and returned with them.
      key: weight matching's sweep order (optional; see :func:`weight_matching`).
      max_iter: weight matching's most sweeps.

    Returns:
      ``(aligned, alignment)``: ``aligned`` is ``params_b`` permuted (``(params, state)``
      when ``state_b`` is given), and ``alignment`` the :class:`Alignment`, itself the
      permutation ``{group: index array}``.

    Raises:
      ValueError: an unknown method, activation matching without ``predict`` or data, or
        parameters that do not match the spec (the leaf is named).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not an alignment method; use one of {METHODS}.")
    if method == "weights":
        result = weight_matching(params_a, params_b, spec, key=key, max_iter=max_iter)
    else:
        if predict is None:
            raise ValueError("method='activations' needs the model: pass predict=model (an NNX "
                             "module, an Objective, or predict(params, x)).")
        result = activation_matching(params_a, params_b, spec, predict=predict, data=data,
                                     state_a=state_a, state_b=state_b)
    aligned = apply_permutation(params_b, spec, result, state=state_b)
    return aligned, result
