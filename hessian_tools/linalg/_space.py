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

A Lanczos step is one rule everywhere: ``w = A q_j`` is orthogonalised twice against the
basis (classical Gram-Schmidt twice, "CGS2", which also gives the column ``h = V A q_j`` of
the projected matrix, and so ``alpha_j = h_j``) and against any locked vectors; the
remainder's norm is ``beta``; the step *breaks down* (an invariant subspace was found) when
``beta <= 100 eps scale`` with ``scale`` an estimate of ``||A||`` (the largest of this
step's ``max |h| + beta`` and the caller's running estimate). The remainder's rounding is
of the size of ``||A||`` times machine epsilon whatever this step's own numbers are (a GPU's
float64 products left ``beta = 6e-16`` next to ``||A|| = 2`` where this step's
``alpha + beta`` was 0.24).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import _host, tree

__all__ = ["BREAKDOWN", "orthogonalize", "project_step", "host_orthogonalize", "host_project",
           "DeviceSpace", "HostSpace", "space_for"]

BREAKDOWN = 100.0
"""A remainder of norm below ``BREAKDOWN * eps * scale`` is rounding: the step breaks down."""


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
    w64 = w.astype(np.float64)
    return np.sqrt(np.einsum("...n,...n->...", w64, w64))


def host_orthogonalize(w, basis):
    """CGS2 of ``w`` (``(..., n)``) against the rows of ``basis`` (``(..., r, n)``)."""
    if basis is None or basis.shape[-2] == 0:
        return w
    for _ in range(2):
        w = w - np.einsum("...r,...rn->...n", np.einsum("...rn,...n->...r", basis, w), basis)
    return w


def host_project(basis, j, w, scale, locked=None):
    """:func:`project_step` on NumPy bases (``(..., m + 1, n)``), sweeping rows ``0..j`` only.

    Writes the normalised remainder into row ``j + 1`` of ``basis`` (in place) and returns
    ``(q_next, h, beta)`` with ``h`` of shape ``(..., j + 1)``; ``scale`` may be per batch.
    """
    filled = basis[..., :j + 1, :]
    h = np.einsum("...rn,...n->...r", filled, w)
    w = host_orthogonalize(w - np.einsum("...r,...rn->...n", h, filled), locked)
    h2 = np.einsum("...rn,...n->...r", filled, w)
    w = host_orthogonalize(w - np.einsum("...r,...rn->...n", h2, filled), locked)
    h = (h + h2).astype(np.float64)
    beta = _norm(w)
    scale = np.maximum(np.max(np.abs(h), axis=-1) + beta, scale)
    tiny = beta <= BREAKDOWN * np.finfo(basis.dtype).eps * scale
    inv = np.where(tiny, 0.0, 1.0 / np.where(tiny, 1.0, beta))
    q_next = (w * np.asarray(inv)[..., None]).astype(basis.dtype)
    if j + 1 < basis.shape[-2]:
        basis[..., j + 1, :] = q_next
    return q_next, h, np.where(tiny, 0.0, beta)


# ---- the stores, as the eigensolver uses them ------------------------------------------------

@functools.partial(jax.jit, donate_argnums=(0,))
def _project(basis, locked, j, w, scale):
    return project_step(basis, locked, j, w, scale)


@functools.partial(jax.jit, static_argnums=(3,))
def _start_basis(v, hint, locked, rows):
    if hint is not None:             # bias towards the next Ritz vectors, keep randomness
        v = tree.add(tree.scale(1.0 / tree.norm(v), v), hint)
    v = orthogonalize(v, locked)
    q = tree.scale(1.0 / tree.norm(v), v)
    return tree.basis_set(tree.zeros_basis(rows, q), 0, q), q


@functools.partial(jax.jit, static_argnums=(0,))
def _zeros_basis(rows, like):
    return tree.zeros_basis(rows, like)


@jax.jit
def _take_rows(basis, idx):
    return jax.tree.map(lambda a: a[idx], basis)


@jax.jit
def _combine(coeffs, basis):
    return tree.basis_combine(coeffs, basis)


@functools.partial(jax.jit, donate_argnums=(0,))
def _set_rows(buffer, rows, start):
    return jax.tree.map(lambda b, r: jax.lax.dynamic_update_slice_in_dim(b, r.astype(b.dtype),
                                                                         start, 0), buffer, rows)


@jax.jit
def _restart_rows(basis, coeffs):
    """Rows ``0..l-1``: ``V^T S`` (the kept Ritz vectors, or their products); rest zero."""
    kept = tree.basis_combine(coeffs, basis)
    n = coeffs.shape[1]
    return jax.tree.map(lambda b, r: jnp.zeros_like(b).at[:n].set(r.astype(b.dtype)), basis,
                        kept)


@jax.jit
def _restart_basis(basis, coeffs, q_next):
    """Rows ``0..l-1``: the kept Ritz vectors ``V^T S``; row ``l``: ``q_next``; rest zero."""
    return tree.basis_set(_restart_rows(basis, coeffs), coeffs.shape[1], q_next)


