"""The ``spectrum`` and ``compare`` subcommands: checkpoints in, JSON + plots + a report out."""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
import time
from pathlib import Path

EXAMPLES = {"digits-mlp": "mlp-small", "digits-mlp-tiny": "mlp-tiny",
            "digits-mlp-wide": "mlp-wide", "digits-cnn": "cnn"}


class UserError(Exception):
    """A mistake in the command line or the inputs: reported without a traceback."""


def add_parsers(sub, formatter) -> None:
    spec = sub.add_parser("spectrum", formatter_class=formatter,
                          help="Hessian spectra of checkpoints (files, or a run directory)",
                          description="Extreme Hessian eigenvalues (and optionally trace and "
                          "density) of each checkpoint; one JSON per checkpoint, plots and a "
                          "summary report. Re-running skips checkpoints whose results exist.")
    spec.add_argument("checkpoints", nargs="*", help="checkpoint files or directories (orbax, "
                      ".msgpack, .npz, .safetensors); a directory of step checkpoints is "
                      "processed in step order")
    _common(spec)
    spec.add_argument("--every", type=int, default=1, help="take every N-th checkpoint of a run")
    spec.set_defaults(func=run_spectrum)
    cmp = sub.add_parser("compare", formatter_class=formatter,
                         help="two checkpoints' spectra (and densities) overlaid")
    cmp.add_argument("checkpoints", nargs=2, metavar="CKPT", help="the two checkpoints")
    _common(cmp)
    cmp.set_defaults(func=run_compare, every=1)


def _common(p) -> None:
    p.add_argument("--model", help="'module:function' or 'file.py:function' returning a "
                   "hessian_tools.Objective or (nnx_model, loss_fn, data); the checkpoint's "
                   "parameters replace the model's")
    p.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments for --model")
    p.add_argument("--example", choices=sorted(EXAMPLES), help="use a built-in model (with no "
                   "checkpoints: its own cached trained weights)")
    p.add_argument("--top", type=int, default=5, help="largest eigenvalues")
    p.add_argument("--bottom", type=int, default=5, help="smallest eigenvalues")
    p.add_argument("--tol", type=float, default=None, help="relative residual tolerance "
                   "(default 1e-4 in float32, 1e-8 in float64)")
    p.add_argument("--density", action="store_true", help="also estimate the spectral density")
    p.add_argument("--trace", action="store_true", help="also estimate the trace (Hutch++)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="precision of the analysis")
    p.add_argument("--precision", choices=["highest", "high", "default"], default=None,
                   help="float32 matrix-product precision (default: the objective's own, "
                   "'highest' unless --model set it; 'default' is JAX's, TF32 on NVIDIA GPUs)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the stochastic solvers")
    p.add_argument("--out", default="hessian_tools_out/spectrum", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="recompute and replace existing "
                   "results (default: keep them and skip those checkpoints)")
    p.add_argument("--quiet", action="store_true", help="no progress or tables")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--no-compile-cache", action="store_true", help="do not use JAX's persistent "
                   "compilation cache (in ~/.cache/hessian_tools/jax, or $HESSIAN_TOOLS_CACHE)")


def _objective(args):
    import jax
    import jax.numpy as jnp

    from hessian_tools.batch import (ModelTargetError, load_model_target,
                                     parse_model_kwargs)
    if args.model and args.example:
        raise UserError("pass either --model or --example, not both.")
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if args.example:
        from hessian_tools.examples import digits
        obj = digits.digits_objective(EXAMPLES[args.example])
    elif args.model:
        try:
            obj = load_model_target(args.model, parse_model_kwargs(args.model_kwargs))
        except ModelTargetError as err:
            raise UserError(str(err)) from None
    else:
        raise UserError("say which model the checkpoints belong to: --model module:function, "
                        "or --example digits-mlp for the built-in one.")
    if args.precision is not None:
        obj = dataclasses.replace(obj, precision=args.precision)
    return obj.astype(jnp.float64) if args.dtype == "float64" else obj


def _config_and_objective(args):
    """The analysis settings and the objective; the settings record its precision, so that a
    result computed at another precision is not taken for this one's."""
    config = _config(args)
    obj = _objective(args)
    return dataclasses.replace(config, precision=obj.precision), obj


def _paths(args) -> list[Path]:
    from hessian_tools.checkpoints import CheckpointError, find_checkpoints
    paths = []
    for item in args.checkpoints:
        try:
            found = find_checkpoints(item)
        except CheckpointError as err:
            if len(args.checkpoints) == 1:
                raise UserError(str(err)) from None
            print(f"error: {err}", file=sys.stderr)
            paths.append(Path(item))     # reported as failed in the summary
            continue
        paths += found[::args.every] if Path(item).is_dir() else found
    return paths


