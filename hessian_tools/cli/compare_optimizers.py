"""The ``compare-optimizers`` subcommand: train the built-in digits model (or the user's model,
``--model module:function``) with several optimizers and report how their sharpness evolves.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import optax

from hessian_tools.cli._common import (UserError, add_model_flags, add_output_flags,
                                       check_output_folder, nonnegative_int, objective_from_args,
                                       positive_float, positive_int, speaker)
from hessian_tools.files import atomic_write_text, save_figure, write_json
from hessian_tools.plots import plot_comparison, plot_sharpness
from hessian_tools.training import QUANTITIES, compare_optimizers
from hessian_tools.training.compare import safe_name

__all__ = ["add_parser", "parse_optimizer", "OPTIMIZER_KINDS", "DEFAULT_OPTIMIZERS"]

#: Optimizer spec kinds: ``kind:learning_rate[:momentum-or-b1]``.
OPTIMIZER_KINDS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad")
DEFAULT_OPTIMIZERS = ("sgd:0.1", "momentum:0.02:0.9", "adam:0.001")
_OUTPUTS = ("comparison.json", "comparison.md", "sharpness.png", "comparison.png")


def parse_optimizer(spec: str):
    """``[label=]kind:lr[:beta]`` -> ``(label, optax optimizer)``.

    ``beta`` is the momentum for ``momentum``/``nesterov``/``rmsprop`` and ``b1`` for
    ``adam``/``adamw``. Examples: ``sgd:0.1``, ``momentum:0.02:0.9``, ``big=adam:3e-3``.

    Raises:
      ValueError: an unknown kind, a missing or non-positive learning rate, a bad beta.
    """
    label, _, body = spec.rpartition("=")
    parts = body.split(":")
    kind = parts[0].strip().lower()
    if kind not in OPTIMIZER_KINDS:
        raise ValueError(f"Unknown optimizer {kind!r} in {spec!r}; use one of "
                         f"{', '.join(OPTIMIZER_KINDS)} as kind:learning_rate[:beta].")
    if len(parts) < 2 or len(parts) > 3:
        raise ValueError(f"Optimizer spec {spec!r} must look like kind:learning_rate[:beta], "
                         "e.g. sgd:0.1 or momentum:0.02:0.9.")
    try:
        lr = float(parts[1])
        beta = float(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise ValueError(f"Optimizer spec {spec!r}: the learning rate and beta must be "
                         "numbers.") from None
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"Optimizer spec {spec!r}: the learning rate must be a positive, finite "
                         "number.")
    if beta is not None and not (0 <= beta < 1):
        raise ValueError(f"Optimizer spec {spec!r}: beta must lie in [0, 1).")
    make = {
        "sgd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=0.9 if beta is None else beta),
        "nesterov": lambda: optax.sgd(lr, momentum=0.9 if beta is None else beta,
                                      nesterov=True),
        "adam": lambda: optax.adam(lr, b1=0.9 if beta is None else beta),
        "adamw": lambda: optax.adamw(lr, b1=0.9 if beta is None else beta),
        "rmsprop": lambda: optax.rmsprop(lr, momentum=beta),
        "adagrad": lambda: optax.adagrad(lr),
    }[kind]
    return (label or body), make()


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``compare-optimizers`` on an ``argparse`` subparsers object; return its parser."""
    p = subparsers.add_parser(
        "compare-optimizers",
        help="train a model with several optimizers and compare their sharpness",
        description="Train the built-in digits model (or your own: --model) from one "
        "initialisation, with the same data order, under each optimizer; track the sharpness "
        "(and, for adaptive optimizers, the preconditioned sharpness) against its stability "
        "threshold; write comparison.json, comparison.md, sharpness.png, comparison.png and "
        "one JSON-lines log per optimizer under --out. With --model the model's weights are "
        "the initialisation and its data the training set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_flags(p, example="mlp-small")
    add_output_flags(p, out="hessian_tools_out/compare")
    p.add_argument("--optimizer", action="append", metavar="[LABEL=]KIND:LR[:BETA]",
                   help=f"an optimizer (repeatable); KIND in {', '.join(OPTIMIZER_KINDS)}; "
                   f"default: {' '.join(DEFAULT_OPTIMIZERS)}")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps per "
                   "optimizer (default 500, unless --epochs)")
    p.add_argument("--epochs", type=positive_int, default=None, help="passes over the data "
                   "per optimizer, instead of --steps")
    p.add_argument("--stop-at-loss", type=positive_float, default=None, metavar="LOSS",
                   help="stop a run once its full-data loss is at most LOSS (its steps are "
                   "then its time to the criterion)")
    p.add_argument("--stop-at-accuracy", type=positive_float, default=None, metavar="ACC",
                   help="stop a run once its full-data accuracy is at least ACC (0 to 1)")
    p.add_argument("--checkpoints", action="store_true", help="save each run's final "
                   "parameters as checkpoints/LABEL.npz under --out")
    p.add_argument("--every", type=positive_int, default=10, help="measure every N steps")
    p.add_argument("--batch-size", type=nonnegative_int, default=0,
                   help="minibatch size (0: full-batch gradient descent)")
    p.add_argument("--measure-size", type=nonnegative_int, default=512,
                   help="examples in the fixed measurement set (0: all)")
    p.add_argument("--quantities", default="lambda_max",
                   help="comma-separated extra quantities: top_k, lambda_min, trace, "
                   "grad_overlap, loss")
    p.add_argument("--tol", type=positive_float, default=1e-3, help="eigenvalue tolerance "
                   "(relative residual, below 1)")
    p.set_defaults(func=_compare)
    return p


