"""SLQ densities, counts and outliers against exact spectra (eigh)."""

import importlib

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

import hessian_tools as ht
import hessian_tools.analysis.traces as sd
from conftest import spectrum_matrix

matplotlib.use("Agg")
density_module = importlib.import_module("hessian_tools.analysis.spectral")

N = 300
rng = np.random.default_rng(0)
_g = rng.normal(size=(N, N))
WIGNER = (_g + _g.T) / np.sqrt(2 * N)                       # semicircle on [-2, 2]
_x = rng.normal(size=(N, 2 * N))
MARCHENKO_PASTUR = _x @ _x.T / (2 * N)                      # MP, ratio 1/2
_u = np.linalg.qr(rng.normal(size=(N, 5)))[0]
SPIKES = np.array([10.0, 8.0, 6.0, 5.0, 4.0])
LOW_RANK_BULK = WIGNER + _u @ np.diag(SPIKES) @ _u.T        # 5 outliers over a semicircle
NEGATIVES = -np.linspace(0.1, 1.5, 25)                      # 25 negative eigenvalues
SADDLE = spectrum_matrix(np.r_[NEGATIVES, rng.uniform(0.0, 4.0, N - 25)], seed=4)
MATRICES = {"wigner": WIGNER, "marchenko_pastur": MARCHENKO_PASTUR,
            "low_rank_bulk": LOW_RANK_BULK, "saddle": SADDLE}
EIGS = {name: np.linalg.eigvalsh(a) for name, a in MATRICES.items()}
W1_BOUND = 0.02            # W1 / (lambda_max - lambda_min) at the defaults (10 probes x 80)


def _w1(name, num_probes, num_steps, seed):
    dens = ht.density(ht.from_dense(MATRICES[name]), num_probes=num_probes,
                      num_steps=num_steps, key=jax.random.key(seed))
    eigs = EIGS[name]
    return dens.wasserstein1(eigs) / (eigs[-1] - eigs[0])


@pytest.mark.parametrize("name", sorted(MATRICES))
def test_wasserstein_distance_shrinks_with_probes_and_steps(name):
    budgets = [(2, 8), (4, 20), (10, 80)]              # the last is the default
    w1 = [np.mean([_w1(name, p, m, seed) for seed in (0, 1)]) for p, m in budgets]
    assert w1[0] > w1[1] > w1[2], w1
    assert w1[2] < W1_BOUND, w1
    assert w1[0] > 2 * w1[2], w1                      # a real improvement, not noise


def test_density_defaults_bookkeeping_and_no_new_matvecs_to_resmooth():
    op = ht.from_dense(MARCHENKO_PASTUR)
    dens = ht.density(op, key=jax.random.key(0))
    assert (dens.num_probes, dens.num_steps) == (10, 80)
    assert dens.num_matvecs == op.num_matvecs == 800
    assert dens.nodes.shape == dens.weights.shape == dens.residuals.shape == (10, 80)
    np.testing.assert_allclose(dens.weights.sum(axis=1), 1.0, atol=1e-12)
    grid = dens.grid(4000, sigma=0.1)                 # wide enough for the widest sigma
    for sigma in (None, 0.01, 0.1):                   # re-smoothing: no matvecs
        p = dens.pdf(grid, sigma=sigma)
        np.testing.assert_allclose(np.trapezoid(p, grid), 1.0, atol=2e-3)
    assert op.num_matvecs == 800
    cdf = dens.cdf(grid)
    assert np.all(np.diff(cdf) >= 0) and cdf[0] == 0.0 and abs(cdf[-1] - 1) < 1e-12
    np.testing.assert_allclose(dens.cdf(grid, sigma=0.05)[-1], 1.0, atol=1e-9)
    eigs = EIGS["marchenko_pastur"]
    ends = dens.ends()
    assert eigs[0] - 1e-9 <= ends["lambda_min"] and ends["lambda_max"] <= eigs[-1] + 1e-9
    assert abs(ends["lambda_max"] - eigs[-1]) <= ends["lambda_max_residual"] + 1e-9
    assert abs(ends["lambda_max"] - eigs[-1]) < 0.05
    np.testing.assert_allclose(dens.default_sigma,
                               (dens.lambda_max - dens.lambda_min) / 160, rtol=1e-12)


