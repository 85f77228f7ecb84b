"""Curvature operators over a stack of points of one architecture, and the lockstep that runs
one single-point analysis per point with every product batched across the points.

:class:`StackedOperator` holds ``P`` points (parameters with a leading "point" axis) of one
objective. Its product maps ``v_i -> A(x_i) v_i`` for any subset of the points in one
compiled call: ``jax.vmap`` over the points of the single-point matvec that
:func:`hessian_tools.hessian` (or ``gauss_newton``, ``empirical_fisher``) builds, linearised
the same way (``jax.linearize`` of the dataset-mean gradient, once per point), so the
products are the single-point products, batched.

:func:`lockstep` runs an analysis ``fn(i, op_i)`` for every point ``i`` in its own thread.
Each ``op_i`` is a :class:`CurvatureOperator` whose products are requests to a coordinator:
once every unfinished analysis waits for a product, the coordinator serves them all with
one call of the stacked product (one call per distinct number of vectors asked for) and
hands the results back. The analyses are therefore the single-point ones, unchanged: the
same solver, the same residual checks, the same results, with the products of all points
computed together. Threads only wait here: the products run in XLA and the host algebra in
NumPy; nothing runs two analyses' Python at once that would not have run one after the
other.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import _host, tree
from hessian_tools._chunking import check_chunk_size, conv_on_cpu, product_groups
from hessian_tools.linalg.lanczos import lanczos_tridiag, ritz_pairs
from hessian_tools.objective import Objective
from hessian_tools.operators import (_FisherMatvec, _GGNMatvec, _HessianMatvec,
                                     _LinearizedMatvec, _linearize, _residual_bytes,
                                     CurvatureOperator, empirical_fisher, gauss_newton, hessian)

__all__ = ["StackedOperator", "stack_points", "lockstep", "single_operator", "KINDS"]

KINDS = ("hessian", "ggn", "fisher")
"""The operators a stack of points supports (as :func:`hessian_tools.hessian`,
:func:`~hessian_tools.gauss_newton`, :func:`~hessian_tools.empirical_fisher`)."""

_SINGLE = {"hessian": hessian, "ggn": gauss_newton, "fisher": empirical_fisher}


def single_operator(kind: str, obj: Objective, *, chunk_size="auto") -> CurvatureOperator:
    """The ordinary single-point operator of ``kind`` at ``obj.params``."""
    return _SINGLE[kind](obj, chunk_size=chunk_size)


def stack_points(obj: Objective, points):
    """The points as one pytree with a leading point axis, cast to the objective's dtypes.

    Args:
      obj: the objective (its ``params`` fix the structure, shapes and dtypes).
      points: a sequence of parameter pytrees shaped like ``obj.params``, or one pytree
        whose leaves carry a leading axis of length ``P``.

    Returns:
      ``(stacked, P)``.

    Raises:
      TypeError: ``points`` is neither. ValueError: no points, a point not shaped like the
        parameters (the leaf is named), leading axes of different lengths, non-finite values.
    """
    if isinstance(points, Sequence) and not isinstance(points, (str, bytes)) and not (
            isinstance(points, tuple) and _is_params(obj, points)):
        if len(points) == 0:
            raise ValueError("points is empty: pass at least one parameter pytree.")
        for i, p in enumerate(points):
            tree.check_same_structure(obj.params, p, what=f"points[{i}]")
        stacked = jax.tree.map(lambda ref, *xs: jnp.stack([jnp.asarray(x, jnp.result_type(ref))
                                                           for x in xs]), obj.params, *points)
        return _checked(stacked, len(points))
    ref_leaves, ref_def = jax.tree.flatten(obj.params)
    leaves, treedef = jax.tree.flatten(points)
    if treedef != ref_def:
        raise TypeError(f"points must be a list of parameter pytrees or one pytree shaped like the "
                        f"parameters with a leading point axis; got {type(points).__name__} whose "
                        "structure does not match obj.params. Stack the points with "
                        "jax.tree.map(lambda *xs: jnp.stack(xs), *list_of_params).")
    flat = jax.tree_util.tree_flatten_with_path(obj.params)[0]
    sizes = set()
    for (path, ref), leaf in zip(flat, leaves):
        if np.ndim(leaf) != np.ndim(ref) + 1 or tuple(np.shape(leaf)[1:]) != np.shape(ref):
            raise ValueError(f"points: leaf '{tree.path_str(path)}' has shape {np.shape(leaf)}; "
                             f"a stack of P points needs (P, {', '.join(map(str, np.shape(ref)))}"
                             f"{',' if np.ndim(ref) == 0 else ''}).")
        sizes.add(int(np.shape(leaf)[0]))
    if len(sizes) != 1:
        raise ValueError(f"points: the leaves have different numbers of points {sorted(sizes)}; "
                         "every leaf needs the same leading axis.")
    stacked = jax.tree.map(lambda ref, x: jnp.asarray(x, jnp.result_type(ref)), obj.params,
                           points)
    return _checked(stacked, sizes.pop())


def _is_params(obj, points) -> bool:
    """Whether a tuple is itself a parameter pytree (a tuple-structured model)."""
    return jax.tree.structure(points) == jax.tree.structure(obj.params)


def _checked(stacked, num):
    if num == 0:
        raise ValueError("points is empty: pass at least one parameter pytree.")
    for path, leaf in jax.tree_util.tree_flatten_with_path(stacked)[0]:
        if not bool(jnp.all(jnp.isfinite(leaf))):
            bad = int(np.flatnonzero(~np.all(np.isfinite(np.asarray(leaf).reshape(num, -1)),
                                             axis=1))[0])
            raise ValueError(f"points[{bad}]: leaf '{tree.path_str(path)}' has non-finite values "
                             "(NaN or inf): the curvature there is undefined.")
    return stacked, num


# ---- the stacked product -------------------------------------------------------------------

def _point_axes(fn):
    """``fn`` (a single-point matvec pytree) with 0 at the fields that differ between points
    (the parameters, or the linearisation) and ``None`` elsewhere: vmap's ``in_axes``."""
    return dataclasses.replace(fn, **{f.name: 0 if f.name in ("params", "lin") else None
                                      for f in dataclasses.fields(fn)})


