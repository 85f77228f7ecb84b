"""The ``classify`` subcommand: is this point a minimum or a saddle?

Examples::

    hessian-tools classify                                   # built-in digits mlp-tiny
    hessian-tools classify --example mlp-small --find-critical
    hessian-tools classify --model my_pkg.models:make_model --dtype float32
    hessian-tools classify CKPT --model path/to/file.py:make_model --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

from hessian_tools.checkpoints import CheckpointError, restore
from hessian_tools._checks import NonFiniteLoss
from hessian_tools.cli._common import (UserError, add_model_flags, add_output_flags,
                                       check_output_folder, nonnegative_int, objective_from_args,
                                       positive_float, positive_int, speaker, versions)
from hessian_tools.analysis import classify, find_critical_points
from hessian_tools.files import write_json

__all__ = ["add_parser", "run_classify"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``classify`` subcommand on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "classify", help="classify a point: minimum, degenerate minimum, saddle, maximum or not "
        "critical (gradient norm, extreme eigenvalues, index, flat directions)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="a checkpoint of the model (default: the "
                   "model's own weights)")
    add_model_flags(p, example="mlp-tiny")
    p.set_defaults(dtype="float64")
    add_output_flags(p, out="hessian_tools_out/classify", overwrite=False)
    p.add_argument("--untrained", action="store_true", help="built-in example: classify the "
                   "initialisation instead of the trained weights")
    p.add_argument("--find-critical", action="store_true", help="first run Newton-MR from the "
                   "point to the nearest critical point, then classify the point reached")
    p.add_argument("--grad-tol", type=positive_float, default=None, help="gradient norm "
                   "counted as zero (default 10 sqrt(eps) max(1, |loss|))")
    p.add_argument("--tau", type=positive_float, default=None, help="the zero threshold: "
                   "eigenvalues below -tau are negative, within [-tau, tau] flat (default 1%% "
                   "of max|lambda|, as in every count of the library)")
    p.add_argument("--dense-max-params", type=nonnegative_int, default=4000, help="exact index "
                   "from the dense Hessian up to this many parameters; Lanczos/SLQ above")
    p.add_argument("--max-lanczos-index", type=positive_int, default=32, help="largest index "
                   "counted exactly by Lanczos (SLQ estimates above)")
    p.add_argument("--no-probe", action="store_true", help="skip the higher-order probe along "
                   "flat directions")
    p.set_defaults(func=run_classify)
    return p


def run_classify(args) -> int:
    """Run the subcommand (returns the exit code: 0, or 1 when no critical point was found)."""
    out = check_output_folder(Path(args.out))
    say = speaker(args)
    start = time.perf_counter()
    obj, name = objective_from_args(args, trained=not args.untrained)
    if args.checkpoint:
        try:
            obj = restore(obj, args.checkpoint).objective
        except CheckpointError as err:
            raise UserError(str(err)) from None
        name = f"{name} at {args.checkpoint}"
    say(f"model: {name}, {obj.num_params:,} parameters, {obj.num_examples} examples, "
        f"{obj.describe()['dtype']}")
    options = dict(grad_tol=args.grad_tol, tau=args.tau, dense_max_params=args.dense_max_params,
                   max_lanczos_index=args.max_lanczos_index, probe=not args.no_probe)
    key = jax.random.key(args.seed)
    search = None
    if args.find_critical:
        search = find_critical_points(obj, [obj.params], key=key, grad_tol=args.grad_tol,
                                      classify_options=options)
        rep = search[0].report
        say(f"Newton-MR from the point: {search[0].status} after {search[0].newton_steps} "
            f"iterations (|grad| {search[0].grad_norms[0]:.2e} -> {search[0].grad_norm:.2e})")
    else:
        try:
            rep = classify(obj, key=key, **options)
        except NonFiniteLoss as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            return 1
    summary = {"model": name, "analysed": obj.describe(), "seed": args.seed,
               "report": rep.to_dict(), "wall_time": time.perf_counter() - start,
               "versions": versions()}
    if search is not None:
        summary["search"] = search.to_dict()
    path = write_json(out / "classify.json", summary)
    if args.json:
        print(json.dumps(summary, indent=2))
    say(str(rep))
    say(f"wrote {path} ({summary['wall_time']:.1f} s)")
    if search is not None and search[0].status != "critical":
        print(f"warning: no critical point reached ({search[0].status})", file=sys.stderr)
        return 1
    return 0
