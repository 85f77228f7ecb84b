"""The trace of a curvature operator: Hutch++, XTrace, Hutchinson, SLQ or exact.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from hessian_tools import _host, tree
from hessian_tools._checks import check_choice, check_count, check_key
from hessian_tools.analysis.spectral import (_check_operator, _numpy_basis, _probes_jit, _zeros,
                                            density)
from hessian_tools.linalg.trace import (PROBES, DeviceRows, HostRows, hutchinson_samples,
                                        hutchpp, hutchpp_rows, orthonormalize_numpy,
                                        random_probes, xtrace_samples)
from hessian_tools.operators import CurvatureOperator, to_dense
from hessian_tools.results import TraceEstimate

__all__ = ["DEFAULT_TRACE_MATVECS", "trace", "budget", "stochastic_trace", "estimate"]


DEFAULT_TRACE_MATVECS = 90


@functools.partial(jax.jit, static_argnames=("num", "kind", "batch_size", "pin"))
def _hutchinson_compiled(matvec_fn, key, zeros, *, num, kind, batch_size, pin=None):
    probes = random_probes(key, zeros, num, kind=kind, pin=pin)
    return hutchinson_samples(matvec_fn, probes, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("k", "num", "kind", "batch_size", "pin"))
def _hutchpp_compiled(matvec_fn, key, zeros, *, k, num, kind, batch_size, pin=None):
    k1, k2 = jax.random.split(key)
    sketch = random_probes(k1, zeros, k, kind=kind, pin=pin)
    probes = random_probes(k2, zeros, num, kind=kind, pin=pin)
    return hutchpp(matvec_fn, sketch, probes, batch_size=batch_size)


def stochastic_trace(matvec_fn, key, zeros, *, method: str, num_matvecs: int, probe: str,
                     batch_size: int | None = None, pin=None):
    """``(low_rank_trace, samples)`` of Hutchinson or Hutch++ in compiled code: a pure
    function of the matvec (``ht.trace``'s compiled path at one point; ``ht.trace_at``'s at
    every point of a stack, vmapped). The probes are those of every other path of
    ``ht.trace`` with the same key."""
    if method == "hutchinson":
        return (jnp.zeros((), jnp.result_type(*jax.tree.leaves(zeros))),
                _hutchinson_compiled(matvec_fn, key, zeros, num=num_matvecs, kind=probe,
                                     batch_size=batch_size, pin=pin))
    k, num = _hutchpp_split(num_matvecs)
    return _hutchpp_compiled(matvec_fn, key, zeros, k=k, num=num, kind=probe,
                             batch_size=batch_size, pin=pin)


def estimate(low, samples, *, method: str, num_matvecs: int, dim: int, probe: str, key,
             operator: str, wall_time: float, stderr: float | None = None) -> TraceEstimate:
    """The :class:`TraceEstimate` of a low-rank part and remainder samples: the value
    ``low + mean(samples)``, the standard error ``std(samples) / sqrt(len)`` unless given."""
    samples = np.asarray(samples, np.float64)
    if stderr is None:
        stderr = float(np.std(samples, ddof=1) / math.sqrt(len(samples)))
    return TraceEstimate(value=float(low) + float(np.mean(samples)), stderr=stderr,
                         num_matvecs=num_matvecs, method=method, num_samples=len(samples),
                         samples=samples, low_rank=float(low), dim=dim, probe=probe,
                         seed=tree.key_bits(key), operator=operator, wall_time=wall_time)


def budget(method: str, num_matvecs: int | None, num_steps: int = 1) -> int:
    """The products a stochastic ``method`` spends (default :data:`DEFAULT_TRACE_MATVECS`),
    checked against its minimum (Hutch++ 4, XTrace 6, Hutchinson 2, SLQ ``2 num_steps``)."""
    num_matvecs = DEFAULT_TRACE_MATVECS if num_matvecs is None else num_matvecs
    minimum = {"hutch++": 4, "xtrace": 6, "hutchinson": 2, "slq": 2 * num_steps}[method]
    check_count("num_matvecs", num_matvecs, minimum=minimum, why=(
        " XTrace needs at least 3 test vectors (2 products each) for a standard error."
        if method == "xtrace" else ""))
    return num_matvecs


def _hutchpp_split(num_matvecs: int) -> tuple[int, int]:
    """``(k, l)`` with ``2k + l = num_matvecs``: thirds, as in Meyer et al. (2021)."""
    k = num_matvecs // 3
    return k, num_matvecs - 2 * k


def _trace_rows(op, key, method, num_matvecs, probe, batch_size):
    """Hutchinson / Hutch++ with the operator's batched products (:meth:`CurvatureOperator.rows`:
    one product per row for streamed data and convolutions on the CPU) and the algebra of
    :mod:`hessian_tools.linalg.trace` on the device."""
    zeros = _zeros(op.params_like)
    rows = functools.partial(op.rows, batch_size=batch_size)
    if method == "hutchinson":
        probes = _probes_jit(key, zeros, num=num_matvecs, kind=probe, pin=op.placement)
        return 0.0, _dots(probes, rows(probes))
    k, num = _hutchpp_split(num_matvecs)
    k1, k2 = jax.random.split(key)
    return hutchpp_rows(rows, _probes_jit(k1, zeros, num=k, kind=probe, pin=op.placement),
                        _probes_jit(k2, zeros, num=num, kind=probe, pin=op.placement))


_dots = jax.jit(jax.vmap(tree.vdot))


def _host_products(op, layout, batch_size):
    """``rows -> A rows`` on ``(k, dim)`` float64 NumPy arrays (the operator counts them)."""
    return lambda x: np.asarray(op.flat_rows(np.asarray(x, layout.dtype), batch_size=batch_size),
                                np.float64)


def _flat_probes(key, op, layout, num, probe):
    """``num`` probes as a ``(num, dim)`` float64 NumPy array: the compiled draw's probes."""
    return layout.flat(_probes_jit(key, _zeros(op.params_like), num=num, kind=probe),
                       num).astype(np.float64)