def _take(fn, axes, idx):
    """``fn`` at the point(s) ``idx`` (an index or an index array) of its stacked fields."""
    return jax.tree.map(lambda ax, part: part if ax is None else
                        jax.tree.map(lambda a: a[idx], part), axes, fn,
                        is_leaf=lambda x: x is None)


@functools.partial(jax.jit, static_argnames=("axes", "vmap"))
def _stacked_rows(fn, idx, count, vectors, *, axes, vmap):
    """``A(x_{idx[b]}) vectors[b, r]`` for ``b < count`` and every row ``r`` (``(P, R, ...)`` in
    and out; rows ``b >= count`` are padding). One compilation per ``R``.

    ``vmap``: one vmapped product over all ``P`` slots (the default on accelerators);
    otherwise the products of the first ``count`` slots one after another in a compiled
    loop, which skips the padding slots (the CPU default). On XLA:CPU the two cost about
    what ``P`` single products do (``benchmarks/RESULTS_points.md``: 13.5 ms vmapped,
    14.5 ms looped, 13.2 ms for ten single-point calls of a 3.5k-parameter MLP).
    """
    if vmap:
        return jax.vmap(lambda f, rows: jax.lax.map(f, rows), in_axes=(axes, 0))(
            _take(fn, axes, idx), vectors)

    def body(b, out):
        rows = jax.lax.map(_take(fn, axes, idx[b]), tree.basis_get(vectors, b))
        return tree.basis_set(out, b, rows)
    return jax.lax.fori_loop(0, count, body, jax.tree.map(jnp.zeros_like, vectors))


@functools.partial(jax.jit, static_argnames=("algorithm", "axes", "static", "vmap"))
def _map_points(fn, per_point, shared, *, algorithm, axes, static, vmap):
    """``algorithm(A(x_i), *per_point[i], *shared, **static)`` at every point ``i`` in one
    compiled call (``per_point``: a tuple of stacked pytrees ``(P, ...)``): vmapped over the
    points, or (``vmap=False``) a compiled loop over them."""
    options = dict(static)
    if vmap:
        return jax.vmap(lambda f, args: algorithm(f, *args, *shared, **options),
                        in_axes=(axes, 0))(fn, per_point)
    num = jax.tree.leaves(per_point)[0].shape[0]
    return jax.lax.map(lambda i: algorithm(_take(fn, axes, i),
                                           *jax.tree.map(lambda a: a[i], per_point), *shared,
                                           **options), jnp.arange(num))


