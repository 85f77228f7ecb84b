"""polish (to a certified critical point) and find_saddles (planted saddles of known index),
against closed forms and dense float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools.analysis.polish import find_saddles, polish
from hessian_tools.results.points import PolishResult, SaddleSearch
from conftest import spectrum_matrix

DUMMY = (jnp.zeros((1, 1)),)
A = spectrum_matrix([0.05, 0.3, 1.0, 2.0, 7.0], seed=2)
B = np.arange(1.0, 6.0)


def _convex(p, batch):
    """Strictly convex: 1/2 p.A p - b.p + 0.1 sum p^4 (minimiser: A p + 0.4 p^3 = b)."""
    return 0.5 * p @ jnp.asarray(A) @ p - jnp.asarray(B) @ p + 0.1 * jnp.sum(p ** 4)


CONVEX = ht.Objective(_convex, jnp.zeros(5), DUMMY)


@pytest.mark.parametrize("method", ["trust-region", "newton-mr"])
def test_polished_point_of_a_strictly_convex_loss_is_its_minimiser(method):
    start = jnp.asarray(np.random.default_rng(0).normal(size=5) * 3)
    res = polish(CONVEX, start, key=jax.random.key(0), method=method)
    x = np.asarray(res.params)
    np.testing.assert_allclose(A @ x + 0.4 * x ** 3, B, atol=1e-9)   # the optimality condition
    assert res.status == "critical" and res.certified_minimum and res.index == 0
    assert res.grad_norm <= res.report.thresholds["grad_tol"]
    assert res.losses[-1] == pytest.approx(float(_convex(jnp.asarray(x), None)), rel=1e-12)
    if method == "trust-region":
        assert np.all(np.diff(res.losses) < 0)                        # monotone descent
        assert res.trust_radius > 0


def test_trust_region_leaves_a_saddle_region_for_a_minimum_newton_mr_stays():
    """Started next to a saddle of index 1 of the quartic below, the trust region descends to
    a minimum; Newton-MR converges to the saddle itself."""
    obj = ht.Objective(_quartic, jnp.zeros(6), DUMMY)
    ystar = np.array([0.0, 1, 1, -1, 1, 1])
    start = jnp.asarray(Q.T @ (ystar + 0.02 * np.random.default_rng(1).normal(size=6)))
    tr = polish(obj, start, key=jax.random.key(0))
    mr = polish(obj, start, key=jax.random.key(0), method="newton-mr")
    assert tr.certified_minimum and tr.loss == pytest.approx(0.0, abs=1e-12)
    assert mr.status == "critical" and mr.verdict == "saddle" and mr.index == 1
    np.testing.assert_allclose(Q @ np.asarray(mr.params), ystar, atol=1e-8)


def test_polish_round_trip_and_errors():
    res = polish(CONVEX, jnp.ones(5), key=jax.random.key(0), max_steps=3)
    back = PolishResult.from_dict(res.to_dict())
    assert back.loss == res.loss and back.losses == res.losses and back.params is None
    with pytest.raises(ValueError, match="key"):
        polish(CONVEX, key=None)
    with pytest.raises(ValueError, match="method='bfgs'"):
        polish(CONVEX, key=jax.random.key(0), method="bfgs")
    with pytest.raises(ValueError, match="radius"):
        polish(CONVEX, key=jax.random.key(0), radius=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        polish(CONVEX, jnp.full(5, jnp.nan), key=jax.random.key(0))
    with pytest.raises(ValueError):
        polish(CONVEX, jnp.ones(4), key=jax.random.key(0))
    with pytest.raises(TypeError, match="ht.Objective"):
        polish(_convex, key=jax.random.key(0))


# ---- saddles of a chosen index -------------------------------------------------------------

Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))
WEIGHTS = jnp.array([1.0, 1.3, 1.6, 2.0, 2.5, 3.0])


def _quartic(p, batch):
    """In rotated coordinates y = Q p: sum_i a_i (y_i^2 - 1)^2. Critical points: y_i in
    {-1, 0, 1}; the index is the number of zeros (curvature -4 a_i there), the loss the sum
    of their a_i."""
    y = jnp.asarray(Q) @ p
    return jnp.sum(WEIGHTS * (y ** 2 - 1) ** 2)


QUARTIC = ht.Objective(_quartic, jnp.zeros(6), DUMMY)


def _dense_index(p):
    return int(np.sum(np.linalg.eigvalsh(ht.dense_hessian(QUARTIC.with_params(p))) < -1e-8))


@pytest.mark.parametrize("target", [1, 2, 4])
def test_eigenvector_following_reaches_the_target_index_from_a_minimum(target):
    rng = np.random.default_rng(target)
    starts = [jnp.asarray(Q.T @ (np.ones(6) + 0.1 * rng.normal(size=6))) for _ in range(2)]
    search = find_saddles(QUARTIC, starts, key=jax.random.key(1), target_index=target)
    assert isinstance(search, SaddleSearch) and len(search.reached) == 2
    for p in search:
        y = Q @ np.asarray(p.params)
        zeros = np.abs(y) < 1e-7
        assert zeros.sum() == target and _dense_index(p.params) == target
        np.testing.assert_allclose(np.abs(y[~zeros]), 1.0, atol=1e-7)
        assert p.loss == pytest.approx(float(np.sum(np.asarray(WEIGHTS)[zeros])), rel=1e-10)
        assert p.method == "eigenvector-following"


def test_newton_mr_from_a_perturbed_planted_saddle_finds_it():
    ystar = np.array([0.0, 0, 1, 0, -1, 1])                 # index 3, loss 1 + 1.3 + 2
    rng = np.random.default_rng(5)
    starts = [jnp.asarray(Q.T @ (ystar + 0.05 * rng.normal(size=6))) for _ in range(3)]
    search = find_saddles(QUARTIC, starts, key=jax.random.key(2))
    for p in search:
        assert p.reached and p.index == 3 and p.verdict == "saddle"
        np.testing.assert_allclose(Q @ np.asarray(p.params), ystar, atol=1e-8)
    np.testing.assert_allclose(search.losses, 4.3, rtol=1e-12)


def test_index_grows_with_the_loss_and_the_plot(tmp_path):
    rng = np.random.default_rng(7)
    found = []
    for target in (0, 1, 3, 5):
        start = jnp.asarray(Q.T @ (np.ones(6) + 0.1 * rng.normal(size=6)))
        found += find_saddles(QUARTIC, [start], key=jax.random.key(target),
                              target_index=target).points
    idx, loss = [p.index for p in found], [p.loss for p in found]
    assert idx == [0, 1, 3, 5] and np.all(np.diff(loss) > 0)
    search = SaddleSearch(points=tuple(found), options={})
    back = SaddleSearch.from_dict(search.to_dict())
    assert [p.index for p in back] == idx and back[0].target_index == 0
    ax = ht.plot_index_vs_loss(search, fraction=False)
    assert ax.get_xlabel() == "index" and len(ax.collections) == 1
    ax.figure.savefig(tmp_path / "index_vs_loss.png")


def test_find_saddles_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="target_index=7"):
        find_saddles(QUARTIC, [jnp.ones(6)], key=key, target_index=7)
    with pytest.raises(ValueError, match="key"):
        find_saddles(QUARTIC, [jnp.ones(6)], key=None)
    with pytest.raises(ValueError, match="empty"):
        find_saddles(QUARTIC, [], key=key)
    with pytest.raises(ValueError, match="radius"):
        find_saddles(QUARTIC, [jnp.ones(6)], key=key, radius=-1.0)
    with pytest.raises(ValueError, match=r"starts\[0\].*non-finite"):
        find_saddles(QUARTIC, [jnp.full(6, jnp.inf)], key=key, target_index=1)
