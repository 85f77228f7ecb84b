"""Papyan's decomposition of the Gauss-Newton matrix against a dense float64 construction
from per-example Jacobians, the class-means overlap, and bad input."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hessian_tools as ht
from hessian_tools.analysis.papyan import (class_mean_vectors, class_means_overlap,
                                           papyan_decomposition)
from hessian_tools.results.papyan import PapyanDecomposition, SubspaceOverlap

C, D_IN, HIDDEN = 4, 5, 6


def _predict(p, batch):
    return jnp.tanh(batch[0] @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _ce(out, batch):
    return optax.softmax_cross_entropy_with_integer_labels(out, batch[1]).mean()


def _problem(n=40, seed=0, drop_class=None):
    rng = np.random.default_rng(seed)
    params = {"w1": jnp.asarray(rng.normal(size=(D_IN, HIDDEN))),
              "b1": jnp.asarray(rng.normal(size=HIDDEN) * 0.1),
              "w2": jnp.asarray(rng.normal(size=(HIDDEN, C))),
              "b2": jnp.asarray(rng.normal(size=C) * 0.1)}
    y = rng.integers(0, C, size=n)
    if drop_class is not None:
        y[y == drop_class] = (drop_class + 1) % C
    x = rng.normal(size=(n, D_IN)) + 0.7 * np.eye(C, D_IN)[y]       # some class structure
    return params, jnp.asarray(x), jnp.asarray(y, jnp.int32)


def _objective(params, x, y, batches=None):
    data = (x, y) if batches is None else [(x[a:b], y[a:b]) for a, b in batches]
    return ht.Objective(None, params, data, predict=_predict, output_loss=_ce)


def _dense_parts(params, x, y, separate):
    """Every part from the per-example rows ``delta_{i,c'} = sqrt(p_ic') J_i^T (e_c' - p_i)``."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jac = np.asarray(jax.vmap(lambda xi: jax.jacrev(
        lambda f: _predict(unravel(f), (xi[None], None))[0])(flat))(x))          # (N, C, P)
    prob = np.asarray(jax.nn.softmax(_predict(params, (x, None)), axis=-1))
    s = np.sqrt(prob)[:, :, None] * (np.eye(C)[None] - prob[:, None, :])        # S_i
    delta = np.einsum("ick,ikp->icp", s, jac)                                     # rows c'
    y = np.asarray(y)
    n = len(y)
    w = np.ones((C, C)) - (np.eye(C) if separate else 0)
    parts = {k: 0.0 for k in ("class_means", "cross_class", "within_class", "true_class")}
    means = np.zeros((C, flat.size))
    for c in range(C):
        rows = delta[y == c]
        if not len(rows):
            continue
        pi, dcc = len(rows) / n, rows.mean(axis=0)                               # (C, P)
        means[c] = w[c] @ dcc / w[c].sum()
        parts["class_means"] += pi * w[c].sum() * np.outer(means[c], means[c])
        dev = dcc - means[c]
        parts["cross_class"] += pi * np.einsum("c,cp,cq->pq", w[c], dev, dev)
        dev_i = rows - dcc
        parts["within_class"] += pi * np.einsum("icp,icq->pq", dev_i, dev_i) / len(rows)
        parts["true_class"] += pi * (1 - w[c, c]) * np.outer(dcc[c], dcc[c])
    ggn = np.einsum("icp,icq->pq", delta, delta) / n
    if not separate:
        del parts["true_class"]
    return parts, ggn, means


