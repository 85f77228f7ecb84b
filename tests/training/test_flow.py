"""Gradient flow against closed forms: ``theta(t) = m + exp(-A t) (theta_0 - m)`` for a
quadratic (dense float64 matrix exponential), ``theta(t) = theta_0 / sqrt(1 + 2 theta_0^2 t)``
for the quartic ``theta^4 / 4``, fourth-order convergence of the fixed-step RK4, and the
explicit stability limit of the adaptive steps."""

import functools
import json

import jax
import matplotlib.pyplot as plt
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import hessian_tools as ht
from hessian_tools.plots import plot_gradient_flow
from hessian_tools.results.dynamics import GradientFlow
from hessian_tools.training.flow import DOPRI5, gradient_flow
from conftest import spectrum_matrix

A = spectrum_matrix([3.0, 1.5, 0.7, 0.2], seed=4)
X = np.random.default_rng(5).normal(size=(8, 4))
THETA0 = np.random.default_rng(6).normal(size=4)


@functools.cache
def _quadratic_obj(matrix=None):
    """``L = mean_i 0.5 (theta - x_i)^T A (theta - x_i)`` over batches of sizes 3 and 5 (the
    dataset mean, minimised at mean(x))."""
    m = jnp.asarray(A if matrix is None else np.asarray(matrix))
    loss = lambda p, b: jnp.mean(0.5 * jnp.einsum("ni,ij,nj->n", p - b, m, p - b))
    return ht.Objective(loss, jnp.asarray(THETA0), [jnp.asarray(X[:3]), jnp.asarray(X[3:])])


def _exact(t, matrix=A):
    m = X.mean(axis=0)
    return m + scipy.linalg.expm(-matrix * t) @ (THETA0 - m)


def _quartic_obj(theta0):
    return ht.Objective(lambda p, b: 0.25 * jnp.sum(p**4), jnp.asarray(theta0),
                        jnp.zeros((1, 1)))


def test_butcher_tableau_is_consistent():
    for i, row in enumerate(DOPRI5["a"]):                          # c_i = sum_j a_ij
        assert len(row) == i + 1
    assert sum(DOPRI5["b"]) == pytest.approx(1.0, abs=1e-15)
    assert sum(DOPRI5["e"]) == pytest.approx(0.0, abs=1e-15)       # both orders consistent


def test_dopri5_against_the_matrix_exponential():
    times = [0.0, 0.3, 1.0, 2.5]
    flow = gradient_flow(_quadratic_obj(), t_max=2.5, times=times, rtol=1e-10, atol=1e-12)
    assert flow.status is ht.Status.converged and flow.method == "dopri5"
    np.testing.assert_array_equal(flow.times, times)
    m = X.mean(axis=0)
    for t, params, loss, gnorm in zip(times, flow.params, flow.loss, flow.grad_norm):
        want = _exact(t)
        np.testing.assert_allclose(np.asarray(params), want, rtol=1e-8, atol=1e-10)
        d = X - want
        assert loss == pytest.approx(np.mean(0.5 * np.einsum("ni,ij,nj->n", d, A, d)),
                                     rel=1e-9)
        assert gnorm == pytest.approx(np.linalg.norm(A @ (want - m)), rel=1e-7)
    assert flow.num_gradient_evals == 1 + 6 * (flow.num_steps + flow.num_rejected)
    assert flow.sharpness is None and flow.num_matvecs == 0
    assert np.all(np.diff(flow.loss) < 0)                          # the flow descends
    back = GradientFlow.from_dict(json.loads(json.dumps(flow.to_dict())))
    np.testing.assert_array_equal(back.loss, flow.loss)
    assert back.params is None and back.status is flow.status and back.rtol == 1e-10


def test_a_looser_tolerance_is_less_accurate_and_cheaper():
    tight = gradient_flow(_quadratic_obj(), t_max=2.0, num_points=2, rtol=1e-10, atol=1e-12)
    loose = gradient_flow(_quadratic_obj(), t_max=2.0, num_points=2, rtol=1e-4, atol=1e-6)
    err = lambda f: np.linalg.norm(np.asarray(f.params[-1]) - _exact(2.0))
    assert err(loose) > 10 * err(tight) and err(loose) < 1e-3
    assert loose.num_steps < tight.num_steps


