"""The closed forms of the Saxe et al. gallery entry (deep linear networks), in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessian_tools.analysis import eigenvalues
from hessian_tools.gallery import saxe
from hessian_tools.operators import dense_hessian, gauss_newton, value_and_grad


def _random_data(n=40, inputs=4, outputs=3, whiten=False, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, inputs)) @ rng.normal(size=(inputs, inputs))
    if whiten:
        x -= x.mean(0)
        x = x @ np.linalg.inv(np.linalg.cholesky(x.T @ x / n)).T
    y = x @ rng.normal(size=(inputs, outputs)) + 0.3 * rng.normal(size=(n, outputs))
    return jnp.asarray(x), jnp.asarray(y)


def _objective(data, width, depth, kind="zeros", seed=0):
    sizes = saxe.layer_sizes(data[0].shape[1], width, depth, data[1].shape[1])
    return saxe.linear_objective(
        saxe.init_params(jax.random.key(seed), sizes, kind, dtype=jnp.float64), data)


@pytest.mark.parametrize("whiten", [True, False])
def test_depth2_origin_hessian_matches_closed_form(whiten):
    data = _random_data(whiten=whiten)
    obj = _objective(data, width=3, depth=2)
    got = np.linalg.eigvalsh(dense_hessian(obj))
    want = saxe.origin_spectrum_closed_form(saxe.correlation(data), 3)
    assert got.shape == want.shape == (3 * (4 + 3),)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert np.sum(want < -1e-12) == 3 * 3          # index = hidden * rank(Sigma_yx)


def test_closed_form_degenerate_rank():
    sig = np.outer([1.0, 2.0], [0.0, 3.0, 4.0])     # rank 1, singular value 5 * sqrt(5)
    eigs = saxe.origin_spectrum_closed_form(sig, 2)
    np.testing.assert_allclose(eigs[[0, 1, -2, -1]], [-5 * 5 ** 0.5] * 2 + [5 * 5 ** 0.5] * 2)
    np.testing.assert_allclose(eigs[2:-2], 0.0, atol=1e-14)


def test_whitened_digits_digits_data():
    x, y = saxe.whitened_digits(7)
    np.testing.assert_allclose(x.T @ x / len(x), np.eye(7), atol=1e-10)
    np.testing.assert_allclose(y.sum(0), 0.0, atol=1e-9)
    obj = _objective((x, y), width=2, depth=2)
    got = np.linalg.eigvalsh(dense_hessian(obj))
    np.testing.assert_allclose(got, saxe.origin_spectrum_closed_form(saxe.correlation((x, y)), 2),
                               atol=1e-12)


@pytest.mark.parametrize("depth", [3, 4])
def test_deep_origin_hessian_is_zero(depth):
    obj = _objective(_random_data(), width=3, depth=depth)
    assert np.abs(dense_hessian(obj)).max() == 0.0
    assert float(jnp.linalg.norm(value_and_grad(obj)[1][0])) == 0.0


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_loss_along_a_ray_is_the_polynomial(depth):
    data = _random_data(whiten=False)
    direction = saxe.init_params(jax.random.key(3), saxe.layer_sizes(4, 5, depth, 3),
                                 "gaussian", dtype=jnp.float64)
    obj = _objective(data, width=5, depth=depth)
    l0, c, q = saxe.ray_coefficients(direction, data)
    for t in [0.0, 0.1, 0.7, 1.3]:
        got = float(obj.loss([t * w for w in direction], data))
        assert got == pytest.approx(l0 - c * t ** depth + q * t ** (2 * depth), rel=1e-12)


def test_aligned_direction_is_unit_and_fastest():
    data = _random_data(whiten=True)
    sig = saxe.correlation(data)
    s1 = np.linalg.svd(sig, compute_uv=False)[0]
    for depth in (2, 3, 5):
        d = saxe.aligned_direction(sig, saxe.layer_sizes(4, 6, depth, 3))
        assert sum(float(jnp.sum(w ** 2)) for w in d) == pytest.approx(1.0)
        assert saxe.ray_coefficients(d, data)[1] == pytest.approx(s1 * depth ** (-depth / 2))


def test_sufficient_batch_has_the_same_landscape():
    data = _random_data(whiten=True)
    small = saxe.sufficient_batch(data, dtype=jnp.float64)
    full_obj, small_obj = (_objective(b, width=3, depth=3, kind="gaussian", seed=1)
                           for b in (data, small))
    (l_full, g_full), (l_small, g_small) = value_and_grad(full_obj), value_and_grad(small_obj)
    s = np.linalg.svd(saxe.correlation(data), compute_uv=False)
    l_min = 0.5 * float(jnp.mean(jnp.sum(data[1] ** 2, -1))) - 0.5 * np.sum(s ** 2)
    assert float(l_full) - float(l_small) == pytest.approx(l_min, rel=1e-10)
    for a, b in zip(g_full, g_small):
        np.testing.assert_allclose(a, b, atol=1e-12)
    np.testing.assert_allclose(dense_hessian(full_obj), dense_hessian(small_obj), atol=1e-11)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_orthogonal_init_gauss_newton_is_depth_times_identity_on_its_range(depth):
    data = _random_data(inputs=4, outputs=3, whiten=True)
    obj = _objective(data, width=5, depth=depth, kind="orthogonal", seed=2)
    eigs = np.sort(eigenvalues(gauss_newton(obj), k=obj.num_params, method="dense").values)
    np.testing.assert_allclose(eigs[-12:], depth, rtol=1e-10)   # inputs * outputs = 12
    np.testing.assert_allclose(eigs[:-12], 0.0, atol=1e-10)
    gauss = _objective(data, width=5, depth=4, kind="gaussian", seed=2)
    top = np.sort(eigenvalues(gauss_newton(gauss), k=gauss.num_params, method="dense").values)
    assert top[-1] / top[-12] > 1.5                              # Gaussian: spread


@pytest.mark.parametrize("kind", ["orthogonal", "gaussian"])
def test_gauss_newton_nonzero_matches_the_dense_gauss_newton(kind):
    data = _random_data(inputs=4, outputs=3, whiten=True)
    obj = _objective(data, width=5, depth=3, kind=kind, seed=4)
    dense = np.sort(eigenvalues(gauss_newton(obj), k=obj.num_params, method="dense").values)
    got = saxe.gauss_newton_nonzero(obj.params)
    assert got.shape == (12,)
    np.testing.assert_allclose(got, dense[-12:], rtol=1e-9, atol=1e-12)


def test_init_params_rejects_unknown_kind():
    with pytest.raises(ValueError, match="orthogonal"):
        saxe.init_params(jax.random.key(0), [(2, 2)], "uniform")
    w = saxe.init_params(jax.random.key(0), [(5, 3), (5, 5), (2, 5)], "orthogonal",
                         dtype=jnp.float64)
    np.testing.assert_allclose(w[0].T @ w[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(w[2] @ w[2].T, np.eye(2), atol=1e-12)
