"""Sharpness tracking: exact values on quadratics, preconditioners against the optimizers
themselves, warm starts, compile-once, crash-safe logs, thresholds against simulated optax
runs, the optax transform, compare_optimizers and the CLI."""

import argparse
import json

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import spectrum_matrix

import hessian_tools as ht
from hessian_tools.training import measure as sharpness, optimizers, tracker as tracker_module


# ---- fixtures: a quadratic with a known Hessian ------------------------------------------

def _quadratic(seed=0, n_examples=30):
    """``loss = 0.5 mean_i (x_i . p)^2 + 0.5 p^T D p`` on dict params: H = X^T X / n + D."""
    rng = np.random.default_rng(seed)
    params = {"a": jnp.asarray(rng.normal(size=4)), "b": jnp.asarray(rng.normal(size=(2, 3)))}
    dim = 10
    x = jnp.asarray(rng.normal(size=(n_examples, dim)))
    diag = jnp.asarray(np.linspace(-3.0, 1.0, dim))

    def loss(p, batch):
        flat = jax.flatten_util.ravel_pytree(p)[0]
        return 0.5 * jnp.mean((batch[0] @ flat) ** 2) + 0.5 * flat @ (diag * flat)

    h = np.asarray(x).T @ np.asarray(x) / n_examples + np.diag(np.asarray(diag))
    return loss, params, (x,), h


def _flat(p):
    return np.asarray(jax.flatten_util.ravel_pytree(p)[0])


# ---- exact values --------------------------------------------------------------------------

def test_sharpness_quadratic_exact():
    loss, params, data, h = _quadratic()
    evals = np.linalg.eigvalsh(h)
    res = ht.sharpness(ht.Objective(loss, params, data), key=jax.random.key(0), k=3, tol=1e-10)
    assert res.converged
    np.testing.assert_allclose(res.values, evals[::-1][:3], rtol=1e-9)
    assert res.value == pytest.approx(evals[-1], rel=1e-10)
    v = _flat(jax.tree.map(lambda b: b[0], res.vectors))
    np.testing.assert_allclose(np.linalg.norm(h @ v - evals[-1] * v), 0.0, atol=1e-7)


def test_sharpness_prescribed_spectrum_doctest_style():
    a = spectrum_matrix([5.0, 2.0, 1.0, -1.0, -4.0], seed=2)
    res = ht.sharpness(ht.Objective(lambda p, b: 0.5 * p @ (a @ p), jnp.zeros(5),
                                    jnp.zeros((1, 1))), key=jax.random.key(1), tol=1e-12)
    assert res.value == pytest.approx(5.0, rel=1e-10)


def test_sharpness_restarts_when_the_basis_fills():
    loss, params, data, h = _quadratic(seed=4)
    res = ht.sharpness(ht.Objective(loss, params, data), key=jax.random.key(0), k=2, tol=1e-9,
                       krylov_dim=5)
    assert res.converged and res.num_matvecs > 5
    np.testing.assert_allclose(res.values, np.linalg.eigvalsh(h)[::-1][:2], rtol=1e-8)


def test_sharpness_streamed_data_and_preconditioner():
    """Streamed batches take the host-driven product path; same numbers."""
    loss, params, data, h = _quadratic(seed=2)
    x = data[0]
    stream = lambda: iter([(x[:10],), (x[10:25],), (x[25:],)])       # ragged batches
    p_tree = jax.tree.map(lambda a: jnp.full(a.shape, 2.0), params)
    res = ht.sharpness(ht.Objective(loss, params, stream), key=jax.random.key(0), tol=1e-10,
                       preconditioner=p_tree)
    assert res.value == pytest.approx(np.linalg.eigvalsh(h)[-1] / 2.0, rel=1e-9)


