"""What every gallery entry declares (:class:`Entry`) and returns (:class:`Report`)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from hessian_tools.files import atomic_write_text, save_figure, write_json
from hessian_tools.results._base import jsonable

__all__ = ["Entry", "Report", "Row", "ReportExists"]


class ReportExists(FileExistsError):
    """The output folder already holds a gallery report; nothing was written."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Row:
    """One quantity the paper reports, ours beside the paper's.

    Attributes:
      quantity: what is compared, in words (``"barrier after alignment, width 256"``).
      ours: our figure, as measured by this run (a number or a short text).
      paper: the paper's figure, with its table or figure number (``"~0 (Fig. 3)"``), or
        ``"-"`` where the paper gives none.
    """

    quantity: str
    ours: float | int | str
    paper: str

    def to_dict(self) -> dict:
        return {"quantity": self.quantity, "ours": jsonable(self.ours), "paper": self.paper}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Report:
    """What one run of a gallery entry found.

    Attributes:
      name: the entry's name (``hessian-tools gallery NAME``).
      title: the paper and its claim in a few words.
      config: ``"small"`` (the test configuration) or ``"full"`` (the notebook's figures).
      seed: the PRNG seed everything random was drawn from.
      rows: our figures beside the paper's.
      verdict: one paragraph: where ours and the paper's agree, where not, and why.
      figures: matplotlib figures by file stem (``"barrier"`` is written as ``barrier.png``).
      numbers: every number the run measured, by name (JSON-ready), for scripts.
      wall_time: seconds the run took.
    """

    name: str
    title: str
    config: str
    seed: int
    rows: tuple[Row, ...]
    verdict: str
    figures: Mapping[str, object] = dataclasses.field(default_factory=dict)
    numbers: Mapping[str, object] = dataclasses.field(default_factory=dict)
    wall_time: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready: the figures by file name, everything else as it is."""
        return {"name": self.name, "title": self.title, "config": self.config,
                "seed": self.seed, "rows": [r.to_dict() for r in self.rows],
                "verdict": self.verdict, "figures": [f"{k}.png" for k in self.figures],
                "numbers": jsonable(dict(self.numbers)), "wall_time": self.wall_time}

    def to_markdown(self) -> str:
        """The report as Markdown: title, the table of ours against the paper's, the verdict,
        the figures."""
        def cell(v):
            return f"{v:.4g}" if isinstance(v, float) else str(v)
        lines = [f"# {self.title}", "",
                 f"`hessian-tools gallery {self.name}`, {self.config} configuration, seed "
                 f"{self.seed}, {self.wall_time:.0f} s.", "",
                 "| quantity | ours | paper |", "|---|---|---|"]
        lines += [f"| {r.quantity} | {cell(r.ours)} | {r.paper} |" for r in self.rows]
        lines += ["", self.verdict, ""]
        lines += [f"![{k}]({k}.png)" for k in self.figures]
        return "\n".join(lines) + "\n"

    def write(self, out, *, overwrite: bool = False) -> list[Path]:
        """Write ``report.md``, ``report.json`` and one PNG per figure into the folder ``out``.

        Files are written atomically. A folder that already holds a ``report.json`` is left
        as it is unless ``overwrite`` is true.

        Returns:
          The paths written, the report last.

        Raises:
          ReportExists: ``out`` already holds a report and ``overwrite`` is false.
        """
        out = Path(out)
        old = out / "report.json"
        if old.exists() and not overwrite:
            try:
                was = json.loads(old.read_text()).get("name", "?")
            except (OSError, ValueError, AttributeError):
                was = "unreadable"
            raise ReportExists(
                f"{out} already holds a gallery report ({was}); it was kept. Choose another "
                "folder, or overwrite it (--overwrite, or overwrite=True).")
        paths = [save_figure(fig, out / f"{stem}.png") for stem, fig in self.figures.items()]
        paths.append(write_json(out / "report.json", self.to_dict()))
        paths.append(atomic_write_text(out / "report.md", self.to_markdown()))
        return paths


@dataclasses.dataclass(frozen=True, kw_only=True)
class Entry:
    """One reproduction: the paper, its claim, the notebook, and the function that runs it.

    Attributes:
      name: short name for the command line (``keskar``).
      title: the paper and its claim in a few words.
      citation: authors, year, title, venue.
      claim: the paper's claim and the figure or table it is in, in one or two sentences.
      notebook: the notebook that walks through the same code (file name in ``notebooks/``).
      run: ``run(*, small=False, seed=0, say=print) -> Report``; ``say`` receives one line per
        stage (progress), ``small`` picks the configuration the test suite runs.
      full_seconds: the full configuration's run time on a 2-core CPU (see
        ``benchmarks/RESULTS_science.md``), ``None`` until measured.
    """

    name: str
    title: str
    citation: str
    claim: str
    notebook: str
    run: Callable[..., Report]
    full_seconds: float | None = None

    def report(self, *, small: bool, seed: int, start: float, rows, verdict: str,
               figures: Mapping[str, object], numbers: Mapping[str, object]) -> Report:
        """The :class:`Report` of one run of this entry: its name and title, the
        configuration (``small`` or full), and the wall time since ``start`` (a
        ``time.perf_counter()`` reading taken when the run began)."""
        return Report(name=self.name, title=self.title, config="small" if small else "full",
                      seed=seed, rows=tuple(rows), verdict=verdict, figures=figures,
                      numbers=numbers, wall_time=time.perf_counter() - start)