def _config(args):
    from hessian_tools.batch import AnalysisConfig
    if args.top < 0 or args.bottom < 0 or args.top + args.bottom == 0:
        raise UserError("--top and --bottom must be >= 0, and not both 0.")
    return AnalysisConfig(top=args.top, bottom=args.bottom, tol=args.tol, density=args.density,
                          trace=args.trace, seed=args.seed)


def run_spectrum(args) -> int:
    from hessian_tools.batch import BatchProgress, analyze, run_checkpoints, stored_result
    from hessian_tools.report import write_json
    config, obj = _config_and_objective(args)
    out = Path(args.out)
    interactive = not (args.quiet or args.json) and sys.stderr.isatty()
    say = (lambda *a: None) if args.quiet or args.json else print
    start = time.perf_counter()
    if not args.checkpoints:
        if not args.example:
            raise UserError("give checkpoint paths, or --example for the built-in model.")
        target = out / f"{args.example}.json"
        if target.exists() and not args.overwrite:
            result, error = stored_result(target, config)
            if error is not None:
                raise UserError(error)
            say(f"{target} exists: showing it (pass --overwrite to recompute)")
        else:
            bars = BatchProgress(1, config) if interactive else None
            try:
                result = analyze(obj, config, on_matvec=bars and bars.start(args.example))
            finally:
                if bars is not None:
                    bars.close()
            write_json(target, {"checkpoint": None, "example": args.example,
                                "config": dataclasses.asdict(config), "result": result,
                                "versions": _versions()})
        records = [_Record(args.example, args.example, "done", result, None, str(target))]
    else:
        paths = _paths(args)

        def done(rec):
            mark = {"done": "ok", "skipped": "exists, skipped", "failed": "FAILED"}[rec.status]
            error = (rec.error or "").removeprefix(f"{rec.path}: ")
            if rec.status == "failed":       # errors are reported even with --quiet/--json
                print(f"error: {rec.path}: {error}", file=sys.stderr)
            else:
                line = f"[{mark}] {rec.path}"
                if interactive:                  # above the progress bars, not through them
                    from tqdm.auto import tqdm
                    tqdm.write(line)
                else:
                    say(line)
        records = run_checkpoints(obj, paths, out, config, overwrite=args.overwrite,
                                  progress=interactive, on_done=done,
                                  extra={"versions": _versions()})
    return _summarise(records, out, args, time.perf_counter() - start, say)


@dataclasses.dataclass
class _Record:
    path: str
    name: str
    status: str
    result: dict | None
    error: str | None
    output: str | None


def _row(rec) -> dict:
    from hessian_tools.checkpoints import step_of
    r = rec.result or {}
    trace = r.get("trace") or {}
    return {"checkpoint": rec.path, "step": step_of(rec.path) if rec.path else None,
            "status": rec.status, "loss": r.get("loss"), "grad_norm": r.get("grad_norm"),
            "lambda_max": r.get("lambda_max"), "lambda_min": r.get("lambda_min"),
            "trace": trace.get("value"), "negative_fraction": r.get("negative_fraction"),
            "num_matvecs": r.get("num_matvecs"), "converged": r.get("converged"),
            "error": rec.error}


def _summarise(records, out: Path, args, wall, say) -> int:
    from hessian_tools.report import write_json
    rows = [_row(r) for r in records]
    failed = [r for r in records if r.status == "failed"]
    summary = {"command": " ".join(sys.argv), "rows": rows, "num_failed": len(failed),
               "failed": [{"checkpoint": r.path, "error": r.error} for r in failed],
               "wall_time": wall, "versions": _versions()}
    write_json(out / "summary.json", summary)
    images = _plots(records, out)
    _write_reports(out, rows, images, failed)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        say(_table(rows))
        say(f"wrote {out}/summary.json, report.md and report.html ({wall:.1f} s)")
    if failed:
        print(f"{len(failed)} of {len(records)} checkpoints failed: "
              + ", ".join(r.path for r in failed), file=sys.stderr)
    return 1 if failed else 0


def _fmt(x, spec=".4g"):
    return "—" if x is None else (format(x, spec) if isinstance(x, (int, float)) else str(x))


