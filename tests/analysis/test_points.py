"""Analyses at many points at once (eigenvalues_at, classify_at, trace_at, StackedOperator)
against dense float64 references at every point."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools.analysis.points import classify_at, eigenvalues_at, trace_at
from hessian_tools.results.points import PointResults
from hessian_tools.stacked import StackedOperator

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(40, 3)))
Y = jnp.asarray(np.tanh(RNG.normal(size=(40, 2))))


def _mlp_loss(p, batch):
    h = jnp.tanh(batch[0] @ p["w1"] + p["b1"])
    return jnp.mean((h @ p["w2"] - batch[1]) ** 2)


def _params(seed):
    r = np.random.default_rng(seed)
    return {"w1": jnp.asarray(r.normal(size=(3, 4))), "b1": jnp.asarray(r.normal(size=4)),
            "w2": jnp.asarray(r.normal(size=(4, 2)))}


OBJ = ht.Objective(_mlp_loss, _params(0), (X, Y))
POINTS = [_params(s) for s in (1, 2, 3)]


def _dense_eigs(p):
    return np.linalg.eigvalsh(ht.dense_hessian(OBJ.with_params(p)))


def test_eigenvalues_at_every_point_match_dense_references():
    res = eigenvalues_at(OBJ, POINTS, k=2, which="both", key=jax.random.key(0))
    assert isinstance(res, PointResults) and len(res) == 3 and res.mode == "batched"
    assert res.converged and res.num_rounds == 0 and res.num_calls == 2    # compiled solver
    for r, p in zip(res, POINTS):
        w = _dense_eigs(p)
        np.testing.assert_allclose(r.values, np.r_[w[-1], w[-2], w[1], w[0]], atol=1e-8)
    assert res.values.shape == (3, 4)
    assert res.num_matvecs == sum(r.num_matvecs for r in res)


def test_lockstep_solver_is_ht_eigenvalues_at_every_point():
    key = jax.random.key(5)
    res = eigenvalues_at(OBJ, POINTS, k=1, which="smallest", key=key, solver="lockstep",
                         krylov_dim=12)
    assert res.num_rounds > 0
    for r, p, sub in zip(res, POINTS, jax.random.split(key, 3)):
        single = ht.eigenvalues(ht.hessian(OBJ.with_params(p)), k=1, which="smallest", key=sub,
                                krylov_dim=12)
        np.testing.assert_array_equal(r.values, single.values)
        assert r.num_matvecs == single.num_matvecs


def test_compiled_solver_grows_the_krylov_space_until_converged():
    res = eigenvalues_at(OBJ, POINTS, k=3, which="both", key=jax.random.key(1),
                         solver="compiled", num_steps=7, tol=1e-10)
    assert res.converged and res.num_rounds == 0
    for r, p in zip(res, POINTS):
        w = _dense_eigs(p)
        np.testing.assert_allclose(r.values, np.r_[w[-1:-4:-1], w[2::-1]], atol=1e-9)
        assert r.extra["num_steps"] == 24                  # 46 capped at the dimension
        assert np.all(r.residuals <= 1e-9 * r.scale)


def test_stacked_form_and_sequential_mode_give_the_same_results():
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *POINTS)
    key = jax.random.key(3)
    a = eigenvalues_at(OBJ, POINTS, k=1, key=key)
    b = eigenvalues_at(OBJ, stacked, k=1, key=key)
    c = eigenvalues_at(OBJ, POINTS, k=1, key=key, mode="sequential")
    assert c.mode == "sequential" and c.num_rounds == 0
    np.testing.assert_allclose(a.values, b.values, rtol=1e-12)
    np.testing.assert_allclose(a.values, c.values, rtol=1e-10)


def test_trace_at_dense_is_exact():
    res = trace_at(OBJ, POINTS, method="dense", key=jax.random.key(0))
    np.testing.assert_allclose(res.values, [np.sum(_dense_eigs(p)) for p in POINTS], rtol=1e-10)


@pytest.mark.parametrize("method", ["hutch++", "hutchinson"])
def test_trace_at_compiled_is_ht_trace_with_the_same_probes(method):
    """The compiled solver's estimates are ht.trace's at every point (same keys, same probes),
    and the estimator is exact where the sketch spans the space (Hutch++, 3 k >= dim)."""
    key = jax.random.key(4)
    res = trace_at(OBJ, POINTS, key=key, method=method, num_matvecs=12, probe="gaussian")
    assert res.num_calls == 1 and res.num_rounds == 0
    lock = trace_at(OBJ, POINTS, key=key, method=method, num_matvecs=12, probe="gaussian",
                    solver="lockstep")
    for r, lk, p, sub in zip(res, lock, POINTS, jax.random.split(key, 3)):
        single = ht.trace(ht.hessian(OBJ.with_params(p)), method=method, num_matvecs=12,
                          key=sub, probe="gaussian")
        assert r.extra == {"solver": "compiled"} and r.num_matvecs == 12
        assert r.value == pytest.approx(single.value, rel=1e-10)
        assert r.stderr == pytest.approx(single.stderr, rel=1e-8)
        np.testing.assert_allclose(r.samples, lk.samples, rtol=1e-8, atol=1e-12)
    full = trace_at(OBJ, POINTS, key=key, num_matvecs=3 * 24 + 1)       # dim 24: exact sketch
    np.testing.assert_allclose(full.values, [np.sum(_dense_eigs(p)) for p in POINTS], rtol=1e-8)


@pytest.mark.parametrize("vmap,linearize", [(True, "auto"), (False, "auto"), (True, False)])
def test_stacked_products_are_the_single_point_products(vmap, linearize):
    op = StackedOperator(OBJ, POINTS, vmap=vmap, linearize=linearize)
    vecs = jax.tree.map(lambda a: jnp.asarray(RNG.normal(size=(3, 2) + a.shape)), OBJ.params)
    out = op.products([2, 0], vecs)                       # points 2 and 0; slot 2 is padding
    for slot, point in ((0, 2), (1, 0)):
        H = ht.dense_hessian(OBJ.with_params(POINTS[point]))
        for r in range(2):
            v = jax.flatten_util.ravel_pytree(jax.tree.map(lambda a: a[slot, r], vecs))[0]
            got = jax.flatten_util.ravel_pytree(jax.tree.map(lambda a: a[slot, r], out))[0]
            np.testing.assert_allclose(np.asarray(got), H @ np.asarray(v), rtol=1e-10,
                                       atol=1e-12)


# ---- classify at many points: planted critical points of known index ---------------------------

A6 = jnp.array([1.0, 1.3, 1.6, 2.0, 2.5])


def _quartic(p, batch):
    """Critical points at y_i in {-1, 0, 1}; the index is the number of zeros."""
    return jnp.sum(A6 * (p ** 2 - 1) ** 2)


def test_classify_at_finds_the_planted_indices():
    obj = ht.Objective(_quartic, jnp.zeros(5), (jnp.zeros((1, 1)),))
    pts = [jnp.ones(5), jnp.array([0.0, 1, -1, 1, 1]), jnp.array([0.0, 0, 1, 0, -1])]
    res = classify_at(obj, pts, key=jax.random.key(0))
    assert res.verdicts == ("minimum", "saddle", "saddle")
    np.testing.assert_array_equal(res.indices, [0, 1, 3])
    np.testing.assert_allclose(res.losses, [0.0, 1.0, 1.0 + 1.3 + 2.0], atol=1e-12)
    single = ht.classify(obj.with_params(pts[2]), key=jax.random.split(jax.random.key(0), 3)[2])
    assert single.lambda_min == pytest.approx(res[2].lambda_min, abs=1e-12)
    with pytest.raises(AttributeError, match="verdicts"):
        res.values


@pytest.mark.parametrize("run", ["trace-compiled", "trace-lockstep", "sequential"])
def test_progress_bar_counts_the_points(run, capsys):
    key = jax.random.key(0)
    if run == "sequential":
        eigenvalues_at(OBJ, POINTS, key=key, mode="sequential", progress=True)
    else:
        trace_at(OBJ, POINTS, key=key, num_matvecs=6, progress=True,
                 solver=run.split("-")[1])
    err = capsys.readouterr().err
    assert "at 3 points" in err and "3/3" in err
    trace_at(OBJ, POINTS, key=key, num_matvecs=6)
    assert capsys.readouterr().err == ""


def test_round_trip_to_dict():
    res = eigenvalues_at(OBJ, POINTS, k=1, key=jax.random.key(0))
    back = PointResults.from_dict(res.to_dict())
    np.testing.assert_allclose(back.values, res.values)
    assert back.num_points == 3 and back.analysis == "eigenvalues"


# ---- bad input ------------------------------------------------------------------------------

def test_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="key"):
        eigenvalues_at(OBJ, POINTS, key=None)
    with pytest.raises(TypeError, match="ht.Objective"):
        eigenvalues_at(_mlp_loss, POINTS, key=key)
    with pytest.raises(ValueError, match="points is empty"):
        eigenvalues_at(OBJ, [], key=key)
    bad = dict(POINTS[0], w1=jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="w1"):
        eigenvalues_at(OBJ, [POINTS[0], bad], key=key)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *POINTS)
    with pytest.raises(ValueError, match="different numbers of points"):
        eigenvalues_at(OBJ, dict(stacked, b1=stacked["b1"][:2]), key=key)
    nan = dict(POINTS[1], b1=jnp.full(4, jnp.nan))
    with pytest.raises(ValueError, match=r"points\[1\].*b1.*non-finite"):
        eigenvalues_at(OBJ, [POINTS[0], nan], key=key)
    with pytest.raises(ValueError, match="mode='fast'"):
        eigenvalues_at(OBJ, POINTS, key=key, mode="fast")
    with pytest.raises(ValueError, match="operator='gnn'"):
        trace_at(OBJ, POINTS, key=key, operator="gnn")
    with pytest.raises(ValueError, match="which"):
        eigenvalues_at(OBJ, POINTS, key=key, which="middle")
    with pytest.raises(ValueError, match="solver='compiled' takes.*krylov_dim"):
        eigenvalues_at(OBJ, POINTS, key=key, solver="compiled", krylov_dim=10)
    with pytest.raises(ValueError, match="solver='fast'"):
        eigenvalues_at(OBJ, POINTS, key=key, solver="fast")
    with pytest.raises(ValueError, match="solver='compiled' runs Hutch.*xtrace.*lockstep"):
        trace_at(OBJ, POINTS, key=key, method="xtrace", solver="compiled")
    with pytest.raises(ValueError, match="probe='normal'"):
        trace_at(OBJ, POINTS, key=key, probe="normal")
    with pytest.raises(ValueError, match="num_matvecs"):
        trace_at(OBJ, POINTS, key=key, num_matvecs=2)
    with pytest.raises(ValueError, match="k=13"):
        eigenvalues_at(OBJ, POINTS, key=key, k=13, which="both")
