import jax
import jax.numpy as jnp
import numpy as np

from conftest import dot_precisions
from hessian_tools import tree


def _tree(seed):
    rng = np.random.default_rng(seed)
    return {"a": jnp.asarray(rng.normal(size=(3, 2))), "b": [jnp.asarray(rng.normal(size=4))]}


def test_vdot_norm_axpy_match_flat():
    x, y = _tree(0), _tree(1)
    fx, fy = tree.ravel(x), tree.ravel(y)
    np.testing.assert_allclose(tree.vdot(x, y), fx @ fy, rtol=1e-12)
    np.testing.assert_allclose(tree.norm(x), np.linalg.norm(fx), rtol=1e-12)
    np.testing.assert_allclose(tree.ravel(tree.axpy(2.0, x, y)), 2 * fx + fy, rtol=1e-12)
    assert tree.size(x) == 10


def test_basis_dot_combine_set_get():
    x, y = _tree(0), _tree(1)
    basis = tree.basis_set(tree.basis_set(tree.zeros_basis(3, x), 0, x), 2, y)
    np.testing.assert_allclose(tree.ravel(tree.basis_get(basis, 2)), tree.ravel(y))
    np.testing.assert_allclose(tree.basis_dot(basis, x),
                               [tree.vdot(x, x), 0.0, tree.vdot(y, x)], rtol=1e-12)
    comb = tree.basis_combine(jnp.array([1.0, 5.0, -2.0]), basis)
    np.testing.assert_allclose(tree.ravel(comb), tree.ravel(x) - 2 * tree.ravel(y), rtol=1e-12)
    two = tree.basis_combine(jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), basis)
    np.testing.assert_allclose(tree.ravel(tree.basis_get(two, 1)), tree.ravel(y))


def test_random_vectors_are_seeded():
    x = _tree(0)
    a = tree.ravel(tree.normal_like(jax.random.key(3), x))
    b = tree.ravel(tree.normal_like(jax.random.key(3), x))
    c = tree.ravel(tree.rademacher_like(jax.random.key(4), x))
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(np.asarray(c))) <= {-1.0, 1.0}


def test_solver_algebra_and_dense_products_are_full_precision():
    """Every product of a compiled Lanczos run (inner products, reorthogonalisation, the
    dense operator) carries HIGHEST precision: JAX's default on NVIDIA GPUs is TF32, which
    would cap the basis's orthogonality near 1e-3 (benchmarks/RESULTS_gpu.md)."""
    import hessian_tools as ht
    from hessian_tools.linalg import lanczos_tridiag
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    op = ht.from_dense(np.diag(np.arange(1.0, 7.0)).astype(np.float32))
    v0 = jnp.ones(6, jnp.float32)
    fns = [lambda v: lanczos_tridiag(op.matvec_fn, v, num_steps=3).alphas,
           lambda v: tree.basis_combine(jnp.ones((2, 3), v.dtype), jnp.stack([v, v]))]
    for fn in fns:
        seen = dot_precisions(fn, v0)
        assert seen and all(p == highest for p in seen), seen
