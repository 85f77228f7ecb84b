"""find_saddles counts the index of weakly curved saddles (issue 20): a planted index-2
saddle whose negative eigenvalues are 1e-4 of the largest is reached and reported with
index 2, against dense float64 eigenvalues; classify's relative_tau."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools.analysis.polish import find_saddles

DUMMY = (jnp.zeros((1, 1)),)
Q, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(6, 6)))
WEAK = 1e-4


def _weak(p, batch):
    """In y = Q p: WEAK (y^4/4 - y^2/2) in y0 and y1 (curvature -WEAK at 0, 2 WEAK at +-1),
    stiff quadratics (curvatures 0.5, 0.8, 1) in y2..y4, and no dependence on y5 (a null
    mode). Index-2 saddle at y0 = y1 = 0 (loss 0), minima at y0, y1 = +-1 (loss -WEAK/2)."""
    y = jnp.asarray(Q) @ p
    weak = WEAK * jnp.sum(y[:2] ** 4 / 4 - y[:2] ** 2 / 2)
    return weak + 0.5 * jnp.sum(jnp.array([0.5, 0.8, 1.0]) * y[2:5] ** 2)


WEAK_OBJ = ht.Objective(_weak, jnp.zeros(6), DUMMY)


def _starts(n=2):
    rng = np.random.default_rng(0)
    corner = np.array([1.0, -1.0, 0, 0, 0, 0])
    return [jnp.asarray(Q.T @ (corner + 0.05 * rng.normal(size=6))) for _ in range(n)]


def test_weak_saddle_is_reached_with_its_index():
    search = find_saddles(WEAK_OBJ, _starts(), key=jax.random.key(0), target_index=2,
                          radius=0.2)
    assert len(search.reached) == 2
    assert search.options["classify_options"]["relative_tau"] == pytest.approx(
        np.sqrt(np.finfo(np.float64).eps))
    for p in search:
        y = Q @ np.asarray(p.params)
        np.testing.assert_allclose(y[:5], 0.0, atol=1e-6)            # the planted saddle
        eig = np.linalg.eigvalsh(ht.dense_hessian(WEAK_OBJ.with_params(p.params)))
        np.testing.assert_allclose(eig[:2], -WEAK, rtol=1e-6)
        assert p.index == 2 and p.verdict == "saddle" and p.report.num_flat == 1
        assert p.report.thresholds["tau"] == pytest.approx(1.49e-8, rel=1e-2)
        assert p.report.thresholds["tau_rule"].startswith("relative")


def test_classify_default_threshold_counts_the_weak_saddle_as_flat():
    """At classify's default (1% of max|lambda|) the same point is a degenerate minimum /
    probed saddle with index 0: the reason find_saddles passes its own threshold."""
    saddle = jnp.asarray(Q.T @ np.array([0, 0, 0, 0, 0, 0.3]))
    obj = WEAK_OBJ.with_params(saddle)
    default = ht.classify(obj, key=jax.random.key(0))
    assert default.index == 0 and default.num_flat == 3
    rel = ht.classify(obj, key=jax.random.key(0), relative_tau=1e-6)
    assert rel.index == 2 and rel.num_flat == 1 and rel.verdict == "saddle"
    assert rel.thresholds["tau"] == pytest.approx(1e-6, rel=1e-9)     # max|lambda| = 1
    given = ht.classify(obj, key=jax.random.key(0), tau=0.05, relative_tau=1e-6)
    assert given.thresholds["tau"] == 0.05 and given.index == 0      # tau wins


def test_an_explicit_threshold_is_kept():
    search = find_saddles(WEAK_OBJ, _starts(1), key=jax.random.key(0), target_index=2,
                          radius=0.2, classify_options={"tau": 1e-2})
    assert "relative_tau" not in search.options["classify_options"]
    assert len(search.reached) == 0 and search.points[0].index == 0


def test_relative_tau_is_checked():
    with pytest.raises(ValueError, match="relative_tau=-1"):
        ht.classify(WEAK_OBJ, key=jax.random.key(0), relative_tau=-1.0)
