"""The ``landscape`` and ``connect`` subcommands: loss surfaces, paths, barriers.

Examples::

    hessian-tools landscape                                  # built-in digits mlp-small
    hessian-tools landscape CKPT --model my_pkg:make --dims 2 --grid -1:1:51 --out DIR
    hessian-tools landscape --between A.npz B.npz --model ...      # the path and its barrier
    hessian-tools landscape --trajectory RUN_DIR --model ...       # PCA plane of a training run
    hessian-tools landscape CKPT --model ... --curvature           # |lambda_min/lambda_max| map
    hessian-tools connect A.npz B.npz --model ... --out DIR        # barrier before/after alignment

A surface is stored as it fills (``surface.npz``): run the same command again after an
interruption and only the missing points are computed. The directions are saved with it
(``directions.npz``) and reused by the next run in the same folder; ``--overwrite`` starts
over.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np

from hessian_tools.checkpoints import CheckpointError, find_checkpoints, restore
from hessian_tools.cli._common import (UserError, add_model_flags, add_output_flags,
                                       check_output_folder, objective_from_args, positive_int,
                                       speaker, versions)
from hessian_tools.files import save_figure, write_json
from hessian_tools.landscape import (accuracy, curvature_map, interpolate, load_directions,
                                     loss_surface, plot_curvature_map, plot_interpolation,
                                     plot_surface, plot_trajectory, random_directions,
                                     save_directions, trajectory_directions)
from hessian_tools.symmetry import connectivity, permutation_spec, plot_connectivity

__all__ = ["add_parsers", "grid_axis"]


def grid_axis(text: str) -> np.ndarray:
    """``START:STOP:NUM`` as ``numpy.linspace(START, STOP, NUM)`` (NUM >= 2, START < STOP)."""
    parts = text.split(":")
    try:
        start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r} is not START:STOP:NUM (e.g. -1:1:51)") \
            from None
    if not (np.isfinite(start) and np.isfinite(stop)) or start >= stop or num < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: need finite START < STOP and NUM >= 2")
    return np.linspace(start, stop, num)


def _points(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 2 (the two ends are included)")
    return value


def add_parsers(sub, formatter) -> None:
    """Register ``landscape`` and ``connect``."""
    p = sub.add_parser(
        "landscape", formatter_class=formatter,
        help="the loss around a point on a 1-D or 2-D grid of filter-normalised random "
        "directions (Li et al. 2018), the path between two checkpoints with its barrier, a "
        "training trajectory's plane, curvature maps")
    p.add_argument("checkpoint", nargs="?", help="the point at the centre (default: the "
                   "model's own weights)")
    add_model_flags(p, example="mlp-small")
    add_output_flags(p, out="hessian_tools_out/landscape")
    p.add_argument("--dims", type=int, choices=[1, 2], default=2, help="directions (1: a "
                   "curve, 2: a surface)")
    p.add_argument("--grid", type=grid_axis, default="-1:1:51", metavar="START:STOP:NUM",
                   help="the coordinates along each direction")
    p.add_argument("--normalization", choices=["filter", "layer", "none"], default="filter",
                   help="random directions rescaled per filter, per layer, or not")
    p.add_argument("--ignore", choices=["biasbn", "none"], default="biasbn", help="biasbn: "
                   "zero the directions' 1-D leaves (biases, normalisation scales)")
    p.add_argument("--directions", metavar="FILE", help="directions saved by an earlier run "
                   "(directions.npz); default: drawn from --seed, or the folder's own")
    p.add_argument("--accuracy", action="store_true", help="also the accuracy (argmax of the "
                   "outputs against integer labels, batch[1])")
    p.add_argument("--between", nargs=2, metavar=("A", "B"), help="the loss along the "
                   "straight line from checkpoint A to B and its barrier, instead of a surface")
    p.add_argument("--num-points", type=_points, default=25, help="points on a --between path")
    p.add_argument("--trajectory", metavar="RUN_DIR", help="a training run's checkpoints: the "
                   "surface in the plane of their two principal directions around the last "
                   "one, with the path drawn over it")
    p.add_argument("--curvature", action="store_true", help="also the extreme Hessian "
                   "eigenvalues and |lambda_min/lambda_max| on a coarser grid")
    p.add_argument("--curvature-grid", type=grid_axis, default="-1:1:11",
                   metavar="START:STOP:NUM", help="the grid of --curvature")
    p.set_defaults(func=run_landscape)

    c = sub.add_parser(
        "connect", formatter_class=formatter,
        help="are two trained networks in one basin? the barrier on the straight path "
        "before and after aligning B's hidden units to A's (Git Re-Basin), and the "
        "curvature along both paths")
    c.add_argument("a", help="network A's checkpoint")
    c.add_argument("b", help="network B's checkpoint (same architecture)")
    add_model_flags(c, example=None)
    add_output_flags(c, out="hessian_tools_out/connect")
    c.add_argument("--method", choices=["weights", "activations"], default="weights",
                   help="weight matching (no data) or activation matching (the model's data)")
    c.add_argument("--num-points", type=_points, default=25, help="points on each path")
    c.add_argument("--curvature-points", type=int, default=5, help="points of each path at "
                   "which lambda_max, lambda_min and tr(H) are measured (0: none)")
    c.add_argument("--accuracy", action="store_true", help="also the accuracy along the paths")
    c.set_defaults(func=run_connect)


def _restore(obj, path):
    try:
        return restore(obj, path).objective
    except CheckpointError as err:
        raise UserError(str(err)) from None


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """A finished result is never replaced silently: ``--overwrite`` says so."""
    done = [p for p in paths if p.exists()]
    if done and not overwrite:
        raise UserError(f"{done[0]} exists (a finished run in this folder): pass --overwrite "
                        "to replace it, or choose another --out.")


def _figure(out: Path, name: str, draw, say) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 5.0), layout="constrained")
    draw(ax)
    say(f"wrote {save_figure(fig, out / name)}")
    plt.close(fig)


def _summary(args, name, obj, start, **parts) -> dict:
    return {"model": name, "analysed": obj.describe(), "seed": args.seed,
            **{k: v.to_dict() for k, v in parts.items()},
            "wall_time": time.perf_counter() - start, "versions": versions()}


def run_landscape(args) -> int:
    """Run ``landscape`` (exit code 0; errors are raised as UserError)."""
    out = check_output_folder(Path(args.out))
    say = speaker(args)
    start = time.perf_counter()
    if sum(x is not None for x in (args.between, args.trajectory)) > 1:
        raise UserError("--between and --trajectory are two different pictures: give one.")
    if args.between and args.checkpoint:
        raise UserError("--between A B draws the path from A to B: give no other checkpoint.")
    obj, name = objective_from_args(args)
    if args.checkpoint:
        obj = _restore(obj, args.checkpoint)
        name = f"{name} at {args.checkpoint}"
    metric = accuracy if args.accuracy else None
    if metric is not None and not obj.has_outputs:
        raise UserError("--accuracy needs a model with outputs (an Objective with predict=, "
                        "or a flax model).")
    if args.between:
        return _between(args, obj, name, out, say, start, metric)
    say(f"model: {name}, {obj.num_params:,} parameters, {obj.num_examples} examples")
    traj = None
    if args.trajectory:
        obj, traj = _trajectory(args, obj, say)
        dirs = traj
    else:
        dirs = _directions(args, obj, out)
    grid = (args.grid,) * (2 if traj is not None else args.dims)
    if traj is None:
        dirs = dirs if dirs.num == len(grid) else None
        if dirs is None:
            raise UserError(f"the directions in {out / 'directions.npz'} are not {len(grid)}: "
                            "pass --overwrite to draw new ones, or the matching --dims.")
    try:
        surf = loss_surface(obj, dirs, grid=grid, metric=metric, path=out / "surface.npz",
                            progress=not (args.quiet or args.json))
    except ValueError as err:
        raise UserError(f"{err}\n(--overwrite starts this folder over)") from None
    say(f"{surf.shape} grid: {surf.num_evaluations} passes over the data "
        f"({surf.num_reused} points reused from an interrupted run), "
        f"loss at the centre {surf.origin_loss:.5g}, largest {np.nanmax(surf.values):.4g}")
    parts = {"surface": surf}
    kind = "filled" if len(grid) == 2 else "contour"
    if traj is not None:
        _figure(out, "trajectory.png", lambda ax: plot_trajectory(surf, traj, ax=ax), say)
    else:
        _figure(out, "surface.png", lambda ax: plot_surface(surf, kind=kind, ax=ax), say)
    if args.curvature:
        cgrid = (args.curvature_grid,) * len(grid)
        cmap = curvature_map(obj, dirs, grid=cgrid, key=jax.random.key(args.seed),
                             progress=not (args.quiet or args.json))
        say(f"curvature map: {cmap.num_matvecs} Hessian-vector products; lambda_max "
            f"{np.min(cmap.lambda_max):.4g}..{np.max(cmap.lambda_max):.4g}, lambda_min "
            f"{np.min(cmap.lambda_min):.4g}..{np.max(cmap.lambda_min):.4g}")
        parts["curvature"] = cmap
        _figure(out, "curvature.png", lambda ax: plot_curvature_map(cmap, ax=ax), say)
    return _finish(args, out, _summary(args, name, obj, start, **parts), "landscape.json", say)


def _directions(args, obj, out: Path):
    """Directions from --directions, from this folder's earlier run, or drawn anew."""
    stored = out / "directions.npz"
    if args.overwrite:
        for f in (stored, out / "surface.npz"):
            f.unlink(missing_ok=True)
    path = Path(args.directions) if args.directions else (stored if stored.exists() else None)
    if path is not None:
        try:
            dirs = load_directions(path, obj.params, check_fingerprint=True)
        except (OSError, ValueError) as err:
            raise UserError(f"--directions {path}: {err}") from None
    else:
        dirs = random_directions(
            obj.params, jax.random.key(args.seed), num=args.dims,
            normalization=None if args.normalization == "none" else args.normalization,
            ignore=None if args.ignore == "none" else args.ignore)
    if path != stored:
        save_directions(dirs, stored)
    return dirs


