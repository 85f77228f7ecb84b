"""Solvers against numpy.linalg.eigh on explicit matrices with prescribed spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from conftest import rounding_perturbed_diag, spectrum_matrix
from hessian_tools.analysis import eigen as spectrum
from hessian_tools.linalg import lanczos_eigs, lanczos_tridiag, power_eigs

rng = np.random.default_rng(42)
SPECTRA = {
    "distinct": np.linspace(-3.0, 10.0, 60),
    "repeated": np.r_[5.0, 5.0, 5.0, 3.0, 2.0, rng.uniform(-1, 1, 55)],
    "repeated_bottom": np.r_[-4.0, -4.0, -4.0, -4.0, rng.uniform(-1, 3, 56)],
    "zeros": np.r_[2.0, 1.0, np.zeros(40), -1.0, rng.uniform(-0.5, 0.5, 17)],
    "clustered": np.r_[1.0 + 1e-3 * np.arange(5), rng.uniform(-0.2, 0.5, 55)],
    "saddle": np.r_[7.0, 4.0, -0.5, -2.0, -6.0, rng.uniform(-0.1, 0.1, 55)],
    "scales": np.r_[1e4, 1e2, 1.0, 1e-2, -1e-3, rng.uniform(-1e-4, 1e-4, 55)],
}


def _reference(eigs, k, which):
    w = np.sort(eigs)
    if which == "largest":
        return w[::-1][:k]
    if which == "smallest":
        return w[:k][::-1]
    return np.r_[w[::-1][:k], w[:k][::-1]]


@pytest.mark.parametrize("name", sorted(SPECTRA))
@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_lanczos_matches_eigh(name, which):
    eigs = SPECTRA[name]
    a = spectrum_matrix(eigs, seed=1)
    k = 4
    eig = ht.eigenvalues(ht.from_dense(a), k=k, which=which, key=jax.random.key(0), tol=1e-10)
    ref = _reference(np.linalg.eigvalsh(a), k, which)
    scale = np.max(np.abs(eigs))
    assert eig.converged
    np.testing.assert_allclose(eig.values, ref, atol=1e-8 * scale, rtol=0)
    # the vectors are unit eigenvectors with the reported residuals
    v = np.asarray(eig.vectors)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-10)
    res = np.linalg.norm(a @ v.T - v.T * eig.values, axis=0)
    np.testing.assert_allclose(eig.residuals, res, atol=1e-12 * scale)
    assert np.all(res <= 1e-9 * scale)


def test_repeated_eigenvalue_comes_back_with_multiplicity():
    eigs = np.r_[5.0, 5.0, 5.0, 3.0, np.linspace(-1, 2, 36)]
    eig = ht.eigenvalues(ht.from_dense(spectrum_matrix(eigs, 3)), k=3, key=jax.random.key(1))
    np.testing.assert_allclose(eig.values, [5.0, 5.0, 5.0], atol=1e-10)
    v = np.asarray(eig.vectors)
    np.testing.assert_allclose(v @ v.T, np.eye(3), atol=1e-8)  # three independent copies
    eig4 = ht.eigenvalues(ht.from_dense(spectrum_matrix(eigs, 3)), k=4, key=jax.random.key(1))
    np.testing.assert_allclose(eig4.values, [5.0, 5.0, 5.0, 3.0], atol=1e-10)


def test_identity_and_tiny_dimension():
    eig = ht.eigenvalues(ht.from_dense(np.eye(6)), k=3, key=jax.random.key(0))
    np.testing.assert_allclose(eig.values, [1.0, 1.0, 1.0], atol=1e-12)
    a = np.diag([3.0, -1.0, 2.0])
    eig = ht.eigenvalues(ht.from_dense(a), k=3, key=jax.random.key(0))
    np.testing.assert_allclose(eig.values, [3.0, 2.0, -1.0], atol=1e-12)
    assert eig.converged


def test_float32_operator():
    a = spectrum_matrix(np.linspace(-1, 4, 50), seed=5).astype(np.float32)
    eig = ht.eigenvalues(ht.from_dense(a), k=2, which="both", key=jax.random.key(0))
    assert eig.vectors.dtype == jnp.float32
    assert eig.tol == 1e-4
    np.testing.assert_allclose(eig.values, [4.0, 4.0 - 5 / 49, -1.0 + 5 / 49, -1.0], atol=1e-4)


def test_lanczos_tridiag_relation_and_orthonormality():
    a = spectrum_matrix(np.linspace(-2, 5, 40), seed=2)
    v0 = jnp.asarray(np.random.default_rng(0).normal(size=40))
    m = 15
    dec = jax.jit(lambda v: lanczos_tridiag(lambda x: a @ x, v, num_steps=m))(v0)
    q = np.asarray(dec.basis)                    # (m + 1, n)
    np.testing.assert_allclose(q @ q.T, np.eye(m + 1), atol=1e-12)
    t = np.asarray(dec.tridiagonal())
    lhs = a @ q[:m].T
    rhs = q[:m].T @ t + np.outer(q[m], np.eye(m)[-1]) * float(dec.betas[-1])
    np.testing.assert_allclose(lhs, rhs, atol=1e-10)
    np.testing.assert_allclose(q[0], v0 / np.linalg.norm(v0), atol=1e-12)


def test_lanczos_tridiag_vmaps_over_start_vectors_and_handles_breakdown():
    a = np.diag(np.r_[2.0, 2.0, 1.0, 1.0, 0.0])  # 3 distinct values: breakdown after 3 steps
    v0 = jax.random.normal(jax.random.key(0), (4, 5))
    dec = jax.jit(jax.vmap(lambda v: lanczos_tridiag(lambda x: a @ x, v, num_steps=5)))(v0)
    assert dec.alphas.shape == (4, 5)
    for i in range(4):
        t = np.asarray(dec.tridiagonal.__func__(jax.tree.map(lambda x: x[i], dec)))
        w, s = np.linalg.eigh(t)
        weights = s[0] ** 2                       # Gauss quadrature weights
        nodes = w[weights > 1e-12]
        np.testing.assert_allclose(np.sort(nodes), [0.0, 1.0, 2.0], atol=1e-10)
        assert np.all(np.isfinite(t))


@pytest.mark.parametrize("size", [1e-15, 2e-15])
def test_breakdown_is_judged_against_the_norm_of_the_matrix(size):
    """A perturbation of rounding size (a GPU's float64 products left beta_3 = 6e-16 here)
    must still read as breakdown when this step's alpha and beta are small next to
    ||A|| = 2: else Lanczos goes on into the invariant subspace's complement and returns
    second copies of 1 and 2 with weight (3 weighted nodes expected, 5 seen before)."""
    e = rounding_perturbed_diag(size)
    v0 = jax.random.normal(jax.random.key(0), (4, 5))
    dec = jax.jit(jax.vmap(lambda v: lanczos_tridiag(lambda x: e @ x, v, num_steps=5)))(v0)
    for i in range(4):
        t = np.asarray(dec.tridiagonal.__func__(jax.tree.map(lambda x: x[i], dec)))
        w, s = np.linalg.eigh(t)
        np.testing.assert_allclose(np.sort(w[s[0] ** 2 > 1e-12]), [0.0, 1.0, 2.0], atol=1e-10)


def test_power_iteration_matches_eigh():
    eigs = np.r_[9.0, 6.0, 3.0, np.linspace(-1, 1, 30)]
    a = spectrum_matrix(eigs, seed=3)
    out = power_eigs(lambda v: a @ v, jax.random.key(0), jnp.zeros(33), k=2, tol=1e-10,
                     num_matvecs=2000)
    np.testing.assert_allclose(out["values"], [9.0, 6.0], atol=1e-7)
    out = power_eigs(lambda v: a @ v, jax.random.key(0), jnp.zeros(33), k=1, which="smallest",
                     tol=1e-10, num_matvecs=5000)
    np.testing.assert_allclose(out["values"], [-1.0], atol=1e-6)


def test_power_handles_dominant_negative_eigenvalue():
    a = spectrum_matrix(np.r_[2.0, -8.0, np.linspace(-1, 1, 20)], seed=4)
    eig = ht.eigenvalues(ht.from_dense(a), k=1, method="power", key=jax.random.key(0),
                         tol=1e-9)
    np.testing.assert_allclose(eig.values, [2.0], atol=1e-6)


def test_dense_method_and_json_round_trip():
    a = spectrum_matrix(np.linspace(-2, 3, 12), seed=6)
    eig = ht.eigenvalues(ht.from_dense(a), k=2, which="both", method="dense")
    np.testing.assert_allclose(eig.values, [3.0, 3 - 5 / 11, -2 + 5 / 11, -2.0], atol=1e-12)
    exact = ht.eigenvalues(ht.from_dense(a), k=2, which="both", method="exact")
    np.testing.assert_array_equal(exact.values, eig.values)
    back = ht.Eigenpairs.from_json(eig.to_json())
    np.testing.assert_array_equal(back.values, eig.values)
    assert back.which == "both" and back.vectors is None
    np.testing.assert_allclose(back.smallest, [-2.0, -2 + 5 / 11])


def test_same_key_same_numbers():
    a = spectrum_matrix(np.linspace(-2, 3, 30), seed=7)
    e1 = ht.eigenvalues(ht.from_dense(a), k=2, key=jax.random.key(5), tol=1e-3)
    e2 = ht.eigenvalues(ht.from_dense(a), k=2, key=jax.random.key(5), tol=1e-3)
    np.testing.assert_array_equal(e1.values, e2.values)
    assert e1.num_matvecs == e2.num_matvecs


def test_lean_mode_matches_and_saves_matvecs():
    """verify=False and estimated residuals: same answer on simple eigenvalues, fewer products."""
    a = spectrum_matrix(np.r_[9.0, 7.0, 6.0, np.linspace(-1, 3, 57)], seed=8)
    full = ht.eigenvalues(ht.from_dense(a), k=3, key=jax.random.key(0), tol=1e-10)
    lean = ht.eigenvalues(ht.from_dense(a), k=3, key=jax.random.key(0), tol=1e-10,
                          verify=False, residuals="estimate")
    np.testing.assert_allclose(lean.values, full.values, atol=1e-9)
    assert lean.num_matvecs < full.num_matvecs - 3
    assert lean.residual_kind == "estimate"
    np.testing.assert_allclose(lean.residuals, full.residuals, atol=1e-9)
    # without verification a repeated eigenvalue can come back once: the default is safe
    b = spectrum_matrix(np.r_[5.0, 5.0, 3.0, np.linspace(-1, 2, 37)], seed=9)
    safe = ht.eigenvalues(ht.from_dense(b), k=2, key=jax.random.key(0), tol=1e-10)
    np.testing.assert_allclose(safe.values, [5.0, 5.0], atol=1e-9)


def _two_leaf(a):
    """``a`` as an operator on a two-leaf pytree ``{"w": (n - 7,), "b": (7,)}``."""
    n = len(a)

    def matvec(v):
        x = jnp.concatenate([v["b"], v["w"].reshape(-1)])
        y = a @ x
        return {"b": y[:7], "w": y[7:].reshape(v["w"].shape)}
    return matvec, {"b": jnp.zeros(7), "w": jnp.zeros(((n - 7) // 3, 3))}


@pytest.mark.parametrize("basis", ["host", "device"])
@pytest.mark.parametrize("name,which", [("repeated", "largest"), ("repeated_bottom", "smallest"),
                                        ("zeros", "both"), ("scales", "largest")])
def test_both_basis_backends_match_eigh_on_pytrees(basis, name, which):
    """The NumPy (host) and compiled (device) backends of lanczos_eigs, on a pytree with two
    leaves and a short Krylov dimension so that thick restarts happen."""
    eigs = np.r_[SPECTRA[name], rng.uniform(-0.1, 0.1, 1)]   # 61 = 7 + 18 * 3
    a = spectrum_matrix(eigs, seed=11)
    matvec, like = _two_leaf(a)
    res = lanczos_eigs(matvec, jax.random.key(3), like, k=4, which=which, tol=1e-10,
                       krylov_dim=16, basis=basis)
    ref = _reference(np.linalg.eigvalsh(a), 4, which)
    scale = np.max(np.abs(eigs))
    assert res.converged and res.num_restarts >= 0
    np.testing.assert_allclose(res.values, ref, atol=1e-8 * scale, rtol=0)
    v = np.concatenate([np.asarray(res.vectors["b"]),
                        np.asarray(res.vectors["w"]).reshape(len(res.values), -1)], axis=1)
    assert isinstance(res.vectors["w"], jax.Array) and res.vectors["w"].shape[1:] == (18, 3)
    np.testing.assert_allclose(v @ v.T, np.eye(len(ref)), atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(a @ v.T - v.T * res.values, axis=0), 0,
                               atol=1e-8 * scale)


def test_host_and_device_backends_take_the_same_path():
    """Same key, same start vectors: the two backends follow the same path (rounding can move
    a convergence check by a step)."""
    a = spectrum_matrix(np.r_[6.0, 6.0, 4.0, np.linspace(-2, 2, 58)], seed=12)
    matvec, like = _two_leaf(a)
    out = {b: lanczos_eigs(matvec, jax.random.key(9), like, k=3, tol=1e-8, krylov_dim=20,
                           basis=b) for b in ("host", "device")}
    assert abs(out["host"].num_matvecs - out["device"].num_matvecs) <= 2
    assert out["host"].num_restarts == out["device"].num_restarts
    np.testing.assert_allclose(out["host"].values, out["device"].values, atol=1e-10)
    np.testing.assert_allclose(out["host"].values, [6.0, 6.0, 4.0], atol=1e-9)
    with pytest.raises(ValueError, match="basis='disk' is not one of"):
        lanczos_eigs(matvec, jax.random.key(9), like, k=3, basis="disk")


def _flat(stacked, rows):
    return np.concatenate([np.asarray(stacked["b"]),
                           np.asarray(stacked["w"]).reshape(rows, -1)], axis=1)


@pytest.mark.parametrize("basis", ["host", "device"])
def test_kept_products_are_the_operators_products(basis):
    """keep_products carries A q through thick restarts and locking: the returned products
    are A v of the returned vectors, and keeping them does not change the solver's path."""
    eigs = np.r_[SPECTRA["repeated"], 0.5]
    a = spectrum_matrix(eigs, seed=13)
    matvec, like = _two_leaf(a)
    kw = dict(k=4, which="both", tol=1e-10, krylov_dim=16, basis=basis)
    res = lanczos_eigs(matvec, jax.random.key(4), like, keep_products=True, **kw)
    plain = lanczos_eigs(matvec, jax.random.key(4), like, **kw)
    assert plain.products is None and res.num_restarts > 0
    assert res.num_matvecs == plain.num_matvecs
    np.testing.assert_allclose(res.values, plain.values, atol=1e-12)
    rows = len(res.values)
    v, w = _flat(res.vectors, rows), _flat(res.products, rows)
    np.testing.assert_allclose(w, v @ a, atol=1e-12 * np.max(np.abs(eigs)))


def test_explicit_residuals_need_no_extra_matvecs(monkeypatch):
    """residuals="explicit" (kept products) equals "recompute" (fresh products) and the dense
    ||A v - lambda v||, and costs k fewer matvecs; a bad choice fails before any product."""
    a = spectrum_matrix(np.r_[9.0, 7.0, 7.0, -5.0, np.linspace(-1, 3, 56)], seed=14)
    out = {r: ht.eigenvalues(ht.from_dense(a), k=3, which="both", key=jax.random.key(1),
                             tol=1e-6, residuals=r) for r in ("explicit", "recompute")}
    assert out["recompute"].num_matvecs == out["explicit"].num_matvecs + 6
    v = np.asarray(out["explicit"].vectors)
    dense = np.linalg.norm(a @ v.T - v.T * out["explicit"].values, axis=0)
    for r in ("explicit", "recompute"):
        assert out[r].residual_kind == r and out[r].converged
        np.testing.assert_allclose(out[r].residuals, dense, atol=1e-13 * 9, rtol=1e-6)
    # past the memory budget for kept products, "explicit" recomputes them instead
    monkeypatch.setattr(spectrum, "KEPT_PRODUCTS_MAX_BYTES", 0)
    big = ht.eigenvalues(ht.from_dense(a), k=3, which="both", key=jax.random.key(1), tol=1e-6)
    assert big.residual_kind == "recompute"
    assert big.num_matvecs == out["recompute"].num_matvecs
    np.testing.assert_allclose(big.residuals, out["recompute"].residuals, atol=1e-13)
    op = ht.from_dense(a)
    with pytest.raises(ValueError, match="residuals='exact' is not one of"):
        ht.eigenvalues(op, k=3, key=jax.random.key(1), residuals="exact")
    assert op.num_matvecs == 0