def test_tracker_quadratic_all_quantities():
    loss, params, data, h = _quadratic()
    evals, evecs = np.linalg.eigh(h)
    tracker = ht.SharpnessTracker(
        ht.Objective(loss, params, data), every=5, key=jax.random.key(0), k=3, tol=1e-9, trace_num_matvecs=12,
        quantities=("lambda_max", "top_k", "lambda_min", "trace", "grad_overlap", "loss"))
    assert tracker.update(3, params) is None                 # not due
    rec = tracker.update(5, params)
    assert rec["lambda_max"] == pytest.approx(evals[-1], rel=1e-8)
    np.testing.assert_allclose(rec["top_k"], evals[::-1][:3], rtol=1e-8)
    assert rec["lambda_min"] == pytest.approx(evals[0], abs=1e-6 * evals[-1])
    assert abs(rec["trace"] - np.trace(h)) <= 5 * rec["trace_stderr"] + 1e-8
    g = h @ _flat(params)                                    # the gradient of a quadratic
    top = evecs[:, -3:]
    assert rec["grad_overlap"] == pytest.approx(np.sum((top.T @ g) ** 2) / (g @ g), rel=1e-6)
    assert rec["loss"] == pytest.approx(0.5 * _flat(params) @ h @ _flat(params), rel=1e-10)
    assert rec["num_matvecs"] == (rec["matvecs_lambda_max"] + rec["matvecs_trace"])
    assert tracker.log["lambda_max"].shape == (1,) and tracker.log["top_k"].shape == (1, 3)


def test_preconditioned_matches_dense():
    loss, params, data, h = _quadratic(seed=1)
    rng = np.random.default_rng(5)
    p_tree = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.2, 3.0, size=a.shape)), params)
    d = 1.0 / np.sqrt(_flat(p_tree))
    expected = np.linalg.eigvalsh(d[:, None] * h * d[None, :])[-1]
    res = ht.sharpness(ht.Objective(loss, params, data), key=jax.random.key(0), preconditioner=p_tree,
                       tol=1e-10)
    assert res.preconditioned and res.value == pytest.approx(expected, rel=1e-9)
    assert not res.value == pytest.approx(np.linalg.eigvalsh(h)[-1], rel=1e-3)
    tracker = ht.SharpnessTracker(ht.Objective(loss, params, data), key=jax.random.key(1), tol=1e-10,
                                  preconditioner=lambda params, opt_state: p_tree)
    rec = tracker.update(0, params)
    assert rec["precond_lambda_max"] == pytest.approx(expected, rel=1e-9)
    assert rec["lambda_max"] == pytest.approx(np.linalg.eigvalsh(h)[-1], rel=1e-9)


@pytest.mark.parametrize("make, moment, weight_decay", [
    (lambda: optax.adam(0.01), "adam", 0.0),
    (lambda: optax.adamw(0.01, weight_decay=0.1), "adam", 0.1),
    (lambda: optax.inject_hyperparams(optax.adam)(learning_rate=0.01, b2=0.99, eps=1e-3),
     "adam", 0.0),
    (lambda: optax.rmsprop(0.01), "grad", 0.0),
    (lambda: optax.rmsprop(0.01, centered=True), "grad", 0.0),
    (lambda: optax.adagrad(0.05), "grad", 0.0),
], ids=["adam", "adamw", "adam-injected", "rmsprop", "rmsprop-centered", "adagrad"])
def test_adaptive_preconditioner_reproduces_the_optimizer_step(make, moment, weight_decay):
    """Every adaptive optimizer steps by ``-eta (m / P + wd x)`` with our ``P``."""
    opt = make()
    info = ht.optimizer_info(opt)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=4))}
    state = opt.init(params)
    if moment == "adam":
        assert ht.adaptive_preconditioner(state, info=info) is None      # no step taken yet
    for _ in range(4):
        grads = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
        updates, state = opt.update(grads, state, params)
        p = ht.adaptive_preconditioner(state, info=info)
        m = grads
        if moment == "adam":
            adam = optimizers._find_states(state, optimizers._ADAM_STATES)[0]
            m = jax.tree.map(lambda mu: mu / (1 - info.momentum ** int(adam.count)), adam.mu)
        predicted = jax.tree.map(lambda mm, pp, x: -info.learning_rate * (mm / pp + weight_decay
                                                                          * x), m, p, params)
        np.testing.assert_allclose(_flat(updates), _flat(predicted), rtol=2e-6, atol=1e-12)
        params = optax.apply_updates(params, updates)


def test_tracker_reads_adam_preconditioner_and_threshold():
    loss, params, data, h = _quadratic(seed=3)
    opt = optax.adam(0.01)
    state = opt.init(params)
    grads = jax.grad(loss)(params, data)
    _, state = opt.update(grads, state, params)
    tracker = ht.SharpnessTracker(ht.Objective(loss, params, data), key=jax.random.key(0), tol=1e-10, optimizer=opt)
    rec = tracker.update(0, params, opt_state=state)
    d = 1.0 / np.sqrt(_flat(ht.adaptive_preconditioner(state)))
    expected = np.linalg.eigvalsh(d[:, None] * h * d[None, :])[-1]
    assert rec["precond_lambda_max"] == pytest.approx(expected, rel=1e-8)
    assert rec["precond_threshold"] == pytest.approx(38 / 0.01, rel=1e-6)
    assert rec["threshold"] is None and rec["learning_rate"] == pytest.approx(0.01)



