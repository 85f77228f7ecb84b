"""Permutation specs: hand-written and derived, applied to the parameters.

Every derived spec is checked the only way that matters: a random permutation drawn from it
leaves the network's outputs unchanged (to rounding), and a spec with one tie removed does
not, so the tests can fail.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

from hessian_tools import Objective
from hessian_tools.examples.digits import MLP, cross_entropy
from hessian_tools.symmetry import (
    PermutationSpec,
    apply_permutation,
    graph,
    hidden_activations,
    identity_permutation,
    inverse_permutation,
    permutation_spec,
    random_permutation,
)

# ---- small architectures -------------------------------------------------------------------


class NormMLP(nnx.Module):
    """Dense -> LayerNorm -> gelu -> Dense -> relu -> Dense."""

    def __init__(self, *, rngs, dtype=jnp.float32):
        self.l1 = nnx.Linear(5, 8, rngs=rngs, param_dtype=dtype)
        self.ln = nnx.LayerNorm(8, rngs=rngs, param_dtype=dtype)
        self.l2 = nnx.Linear(8, 6, rngs=rngs, param_dtype=dtype)
        self.l3 = nnx.Linear(6, 3, rngs=rngs, param_dtype=dtype)

    def __call__(self, x):
        h = jax.nn.gelu(self.ln(self.l1(x)))
        return self.l3(jax.nn.relu(self.l2(h)))


class ResMLP(nnx.Module):
    """An input projection, two residual blocks with RMSNorm, and a head."""

    def __init__(self, *, rngs, dtype=jnp.float32, width=8):
        self.inp = nnx.Linear(5, width, rngs=rngs, param_dtype=dtype)
        self.norms = nnx.List([nnx.RMSNorm(width, rngs=rngs, param_dtype=dtype)
                               for _ in range(2)])
        self.ups = nnx.List([nnx.Linear(width, 12, rngs=rngs, param_dtype=dtype)
                             for _ in range(2)])
        self.downs = nnx.List([nnx.Linear(12, width, rngs=rngs, param_dtype=dtype)
                               for _ in range(2)])
        self.head = nnx.Linear(width, 3, rngs=rngs, param_dtype=dtype)

    def __call__(self, x):
        h = self.inp(x)
        for norm, up, down in zip(self.norms, self.ups, self.downs):
            h = h + down(jnp.tanh(up(norm(h))))
        return self.head(h)


class BNCNN(nnx.Module):
    """conv -> BatchNorm -> relu, twice, then a dense head on the flattened map."""

    def __init__(self, *, rngs, dtype=jnp.float32):
        self.c1 = nnx.Conv(1, 4, (3, 3), rngs=rngs, param_dtype=dtype)
        self.bn1 = nnx.BatchNorm(4, rngs=rngs, param_dtype=dtype)
        self.c2 = nnx.Conv(4, 6, (3, 3), rngs=rngs, param_dtype=dtype)
        self.bn2 = nnx.BatchNorm(6, rngs=rngs, param_dtype=dtype)
        self.head = nnx.Linear(4 * 4 * 6, 3, rngs=rngs, param_dtype=dtype)

    def __call__(self, x):
        x = jax.nn.relu(self.bn1(self.c1(x)))
        x = jax.nn.relu(self.bn2(self.c2(x)))
        return self.head(x.reshape(x.shape[0], -1))


class LinenMLP(linen.Module):
    dtype: object = jnp.float32

    @linen.compact
    def __call__(self, x):
        x = jnp.tanh(linen.Dense(8, param_dtype=self.dtype)(x))
        x = jnp.tanh(linen.Dense(7, param_dtype=self.dtype)(x))
        return linen.Dense(3, param_dtype=self.dtype)(x)


def predict_mlp(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


@dataclasses.dataclass
class Case:
    fn: object          # fn(params, state, x)
    params: object
    state: object
    x: object
    spec: PermutationSpec
    untie: tuple        # (table, path, axis): a tie whose removal must change the outputs


def _random_like(tree_, seed, scale=0.5):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(scale * rng.normal(size=np.shape(a)), a.dtype),
                        tree_)


def _filled(make, seed=1):
    """A model built abstractly (no random initialisers to compile), then filled with
    random values: no zero biases or unit scales, so every tie shows in the outputs."""
    graphdef, params, state = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))), nnx.Param,
                                        ...)
    params = _random_like(params, seed)
    state = jax.tree.map(lambda a: jnp.abs(a) + 0.5, _random_like(state, seed + 1))
    model = nnx.merge(graphdef, params, state)
    model.eval()
    return model


def _nnx_case(make, x, untie):
    model = _filled(make)
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    spec = permutation_spec(model, x)
    return Case(jax.jit(lambda p, s, x: nnx.merge(graphdef, p, s)(x)), params, state, x, spec,
                untie)


@functools.cache
def _case(name, dtype):
    x = _random_like(jax.ShapeDtypeStruct((4, 5), dtype), 3, scale=1.0)
    if name == "mlp":
        return _nnx_case(lambda rngs: MLP((8, 6), in_features=5, out_features=3, rngs=rngs,
                                          param_dtype=dtype), x, ("params", "layers/0/bias", 0))
    if name == "norm_mlp":
        return _nnx_case(lambda rngs: NormMLP(rngs=rngs, dtype=dtype), x,
                         ("params", "ln/scale", 0))
    if name == "res_mlp":
        return _nnx_case(lambda rngs: ResMLP(rngs=rngs, dtype=dtype), x,
                         ("params", "downs/1/kernel", 1))
    if name == "bn_cnn":
        img = _random_like(jax.ShapeDtypeStruct((2, 4, 4, 1), dtype), 3, scale=1.0)
        return _nnx_case(lambda rngs: BNCNN(rngs=rngs, dtype=dtype), img,
                         ("state", "bn2/mean", 0))
    if name == "linen_mlp":
        module = LinenMLP(dtype)
        shapes = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
        variables = {"params": _random_like(shapes, 1)}
        spec = permutation_spec(module, x, variables=variables)
        return Case(jax.jit(lambda p, s, x: module.apply({"params": p}, x)), variables["params"],
                    None, x, spec, ("params", "Dense_1/bias", 0))
    if name == "function_mlp":
        params = _random_like({"w1": jnp.zeros((5, 8), dtype), "b1": jnp.zeros(8, dtype),
                               "w2": jnp.zeros((8, 3), dtype), "b2": jnp.zeros(3, dtype)}, 1)
        spec = permutation_spec(predict_mlp, x, params=params)
        return Case(jax.jit(lambda p, s, x: predict_mlp(p, x)), params, None, x, spec,
                    ("params", "b1", 0))
    raise ValueError(name)


CASES = ["mlp", "norm_mlp", "res_mlp", "bn_cnn", "linen_mlp", "function_mlp"]


def _untie(spec: PermutationSpec, table: str, path: str, axis: int) -> PermutationSpec:
    """``spec`` with one axis given a group of its own (the tie to its group removed)."""
    tables = {"params": dict(spec.axes_to_perm), "state": dict(spec.state_axes_to_perm)}
    entries = list(tables[table][path])
    assert isinstance(entries[axis], str), "untie a whole-axis entry"
    sizes = {**spec.sizes, "untied": spec.sizes[entries[axis]]}
    entries[axis] = "untied"
    tables[table][path] = tuple(entries)
    return PermutationSpec(axes_to_perm=tables["params"], state_axes_to_perm=tables["state"],
                           sizes=sizes)


def _permuted_outputs(case, spec, perm):
    if case.state is None:
        p2, s2 = apply_permutation(case.params, spec, perm), None
    else:
        p2, s2 = apply_permutation(case.params, spec, perm, state=case.state)
    return np.asarray(case.fn(p2, s2, case.x), dtype=np.float64)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.float64, 1e-13)])
@pytest.mark.parametrize("name", CASES)
def test_derived_spec_permutation_leaves_outputs_unchanged(name, dtype, tol):
    case = _case(name, dtype)
    assert case.spec.sizes, f"no permutation group found for {name}"
    out = np.asarray(case.fn(case.params, case.state, case.x), dtype=np.float64)
    perm = random_permutation(case.spec, jax.random.key(7))
    assert all(not np.array_equal(p, np.arange(len(p))) for p in perm.values())
    scale = max(1.0, np.max(np.abs(out)))
    np.testing.assert_allclose(_permuted_outputs(case, case.spec, perm), out, rtol=0,
                               atol=tol * scale)
    # one tie removed: the untied axis keeps its order while its former group moves
    broken = _untie(case.spec, *case.untie)
    changed = _permuted_outputs(case, broken, {**perm, "untied": np.arange(
        broken.sizes["untied"])})
    assert np.max(np.abs(changed - out)) > 1e-3


def test_derived_mlp_spec_is_ainsworths():
    case = _case("mlp", jnp.float32)
    expected = PermutationSpec.from_axes_to_perm({
        "layers/0/kernel": (None, "P0"), "layers/0/bias": ("P0",),
        "layers/1/kernel": ("P0", "P1"), "layers/1/bias": ("P1",),
        "layers/2/kernel": ("P1", None), "layers/2/bias": (None,)}, case.params)
    assert dict(case.spec.axes_to_perm) == dict(expected.axes_to_perm)
    assert dict(case.spec.sizes) == {"P0": 8, "P1": 6}
    assert case.spec.perm_to_axes["P1"] == [("layers/1/bias", 0), ("layers/1/kernel", 1),
                                            ("layers/2/kernel", 0)]
    assert any("input data" in w for w in case.spec.why)
    assert any("layers/2/kernel[1]" in w and "output" in w for w in case.spec.why)


def test_derived_structure_of_residual_and_cnn():
    res = _case("res_mlp", jnp.float32).spec
    # the residual stream is one group shared by the projection, every block's output and
    # the norms; each block's inner layer has its own
    assert sorted(res.sizes.values()) == [8, 12, 12]
    stream = res.axes_to_perm["inp/kernel"][1]
    assert [res.axes_to_perm[k][a] for k, a in [("downs/0/kernel", 1), ("downs/1/bias", 0),
                                               ("norms/1/scale", 0), ("head/kernel", 0)]] \
        == [stream] * 4
    cnn = _case("bn_cnn", jnp.float32).spec
    c2 = cnn.axes_to_perm["c2/kernel"][3]
    assert cnn.state_axes_to_perm["bn2/mean"] == (c2,)
    assert cnn.state_axes_to_perm["bn2/var"] == (c2,)
    # the head reads the flattened (4, 4, 6) map: its input axis is permuted on the channels
    assert cnn.axes_to_perm["head/kernel"] == ((((None, 4), (None, 4), (c2, 6)),), None)
    assert PermutationSpec.from_json(cnn.to_json()).to_dict() == cnn.to_dict()
    # the same spec written by hand (state included) validates; without the variances not
    case = _case("bn_cnn", jnp.float32)
    hand = PermutationSpec.from_axes_to_perm(dict(cnn.axes_to_perm), case.params,
                                             state=case.state,
                                             state_axes_to_perm=dict(cnn.state_axes_to_perm))
    assert hand.to_dict()["axes_to_perm"] == cnn.to_dict()["axes_to_perm"]
    partial = {k: v for k, v in cnn.state_axes_to_perm.items() if k != "bn2/var"}
    with pytest.raises(ValueError, match="state leaf 'bn2/var' \\(shape \\(6,\\)\\) is not in"):
        PermutationSpec.from_axes_to_perm(dict(cnn.axes_to_perm), case.params, state=case.state,
                                          state_axes_to_perm=partial)


def test_concatenation_and_attention_heads():
    def predict(p, x):
        h = jnp.tanh(x @ p["w1"])
        both = jnp.concatenate([jnp.tanh(h @ p["a"]), jax.nn.relu(h @ p["b"])], axis=-1)
        return both @ p["out"]
    params = _random_like({"w1": jnp.zeros((5, 7)), "a": jnp.zeros((7, 3)),
                           "b": jnp.zeros((7, 4)), "out": jnp.zeros((7, 2))}, 1)
    spec = permutation_spec(predict, jnp.ones((2, 5)), params=params)
    ga, gb = spec.axes_to_perm["a"][1], spec.axes_to_perm["b"][1]
    assert spec.axes_to_perm["out"] == (((((ga, 3),), ((gb, 4),))), None)

    attn = _filled(lambda rngs: nnx.MultiHeadAttention(
        num_heads=2, in_features=6, qkv_features=8, out_features=6, decode=False, rngs=rngs))
    x = _random_like(jax.ShapeDtypeStruct((2, 3, 6), jnp.float32), 1)
    spec = permutation_spec(attn, x)          # check=True verifies the invariance
    heads = spec.axes_to_perm["query/kernel"][1]
    assert spec.sizes[heads] == 2
    assert [spec.axes_to_perm[k][1] for k in ("key/kernel", "value/kernel")] == [heads] * 2
    assert spec.axes_to_perm["out/kernel"][0] == heads
    # queries and keys share a per-head feature permutation, values and outputs another
    assert spec.axes_to_perm["query/kernel"][2] == spec.axes_to_perm["key/kernel"][2]
    assert spec.axes_to_perm["value/kernel"][2] == spec.axes_to_perm["out/kernel"][1]
    assert spec.axes_to_perm["query/kernel"][2] != spec.axes_to_perm["value/kernel"][2]


class TinyTransformer(nnx.Module):
    """Token embedding, a pre-norm attention block and an MLP block, residual, and a head."""

    def __init__(self, rngs):
        self.emb = nnx.Embed(11, 8, rngs=rngs)
        self.ln1 = nnx.LayerNorm(8, rngs=rngs)
        self.att = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(8, rngs=rngs)
        self.up = nnx.Linear(8, 16, rngs=rngs)
        self.down = nnx.Linear(16, 8, rngs=rngs)
        self.head = nnx.Linear(8, 11, rngs=rngs)

    def __call__(self, ids):
        h = self.emb(ids)
        h = h + self.att(self.ln1(h))
        h = h + self.down(jax.nn.gelu(self.up(self.ln2(h))))
        return self.head(h)


def test_embedding_joins_the_residual_stream():
    model = _filled(TinyTransformer)
    spec = permutation_spec(model, jnp.array([[1, 2, 3], [4, 5, 6]]))   # check=True verifies
    stream = spec.axes_to_perm["emb/embedding"][1]
    assert [spec.axes_to_perm[k][a] for k, a in [("ln1/scale", 0), ("att/out/kernel", 2),
                                               ("down/kernel", 1), ("head/kernel", 0)]] \
        == [stream] * 4
    assert spec.axes_to_perm["emb/embedding"][0] is None          # token ids index it
    assert any("emb/embedding[0]" in w and "`gather`" in w for w in spec.why)
    assert sorted(spec.sizes.values()) == [2, 4, 4, 8, 16]       # heads, qk, vo, stream, mlp


def test_depthwise_convolution_permutes_groups_and_multipliers():
    dn = ("NHWC", "HWIO", "NHWC")

    def predict(p, x):
        h = jax.nn.relu(jax.lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME",
                                                     dimension_numbers=dn))
        h = jax.nn.relu(jax.lax.conv_general_dilated(h, p["dw"], (1, 1), "SAME",
                                                     dimension_numbers=dn, feature_group_count=4))
        return jax.lax.conv_general_dilated(h, p["pw"], (1, 1), "SAME",
                                            dimension_numbers=dn).mean(axis=(1, 2))
    params = _random_like({"c1": jnp.zeros((3, 3, 1, 4)), "dw": jnp.zeros((3, 3, 1, 8)),
                           "pw": jnp.zeros((1, 1, 8, 6))}, 0)
    spec = permutation_spec(predict, _random_like(jnp.zeros((2, 5, 5, 1)), 1), params=params)
    groups = spec.axes_to_perm["c1"][3]
    (((g, n_groups), (m, n_mult)),) = spec.axes_to_perm["dw"][3]   # 8 = 4 groups x 2
    assert (g, n_groups, n_mult) == (groups, 4, 2) and spec.sizes[m] == 2
    assert spec.axes_to_perm["pw"][2] == spec.axes_to_perm["dw"][3]


def test_objective_spec_matches_model_spec():
    model = _filled(lambda rngs: MLP((8, 6), in_features=5, out_features=3, rngs=rngs))
    x = jnp.ones((4, 5))
    obj = Objective.from_nnx(model, cross_entropy, (x, jnp.zeros(4, jnp.int32)))
    assert permutation_spec(obj).to_dict()["axes_to_perm"] == \
        permutation_spec(model, x).to_dict()["axes_to_perm"]


def test_unmodelled_ops_block_the_axis_and_say_why():
    def predict(p, x):
        h = jnp.cumsum(jnp.tanh(x @ p["w1"]), axis=-1)
        g = jnp.tanh(h @ p["w2"])
        return jnp.sort(g, axis=-1) @ p["w3"]
    params = _random_like({"w1": jnp.zeros((5, 7)), "w2": jnp.zeros((7, 4)),
                           "w3": jnp.zeros((4, 2))}, 1)
    spec = permutation_spec(predict, jnp.ones((2, 5)), params=params)
    assert spec.sizes == {}
    assert any(w.startswith("w1[1], w2[0]") and "`cumsum`" in w for w in spec.why)
    assert any("w2[1], w3[0]" in w and "`sort`" in w for w in spec.why)


def test_jit_checkpoint_and_custom_vjp_are_entered():
    @jax.custom_vjp
    def act(x):
        return jnp.tanh(x)
    act.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g,))

    @jax.checkpoint
    def block(h, w):
        return act(h @ w)

    @jax.jit
    def predict(p, x):
        return block(block(x, p["w1"]), p["w2"]) @ p["w3"]
    params = _random_like({"w1": jnp.zeros((3, 5)), "w2": jnp.zeros((5, 4)),
                           "w3": jnp.zeros((4, 2))}, 0)
    x = _random_like(jnp.zeros((6, 3)), 1)
    spec = permutation_spec(predict, x, params=params)
    assert dict(spec.axes_to_perm) == {"w1": (None, "P0"), "w2": ("P0", "P1"),
                                       "w3": ("P1", None)}
    acts = hidden_activations(predict, spec, x, params=params)
    np.testing.assert_allclose(acts["P1"], jnp.tanh(jnp.tanh(x @ params["w1"]) @ params["w2"]),
                               rtol=1e-12)


def test_check_catches_a_wrong_rule(monkeypatch):
    def predict(p, x):
        return jnp.cumsum(jnp.tanh(x @ p["w1"]), axis=-1) @ p["w2"]
    params = _random_like({"w1": jnp.zeros((5, 7)), "w2": jnp.zeros((7, 2))}, 1)
    monkeypatch.setitem(graph.RULES, "cumsum", graph._elementwise)   # forgets the order
    with pytest.raises(RuntimeError, match="does not leave the outputs unchanged"):
        permutation_spec(predict, jnp.ones((2, 5)), params=params)


# ---- hand-written specs, validation, serialisation -----------------------------------------

def _mlp_params():
    return _random_like({"d0": {"kernel": jnp.zeros((5, 8)), "bias": jnp.zeros(8)},
                         "d1": {"kernel": jnp.zeros((8, 3)), "bias": jnp.zeros(3)}}, 0)


HAND = {"d0/kernel": (None, "P"), "d0/bias": ("P",), "d1/kernel": ("P", None),
        "d1/bias": (None,)}


def test_hand_written_spec_forms_agree_and_round_trip():
    params = _mlp_params()
    spec = PermutationSpec.from_axes_to_perm(HAND, params)
    other = PermutationSpec.from_perm_to_axes({"P": [("d0/kernel", 1), ("d0/bias", 0),
                                                     ("d1/kernel", 0)]}, params)
    assert spec.to_dict() == other.to_dict()
    assert PermutationSpec.from_json(spec.to_json()).to_dict() == spec.to_dict()
    derived = permutation_spec(lambda p, x: jnp.tanh(x @ p["d0"]["kernel"] + p["d0"]["bias"])
                               @ p["d1"]["kernel"] + p["d1"]["bias"], jnp.ones((2, 5)),
                               params=params)
    assert dict(derived.axes_to_perm) == {k: tuple("P0" if e == "P" else e for e in v)
                                          for k, v in HAND.items()}
    assert "P (8): d0/kernel[1], d0/bias[0], d1/kernel[0]" in str(spec)


def test_apply_inverse_and_identity():
    params = _mlp_params()
    spec = PermutationSpec.from_axes_to_perm(HAND, params)
    perm = random_permutation(spec, jax.random.key(1))
    moved = apply_permutation(params, spec, perm)
    np.testing.assert_array_equal(moved["d0"]["kernel"], params["d0"]["kernel"][:, perm["P"]])
    np.testing.assert_array_equal(moved["d1"]["kernel"], params["d1"]["kernel"][perm["P"]])
    back = apply_permutation(moved, spec, inverse_permutation(perm))
    jax.tree.map(np.testing.assert_array_equal, back, params)
    same = apply_permutation(params, spec, identity_permutation(spec))
    jax.tree.map(np.testing.assert_array_equal, same, params)
    again = random_permutation(spec, jax.random.key(1))
    np.testing.assert_array_equal(again["P"], perm["P"])


@pytest.mark.parametrize("table, match", [
    ({k: v for k, v in HAND.items() if k != "d1/bias"}, "'d1/bias'.*not in the spec"),
    ({**HAND, "d2/kernel": (None,)}, "names params leaf 'd2/kernel'"),
    ({**HAND, "d0/bias": ("P", None)}, "'d0/bias' has shape \\(8,\\)"),
    ({**HAND, "d1/kernel": ("P", "P")}, "Group 'P' has 8 units elsewhere but 3"),
    ({**HAND, "d0/kernel": (None, (((None, 2), ("P", 3)),))}, "cover 6 positions"),
])
def test_hand_written_spec_errors_name_the_leaf(table, match):
    with pytest.raises(ValueError, match=match):
        PermutationSpec.from_axes_to_perm(table, _mlp_params())


def test_apply_permutation_errors():
    params = _mlp_params()
    spec = PermutationSpec.from_axes_to_perm(HAND, params)
    with pytest.raises(ValueError, match="perm\\['P'\\] must be a permutation of range\\(8\\)"):
        apply_permutation(params, spec, {"P": np.zeros(8, int)})
    with pytest.raises(ValueError, match="no entry for group 'P'"):
        apply_permutation(params, spec, {})
    with pytest.raises(ValueError, match="params leaf 'extra' is not in the spec"):
        apply_permutation({**params, "extra": jnp.ones(2)}, spec, identity_permutation(spec))
    with pytest.raises(ValueError, match="needs a key"):
        random_permutation(spec, None)
    with pytest.raises(ValueError, match="needs an example input"):
        permutation_spec(_filled(lambda rngs: MLP((4,), rngs=rngs)))
    with pytest.raises(ValueError, match="needs example parameters"):
        permutation_spec(predict_mlp, jnp.ones((2, 5)))


def test_hidden_activations_are_the_inputs_of_the_next_layer():
    case = _case("mlp", jnp.float64)
    acts = hidden_activations(lambda p, x: case.fn(p, case.state, x), case.spec, case.x,
                              params=case.params)
    layers = case.params["layers"]
    h1 = np.tanh(case.x @ layers[0]["kernel"][...] + layers[0]["bias"][...])
    np.testing.assert_allclose(acts["P0"], h1, rtol=1e-12)
    assert acts["P1"].shape == (4, 6)
