"""Analyses at many points of one architecture at once: eigenvalues, verdicts, traces.

Choromanska-style studies need the curvature of tens of end points. Each function here
takes the objective (the architecture, loss and data) and a stack of points, and returns
one result per point: exactly what the single-point function returns there
(:func:`~hessian_tools.eigenvalues`, :func:`~hessian_tools.classify`,
:func:`~hessian_tools.trace`), with the key ``jax.random.split(key, P)[i]`` for point
``i``. The single-point analyses run in lockstep, one thread per point, and every round of
their operator products is one compiled call of a vmapped product over the points
(:mod:`hessian_tools.stacked`): the same solver, the same residual guarantees, the products
batched. :func:`eigenvalues_at` has a second solver, ``"compiled"`` (its default where the
Krylov bases fit in memory): one Lanczos run for all points inside one compiled, vmapped
call, checked by explicit residuals under the same convergence test. Batching the products
alone saves little on a CPU, where the host-driven solvers spend most of their time between
products; compiling the whole solve is what pays there (``benchmarks/RESULTS_points.md``).

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

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools._progress import progress_bar
from hessian_tools._checks import check_choice, check_count, check_key, check_tol
from hessian_tools.analysis.critical import classify
from hessian_tools.analysis.eigen import _select, default_tol, eigenvalues
from hessian_tools.analysis.traces import budget, estimate, stochastic_trace, trace
from hessian_tools.linalg.trace import PROBES
from hessian_tools.objective import Objective
from hessian_tools._chunking import conv_on_cpu
from hessian_tools.results import Eigenpairs, Status
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
         single: Callable, compiled: Callable | None = None,
         progress: bool = False) -> PointResults:
    """``single(i, op_i, obj_i, key_i)`` at every point, batched or one after another;
    ``compiled(op, keys)`` (if given and not None for this stack) replaces the lockstep.
    ``progress``: a bar over the points on stderr (a point counts when its analysis ends;
    the compiled solvers finish all points at once)."""
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
    bar = progress_bar(num, f"{analysis} at {num} points", unit="point") if progress else None

    def one(op_i, i):
        out = single(op_i, point(i), keys[i])
        if bar is not None:
            bar.update(1)
        return out

    rounds = calls = 0
    try:
        if mode == "batched":
            op = StackedOperator(obj, stacked_points, kind=kind)
            results = None if compiled is None else compiled(op, keys)
            if results is None:
                results, rounds = lockstep(op, lambda i, op_i: one(op_i, i))
            elif bar is not None:
                bar.update(num)
            calls = op.num_calls
        else:
            results = [one(None, i) for i in range(num)]
    finally:
        if bar is not None:
            bar.close()
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


SOLVERS = ("auto", "compiled", "lockstep")
COMPILED_MAX_BYTES = 1024 ** 3
"""``solver="auto"`` compiles the whole Lanczos run when the bases of all points fit in this."""


@jax.jit
def _ritz_vectors(coeffs, bases):
    """``(P, K, ...)`` Ritz vectors from ``(P, m, K)`` coefficients and ``(P, m+1, ...)``
    bases."""
    return jax.vmap(lambda c, b: tree.basis_combine(c, jax.tree.map(lambda a: a[:-1], b)))(
        coeffs, bases)


@jax.jit
def _point_residuals(vectors, products, values):
    return jax.vmap(jax.vmap(lambda v, w, lam: tree.norm(tree.sub(w, tree.scale(lam, v)))))(
        vectors, products, values)


def _compiled_eigenvalues(op: StackedOperator, keys, *, k, which, tol, num_steps, max_steps):
    """Eigenpairs at every point from one compiled, vmapped Lanczos run per attempt: the
    wanted Ritz pairs, their explicit residuals from one more batched product; the number
    of steps doubles (up to the dimension) until every point's residuals are within
    ``10 tol scale``."""
    start, num, calls = time.perf_counter(), op.num_points, op.num_calls
    tol = default_tol(op.dtype) if tol is None else float(tol)
    wanted = 2 * k if which == "both" else k
    cap = min(op.dim, max_steps)
    m = min(cap, max(num_steps or 0, 2 * wanted + 40))
    v0s = jax.vmap(lambda kk: tree.normal_like(kk, op.params_like))(keys)
    used = 0
    while True:
        theta, coeffs, bases = op.lanczos(v0s, m)
        theta = np.asarray(theta, np.float64)
        idx = np.stack([_select(t, k, which) for t in theta])              # (P, K)
        vals = np.take_along_axis(theta, idx, 1)
        picked = jnp.take_along_axis(coeffs, jnp.asarray(idx)[:, None, :], 2)
        vectors = _ritz_vectors(picked, bases)
        products = op.products(list(range(num)), vectors)
        residuals = np.asarray(_point_residuals(vectors, products,
                                                jnp.asarray(vals, op.dtype)), np.float64)
        scales = np.max(np.abs(theta), axis=1)
        ok = np.all(residuals <= 10 * np.maximum(tol * scales, 1e-300)[:, None], axis=1)
        used += m + wanted
        if ok.all() or m == cap:
            break
        m = min(cap, 2 * m)
    wall = (time.perf_counter() - start) / num
    return [Eigenpairs(values=vals[i], vectors=jax.tree.map(lambda a: a[i], vectors),
                       residuals=residuals[i], num_matvecs=used,
                       status=Status.converged if ok[i] else Status.budget, which=which, k=k,
                       tol=tol, scale=float(scales[i]), method="lanczos", operator=op.kind,
                       wall_time=wall, seed=tree.key_bits(keys[i]),
                       extra={"solver": "compiled", "num_steps": m,
                              "calls": op.num_calls - calls})
            for i in range(num)]


def eigenvalues_at(obj: Objective, points, *, key, k: int = 1, which: str = "largest",
                   operator: str = "hessian", mode: str = "auto", solver: str = "auto",
                   progress: bool = False, **options) -> PointResults:
    """Extreme eigenvalues of the curvature at every point of a stack.

    ``res[i]`` is ``ht.eigenvalues(op_i, k=k, which=which, key=keys[i], **options)`` with
    ``op_i`` the operator at point ``i`` and ``keys = jax.random.split(key, P)``, up to the
    solver: every pair comes with its explicit residual ``||A v - lambda v||`` and
    ``converged`` means every residual is within ``10 tol max|lambda|`` (the test of
    ``ht.eigenvalues``), so both solvers give the same accuracy guarantee.

    Solvers:

    * ``"compiled"``: ``m`` Lanczos steps with full reorthogonalisation at all points in
      *one* compiled, vmapped call (``m = max(num_steps, 2K + 40)``, ``K`` the eigenvalues
      wanted per point), the wanted Ritz pairs, and their explicit residuals from one more
      batched product; ``m`` doubles (a new run) until every point has converged or ``m``
      reaches the dimension or the memory cap. No per-step host work: on a CPU, where the
      host-driven solver spends most of its time outside the products, this is where the
      speed-up comes from (``benchmarks/RESULTS_points.md``). Memory ``P (m + 1) dim``
      values (``"auto"`` uses it while that is at most ``COMPILED_MAX_BYTES``, 1 GiB).
      The start vectors are Gaussian from ``keys[i]``, so the eigenvalues differ from
      ``ht.eigenvalues``' at the rounding level of the tolerance, not beyond.
    * ``"lockstep"``: ``ht.eigenvalues`` itself (restarted Lanczos with locking) at every
      point, in lockstep threads, each round of products (one per unfinished point) one
      vmapped, compiled call (:class:`~hessian_tools.stacked.StackedOperator`). Results are
      identical to ``ht.eigenvalues`` per point; every option of ``ht.eigenvalues``.
    * ``"auto"`` (default): ``"compiled"`` unless options other than ``tol`` and
      ``num_steps`` are passed or the bases would not fit.

    Cost: compiled, ``P (m + K)`` products per attempt in 2 compiled calls; lockstep, the
    products of ``P`` single-point solves (typically ``k + 20-60`` each, plus a
    verification run) in about as many rounds as the slowest point needs. The batched
    product costs about what ``P`` single products do on a CPU (the arithmetic is the same)
    and far less than ``P`` on an accelerator. Memory: also the linearisation of every
    point (``P`` times the single-point residuals of ``jax.linearize``; not linearised
    above 2 GiB in all).

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
      solver: ``"auto"``, ``"compiled"`` or ``"lockstep"`` (batched mode; see above).
      progress: a progress bar over the points on stderr (the compiled solver finishes
        all points at once).
      **options: ``tol`` (relative residual, default 1e-4 in float32, 1e-8 in float64)
        and, compiled, ``num_steps`` (the first run's Lanczos steps: a longer first run
        gives smaller residuals; 120 for 10 eigenvalues of a 3.5k-parameter MLP matched the
        residuals of sequential ``ht.eigenvalues`` calls, 2.4x faster than them on a CPU:
        ``benchmarks/RESULTS_points.md``); lockstep, anything
        :func:`~hessian_tools.eigenvalues` takes (``krylov_dim``, ``num_matvecs``,
        ``verify``, ``residuals``, ``method``).

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
    check_choice("solver", solver, SOLVERS)
    extra = sorted(set(options) - {"tol", "num_steps"})
    if solver == "compiled" and extra:
        raise ValueError(f"solver='compiled' takes the options tol and num_steps only; got "
                         f"{extra}. Use solver='lockstep' for the options of ht.eigenvalues.")
    num_steps = options.pop("num_steps", None)
    if num_steps is not None:
        check_count("num_steps", num_steps, hint="Lanczos steps of the compiled solver")
        if solver == "lockstep":
            raise ValueError("num_steps is an option of solver='compiled'; the lockstep solver "
                             "takes ht.eigenvalues' krylov_dim and num_matvecs.")
    check_tol("tol", options.get("tol"))
    if which not in ("largest", "smallest", "both"):
        raise ValueError(f"which={which!r} is not one of ('largest', 'smallest', 'both').")

    def single(op, point_obj, sub):
        return eigenvalues(_operator(operator, point_obj, op), k=k, which=which, key=sub,
                           **options)

    def compiled(op, keys):
        if solver == "lockstep" or (solver == "auto" and extra):
            return None
        wanted = 2 * k if which == "both" else k
        check_count("k", k, maximum=op.dim // (2 if which == "both" else 1),
                    hint="eigenvalues at each end")
        itemsize = jnp.dtype(op.dtype).itemsize
        max_steps = COMPILED_MAX_BYTES // (op.num_points * op.dim * itemsize) - 1
        if max_steps < 2 * wanted + 40 and solver == "auto":
            return None                   # the bases would not fit: the lockstep needs less
        return _compiled_eigenvalues(op, keys, k=k, which=which, tol=options.get("tol"),
                                     num_steps=num_steps, max_steps=max(max_steps, wanted))

    return _run(obj, points, key=key, kind=operator, mode=mode, analysis="eigenvalues",
                single=single, compiled=compiled, progress=progress)


