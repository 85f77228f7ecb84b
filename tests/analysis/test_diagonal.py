"""Diagonal estimators (Hutchinson, XDiag, exact), the exact Gauss-Newton diagonal and the
Frobenius norm, against dense float64 references and closed forms."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hessian_tools as ht
from conftest import spectrum_matrix
from hessian_tools.analysis.diagonal import diagonal, frobenius_norm_sq, ggn_diagonal
from hessian_tools.examples.digits import MLP, cross_entropy
from hessian_tools.linalg.trace import random_probes
from hessian_tools.results.toolbox import DiagonalEstimate

# the module itself: ht.analysis.diagonal is the function that shares its name
diagonal_module = importlib.import_module("hessian_tools.analysis.diagonal")

N = 60
RNG = np.random.default_rng(0)
# a few outliers over a small indefinite bulk: the shape of a network's Hessian
SPIKED = spectrum_matrix(np.r_[[40.0, 25.0, 15.0, 10.0, 6.0], RNG.normal(0, 0.3, N - 5)], seed=3)


def _model(n=24, seed=0, output_loss=None, batches=None):
    """A 4 -> 3 -> 3 tanh network (24 parameters in a dict), float64."""
    rng = np.random.default_rng(seed)
    params = {"w1": jnp.asarray(rng.normal(size=(4, 3))), "b1": jnp.asarray(rng.normal(size=3)),
              "w2": jnp.asarray(rng.normal(size=(3, 3)))}
    x, y = jnp.asarray(rng.normal(size=(n, 4))), jnp.asarray(rng.integers(0, 3, n))
    data = (x, y) if batches is None else [(x[a:b], y[a:b]) for a, b in
                                           zip(batches[:-1], batches[1:])]

    def predict(p, batch):
        return jnp.tanh(batch[0] @ p["w1"] + p["b1"]) @ p["w2"]

    def cross_ent(logits, batch):
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
    return ht.Objective(None, params, data, predict=predict,
                        output_loss=output_loss or cross_ent)


def _flat(tree_):
    return np.asarray(jax.flatten_util.ravel_pytree(tree_)[0])


def test_hutchinson_is_exact_on_a_diagonal_matrix():
    d = np.array([3.0, 1.0, -2.0, 0.5])
    est = diagonal(ht.from_dense(np.diag(d)), num_matvecs=5, key=jax.random.key(0))
    np.testing.assert_allclose(est.flat, d, atol=1e-15)
    np.testing.assert_allclose(est.flat_stderr, 0.0, atol=1e-15)
    assert est.sum_of_squares == pytest.approx(np.sum(d ** 2), abs=1e-12)
    assert (est.num_matvecs, est.num_samples, est.method) == (5, 5, "hutchinson")


def _xdiag_naive(a, omega):
    """XDiag by its definition: for each test vector, Diag++ with it left out of the sketch
    and used as the probe (Epperly, Tropp & Webber 2024, section 2)."""
    m, n = omega.shape
    estimates = []
    for i in range(m):
        q = np.linalg.qr(a @ np.delete(omega, i, axis=0).T)[0]
        w = omega[i]
        estimates.append(np.diag(q @ q.T @ a) + w * ((np.eye(n) - q @ q.T) @ a @ w))
    return np.mean(estimates, axis=0)


def test_xdiag_matches_its_definition():
    key = jax.random.key(7)
    est = diagonal(ht.from_dense(SPIKED), method="xdiag", num_matvecs=20, key=key)
    omega = np.asarray(random_probes(key, jnp.zeros(N), 10))
    np.testing.assert_allclose(est.flat, _xdiag_naive(SPIKED, omega), atol=1e-11)
    assert est.num_matvecs == 20 and est.num_samples == 10


def test_xdiag_is_exact_when_the_sketch_holds_the_operator():
    u = np.linalg.qr(RNG.normal(size=(N, 4)))[0]
    low_rank = u @ np.diag([5.0, -3.0, 2.0, 1.0]) @ u.T
    est = diagonal(ht.from_dense(low_rank), method="xdiag", num_matvecs=16, key=jax.random.key(0))
    np.testing.assert_allclose(est.flat, np.diag(low_rank), atol=1e-12)
    assert est.extra["rank_deficient_sketch"]
    small = spectrum_matrix([2.0, -1.0, 0.5])                   # m >= dim: exact products
    est = diagonal(ht.from_dense(small), method="xdiag", num_matvecs=8, key=jax.random.key(0))
    assert est.method == "exact" and est.extra["requested"] == "xdiag"
    np.testing.assert_allclose(est.flat, np.diag(small), atol=1e-14)


def test_estimates_are_unbiased_calibrated_and_xdiag_beats_hutchinson():
    op, exact = ht.from_dense(SPIKED), np.diag(SPIKED)
    errors, z2, sums = {}, {}, {"hutchinson": [], "plug-in": []}
    for method in ("hutchinson", "xdiag"):
        runs = [diagonal(op, method=method, num_matvecs=30, key=jax.random.key(s))
                for s in range(20)]
        errors[method] = np.mean([np.linalg.norm(r.flat - exact) for r in runs])
        z2[method] = np.mean([np.mean(((r.flat - exact) / r.flat_stderr) ** 2) for r in runs])
        if method == "hutchinson":      # the jackknife's correction, in closed form
            for r in runs:
                assert r.sum_of_squares == pytest.approx(
                    r.flat @ r.flat - r.flat_stderr @ r.flat_stderr, rel=1e-10)
            spread = np.std([r.sum_of_squares for r in runs], ddof=1)
            assert 0.5 < np.mean([r.sum_of_squares_stderr for r in runs]) / spread < 2
            sums["hutchinson"] = [r.sum_of_squares for r in runs]
            sums["plug-in"] = [float(r.flat @ r.flat) for r in runs]
            mean = np.mean([r.flat for r in runs], axis=0)
            se = np.sqrt(np.mean([r.flat_stderr ** 2 for r in runs], axis=0) / len(runs))
            assert np.max(np.abs(mean - exact) / se) < 4.5          # unbiased, 60 entries
    assert errors["xdiag"] < errors["hutchinson"] / 5, errors
    assert 0.6 < z2["hutchinson"] < 1.6, z2                     # E[z^2] = 29/27 for t_29
    assert 0.4 < z2["xdiag"] < 3.0, z2                          # the paper's estimate
    truth = float(exact @ exact)
    corrected, plug_in = np.mean(sums["hutchinson"]), np.mean(sums["plug-in"])
    assert abs(corrected - truth) < 3 * np.std(sums["hutchinson"]) / np.sqrt(20)
    assert plug_in > truth + 2 * np.std(sums["plug-in"]) / np.sqrt(20)   # biased upward


def test_exact_diagonal_of_a_model_hessian_is_shaped_like_the_parameters():
    obj = _model()
    H = ht.hessian(obj)
    est = diagonal(H, method="exact")
    np.testing.assert_allclose(_flat(est.diagonal), np.diag(ht.dense_hessian(obj)), atol=1e-12)
    assert jax.tree.map(jnp.shape, est.diagonal) == jax.tree.map(jnp.shape, obj.params)
    assert est.stderr is None and est.exact and est.num_matvecs == 24 == H.num_matvecs
    back = DiagonalEstimate.from_json(est.to_json())
    assert back.diagonal is None and back.to_dict() == est.to_dict()
    np.testing.assert_array_equal(back.by_path()["w1"], np.asarray(est.diagonal["w1"]))
    noisy = diagonal(H, method="xdiag", num_matvecs=12, key=jax.random.key(0))
    assert set(noisy.by_path(stderr=True)) == {"b1", "w1", "w2"}
    with pytest.raises(ValueError, match="max_dim=10.*method='xdiag'"):
        diagonal(H, method="exact", max_dim=10)
    with pytest.raises(ValueError, match="no standard errors"):
        est.by_path(stderr=True)


def _dense_ggn_diagonal(obj):
    return np.diag(ht.to_dense(ht.gauss_newton(obj)))


@pytest.mark.parametrize("case", ["cross-entropy", "unequal batches", "indefinite output loss"])
def test_ggn_diagonal_is_the_dense_gauss_newton_diagonal(case):
    if case == "cross-entropy":
        obj = _model()
    elif case == "unequal batches":
        obj = _model(batches=[0, 5, 17, 24])
    else:                                  # not convex in the outputs: h_i is indefinite
        obj = _model(output_loss=lambda o, batch: jnp.mean(jnp.sin(3 * o).sum(-1) * o[:, 0]))
    compiled = diagonal_module._ggn_diagonal_chunk._cache_size()
    est = ggn_diagonal(obj, max_bytes=5 * 24 * 3 * 8)      # chunks of 5 examples
    np.testing.assert_allclose(est.flat, _dense_ggn_diagonal(obj), rtol=1e-11, atol=1e-14)
    assert est.extra == {"vjps_per_example": 3, "num_examples": 24, "chunk_size": 5}
    assert diagonal_module._ggn_diagonal_chunk._cache_size() == compiled + 1   # padded tails
    assert est.method == "ggn-exact" and est.num_matvecs == 0
    if case == "indefinite output loss":
        assert np.min(est.flat) < 0                        # a genuinely indefinite GGN


def test_ggn_diagonal_of_an_nnx_model():
    model = MLP((4,), in_features=5, out_features=3, rngs=nnx.Rngs(0),
                param_dtype=jnp.float64)
    rng = np.random.default_rng(0)
    data = (jnp.asarray(rng.normal(size=(20, 5))), jnp.asarray(rng.integers(0, 3, 20)))
    obj = ht.Objective.from_nnx(model, cross_entropy, data)
    est = ggn_diagonal(obj)
    np.testing.assert_allclose(est.flat, _dense_ggn_diagonal(obj), rtol=1e-10, atol=1e-15)
    assert jax.tree.map(jnp.shape, est.diagonal) == jax.tree.map(jnp.shape, obj.params)
    assert "layers/0/kernel" in est.paths


def test_frobenius_norm_exact_and_estimates():
    op = ht.from_dense(SPIKED)
    truth = float(np.sum(SPIKED ** 2))
    assert frobenius_norm_sq(op, method="exact").value == pytest.approx(truth, rel=1e-12)
    for method in ("hutch++", "hutchinson"):
        runs = [frobenius_norm_sq(op, method=method, num_matvecs=30, key=jax.random.key(s))
                for s in range(8)]
        z = [(r.value - truth) / r.stderr for r in runs]
        assert np.max(np.abs(z)) < 5, (method, z)
        assert runs[0].num_matvecs == 30 and runs[0].function == "x**2"
    hpp = np.mean([abs(frobenius_norm_sq(op, num_matvecs=30, key=jax.random.key(s)).value - truth)
                   for s in range(8)])
    hutch = np.mean([abs(r.value - truth) for r in runs])
    assert hpp < hutch / 3, (hpp, hutch)
    u = np.linalg.qr(RNG.normal(size=(N, 3)))[0]          # rank 3 < sketch of 4: exact
    low = frobenius_norm_sq(ht.from_dense(u @ np.diag([3.0, -2.0, 1.0]) @ u.T),
                            num_matvecs=12, key=jax.random.key(0))
    assert low.value == pytest.approx(14.0, rel=1e-12) and low.stderr < 1e-12


def test_bad_input_is_named():
    op = ht.from_dense(SPIKED)
    with pytest.raises(ValueError, match="method='xdiag\\+\\+' is not one of"):
        diagonal(op, method="xdiag++", key=jax.random.key(0))
    with pytest.raises(ValueError, match="explicit PRNG key"):
        diagonal(op, method="xdiag")
    with pytest.raises(ValueError, match="num_matvecs=4 must be an integer >= 6"):
        diagonal(op, method="xdiag", num_matvecs=4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_matvecs=1 must be an integer >= 2"):
        diagonal(op, num_matvecs=1, key=jax.random.key(0))
    with pytest.raises(TypeError, match="CurvatureOperator"):
        diagonal(SPIKED, key=jax.random.key(0))
    with pytest.raises(ValueError, match="explicit PRNG key"):
        frobenius_norm_sq(op)
    with pytest.raises(ValueError, match="max_dim=50"):
        frobenius_norm_sq(op, method="exact", max_dim=50)
    obj = _model()
    with pytest.raises(TypeError, match="takes an Objective"):
        ggn_diagonal(ht.gauss_newton(obj))
    with pytest.raises(ValueError, match="predict"):
        ggn_diagonal(ht.Objective(obj.loss, obj.params, obj.data))
    coupled = ht.Objective(None, obj.params, obj.data, predict=obj.predict,
                           output_loss=obj.output_loss, couples_examples=True)
    with pytest.raises(ValueError, match="couples the examples"):
        ggn_diagonal(coupled)
