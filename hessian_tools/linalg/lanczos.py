"""Lanczos tridiagonalisation with full reorthogonalisation, as a pure function of a matvec.

:func:`lanczos_tridiag` runs ``num_steps`` steps inside one ``lax.fori_loop``: pure,
jittable and vmappable over start vectors (used by stochastic Lanczos quadrature and the
optax sharpness monitor). Its step is the one Lanczos step of
:mod:`hessian_tools.linalg._space`. :func:`ritz_pairs` turns a decomposition into Ritz
values and vectors (matfree's ``eigh_partial(tridiag_sym(k))``). The restarted eigensolvers
are in :mod:`hessian_tools.linalg.eigsolve`.

References: Golub & Van Loan, *Matrix Computations* (4th ed.), 10.1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from hessian_tools import tree
from hessian_tools.linalg._space import project_step

__all__ = ["LanczosDecomposition", "RitzPairs", "lanczos_tridiag", "ritz_pairs"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LanczosDecomposition:
    """``A Q^T = Q^T T + beta_m q_m e_m^T`` from ``m`` Lanczos steps.

    Attributes:
      alphas: ``(m,)`` diagonal of ``T``.
      betas: ``(m,)`` with ``betas[i]`` the entry ``T[i, i+1]``; ``betas[m-1]`` is the
        residual norm ``beta_m`` (zero on breakdown: an invariant subspace was found).
      basis: stacked basis ``Q`` of ``m + 1`` rows shaped like ``v0`` (the last row is
        ``q_m``); ``None`` when not kept.
    """

    alphas: jax.Array
    betas: jax.Array
    basis: Any

    def tridiagonal(self) -> jax.Array:
        """The ``(m, m)`` symmetric tridiagonal matrix ``T``."""
        off = self.betas[:-1]
        return jnp.diag(self.alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)


def lanczos_tridiag(matvec: Callable, v0, *, num_steps: int, keep_basis: bool = True,
                    unroll: int | bool = 1) -> LanczosDecomposition:
    """``num_steps`` steps of Lanczos with full reorthogonalisation, in one compiled loop.

    Pure and traceable: call it under ``jit`` and ``vmap`` (e.g. over SLQ probe vectors).
    The start vector is normalised internally. In exact arithmetic the eigenvalues of ``T``
    (Ritz values) interlace the spectrum, and the extreme ones converge first.

    Args:
      matvec: ``v -> A v`` for symmetric ``A``, on pytrees shaped like ``v0``.
      v0: the start vector (any pytree; non-zero).
      num_steps: ``m``, the number of steps (matvecs); at most the dimension.
      keep_basis: return the basis (memory ``(m + 1) x dim``; it is built either way).
      unroll: passed to ``lax.fori_loop`` (``True`` unrolls fully; measure per model).

    Returns:
      A :class:`LanczosDecomposition`. Cost: ``m`` matvecs, ``O(m^2 dim)`` flops for the
      reorthogonalisation, memory ``(m + 1) x dim``.
    """
    dim = tree.size(v0)
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be a positive integer (Lanczos steps).")
    if num_steps > dim:
        raise ValueError(f"num_steps={num_steps} exceeds the dimension {dim}: after {dim} steps "
                         f"the Krylov space is the whole space. Pass num_steps <= {dim}.")
    norm0 = tree.norm(v0)
    q0 = tree.scale(1.0 / norm0, v0)
    basis = tree.basis_set(tree.zeros_basis(num_steps + 1, v0), 0, q0)
    dtype = jnp.result_type(*jax.tree.leaves(v0))
    real = jnp.finfo(dtype).dtype

    def body(j, state):
        basis, q, alphas, betas = state
        scale = jnp.max(jnp.abs(alphas)) + 2 * jnp.max(betas)   # >= ||T_j|| (Gershgorin)
        basis, q_next, h, beta = project_step(basis, None, j, matvec(q), scale)
        return basis, q_next, alphas.at[j].set(h[j]), betas.at[j].set(beta)

    init = (basis, q0, jnp.zeros(num_steps, real), jnp.zeros(num_steps, real))
    basis, _, alphas, betas = jax.lax.fori_loop(0, num_steps, body, init, unroll=unroll)
    return LanczosDecomposition(alphas, betas, basis if keep_basis else None)


class RitzPairs(NamedTuple):
    """Ritz pairs of a Lanczos decomposition, ascending.

    Attributes:
      values: ``(m,)`` Ritz values.
      coeffs: ``(m, m)`` eigenvectors of ``T`` (columns): Ritz vector ``i`` is
        ``Q^T coeffs[:, i]``.
      residuals: ``(m,)`` residual estimates ``|beta_m coeffs[m-1, i]|``: Ritz value ``i``
        lies within this of an eigenvalue of ``A``.
      weights: ``(m,)`` squared first components ``coeffs[0, i]^2``: the Gauss quadrature
        weights of the start vector's spectral measure.
    """

    values: jax.Array
    coeffs: jax.Array
    residuals: jax.Array
    weights: jax.Array

    def vector(self, decomp: LanczosDecomposition, i):
        """Ritz vector ``i`` (needs the decomposition's basis)."""
        coeffs = jnp.concatenate([self.coeffs[:, i], jnp.zeros((1,), self.coeffs.dtype)])
        return tree.basis_combine(coeffs, decomp.basis)


def ritz_pairs(decomp: LanczosDecomposition) -> RitzPairs:
    """Eigen-decompose the tridiagonal matrix: Ritz values, their coefficients, residual
    estimates and quadrature weights. Pure and jittable; cost ``O(m^3)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> a = jnp.diag(jnp.array([3.0, 1.0, -2.0]))
      >>> pairs = ritz_pairs(lanczos_tridiag(lambda x: a @ x, jnp.ones(3), num_steps=3))
      >>> [round(float(x), 6) for x in pairs.values]
      [-2.0, 1.0, 3.0]
    """
    theta, s = jnp.linalg.eigh(decomp.tridiagonal())
    return RitzPairs(theta, s, jnp.abs(decomp.betas[-1] * s[-1]), s[0] ** 2)
