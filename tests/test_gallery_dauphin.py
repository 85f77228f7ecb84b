"""The small numerical helpers of the dauphin gallery entry (the whole run is the notebook's)."""

import jax
import numpy as np
import pytest
from scipy.stats import spearmanr

from hessian_tools.gallery import dauphin


def test_spearman_matches_scipy_without_ties():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(size=20)
    assert dauphin.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert dauphin.spearman(a, 3 * a + 1) == pytest.approx(1.0)
    assert dauphin.spearman(a, -a) == pytest.approx(-1.0)


def test_escaped_after_is_the_first_product_below_95_percent():
    curve = np.array([[11, 2.30], [22, 2.25], [33, 2.10], [44, 1.0]])
    assert dauphin.escaped_after(curve, 2.3) == 33      # 2.10 < 0.95 * 2.3 = 2.185
    assert dauphin.escaped_after(curve[:2], 2.3) is None


def test_nudge_moves_every_leaf_by_eps_times_a_normal_draw():
    p = {"a": np.zeros((50, 40)), "b": np.ones(3)}
    q = dauphin.nudge(p, jax.random.key(0), eps=1e-3)
    assert np.std(np.asarray(q["a"])) == pytest.approx(1e-3, rel=0.1)
    assert not np.allclose(np.asarray(q["b"]), 1.0)
    assert np.allclose(np.asarray(q["b"]), 1.0, atol=1e-2)
    with pytest.raises(ValueError, match="key"):
        dauphin.nudge(p, None)
