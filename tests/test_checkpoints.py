"""Checkpoints as people save them, written by the libraries' own writers (orbax, flax,
numpy, safetensors): parameters and model state are found and used, or the run stops
naming what is missing."""

import json

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
from flax import nnx

import hessian_tools as ht
from _models import ConvBN, cross_entropy, make_conv_bn, signal_data, trained_conv_bn
from hessian_tools import checkpoints as C
from hessian_tools.cli import main
from hessian_tools.files import atomic_write_bytes


@pytest.fixture(scope="module")
def trained():
    """A ConvBN trained with BatchNorm in training mode (statistics far from their init)."""
    model, opt = trained_conv_bn()
    return model, opt


def _fresh_objective():
    fresh, loss_fn, data = make_conv_bn()
    return ht.Objective.from_nnx(fresh, loss_fn, data)


def _reference(model):
    return ht.Objective.from_nnx(model, cross_entropy, signal_data())


def _assert_same_point(restored: C.Restored, model):
    ref = _reference(model)
    for a, b in zip(jax.tree.leaves((restored.objective.params, restored.objective.state)),
                    jax.tree.leaves((ref.params, ref.state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(ht.value_and_grad(restored.objective)[0]) == pytest.approx(
        float(ht.value_and_grad(ref)[0]), rel=1e-6)


def _orbax_save(path, tree):
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(path.resolve(), tree)
    ckpt.wait_until_finished()
    return path


def _pure(model, *filters):
    return nnx.to_pure_dict(nnx.state(model, *filters))


LAYOUTS = {
    "orbax nnx.state": lambda m, opt, p: _orbax_save(p / "ckpt", nnx.state(m)),
    "orbax to_pure_dict": lambda m, opt, p: _orbax_save(p / "ckpt", _pure(m)),
    "msgpack to_pure_dict": lambda m, opt, p: atomic_write_bytes(
        p / "m.msgpack", flax.serialization.to_bytes(_pure(m))),
    "npz": lambda m, opt, p: C.save_npz(p / "m.npz", _pure(m)),
    "safetensors": lambda m, opt, p: atomic_write_bytes(p / "m.safetensors", safetensors.numpy.save(
        {k: np.asarray(v) for k, v in ht.tree.flat_paths(_pure(m)).items()})),
    "orbax params+rest dict": lambda m, opt, p: _orbax_save(
        p / "ckpt", dict(zip(("params", "rest"), nnx.split(m, nnx.Param, ...)[1:]))),
    "orbax single tree with optimizer": lambda m, opt, p: _orbax_save(
        p / "ckpt", {"model": nnx.state(m), "optimizer": nnx.state(opt)}),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_restores_parameters_and_batch_statistics(layout, trained, tmp_path):
    model, opt = trained
    path = LAYOUTS[layout](model, opt, tmp_path)
    restored = C.restore(_fresh_objective(), path)
    _assert_same_point(restored, model)
    if "optimizer" in layout:
        assert restored.params_at == "model/" and "optimizer" in " ".join(restored.notes)


def test_orbax_composite_manager_of_model_and_optimizer(trained, tmp_path):
    model, opt = trained
    with ocp.CheckpointManager(tmp_path.resolve() / "run") as mngr:
        mngr.save(100, args=ocp.args.Composite(model=ocp.args.StandardSave(nnx.state(model)),
                                              optimizer=ocp.args.StandardSave(nnx.state(opt))))
        mngr.wait_until_finished()
    paths = C.find_checkpoints(tmp_path / "run")
    assert [p.name for p in paths] == ["100"] and C.step_of(paths[0]) == 100
    restored = C.restore(_fresh_objective(), paths[0])
    _assert_same_point(restored, model)
    assert restored.params_at == "model/"


def test_nnx_split_states_in_separate_orbax_items(trained, tmp_path):
    model, _ = trained
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    with ocp.CheckpointManager(tmp_path.resolve() / "run") as mngr:
        mngr.save(3, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                            batch_stats=ocp.args.StandardSave(stats)))
        mngr.wait_until_finished()
    restored = C.restore(_fresh_objective(), tmp_path / "run" / "3")
    _assert_same_point(restored, model)
    assert (restored.params_at, restored.state_at) == ("params/", "batch_stats/")


@pytest.mark.parametrize("writer", ["msgpack", "orbax"])
def test_linen_variables_with_batch_stats(writer, tmp_path):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(5)(x.reshape(x.shape[0], -1))
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(4)(jnp.tanh(x))

    x, y = signal_data()
    variables = Net().init(jax.random.key(0), x)
    _, trained_vars = Net().apply(variables, x, train=True, mutable=["batch_stats"])
    variables = {"params": jax.tree.map(lambda a: a * 1.5, variables["params"]),
                 **trained_vars}
    if writer == "msgpack":
        path = atomic_write_bytes(tmp_path / "v.msgpack", flax.serialization.to_bytes(variables))
    else:
        path = _orbax_save(tmp_path / "v", variables)
    fresh = ht.Objective.from_linen(Net(), Net().init(jax.random.key(1), x), cross_entropy,
                                    (x, y))
    restored = C.restore(fresh, path).objective
    ref = ht.Objective.from_linen(Net(), variables, cross_entropy, (x, y))
    np.testing.assert_allclose(ht.value_and_grad(restored)[0], ht.value_and_grad(ref)[0],
                               rtol=1e-6)


def test_missing_state_is_an_error_that_names_it(trained, tmp_path):
    model, _ = trained
    path = _orbax_save(tmp_path / "params_only", _pure(model, nnx.Param))
    with pytest.raises(C.CheckpointError, match=r"not the model state \['norm/mean', 'norm/var'"):
        C.restore(_fresh_objective(), path)
    batch_mode = ht.Objective.from_nnx(ConvBN(rngs=nnx.Rngs(0)), cross_entropy, signal_data(),
                                       bn_mode="batch")
    C.restore(batch_mode, path)              # batch statistics are not needed there


def test_unreadable_layout_says_what_was_found_and_expected(tmp_path):
    path = C.save_npz(tmp_path / "other.npz", {"encoder": {"w": np.zeros((3, 3))}})
    with pytest.raises(C.CheckpointError, match=r"top-level keys are \['encoder'\].*"
                       r"Expected the parameters of the model"):
        C.restore(_fresh_objective(), path)


def test_cli_on_an_orbax_nnx_checkpoint_matches_the_python_api(trained, tmp_path, capsys):
    """The headline of the issue: a BatchNorm CNN checkpointed by orbax from an NNX model
    gives, through the CLI, the loss and lambda_max of the Python API on the same model."""
    model, _ = trained
    path = _orbax_save(tmp_path / "step_60", nnx.state(model))
    out = tmp_path / "out"
    code = main(["spectrum", str(path), "--model", "tests/_models.py:make_conv_bn",
                 "--top", "1", "--bottom", "0", "--out", str(out), "--no-compile-cache",
                 "--json"])
    assert code == 0, capsys.readouterr().err
    row = json.loads(capsys.readouterr().out)["rows"][0]
    ref = _reference(model)
    eig = ht.eigenvalues(ht.hessian(ref), k=1, key=jax.random.key(0))
    np.testing.assert_allclose(row["loss"], ht.value_and_grad(ref)[0], rtol=1e-5)
    np.testing.assert_allclose(row["lambda_max"], eig.values[0], rtol=1e-4)
