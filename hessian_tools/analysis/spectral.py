"""The whole spectrum: the eigenvalue density by stochastic Lanczos quadrature, counts of
eigenvalues below a threshold, and the outliers above the bulk.

The one definition of a *negative* eigenvalue in hessian_tools: below ``-tau``, with ``tau``
from :func:`default_threshold` unless given (1% of ``max |lambda|``; see there for why).
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
from hessian_tools._checks import check_confidence, check_count, check_key
from hessian_tools.analysis.eigen import default_tol, eigenvalues
from hessian_tools.linalg.slq import slq_quadrature, slq_quadrature_host, slq_quadrature_numpy
from hessian_tools.linalg.trace import PROBES, random_probes
from hessian_tools.operators import CurvatureOperator, to_dense
from hessian_tools.results import Eigenpairs, EigenvalueCount, OutlierSplit, SpectralDensity

__all__ = ["DEFAULT_NUM_PROBES", "DEFAULT_NUM_STEPS", "default_threshold", "density",
           "negative_count", "outliers"]


DEFAULT_NUM_PROBES = 10
DEFAULT_NUM_STEPS = 80
_BASIS_BUDGET_BYTES = 2 * 1024**3


def default_threshold(scale: float, dtype=jnp.float32) -> float:
    """The default ``tau``: eigenvalues in ``[-tau, tau]`` are treated as zero.

    ``tau = scale * max(1e-2, 10 * eps(dtype))`` with ``scale = max |lambda|`` (an
    estimate of ``||H||_2``).

    Why 1% of the scale: it is SLQ's resolution at the default 80 steps. A neural-network
    Hessian has hundreds of eigenvalues within 0.1% of ``||H||`` of zero; SLQ's quadrature
    puts one node on that cluster, and a threshold inside it gets a count bracket spanning
    much of the cluster (honest, but uninformative). At 1% the threshold sits outside the
    cluster and SLQ's interval is narrow (on the digits MLPs: ~3% of ``n`` wide, covering
    the exact count). It is far above rounding: float32 Hessian-vector products carry relative
    errors of ~1e-6 to 1e-4 of ``||H||``. The ``10 * eps`` term takes over only in half
    precision (bfloat16: ~8%). For finer thresholds pass ``tau`` and use more Lanczos steps,
    or the exact ``"dense"``/``"lanczos"`` counts.

    Examples:
      >>> default_threshold(2.0, "float32")
      0.02
    """
    eps = float(jnp.finfo(jnp.dtype(dtype)).eps)
    return float(scale) * max(1e-2, 10.0 * eps)


def _zeros(like):
    """Shape templates for the compiled functions: NumPy zeros on a single CPU device (no XLA
    kernel compiled per leaf shape, about 0.03 s each), device zeros elsewhere (with the
    parameters' shardings: never a whole vector on one device)."""
    if _host.host_is_device():
        return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), like)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype, device=s.sharding), like)


def _check_operator(op, what: str):
    if not isinstance(op, CurvatureOperator):
        raise TypeError(f"{what} expects a CurvatureOperator (ht.hessian(obj), "
                        f"ht.gauss_newton(obj), ht.from_dense(A)), got {type(op).__name__}.")


@functools.partial(jax.jit, static_argnames=("num_probes", "num_steps", "kind", "batch_size",
                                             "pin"))
def _slq_compiled(matvec_fn, key, zeros, *, num_probes, num_steps, kind, batch_size, pin=None):
    probes = random_probes(key, zeros, num_probes, kind=kind, pin=pin)
    return slq_quadrature(matvec_fn, probes, num_steps=num_steps, batch_size=batch_size)


_probes_jit = jax.jit(random_probes, static_argnames=("num", "kind", "pin"))


