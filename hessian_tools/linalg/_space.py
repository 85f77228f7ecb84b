"""Where Krylov vectors live, with the one Gram-Schmidt and the one Lanczos step of each place.

Two vector stores, the same algebra:

* the *device* store keeps vectors as pytrees shaped like the parameters and does its
  algebra in compiled functions, so sharded parameters stay sharded (:class:`DeviceSpace`,
  and the pure functions :func:`orthogonalize` and :func:`project_step`, which the fully
  compiled Lanczos also uses);
* the *host* store keeps vectors as one flat NumPy array (a single CPU device, where NumPy
  reads JAX's arrays without a copy, nothing is compiled, and only the filled rows of a
  basis are swept): :class:`HostSpace`, :func:`host_orthogonalize`, :func:`host_project`.
  These take a leading batch axis too (the bases of several SLQ probes at once).

A Lanczos step is one rule everywhere: ``w = A q_j`` is orthogonalised against the basis
and any locked vectors by classical Gram-Schmidt, which also gives the column
``h = V A q_j`` of the projected matrix (and so ``alpha_j = h_j``); the remainder's norm is
``beta``; the step *breaks down* (an invariant subspace was found) when
``beta <= 100 eps scale`` with ``scale`` an estimate of ``||A||`` (the largest of this
step's ``max |h| + beta`` and the caller's running estimate). The remainder's rounding is
of the size of ``||A||`` times machine epsilon whatever this step's own numbers are (a GPU's
float64 products left ``beta = 6e-16`` next to ``||A|| = 2`` where this step's
``alpha + beta`` was 0.24).

How many sweeps: the device store always sweeps twice ("CGS2"; its compiled step has fixed
shapes, and under ``vmap`` a branch would run both ways). The host store sweeps the basis
and the locked rows together, and a second time only when the first removed more than
half of ``||w||^2`` (the Daniel-Gragg-Kaufman-Stewart criterion, :data:`REFINE`): the
basis stays orthonormal to rounding (``|V V^T - I| < 1e-14`` in float64 on repeated and
crowded spectra, ``tests/linalg/test_space.py``), and a Lanczos step on a network's Hessian
needs the second sweep in 75-85% of steps (``benchmarks/RESULTS_scale.md``, part 4).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import blas

from hessian_tools import _host, tree

__all__ = ["BREAKDOWN", "orthogonalize", "project_step", "host_orthogonalize", "host_project",
           "DeviceSpace", "HostSpace", "space_for"]

BREAKDOWN = 100.0
"""A remainder of norm below ``BREAKDOWN * eps * scale`` is rounding: the step breaks down."""

REFINE = 1 / np.sqrt(2)
"""The host's second Gram-Schmidt sweep runs only when the first left less than this
fraction of the vector's norm (Daniel, Gragg, Kaufman & Stewart 1976; Kahan's "twice is
enough"): a sweep leaves ``w`` orthogonal to the basis to about ``eps ||w_before|| /
||w_after||`` relative, so when little cancelled the second sweep changes nothing."""

NORM_BLOCK = 1024
"""Squares summed in the vectors' own dtype before the float64 sum (:func:`_norm`)."""

COLUMN_BLOCK = 1 << 15
"""Columns per block of host arithmetic that would otherwise need a temporary as large as a
basis (an in-place combination of its rows): ``rows x 32768`` values."""


# ---- device: pytrees, pure and traceable --------------------------------------------------

def orthogonalize(w, *bases):
    """CGS2 of ``w`` against every row of every basis (a ``None`` basis is skipped).

    Zero rows contribute nothing, so partially filled buffers need no mask.
    """
    for _ in range(2):
        for basis in bases:
            if basis is not None:
                w = tree.sub(w, tree.basis_combine(tree.basis_dot(basis, w), basis))
    return w


def project_step(basis, locked, j, w, scale):
    """Orthogonalise ``w = A q_j`` against the basis (CGS2) and store it as row ``j + 1``.

    Returns ``(basis, q_next, h, beta)``: ``h = V w`` is column ``j`` of the projected
    matrix (``h[j]`` is Lanczos' ``alpha_j``), ``beta`` the remainder's norm and ``q_next``
    the normalised remainder; on breakdown (see the module docstring) ``q_next`` and
    ``beta`` are zero. ``locked`` (a stacked basis or ``None``) is projected out too.
    Row ``j + 1`` is clipped to the buffer, so a basis of ``m + 1`` rows takes ``m`` steps.
    """
    h = tree.basis_dot(basis, w)
    w = orthogonalize(tree.sub(w, tree.basis_combine(h, basis)), locked)
    h2 = tree.basis_dot(basis, w)
    w = orthogonalize(tree.sub(w, tree.basis_combine(h2, basis)), locked)
    h = h + h2
    beta = tree.norm(w)
    scale = jnp.maximum(jnp.max(jnp.abs(h)) + beta, scale)
    tiny = beta <= BREAKDOWN * jnp.finfo(beta.dtype).eps * scale
    q_next = tree.scale(jnp.where(tiny, 0.0, 1.0 / jnp.where(tiny, 1.0, beta)), w)
    rows = jax.tree.leaves(basis)[0].shape[0]
    basis = tree.basis_set(basis, jnp.minimum(j + 1, rows - 1), q_next)
    return basis, q_next, h, jnp.where(tiny, 0.0, beta)