def test_rk4_is_the_stability_polynomial_on_a_quadratic():
    """On ``theta' = -A (theta - m)`` one RK4 step multiplies ``theta - m`` by
    ``R(-h A)``, ``R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24``: exact in float64; the global
    error then falls 16-fold per halving of the step (fourth order)."""
    evals, vecs = np.linalg.eigh(A)
    m = X.mean(axis=0)
    errors = []
    for dt in (0.1, 0.05):
        flow = gradient_flow(_quadratic_obj(), t_max=1.0, num_points=2, dt=dt)
        assert flow.method == "rk4" and flow.num_steps == round(1.0 / dt)
        assert flow.num_gradient_evals == 4 * flow.num_steps and flow.rtol is None
        z = -dt * evals
        r = (1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24) ** flow.num_steps
        np.testing.assert_allclose(np.asarray(flow.params[-1]),
                                   m + vecs @ (r * (vecs.T @ (THETA0 - m))), rtol=1e-12)
        errors.append(np.linalg.norm(np.asarray(flow.params[-1]) - _exact(1.0)))
    assert 14 < errors[0] / errors[1] < 18


def test_cohen_step_control_uses_alpha_over_the_sharpness():
    """``alpha``: RK4 at ``dt = alpha / lambda_max`` (3 here, so 1/6), i.e. the stability
    polynomial at that step; on the quartic the step grows as the sharpness falls."""
    evals, vecs = np.linalg.eigh(A)
    m = X.mean(axis=0)
    flow = gradient_flow(_quadratic_obj(), t_max=1.0, times=[0.5, 1.0], alpha=0.5,
                         key=jax.random.key(0), sharpness_tol=1e-10)
    assert flow.method == "rk4" and flow.alpha == 0.5 and flow.dt is None
    np.testing.assert_allclose(flow.sharpness, 3.0, rtol=1e-8)
    assert flow.num_steps == 6 and flow.dt_max == pytest.approx(1 / 6, rel=1e-8)
    z = -evals / 6
    r = (1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24) ** 6
    np.testing.assert_allclose(np.asarray(flow.params[-1]),
                               m + vecs @ (r * (vecs.T @ (THETA0 - m))), rtol=1e-7)
    capped = gradient_flow(_quadratic_obj(), t_max=1.0, num_points=2, alpha=0.5, dt=0.1,
                           key=jax.random.key(0))
    assert capped.num_steps == 10 and capped.dt == 0.1
    theta0 = np.array([1.5, -0.5])
    quartic = gradient_flow(_quartic_obj(theta0), t_max=4.0, num_points=5, alpha=0.2,
                            key=jax.random.key(1), sharpness_tol=1e-8)
    assert np.all(np.diff(quartic.sharpness) < 0)
    # each unit segment takes ceil(lambda / alpha) steps of alpha / lambda (the last cut short)
    assert quartic.num_steps == sum(int(np.ceil(s / 0.2 - 1e-9)) for s in quartic.sharpness[:-1])
    assert quartic.dt_max == pytest.approx(0.2 / quartic.sharpness[-2], rel=1e-6)
    t = quartic.times[-1]
    np.testing.assert_allclose(np.asarray(quartic.params[-1]),
                               theta0 / np.sqrt(1 + 2 * theta0**2 * t), rtol=1e-5)


def test_output_times_off_the_step_grid_are_hit_exactly():
    flow = gradient_flow(_quadratic_obj(), t_max=1.0, times=[0.13, 1.0], dt=0.1)
    np.testing.assert_allclose(np.asarray(flow.params[0]), _exact(0.13), atol=1e-6)
    assert flow.num_steps == 2 + 9                 # 0.1, 0.03 then 0.1 x 8 + the last 0.07