def _plan(args):
    """Validate the arguments and list the outputs; raise UserError before any work."""
    specs = args.optimizer or list(DEFAULT_OPTIMIZERS)
    try:
        optimizers = dict(parse_optimizer(s) for s in specs)
    except ValueError as err:
        raise UserError(str(err)) from None
    if len(optimizers) != len(specs):
        raise UserError("Two optimizers share a label; name them, e.g. "
                        "--optimizer fast=sgd:0.2 --optimizer slow=sgd:0.05.")
    if not args.tol < 1:
        raise UserError(f"--tol {args.tol} must be below 1 (a relative residual, e.g. 1e-3).")
    if args.steps is not None and args.epochs is not None:
        raise UserError("--steps and --epochs both given: pass one of them.")
    if args.steps is None and args.epochs is None:
        args.steps = 500
    if args.stop_at_accuracy is not None and not args.stop_at_accuracy <= 1:
        raise UserError(f"--stop-at-accuracy {args.stop_at_accuracy} must be at most 1 (a "
                        "fraction, e.g. 0.95).")
    out = Path(args.out)
    targets = [out / f for f in _OUTPUTS] + [out / "logs" / f"{safe_name(n)}.jsonl"
                                             for n in optimizers]
    if args.checkpoints:
        targets += [out / "checkpoints" / f"{safe_name(n)}.npz" for n in optimizers]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise UserError(f"{len(existing)} output file(s) already exist (e.g. {existing[0]}); "
                        "pass --overwrite to replace them or choose another --out.")
    quantities = tuple(q.strip() for q in args.quantities.split(",") if q.strip())
    unknown = [q for q in quantities if q not in QUANTITIES]
    if unknown:
        raise UserError(f"Unknown quantities {unknown}; choose from {list(QUANTITIES)}.")
    return optimizers, check_output_folder(out), quantities