def _lanczos_point(f, v0, *, num_steps):
    """``num_steps`` Lanczos steps (full reorthogonalisation) at one point: ``(ritz values (m,)
    ascending, coefficients (m, m), basis (m+1, ...))``."""
    dec = lanczos_tridiag(f, v0, num_steps=num_steps)
    pairs = ritz_pairs(dec)
    return pairs.values, pairs.coeffs, dec.basis


_linearize_points = jax.jit(jax.vmap(_linearize, in_axes=(None, 0, None)))
"""The single-point linearisation of the dataset-mean gradient, at every point of a stack."""


class StackedOperator:
    """``v_i -> A(x_i) v_i`` for ``P`` points of one objective, batched in one compiled call.

    Built from the single-point operators' own matvecs (:func:`hessian_tools.hessian` and
    the others): the Hessian is linearised once per point (``jax.linearize`` of the
    dataset-mean gradient, vmapped over the points) when the stored residuals of all points
    together fit in ``max_residual_bytes``, exactly the rule of ``hessian(linearize="auto")``
    applied to the stack; otherwise each product is a forward-over-reverse HVP.

    Attributes:
      kind: ``"hessian"``, ``"ggn"`` or ``"fisher"``.
      num_points: ``P``.
      params_like: one point's vectors (``jax.ShapeDtypeStruct`` leaves); ``dim``, ``dtype``.
      slow_in_loops: products must not be batched (convolutions on the CPU run ~36-50x
        slower under ``vmap`` and in compiled loops): analyses then run point by point.
      meta: how the products are computed (linearised, batches).
      num_calls: compiled product calls made so far (each serves several points).
    """

    def __init__(self, obj: Objective, points, *, kind: str = "hessian",
                 linearize: bool | str = "auto", max_residual_bytes: int = 2 * 1024**3,
                 chunk_size="auto", vmap: bool | str = "auto"):
        if kind not in KINDS:
            raise ValueError(f"operator={kind!r} is not one of {KINDS}.")
        if obj.streaming:
            raise ValueError("A stack of points needs materialised data (one batch or a list of "
                             "batches); this objective streams its data. Analyse the points one "
                             "at a time, or pass the data as a list of batches.")
        check_chunk_size(chunk_size)
        if kind == "ggn" and not obj.has_outputs:
            gauss_newton(obj)                      # raises the single-point message
        if kind == "fisher" and obj.examples_coupled():
            empirical_fisher(obj)                  # raises the single-point message
        self.obj, self.kind = obj, kind
        self.points, self.num_points = stack_points(obj, points)
        self.params_like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a),
                                                                       jnp.result_type(a)),
                                        obj.params)
        self.dim = tree.size(self.params_like)
        self.dtype = obj.dtype
        self.chunk_size = chunk_size
        self.slow_in_loops = bool(conv_on_cpu(obj)[0])
        self.vmap = jax.default_backend() != "cpu" if vmap == "auto" else bool(vmap)
        self.num_calls = 0
        groups = product_groups(obj, chunk_size)
        if kind == "hessian" and linearize == "auto":
            linearize = _residual_bytes(obj, groups) * self.num_points <= max_residual_bytes
        linearize = bool(linearize) and kind == "hessian"
        if linearize:
            self._fn = _LinearizedMatvec(_linearize_points(obj.loss, self.points, groups))
        elif kind == "hessian":
            self._fn = _HessianMatvec(obj.loss, self.points, groups)
        elif kind == "ggn":
            self._fn = _GGNMatvec(obj.predict, obj.output_loss, self.points, groups)
        else:
            self._fn = _FisherMatvec(obj.loss, self.points, groups)
        self._axes = _point_axes(self._fn)
        self.meta = {"linearized": linearize, "batches": groups.num_batches,
                     "num_points": self.num_points}

    def __repr__(self) -> str:
        return (f"StackedOperator(kind={self.kind!r}, num_points={self.num_points}, "
                f"dim={self.dim}, dtype={self.dtype})")

    def point(self, i: int):
        """The parameters of point ``i`` (a pytree like ``obj.params``)."""
        return jax.tree.map(lambda a: a[i], self.points)

    def single(self, i: int) -> CurvatureOperator:
        """The ordinary single-point operator at point ``i`` (for point-by-point analyses)."""
        return single_operator(self.kind, self.obj.with_params(self.point(i)),
                               chunk_size=self.chunk_size)

    def map(self, algorithm: Callable, per_point: tuple = (), shared: tuple = (), *,
            vmap: bool | None = None, **static):
        """Run a pure, jittable single-point algorithm at every point in *one* compiled call.

        ``algorithm(matvec, *args, **static)`` takes the point's matvec (``v -> A(x_i) v``)
        first, then ``per_point[j][i]`` for every stacked pytree of ``per_point`` (leading
        axis ``P``), then ``shared`` (the same at every point); ``static`` are hashable
        keyword options. The result is the algorithm's, stacked over the points. It is
        compiled once per algorithm, shapes and options (``algorithm`` should be a
        module-level function: it is part of the cache key), and counted as one call.
        ``vmap``: vmapped over the points (matrix-vector products become matrix-matrix
        work) or a compiled loop over them (``False``; for algorithms that already make
        their products in blocks, on a CPU); default :attr:`vmap`.
        Products: whatever the algorithm makes, at every point.
        """
        self.num_calls += 1
        return _map_points(self._fn, tuple(per_point), tuple(shared), algorithm=algorithm,
                           axes=self._axes, static=tuple(sorted(static.items())),
                           vmap=self.vmap if vmap is None else bool(vmap))

    def lanczos(self, v0s, num_steps: int):
        """``num_steps`` Lanczos steps at every point from the start vectors ``v0s`` (a
        stacked pytree ``(P, ...)``), all in one compiled call (``P x num_steps``
        products, counted as one call): ``(theta, coeffs, bases)``, see
        :func:`hessian_tools.linalg.lanczos.lanczos_tridiag` and ``ritz_pairs``."""
        return self.map(_lanczos_point, (v0s,), vmap=True, num_steps=num_steps)

    def products(self, idx, vectors):
        """``A(x_{idx[b]}) vectors[b, r]`` for the points ``idx`` (``B <= P`` of them).

        ``vectors`` is a stacked pytree ``(P, R, ...)`` whose first ``B`` slots are used
        (the rest is padding, so that one compilation serves any ``B``); the result has the
        same shape. One compiled call, counted in :attr:`num_calls` (the single-point
        operators that request the products count their own matvecs).
        """
        self.num_calls += 1
        count = len(idx)
        idx = np.asarray(list(idx) + [idx[0]] * (self.num_points - count), np.int32)
        return _stacked_rows(self._fn, jnp.asarray(idx), jnp.asarray(count, jnp.int32),
                             vectors, axes=self._axes, vmap=self.vmap)


