"""The files a run writes besides its per-checkpoint results: the table, the Markdown and
HTML reports and the figures.

HTML is rendered by Jinja2 with autoescaping: checkpoint names and error messages come
from the user's file system and are never trusted as markup.
"""

from __future__ import annotations

import base64
from pathlib import Path

import jinja2
import matplotlib.pyplot as plt
import numpy as np

from hessian_tools.checkpoints import step_of
from hessian_tools.files import atomic_write_text, save_figure
from hessian_tools.plots import plot_densities, plot_density, plot_eigenvalues
from hessian_tools.results import Eigenpairs, SpectralDensity

__all__ = ["row", "table", "write_reports", "plot_records", "QUANTITIES"]

#: Per-checkpoint numbers of a run: (row key, column title, trajectory-plot label).
QUANTITIES = (("lambda_max", "λ_max", "λ_max (largest eigenvalue)"),
              ("lambda_min", "λ_min", "λ_min (smallest eigenvalue)"),
              ("trace", "trace", "trace (Hutch++)"),
              ("negative_fraction", "negative (λ<−τ)", "fraction of eigenvalues below −τ"))


def row(rec) -> dict:
    """One checkpoint's numbers for the tables and the summary."""
    r = rec.result or {}
    tr = r.get("trace") or {}
    return {"checkpoint": rec.path, "name": rec.name,
            "step": step_of(rec.path) if rec.path else None, "status": rec.status,
            "loss": r.get("loss"), "grad_norm": r.get("grad_norm"),
            "lambda_max": r.get("lambda_max"), "lambda_min": r.get("lambda_min"),
            "trace": tr.get("value"), "negative_fraction": r.get("negative_fraction"),
            "tau": r.get("tau"), "num_matvecs": r.get("num_matvecs"),
            "converged": r.get("converged"), "error": rec.error,
            "layers": {k: {"lambda_max": v.get("lambda_max"), "lambda_min": v.get("lambda_min"),
                           "num_params": v.get("num_params")}
                       for k, v in (r.get("layers") or {}).items()}}


def _fmt(x, spec=".4g"):
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if spec == "s" or not isinstance(x, (int, float)):
        return str(x)
    return format(x, spec)


def _columns(rows):
    shown = [q for q in QUANTITIES if any(r[q[0]] is not None for r in rows)]
    return ([("name", "checkpoint", "s"), ("step", "step", "s"), ("loss", "loss", ".4g"),
             ("grad_norm", "‖g‖", ".2e")]
            + [(key, title, ".2%" if key == "negative_fraction" else ".4g")
               for key, title, _ in shown]
            + [("num_matvecs", "matvecs", "s"), ("converged", "converged", "s"),
               ("status", "status", "s")])


def table(rows) -> str:
    """A Markdown table: one row per checkpoint, and one per layer of each with ``--layers``."""
    cols = _columns(rows)
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[k], f) for k, _, f in cols) + " |")
        for path, layer in r["layers"].items():
            cells = {**{k: None for k, _, _ in cols}, "name": f"  └ {path}",
                     "lambda_max": layer["lambda_max"], "lambda_min": layer["lambda_min"]}
            lines.append("| " + " | ".join(_fmt(cells[k], f) for k, _, f in cols) + " |")
    tau = [r["tau"] for r in rows if r.get("tau") is not None]
    if tau:
        lines.append("")
        lines.append(f"Negative eigenvalues are those below −τ, τ = 1% of max|λ| of each "
                     f"checkpoint (here {min(tau):.3g} to {max(tau):.3g}).")
    return "\n".join(lines)