def _trace_numpy(op, key, method, num_matvecs, probe):
    """Hutchinson / Hutch++ on a single CPU device: the same probes as the compiled form
    (``_probes_jit``), the products by ``_flat_rows`` (one compiled function per row count:
    Hutch++'s three calls share one when ``num_matvecs`` is a multiple of 3), and the
    orthonormalisation and quadratic forms in NumPy, in float64. A cold call compiles
    about a third of what the single compiled Hutch++ function does."""
    layout = _host.FlatLayout(op.params_like)
    products = _host_products(op, layout, None)           # counts its products

    def draw(sub, num):
        return _flat_probes(sub, op, layout, num, probe)

    def quad(x):
        return np.einsum("pn,pn->p", x, products(x))

    with _host.single_threaded_blas():
        if method == "hutchinson":
            return 0.0, quad(draw(key, num_matvecs))
        k, num = _hutchpp_split(num_matvecs)
        k1, k2 = jax.random.split(key)
        rtol = 100 * float(np.finfo(layout.dtype).eps)
        q = orthonormalize_numpy(products(draw(k1, k)), rtol=rtol)
        g = draw(k2, num)
        return float(np.sum(quad(q))), quad(g - (g @ q.T) @ q)


def _trace_xtrace(op, key, num_matvecs, probe, batch_size):
    """XTrace's leave-one-out samples with ``num_matvecs // 2`` test vectors (the same
    probes as Hutchinson's with that key) and the jackknife standard error over the test
    vectors. On a single CPU device the vectors are NumPy rows in float64; elsewhere they
    stay on the device (sharded like the parameters) and only ``(m, m)`` Gram matrices
    come to the host, where the rest runs in float64."""
    num = num_matvecs // 2
    if _host.host_is_device():
        layout = _host.FlatLayout(op.params_like)
        omega, rows = _flat_probes(key, op, layout, num, probe), HostRows
        products = _host_products(op, layout, batch_size)
    else:
        omega = _probes_jit(key, _zeros(op.params_like), num=num, kind=probe, pin=op.placement)
        rows = DeviceRows(op.params_like, op.placement)
        products = functools.partial(op.rows, batch_size=batch_size)
    with _host.single_threaded_blas():
        samples, left_out = xtrace_samples(omega, products, sphere=probe == "gaussian",
                                           jackknife=True, rows=rows)
    stderr = math.sqrt((num - 1) / num * np.sum((left_out - np.mean(left_out)) ** 2))
    return samples, stderr


