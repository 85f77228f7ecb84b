"""A catalogue of bad inputs and faults (issue 16): each row is an input and the one-line
error (or the correct result) it must produce. No traceback, nothing lost, nothing untrusted
rendered. The classes follow the red-team report:

 1. a stored result is tied to its checkpoint (path, size, hash) and the settings
 2. per-checkpoint outputs cannot collide with the run's own files
 3. names are escaped in the HTML report
 4. malformed safetensors files are refused (the ``safetensors`` package validates them)
 5. a tracker log refuses to resume another run
 6. output problems are found before any work
 7. ordinary mistakes get a one-line error naming the value and the fix
 8. numeric options are validated; unconverged results exit 3
 9. parameter dtypes: low precision upcast with a note, integer and complex refused
10. hangs and misleading messages: FIFOs, NaN losses, symlink loops, stray folders
11. solver input checks
and concurrent runs on one output folder.

Library errors of the objective and the analyses are catalogued in ``test_errors.py``.
"""

import json
import os
import re
import struct
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools import checkpoints as C
from hessian_tools.cli import main
from hessian_tools.cli.runs import OutputLock
from hessian_tools.linalg.lanczos import lanczos_tridiag

TINY = '''
import jax.numpy as jnp
import hessian_tools as ht


def objective(width=3, fail=False, nan=False):
    if fail:
        raise RuntimeError("the model builder failed")
    x = jnp.linspace(-1, 1, 40 * width).reshape(40, width)
    y = jnp.sin(3 * x.sum(1, keepdims=True))
    params = {"w": jnp.full((width, 1), 0.3), "b": jnp.zeros(1)}

    def loss(p, batch):
        xb, yb = batch
        out = jnp.mean((jnp.tanh(xb @ p["w"] + p["b"]) - yb) ** 2)
        return out * jnp.nan if nan else out
    return ht.Objective(loss, params, (x, y))
'''
SMALL = ["--top", "2", "--bottom", "1"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.py"
    path.write_text(TINY)
    return f"{path}:objective"


def _params(scale=1.0):
    return {"w": np.full((3, 1), 0.3 * scale, np.float32), "b": np.zeros(1, np.float32)}


def _cli(capsys, *args, quiet=True):
    """Run the CLI in this process: (exit code, stderr, stdout)."""
    try:
        code = main([*args, "--no-compile-cache", *(["--quiet"] if quiet else [])])
    except SystemExit as exc:            # argparse: usage errors
        code = exc.code
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return code, out.err, out.out


def _stored(out, name):
    return json.loads((out / "checkpoints" / f"{name}.json").read_text())


# ---- 1. a stored result is tied to the checkpoint and the settings ---------------------------

def test_same_stem_from_another_run_is_reported_never_reused(model, tmp_path, capsys):
    C.save_npz(tmp_path / "runA" / "step_5.npz", _params(1.0))
    C.save_npz(tmp_path / "runB" / "step_5.npz", _params(2.0))
    out = tmp_path / "o"
    code, err, _ = _cli(capsys, "spectrum", str(tmp_path / "runA" / "step_5.npz"),
                        "--model", model, *SMALL, "--out", str(out))
    assert code == 0, err
    first = _stored(out, "step_5")
    code, err, _ = _cli(capsys, "spectrum", str(tmp_path / "runB" / "step_5.npz"),
                        "--model", model, *SMALL, "--out", str(out))
    assert code == 1 and "belongs to another checkpoint" in err and "--overwrite" in err
    assert _stored(out, "step_5") == first                   # runA's result kept, not reused
    code, err, _ = _cli(capsys, "spectrum", str(tmp_path / "runB" / "step_5.npz"),
                        "--model", model, *SMALL, "--out", str(out), "--overwrite")
    second = _stored(out, "step_5")
    assert code == 0 and second["checkpoint"].endswith("runB/step_5.npz")
    assert second["result"]["loss"] != first["result"]["loss"]


def test_checkpoint_replaced_in_place_is_recomputed(model, tmp_path, capsys):
    ckpt, out = tmp_path / "latest.npz", tmp_path / "o"
    C.save_npz(ckpt, _params(1.0))
    assert _cli(capsys, "spectrum", str(ckpt), "--model", model, *SMALL, "--out", str(out))[0] == 0
    before = _stored(out, "latest")["result"]["loss"]
    C.save_npz(ckpt, _params(2.0))
    assert _cli(capsys, "spectrum", str(ckpt), "--model", model, *SMALL, "--out", str(out))[0] == 0
    assert _stored(out, "latest")["result"]["loss"] != before


def test_two_stems_from_two_folders_in_one_run_do_not_share_a_result(model, tmp_path, capsys):
    C.save_npz(tmp_path / "a" / "ckpt.npz", _params(1.0))
    C.save_npz(tmp_path / "b" / "ckpt.npz", _params(2.0))
    out = tmp_path / "o"
    code, err, _ = _cli(capsys, "spectrum", str(tmp_path / "a" / "ckpt.npz"),
                        str(tmp_path / "b" / "ckpt.npz"), "--model", model, *SMALL,
                        "--out", str(out))
    assert code == 0, err
    assert len(list((out / "checkpoints").glob("*.json"))) == 2


def test_a_stored_result_holding_a_json_list_fails_that_checkpoint_only(model, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "o"
    for step in (1, 2):
        C.save_npz(run / f"step_{step}.npz", _params(step))
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step_1.json").write_text("[]")
    code, err, _ = _cli(capsys, "spectrum", str(run), "--model", model, *SMALL, "--out", str(out))
    assert code == 1
    assert re.search(r"step_1.json is unreadable \(not a result file\); pass --overwrite", err)
    assert "loss" in _stored(out, "step_2")["result"]          # the batch went on
    assert (out / "checkpoints" / "step_1.json").read_text() == "[]"   # nothing overwritten


# ---- 2. names that collide with the run's own files ------------------------------------------

@pytest.mark.parametrize("stem", ["summary", "trajectory", "report", "compare"])
def test_checkpoints_named_like_run_files(stem, model, tmp_path, capsys):
    C.save_npz(tmp_path / "run" / f"{stem}.npz", _params())
    out = tmp_path / "o"
    for _ in range(2):                   # the second run reuses the result
        code, err, _ = _cli(capsys, "spectrum", str(tmp_path / "run" / f"{stem}.npz"),
                            "--model", model, *SMALL, "--out", str(out))
        assert code == 0, err
    assert "loss" in _stored(out, stem)["result"]
    assert json.loads((out / "summary.json").read_text())["rows"][0]["name"] == stem


# ---- 3. HTML escaping --------------------------------------------------------------------------

def test_report_escapes_checkpoint_names(model, tmp_path, capsys):
    name = "<img src=x onerror=alert(1)>"
    C.save_npz(tmp_path / "run" / f"{name}.npz", _params())
    out = tmp_path / "o"
    _cli(capsys, "spectrum", str(tmp_path / "run" / f"{name}.npz"), "--model", model, *SMALL,
         "--out", str(out))
    html = (out / "report.html").read_text()
    assert name not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


# ---- 4. malformed safetensors ------------------------------------------------------------------

def _safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("case, header", [
    ("overlapping", {"w": {"dtype": "F32", "shape": [3, 1], "data_offsets": [0, 12]},
                     "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}),
    ("negative offset", {"w": {"dtype": "F32", "shape": [3, 1], "data_offsets": [-4, 8]},
                         "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}),
    ("negative shape", {"w": {"dtype": "F32", "shape": [-3, 1], "data_offsets": [0, 12]},
                        "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}),
    ("dtype does not match the bytes", {
        "w": {"dtype": "F64", "shape": [3, 1], "data_offsets": [0, 12]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}),
])
def test_malformed_safetensors_are_refused(case, header, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_safetensors(header, bytes(16)))
    with pytest.raises(C.CheckpointError, match="bad.safetensors.*(corrupt|invalid|safetensors)"):
        C.load_checkpoint(path)


# ---- 5. a tracker log refuses another run ------------------------------------------------------

def _tracker_objective(scale=1.0, num_examples=40):
    x = jnp.linspace(-1, 1, 3 * num_examples).reshape(num_examples, 3)
    y = jnp.sin(3 * x.sum(1, keepdims=True))
    loss = lambda p, b: jnp.mean((jnp.tanh(b[0] @ p["w"] + p["b"]) - b[1]) ** 2)
    return ht.Objective(loss, jax.tree.map(jnp.asarray, _params(scale)), (x, y))


def test_a_log_of_another_run_is_not_swallowed(tmp_path):
    path = tmp_path / "log.jsonl"
    obj = _tracker_objective()
    old = ht.SharpnessTracker(obj, every=1, key=jax.random.key(0), log_path=path)
    for step in range(3):
        old.update(step, jax.tree.map(lambda a: a * (1 + step), obj.params))
    new = ht.SharpnessTracker(obj, every=1, key=jax.random.key(0), log_path=path)
    with pytest.raises(ValueError, match="Step 1 is already in the log .* another run"):
        new.update(1, jax.tree.map(lambda a: a * 5, obj.params))
    # the same run resumed (the same parameters at a logged step) is skipped, as before
    assert new.update(1, jax.tree.map(lambda a: a * 2, obj.params)) is None


def test_a_log_written_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "log.jsonl"
    obj = _tracker_objective()
    ht.SharpnessTracker(obj, every=1, key=jax.random.key(0), log_path=path).update(0, obj.params)
    with pytest.raises(ValueError, match="another run .*every: 1 in the log, 5 now"):
        ht.SharpnessTracker(obj, every=5, key=jax.random.key(0), log_path=path)
    with pytest.raises(ValueError, match="another run .*num_examples"):
        ht.SharpnessTracker(_tracker_objective(num_examples=20), every=1,
                            key=jax.random.key(0), log_path=path)
    fresh = ht.SharpnessTracker(obj, every=5, key=jax.random.key(0), log_path=path,
                                overwrite=True)
    assert fresh.log.records == ()


# ---- 6. output problems before any work --------------------------------------------------------

def test_out_that_is_a_file(model, tmp_path, capsys):
    (tmp_path / "o").write_text("x")
    code, err, _ = _cli(capsys, "spectrum", "--model", model, *SMALL, "--out", str(tmp_path / "o"))
    assert code == 2 and "is a file, not a folder" in err


def test_out_below_a_file_cannot_be_created(model, tmp_path, capsys):
    (tmp_path / "f").write_text("x")          # works as root too, unlike a read-only folder
    code, err, _ = _cli(capsys, "spectrum", "--model", model, *SMALL,
                        "--out", str(tmp_path / "f" / "o"))
    assert code == 2 and "cannot be written (Not a directory): choose a writable folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_out(model, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    out.chmod(0o500)
    try:
        code, err, _ = _cli(capsys, "spectrum", "--model", model, *SMALL, "--out", str(out))
    finally:
        out.chmod(0o700)
    assert code == 2 and "cannot be written (Permission denied)" in err
    assert not (out / "checkpoints").exists()


def test_a_failed_write_is_one_error_and_keeps_what_was_written(model, tmp_path, capsys,
                                                                  monkeypatch):
    """A full disk in the middle of a batch: the first result stays, the second fails cleanly."""
    for step in (1, 2):
        C.save_npz(tmp_path / "run" / f"step_{step}.npz", _params(step))
    from hessian_tools.cli import runs
    real, calls = runs.write_json, []

    def full_disk(path, obj):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, obj)
    monkeypatch.setattr(runs, "write_json", full_disk)
    out = tmp_path / "o"
    code, err, _ = _cli(capsys, "spectrum", str(tmp_path / "run"), "--model", model, *SMALL,
                        "--out", str(out))
    assert code == 1
    assert re.search(r"cannot write .*step_2.json \(No space left on device\)", err)
    assert "loss" in _stored(out, "step_1")["result"]


# ---- 7. ordinary mistakes ----------------------------------------------------------------------

USAGE = [  # (arguments after the model, the message); every one exits 2
    (["--model-kwargs", '{"fail": true}'], "raised RuntimeError: the model builder failed"),
    (["--model-kwargs", '{"nope": 1}'], "unexpected keyword argument 'nope'"),
    (["--model-kwargs", "[]"], "--model-kwargs must be a JSON object"),
    (["--every", "0"], "argument --every: '0' must be > 0"),
    (["--seed", "-1"], "argument --seed: '-1' must be >= 0"),
    (["--seed", str(2 ** 64)], "must be below 2\\*\\*32"),
    (["--top", "0", "--bottom", "0"], "ask for at least one eigenvalue"),
    (["--top", "10", "--bottom", "1"], "more eigenvalues than the model's 4 parameters"),
    (["--density", *SMALL], "--lanczos-steps 80 exceeds the model's 4 parameters: pass "
                            "--lanczos-steps 4 or fewer"),
    (["--num-examples", "1000", *SMALL], "--num-examples 1000 exceeds the 40 examples"),
    (["--tol", "-1"], "argument --tol: '-1' must be > 0"),
    (["--tol", "0"], "argument --tol: '0' must be > 0"),
    (["--tol", "nan"], "argument --tol: 'nan' is not a finite number"),
    (["--tol", "1"], "--tol"),
]


@pytest.mark.parametrize("args, message", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_spectrum_usage_errors(args, message, model, tmp_path, capsys):
    code, err, _ = _cli(capsys, "spectrum", "--model", model, *args, "--out", str(tmp_path / "o"))
    assert code == 2 and re.search(message, err), err
    assert len(err.strip().splitlines()[-1]) < 300


OTHER = [
    (["classify", "--num-examples", "0"], "argument --num-examples: '0' must be > 0"),
    (["classify", "--num-examples", "-1790"], "argument --num-examples: '-1790' must be > 0"),
    (["compare-optimizers", "--optimizer", "sgd:inf"],
     "Optimizer spec 'sgd:inf': the learning rate must be a positive, finite number"),
    (["compare-optimizers", "--optimizer", "adam:-1"], "Optimizer spec 'adam:-1'"),
]


@pytest.mark.parametrize("args, message", OTHER, ids=[" ".join(a) for a, _ in OTHER])
def test_other_subcommand_usage_errors(args, message, model, tmp_path, capsys):
    code, err, _ = _cli(capsys, *args, "--model", model, "--out", str(tmp_path / "o"))
    assert code == 2 and re.search(message, err), err


def test_demo_k_zero(tmp_path, capsys):
    code, err, _ = _cli(capsys, "demo", "--k", "0", "--out", str(tmp_path / "o"))
    assert code == 2 and "argument --k: '0' must be > 0" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_run_directory_without_permission(model, tmp_path, capsys):
    run = tmp_path / "run"
    C.save_npz(run / "step_1.npz", _params())
    run.chmod(0)
    try:
        code, err, _ = _cli(capsys, "spectrum", str(run), "--model", model, *SMALL,
                            "--out", str(tmp_path / "o"))
    finally:
        run.chmod(0o700)
    assert code == 2 and re.search(r"run.*(cannot be read|Permission denied)", err), err


def test_output_piped_into_head(model, tmp_path):
    cmd = (f"{sys.executable} -m hessian_tools spectrum --model {model} --top 2 --bottom 1 "
           f"--out {tmp_path / 'o'} --no-compile-cache --json | head -1")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True,
                          text=True, timeout=600)
    assert proc.stdout.strip() == "{"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 0


# ---- 8. unconverged results are visible --------------------------------------------------------

@pytest.mark.parametrize("tol", [-1.0, 0.0, float("nan"), 1.0])
def test_library_rejects_bad_tolerances(tol):
    obj = _tracker_objective()
    with pytest.raises(ValueError, match=r"tol=.* must lie in \(0, 1\)"):
        ht.eigenvalues(ht.hessian(obj), k=1, key=jax.random.key(0), tol=tol)


def test_unconverged_exits_3_with_a_warning(model, tmp_path, capsys):
    code, err, out = _cli(capsys, "spectrum", "--model", model, "--top", "1", "--bottom", "0",
                          "--tol", "1e-30", "--out", str(tmp_path / "o"))
    assert code == 3 and "did not reach the tolerance" in err
    code, err, _ = _cli(capsys, "spectrum", "--model", model, "--top", "1", "--bottom", "0",
                        "--tol", "1e-30", "--allow-unconverged", "--overwrite",
                        "--out", str(tmp_path / "o"))
    assert code == 0


def test_data_that_changes_between_products_is_caught(tmp_path, capsys):
    path = tmp_path / "noisy.py"
    path.write_text(TINY + '''

def noisy():
    """Streamed data with fresh noise at every pass: products that are not deterministic."""
    import numpy as np
    obj, calls = objective(), []
    x, y = obj.data

    def batches():
        calls.append(1)
        yield (x + np.random.default_rng(len(calls)).normal(size=x.shape), y)
    return ht.Objective(obj.loss, obj.params, batches)
''')
    code, err, _ = _cli(capsys, "spectrum", "--model", f"{path}:noisy", *SMALL,
                        "--out", str(tmp_path / "o"))
    assert code == 1 and re.search("not deterministic|differ", err), err


# ---- 9. parameter dtypes -----------------------------------------------------------------------

def test_bfloat16_and_float16_checkpoints_are_upcast_with_a_note(model, tmp_path, capsys):
    for dtype in (ml_dtypes.bfloat16, np.float16):
        name = np.dtype(dtype).name
        np.savez(tmp_path / f"{name}.npz", **{k: v.astype(dtype) for k, v in _params().items()})
        restored = C.restore(_tracker_objective(), tmp_path / f"{name}.npz")
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(restored.objective.params))
        assert any(name in n for n in restored.notes), restored.notes
    code, err, _ = _cli(capsys, "spectrum", str(tmp_path / "bfloat16.npz"), "--model", model,
                        *SMALL, "--out", str(tmp_path / "o"))
    assert code == 0, err


@pytest.mark.parametrize("dtype, message", [(np.int32, "dtype int32"),
                                            (np.complex64, "dtype complex64")])
def test_integer_and_complex_checkpoints_are_refused(dtype, message, tmp_path):
    np.savez(tmp_path / "c.npz", **{k: v.astype(dtype) for k, v in _params().items()})
    with pytest.raises((C.CheckpointError, TypeError), match=message):
        C.restore(_tracker_objective(), tmp_path / "c.npz")


def test_a_bfloat16_model_is_analysed():
    obj = _tracker_objective().astype(jnp.bfloat16)
    res = ht.eigenvalues(ht.hessian(obj), k=1, key=jax.random.key(0), tol=1e-2)
    assert np.isfinite(res.values).all()


# ---- 10. hangs and misleading messages ---------------------------------------------------------

def test_a_fifo_is_refused_not_read(model, tmp_path, capsys):
    fifo = tmp_path / "f.safetensors"
    os.mkfifo(fifo)
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        code=_cli(capsys, "spectrum", str(fifo), "--model", model, *SMALL,
                  "--out", str(tmp_path / "o"))))
    worker.start()
    worker.join(120)
    if worker.is_alive():                # unblock the reader, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("the CLI blocked on a FIFO")
    code, err, _ = result["code"]
    assert code in (1, 2) and "not a regular file" in err, err


def test_a_nan_loss_is_named(model, tmp_path, capsys):
    code, err, _ = _cli(capsys, "spectrum", "--model", model, "--model-kwargs", '{"nan": true}',
                        *SMALL, "--out", str(tmp_path / "o"))
    assert code == 1 and "the loss is nan" in err
    code, err, _ = _cli(capsys, "classify", "--model", model, "--model-kwargs", '{"nan": true}',
                        "--out", str(tmp_path / "c"))
    assert code == 1 and "the loss is nan" in err


def test_a_nan_loss_in_the_library_is_named_not_a_linalg_error():
    obj = _tracker_objective()
    bad = ht.Objective(lambda p, b: obj.loss(p, b) * jnp.nan, obj.params, obj.data)
    with pytest.raises(ValueError, match="the loss is nan"):
        ht.classify(bad, key=jax.random.key(0))
    with pytest.raises(FloatingPointError, match="non-finite"):
        ht.eigenvalues(ht.hessian(bad), k=1, key=jax.random.key(0))


def test_a_symlink_loop_is_reported_as_a_loop(tmp_path):
    (tmp_path / "a.npz").symlink_to(tmp_path / "b.npz")
    (tmp_path / "b.npz").symlink_to(tmp_path / "a.npz")
    with pytest.raises(C.CheckpointError, match="a symbolic link loop"):
        C.load_checkpoint(tmp_path / "a.npz")


def test_a_broken_symlink_is_named(tmp_path):
    (tmp_path / "a.npz").symlink_to(tmp_path / "gone.npz")
    with pytest.raises(C.CheckpointError, match="broken symbolic link"):
        C.load_checkpoint(tmp_path / "a.npz")


def test_stray_folders_in_a_run_directory_are_skipped_with_a_note(model, tmp_path, capsys):
    run = tmp_path / "run"
    C.save_npz(run / "step_10.npz", _params())
    (run / "tensorboard_2024").mkdir()
    (run / "tensorboard_2024" / "events.out").write_text("x")
    with pytest.warns(UserWarning, match="tensorboard_2024.*holds no checkpoint"):
        assert C.find_checkpoints(run) == [run / "step_10.npz"]
    code, err, _ = _cli(capsys, "spectrum", str(run), "--model", model, *SMALL,
                        "--out", str(tmp_path / "o"), quiet=False)
    assert code == 0 and re.search("note: .*tensorboard_2024.*holds no checkpoint", err), err


# ---- 11. solver input checks -------------------------------------------------------------------

def _diag(values):
    d = jnp.asarray(values, jnp.float64)
    return lambda v: d * v


@pytest.mark.parametrize("num_steps, message", [(0, "num_steps=0 must be"),
                                                (-1, "num_steps=-1 must be"),
                                                (5, "num_steps=5 exceeds")])
def test_lanczos_tridiag_steps_are_checked(num_steps, message):
    with pytest.raises(ValueError, match=message):
        lanczos_tridiag(_diag([1.0, 2.0, 3.0, 4.0]), jnp.ones(4), num_steps=num_steps)


def test_xtrace_with_a_budget_past_the_dimension_is_exact():
    A = np.diag([3.0, -1.0, 2.0, 0.5])
    est = ht.trace(ht.from_dense(A), method="xtrace", num_matvecs=20, key=jax.random.key(0))
    assert est.value == pytest.approx(4.5, abs=1e-12) and est.stderr == 0


# ---- concurrent runs ---------------------------------------------------------------------------

def test_a_second_run_on_a_locked_folder_refuses(model, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    with OutputLock(out):
        proc = subprocess.run([sys.executable, "-m", "hessian_tools", "spectrum", "--model",
                               model, *SMALL, "--out", str(out), "--no-compile-cache"],
                              capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert f"is being written by another hessian-tools run (pid {os.getpid()})" in proc.stderr
    assert not (out / "checkpoints").exists()