_HTML = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}.bad{color:#b00}</style>
<h1>{{ title }}</h1>
<p>{{ what }}</p>
<table><tr>{% for c in cols %}<th>{{ c[1] }}</th>{% endfor %}</tr>
{% for r in rows %}<tr>{% for c in cols %}<td>{{ fmt(r[c[0]], c[2]) }}</td>{% endfor %}</tr>
{% for path, layer in r.layers.items() %}<tr><td>&nbsp;└ {{ path }}</td>
{% for c in cols[1:] %}<td>{{ fmt(layer.get(c[0]), c[2]) }}</td>{% endfor %}</tr>{% endfor %}
{% endfor %}</table>
{% if failed %}<h2>Failed</h2><ul>{% for f in failed %}
<li class="bad"><code>{{ f.path }}</code>: {{ f.error }}</li>{% endfor %}</ul>{% endif %}
{% for name, data in images %}<figure><img src="data:image/png;base64,{{ data }}">
<figcaption>{{ name }}</figcaption></figure>{% endfor %}
""")


def write_reports(out: Path, rows, images: dict, failed, *, title: str, what: str) -> None:
    """``report.md`` and a self-contained ``report.html`` (figures inlined, all text escaped)."""
    md = [f"# {title}", "", what, "", table(rows), ""]
    if failed:
        md += ["## Failed", ""] + [f"- `{r.path}`: {r.error}" for r in failed] + [""]
    md += [f"![{name}]({Path(p).relative_to(out)})" for name, p in images.items()]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    inlined = [(name, base64.b64encode(Path(p).read_bytes()).decode())
               for name, p in images.items()]
    atomic_write_text(out / "report.html", _HTML.render(
        title=title, what=what, cols=_columns(rows), rows=rows, failed=failed, images=inlined,
        fmt=_fmt))


# ---- figures ---------------------------------------------------------------------------------

def plot_records(records, out: Path) -> dict:
    """Every figure of a run: per checkpoint its extreme eigenvalues (and density), and for
    several checkpoints the trajectory of each computed quantity and the densities overlaid.
    Returns ``{caption: path}``."""
    images = {}
    ok = [r for r in records if r.result and r.result.get("eigenvalues")]
    for rec in ok:
        images[f"{rec.name}: extreme eigenvalues"] = _eigen_figure(rec, out)
        if rec.result.get("density"):
            images[f"{rec.name}: density"] = _density_figure(rec, out)
    if len(ok) > 1:
        images["trajectory"] = _trajectory_figure(ok, out / "trajectory.png")
        dens = [r for r in ok if r.result.get("density")]
        if len(dens) > 1:
            images["densities along the run"] = _densities_figure(dens, out / "densities.png")
    return images


def _eigen_figure(rec, out):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for d in rec.result["eigenvalues"]:
        plot_eigenvalues(Eigenpairs.from_dict(d), ax=ax, color="C0", tau=record_tau(rec))
    ax.set_title(f"{rec.name}: extreme {rec.result['analysed']['operator']} eigenvalues")
    path = save_figure(fig, out / "checkpoints" / f"{rec.name}.png")
    plt.close(fig)
    return path


def record_tau(rec) -> float | None:
    """The zero band of a checkpoint's result: its ``tau``, else 1% of its largest
    ``|lambda|`` over all the eigenvalues found (the default rule)."""
    if rec.result.get("tau") is not None:
        return float(rec.result["tau"])
    values = [abs(v) for d in rec.result.get("eigenvalues", []) for v in d["values"]]
    return 1e-2 * max(values) if values and max(values) > 0 else None


def _density_figure(rec, out):
    dens = SpectralDensity.from_dict(rec.result["density"])
    ax = plot_density(dens, tau=rec.result.get("tau"))
    ax.set_title(f"{rec.name}: eigenvalue density ({dens.num_probes} probes x "
                 f"{dens.num_steps} steps)")
    path = save_figure(ax.figure, out / "checkpoints" / f"{rec.name}.density.png")
    plt.close(ax.figure)
    return path


def _steps(recs):
    steps = [step_of(r.path) for r in recs]
    if all(s is not None for s in steps) and len(set(steps)) == len(steps):
        return steps, "step"
    return list(range(len(recs))), "checkpoint (in order)"


def _trajectory_figure(recs, path):
    rows = [row(r) for r in recs]
    shown = [q for q in QUANTITIES if any(r[q[0]] is not None for r in rows)]
    xs, xlabel = _steps(recs)
    fig, axes = plt.subplots(len(shown), 1, figsize=(7, 2.2 * len(shown) + 0.6), sharex=True,
                             squeeze=False)
    for ax, (key, _, label) in zip(axes[:, 0], shown):
        ys = np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)
        ax.plot(xs, ys, "o-", ms=4)
        ax.set_ylabel(label, fontsize=9)
        if key == "negative_fraction":
            ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.2g}%"))
        elif np.all(ys[np.isfinite(ys)] > 0) and np.nanmax(ys) > 30 * np.nanmin(ys):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(xlabel)
    if xlabel != "step":
        axes[-1, 0].set_xticks(xs, [r.name for r in recs], rotation=30, ha="right", fontsize=8)
    fig.suptitle("curvature along the run", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def _densities_figure(recs, path):
    dens = [SpectralDensity.from_dict(r.result["density"]) for r in recs]
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(dens)))
    ax = plot_densities(dens, labels=[r.name for r in recs], colors=list(colors))
    ax.set_title("eigenvalue densities along the run (dark: first)")
    save_figure(ax.figure, path)
    plt.close(ax.figure)
    return path
