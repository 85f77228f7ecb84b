"""Saddle-free Newton (Dauphin et al. 2014) as an optax ``GradientTransformation``.

Newton's method rescales each eigen-direction of the Hessian by ``1/lambda``; at a saddle
this flips the sign of the step along negative-curvature directions, so Newton is
*attracted* to saddles. Gradient descent moves the right way but slowly: near a saddle
the gradient is small. Saddle-free Newton rescales by ``1/|lambda|``: Newton's speed along
every direction, always downhill.

In ``n`` dimensions ``|H|`` is out of reach, so the step is taken in a ``k``-dimensional
Krylov subspace: ``k`` Lanczos steps on the Hessian at the current parameters give an
orthonormal basis ``Q`` (``k x n``) and the projection ``T = Q H Q^T`` (tridiagonal); with
``T = S diag(theta) S^T``, the update is::

    u = -lr * ( Q^T S (|diag(theta)| + damping I)^-1 S^T Q g  +  lr_c * (g - Q^T Q g) )

the saddle-free Newton step in the subspace plus plain gradient descent in its orthogonal
complement, with ``lr_c = 1 / (max|theta| + damping)`` by default: the largest stable
gradient step for the curvature seen, so the two parts share units.

The start vector (``krylov_start``) decides the subspace:

* ``"gradient"`` (default): ``Q`` spans the Krylov space ``K_k(H, g)``, which contains
  ``g``; the complement part then vanishes and the step is the Lanczos (Krylov)
  approximation of ``-(|H| + damping I)^-1 g`` (as in Krylov subspace descent, Vinyals &
  Povey 2012). Deterministic, no key.
* ``"random"``: a fresh Gaussian start each step (from ``key``): ``Q`` approximates the
  extreme eigenvectors of ``H`` at both ends, whatever the gradient; ``g``'s component
  outside them gets the gradient step.

Cost per step: ``k`` Hessian-vector products (the gradient is linearised once:
``jax.linearize``), ``O(k^2 n)`` flops for full reorthogonalisation, memory ``(k + 1) x n``.
The whole update is pure and runs under ``jit``.

References: Dauphin, Pascanu, Gulcehre, Cho, Ganguli & Bengio 2014, "Identifying and
attacking the saddle point problem in high-dimensional non-convex optimization", sec. 6-7;
Vinyals & Povey 2012, "Krylov subspace descent for deep learning".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hessian_tools import tree
from hessian_tools.linalg.lanczos import lanczos_tridiag, ritz_pairs

__all__ = ["SaddleFreeNewtonState", "saddle_free_newton", "saddle_free_direction"]


class SaddleFreeNewtonState(NamedTuple):
    """Optimizer state.

    Attributes:
      count: steps taken (int32 scalar).
      num_matvecs: Hessian-vector products spent so far (int32 scalar).
      ritz_values: ``(k,)`` Ritz values of the last step's subspace, ascending: their
        minimum is a (Lanczos) estimate of the most negative curvature seen.
      key: the PRNG key for ``krylov_start="random"`` (``None`` otherwise).
    """

    count: jax.Array
    num_matvecs: jax.Array
    ritz_values: jax.Array
    key: Any = None


def _start_vector(g, gnorm):
    """``g`` itself, or the all-ones vector when ``g == 0`` (the step is then zero anyway)."""
    return jax.tree.map(lambda a: jnp.where(gnorm > 0, a, jnp.ones_like(a)), g)


def saddle_free_direction(hvp: Callable, g, v0, *, num_steps: int, damping: float,
                          complement_learning_rate: float | None = None):
    """The saddle-free Newton direction ``(|H_k| + damping)^-1 g`` (+ complement gradient).

    Pure and jittable. ``hvp`` is ``v -> H v`` on pytrees shaped like ``g``; ``v0`` the
    Lanczos start vector. Returns ``(direction, ritz_values)``: subtract
    ``learning_rate * direction`` from the parameters. ``num_steps`` HVPs.
    """
    dec = lanczos_tridiag(hvp, v0, num_steps=num_steps)
    basis = jax.tree.map(lambda b: b[:num_steps], dec.basis)
    theta, s, _, _ = ritz_pairs(dec)
    coeffs = tree.basis_dot(basis, g)                         # Q g, (k,)
    scaled = jnp.abs(theta) + damping
    inv = 1.0 / jnp.maximum(scaled, jnp.finfo(theta.dtype).tiny)
    hi = jax.lax.Precision.HIGHEST
    inside = tree.basis_combine(jnp.matmul(s, inv * jnp.matmul(s.T, coeffs, precision=hi),
                                           precision=hi), basis)
    outside = tree.sub(g, tree.basis_combine(coeffs, basis))  # g - Q^T Q g
    lr_c = (1.0 / jnp.maximum(jnp.max(scaled), jnp.finfo(theta.dtype).tiny)
            if complement_learning_rate is None else complement_learning_rate)
    return tree.axpy(lr_c, outside, inside), theta


def _validate(num_steps, damping, learning_rate, complement_learning_rate, krylov_start, key):
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) \
            or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be a positive integer (typically "
                         "5-50: the number of HVPs per step).")
    if not (np.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping={damping!r} must be a finite number >= 0 (> 0 recommended: "
                         "it bounds the step along near-zero curvature).")
    if not callable(learning_rate) and not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate={learning_rate!r} must be positive (or an optax "
                         "schedule).")
    if complement_learning_rate is not None and not complement_learning_rate >= 0:
        raise ValueError(f"complement_learning_rate={complement_learning_rate!r} must be >= 0 "
                         "or None (then 1 / (max|theta| + damping)).")
    if krylov_start not in ("gradient", "random"):
        raise ValueError(f"krylov_start={krylov_start!r} is not 'gradient' or 'random'.")
    if krylov_start == "random" and key is None:
        raise ValueError("krylov_start='random' needs a PRNG key: pass key=jax.random.key(0).")


def saddle_free_newton(loss: Callable, *, learning_rate: float | Callable = 1.0,
                       num_steps: int = 10, damping: float = 1e-3,
                       complement_learning_rate: float | None = None,
                       krylov_start: str = "gradient",
                       key=None) -> optax.GradientTransformationExtraArgs:
    """Saddle-free Newton: ``-(|H_k| + damping I)^-1 g`` in a Lanczos subspace of the Hessian.

    See the module docstring for the maths. Use it like any optax optimizer; it needs the
    parameters (``update(grads, state, params)``) because it differentiates ``loss`` at
    them, and the batch when the loss takes one::

        opt = ht.saddle_free_newton(loss, learning_rate=1.0, num_steps=10, damping=1e-2)
        state = opt.init(params)
        grads = jax.grad(loss)(params, batch)
        updates, state = opt.update(grads, state, params, batch=batch)
        params = optax.apply_updates(params, updates)

    Args:
      loss: ``loss(params)`` or ``loss(params, batch)`` (then pass ``batch=`` to
        ``update``): the scalar loss whose Hessian is used.
      learning_rate: scales the whole step (a float or an optax schedule of the step count);
        1.0 is a full saddle-free Newton step.
      num_steps: ``k``, the subspace dimension = HVPs per step (capped at the number of
        parameters).
      damping: added to ``|theta|``: limits steps along near-flat directions
        (Levenberg-Marquardt style).
      complement_learning_rate: gradient step size in the complement of the subspace
        (default ``1 / (max|theta| + damping)``).
      krylov_start: ``"gradient"`` (subspace ``K_k(H, g)``) or ``"random"`` (needs ``key``).
      key: a ``jax.random`` key, for ``krylov_start="random"``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is a
      :class:`SaddleFreeNewtonState`.

    Raises:
      ValueError: a bad option (at construction), or ``update`` called without params.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, hessian_tools as ht
      >>> loss = lambda p: p["x"] ** 2 - p["y"] ** 2 + p["y"] ** 4
      >>> params = {"x": jnp.array(0.5), "y": jnp.array(1e-3)}
      >>> opt = ht.saddle_free_newton(loss, num_steps=2, damping=0.0)
      >>> state = opt.init(params)
      >>> for _ in range(20):
      ...     updates, state = opt.update(jax.grad(loss)(params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> round(float(params["x"]), 6), round(abs(float(params["y"])), 4)
      (0.0, 0.7071)
    """
    _validate(num_steps, damping, learning_rate, complement_learning_rate, krylov_start, key)
    schedule = learning_rate if callable(learning_rate) else (lambda count: learning_rate)

    def init_fn(params):
        dtype = jnp.result_type(*jax.tree.leaves(params))
        k = min(num_steps, tree.size(params))
        return SaddleFreeNewtonState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                                     jnp.zeros((k,), jnp.finfo(dtype).dtype),
                                     key if krylov_start == "random" else None)

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("saddle_free_newton differentiates the loss at the current "
                             "parameters: call opt.update(grads, state, params).")
        batch = extra_args.get("batch")
        fn = loss if batch is None else (lambda p: loss(p, batch))
        try:
            hvp = jax.linearize(jax.grad(fn), params)[1]
        except TypeError as err:
            raise TypeError(f"saddle_free_newton could not evaluate loss at the params "
                            f"({err}). A loss(params, batch) needs the batch: call "
                            "opt.update(grads, state, params, batch=batch).") from err
        key, v0 = state.key, _start_vector(updates, tree.norm(updates))
        if krylov_start == "random":
            key, sub = jax.random.split(state.key)
            v0 = tree.normal_like(sub, updates)
        k = min(num_steps, tree.size(params))
        direction, theta = saddle_free_direction(
            hvp, updates, v0, num_steps=k, damping=damping,
            complement_learning_rate=complement_learning_rate)
        step = tree.scale(-schedule(state.count), direction)
        return step, SaddleFreeNewtonState(state.count + 1, state.num_matvecs + k,
                                           theta.astype(state.ritz_values.dtype), key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
