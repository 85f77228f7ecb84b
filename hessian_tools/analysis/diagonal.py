"""The diagonal of a curvature operator and its Frobenius norm.

* :func:`diagonal`: ``diag(A)`` by Hutchinson's diagonal estimator (Bekas, Kokiopoulou &
  Saad 2007), by XDiag (Epperly, Tropp & Webber 2024) or exactly (one product per
  parameter, small models only).
* :func:`ggn_diagonal`: the exact diagonal of the Gauss-Newton matrix ``J^T H_out J`` from
  per-example backward passes through the output-space factorisation of ``H_out``.
* :func:`frobenius_norm_sq`: ``||A||_F^2 = tr(A^2)`` from ``||A v||^2`` (Hutchinson, or a
  Hutch++ form), or exactly.

The stochastic estimators use Rademacher probes and run their algebra on the host in
float64 (the products are the operator's batched ones, ``CurvatureOperator.flat_rows``):
memory about ``num_matvecs`` float64 parameter-sized vectors (``3 num_matvecs / 2`` for
XDiag).
"""

from __future__ import annotations

import math
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from hessian_tools import _host, tree
from hessian_tools._checks import check_choice, check_count, check_key
from hessian_tools.analysis.spectral import _check_operator
from hessian_tools.analysis.traces import _flat_probes, _host_products, _hutchpp_split
from hessian_tools.data import take_examples
from hessian_tools.linalg.trace import orthonormalize_numpy
from hessian_tools.objective import Objective
from hessian_tools.operators import CurvatureOperator
from hessian_tools.results.toolbox import DiagonalEstimate, FunctionTrace

__all__ = ["DEFAULT_DIAGONAL_MATVECS", "EXACT_MAX_DIM", "diagonal", "frobenius_norm_sq",
           "ggn_diagonal"]

DEFAULT_DIAGONAL_MATVECS = 100
EXACT_MAX_DIM = 20_000
"""The largest operator ``method="exact"`` accepts by default: one product per parameter."""
_UNIT_CHUNK = 256


# ---- shared pieces -------------------------------------------------------------------------

def _unit_products(op: CurvatureOperator, products, max_dim: int, what: str):
    """``(start, A[:, start:stop]^T)`` for chunks of unit vectors: ``dim`` products in all."""
    check_count("max_dim", max_dim)
    if op.dim > max_dim:
        raise ValueError(
            f"{what} with method='exact' takes one product per parameter: {op.dim} products "
            f"for this operator, above max_dim={max_dim}. Use a stochastic method (e.g. "
            "method='xdiag' for a diagonal, method='hutch++' for a Frobenius norm) with "
            f"num_matvecs=..., or pass max_dim={op.dim} if {op.dim} products are affordable.")
    for start in range(0, op.dim, _UNIT_CHUNK):
        rows = min(_UNIT_CHUNK, op.dim - start)
        eye = np.zeros((rows, op.dim))
        eye[np.arange(rows), start + np.arange(rows)] = 1.0
        yield start, products(eye)


def _jackknife_sum_of_squares(samples: np.ndarray) -> tuple[float, float]:
    """Jackknife over the rows of ``samples`` (``(k, n)``, mean ``d``) of ``sum_j d_j^2``:
    the bias-corrected value ``sum_j (d_j^2 - s_j^2 / k)`` and its standard error."""
    k = samples.shape[0]
    d = samples.mean(axis=0)
    total = float(d @ d)
    left_out = (k * k * total - 2 * k * (samples @ d)
                + np.einsum("kn,kn->k", samples, samples)) / (k - 1) ** 2
    corrected = k * total - (k - 1) * float(np.mean(left_out))
    stderr = math.sqrt((k - 1) / k * float(np.sum((left_out - left_out.mean()) ** 2)))
    return corrected, stderr


