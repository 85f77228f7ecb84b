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


def _numbers(alpha, error, loss):
    run = {"escaped_after": 10, "final_loss": 0.7, "max_loss": 2.3}
    return {"critical_alpha": alpha, "critical_error": error, "critical_loss": loss,
            "spearman_alpha_error": 0.9, "num_params": 118, "saddle_index": 36,
            "saddle_loss": 2.3, "searches": {"1": {"runs": 2, "reached": 1}},
            "escape": {"saddle-free Newton": run, "damped Newton": dict(run, escaped_after=None),
                       "gradient descent": run, "Adam": run}}


def test_verdict_is_written_from_the_numbers():
    """A continuum agrees with Fig. 1; two clusters agree in direction but show no continuum;
    a minimum worse than a saddle does not agree."""
    cont = dauphin._verdict(_numbers([0, 0.01, 0.1, 0.3], [0.13, 0.15, 0.35, 0.9],
                                     [0.72, 0.85, 1.2, 2.3]))
    assert "minima have the lowest error (13%, saddles 15-90%)" in cont
    assert "the direction of Dauphin et al.'s Fig. 1" in cont
    assert "2 certified critical points lie at intermediate losses" in cont
    two = dauphin._verdict(_numbers([0, 0, 0.3], [0.13, 0.14, 0.9], [0.72, 0.73, 2.3]))
    assert "the direction of Dauphin" in two and "does not show: the points form two" in two
    bad = dauphin._verdict(_numbers([0, 0.01, 0.3], [0.6, 0.15, 0.9], [1.6, 0.75, 2.3]))
    assert "not every one with high training error" in bad and "not the order" in bad
