"""The numerical helpers of the ghorbani gallery entry: the SLQ-against-exact check on a
quadratic with a known spectrum, and the BatchNorm spectra against dense references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hessian_tools.analysis import outliers
from hessian_tools.gallery import ghorbani
from hessian_tools.objective import Objective
from hessian_tools.operators import dense_hessian
from hessian_tools.results import SpectralDensity

EIGS = np.r_[-0.5, np.linspace(0.0, 1.0, 20), 4.0, 9.0]


def quadratic_objective():
    """``0.5 p^T diag(EIGS) p`` (the data unused): Hessian ``diag(EIGS)``."""
    d = jnp.asarray(EIGS)
    return Objective(lambda p, batch: 0.5 * jnp.sum(d * p ** 2) + 0.0 * jnp.sum(batch),
                     jnp.ones(len(EIGS)), jnp.zeros((4, 1)))


def test_slq_check_exact_for_full_lanczos_on_a_diagonal():
    # Rademacher probes on a diagonal matrix give every eigenvalue the weight 1/n, and n
    # Lanczos steps find all n (distinct) eigenvalues: the SLQ measure is the exact one.
    check = ghorbani.slq_check(quadratic_objective(), probes=(1, 3), num_steps=len(EIGS),
                               key=jax.random.key(0))
    np.testing.assert_allclose(check.exact, np.sort(EIGS), atol=1e-12)
    for m in check.metrics():
        assert m["w1_rel"] < 1e-9
        assert m["mean_rel_err"] < 1e-9 and m["m2_rel_err"] < 1e-9
        assert m["lambda_max_rel_err"] < 1e-12
    assert [m["probes"] for m in check.metrics()] == [1, 3]
    assert check.num_matvecs == 3 * len(EIGS)
    np.testing.assert_array_equal(check.densities[0].nodes, check.densities[1].nodes[:1])


def test_slq_check_metrics_see_a_truncated_lanczos():
    # 4 steps cannot resolve 23 eigenvalues: the W1 distance and the second moment's error
    # are then clearly nonzero (the first moment is matched by any Gauss rule of one probe
    # only in expectation), while the top Ritz value is still close to 9.
    check = ghorbani.slq_check(quadratic_objective(), probes=(2,), num_steps=4,
                               key=jax.random.key(1))
    (m,) = check.metrics()
    assert m["w1_rel"] > 1e-3
    assert m["lambda_max_rel_err"] < 0.1


def test_exact_density_is_the_spectral_measure():
    check = ghorbani.SLQCheck(exact=np.sort(EIGS))
    dens = check.exact_density()
    x, w = dens.measure()
    np.testing.assert_allclose(np.sort(x), np.sort(EIGS))
    np.testing.assert_allclose(w, 1.0 / len(EIGS))
    assert dens.wasserstein1(EIGS) < 1e-12
    assert isinstance(dens, SpectralDensity) and dens.dim == len(EIGS)


def test_slq_check_needs_a_key():
    with pytest.raises(ValueError, match="key"):
        ghorbani.slq_check(quadratic_objective(), key=None)


def test_ratios_of_a_made_up_spectrum():
    top = np.r_[100.0, 50.0, 40.0, 30.0, 20.0, 15.0, 12.0, 11.0, 10.5, 10.2,
                np.linspace(1.0, 0.9, 14)]
    split = outliers(top, k=24)
    s = ghorbani.BNSpectrum(label="x", bn_mode="none", loss=0.0, split=split,
                            density=ghorbani.SLQCheck(exact=top).exact_density())
    assert s.lambda_max == 100.0
    assert s.class_ratio == pytest.approx(100.0)            # lambda_1 / lambda_11 = 100 / 1
    assert split.num_outliers == 10
    assert s.edge_ratio == pytest.approx(100.0 / split.bulk_edge)
    back = ghorbani.BNSpectrum.from_dict(s.to_dict())
    assert back.class_ratio == s.class_ratio


@pytest.fixture(scope="module")
def tiny_models():
    config = ghorbani.Config(widths=(4,), num_examples=64, batch_size=32, epochs=2,
                             probes=(1,), num_steps=12, k=12, bn_probes=1)
    data = ghorbani.load_data(config)
    return config, data, ghorbani.train_pair(config, data, seed=0)


@pytest.mark.parametrize("mode", ["batch", "eval"])
def test_bn_spectrum_top_matches_the_dense_hessian(tiny_models, mode):
    config, data, models = tiny_models
    batches = ghorbani.batches(data, config)
    assert [len(b[1]) for b in batches] == [32, 32]
    s = ghorbani.bn_spectrum(models["BN"], batches, label=mode, bn_mode=mode, k=12,
                             num_probes=1, num_steps=12, key=jax.random.key(0))
    ref = Objective.from_nnx(models["BN"], ghorbani.cross_entropy, batches, bn_mode=mode)
    exact = np.linalg.eigvalsh(dense_hessian(ref))[::-1]
    np.testing.assert_allclose(s.split.top[:5], exact[:5], rtol=1e-6, atol=1e-9)


def test_batch_and_population_statistics_give_different_hessians(tiny_models):
    config, data, models = tiny_models
    batches = ghorbani.batches(data, config)
    h = {mode: dense_hessian(Objective.from_nnx(models["BN"], ghorbani.cross_entropy, batches,
                                                bn_mode=mode)) for mode in ("batch", "eval")}
    assert np.linalg.norm(h["batch"] - h["eval"]) > 1e-3 * np.linalg.norm(h["eval"])
    assert nnx.state(models["BN"], nnx.BatchStat)   # the running statistics were trained
