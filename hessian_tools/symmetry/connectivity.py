"""Mode connectivity: are two trained networks in one basin once their hidden units are aligned?

:func:`connectivity` joins the two halves of the question. It aligns network B to network A
(:func:`~hessian_tools.symmetry.align`: weight or activation matching over the permutation
spec derived from the model), evaluates the loss along the straight path from A to B before
and after the alignment with the landscape module's batched evaluation
(:func:`~hessian_tools.landscape.interpolate`; Frankle et al. 2020's barrier), and measures
the curvature at a few points of each path: the extreme Hessian eigenvalues and the trace.
Entezari et al. (2022) conjecture, and Ainsworth et al. (2023) show for wide enough
networks, that the aligned path has (almost) no barrier.

BatchNorm: with statistics held fixed (``bn_mode="eval"``) B's statistics are permuted with
its units and interpolated along the path with the parameters (``state_b`` is needed); an
objective built with ``bn_mode="batch"`` uses the statistics of each batch at every point,
which is the REPAIR-style reset (Jordan et al. 2023) done exactly, batch by batch.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools._checks import check_count, check_key
from hessian_tools.analysis import eigenvalues, trace
from hessian_tools.landscape import (InterpolationPath, barrier, evaluate_points, fingerprint,
                                     interpolate)
from hessian_tools.landscape.evaluate import metric_barrier
from hessian_tools.landscape.surface import _metric_name, _progress
from hessian_tools.objective import Objective
from hessian_tools.operators import hessian
from hessian_tools.results import Result
from hessian_tools.symmetry.align import align
from hessian_tools.symmetry.derive import permutation_spec
from hessian_tools.symmetry.spec import PermutationSpec

__all__ = ["Connectivity", "connectivity"]

PATHS = ("naive", "aligned")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Connectivity(Result):
    """Two linear paths from network A to network B, before and after aligning B to A.

    Attributes:
      naive: the :class:`~hessian_tools.landscape.InterpolationPath` from A to B as trained.
      aligned: the path from A to B with B's hidden units permuted to match A's.
      method: the alignment method (``"weights"`` or ``"activations"``).
      distance_before: ``||a - b||``; distance_after: ``||a - P(b)||``.
      num_groups: permutation groups aligned; permuted_units: units that moved.
      curvature_t: the ``t`` at which the curvature was measured (empty: not measured).
      lambda_max: ``(2, len(curvature_t))`` the largest Hessian eigenvalue along each path
        (row 0: naive, row 1: aligned); lambda_min: the smallest.
      eig_residuals: ``(2, len(curvature_t), 2)`` their residual bounds.
      trace: ``(2, len(curvature_t))`` Hutch++ estimates of ``tr(H)``; trace_stderr their
        standard errors.
      bn: how BatchNorm statistics followed the path: ``"none"`` (no statistics),
        ``"interpolate"`` (permuted with B and interpolated), ``"batch"`` (each batch's own).
      num_matvecs: Hessian-vector products spent on the curvature; wall_time: seconds.
      seed: the key's data.
    """

    naive: InterpolationPath
    aligned: InterpolationPath
    method: str
    distance_before: float
    distance_after: float
    num_groups: int
    permuted_units: int
    curvature_t: np.ndarray
    lambda_max: np.ndarray
    lambda_min: np.ndarray
    eig_residuals: np.ndarray
    trace: np.ndarray
    trace_stderr: np.ndarray
    bn: str = "none"

    _arrays = ("curvature_t", "lambda_max", "lambda_min", "eig_residuals", "trace",
               "trace_stderr")
    _results = {"naive": InterpolationPath, "aligned": InterpolationPath}

    @property
    def barrier_ratio(self) -> float:
        """``naive.barrier / aligned.barrier`` (``inf`` when alignment removed it entirely)."""
        if self.aligned.barrier <= 0.0:
            return float("inf") if self.naive.barrier > 0.0 else 1.0
        return self.naive.barrier / self.aligned.barrier

    def __str__(self) -> str:
        lines = [f"barrier before alignment {self.naive.barrier:.4g}, after "
                 f"{self.aligned.barrier:.4g} ({self.method} matching; ||a - b|| "
                 f"{self.distance_before:.4g} -> {self.distance_after:.4g})"]
        if self.naive.metric_barrier is not None:
            lines.append(f"{self.naive.metric_name} barrier {self.naive.metric_barrier:.4g} -> "
                         f"{self.aligned.metric_barrier:.4g}")
        for row, name in enumerate(PATHS):
            if len(self.curvature_t):
                lines.append(f"{name:>8}: lambda_max {_span(self.lambda_max[row])}, lambda_min "
                             f"{_span(self.lambda_min[row])}, trace {_span(self.trace[row])}")
        return "\n".join(lines)


def _span(values) -> str:
    return f"{np.min(values):.3g}..{np.max(values):.3g}"


def _has_held_statistics(obj: Objective) -> bool:
    """Whether the loss reads model state held fixed (BatchNorm statistics in eval mode, or
    other non-parameter variables): then the state must follow the path."""
    state = obj.required_state
    return state is not None and len(jax.tree.leaves(state)) > 0


def _lerp(a, b, t: float):
    return jax.tree.map(lambda x, y: ((1.0 - t) * x + t * y).astype(jnp.result_type(x)), a, b)


def _path_with_state(obj, params_a, state_a, params_b, state_b, num_points, metric):
    """The linear path with the model state interpolated with the parameters, point by
    point (the state enters the compiled loss as an argument, so one compilation)."""
    start = time.perf_counter()
    t = np.linspace(0.0, 1.0, num_points)
    zero = jax.tree.map(lambda a: jnp.zeros((1,) + jnp.shape(a), jnp.result_type(a)), params_a)
    loss, met = np.empty(num_points), np.empty(num_points)
    for i, ti in enumerate(t):
        point = obj.with_params(_lerp(params_a, params_b, ti), state=_lerp(state_a, state_b, ti))
        value, metric_value = evaluate_points(point, zero, np.zeros((1, 1)), metric=metric)
        loss[i] = value[0]
        met[i] = metric_value[0] if metric is not None else np.nan
    height, at = barrier(t, loss)
    return InterpolationPath(
        t=t, loss=loss, barrier=height, barrier_t=at,
        distance=float(tree.norm(tree.sub(params_b, params_a))),
        fingerprint_a=fingerprint(params_a), fingerprint_b=fingerprint(params_b),
        num_evaluations=num_points, metric=met if metric is not None else None,
        metric_name=_metric_name(metric),
        metric_barrier=None if metric is None else metric_barrier(t, met, metric),
        wall_time=time.perf_counter() - start)


def connectivity(obj: Objective, params_a, params_b, spec: PermutationSpec | None = None, *,
                 key, method: str = "weights", num_points: int = 25, metric=None,
                 state_a=None, state_b=None, curvature_points: int = 5, tol: float = 1e-3,
                 trace_matvecs: int = 40, progress: bool = False) -> Connectivity:
    """Align network B to network A, then compare the straight paths before and after.

    Args:
      obj: the objective (loss and data) both networks are evaluated on; its own parameters
        are not used.
      params_a: network A's parameters (a pytree like ``obj.params``).
      params_b: network B's parameters, same architecture.
      spec: the :class:`PermutationSpec`; by default derived from ``obj``
        (:func:`~hessian_tools.symmetry.permutation_spec`).
      key: a ``jax.random`` key (weight matching's sweep order, the Lanczos starts and the
        trace probes).
      method: ``"weights"`` (weight matching, no data) or ``"activations"`` (activation
        matching on ``obj``'s data).
      num_points: points on each path, ``t = linspace(0, 1, num_points)``.
      metric: a metric along the paths (e.g. :data:`hessian_tools.accuracy`).
      state_a: A's BatchNorm statistics (default: ``obj.state``); needed only when the loss
        holds statistics fixed (``bn_mode="eval"``).
      state_b: B's statistics, required in that case (they are permuted with B's units and
        interpolated along the path).
      curvature_points: points of each path (evenly spaced, ends included) at which
        ``lambda_max``, ``lambda_min`` and ``tr(H)`` are measured; 0 skips the curvature.
      tol: the eigenvalues' relative residual tolerance (see :func:`hessian_tools.eigenvalues`).
      trace_matvecs: Hutch++ products per trace estimate.
      progress: show a progress bar over the curvature points.

    Returns:
      A :class:`Connectivity`. Cost: the alignment (weight matching: a few linear
      assignments per group, no forward passes), ``2 num_points`` forward passes over the
      data, and at each of the ``2 curvature_points`` points one two-ended Lanczos solve
      (typically 40-150 products) plus ``trace_matvecs`` products. Accuracy: the barriers
      are exact up to the grid in ``t``; eigenvalues within ``tol * max|lambda|``; the
      trace within a few of its ``trace_stderr``.

    Raises:
      ValueError: no key, mismatched parameters, a held-statistics loss without
        ``state_b``, or bad counts.
    """
    start = time.perf_counter()
    check_key(key, "connectivity")
    check_count("num_points", num_points, minimum=2, hint="the two ends are included")
    check_count("curvature_points", curvature_points, minimum=0)
    if curvature_points == 1:
        raise ValueError("curvature_points=1 cannot include both ends of the path: use 0 (no "
                         "curvature) or at least 2.")
    check_count("trace_matvecs", trace_matvecs, minimum=3, hint="Hutch++ needs at least 3")
    tree.check_same_structure(params_a, params_b, what="params_b")
    if spec is None:
        spec = permutation_spec(obj)
    held = _has_held_statistics(obj)
    if held and state_b is None:
        raise ValueError(
            "This objective's loss reads model state held fixed (BatchNorm statistics with "
            "bn_mode='eval'), so B's statistics must travel with B: pass state_b= (and "
            "state_a= unless it is obj.state). Or build the objective with bn_mode='batch' "
            "(every point uses the statistics of each batch, a REPAIR-style reset).")
    align_key, curv_key = jax.random.split(key)
    state_a = (obj.state if state_a is None else state_a) if held else None
    aligned, alignment = align(params_a, params_b, spec, method=method, key=align_key,
                               predict=obj if method == "activations" else None,
                               state_a=state_a, state_b=state_b if held else None)
    if held:
        (aligned, aligned_state) = aligned
        naive = _path_with_state(obj, params_a, state_a, params_b, state_b, num_points, metric)
        path = _path_with_state(obj, params_a, state_a, aligned, aligned_state, num_points,
                                metric)
        ends = {"naive": (params_b, state_b), "aligned": (aligned, aligned_state)}
    else:
        naive = interpolate(obj, params_a, params_b, num_points=num_points, metric=metric)
        path = interpolate(obj, params_a, aligned, num_points=num_points, metric=metric)
        ends = {"naive": (params_b, None), "aligned": (aligned, None)}
    curv = _curvature_along(obj, params_a, state_a, ends, curvature_points, curv_key, tol=tol,
                            trace_matvecs=trace_matvecs, progress=progress)
    bn = "interpolate" if held else ("batch" if obj.bn_mode == "batch" and obj.state is not None
                                     else "none")
    return Connectivity(
        naive=naive, aligned=path, method=method,
        distance_before=float(alignment.distance_before),
        distance_after=float(alignment.distance_after),
        num_groups=len(alignment), permuted_units=_moved(alignment), bn=bn,
        num_matvecs=curv.pop("num_matvecs"), seed=tree.key_bits(key),
        operator="hessian", wall_time=time.perf_counter() - start, **curv)


def _moved(alignment) -> int:
    return int(sum(np.sum(np.asarray(p) != np.arange(len(p))) for p in alignment.values()))


def _curvature_along(obj, params_a, state_a, ends, num, key, *, tol, trace_matvecs,
                     progress) -> dict:
    t = np.linspace(0.0, 1.0, num) if num else np.zeros(0)
    shape = (len(PATHS), len(t))
    out = {"curvature_t": t, "lambda_max": np.full(shape, np.nan),
           "lambda_min": np.full(shape, np.nan), "eig_residuals": np.full(shape + (2,), np.nan),
           "trace": np.full(shape, np.nan), "trace_stderr": np.full(shape, np.nan),
           "num_matvecs": 0}
    bar = _progress(len(PATHS) * len(t), progress, desc="curvature along the paths")
    keys = jax.random.split(key, max(1, 2 * len(PATHS) * len(t)))
    for row, name in enumerate(PATHS):
        params_b, state_b = ends[name]
        for j, tj in enumerate(t):
            params = _lerp(params_a, params_b, tj)
            state = None if state_a is None else _lerp(state_a, state_b, tj)
            op = hessian(obj.with_params(params, state=state))
            index = 2 * (row * len(t) + j)
            eig = eigenvalues(op, k=1, which="both", key=keys[index], tol=tol)
            est = trace(op, num_matvecs=trace_matvecs, key=keys[index + 1])
            out["lambda_max"][row, j], out["lambda_min"][row, j] = eig.values[0], eig.values[-1]
            out["eig_residuals"][row, j] = (eig.residuals[0], eig.residuals[-1])
            out["trace"][row, j], out["trace_stderr"][row, j] = est.value, est.stderr
            out["num_matvecs"] += int(eig.num_matvecs) + int(est.num_matvecs)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return out
