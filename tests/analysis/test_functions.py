"""Matrix functions by SLQ (tr f(A), log det, spectral entropy) and the log-scale spectrum,
against dense float64 references and closed forms."""

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
import scipy.linalg

import hessian_tools as ht
from conftest import spectrum_matrix
from hessian_tools.algebra import shift
from hessian_tools.analysis.diagonal import frobenius_norm_sq
from hessian_tools.analysis.functions import logdet, spectral_entropy, trace_function
from hessian_tools.linalg.trace import random_probes
from hessian_tools.plots import plot_log_density
from hessian_tools.results.toolbox import FunctionTrace

matplotlib.use("Agg")

N = 120
RNG = np.random.default_rng(0)
EIGS = np.r_[np.linspace(0.5, 2.0, 100), np.geomspace(3.0, 30.0, 20)]   # PSD, kappa = 60
A = spectrum_matrix(EIGS, seed=5)


def test_logdet_matches_slogdet():
    est = logdet(ht.from_dense(A), num_probes=20, num_steps=25, key=jax.random.key(0))
    sign, exact = np.linalg.slogdet(A)
    assert sign == 1
    assert abs(est.value - exact) < 4 * est.stderr, (est.value, exact, est.stderr)
    assert est.stderr < 0.1 * abs(exact)
    assert (est.function, est.method, est.num_matvecs, est.num_steps) == ("log", "slq", 500, 25)


def test_full_order_lanczos_is_exact_for_every_probe():
    """matfree's test: with ``num_steps = n`` each probe's value ``n sum_j w_j log theta_j`` is
    ``v^T log(A) v`` exactly (Rademacher ``||v||^2 = n``), whatever the probe."""
    key = jax.random.key(3)
    est = trace_function(ht.from_dense(A), np.log, num_probes=3, num_steps=N, key=key)
    v = np.asarray(random_probes(key, jnp.zeros(N), 3))
    log_a = scipy.linalg.logm(A).real
    np.testing.assert_allclose(est.samples, np.einsum("pi,ij,pj->p", v, log_a, v), rtol=1e-9)


def test_quadrature_error_falls_with_steps_and_polynomials_are_exact():
    key = jax.random.key(1)
    op = ht.from_dense(A)
    full = trace_function(op, np.log, num_probes=4, num_steps=N, key=key).samples
    errors = [np.max(np.abs(trace_function(op, np.log, num_probes=4, num_steps=m,
                                           key=key).samples - full)) for m in (3, 6, 12)]
    assert errors[0] > 5 * errors[1] > 25 * errors[2], errors            # geometric in m
    cube = trace_function(op, lambda x: x ** 3, num_probes=4, num_steps=2, key=key)  # 3 <= 2m-1
    v = np.asarray(random_probes(key, jnp.zeros(N), 4))
    np.testing.assert_allclose(cube.samples, np.einsum("pi,ij,pj->p", v, A @ A @ A, v), rtol=1e-10)


def test_density_is_reused_without_products_and_agrees_with_frobenius():
    op = ht.from_dense(A)
    dens = ht.density(op, num_probes=6, num_steps=10, key=jax.random.key(2))
    spent = op.num_matvecs
    from_density = trace_function(dens, np.sqrt)
    direct = trace_function(ht.from_dense(A), np.sqrt, num_probes=6, num_steps=10,
                            key=jax.random.key(2))
    assert op.num_matvecs == spent and from_density.num_matvecs == 60
    np.testing.assert_allclose(from_density.samples, direct.samples, rtol=1e-12)
    assert abs(from_density.value - np.sum(np.sqrt(EIGS))) < 4 * from_density.stderr
    square = trace_function(op, np.square, num_probes=5, num_steps=2, key=jax.random.key(4))
    frob = frobenius_norm_sq(op, method="hutchinson", num_matvecs=5, key=jax.random.key(4))
    np.testing.assert_allclose(square.samples, frob.samples, rtol=1e-10)     # ||A v||^2
    back = FunctionTrace.from_json(square.to_json())
    assert back.to_dict() == square.to_dict() and back.function == "square"


def test_spectral_entropy_of_a_singular_psd_operator():
    eigs = np.r_[np.zeros(20), EIGS[:100]]
    op = ht.from_dense(spectrum_matrix(eigs, seed=6), tags=("psd",))
    est = spectral_entropy(op, num_probes=12, num_steps=30, key=jax.random.key(0))
    p = eigs[eigs > 0] / eigs.sum()
    exact = -np.sum(p * np.log(p))
    assert abs(est.value - exact) < 4 * est.stderr + 1e-3, (est.value, exact, est.stderr)
    assert est.extra["effective_rank"] == pytest.approx(np.exp(est.value))
    flat = spectral_entropy(ht.from_dense(np.eye(8)), num_probes=2, num_steps=1,
                            key=jax.random.key(0))
    assert flat.value == pytest.approx(np.log(8), abs=1e-12) and flat.stderr < 1e-12
    # a diagonal operator, Rademacher probes, m = n: every probe's rule is exact
    diag = spectral_entropy(ht.from_dense(np.diag(eigs)), num_probes=2, num_steps=len(eigs),
                            key=jax.random.key(0))
    assert diag.value == pytest.approx(exact, abs=1e-9) and diag.stderr < 1e-9


