"""The cohen gallery entry's own helpers (the runs themselves are the notebook's and the
command's): the edge-of-stability ratio and the noisy-label setup."""

import numpy as np
import pytest

from hessian_tools.gallery import cohen


class _Log:
    """The two things edge_ratio reads from a SharpnessLog."""

    def __init__(self, steps, values, name="lambda_max"):
        self.steps, self._values, self._name = np.asarray(steps), np.asarray(values), name

    def __getitem__(self, key):
        assert key == self._name
        return self._values


def test_edge_ratio_closed_form():
    # rises linearly to 2/eta = 10 at step 50, then alternates 9 / 11 (median 10 -> ratio 1)
    steps = np.arange(0, 200, 10)
    values = np.concatenate([np.linspace(2.0, 10.0, 6), np.tile([9.0, 11.0], 7)])
    e = cohen.edge_ratio(_Log(steps, values), 0.2, tail=0.2)
    assert e["threshold"] == pytest.approx(10.0)
    assert e["median"] == pytest.approx(1.0)          # the last 4: 9, 11, 9, 11
    assert (e["low"], e["high"]) == pytest.approx((0.9, 1.1))   # 10%, 90% of 0.9, 0.9, 1.1, 1.1
    assert e["max"] == pytest.approx(1.1)
    assert e["first_step"] == 50                       # 8.4 < 9 <= 10: the first >= 0.9 * 10


def test_edge_ratio_skips_missing_and_never_reached():
    log = _Log([0, 10, 20, 30], [np.nan, 1.0, 2.0, 3.0], name="precond_lambda_max")
    e = cohen.edge_ratio(log, 0.01, quantity="precond_lambda_max", threshold=30.0, tail=0.7)
    assert e["first_step"] is None
    assert e["median"] == pytest.approx(np.median([2.0, 3.0]) / 30.0)
    assert e["high"] <= 0.1


def test_setup_label_noise_and_bad_loss():
    clean = cohen.setup("mse", num_examples=300)
    noisy = cohen.setup("cross-entropy", num_examples=300, label_noise=0.5, seed=1)
    changed = np.mean(np.asarray(clean.data[1]) != np.asarray(noisy.data[1]))
    assert 0.3 < changed < 0.6                         # half relabelled, 1/10 of them unchanged
    assert clean.loss(clean.params, clean.data) > 0
    with pytest.raises(ValueError, match="not one of"):
        cohen.setup("hinge", num_examples=10)
