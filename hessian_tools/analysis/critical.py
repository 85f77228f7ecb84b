"""Is this point a minimum or a saddle? :func:`classify` answers from the full-data gradient,
the extreme eigenvalues with their error bars, the index (eigenvalues below ``-tau``, the
library's one definition), the flat directions, and a higher-order probe along them.

References: Dauphin et al. 2014 (the index of critical points); Baldi & Hornik 1989 (the
critical points of a linear autoencoder).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools._checks import check_finite_loss
from hessian_tools.analysis.spectral import default_threshold, negative_count
from hessian_tools.analysis.eigen import default_tol, eigenvalues
from hessian_tools.data import dataset_mean
from hessian_tools.objective import Objective
from hessian_tools._chunking import product_groups
from hessian_tools.operators import CurvatureOperator, hessian, to_dense, value_and_grad
from hessian_tools.results import CriticalPointReport

__all__ = ["classify", "default_grad_tol"]


def _eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)


def default_grad_tol(dtype, loss: float = 0.0) -> float:
    """``10 sqrt(eps) max(1, |loss|)``: 1.5e-7 (float64) or 3.5e-3 (float32) for losses <= 1.

    A gradient below this is treated as zero: the point is called critical. ``sqrt(eps)`` is
    the usual resolution of a stationary point in floating point (the loss changes by
    ``O(eps)`` within ``O(sqrt(eps))`` of it).
    """
    return 10.0 * float(np.sqrt(_eps(dtype))) * max(1.0, abs(float(loss)))


def _default_decrease_tol(dtype, loss: float) -> float:
    return 1e3 * _eps(dtype) * max(1.0, abs(float(loss)))


_batch_loss = jax.jit(lambda loss, p, b: loss(p, b))


@jax.jit
def _mean_loss(loss, params, groups):
    return dataset_mean(lambda b: _batch_loss(loss, params, b), groups)


def _loss_at(obj: Objective, params) -> float:
    """The dataset-mean loss at ``params`` (one forward pass over the data)."""
    if not obj.streaming:
        return float(_mean_loss(obj.loss, params, product_groups(obj, "auto")))
    total, count = 0.0, 0
    for batch, n in obj.batches():
        total += n * float(_batch_loss(obj.loss, params, batch))
        count += n
    return total / count


@dataclasses.dataclass
class _Spectrum:
    """What classify needs from the eigenvalues (internal)."""

    lam_max: float
    err_max: float
    lam_min: float
    err_min: float
    scale: float
    index: int | None
    index_interval: tuple | None
    index_method: str
    num_flat: int
    flat_lower_bound: bool
    flat_vectors: list               # pytrees: eigenvectors of flat eigenvalues, most negative first
    flat_basis: Any = None           # dense (dim, m) basis of all flat eigenvectors, or None
    num_positive_known: int = 0      # confirmed positive eigenvalues seen
    notes: list = dataclasses.field(default_factory=list)
    tau: float = 0.0


def _count(values, errors, threshold):
    """Confirmed negatives, flats and confirmed positives among eigenvalues with error bars."""
    bar = np.maximum(threshold, errors)
    neg = values < -bar
    pos = values > bar
    return neg, ~(neg | pos), pos


def _tau(scale, tau, dtype) -> float:
    """The zero threshold: ``tau`` if given (a float), ``r * scale`` for ``tau = ("relative",
    r)``, else :func:`default_threshold` of the scale."""
    if tau is None:
        return default_threshold(scale, dtype)
    return float(tau[1]) * float(scale) if isinstance(tau, tuple) else float(tau)


def _dense_spectrum(H, tau, max_probe):
    """All eigenvalues from the dense Hessian (``dim`` HVPs, ``dim^2`` memory, ``O(dim^3)``)."""
    matrix = to_dense(H)
    asym = float(np.linalg.norm(matrix - matrix.T)) / 2
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    scale = float(np.max(np.abs(values)))
    errors = np.linalg.norm(matrix @ vectors - vectors * values, axis=0) + asym
    tau = _tau(scale, tau, H.dtype)
    neg, flat, pos = _count(values, errors, tau)
    _, unravel = jax.flatten_util.ravel_pytree(
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), H.params_like))
    flat_idx = np.flatnonzero(flat)                  # ascending: most negative first
    flat_vectors = [unravel(jnp.asarray(vectors[:, i], H.dtype)) for i in flat_idx[:max_probe]]
    index = int(neg.sum())
    return _Spectrum(values[-1], errors[-1], values[0], errors[0], scale, index, (index, index),
                     "dense", int(flat.sum()), False, flat_vectors, vectors[:, flat_idx],
                     int(pos.sum()), tau=tau)


def _lanczos_spectrum(H, key, *, tau, eig_tol, max_index, max_probe):
    """The ``k = min(8, max_index, dim // 2)`` largest and smallest eigenpairs by Lanczos.

    The index is exact when the largest of the ``k`` smallest is not confirmed negative;
    otherwise only ``index >= k`` is known here and :func:`_count_index` takes over. The
    flat count is exact when the flat eigenvalues are enclosed by the pairs seen.
    """
    k = max(1, min(8, max_index, H.dim // 2))
    both = eigenvalues(H, k=k, which="both", key=key, tol=eig_tol)
    keep = _unit_rows(both.vectors)         # drop pairs without a unit eigenvector
    rows = np.flatnonzero(keep)[::-1]                         # ascending eigenvalue order
    values, errors = both.values[rows], both.residuals[rows]
    scale = max(float(np.max(np.abs(values))), both.scale)
    tau = _tau(scale, tau, H.dtype)
    neg, flat, pos = _count(values, errors, tau)
    bottom = rows >= len(both.values) - k                       # rows of the k smallest
    everything = len(values) == H.dim
    index_exact = keep.all() and (everything or not neg[bottom][-1])
    flat_exact = keep.all() and (everything or pos[bottom].any() or neg[~bottom].any())
    index = int(neg.sum())
    spec = _Spectrum(float(values[-1]), float(errors[-1]), float(values[0]), float(errors[0]),
                     scale, index, (index, index if index_exact else None), "lanczos",
                     int(flat.sum()), not flat_exact,
                     [tree.basis_get(both.vectors, int(rows[i]))
                      for i in np.flatnonzero(flat)[:max_probe]],
                     num_positive_known=int(pos.sum()), tau=tau)
    if not keep.all():
        spec.notes.append(f"Lanczos returned {int((~keep).sum())} pair(s) without a unit "
                          "eigenvector (a breakdown artefact); they were ignored")
    if not both.converged:
        spec.notes.append(f"Lanczos did not reach tol {eig_tol:g}; the error bars are the "
                          "explicit residuals")
    return spec


@jax.jit
def _row_norms(stacked):
    return jax.vmap(tree.norm)(stacked)


def _unit_rows(stacked) -> np.ndarray:
    """Rows of a stacked basis that are unit vectors (a guard: a Krylov breakdown handled
    badly shows up as ``(0, zero vector)`` pairs, which are not eigenpairs)."""
    return np.abs(np.asarray(_row_norms(stacked)) - 1.0) < 1e-3


def _count_index(H, key, spec, max_index):
    """A large index: :func:`negative_count` below ``-tau`` (exact by Lanczos up to
    ``max_index``, else SLQ with a confidence interval)."""
    known = spec.index_interval[0]
    est = negative_count(H, key=key, tau=spec.tau, method="auto", max_exact=max_index)
    if est.exact:
        spec.index, spec.index_interval = int(round(est.count)), (int(round(est.count)),) * 2
        spec.index_method = "lanczos"
        return
    low, high = max(known, int(np.floor(est.low))), max(known, int(np.ceil(est.high)))
    spec.index, spec.index_method = min(max(known, int(round(est.count))), high), "slq"
    spec.index_interval = (low, high)
    spec.notes.append(f"index estimated by stochastic Lanczos quadrature ({est.num_probes} "
                      f"probes x {est.num_steps} steps): {est.count:.1f}, {est.confidence:.0%} "
                      f"interval [{est.low:.1f}, {est.high:.1f}], at least {known} confirmed by "
                      "Lanczos")


def _probe_directions(spec, key, num_random, like):
    """Flat eigenvectors plus random unit combinations of the flat eigenvectors."""
    directions = list(spec.flat_vectors)
    if spec.flat_basis is not None and spec.flat_basis.shape[1] > 1:
        basis = spec.flat_basis
        coeffs = np.asarray(jax.random.normal(key, (basis.shape[1], num_random)), np.float64)
        flat, unravel = jax.flatten_util.ravel_pytree(like)
        combos = basis @ (coeffs / np.linalg.norm(coeffs, axis=0))
        directions += [unravel(jnp.asarray(c, flat.dtype)) for c in combos.T]
    elif len(spec.flat_vectors) > 1:
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *spec.flat_vectors)
        for sub in jax.random.split(key, num_random):
            c = jax.random.normal(sub, (len(spec.flat_vectors),))
            directions.append(tree.basis_combine(c / jnp.linalg.norm(c), stacked))
    return directions


def _probe(obj, H, loss0, grad, directions, radii, decrease_tol, sign):
    """Loss changes at ``x +- r d``; a change of sign ``-sign`` beyond the slack is found.

    The slack is what first and second order explain along ``d``: the residual gradient
    ``r |g.d|`` and the direction's own curvature ``r^2 |d.Hd| / 2`` (one HVP per direction),
    plus ``decrease_tol``. ``sign=+1`` looks for descent (a minimum candidate), ``-1`` for
    ascent (a maximum).
    """
    best = (np.inf, 0.0, 0.0)
    rounding = 100 * _eps(H.dtype) * max(1.0, abs(float(loss0)))
    for d in directions:
        gd = abs(float(tree.vdot(grad, d)))
        slack_curv = abs(float(tree.vdot(d, H.apply_unchecked(d)))) + rounding
        for r in radii:
            for s in (1.0, -1.0):
                change = sign * (_loss_at(obj, tree.axpy(s * r, d, obj.params)) - loss0)
                excess = change + decrease_tol + r * gd + 0.5 * r * r * slack_curv
                if excess < best[0]:
                    best = (excess, sign * change, r)
    return {"num_directions": len(directions), "radii": [float(r) for r in radii],
            "sign": "descent" if sign > 0 else "ascent", "found": bool(best[0] < 0),
            "best_change": float(best[1]), "best_radius": float(best[2])}


def _check_options(key, grad_tol, tau, relative_tau, probe_scales, dense_max_params,
                   max_lanczos_index):
    if key is None:
        raise ValueError("classify needs an explicit PRNG key (Lanczos start vectors, random "
                         "probe directions): pass key=jax.random.key(0).")
    for name, value in (("grad_tol", grad_tol), ("tau", tau), ("relative_tau", relative_tau)):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name}={value!r} must be a finite number >= 0.")
    if not probe_scales or any(not (np.isfinite(r) and r > 0) for r in probe_scales):
        raise ValueError(f"probe_scales={probe_scales!r} must be a non-empty list of positive "
                         "numbers, e.g. (1e-3, 1e-2, 1e-1).")
    for name, value in (("dense_max_params", dense_max_params),
                        ("max_lanczos_index", max_lanczos_index)):
        if not isinstance(value, (int, np.integer)) or value < (0 if name[0] == "d" else 1):
            raise ValueError(f"{name}={value!r} must be an integer "
                             f"{'>= 0' if name[0] == 'd' else '>= 1'}.")


def _check_operator(obj, operator):
    if operator is not None and not (isinstance(operator, CurvatureOperator)
                                     and operator.kind == "hessian"
                                     and operator.dim == obj.num_params):
        raise ValueError(f"operator={operator!r} must be the Hessian of this objective (ht.hessian"
                         f"(obj): kind 'hessian', dimension {obj.num_params}) or None.")


def classify(obj: Objective, *, key, grad_tol: float | None = None,
             tau: float | None = None, relative_tau: float | None = None,
             eig_tol: float | None = None, dense_max_params: int = 4000,
             max_lanczos_index: int = 32,
             probe_scales: Sequence[float] = (1e-3, 1e-2, 1e-1), max_probe_eigvecs: int = 16,
             num_random_probes: int = 8, decrease_tol: float | None = None,
             probe: bool = True, operator: CurvatureOperator | None = None
             ) -> CriticalPointReport:
    """Classify the point ``obj.params``: minimum, degenerate minimum, saddle, maximum or not
    critical.

    1. The full-data gradient: the point is critical when ``||grad L|| <= grad_tol``.
    2. The spectrum. Up to ``dense_max_params`` parameters: the dense Hessian (``dim`` HVPs)
       and all its eigenvalues, so the index and the number of flat directions are exact.
       Above: ``lambda_max`` and the 8 smallest eigenvalues by Lanczos; if one of those is
       not negative the index is exact; otherwise ``hessian_tools.negative_count`` counts
       the eigenvalues below ``-tau``: exactly by Lanczos up to
       ``max_lanczos_index``, above that as a stochastic Lanczos quadrature estimate with a
       confidence interval.
    3. Signs, honestly: an eigenvalue is negative only if ``lambda < -max(tau, error)``,
       positive only if ``lambda > max(tau, error)``, and flat otherwise; ``error`` is its
       residual
       bound. A ``lambda_min`` negative only within its error bar does not make a saddle.
    4. Verdict: confirmed negative and positive eigenvalues: ``"saddle"``. No negative, no
       flat: ``"minimum"``. No negative but flat directions: second order cannot decide, so
       the loss is probed at ``x +- r d`` for the flat eigenvectors ``d`` and random
       combinations of them at radii ``r = probe_scales * max(1, ||x||)``: a decrease beyond
       what the residual gradient and the threshold curvature explain is a higher-order
       saddle (``"saddle"``); otherwise ``"degenerate minimum"``. All eigenvalues
       non-positive with some negative: ``"maximum"`` (probed for ascent likewise).
       ``||grad|| > grad_tol``: ``"not critical"`` (the spectrum is still reported).

    Cost: one gradient; dense path ``dim`` HVPs + ``O(dim^3)`` flops and ``dim^2`` memory;
    Lanczos path a few hundred HVPs, plus ~800 for an SLQ count (memory ``(krylov_dim +
    2k) x dim``); the probe
    ``2 x len(probe_scales)`` loss evaluations per direction (at most
    ``max_probe_eigvecs + num_random_probes`` directions).

    Args:
      obj: the objective at the point to classify.
      key: a ``jax.random`` key (Lanczos start vectors, random probe combinations).
      grad_tol: absolute gradient-norm threshold (default :func:`default_grad_tol`).
      tau: the zero threshold for eigenvalues (absolute). Default
        :func:`~hessian_tools.default_threshold` of the spectral scale, ``1%`` of
        ``max|lambda|``: the one definition of "negative eigenvalue" that
        :func:`~hessian_tools.negative_count` and the CLI use too, so every count of a point
        agrees, in float32 and float64 alike. Pass a smaller ``tau`` to count eigenvalues
        closer to zero (the dense and Lanczos counts stay exact down to rounding).
      relative_tau: the zero threshold as a fraction of the spectral scale,
        ``tau = relative_tau * max|lambda|`` (ignored when ``tau`` is given). For counting
        weak negative curvature without knowing the scale beforehand:
        :func:`~hessian_tools.find_saddles` passes ``sqrt(eps)``.
      eig_tol: eigensolver relative residual tolerance (default ``1e-3``, a tenth of the
        default ``tau``, at least ``ht.default_tol``; with an explicit ``tau``,
        ``ht.default_tol``: tight enough to certify signs beyond the threshold).
      dense_max_params: largest model handled by the dense Hessian (0: always Lanczos).
      max_lanczos_index: largest index counted exactly by Lanczos.
      probe_scales: probe radii relative to ``max(1, ||params||)``.
      max_probe_eigvecs: how many flat eigenvectors, and random unit
        combinations of them, are probed.
      num_random_probes: see ``max_probe_eigvecs``.
      decrease_tol: loss change treated as noise in the probe (default
        ``1e3 eps max(1, |loss|)``).
      probe: run the flat-direction probe at all.
      operator: the Hessian of ``obj`` at ``obj.params`` if already built (default
        ``ht.hessian(obj)``; :func:`~hessian_tools.classify_at` passes the batched one).

    Returns:
      A :class:`CriticalPointReport`.

    Raises:
      ValueError: no key, a negative / non-finite threshold, or an ``operator`` that is not
        a Hessian of ``obj``'s dimension.

    Examples:
      >>> import jax, jax.numpy as jnp, hessian_tools as ht
      >>> loss = lambda p, batch: p[0] ** 2 - p[1] ** 2
      >>> obj = ht.Objective(loss, jnp.zeros(2), jnp.zeros((1, 1)))
      >>> rep = ht.classify(obj, key=jax.random.key(0))
      >>> rep.verdict, rep.index
      ('saddle', 1)
    """
    _check_options(key, grad_tol, tau, relative_tau, probe_scales, dense_max_params,
                   max_lanczos_index)
    _check_operator(obj, operator)
    start, dtype = time.perf_counter(), _param_dtype(obj)
    loss, grad = value_and_grad(obj)
    loss, grad_norm = check_finite_loss(loss), float(tree.norm(grad))
    grad_tol = default_grad_tol(dtype, loss) if grad_tol is None else float(grad_tol)
    default_rule = tau is None and relative_tau is None
    if eig_tol is None:
        eig_tol = max(default_tol(dtype), 1e-3) if default_rule else default_tol(dtype)
    if tau is None and relative_tau is not None:
        tau = ("relative", float(relative_tau))
    decrease_tol = _default_decrease_tol(dtype, loss) if decrease_tol is None else decrease_tol
    k_spec, k_slq, k_probe = jax.random.split(key, 3)
    H = hessian(obj) if operator is None else operator
    before = H.num_matvecs
    if obj.num_params <= dense_max_params:
        spec = _dense_spectrum(H, tau, max_probe_eigvecs)
    else:
        spec = _lanczos_spectrum(H, k_spec, tau=tau, eig_tol=eig_tol,
                                 max_index=max_lanczos_index, max_probe=max_probe_eigvecs)
        if spec.index_interval[1] is None:
            _count_index(H, k_slq, spec, max_lanczos_index)
    radii = [float(s) * max(1.0, float(tree.norm(obj.params))) for s in probe_scales]
    thresholds = dict(grad_tol=grad_tol, tau=spec.tau, scale=spec.scale,
                      tau_rule=("default: ht.default_threshold, 1% of max|lambda|"
                                if default_rule else f"relative: {tau[1]:.3g} max|lambda|"
                                if isinstance(tau, tuple) else "given"),
                      eig_tol=eig_tol,
                      decrease_tol=decrease_tol, probe_radii=radii,
                      dense_max_params=int(dense_max_params),
                      max_lanczos_index=int(max_lanczos_index))
    _note_small_loss(spec.notes, loss, grad_norm, grad_tol, float(tree.norm(obj.params)), dtype)
    if -spec.tau <= spec.lam_min < -spec.err_min:
        spec.notes.append(f"lambda_min = {spec.lam_min:.3g} +- {spec.err_min:.1e} is negative "
                          f"beyond its error bar but within tau = {spec.tau:.3g} of zero, so it "
                          "counts as flat, not in the index: pass a smaller tau "
                          "(classify(tau=...)) to count it")
    verdict, detail, probe_info = _verdict(obj, H, loss, grad, grad_norm, spec, thresholds,
                                           probe=probe, key=k_probe,
                                           num_random=num_random_probes)
    return CriticalPointReport(
        verdict=verdict, detail=detail, loss=loss, grad_norm=grad_norm,
        num_params=obj.num_params, lambda_max=spec.lam_max, lambda_max_error=spec.err_max,
        lambda_min=spec.lam_min, lambda_min_error=spec.err_min, index=spec.index,
        index_fraction=None if spec.index is None else spec.index / obj.num_params,
        index_interval=spec.index_interval, index_method=spec.index_method,
        num_flat=spec.num_flat, num_flat_is_lower_bound=spec.flat_lower_bound,
        flat_probe=probe_info, thresholds=thresholds, notes=tuple(spec.notes),
        num_matvecs=H.num_matvecs - before, wall_time=time.perf_counter() - start,
        dtype=str(jnp.dtype(dtype)), seed=tree.key_bits(key), operator=H.kind)


def _note_small_loss(notes, loss, grad_norm, grad_tol, params_norm, dtype):
    """Flag a gradient that is small only because the loss is (a minimum at infinity?)."""
    rounding = 100 * _eps(dtype) * max(1.0, abs(loss))
    if rounding < grad_norm <= grad_tol and abs(loss) <= 100 * grad_norm * max(1.0, params_norm):
        notes.append(f"the gradient is small only in absolute terms: the loss ({loss:.3g}) is "
                     f"itself tiny, ||grad|| ||params|| / |loss| = "
                     f"{grad_norm * max(1.0, params_norm) / max(abs(loss), 1e-300):.3g}; where the "
                     "loss approaches its infimum at infinity (cross-entropy on separable data) "
                     "this is usually not near a critical point: pass grad_tol relative to the "
                     "loss to be strict")


def _param_dtype(obj: Objective):
    """The floating dtype of the parameters (the widest among the leaves)."""
    return jnp.result_type(*[jnp.result_type(a) for a in jax.tree.leaves(obj.params)])


def _verdict(obj, H, loss, grad, grad_norm, spec, t, *, probe, key, num_random):
    """``(verdict, detail, probe_info)`` from the gradient, the signs and the probe."""
    negative = spec.index is None or spec.index > 0
    positive = spec.num_positive_known > 0
    neg_str = (f"{spec.index}" if spec.index is not None else "many") + " negative-curvature "
    neg_str += f"direction{'s' if spec.index != 1 else ''} (lambda_min = {spec.lam_min:.3g} " \
               f"+- {spec.err_min:.1e})"
    if grad_norm > t["grad_tol"]:
        return ("not critical", f"not critical: gradient norm {grad_norm:.3g} > grad_tol "
                f"{t['grad_tol']:.3g} (the Hessian there has {_describe_index(spec)})", {})
    if negative and positive:
        return "saddle", f"saddle: {neg_str}", {}
    if spec.num_flat == 0 and not negative:
        return "minimum", (f"minimum: all {obj.num_params} eigenvalues positive (lambda_min = "
                           f"{spec.lam_min:.3g} +- {spec.err_min:.1e})"), {}
    if spec.num_flat == 0 and not positive:
        return "maximum", (f"maximum: all {obj.num_params} eigenvalues negative (lambda_max = "
                           f"{spec.lam_max:.3g} +- {spec.err_max:.1e})"), {}
    sign = 1.0 if not negative else -1.0
    if not probe or not spec.flat_vectors:
        base = "degenerate minimum" if sign > 0 else "maximum"
        return base, (f"{base}: {spec.num_flat} flat directions, not probed (second order "
                      "cannot decide)"), {}
    directions = _probe_directions(spec, key, num_random, obj.params)
    info = _probe(obj, H, loss, grad, directions, t["probe_radii"],
                  t["decrease_tol"], sign)
    return _probe_verdict(info, sign, spec)


def _probe_verdict(info, sign, spec):
    n, at = info["num_directions"], f"at radius {info['best_radius']:.3g}"
    if info["found"] and sign > 0:
        return "saddle", (f"saddle (higher order): no negative eigenvalue, but the loss "
                          f"decreases by {-info['best_change']:.3g} along a flat direction "
                          f"{at}"), info
    if info["found"]:
        return "saddle", (f"saddle (higher order): no positive eigenvalue, but the loss "
                          f"increases by {info['best_change']:.3g} along a flat direction "
                          f"{at}"), info
    if sign > 0:
        return "degenerate minimum", (f"degenerate minimum: no descent found along the {n} "
                                      f"flat direction{_s(n)} probed ({spec.num_flat} flat "
                                      f"eigenvalue{_s(spec.num_flat)})"), info
    return "maximum", (f"maximum (degenerate): no ascent found along the {n} flat "
                       f"direction{_s(n)} probed; {spec.index} negative eigenvalue"
                       f"{_s(spec.index)}"), info


def _s(n) -> str:
    return "" if n == 1 else "s"


def _describe_index(spec) -> str:
    if spec.index is None:
        return f"index >= {spec.index_interval[0]}, {spec.num_flat} flat"
    return f"index {spec.index}, {spec.num_flat}{'+' if spec.flat_lower_bound else ''} flat"
