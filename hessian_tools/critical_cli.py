"""The ``classify`` subcommand: is this point a minimum or a saddle? (No numerics here.)

Wire it into the main parser with ``add_classify_parser(subparsers)``. Examples::

    hessian-tools classify                                   # built-in digits mlp-tiny
    hessian-tools classify --example mlp-small --find-critical
    hessian-tools classify --model my_pkg.models:make_objective --dtype float32
    hessian-tools classify --model path/to/file.py:make_objective --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["add_classify_parser", "load_model_objective"]


def add_classify_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``classify`` subcommand on an ``argparse`` subparsers object."""
    from hessian_tools.examples.digits import CONFIGS
    p = subparsers.add_parser(
        "classify", help="classify a point: minimum, degenerate minimum, saddle, maximum or not "
        "critical (gradient norm, extreme eigenvalues, index, flat directions)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--example", default="mlp-tiny", choices=sorted(CONFIGS),
                     help="built-in digits model (trained briefly, cached)")
    src.add_argument("--model", metavar="MODULE:FUNCTION",
                     help="a zero-argument function returning a hessian_tools.Objective, e.g. "
                     "my_pkg.models:make_objective or path/to/file.py:make_objective")
    p.add_argument("--untrained", action="store_true", help="built-in example: classify the "
                   "initialisation instead of the trained weights")
    p.add_argument("--num-examples", type=int, default=None, help="built-in example: use only "
                   "the first N examples")
    p.add_argument("--find-critical", action="store_true", help="first run Newton-MR from the "
                   "point to the nearest critical point, then classify the point reached")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                   help="precision of the analysis")
    p.add_argument("--seed", type=int, default=0, help="initialisation and PRNG seed")
    p.add_argument("--grad-tol", type=float, default=None, help="gradient norm counted as zero "
                   "(default 10 sqrt(eps) max(1, |loss|))")
    p.add_argument("--tau", type=float, default=None, help="the zero threshold: eigenvalues "
                   "below -tau are negative, within [-tau, tau] flat (default 1%% of max|lambda|, "
                   "as in every count of the library)")
    p.add_argument("--dense-max-params", type=int, default=4000, help="exact index from the "
                   "dense Hessian up to this many parameters; Lanczos/SLQ above")
    p.add_argument("--max-lanczos-index", type=int, default=32, help="largest index counted "
                   "exactly by Lanczos (SLQ estimates above)")
    p.add_argument("--no-probe", action="store_true", help="skip the higher-order probe along "
                   "flat directions")
    p.add_argument("--out", default="hessian_tools_out/classify", help="output folder")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_classify)
    return p


def load_model_objective(spec: str):
    """Call ``module:function`` (a dotted module or a ``.py`` path) and return its Objective.

    The function returns a :class:`hessian_tools.Objective`, or ``(model, loss_fn, data)``
    for a flax NNX model (see ``hessian_tools.batch.load_model_target``).

    Raises:
      hessian_tools.cli.UserError: a malformed spec, a missing module or function, or a
        function that returns something else.
    """
    from hessian_tools.batch import ModelTargetError, load_model_target
    from hessian_tools.cli import UserError
    try:
        return load_model_target(spec)
    except ModelTargetError as err:
        raise UserError(str(err)) from None


def _objective(args):
    import jax.numpy as jnp
    if args.model:
        return load_model_objective(args.model), args.model
    from hessian_tools.examples import digits
    obj = digits.digits_objective(args.example, trained=not args.untrained,
                                  dtype=getattr(jnp, args.dtype), seed=args.seed,
                                  num_examples=args.num_examples)
    return obj, f"digits {args.example}{' (untrained)' if args.untrained else ''}"


def run_classify(args) -> int:
    """Run the subcommand (returns the exit code: 0, or 1 when no critical point was found)."""
    import jax
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import hessian_tools as ht
    from hessian_tools.report import write_json
    say = (lambda *a: None) if args.quiet or args.json else print
    start = time.perf_counter()
    obj, name = _objective(args)
    say(f"model: {name}, {obj.num_params:,} parameters, {obj.num_examples} examples")
    options = dict(grad_tol=args.grad_tol, tau=args.tau,
                   dense_max_params=args.dense_max_params,
                   max_lanczos_index=args.max_lanczos_index, probe=not args.no_probe)
    key = jax.random.key(args.seed)
    search = None
    if args.find_critical:
        search = ht.find_critical_points(obj, [obj.params], key=key, grad_tol=args.grad_tol,
                                         classify_options=options)
        rep = search[0].report
        say(f"Newton-MR from the point: {search[0].status} after {search[0].num_iters} "
            f"iterations (|grad| {search[0].grad_norms[0]:.2e} -> {search[0].grad_norm:.2e})")
    else:
        rep = ht.classify(obj, key=key, **options)
    summary = {"model": name, "num_params": obj.num_params, "seed": args.seed,
               "report": rep.to_dict(), "wall_time": time.perf_counter() - start,
               "versions": _versions()}
    if search is not None:
        summary["search"] = search.to_dict()
    path = write_json(Path(args.out) / "classify.json", summary)
    if args.json:
        print(json.dumps(summary, indent=2))
    say(str(rep))
    say(f"wrote {path} ({summary['wall_time']:.1f} s)")
    if search is not None and search[0].status != "critical":
        print(f"warning: no critical point reached ({search[0].status})", file=sys.stderr)
        return 1
    return 0


def _versions() -> dict:
    try:
        from hessian_tools.cli import _versions as versions
        return versions()
    except ImportError:
        return {}