def _table(rows) -> str:
    negative = any(r["negative_fraction"] is not None for r in rows)     # with --density
    head = ["checkpoint", "step", "loss", "‖g‖", "λ_max", "λ_min", "trace",
            *(["negative fraction"] if negative else []), "matvecs", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [Path(str(r["checkpoint"])).name, _fmt(r["step"]), _fmt(r["loss"]),
                 _fmt(r["grad_norm"], ".2e"), _fmt(r["lambda_max"]), _fmt(r["lambda_min"]),
                 _fmt(r["trace"])]
        if negative:
            cells.append(_fmt(r["negative_fraction"], ".2%"))
        lines.append("| " + " | ".join(cells + [_fmt(r["num_matvecs"]), r["status"]]) + " |")
    return "\n".join(lines)


def _plots(records, out: Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hessian_tools.plots import plot_eigenvalues
    from hessian_tools.report import save_figure
    from hessian_tools.results import Eigenpairs
    images = {}
    ok = [r for r in records if r.result and r.result.get("eigenvalues")]
    for rec in ok:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for d in rec.result["eigenvalues"]:
            plot_eigenvalues(Eigenpairs.from_dict(d), ax=ax, color="C0")
        ax.set_title(f"{rec.name}: extreme Hessian eigenvalues")
        images[f"{rec.name}.png"] = save_figure(fig, out / f"{rec.name}.png")
        plt.close(fig)
    if len(ok) > 1:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = [_row(r)["step"] if _row(r)["step"] is not None else i for i, r in enumerate(ok)]
        for key, label in (("lambda_max", "λ_max"), ("lambda_min", "λ_min")):
            ys = [r.result.get(key) for r in ok]
            if any(y is not None for y in ys):
                ax.plot(xs, ys, "o-", label=label)
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_xlabel("step")
        ax.set_ylabel("eigenvalue")
        ax.legend()
        ax.grid(alpha=0.3)
        ax.set_title("extreme Hessian eigenvalues along the run")
        images["trajectory.png"] = save_figure(fig, out / "trajectory.png")
        plt.close(fig)
    return images


def _write_reports(out: Path, rows, images: dict, failed) -> None:
    from hessian_tools.report import atomic_write_text
    md = ["# Hessian spectra", "", _table(rows), ""]
    if failed:
        md += ["## Failed", ""] + [f"- `{r.path}`: {r.error}" for r in failed] + [""]
    md += [f"![{name}]({name})" for name in images]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    imgs = "".join(f'<figure><img src="data:image/png;base64,'
                   f'{base64.b64encode(Path(p).read_bytes()).decode()}"><figcaption>{n}'
                   f"</figcaption></figure>" for n, p in images.items())
    table = "<table><tr>" + "".join(f"<th>{h}</th>" for h in rows[0]) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r.values()) + "</tr>" for r in rows
    ) + "</table>" if rows else ""
    html = ("<!doctype html><meta charset='utf-8'><title>Hessian spectra</title><style>"
            "body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:"
            "collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}</style>"
            f"<h1>Hessian spectra</h1>{table}{imgs}")
    atomic_write_text(out / "report.html", html)


def run_compare(args) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import hessian_tools as ht
    from hessian_tools.batch import run_checkpoints
    from hessian_tools.report import save_figure, write_json
    from hessian_tools.results import Eigenpairs
    config, obj = _config_and_objective(args)
    out = Path(args.out)
    say = (lambda *a: None) if args.quiet or args.json else print
    paths = _paths(args)
    interactive = not (args.quiet or args.json) and sys.stderr.isatty()
    records = run_checkpoints(obj, paths, out, config, overwrite=args.overwrite,
                              progress=interactive, extra={"versions": _versions()})
    failed = [r for r in records if r.status == "failed"]
    for r in failed:
        print(f"error: {r.path}: {r.error}", file=sys.stderr)
    if failed:
        return 1
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, rec in enumerate(records):
        for d in rec.result["eigenvalues"]:
            ht.plot_eigenvalues(Eigenpairs.from_dict(d), ax=ax, color=f"C{i}",
                                label=rec.name if d is rec.result["eigenvalues"][0] else None)
    ax.legend()
    ax.set_title("extreme Hessian eigenvalues: " + " vs ".join(r.name for r in records))
    save_figure(fig, out / "compare.png")
    plt.close(fig)
    written = ["compare.png", "compare.json"]
    if config.density:
        dens = [ht.SpectralDensity.from_dict(r.result["density"]) for r in records]
        ax = ht.plot_densities(dens, labels=[r.name for r in records])
        save_figure(ax.figure, out / "compare_density.png")
        plt.close(ax.figure)
        written.append("compare_density.png")
    rows = [_row(r) for r in records]
    write_json(out / "compare.json", {"rows": rows, "versions": _versions()})
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
    else:
        say(_table(rows))
        say(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0


def _versions() -> dict:
    import flax
    import jax

    import hessian_tools
    return {"hessian_tools": hessian_tools.__version__, "jax": jax.__version__,
            "flax": flax.__version__, "backend": jax.default_backend()}