def test_tracker_reads_an_nnx_optimizer_state():
    """nnx.Optimizer keeps adam's moments as OptVariables under Param-shaped State trees."""
    from flax import nnx
    model = nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64), jnp.tanh,
                           nnx.Linear(3, 2, rngs=nnx.Rngs(1), param_dtype=jnp.float64))
    graphdef, _ = nnx.split(model, nnx.Param)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 4)))

    def loss(params, batch):
        return jnp.mean(nnx.merge(graphdef, params)(batch[0]) ** 2)

    optimizer = nnx.Optimizer(model, optax.adam(0.01), wrt=nnx.Param)
    for _ in range(3):
        optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))
    params = nnx.state(model, nnx.Param)
    tracker = ht.SharpnessTracker(ht.Objective(loss, params, (x,)), key=jax.random.key(0), tol=1e-10,
                                  optimizer=optax.adam(0.01))
    rec = tracker.update(0, params, opt_state=optimizer.opt_state)
    # dense reference: P from the raw moments, bias-corrected, eps outside the root
    nu = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in
                         jax.tree.leaves(optimizer.opt_state[0].nu)])
    d = 1.0 / np.sqrt(np.sqrt(nu / (1 - 0.999 ** 3)) + 1e-8)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    h = np.asarray(jax.hessian(lambda f: loss(unravel(f), (x,)))(flat))
    expected = np.linalg.eigvalsh(d[:, None] * h * d[None, :])[-1]
    assert rec["precond_lambda_max"] == pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match="leaves but the parameters have"):
        optimizers._align_to_params({"w": jnp.ones(3)}, params)

# ---- warm start and compile-once -------------------------------------------------------

def _operators(lam_of_t, num=8, n=120, rotation=0.001, seed=0):
    """Slowly changing symmetric matrices ``Q_t diag(lambda_t) Q_t^T`` (small rotations)."""
    rng = np.random.default_rng(seed)
    q0, _ = np.linalg.qr(rng.normal(size=(n, n)))
    skew = rng.normal(size=(n, n)) * rotation
    w, v = np.linalg.eig(skew - skew.T)
    bulk = rng.uniform(-1.0, 6.0, n)
    mats = []
    for t in range(num):
        q = np.real(v @ np.diag(np.exp(w * t)) @ np.linalg.inv(v)) @ q0
        lam = bulk.copy()
        lam[:3] = lam_of_t(t)
        m = q @ np.diag(lam) @ q.T
        mats.append((m + m.T) / 2)
    return mats


def _warm_and_cold(mats, tol):
    loss = lambda p, batch: 0.5 * p @ (batch[0][0] @ p)      # the matrix travels as data
    p0, prev, out = jnp.zeros(mats[0].shape[0]), None, []
    for t, m in enumerate(mats):
        data = (jnp.asarray(m)[None],)
        r_cold = ht.sharpness(ht.Objective(loss, p0, data), key=jax.random.key(t), tol=tol)
        prev = ht.sharpness(ht.Objective(loss, p0, data), key=jax.random.key(t), tol=tol, v0=prev)
        out.append((np.linalg.eigvalsh(m)[-1], prev, r_cold))
    return out


def test_warm_start_spends_far_fewer_matvecs():
    mats = _operators(lambda t: [10.0 + 0.05 * t, 9.0, 8.5], rotation=0.0005)
    warm = cold = 0
    for t, (truth, r_warm, r_cold) in enumerate(_warm_and_cold(mats, tol=1e-3)):
        for r in (r_cold, r_warm):
            assert r.converged and abs(r.value - truth) <= 1e-3 * truth
        if t:
            warm += r_warm.num_matvecs
            cold += r_cold.num_matvecs
    assert warm <= 0.5 * cold, (warm, cold)


def test_warm_start_follows_an_eigenvalue_crossing():
    """The runner-up overtakes the tracked eigenvalue; the warm start must switch to it."""
    mats = _operators(lambda t: [10.0, 9.0 + 0.6 * t, 8.0], num=6)
    for truth, r_warm, _ in _warm_and_cold(mats, tol=1e-3):
        assert abs(r_warm.value - truth) <= 1e-3 * truth, (r_warm.value, truth)


