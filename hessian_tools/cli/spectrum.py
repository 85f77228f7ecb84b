"""The ``spectrum`` and ``compare`` subcommands: checkpoints in, JSON, plots and a report out."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt

from hessian_tools._progress import interactive
from hessian_tools.checkpoints import CheckpointError, find_checkpoints
from hessian_tools.cli.reports import plot_records, record_tau, row, table, write_reports
from hessian_tools.cli._common import (UserError, add_model_flags, add_output_flags,
                                       check_output_folder, nonnegative_int, objective_from_args,
                                       positive_float, positive_int, speaker, versions,
                                       writes_files)
from hessian_tools.cli.runs import (OPERATORS, AnalysisConfig, AnalysisError, BatchProgress,
                                    CheckpointResult, OutputLock, analyze, run_checkpoints, stored_result)
from hessian_tools.files import save_figure, write_json
from hessian_tools.plots import plot_densities, plot_eigenvalues
from hessian_tools.results import Eigenpairs, SpectralDensity

__all__ = ["add_parsers", "run_spectrum", "run_compare", "EXIT_CODES"]

EXIT_CODES = {0: "every checkpoint analysed, every eigenvalue converged",
              1: "some checkpoints failed (the others were analysed and written)",
              2: "a usage error: nothing was analysed",
              3: "some eigenvalues did not converge (see the table; --allow-unconverged "
                 "makes this 0)"}


def add_parsers(sub, formatter) -> None:
    spec = sub.add_parser("spectrum", formatter_class=formatter,
                          help="Hessian spectra of checkpoints (files, or a run directory)",
                          description="Extreme eigenvalues (and optionally trace, density and "
                          "per-layer spectra) of each checkpoint; one JSON per checkpoint under "
                          "checkpoints/, plots and a report. Re-running reuses results computed "
                          "from the same checkpoint with the same settings.")
    spec.add_argument("checkpoints", nargs="*", help="checkpoint files or directories (orbax, "
                      ".msgpack, .npz, .safetensors); a directory of step checkpoints is "
                      "processed in step order. None: the model's own weights")
    _flags(spec)
    spec.add_argument("--every", type=positive_int, default=1, help="take every N-th "
                      "checkpoint of a run directory (the last is always included)")
    spec.set_defaults(func=run_spectrum)
    cmp = sub.add_parser("compare", formatter_class=formatter,
                         help="two checkpoints' spectra (and densities) overlaid")
    cmp.add_argument("checkpoints", nargs=2, metavar="CKPT", help="the two checkpoints")
    _flags(cmp)
    cmp.set_defaults(func=run_compare, every=1)


def _flags(p) -> None:
    add_model_flags(p, example=None)
    add_output_flags(p, out="hessian_tools_out/spectrum")
    p.add_argument("--operator", choices=sorted(OPERATORS), default="hessian",
                   help="the curvature operator: the Hessian, the generalised Gauss-Newton "
                   "or the empirical Fisher")
    p.add_argument("--top", type=nonnegative_int, default=5, help="largest eigenvalues")
    p.add_argument("--bottom", type=nonnegative_int, default=5, help="smallest eigenvalues")
    p.add_argument("--tol", type=positive_float, default=None, help="relative residual "
                   "tolerance, below 1 (default 1e-4 in float32, 1e-8 in float64)")
    p.add_argument("--layers", nargs="+", metavar="PATH", default=(),
                   help="also the spectrum of each parameter block (a path prefix such as "
                   "layers/0): one row per block")
    p.add_argument("--density", action="store_true", help="also estimate the spectral density "
                   "(SLQ) and the fraction of eigenvalues below -tau")
    p.add_argument("--probes", type=positive_int, default=10, help="SLQ probe vectors")
    p.add_argument("--lanczos-steps", type=positive_int, default=80, help="Lanczos steps per "
                   "SLQ probe")
    p.add_argument("--trace", action="store_true", help="also estimate the trace (Hutch++)")
    p.add_argument("--trace-matvecs", type=positive_int, default=60, help="products for the "
                   "trace (at least 4)")
    p.add_argument("--allow-unconverged", action="store_true", help="exit 0 even when some "
                   "eigenvalues did not reach the tolerance (they are flagged either way)")
    p.add_argument("--no-determinism-check", action="store_true", help="skip the 2-product "
                   "check that the loss and data are deterministic")


def _config(args, obj) -> AnalysisConfig:
    if args.top + args.bottom == 0:
        raise UserError("--top and --bottom are both 0: ask for at least one eigenvalue.")
    if args.tol is not None and not args.tol < 1:
        raise UserError(f"--tol {args.tol} must be below 1 (a residual relative to the largest "
                        "eigenvalue, e.g. 1e-4).")
    if args.trace and args.trace_matvecs < 4:
        raise UserError(f"--trace-matvecs {args.trace_matvecs}: Hutch++ needs at least 4.")
    wanted = max(args.top, args.bottom) * (2 if args.top and args.bottom else 1)
    if wanted > obj.num_params:
        raise UserError(f"--top {args.top} --bottom {args.bottom} asks for more eigenvalues "
                        f"than the model's {obj.num_params} parameters.")
    if args.density and args.lanczos_steps > obj.num_params:
        raise UserError(f"--lanczos-steps {args.lanczos_steps} exceeds the model's "
                        f"{obj.num_params} parameters: pass --lanczos-steps {obj.num_params} "
                        "or fewer.")
    return AnalysisConfig(
        top=args.top, bottom=args.bottom, tol=args.tol, density=args.density,
        trace=args.trace, seed=args.seed, num_probes=args.probes, num_steps=args.lanczos_steps,
        trace_matvecs=args.trace_matvecs, precision=obj.precision, operator=args.operator,
        layers=tuple(args.layers), dtype=args.dtype, bn_mode=obj.bn_mode,
        num_examples=args.num_examples, check_determinism=not args.no_determinism_check)


def _paths(args) -> list[Path]:
    paths = []
    for item in args.checkpoints:
        try:
            with warnings.catch_warnings(record=True) as notes:
                warnings.simplefilter("always", UserWarning)
                found = find_checkpoints(item)
            for note in notes:             # e.g. a folder of the run holding no checkpoint
                if not args.quiet:
                    print(f"note: {note.message}", file=sys.stderr)
        except CheckpointError as err:
            if len(args.checkpoints) == 1:
                raise UserError(str(err)) from None
            print(f"error: {err}", file=sys.stderr)
            paths.append(Path(item))     # reported as failed in the summary
            continue
        if Path(item).is_dir() and len(found) > 1:
            keep = found[::args.every]
            found = keep if keep[-1] == found[-1] else keep + [found[-1]]
        paths += found
    return paths


def _what(args, obj, name, config) -> str:
    d = obj.describe()
    return (f"Model: {name}, {d['num_params']:,} parameters, {d['num_examples']} examples, "
            f"{d['dtype']}, BatchNorm {d['bn_mode'] or 'n/a'}, operator {config.operator}. "
            "Negative eigenvalues: below −τ with τ = 1% of max|λ| (ht.default_threshold).")


def _output(args):
    """``(out, lock, write)``: the output folder, its lock and whether this process writes.
    Under ``jax.distributed`` only process 0 writes files and prints; the others compute
    alike, read ``--out`` only to reuse stored results as process 0 does, and print nothing
    but errors (stderr)."""
    if writes_files():
        out = check_output_folder(Path(args.out))
        return out, OutputLock(out), True
    args.quiet, args.json = True, False
    return Path(args.out), contextlib.nullcontext(), False


def run_spectrum(args) -> int:
    obj, name = objective_from_args(args)
    config = _config(args, obj)
    out, lock, write = _output(args)
    say = speaker(args)
    start = time.perf_counter()
    with lock:
        if not args.checkpoints:
            records = [_own_weights(obj, config, out, args, say, write)]
        else:
            records = _run(obj, config, out, args, say, write)
        code = _summarise(records, out, args, time.perf_counter() - start, say,
                          _what(args, obj, name, config), write)
    return code


def _own_weights(obj, config, out, args, say, write=True):
    """The model's own weights: analysed and written like a checkpoint named ``model``."""
    target = out / "checkpoints" / "model.json"
    rec = CheckpointResult("model", "model", "done", output=str(target))
    if target.exists() and not args.overwrite:
        result, error, _ = stored_result(target, config)
        if error is None:
            say(f"{target} exists: showing it (pass --overwrite to recompute)")
            rec.status, rec.result = "skipped", result
            return rec
    bars = BatchProgress(1, config) if _interactive(args) else None
    try:
        rec.result = analyze(obj, config, on_matvec=bars and bars.start("model"))
    except AnalysisError as err:        # a non-finite loss: one line, named, exit 1
        rec.status, rec.error = "failed", f"the model's own weights: {err}"
        print(f"error: {rec.error}", file=sys.stderr)
        return rec
    finally:
        if bars is not None:
            bars.close()
    if write:
        write_json(target, {"checkpoint": None, "model": args.model or args.example,
                            "config": config.to_dict(), "result": rec.result,
                            "versions": versions()})
    return rec


