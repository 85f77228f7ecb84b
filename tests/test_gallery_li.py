"""The numerical helpers of the gallery's li and entezari entries (the runs themselves are
exercised by notebooks 05 and 06 in tests/test_notebooks.py)."""

from types import SimpleNamespace

import numpy as np
import pytest

from hessian_tools.gallery import entezari, li


def test_local_minima_of_closed_forms():
    x = np.linspace(-1, 1, 21)
    assert li.grid_local_minima(np.add.outer(x ** 2, x ** 2)) == 1          # a bowl
    # cos(2 pi x) cos(2 pi y) on [-1, 1]^2, 21 points: minima where one cosine is -1 and the
    # other +1, i.e. (+-0.5, 0), (0, +-0.5), and (+-0.5, +-1), (+-1, +-0.5) on the border
    c = np.cos(2 * np.pi * x)
    assert li.grid_local_minima(np.outer(c, c)) == 4 + 8
    assert li.grid_local_minima(np.zeros((5, 5))) == 0                       # flat: none strict
    assert li.grid_local_minima(-np.add.outer(x ** 2, x ** 2)) == 4          # the four corners
    with pytest.raises(ValueError, match="2-D grid.*shape \\(21,\\)"):
        li.grid_local_minima(x)


def test_basin_share_counts_points_at_or_above_the_accuracy():
    surf = SimpleNamespace(metric=np.array([[0.95, 0.9], [0.5, 0.1]]))
    assert li.basin_share(surf) == 0.5
    assert li.basin_share(surf, min_accuracy=0.4) == 0.75


def _numbers(share, ratio, minima, acc=1.0):
    return {"basin_share": share, "ratio_median": ratio, "local_minima": minima,
            "origin_accuracy": acc}


def test_li_verdict_follows_the_numbers():
    cfg = li.CONFIGS["full"]
    agree = li.verdict({"no skip": _numbers(0.2, 0.3, 3), "skip": _numbers(0.6, 0.05, 1)}, cfg)
    assert "the wider basin" in agree and "the more convex" in agree and "as Li" in agree
    flip = li.verdict({"no skip": _numbers(0.6, 0.05, 1), "skip": _numbers(0.2, 0.3, 3)}, cfg)
    assert "narrower basin" in flip and "not the more convex" in flip and "not entirely" in flip
    assert "Both networks fit" in agree
    same = li.verdict({"no skip": _numbers(0.0, 0.3, 1), "skip": _numbers(0.0, 0.2, 1, 0.43)},
                      cfg)
    assert "no wider than" in same and "43% (with skips) training accuracy" in same


def _width(width, before, after, lowest=0.99):
    path = lambda b, low: SimpleNamespace(barrier=b, metric=np.array([1.0, low, 1.0]))  # noqa: E731
    return entezari.WidthResult(width=width, naive=path(before, 0.5), aligned=path(after, lowest),
                                alignment=None, aligned_params=None, align_seconds=0.0)


def test_entezari_ratio_and_verdict():
    sweep = [_width(16, 1.4, 0.33, lowest=0.89), _width(64, 0.17, 0.014), _width(256, 0.11, 0.01)]
    assert sweep[0].ratio == pytest.approx(1.4 / 0.33)
    text = entezari.verdict(sweep)
    assert "Both the barrier as trained and the one left after alignment shrink" in text
    assert "not monotone" in text and "no width here reaches a zero barrier" in text
    assert "At h = 16 the aligned path still loses accuracy" in text
    rising = entezari.verdict([_width(16, 1.0, 0.01), _width(64, 1.0, 0.5)])
    assert "does not shrink steadily" in rising and "unlike what" in rising
    gone = entezari.verdict([_width(16, 1.0, 0.5), _width(64, 0.5, 1e-4)])
    assert "barrier is gone" in gone and "loses accuracy" not in gone
    assert len(entezari.rows(sweep)) == 4


def test_entezari_ratio_without_a_barrier_left():
    assert _width(16, 1.0, 0.0).ratio == float("inf")
