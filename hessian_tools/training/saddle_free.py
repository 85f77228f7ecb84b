"""Saddle-free Newton (Dauphin et al. 2014) and damped Newton as optax ``GradientTransformation``s.

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

Damped Newton, the baseline Dauphin et al. compare against, takes the same Krylov step with
``theta + damping`` in place of ``|theta| + damping``: ``-(H_k + damping I)^-1 g``. Along a
negative-curvature direction (``theta < -damping``) it steps *up* the gradient, towards the
saddle, which is why it is attracted to saddles.

**The safeguard.** A full step can overshoot: with a small damping, a direction of
near-zero curvature gets a step ``g_i / damping`` long (with the default damping 1e-3, an
autoencoder escaped its saddle and then diverged to losses of 1e2-1e5). By default
(``safeguard="armijo"``) each step is shortened by backtracking until the loss decreases
enough: the largest ``t`` in ``1, 1/2, ..., 2^-max_backtracks`` with a finite
``L(x + t u) <= L(x) + c1 t min(g.u, 0)`` (Armijo 1966; ``u`` the full step, ``g`` the
gradient passed to ``update``), else no step. The loss never increases (on the batch the
update sees). The saddle-free step is always a descent direction (``g.u < 0``), so the
line search always succeeds for some ``t > 0`` unless ``g = 0``.

Cost per step: ``k`` Hessian-vector products (the gradient is linearised once:
``jax.linearize``), ``O(k^2 n)`` flops for full reorthogonalisation, memory ``(k + 1) x n``;
the safeguard adds one loss evaluation per trial step (one when the full step is taken)
plus one at the current parameters unless ``value=`` is passed to ``update``. The whole
update is pure and runs under ``jit``.

References: Dauphin, Pascanu, Gulcehre, Cho, Ganguli & Bengio 2014, "Identifying and
attacking the saddle point problem in high-dimensional non-convex optimization", sec. 6-7;
Vinyals & Povey 2012, "Krylov subspace descent for deep learning"; Nocedal & Wright,
*Numerical Optimization* (2nd ed.), 3.1 (backtracking).
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

__all__ = ["SaddleFreeNewtonState", "saddle_free_newton", "saddle_free_direction",
           "damped_newton", "damped_newton_direction", "SAFEGUARDS"]

SAFEGUARDS = ("armijo", None)
"""``"armijo"``: backtracking on the loss (the step never increases it); ``None``: the full
step (the original transforms)."""


class SaddleFreeNewtonState(NamedTuple):
    """Optimizer state (of :func:`saddle_free_newton` and :func:`damped_newton`).

    Attributes:
      count: steps taken (int32 scalar).
      num_matvecs: Hessian-vector products spent so far (int32 scalar).
      ritz_values: ``(k,)`` Ritz values of the last step's subspace, ascending: their
        minimum is a (Lanczos) estimate of the most negative curvature seen.
      key: the PRNG key for ``krylov_start="random"`` (``None`` otherwise).
      step_size: the fraction ``t`` of the last full step taken (1 without a safeguard; 0
        when the line search found no decrease).
      num_evaluations: loss evaluations spent by the safeguard so far (int32 scalar).
    """

    count: jax.Array
    num_matvecs: jax.Array
    ritz_values: jax.Array
    key: Any = None
    step_size: Any = None
    num_evaluations: Any = None


def _start_vector(g, gnorm):
    """``g`` itself, or the all-ones vector when ``g == 0`` (the step is then zero anyway)."""
    return jax.tree.map(lambda a: jnp.where(gnorm > 0, a, jnp.ones_like(a)), g)


def _krylov_direction(hvp, g, v0, num_steps, shift, complement_learning_rate):
    """``Q^T S f(theta)^-1 S^T Q g + lr_c (g - Q^T Q g)`` with ``f(theta) = shift(theta)``."""
    dec = lanczos_tridiag(hvp, v0, num_steps=num_steps)
    basis = jax.tree.map(lambda b: b[:num_steps], dec.basis)
    theta, s, _, _ = ritz_pairs(dec)
    coeffs = tree.basis_dot(basis, g)                         # Q g, (k,)
    scaled = shift(theta)
    tiny = jnp.finfo(theta.dtype).tiny
    inv = 1.0 / jnp.where(jnp.abs(scaled) > tiny, scaled, tiny)
    hi = jax.lax.Precision.HIGHEST
    inside = tree.basis_combine(jnp.matmul(s, inv * jnp.matmul(s.T, coeffs, precision=hi),
                                           precision=hi), basis)
    outside = tree.sub(g, tree.basis_combine(coeffs, basis))  # g - Q^T Q g
    lr_c = (1.0 / jnp.maximum(jnp.max(jnp.abs(scaled)), tiny)
            if complement_learning_rate is None else complement_learning_rate)
    return tree.axpy(lr_c, outside, inside), theta


def saddle_free_direction(hvp: Callable, g, v0, *, num_steps: int, damping: float,
                          complement_learning_rate: float | None = None):
    """The saddle-free Newton direction ``(|H_k| + damping)^-1 g`` (+ complement gradient).

    Pure and jittable. ``hvp`` is ``v -> H v`` on pytrees shaped like ``g``; ``v0`` the
    Lanczos start vector. Returns ``(direction, ritz_values)``: subtract
    ``learning_rate * direction`` from the parameters. ``num_steps`` HVPs.
    """
    return _krylov_direction(hvp, g, v0, num_steps, lambda t: jnp.abs(t) + damping,
                             complement_learning_rate)


def damped_newton_direction(hvp: Callable, g, v0, *, num_steps: int, damping: float,
                            complement_learning_rate: float | None = None):
    """The damped Newton direction ``(H_k + damping)^-1 g`` (+ complement gradient).

    As :func:`saddle_free_direction` with ``theta + damping`` for ``|theta| + damping``
    (a Ritz value at ``-damping`` exactly is treated as the smallest positive number).
    """
    return _krylov_direction(hvp, g, v0, num_steps, lambda t: t + damping,
                             complement_learning_rate)


def _validate(num_steps, damping, learning_rate, complement_learning_rate, krylov_start, key,
              safeguard, c1, max_backtracks):
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
    if safeguard not in SAFEGUARDS:
        raise ValueError(f"safeguard={safeguard!r} is not one of {SAFEGUARDS} ('armijo': "
                         "backtracking on the loss; None: the full step).")
    if not 0.0 < c1 < 1.0:
        raise ValueError(f"c1={c1!r} must lie in (0, 1) (the Armijo sufficient-decrease "
                         "fraction, e.g. 1e-4).")
    if not isinstance(max_backtracks, (int, np.integer)) or isinstance(max_backtracks, bool) \
            or max_backtracks < 0:
        raise ValueError(f"max_backtracks={max_backtracks!r} must be an integer >= 0 (halvings "
                         "of the step tried by the line search).")


def _armijo(fn, params, step, slope, value0, *, c1, max_backtracks):
    """``(t, evaluations)``: the largest ``t = 2^-i``, ``i <= max_backtracks``, with a finite
    ``fn(params + t step) <= value0 + c1 t min(slope, 0)``; ``t = 0`` if none."""
    bound = jnp.minimum(slope, 0.0)

    def ok(t):
        value = fn(jax.tree.map(lambda p, u: (p + t * u).astype(p.dtype), params, step))
        return jnp.isfinite(value) & (value <= value0 + c1 * t * bound)

    def cond(carry):
        _, i, accepted = carry
        return ~accepted & (i < max_backtracks)

    def body(carry):
        t, i, _ = carry
        return t / 2, i + 1, ok(t / 2)

    one = jnp.ones((), jnp.result_type(slope))
    t, i, accepted = jax.lax.while_loop(cond, body, (one, jnp.zeros((), jnp.int32), ok(one)))
    return jnp.where(accepted, t, 0.0), i + 1


def _krylov_newton(loss, direction_fn, *, learning_rate, num_steps, damping,
                   complement_learning_rate, krylov_start, key, safeguard, c1, max_backtracks,
                   name) -> optax.GradientTransformationExtraArgs:
    """The transform both :func:`saddle_free_newton` and :func:`damped_newton` are."""
    _validate(num_steps, damping, learning_rate, complement_learning_rate, krylov_start, key,
              safeguard, c1, max_backtracks)
    schedule = learning_rate if callable(learning_rate) else (lambda count: learning_rate)

    def init_fn(params):
        dtype = jnp.result_type(*jax.tree.leaves(params))
        real = jnp.finfo(dtype).dtype
        k = min(num_steps, tree.size(params))
        return SaddleFreeNewtonState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                                     jnp.zeros((k,), real),
                                     key if krylov_start == "random" else None,
                                     jnp.ones((), real), jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"{name} differentiates the loss at the current parameters: call "
                             "opt.update(grads, state, params).")
        batch = extra_args.get("batch")
        fn = loss if batch is None else (lambda p: loss(p, batch))
        try:
            hvp = jax.linearize(jax.grad(fn), params)[1]
        except TypeError as err:
            raise TypeError(f"{name} could not evaluate loss at the params ({err}). A "
                            "loss(params, batch) needs the batch: call opt.update(grads, state, "
                            "params, batch=batch).") from err
        key, v0 = state.key, _start_vector(updates, tree.norm(updates))
        if krylov_start == "random":
            key, sub = jax.random.split(state.key)
            v0 = tree.normal_like(sub, updates)
        k = min(num_steps, tree.size(params))
        direction, theta = direction_fn(hvp, updates, v0, num_steps=k, damping=damping,
                                        complement_learning_rate=complement_learning_rate)
        step = tree.scale(-schedule(state.count), direction)
        t, evals = jnp.ones((), state.step_size.dtype), jnp.zeros((), jnp.int32)
        if safeguard == "armijo":
            value0 = extra_args.get("value")
            if value0 is None:
                value0, evals = fn(params), evals + 1
            t, used = _armijo(fn, params, step, tree.vdot(updates, step), value0, c1=c1,
                              max_backtracks=max_backtracks)
            step, evals = tree.scale(t, step), evals + used
        return step, SaddleFreeNewtonState(
            state.count + 1, state.num_matvecs + k, theta.astype(state.ritz_values.dtype), key,
            jnp.asarray(t, state.step_size.dtype), state.num_evaluations + evals)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def saddle_free_newton(loss: Callable, *, learning_rate: float | Callable = 1.0,
                       num_steps: int = 10, damping: float = 1e-3,
                       complement_learning_rate: float | None = None,
                       krylov_start: str = "gradient", key=None,
                       safeguard: str | None = "armijo", c1: float = 1e-4,
                       max_backtracks: int = 30) -> optax.GradientTransformationExtraArgs:
    """Saddle-free Newton: ``-(|H_k| + damping I)^-1 g`` in a Lanczos subspace of the Hessian,
    with an Armijo line search on the loss by default.

    See the module docstring for the maths. Use it like any optax optimizer; it needs the
    parameters (``update(grads, state, params)``) because it differentiates ``loss`` at
    them, and the batch when the loss takes one::

        opt = ht.saddle_free_newton(loss, learning_rate=1.0, num_steps=10, damping=1e-2)
        state = opt.init(params)
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, state = opt.update(grads, state, params, batch=batch, value=value)
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
      safeguard: ``"armijo"`` (default: backtrack until the loss decreases by at least
        ``c1 t |g.u|``; see the module docstring) or ``None`` (always the full step, which
        can diverge with a small damping). ``update`` takes the loss at ``params`` as
        ``value=`` to save one evaluation.
      c1: the Armijo sufficient-decrease fraction.
      max_backtracks: halvings tried before giving up on the step (then it is zero).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is a
      :class:`SaddleFreeNewtonState` (``step_size``: the fraction of the last step taken).

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
    return _krylov_newton(loss, saddle_free_direction, learning_rate=learning_rate,
                          num_steps=num_steps, damping=damping,
                          complement_learning_rate=complement_learning_rate,
                          krylov_start=krylov_start, key=key, safeguard=safeguard, c1=c1,
                          max_backtracks=max_backtracks, name="saddle_free_newton")


