"""The gallery's registry, its report files and the ``gallery`` command (with a stand-in entry:
the real entries run in the suite through their notebooks)."""

import json

import matplotlib.pyplot as plt
import pytest

from hessian_tools import gallery
from hessian_tools.cli import main


def _fake_run(*, small=False, seed=0, say=print):
    say("one stage")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [seed, 1])
    return gallery.Report(
        name="fake", title="A fake result (Nobody 2026)", config="small" if small else "full",
        seed=seed, rows=(gallery.Row(quantity="answer", ours=42.0, paper="42 (Table 1)"),),
        verdict="They agree.", figures={"line": fig}, numbers={"answer": 42.0}, wall_time=0.1)


FAKE = gallery.Entry(name="fake", title="A fake result", citation="Nobody (2026)",
                     claim="42.", notebook="99_fake.ipynb", run=_fake_run, full_seconds=120)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(gallery, "ENTRIES", (FAKE,))


def test_every_entry_names_an_existing_notebook():
    from pathlib import Path
    notebooks = Path(__file__).parent.parent / "notebooks"
    names = [e.name for e in gallery.ENTRIES]
    assert len(set(names)) == len(names)
    for e in gallery.ENTRIES:
        assert (notebooks / e.notebook).exists(), e.notebook
        assert gallery.get(e.name) is e


def test_unknown_name_lists_the_entries(fake):
    with pytest.raises(ValueError, match="'nope'.*fake"):
        gallery.get("nope")


def test_report_is_written_and_kept(fake, tmp_path):
    report = FAKE.run(small=True, seed=3, say=lambda *a: None)
    paths = report.write(tmp_path)
    assert {p.name for p in paths} == {"line.png", "report.json", "report.md"}
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["rows"] == [{"quantity": "answer", "ours": 42.0, "paper": "42 (Table 1)"}]
    assert data["seed"] == 3 and data["config"] == "small" and data["figures"] == ["line.png"]
    assert "| answer | 42 | 42 (Table 1) |" in (tmp_path / "report.md").read_text()
    before = (tmp_path / "report.json").read_text()
    with pytest.raises(gallery.ReportExists, match="kept"):
        report.write(tmp_path)
    assert (tmp_path / "report.json").read_text() == before
    report.write(tmp_path, overwrite=True)


def test_cli_lists_and_runs(fake, tmp_path, capsys):
    assert main(["gallery"]) == 0
    listing = capsys.readouterr().out
    assert "fake" in listing and "notebooks/99_fake.ipynb" in listing and "~2 min" in listing
    assert main(["gallery", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "fake"
    out = tmp_path / "g"
    assert main(["gallery", "fake", "--small", "--seed", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "one stage" in text and "They agree." in text and "wrote 3 files" in text
    assert json.loads((out / "report.json").read_text())["seed"] == 5
    # a second run keeps the first report unless --overwrite
    assert main(["gallery", "fake", "--small", "--out", str(out)]) == 2
    assert "kept" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["seed"] == 5
    assert main(["gallery", "fake", "--small", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["seed"] == 0


def test_cli_unknown_name(fake, capsys):
    assert main(["gallery", "nope"]) == 2
    assert "fake" in capsys.readouterr().err


def test_a_real_entry_runs_from_the_command_line(tmp_path, capsys):
    """The notebooks run each entry's steps; this runs one entry's ``run`` end to end as
    ``hessian-tools gallery NAME --small`` does (keskar: the quickest, ~15 s)."""
    out = tmp_path / "keskar"
    assert main(["gallery", "keskar", "--small", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["name"] == "keskar" and report["config"] == "small"
    assert report["rows"] and report["verdict"] and report["figures"]
    for name in report["figures"] + ["report.md"]:
        assert (out / name).stat().st_size > 0, name