def _result(like, flat, flat_stderr, *, method, num_matvecs, start, key=None, samples=None,
            operator="", extra=None) -> DiagonalEstimate:
    layout = _host.FlatLayout(like)
    flat = np.asarray(flat, np.float64)
    if samples is not None:
        ss, ss_err = _jackknife_sum_of_squares(samples)
    else:
        ss, ss_err = float(flat @ flat), 0.0
    return DiagonalEstimate(
        diagonal=layout.tree(flat.astype(layout.dtype)),
        stderr=None if flat_stderr is None else layout.tree(flat_stderr.astype(layout.dtype)),
        flat=flat, flat_stderr=flat_stderr, paths=tuple(tree.flat_paths(like)),
        shapes=tuple(tuple(s) for s in layout.shapes), sum_of_squares=ss,
        sum_of_squares_stderr=ss_err, method=method, dim=layout.dim,
        num_samples=0 if samples is None else len(samples),
        probe="" if samples is None else "rademacher", num_matvecs=num_matvecs,
        seed=[] if key is None else tree.key_bits(key), operator=operator,
        wall_time=time.perf_counter() - start, extra=extra or {})


# ---- diag(A) of an operator ----------------------------------------------------------------

def _xdiag(omega: np.ndarray, products):
    """XDiag's ``m`` exchangeable estimates of ``diag(A)`` as the rows of an ``(m, n)`` array
    (their mean is the estimate), or ``None`` and the exact diagonal when the sketch is
    rank-deficient (``rank(A) < m``: the sketch holds all of ``A``).

    Estimate ``i`` is Diag++ with the sketch ``Y = A Omega`` minus its column ``i`` and the
    one probe ``omega_i``: ``diag(Q_i Q_i^T A) + omega_i * ((I - Q_i Q_i^T) A omega_i)``,
    with ``Q_i Q_i^T = Q (I - s_i s_i^T) Q^T`` as in XTrace (``s_i``: the normalised column
    ``i`` of ``R^{-T}``), so all ``m`` cost ``O(m^2 n)`` flops past the ``2m`` products.
    """
    m = omega.shape[0]
    y = products(omega)                                   # (m, n): rows A omega_i
    q, r = np.linalg.qr(y.T)                              # (n, m), (m, m)
    diag_r = np.abs(np.diag(r))
    if diag_r.min() <= 100 * np.finfo(np.float64).eps * max(diag_r.max(), 1e-300) * m:
        basis = orthonormalize_numpy(y, rtol=100 * float(np.finfo(np.float32).eps))
        return None, np.einsum("kn,kn->n", basis, products(basis))
    z = products(q.T).T                                   # (n, m): A Q
    s = np.linalg.solve(r, np.eye(m)).T                   # columns: R^{-T} e_i
    s /= np.linalg.norm(s, axis=0, keepdims=True)
    t = (z.T @ omega.T + r) / 2                           # Q^T A omega_i, two ways (Z, R)
    qs, zs = q @ s, z @ s                                 # (n, m)
    c = np.einsum("ki,ki->i", s, t)                       # s_i^T t_i
    return (np.einsum("nk,nk->n", q, z)[None, :] - (qs * zs).T + omega * y
            - omega * (q @ t).T + omega * (qs * c).T), None


