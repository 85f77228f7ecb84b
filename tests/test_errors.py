"""Every documented bad input raises a clear error (message says what and how to fix)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht


def _loss(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _ok():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    data = (jnp.ones((5, 3)), jnp.ones((5, 2)))
    return params, data


def test_non_finite_parameters_name_the_leaf():
    params, data = _ok()
    params["w"] = params["w"].at[1, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"leaf 'w'.*1 non-finite"):
        ht.Objective(_loss, params, data)


def test_integer_parameters_are_a_type_error():
    params, data = _ok()
    params["step"] = jnp.array(3)
    with pytest.raises(TypeError, match="leaf 'step' has dtype int"):
        ht.Objective(_loss, params, data)


def test_empty_data():
    params, _ = _ok()
    with pytest.raises(ValueError, match="0 batches"):
        ht.Objective(_loss, params, [])
    with pytest.raises(ValueError, match="empty"):
        ht.Objective(_loss, params, (jnp.ones((0, 3)), jnp.ones((0, 2))))


def test_inconsistent_batches():
    params, (x, y) = _ok()
    with pytest.raises(ValueError, match="Batch 1 has per-example shapes"):
        ht.Objective(_loss, params, [(x, y), (jnp.ones((4, 4)), jnp.ones((4, 2)))])
    with pytest.raises(ValueError, match="Batch 1 has structure"):
        ht.Objective(_loss, params, [(x, y), {"x": x, "y": y}])
    with pytest.raises(ValueError, match="mixes leading sizes"):
        ht.Objective(_loss, params, (x, y[:3]))


def test_loss_must_be_scalar():
    params, data = _ok()
    with pytest.raises(ValueError, match=r"must return a scalar, got \(5, 2\)"):
        ht.Objective(lambda p, b: b[0] @ p["w"], params, data)


def test_k_larger_than_dimension_and_bad_options():
    params, data = _ok()
    H = ht.hessian(ht.Objective(_loss, params, data))
    with pytest.raises(ValueError, match=r"k=9.*dimension 8\. Pass k <= 8"):
        ht.eigenvalues(H, k=9, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"Pass k <= 4"):
        ht.eigenvalues(H, k=5, which="both", key=jax.random.key(0))
    with pytest.raises(ValueError, match="which='top'"):
        ht.eigenvalues(H, k=1, which="top", key=jax.random.key(0))
    with pytest.raises(ValueError, match="explicit PRNG key"):
        ht.eigenvalues(H, k=1)
    with pytest.raises(TypeError, match="CurvatureOperator"):
        ht.eigenvalues(np.eye(3), k=1, key=jax.random.key(0))


def test_vector_tree_mismatch_names_the_leaf():
    params, data = _ok()
    H = ht.hessian(ht.Objective(_loss, params, data))
    with pytest.raises(ValueError, match=r"leaf 'w' has shape \(2, 3\), expected \(3, 2\)"):
        H({"w": jnp.ones((2, 3)), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"missing leaves \['b'\]"):
        H({"w": jnp.ones((3, 2))})


def test_gauss_newton_needs_outputs_and_from_dense_needs_symmetry():
    params, data = _ok()
    with pytest.raises(ValueError, match="predict"):
        ht.gauss_newton(ht.Objective(_loss, params, data))
    with pytest.raises(ValueError, match="symmetric"):
        ht.from_dense(np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        ht.from_dense(np.ones((2, 3)))


def test_restrict_with_no_match_lists_paths():
    params, data = _ok()
    with pytest.raises(ValueError, match=r"matched none.*\['b', 'w'\]"):
        ht.Objective(_loss, params, data).restrict("conv")


def test_float64_example_without_x64_is_explained():
    from hessian_tools.examples import digits
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="jax_enable_x64"):
            digits._check_dtype_available(jnp.float64)
    finally:
        jax.config.update("jax_enable_x64", True)
