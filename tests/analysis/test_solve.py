"""Solves with curvature operators (CG, MINRES) against numpy.linalg in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hessian_tools as ht
from conftest import spectrum_matrix
from hessian_tools.analysis.solve import solve
from hessian_tools.linalg.cg import cg
from hessian_tools.results.toolbox import SolveResult

N = 50
RNG = np.random.default_rng(0)
PSD = spectrum_matrix(np.linspace(0.1, 10.0, N), seed=1)                      # kappa = 100
SINGULAR = spectrum_matrix(np.r_[np.zeros(8), np.linspace(0.5, 3.0, N - 8)], seed=2)
INDEFINITE = spectrum_matrix(np.r_[-np.linspace(0.5, 3.0, 10), np.linspace(0.5, 3.0, N - 10)],
                             seed=3)
B = RNG.normal(size=N)


@pytest.mark.parametrize("method", ["cg", "minres"])
def test_positive_definite_system_matches_numpy(method):
    op = ht.from_dense(PSD, tags=("psd",))
    res = solve(op, B, method=method, tol=1e-10)
    np.testing.assert_allclose(np.asarray(res.x), np.linalg.solve(PSD, B), atol=1e-8)
    assert res.converged and res.status is ht.Status.converged and res.method == method
    assert res.residual_norms[0] == pytest.approx(np.linalg.norm(B))
    assert res.residual_norm <= 1e-10 * res.bnorm
    assert res.true_residual_norm == pytest.approx(np.linalg.norm(B - PSD @ np.asarray(res.x)))
    assert res.true_residual_norm < 1e-8 * res.bnorm
    assert res.num_matvecs == op.num_matvecs == len(res.residual_norms)   # + 1 to verify
    if method == "minres":                     # MINRES minimises the residual: monotone
        assert np.all(np.diff(res.residual_norms) <= 1e-12 * res.bnorm)


@pytest.mark.parametrize("method", ["cg", "minres"])
def test_singular_consistent_system_gives_the_minimum_norm_solution(method):
    b = SINGULAR @ RNG.normal(size=N)                     # in the range
    res = solve(ht.from_dense(SINGULAR, tags=("psd",)), b, method=method, tol=1e-10)
    np.testing.assert_allclose(np.asarray(res.x), np.linalg.pinv(SINGULAR) @ b, atol=1e-8)
    assert res.converged


def test_indefinite_system_with_minres_and_auto():
    op = ht.from_dense(INDEFINITE)
    res = solve(op, B)                                    # auto: not PSD -> MINRES
    assert res.method == "minres" and res.converged and res.tol == 1e-10
    np.testing.assert_allclose(np.asarray(res.x), np.linalg.solve(INDEFINITE, B), atol=1e-8)
    assert "normal_residual" in res.extra


def test_damping_and_auto_choose_cg_for_psd():
    res = solve(ht.from_dense(SINGULAR, tags=("psd",)), B, damping=0.3)   # inconsistent b
    assert res.method == "cg" and res.damping == 0.3 and res.converged
    np.testing.assert_allclose(np.asarray(res.x), np.linalg.solve(SINGULAR + 0.3 * np.eye(N), B),
                               atol=1e-8)
    inconsistent = solve(ht.from_dense(SINGULAR), B, method="minres", tol=1e-8)
    assert inconsistent.status is ht.Status.least_squares        # min ||A x - b||
    np.testing.assert_allclose(SINGULAR @ np.asarray(inconsistent.x),
                               SINGULAR @ np.linalg.pinv(SINGULAR) @ B, atol=1e-6)


def _influence_objective():
    """A 4 -> 3 -> 3 tanh network in float64 (dict parameters), cross-entropy."""
    rng = np.random.default_rng(5)
    params = {"w1": jnp.asarray(rng.normal(size=(4, 3))), "b1": jnp.asarray(rng.normal(size=3)),
              "w2": jnp.asarray(rng.normal(size=(3, 3)))}
    x, y = jnp.asarray(rng.normal(size=(30, 4))), jnp.asarray(rng.integers(0, 3, 30))

    def predict(p, batch):
        return jnp.tanh(batch[0] @ p["w1"] + p["b1"]) @ p["w2"]

    def output_loss(logits, batch):
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
    return ht.Objective(None, params, (x, y), predict=predict, output_loss=output_loss)


def test_influence_style_inverse_hessian_gradient_products():
    """``(H + damping I)^{-1} g`` for a test gradient ``g`` (Koh & Liang 2017), by MINRES on
    the Hessian and by CG on the Gauss-Newton matrix, against dense solves."""
    obj = _influence_objective()
    g = ht.gradient(obj.with_data((obj.data[0][:3], obj.data[1][:3])))   # a "test" gradient
    flat_g, unravel = jax.flatten_util.ravel_pytree(g)
    for op, method in ((ht.hessian(obj), "minres"), (ht.gauss_newton(obj), "cg")):
        res = solve(op, g, damping=0.01)
        dense = ht.to_dense(op) + 0.01 * np.eye(flat_g.size)
        assert res.method == method and res.converged
        assert jax.tree.map(jnp.shape, res.x) == jax.tree.map(jnp.shape, g)
        np.testing.assert_allclose(jax.flatten_util.ravel_pytree(res.x)[0],
                                   np.linalg.solve(dense, flat_g), rtol=1e-7, atol=1e-9)
    assert np.linalg.eigvalsh(ht.to_dense(ht.hessian(obj)))[0] < -0.01  # MINRES was needed


def test_budget_zero_rhs_negative_curvature_and_round_trip():
    op = ht.from_dense(PSD, tags=("psd",))
    short = solve(op, B, num_matvecs=3)
    assert short.status is ht.Status.budget and not short.converged
    assert len(short.residual_norms) == 4 and short.num_matvecs == 4
    zero = solve(op, np.zeros(N))
    assert zero.status is ht.Status.zero_rhs and zero.num_matvecs == 0
    assert np.all(np.asarray(zero.x) == 0)
    neg = cg(lambda v: jnp.asarray(INDEFINITE) @ v, jnp.asarray(B), num_matvecs=200)
    assert neg.status is ht.Status.negative_curvature and not neg.status.ok
    back = SolveResult.from_json(short.to_json())
    assert back.to_dict() == short.to_dict() and back.status is ht.Status.budget


def test_bad_input_is_named():
    op = ht.from_dense(INDEFINITE)
    with pytest.raises(ValueError, match="method='cg' needs an operator tagged positive.*"
                                         "method='minres'"):
        solve(op, B, method="cg")
    with pytest.raises(ValueError, match="leaf '' has shape \\(3,\\), expected \\(50,\\)"):
        solve(op, np.ones(3))
    obj = _influence_objective()
    H = ht.hessian(obj)
    g = jax.tree.map(jnp.ones_like, obj.params)
    with pytest.raises(ValueError, match="missing leaves \\['w2'\\]"):
        solve(H, {"w1": g["w1"], "b1": g["b1"]})
    with pytest.raises(ValueError, match="leaf 'b1'.*non-finite"):
        solve(H, g | {"b1": jnp.array([1.0, jnp.nan, 0.0])})
    for tol in (0.0, 1.0, -1e-3, 2):
        with pytest.raises(ValueError, match=f"tol={tol!r} must lie in \\(0, 1\\).*\\|\\|b\\|\\|"):
            solve(op, B, tol=tol)
    with pytest.raises(ValueError, match="damping=-0.1 must be a finite number >= 0"):
        solve(op, B, damping=-0.1)
    with pytest.raises(ValueError, match="method='lsqr' is not one of"):
        solve(op, B, method="lsqr")
    with pytest.raises(TypeError, match="CurvatureOperator"):
        solve(INDEFINITE, B)