def _interactive(args) -> bool:
    return not (args.quiet or args.json) and interactive()


def _run(obj, config, out, args, say, write=True):
    paths = _paths(args)
    progress = _interactive(args)

    def done(rec):
        if rec.status == "failed":       # errors are reported even with --quiet/--json
            print(f"error: {rec.path}: {(rec.error or '').removeprefix(f'{rec.path}: ')}",
                  file=sys.stderr)
        elif not progress:               # with bars, the overall bar says it
            say(f"[{'ok' if rec.status == 'done' else 'exists, skipped'}] {rec.path}")
    return run_checkpoints(obj, paths, out, config, overwrite=args.overwrite,
                           progress=progress, on_done=done, extra={"versions": versions()},
                           write=write)


def _summarise(records, out: Path, args, wall, say, what, write=True) -> int:
    rows = [row(r) for r in records]
    failed = [r for r in records if r.status == "failed"]
    unconverged = [r for r in rows if r["converged"] is False]
    code = 1 if failed else 3 if unconverged and not args.allow_unconverged else 0
    if not write:
        return code
    summary = {"command": " ".join(sys.argv), "what": what, "rows": rows,
               "num_failed": len(failed), "num_unconverged": len(unconverged),
               "failed": [{"checkpoint": r.path, "error": r.error} for r in failed],
               "wall_time": wall, "versions": versions()}
    write_json(out / "summary.json", summary)
    images = plot_records(records, out)
    write_reports(out, rows, images, failed, title="Hessian spectra", what=what)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        say(table(rows))
        say(f"wrote {out}/summary.json, report.md and report.html ({wall:.1f} s)")
    if unconverged:
        print(f"warning: {len(unconverged)} checkpoint(s) have eigenvalues that did not reach "
              "the tolerance (converged = NO in the table): "
              + ", ".join(r["name"] for r in unconverged), file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(records)} checkpoints failed: "
              + ", ".join(r.path for r in failed), file=sys.stderr)
    return code