# ---- host: NumPy, with optional leading batch axes ------------------------------------------

def _norm(w) -> np.ndarray:
    """Euclidean norms along the last axis: sums of :data:`NORM_BLOCK` squares in the
    vectors' dtype (one vectorised product, no copy), added in float64 (relative error about
    ``1e-9`` in float32, against ``6e-8`` for the vectors' own rounding; 4.6x faster at 1M
    float32 parameters than converting blocks to float64 first)."""
    n = w.shape[-1]
    whole = n - n % NORM_BLOCK
    body = w[..., :whole].reshape(w.shape[:-1] + (-1, NORM_BLOCK))
    tail = w[..., whole:].astype(np.float64)
    total = np.einsum("...kb,...kb->...k", body, body).astype(np.float64).sum(axis=-1)
    return np.sqrt(total + np.einsum("...n,...n->...", tail, tail))


def host_orthogonalize(w, *bases):
    """Classical Gram-Schmidt of ``w`` (``(..., n)``) against the rows of every basis
    (``(..., r, n)``; ``None`` or empty ones are skipped), with a second sweep only when the
    first one cancelled most of ``w`` (:func:`_refined`)."""
    return _refined(w, bases)[0]


def _sweep(w, bases):
    """One classical Gram-Schmidt sweep against all ``bases`` together: every coefficient is
    read first (``V w``, one BLAS product per basis), then subtracted (``w - V^T h``): two
    passes over each basis. Returns ``(w, coefficients per basis)``; ``w`` is not modified
    (it may be a JAX array's read-only buffer), the result is a new array."""
    coeffs = [_host_dot_rows(b, w) for b in bases]
    w = np.array(w)
    for c, b in zip(coeffs, bases):
        w = _subtract_combination(w, c, b)
    return w, coeffs


def _subtract_combination(w, c, basis):
    """``w - c @ basis`` in place: one BLAS ``gemv`` that reads the basis and updates ``w``
    for a single vector (15-20% faster than a product, a temporary and a subtraction at
    100k-1M float32 parameters), NumPy's product and subtraction for batches."""
    if w.ndim == 1 and basis.flags.c_contiguous:
        gemv = blas.get_blas_funcs("gemv", (basis,))
        return gemv(-1.0, basis.T, c.astype(basis.dtype, copy=False), beta=1.0, y=w,
                    overwrite_y=1)
    return np.subtract(w, _host_combine(c, basis), out=w)


def _refined(w, bases):
    """CGS against ``bases`` with the Daniel-Gragg-Kaufman-Stewart criterion: a second sweep
    only when the first removed more than ``1 - REFINE^2`` of ``||w||^2`` (for a batch, from
    any row), judged from the coefficients (``||w_1||^2 = ||w||^2 - ||h||^2``: no norm of
    the remainder is needed). Returns ``(w, coefficients per basis)``."""
    bases = [b for b in bases if b is not None and b.shape[-2]]
    if not bases:
        return w, []
    # ||w||^2 in the vectors' dtype: the threshold needs no more (a fifth of _norm's time at
    # 10k parameters)
    before = np.einsum("...n,...n->...", w, w).astype(np.float64)
    w, coeffs = _sweep(w, bases)
    removed = sum(np.einsum("...r,...r->...", c, c, dtype=np.float64) for c in coeffs)
    if np.any(removed > (1 - REFINE ** 2) * before):
        w, more = _sweep(w, bases)
        coeffs = [c + d for c, d in zip(coeffs, more)]
    return w, coeffs


def _host_dot_rows(basis, w):
    """``basis @ w`` over the last axes (``(..., r)``): a BLAS product (``np.einsum`` took 2-3x
    longer on the density's shapes, benchmarks/RESULTS.md, before and after 0.2)."""
    return np.matmul(basis, w[..., None])[..., 0]