def _tiny_mlp(counter):
    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.normal(size=(5, 8)) * 0.5),
              "w2": jnp.asarray(rng.normal(size=(8, 3)) * 0.5)}
    x = jnp.asarray(rng.normal(size=(40, 5)))
    y = jnp.asarray(rng.integers(0, 3, size=40))

    def loss(p, batch):
        counter[0] += 1
        logits = jnp.tanh(batch[0] @ p["w1"]) @ p["w2"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
    return loss, params, (x, y)


def test_tracker_compiles_once_and_never_retraces():
    traces = [0]
    loss, params, data = _tiny_mlp(traces)
    tracker = ht.SharpnessTracker(
        ht.Objective(loss, params, data), every=1, key=jax.random.key(0), k=2,
        quantities=("lambda_max", "top_k", "trace", "grad_overlap", "loss"))
    from hessian_tools.linalg import _space
    funcs = [_space._project, sharpness._apply, _space._start_basis, _space._combine,
             _space._take_rows, _space._grow, tracker_module._overlap, tracker_module._first_rows]
    shifted = lambda i: jax.tree.map(lambda a: a * (1 + 1e-3 * i), params)
    for i in range(2):
        tracker.update(i, shifted(i))
    before = (traces[0], [f._cache_size() for f in funcs])
    for i in range(2, 6):
        rec = tracker.update(i, shifted(i))
        assert rec["converged"]
    assert (traces[0], [f._cache_size() for f in funcs]) == before
    matvecs = tracker.log["matvecs_lambda_max"]
    assert np.all(matvecs[2:] <= matvecs[0])               # warm measurements are cheaper


# ---- logs --------------------------------------------------------------------------------

def _measured_log(tmp_path, steps=(0, 10, 20), **kwargs):
    loss, params, data, _ = _quadratic()
    tracker = ht.SharpnessTracker(ht.Objective(loss, params, data), every=10, key=jax.random.key(0),
                                  log_path=tmp_path / "run" / "sharpness.jsonl", **kwargs)
    for s in steps:
        tracker.update(s, jax.tree.map(lambda a: a * (1 + 0.01 * s), params),
                       learning_rate=0.1)
    return tracker, loss, params, data


def test_log_round_trip(tmp_path):
    tracker, *_ = _measured_log(tmp_path)
    log = ht.read_sharpness_log(tmp_path / "run" / "sharpness.jsonl")
    assert log.records == tracker.log.records
    np.testing.assert_array_equal(log.steps, [0, 10, 20])
    np.testing.assert_allclose(log["lambda_max"], tracker.log["lambda_max"])
    np.testing.assert_allclose(log["threshold"], 20.0)
    assert len(log.meta) == 1 and log.meta[0]["every"] == 10
    again = ht.SharpnessLog.from_dict(json.loads(json.dumps(log.to_dict())))
    assert again.records == log.records
    assert "lambda_max" in log.arrays() and log.total_matvecs > 0


def test_resume_appends_and_skips_logged_steps(tmp_path):
    _, loss, params, data = _measured_log(tmp_path, steps=(0, 10))
    path = tmp_path / "run" / "sharpness.jsonl"
    resumed = ht.SharpnessTracker(ht.Objective(loss, params, data), every=10, key=jax.random.key(1), log_path=path)
    assert len(resumed.log) == 2
    logged = jax.tree.map(lambda a: a * 1.1, params)         # the parameters logged at 10
    assert resumed.update(10, logged) is None               # already logged
    assert resumed.update(20, params)["step"] == 20
    log = ht.read_sharpness_log(path)
    np.testing.assert_array_equal(log.steps, [0, 10, 20])
    assert [m["resumed"] for m in log.meta] == [False, True]
    with pytest.raises(ValueError, match="exists.*resume=True"):
        ht.SharpnessTracker(ht.Objective(loss, params, data), key=jax.random.key(1), log_path=path, resume=False)


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path):
    _, loss, params, data = _measured_log(tmp_path, steps=(0, 10))
    path = tmp_path / "run" / "sharpness.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"step": 20, "lambda_max": 3.1')              # a crash mid-write
    with pytest.warns(RuntimeWarning, match="truncated last line"):
        log = ht.read_sharpness_log(path)
    np.testing.assert_array_equal(log.steps, [0, 10])
    with pytest.warns(RuntimeWarning, match="partial last record"):
        resumed = ht.SharpnessTracker(ht.Objective(loss, params, data), every=10, key=jax.random.key(1),
                                      log_path=path)
    resumed.update(20, params)
    np.testing.assert_array_equal(ht.read_sharpness_log(path).steps, [0, 10, 20])
    lines = path.read_bytes().split(b"\n")
    lines.insert(2, b'{"step": 5, "lam')                      # corruption in the middle
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match="line 3 is not a valid JSON record"):
        ht.read_sharpness_log(path)
    with pytest.warns(RuntimeWarning, match="invalid line 3"):
        assert len(ht.read_sharpness_log(path, strict=False)) == 3


