"""The SLQ solver (pure functions of a matvec) against exact quadrature identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rounding_perturbed_diag, spectrum_matrix
from hessian_tools.linalg import lanczos_tridiag
from hessian_tools.linalg.slq import (gauss_quadrature, gaussian_cdf, gaussian_smoothing,
                                      quadrature_count_bounds, slq_quadrature,
                                      slq_quadrature_host, slq_quadrature_numpy, wasserstein1)
from hessian_tools.linalg.trace import random_probes

N = 60
rng = np.random.default_rng(3)
EIGS = np.r_[4.0, 3.0, rng.uniform(-1.0, 1.0, N - 5), -2.0, -2.5, -3.0]
A = spectrum_matrix(EIGS, seed=11)
MATVEC = jax.tree_util.Partial(lambda a, x: a @ x, jnp.asarray(A))
LAM, U = np.linalg.eigh(A)


def _probe_measure(v):
    """The exact probe measure: eigenvalues and the squared components of ``v / ||v||``."""
    return LAM, (U.T @ (v / np.linalg.norm(v))) ** 2


@jax.jit
def _rule(probes):
    return slq_quadrature(MATVEC, probes, num_steps=10)


def test_gauss_rule_integrates_polynomials_of_degree_2m_minus_1():
    m = 8
    v = np.asarray(random_probes(jax.random.key(0), jnp.zeros(N), 1)[0])
    rule = jax.jit(lambda x: gauss_quadrature(lanczos_tridiag(MATVEC, x, num_steps=m)))(v)
    lam, c = _probe_measure(v)
    scale = np.max(np.abs(EIGS))
    for k in range(2 * m):                          # exact up to degree 2m - 1
        exact = np.sum(c * (lam / scale) ** k)
        got = np.sum(np.asarray(rule.weights) * (np.asarray(rule.nodes) / scale) ** k)
        np.testing.assert_allclose(got, exact, atol=1e-10, err_msg=f"degree {k}")
    # and not beyond: degree 2m differs (this guards against a test that cannot fail)
    exact = np.sum(c * (lam / scale) ** (2 * m))
    got = np.sum(np.asarray(rule.weights) * (np.asarray(rule.nodes) / scale) ** (2 * m))
    assert abs(got - exact) > 1e-8


def test_slq_quadrature_is_batched_jitted_and_matches_per_probe_lanczos():
    probes = random_probes(jax.random.key(1), jnp.zeros(N), 5)
    run = jax.jit(lambda p, b: slq_quadrature(MATVEC, p, num_steps=12, batch_size=b),
                  static_argnums=1)
    full = run(probes, None)
    assert full.nodes.shape == full.weights.shape == full.residuals.shape == (5, 12)
    np.testing.assert_allclose(np.sum(full.weights, axis=1), 1.0, atol=1e-12)
    assert np.all(np.diff(np.asarray(full.nodes), axis=1) >= 0)
    for batch in (2,):                              # a remainder is handled, same numbers
        part = run(probes, batch)
        np.testing.assert_allclose(part.nodes, full.nodes, atol=1e-12)
        np.testing.assert_allclose(part.weights, full.weights, atol=1e-12)
    one = gauss_quadrature(lanczos_tridiag(MATVEC, probes[4], num_steps=12))   # eager
    np.testing.assert_allclose(full.nodes[4], one.nodes, atol=1e-12)


def test_host_driven_form_matches_the_compiled_form():
    probes = random_probes(jax.random.key(2), jnp.zeros(N), 3, kind="gaussian")
    compiled = _rule(probes)
    host = slq_quadrature_host(lambda q: q @ A.T, probes, num_steps=10)
    # the NumPy form sweeps only the filled rows; in groups of 2 (a remainder of 1)
    numpy_form = slq_quadrature_numpy(lambda q: q @ A.T, probes, num_steps=10, group_size=2)
    for rule in (host, numpy_form):
        np.testing.assert_allclose(rule.nodes, compiled.nodes, atol=1e-10)
        # the same measures: the zero-weight nodes past breakdown are zeros, and may take the
    # place of the true 0 in either order (seen on a GPU), so compare distribution functions
    x = np.array([-0.5, 0.5, 1.5, 2.5])
    for p in range(3):
        np.testing.assert_allclose(gaussian_cdf(rule.nodes[p], rule.weights[p], x, 0.0),
                                   gaussian_cdf(compiled.nodes[p], compiled.weights[p], x, 0.0),
                                   atol=1e-10)
        np.testing.assert_allclose(rule.residuals, compiled.residuals, atol=1e-10)


def test_interleaved_halves_give_the_same_rule():
    """interleave=2 alternates the steps of two halves of the probes (so one half's product
    is computed while the other is reorthogonalised): the same rule as lockstep, the same
    number of products; an odd group falls back to lockstep."""
    probes = random_probes(jax.random.key(6), jnp.zeros(N), 6, kind="gaussian")
    calls = []

    def apply(q):
        calls.append(len(q))
        return q @ A.T
    lockstep = slq_quadrature_numpy(apply, probes, num_steps=9)
    assert calls == [6] * 9
    calls.clear()
    halves = slq_quadrature_numpy(apply, probes, num_steps=9, interleave=2)
    assert calls == [3] * 18
    calls.clear()
    odd = slq_quadrature_numpy(apply, probes, num_steps=9, group_size=3, interleave=2)
    assert calls == [3] * 18
    for rule in (halves, odd):
        np.testing.assert_allclose(rule.nodes, lockstep.nodes, atol=1e-12)
        np.testing.assert_allclose(rule.weights, lockstep.weights, atol=1e-12)
        np.testing.assert_allclose(rule.residuals, lockstep.residuals, atol=1e-12)


def test_numpy_form_on_a_pytree_with_breakdown():
    """Two leaves, and a spectrum of 3 distinct values: Lanczos breaks down after 3 steps
    and the later nodes get zero weight, as in the compiled form."""
    a = np.diag(np.r_[2.0, 2.0, 1.0, 1.0, 0.0, 0.0])
    probes = {"x": jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 2))),
              "y": jnp.asarray(np.random.default_rng(1).normal(size=(3, 2)))}

    def apply_rows(v):
        flat = jnp.concatenate([v["x"].reshape(3, 4), v["y"]], axis=1) @ a
        return {"x": flat[:, :4].reshape(3, 2, 2), "y": flat[:, 4:]}
    rule = slq_quadrature_numpy(apply_rows, probes, num_steps=5)
    compiled = slq_quadrature_host(apply_rows, probes, num_steps=5)
    for p in range(3):
        kept = rule.nodes[p][rule.weights[p] > 1e-12]
        np.testing.assert_allclose(np.sort(kept), [0.0, 1.0, 2.0], atol=1e-10)
    # the same measures: the zero-weight nodes past breakdown are zeros, and may take the
    # place of the true 0 in either order (seen on a GPU), so compare distribution functions
    x = np.array([-0.5, 0.5, 1.5, 2.5])
    for p in range(3):
        np.testing.assert_allclose(gaussian_cdf(rule.nodes[p], rule.weights[p], x, 0.0),
                                   gaussian_cdf(compiled.nodes[p], compiled.weights[p], x, 0.0),
                                   atol=1e-10)


@pytest.mark.parametrize("form", ["compiled", "host", "numpy"])
def test_every_form_detects_breakdown_under_rounding_sized_noise(form):
    """A perturbation of 2e-15 (rounding, as a GPU's float64 products give) must read as
    breakdown in all three SLQ forms, judged against ||A|| = 2 and not this step's small
    alpha + beta: else the later nodes are second copies of 1 and 2 that carry weight."""
    e = jnp.asarray(rounding_perturbed_diag(2e-15))
    probes = jax.random.normal(jax.random.key(0), (4, 5))
    if form == "compiled":
        rule = slq_quadrature(lambda x: e @ x, probes, num_steps=5)
    elif form == "host":
        rule = slq_quadrature_host(lambda rows: rows @ e, probes, num_steps=5)
    else:
        rule = slq_quadrature_numpy(lambda rows: rows @ e, probes, num_steps=5)
    for p in range(4):
        kept = np.asarray(rule.nodes[p])[np.asarray(rule.weights[p]) > 1e-12]
        np.testing.assert_allclose(np.sort(kept), [0.0, 1.0, 2.0], atol=1e-10)


def test_ritz_residuals_bound_the_distance_to_the_spectrum():
    probes = random_probes(jax.random.key(4), jnp.zeros(N), 2)
    rule = jax.jit(lambda p: slq_quadrature(MATVEC, p, num_steps=15))(probes)
    for theta, r in zip(np.ravel(rule.nodes), np.ravel(rule.residuals)):
        assert np.min(np.abs(EIGS - theta)) <= r * (1 + 1e-8) + 1e-12
    top = np.asarray(rule.nodes)[:, -1]              # the extreme nodes converge first
    np.testing.assert_allclose(top, 4.0, atol=1e-3)


def test_breakdown_gives_an_exact_rule_and_a_zero_width_bracket():
    a = np.diag(np.r_[2.0, 2.0, 1.0, -1.0, -1.0, -1.0])   # 3 distinct: breakdown after 3
    probes = random_probes(jax.random.key(0), jnp.zeros(6), 4)
    rule = jax.jit(lambda p: slq_quadrature(lambda x: a @ x, p, num_steps=6))(probes)
    nodes, weights = np.asarray(rule.nodes), np.asarray(rule.weights)
    assert np.all(np.isfinite(nodes)) and np.all(np.asarray(rule.residuals) == 0)
    for p in range(4):
        v = np.asarray(probes[p]) / np.linalg.norm(probes[p])
        live = weights[p] > 1e-12
        np.testing.assert_allclose(np.sort(nodes[p][live]), [-1.0, 1.0, 2.0], atol=1e-10)
        np.testing.assert_allclose(weights[p][np.argsort(nodes[p])][live[np.argsort(nodes[p])]],
                                   [v[3:] @ v[3:], v[2] ** 2, v[:2] @ v[:2]], atol=1e-10)
    est, lower, upper = quadrature_count_bounds(nodes, weights, 0.0, rule.residuals)
    np.testing.assert_allclose(est, 0.5, atol=1e-12)      # Rademacher: 3 of 6 coordinates
    np.testing.assert_allclose(lower, est, atol=1e-12)
    np.testing.assert_allclose(upper, est, atol=1e-12)


@pytest.mark.parametrize("use_residuals", [False, True])
def test_count_bracket_contains_the_probe_measure_at_every_threshold(use_residuals):
    probes = random_probes(jax.random.key(5), jnp.zeros(N), 6)
    rule = _rule(probes)
    res = rule.residuals if use_residuals else None
    measures = [_probe_measure(np.asarray(probes[p])) for p in range(6)]
    widths = []
    for t in np.linspace(-3.5, 4.5, 81):
        est, lower, upper = quadrature_count_bounds(rule.nodes, rule.weights, t, res)
        true = np.array([np.sum(c[lam < t]) for lam, c in measures])
        assert np.all(lower - 1e-10 <= true) and np.all(true <= upper + 1e-10), t
        assert np.all(lower <= est) and np.all(est <= upper)
        widths.append(np.mean(upper - lower))
    assert np.mean(widths) < 0.25                   # the bracket is informative


def test_residual_bracket_is_tight_in_a_spectral_gap():
    eigs = np.r_[np.linspace(-3.0, -2.0, 10), np.linspace(1.0, 2.0, 50)]   # gap (-2, 1)
    a = spectrum_matrix(eigs, seed=2)
    probes = random_probes(jax.random.key(0), jnp.zeros(60), 4)
    rule = jax.jit(lambda p: slq_quadrature(lambda x: a @ x, p, num_steps=40))(probes)
    est, lower, upper = quadrature_count_bounds(rule.nodes, rule.weights, -0.5, rule.residuals)
    _, cms_lower, cms_upper = quadrature_count_bounds(rule.nodes, rule.weights, -0.5)
    assert np.all(upper - lower < 0.02)             # converged nodes far from the threshold
    assert np.mean(upper - lower) < 0.3 * np.mean(cms_upper - cms_lower)   # CMS alone: wider
    for p in range(4):
        v = np.asarray(probes[p]) / np.linalg.norm(probes[p])
        lam, u = np.linalg.eigh(a)
        np.testing.assert_allclose(est[p], np.sum((u.T @ v)[lam < 0] ** 2), atol=1e-6)


def test_smoothing_cdf_and_wasserstein():
    nodes = np.array([[0.0, 1.0, 3.0], [0.5, 1.0, 2.0]])
    weights = np.array([[0.2, 0.3, 0.5], [0.5, 0.25, 0.25]])
    grid = np.linspace(-5, 8, 4001)
    p = gaussian_smoothing(nodes, weights, grid, 0.3)
    np.testing.assert_allclose(np.trapezoid(p, grid), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.trapezoid(p * grid, grid),
                               np.mean(np.sum(nodes * weights, axis=1)), atol=1e-6)
    np.testing.assert_allclose(gaussian_cdf(nodes, weights, [-1, 0.0, 1.5, 10], 0.0),
                               [0.0, 0.1, 0.1 + 0.25 + 0.275, 1.0])
    smooth = gaussian_cdf(nodes, weights, grid, 0.3)
    np.testing.assert_allclose(np.gradient(smooth, grid), p, atol=1e-3)
    assert wasserstein1([0.0, 1.0], [0.5, 0.5], [0.0, 1.0]) == 0.0
    np.testing.assert_allclose(wasserstein1([[0.0], [2.0]], [[1.0], [1.0]], [1.0]), 1.0)
    np.testing.assert_allclose(wasserstein1([0.0], [1.0], [3.0, 5.0]), 4.0)
