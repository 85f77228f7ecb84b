"""Analyses at many points of one architecture at once: eigenvalues, verdicts, traces.

Choromanska-style studies need the curvature of tens of end points. Each function here
takes the objective (the architecture, loss and data) and a stack of points, and returns
one result per point: exactly what the single-point function returns there
(:func:`~hessian_tools.eigenvalues`, :func:`~hessian_tools.classify`,
:func:`~hessian_tools.trace`), with the key ``jax.random.split(key, P)[i]`` for point
``i``. The single-point analyses run in lockstep, one thread per point, and every round of
their operator products is one compiled call of a vmapped product over the points
(:mod:`hessian_tools.stacked`): the same solver, the same residual guarantees, the products
batched.

Why ``*_at(obj, points)`` functions rather than a ``points=`` keyword on the single-point
functions: ``ht.eigenvalues`` and ``ht.trace`` take an *operator*, which is one point, and
the result type of a function should not change with a keyword. An ``Objective`` plus a
stack of points is what the batched operator is built from, and a
:class:`~hessian_tools.results.points.PointResults` is always what comes back.

Where batching does not pay, the points run one after another (``mode="sequential"``, with
the reason in the result): convolutions on XLA:CPU run ~36-50x slower under ``vmap`` and
inside compiled loops (``CurvatureOperator.slow_in_loops``), and streamed data has no
compiled product to batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax

from hessian_tools import tree
from hessian_tools._checks import check_choice, check_key
from hessian_tools.analysis.critical import classify
from hessian_tools.analysis.eigen import eigenvalues
from hessian_tools.analysis.traces import trace
from hessian_tools.objective import Objective
from hessian_tools._chunking import conv_on_cpu
from hessian_tools.results.points import PointResults
from hessian_tools.stacked import (KINDS, StackedOperator, lockstep, single_operator,
                                   stack_points)

__all__ = ["eigenvalues_at", "classify_at", "trace_at", "MODES"]

MODES = ("auto", "batched", "sequential")


def _mode(obj: Objective, mode: str) -> tuple[str, str]:
    """``(mode, reason)``: batched unless products must not be batched here."""
    check_choice("mode", mode, MODES)
    if mode != "auto":
        return mode, ""
    if obj.streaming:
        return "sequential", "the data are streamed: no compiled product to batch"
    if conv_on_cpu(obj)[0]:
        return "sequential", ("convolutions on the CPU: XLA:CPU runs them ~36-50x slower under "
                              "vmap, so the points run one after another")
    return "batched", ""


def _run(obj: Objective, points, *, key, kind: str, mode: str, analysis: str,
         single: Callable) -> PointResults:
    """``single(i, op_i, obj_i, key_i)`` at every point, batched or one after another."""
    if not isinstance(obj, Objective):
        raise TypeError(f"{analysis}_at expects an ht.Objective (the architecture, loss and "
                        f"data; the points replace its parameters), got {type(obj).__name__}.")
    check_key(key, f"{analysis}_at")
    check_choice("operator", kind, KINDS)
    start = time.perf_counter()
    mode, reason = _mode(obj, mode)
    stacked_points, num = stack_points(obj, points)
    keys = jax.random.split(key, num)
    point = lambda i: obj.with_params(jax.tree.map(lambda a: a[i], stacked_points))
    rounds = calls = 0
    if mode == "batched":
        op = StackedOperator(obj, stacked_points, kind=kind)
        results, rounds = lockstep(op, lambda i, op_i: single(op_i, point(i), keys[i]))
        calls = op.num_calls
    else:
        results = [single(None, point(i), keys[i]) for i in range(num)]
    return PointResults(results=tuple(results), analysis=analysis, mode=mode, reason=reason,
                        num_points=num, num_rounds=rounds, num_calls=calls,
                        num_matvecs=sum(r.num_matvecs for r in results),
                        wall_time=time.perf_counter() - start, seed=tree.key_bits(key),
                        operator=kind)


def _operator(kind, obj, op):
    """The point's operator: the lockstep's, or (sequential) the ordinary one."""
    if op is not None:
        return op
    return single_operator(kind, obj)


def eigenvalues_at(obj: Objective, points, *, key, k: int = 1, which: str = "largest",
                   operator: str = "hessian", mode: str = "auto", **options) -> PointResults:
    """Extreme eigenvalues of the curvature at every point of a stack.

    ``res[i]`` is ``ht.eigenvalues(op_i, k=k, which=which, key=keys[i], **options)`` with
    ``op_i`` the operator at point ``i`` and ``keys = jax.random.split(key, P)``: restarted
    Lanczos with locking, every pair with its explicit residual ``||A v - lambda v||``,
    ``converged`` when every residual is within ``tol * max|lambda|``. The solves run in
    lockstep and each round's products (one per unfinished point) are one vmapped, compiled
    call (:class:`~hessian_tools.stacked.StackedOperator`).

    Cost: the products of ``P`` single-point solves (typically ``k + 20-60`` each, plus a
    verification run), in about as many rounds as the slowest point needs; the batched
    product costs about what ``P`` single products do on a CPU (the arithmetic is the same)
    and far less than ``P`` on an accelerator, where one small product leaves the device
    mostly idle. Memory: ``P`` single-point solves (``2 (krylov_dim + 2k + 9)`` vectors each
    with explicit residuals) plus the linearisation of every point (``P`` times the
    single-point residuals of ``jax.linearize``; not linearised above 2 GiB in all).

    Args:
      obj: the objective: loss, data and the parameter structure (its own parameters are
        not analysed unless they are among the points).
      points: a list of parameter pytrees shaped like ``obj.params``, or one pytree whose
        leaves have a leading axis of length ``P``. The model state (BatchNorm statistics)
        is the objective's at every point.
      key: a ``jax.random`` key (split into one key per point).
      k: eigenvalues at each requested end.
      which: ``"largest"``, ``"smallest"`` or ``"both"``.
      operator: ``"hessian"`` (default), ``"ggn"`` or ``"fisher"``.
      mode: ``"auto"`` (batched unless convolutions on the CPU or streamed data),
        ``"batched"`` or ``"sequential"`` (each point on its own, as a loop of
        ``ht.eigenvalues`` calls would).
      **options: passed to :func:`~hessian_tools.eigenvalues` (``tol``, ``krylov_dim``,
        ``num_matvecs``, ``verify``, ``residuals``; ``method`` is Lanczos).

    Returns:
      A :class:`~hessian_tools.results.points.PointResults` of :class:`Eigenpairs`
      (``res.values`` is ``(P, k)``; ``res.converged`` is every point's).

    Raises:
      ValueError: no key, no points, a point not shaped like the parameters (the leaf is
        named), non-finite parameters, or a bad option (as ``ht.eigenvalues``).

    Examples:
      >>> import jax, jax.numpy as jnp, hessian_tools as ht
      >>> loss = lambda p, batch: jnp.sum(batch[0] * p ** 2) / 2    # H = diag(x)
      >>> obj = ht.Objective(loss, jnp.zeros(3), (jnp.array([[1.0, 2.0, 3.0]]),))
      >>> res = ht.eigenvalues_at(obj, [jnp.zeros(3), jnp.ones(3)], k=1, key=jax.random.key(0))
      >>> res.values.round(6).tolist()
      [[3.0], [3.0]]
    """
    def single(op, point_obj, sub):
        return eigenvalues(_operator(operator, point_obj, op), k=k, which=which, key=sub,
                           **options)

    return _run(obj, points, key=key, kind=operator, mode=mode, analysis="eigenvalues",
                single=single)


def trace_at(obj: Objective, points, *, key, method: str = "hutch++",
             num_matvecs: int | None = None, operator: str = "hessian", mode: str = "auto",
             **options) -> PointResults:
    """The trace of the curvature at every point of a stack, with standard errors.

    ``res[i]`` is ``ht.trace(op_i, method=method, num_matvecs=num_matvecs, key=keys[i],
    **options)`` (``keys = jax.random.split(key, P)``): Hutch++, XTrace, Hutchinson or SLQ,
    whose blocks of products are batched across the points (each round one compiled call
    of ``P x`` block-size products).

    Cost: ``num_matvecs`` products per point (default 90), in a few rounds.

    Args:
      obj: the objective (see :func:`eigenvalues_at`).
      points: a list of parameter pytrees or one stacked pytree (see :func:`eigenvalues_at`).
      key: a ``jax.random`` key.
      method: as :func:`~hessian_tools.trace` (``"dense"`` is exact and deterministic).
      num_matvecs: products per point.
      operator: ``"hessian"``, ``"ggn"`` or ``"fisher"``.
      mode: ``"auto"``, ``"batched"`` or ``"sequential"`` (see :func:`eigenvalues_at`).
      **options: passed to :func:`~hessian_tools.trace` (``probe``, ``num_steps``).

    Returns:
      A :class:`~hessian_tools.results.points.PointResults` of :class:`TraceEstimate`
      (``res.values`` is ``(P,)``).
    """
    def single(op, point_obj, sub):
        return trace(_operator(operator, point_obj, op), method=method, num_matvecs=num_matvecs,
                     key=sub, **options)

    return _run(obj, points, key=key, kind=operator, mode=mode, analysis="trace", single=single)


def classify_at(obj: Objective, points, *, key, mode: str = "auto", **options) -> PointResults:
    """Minimum, saddle, maximum or not critical: :func:`~hessian_tools.classify` at every point.

    ``res[i]`` is ``ht.classify(obj.with_params(points[i]), key=keys[i], **options)``
    (``keys = jax.random.split(key, P)``): the full-data gradient, the extreme eigenvalues
    with their error bars, the index and the flat directions, the higher-order probe. The
    Hessian products of all points (Lanczos, SLQ counts, the dense matrix of small models)
    are batched; gradients and the probe's loss evaluations run per point.

    Cost: per point as :func:`~hessian_tools.classify`; the products in shared rounds.

    Args:
      obj: the objective (see :func:`eigenvalues_at`).
      points: a list of parameter pytrees or one stacked pytree.
      key: a ``jax.random`` key.
      mode: ``"auto"``, ``"batched"`` or ``"sequential"`` (see :func:`eigenvalues_at`).
      **options: passed to :func:`~hessian_tools.classify` (``grad_tol``, ``tau``,
        ``eig_tol``, ``dense_max_params``, ``probe``, ...).

    Returns:
      A :class:`~hessian_tools.results.points.PointResults` of
      :class:`CriticalPointReport` (``res.verdicts``, ``res.indices``, ``res.losses``).
    """
    def single(op, point_obj, sub):
        return classify(point_obj, key=sub, operator=op, **options)

    return _run(obj, points, key=key, kind="hessian", mode=mode, analysis="classify",
                single=single)