# ---- the lockstep ----------------------------------------------------------------------------

class _Aborted(RuntimeError):
    """Raised in a waiting analysis when the lockstep stops (another analysis failed)."""


class _Coordinator:
    """Collects product requests from the analyses and serves them in batched calls."""

    def __init__(self, stacked: StackedOperator, num: int):
        self.stacked = stacked
        self.cond = threading.Condition()
        self.pending: dict[int, Any] = {}
        self.results: dict[int, Any] = {}
        self.active = set(range(num))
        self.aborted: BaseException | None = None
        self.rounds = 0

    def request(self, i: int, vectors):
        """Called from analysis ``i``: ``A(x_i)`` on a stacked pytree ``(R, ...)``; blocks."""
        with self.cond:
            if self.aborted is not None:
                raise _Aborted("stopped: another point's analysis failed") from self.aborted
            self.pending[i] = vectors
            self.cond.notify_all()
            while i not in self.results:
                if self.aborted is not None:
                    raise _Aborted("stopped: another point's analysis failed") from self.aborted
                self.cond.wait()
            return self.results.pop(i)

    def finished(self, i: int):
        with self.cond:
            self.active.discard(i)
            self.cond.notify_all()

    def abort(self, err: BaseException):
        with self.cond:
            self.aborted = err
            self.cond.notify_all()

    def serve(self):
        """Until every analysis has finished: wait for all to ask, then compute, then hand out."""
        while True:
            with self.cond:
                while self.active and not self.active <= set(self.pending):
                    self.cond.wait()
                if not self.active:
                    return
                batch, self.pending = self.pending, {}
            out = self._compute(batch)
            with self.cond:
                self.results.update(out)
                self.rounds += 1
                self.cond.notify_all()

    def _compute(self, batch: dict) -> dict:
        groups: dict[int, list] = {}
        for i, v in batch.items():
            groups.setdefault(_rows(v), []).append(i)
        out = {}
        for members in groups.values():
            pad = [_zeros_like(batch[members[0]])] * (self.stacked.num_points - len(members))
            result = self.stacked.products(members, _stack(tuple(batch[i] for i in members)
                                                           + tuple(pad)))
            out.update(zip(members, _unstack(result, self.stacked.num_points)))
        return out