def test_json_round_trip_keeps_every_probe():
    dens = ht.density(ht.from_dense(SADDLE), num_probes=4, num_steps=20, key=jax.random.key(1))
    back = ht.SpectralDensity.from_json(dens.to_json())
    for field in ("nodes", "weights", "residuals"):
        np.testing.assert_array_equal(getattr(back, field), getattr(dens, field))
    assert back.to_dict() == dens.to_dict()
    assert back.seed == dens.seed and back.num_matvecs == 80 and back.probe == "rademacher"
    grid = dens.grid(50)
    np.testing.assert_array_equal(back.pdf(grid), dens.pdf(grid))
    count = dens.num_below(0.0)
    assert ht.EigenvalueCount.from_json(count.to_json()).to_dict() == count.to_dict()


def test_same_key_same_density_and_compiled_code_is_reused():
    a = ht.density(ht.from_dense(WIGNER), num_probes=4, num_steps=20, key=jax.random.key(3))
    size = density_module._slq_compiled._cache_size()
    b = ht.density(ht.from_dense(WIGNER), num_probes=4, num_steps=20, key=jax.random.key(3))
    c = ht.density(ht.from_dense(MARCHENKO_PASTUR), num_probes=4, num_steps=20,
                   key=jax.random.key(3))
    assert density_module._slq_compiled._cache_size() == size   # another operator, same code
    np.testing.assert_array_equal(a.nodes, b.nodes)
    assert not np.allclose(a.nodes, c.nodes)
    d = ht.density(ht.from_dense(WIGNER), num_probes=4, num_steps=20, key=jax.random.key(4))
    assert not np.allclose(a.nodes, d.nodes)


def test_host_loop_and_gaussian_probes():
    op = ht.from_dense(LOW_RANK_BULK)
    ref = ht.density(op, num_probes=4, num_steps=20, key=jax.random.key(0))
    host = ht.density(op, num_probes=4, num_steps=20, key=jax.random.key(0), loop="host")
    np.testing.assert_allclose(host.nodes, ref.nodes, atol=1e-10)
    np.testing.assert_allclose(host.weights, ref.weights, atol=1e-10)
    assert host.loop == "host" and op.num_matvecs == 2 * 80
    gauss = ht.density(op, num_probes=4, num_steps=20, key=jax.random.key(0), probe="gaussian")
    assert gauss.probe == "gaussian" and not np.allclose(gauss.nodes, ref.nodes)
    assert abs(gauss.trace().value - np.trace(LOW_RANK_BULK)) <= 3 * gauss.trace().stderr


