"""The Armijo safeguard of saddle-free Newton, and damped Newton (the baseline)."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hessian_tools as ht
from hessian_tools.training.saddle_free import damped_newton, damped_newton_direction
from conftest import spectrum_matrix

SCALES = jnp.linspace(1.0, 4.0, 6)
DEPTHS = jnp.array([1.0, 0.5])


def _loss(params):
    """A strict saddle in (x, y) (minima at y = +-1, loss -0.375) plus log cosh(z): along z
    the curvature sech^2 z vanishes away from 0 while the gradient tanh z does not, so a full
    step g / (|lambda| + damping) overshoots by ~1 / damping."""
    x, y, z = params["x"], params["y"], params["z"]
    return (0.5 * jnp.sum(SCALES * x ** 2) + jnp.sum(DEPTHS * (0.25 * y ** 4 - 0.5 * y ** 2))
            + jnp.sum(jnp.log(jnp.cosh(z))))


START = {"x": 1e-2 * jnp.ones(6), "y": 1e-4 * jnp.ones(2), "z": jnp.array([3.0])}
MINIMUM = -0.375


def _run(opt, steps, *, pass_value=False):
    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(_loss)(params)
        extra = {"value": value} if pass_value else {}
        updates, state = opt.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    params, state, losses = START, opt.init(START), [float(_loss(START))]
    for _ in range(steps):
        params, state = step(params, state)
        losses.append(float(_loss(params)))
    return params, state, np.array(losses)


def test_unsafeguarded_step_diverges_and_the_armijo_one_converges():
    _, _, wild = _run(ht.saddle_free_newton(_loss, num_steps=10, damping=1e-3, safeguard=None),
                      12)
    assert wild[1] > 30 * wild[0]                          # overshoots along z to |z| ~ 90,
    assert not np.isfinite(wild[-1])                       # then ~1e3 ...: overflow (NaN)
    params, state, safe = _run(ht.saddle_free_newton(_loss, num_steps=10, damping=1e-3), 40)
    assert np.all(np.diff(safe) <= 1e-12)                  # the loss never increases
    assert safe[-1] == pytest.approx(MINIMUM, abs=1e-8)    # escaped the saddle, then converged
    np.testing.assert_allclose(np.abs(params["y"]), 1.0, atol=1e-5)
    assert abs(float(params["z"][0])) < 1e-4
    assert 0.0 < float(state.step_size) <= 1.0
    assert int(state.num_evaluations) >= 2 * 40           # L(x) and >= 1 trial per step


@pytest.mark.slow
def test_value_argument_saves_one_evaluation_per_step():
    opt = ht.saddle_free_newton(_loss, num_steps=10, damping=1e-2)
    p1, s1, l1 = _run(opt, 5)
    p2, s2, l2 = _run(opt, 5, pass_value=True)
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    assert int(s1.num_evaluations) - int(s2.num_evaluations) == 5


def test_full_step_taken_when_it_decreases_enough():
    """On a convex quadratic the (undamped) Newton step is exact: t = 1, one trial."""
    A = spectrum_matrix([0.5, 1.0, 2.0, 4.0], seed=1)
    loss = lambda p: 0.5 * p @ jnp.asarray(A) @ p - jnp.sum(p)
    p0 = jnp.ones(4)
    opt = ht.saddle_free_newton(loss, num_steps=4, damping=0.0)
    updates, state = opt.update(jax.grad(loss)(p0), opt.init(p0), p0)
    np.testing.assert_allclose(np.asarray(p0 + updates), np.linalg.solve(A, np.ones(4)),
                               rtol=1e-9)
    assert float(state.step_size) == 1.0 and int(state.num_evaluations) == 2


# ---- damped Newton --------------------------------------------------------------------------

def test_damped_newton_direction_matches_the_dense_formula():
    eigs = np.r_[-2.0, -0.7, 0.4, 1.0, 3.0, 5.0]
    A = spectrum_matrix(eigs, seed=3)
    g = np.random.default_rng(0).normal(size=6)
    d, theta = damped_newton_direction(lambda v: jnp.asarray(A) @ v, jnp.asarray(g),
                                       jnp.asarray(g), num_steps=6, damping=0.3)
    np.testing.assert_allclose(np.asarray(d), np.linalg.solve(A + 0.3 * np.eye(6), g),
                               rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(np.sort(np.asarray(theta)), eigs, atol=1e-9)


def test_damped_newton_is_attracted_to_the_saddle_where_saddle_free_escapes():
    start = {"x": 1e-2 * jnp.ones(6), "y": 1e-4 * jnp.ones(2), "z": jnp.array([0.1])}
    global START
    saved, START = START, start
    try:
        dn, _, dn_losses = _run(damped_newton(_loss, num_steps=9, damping=1e-3), 25)
        sfn, _, _ = _run(ht.saddle_free_newton(_loss, num_steps=9, damping=1e-3), 25)
    finally:
        START = saved
    assert float(jnp.max(jnp.abs(dn["y"]))) < 1e-8        # converged onto the saddle
    assert dn_losses[-1] == pytest.approx(0.0, abs=1e-10)
    assert float(_loss(sfn)) == pytest.approx(MINIMUM, abs=1e-8)


def test_safeguarded_damped_newton_never_climbs():
    _, _, losses = _run(damped_newton(_loss, num_steps=9, damping=1e-3, safeguard="armijo"), 15)
    assert np.all(np.diff(losses) <= 1e-12)


def test_errors():
    with pytest.raises(ValueError, match="safeguard='wolfe'"):
        ht.saddle_free_newton(_loss, safeguard="wolfe")
    with pytest.raises(ValueError, match="c1=0"):
        ht.saddle_free_newton(_loss, c1=0.0)
    with pytest.raises(ValueError, match="max_backtracks=-1"):
        damped_newton(_loss, max_backtracks=-1)
    with pytest.raises(ValueError, match="damping=-1"):
        damped_newton(_loss, damping=-1.0)
    opt = damped_newton(_loss)
    with pytest.raises(ValueError, match=r"damped_newton differentiates.*opt.update"):
        opt.update(START, opt.init(START))
