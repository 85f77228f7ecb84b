"""The curvature evaluator's metrics against the dense float64 Hessian (eigh), its blocks
and the gradient; the plot; bad input."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest

import hessian_tools as ht
from hessian_tools.analysis.curvature_report import (curvature_report, gradient_density,
                                                     parameter_blocks)
from hessian_tools.plots import plot_curvature_report
from hessian_tools.results.curvature import CurvatureReport

matplotlib.use("Agg")


def _predict(p, batch):
    h = jnp.tanh(batch[0] @ p["layer0"]["w"] + p["layer0"]["b"])
    return h @ p["layer1"]["w"] + p["layer1"]["b"]


def _ce(out, batch):
    return optax.softmax_cross_entropy_with_integer_labels(out, batch[1]).mean()


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    params = {"layer0": {"w": jnp.asarray(rng.normal(size=(4, 5))),
                         "b": jnp.asarray(rng.normal(size=5) * 0.1)},
              "layer1": {"w": jnp.asarray(rng.normal(size=(5, 3))),
                         "b": jnp.asarray(rng.normal(size=3) * 0.1)}}
    x, y = jnp.asarray(rng.normal(size=(30, 4))), jnp.asarray(rng.integers(0, 3, 30))
    obj = ht.Objective(None, params, (x, y), predict=_predict, output_loss=_ce)
    rep = curvature_report(obj, key=jax.random.key(0), k=4, num_probes=3, num_steps=12)
    return obj, rep


def _slices(params):
    """Index ranges of each block in the raveled parameter vector (ravel_pytree's order)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    out = {}
    for name in params:
        marker = jax.tree.map(jnp.zeros_like, params)
        marker[name] = jax.tree.map(jnp.ones_like, params[name])
        out[name] = np.flatnonzero(np.asarray(jax.flatten_util.ravel_pytree(marker)[0]))
    return out


def test_report_against_the_dense_hessian(problem):
    obj, rep = problem
    h = ht.dense_hessian(obj)
    values, vectors = np.linalg.eigh(h)
    np.testing.assert_allclose(rep.top, values[::-1][:4], atol=1e-8)
    assert rep.lambda1 == pytest.approx(values[-1]) and rep.lambda2 == pytest.approx(values[-2])
    assert rep.ratio == pytest.approx(values[-1] / values[-2])
    v1 = vectors[:, -1]
    blocks = _slices(obj.params)
    for name, idx in blocks.items():
        assert rep.block_norms[name] == pytest.approx(np.linalg.norm(v1[idx]), abs=1e-7)
        assert rep.block_sizes[name] == len(idx)
        block_top = np.linalg.eigvalsh(h[np.ix_(idx, idx)])[-1]
        assert rep.layer_lambda_max[name] == pytest.approx(block_top, rel=1e-7)
        assert rep.layer_densities[name].dim == len(idx)
    assert sum(v**2 for v in rep.block_norms.values()) == pytest.approx(1.0)
    loss, g = ht.value_and_grad(obj)
    g = np.asarray(jax.flatten_util.ravel_pytree(g)[0])
    assert rep.loss == pytest.approx(float(loss)) and rep.grad_norm == pytest.approx(
        np.linalg.norm(g))
    exact = (vectors.T @ g) ** 2 / (g @ g)                       # the gradient's measure
    np.testing.assert_allclose(rep.grad_weights, exact[::-1][:4], atol=1e-10)
    assert rep.grad_overlap == pytest.approx(exact[::-1][:4].sum())
    nodes, weights = rep.grad_density.measure()                  # 12 steps: 23 moments exact
    for j in range(6):
        want = np.sum(exact * values**j)
        assert np.sum(weights * nodes**j) == pytest.approx(want, rel=1e-8, abs=1e-12), j
    assert rep.grad_density.probe == "gradient" and rep.grad_density.num_probes == 1
    assert rep.density.dim == len(values) and rep.density.lambda_max <= values[-1] + 1e-8
    assert rep.num_matvecs > 0 and rep.status is ht.Status.converged
    back = CurvatureReport.from_json(rep.to_json())
    assert back.block_norms == rep.block_norms
    np.testing.assert_allclose(back.grad_density.nodes, rep.grad_density.nodes)
    assert back.layer_densities["layer1"].dim == rep.layer_densities["layer1"].dim


def test_ggn_report_and_no_densities(problem):
    obj, _ = problem
    rep = curvature_report(obj, key=jax.random.key(1), k=3, operator="ggn", density=False,
                           layers=["layer1"])
    values = np.linalg.eigvalsh(ht.to_dense(ht.gauss_newton(obj)))
    np.testing.assert_allclose(rep.top, values[::-1][:3], atol=1e-8)
    assert rep.density is None and rep.layer_densities == {} and list(rep.block_norms) == [
        "layer1"]
    assert rep.operator == "ggn"


def test_gradient_density_of_a_zero_gradient_is_none():
    op = ht.from_dense(np.diag([3.0, 1.0, -2.0]))
    assert gradient_density(op, jnp.zeros(3)) is None
    dens = gradient_density(op, jnp.array([1.0, 0.0, 1.0]), num_steps=3)
    nodes, weights = dens.measure()
    keep = weights > 1e-12
    np.testing.assert_allclose(np.sort(nodes[keep]), [-2.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(weights[keep], [0.5, 0.5], atol=1e-12)


@pytest.mark.slow      # compiles an NNX model (~15 s on 2 cores)
def test_blocks_of_an_nnx_model():
    from hessian_tools.examples.digits import digits_objective
    obj = digits_objective("mlp-tiny", trained=False, dtype=jnp.float64, num_examples=60)
    assert list(parameter_blocks(obj)) == ["layers/0", "layers/1"]
    rep = curvature_report(obj, key=jax.random.key(0), k=2, density=False)
    assert rep.block_sizes == {"layers/0": 64 * 16 + 16, "layers/1": 16 * 10 + 10}
    assert sum(v**2 for v in rep.block_norms.values()) == pytest.approx(1.0)


def test_plot(problem):
    import matplotlib.pyplot as plt
    _, rep = problem
    axes = plot_curvature_report(rep)
    assert len(axes) == 4 and all(ax.get_title() for ax in axes)
    assert axes[2].get_xticklabels()[0].get_text() in rep.block_norms
    plt.close("all")


def test_bad_input(problem):
    obj, _ = problem
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="explicit PRNG key"):
        curvature_report(obj, key=None)
    with pytest.raises(ValueError, match="k=1 must be an integer >= 2"):
        curvature_report(obj, key=key, k=1)
    with pytest.raises(ValueError, match="operator='fisher' is not one of"):
        curvature_report(obj, key=key, operator="fisher")
    with pytest.raises(ValueError, match="matched none of the parameter leaves"):
        curvature_report(obj, key=key, layers=["layer7"])
    with pytest.raises(TypeError, match="layers must be True, False"):
        curvature_report(obj, key=key, layers=3)
    with pytest.raises(TypeError, match="takes an Objective"):
        curvature_report(ht.hessian(obj), key=key)
