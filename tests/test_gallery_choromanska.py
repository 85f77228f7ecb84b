"""The choromanska gallery entry's helpers: the spread statistics against closed forms, the
objective, the result's round trip, and classify_at's threads under a `jax.enable_x64`
context (the entry runs inside one)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools.gallery import choromanska as ch


def _minima(width, train, test, verdicts):
    n = len(train)
    return ch.WidthMinima(
        width=width, num_params=10, train_loss=np.asarray(train, float),
        test_loss=np.asarray(test, float), test_error=np.zeros(n), start_grad_norm=np.ones(n),
        grad_norm=np.zeros(n), polished_by=("trust-region",) * n, polish_status=("critical",) * n,
        polish_steps=(3,) * n, fallback=("-",) * n, verdicts=tuple(verdicts), indices=(0,) * n,
        lambda_min=np.ones(n), lambda_max=np.ones(n))


def test_spread_closed_forms():
    a = _minima(2, [1.0, 1.2, 1.0, 1.04], [2.0, 3.0, 2.0, 2.5], ["minimum"] * 3 + ["saddle"])
    b = _minima(8, [0.5, 0.5, 0.5], [1.0, 1.1, 1.2], ["minimum"] * 3)
    s = ch.spread([a, b])
    assert s["widths"].tolist() == [2, 8]
    np.testing.assert_allclose(s["std_test"], [np.sqrt(((np.array([2, 3, 2, 2.5]) - 2.375) ** 2)
                                                       .sum() / 3), 0.1])
    np.testing.assert_allclose(s["std_train"][1], 0.0, atol=1e-15)
    # 1.2 > 1.05 * 1.0 is poor, 1.04 is not; equal losses are never poor
    np.testing.assert_allclose(s["poor"], [0.25, 0.0])
    np.testing.assert_allclose(s["certified"], [0.75, 1.0])
    np.testing.assert_allclose(s["corr"][0], np.corrcoef([1.0, 1.2, 1.0, 1.04],
                                                         [2.0, 3.0, 2.0, 2.5])[0, 1])
    assert np.isnan(s["corr"][1])          # constant training loss: no correlation
    np.testing.assert_allclose(s["mean_test"], [2.375, 1.1])


def test_loss_is_cross_entropy_plus_decay_on_every_leaf():
    p = ch.init_params(jax.random.key(0), 3, dtype=jnp.float64)
    p = jax.tree.map(lambda a: a + 0.3, p)           # non-zero biases: the decay covers them
    x = jax.random.normal(jax.random.key(1), (5, 16), jnp.float64)
    y = jnp.arange(5) % 10
    logits = np.tanh(np.asarray(x) @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    logz = np.log(np.exp(logits).sum(1))
    ce = np.mean(logz - logits[np.arange(5), np.asarray(y)])
    decay = sum(float((np.asarray(a) ** 2).sum()) for a in jax.tree.leaves(p))
    np.testing.assert_allclose(float(ch.test_loss(p, (x, y))), ce, rtol=1e-12)
    np.testing.assert_allclose(float(ch.loss(p, (x, y))), ce + ch.WEIGHT_DECAY / 2 * decay,
                               rtol=1e-12)


def test_width_minima_round_trip():
    a = _minima(4, [1.0, 2.0], [1.5, 2.5], ["minimum", "saddle"])
    b = ch.WidthMinima.from_dict(a.to_dict())
    assert b.verdicts == a.verdicts and b.width == 4
    np.testing.assert_array_equal(b.train_loss, a.train_loss)
    assert b.certified.tolist() == [True, False]


def test_train_runs_needs_a_key():
    with pytest.raises(ValueError, match="key"):
        ch.train_runs(2, ch.pooled_digits(num_train=20)[0], seeds=1, steps=1, key=None)


def test_classify_at_threads_keep_the_x64_context():
    """classify_at runs each point in a thread; a `with jax.enable_x64(True)` context is per
    thread, so the threads must re-enter it (they failed with a float32/float64 mix)."""
    loss = lambda p, batch: jnp.sum(batch[0] * p ** 2) / 2 - jnp.sum(p) * 0.0
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        with jax.enable_x64(True):
            data = (jnp.array([[1.0, 2.0, 3.0]], jnp.float64),)
            obj = ht.Objective(loss, jnp.zeros(3, jnp.float64), data)
            res = ht.classify_at(obj, [jnp.zeros(3), jnp.zeros(3)], key=jax.random.key(0),
                                 mode="batched")
            assert res.verdicts == ("minimum", "minimum")
            assert [r.dtype for r in res] == ["float64", "float64"]
    finally:
        jax.config.update("jax_enable_x64", before)
