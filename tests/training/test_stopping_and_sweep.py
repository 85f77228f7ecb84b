"""compare_optimizers' stopping targets, epochs, final parameters and checkpoints, and the
learning-rate sweep's time to a criterion, against gradient descent on a diagonal quadratic
in closed form: ``theta_k = (1 - eta lambda)^k theta_0``, so
``L_k = 0.5 sum_i lambda_i theta_0i^2 (1 - eta lambda_i)^(2k)``."""

import functools
import json

import jax
import matplotlib.pyplot as plt
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hessian_tools as ht
from hessian_tools.plots import plot_learning_rate_sweep
from hessian_tools.results import OptimizerRun
from hessian_tools.results.dynamics import LearningRateSweep
from hessian_tools.training.sweep import learning_rate_sweep

LAM = np.array([2.0, 1.0, 0.3])
THETA0 = np.array([1.0, -2.0, 0.5])


@functools.cache
def _quadratic():
    """``L = 0.5 sum_i lambda_i theta_i^2`` (the data, 8 dummy examples, play no part)."""
    lam = jnp.asarray(LAM)
    return ht.Objective(lambda p, b: 0.5 * jnp.sum(lam * p["w"]**2) + 0.0 * jnp.sum(b),
                        {"w": jnp.asarray(THETA0)}, jnp.zeros((8, 1)))


def _gd_loss(eta, k):
    with np.errstate(over="ignore"):
        return 0.5 * np.sum(LAM * THETA0**2 * (1 - eta * LAM) ** (2 * k))


def _steps_to(eta, target, budget):
    """The first k with L_k <= target (None within the budget)."""
    return next((k for k in range(budget + 1) if _gd_loss(eta, k) <= target), None)


