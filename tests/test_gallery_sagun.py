"""The sagun gallery entry's Gram-matrix cross-check of Papyan's class-means part, against the
dense float64 matrix of the matrix-free operator."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from hessian_tools.analysis import papyan_decomposition
from hessian_tools.gallery.sagun import class_means_gram_eigenvalues
from hessian_tools.objective import Objective

C, D_IN, HIDDEN = 4, 5, 6


def _predict(p, batch):
    return jnp.tanh(batch[0] @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _ce(out, batch):
    return optax.softmax_cross_entropy_with_integer_labels(out, batch[1]).mean()


@pytest.mark.parametrize("mode", ["separate", "include"])
def test_gram_eigenvalues_are_those_of_the_class_means_operator(mode):
    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.normal(size=(D_IN, HIDDEN))), "b1": jnp.zeros(HIDDEN),
              "w2": jnp.asarray(rng.normal(size=(HIDDEN, C))), "b2": jnp.zeros(C)}
    y = rng.integers(0, C, size=40)
    x = rng.normal(size=(40, D_IN)) + 0.7 * np.eye(C, D_IN)[y]
    obj = Objective(None, params, (jnp.asarray(x), jnp.asarray(y, jnp.int32)),
                    predict=_predict, output_loss=_ce)
    dec = papyan_decomposition(obj, true_class=mode)
    flat, _ = ravel_pytree(params)
    op = dec.parts["class_means"]
    dense = op.flat_rows(np.eye(flat.size))
    exact = np.sort(np.linalg.eigvalsh((dense + dense.T) / 2))[::-1][:C]
    got = class_means_gram_eigenvalues(dec)
    assert got.shape == (C,)
    np.testing.assert_allclose(got, exact, rtol=1e-8, atol=1e-12)