def test_indefinite_and_undefined_are_refused():
    saddle = ht.from_dense(spectrum_matrix(np.r_[-1.0, EIGS[1:]], seed=7))
    with pytest.raises(ValueError, match="logdet needs a positive definite.*shift"):
        logdet(saddle, num_probes=2, num_steps=20, key=jax.random.key(0))
    shifted = logdet(shift(saddle, 1.5), num_probes=4, num_steps=40, key=jax.random.key(0))
    assert np.isfinite(shifted.value)
    with pytest.raises(ValueError, match="log is nan at the Ritz value -1"):
        trace_function(saddle, np.log, num_probes=2, num_steps=N, key=jax.random.key(0),
                       name="log")
    with pytest.raises(ValueError, match="positive semi-definite"):
        spectral_entropy(saddle, num_probes=2, num_steps=20, key=jax.random.key(0))
    with pytest.raises(TypeError, match="must be a function"):
        trace_function(saddle, "log", key=jax.random.key(0))
    with pytest.raises(ValueError, match="explicit PRNG key"):
        logdet(saddle)
    with pytest.raises(TypeError, match="CurvatureOperator"):
        logdet(A, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_probes=1 must be an integer >= 2"):
        spectral_entropy(ht.from_dense(np.eye(3)), num_probes=1, num_steps=1,
                         key=jax.random.key(0))


# ---- the log-scale spectrum ----------------------------------------------------------------

SIGNED = np.r_[10.0 ** np.linspace(-6, 1, 30), -(10.0 ** np.linspace(-4, -1, 10))]


def _exact_density():
    """A diagonal operator with Rademacher probes and ``m = n``: every probe's rule is the
    spectral measure itself (nodes = eigenvalues, weights = 1/n)."""
    op = ht.from_dense(np.diag(SIGNED))
    return ht.density(op, num_probes=2, num_steps=len(SIGNED), key=jax.random.key(0))


def test_log_abs_density_is_the_smoothed_histogram_of_log10_abs_eigenvalues():
    dens = _exact_density()
    t = np.linspace(-9, 4, 3000)
    for sign in (1, -1):
        logs = np.log10(np.abs(SIGNED[np.sign(SIGNED) == sign]))
        expected = np.exp(-0.5 * ((t[:, None] - logs[None, :]) / 0.2) ** 2).sum(1) / (
            0.2 * np.sqrt(2 * np.pi) * len(SIGNED))
        np.testing.assert_allclose(dens.log_abs_pdf(t, sign=sign, sigma=0.2), expected,
                                   atol=1e-9)
        assert np.trapezoid(dens.log_abs_pdf(t, sign=sign), t) == pytest.approx(
            len(logs) / len(SIGNED), abs=1e-6)
    assert dens.zero_resolution == 0.0                 # invariant Krylov spaces: all resolved
    short = ht.density(ht.from_dense(np.diag(SIGNED)), num_probes=2, num_steps=12,
                       key=jax.random.key(0))
    assert 1e-4 <= short.zero_resolution < 1.0        # nodes straddling zero, farther out
    high = dens.log_abs_pdf(t, floor=1e-3)                               # floor drops mass
    assert np.trapezoid(high, t) == pytest.approx(np.mean(SIGNED > 1e-3), abs=1e-6)
    grid = dens.log_abs_grid(50, sigma=0.2)
    assert grid[0] == pytest.approx(-6 - 0.8) and grid[-1] == pytest.approx(1 + 0.8)
    with pytest.raises(ValueError, match="sign=0"):
        dens.log_abs_pdf(t, sign=0)
    with pytest.raises(ValueError, match="sigma=0"):
        dens.log_abs_pdf(t, sigma=0)


def test_plot_log_density(tmp_path):
    dens = _exact_density()
    ax = plot_log_density(dens, counts=True, eig=SIGNED[[29, 30]], label="diag")
    labels = [line.get_label() for line in ax.get_lines()]
    assert "diag: λ > 0 (75% of eigenvalues)" in labels
    assert "diag: λ < 0 (25% of eigenvalues)" in labels
    assert ax.get_yscale() == "log" and "log10" in ax.get_xlabel()
    ax.figure.savefig(tmp_path / "log_density.png")