def test_nonfinite_parameters_are_recorded_not_raised(tmp_path):
    loss, params, data, _ = _quadratic()
    tracker = ht.SharpnessTracker(ht.Objective(loss, params, data), key=jax.random.key(0),
                                  log_path=tmp_path / "log.jsonl")
    bad = jax.tree.map(lambda a: a.at[0].set(jnp.nan) if a.ndim == 1 else a, params)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        rec = tracker.update(0, bad)
    assert rec["lambda_max"] is None and not rec["converged"]
    assert np.isnan(ht.read_sharpness_log(tmp_path / "log.jsonl")["lambda_max"][0])


# ---- thresholds --------------------------------------------------------------------------

def test_threshold_formulas():
    assert ht.stability_threshold(0.1) == pytest.approx(20.0)
    assert ht.stability_threshold(0.1, momentum=0.9) == pytest.approx(38.0)
    assert ht.stability_threshold(0.1, momentum=0.9, kind="nesterov") == pytest.approx(
        3.8 / 2.8 / 0.1)
    assert ht.stability_threshold(1e-3, momentum=0.9, kind="ema") == pytest.approx(38000.0)
    assert ht.stability_threshold(0.5, momentum=0.9, kind="gd") == pytest.approx(4.0)
    with pytest.raises(ValueError, match="momentum=1.0 must lie in"):
        ht.stability_threshold(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="learning_rate=0 must be a positive"):
        ht.stability_threshold(0)
    with pytest.raises(ValueError, match="kind='adam' is not one of"):
        ht.stability_threshold(0.1, kind="adam")


def _final_size(opt, curvature, steps=1500):
    def body(carry, _):
        x, s = carry
        u, s = opt.update(curvature * x, s, x)
        return (x + u, s), None
    x0 = jnp.ones(())
    (x, _), _ = jax.lax.scan(body, (x0, opt.init(x0)), None, length=steps)
    return float(jnp.abs(x))


@pytest.mark.parametrize("opt, kind, beta", [
    (optax.sgd(0.1), "gd", 0.0),
    (optax.sgd(0.1, momentum=0.9), "heavy_ball", 0.9),
    (optax.sgd(0.1, momentum=0.5, nesterov=True), "nesterov", 0.5),
    (optax.chain(optax.ema(0.9, debias=False), optax.scale(-0.1)), "ema", 0.9),
], ids=["gd", "heavy-ball", "nesterov", "ema"])
def test_thresholds_match_simulated_optax_runs(opt, kind, beta):
    """On ``a x^2 / 2`` each optimizer is stable just below the threshold, unstable above."""
    threshold = ht.stability_threshold(0.1, momentum=beta, kind=kind)
    assert _final_size(opt, 0.97 * threshold) < 1e-3
    assert _final_size(opt, 1.03 * threshold) > 1e3


@pytest.mark.parametrize("opt, kind, lr, momentum, threshold", [
    (optax.sgd(0.05), "sgd", 0.05, 0.0, 40.0),
    (optax.sgd(0.05, momentum=0.9), "momentum", 0.05, 0.9, 76.0),
    (optax.sgd(0.05, momentum=0.9, nesterov=True), "nesterov", 0.05, 0.9, 3.8 / 2.8 / 0.05),
    (optax.adam(1e-3), "adam", 1e-3, 0.9, 38000.0),
    (optax.adamw(2e-3, b1=0.8), "adam", 2e-3, 0.8, 3.6 / 0.2 / 2e-3),
    (optax.rmsprop(1e-3, momentum=0.5), "rmsprop", 1e-3, 0.5, 3.0 / 1e-3),
    (optax.adagrad(0.05), "adagrad", 0.05, 0.0, 40.0),
    (optax.inject_hyperparams(optax.sgd)(learning_rate=0.2, momentum=0.5), "momentum", 0.2,
     0.5, 15.0),
])
def test_optimizer_info_probes_hyperparameters(opt, kind, lr, momentum, threshold):
    info = ht.optimizer_info(opt)
    assert (info.kind, info.learning_rate, info.momentum) == (kind, pytest.approx(lr),
                                                              pytest.approx(momentum))
    assert info.threshold() == pytest.approx(threshold, rel=1e-5)
    assert info.adaptive == (kind in ("adam", "rmsprop", "adagrad"))