def diagonal(op: CurvatureOperator, *, method: str = "hutchinson", num_matvecs: int | None = None,
             key=None, batch_size: int | None = None,
             max_dim: int = EXACT_MAX_DIM) -> DiagonalEstimate:
    """The diagonal of a symmetric operator, shaped like the parameters, with standard errors.

    Methods:

    * ``"hutchinson"`` (Bekas, Kokiopoulou & Saad 2007): the mean of ``v * (A v)`` over
      ``num_matvecs`` Rademacher probes ``v``. Unbiased; entry ``j`` has variance
      ``sum_{k != j} A_jk^2`` per probe (the off-diagonal mass of row ``j``), so it is exact
      for a diagonal matrix and slow (error ``~ 1/sqrt(num_matvecs)``) for a dense one.
      ``stderr`` is the sample standard error per entry.
    * ``"xdiag"`` (Epperly, Tropp & Webber 2024): the diagonal analogue of XTrace.
      ``m = num_matvecs // 2`` test vectors sketch the top of the spectrum (``Q``, a basis
      of ``A Omega``) and each serves in turn as the probe for the remainder while left
      out of the sketch, so every product is used twice; the estimate is the mean of the
      ``m`` exchangeable estimates. Far more accurate than Hutchinson for a spectrum with
      a few large eigenvalues (neural-network Hessians); exact when ``rank(A) < m``.
      ``stderr`` is the spread of the ``m`` estimates over ``sqrt(m)``, the paper's error
      estimate: the estimates are correlated, so it is a guide, not a guarantee (for
      XTrace the same estimate ran 0.7-1.0x the actual error on the digits MLPs).
    * ``"exact"``: ``A e_j`` for every unit vector (``dim`` products, in batches of 256).
      For small models only: refused above ``max_dim`` parameters.

    Accuracy: see the methods; ``sum_of_squares`` is bias-corrected (see
    :class:`~hessian_tools.results.toolbox.DiagonalEstimate`).

    Args:
      op: the operator.
      method: ``"hutchinson"``, ``"xdiag"`` or ``"exact"``.
      num_matvecs: the budget (default 100; at least 2 for Hutchinson, 6 for XDiag, which
        spends an even number). XDiag with ``num_matvecs // 2 >= dim`` is exact instead.
      key: a ``jax.random`` key (required except for ``"exact"``).
      batch_size: vectors per vmapped product call (default: all at once).
      max_dim: the largest dimension ``"exact"`` accepts.

    Returns:
      A :class:`~hessian_tools.results.toolbox.DiagonalEstimate`. Cost: ``num_matvecs``
      products (``dim`` for ``"exact"``); memory ``num_matvecs`` float64 vectors (about
      ``1.5 num_matvecs`` for XDiag; 256 for ``"exact"``), plus ``dim x m^2`` flops for
      XDiag.

    Raises:
      TypeError: ``op`` is not a CurvatureOperator.
      ValueError: an unknown method, no key, too small a budget, or ``"exact"`` above
        ``max_dim``.

    Examples:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> from hessian_tools.analysis.diagonal import diagonal
      >>> A = ht.from_dense(np.diag([3.0, 1.0, -2.0]))
      >>> d = diagonal(A, num_matvecs=4, key=jax.random.key(0))   # exact for a diagonal A
      >>> d.flat.tolist(), d.flat_stderr.tolist(), d.sum_of_squares
      ([3.0, 1.0, -2.0], [0.0, 0.0, 0.0], 14.0)
    """
    _check_operator(op, "diagonal")
    check_choice("method", method, ("hutchinson", "xdiag", "exact"))
    start, before = time.perf_counter(), op.num_matvecs
    layout = _host.FlatLayout(op.params_like)
    products = _host_products(op, layout, batch_size)         # counts its products
    if method != "exact":
        check_key(key, "diagonal")
        num_matvecs = DEFAULT_DIAGONAL_MATVECS if num_matvecs is None else num_matvecs
        check_count("num_matvecs", num_matvecs, minimum=6 if method == "xdiag" else 2, why=(
            " XDiag needs at least 3 test vectors (2 products each)."
            if method == "xdiag" else " A standard error needs two probes."))
    if method == "exact" or (method == "xdiag" and num_matvecs // 2 >= op.dim):
        flat = np.zeros(op.dim)
        with _host.single_threaded_blas():
            for first, cols in _unit_products(op, products, max_dim, "diagonal"):
                flat[first:first + len(cols)] = cols[np.arange(len(cols)),
                                                     first + np.arange(len(cols))]
        return _result(op.params_like, flat, None, method="exact", start=start,
                       num_matvecs=op.num_matvecs - before, operator=op.kind,
                       extra={"requested": method} if method != "exact" else {})
    num = num_matvecs // 2 if method == "xdiag" else num_matvecs
    omega = _flat_probes(key, op, layout, num, "rademacher")
    with _host.single_threaded_blas():
        if method == "hutchinson":
            samples, exact = omega * products(omega), None
        else:
            samples, exact = _xdiag(omega, products)
    if samples is None:                                   # rank(A) < m: the sketch is exact
        return _result(op.params_like, exact, np.zeros(op.dim), method=method, start=start,
                       num_matvecs=op.num_matvecs - before, key=key, operator=op.kind,
                       extra={"rank_deficient_sketch": True})
    flat_stderr = samples.std(axis=0, ddof=1) / math.sqrt(len(samples))
    return _result(op.params_like, samples.mean(axis=0), flat_stderr, method=method,
                   start=start, num_matvecs=op.num_matvecs - before, key=key,
                   samples=samples, operator=op.kind)


# ---- the exact Gauss-Newton diagonal -------------------------------------------------------

@jax.jit
def _ggn_diagonal_chunk(predict, output_loss, params, chunk, mask):
    """``sum_i mask_i sum_c lambda_ic (J_i^T u_ic)^2`` over the examples ``i`` of ``chunk``,
    with ``h_i = sum_c lambda_ic u_ic u_ic^T`` the Hessian of example ``i``'s loss in its
    outputs: one forward pass and ``C`` backward passes (VJPs) per example. ``mask`` zeroes
    the padding of a short chunk (one compiled shape for every chunk)."""
    def one(example, weight):
        batch = jax.tree.map(lambda a: a[None], example)
        out, vjp = jax.vjp(lambda p: predict(p, batch), params)
        flat, unravel = jax.flatten_util.ravel_pytree(out)
        h = jax.hessian(lambda o: output_loss(unravel(o), batch))(flat)
        lam, u = jnp.linalg.eigh((h + h.T) / 2)
        cols = jax.vmap(lambda col: vjp(unravel(col.astype(flat.dtype)))[0])(u.T)
        lam = weight * lam
        return jax.tree.map(lambda g: jnp.tensordot(lam.astype(g.dtype), g * g, axes=1), cols)
    return jax.tree.map(lambda a: jnp.sum(a, axis=0), jax.vmap(one)(chunk, mask))


def _padded_chunks(batch, n: int, chunk: int):
    """``(examples, mask)`` pieces of ``chunk`` examples; the last is padded with copies of
    the batch's first example, masked out."""
    for lo in range(0, n, chunk):
        part = take_examples(batch, lo, lo + chunk)
        size = min(chunk, n - lo)
        if size < chunk:
            pad = jax.tree.map(lambda a: jnp.repeat(a[:1], chunk - size, axis=0), batch)
            part = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), part, pad)
        yield part, jnp.arange(chunk) < size