def _host_combine(h, basis):
    """``h @ basis`` over the last axes (``(..., n)``), by BLAS."""
    return np.matmul(h[..., None, :], basis)[..., 0, :]


def host_project(basis, j, w, scale, locked=None):
    """:func:`project_step` on NumPy bases (``(..., m + 1, n)``), sweeping rows ``0..j`` only,
    with a second sweep only when needed (:func:`_refined`). Cost per step: ``2 (j + 1 +
    locked rows)`` vector reads per sweep and two norms; no float64 copy of a vector.

    Writes the normalised remainder into row ``j + 1`` of ``basis`` (in place) and returns
    ``(q_next, h, beta)`` with ``h`` of shape ``(..., j + 1)``; ``scale`` may be per batch.
    """
    w, (h, *_) = _refined(w, (basis[..., :j + 1, :], locked))
    h = h.astype(np.float64)
    beta = _norm(w)
    scale = np.maximum(np.max(np.abs(h), axis=-1) + beta, scale)
    tiny = beta <= BREAKDOWN * np.finfo(basis.dtype).eps * scale
    inv = np.where(tiny, 0.0, 1.0 / np.where(tiny, 1.0, beta))
    q_next = np.multiply(w, np.asarray(inv, basis.dtype)[..., None],
                         out=np.empty(w.shape, basis.dtype), casting="unsafe")
    if j + 1 < basis.shape[-2]:
        basis[..., j + 1, :] = q_next
    return q_next, h, np.where(tiny, 0.0, beta)


# ---- the stores, as the eigensolver uses them ------------------------------------------------
#
# Coefficients address the filled rows: an ``(m, n)`` array combines rows ``0..m-1`` of a
# basis. The device store pads them to its buffer's rows (fixed shapes: one compilation per
# buffer size) and keeps every row past the filled ones zero, since its compiled sweeps run
# over the whole buffer; the host store reads only rows ``0..m-1``, so it never clears.
# ``pin`` is the parameters' :class:`~hessian_tools.tree.Placement` (``None`` on one device):
# every vector and basis the device store makes is pinned to it, so a basis is created
# sharded and stays so.

_PIN = ("pin",)


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=_PIN)
def _project(basis, locked, j, w, scale, *, pin=None):
    basis, q, h, beta = project_step(basis, locked, j, tree.pin_vector(w, pin), scale)
    return tree.pin_basis(basis, pin), tree.pin_vector(q, pin), h, beta


def _started(basis, v, hint, locked, pin):
    v = tree.pin_vector(v, pin)
    if hint is not None:             # bias towards the next Ritz vectors, keep randomness
        v = tree.add(tree.scale(1.0 / tree.norm(v), v), hint)
    v = orthogonalize(v, locked)
    q = tree.scale(1.0 / tree.norm(v), v)
    return tree.pin_basis(tree.basis_set(basis, 0, q), pin), tree.pin_vector(q, pin)


@functools.partial(jax.jit, static_argnums=(3,), static_argnames=_PIN)
def _start_basis(v, hint, locked, rows, *, pin=None):
    return _started(_zeros(rows, v, pin), v, hint, locked, pin)


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=_PIN)
def _restart_into(buffer, v, hint, locked, *, pin=None):
    """:func:`_start_basis` in a finished run's buffer (donated, cleared): the previous
    basis is gone before the next one fills."""
    return _started(jax.tree.map(jnp.zeros_like, buffer), v, hint, locked, pin)


def _zeros(rows, like, pin):
    return tree.pin_basis(tree.zeros_basis(rows, like), pin)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=_PIN)
def _zeros_basis(rows, like, *, pin=None):
    return _zeros(rows, like, pin)


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=_PIN)
def _clear(buffer, *, pin=None):
    return tree.pin_basis(jax.tree.map(jnp.zeros_like, buffer), pin)


@functools.partial(jax.jit, static_argnames=_PIN)
def _take_rows(basis, idx, *, pin=None):
    return tree.pin_basis(jax.tree.map(lambda a: a[idx], basis), pin)


@functools.partial(jax.jit, static_argnames=_PIN)
def _combine(coeffs, basis, *, pin=None):
    out = tree.basis_combine(coeffs, basis)
    return tree.pin_vector(out, pin) if coeffs.ndim == 1 else tree.pin_basis(out, pin)


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=_PIN)
def _combine_into(buffer, coeffs, basis, start, *, pin=None):
    """Rows ``start..start+n-1`` of ``buffer`` (donated) become ``V^T C``."""
    rows = tree.basis_combine(coeffs, basis)
    return tree.pin_basis(jax.tree.map(
        lambda b, r: jax.lax.dynamic_update_slice_in_dim(b, r.astype(b.dtype), start, 0),
        buffer, rows), pin)