# ---- the optax transformation ---------------------------------------------------------

def test_sharpness_monitor_transform_under_jit():
    h = spectrum_matrix([4.0, 2.5, 1.0, 0.5, -0.5, -1.0], seed=4)
    loss = lambda p, batch: 0.5 * p["w"] @ (jnp.asarray(h) @ p["w"]) + 0 * jnp.sum(batch[0])
    data = (jnp.zeros((2, 1)),)
    tx = ht.sharpness_monitor(loss, data, every=2, num_steps=6, optimizer=optax.adam(0.01),
                              key=jax.random.key(0))
    plain = optax.adam(0.01)

    @jax.jit
    def step(params, state, plain_state):
        grads = jax.grad(loss)(params, data)
        updates, state = tx.update(grads, state, params)
        expected, plain_state = plain.update(grads, plain_state, params)
        return optax.apply_updates(params, updates), state, plain_state, updates, expected

    params = {"w": jnp.asarray(np.linspace(1.0, 2.0, 6))}
    state, plain_state = tx.init(params), plain.init(params)
    values = []
    for i in range(3):
        params, state, plain_state, updates, expected = step(params, state, plain_state)
        np.testing.assert_allclose(updates["w"], expected["w"])      # wrapped adam unchanged
        d = 1.0 / np.sqrt(np.asarray(ht.adaptive_preconditioner(state.inner_state)["w"]))
        precond = np.linalg.eigvalsh(d[:, None] * h * d[None, :])[-1]
        values.append(float(optax.tree.get(state, "sharpness_preconditioned")))
        assert float(optax.tree.get(state, "sharpness")) == pytest.approx(4.0, rel=1e-8)
        if i != 1:                                                    # measured at 0 and 2
            assert values[-1] == pytest.approx(precond, rel=1e-7)
    assert values[1] == values[0] and values[2] != values[1]
    assert float(optax.tree.get(state, "sharpness_residual")) < 1e-6
    assert step._cache_size() == 1
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(params, state)


# ---- comparing optimizers, plots, CLI -------------------------------------------------------

def _digits_small(n=200):
    from flax import nnx

    from hessian_tools.examples import digits
    x, y = digits.load_digits_data()
    return ht.Objective.from_nnx(digits.MLP((8,), rngs=nnx.Rngs(0)), digits.cross_entropy,
                                 (x[:n], y[:n]))


def test_compare_optimizers_same_start_and_table(tmp_path):
    obj = _digits_small()
    res = ht.compare_optimizers(obj, {"sgd": optax.sgd(0.1), "adam": optax.adam(0.01)},
                                train_steps=20, every=10, key=jax.random.key(0), batch_size=50,
                                measure_size=64, log_dir=tmp_path)
    sgd, adam = res.runs["sgd"], res.runs["adam"]
    assert sgd.train_loss[0] == adam.train_loss[0]          # same init, same first batch
    assert sgd.log["lambda_max"][0] == pytest.approx(adam.log["lambda_max"][0], rel=1e-4)
    np.testing.assert_array_equal(sgd.log.steps, [0, 10, 20])
    assert np.all(np.isfinite(adam.log["precond_lambda_max"][1:]))
    assert "precond_lambda_max" not in sgd.log
    assert sgd.threshold == pytest.approx(20.0) and adam.threshold == pytest.approx(3800.0)
    rows = res.summary()
    assert [r["optimizer"] for r in rows] == ["sgd", "adam"]
    assert all(r["num_matvecs"] > 0 and 0 <= r["final_accuracy"] <= 1 for r in rows)
    assert res.table().count("\n") == 3 and "| sgd |" in res.table()
    json.dumps(res.to_dict())
    assert len(ht.read_sharpness_log(tmp_path / "adam.jsonl")) == 3
    with pytest.raises(ValueError, match="sgd.jsonl exists"):
        ht.compare_optimizers(obj, {"sgd": optax.sgd(0.1)}, train_steps=1,
                              key=jax.random.key(0), log_dir=tmp_path)
    axes = ht.plot_comparison(res)
    assert len(axes) == 4 and len(axes[1].lines) >= 3
    import matplotlib.pyplot as plt
    plt.close(axes[0].figure)


