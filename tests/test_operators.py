"""Operators against exact dense references (float64)."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hessian_tools as ht
from hessian_tools import _chunking
from conftest import dot_precisions
from hessian_tools.examples.digits import MLP, cross_entropy, load_digits_data


def _mlp_objective(n=200, widths=(8,), seed=0, batches=None):
    model = MLP(widths, rngs=nnx.Rngs(seed), param_dtype=jnp.float64)
    x, y = load_digits_data(dtype=jnp.float64)
    x, y = x[:n], y[:n]
    data = (x, y)
    if batches is not None:
        data = [(x[a:b], y[a:b]) for a, b in zip(batches[:-1], batches[1:])]
    return ht.Objective.from_nnx(model, cross_entropy, data)


def _flat_loss(obj):
    flat, unravel = jax.flatten_util.ravel_pytree(obj.params)
    x, y = obj.data if isinstance(obj.data, tuple) else obj.data[0]
    return flat, unravel, lambda f: obj.loss(unravel(f), (x, y))


def _ravel(v):
    return np.asarray(jax.flatten_util.ravel_pytree(v)[0])


@pytest.mark.parametrize("linearize", [True, False])
def test_hvp_matches_dense_hessian(linearize):
    obj = _mlp_objective()
    flat, unravel, f = _flat_loss(obj)
    dense = np.asarray(jax.hessian(f)(flat))
    H = ht.hessian(obj, linearize=linearize)
    v = np.random.default_rng(0).normal(size=flat.size)
    np.testing.assert_allclose(_ravel(H(unravel(jnp.asarray(v)))), dense @ v, rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(ht.dense_hessian(obj), dense, atol=1e-12)
    assert H.num_matvecs == 1


def test_batching_invariance_seven_unequal_batches():
    one = _mlp_objective(n=200)
    seven = _mlp_objective(n=200, batches=[0, 13, 50, 51, 90, 128, 170, 200])
    assert seven.num_examples == 200 and len(seven.groups.stacks) == 7
    v = ht.tree.normal_like(jax.random.key(0), one.params)
    for linearize in (True, False):
        a = _ravel(ht.hessian(one, linearize=linearize)(v))
        b = _ravel(ht.hessian(seven, linearize=linearize)(v))
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10 * np.abs(a).max())
    np.testing.assert_allclose(_ravel(ht.gradient(seven)), _ravel(ht.gradient(one)), atol=1e-12)


def test_streamed_data_matches_materialised():
    obj = _mlp_objective(n=120)
    x, y = obj.data
    stream = ht.Objective(obj.loss, obj.params, lambda: iter([(x[:50], y[:50]), (x[50:], y[50:])]))
    assert stream.streaming and stream.num_examples == 120
    v = ht.tree.normal_like(jax.random.key(1), obj.params)
    np.testing.assert_allclose(_ravel(ht.hessian(stream)(v)), _ravel(ht.hessian(obj)(v)),
                               atol=1e-12)
    loss_a, _ = ht.value_and_grad(stream)
    loss_b, _ = ht.value_and_grad(obj)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-12)


def test_ggn_matches_dense_and_is_psd():
    obj = _mlp_objective(n=100)
    flat, unravel, _ = _flat_loss(obj)
    x, y = obj.data
    jac = jax.jacobian(lambda f: obj.predict(unravel(f), (x, y)))(flat)        # (n, c, P)
    h_out = jax.hessian(lambda o: cross_entropy(o, (x, y)))(obj.predict(obj.params, (x, y)))
    n_out = jac.shape[0] * jac.shape[1]
    jac = np.asarray(jac).reshape(n_out, -1)
    dense = jac.T @ np.asarray(h_out).reshape(n_out, n_out) @ jac
    G = ht.to_dense(ht.gauss_newton(obj))
    np.testing.assert_allclose(G, dense, atol=1e-12)
    assert np.linalg.eigvalsh(G).min() > -1e-12
    eig = ht.eigenvalues(ht.gauss_newton(obj), k=3, key=jax.random.key(0), tol=1e-10)
    np.testing.assert_allclose(eig.values, np.linalg.eigvalsh(dense)[::-1][:3], rtol=1e-8)


def test_empirical_fisher_matches_per_example_gradients():
    obj = _mlp_objective(n=60)
    flat, unravel, _ = _flat_loss(obj)
    x, y = obj.data
    grads = jax.vmap(lambda xi, yi: jax.grad(lambda f: obj.loss(unravel(f), (xi[None], yi[None])))(
        flat))(x, y)
    dense = np.asarray(grads.T @ grads / len(x))
    np.testing.assert_allclose(ht.to_dense(ht.empirical_fisher(obj)), dense, atol=1e-12)


def test_restrict_to_a_layer_is_the_hessian_block():
    obj = _mlp_objective(n=100)
    dense = ht.dense_hessian(obj)
    sub = obj.restrict("layers/1")
    assert sorted(sub.params) == ["layers/1/bias", "layers/1/kernel"]
    # the block of the full Hessian for the selected leaves (ravel order: bias, kernel)
    sizes = [np.size(a) for a in jax.tree.leaves(obj.params)]
    offsets = np.cumsum([0] + sizes)
    paths = [ht.tree.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        obj.params)[0]]
    idx = np.concatenate([np.arange(offsets[i], offsets[i + 1])
                          for i, p in enumerate(paths) if p.startswith("layers/1")])
    np.testing.assert_allclose(ht.to_dense(ht.hessian(sub)), dense[np.ix_(idx, idx)], atol=1e-12)
    pred = obj.restrict(lambda path, leaf: path.endswith("bias"))
    assert all(k.endswith("bias") for k in pred.params)


def test_from_linen_matches_manual_loss():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.Dense(6, param_dtype=jnp.float64)(x)
            x = nn.BatchNorm(use_running_average=not train, param_dtype=jnp.float64)(x)
            return nn.Dense(10, param_dtype=jnp.float64)(jnp.tanh(x))

    x, y = load_digits_data(dtype=jnp.float64)
    x, y = x[:80], y[:80]
    net = Net()
    variables = net.init(jax.random.key(0), x, train=False)
    obj = ht.Objective.from_linen(net, variables, cross_entropy, (x, y),
                                  apply_kwargs={"train": False})
    assert set(jax.tree.leaves(jax.tree.map(lambda a: a.shape, obj.params))) is not None
    loss = lambda p: cross_entropy(net.apply({**variables, "params": p}, x, train=False), (x, y))
    flat, unravel = jax.flatten_util.ravel_pytree(obj.params)
    dense = jax.hessian(lambda f: loss(unravel(f)))(flat)
    np.testing.assert_allclose(ht.dense_hessian(obj), dense, atol=1e-12)


def test_nnx_eval_mode_and_model_untouched():
    class Drop(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(64, 10, rngs=rngs, param_dtype=jnp.float64)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.lin(x))

    model = Drop(nnx.Rngs(0))
    x, y = load_digits_data(dtype=jnp.float64)
    obj = ht.Objective.from_nnx(model, cross_entropy, (x[:50], y[:50]))
    assert model.drop.deterministic is False           # the user's model is not switched
    H = ht.hessian(obj)
    H.check_determinism(jax.random.key(0))              # dropout off in the analysed copy


def test_determinism_check_catches_random_augmentation():
    obj = _mlp_objective(n=50)
    x, y = obj.data
    rng = np.random.default_rng(0)

    def noisy():
        yield (x + jnp.asarray(rng.normal(size=x.shape) * 0.1), y)

    H = ht.hessian(ht.Objective(obj.loss, obj.params, noisy))
    with pytest.raises(ValueError, match="switch off dropout"):
        H.check_determinism(jax.random.key(0))


def test_second_operator_of_same_architecture_reuses_compilation():
    obj = _mlp_objective(n=100)
    H1 = ht.hessian(obj)
    v = ht.tree.normal_like(jax.random.key(0), obj.params)
    H1(v)
    other = obj.with_params(jax.tree.map(lambda a: a * 1.1, obj.params))
    before = ht.operators._apply._cache_size()
    lin_before = ht.operators._linearize._cache_size()
    H2 = ht.hessian(other)
    H2(v)
    assert ht.operators._apply._cache_size() == before
    assert ht.operators._linearize._cache_size() == lin_before


def test_eigenvalues_of_small_mlp_match_eigh():
    """Top-5 and bottom-5 of a trained few-thousand-parameter MLP vs eigh, float64."""
    from hessian_tools.examples.digits import digits_objective
    obj = digits_objective("mlp-small", dtype=jnp.float64, num_examples=400, batch_size=128)
    assert 3000 < obj.num_params < 4000
    w = np.linalg.eigvalsh(ht.dense_hessian(obj))
    scale = np.abs(w).max()
    eig = ht.eigenvalues(ht.hessian(obj), k=5, which="both", key=jax.random.key(0))
    assert eig.converged
    np.testing.assert_allclose(eig.largest, w[::-1][:5], rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(eig.smallest, w[:5], rtol=0, atol=1e-6 * scale)
    assert eig.smallest[0] < 0  # a briefly trained net is not at a minimum


def test_many_equal_batches_take_the_scan_path_and_agree():
    one = _mlp_objective(n=200)
    ten = _mlp_objective(n=200, batches=list(range(0, 201, 20)))
    assert jax.tree.leaves(ten.groups.stacks[0])[0].shape[0] == 10   # > 4: lax.scan
    v = ht.tree.normal_like(jax.random.key(2), one.params)
    a = _ravel(ht.hessian(one, linearize=False)(v))
    np.testing.assert_allclose(_ravel(ht.hessian(ten, linearize=False)(v)), a, atol=1e-12)
    np.testing.assert_allclose(_ravel(ht.gauss_newton(ten)(v)), _ravel(ht.gauss_newton(one)(v)),
                               atol=1e-12)


_CACHE_SCRIPT = """
import sys
import jax, numpy as np
from jax._src import monitoring
import hessian_tools as ht
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
assert ht.enable_compilation_cache(sys.argv[1]) is not None
H = ht.from_dense(np.diag(np.arange(1.0, 31.0)))
eig = ht.eigenvalues(H, k=3, key=jax.random.key(0))
assert np.allclose(eig.values, [30, 29, 28])
print(events.count("/jax/compilation_cache/cache_hits"),
      events.count("/jax/compilation_cache/cache_misses"))