def _compare(args) -> int:
    optimizers, out, quantities = _plan(args)
    say = speaker(args)
    start = time.perf_counter()
    obj, name = objective_from_args(args, trained=False)
    n = obj.num_examples
    if args.batch_size > n:
        raise UserError(f"--batch-size {args.batch_size} exceeds the {n} training examples.")
    length = f"{args.steps} steps" if args.epochs is None else f"{args.epochs} epochs"
    stops = _criteria(args.stop_at_loss, args.stop_at_accuracy)
    say(f"{name}: {n} examples, {len(optimizers)} optimizers, {length}"
        + (f" or until {' and '.join(stops)}" if stops else "") + f", measuring every "
        f"{args.every}")
    try:
        res = compare_optimizers(
            obj, optimizers, train_steps=args.steps, epochs=args.epochs, every=args.every,
            stop_at_loss=args.stop_at_loss, stop_at_accuracy=args.stop_at_accuracy,
            checkpoint_dir=out / "checkpoints" if args.checkpoints else None,
            key=jax.random.key(args.seed), batch_size=args.batch_size or None,
            measure_size=args.measure_size or None, quantities=quantities, tol=args.tol,
            log_dir=out / "logs", overwrite=True, verbose=not args.quiet and not args.json)
    except (TypeError, ValueError) as err:
        raise UserError(f"{name}: {err}") from None
    summary = {"model": name, "seed": args.seed, "config": res.config,
               "summary": res.to_dict()["summary"], "wall_time": time.perf_counter() - start}
    write_json(out / "comparison.json", res.to_dict() | {"model": name, "seed": args.seed})
    atomic_write_text(out / "comparison.md", _markdown(name, args, res))
    axes = plot_comparison(res)
    axes[0].figure.suptitle(f"{name}: optimizers compared")
    save_figure(axes[0].figure, out / "comparison.png")
    plt.close(axes[0].figure)
    _sharpness_figure(res, out / "sharpness.png")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        say(res.table())
        say(f"wrote {out}/comparison.json, comparison.md, comparison.png, sharpness.png and "
            f"logs/ ({summary['wall_time']:.1f} s)")
    if any(run.diverged for run in res.runs.values()):
        print("warning: some runs diverged (non-finite loss); see the table", file=sys.stderr)
    return 0


def _sharpness_figure(res, path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, run) in enumerate(res.runs.items()):
        q = "precond_lambda_max" if run.info.adaptive else "lambda_max"
        kind = "preconditioned" if run.info.adaptive else "raw"
        plot_sharpness(run.log, ax, quantity=q, label=f"{label} ({kind})", color=f"C{i}",
                       threshold=run.threshold, show_threshold=run.threshold is not None)
    ax.set_yscale("log")
    ax.set_ylabel("sharpness (raw for SGD, preconditioned for adaptive)")
    ax.set_title("sharpness vs stability threshold (dashed)")
    save_figure(fig, path)
    plt.close(fig)


def _markdown(name, args, res) -> str:
    cfg = res.config
    batch = "full batch" if cfg["batch_size"] is None else f"batch size {cfg['batch_size']}"
    return (f"# Optimizer comparison: {name}\n\n"
            f"{cfg['train_steps']} steps, {batch}, {cfg['num_examples']} examples, sharpness "
            f"measured every {cfg['every']} steps on {cfg['measure_size']} examples (seed "
            f"{args.seed}). The threshold is 2/η for SGD, (2+2β)/η for heavy-ball momentum, "
            "and (2+2β₁)/((1-β₁)η) on the preconditioned sharpness for Adam.\n\n"
            f"{res.table()}\n" + _stops(res))


def _criteria(loss, accuracy) -> list[str]:
    """The stopping criteria given, in words (``["loss <= 0.1"]``)."""
    return ([f"loss <= {loss:g}"] if loss is not None else []) + \
        ([f"accuracy >= {accuracy:g}"] if accuracy is not None else [])


def _stops(res) -> str:
    """Each run's length and why it ended, when a stopping criterion was given."""
    criteria = _criteria(res.config["stop_at_loss"], res.config["stop_at_accuracy"])
    if not criteria:
        return ""
    return (f"\nStopping criterion: {' and '.join(criteria)}; steps to it (Saxe et al. 2014's "
            "training time):\n\n"
            + "".join(f"- {r['optimizer']}: {r['steps']} steps ({r['stop_reason']})\n"
                      for r in res.to_dict()["summary"]))