def _auto_batch(num_probes: int, rows: int, op: CurvatureOperator) -> int | None:
    """Probes per vmapped call so that their Lanczos bases fit in ``_BASIS_BUDGET_BYTES``."""
    per_probe = rows * op.dim * jnp.dtype(op.dtype).itemsize
    batch = max(1, _BASIS_BUDGET_BYTES // max(per_probe, 1))
    return None if batch >= num_probes else int(batch)


def _numpy_basis(op: CurvatureOperator) -> bool:
    """Whether a host-driven loop keeps its Lanczos bases in NumPy: on a single CPU device
    (no copies, nothing to compile, only filled rows swept) with one parameter dtype."""
    return _host.host_algebra(op.params_like)


def density(op: CurvatureOperator, *, key=None, num_probes: int = DEFAULT_NUM_PROBES,
            num_steps: int | None = None, probe: str = "rademacher", loop: str = "auto",
            batch_size: int | None = None) -> SpectralDensity:
    """The eigenvalue density of a symmetric operator by stochastic Lanczos quadrature.

    ``num_probes`` random probes (Rademacher or Gaussian, normalised) each run
    ``num_steps`` Lanczos steps with full reorthogonalisation; each probe's tridiagonal
    matrix gives an ``m``-point Gauss quadrature rule of its probe measure, whose average
    estimates the spectral measure ``(1/n) sum_i delta(lambda_i)`` (Ubaru, Chen & Saad 2017;
    Ghorbani, Krishnan & Xiao 2019). All probes run in one compiled call (``jax.vmap`` of
    :func:`~hessian_tools.linalg.lanczos_tridiag` inside ``jax.jit``, the operator's matvec
    passed as an argument, so another operator of the same architecture reuses the compiled
    code); streamed operators fall back to a Python loop.

    Accuracy: each probe's rule matches ``2m`` moments of its probe measure; the extreme
    Ritz values converge first (to the ends of the spectrum and to outliers) and their
    ``residuals`` bound their error. The averaged measure has a sampling error of order
    ``1 / sqrt(n P)`` per unit mass; in Wasserstein-1 distance the error falls roughly like
    ``range / m`` plus ``range / sqrt(n P)`` (Chen, Trogdon & Ubaru 2021). On the test
    matrices (semicircle, Marchenko-Pastur, low rank plus bulk, a saddle; n = 300) and the
    exact Hessian of a digits MLP (n = 1210) the defaults give
    ``W1 < 0.02 (lambda_max - lambda_min)`` (tested).

    Args:
      op: the operator (``ht.hessian(obj)``, ``ht.gauss_newton(obj)``, ``ht.from_dense(A)``).
      key: a ``jax.random`` key (required): the probes are ``split(key, num_probes)``.
      num_probes: ``P``, the number of random probes (``>= 2`` for error bars).
      num_steps: ``m``, Lanczos steps per probe (default ``min(80, dim)``; at most ``dim``).
      probe: ``"rademacher"`` (default, lower variance) or ``"gaussian"``.
      loop: ``"compiled"`` (one ``fori_loop`` per probe batch inside ``jit``), ``"host"``
        (steps driven from Python, all probes batched per step) or ``"auto"``: host for
        streamed data and on a single CPU device, compiled otherwise. On a single CPU
        device the host loop keeps the Lanczos bases in NumPy
        (:func:`~hessian_tools.linalg.slq.slq_quadrature_numpy`): only the batched product
        is compiled, each step sweeps only the filled rows, a step's products cross as
        one flat array, and the probes run as two interleaved halves (one half's products
        are computed while the other half is reorthogonalised). On the 3.5k-parameter
        digits MLP, 10 x 80 took 1.5 s cold and 0.6 s warm this way, against 3.6 s / 0.93
        s for the compiled loop (benchmarks/RESULTS_density.md). Products with
        convolutions on CPU are applied one probe at a time: XLA:CPU runs a conv net's
        HVP about 50x slower inside a compiled loop, and as slowly under ``vmap``.
        ``extra["basis"]`` of the result says where the bases were (``"numpy"`` or
        ``"device"``).
      batch_size: probes per vmapped call (default: all that fit in 2 GiB of Lanczos basis).

    Returns:
      A :class:`SpectralDensity`. Cost: ``P m`` matvecs (added to ``op.num_matvecs``);
      memory ``batch_size (m + 1)`` parameter-sized vectors.

    Raises:
      TypeError: ``op`` is not a CurvatureOperator.
      ValueError: no key, a bad ``probe``/``loop``, or ``num_steps`` larger than the dimension.

    Examples:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> H = ht.from_dense(np.diag([3.0, 1.0, -2.0]))
      >>> dens = ht.density(H, num_probes=2, num_steps=3, key=jax.random.key(0))
      >>> np.round(np.unique(np.round(dens.nodes, 8)), 6).tolist()
      [-2.0, 1.0, 3.0]
    """
    _check_operator(op, "density")
    check_key(key, "density")
    check_count("num_probes", num_probes)
    num_steps = min(DEFAULT_NUM_STEPS, op.dim) if num_steps is None else num_steps
    check_count("num_steps", num_steps, maximum=op.dim, hint="the operator dimension")
    if probe not in PROBES:
        raise ValueError(f"probe={probe!r} is not one of {PROBES}.")
    if loop not in ("auto", "compiled", "host"):
        raise ValueError(f"loop={loop!r} is not one of 'auto', 'compiled', 'host'.")
    if loop == "compiled" and op.matvec_fn is None:
        raise ValueError("loop='compiled' needs a traceable matvec, but this operator streams "
                         "its data (matvec_fn is None). Use loop='auto' or 'host'.")
    if batch_size is not None:
        check_count("batch_size", batch_size)
    if loop == "auto":
        loop = "host" if op.slow_in_loops or _numpy_basis(op) else "compiled"
    batch = _auto_batch(num_probes, num_steps + 1, op) if batch_size is None else (
        None if batch_size >= num_probes else batch_size)
    numpy_basis = loop == "host" and _numpy_basis(op)
    start = time.perf_counter()
    zeros = _zeros(op.params_like)
    if loop == "compiled":
        rule = _slq_compiled(op.matvec_fn, key, zeros, num_probes=num_probes,
                             num_steps=num_steps, kind=probe, batch_size=batch,
                             pin=op.placement)
        op.num_matvecs += num_probes * num_steps
    else:
        probes = _probes_jit(key, zeros, num=num_probes, kind=probe, pin=op.placement)
        if numpy_basis:       # the operator runs (and counts) the products
            rule = slq_quadrature_numpy(functools.partial(op.flat_rows, batch_size=batch),
                                        probes, num_steps=num_steps, group_size=batch,
                                        flat=True, interleave=1 if op.slow_in_loops else 2)
        else:
            rule = slq_quadrature_host(functools.partial(op.rows, batch_size=batch), probes,
                                       num_steps=num_steps)
    nodes, weights, residuals = (np.asarray(a, np.float64) for a in
                                 (rule.nodes, rule.weights, rule.residuals))
    return SpectralDensity(nodes=nodes, weights=weights, residuals=residuals, dim=op.dim,
                           num_probes=num_probes, num_steps=num_steps, probe=probe,
                           num_matvecs=num_probes * num_steps, operator=op.kind,
                           seed=tree.key_bits(key), dtype=str(jnp.dtype(op.dtype)), loop=loop,
                           wall_time=time.perf_counter() - start,
                           extra={"batch_size": batch,
                                  "basis": "numpy" if numpy_basis else "device"})


def _dense_count(values, tau, before_matvecs, start, extra=None) -> EigenvalueCount:
    values = np.sort(np.asarray(values, np.float64))
    count = float(np.sum(values < -tau))
    return EigenvalueCount(threshold=-tau, count=count, low=count, high=count, dim=len(values),
                           exact=True, method="dense", confidence=1.0, tau=tau,
                           lambda_min=float(values[0]), lambda_max=float(values[-1]),
                           num_matvecs=before_matvecs, wall_time=time.perf_counter() - start,
                           extra=dict(extra or {}))


def _lanczos_count(op, key, tau, scale, k_start, max_exact, num_matvecs):
    """Certify the count below ``-tau`` with converged smallest Ritz values.

    Returns ``(count, eig, reason)``; ``count`` is None when it could not be certified.
    """
    tol = max(default_tol(op.dtype), 0.01 * tau / max(scale, 1e-300))
    k = max(1, min(k_start, max_exact + 1, op.dim))
    while True:
        key, sub = jax.random.split(key)
        eig = eigenvalues(op, k=k, which="smallest", key=sub, tol=tol, num_matvecs=num_matvecs)
        vals, res = eig.smallest, eig.residuals[::-1]       # ascending, with residuals
        if not eig.converged:
            return None, eig, f"Lanczos did not converge for k={k} (tol={tol:.2g})"
        if np.any(np.abs(vals + tau) <= res):
            return None, eig, "a Ritz value lies within its residual of -tau"
        if vals[-1] - res[-1] >= -tau or k >= op.dim:
            return int(np.sum(vals < -tau)), eig, ""
        if k >= max_exact + 1:
            return None, eig, f"more than max_exact={max_exact} eigenvalues below -tau"
        k = min(2 * k, max_exact + 1, op.dim)


def negative_count(source, *, key=None, tau: float | None = None, method: str = "auto",
                   num_probes: int = DEFAULT_NUM_PROBES, num_steps: int | None = None,
                   confidence: float = 0.95, max_exact: int = 20,
                   max_dense_dim: int = 2000, lanczos_num_matvecs: int | None = None,
                   probe: str = "rademacher") -> EigenvalueCount:
    """The number and fraction of eigenvalues below ``-tau``, with a confidence interval.

    Methods:

    * ``"slq"``: from a stochastic Lanczos density (or the :class:`SpectralDensity` passed
      as ``source``); the interval is :meth:`SpectralDensity.num_below`'s: a guaranteed
      quadrature bracket widened by the probe-to-probe spread.
    * ``"lanczos"``: exact when small: the ``k`` smallest eigenvalues by restarted Lanczos
      (``ht.eigenvalues``), ``k`` doubling up to ``max_exact + 1`` until the largest of them
      lies above ``-tau``; certified when every Ritz value is farther from ``-tau`` than its
      residual. Otherwise falls back to SLQ (``extra["lanczos"]`` says why).
    * ``"dense"``: exact, from ``eigh`` of the explicit matrix (``dim`` matvecs, ``dim^2``
      memory). ``source`` may also be the matrix itself (e.g. ``ht.dense_hessian(obj)``).
    * ``"auto"``: ``"dense"`` when ``dim <= min(max_dense_dim, num_probes * num_steps)``
      (then it is no dearer than SLQ); else SLQ, refined by ``"lanczos"`` when the SLQ
      interval's upper end is at most ``max_exact``.

    The threshold: ``tau`` defaults to :func:`default_threshold` of the spectral scale
    (``max |lambda|``, from the same computation) and dtype: ``scale * max(1e-2,
    10 eps)``. The result also carries ``lambda_min``, ``lambda_max`` and their ratio
    ``|lambda_min| / lambda_max`` (Li et al. 2018).

    Args:
      source: a CurvatureOperator, a SpectralDensity (no new matvecs), or a dense matrix.
      key: a ``jax.random`` key (required for ``"slq"``/``"lanczos"`` on an operator).
      tau: the threshold magnitude (``>= 0``); default as above.
      method: ``"auto"``, ``"slq"``, ``"lanczos"`` or ``"dense"``.
      num_probes: SLQ parameters (see :func:`density`).
      num_steps: see ``num_probes``.
      probe: see ``num_probes``.
      confidence: the interval's nominal coverage.
      max_exact: the largest count the Lanczos path will certify.
      max_dense_dim: the largest dimension ``"auto"`` handles densely.
      lanczos_num_matvecs: the budget of each Lanczos call (default: ``ht.eigenvalues``'s).

    Returns:
      An :class:`EigenvalueCount` (``count``, ``low``, ``high``, ``fraction``, ``exact``,
      ``ratio``, ``num_matvecs``).

    Raises:
      TypeError: an unsupported ``source``. ValueError: bad ``method``, ``tau`` or no key.

    Examples:
      >>> import jax, numpy as np, hessian_tools as ht
      >>> H = ht.from_dense(np.diag([3.0, 1.0, -2.0]))
      >>> neg = ht.negative_count(H, method="dense")
      >>> neg.count, neg.exact, round(neg.ratio, 4)
      (1.0, True, 0.6667)
    """
    start = time.perf_counter()
    methods = ("auto", "slq", "lanczos", "dense")
    if method not in methods:
        raise ValueError(f"method={method!r} is not one of {methods}.")
    if tau is not None and not tau >= 0:
        raise ValueError(f"tau={tau!r} must be >= 0 (the count is of eigenvalues < -tau).")
    check_confidence(confidence)
    if isinstance(source, SpectralDensity):
        if method not in ("auto", "slq"):
            raise ValueError(f"A SpectralDensity supports only method='slq', got {method!r}.")
        return _slq_count(source, tau, confidence, start)
    if isinstance(source, (np.ndarray, jax.Array)):
        matrix = np.asarray(source, np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"A dense source must be a square matrix, got shape {matrix.shape}.")
        values = np.linalg.eigvalsh((matrix + matrix.T) / 2)
        tau = default_threshold(np.max(np.abs(values)), source.dtype) if tau is None else tau
        return _dense_count(values, tau, 0, start)
    _check_operator(source, "negative_count")
    op = source
    steps = min(DEFAULT_NUM_STEPS, op.dim) if num_steps is None else num_steps
    if method == "auto" and op.dim <= min(max_dense_dim, num_probes * steps):
        method = "dense"
    before = op.num_matvecs
    if method == "dense":
        values = np.linalg.eigvalsh(to_dense(op))
        tau = default_threshold(np.max(np.abs(values)), op.dtype) if tau is None else tau
        return _dense_count(values, tau, op.num_matvecs - before, start)
    check_key(key, "negative_count")
    key_slq, key_lanczos = jax.random.split(key)
    dens = density(op, key=key_slq, num_probes=num_probes, num_steps=steps, probe=probe)
    slq = _slq_count(dens, tau, confidence, start)
    if method == "slq" or (method == "auto" and slq.high > max_exact):
        return slq
    count, eig, reason = _lanczos_count(op, key_lanczos, slq.tau, dens.scale,
                                        int(math.ceil(slq.high)) + 2, max_exact,
                                        lanczos_num_matvecs)
    spent = op.num_matvecs - before
    if count is None:
        return dataclasses.replace(slq, num_matvecs=spent, wall_time=time.perf_counter() - start,
                                   extra={**slq.extra, "lanczos": reason})
    lam_min = float(min(eig.smallest[0], dens.lambda_min))
    return EigenvalueCount(threshold=-slq.tau, count=float(count), low=float(count),
                           high=float(count), dim=op.dim, exact=True, method="lanczos",
                           confidence=confidence, tau=slq.tau, lambda_min=lam_min,
                           lambda_max=dens.lambda_max, num_matvecs=spent, num_probes=num_probes,
                           num_steps=steps, seed=tree.key_bits(key), operator=op.kind,
                           wall_time=time.perf_counter() - start,
                           extra={"lanczos_k": int(eig.k), "slq": [slq.count, slq.low, slq.high]})


def _slq_count(dens: SpectralDensity, tau, confidence, start) -> EigenvalueCount:
    tau = default_threshold(dens.scale, dens.dtype) if tau is None else float(tau)
    out = dens.num_below(-tau, confidence=confidence)
    return dataclasses.replace(out, tau=tau, wall_time=dens.wall_time + time.perf_counter() - start)


def outliers(source, *, key=None, k: int = 30, gap_factor: float = 10.0,
             dens: SpectralDensity | None = None, tol: float | None = None,
             max_k: int | None = None) -> OutlierSplit:
    """Split the top of the spectrum into outliers and the bulk (Sagun et al. 2017; Papyan 2019).

    Rule: take the top ``k`` eigenvalues ``lambda_1 >= ... >= lambda_k`` and their gaps
    ``g_i = lambda_i - lambda_{i+1}``. The reference spacing ``g_ref`` is the median gap in
    the lower half of the list (inside the bulk, where eigenvalues are packed densely). The
    outliers are ``lambda_1 .. lambda_j`` for the largest ``j < k/2`` with
    ``g_j > gap_factor * g_ref``: everything above the last large gap. Neural-network
    Hessians typically show about one outlier per class (Papyan 2019); a spectrum without a
    clear gap gives none. The default ``gap_factor=10`` is calibrated on spectra without
    outliers (Wigner and Marchenko-Pastur, ``n = 300-1000``, ``k = 30``): there the largest
    ratio ``g_j / g_ref`` has median ~4, 95th percentile ~7 and maximum ~9 over 40 draws
    (the Tracy-Widom edge is sparser than the bulk). With ``dens`` the SLQ count above the
    middle of the gap is reported as a cross-check (it should be close to the number of
    outliers).

    How the count depends on ``k``: the rule sees at most ``k/2`` outliers, and its bulk
    spacing moves deeper into the bulk as ``k`` grows, so the count is only meaningful
    where it no longer changes with ``k``. The rule is applied to the top ``k'`` of the
    values for ``k' = k, ceil(2k/3), ceil(4k/9), ...`` (down to 4); ``extra["counts_by_k"]``
    lists the ``[k', count]`` pairs, largest first. The count is *stable* when it is the
    same at the three largest ``k'`` (``extra["stable"]``). For an operator, an unstable
    count doubles ``k`` (one more ``ht.eigenvalues`` call each time) up to ``max_k``, so the
    split is reported at the smallest doubling of ``k`` whose count is stable
    (``extra["k"]``; ``extra["k_stable"]`` is the smallest ``k'`` from which the count
    stays the same). An array or Eigenpairs source has what it has: ``extra["stable"]``
    then says whether to pass more eigenvalues. Two limits, both seen on test spectra: a
    window that holds only outliers (``k`` below their number) shows no gap and counts 0
    at every ``k'`` (start with ``k`` above twice the expected number, ``2C`` for ``C``
    classes; the default 30 covers up to about 14), and a window reaching deep into the
    bulk, where the spacing shrinks, may count the sparse top of a smooth bulk as outliers
    (200 sorted standard normal values: 0 at ``k <= 30``, 2 at ``k = 36``, 0 at ``k = 50``;
    unstable, and said so), which is why ``max_k`` stays within the top quarter of the
    spectrum by default.

    Args:
      source: a CurvatureOperator (the top ``k`` are computed with ``ht.eigenvalues``), an
        :class:`~hessian_tools.Eigenpairs` with ``which`` in ``"largest"``/``"both"``, or an
        array of eigenvalues (e.g. from ``eigh``).
      key: a ``jax.random`` key (for an operator).
      k: how many top eigenvalues to examine first (``>= 4``).
      gap_factor: how much larger than the bulk spacing a gap must be.
      dens: an optional density for the cross-check.
      tol: Lanczos tolerance (default ``ht.default_tol``).
      max_k: the largest ``k`` an operator's count may be examined at (default
        ``max(k, min(4k, dim // 4))``; ``k`` itself turns the doubling off).

    Returns:
      An :class:`OutlierSplit`. Cost (operator source): one ``ht.eigenvalues(k=k)`` call,
      typically ``k + 50-150`` matvecs, and one more per doubling of ``k``.

    Examples:
      >>> import numpy as np, hessian_tools as ht
      >>> split = ht.outliers(np.r_[10.0, 7.0, np.linspace(1.0, 0.0, 40)], k=20)
      >>> split.outliers.tolist(), split.bulk_edge
      ([10.0, 7.0], 1.0)
      >>> split.extra["counts_by_k"], split.extra["stable"]
      ([[20, 2], [14, 2], [10, 2], [7, 2], [5, 2], [4, 0]], True)
    """
    check_count("k", k, minimum=4)
    if not gap_factor > 1:
        raise ValueError(f"gap_factor={gap_factor!r} must be > 1.")
    matvecs, method = 0, "eigenvalues"
    if isinstance(source, CurvatureOperator):
        check_key(key, "outliers")
        if k > source.dim:
            raise ValueError(f"k={k} exceeds the operator dimension {source.dim}. Pass k <= "
                             f"{source.dim}.")
        max_k = max(k, min(4 * k, source.dim // 4)) if max_k is None else max_k
        check_count("max_k", max_k, minimum=k, maximum=source.dim, hint="the operator dimension")
        top, matvecs = _stable_top(source, key, k, max_k, gap_factor, tol)
        method = "lanczos"
    elif isinstance(source, Eigenpairs):
        if source.which not in ("largest", "both"):
            raise ValueError("outliers needs the largest eigenvalues; got Eigenpairs with "
                             f"which={source.which!r}.")
        top, method = np.sort(np.asarray(source.largest))[::-1][:k], source.method
    else:
        top = np.sort(np.asarray(source, np.float64).reshape(-1))[::-1][:k]
    if len(top) < 4:
        raise ValueError(f"outliers needs at least 4 top eigenvalues, got {len(top)}.")
    return _split_top(top, gap_factor, matvecs, method, dens)


def _count(top, gap_factor) -> tuple[int, float]:
    """The rule on the descending ``top``: ``(number of outliers, reference gap)``."""
    gaps = top[:-1] - top[1:]
    half = len(top) // 2
    ref = float(np.median(gaps[half - 1:]))
    big = [j for j in range(half) if gaps[j] > gap_factor * max(ref, 1e-300)]
    return (big[-1] + 1 if big else 0), ref


def _counts_by_k(top, gap_factor) -> list:
    """``[[k', count], ...]`` for ``k' = len(top), ceil(2k'/3), ...`` down to 4."""
    rungs = [len(top)]
    while math.ceil(2 * rungs[-1] / 3) >= 4 and math.ceil(2 * rungs[-1] / 3) < rungs[-1]:
        rungs.append(math.ceil(2 * rungs[-1] / 3))
    return [[r, _count(top[:r], gap_factor)[0]] for r in rungs]


def _is_stable(table) -> bool:
    return len(table) >= 3 and len({count for _, count in table[:3]}) == 1


def _stable_top(op, key, k, max_k, gap_factor, tol):
    """The top eigenvalues of ``op``, ``k`` doubled (up to ``max_k``) until the count is
    stable; returns them (descending) and the matvecs spent."""
    matvecs = 0
    while True:
        key, sub = jax.random.split(key)
        eig = eigenvalues(op, k=k, which="largest", key=sub, tol=tol)
        top, matvecs = np.sort(eig.largest)[::-1], matvecs + eig.num_matvecs
        if k >= max_k or _is_stable(_counts_by_k(top, gap_factor)):
            return top, matvecs
        k = min(2 * k, max_k)


def _split_top(top, gap_factor, matvecs, method, dens) -> OutlierSplit:
    j, ref = _count(top, gap_factor)
    table = _counts_by_k(top, gap_factor)
    k_stable = len(top)
    for rung, count in table:             # descending k': the run of counts equal to j
        if count != j:
            break
        k_stable = rung
    edge = float(top[j])
    gap = float(top[j - 1] - top[j]) if j else 0.0
    check = None
    if dens is not None and j:
        c = dens.num_above(edge + gap / 2)
        check = [c.count, c.low, c.high]
    return OutlierSplit(outliers=top[:j].copy(), top=top.copy(), bulk_edge=edge, gap=gap,
                        gap_factor=float(gap_factor), reference_gap=ref, num_matvecs=matvecs,
                        method=method, slq_count_above=check,
                        extra={"counts_by_k": table, "stable": _is_stable(table),
                               "k": len(top), "k_stable": k_stable})
