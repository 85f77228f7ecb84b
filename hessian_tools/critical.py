"""Critical points: is this point a minimum or a saddle, and where are the critical points?

Three tools, from the extreme eigenvalues of the Hessian upwards:

* :func:`classify` answers "minimum or saddle?" at one point: the full-data gradient norm,
  ``lambda_min`` and ``lambda_max`` with their residuals, the index (the number of negative
  eigenvalues), the number of flat (near-zero) directions, and an honest verdict with every
  threshold written into the :class:`CriticalPointReport`.
* :func:`find_critical_points` drives the gradient norm to zero from given starting points
  (Newton-MR: Gauss-Newton on ``1/2 ||grad L||^2`` with MINRES on the Hessian) and
  classifies each point reached; points stuck at a small but non-zero gradient are reported
  as *gradient-flat* (Frye et al. 2021), not as critical points.
* :func:`minres` is the Krylov solver behind it: a pure function of a matvec, on pytrees.

References:
  Dauphin et al. 2014, "Identifying and attacking the saddle point problem in
  high-dimensional non-convex optimization" (index of critical points, Fig. 1).
  Baldi & Hornik 1989, "Neural networks and principal component analysis" (the critical
  points of a linear autoencoder). Paige & Saunders 1975 (MINRES). Roosta, Liu, Xu &
  Mahoney 2018, "Newton-MR". Frye, Wadia, DeWeese & Bouchard 2019/2021, "Numerically
  recovering the critical points of a deep linear autoencoder" and "Critical point-finding
  methods reveal gradient-flat regions of deep network losses".
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools.data import dataset_mean
from hessian_tools.objective import Objective
from hessian_tools.operators import (_product_groups, _value_and_grad, hessian,
                                     to_dense, value_and_grad)
from hessian_tools.results import _jsonable
from hessian_tools.spectral_density import default_threshold, negative_count
from hessian_tools.spectrum import default_tol, eigenvalues

__all__ = ["CriticalPointReport", "CriticalPointSearch", "FoundPoint", "MinresResult",
           "VERDICTS", "classify", "default_grad_tol",
           "find_critical_points", "minres", "plot_index_vs_loss"]

VERDICTS = ("minimum", "degenerate minimum", "saddle", "maximum", "not critical")


# ---- default thresholds -------------------------------------------------------------------

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


# ---- MINRES on pytrees ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MinresResult:
    """Output of :func:`minres`.

    Attributes:
      x: the solution estimate (a pytree like ``b``).
      residual_norm: ``||b - A x||`` (MINRES's recurrence estimate).
      normal_residual: ``||A r|| / ||A b||`` (of the previous iterate): small at a
        least-squares solution of an inconsistent (singular) system.
      num_iters: matvecs spent.
      converged: a stopping test was met (not just the iteration budget).
      reason: ``"residual"``, ``"least-squares"``, ``"breakdown"`` (invariant Krylov space:
        ``x`` is the exact minimiser over it), ``"zero rhs"`` or ``"max_iters"``.
      anorm: the estimate of ``||A||`` (Frobenius norm of the projected matrix, or the hint).
      ab_norm: ``||A b||`` (from the first step).
    """

    x: Any
    residual_norm: float
    normal_residual: float
    num_iters: int
    converged: bool
    reason: str
    anorm: float = 0.0
    ab_norm: float = 0.0


def _minres_init(b):
    beta1 = tree.norm(b)
    safe = jnp.where(beta1 > 0, beta1, 1.0)
    zeros = tree.zeros_like(b)
    scalars = dict(beta=beta1, oldb=jnp.zeros_like(beta1), dbar=jnp.zeros_like(beta1),
                   epsln=jnp.zeros_like(beta1), phibar=beta1, cs=-jnp.ones_like(beta1),
                   sn=jnp.zeros_like(beta1), tnorm2=jnp.zeros_like(beta1), k=jnp.zeros((), int))
    return dict(v=tree.scale(1.0 / safe, b), r1=b, r2=b, w=zeros, w2=zeros, x=zeros,
                x_prev=zeros, **scalars)


@jax.jit
def _minres_step(s, av, anorm_hint):
    """One MINRES iteration given ``av = A v_k`` (Paige & Saunders 1975; scipy's recurrences)."""
    beta, oldb = s["beta"], s["oldb"]
    y = tree.sub(av, tree.scale(jnp.where(s["k"] > 0, beta / jnp.where(oldb > 0, oldb, 1.0),
                                          0.0), s["r1"]))
    alfa = tree.vdot(s["v"], y)
    y = tree.sub(y, tree.scale(alfa / beta, s["r2"]))
    new_beta = tree.norm(y)
    tnorm2 = s["tnorm2"] + alfa ** 2 + jnp.where(s["k"] > 0, beta ** 2, 0.0) + new_beta ** 2
    delta = s["cs"] * s["dbar"] + s["sn"] * alfa            # apply the previous rotation
    gbar = s["sn"] * s["dbar"] - s["cs"] * alfa
    epsln, dbar = s["sn"] * new_beta, -s["cs"] * new_beta
    root = jnp.hypot(gbar, dbar)
    gamma = jnp.maximum(jnp.hypot(gbar, new_beta), jnp.finfo(beta.dtype).tiny)
    cs, sn = gbar / gamma, new_beta / gamma                  # the new rotation
    phi, phibar = cs * s["phibar"], sn * s["phibar"]
    w = tree.scale(1.0 / gamma, tree.sub(tree.sub(s["v"], tree.scale(s["epsln"], s["w2"])),
                                         tree.scale(delta, s["w"])))
    out = dict(v=tree.scale(1.0 / jnp.where(new_beta > 0, new_beta, 1.0), y), r1=s["r2"], r2=y,
               w=w, w2=s["w"], x=tree.axpy(phi, w, s["x"]), x_prev=s["x"], beta=new_beta,
               oldb=beta, dbar=dbar, epsln=epsln, phibar=phibar, cs=cs, sn=sn, tnorm2=tnorm2,
               k=s["k"] + 1)
    anorm = jnp.maximum(jnp.maximum(jnp.sqrt(tnorm2), anorm_hint), jnp.finfo(beta.dtype).tiny)
    # ||r_k||, ||A r_{k-1}||, and beta_{k+1}, gamma_k relative to ||A||
    return out, (phibar, s["phibar"] * root, new_beta / anorm, gamma / anorm, anorm)


def minres(matvec: Callable, b, *, max_iters: int = 100, rtol: float = 1e-6,
           anorm_hint: float = 0.0) -> MinresResult:
    """Solve ``A x = b`` (or ``min ||A x - b||``) for symmetric, possibly indefinite or
    singular ``A``, by MINRES (Paige & Saunders 1975), on pytree vectors.

    The iterate minimises ``||b - A x||`` over the Krylov space ``K_k(A, b)``, so the
    residual never grows; for a singular, inconsistent system it converges to a
    least-squares solution. The loop runs on the host with a compiled update, calling
    ``matvec`` once per step (as :func:`hessian_tools.linalg.lanczos_eigs` does). No
    reorthogonalisation: memory is 8 vectors. On a singular, inconsistent system the iterate
    that meets the least-squares test is returned before MINRES can drift along the null
    space (Choi, Paige & Saunders 2011).

    Args:
      matvec: ``v -> A v`` for symmetric ``A`` on pytrees shaped like ``b``.
      b: the right-hand side (any pytree of floating arrays).
      max_iters: the matvec budget.
      rtol: stop when ``||r|| <= rtol ||b||`` or ``||A r|| <= rtol ||A b||`` (the second is
        the least-squares test, Newton-MR's inexactness condition).
      anorm_hint: a known estimate of ``||A||`` (e.g. from an earlier solve). Breakdown and
        singularity are judged relative to it; without it, a ``b`` lying in the (near)
        null space of ``A`` cannot be told from a tiny ``A``.

    Returns:
      A :class:`MinresResult`. Cost: ``num_iters`` matvecs; one host sync per step.

    Example:
      >>> import numpy as np, jax.numpy as jnp
      >>> A = jnp.diag(jnp.array([3.0, 1.0, -2.0]))
      >>> res = minres(lambda v: A @ v, jnp.array([3.0, 1.0, 4.0]), rtol=1e-10)
      >>> np.round(np.asarray(res.x), 4).tolist(), res.reason
      ([1.0, 1.0, -2.0], 'breakdown')
    """
    state = _minres_init(b)
    bnorm = float(state["beta"])
    if bnorm == 0.0:
        return MinresResult(state["x"], 0.0, 0.0, 0, True, "zero rhs", anorm_hint)
    tiny = 100 * _eps(state["beta"].dtype)
    rnorm, normal, ab_norm, prev_rnorm, anorm = bnorm, 1.0, None, bnorm, anorm_hint
    hint = jnp.asarray(anorm_hint, state["beta"].dtype)
    for k in range(max_iters):
        state, stats = _minres_step(state, matvec(state["v"]), hint)
        rnorm, ar_norm, rel_beta, rel_gamma, anorm = (float(a) for a in stats)
        ab_norm = ar_norm if ab_norm is None else ab_norm       # ||A b|| from the first step
        normal = ar_norm / max(ab_norm, np.finfo(float).tiny)
        done = _minres_stop(k, rnorm <= rtol * bnorm, normal <= rtol, rel_gamma <= tiny,
                            rel_beta <= tiny)
        if done == "least-squares":
            # x_{k-1} is a least-squares solution; on a singular, inconsistent system the
            # next iterate can blow up along the null space (gamma_k -> 0), so return x_{k-1}
            return MinresResult(state["x_prev"], prev_rnorm, normal, k + 1, True, done, anorm,
                                ab_norm)
        if done:
            return MinresResult(state["x"], rnorm, normal, k + 1, True, done, anorm, ab_norm)
        prev_rnorm = rnorm
    return MinresResult(state["x"], rnorm, normal, max_iters, False, "max_iters", anorm,
                        ab_norm)


def _minres_stop(k, small_residual, small_normal, singular, breakdown):
    """Which stopping test fired (``""`` for none), in order of precedence."""
    if singular:                     # gamma_k ~ 0: the new direction lies in the null space
        return "least-squares"
    if small_residual:
        return "residual"
    if k > 0 and small_normal:
        return "least-squares"
    return "breakdown" if breakdown else ""


# ---- the report -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CriticalPointReport:
    """What a point in parameter space is: minimum, saddle, maximum, or not critical.

    Attributes:
      verdict: one of :data:`VERDICTS`.
      detail: one sentence saying why (e.g. ``"degenerate minimum: no descent found along
        the 12 flat directions probed"``).
      loss, grad_norm: the dataset-mean loss and the norm of its full-data gradient.
      num_params: the dimension.
      lambda_max, lambda_max_error, lambda_min, lambda_min_error: the extreme eigenvalues and
        bounds on their error (the explicit residual ``||H v - lambda v||``; for the dense
        path also the asymmetry of the computed matrix, a measure of its rounding error).
      index: the number of negative eigenvalues beyond the zero threshold (see
        ``thresholds``): exact for ``index_method`` ``"dense"`` and ``"lanczos"``, the rounded
        estimate for ``"slq"``, ``None`` when unavailable.
      index_fraction: ``index / num_params``.
      index_interval: ``(low, high)``: a confidence interval (SLQ), a bound (``high`` is
        ``None`` when only ``index >= low`` is known), or ``(index, index)`` when exact.
      index_method: ``"dense"``, ``"lanczos"``, ``"slq"`` or ``"unavailable"``.
      num_flat: eigenvalues with ``|lambda| <=`` the zero threshold (or within their error
        bar of zero). ``num_flat_is_lower_bound`` is True when Lanczos saw only some of them.
      probe: the higher-order probe along flat directions (empty if none was run): numbers
        of directions, radii, whether a decrease (ascent, for a maximum) was found, the best
        change and where.
      thresholds: every threshold used (``grad_tol``, ``tau`` with ``tau_rule``, ``scale``,
        ``eig_tol``, ``decrease_tol``, ``probe_radii``, ``dense_max_params``,
        ``max_lanczos_index``); :meth:`explain` says what each one means.
      notes: further remarks (unconverged eigenvalues, estimates, sign undetermined).
      num_matvecs, wall_time, dtype, seed: provenance.
    """

    verdict: str
    detail: str
    loss: float
    grad_norm: float
    num_params: int
    lambda_max: float
    lambda_max_error: float
    lambda_min: float
    lambda_min_error: float
    index: int | None
    index_fraction: float | None
    index_interval: tuple | None
    index_method: str
    num_flat: int | None
    num_flat_is_lower_bound: bool
    probe: dict
    thresholds: dict
    notes: tuple = ()
    num_matvecs: int = 0
    wall_time: float = 0.0
    dtype: str = ""
    seed: list | None = None

    @property
    def is_critical(self) -> bool:
        return self.verdict != "not critical"

    @property
    def summary(self) -> str:
        """One line: the detail, gradient norm, extreme eigenvalues and index."""
        index = "unavailable" if self.index is None else f"{self.index}"
        return (f"{self.detail} (|grad| {self.grad_norm:.2e}, lambda_min {self.lambda_min:.3g}, "
                f"lambda_max {self.lambda_max:.3g}, index {index}, flat {self._flat_str()})")

    def _flat_str(self) -> str:
        if self.num_flat is None or (self.num_flat_is_lower_bound and self.num_flat == 0):
            return "unknown"
        return f">= {self.num_flat}" if self.num_flat_is_lower_bound else f"{self.num_flat}"

    def _index_str(self) -> str:
        if self.index is None:
            low = self.index_interval[0] if self.index_interval else 0
            return f">= {low} (index estimate unavailable)"
        pct = f"{100 * self.index_fraction:.3g}%"
        lo, hi = self.index_interval if self.index_interval else (self.index, self.index)
        how = {"dense": "exact, dense eigendecomposition",
               "lanczos": "exact count, Lanczos on the smallest eigenvalues",
               "slq": f"SLQ estimate, interval [{lo}, {hi}]"}.get(self.index_method, "")
        return f"{self.index} of {self.num_params} ({pct}; {how})"

    def explain(self) -> str:
        """Every threshold with what it means and how to change it."""
        t = self.thresholds
        lines = [
            f"grad_tol = {t['grad_tol']:.3g}: the point is critical when the full-data gradient "
            "norm is at most this (default 10 sqrt(eps) max(1, |loss|); classify(grad_tol=...)).",
            f"tau = {t['tau']:.3g} ({t['tau_rule']}; spectral scale max|lambda| = "
            f"{t['scale']:.4g}): an eigenvalue counts as negative (index) only below -tau, and as "
            "positive only above tau, each also beyond its own error bar; otherwise it is flat. "
            "The same tau as ht.negative_count and the CLI's negative fraction "
            "(classify(tau=...)).",
            f"eig_tol = {t['eig_tol']:.3g}: relative residual tolerance of the eigensolver.",
            f"decrease_tol = {t['decrease_tol']:.3g}: along a flat direction, a loss change below "
            "-(decrease_tol + r |g.d| + r^2 |d.Hd| / 2) at radius r counts as descent "
            "(the slack covers the residual gradient and curvature within the threshold).",
            f"probe_radii = {_fmt_list(t['probe_radii'])}: radii of the flat-direction probe "
            "(probe_scale x max(1, ||params||)).",
            f"dense_max_params = {t['dense_max_params']}: up to this many parameters the index "
            f"is exact from the dense Hessian; above, Lanczos counts up to max_lanczos_index = "
            f"{t['max_lanczos_index']} negative eigenvalues, and SLQ estimates larger counts.",
        ]
        return "\n".join("  " + line for line in lines)

    def table(self) -> str:
        crit = "<=" if self.grad_norm <= self.thresholds["grad_tol"] else ">"
        rows = [
            f"  loss               {self.loss:.8g}",
            f"  gradient norm      {self.grad_norm:.3e}   ({crit} grad_tol "
            f"{self.thresholds['grad_tol']:.2e})",
            f"  lambda_max         {self.lambda_max:.6g}   (+- {self.lambda_max_error:.1e})",
            f"  lambda_min         {self.lambda_min:.6g}   (+- {self.lambda_min_error:.1e})",
            f"  index              {self._index_str()}",
            f"  flat directions    {self._flat_str()}   (|lambda| <= "
            f"{self.thresholds['tau']:.2e} = tau)",
        ]
        if self.probe:
            p = self.probe
            rows.append(f"  probe              {p['num_directions']} flat directions x "
                        f"{len(p['radii'])} radii x 2 signs: "
                        f"{'change found' if p['found'] else 'no change of the tested sign'} "
                        f"(best {p['best_change']:.2e} at radius {p['best_radius']:.2g})")
        return "\n".join(rows)

    def __str__(self) -> str:
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        return (f"CriticalPointReport: {self.verdict.upper()}\n  {self.detail}\n{self.table()}"
                f"{notes}\n  ({self.num_matvecs} Hessian-vector products, {self.wall_time:.2f} s, "
                f"{self.dtype})\nThresholds:\n{self.explain()}")

    def to_dict(self) -> dict:
        d = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        d["type"] = "CriticalPointReport"
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> "CriticalPointReport":
        d = {k: v for k, v in d.items() if k != "type"}
        d["index_interval"] = None if d["index_interval"] is None else tuple(d["index_interval"])
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "CriticalPointReport":
        return cls.from_dict(json.loads(text))


def _fmt_list(xs) -> str:
    return "[" + ", ".join(f"{x:.3g}" for x in xs) + "]"


# ---- the loss on the data, compiled once per architecture -----------------------------------

_batch_loss = jax.jit(lambda loss, p, b: loss(p, b))


@jax.jit
def _mean_loss(loss, params, groups):
    return dataset_mean(lambda b: _batch_loss(loss, params, b), groups)


def _loss_at(obj: Objective, params) -> float:
    """The dataset-mean loss at ``params`` (one forward pass over the data)."""
    if not obj.streaming:
        return float(_mean_loss(obj.loss, params, _product_groups(obj, "auto")))
    total, count = 0.0, 0
    for batch, n in obj.batches():
        total += n * float(_batch_loss(obj.loss, params, batch))
        count += n
    return total / count


# ---- the spectrum: dense, Lanczos, SLQ -----------------------------------------------------

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
    """The zero threshold: ``tau`` if given, else :func:`default_threshold` of the scale."""
    return default_threshold(scale, dtype) if tau is None else float(tau)


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


# ---- the higher-order probe along flat directions ------------------------------------------

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


# ---- classify -------------------------------------------------------------------------------

def _check_options(key, grad_tol, tau, probe_scales, dense_max_params, max_lanczos_index):
    if key is None:
        raise ValueError("classify needs an explicit PRNG key (Lanczos start vectors, random "
                         "probe directions): pass key=jax.random.key(0).")
    for name, value in (("grad_tol", grad_tol), ("tau", tau)):
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


def classify(obj: Objective, *, key, grad_tol: float | None = None,
             tau: float | None = None, eig_tol: float | None = None,
             dense_max_params: int = 4000, max_lanczos_index: int = 32,
             probe_scales: Sequence[float] = (1e-3, 1e-2, 1e-1), max_probe_eigvecs: int = 16,
             num_random_probes: int = 8, decrease_tol: float | None = None,
             probe: bool = True) -> CriticalPointReport:
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
      eig_tol: eigensolver relative residual tolerance (default ``1e-3``, a tenth of the
        default ``tau``, at least ``ht.default_tol``; with an explicit ``tau``,
        ``ht.default_tol``: tight enough to certify signs beyond the threshold).
      dense_max_params: largest model handled by the dense Hessian (0: always Lanczos).
      max_lanczos_index: largest index counted exactly by Lanczos.
      probe_scales: probe radii relative to ``max(1, ||params||)``.
      max_probe_eigvecs, num_random_probes: how many flat eigenvectors, and random unit
        combinations of them, are probed.
      decrease_tol: loss change treated as noise in the probe (default
        ``1e3 eps max(1, |loss|)``).
      probe: run the flat-direction probe at all.

    Returns:
      A :class:`CriticalPointReport`.

    Raises:
      ValueError: no key, or a negative / non-finite threshold.

    Example:
      >>> import jax, jax.numpy as jnp, hessian_tools as ht
      >>> loss = lambda p, batch: p[0] ** 2 - p[1] ** 2
      >>> obj = ht.Objective(loss, jnp.zeros(2), jnp.zeros((1, 1)))
      >>> rep = ht.classify(obj, key=jax.random.key(0))
      >>> rep.verdict, rep.index
      ('saddle', 1)
    """
    _check_options(key, grad_tol, tau, probe_scales, dense_max_params, max_lanczos_index)
    start, dtype = time.perf_counter(), _param_dtype(obj)
    loss, grad = value_and_grad(obj)
    loss, grad_norm = float(loss), float(tree.norm(grad))
    grad_tol = default_grad_tol(dtype, loss) if grad_tol is None else float(grad_tol)
    if eig_tol is None:
        eig_tol = max(default_tol(dtype), 1e-3) if tau is None else default_tol(dtype)
    decrease_tol = _default_decrease_tol(dtype, loss) if decrease_tol is None else decrease_tol
    k_spec, k_slq, k_probe = jax.random.split(key, 3)
    H = hessian(obj)
    if obj.num_params <= dense_max_params:
        spec = _dense_spectrum(H, tau, max_probe_eigvecs)
    else:
        spec = _lanczos_spectrum(H, k_spec, tau=tau, eig_tol=eig_tol,
                                 max_index=max_lanczos_index, max_probe=max_probe_eigvecs)
        if spec.index_interval[1] is None:
            _count_index(H, k_slq, spec, max_lanczos_index)
    radii = [float(s) * max(1.0, float(tree.norm(obj.params))) for s in probe_scales]
    thresholds = dict(grad_tol=grad_tol, tau=spec.tau, scale=spec.scale,
                      tau_rule=("given" if tau is not None else
                                "default: ht.default_threshold, 1% of max|lambda|"),
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
        verdict, detail, loss, grad_norm, obj.num_params, spec.lam_max, spec.err_max,
        spec.lam_min, spec.err_min, spec.index,
        None if spec.index is None else spec.index / obj.num_params, spec.index_interval,
        spec.index_method, spec.num_flat, spec.flat_lower_bound, probe_info, thresholds,
        tuple(spec.notes), H.num_matvecs, time.perf_counter() - start, str(jnp.dtype(dtype)),
        tree.key_bits(key))


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


# ---- finding critical points: Newton-MR on 1/2 ||grad L||^2 --------------------------------

@dataclasses.dataclass(frozen=True)
class FoundPoint:
    """One run of :func:`find_critical_points` from one start.

    Attributes:
      status: ``"critical"`` (``||grad|| <= grad_tol``), ``"gradient-flat"`` (stuck at a
        small non-zero gradient lying in the near-kernel of the Hessian:
        ``||H g|| <= gradient_flat_tol * max|lambda| * ||g||``), or ``"not converged"``.
      loss, grad_norm, index, index_fraction, verdict: at the final point (index and verdict
        from :func:`classify`).
      flatness: ``||H g|| / (max|lambda| ||g||)`` at the final point (0 = the gradient is
        exactly flat).
      start: position of the start in ``starts``.
      num_iters, num_matvecs: Newton iterations and HVPs (MINRES and classification).
      grad_norms: the gradient norm after every iteration (the first is at the start).
      report: the :class:`CriticalPointReport` at the final point.
      params: the final parameters (a pytree; ``None`` after a JSON round trip).
    """

    status: str
    loss: float
    grad_norm: float
    index: int | None
    index_fraction: float | None
    verdict: str
    flatness: float
    start: int
    num_iters: int
    num_matvecs: int
    grad_norms: tuple
    report: CriticalPointReport
    params: Any = None

    def to_dict(self) -> dict:
        d = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
             if f.name not in ("params", "report")}
        d["report"] = self.report.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FoundPoint":
        d = dict(d)
        d["report"] = CriticalPointReport.from_dict(d["report"])
        d["grad_norms"] = tuple(d["grad_norms"])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class CriticalPointSearch:
    """The points reached by :func:`find_critical_points`, one per start (a sequence).

    Attributes:
      points: tuple of :class:`FoundPoint`, in the order of the starts.
      options: the settings used (tolerances, budgets).
      wall_time: seconds.
    """

    points: tuple
    options: dict
    wall_time: float = 0.0

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self):
        return iter(self.points)

    def __getitem__(self, i):
        return self.points[i]

    @property
    def critical(self) -> tuple:
        """The points that reached ``||grad|| <= grad_tol``."""
        return tuple(p for p in self.points if p.status == "critical")

    @property
    def losses(self) -> np.ndarray:
        return np.array([p.loss for p in self.points])

    @property
    def indices(self) -> np.ndarray:
        """Index of each point (NaN where unavailable)."""
        return np.array([np.nan if p.index is None else p.index for p in self.points])

    @property
    def index_fractions(self) -> np.ndarray:
        return np.array([np.nan if p.index_fraction is None else p.index_fraction
                         for p in self.points])

    def table(self) -> str:
        rows = [f"{'#':>3} {'status':>14} {'verdict':>19} {'loss':>11} {'|grad|':>9} "
                f"{'index':>6} {'flat':>5} {'iters':>5} {'HVPs':>6}"]
        for i, p in enumerate(self.points):
            idx = "?" if p.index is None else str(p.index)
            rows.append(f"{i:>3} {p.status:>14} {p.verdict:>19} {p.loss:>11.5g} "
                        f"{p.grad_norm:>9.2e} {idx:>6} {p.report._flat_str():>5} "
                        f"{p.num_iters:>5} {p.num_matvecs:>6}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return (f"CriticalPointSearch: {len(self.critical)} critical of {len(self)} starts "
                f"({self.wall_time:.1f} s)\n{self.table()}")

    def to_dict(self) -> dict:
        return {"type": "CriticalPointSearch", "points": [p.to_dict() for p in self.points],
                "options": _jsonable(self.options), "wall_time": self.wall_time}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> "CriticalPointSearch":
        return cls(tuple(FoundPoint.from_dict(p) for p in d["points"]), d["options"],
                   d.get("wall_time", 0.0))

    @classmethod
    def from_json(cls, text: str) -> "CriticalPointSearch":
        return cls.from_dict(json.loads(text))


def _value_grad_at(obj: Objective, params):
    """Loss and gradient at ``params`` without re-validating the objective (hot loop)."""
    if obj.streaming:
        return value_and_grad(obj.with_params(params))
    return _value_and_grad(obj.loss, params, _product_groups(obj, "auto"))


def _phi(obj, params):
    """``(1/2 ||g||^2, g, loss)`` at ``params``; ``inf`` when the loss is not finite."""
    loss, g = _value_grad_at(obj, params)
    phi = 0.5 * float(tree.vdot(g, g))
    return (phi if np.isfinite(phi) and np.isfinite(float(loss)) else np.inf), g, float(loss)


def _newton_mr_step(obj, point, h_scale, *, krylov_iters, flat_tol, c1=1e-4,
                    min_step=2.0 ** -30):
    """One Newton-MR iteration: ``d = argmin ||H d + g||`` by MINRES, Armijo on ``phi``.

    ``point`` is ``(params, g, phi, loss)``; ``h_scale`` the largest ``||H||`` estimate so
    far. No step is taken when the gradient lies in the near-kernel of ``H``
    (``||H g|| <= flat_tol ||H|| ||g||``): there ``grad phi = H g`` vanishes and MINRES would
    only amplify rounding. Returns ``(point, matvecs, h_scale, accepted)``.
    """
    params, g, phi, _ = point
    H = hessian(obj.with_params(params))
    rtol = min(0.5, float(np.sqrt(np.sqrt(2 * phi))))        # inexact Newton (Eisenstat-Walker)
    sol = minres(H.apply_unchecked, tree.scale(-1.0, g), max_iters=krylov_iters, rtol=rtol,
                 anorm_hint=h_scale)
    h_scale = max(h_scale, sol.anorm)
    if sol.ab_norm <= flat_tol * h_scale * np.sqrt(2 * phi):
        return point, H.num_matvecs, h_scale, False
    slope = float(tree.vdot(g, H.apply_unchecked(sol.x)))     # d/dt phi(x + t d) at t = 0
    t = 1.0
    while slope < 0 and t >= min_step:
        trial = tree.axpy(t, sol.x, params)
        phi_t, g_t, loss_t = _phi(obj, trial)
        if phi_t <= phi + c1 * t * slope:
            return (trial, g_t, phi_t, loss_t), H.num_matvecs, h_scale, True
        t *= 0.5
    return point, H.num_matvecs, h_scale, False


def _newton_mr(obj, params, *, grad_tol, max_iters, krylov_iters, patience, flat_tol):
    """Drive ``||grad L||`` down from ``params``; returns ``(params, norms, iters, matvecs)``."""
    phi, g, loss = _phi(obj, params)
    point, norms, matvecs, stalled, h_scale = (params, g, phi, loss), [float(np.sqrt(2 * phi))], 0, 0, 0.0
    for it in range(max_iters):
        tol = default_grad_tol(_param_dtype(obj), point[3]) if grad_tol is None else grad_tol
        if norms[-1] <= tol:
            return point[0], norms, it, matvecs
        point, used, h_scale, accepted = _newton_mr_step(
            obj, point, h_scale, krylov_iters=krylov_iters, flat_tol=flat_tol)
        matvecs += used
        norms.append(float(np.sqrt(2 * point[2])))
        stalled = stalled + 1 if norms[-1] > 0.9 * norms[-2] else 0
        if not accepted or stalled >= patience:
            return point[0], norms, it + 1, matvecs
    return point[0], norms, max_iters, matvecs


def _flatness(obj, params, scale) -> float:
    """``||H g|| / (scale ||g||)`` at ``params`` (one gradient, one HVP)."""
    _, g = _value_grad_at(obj, params)
    hg = float(tree.norm(hessian(obj.with_params(params)).apply_unchecked(g)))
    return hg / max(scale * float(tree.norm(g)), np.finfo(float).tiny)


def find_critical_points(obj: Objective, starts: Sequence, *, key, grad_tol: float | None = None,
                         max_iters: int = 50, krylov_iters: int = 100, patience: int = 10,
                         gradient_flat_tol: float = 1e-2, classify_options: dict | None = None,
                         progress: bool = False) -> CriticalPointSearch:
    """Find critical points (of any index) near each start by Newton-MR, and classify them.

    Minimises ``phi(x) = 1/2 ||grad L(x)||^2`` with Gauss-Newton steps: the direction
    ``d = argmin ||H d + g||`` comes from MINRES on the Hessian (HVPs only; indefinite and
    singular ``H`` are fine), and a backtracking (Armijo) line search on ``phi`` along ``d``
    (``<grad phi, d> = <g, H d> < 0`` for MINRES iterates; Roosta et al. 2018). Unlike
    gradient descent on ``L``, this converges to saddles as readily as to minima, which is
    what a map of the critical points needs (Dauphin et al. 2014; Frye et al. 2019).

    Each point reached gets a status: ``"critical"`` when ``||g|| <= grad_tol``;
    ``"gradient-flat"`` when the method stalled with ``||g|| > grad_tol`` but the gradient
    lies in the near-kernel of the Hessian, ``||H g|| <= gradient_flat_tol * max|lambda| *
    ||g||``, so that ``grad phi = H g`` is (almost) zero although ``g`` is not: a
    gradient-flat region (Frye et al. 2021), not a critical point; otherwise
    ``"not converged"``. Every point is then classified with :func:`classify` (index,
    verdict).

    Cost per iteration: up to ``krylov_iters`` HVPs (MINRES) + 1 HVP + one gradient per
    line-search trial; memory a few parameter-sized vectors. Per point, one
    :func:`classify` (``dim`` HVPs on the dense path).

    Args:
      obj: the objective (its ``params`` only fix the structure).
      starts: a sequence of parameter pytrees shaped like ``obj.params``.
      key: a ``jax.random`` key for the classifications.
      grad_tol: the gradient norm that counts as zero (default :func:`default_grad_tol`).
      max_iters: Newton iterations per start.
      krylov_iters: MINRES iterations (HVPs) per Newton step.
      patience: stop after this many iterations without a 10% decrease of ``||g||``.
      gradient_flat_tol: the relative ``||H g||`` below which a stalled point is
        gradient-flat (the iteration itself stops once ``||H g||`` falls below 1% of this,
        where MINRES could only amplify rounding).
      classify_options: keyword arguments for :func:`classify` (``grad_tol`` is passed on).
      progress: print one line per start.

    Returns:
      A :class:`CriticalPointSearch` (a sequence of :class:`FoundPoint`).

    Raises:
      ValueError: an empty ``starts``, a start not shaped like ``obj.params`` (the leaf is
        named), or no key.
    """
    _check_starts(obj, starts, key)
    begin, found = time.perf_counter(), []
    keys = jax.random.split(key, len(starts))
    options = dict(classify_options or {})
    if grad_tol is not None:
        options["grad_tol"] = grad_tol
    for i, (x0, sub) in enumerate(zip(starts, keys)):
        found.append(_search_one(obj, x0, i, sub, grad_tol=grad_tol, max_iters=max_iters,
                                 krylov_iters=krylov_iters, patience=patience,
                                 gradient_flat_tol=gradient_flat_tol, options=options))
        if progress:
            p = found[-1]
            print(f"start {i}: {p.status}, loss {p.loss:.5g}, |grad| {p.grad_norm:.2e}, "
                  f"index {p.index}, {p.num_iters} iterations, {p.num_matvecs} HVPs", flush=True)
    settings = dict(grad_tol=grad_tol, max_iters=max_iters, krylov_iters=krylov_iters,
                    patience=patience, gradient_flat_tol=gradient_flat_tol,
                    classify_options=options)
    return CriticalPointSearch(tuple(found), settings, time.perf_counter() - begin)


def _check_starts(obj, starts, key):
    if key is None:
        raise ValueError("find_critical_points needs an explicit PRNG key: pass "
                         "key=jax.random.key(0).")
    if isinstance(starts, (dict, jax.Array, np.ndarray)) or not isinstance(starts, Sequence):
        raise TypeError(f"starts must be a list of parameter pytrees, got "
                        f"{type(starts).__name__}. Wrap a single start as [params].")
    if len(starts) == 0:
        raise ValueError("starts is empty: pass at least one parameter pytree.")
    for i, x0 in enumerate(starts):
        tree.check_same_structure(obj.params, x0, what=f"starts[{i}]")


def _search_one(obj, x0, i, key, *, grad_tol, max_iters, krylov_iters, patience,
                gradient_flat_tol, options):
    x0 = jax.tree.map(lambda a, b: jnp.asarray(b, jnp.result_type(a)), obj.params, x0)
    params, norms, iters, matvecs = _newton_mr(obj, x0, grad_tol=grad_tol, max_iters=max_iters,
                                               krylov_iters=krylov_iters, patience=patience,
                                               flat_tol=1e-2 * gradient_flat_tol)
    rep = classify(obj.with_params(params), key=key, **options)
    flatness = _flatness(obj, params, max(abs(rep.lambda_max), abs(rep.lambda_min)))
    if rep.grad_norm <= rep.thresholds["grad_tol"]:
        status = "critical"
    else:
        status = "gradient-flat" if flatness <= gradient_flat_tol else "not converged"
    return FoundPoint(status, rep.loss, rep.grad_norm, rep.index, rep.index_fraction,
                      rep.verdict, flatness, i, iters, matvecs + rep.num_matvecs + 1,
                      tuple(norms), rep, params)


# ---- plot ----------------------------------------------------------------------------------

def plot_index_vs_loss(search, ax=None, *, fraction: bool = True, label: str | None = None,
                       color=None):
    """Loss against index at the points found (Dauphin et al. 2014, Fig. 1).

    Critical points are filled circles; gradient-flat and unconverged points are hollow
    (they are not critical points; shown for honesty). Returns the ``ax``.

    Args:
      search: a :class:`CriticalPointSearch` (or a sequence of :class:`FoundPoint`).
      ax: a matplotlib axes (a new figure if None).
      fraction: plot the index as a fraction of the parameters (as in the paper).
    """
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(5, 3.5))
    points = list(search)
    styles = (("critical", "o", "C0", True), ("gradient-flat", "s", "C1", False),
              ("not converged", "x", "0.5", True))
    for status, marker, default, filled in styles:
        pts = [p for p in points if p.status == status and p.index is not None]
        if not pts:
            continue
        xs = [p.index_fraction if fraction else p.index for p in pts]
        c = color or default
        kw = dict(color=c) if filled else dict(facecolors="none", edgecolors=c)
        ax.scatter(xs, [p.loss for p in pts], marker=marker,
                   label=f"{label + ': ' if label else ''}{status} ({len(pts)})", **kw)
    ax.set_xlabel("index (fraction of negative eigenvalues)" if fraction else "index")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