def _trajectory(args, obj, say):
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", UserWarning)
        try:
            paths = find_checkpoints(args.trajectory)
        except CheckpointError as err:
            raise UserError(str(err)) from None
    for note in notes:
        if not args.quiet:
            print(f"note: {note.message}", file=sys.stderr)
    if len(paths) < 3:
        raise UserError(f"--trajectory {args.trajectory}: {len(paths)} checkpoint(s); a "
                        "trajectory plane needs at least 3.")
    points = [_restore(obj, p) for p in paths]
    traj = trajectory_directions([p.params for p in points])
    say(f"trajectory: {len(paths)} checkpoints; the plane explains "
        f"{100 * float(np.sum(traj.explained_variance)):.1f}% of their variance")
    if args.overwrite:
        (Path(args.out) / "surface.npz").unlink(missing_ok=True)
    return points[-1], traj


def _between(args, obj, name, out, say, start, metric) -> int:
    _refuse_existing([out / "between.json"], args.overwrite)
    a, b = (_restore(obj, p) for p in args.between)
    path = interpolate(obj, a.params, b.params, num_points=args.num_points, metric=metric)
    say(f"{name}: from {args.between[0]} to {args.between[1]} (||b - a|| = "
        f"{path.distance:.4g}): barrier {path.barrier:.4g} at t = {path.barrier_t:.2f}")
    _figure(out, "between.png", lambda ax: plot_interpolation(path, ax=ax), say)
    return _finish(args, out, _summary(args, name, obj, start, path=path), "between.json", say)