def _restarted(basis, coeffs):
    """Rows ``0..l-1``: ``V^T S`` (the kept Ritz vectors, or their products); rest zero."""
    kept = tree.basis_combine(coeffs, basis)
    n = coeffs.shape[1]
    return jax.tree.map(lambda b, r: jnp.zeros_like(b).at[:n].set(r.astype(b.dtype)), basis,
                        kept)


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=_PIN)
def _restart_rows(basis, coeffs, *, pin=None):
    return tree.pin_basis(_restarted(basis, coeffs), pin)


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=_PIN)
def _restart_basis(basis, coeffs, q_next, *, pin=None):
    """Rows ``0..l-1``: the kept Ritz vectors ``V^T S``; row ``l``: ``q_next``; rest zero."""
    return tree.pin_basis(tree.basis_set(_restarted(basis, coeffs), coeffs.shape[1], q_next),
                          pin)


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=_PIN)
def _set_row(buffer, j, w, *, pin=None):
    return tree.pin_basis(tree.basis_set(buffer, j, tree.pin_vector(w, pin)), pin)


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=_PIN)
def _fill_row(basis, locked, j, z, *, pin=None):
    """Store ``z``, orthonormalised against the basis and the locked rows, as row ``j``."""
    z = orthogonalize(tree.pin_vector(z, pin), basis, locked)
    z = tree.scale(1.0 / tree.norm(z), z)
    return tree.pin_basis(tree.basis_set(basis, j, z), pin), tree.pin_vector(z, pin)


@functools.partial(jax.jit, static_argnums=(1,), static_argnames=_PIN)
def _grow(basis, rows, *, pin=None):
    return tree.pin_basis(jax.tree.map(
        lambda b: jnp.pad(b, [(0, rows - b.shape[0])] + [(0, 0)] * (b.ndim - 1)), basis), pin)


class DeviceSpace:
    """Vectors as pytrees, algebra in compiled functions (zero rows cost a sweep, no mask).

    Every method takes and returns bases in this store's form; :meth:`vector` is what the
    operator receives and :meth:`from_product` what it returns. With sharded parameters
    every buffer is created with their sharding and every output is pinned to it
    (:class:`~hessian_tools.tree.Placement`).
    """

    def __init__(self, like):
        self.like = tree.spec_like(like)
        self.pin = tree.Placement.of(self.like)
        self._real = jnp.finfo(jnp.result_type(*jax.tree.leaves(self.like))).dtype
        self.vector_bytes = tree.local_bytes(self.like)

    def vector(self, q):
        return q

    def from_product(self, w):
        return w

    def zeros(self, rows):
        return _zeros_basis(rows, self.like, pin=self.pin)

    def recycle(self, buffer):
        """A finished run's buffer, cleared for the next run (in place: donated)."""
        return _clear(buffer, pin=self.pin)

    def draw(self, rng):
        """A standard normal vector from a NumPy generator (nothing compiled); with sharded
        parameters each device receives only its block of the host draw."""
        if self.pin is None:
            return _host.host_normal_like(rng, self.like)
        return self.pin.put(_host.host_normal_leaves(rng, jax.tree.leaves(self.like)))

    def start(self, v, hint, locked, num_locked, rows, reuse=None):
        if reuse is not None and _rows(reuse) == rows:
            return _restart_into(reuse, v, hint, locked, pin=self.pin)
        return _start_basis(v, hint, locked, rows, pin=self.pin)

    def project(self, basis, locked, num_locked, j, w, scale):
        return _project(basis, locked, np.int32(j), w, float(scale), pin=self.pin)

    def fill_row(self, basis, locked, num_locked, j, z):
        return _fill_row(basis, locked, np.int32(j), z, pin=self.pin)

    def grow(self, basis, rows):
        return _grow(basis, rows, pin=self.pin)

    def restart(self, basis, coeffs, q_next):
        return _restart_basis(basis, self._padded(coeffs, basis), q_next, pin=self.pin)

    def restart_rows(self, buffer, coeffs):
        return _restart_rows(buffer, self._padded(coeffs, buffer), pin=self.pin)

    def set_row(self, buffer, j, w):
        return _set_row(buffer, np.int32(j), w, pin=self.pin)

    def combine(self, coeffs, basis):
        return _combine(self._padded(coeffs, basis), basis, pin=self.pin)

    def combine_into(self, buffer, start, coeffs, basis):
        return _combine_into(buffer, self._padded(coeffs, basis), basis, np.int32(start),
                             pin=self.pin)

    def take_rows(self, buffer, idx):
        return _take_rows(buffer, jnp.asarray(np.array(idx, dtype=np.int32)), pin=self.pin)

    def _padded(self, coeffs, basis):
        """Coefficients of the filled rows, zero-padded to the buffer's rows."""
        coeffs = np.asarray(coeffs, self._real)
        pad = [(0, _rows(basis) - len(coeffs))] + [(0, 0)] * (coeffs.ndim - 1)
        return jnp.asarray(np.pad(coeffs, pad))