@functools.cache
def _classifier():
    """A linear softmax classifier on separable 2-D data (predict and output_loss given)."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    centres = np.array([[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]])
    x = centres[y] + 0.8 * rng.normal(size=(30, 2))
    predict = lambda p, b: b[0] @ p["w"] + p["b"]
    xent = lambda out, b: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out),
                                                        b[1][:, None], axis=1))
    params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
    return ht.Objective(None, params, (jnp.asarray(x), jnp.asarray(y)), predict=predict,
                        output_loss=xent)


def test_stop_at_loss_final_params_and_checkpoint(tmp_path):
    eta, target = 0.3, 1e-2
    obj = _quadratic()
    res = ht.compare_optimizers(obj, {"gd": optax.sgd(eta)}, train_steps=200, every=7,
                                stop_at_loss=target, key=jax.random.key(0), measure_size=None,
                                checkpoint_dir=tmp_path)
    run = res.runs["gd"]
    k = _steps_to(eta, target, 200)
    assert run.stop_reason == "criterion" and run.steps == run.steps_to_criterion == k
    assert len(run.train_loss) == k and not run.diverged
    np.testing.assert_allclose(np.asarray(run.final_params["w"]), (1 - eta * LAM) ** k * THETA0,
                               rtol=1e-12)
    # measured every 7 steps and at the stop; the stop's loss is the closed form
    np.testing.assert_array_equal(run.eval_steps, [*range(0, k, 7), k])
    np.testing.assert_array_equal(run.log.steps, run.eval_steps)
    np.testing.assert_allclose(run.eval_loss, [_gd_loss(eta, s) for s in run.eval_steps],
                               rtol=1e-12)
    assert run.log["lambda_max"][-1] == pytest.approx(LAM.max(), rel=1e-6)
    assert _gd_loss(eta, k - 1) > target >= run.eval_loss[-1]
    # the checkpoint reads back (ht.restore) as the final parameters
    assert run.checkpoint == str(tmp_path / "gd.npz")
    back = ht.restore(obj, run.checkpoint).objective.params
    np.testing.assert_array_equal(np.asarray(back["w"]), np.asarray(run.final_params["w"]))
    # serialised without the parameters; the summary says how the run ended
    again = OptimizerRun.from_dict(json.loads(json.dumps(run.to_dict())))
    assert again.final_params is None and again.steps == k and again.checkpoint == run.checkpoint
    assert again.steps_to_criterion == k
    s = run.summary()
    assert s["steps"] == k and s["stop_reason"] == "criterion"
    assert res.config["stop_at_loss"] == target
    with pytest.raises(ValueError, match="gd.npz exists: pass overwrite=True"):
        ht.compare_optimizers(obj, {"gd": optax.sgd(eta)}, train_steps=1,
                              key=jax.random.key(0), checkpoint_dir=tmp_path)


def test_without_a_target_every_step_is_taken_and_the_params_kept():
    eta = 0.1
    res = ht.compare_optimizers(_quadratic(), {"gd": optax.sgd(eta)}, train_steps=12,
                                every=5, key=jax.random.key(1))
    run = res.runs["gd"]
    assert run.stop_reason == "train_steps" and run.steps == 12
    assert run.steps_to_criterion is None and run.checkpoint is None
    np.testing.assert_array_equal(run.eval_steps, [0, 5, 10, 12])
    np.testing.assert_allclose(np.asarray(run.final_params["w"]), (1 - eta * LAM) ** 12 * THETA0,
                               rtol=1e-12)


def test_epochs_count_minibatch_steps():
    res = ht.compare_optimizers(_quadratic(), {"gd": optax.sgd(0.1)}, epochs=3, batch_size=3,
                                every=100, key=jax.random.key(0), measure_size=None)
    run = res.runs["gd"]
    assert res.config["train_steps"] == 3 * (8 // 3) == run.steps == len(run.train_loss)
    assert res.config["epochs"] == 3
    full = ht.compare_optimizers(_quadratic(), {"gd": optax.sgd(0.1)}, epochs=4,
                                 key=jax.random.key(0))
    assert full.runs["gd"].steps == 4                 # full batch: one step per epoch


def test_stop_at_accuracy_against_a_manual_loop():
    obj = _classifier()
    eta, target = 0.05, 0.95
    res = ht.compare_optimizers(obj, {"gd": optax.sgd(eta)}, train_steps=300, every=1000,
                                stop_at_accuracy=target, key=jax.random.key(0))
    run = res.runs["gd"]
    # reference: plain gradient descent, accuracy checked before every step
    params, data = obj.params, obj.data
    grad = jax.jit(jax.grad(obj.loss))
    acc = lambda p: float(np.mean(np.argmax(obj.predict(p, data), axis=1) == data[1]))
    k = 0
    while acc(params) < target:
        params = jax.tree.map(lambda a, g: a - eta * g, params, grad(params, data))
        k += 1
    assert 0 < k < 300
    assert run.stop_reason == "criterion" and run.steps == k
    assert run.eval_accuracy[-1] == pytest.approx(acc(params)) and run.eval_accuracy[0] < target
    for leaf, want in zip(jax.tree.leaves(run.final_params), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(leaf), np.asarray(want), rtol=1e-10, atol=1e-12)


def test_divergence_stops_the_run():
    res = ht.compare_optimizers(_quadratic(), {"gd": optax.sgd(1e3)}, train_steps=400,
                                every=1000, stop_at_loss=1e-3, key=jax.random.key(0))
    run = res.runs["gd"]
    assert run.stop_reason == "diverged" and run.diverged and run.steps < 400
    assert run.steps_to_criterion is None and not np.isfinite(run.eval_loss[-1])


def test_learning_rate_sweep_against_the_closed_form():
    rates = [0.05, 0.3, 0.6, 0.95, 1.05, 50.0]
    target, budget = 1e-3, 120
    sweep = learning_rate_sweep(_quadratic(), optax.sgd, rates, criterion={"loss": target},
                                key=jax.random.key(0), max_steps=budget)
    want = [_steps_to(eta, target, budget) for eta in rates]
    assert want[0] is None and want[1] is not None        # 0.05 is too slow for the budget
    np.testing.assert_array_equal(sweep.steps, [np.nan if w is None else w for w in want])
    # 1.05 oscillates in the top mode (|1 - 2.1| > 1) without overflowing; 50 overflows
    assert sweep.stop_reasons == ("train_steps", "criterion", "criterion", "criterion",
                                  "train_steps", "diverged")
    np.testing.assert_allclose(sweep.final_loss[1:4],
                               [_gd_loss(eta, k) for eta, k in zip(rates[1:4], want[1:4])],
                               rtol=1e-10)
    assert sweep.final_loss[0] == pytest.approx(_gd_loss(0.05, budget), rel=1e-10)
    best = rates[int(np.nanargmin(sweep.steps))]
    assert sweep.best_learning_rate == best
    np.testing.assert_array_equal(sweep.reached, [False, True, True, True, False, False])
    table = sweep.table()
    assert table.count("\n") == len(rates) + 1 and "— (diverged)" in table
    back = LearningRateSweep.from_dict(json.loads(json.dumps(sweep.to_dict())))
    np.testing.assert_array_equal(back.steps, sweep.steps)
    assert back.stop_reasons == sweep.stop_reasons and back.criterion == {"loss": target}
    assert len(back.seed) > 0 and back.max_steps == budget
    ax = plot_learning_rate_sweep(sweep)
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), np.asarray(rates)[sweep.reached])
    assert ax.get_xscale() == "log" and "best" in ax.get_legend().get_texts()[-1].get_text()
    plt.close(ax.figure)


def test_sweep_with_an_accuracy_criterion_and_minibatches():
    obj = _classifier()
    sweep = learning_rate_sweep(obj, lambda eta: optax.sgd(eta, momentum=0.9), [0.01, 0.1],
                                criterion={"accuracy": 0.95, "loss": 0.3},
                                key=jax.random.key(2), max_steps=100, batch_size=10)
    assert sweep.batch_size == 10 and np.all(sweep.reached)
    assert np.all(sweep.final_accuracy >= 0.95) and np.all(sweep.final_loss <= 0.3)
    assert sweep.steps[1] <= sweep.steps[0]                 # the larger step is faster here
    none = learning_rate_sweep(obj, optax.sgd, [1e-4], criterion={"accuracy": 1.01},
                               key=jax.random.key(2), max_steps=3)
    assert none.best_learning_rate is None and none.stop_reasons == ("train_steps",)


def test_bad_input(tmp_path):
    obj, key = _quadratic(), jax.random.key(0)
    opts = {"gd": optax.sgd(0.1)}
    with pytest.raises(ValueError, match="exactly one of train_steps and epochs"):
        ht.compare_optimizers(obj, opts, train_steps=3, epochs=1, key=key)
    with pytest.raises(ValueError, match="exactly one of train_steps and epochs"):
        ht.compare_optimizers(obj, opts, key=key)
    with pytest.raises(ValueError, match="epochs=0"):
        ht.compare_optimizers(obj, opts, epochs=0, key=key)
    with pytest.raises(ValueError, match="stop_at_loss=nan must be a finite number"):
        ht.compare_optimizers(obj, opts, train_steps=3, stop_at_loss=float("nan"), key=key)
    with pytest.raises(ValueError, match="stop_at_accuracy needs an accuracy"):
        ht.compare_optimizers(obj, opts, train_steps=3, stop_at_accuracy=0.9, key=key)
    bare = ht.Objective(lambda p, b: jnp.sum(p**2), jnp.ones(2), jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="checkpoint_dir needs named parameters"):
        ht.compare_optimizers(bare, opts, train_steps=3, key=key, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="non-empty sequence of positive numbers"):
        learning_rate_sweep(obj, optax.sgd, [0.1, -1.0], criterion={"loss": 1.0}, key=key,
                            max_steps=3)
    with pytest.raises(ValueError, match="non-empty sequence"):
        learning_rate_sweep(obj, optax.sgd, [], criterion={"loss": 1.0}, key=key, max_steps=3)
    with pytest.raises(ValueError, match="criterion=\\{'los': 1.0\\} must be a dict"):
        learning_rate_sweep(obj, optax.sgd, [0.1], criterion={"los": 1.0}, key=key,
                            max_steps=3)
    with pytest.raises(TypeError, match="make_optimizer must be a function"):
        learning_rate_sweep(obj, optax.sgd(0.1), [0.1], criterion={"loss": 1.0}, key=key,
                            max_steps=3)
    with pytest.raises(ValueError, match="explicit PRNG key"):
        learning_rate_sweep(obj, optax.sgd, [0.1], criterion={"loss": 1.0}, key=None,
                            max_steps=3)
    with pytest.raises(ValueError, match="max_steps"):
        learning_rate_sweep(obj, optax.sgd, [0.1], criterion={"loss": 1.0}, key=key,
                            max_steps=0)
    with pytest.raises(ValueError, match="batch_size=9 must lie in \\[1, 8\\]"):
        learning_rate_sweep(obj, optax.sgd, [0.1], criterion={"loss": 1.0}, key=key,
                            max_steps=3, batch_size=9)
