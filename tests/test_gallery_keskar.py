"""The keskar gallery entry's own helper (the runs themselves are the notebook's and the
command's): reading the line through both solutions at a given alpha."""

import types

import numpy as np
import pytest

from hessian_tools.gallery import keskar


def test_at_alpha_nearest_grid_point():
    alpha = np.linspace(-1.0, 2.0, 7)                  # -1, -0.5, 0, 0.5, 1, 1.5, 2
    surface = types.SimpleNamespace(values=alpha ** 2, metric=1.0 - 0.1 * np.abs(alpha))
    found = {"alpha": alpha, "train": surface}
    assert keskar.at_alpha(found, "train", 1.5) == pytest.approx((2.25, 0.85))
    assert keskar.at_alpha(found, "train", -0.6) == pytest.approx((0.25, 0.95))


def test_configs_and_entry():
    assert keskar.CONFIGS["small"].target > keskar.CONFIGS["full"].target
    assert keskar.ENTRY.notebook == "08_large_vs_small_batch.ipynb"
