"""The eigensolver's memory plan: the formula, the refusal and krylov_dim='auto'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from conftest import spectrum_matrix
from hessian_tools import _host
from hessian_tools.linalg import lanczos_eigs, memory

N = 400
EIGS = np.r_[9.0, 7.0, 5.0, 4.0, np.linspace(-1.0, 1.0, N - 4)]


def _budget(monkeypatch, nbytes):
    monkeypatch.setattr(_host, "available_memory", lambda: (int(nbytes), "a test's budget"))


@pytest.mark.parametrize("which,lock", [("largest", 2 * 3 + 8), ("both", 4 * 3 + 8)])
@pytest.mark.parametrize("keep", [False, True])
def test_plan_is_the_documented_formula(which, lock, keep):
    like = jax.ShapeDtypeStruct((N,), jnp.float64)
    plan = memory.plan(like, 3, which, None, keep_products=keep)
    m = memory.default_krylov_dim(3, which)
    assert (plan.krylov_dim, plan.lock_rows) == (m, lock)
    assert plan.vectors == (m + 1 + lock) * (2 if keep else 1) + memory.WORK_VECTORS
    assert plan.bytes == plan.vectors * N * 8
    f32 = memory.plan(jax.ShapeDtypeStruct((N,), jnp.float32), 3, which, None, keep_products=keep)
    assert f32.bytes * 2 == plan.bytes


def test_a_solve_that_does_not_fit_is_refused_with_the_numbers(monkeypatch):
    like = jax.ShapeDtypeStruct((N,), jnp.float64)
    full = memory.plan(like, 2, "largest", None)
    _budget(monkeypatch, full.bytes // 2)
    with pytest.raises(ValueError) as err:
        lanczos_eigs(lambda v: v, jax.random.key(0), like, k=2)
    msg = str(err.value)
    assert f"{full.vectors} parameter-sized vectors" in msg
    assert "a test's budget" in msg and "krylov_dim='auto'" in msg and "method='power'" in msg
    _budget(monkeypatch, full.bytes)                 # exactly enough: accepted
    memory.plan(like, 2, "largest", None).check()
    _budget(monkeypatch, 0)                          # unknown: assumed to fit
    memory.plan(like, 2, "largest", None).check()


def test_nothing_fits_names_no_auto(monkeypatch):
    like = jax.ShapeDtypeStruct((N,), jnp.float64)
    _budget(monkeypatch, 10 * N * 8)
    with pytest.raises(ValueError, match="would need about") as err:
        memory.plan(like, 2, "largest", "auto").check()
    assert "krylov_dim='auto'" not in str(err.value)


def test_auto_fits_the_budget_and_gives_the_same_answer(monkeypatch):
    a = spectrum_matrix(EIGS, seed=3)
    op = ht.from_dense(a)
    default = ht.eigenvalues(op, k=3, key=jax.random.key(0), tol=1e-10, residuals="recompute")
    rows = 40                    # 90% of the budget: 40 vectors, a basis of 40 - 6 - 14 - 1
    _budget(monkeypatch, rows * N * 8 / memory.AUTO_FRACTION + 1)
    plan = memory.plan(op.params_like, 3, "largest", "auto")
    assert memory.min_krylov_dim(3, "largest") <= plan.krylov_dim < memory.default_krylov_dim(
        3, "largest")
    assert plan.krylov_dim == rows - memory.WORK_VECTORS - plan.lock_rows - 1
    assert plan.bytes <= rows * N * 8
    assert plan.fits
    with pytest.raises(ValueError, match="krylov_dim='auto'"):
        ht.eigenvalues(op, k=3, key=jax.random.key(0), tol=1e-10, residuals="recompute")
    small = ht.eigenvalues(op, k=3, key=jax.random.key(0), tol=1e-10, krylov_dim="auto")
    assert small.residual_kind == "recompute"        # the kept products did not fit
    assert small.extra["krylov_dim"] == plan.krylov_dim
    assert small.extra["memory_bytes"] == plan.bytes
    np.testing.assert_allclose(small.values, EIGS[:3], rtol=1e-9)
    np.testing.assert_allclose(small.values, default.values, rtol=1e-9)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "big", True])
def test_bad_krylov_dim_is_named(bad):
    with pytest.raises(ValueError, match="krylov_dim"):
        memory.plan(jax.ShapeDtypeStruct((N,), jnp.float64), 2, "largest", bad)


def test_available_memory_reads_this_machine():
    nbytes, where = _host.available_memory()
    assert nbytes > 0 and where