def run_compare(args) -> int:
    obj, name = objective_from_args(args)
    config = _config(args, obj)
    out, lock, write = _output(args)
    say = speaker(args)
    with lock:
        records = run_checkpoints(obj, _paths(args), out, config, overwrite=args.overwrite,
                                  progress=_interactive(args), extra={"versions": versions()},
                                  write=write)
        failed = [r for r in records if r.status == "failed"]
        for r in failed:
            print(f"error: {r.path}: {r.error}", file=sys.stderr)
        if failed:
            return 1
        if not write:
            return 0
        written = _compare_figures(records, out, config)
        rows = [row(r) for r in records]
        write_json(out / "compare.json", {"rows": rows, "what": _what(args, obj, name, config),
                                          "versions": versions()})
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
    else:
        say(table(rows))
        say(f"wrote {', '.join(str(out / w) for w in written + ['compare.json'])}")
    return 0


def _compare_figures(records, out, config) -> list:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    taus = [t for t in map(record_tau, records) if t is not None]
    for i, rec in enumerate(records):      # one zero band for both: the larger tau
        for j, d in enumerate(rec.result["eigenvalues"]):
            plot_eigenvalues(Eigenpairs.from_dict(d), ax=ax, color=f"C{i}",
                             label=rec.name if j == 0 else None, tau=max(taus, default=None))
    ax.legend(fontsize=8)
    ax.set_title("extreme eigenvalues: " + " vs ".join(r.name for r in records), fontsize=10)
    save_figure(fig, out / "compare.png")
    plt.close(fig)
    written = ["compare.png"]
    if config.density:
        dens = [SpectralDensity.from_dict(r.result["density"]) for r in records]
        ax = plot_densities(dens, labels=[r.name for r in records])
        save_figure(ax.figure, out / "compare_density.png")
        plt.close(ax.figure)
        written.append("compare_density.png")
    return written