def trace(op: CurvatureOperator, *, method: str = "hutch++", num_matvecs: int | None = None,
          key=None, probe: str = "rademacher", num_steps: int = 1,
          batch_size: int | None = None) -> TraceEstimate:
    """The trace of a symmetric operator, with a standard error.

    Methods:

    * ``"hutch++"`` (default; Meyer, Musco, Musco & Woodruff 2021): ``k = num_matvecs // 3``
      products sketch the top of the spectrum, ``k`` more give ``tr(Q^T A Q)`` exactly, and
      the remaining ``l`` run Hutchinson on the deflated remainder. For a spectrum that
      decays (a few outliers over a small bulk, as in neural-network Hessians) the error is
      far below Hutchinson's at equal cost.
    * ``"xtrace"`` (Epperly, Tropp & Webber 2024): Hutch++ that uses every sample twice.
      ``m = num_matvecs // 2`` test vectors and ``A Q`` for a basis ``Q`` of their products
      give ``m`` estimates, each leaving one vector out of the sketch and using it as the
      Hutchinson probe; the estimate is their mean. At equal matvecs its error is several
      times below Hutch++'s when a spectrum's outliers outnumber Hutch++'s sketch (tested
      on a low-rank-plus-noise matrix), and level or better past that (digits MLP:
      1.3-1.9x smaller at 12-48 matvecs; notebook 02: level). With ``probe="gaussian"`` it
      uses the paper's improved (sphere) normalisation. ``stderr`` is the jackknife over
      the test vectors: XTrace redone with each left out, from the same products (no
      matvecs, ``O(m^4)`` flops). It does not understate the error in expectation (Efron &
      Stein 1981) and ran 1.1-2.7x the actual error on our test matrices and the digits
      MLPs (7x on a rank-10-plus-noise matrix with 12 test vectors, where leaving one out
      nearly stops the sketch from covering the outliers); the paper's spread of the
      leave-one-out estimates over ``sqrt(m)`` ran 0.7-1.0x, and is
      ``np.std(samples, ddof=1) / sqrt(m)`` if wanted. The algebra runs on the host in
      float64: memory about ``2 num_matvecs`` float64 vectors.
    * ``"hutchinson"`` (Hutchinson 1989): the mean of ``v^T A v`` over ``num_matvecs``
      probes. Rademacher variance per sample ``2 (||A||_F^2 - sum_i A_ii^2)``.
    * ``"slq"``: ``n`` times the Gauss-rule mean of ``num_matvecs // num_steps`` probes with
      ``num_steps`` Lanczos steps each; with ``num_steps=1`` this is Hutchinson with
      normalised probes. Worth it only when the density is wanted too
      (``ht.density(...).trace()`` costs nothing extra).
    * ``"dense"``: the exact trace of the explicit matrix (``dim`` matvecs; small models).

    Accuracy: the stochastic estimates are unbiased; ``stderr`` is the sample standard
    deviation over ``sqrt(samples)`` (for Hutch++, of the deflated remainder, conditional on
    the sketch). ``interval()`` gives a Student-t confidence interval. The samples are
    quadratic forms, skewed to the right, so with few samples (under ~20) of a small or
    low-rank remainder the interval undercovers now and then; give the estimator
    more matvecs when the standard error itself matters.

    Args:
      op: the operator.
      method: ``"hutch++"``, ``"xtrace"``, ``"hutchinson"``, ``"slq"`` or ``"dense"``.
      num_matvecs: the budget (default 90; at least 4 for Hutch++, 6 for XTrace, 2
        otherwise). XTrace spends an even number, ``2 * (num_matvecs // 2)``; with only two
        test vectors neither its jackknife nor the paper's estimate can see any error.
      key: a ``jax.random`` key (required except for ``"dense"``).
      probe: ``"rademacher"`` or ``"gaussian"``.
      num_steps: Lanczos steps per probe for ``"slq"``.
      batch_size: vectors per vmapped matvec call (default: all at once). On CPU, products
        with convolutions are not vmapped: XLA:CPU runs a batched conv HVP far slower than
        the same products one by one, so each vector is applied by its own call. On a
        single CPU device with the default, the products are batched calls and the rest
        (the sketch's orthonormal basis, projections, quadratic forms) runs in NumPy in
        float64: the same probes and numbers as the single compiled function that a
        ``batch_size`` or an accelerator gets, with about a third of its compilation
        (Hutch++ with 48 matvecs on the 3.5k-parameter digits MLP: 1.2 s cold against
        2.4 s).

    Returns:
      A :class:`TraceEstimate`. Cost ``num_matvecs`` products (``dim`` for ``"dense"``);
      memory ``num_matvecs`` parameter-sized vectors (fewer with ``batch_size``).

    Raises:
      ValueError: an unknown method or probe, no key, or too small a budget.

    Examples:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> H = ht.from_dense(np.diag([3.0, 1.0, -2.0]))
      >>> tr = ht.trace(H, num_matvecs=9, key=jax.random.key(0), probe="gaussian")
      >>> round(tr.value, 6), tr.num_matvecs       # a rank-3 sketch is exact here
      (2.0, 9)
    """
    _check_operator(op, "trace")
    methods = ("hutch++", "xtrace", "hutchinson", "slq", "dense")
    if method not in methods:
        raise ValueError(f"method={method!r} is not one of {methods}.")
    check_choice("probe", probe, PROBES)
    start, before = time.perf_counter(), op.num_matvecs
    exact = (method == "xtrace" and num_matvecs is not None and
             isinstance(num_matvecs, int) and num_matvecs // 2 >= op.dim)
    if method == "dense" or exact:        # XTrace with as many test vectors as dimensions
        value = float(np.trace(to_dense(op)))
        return TraceEstimate(value=value, stderr=0.0, num_matvecs=op.num_matvecs - before,
                             method="dense", num_samples=0, samples=np.zeros(0), dim=op.dim,
                             probe="", operator=op.kind, wall_time=time.perf_counter() - start,
                             extra={"requested": method} if exact else {})
    check_key(key, "trace")
    num_matvecs = budget(method, num_matvecs, num_steps)
    if method == "slq":
        dens = density(op, key=key, num_probes=num_matvecs // num_steps, num_steps=num_steps,
                       probe=probe, batch_size=batch_size)
        return dataclasses.replace(dens.trace(), wall_time=time.perf_counter() - start)
    zeros = _zeros(op.params_like)
    stderr = None
    if method == "xtrace":
        low = 0.0
        samples, stderr = _trace_xtrace(op, key, num_matvecs, probe, batch_size)
    elif _numpy_basis(op) and batch_size is None:
        low, samples = _trace_numpy(op, key, method, num_matvecs, probe)
    elif op.slow_in_loops:
        low, samples = _trace_rows(op, key, method, num_matvecs, probe, batch_size)
    else:
        low, samples = stochastic_trace(op.matvec_fn, key, zeros, method=method,
                                        num_matvecs=num_matvecs, probe=probe,
                                        batch_size=batch_size, pin=op.placement)
        op.num_matvecs += num_matvecs
    return estimate(low, samples, method=method, num_matvecs=op.num_matvecs - before,
                    dim=op.dim, probe=probe, key=key, operator=op.kind,
                    wall_time=time.perf_counter() - start, stderr=stderr)
