"""Operator algebra (shift, scale, add, precondition) against dense float64 references: the
eigenvalues, traces and densities of the results, their tags, and their product counts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hessian_tools as ht
from conftest import spectrum_matrix
from hessian_tools.algebra import add, congruence, precondition, scale, shift

N = 40
RNG = np.random.default_rng(0)
PSD = spectrum_matrix(np.r_[np.zeros(4), np.linspace(0.5, 6.0, N - 4)], seed=1)
SADDLE = spectrum_matrix(np.r_[-np.linspace(0.5, 2.0, 6), np.linspace(0.2, 5.0, N - 6)], seed=2)
P_DIAG = RNG.uniform(0.2, 5.0, N)


def _small_objective(n=30, seed=0):
    """A two-layer tanh network (5 -> 4 -> 3, 39 parameters in a dict) with cross-entropy,
    float64, with predict/output_loss so that the Gauss-Newton operator exists."""
    rng = np.random.default_rng(seed)
    params = {"w1": jnp.asarray(rng.normal(size=(5, 4))), "b1": jnp.asarray(rng.normal(size=4)),
              "w2": jnp.asarray(rng.normal(size=(4, 3)))}
    x, y = jnp.asarray(rng.normal(size=(n, 5))), jnp.asarray(rng.integers(0, 3, n))

    def predict(p, batch):
        return jnp.tanh(batch[0] @ p["w1"] + p["b1"]) @ p["w2"]

    def output_loss(logits, batch):
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
    return ht.Objective(None, params, (x, y), predict=predict, output_loss=output_loss)


def _eigs(op):
    return np.linalg.eigvalsh(ht.to_dense(op))


def _extremes(op, k=3):
    res = ht.eigenvalues(op, k=k, which="both", key=jax.random.key(0))
    assert res.converged
    return res.values


@pytest.mark.parametrize("name, build, dense", [
    ("shift+", lambda a, b: shift(a, 0.7), lambda a, b: a + 0.7 * np.eye(N)),
    ("shift-", lambda a, b: shift(a, -1.3), lambda a, b: a - 1.3 * np.eye(N)),
    ("scale-", lambda a, b: scale(a, -2.5), lambda a, b: -2.5 * a),
    ("add", add, lambda a, b: a + b),
    ("nested", lambda a, b: shift(add(scale(a, 0.5), b), 0.1),
     lambda a, b: 0.5 * a + b + 0.1 * np.eye(N)),
    ("precondition", lambda a, b: precondition(b, P_DIAG),
     lambda a, b: b / np.sqrt(np.outer(P_DIAG, P_DIAG))),
])
def test_eigenvalues_trace_and_density_of_derived_operators_match_dense(name, build, dense):
    op = build(ht.from_dense(PSD, tags=("psd",)), ht.from_dense(SADDLE))
    exact = np.linalg.eigvalsh(dense(PSD, SADDLE))
    np.testing.assert_allclose(_extremes(op), np.r_[exact[::-1][:3], exact[:3][::-1]],
                               atol=1e-8 * np.abs(exact).max())
    assert ht.trace(op, method="dense").value == pytest.approx(exact.sum(), abs=1e-10)
    dens = ht.density(op, num_probes=4, num_steps=N, key=jax.random.key(1))
    np.testing.assert_allclose([dens.lambda_min, dens.lambda_max], exact[[0, -1]], atol=1e-8)
    nodes = dens.nodes[dens.weights > 1e-12]            # m = n: every node is an eigenvalue
    assert np.abs(nodes[:, None] - exact[None, :]).min(axis=1).max() < 1e-7


def test_tags_follow_the_algebra():
    psd, sym = ht.from_dense(PSD, tags=("psd",)), ht.from_dense(SADDLE)
    cases = {
        "shift psd by +": (shift(psd, 0.1), True), "shift psd by 0": (shift(psd, 0.0), True),
        "shift psd by -": (shift(psd, -0.1), False), "scale psd by +": (scale(psd, 3.0), True),
        "scale psd by 0": (scale(psd, 0), True), "scale psd by -": (scale(psd, -1.0), False),
        "sum of psd": (add(psd, shift(psd, 1.0)), True), "psd + indefinite": (add(psd, sym), False),
        "precondition psd": (precondition(psd, P_DIAG), True),
        "precondition indefinite": (precondition(sym, P_DIAG), False),
        "shift indefinite by +": (shift(sym, 10.0), False),       # not known, though true
    }
    for case, (op, psd_tag) in cases.items():
        assert ("psd" in op.tags) is psd_tag, case
        assert "symmetric" in op.tags, case
        if psd_tag:               # every tag that is kept is true
            assert _eigs(op)[0] >= -1e-10, case
    obj = _small_objective()
    G, H = ht.gauss_newton(obj), ht.hessian(obj)
    assert "psd" in shift(G, 1e-3).tags and "psd" not in shift(H, 1e-3).tags
    assert "psd" in add(G, ht.empirical_fisher(obj)).tags


def test_products_counted_on_the_result_and_its_bases():
    a, b = ht.from_dense(PSD), ht.from_dense(SADDLE)
    s = shift(a, 1.0)
    ht.density(s, num_probes=3, num_steps=5, key=jax.random.key(0))   # one batched call
    assert s.num_matvecs == a.num_matvecs == 15
    total = add(a, b)
    total(np.ones(N))
    assert (total.num_matvecs, a.num_matvecs, b.num_matvecs) == (1, 16, 1)
    twice = add(b, b)                       # two products of b per product
    ht.trace(twice, method="hutchinson", num_matvecs=4, key=jax.random.key(0))
    assert (twice.num_matvecs, b.num_matvecs) == (4, 9)
    nested = shift(scale(b, 2.0), 1.0)
    ht.to_dense(nested)
    assert b.num_matvecs == 9 + N


def test_on_a_model_the_algebra_matches_dense_hessian_and_gauss_newton():
    obj = _small_objective()
    H, G = ht.hessian(obj), ht.gauss_newton(obj)
    h, g = ht.to_dense(H), ht.to_dense(G)
    p = jax.tree.map(lambda a: jnp.asarray(np.random.default_rng(3).uniform(0.5, 2.0, a.shape)),
                     obj.params)
    d = 1 / np.sqrt(np.asarray(jax.flatten_util.ravel_pytree(p)[0]))
    for op, dense in ((add(H, scale(G, 0.5)), h + 0.5 * g),
                      (precondition(H, p), d[:, None] * h * d[None, :]),
                      (shift(G, 0.01), g + 0.01 * np.eye(len(g)))):
        np.testing.assert_allclose(ht.to_dense(op), dense, atol=1e-12)
    exact = np.linalg.eigvalsh(h + 0.5 * g)
    np.testing.assert_allclose(_extremes(add(H, scale(G, 0.5)), k=2),
                               np.r_[exact[::-1][:2], exact[:2][::-1]],
                               atol=1e-7 * np.abs(exact).max())


def test_precondition_is_the_trackers_preconditioned_sharpness():
    obj = _small_objective()
    p = jax.tree.map(lambda a: jnp.asarray(np.random.default_rng(4).uniform(0.5, 2.0, a.shape)),
                     obj.params)
    tracked = ht.sharpness(obj, key=jax.random.key(0), preconditioner=p, tol=1e-9,
                           num_matvecs=500)
    assert tracked.value == pytest.approx(_extremes(precondition(ht.hessian(obj), p), 1)[0],
                                          rel=1e-8)


def test_streamed_base_counts_each_product_once():
    obj = _small_objective()
    x, y = obj.data
    stream = ht.Objective(None, obj.params, lambda: iter([(x[:10], y[:10]), (x[10:], y[10:])]),
                          predict=obj.predict, output_loss=obj.output_loss)
    H = ht.hessian(stream)
    assert H.matvec_fn is None
    op = shift(H, 0.5)
    assert op.matvec_fn is None and op.slow_in_loops
    v = ht.tree.normal_like(jax.random.key(0), obj.params)
    expected = ht.tree.axpy(0.5, v, ht.hessian(obj)(v))
    got = op(v)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    assert op.num_matvecs == H.num_matvecs == 1


def test_congruence_with_a_zero_scaling_freezes_coordinates():
    A = ht.from_dense(SADDLE)
    d = np.ones(N)
    d[:5] = 0.0
    dense = ht.to_dense(congruence(A, d))
    assert np.all(dense[:5] == 0) and np.all(dense[:, :5] == 0)
    inf_p = np.ones(N)
    inf_p[:5] = np.inf
    np.testing.assert_array_equal(ht.to_dense(precondition(A, inf_p)), dense)


def test_bad_input_is_named():
    A = ht.from_dense(SADDLE)
    with pytest.raises(TypeError, match="CurvatureOperator"):
        shift(SADDLE, 1.0)
    with pytest.raises(TypeError, match="sigma='1'"):
        shift(A, "1")
    with pytest.raises(ValueError, match="finite"):
        scale(A, float("nan"))
    with pytest.raises(ValueError, match="do not match|has shape"):
        add(A, ht.from_dense(np.eye(3)))
    obj = _small_objective()
    H = ht.hessian(obj)
    with pytest.raises(ValueError, match="float32"):
        add(H, ht.hessian(obj.astype(jnp.float32)))
    bad = jax.tree.map(jnp.ones_like, obj.params) | {"b1": jnp.array([1.0, 0.0, -1.0, 2.0])}
    with pytest.raises(ValueError, match="leaf 'b1'.*2 entries.*not positive"):
        precondition(H, bad)
    nan = jax.tree.map(jnp.ones_like, obj.params) | {"w2": jnp.full((4, 3), jnp.nan)}
    with pytest.raises(ValueError, match="leaf 'w2'"):
        precondition(H, nan)
    with pytest.raises(ValueError, match="leaf 'w1' has shape"):
        precondition(H, jax.tree.map(jnp.ones_like, obj.params) | {"w1": jnp.ones(3)})
    with pytest.raises(ValueError, match="not positive semi-definite"):
        ht.from_dense(SADDLE, tags=("psd",))
    with pytest.raises(ValueError, match="known tags"):
        ht.from_dense(PSD, tags=("pd",))