def _rows(stacked) -> int:
    return int(jax.tree.leaves(stacked)[0].shape[0])


_zeros_like = jax.jit(tree.zeros_like)
_stack = jax.jit(lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs))


@functools.partial(jax.jit, static_argnums=(1,))
def _unstack(stacked, num):
    return tuple(jax.tree.map(lambda a: a[b], stacked) for b in range(num))


class PointOperator(CurvatureOperator):
    """The operator at one point of a :class:`StackedOperator`, inside :func:`lockstep`.

    A :class:`CurvatureOperator` in every respect an analysis uses (it counts its own
    products in ``num_matvecs``), but its products are requests to the lockstep's
    coordinator, which batches them with the other points'. It has no traceable matvec
    (``matvec_fn`` is ``None``, ``slow_in_loops`` is True): analyses drive it from Python.
    """

    def __init__(self, stacked: StackedOperator, index: int, coordinator: _Coordinator):
        super().__init__(stacked.kind, stacked.params_like, None,
                         stream_fn=self._product, slow_in_loops=True,
                         meta={**stacked.meta, "point": index})
        self.index = index
        self._coordinator = coordinator

    def _product(self, v):
        return jax.tree.map(lambda a: a[0], self._coordinator.request(
            self.index, jax.tree.map(lambda a: jnp.asarray(a)[None], v)))

    def rows(self, vectors, *, batch_size: int | None = None):
        """``A v_i`` for every row, batched with the other points' products."""
        del batch_size                    # the coordinator batches across points and rows
        self.num_matvecs += _rows(vectors)
        return self._coordinator.request(self.index, vectors)

    def flat_rows(self, x, *, batch_size: int | None = None) -> np.ndarray:
        layout = _host.FlatLayout(self.params_like)
        x = np.asarray(x, layout.dtype)
        return layout.flat(self.rows(layout.tree(x)), len(x))


def lockstep(stacked: StackedOperator, fn: Callable[[int, CurvatureOperator], Any]):
    """``[fn(i, op_i) for i in range(P)]`` with the products of all points batched.

    Each ``fn(i, op_i)`` runs in its own thread with ``op_i`` a :class:`PointOperator`;
    the calling thread serves the products (:class:`StackedOperator.products`). The first
    exception raised by any ``fn`` stops the others and is re-raised here, naming the
    point. NumPy's BLAS runs on one thread meanwhile (as in every host-driven solve).

    Returns:
      ``(results, rounds)``: the list of ``fn``'s results in point order, and the number of
      rounds of batched products.
    """
    num = stacked.num_points
    coordinator = _Coordinator(stacked, num)
    results: list = [None] * num
    errors: dict[int, BaseException] = {}
    x64 = bool(jax.config.jax_enable_x64)   # a `with jax.enable_x64()` context is per thread

    def work(i):
        try:
            with jax.enable_x64(x64):
                results[i] = fn(i, PointOperator(stacked, i, coordinator))
        except _Aborted:
            pass
        except BaseException as err:      # noqa: BLE001  (re-raised in the calling thread)
            errors[i] = err
            coordinator.abort(err)
        finally:
            coordinator.finished(i)

    threads = [threading.Thread(target=work, args=(i,), daemon=True,
                                name=f"hessian_tools-point-{i}") for i in range(num)]
    with _host.single_threaded_blas():
        for t in threads:
            t.start()
        try:
            coordinator.serve()
        except BaseException as err:
            coordinator.abort(err)
            raise
        finally:
            for t in threads:
                t.join()
    if errors:
        i = min(errors)
        errors[i].add_note(f"(raised by the analysis of point {i} of {num})")
        raise errors[i]
    return results, coordinator.rounds