def test_auto_loop_drives_conv_products_from_python_on_cpu(monkeypatch):
    """XLA:CPU runs convolutions slowly inside compiled loops and under vmap: "auto" picks
    the host loop, and density and trace apply each vector by its own call."""
    def conv_loss(p, batch):
        out = jax.lax.conv_general_dilated(batch[0], p["k"], (1, 1), "SAME",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.mean(jnp.tanh(out) ** 2)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 1)))
    conv = ht.hessian(ht.Objective(conv_loss, {"k": jnp.asarray(rng.normal(size=(3, 3, 1, 2)))},
                                   (x,)))
    ref = ht.density(conv, num_probes=2, num_steps=6, key=jax.random.key(0), loop="compiled")
    refs = {m: ht.trace(conv, method=m, num_matvecs=9, key=jax.random.key(1))
            for m in ("hutch++", "hutchinson")}
    on_cpu = jax.default_backend() == "cpu"
    if on_cpu:                           # from here on, a batched conv product is an error
        def batched(*args, **kwargs):
            raise AssertionError("a conv product was vmapped on CPU")
        for name in ("_hutchpp_compiled", "_hutchinson_compiled"):
            monkeypatch.setattr(sd, name, batched)
        for name in ("_apply_rows", "_flat_rows"):      # the operator's batched products
            monkeypatch.setattr(ht.operators, name, batched)
    before = conv.num_matvecs
    got = ht.density(conv, num_probes=2, num_steps=6, key=jax.random.key(0))
    assert got.loop == ("host" if on_cpu else "compiled")
    assert conv.num_matvecs - before == 12 == got.num_matvecs   # counted once each
    np.testing.assert_allclose(got.nodes, ref.nodes, atol=1e-10)
    np.testing.assert_allclose(got.weights, ref.weights, atol=1e-10)
    for method, want in refs.items():  # the same probes, so the same samples
        tr = ht.trace(conv, method=method, num_matvecs=9, key=jax.random.key(1))
        np.testing.assert_allclose(tr.samples, want.samples, rtol=1e-9, atol=1e-12)
        assert tr.num_matvecs == 9
    monkeypatch.undo()                   # an MLP's products are batched
    mlp = ht.density(ht.hessian(_regression(False)), num_probes=2, num_steps=6,
                     key=jax.random.key(0))
    # on one CPU device every model gets the host loop with NumPy bases; else compiled
    single_cpu = on_cpu and jax.local_device_count() == 1
    assert (mlp.loop, mlp.extra["basis"]) == (("host", "numpy") if single_cpu
                                              else ("compiled", "device"))


def _regression(streaming):
    data_rng = np.random.default_rng(2)
    x = jnp.asarray(data_rng.normal(size=(30, 4)))
    y = jnp.asarray(data_rng.normal(size=(30, 2)))
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 30, 10)]

    def loss(p, batch):
        out = jnp.tanh(batch[0] @ p["w"]) @ p["v"]
        return 0.5 * jnp.mean(jnp.sum((out - batch[1]) ** 2, axis=1))

    params = {"w": jnp.asarray(data_rng.normal(size=(4, 3))),
              "v": jnp.asarray(data_rng.normal(size=(3, 2)))}
    return ht.Objective(loss, params, (lambda: iter(batches)) if streaming else batches)


def test_host_loop_on_a_pytree_matches_the_compiled_loop():
    """On one CPU device the host loop keeps NumPy bases and sends each step's products as
    one flat array (``_flat_rows``): same probes, same numbers as the compiled loop."""
    op = ht.hessian(_regression(False))             # two leaves, (4, 3) and (3, 2)
    ref = ht.density(op, num_probes=3, num_steps=8, key=jax.random.key(3), loop="compiled")
    got = ht.density(op, num_probes=3, num_steps=8, key=jax.random.key(3), loop="host")
    single_cpu = jax.default_backend() == "cpu" and jax.local_device_count() == 1
    assert got.extra["basis"] == ("numpy" if single_cpu else "device")
    assert op.num_matvecs == 2 * 24
    np.testing.assert_allclose(got.nodes, ref.nodes, atol=1e-10)
    np.testing.assert_allclose(got.weights, ref.weights, atol=1e-10)