def ggn_diagonal(obj: Objective, *, max_bytes: int = 256 * 1024**2) -> DiagonalEstimate:
    """The exact diagonal of the generalized Gauss-Newton matrix ``G = J^T H_out J``.

    For example ``i`` with outputs ``o_i`` (``C`` numbers) the Hessian of its loss in the
    outputs is ``h_i = sum_c lambda_ic u_ic u_ic^T`` (``eigh`` of a ``C x C`` matrix, from
    ``C`` forward-over-reverse passes in output space), so
    ``diag(G) = (1/N) sum_i sum_c lambda_ic (J_i^T u_ic)^2`` exactly: ``C`` backward passes
    (VJPs) through the model per example, no randomness. This is the square-root
    factorisation of BackPACK's DiagGGN (Dangel, Kunstner & Hennig 2020), written with the
    eigenvectors so that an output loss that is not convex (``h_i`` indefinite) is exact
    too. The examples are processed in chunks whose ``C`` per-example gradients fit in
    ``max_bytes``, each chunk one call of one compiled, vmapped function (a short last
    chunk is padded and masked, so nothing is compiled twice; streamed data make one pass
    to find the largest batch).

    Cost: ``N`` forward passes and ``N C`` backward passes (for the digits MLP, ``C = 10``:
    about 10 gradients' worth of work, against 100+ HVPs for a stochastic estimate of
    comparable accuracy); memory ``max_bytes`` plus the model. Accuracy: exact up to
    floating-point rounding (tested against the dense Gauss-Newton matrix in float64).

    Args:
      obj: an objective with ``predict`` and ``output_loss`` (``Objective.from_nnx``,
        ``from_linen``, or ``Objective(..., predict=, output_loss=)``) whose loss is a mean
        of per-example losses.
      max_bytes: the memory for one chunk's per-example gradients.

    Returns:
      A :class:`~hessian_tools.results.toolbox.DiagonalEstimate` with ``method="ggn-exact"``,
      no standard errors, ``num_matvecs=0`` and ``extra["vjps_per_example"] = C``.

    Raises:
      TypeError: ``obj`` is not an Objective.
      ValueError: no ``predict``/``output_loss`` split, or a loss that couples the examples
        of a batch (batch statistics): it has no per-example Jacobians.
    """
    if not isinstance(obj, Objective):
        raise TypeError(f"ggn_diagonal takes an Objective (ht.Objective.from_nnx(model, "
                        f"output_loss, data)), got {type(obj).__name__}.")
    if not obj.has_outputs:
        raise ValueError("ggn_diagonal needs the objective's predict(params, batch) and "
                         "output_loss(outputs, batch); build it with Objective(..., predict=..., "
                         "output_loss=...) or Objective.from_nnx/from_linen.")
    if obj.examples_coupled():
        raise ValueError("ggn_diagonal needs per-example outputs, but this loss couples the "
                         "examples of a batch (e.g. BatchNorm with batch statistics). Use "
                         "bn_mode='eval', or estimate the diagonal of ht.gauss_newton(obj) with "
                         "diagonal(..., method='xdiag').")
    check_count("max_bytes", max_bytes)
    start = time.perf_counter()
    first = next(iter(obj.batches()))[0]
    outputs = jax.eval_shape(obj.predict, obj.params, take_examples(first, 0, 1))
    num_outputs = tree.size(outputs)
    per_example = num_outputs * tree.size(obj.params) * jnp.dtype(obj.dtype).itemsize
    largest = max(n for _, n in obj.batches()) if obj.streaming else max(
        int(jax.tree.leaves(stack)[0].shape[1]) for stack in obj.groups.stacks)
    chunk = max(1, min(int(max_bytes) // max(per_example, 1), largest))
    total, count = None, 0
    for batch, n in obj.batches():
        for part, mask in _padded_chunks(batch, n, chunk):
            out = _ggn_diagonal_chunk(obj.predict, obj.output_loss, obj.params, part,
                                      mask.astype(obj.dtype))
            total = out if total is None else tree.add(total, out)
        count += n
    layout = _host.FlatLayout(obj.params)
    flat = layout.flat(total).astype(np.float64) / count
    return _result(obj.params, flat, None, method="ggn-exact", num_matvecs=0, start=start,
                   operator="ggn", extra={"vjps_per_example": num_outputs,
                                          "num_examples": count, "chunk_size": chunk})


# ---- ||A||_F^2 -----------------------------------------------------------------------------

def frobenius_norm_sq(op: CurvatureOperator, *, method: str = "hutch++",
                      num_matvecs: int | None = None, key=None, batch_size: int | None = None,
                      max_dim: int = EXACT_MAX_DIM) -> FunctionTrace:
    """``||A||_F^2 = tr(A^2) = sum_i lambda_i^2``, with a standard error.

    Methods:

    * ``"hutch++"`` (default): Hutch++ (Meyer et al. 2021) on ``A^2`` without forming it.
      ``k = num_matvecs // 3`` products sketch ``Q`` (a basis of ``A S``, which spans the
      top of ``A^2``'s spectrum too), ``k`` more give ``||A Q||_F^2 = tr(Q^T A^2 Q)``
      exactly, and the remaining ``l`` give Hutchinson's ``||A (I - Q Q^T) g||^2`` on the
      deflated remainder. A Hessian's squared spectrum is dominated by its outliers even
      more than the spectrum itself, so deflating them pays off more than for the trace.
    * ``"hutchinson"``: the mean of ``||A v||^2`` over ``num_matvecs`` Rademacher probes
      (one product each: ``v^T A^2 v = ||A v||^2``). Unbiased; the per-sample variance is
      ``2 (||A^2||_F^2 - sum_i (A^2)_ii^2)``.
    * ``"exact"``: ``sum_j ||A e_j||^2`` (``dim`` products; refused above ``max_dim``).

    ``stderr`` is the sample standard error of the (remainder) samples. With ``num_steps
    >= 2``, ``trace_function(op, lambda x: x**2, ...)`` is the same Hutchinson estimate
    with normalised probes.

    Args:
      op: the operator.
      method: ``"hutch++"``, ``"hutchinson"`` or ``"exact"``.
      num_matvecs: the budget (default 100; at least 4 for Hutch++, 2 for Hutchinson).
      key: a ``jax.random`` key (required except for ``"exact"``).
      batch_size: vectors per vmapped product call (default: all at once).
      max_dim: the largest dimension ``"exact"`` accepts.

    Returns:
      A :class:`~hessian_tools.results.toolbox.FunctionTrace` with ``function="x**2"``.
      Cost ``num_matvecs`` products (``dim`` for ``"exact"``); memory ``num_matvecs``
      float64 vectors.

    Raises:
      TypeError: ``op`` is not a CurvatureOperator.
      ValueError: an unknown method, no key, too small a budget, ``"exact"`` above
        ``max_dim``.

    Examples:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> from hessian_tools.analysis.diagonal import frobenius_norm_sq
      >>> A = ht.from_dense(np.diag([3.0, 1.0, -2.0]))
      >>> frobenius_norm_sq(A, method="exact").value
      14.0
    """
    _check_operator(op, "frobenius_norm_sq")
    check_choice("method", method, ("hutch++", "hutchinson", "exact"))
    start, before = time.perf_counter(), op.num_matvecs
    layout = _host.FlatLayout(op.params_like)
    products = _host_products(op, layout, batch_size)
    low, samples = 0.0, np.zeros(0)
    with _host.single_threaded_blas():
        if method == "exact":
            low = sum(float(np.sum(cols * cols)) for _, cols in
                      _unit_products(op, products, max_dim, "frobenius_norm_sq"))
        else:
            check_key(key, "frobenius_norm_sq")
            num_matvecs = DEFAULT_DIAGONAL_MATVECS if num_matvecs is None else num_matvecs
            check_count("num_matvecs", num_matvecs, minimum=4 if method == "hutch++" else 2)
            low, samples = _frobenius_samples(op, layout, products, key, method, num_matvecs)
    stderr = float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) else 0.0
    return FunctionTrace(value=float(low) + (float(np.mean(samples)) if len(samples) else 0.0),
                         stderr=stderr, method=method, num_samples=len(samples),
                         samples=samples, low_rank=float(low) if method == "hutch++" else 0.0,
                         dim=op.dim, probe="" if method == "exact" else "rademacher",
                         function="x**2", num_matvecs=op.num_matvecs - before,
                         seed=[] if key is None or method == "exact" else tree.key_bits(key),
                         operator=op.kind, wall_time=time.perf_counter() - start)


def _frobenius_samples(op, layout, products, key, method, num_matvecs):
    """``(exact part, samples)``: ``(0, ||A v_i||^2)`` for Hutchinson; for Hutch++ the
    sketch's ``||A Q||_F^2`` and the deflated remainders ``||A (I - QQ^T) g_i||^2``."""
    def sq_norms(x):
        y = products(x)
        return np.einsum("pn,pn->p", y, y)
    if method == "hutchinson":
        return 0.0, sq_norms(_flat_probes(key, op, layout, num_matvecs, "rademacher"))
    k, num = _hutchpp_split(num_matvecs)
    k1, k2 = jax.random.split(key)
    q = orthonormalize_numpy(products(_flat_probes(k1, op, layout, k, "rademacher")),
                             rtol=100 * float(np.finfo(layout.dtype).eps))
    g = _flat_probes(k2, op, layout, num, "rademacher")
    return float(np.sum(sq_norms(q))), sq_norms(g - (g @ q.T) @ q)
