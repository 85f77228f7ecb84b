"""The objective analyses exactly the user's function: model state, BatchNorm modes, dtype,
losses that couple the examples of a batch."""

import warnings

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hessian_tools as ht
from _models import Attention, ConvBN, cross_entropy, signal_data
from hessian_tools import _chunking


def _bn_model(seed=0):
    """A ConvBN in float64 whose BatchNorm statistics differ from their initial values."""
    model = ConvBN(rngs=nnx.Rngs(seed), param_dtype=jnp.float64)
    model.norm.mean[...] = jnp.linspace(-1.0, 1.0, 4)
    model.norm.var[...] = jnp.linspace(0.5, 2.0, 4)
    return model


def _data(n=48):
    x, y = signal_data(n=n, dtype=np.float64)
    return x, y


def test_eval_mode_uses_the_models_statistics_and_with_state_replaces_them():
    model, data = _bn_model(), _data()
    obj = ht.Objective.from_nnx(model, cross_entropy, data)
    assert obj.bn_mode == "eval"
    np.testing.assert_allclose(obj.state["norm"]["mean"][...], np.linspace(-1, 1, 4))
    model.eval()
    np.testing.assert_allclose(ht.value_and_grad(obj)[0], cross_entropy(model(data[0]), data),
                               rtol=1e-12)
    other = jax.tree.map(lambda a: a * 0.5 + 0.1, obj.state)
    moved = obj.with_params(obj.params, state=other)
    model.norm.mean[...], model.norm.var[...] = (other["norm"]["mean"][...],
                                                   other["norm"]["var"][...])
    np.testing.assert_allclose(ht.value_and_grad(moved)[0], cross_entropy(model(data[0]), data),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="model state"):
        obj.with_state({"norm": 1.0})


def test_batch_mode_is_the_training_loss_and_its_exact_hessian():
    model, data = _bn_model(), _data()
    obj = ht.Objective.from_nnx(model, cross_entropy, data, bn_mode="batch")
    assert obj.bn_mode == "batch" and obj.examples_coupled()
    model.train()
    np.testing.assert_allclose(ht.value_and_grad(obj)[0], cross_entropy(model(data[0]), data),
                               rtol=1e-12)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def training_loss(f):
        return cross_entropy(nnx.merge(graphdef, unravel(f), rest, copy=True)(data[0]), data)
    dense = np.asarray(jax.hessian(training_loss)(flat))
    np.testing.assert_allclose(ht.dense_hessian(obj), dense, atol=1e-10)
    np.testing.assert_allclose(ht.to_dense(ht.hessian(obj)), dense, atol=1e-10)
    evals = ht.Objective.from_nnx(model, cross_entropy, data)
    assert abs(ht.value_and_grad(evals)[0] - ht.value_and_grad(obj)[0]) > 1e-3


def test_batch_mode_needs_a_batchnorm_layer():
    model = ConvBN(rngs=nnx.Rngs(0), norm="layer", param_dtype=jnp.float64)
    with pytest.raises(ValueError, match="no nnx.BatchNorm layer"):
        ht.Objective.from_nnx(model, cross_entropy, _data(), bn_mode="batch")
    with pytest.raises(ValueError, match="bn_mode='train' is not one of"):
        ht.Objective.from_nnx(model, cross_entropy, _data(), bn_mode="train")


def test_chunking_never_splits_a_loss_that_couples_examples(monkeypatch):
    """With chunks small enough to split the batch, auto chunking of a conv loss on the CPU
    would change a train-mode BatchNorm loss; it must leave the batch whole."""
    monkeypatch.setattr(_chunking, "CHUNK_BYTES", 64)      # chunks of 16 examples
    obj = ht.Objective.from_nnx(_bn_model(), cross_entropy, _data(), bn_mode="batch")
    v = ht.tree.normal_like(jax.random.key(0), obj.params)
    whole = ht.hessian(obj, chunk_size=None)(v)
    auto = ht.hessian(obj)(v)
    for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="couples the examples"):
        ht.hessian(obj, chunk_size=16)
    with pytest.raises(ValueError, match="per-example losses"):
        ht.empirical_fisher(obj)
    evals = ht.Objective.from_nnx(_bn_model(), cross_entropy, _data())
    assert not evals.examples_coupled()
    assert _chunking.product_groups(evals, "auto").num_batches == 3     # a mean: split


def test_a_hand_written_coupled_loss_is_detected():
    x, y = _data()
    w = jnp.asarray(np.random.default_rng(0).normal(size=(12, 4)))

    def batchnormed(params, batch):       # normalised by batch statistics: not a mean
        h = batch[0][..., 0] @ params
        h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)
        return cross_entropy(h, batch)

    def per_example(params, batch):
        return cross_entropy(batch[0][..., 0] @ params, batch)
    assert ht.Objective(batchnormed, w, (x, y)).examples_coupled()
    assert not ht.Objective(per_example, w, (x, y)).examples_coupled()
    declared = ht.Objective(per_example, w, (x, y), couples_examples=True)
    assert declared.examples_coupled()


def test_astype_float64_casts_parameters_data_state_and_module_dtypes():
    jax.config.update("jax_enable_x64", True)
    model = ConvBN(rngs=nnx.Rngs(0))                      # float32 parameters
    x, y = signal_data(n=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # nothing left in float32
        obj = ht.Objective.from_nnx(model, cross_entropy, (x, y), dtype=jnp.float64)
    assert obj.dtype == jnp.float64
    assert {a.dtype for a in jax.tree.leaves(obj.state)} == {jnp.dtype("float64")}
    assert obj.data[0].dtype == jnp.float64 and obj.data[1].dtype == jnp.int32
    ref = ht.Objective.from_nnx(model, cross_entropy, (x.astype(jnp.float64), y))
    ref = ref.with_params(jax.tree.map(lambda a: a.astype(jnp.float64), ref.params),
                          state=jax.tree.map(lambda a: a.astype(jnp.float64), ref.state))
    np.testing.assert_allclose(ht.dense_hessian(obj), ht.dense_hessian(ref), rtol=1e-12,
                               atol=1e-14)


def test_astype_warns_about_operations_the_model_pins_to_float32():
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(10, 6, 2)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 3, 10).astype(np.int32))
    with pytest.warns(RuntimeWarning, match="still computes .* float32"):
        ht.Objective.from_nnx(Attention(rngs=nnx.Rngs(0)), cross_entropy, (x, y),
                              dtype=jnp.float64)


def test_linen_batch_statistics_modes_are_checked():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(5, param_dtype=jnp.float64)(x.reshape(x.shape[0], -1))
            x = nn.BatchNorm(use_running_average=not train, param_dtype=jnp.float64)(x)
            return nn.Dense(4, param_dtype=jnp.float64)(jnp.tanh(x))

    x, y = _data()
    variables = Net().init(jax.random.key(0), x)
    batch = ht.Objective.from_linen(Net(), variables, cross_entropy, (x, y), bn_mode="batch",
                                    apply_kwargs={"train": True})
    out, _ = Net().apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(ht.value_and_grad(batch)[0], cross_entropy(out, (x, y)),
                               rtol=1e-12)
    assert batch.required_state == {}                      # batch statistics are not needed
    with pytest.raises(ValueError, match="did not compute batch statistics"):
        ht.Objective.from_linen(Net(), variables, cross_entropy, (x, y), bn_mode="batch")
    with pytest.raises(ValueError, match="training mode"):
        ht.Objective.from_linen(Net(), variables, cross_entropy, (x, y),
                                apply_kwargs={"train": True})
