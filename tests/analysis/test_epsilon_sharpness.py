"""Keskar et al.'s epsilon-sharpness against closed forms: the maximum of a convex quadratic
over a box is at a vertex (enumerated exactly for small n), and a negative-curvature
direction is left at its interior optimum."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools.analysis.epsilon_sharpness import epsilon_sharpness, random_subspace
from hessian_tools.results.curvature import EpsilonSharpness
from conftest import spectrum_matrix

N = 6
A = spectrum_matrix(np.linspace(0.5, 4.0, N), seed=1)        # PSD, not diagonal
X0 = np.random.default_rng(2).normal(size=N)


def _quadratic(matrix, x):
    m = jnp.asarray(matrix)
    return ht.Objective(lambda p, b: 0.5 * p @ m @ p, jnp.asarray(x), jnp.zeros((1, 1)))


def _vertex_max(matrix, x, rows, bounds):
    """max over the vertices of the box of 0.5 (x + R^T y)^T M (x + R^T y): exact for PSD M."""
    best = -np.inf
    for signs in itertools.product((-1.0, 1.0), repeat=len(bounds)):
        z = x + rows.T @ (np.array(signs) * bounds)
        best = max(best, 0.5 * z @ matrix @ z)
    return best


def _keskar(max_loss, loss):
    return 100 * (max_loss - loss) / (1 + loss)


@pytest.mark.parametrize("method", ["projected_gradient", "l-bfgs-b"])
def test_full_space_against_the_enumerated_vertices(method):
    eps = 0.05
    out = epsilon_sharpness(_quadratic(A, X0), epsilon=eps, key=jax.random.key(0),
                            method=method, num_starts=6, steps=30)
    loss = 0.5 * X0 @ A @ X0
    best = _vertex_max(A, X0, np.eye(N), eps * (np.abs(X0) + 1))
    assert out.loss == pytest.approx(loss, rel=1e-12)
    assert out.value == pytest.approx(_keskar(best, loss), rel=1e-9)
    assert out.max_loss <= best * (1 + 1e-12)                      # never above the maximum
    z = np.asarray(out.perturbation)
    assert np.all(np.abs(z) <= eps * (np.abs(X0) + 1) * (1 + 1e-12))   # inside the box
    assert 0.5 * (X0 + z) @ A @ (X0 + z) == pytest.approx(out.max_loss, rel=1e-12)
    assert out.num_evaluations >= out.num_steps >= 1 and out.subspace_dim is None
    assert np.all(np.diff(out.history) >= 0)
    back = EpsilonSharpness.from_json(out.to_json())
    assert back.value == out.value and back.perturbation is None


def test_negative_curvature_is_left_at_its_interior_optimum():
    diag = np.array([3.0, 1.0, -2.0, -0.5])
    obj = _quadratic(np.diag(diag), np.zeros(4))
    eps = 0.1
    out = epsilon_sharpness(obj, epsilon=eps, key=jax.random.key(3), num_starts=2, steps=40)
    exact = 0.5 * eps**2 * diag[diag > 0].sum()                  # y = +-eps where a > 0, else 0
    assert out.value == pytest.approx(100 * exact, rel=1e-8)
    assert out.status is ht.Status.converged and set(out.stops) <= {"stationary", "no ascent"}
    np.testing.assert_allclose(np.abs(np.asarray(out.perturbation)), [eps, eps, 0, 0], atol=1e-6)


def test_a_given_subspace_against_the_enumerated_vertices():
    p, eps = 3, 0.2
    rows = random_subspace(jax.random.key(5), N, p)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0)
    out = epsilon_sharpness(_quadratic(A, X0), epsilon=eps, subspace=jnp.asarray(rows),
                            key=jax.random.key(1), num_starts=4, steps=30)
    coords = np.linalg.lstsq(rows.T, X0, rcond=None)[0]         # A^+ x
    best = _vertex_max(A, X0, rows, eps * (np.abs(coords) + 1))
    assert out.value == pytest.approx(_keskar(best, 0.5 * X0 @ A @ X0), rel=1e-9)
    assert out.subspace_dim == p
    z = np.asarray(out.perturbation)                             # in the span of the rows
    np.testing.assert_allclose(rows.T @ np.linalg.lstsq(rows.T, z, rcond=None)[0], z,
                               atol=1e-12)


def test_random_subspaces_and_pytree_params():
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    w = jnp.asarray(np.linspace(1.0, 2.0, 7))
    loss = lambda p, b: 0.5 * jnp.sum(w * jnp.concatenate([p["a"], p["b"].ravel()]) ** 2)
    obj = ht.Objective(loss, params, jnp.zeros((1, 1)))
    full = epsilon_sharpness(obj, epsilon=0.1, key=jax.random.key(0))
    assert full.value == pytest.approx(100 * 0.5 * 0.01 * float(w.sum()), rel=1e-9)
    assert set(full.perturbation) == {"a", "b"}
    sub = epsilon_sharpness(obj, epsilon=0.1, subspace="random", key=jax.random.key(0))
    assert sub.subspace_dim == 7                                  # min(100, dim)
    assert epsilon_sharpness(obj, epsilon=0.1, subspace=2, key=jax.random.key(0)
                             ).subspace_dim == 2
    again = epsilon_sharpness(obj, epsilon=0.1, subspace=2, key=jax.random.key(0))
    assert again.value == epsilon_sharpness(obj, epsilon=0.1, subspace=2,
                                            key=jax.random.key(0)).value   # same key, same


def test_bad_input():
    obj = _quadratic(A, X0)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="explicit PRNG key"):
        epsilon_sharpness(obj, key=None)
    with pytest.raises(ValueError, match="epsilon=0 must be a finite number > 0"):
        epsilon_sharpness(obj, epsilon=0, key=key)
    with pytest.raises(ValueError, match="subspace='box' is not one of"):
        epsilon_sharpness(obj, subspace="box", key=key)
    with pytest.raises(ValueError, match="subspace=9 exceeds the number of parameters 6"):
        epsilon_sharpness(obj, subspace=9, key=key)
    with pytest.raises(ValueError, match="leaf '' has shape \\(4,\\), expected \\(6,\\)"):
        epsilon_sharpness(obj, subspace=jnp.ones((2, 4)), key=key)
    with pytest.raises(ValueError, match="method='sgd' is not one of"):
        epsilon_sharpness(obj, method="sgd", key=key)
    with pytest.raises(ValueError, match="steps=0 must be an integer >= 1"):
        epsilon_sharpness(obj, steps=0, key=key)
    neg = ht.Objective(lambda p, b: jnp.sum(p) - 5.0, jnp.zeros(2), jnp.zeros((1, 1)))
    with pytest.raises(ValueError, match="divides by 1 \\+ L\\(x\\)"):
        epsilon_sharpness(neg, key=key)
    with pytest.raises(TypeError, match="takes an Objective"):
        epsilon_sharpness(ht.hessian(obj), key=key)


def test_a_budget_stop_names_the_steps_knob():
    out = epsilon_sharpness(_quadratic(A, X0), epsilon=0.5, key=jax.random.key(0),
                            num_starts=2, steps=1)
    assert out.status is ht.Status.budget
    assert "raise steps" in str(out) and "num_matvecs" not in str(out)
