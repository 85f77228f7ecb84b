"""The landscape and connect subcommands: files written, resume, refusals, the paths'
numbers equal to the library's."""

import json

import jax
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools import checkpoints as C
from hessian_tools.cli import main
from hessian_tools.cli.landscape import grid_axis
from hessian_tools.examples.digits import digits_objective

MODEL = ["--model", "hessian_tools.examples.digits:digits_objective",
         "--model-kwargs", '{"name": "mlp-tiny", "num_examples": 200}']


@pytest.fixture(scope="module")
def obj():
    return digits_objective("mlp-tiny", num_examples=200)


@pytest.fixture(scope="module")
def run_dir(obj, tmp_path_factory):
    """Checkpoints of a short training run (gradient descent from a perturbed point), and
    an independently trained network (another seed)."""
    root = tmp_path_factory.mktemp("run")
    grad = lambda p: ht.value_and_grad(obj.with_params(p))[1]
    params = jax.tree.map(lambda a: a + 0.3 * np.sign(np.asarray(a)), obj.params)
    for step in range(4):
        C.save_npz(root / f"step_{step}.npz", params)
        for _ in range(5):
            params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grad(params))
    other = digits_objective("mlp-tiny", num_examples=200, seed=1)
    C.save_npz(root.parent / "other.npz", other.params)
    return root


def _cli(*args):
    return main([*args, "--no-compile-cache", "--quiet"])


def test_grid_parser_and_negative_values():
    np.testing.assert_array_equal(grid_axis("-1:1:5"), np.linspace(-1, 1, 5))
    for bad in ("1:1:5", "-1:1:1", "a:b:c", "-1:1", "-1:inf:5"):
        with pytest.raises(Exception, match="START"):
            grid_axis(bad)


def test_surface_files_resume_and_refusals(obj, tmp_path, capsys):
    # the centre as an explicit checkpoint: the test's and the CLI's parameters are the same
    # even if another process refreshes the example's weight cache meanwhile
    ckpt = C.save_npz(tmp_path / "centre.npz", obj.params)
    centre = [str(ckpt), *MODEL]
    out = tmp_path / "surf"
    assert _cli("landscape", *centre, "--grid", "-1:1:5", "--accuracy", "--out", str(out)) == 0
    for f in ("surface.npz", "directions.npz", "surface.png", "landscape.json"):
        assert (out / f).exists(), f
    summary = json.loads((out / "landscape.json").read_text())
    surf = summary["surface"]
    assert np.shape(surf["values"]) == (5, 5) and surf["num_reused"] == 0
    # the same numbers as the library with the same directions
    dirs = ht.load_directions(out / "directions.npz", obj.params)
    ref = ht.loss_surface(obj, dirs, grid=(np.linspace(-1, 1, 5),) * 2)
    np.testing.assert_allclose(surf["values"], ref.values, rtol=1e-6)
    # run again: every point is read back, the directions reused
    assert _cli("landscape", *centre, "--grid", "-1:1:5", "--accuracy", "--out", str(out)) == 0
    assert json.loads((out / "landscape.json").read_text())["surface"]["num_reused"] == 26
    # another grid in the same folder is refused (not mixed in), --overwrite starts over
    assert _cli("landscape", *centre, "--grid", "-2:2:5", "--accuracy", "--out", str(out)) == 2
    assert "other settings" in capsys.readouterr().err
    assert _cli("landscape", *centre, "--grid", "-2:2:5", "--out", str(out), "--overwrite") == 0
    # a 1-D request against the folder's 2 directions is refused with the fix
    assert _cli("landscape", *centre, "--dims", "1", "--grid", "-1:1:5", "--out", str(out)) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_between_trajectory_and_curvature(obj, run_dir, tmp_path, capsys):
    a, b = run_dir / "step_0.npz", run_dir / "step_3.npz"
    out = tmp_path / "between"
    assert _cli("landscape", *MODEL, "--between", str(a), str(b), "--num-points", "5",
                "--out", str(out)) == 0
    path = json.loads((out / "between.json").read_text())["path"]
    with pytest.raises(ValueError, match="other containers"):       # a plain dict: named
        ht.interpolate(obj, obj.params, C.load_checkpoint(b))
    ref = ht.interpolate(obj, ht.restore(obj, a).objective.params,
                         ht.restore(obj, b).objective.params, num_points=5)
    np.testing.assert_allclose(path["loss"], ref.loss, rtol=1e-6)
    assert path["barrier"] == pytest.approx(ref.barrier, rel=1e-5, abs=1e-9)
    assert (out / "between.png").exists()
    # a finished path is not replaced silently
    assert _cli("landscape", *MODEL, "--between", str(a), str(b), "--out", str(out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    out = tmp_path / "traj"
    assert _cli("landscape", *MODEL, "--trajectory", str(run_dir), "--grid", "-1:1:4",
                "--curvature", "--curvature-grid", "-1:1:2", "--out", str(out)) == 0
    summary = json.loads((out / "landscape.json").read_text())
    assert summary["surface"]["directions"]["kind"] == "trajectory"
    assert np.shape(summary["curvature"]["lambda_max"]) == (2, 2)
    assert (out / "trajectory.png").exists() and (out / "curvature.png").exists()
    assert _cli("landscape", *MODEL, "--trajectory", str(run_dir / "step_0.npz"),
                "--out", str(tmp_path / "t1")) == 2
    assert "at least 3" in capsys.readouterr().err


def test_connect_two_networks(obj, run_dir, tmp_path, capsys):
    a, b = run_dir / "step_3.npz", run_dir.parent / "other.npz"
    out = tmp_path / "connect"
    assert _cli("connect", str(a), str(b), *MODEL, "--num-points", "5",
                "--curvature-points", "2", "--out", str(out)) == 0
    summary = json.loads((out / "connect.json").read_text())
    conn = summary["connectivity"]
    assert conn["aligned"]["barrier"] < conn["naive"]["barrier"]
    assert np.shape(conn["lambda_max"]) == (2, 2) and summary["spec"]["groups"]
    assert (out / "connect.png").exists()
    assert _cli("connect", str(a), str(b), *MODEL, "--out", str(out)) == 2      # not replaced
    assert "--overwrite" in capsys.readouterr().err
    assert _cli("connect", str(a), str(b), *MODEL, "--curvature-points", "1",
                "--out", str(tmp_path / "c1")) == 2
    assert "--curvature-points 1" in capsys.readouterr().err