@pytest.mark.parametrize("mode", ["include", "separate"])
def test_parts_against_the_dense_construction_and_their_sum_is_the_ggn(mode):
    params, x, y = _problem()
    obj = _objective(params, x, y, batches=[(0, 16), (16, 32), (32, 40)])  # ragged batches
    dec = papyan_decomposition(obj, true_class=mode)
    ref, ggn_ref, _ = _dense_parts(params, x, y, mode == "separate")
    assert set(dec.parts) == set(ref)
    total = 0.0
    for name, op in dec.parts.items():
        dense = ht.to_dense(op)
        np.testing.assert_allclose(dense, ref[name], atol=1e-12, rtol=1e-9, err_msg=name)
        assert op.tags == frozenset({"symmetric", "psd"}) and op.kind == f"ggn_{name}"
        assert np.linalg.eigvalsh(dense)[0] > -1e-12                       # psd
        total = total + dense
    ggn = ht.to_dense(ht.gauss_newton(obj))
    np.testing.assert_allclose(ggn, ggn_ref, atol=1e-12)
    np.testing.assert_allclose(total, ggn, atol=1e-12)
    ranks = {n: np.linalg.matrix_rank(ref[n], tol=1e-10) for n in ref}
    assert ranks["class_means"] <= C
    assert ranks["cross_class"] <= C * (C - 1 if mode == "separate" else C)
    np.testing.assert_array_equal(dec.class_counts, np.bincount(np.asarray(y), minlength=C))
    back = PapyanDecomposition.from_json(dec.to_json())
    assert back.num_classes == C and back.class_counts.tolist() == dec.class_counts.tolist()


def test_an_empty_class_contributes_nothing():
    params, x, y = _problem(drop_class=2)
    dec = papyan_decomposition(_objective(params, x, y))
    ref, ggn, _ = _dense_parts(params, x, y, False)
    assert dec.class_counts[2] == 0
    for name, op in dec.parts.items():
        np.testing.assert_allclose(ht.to_dense(op), ref[name], atol=1e-12, err_msg=name)


def test_class_mean_vectors_and_the_overlap_against_dense():
    params, x, y = _problem()
    obj = _objective(params, x, y)
    dec = papyan_decomposition(obj, true_class="separate")
    _, ggn, means = _dense_parts(params, x, y, True)
    vectors = class_mean_vectors(dec)
    flat = np.asarray(jax.vmap(lambda v: jax.flatten_util.ravel_pytree(v)[0])(vectors))
    np.testing.assert_allclose(flat, means, atol=1e-12)
    eig = ht.eigenvalues(ht.gauss_newton(obj), k=6, key=jax.random.key(0))
    out = class_means_overlap(eig, dec)
    # dense reference: projector onto span{delta_c} applied to the dense top-6 eigenvectors
    q = np.linalg.qr(means.T)[0]
    top = np.linalg.eigh(ggn)[1][:, ::-1][:, :6]
    per_vector = np.sum((q.T @ top) ** 2, axis=0)
    np.testing.assert_allclose(out.per_vector, per_vector, atol=1e-8)
    cosines = np.linalg.svd(q.T @ top, compute_uv=False)
    np.testing.assert_allclose(out.cosines, cosines, atol=1e-8)
    np.testing.assert_allclose(out.mean, np.sum(cosines**2) / 6, atol=1e-8)
    np.testing.assert_allclose(out.eigenvalues, eig.values)
    assert out.span_rank == C
    # the range of G_class lies in the span; its orthogonal complement does not touch it
    own = ht.eigenvalues(dec.class_means, k=C, key=jax.random.key(1))
    assert class_means_overlap(own, dec).mean == pytest.approx(1.0, abs=1e-8)
    complement = np.linalg.svd(means)[2][C:C + 3]                        # rows orthogonal to q
    unravel = jax.flatten_util.ravel_pytree(params)[1]
    rows = jax.vmap(unravel)(jnp.asarray(complement))
    assert np.max(class_means_overlap(rows, dec).per_vector) < 1e-12
    back = SubspaceOverlap.from_json(out.to_json())
    np.testing.assert_allclose(back.cosines, out.cosines)


@pytest.mark.slow      # compiles an NNX model (~15 s on 2 cores)
def test_nnx_digits_model_parts_sum_to_the_ggn():
    from hessian_tools.examples.digits import digits_objective
    obj = digits_objective("mlp-tiny", trained=False, dtype=jnp.float64, num_examples=120)
    dec = papyan_decomposition(obj, num_classes=10)
    v = ht.gauss_newton(obj).random_vector(jax.random.key(0))
    total = jax.tree.map(lambda *xs: sum(xs), *[op(v) for op in dec.parts.values()])
    want = ht.gauss_newton(obj)(v)
    err = ht.tree.norm(ht.tree.sub(total, want)) / ht.tree.norm(want)
    assert float(err) < 1e-12