def run_connect(args) -> int:
    """Run ``connect``: align B to A, then the two paths and the curvature along them."""
    out = check_output_folder(Path(args.out))
    say = speaker(args)
    start = time.perf_counter()
    _refuse_existing([out / "connect.json"], args.overwrite)
    if args.curvature_points < 0 or args.curvature_points == 1:
        raise UserError(f"--curvature-points {args.curvature_points}: use 0 (none) or at "
                        "least 2 (the ends are included).")
    obj, name = objective_from_args(args)
    a, b = _restore(obj, args.a), _restore(obj, args.b)
    say(f"model: {name}, {obj.num_params:,} parameters; A = {args.a}, B = {args.b}")
    try:
        spec = permutation_spec(a)
    except (ValueError, RuntimeError) as err:
        raise UserError(f"the permutation structure of this model could not be derived: "
                        f"{err}") from None
    metric = accuracy if args.accuracy else None
    conn = connectivity(a, a.params, b.params, spec, key=jax.random.key(args.seed),
                        method=args.method, num_points=args.num_points, metric=metric,
                        state_b=b.state if b.required_state else None,
                        curvature_points=args.curvature_points,
                        progress=not (args.quiet or args.json))
    say(str(conn))
    fig_axes = plot_connectivity(conn)
    say(f"wrote {save_figure(fig_axes[0].figure, out / 'connect.png')}")
    plt.close(fig_axes[0].figure)
    summary = _summary(args, name, obj, start, connectivity=conn)
    summary["spec"] = {"groups": sorted(spec.groups), "source": spec.source}
    return _finish(args, out, summary, "connect.json", say)


def _finish(args, out: Path, summary: dict, filename: str, say) -> int:
    path = write_json(out / filename, summary)
    if args.json:
        print(json.dumps(summary, indent=2))
    say(f"wrote {path} ({summary['wall_time']:.1f} s)")
    return 0
