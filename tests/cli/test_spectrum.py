"""Checkpoint readers, the spectrum CLI (round trip through a subprocess), errors and resume."""

import json
import re
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools import checkpoints as C
from hessian_tools.cli.runs import AnalysisConfig, analyze
from hessian_tools.cli import main
from hessian_tools.examples.digits import digits_objective

MODEL = ["--model", "hessian_tools.examples.digits:digits_objective",
         "--model-kwargs", '{"name": "mlp-tiny", "num_examples": 300}']
WRITERS = {"npz": (C.save_npz, "step_1.npz"), "msgpack": (C.save_msgpack, "step_2.msgpack"),
           "safetensors": (C.save_safetensors, "step_3.safetensors"),
           "orbax": (C.save_orbax, "step_4")}


@pytest.fixture(scope="module")
def obj():
    return digits_objective("mlp-tiny", num_examples=300)


def _leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_each_format_round_trips_exactly(fmt, obj, tmp_path):
    save, name = WRITERS[fmt]
    save(tmp_path / name, obj.params)
    assert C.checkpoint_format(tmp_path / name) == fmt
    params = C.match_params(obj.params, C.load_checkpoint(tmp_path / name))
    assert _leaves_equal(params, obj.params)


def test_cli_round_trip_all_formats_in_a_subprocess(obj, tmp_path):
    run = tmp_path / "run"
    for save, name in WRITERS.values():
        save(run / name, obj.params)
    out = tmp_path / "out"
    env = {**os.environ, "HESSIAN_TOOLS_NO_COMPILE_CACHE": "1"}
    proc = subprocess.run([sys.executable, "-m", "hessian_tools", "spectrum", str(run), *MODEL,
                           "--top", "3", "--bottom", "0", "--out", str(out), "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert [r["step"] for r in summary["rows"]] == [1, 2, 3, 4]
    api = analyze(obj, AnalysisConfig(top=3, bottom=0))
    ref = np.asarray(api["eigenvalues"][0]["values"])
    for name in ("step_1", "step_2", "step_3", "step_4"):
        saved = json.loads((out / "checkpoints" / f"{name}.json").read_text())
        np.testing.assert_allclose(saved["result"]["eigenvalues"][0]["values"], ref, rtol=1e-4)
        np.testing.assert_allclose(saved["result"]["loss"], api["loss"], rtol=1e-6)
        assert saved["result"]["num_matvecs"] > 0 and saved["versions"]["jax"]
    for f in ("summary.json", "report.md", "report.html", "trajectory.png",
              "checkpoints/step_1.png"):
        assert (out / f).exists()
    assert "data:image/png;base64" in (out / "report.html").read_text()


def _cli(args, capsys):
    code = main(["spectrum", *args, "--no-compile-cache", "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "truncated", "pickle", "mismatch", "nonfinite"])
def test_checkpoint_errors_through_the_cli(case, obj, tmp_path, capsys):
    path = tmp_path / "ckpt.npz"
    if case == "truncated":
        C.save_npz(path, obj.params)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "pickle":
        path = tmp_path / "ckpt.pkl"
        path.write_bytes(b"\x80\x04K\x01.")
    elif case == "mismatch":
        C.save_npz(path, digits_objective("mlp-small", trained=False).params)
    elif case == "nonfinite":
        C.save_npz(path, jax.tree.map(lambda a: jnp.asarray(a).at[..., 0].set(np.inf), obj.params))
    code, err = _cli([str(path), *MODEL, "--out", str(tmp_path / "out")], capsys)
    expected = {"missing": "no such file", "truncated": "corrupt or truncated",
                "pickle": "never does", "mismatch": r"parameter 'layers/0/bias' has shape \(32,\) "
                "in the checkpoint but \\(16,\\) in the model",
                "nonfinite": "leaf 'layers/0/bias'.*non-finite"}[case]
    assert code != 0
    assert re.search(expected, err), err
    assert "Traceback" not in err


def test_unknown_model_target_is_a_clean_error(tmp_path, capsys):
    code, err = _cli([str(tmp_path), "--model", "no_such_module:fn"], capsys)
    assert code == 2 and "cannot import 'no_such_module'" in err
    code, err = _cli([str(tmp_path), "--model", "hessian_tools.examples.digits:nope"], capsys)
    assert code == 2 and "has no callable 'nope'" in err
    code, err = _cli([str(tmp_path)], capsys)
    assert code == 2 and "--model" in err


def test_trajectory_with_a_corrupt_checkpoint_and_resume(obj, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "out"
    for step in (10, 20, 30):
        C.save_npz(run / f"step_{step}.npz", jax.tree.map(lambda a: a * (1 + step / 100),
                                                          obj.params))
    (run / "step_15.npz").write_bytes(b"not a zip file")
    before = {p: p.read_bytes() for p in run.iterdir()}
    code, _ = _cli([str(run), *MODEL, "--top", "2", "--bottom", "0", "--out", str(out)], capsys)
    summary = json.loads((out / "summary.json").read_text())
    assert code == 1
    assert [r["status"] for r in summary["rows"]] == ["done", "failed", "done", "done"]
    assert summary["failed"][0]["checkpoint"].endswith("step_15.npz")
    assert "step_15" in (out / "report.md").read_text()
    # an interrupted run: one result missing; re-running recomputes only that one
    kept = (out / "checkpoints" / "step_10.json").read_text()
    (out / "checkpoints" / "step_30.json").unlink()
    (run / "step_15.npz").unlink()
    code, _ = _cli([str(run), *MODEL, "--top", "2", "--bottom", "0", "--out", str(out)], capsys)
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0
    assert [r["status"] for r in summary["rows"]] == ["skipped", "skipped", "done"]
    assert (out / "checkpoints" / "step_10.json").read_text() == kept    # not overwritten
    assert all(p.read_bytes() == b for p, b in before.items() if p.exists())  # never modified
    code, _ = _cli([str(run), *MODEL, "--top", "2", "--bottom", "0", "--out", str(out),
                    "--overwrite"], capsys)
    assert [r["status"] for r in json.loads((out / "summary.json").read_text())["rows"]] == \
        ["done"] * 3


def test_density_adds_the_negative_fraction_to_the_report(obj, tmp_path, capsys):
    C.save_npz(tmp_path / "a.npz", obj.params)
    code, _ = _cli([str(tmp_path / "a.npz"), *MODEL, "--top", "1", "--bottom", "1",
                    "--density", "--out", str(tmp_path / "out")], capsys)
    row = json.loads((tmp_path / "out" / "summary.json").read_text())["rows"][0]
    report = (tmp_path / "out" / "report.md").read_text()
    assert code == 0 and row["negative_fraction"] is not None
    assert "negative (λ<−τ)" in report and f"{row['negative_fraction']:.2%}" in report
    assert "τ = 1% of max|λ|" in report
    code, _ = _cli([str(tmp_path / "a.npz"), *MODEL, "--top", "1", "--bottom", "0",
                    "--out", str(tmp_path / "plain")], capsys)
    assert code == 0 and "negative (λ<−τ)" not in (tmp_path / "plain" / "report.md").read_text()


def test_every_takes_every_nth_and_help_documents_defaults(obj, tmp_path, capsys):
    for step in (1, 2, 3, 4, 5):
        C.save_npz(tmp_path / "run" / f"ckpt_{step}.npz", obj.params)
    code, _ = _cli([str(tmp_path / "run"), *MODEL, "--every", "2", "--top", "1", "--bottom", "0",
                    "--out", str(tmp_path / "out")], capsys)
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["rows"]
    assert code == 0 and [r["step"] for r in rows] == [1, 3, 5]
    code, _ = _cli([str(tmp_path / "run"), *MODEL, "--every", "3", "--top", "1", "--bottom", "0",
                    "--out", str(tmp_path / "out3")], capsys)
    rows = json.loads((tmp_path / "out3" / "summary.json").read_text())["rows"]
    assert code == 0 and [r["step"] for r in rows] == [1, 4, 5]        # the last is kept
    with pytest.raises(SystemExit):
        main(["spectrum", "--help"])
    assert "(default: 5)" in capsys.readouterr().out


def test_compare_two_checkpoints(obj, tmp_path, capsys):
    C.save_npz(tmp_path / "a.npz", obj.params)
    C.save_npz(tmp_path / "b.npz", jax.tree.map(lambda a: 1.2 * a, obj.params))
    code = main(["compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), *MODEL, "--top",
                 "2", "--bottom", "2", "--density", "--out", str(tmp_path / "cmp"), "--quiet",
                 "--no-compile-cache"])
    assert code == 0
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert rows[0]["lambda_max"] != rows[1]["lambda_max"]
    assert (tmp_path / "cmp" / "compare.png").exists()
    assert (tmp_path / "cmp" / "compare_density.png").stat().st_size > 1000
    # the densities behind the overlay are the analysed ones: scaling every weight by 1.2
    # changes the spectrum, and each negative fraction is read off its own density
    stored = [json.loads((tmp_path / "cmp" / "checkpoints" / f"{n}.json").read_text())["result"]
              for n in "ab"]
    for row, res in zip(rows, stored):
        dens = ht.SpectralDensity.from_dict(res["density"])
        assert row["negative_fraction"] == pytest.approx(ht.negative_count(dens).fraction)
        assert dens.lambda_max <= row["lambda_max"] * (1 + 1e-6)


def test_find_checkpoints_orders_by_step(tmp_path):
    for name in ("ckpt_100.npz", "ckpt_20.npz", "ckpt_3.npz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in C.find_checkpoints(tmp_path)] == ["ckpt_3.npz", "ckpt_20.npz",
                                                              "ckpt_100.npz"]
    with pytest.raises(C.CheckpointError, match="no checkpoints found"):
        C.find_checkpoints(tmp_path / "empty") if (tmp_path / "empty").mkdir() is None else None


def test_batch_progress_plans_in_matvecs_and_learns_from_finished_checkpoints():
    from hessian_tools.cli.runs import BatchProgress, planned_matvecs
    config = AnalysisConfig(top=5, bottom=0, trace=True, trace_matvecs=60)
    first_guess = planned_matvecs(config)
    assert first_guess > 60
    bars = BatchProgress(3, config)
    try:
        assert bars.overall.total == 3 * first_guess
        observe = bars.start("step_1")
        for n in (1, 10, 40):
            observe(n)
        assert bars.overall.n == 40 and bars.current.n == 40
        bars.finish(40)                    # the plan becomes the last checkpoint's count
        assert bars.overall.total == 40 + 2 * 40 and bars.overall.n == 40
        bars.start("step_2")
        bars.finish(None)                  # failed or skipped: nothing done, one fewer left
        assert bars.overall.total == 40 + 1 * 40
    finally:
        bars.close()


def test_analyze_reports_every_matvec_to_the_observer(obj):
    seen = []
    result = analyze(obj, AnalysisConfig(top=2, bottom=0, trace=True, trace_matvecs=9),
                     on_matvec=seen.append)
    assert seen == sorted(seen) and seen[-1] == result["num_matvecs"] > 9


def test_resume_refuses_a_result_computed_with_other_settings(obj, tmp_path, capsys):
    C.save_npz(tmp_path / "run" / "step_1.npz", obj.params)
    out = tmp_path / "out"
    args = [str(tmp_path / "run"), *MODEL, "--bottom", "0", "--out", str(out)]
    assert _cli([*args, "--top", "1"], capsys)[0] == 0
    before = (out / "checkpoints" / "step_1.json").read_text()
    code, err = _cli([*args, "--top", "2"], capsys)
    assert code == 1 and "different settings (top: 1 -> 2)" in err and "--overwrite" in err
    assert (out / "checkpoints" / "step_1.json").read_text() == before   # nothing overwritten


def test_precision_is_applied_recorded_and_guards_resume(obj, tmp_path, capsys):
    C.save_npz(tmp_path / "run" / "step_1.npz", obj.params)
    out = tmp_path / "out"
    args = [str(tmp_path / "run"), *MODEL, "--top", "1", "--bottom", "0", "--out", str(out)]
    assert _cli([*args, "--precision", "default"], capsys)[0] == 0
    stored = json.loads((out / "checkpoints" / "step_1.json").read_text())
    assert stored["config"]["precision"] == stored["result"]["analysed"]["precision"] == "default"
    code, err = _cli(args, capsys)                     # the objective's own: highest
    assert code == 1 and "precision: 'default' -> 'highest'" in err


def test_reports_get_ordinary_file_permissions(tmp_path):
    from hessian_tools.files import write_json
    mask = os.umask(0o022)
    try:
        path = write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644 and json.loads(path.read_text()) == {"a": 1}