def damped_newton(loss: Callable, *, learning_rate: float | Callable = 1.0,
                  num_steps: int = 10, damping: float = 1e-3,
                  complement_learning_rate: float | None = None,
                  krylov_start: str = "gradient", key=None, safeguard: str | None = None,
                  c1: float = 1e-4, max_backtracks: int = 30
                  ) -> optax.GradientTransformationExtraArgs:
    """Damped Newton, ``-(H_k + damping I)^-1 g`` in a Lanczos subspace: the baseline of
    Dauphin et al. (2014) for :func:`saddle_free_newton`.

    The same Krylov step as :func:`saddle_free_newton` (the same ``num_steps`` HVPs, the
    same complement gradient step, the same options) with ``theta + damping`` in place of
    ``|theta| + damping``. Where the damped Hessian is positive definite on the subspace
    this is Newton's method regularised (Levenberg-Marquardt); along negative curvature
    stronger than ``damping`` the step goes *towards* the saddle, the behaviour the
    saddle-free step removes. The default ``safeguard=None`` keeps the baseline as the
    paper uses it; with ``"armijo"`` a step that is not a descent direction is shortened
    until the loss does not increase, which at a saddle means (almost) no step.

    Args:
      loss: as :func:`saddle_free_newton`.
      learning_rate: as :func:`saddle_free_newton`.
      num_steps: as :func:`saddle_free_newton`.
      damping: added to the Ritz values (Levenberg-Marquardt damping).
      complement_learning_rate: default ``1 / max|theta + damping|``.
      krylov_start: as :func:`saddle_free_newton`.
      key: as :func:`saddle_free_newton`.
      safeguard: ``None`` (default, the full step) or ``"armijo"``.
      c1: as :func:`saddle_free_newton`.
      max_backtracks: as :func:`saddle_free_newton`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a :class:`SaddleFreeNewtonState`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, hessian_tools as ht
      >>> loss = lambda p: p["x"] ** 2 - p["y"] ** 2 + p["y"] ** 4
      >>> params = {"x": jnp.array(0.5), "y": jnp.array(1e-3)}
      >>> opt = ht.training.saddle_free.damped_newton(loss, num_steps=2, damping=0.0)
      >>> state = opt.init(params)
      >>> for _ in range(20):
      ...     updates, state = opt.update(jax.grad(loss)(params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> abs(round(float(params["x"]), 6)), round(abs(float(params["y"])), 6)   # the saddle
      (0.0, 0.0)
    """
    return _krylov_newton(loss, damped_newton_direction, learning_rate=learning_rate,
                          num_steps=num_steps, damping=damping,
                          complement_learning_rate=complement_learning_rate,
                          krylov_start=krylov_start, key=key, safeguard=safeguard, c1=c1,
                          max_backtracks=max_backtracks, name="damped_newton")