class HostSpace:
    """Vectors as one flat NumPy array (a single dtype), algebra by NumPy's BLAS.

    Only the filled rows of a basis are swept, and only they are read: rows past them may
    hold a previous run's vectors. Restarts and locking combine rows in place, a block of
    columns at a time. The operator gets the vector back as a pytree of ``jax.Array``
    leaves.
    """

    def __init__(self, like):
        self.layout = _host.FlatLayout(like)
        self.dtype = self.layout.dtype
        self.vector_bytes = self.layout.dim * self.dtype.itemsize

    def vector(self, q):
        return self.layout.tree(q)

    def from_product(self, w):
        return self.layout.flat(w)

    def zeros(self, rows):
        return np.zeros((rows, self.layout.dim), self.dtype)

    def recycle(self, buffer):
        return buffer

    def draw(self, rng):
        return _host.host_normal_flat(rng, self.layout.shapes, self.dtype)

    def start(self, v, hint, locked, num_locked, rows, reuse=None):
        if hint is not None:
            v = v / _norm(v) + hint
        v = host_orthogonalize(v, _filled(locked, num_locked))
        basis = reuse if reuse is not None and len(reuse) == rows else self.zeros(rows)
        return basis, _store(basis, 0, v)

    def project(self, basis, locked, num_locked, j, w, scale):
        q_next, h, beta = host_project(basis, j, np.asarray(w, self.dtype), scale,
                                       _filled(locked, num_locked))
        return basis, q_next, h, float(beta)

    def fill_row(self, basis, locked, num_locked, j, z):
        z = host_orthogonalize(z, basis[:j], _filled(locked, num_locked))
        return basis, _store(basis, j, z)

    def grow(self, basis, rows):
        return np.concatenate([basis, np.zeros((rows - len(basis), basis.shape[1]),
                                               basis.dtype)])

    def restart(self, basis, coeffs, q_next):
        basis = self.restart_rows(basis, coeffs)
        basis[coeffs.shape[1]] = q_next
        return basis

    def restart_rows(self, buffer, coeffs):
        return self.combine_into(buffer, 0, coeffs, buffer)

    def set_row(self, buffer, j, w):
        buffer[j] = w
        return buffer

    def combine(self, coeffs, basis):
        coeffs = np.asarray(coeffs, self.dtype)
        return coeffs.T @ basis[:len(coeffs)]

    def combine_into(self, buffer, start, coeffs, basis):
        """Rows ``start..start+n-1`` of ``buffer`` become ``V^T C``, a block of columns at a
        time; ``basis`` may be ``buffer`` itself (a restart in place)."""
        coeffs = np.asarray(coeffs, self.dtype)
        c, m = coeffs.T, len(coeffs)
        for lo in range(0, buffer.shape[1], COLUMN_BLOCK):
            cols = slice(lo, lo + COLUMN_BLOCK)
            buffer[start:start + c.shape[0], cols] = c @ basis[:m, cols]
        return buffer

    def take_rows(self, buffer, idx):
        return self.layout.tree(buffer[np.array(idx, dtype=int)], once=True)


def _store(basis, j, v):
    """Row ``j`` of ``basis`` becomes ``v`` normalised (float64 arithmetic, no float64
    copy of the vector); returns a copy of it. The operator gets copies, never views of a
    basis row: JAX may read a NumPy array without copying it, and rows are overwritten."""
    np.multiply(v, 1.0 / _norm(v), out=basis[j], casting="unsafe")
    return basis[j].copy()


def _rows(basis) -> int:
    return jax.tree.leaves(basis)[0].shape[0]


def _filled(locked, num):
    return None if locked is None else locked[:num]


def space_for(like, where: str = "auto"):
    """The store for vectors shaped like ``like``: ``"host"``, ``"device"`` or ``"auto"``
    (host on a single CPU device with one parameter dtype, see
    :func:`hessian_tools._host.host_algebra`)."""
    if where not in ("auto", "host", "device"):
        raise ValueError(f"basis={where!r} is not one of 'auto', 'host', 'device'.")
    if where == "host" or (where == "auto" and _host.host_algebra(like)):
        return HostSpace(like)
    return DeviceSpace(like)