def test_quartic_flow_and_its_sharpness():
    theta0 = np.array([1.5, -0.5, 0.0])
    times = np.array([0.0, 0.5, 2.0])
    flow = gradient_flow(_quartic_obj(theta0), t_max=2.0, times=times, rtol=1e-10,
                         atol=1e-12, sharpness=True, key=jax.random.key(0),
                         sharpness_tol=1e-8)
    want = theta0[None] / np.sqrt(1 + 2 * theta0[None] ** 2 * times[:, None])
    np.testing.assert_allclose(np.stack([np.asarray(p) for p in flow.params]), want,
                               rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(flow.sharpness, 3 * want[:, 0] ** 2, rtol=1e-6)  # max 3 theta^2
    assert flow.num_matvecs > 0 and flow.operator == "hessian" and len(flow.seed) > 0
    assert np.all(flow.sharpness_residuals <= 1e-6 * flow.sharpness)
    ax = plot_gradient_flow(flow, learning_rate=0.5)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), flow.sharpness)
    assert ax.lines[1].get_ydata()[0] == 4.0 and ax.get_xlabel().startswith("time")
    plt.close(ax.figure)
    ax = plot_gradient_flow(gradient_flow(_quartic_obj(theta0), t_max=1.0, num_points=3))
    assert ax.get_yscale() == "log" and len(ax.lines) == 1          # only the loss
    plt.close(ax.figure)


def test_stiff_problem_keeps_the_steps_inside_the_stability_region():
    stiff = spectrum_matrix([200.0, 1.0, 0.5, 0.1], seed=7)
    flow = gradient_flow(_quadratic_obj(tuple(map(tuple, stiff))), t_max=0.5, num_points=2,
                         rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(np.asarray(flow.params[-1]), _exact(0.5, stiff), atol=1e-3)
    # DOPRI5's real-axis stability limit is h lambda = 3.3: once the stiff mode has decayed,
    # the error control holds the steps near it (briefly above, then rejected or shrunk)
    assert 2.0 < flow.dt_max * 200.0 < 5.0
    assert flow.num_steps > 0.5 * 200.0 / 3.5


def test_budget_returns_the_times_reached():
    flow = gradient_flow(_quadratic_obj(), t_max=4.0, num_points=5, dt=0.1, max_steps=25)
    assert flow.status is ht.Status.budget
    np.testing.assert_array_equal(flow.times, [0.0, 1.0, 2.0])
    assert len(flow.params) == len(flow.loss) == 3 and flow.num_steps == 25
    assert "budget" in str(flow)
    none = gradient_flow(_quadratic_obj(), t_max=4.0, times=[2.0, 4.0], dt=0.1, max_steps=5)
    assert len(none.times) == 0 and none.params == () and "no output time" in str(none)


def test_bad_input():
    obj = _quadratic_obj()
    with pytest.raises(TypeError, match="takes an Objective"):
        gradient_flow(ht.hessian(obj), t_max=1.0)
    with pytest.raises(ValueError, match="t_max"):
        gradient_flow(obj, t_max=0.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        gradient_flow(obj, t_max=1.0, times=[0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"in \[0, t_max=1.0\]"):
        gradient_flow(obj, t_max=1.0, times=[0.0, 2.0])
    with pytest.raises(ValueError, match="num_points"):
        gradient_flow(obj, t_max=1.0, num_points=1)
    with pytest.raises(ValueError, match="dt"):
        gradient_flow(obj, t_max=1.0, dt=-0.1)
    with pytest.raises(ValueError, match="rtol"):
        gradient_flow(obj, t_max=1.0, rtol=2.0)
    with pytest.raises(ValueError, match="rtol=1e-09 is below the parameters' rounding unit"):
        gradient_flow(_quartic_obj(np.ones(2, np.float32)), t_max=1.0, rtol=1e-9)
    with pytest.raises(ValueError, match="max_steps"):
        gradient_flow(obj, t_max=1.0, max_steps=0)
    with pytest.raises(ValueError, match="explicit PRNG key"):
        gradient_flow(obj, t_max=1.0, sharpness=True)
    with pytest.raises(ValueError, match="explicit PRNG key"):
        gradient_flow(obj, t_max=1.0, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        gradient_flow(obj, t_max=1.0, alpha=0.0, key=jax.random.key(0))
