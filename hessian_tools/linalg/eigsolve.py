"""Extreme eigenpairs by restarted Lanczos: one Krylov-Schur engine, two drivers.

* :func:`krylov_schur` is the engine: Lanczos with full reorthogonalisation (the one step of
  :mod:`hessian_tools.linalg._space`), thick restarts when the basis is full (Stewart 2001;
  Wu & Simon 2000), until the wanted Ritz pairs reach their tolerances.
* :func:`lanczos_eigs` drives it with *locking*: converged pairs are deflated and a fresh
  run searches the complement until a run finds nothing new, which returns repeated
  eigenvalues with their multiplicity.
* :func:`warm_eigs` drives it from a *warm start* (the previous measurement's Ritz vectors
  and a guard), with a growing basis and a fresh direction after an early breakdown: the
  sharpness tracker's measurement, a handful of products when parameters moved little.

The iteration is driven from Python with the operator product called between steps: on
XLA's CPU backend a conv net's HVP ran ~15x slower inside a rolled loop than called from
Python, and the host loop costs one dispatch per step and lets the solver check
convergence, restart and report progress.

References: Golub & Van Loan, *Matrix Computations* (4th ed.), 10.1; Parlett, *The
Symmetric Eigenvalue Problem*, ch. 13 (locking and restarts); Stewart 2001 (Krylov-Schur).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from hessian_tools import _host, tree
from hessian_tools.linalg._space import HostSpace, space_for
from hessian_tools.linalg.memory import buffer_rows, default_krylov_dim, plan as memory_plan

__all__ = ["krylov_schur", "lanczos_eigs", "warm_eigs", "LanczosEigsResult", "WarmEigsResult",
           "buffer_rows", "default_krylov_dim"]


def wanted(theta: np.ndarray, k_top: int, k_bottom: int) -> np.ndarray:
    """Indices (into ascending ``theta``) of the top ``k_top`` and bottom ``k_bottom``."""
    m = len(theta)
    top = list(range(m - 1, max(m - 1 - k_top, -1), -1))
    bottom = [i for i in range(min(k_bottom, m)) if i not in top]
    return np.array(top + bottom, dtype=int)


@dataclasses.dataclass
class Run:
    """One Krylov-Schur run: basis rows ``0..j``, projected matrix, latest Ritz pairs."""

    basis: Any
    q: Any
    proj: np.ndarray
    prods: Any = None                # A q_i for every basis row i (when products are kept)
    j: int = 0
    beta: float = 0.0
    theta: np.ndarray | None = None
    s: np.ndarray | None = None
    res: np.ndarray | None = None
    breakdown: bool = False

    def ritz(self):
        m = self.j
        h = self.proj[:m, :m]
        self.theta, self.s = np.linalg.eigh((h + h.T) / 2)
        self.res = np.abs(self.beta * self.s[m - 1, :])

    def rows(self) -> int:
        return len(self.proj)


def krylov_schur(matvec: Callable, space, basis, q, *, m_max: int, budget: int,
                 want: tuple[int, int], tols, scale: float = 0.0, locked=None,
                 num_locked: int = 0, keep_products: bool = False, check_every: int = 1,
                 min_steps: int = 0, fresh: Callable | None = None, dim: int | None = None,
                 callback: Callable[[int], None] | None = None, used: int = 0, prods=None):
    """Run Lanczos from ``q`` (row 0 of ``basis``) until the wanted Ritz pairs converge.

    Wanted: the ``want[0]`` largest and ``want[1]`` smallest Ritz pairs, with residual
    estimates ``|beta s_mi| <= tols * scale`` (``tols`` a scalar or one per wanted index,
    top first; ``scale`` the largest ``|Ritz value|`` seen, an estimate of ``||A||``).
    Thick-restarts when the basis holds ``m_max`` rows, keeping about half of them (the Ritz
    vectors nearest the wanted ends). ``basis`` may have fewer than ``m_max + 1`` rows: it
    doubles as it fills. On a breakdown (an invariant subspace) the run stops, or, with
    ``fresh``, continues from ``fresh()``, orthogonalised against the basis. ``prods`` is
    a buffer for the kept products (``space.recycle`` of a finished run's), else one is
    allocated.

    Returns:
      ``(run, steps, scale)``: the :class:`Run` (basis, Ritz values ``theta``, vectors
      ``s`` in the basis, residual estimates), the products spent and the scale.
    """
    dim = dim or 10 ** 18
    rows = m_max + 1
    run = Run(basis, q, np.zeros((rows, rows)))
    if keep_products:
        run.prods = space.zeros(_rows(basis)) if prods is None else prods
    pending, steps = [], 0
    while steps < budget:
        if run.j + 1 >= _rows(run.basis) and _rows(run.basis) < rows:
            run.basis = space.grow(run.basis, min(rows, 2 * _rows(run.basis)))
        w = space.from_product(matvec(space.vector(run.q)))
        if run.prods is not None:
            run.prods = space.set_row(run.prods, run.j, w)
        run.basis, run.q, h, beta = space.project(run.basis, locked, num_locked, run.j, w,
                                                  scale)
        pending.append((run.j, h, beta))
        run.j += 1
        steps += 1
        if callback is not None:
            callback(used + steps)
        full = run.j >= m_max
        if not full and run.j % check_every and steps < budget:
            continue
        for j, h, beta in pending:       # one host sync per check
            h = np.asarray(h, np.float64)
            if not (np.all(np.isfinite(h)) and np.isfinite(float(beta))):
                raise FloatingPointError(
                    f"The operator returned non-finite values (NaN or inf) at Lanczos step "
                    f"{j}: the loss or its derivatives are not finite at this point (a "
                    "diverged checkpoint, or log(0) in the loss?). Check ht.value_and_grad.")
            run.proj[:j + 1, j] = run.proj[j, :j + 1] = h[:j + 1]
            run.beta = float(beta)
        pending = []
        run.ritz()
        scale = max(scale, float(np.max(np.abs(run.theta))))
        idx = wanted(run.theta, *want)
        run.breakdown = run.beta == 0.0
        complete = len(idx) == sum(want)
        done = complete and bool(np.all(run.res[idx] <= np.asarray(tols) * max(scale, 1e-300)))
        if (done and steps >= min(min_steps, dim)) or run.j >= dim:
            break
        if run.breakdown and fresh is None:
            break
        if full:
            _thick_restart(run, want, m_max, space)
        if run.breakdown:                # invariant subspace: continue elsewhere
            run.basis, run.q = space.fill_row(run.basis, locked, num_locked, run.j, fresh())
    return run, steps, scale


def _rows(basis) -> int:
    return jax.tree.leaves(basis)[0].shape[0]


def _thick_restart(run, want, m_max, space):
    """Keep about half the basis: the Ritz vectors nearest the wanted ends (Krylov-Schur)."""
    m = run.j
    keep_n = max(sum(want) + 2, m_max // 2)
    bottom_n = (0 if not want[1] else keep_n if not want[0] else
                max(want[1] + 1, min(keep_n // 2, keep_n - want[0] - 1)))
    keep = wanted(run.theta, keep_n - bottom_n, bottom_n)
    coeffs = run.s[:, keep]                      # in place: no second basis
    run.basis = space.restart(run.basis, coeffs, run.q)
    if run.prods is not None:        # A (V^T S) = (A V^T) S: the products follow the vectors
        run.prods = space.restart_rows(run.prods, coeffs)
    n = len(keep)
    run.proj[:] = 0.0
    run.proj[np.arange(n), np.arange(n)] = run.theta[keep]
    run.proj[n, :n] = run.proj[:n, n] = run.beta * run.s[m - 1, keep]
    run.j = n


def _blas(space):
    """NumPy's BLAS on one thread while a host solve runs (its idle workers would take cores
    from XLA's products: see :func:`hessian_tools._host.single_threaded_blas`)."""
    return _host.single_threaded_blas() if isinstance(space, HostSpace) else \
        contextlib.nullcontext()


# ---- driver 1: locking and verification -----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LanczosEigsResult:
    """Raw output of :func:`lanczos_eigs`: values descending, rows of ``vectors`` aligned."""

    values: np.ndarray
    vectors: Any
    residual_estimates: np.ndarray
    num_matvecs: int
    converged: bool
    num_restarts: int
    scale: float
    products: Any = None       # A v for each row of ``vectors`` (``keep_products=True``)


@dataclasses.dataclass
class _Locked:
    """Locked Ritz pairs: values on the host, vectors (and, if kept, their products ``A v``)
    in fixed-size buffers."""

    values: list
    residuals: list
    ends: list
    buffer: Any
    space: Any
    products: Any = None

    def add(self, values, residuals, ends, coeffs, run):
        """Lock the Ritz pairs ``V^T coeffs`` of ``run``, combined straight into the
        buffers (with their products ``(A V^T) coeffs`` when kept)."""
        if self.products is not None:
            self.products = self.space.combine_into(self.products, len(self.values), coeffs,
                                                    run.prods)
        self.buffer = self.space.combine_into(self.buffer, len(self.values), coeffs, run.basis)
        self.values += [float(v) for v in values]
        self.residuals += [float(r) for r in residuals]
        self.ends += list(ends)

    def count(self, end: str) -> int:
        return sum(e == end for e in self.ends)

    @property
    def room(self) -> int:
        return _rows(self.buffer) - len(self.values)

    def __len__(self) -> int:
        return len(self.values)


def lanczos_eigs(matvec: Callable, key, v_like, *, k: int, which: str = "largest",
                 tol: float = 1e-6, krylov_dim: int | str | None = None,
                 num_matvecs: int | None = None, check_every: int = 1, verify: bool = True,
                 callback: Callable[[int], None] | None = None,
                 basis: str = "auto", keep_products: bool = False,
                 check_memory: bool = True) -> LanczosEigsResult:
    """Extreme eigenpairs of a symmetric operator: Lanczos with Krylov-Schur restarts and locking.

    Each run (:func:`krylov_schur`) builds an orthonormal Krylov basis with full
    reorthogonalisation (against the basis and every locked vector), thick-restarting when
    it reaches ``krylov_dim`` rows, until the wanted Ritz pairs have residual
    ``|beta s_mi| <= tol * scale`` (``scale``: the largest ``|Ritz value|`` seen, an estimate
    of ``||A||``). Converged pairs are then locked (deflated) and a new run starts from a
    fresh random vector in the complement. The solver stops once a run finds nothing that
    belongs in the wanted set: single-vector Lanczos sees one copy of a repeated eigenvalue
    per start vector, and this final run is what returns repeated eigenvalues with their
    multiplicity.

    Args:
      matvec: ``v -> A v`` for symmetric ``A`` (called from Python once per step).
      key: a ``jax.random`` key for the start vectors.
      v_like: a pytree shaped like the vectors (arrays or ``ShapeDtypeStruct``).
      k: eigenpairs wanted at each requested end.
      which: ``"largest"`` or ``"smallest"`` (algebraic), or ``"both"`` (``k`` at each end).
      tol: relative residual tolerance.
      krylov_dim: basis rows kept before a thick restart (default ``max(3k + 30, 60)`` for one
        end, ``max(6k + 40, 100)`` for both, capped by the dimension), or ``"auto"``: the
        largest up to the default that fits in 90% of the available memory
        (:func:`hessian_tools.linalg.memory.plan`).
      num_matvecs: total budget (default ``50 * krylov_dim``).
      check_every: steps between convergence checks (each check syncs with the host and
        solves a small eigenproblem; every step is cheap next to a Hessian product).
      verify: run the final check for missed copies of repeated eigenvalues (about a third of
        the matvecs for well separated ends). With ``False`` the solver stops as soon as ``k``
        pairs are locked at each end: right for simple eigenvalues, but a repeated one may
        then come back once.
      callback: called with the number of matvecs so far after every step (progress bars).
      basis: where the basis lives (:func:`hessian_tools.linalg._space.space_for`):
        ``"device"`` (pytrees in compiled functions; sharded parameters stay sharded),
        ``"host"`` (one flat NumPy array, nothing compiled, only the filled rows swept, a
        second Gram-Schmidt sweep only when the first cancelled most of the vector) or
        ``"auto"`` (host on a single CPU device). The same key gives the same start vectors
        either way.
      keep_products: keep the operator's product ``A q`` of every basis vector next to the
        basis, carried through restarts and locking as the same linear combinations, and
        return ``A v`` of each returned vector in ``products``. That gives the explicit
        residual ``||A v - lambda v||`` (up to rounding in the combination) with no further
        matvec, for ``krylov_dim + 2k + 8`` more vectors of memory.
      check_memory: refuse (``ValueError``, with the numbers and the fixes) a solve whose
        buffers would not fit in the memory available now
        (:meth:`hessian_tools.linalg.memory.MemoryPlan.check`).

    Returns:
      A :class:`LanczosEigsResult`, values in descending order. Memory at the peak
      ``(krylov_dim + 2k + 9) + 6`` parameter-sized vectors for one end (``4k + 8`` locked
      rows for both), the buffers twice with ``keep_products``
      (:mod:`hessian_tools.linalg.memory`). Eigenvalue error is at most the residual, and
      about ``residual^2 / gap`` away from clusters.
    """
    like = tree.spec_like(v_like)
    dim = tree.size(like)
    k_top = k if which in ("largest", "both") else 0
    k_bottom = k if which in ("smallest", "both") else 0
    need = memory_plan(like, k, which, krylov_dim, keep_products=keep_products, basis=basis)
    if check_memory:
        need.check()
    m_max, lock_rows = need.krylov_dim, need.lock_rows
    budget = num_matvecs or 50 * m_max
    space = space_for(like, basis)
    rng = np.random.default_rng(tree.key_bits(key))    # start vectors: drawn on the host
    lock = _Locked([], [], [], space.zeros(lock_rows), space,
                   space.zeros(lock_rows) if keep_products else None)
    with _blas(space):
        return _solve(matvec, rng, lock, dim, k_top, k_bottom, m_max, budget, tol, check_every,
                      verify, callback)


def _solve(matvec, rng, lock, dim, k_top, k_bottom, m_max, budget, tol, check_every, verify,
           callback):
    """The restart-lock-verify loop of :func:`lanczos_eigs`."""
    used, runs, scale, hint, done = 0, 0, 0.0, None, False
    space = lock.space
    basis_buf = prods_buf = None     # a finished run's buffers, refilled by the next run
    while used < budget:
        if len(lock.values) >= dim:
            done = True                  # the whole space is locked: every eigenpair is known
            break
        if lock.room == 0:
            break
        want = (max(1, k_top - lock.count("top")) if k_top else 0,
                max(1, k_bottom - lock.count("bottom")) if k_bottom else 0)
        rows = min(m_max, dim - len(lock.values))
        basis, q = space.start(space.draw(rng), hint, lock.buffer, len(lock), rows + 1,
                               reuse=basis_buf)
        basis_buf = hint = None
        run, steps, scale = krylov_schur(
            matvec, space, basis, q, m_max=rows, budget=budget - used, want=want, tols=tol,
            scale=scale, locked=lock.buffer, num_locked=len(lock),
            keep_products=lock.products is not None, check_every=check_every,
            callback=callback, used=used,
            prods=prods_buf if prods_buf is not None and _rows(prods_buf) == rows + 1 else None)
        used += steps
        runs += 1
        done, hint = _lock_and_decide(run, lock, want, (k_top, k_bottom), tol * scale)
        basis_buf, prods_buf = run.basis, None
        if run.prods is not None:
            prods_buf = space.recycle(run.prods)
        del run
        if not verify and lock.count("top") >= k_top and lock.count("bottom") >= k_bottom:
            done = True
        if done:
            break
    return _finish(lock, k_top, k_bottom, used, done, runs - 1, scale)


def _lock_and_decide(run, lock, want, k_end, abs_tol):
    """Lock converged wanted Ritz pairs; return ``(done, hint_vector_for_next_run)``.

    At each end, Ritz values are scanned from the extreme inwards. A value no better than
    the k-th locked one at that end ends the scan (nothing beyond it belongs in the answer);
    converged ones are locked. Locking anything new means another run: only a run that
    finds nothing new proves the set complete.
    """
    theta, res, m = run.theta, run.res, run.j
    locked = np.array(lock.values)
    take, ends, unfinished = [], [], False
    for n_want, k, sign, end in ((want[0], k_end[0], 1.0, "top"),
                                 (want[1], k_end[1], -1.0, "bottom")):
        if n_want == 0:
            continue
        order = np.arange(m - 1, -1, -1) if sign > 0 else np.arange(m)
        have = np.sort(sign * locked)[::-1]
        kth = have[k - 1] if len(have) >= k else -np.inf
        for i in order[:n_want]:
            if sign * theta[i] <= kth + abs_tol or i in take:
                break
            if res[i] > abs_tol and not run.breakdown:
                unfinished = True
                break
            take.append(int(i))
            ends.append(end)
    if take and lock.room:
        take, ends = take[:lock.room], ends[:lock.room]
        lock.add(theta[take], res[take], ends, run.s[:, take], run)
    if not take and not unfinished:
        return True, None
    rest = [i for i in wanted(theta, 4 if want[0] else 0, 4 if want[1] else 0) if i not in take]
    if not rest:
        return False, None
    return False, lock.space.combine(run.s[:, rest].sum(axis=1) / np.sqrt(len(rest)), run.basis)


def _finish(lock, k_top, k_bottom, used, done, restarts, scale):
    values = np.array(lock.values, dtype=np.float64)
    order = list(np.argsort(-values, kind="stable"))
    top = order[:k_top]
    bottom = [i for i in order[::-1] if i not in top][:k_bottom]
    pick = sorted(top + bottom, key=lambda i: -values[i])
    vectors = lock.space.take_rows(lock.buffer, pick)
    got = len(pick) == k_top + k_bottom
    products = None if lock.products is None else lock.space.take_rows(lock.products, pick)
    residuals = np.array(lock.residuals)[pick] if pick else np.array([])
    return LanczosEigsResult(values[pick], vectors, residuals, used, bool(done and got),
                             restarts, scale, products)


# ---- driver 2: warm starts ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class WarmEigsResult:
    """Output of :func:`warm_eigs`.

    Attributes:
      values: the wanted Ritz values: top ``k_top`` (descending), then bottom ``k_bottom``
        (ascending).
      residuals: their residual estimates ``|beta s_mi|``.
      vectors: stacked Ritz vectors of ``values``.
      warm: stacked wanted and guard Ritz vectors: the next call's ``start``.
      num_matvecs, converged, scale: products spent, tolerances reached, ``max|theta|``.
    """

    values: np.ndarray
    residuals: np.ndarray
    vectors: Any
    warm: Any
    num_matvecs: int
    converged: bool
    scale: float


FIRST_ROWS = 8
"""A warm solve's basis starts this small and doubles: reorthogonalisation costs
``O(rows x P)`` per step, so a short warm-started run stays cheap."""

GUARD_WEIGHT = 0.3
"""The guard's weight in a warm start vector: its direction is in the Krylov space after a
step or two anyway."""


def warm_eigs(matvec: Callable, v_like, key, *, start=None, k_top: int = 1, k_bottom: int = 0,
              num_guard: int = 1, tol: float = 1e-3, guard_tol: float | None = None,
              krylov_dim: int = 40, num_matvecs: int = 300, min_steps: int = 3,
              basis: str = "device") -> WarmEigsResult:
    """The ``k_top`` largest and ``k_bottom`` smallest eigenpairs from a warm start.

    The start vector is ``start`` (a stacked basis: the wanted vectors of a previous call,
    weight 1, and its guard, weight ``GUARD_WEIGHT``), or a random vector drawn from ``key``.
    Besides the wanted pairs (residual ``<= tol * scale``) the solve converges ``num_guard``
    *guards*, the runner-ups below the top ``k_top`` (residual ``<= guard_tol * scale``,
    default ``min(10 tol, 0.1)``): in the next start vector they make sure a runner-up that
    overtakes the top eigenvalue between two calls is found, not missed. At least
    ``min_steps`` steps are taken, so that every warm direction is in the Krylov space
    before convergence is declared. The basis starts at :data:`FIRST_ROWS` rows and doubles
    up to ``krylov_dim + 1``; an early breakdown continues from a fresh random vector.

    Cost: from a random start typically 15-60 products (more for clustered ends); from a
    warm start at nearby parameters a handful. Memory ``(krylov_dim + 1)`` vectors during
    the solve, ``k_top + num_guard + k_bottom`` in the result's ``warm``.

    Returns:
      A :class:`WarmEigsResult`.
    """
    like = tree.spec_like(v_like)
    dim = tree.size(like)
    k_top = min(k_top, dim)
    num_guard = max(0, min(num_guard, dim - k_top - k_bottom))
    guard_tol = min(10 * tol, 0.1) if guard_tol is None else guard_tol
    n_top = k_top + num_guard
    m_max = min(max(krylov_dim, 2 * (n_top + k_bottom) + 4), dim)
    tols = np.array([tol] * k_top + [guard_tol] * num_guard + [tol] * k_bottom)
    space = space_for(like, basis)
    rng = np.random.default_rng(tree.key_bits(key))
    if start is None:
        v = space.draw(rng)
    else:
        rows = _rows(start)
        weights = np.ones(rows)
        weights[k_top:k_top + 1] = GUARD_WEIGHT
        v = space.combine(weights, _stored(space, start, rows))
    cap = min(m_max + 1, max(FIRST_ROWS, n_top + k_bottom + 2))
    b0, q = space.start(v, None, None, 0, cap)
    with _blas(space):
        run, used, scale = krylov_schur(
            matvec, space, b0, q, m_max=m_max, budget=num_matvecs, want=(n_top, k_bottom),
            tols=tols, min_steps=min_steps, fresh=lambda: space.draw(rng), dim=dim)
    idx = wanted(run.theta, n_top, k_bottom)
    converged = len(idx) == n_top + k_bottom and bool(
        np.all(run.res[idx] <= tols[:len(idx)] * max(scale, 1e-300)))
    vectors = space.combine(run.s[:, idx], run.basis)
    keep = list(range(k_top)) + list(range(n_top, len(idx)))
    warm = space.take_rows(vectors, list(range(len(idx))))       # stacked pytrees
    return WarmEigsResult(run.theta[idx][keep], run.res[idx][keep],
                          space.take_rows(vectors, keep), warm, used, converged, scale)


def _stored(space, start, rows):
    """A stacked pytree basis in ``space``'s own form."""
    return space.layout.flat(start, rows) if isinstance(space, HostSpace) else start