def test_plot_sharpness_draws_threshold():
    loss, params, data, _ = _quadratic()
    tracker = ht.SharpnessTracker(ht.Objective(loss, params, data), every=1, key=jax.random.key(0))
    for s in range(3):
        tracker.update(s, params, learning_rate=0.1)
    ax = ht.plot_sharpness(tracker.log, learning_rate=0.1)
    assert any(np.allclose(line.get_ydata(), 20.0) for line in ax.lines[1:])
    ax2 = ht.plot_sharpness(tracker.log)                      # threshold from the log column
    assert len(ax2.lines) == 2
    import matplotlib.pyplot as plt
    plt.close("all")


def _cli_parser():
    from hessian_tools.cli.compare_optimizers import add_parser
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_validates_before_any_work(tmp_path, capsys):
    from hessian_tools.cli import UserError
    parser = _cli_parser()
    (tmp_path / "comparison.json").write_text("{}")
    args = parser.parse_args(["compare-optimizers", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="already exist.*--overwrite"):
        args.func(args)
    for bad, match in ((["--optimizer", "lbfgs:1"], "Unknown optimizer 'lbfgs'"),
                       (["--optimizer", "sgd:-1"], "learning rate must be a positive, finite number"),
                       (["--optimizer", "sgd:0.1", "--optimizer", "sgd:0.1"], "share a label"),
                       (["--quantities", "lambda_max,curvature"], "Unknown quantities")):
        args = parser.parse_args(["compare-optimizers", "--out", str(tmp_path / "new")] + bad)
        with pytest.raises(UserError, match=match):
            args.func(args)
    with pytest.raises(SystemExit):                  # numbers are checked by the parser
        parser.parse_args(["compare-optimizers", "--every", "0"])
    assert "argument --every: '0' must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


USER_MODEL = """
import jax.numpy as jnp
import numpy as np

import hessian_tools as ht

X = np.random.default_rng(0).normal(size=(40, 5))
Y = X @ np.arange(1.0, 6.0)


def make(scale=1.0):
    loss = lambda params, batch: jnp.mean((batch[0] @ params["w"] - batch[1]) ** 2)
    return ht.Objective(loss, {"w": jnp.zeros(5)}, (scale * X, Y))


def wrong():
    return 3
"""


def test_cli_compare_optimizers_on_a_user_model(tmp_path):
    """Least squares: the Hessian is 2 X^T X / n at every step, so the tracked sharpness is
    known exactly along the whole run."""
    from hessian_tools.cli import UserError
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    model = f"{tmp_path / 'user_model.py'}:make"
    parser = _cli_parser()
    argv = ["compare-optimizers", "--model", model, "--model-kwargs", '{"scale": 0.5}',
            "--steps", "6", "--every", "3", "--measure-size", "0", "--tol", "1e-8",
            "--optimizer", "sgd:0.01", "--out", str(tmp_path / "out"), "--quiet"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    rng = np.random.default_rng(0)
    x = 0.5 * rng.normal(size=(40, 5))
    expected = np.linalg.eigvalsh(2 * x.T @ x / 40)[-1]
    log = ht.read_sharpness_log(tmp_path / "out" / "logs" / "sgd_0.01.jsonl")
    assert len(log) == 3 and np.allclose(log["lambda_max"], expected, rtol=1e-6)
    assert "make" in (tmp_path / "out" / "comparison.md").read_text()
    # epochs, a stopping criterion and checkpoints: SGD reaches loss <= 1 in 86 steps
    argv = ["compare-optimizers", "--model", model, "--epochs", "300", "--every", "50",
            "--measure-size", "0", "--optimizer", "sgd:0.01", "--stop-at-loss", "1.0",
            "--checkpoints", "--out", str(tmp_path / "stop"), "--quiet"]
    assert args.func(parser.parse_args(argv)) == 0
    row = json.loads((tmp_path / "stop" / "comparison.json").read_text())["summary"][0]
    assert row["stop_reason"] == "criterion" and 0 < row["steps"] < 300
    assert row["final_loss"] <= 1.0
    assert f"sgd:0.01: {row['steps']} steps (criterion)" in \
        (tmp_path / "stop" / "comparison.md").read_text()
    assert (tmp_path / "stop" / "checkpoints" / "sgd_0.01.npz").exists()
    with pytest.raises(UserError, match="already exist"):       # the checkpoint is kept
        (tmp_path / "stop" / "comparison.json").unlink()
        args.func(parser.parse_args(argv))
    for bad, match in ((["--steps", "5", "--epochs", "2"], "pass one of them"),
                       (["--stop-at-accuracy", "1.5"], "at most 1")):
        with pytest.raises(UserError, match=match):
            args.func(parser.parse_args(["compare-optimizers", "--model", model, *bad,
                                         "--out", str(tmp_path / "bad2"), "--quiet"]))
    for bad, match in (([f"{tmp_path / 'user_model.py'}:wrong"], "must return"),
                       ([f"{tmp_path / 'user_model.py'}:nope"], "no callable 'nope'"),
                       (["no_such_module_xyz:make"], "cannot import"),
                       ([model, "--model-kwargs", "[1]"], "must be a JSON object")):
        args = parser.parse_args(["compare-optimizers", "--model", *bad, "--steps", "2",
                                  "--out", str(tmp_path / "bad"), "--quiet"])
        with pytest.raises(UserError, match=match):
            args.func(args)


@pytest.mark.slow
def test_cli_compare_optimizers_writes_everything(tmp_path):
    from hessian_tools.cli import UserError
    parser = _cli_parser()
    argv = ["compare-optimizers", "--example", "mlp-tiny", "--steps", "10", "--every", "5",
            "--num-examples", "150", "--measure-size", "48", "--optimizer", "sgd:0.1",
            "--optimizer", "adam:0.01", "--out", str(tmp_path), "--quiet"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    for name in ("comparison.json", "comparison.md", "sharpness.png", "comparison.png",
                 "logs/sgd_0.1.jsonl", "logs/adam_0.01.jsonl"):
        assert (tmp_path / name).exists(), name
    summary = json.loads((tmp_path / "comparison.json").read_text())["summary"]
    assert [r["optimizer"] for r in summary] == ["sgd:0.1", "adam:0.01"]
    assert "| sgd:0.1 |" in (tmp_path / "comparison.md").read_text()
    with pytest.raises(UserError, match="already exist.*--overwrite"):
        args.func(parser.parse_args(argv))
    assert args.func(parser.parse_args(argv + ["--overwrite"])) == 0


# ---- errors --------------------------------------------------------------------------

def test_tracker_rejects_bad_options():
    loss, params, data, _ = _quadratic()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"Unknown quantities \['sharpness'\]"):
        ht.SharpnessTracker(ht.Objective(loss, params, data), key=key, quantities=("sharpness",))
    with pytest.raises(TypeError, match="quantities must be a tuple"):
        ht.SharpnessTracker(ht.Objective(loss, params, data), key=key, quantities="trace")
    with pytest.raises(ValueError, match="every=0 must be a positive integer"):
        ht.SharpnessTracker(ht.Objective(loss, params, data), key=key, every=0)
    with pytest.raises(ValueError, match="explicit PRNG key"):
        ht.SharpnessTracker(ht.Objective(loss, params, data))
    with pytest.raises(ValueError, match="tol=2.0 must lie in"):
        ht.sharpness(ht.Objective(loss, params, data), key=key, tol=2.0)
    with pytest.raises(ValueError, match="v0 must be shaped like the parameters"):
        ht.sharpness(ht.Objective(loss, params, data), key=key, v0=jnp.zeros(3))


def test_tracker_nnx_form_reads_batchnorm_statistics_from_the_model():
    """tracker.update(step, model, optimizer): parameters and BatchNorm statistics are read
    from the model at each step, so the measurement is the current model's function."""
    from flax import nnx

    from _models import ConvBN, cross_entropy, signal_data
    x, y = signal_data(n=48)
    model = ConvBN(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    tracker = ht.SharpnessTracker(ht.Objective.from_nnx(model, cross_entropy, (x, y)), every=1,
                                  key=jax.random.key(0), tol=1e-6)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: cross_entropy(m(x), (x, y)))(model)
        optimizer.update(model, grads)

    model.train()
    for i in range(3):
        step(model, optimizer)                  # BatchNorm statistics move in training
    model.eval()
    rec = tracker.update(3, model, optimizer)
    now = ht.sharpness(ht.Objective.from_nnx(model, cross_entropy, (x, y)),
                       key=jax.random.key(1), tol=1e-6)
    assert rec["lambda_max"] == pytest.approx(now.value, rel=1e-4)
    assert rec["precond_lambda_max"] is not None                   # Adam's state was read
    with pytest.raises(ValueError, match="pass the model itself"):
        tracker.update(4, nnx.state(model, nnx.Param))