def test_bad_input_is_named():
    params, x, y = _problem(n=12)
    obj = _objective(params, x, y)
    mse = ht.Objective(None, params, (x, y), predict=_predict,
                       output_loss=lambda out, b: jnp.mean((out - 1.0) ** 2))
    with pytest.raises(ValueError, match="softmax cross-entropy"):
        papyan_decomposition(mse)
    with pytest.raises(ValueError, match="num_classes=3 differs from the 4 logits"):
        papyan_decomposition(obj, num_classes=3)
    with pytest.raises(ValueError, match=r"label 7 outside \[0, 4\)"):
        papyan_decomposition(_objective(params, x, y.at[3].set(7)))
    with pytest.raises(ValueError, match="integer class indices"):
        papyan_decomposition(obj, labels=lambda b: b[0][:, 0])
    with pytest.raises(ValueError, match="true_class='both' is not one of"):
        papyan_decomposition(obj, true_class="both")
    with pytest.raises(ValueError, match="needs the objective's predict"):
        papyan_decomposition(ht.Objective(lambda p, b: _ce(_predict(p, b), b), params, (x, y)))
    with pytest.raises(ValueError, match="streams its data"):
        papyan_decomposition(obj.with_data(lambda: iter([(x, y)])))
    with pytest.raises(TypeError, match="takes an Objective"):
        papyan_decomposition(ht.gauss_newton(obj))
    dec = papyan_decomposition(obj)
    with pytest.raises(ValueError, match="do not match the parameter tree"):
        class_means_overlap(jnp.ones((2, 3)), dec)
    with pytest.raises(TypeError, match="read back from JSON"):
        class_mean_vectors(PapyanDecomposition.from_json(dec.to_json()))


# ---- ht.outliers: how the count depends on k, and the k that makes it stable ----------------

SPIKED = np.r_[np.linspace(10.0, 3.0, 8), np.linspace(1.0, 0.0, 192)]     # 8 outliers


def test_outlier_count_by_k_for_an_array_says_when_it_is_not_stable():
    short = ht.outliers(SPIKED, k=16)            # the lower half of the window is outliers
    assert short.extra["counts_by_k"][:3] == [[16, 8], [11, 0], [8, 0]]
    assert not short.extra["stable"]
    full = ht.outliers(SPIKED, k=40)
    assert full.extra["stable"] and full.num_outliers == 8
    assert [r for r, _ in full.extra["counts_by_k"]] == [40, 27, 18, 12, 8, 6, 4]
    assert full.extra["k_stable"] == 18 and full.extra["k"] == 40
    blind = ht.outliers(SPIKED, k=8)             # documented limit: only outliers in view
    assert blind.extra["stable"] and blind.num_outliers == 0
    gauss = np.sort(np.random.default_rng(0).normal(size=200))[::-1]   # documented flicker
    assert [ht.outliers(gauss, k=k).num_outliers for k in (30, 36, 50)] == [0, 2, 0]
    assert ht.outliers(gauss, k=30).extra["stable"]
    assert not ht.outliers(gauss, k=36).extra["stable"]


def test_outliers_of_an_operator_double_k_until_the_count_is_stable():
    from conftest import spectrum_matrix
    op = ht.from_dense(spectrum_matrix(SPIKED, seed=3))
    split = ht.outliers(op, key=jax.random.key(0), k=16)
    assert split.extra["stable"] and split.extra["k"] == 50          # 16 -> 32 -> 50 = dim/4
    assert split.num_outliers == 8 and split.extra["k_stable"] == 16
    np.testing.assert_allclose(split.outliers, SPIKED[:8], atol=1e-6)
    fixed = ht.outliers(op, key=jax.random.key(0), k=16, max_k=16)      # no doubling
    assert not fixed.extra["stable"] and fixed.extra["k"] == 16
    assert split.num_matvecs > fixed.num_matvecs
    with pytest.raises(ValueError, match="max_k=4 must be an integer >= 16"):
        ht.outliers(op, key=jax.random.key(0), k=16, max_k=4)