def test_streamed_data_fall_back_to_a_python_loop_with_the_same_numbers():
    ref = ht.density(ht.hessian(_regression(False)), num_probes=3, num_steps=8,
                     key=jax.random.key(0), loop="host")     # compiled == host: tested above
    op = ht.hessian(_regression(True))
    assert op.matvec_fn is None
    got = ht.density(op, num_probes=3, num_steps=8, key=jax.random.key(0))
    assert got.loop == "host" and op.num_matvecs == 24 and got.num_matvecs == 24
    np.testing.assert_allclose(got.nodes, ref.nodes, atol=1e-10)
    np.testing.assert_allclose(got.weights, ref.weights, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_negative_count_interval_covers_the_true_count(seed):
    op = ht.from_dense(SADDLE)
    eigs = EIGS["saddle"]
    tau = ht.default_threshold(np.max(np.abs(eigs)), jnp.float64)
    assert np.sum(eigs < -tau) == 25
    neg = ht.negative_count(op, key=jax.random.key(seed), method="slq")
    assert neg.method == "slq" and not neg.exact and neg.num_matvecs == 800
    assert neg.low <= 25 <= neg.high, neg
    assert neg.high - neg.low < 0.1 * N, neg           # informative, not [0, n]
    assert abs(neg.count - 25) < 3 * neg.stderr + 2, neg
    lo, hi = neg.fraction_interval
    assert lo <= 25 / N <= hi
    np.testing.assert_allclose(neg.tau, tau, rtol=0.02)  # scale from the extreme Ritz values
    np.testing.assert_allclose(neg.ratio, 1.5 / np.max(eigs), rtol=0.05)


def test_num_below_interval_covers_across_thresholds():
    op = ht.from_dense(MARCHENKO_PASTUR)
    dens = ht.density(op, key=jax.random.key(5))
    eigs = EIGS["marchenko_pastur"]
    for t in np.quantile(eigs, [0.05, 0.25, 0.5, 0.75, 0.95]):
        below = dens.num_below(t)
        assert below.low <= np.sum(eigs < t) <= below.high, (t, below)
        above = dens.num_above(t)
        assert above.low <= np.sum(eigs > t) <= above.high, (t, above)


def test_exact_counts_dense_and_lanczos():
    eigs = np.r_[-1.0, -0.7, -0.4, rng.uniform(0.0, 3.0, N - 3)]
    a = spectrum_matrix(eigs, seed=9)
    op = ht.from_dense(a)
    # auto with the defaults (10 x 80 matvecs >= dim): dense is no dearer than SLQ
    dense = ht.negative_count(op, key=jax.random.key(0))
    assert dense.method == "dense" and dense.exact and dense.count == 3
    assert dense.num_matvecs == N and dense.low == dense.high == 3
    np.testing.assert_allclose(dense.ratio, 1.0 / np.max(eigs), rtol=1e-10)
    assert ht.negative_count(a).count == 3                       # the matrix itself
    slq = dict(num_probes=4, num_steps=20, key=jax.random.key(0))
    lanczos = ht.negative_count(op, method="lanczos", **slq)
    assert lanczos.exact and lanczos.method == "lanczos" and lanczos.count == 3, lanczos
    np.testing.assert_allclose(lanczos.lambda_min, -1.0, atol=1e-6)
    # auto: SLQ (4 x 20 matvecs < dim), then the exact Lanczos count because it is small
    auto = ht.negative_count(op, **slq)
    assert auto.exact and auto.method == "lanczos" and auto.count == 3, auto
    assert auto.num_matvecs > 80


def test_lanczos_count_falls_back_to_slq_when_the_count_is_large():
    op = ht.from_dense(SADDLE)
    neg = ht.negative_count(op, key=jax.random.key(0), method="lanczos", max_exact=5)
    assert not neg.exact and neg.method == "slq" and "max_exact=5" in neg.extra["lanczos"]
    assert neg.low <= 25 <= neg.high


def test_count_from_a_density_needs_no_matvecs():
    op = ht.from_dense(SADDLE)
    dens = ht.density(op, key=jax.random.key(2))
    before = op.num_matvecs
    neg = ht.negative_count(dens, tau=0.05)
    assert op.num_matvecs == before and neg.threshold == -0.05
    assert neg.low <= np.sum(EIGS["saddle"] < -0.05) <= neg.high


def test_outliers_of_a_low_rank_plus_bulk_matrix():
    op = ht.from_dense(LOW_RANK_BULK)
    eigs = EIGS["low_rank_bulk"]
    dens = ht.density(op, key=jax.random.key(0))
    split = ht.outliers(op, key=jax.random.key(1), k=12, dens=dens)
    assert split.num_outliers == 5, split
    np.testing.assert_allclose(split.outliers, eigs[::-1][:5], atol=1e-6)
    np.testing.assert_allclose(split.bulk_edge, eigs[-6], atol=1e-6)
    assert split.num_matvecs > 0
    count, low, high = split.slq_count_above
    assert low <= 5 <= high
    for name in ("wigner", "marchenko_pastur"):                  # no outliers, none found
        assert ht.outliers(EIGS[name]).num_outliers == 0
    back = ht.OutlierSplit.from_json(split.to_json())
    np.testing.assert_array_equal(back.outliers, split.outliers)


def test_plots_return_axes():
    import matplotlib.pyplot as plt
    a = ht.density(ht.from_dense(LOW_RANK_BULK), num_probes=4, num_steps=20,
                   key=jax.random.key(0))
    b = ht.density(ht.from_dense(WIGNER), num_probes=4, num_steps=20, key=jax.random.key(0))
    ax = ht.plot_density(a, eig=SPIKES, tau=0.1)
    assert ax.get_yscale() == "log" and len(ax.lines) >= 1 + 2 + 5
    ax2 = ht.plot_densities([a, b], labels=["spiked", "semicircle"], counts=True)
    assert [t.get_text() for t in ax2.get_legend().get_texts()] == ["spiked", "semicircle"]
    fig, ax3 = plt.subplots()
    assert ht.plot_density(a, ax=ax3, log=False) is ax3
    plt.close("all")
    with pytest.raises(ValueError, match="Got 1 labels for 2 densities"):
        ht.plot_densities([a, b], labels=["x"])


def test_errors():
    op = ht.from_dense(np.eye(5))
    with pytest.raises(ValueError, match="explicit PRNG key"):
        ht.density(op)
    with pytest.raises(ValueError, match=r"num_steps=9 exceeds the operator dimension 5\. "
                                         r"Pass num_steps <= 5\."):
        ht.density(op, num_steps=9, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_probes=0 must be an integer >= 1"):
        ht.density(op, num_probes=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="probe='normal' is not one of"):
        ht.density(op, probe="normal", key=jax.random.key(0))
    with pytest.raises(TypeError, match="expects a CurvatureOperator"):
        ht.density(np.eye(5), key=jax.random.key(0))
    with pytest.raises(ValueError, match="tau=-1 must be >= 0"):
        ht.negative_count(op, tau=-1)
    with pytest.raises(ValueError, match="sigma=-1"):
        ht.density(op, num_steps=3, key=jax.random.key(0)).pdf([0.0], sigma=-1)
    with pytest.raises(ValueError, match="gap_factor"):
        ht.outliers(np.arange(10.0), gap_factor=0.5)


# ---- the exact Hessian of a small digits MLP ---------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    from hessian_tools.examples.digits import digits_objective
    obj = digits_objective("mlp-tiny", dtype=jnp.float64, num_examples=300, trained=False)
    eigs = np.linalg.eigvalsh(ht.dense_hessian(obj))
    op = ht.hessian(obj, linearize=False)
    return op, eigs, ht.density(op, key=jax.random.key(0))


def test_digits_density_against_eigh(digits):
    op, eigs, dens = digits
    w1 = dens.wasserstein1(eigs) / (eigs[-1] - eigs[0])
    assert w1 < W1_BOUND, w1
    assert eigs[0] - 1e-9 <= dens.lambda_min and dens.lambda_max <= eigs[-1] + 1e-9
    np.testing.assert_allclose(dens.lambda_max, eigs[-1], rtol=1e-6)   # the top converges
    tr = dens.trace()
    assert abs(tr.value - eigs.sum()) <= 3 * tr.stderr


def test_digits_counts_and_trace_against_eigh(digits):
    op, eigs, dens = digits
    tau = ht.default_threshold(np.max(np.abs(eigs)), jnp.float64)
    true = int(np.sum(eigs < -tau))
    neg = ht.negative_count(dens)
    assert neg.low <= true <= neg.high, (neg, true)
    assert neg.high - neg.low < 0.05 * len(eigs)
    for t in (-10 * tau, -tau / 2, tau, 10 * tau):          # other thresholds, too
        c = dens.num_below(t)
        assert c.low <= np.sum(eigs < t) <= c.high, (t, c)
    split = ht.outliers(eigs)                            # the rule on the exact spectrum
    assert split.bulk_edge < eigs[-1]