def _compiled_trace(op: StackedOperator, keys, *, method, num_matvecs, probe):
    """Hutch++ or Hutchinson at every point in one compiled call (:meth:`StackedOperator.map`:
    vmapped on accelerators, a compiled loop over the points on a CPU): the probes of
    ``ht.trace`` with the same keys, the algebra on the device."""
    start = time.perf_counter()
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), op.params_like)
    low, samples = op.map(stochastic_trace, (keys,), (zeros,), method=method,
                          num_matvecs=num_matvecs, probe=probe)
    low, samples = np.asarray(low, np.float64), np.asarray(samples, np.float64)
    wall = (time.perf_counter() - start) / op.num_points
    return [dataclasses.replace(
        estimate(low[i], samples[i], method=method, num_matvecs=num_matvecs, dim=op.dim,
                 probe=probe, key=keys[i], operator=op.kind, wall_time=wall),
        extra={"solver": "compiled"}) for i in range(op.num_points)]


def trace_at(obj: Objective, points, *, key, method: str = "hutch++",
             num_matvecs: int | None = None, operator: str = "hessian", mode: str = "auto",
             solver: str = "auto", progress: bool = False, **options) -> PointResults:
    """The trace of the curvature at every point of a stack, with standard errors.

    ``res[i]`` is ``ht.trace(op_i, method=method, num_matvecs=num_matvecs, key=keys[i],
    **options)`` (``keys = jax.random.split(key, P)``): the same probes, so the same
    estimate up to rounding (the algebra runs in the parameters' dtype on the device here,
    in float64 on the host in ``ht.trace`` on a CPU).

    Solvers (batched mode):

    * ``"compiled"``: Hutch++ or Hutchinson at all points in *one* compiled call, vmapped
      over the points on accelerators and a compiled loop over them on a CPU
      (``P x num_matvecs`` products, no host work between them). Memory about
      ``2 P num_matvecs`` parameter-sized vectors.
    * ``"lockstep"``: ``ht.trace`` itself at every point, in lockstep threads, each round
      of products one batched call: every method (XTrace, SLQ, dense) and option.
    * ``"auto"`` (default): compiled for Hutch++ and Hutchinson without ``batch_size``
      while the vectors fit in ``COMPILED_MAX_BYTES`` (1 GiB); lockstep otherwise.

    On a CPU the products are most of a trace's time and batching them over the points
    saves little (``benchmarks/RESULTS_points.md`` has the floor); on an accelerator the
    batched products are where it pays.

    Cost: ``num_matvecs`` products per point (default 90).

    Args:
      obj: the objective (see :func:`eigenvalues_at`).
      points: a list of parameter pytrees or one stacked pytree (see :func:`eigenvalues_at`).
      key: a ``jax.random`` key.
      method: as :func:`~hessian_tools.trace` (``"dense"`` is exact and deterministic).
      num_matvecs: products per point.
      operator: ``"hessian"``, ``"ggn"`` or ``"fisher"``.
      mode: ``"auto"``, ``"batched"`` or ``"sequential"`` (see :func:`eigenvalues_at`).
      solver: ``"auto"``, ``"compiled"`` or ``"lockstep"`` (see above).
      progress: a progress bar over the points on stderr.
      **options: passed to :func:`~hessian_tools.trace` (``probe``, ``num_steps``,
        ``batch_size``).

    Returns:
      A :class:`~hessian_tools.results.points.PointResults` of :class:`TraceEstimate`
      (``res.values`` is ``(P,)``).

    Raises:
      ValueError: as :func:`eigenvalues_at`; ``solver="compiled"`` with a method other
        than Hutch++ or Hutchinson, or with ``batch_size``/``num_steps``.
    """
    check_choice("solver", solver, SOLVERS)
    probe = options.get("probe", "rademacher")
    fits = method in ("hutch++", "hutchinson") and set(options) <= {"probe"}
    if solver == "compiled" and not fits:
        raise ValueError(f"solver='compiled' runs Hutch++ and Hutchinson with the option "
                         f"probe only; got method={method!r}, options {sorted(options)}. Use "
                         f"solver='lockstep' for every method and option of ht.trace.")

    def single(op, point_obj, sub):
        return trace(_operator(operator, point_obj, op), method=method, num_matvecs=num_matvecs,
                     key=sub, **options)

    def compiled(op, keys):
        if solver == "lockstep" or not fits:
            return None
        num = budget(method, num_matvecs)
        check_choice("probe", probe, PROBES)
        itemsize = jnp.dtype(op.dtype).itemsize
        if solver == "auto" and 2 * op.num_points * num * op.dim * itemsize > COMPILED_MAX_BYTES:
            return None
        return _compiled_trace(op, keys, method=method, num_matvecs=num, probe=probe)

    return _run(obj, points, key=key, kind=operator, mode=mode, analysis="trace", single=single,
                compiled=compiled, progress=progress)


def classify_at(obj: Objective, points, *, key, mode: str = "auto", progress: bool = False,
                **options) -> PointResults:
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
      progress: a progress bar over the points on stderr (a point counts when its
        classification ends).
      **options: passed to :func:`~hessian_tools.classify` (``grad_tol``, ``tau``,
        ``eig_tol``, ``dense_max_params``, ``probe``, ...).

    Returns:
      A :class:`~hessian_tools.results.points.PointResults` of
      :class:`CriticalPointReport` (``res.verdicts``, ``res.indices``, ``res.losses``).
    """
    def single(op, point_obj, sub):
        return classify(point_obj, key=sub, operator=op, **options)

    return _run(obj, points, key=key, kind="hessian", mode=mode, analysis="classify",
                single=single, progress=progress)
