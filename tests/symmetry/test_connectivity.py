"""connectivity: both paths, the barrier removed by alignment, curvature along the paths
against dense float64 Hessians, BatchNorm statistics travelling with the units."""

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from flax import nnx

import hessian_tools as ht
from hessian_tools.examples.digits import MLP, cross_entropy, load_digits_data
from hessian_tools.symmetry.connectivity import Connectivity
from test_align import _train
from test_spec import BNCNN, _filled, _random_like

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def pair():
    """A trained float64 digits MLP 64-8-10 (A), a planted permutation of it, and an
    independently trained one."""
    x, y = load_digits_data()
    x, y = x[:300].astype(np.float64), y[:300]
    make = lambda seed: _train(_filled(lambda rngs: MLP((8,), rngs=rngs, param_dtype=jnp.float64),
                                       seed=seed), x, y, steps=80)
    model_a, model_b = make(1), make(7)
    obj = ht.Objective.from_nnx(model_a, cross_entropy, (x, y))
    spec = ht.permutation_spec(obj)
    planted = ht.apply_permutation(obj.params, spec, ht.random_permutation(spec, jax.random.key(3)))
    other = nnx.split(model_b, nnx.Param, ...)[1]
    return obj, spec, planted, other


def _dense_extremes(obj, params):
    h = np.asarray(ht.dense_hessian(obj.with_params(params)), np.float64)
    eigs = np.linalg.eigvalsh((h + h.T) / 2)
    return eigs[-1], eigs[0], np.trace(h)


def test_planted_permutation_leaves_no_barrier_and_curvature_is_the_dense_one(pair):
    obj, spec, planted, _ = pair
    conn = ht.connectivity(obj, obj.params, planted, spec, key=jax.random.key(0), num_points=7,
                           curvature_points=3, tol=1e-8, trace_matvecs=60)
    # aligned: B is A again, the path is one point, no barrier and no distance
    assert conn.distance_after == pytest.approx(0.0, abs=1e-12)
    assert conn.aligned.barrier == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(conn.aligned.loss, conn.aligned.loss[0], rtol=1e-12)
    assert conn.naive.barrier > 1e-2 and conn.barrier_ratio == float("inf")
    assert conn.permuted_units > 0 and conn.num_groups == len(spec.groups)
    # curvature along both paths against dense float64 Hessians at the same points
    for row, end in enumerate((planted, None)):
        for j, t in enumerate(conn.curvature_t):
            params = obj.params if end is None else jax.tree.map(
                lambda a, b, t=t: (1 - t) * a + t * b, obj.params, end)
            lmax, lmin, tr = _dense_extremes(obj, params)
            scale = max(abs(lmax), abs(lmin))
            assert conn.lambda_max[row, j] == pytest.approx(lmax, abs=1e-6 * scale)
            assert conn.lambda_min[row, j] == pytest.approx(lmin, abs=1e-6 * scale)
            assert abs(conn.trace[row, j] - tr) < 5 * conn.trace_stderr[row, j] + 1e-9 * abs(tr)
    # the naive path is the landscape module's interpolation
    path = ht.interpolate(obj, obj.params, planted, num_points=7)
    np.testing.assert_allclose(conn.naive.loss, path.loss, rtol=1e-12)
    assert conn.num_matvecs > 0 and conn.seed


def test_independent_networks_get_a_lower_barrier_and_it_round_trips(pair):
    obj, spec, _, other = pair
    conn = ht.connectivity(obj, obj.params, other, spec, key=jax.random.key(1), num_points=9,
                           curvature_points=0, metric=ht.accuracy)
    assert conn.distance_after < conn.distance_before
    assert conn.aligned.barrier < conn.naive.barrier
    assert conn.naive.metric_name == "accuracy" and conn.aligned.metric is not None
    assert len(conn.curvature_t) == 0 and conn.num_matvecs == 0
    back = Connectivity.from_json(conn.to_json())
    assert back.aligned.barrier == conn.aligned.barrier
    np.testing.assert_array_equal(back.naive.loss, conn.naive.loss)
    assert "barrier before alignment" in str(conn)
    ax = ht.plot_connectivity(conn)
    assert len(ax) == 1 and ax[0].get_ylabel() == "loss"
    again = ht.connectivity(obj, obj.params, other, spec, key=jax.random.key(1), num_points=9,
                            curvature_points=0)
    np.testing.assert_array_equal(again.aligned.loss, conn.aligned.loss)    # deterministic


def test_batchnorm_statistics_travel_with_the_units():
    model = _filled(lambda rngs: BNCNN(rngs=rngs, dtype=jnp.float64))
    images = np.asarray(_random_like(jax.ShapeDtypeStruct((32, 4, 4, 1), jnp.float64), 5,
                                     scale=1.0))
    labels = np.arange(32) % 3
    obj = ht.Objective.from_nnx(model, cross_entropy, (images, labels))
    spec = ht.permutation_spec(obj)
    perm = ht.random_permutation(spec, jax.random.key(2))
    params_b, state_b = ht.apply_permutation(obj.params, spec, perm, state=obj.state)
    with pytest.raises(ValueError, match="state_b="):
        ht.connectivity(obj, obj.params, params_b, spec, key=jax.random.key(0))
    conn = ht.connectivity(obj, obj.params, params_b, spec, key=jax.random.key(0),
                           state_b=state_b, num_points=5, curvature_points=2, tol=1e-8)
    assert conn.bn == "interpolate"
    np.testing.assert_allclose(conn.aligned.loss, conn.aligned.loss[0], rtol=1e-10)
    assert conn.aligned.barrier == pytest.approx(0.0, abs=1e-10)
    # with statistics held at A's for B too, B would be another function: the naive path
    # with state interpolated ends at B's true loss, which equals A's (a permutation)
    assert conn.naive.loss[-1] == pytest.approx(conn.naive.loss[0], rel=1e-10)
    np.testing.assert_allclose(conn.lambda_max[1], conn.lambda_max[1, 0], rtol=1e-6)
    axes = ht.plot_connectivity(conn)
    assert len(axes) == 3


def test_bad_input_gets_clear_errors(pair):
    obj, spec, planted, _ = pair
    with pytest.raises(ValueError, match="PRNG key"):
        ht.connectivity(obj, obj.params, planted, spec, key=None)
    with pytest.raises(ValueError, match="curvature_points=1"):
        ht.connectivity(obj, obj.params, planted, spec, key=jax.random.key(0),
                        curvature_points=1)
    with pytest.raises(ValueError, match="num_points"):
        ht.connectivity(obj, obj.params, planted, spec, key=jax.random.key(0), num_points=1)
    with pytest.raises(ValueError, match="params_b"):
        ht.connectivity(obj, obj.params, {"w": np.ones(3)}, spec, key=jax.random.key(0))
    with pytest.raises(ValueError, match="method"):
        ht.connectivity(obj, obj.params, planted, spec, key=jax.random.key(0), method="x")
