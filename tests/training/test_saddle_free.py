"""Saddle-free Newton: the step against dense formulas, escaping a saddle, optax integration."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hessian_tools as ht
from hessian_tools.training.saddle_free import saddle_free_direction
from conftest import spectrum_matrix

EIGS = np.r_[-2.0, -0.7, 0.4, 1.0, 1.5, 2.0, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0]
A = spectrum_matrix(EIGS, seed=3)
SHAPES = {"a": (4,), "b": (2, 4)}
_, UNRAVEL = jax.flatten_util.ravel_pytree({k: jnp.zeros(s) for k, s in SHAPES.items()})


def _flat(tree):
    return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


def _quadratic_loss(params):
    w = jax.flatten_util.ravel_pytree(params)[0]
    return 0.5 * w @ jnp.asarray(A) @ w + jnp.sum(w) / 3


def _dense_sfn(g, damping, lr=1.0):
    """``-lr (|A| + damping)^-1 g`` with numpy."""
    lam, q = np.linalg.eigh(A)
    return -lr * q @ ((q.T @ g) / (np.abs(lam) + damping))


def _point(seed=0):
    return UNRAVEL(jnp.asarray(np.random.default_rng(seed).normal(size=12)))


# ---- the step against dense formulas ------------------------------------------------------------

@pytest.mark.parametrize("start", ["gradient", "random"])
def test_full_krylov_space_gives_the_dense_saddle_free_step(start):
    params = _point()
    opt = ht.saddle_free_newton(_quadratic_loss, learning_rate=0.7, num_steps=12, damping=0.1,
                                krylov_start=start, key=jax.random.key(1))
    g = jax.grad(_quadratic_loss)(params)
    updates, state = jax.jit(opt.update)(g, opt.init(params), params)
    np.testing.assert_allclose(_flat(updates), _dense_sfn(_flat(g), 0.1, 0.7), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(np.sort(np.asarray(state.ritz_values)), np.sort(EIGS), atol=1e-9)
    assert int(state.num_matvecs) == 12 and int(state.count) == 1


def test_invariant_subspace_step_and_complement_gradient():
    """Start in the span S of three eigenvectors: Q spans S exactly, so the direction is
    sum_{i in S} c_i u_i / (|lambda_i| + d) + (g - P_S g) / (max_{i in S} |lambda_i| + d)."""
    lam, q = np.linalg.eigh(A)
    subset = [0, 4, 9]                                        # lambda = -2, 1.5, 5
    v0 = q[:, subset] @ np.array([1.0, -0.5, 2.0])
    g = np.random.default_rng(4).normal(size=12)
    hvp = lambda v: jnp.asarray(A) @ v
    direction, theta = jax.jit(lambda g, v0: saddle_free_direction(
        hvp, g, v0, num_steps=3, damping=0.2))(jnp.asarray(g), jnp.asarray(v0))
    us = q[:, subset]
    inside = us @ ((us.T @ g) / (np.abs(lam[subset]) + 0.2))
    outside = (g - us @ (us.T @ g)) / (np.max(np.abs(lam[subset])) + 0.2)
    np.testing.assert_allclose(np.asarray(direction), inside + outside, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.sort(np.asarray(theta)), lam[subset], atol=1e-10)


def test_gradient_start_contains_the_gradient():
    """With the default start the subspace contains g: no complement part, and the step is
    the Krylov approximation of the dense step (exact once the space is invariant)."""
    lam, q = np.linalg.eigh(A)
    g = q[:, [1, 6]] @ np.array([0.3, -1.2])                  # g in a 2-dim invariant subspace
    direction, _ = saddle_free_direction(lambda v: jnp.asarray(A) @ v, jnp.asarray(g),
                                         jnp.asarray(g), num_steps=2, damping=0.0)
    np.testing.assert_allclose(np.asarray(direction), -_dense_sfn(g, 0.0), rtol=1e-9)


# ---- escaping a strict saddle --------------------------------------------------------------------

SCALES = jnp.linspace(1.0, 4.0, 10)
DEPTHS = jnp.array([1.0, 0.5])


def _saddle_loss(params):
    """A strict saddle at 0 (H = diag(SCALES, -DEPTHS)); minima at y = +-1, loss -0.375."""
    x, y = params["x"], params["y"]
    return 0.5 * jnp.sum(SCALES * x ** 2) + jnp.sum(DEPTHS * (0.25 * y ** 4 - 0.5 * y ** 2))


START = {"x": 1e-2 * jnp.ones(10), "y": 1e-4 * jnp.ones(2)}
BUDGET = 25
MINIMUM = -0.375


def _run(opt, steps=BUDGET):
    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.grad(_saddle_loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    params, state = START, opt.init(START)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def _newton(steps=BUDGET):
    flat, unravel = jax.flatten_util.ravel_pytree(START)
    f = lambda z: _saddle_loss(unravel(z))
    step = jax.jit(lambda z: z - jnp.linalg.solve(jax.hessian(f)(z), jax.grad(f)(z)))
    for _ in range(steps):
        flat = step(flat)
    return unravel(flat)


@pytest.mark.parametrize("krylov_dim", [4, 12])
def test_saddle_free_newton_escapes_where_gd_stalls_and_newton_is_attracted(krylov_dim):
    sfn, state = _run(ht.saddle_free_newton(_saddle_loss, num_steps=krylov_dim, damping=1e-3))
    gd, _ = _run(optax.sgd(0.2))                              # 0.2 < 2 / lambda_max = 0.5
    newton = _newton()
    assert float(_saddle_loss(sfn)) == pytest.approx(MINIMUM, abs=1e-8)
    np.testing.assert_allclose(np.abs(sfn["y"]), 1.0, atol=1e-4)
    assert float(_saddle_loss(gd)) > -1e-3                    # still on the saddle's plateau
    assert float(jnp.max(jnp.abs(gd["y"]))) < 0.05
    assert float(jnp.max(jnp.abs(newton["y"]))) < 1e-8       # converged onto the saddle
    assert float(_saddle_loss(newton)) == pytest.approx(0.0, abs=1e-12)
    assert int(state.num_matvecs) == BUDGET * krylov_dim


def test_negative_curvature_is_visible_in_the_ritz_values():
    _, state = _run(ht.saddle_free_newton(_saddle_loss, num_steps=12, damping=1e-3), steps=1)
    assert float(jnp.min(state.ritz_values)) == pytest.approx(-1.0, abs=1e-3)


# ---- inside optax training loops -----------------------------------------------------------------

def _regression(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, 5)))
    y = jnp.asarray(x @ rng.normal(size=(5, 2)) + 0.1 * rng.normal(size=(n, 2)))
    params = {"w": jnp.zeros((5, 2)), "b": jnp.zeros(2)}
    loss = lambda p, batch: jnp.mean((batch[0] @ p["w"] + p["b"] - batch[1]) ** 2)
    return loss, params, (x, y)


def test_batch_loss_in_a_jitted_optax_loop_compiles_once():
    loss, params, batch = _regression()
    traces = []

    def counted(p, b):
        traces.append(1)
        return loss(p, b)

    opt = optax.chain(optax.clip_by_global_norm(100.0),
                      ht.saddle_free_newton(counted, num_steps=12, damping=1e-8))

    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        updates, state = opt.update(grads, state, params, batch=batch)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    params, state = step(params, state, batch)
    n_traces = len(traces)
    for _ in range(3):
        params, state = step(params, state, batch)
    assert len(traces) == n_traces                            # no retracing
    x1 = jnp.concatenate([batch[0], jnp.ones((64, 1))], axis=1)
    best = jnp.linalg.lstsq(x1, batch[1])[0]
    np.testing.assert_allclose(np.asarray(params["w"]), np.asarray(best[:5]), rtol=1e-6)
    assert float(loss(params, batch)) == pytest.approx(
        float(jnp.mean((x1 @ best - batch[1]) ** 2)), rel=1e-9)


def test_vmap_over_starting_points_and_keys():
    opt = ht.saddle_free_newton(_quadratic_loss, num_steps=12, damping=0.1,
                                krylov_start="random", key=jax.random.key(0))
    points = jax.tree.map(lambda *xs: jnp.stack(xs), *[_point(s) for s in range(3)])
    keys = jax.random.split(jax.random.key(7), 3)

    def update(params, key):
        state = opt.init(params)._replace(key=key)
        return opt.update(jax.grad(_quadratic_loss)(params), state, params)[0]

    out = jax.jit(jax.vmap(update))(points, keys)
    for i in range(3):
        g = _flat(jax.grad(_quadratic_loss)(_point(i)))
        np.testing.assert_allclose(_flat(jax.tree.map(lambda a: a[i], out)),
                                   _dense_sfn(g, 0.1), rtol=1e-8, atol=1e-12)


def test_learning_rate_schedule():
    opt = ht.saddle_free_newton(_quadratic_loss, learning_rate=optax.linear_schedule(1.0, 0.0, 2),
                                num_steps=12, damping=0.1)
    params = _point()
    g = jax.grad(_quadratic_loss)(params)
    state, update = opt.init(params), jax.jit(opt.update)
    first, state = update(g, state, params)
    second, state = update(g, state, params)
    np.testing.assert_allclose(_flat(second), 0.5 * _flat(first), rtol=1e-10)


# ---- errors ------------------------------------------------------------------------------------

def test_errors():
    with pytest.raises(ValueError, match="num_steps=0"):
        ht.saddle_free_newton(_quadratic_loss, num_steps=0)
    with pytest.raises(ValueError, match="damping=-1"):
        ht.saddle_free_newton(_quadratic_loss, damping=-1.0)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        ht.saddle_free_newton(_quadratic_loss, krylov_start="random")
    with pytest.raises(ValueError, match="krylov_start='lanczos'"):
        ht.saddle_free_newton(_quadratic_loss, krylov_start="lanczos")
    opt = ht.saddle_free_newton(_quadratic_loss)
    params = _point()
    with pytest.raises(ValueError, match=r"opt.update\(grads, state, params\)"):
        opt.update(params, opt.init(params))
    loss, params, batch = _regression()
    opt = ht.saddle_free_newton(loss, num_steps=3)
    with pytest.raises(TypeError, match="batch=batch"):
        opt.update(params, opt.init(params), params)