"""


def test_persistent_compilation_cache_spares_the_second_process_the_compile(tmp_path):
    """The first process fills the cache; the second finds every executable in it."""
    env = {k: v for k, v in os.environ.items() if k != "HESSIAN_TOOLS_NO_COMPILE_CACHE"}
    runs = [subprocess.run([sys.executable, "-c", _CACHE_SCRIPT, str(tmp_path / "cc")],
                           capture_output=True, text=True, env=env, check=True)
            for _ in range(2)]
    (hits1, misses1), (hits2, misses2) = (map(int, r.stdout.split()) for r in runs)
    assert misses1 > 5 and hits1 == 0
    assert hits2 >= misses1 and misses2 == 0
    assert any((tmp_path / "cc").iterdir())


# ---- chunked products (convolutional losses on the CPU) ---------------------------------

def _ones(params):
    return jax.tree.map(jnp.ones_like, params)


def _cnn_objective(n=300, seed=0):
    from hessian_tools.examples.digits import CNN
    model = CNN((3, 4), rngs=nnx.Rngs(seed), param_dtype=jnp.float64)
    x, y = load_digits_data(dtype=jnp.float64, image=True)
    return ht.Objective.from_nnx(model, cross_entropy, (x[:n], y[:n]))


def test_split_keeps_every_example_once_in_near_equal_chunks():
    from hessian_tools.data import group_batches
    idx = np.arange(200.0)
    bounds = [0, 13, 50, 51, 90, 128, 170, 200]
    groups = group_batches([(idx[a:b], idx[a:b] * 2) for a, b in zip(bounds[:-1], bounds[1:])])
    split = groups.split(12)
    seen, mass = [], 0.0
    for stack, weight in zip(split.stacks, split.weights):
        x, x2 = (np.asarray(a) for a in stack)
        np.testing.assert_array_equal(x2, 2 * x)           # leaves split alike
        assert x.shape[1] <= 12 and weight == x.shape[1] / 200
        seen.extend(x.ravel())
        mass += weight * x.shape[0]
    np.testing.assert_array_equal(np.sort(seen), idx)
    assert mass == pytest.approx(1.0)
    # 37 examples -> 4 chunks of 10, 9, 9, 9 (sizes differ by at most one), in order
    lone = group_batches([(idx[:37], idx[:37])]).split(12)
    assert sorted(jax.tree.leaves(s)[0].shape[1] for s in lone.stacks) == [9, 10]
    np.testing.assert_array_equal(np.asarray(lone.stacks[0][0]).ravel(), idx[:10])
    np.testing.assert_array_equal(np.asarray(lone.stacks[1][0]).ravel(), idx[10:37])
    with pytest.raises(ValueError, match="positive"):
        groups.split(0)


def test_conv_products_are_chunked_on_cpu_and_agree(monkeypatch):
    """'auto' splits a conv net's data into cache-sized chunks on the CPU (none elsewhere,
    none for an MLP) and every product, the gradient and the loss agree with the unsplit."""
    obj = _cnn_objective()
    per_example = 8 * 8 * 4 * 8                     # the second conv's float64 activations
    monkeypatch.setattr(_chunking, "CHUNK_BYTES", 64 * per_example)
    on_cpu = jax.default_backend() == "cpu"
    v = ht.tree.normal_like(jax.random.key(0), obj.params)
    for build in (lambda o, c: ht.hessian(o, chunk_size=c),
                  lambda o, c: ht.hessian(o, linearize=False, chunk_size=c),
                  lambda o, c: ht.gauss_newton(o, chunk_size=c),
                  lambda o, c: ht.empirical_fisher(o, chunk_size=c)):
        whole, auto = build(obj, None), build(obj, "auto")
        assert whole.meta["batches"] == 1
        assert auto.meta["batches"] == (5 if on_cpu else 1)          # 300 -> 5 x 60
        a = _ravel(whole(v))
        np.testing.assert_allclose(_ravel(auto(v)), a, rtol=0, atol=1e-11 * np.abs(a).max())
    loss0, g0 = ht.operators._value_and_grad(obj.loss, obj.params, obj.groups)
    loss1, g1 = ht.value_and_grad(obj)
    np.testing.assert_allclose(loss1, loss0, rtol=1e-13)
    np.testing.assert_allclose(_ravel(g1), _ravel(g0), atol=1e-13)
    mlp = _mlp_objective(n=300)
    assert ht.hessian(mlp).meta["batches"] == 1                  # no convolution: as given
    assert ht.hessian(mlp, chunk_size=70).meta["batches"] == 5   # an explicit size: any model
    np.testing.assert_allclose(_ravel(ht.hessian(mlp, chunk_size=70)(_ones(
        mlp.params))), _ravel(ht.hessian(mlp)(_ones(mlp.params))), atol=1e-12)
    x, y = mlp.data
    streamed = ht.Objective(mlp.loss, mlp.params, lambda: iter([(x, y)]))
    for bad in (0, -3, 2.5, "big", True):
        for build in (ht.hessian, ht.gauss_newton, ht.empirical_fisher):
            with pytest.raises(ValueError, match="chunk_size"):
                build(mlp, chunk_size=bad)
        with pytest.raises(ValueError, match="chunk_size"):
            ht.hessian(streamed, chunk_size=bad)


def test_unrolled_chunks_trace_the_loss_once_per_chunk_shape(monkeypatch):
    """Tracing an unrolled product must not grow with the number of chunks."""
    if jax.default_backend() != "cpu":
        pytest.skip("auto chunking is CPU-only")
    obj = _cnn_objective(n=240)
    traces = []

    def counting_loss():        # a fresh function per run: no trace cache is shared
        def loss(p, batch):
            traces.append(1)
            return obj.loss(p, batch)
        return loss

    counts = {}
    for chunks in (4, 8):
        monkeypatch.setattr(_chunking, "CHUNK_BYTES", (240 // chunks) * 8 * 8 * 4 * 8)
        traces.clear()
        H = ht.hessian(ht.Objective(counting_loss(), obj.params, obj.data))
        assert H.meta["batches"] == chunks
        H(_ones(obj.params))
        counts[chunks] = len(traces)
    assert counts[8] == counts[4], counts


def test_too_many_conv_chunks_warn_and_scan(monkeypatch):
    if jax.default_backend() != "cpu":
        pytest.skip("auto chunking is CPU-only")
    obj = _cnn_objective(n=100)
    monkeypatch.setattr(_chunking, "MAX_CHUNKS", 3)
    monkeypatch.setattr(_chunking, "CHUNK_BYTES", 10 * 8 * 8 * 4 * 8)
    data = [(obj.data[0][i:i + 20], obj.data[1][i:i + 20]) for i in range(0, 100, 20)]
    many = ht.Objective(obj.loss, obj.params, data)
    with pytest.warns(UserWarning, match="stream the data"):
        H = ht.hessian(many)
    assert H.meta["batches"] == 5
    v = _ones(obj.params)
    a = _ravel(ht.hessian(obj, chunk_size=None)(v))
    np.testing.assert_allclose(_ravel(H(v)), a, rtol=0, atol=1e-11 * np.abs(a).max())


def test_conv_batches_are_unrolled_however_they_were_chunked():
    """More than 4 batches are scanned, except for a conv loss on the CPU (any chunk_size)."""
    from hessian_tools._chunking import product_groups
    cnn, mlp = _cnn_objective(n=120), _mlp_objective(n=120)
    on_cpu = jax.default_backend() == "cpu"
    assert product_groups(cnn, 20).num_batches == 6
    assert product_groups(cnn, 20).unroll == on_cpu
    listed = ht.Objective(cnn.loss, cnn.params, [(cnn.data[0][i:i + 20], cnn.data[1][i:i + 20])
                                                 for i in range(0, 120, 20)])
    assert product_groups(listed, None).unroll == on_cpu
    assert not product_groups(mlp, 20).unroll
    assert not product_groups(cnn, 30).unroll                   # 4 batches: unrolled anyway


def test_with_params_keeps_the_built_batches():
    obj = _mlp_objective(n=50)
    ht.hessian(obj)
    other = obj.with_params(jax.tree.map(lambda a: a + 1.0, obj.params))
    assert other.groups is obj.groups
    from hessian_tools._chunking import product_groups
    assert product_groups(other, "auto") is product_groups(obj, "auto")


def test_the_linearisation_is_traced_once(monkeypatch):
    """The residual-size check (eval_shape) and the compiled call share one trace."""
    calls = []
    inner = ht.operators._mean_grad

    def counting(*args):
        calls.append(1)
        return inner(*args)
    monkeypatch.setattr(ht.operators, "_mean_grad", counting)
    obj = _mlp_objective(n=37, widths=(5,))         # shapes no other test compiles
    ht.hessian(obj, linearize="auto")(_ones(obj.params))
    assert len(calls) == 1


@pytest.mark.parametrize("build", ["hessian", "gauss_newton", "restricted", "cast"])
def test_precision_reaches_every_product_of_the_curvature_operators(build):
    """Objective(precision=...) fixes the precision of every dot in the traced products:
    the forward pass, its JVP and the transposes of the backward pass. On GPUs the JAX
    default would be TF32 (BENCHMARKS: RESULTS_gpu.md); on CPUs this is all one can test."""
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    for precision, expected in (("highest", highest), (None, None)):
        obj = dataclasses.replace(_mlp_objective(n=50), precision=precision)
        if build == "restricted":
            obj = obj.restrict("layers/1")
        if build == "cast":
            obj = obj.astype(jnp.float32)
        op = ht.gauss_newton(obj) if build == "gauss_newton" else ht.hessian(obj)
        zeros = jax.tree.map(jnp.zeros_like, op.params_like)
        seen = dot_precisions(op.matvec_fn, zeros)
        assert len(seen) >= (2 if build == "restricted" else 6), seen   # forward, JVP, transposes
        assert all(p == expected for p in seen), (precision, seen)


def test_precision_survives_with_params_and_rejects_unknown_values():
    obj = dataclasses.replace(_mlp_objective(n=50), precision="default")
    moved = obj.with_params(jax.tree.map(lambda a: a * 2, obj.params))
    assert moved.precision == "default" and moved.loss == obj.loss
    assert moved.loss.fn == _mlp_objective(n=50).loss.fn      # one wrapper level, not two
    with pytest.raises(ValueError, match="not a matmul precision"):
        dataclasses.replace(obj, precision="fp32")
