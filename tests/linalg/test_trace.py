"""Trace estimators (Hutchinson, Hutch++, SLQ, dense) against exact traces."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
density_module = importlib.import_module("hessian_tools.analysis.traces")
from hessian_tools.linalg.trace import hutchpp, orthonormalize, random_probes, xtrace_samples

N = 300
rng = np.random.default_rng(0)
_g = rng.normal(size=(N, N))
WIGNER = (_g + _g.T) / np.sqrt(2 * N)
_x = rng.normal(size=(N, 2 * N))
MARCHENKO_PASTUR = _x @ _x.T / (2 * N)
_u = np.linalg.qr(rng.normal(size=(N, 10)))[0]
LOW_RANK_NOISE = _u @ np.diag(np.linspace(20.0, 5.0, 10)) @ _u.T + 0.05 * WIGNER
_v = np.linalg.qr(rng.normal(size=(N, N)))[0]
SADDLE = _v @ np.diag(np.r_[-np.linspace(1.0, 3.0, 40), rng.uniform(0, 2, N - 40)]) @ _v.T
SADDLE = (SADDLE + SADDLE.T) / 2
MATRICES = {"marchenko_pastur": MARCHENKO_PASTUR, "low_rank_noise": LOW_RANK_NOISE,
            "saddle": SADDLE}
SEEDS = range(10)


@pytest.mark.parametrize("name", sorted(MATRICES))
@pytest.mark.parametrize("method", ["hutch++", "xtrace", "hutchinson", "slq"])
def test_estimates_within_three_standard_errors(name, method):
    a = MATRICES[name]
    op, exact = ht.from_dense(a), np.trace(a)
    estimates, errors = [], []
    for seed in SEEDS:
        tr = ht.trace(op, method=method, num_matvecs=60, key=jax.random.key(seed))
        assert tr.num_matvecs == 60 and tr.method == method
        assert abs(tr.value - exact) <= 3 * tr.stderr, (seed, tr.value, exact, tr.stderr)
        estimates.append(tr.value)
        errors.append(tr.stderr)
    assert op.num_matvecs == 60 * len(SEEDS)
    # the reported standard error is honest: it matches the spread over seeds
    ratio = np.std(estimates, ddof=1) / np.mean(errors)
    assert 0.35 < ratio < 2.2, ratio


def test_hutchpp_beats_hutchinson_at_equal_matvecs_on_low_rank_plus_noise():
    op, exact = ht.from_dense(LOW_RANK_NOISE), np.trace(LOW_RANK_NOISE)
    err = {m: np.mean([abs(ht.trace(op, method=m, num_matvecs=60, key=jax.random.key(s)).value
                           - exact) for s in range(8)]) for m in ("hutch++", "hutchinson")}
    assert err["hutch++"] < err["hutchinson"] / 10, err


def test_hutchpp_error_falls_faster_than_hutchinson():
    op = ht.from_dense(LOW_RANK_NOISE)
    se = {m: ht.trace(op, method="hutch++", num_matvecs=m, key=jax.random.key(1)).stderr
          for m in (15, 60)}
    assert se[60] < se[15] / 4            # 4x the matvecs: > 4x smaller (Hutchinson: 2x)


@pytest.mark.parametrize("sphere", [False, True])
def test_xtrace_samples_are_the_leave_one_out_hutchpp_estimates(sphere):
    """Each XTrace sample equals Hutch++ with the sketch A Omega minus column i and the
    probe omega_i (rescaled for the sphere form), built here the slow way."""
    n, m = 40, 6
    a = SADDLE[:n, :n]
    omega = np.random.default_rng(5).normal(size=(m, n))
    got = xtrace_samples(omega, lambda x: x @ a, sphere=sphere)
    o = omega * (np.sqrt(n) / np.linalg.norm(omega, axis=1, keepdims=True) if sphere else 1)
    y = (o @ a).T
    for i in range(m):
        qi = np.linalg.qr(np.delete(y, i, axis=1))[0]
        u = o[i] - qi @ (qi.T @ o[i])
        if sphere:
            u *= np.sqrt(n - m + 1) / np.linalg.norm(u)
        np.testing.assert_allclose(got[i], np.trace(qi.T @ a @ qi) + u @ a @ u, rtol=1e-10)


@pytest.mark.parametrize("sphere", [False, True])
def test_xtrace_jackknife_is_xtrace_without_each_test_vector(sphere):
    """The jackknife's left-out estimates, computed in Q's coordinates, equal XTrace run
    from scratch on the test vectors minus one."""
    n, m = 60, 7
    a = SADDLE[:n, :n]
    omega = np.random.default_rng(6).normal(size=(m, n))
    est, left_out = xtrace_samples(omega, lambda x: x @ a, sphere=sphere, jackknife=True)
    np.testing.assert_array_equal(est, xtrace_samples(omega, lambda x: x @ a, sphere=sphere))
    for j in range(m):
        again = xtrace_samples(np.delete(omega, j, axis=0), lambda x: x @ a, sphere=sphere)
        np.testing.assert_allclose(left_out[j], again.mean(), rtol=1e-10)


@pytest.mark.parametrize("name", ["low_rank_noise", "marchenko_pastur"])
def test_xtrace_standard_error_does_not_understate_the_error(name):
    """XTrace's stderr is the jackknife, which is conservative in expectation (Efron-Stein).
    Over 40 keys it is at least the actual RMS error, up to the noise of 40 draws; the
    paper's spread of the leave-one-out estimates over sqrt(m) is not on low_rank_noise at
    12 matvecs (about 0.7x)."""
    a = MATRICES[name]
    op, exact = ht.from_dense(a), np.trace(a)
    runs = [ht.trace(op, method="xtrace", num_matvecs=12, key=jax.random.key(s))
            for s in range(40)]
    rms = np.sqrt(np.mean([(r.value - exact) ** 2 for r in runs]))
    reported = np.sqrt(np.mean([r.stderr ** 2 for r in runs]))
    assert 0.85 * rms <= reported <= 3 * rms, (rms, reported)
    covered = np.mean([r.interval(0.95)[0] <= exact <= r.interval(0.95)[1] for r in runs])
    assert covered >= 0.85, covered


def test_xtrace_beats_hutchpp_when_the_sketch_is_short_of_the_outliers():
    """LOW_RANK_NOISE has 10 outliers. With 24 matvecs Hutch++ sketches 8 directions and
    XTrace 12 (each estimate 11): XTrace's error is several times smaller. With a sketch
    past the outliers (60) the two are level."""
    op, exact = ht.from_dense(LOW_RANK_NOISE), np.trace(LOW_RANK_NOISE)
    err = {m: np.sqrt(np.mean([(ht.trace(op, method=m, num_matvecs=24, key=jax.random.key(s))
                                .value - exact) ** 2 for s in range(12)]))
           for m in ("hutch++", "xtrace")}
    assert err["xtrace"] < err["hutch++"] / 4, err
    odd = ht.trace(op, method="xtrace", num_matvecs=25, key=jax.random.key(0))
    assert odd.num_matvecs == 24 and odd.num_samples == 12         # an even number is spent
    low_rank = ht.from_dense(np.diag(np.r_[5.0, 3.0, np.zeros(8)]))   # 5 vectors > rank 2
    tr = ht.trace(low_rank, method="xtrace", num_matvecs=10, key=jax.random.key(0))
    np.testing.assert_allclose(tr.value, 8.0, atol=1e-10)
    assert tr.stderr == 0 and tr.num_matvecs == 10


def test_slq_trace_is_hutchinson_with_normalised_probes():
    op = ht.from_dense(SADDLE)
    hutch = ht.trace(op, method="hutchinson", num_matvecs=60, key=jax.random.key(3))
    slq = ht.trace(op, method="slq", num_matvecs=60, key=jax.random.key(3))
    np.testing.assert_allclose(slq.samples, hutch.samples, rtol=1e-10)  # Rademacher: ||v||^2 = n
    hutch = ht.trace(op, method="hutchinson", num_matvecs=4, key=jax.random.key(3))
    dens = ht.density(op, num_probes=4, num_steps=20, key=jax.random.key(3))
    np.testing.assert_allclose(dens.trace().samples, hutch.samples, rtol=1e-9)


def test_gaussian_probes_and_dense_method():
    op, exact = ht.from_dense(MARCHENKO_PASTUR), np.trace(MARCHENKO_PASTUR)
    for seed in range(3):
        tr = ht.trace(op, method="hutchinson", probe="gaussian", num_matvecs=60,
                      key=jax.random.key(seed))
        assert abs(tr.value - exact) <= 3 * tr.stderr
    dense = ht.trace(op, method="dense")
    np.testing.assert_allclose(dense.value, exact, rtol=1e-12)
    assert dense.stderr == 0 and dense.num_matvecs == N


def test_rank_deficient_sketch_is_handled():
    a = np.diag(np.r_[5.0, 3.0, np.zeros(8)])              # rank 2, sketch of 4 vectors
    low, samples = jax.jit(lambda s, g: hutchpp(lambda x: a @ x, s, g))(
        random_probes(jax.random.key(0), jnp.zeros(10), 4),
        random_probes(jax.random.key(1), jnp.zeros(10), 3))
    np.testing.assert_allclose(low, 8.0, atol=1e-10)
    np.testing.assert_allclose(samples, 0.0, atol=1e-10)
    q = orthonormalize(random_probes(jax.random.key(2), jnp.zeros(3), 5, kind="gaussian"))
    gram = np.asarray(q @ q.T)
    np.testing.assert_allclose(np.diag(gram)[:3], 1.0, atol=1e-12)   # 3 independent, 2 zero rows
    np.testing.assert_allclose(gram[3:], 0.0, atol=1e-12)


def test_compiled_code_is_reused_across_operators():
    from hessian_tools import operators
    fns = [density_module._hutchpp_compiled, operators._flat_rows]
    for kw in ({}, {"batch_size": 60}):      # the NumPy form on one CPU device; compiled
        first = ht.trace(ht.from_dense(WIGNER), num_matvecs=60, key=jax.random.key(0), **kw)
        sizes = [f._cache_size() for f in fns]
        second = ht.trace(ht.from_dense(MARCHENKO_PASTUR), num_matvecs=60,
                          key=jax.random.key(0), **kw)
        assert [f._cache_size() for f in fns] == sizes
        assert first.value != second.value


def test_numpy_form_matches_the_compiled_form():
    """On one CPU device the products go through _flat_rows and the rest runs in NumPy;
    batch_size forces the single compiled function. Same probes, same numbers, also with
    a budget that is not a multiple of 3 and with a rank-deficient sketch."""
    obj, _ = _regression(streaming=False)
    op = ht.hessian(obj)
    for method in ("hutch++", "hutchinson"):
        for n in (30, 31):
            host = ht.trace(op, method=method, num_matvecs=n, key=jax.random.key(3))
            compiled = ht.trace(op, method=method, num_matvecs=n, key=jax.random.key(3),
                                batch_size=n)
            np.testing.assert_allclose(host.samples, compiled.samples, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(host.value, compiled.value, rtol=1e-10)
            assert host.num_matvecs == n
    assert op.num_matvecs == 4 * (30 + 31)
    low_rank = ht.from_dense(np.diag(np.r_[5.0, 3.0, np.zeros(8)]))   # sketch of 4 > rank 2
    tr = ht.trace(low_rank, num_matvecs=12, key=jax.random.key(0))
    np.testing.assert_allclose([tr.low_rank, tr.value], 8.0, atol=1e-10)
    np.testing.assert_allclose(tr.samples, 0.0, atol=1e-10)


def _regression(streaming):
    """A least-squares objective on pytree params: H = blockdiag(X^T X / N) per output."""
    data_rng = np.random.default_rng(1)
    x = jnp.asarray(data_rng.normal(size=(40, 5)))
    y = jnp.asarray(data_rng.normal(size=(40, 3)))
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)]

    def loss(p, batch):
        return 0.5 * jnp.mean(jnp.sum((batch[0] @ p["w"] + p["b"] - batch[1]) ** 2, axis=1))

    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
    data = (lambda: iter(batches)) if streaming else batches
    exact = 3 * (np.trace(np.asarray(x.T @ x)) / 40 + 1.0)
    return ht.Objective(loss, params, data), exact


@pytest.mark.parametrize("method", ["hutch++", "xtrace"])
def test_pytree_params_and_streamed_data_give_the_same_numbers(method):
    # (the streamed Hutchinson path is a subset of Hutch++'s)
    obj, exact = _regression(streaming=False)
    streamed, _ = _regression(streaming=True)
    a = ht.trace(ht.hessian(obj), method=method, num_matvecs=30, key=jax.random.key(0))
    op = ht.hessian(streamed)
    b = ht.trace(op, method=method, num_matvecs=30, key=jax.random.key(0))
    np.testing.assert_allclose(b.value, a.value, rtol=1e-10)
    assert op.num_matvecs == 30 and b.num_matvecs == 30
    assert abs(a.value - exact) <= 3 * a.stderr + 1e-9
    c = ht.trace(ht.hessian(obj), method=method, num_matvecs=30, key=jax.random.key(0),
                 batch_size=7)                       # the compiled batched products
    np.testing.assert_allclose(c.value, a.value, rtol=1e-10)


def test_same_key_same_numbers_and_json_round_trip():
    op = ht.from_dense(SADDLE)
    a = ht.trace(op, num_matvecs=60, key=jax.random.key(7))
    b = ht.trace(op, num_matvecs=60, key=jax.random.key(7))
    c = ht.trace(op, num_matvecs=60, key=jax.random.key(8))
    assert a.value == b.value and a.value != c.value
    back = ht.TraceEstimate.from_json(a.to_json())
    assert back.to_dict() == a.to_dict()
    np.testing.assert_array_equal(back.samples, a.samples)
    lo, hi = a.interval(0.95)
    assert lo < a.value < hi and a.seed == back.seed and len(a.seed) > 0


def test_errors():
    op = ht.from_dense(np.eye(4))
    with pytest.raises(ValueError, match="explicit PRNG key"):
        ht.trace(op)
    with pytest.raises(ValueError, match="method='hutch' is not one of"):
        ht.trace(op, method="hutch", key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_matvecs=3 must be an integer >= 4"):
        ht.trace(op, num_matvecs=3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_matvecs=5 must be an integer >= 6. XTrace needs"):
        ht.trace(op, method="xtrace", num_matvecs=5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="probe='uniform' is not one of"):
        ht.trace(op, probe="uniform", key=jax.random.key(0))
    with pytest.raises(TypeError, match="expects a CurvatureOperator"):
        ht.trace(np.eye(4), key=jax.random.key(0))
    with pytest.raises(ValueError, match="confidence=1.5"):
        ht.TraceEstimate(value=1.0, stderr=0.1, num_matvecs=4, method="hutchinson", num_samples=4,
                         samples=np.ones(4)).interval(1.5)