@functools.partial(jax.jit, donate_argnums=(0,))
def _set_row(buffer, j, w):
    return tree.basis_set(buffer, j, w)


@functools.partial(jax.jit, donate_argnums=(0,))
def _fill_row(basis, locked, j, z):
    """Store ``z``, orthonormalised against the basis and the locked rows, as row ``j``."""
    z = orthogonalize(z, basis, locked)
    z = tree.scale(1.0 / tree.norm(z), z)
    return tree.basis_set(basis, j, z), z


@functools.partial(jax.jit, static_argnums=(1,))
def _grow(basis, rows):
    return jax.tree.map(lambda b: jnp.pad(b, [(0, rows - b.shape[0])] + [(0, 0)] * (b.ndim - 1)),
                        basis)


class DeviceSpace:
    """Vectors as pytrees, algebra in compiled functions (zero rows cost a sweep, no mask).

    Every method takes and returns bases in this store's form; :meth:`vector` is what the
    operator receives and :meth:`from_product` what it returns.
    """

    def __init__(self, like):
        self.like = like

    def vector(self, q):
        return q

    def from_product(self, w):
        return w

    def zeros(self, rows):
        return _zeros_basis(rows, self.like)

    def draw(self, rng):
        """A standard normal vector from a NumPy generator (nothing compiled)."""
        return _host.host_normal_like(rng, self.like)

    def start(self, v, hint, locked, num_locked, rows):
        return _start_basis(v, hint, locked, rows)

    def project(self, basis, locked, num_locked, j, w, scale):
        return _project(basis, locked, np.int32(j), w, float(scale))

    def fill_row(self, basis, locked, num_locked, j, z):
        return _fill_row(basis, locked, np.int32(j), z)

    def grow(self, basis, rows):
        return _grow(basis, rows)

    def restart(self, basis, coeffs, q_next):
        return _restart_basis(basis, jnp.asarray(coeffs, self._real(basis)), q_next)

    def restart_rows(self, buffer, coeffs):
        return _restart_rows(buffer, jnp.asarray(coeffs, self._real(buffer)))

    def set_row(self, buffer, j, w):
        return _set_row(buffer, j, w)

    def combine(self, coeffs, basis):
        return _combine(jnp.asarray(coeffs, self._real(basis)), basis)

    def set_rows(self, buffer, rows, start):
        return _set_rows(buffer, rows, start)

    def take_rows(self, buffer, idx):
        return _take_rows(buffer, jnp.asarray(np.array(idx, dtype=np.int32)))

    @staticmethod
    def _real(basis):
        return jnp.finfo(jnp.result_type(*jax.tree.leaves(basis))).dtype


class HostSpace:
    """Vectors as one flat NumPy array (a single dtype), algebra by NumPy's BLAS.

    Only the filled rows of a basis are swept. The operator gets the vector back as a pytree
    of ``jax.Array`` leaves.
    """

    def __init__(self, like):
        self.layout = _host.FlatLayout(like)
        self.dtype = self.layout.dtype

    def vector(self, q):
        return self.layout.tree(q)

    def from_product(self, w):
        return self.layout.flat(w)

    def zeros(self, rows):
        return np.zeros((rows, self.layout.dim), self.dtype)

    def draw(self, rng):
        return _host.host_normal_flat(rng, self.layout.shapes, self.dtype)

    def start(self, v, hint, locked, num_locked, rows):
        if hint is not None:
            v = v / _norm(v) + hint
        v = host_orthogonalize(v, _filled(locked, num_locked))
        q = (v / _norm(v)).astype(self.dtype)
        basis = self.zeros(rows)
        basis[0] = q
        return basis, q

    def project(self, basis, locked, num_locked, j, w, scale):
        q_next, h, beta = host_project(basis, j, np.asarray(w, self.dtype), scale,
                                       _filled(locked, num_locked))
        return basis, q_next, h, float(beta)

    def fill_row(self, basis, locked, num_locked, j, z):
        z = host_orthogonalize(host_orthogonalize(z, basis[:j]), _filled(locked, num_locked))
        z = (z / _norm(z)).astype(self.dtype)
        basis[j] = z
        return basis, z

    def grow(self, basis, rows):
        return np.concatenate([basis, np.zeros((rows - len(basis), basis.shape[1]),
                                               basis.dtype)])

    def restart(self, basis, coeffs, q_next):
        basis = self.restart_rows(basis, coeffs)
        basis[coeffs.shape[1]] = q_next
        return basis

    def restart_rows(self, buffer, coeffs):
        kept = self.combine(coeffs, buffer)
        buffer[:] = 0
        buffer[:len(kept)] = kept
        return buffer

    def set_row(self, buffer, j, w):
        buffer[j] = w
        return buffer

    def combine(self, coeffs, basis):
        return np.asarray(coeffs).T.astype(self.dtype) @ basis

    def set_rows(self, buffer, rows, start):
        buffer[start:start + len(rows)] = rows
        return buffer

    def take_rows(self, buffer, idx):
        return self.layout.tree(buffer[np.array(idx, dtype=int)])


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
