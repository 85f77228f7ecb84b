"""Alignment: weight matching and activation matching recover planted permutations exactly,
agree with brute force and closed forms on small problems, and are deterministic."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy.optimize import linear_sum_assignment

from hessian_tools.examples.digits import MLP, cross_entropy, load_digits_data
from hessian_tools.symmetry import (
    Alignment,
    PermutationSpec,
    align,
    apply_permutation,
    inverse_permutation,
    permutation_spec,
    random_permutation,
    reset_batch_stats,
    weight_matching,
)
from test_spec import BNCNN, _filled, _random_like


def _train(model, x, y, steps=60):
    """Full-batch Adam in one compiled loop (the model's parameters are replaced)."""
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    opt = optax.adam(1e-2)

    def loss(p):
        return cross_entropy(nnx.merge(graphdef, p, state)(x), (x, y))

    def step(_, carry):
        p, s = carry
        updates, s = opt.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    params, _ = jax.jit(lambda p: jax.lax.fori_loop(0, steps, step, (p, opt.init(p))))(params)
    return nnx.merge(graphdef, params, state)


@pytest.fixture(scope="module")
def trained():
    x, y = load_digits_data()
    model = _train(_filled(lambda rngs: MLP((16, 12), rngs=rngs)), x, y)
    return model, x, y, permutation_spec(model, x[:4])


def _loss(model, params, x, y):
    graphdef, _, state = nnx.split(model, nnx.Param, ...)
    return float(cross_entropy(nnx.merge(graphdef, params, state)(x), (x, y)))


def _barrier(loss, a, b, num_points=5):
    """Frankle et al.'s barrier on the linear path from ``a`` to ``b``."""
    ts = np.linspace(0.0, 1.0, num_points)
    losses = [loss(jax.tree.map(lambda u, v, t=t: (1 - t) * u + t * v, a, b)) for t in ts]
    return max(lv - ((1 - t) * losses[0] + t * losses[-1]) for t, lv in zip(ts, losses))


@pytest.mark.parametrize("method", ["weights", "activations"])
def test_planted_permutation_is_recovered_exactly(trained, method):
    model, x, y, spec = trained
    _, params, _ = nnx.split(model, nnx.Param, ...)
    planted = random_permutation(spec, jax.random.key(3))
    copy = apply_permutation(params, spec, planted)
    assert _barrier(lambda p: _loss(model, p, x, y), params, copy) > 1e-2   # really moved
    aligned, perm = align(params, copy, spec, method=method, data=x, predict=model,
                          key=jax.random.key(0))
    for g in spec.groups:
        np.testing.assert_array_equal(perm[g], inverse_permutation(planted)[g])
    jax.tree.map(np.testing.assert_array_equal, aligned, params)
    assert perm.distance_after == 0.0 and perm.distance_before > 1.0
    assert perm.converged
    assert _barrier(lambda p: _loss(model, p, x, y), params, aligned) == 0.0


@pytest.mark.parametrize("method", ["weights", "activations"])
def test_batchnorm_statistics_follow_and_flattened_head_is_matched(method):
    model = _filled(lambda rngs: BNCNN(rngs=rngs))
    images = _random_like(jax.ShapeDtypeStruct((32, 4, 4, 1), jnp.float32), 5, scale=1.0)
    spec = permutation_spec(model, images)
    _, params, state = nnx.split(model, nnx.Param, ...)
    planted = random_permutation(spec, jax.random.key(4))
    copy, copy_state = apply_permutation(params, spec, planted, state=state)
    (aligned, aligned_state), perm = align(params, copy, spec, method=method, data=images,
                                           predict=model, state_b=copy_state)
    for g in spec.groups:
        np.testing.assert_array_equal(perm[g], inverse_permutation(planted)[g])
    jax.tree.map(np.testing.assert_array_equal, (aligned, aligned_state), (params, state))


def test_weight_matching_with_one_hidden_layer_is_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    shapes = {"w1": (3, 5), "b1": (5,), "w2": (5, 2)}
    a = {k: rng.normal(size=s) for k, s in shapes.items()}
    b = {k: rng.normal(size=s) for k, s in shapes.items()}
    spec = PermutationSpec.from_axes_to_perm({"w1": (None, "P"), "b1": ("P",),
                                              "w2": ("P", None)}, a)
    result = weight_matching(a, b, spec)

    def inner(p):
        return sum(np.vdot(a[k], v) for k, v in apply_permutation(b, spec, {"P": p}).items())
    best = max(itertools.permutations(range(5)), key=lambda p: inner(np.array(p)))
    np.testing.assert_array_equal(result["P"], best)
    assert result.objective_after == pytest.approx(inner(np.array(best)), rel=1e-12)
    assert result.objective_before == pytest.approx(inner(np.arange(5)), rel=1e-12)
    assert result.num_iters <= 2 and result.converged
    dist = np.sqrt(sum(np.sum((a[k] - v) ** 2) for k, v in
                       apply_permutation(b, spec, result).items()))
    assert result.distance_after == pytest.approx(dist, rel=1e-12)


def test_activation_matching_is_the_assignment_of_the_correlations():
    rng = np.random.default_rng(1)
    a = {"w1": rng.normal(size=(4, 6)), "w2": rng.normal(size=(6, 2))}
    b = {"w1": rng.normal(size=(4, 6)), "w2": rng.normal(size=(6, 2))}
    x = rng.normal(size=(50, 4))

    def predict(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"]
    spec = permutation_spec(predict, x, params=a)
    _, perm = align(a, b, spec, method="activations", data=[x[:30], x[30:]], predict=predict)
    ha, hb = np.tanh(x @ a["w1"]), np.tanh(x @ b["w1"])
    corr = np.corrcoef(ha.T, hb.T)[:6, 6:]
    np.testing.assert_array_equal(perm["P0"], linear_sum_assignment(corr, maximize=True)[1])
    assert perm.objective_after == pytest.approx(
        corr[np.arange(6), perm["P0"]].mean(), rel=1e-9)
    assert perm.num_samples == 50


def test_independent_networks_get_closer_and_runs_are_deterministic(trained):
    model, x, y, spec = trained
    _, pa, _ = nnx.split(model, nnx.Param, ...)
    other = _train(_filled(lambda rngs: MLP((16, 12), rngs=rngs), seed=9), x, y)
    _, pb, _ = nnx.split(other, nnx.Param, ...)
    first = weight_matching(pa, pb, spec, key=jax.random.key(0))
    again = weight_matching(pa, pb, spec, key=jax.random.key(0))
    unkeyed = weight_matching(pa, pb, spec)
    assert first.objective_after > first.objective_before
    assert first.distance_after < first.distance_before
    for g in spec.groups:
        np.testing.assert_array_equal(first[g], again[g])
    assert unkeyed.seed is None and first.seed is not None
    restored = Alignment.from_json(first.to_json())
    assert restored.to_dict() == first.to_dict()
    assert restored.objective_after == first.objective_after


def test_alignment_errors(trained):
    model, x, _, spec = trained
    _, params, _ = nnx.split(model, nnx.Param, ...)
    with pytest.raises(ValueError, match="method='cosine' is not an alignment method"):
        align(params, params, spec, method="cosine")
    with pytest.raises(ValueError, match="needs the model"):
        align(params, params, spec, method="activations", data=x)
    with pytest.raises(ValueError, match="needs data"):
        align(params, params, spec, method="activations", predict=model)
    a = {"w1": np.zeros((3, 5)), "w2": np.zeros((5, 2))}
    small = PermutationSpec.from_axes_to_perm({"w1": (None, "P"), "w2": ("P", None)}, a)
    with pytest.raises(ValueError, match="Group 'P' has 5 units elsewhere but 4 at params leaf "
                                         "'w2'"):
        align(a, {"w1": np.zeros((3, 5)), "w2": np.zeros((4, 2))}, small)


class BNMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(5, 7, rngs=rngs)
        self.bn = nnx.BatchNorm(7, rngs=rngs)
        self.l2 = nnx.Linear(7, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.bn(self.l1(x))))


def test_reset_batch_stats_are_the_statistics_of_the_data():
    model = _filled(lambda rngs: BNMLP(rngs))
    x = _random_like(jax.ShapeDtypeStruct((40, 5), jnp.float32), 3, scale=1.0)
    fresh = reset_batch_stats(model, [x[:15], x[15:]])
    h = np.asarray(x @ model.l1.kernel[...] + model.l1.bias[...], np.float64)
    np.testing.assert_allclose(fresh.bn.mean[...], h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fresh.bn.var[...], h.var(0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(model.bn.mean[...], fresh.bn.mean[...])     # the input is untouched
    # with the statistics of x, the eval-mode network on x is the train-mode one
    train_mode = nnx.clone(model)
    train_mode.train()
    np.testing.assert_allclose(fresh(x), train_mode(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="has no nnx.BatchNorm"):
        reset_batch_stats(_filled(lambda rngs: MLP((4,), rngs=rngs)), x)
