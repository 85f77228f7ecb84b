"""The ``compare-optimizers`` subcommand: train the built-in digits model (or the user's model,
``--model module:function``) with several optimizers and report how their sharpness evolves.
Parses arguments, calls the library, writes files.

Wire it into the main parser with ``add_compare_parser(subparsers)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["add_compare_parser", "parse_optimizer", "OPTIMIZER_KINDS", "DEFAULT_OPTIMIZERS"]

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
    import optax
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
    if not lr > 0:
        raise ValueError(f"Optimizer spec {spec!r}: the learning rate must be positive.")
    if beta is not None and not 0 <= beta < 1:
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


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``compare-optimizers`` on an ``argparse`` subparsers object; return its parser."""
    from hessian_tools.examples.digits import CONFIGS
    p = subparsers.add_parser(
        "compare-optimizers",
        help="train a model with several optimizers and compare their sharpness",
        description="Train the built-in digits model (or your own: --model) from one "
        "initialisation, with the same data order, under each optimizer; track the sharpness (and, for adaptive "
        "optimizers, the preconditioned sharpness) against its stability threshold; write "
        "comparison.json, comparison.md, sharpness.png, comparison.png and one JSON-lines "
        "log per optimizer under --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--example", default="mlp-small", choices=sorted(CONFIGS),
                   help="built-in digits model (ignored with --model)")
    p.add_argument("--model", default=None, metavar="MODULE:FUNCTION",
                   help="your model: a function (in an importable module or a .py file) "
                   "returning (model_fn, loss_fn, data) as ht.compare_optimizers takes them: "
                   "model_fn(key) -> (predict, params), e.g. ht.nnx_model_fn(factory); "
                   "loss_fn(outputs, batch) -> mean loss; data an in-memory batch such as "
                   "(x, y). A dict with those keys may add accuracy_fn.")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="keyword arguments for the --model function, as a JSON object")
    p.add_argument("--optimizer", action="append", metavar="[LABEL=]KIND:LR[:BETA]",
                   help=f"an optimizer (repeatable); KIND in {', '.join(OPTIMIZER_KINDS)}; "
                   f"default: {' '.join(DEFAULT_OPTIMIZERS)}")
    p.add_argument("--steps", type=int, default=500, help="training steps per optimizer")
    p.add_argument("--every", type=int, default=10, help="measure every N steps")
    p.add_argument("--batch-size", type=int, default=0,
                   help="minibatch size (0: full-batch gradient descent)")
    p.add_argument("--num-examples", type=int, default=0,
                   help="use only the first N examples (0: all; the digits have 1797)")
    p.add_argument("--measure-size", type=int, default=512,
                   help="examples in the fixed measurement set (0: all)")
    p.add_argument("--quantities", default="lambda_max",
                   help="comma-separated extra quantities: top_k, lambda_min, trace, "
                   "grad_overlap, loss")
    p.add_argument("--tol", type=float, default=1e-3, help="eigenvalue tolerance (relative "
                   "residual)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order and "
                   "measurement seed")
    p.add_argument("--out", default="hessian_tools_out/compare", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_compare)
    return p


def _user_error(message: str) -> Exception:
    from hessian_tools.cli import UserError   # imported late: cli imports this module
    return UserError(message)


def _plan(args):
    """Validate the arguments and list the outputs; raise UserError before any work."""
    specs = args.optimizer or list(DEFAULT_OPTIMIZERS)
    try:
        optimizers = dict(parse_optimizer(s) for s in specs)
    except ValueError as err:
        raise _user_error(str(err)) from None
    if len(optimizers) != len(specs):
        raise _user_error("Two optimizers share a label; name them, e.g. "
                          "--optimizer fast=sgd:0.2 --optimizer slow=sgd:0.05.")
    for name, value, low in (("--steps", args.steps, 1), ("--every", args.every, 1),
                             ("--batch-size", args.batch_size, 0),
                             ("--num-examples", args.num_examples, 0),
                             ("--measure-size", args.measure_size, 0)):
        if value < low:
            raise _user_error(f"{name}={value} must be at least {low}.")
    out = Path(args.out)
    from hessian_tools.tracking import _safe_name
    targets = [out / f for f in _OUTPUTS] + [out / "logs" / f"{_safe_name(n)}.jsonl"
                                             for n in optimizers]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise _user_error(f"{len(existing)} output file(s) already exist (e.g. {existing[0]}); "
                          "pass --overwrite to replace them or choose another --out.")
    quantities = tuple(q.strip() for q in args.quantities.split(",") if q.strip())
    from hessian_tools.tracking import QUANTITIES
    unknown = [q for q in quantities if q not in QUANTITIES]
    if unknown:
        raise _user_error(f"Unknown quantities {unknown}; choose from {list(QUANTITIES)}.")
    return optimizers, out, quantities


def _compare(args) -> int:
    optimizers, out, quantities = _plan(args)
    import jax
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import hessian_tools as ht
    from hessian_tools.examples import digits
    from hessian_tools.report import atomic_write_text, save_figure, write_json

    say = (lambda *a: None) if args.quiet or args.json else print
    start = time.perf_counter()
    model_fn, loss_fn, data, accuracy_fn, name = _model(args, digits)
    n = len(jax.tree.leaves(data)[0])
    say(f"{name}: {n} examples, {len(optimizers)} optimizers, {args.steps} steps, measuring "
        f"every {args.every}")
    try:
        res = ht.compare_optimizers(
            model_fn, loss_fn, data, optimizers,
            num_steps=args.steps, every=args.every, key=jax.random.key(args.seed),
            batch_size=args.batch_size or None, measure_size=args.measure_size or None,
            quantities=quantities, tol=args.tol, log_dir=out / "logs", overwrite=True,
            accuracy_fn=accuracy_fn, verbose=not args.quiet and not args.json)
    except (TypeError, ValueError) as err:
        if args.model is None:
            raise
        raise _user_error(f"--model {args.model}: {err}") from None
    summary = {"model": name, "seed": args.seed, "config": res.config,
               "summary": res.to_dict()["summary"], "wall_time": time.perf_counter() - start}
    write_json(out / "comparison.json", res.to_dict() | {"model": name, "seed": args.seed})
    atomic_write_text(out / "comparison.md", _markdown(name, args, res))
    axes = ht.plot_comparison(res)
    axes[0].figure.suptitle(f"{name}: optimizers compared")
    save_figure(axes[0].figure, out / "comparison.png")
    plt.close(axes[0].figure)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, run) in enumerate(res.runs.items()):
        q = "precond_lambda_max" if run.info.adaptive else "lambda_max"
        ht.plot_sharpness(run.log, ax, quantity=q, label=f"{name} ({q})", color=f"C{i}",
                          threshold=run.threshold, show_threshold=run.threshold is not None)
    ax.set_yscale("log")
    ax.set_ylabel("sharpness (raw for SGD, preconditioned for adaptive)")
    ax.set_title("sharpness vs stability threshold (dashed)")
    save_figure(fig, out / "sharpness.png")
    plt.close(fig)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        say(res.table())
        say(f"wrote {out}/comparison.json, comparison.md, comparison.png, sharpness.png and "
            f"logs/ ({summary['wall_time']:.1f} s)")
    if any(run.diverged for run in res.runs.values()):
        print("warning: some runs diverged (non-finite loss); see the table", file=sys.stderr)
    return 0


def _model(args, digits):
    """``(model_fn, loss_fn, data, accuracy_fn, name)`` from --model or the built-in example."""
    import jax
    if args.model is None:
        cfg = digits.CONFIGS[args.example]
        x, y = digits.load_digits_data(image=cfg["kind"] == "cnn")
        if args.num_examples:
            x, y = x[:args.num_examples], y[:args.num_examples]
        factory = (lambda rngs: digits.MLP(cfg["widths"], rngs=rngs)) if cfg["kind"] == "mlp" \
            else (lambda rngs: digits.CNN(cfg["channels"], rngs=rngs))
        import hessian_tools as ht
        return ht.nnx_model_fn(factory), digits.cross_entropy, (x, y), None, \
            f"digits {args.example}"
    from hessian_tools.batch import ModelTargetError, import_target, parse_model_kwargs
    try:
        got = import_target(args.model, parse_model_kwargs(args.model_kwargs))
    except ModelTargetError as err:
        raise _user_error(str(err)) from None
    accuracy_fn = None
    if isinstance(got, dict):
        missing = [k for k in ("model_fn", "loss_fn", "data") if k not in got]
        if missing:
            raise _user_error(f"--model {args.model} returned a dict without {missing}.")
        got, accuracy_fn = (got["model_fn"], got["loss_fn"], got["data"]), got.get("accuracy_fn")
    if not (isinstance(got, tuple) and len(got) == 3 and callable(got[0]) and callable(got[1])):
        raise _user_error(f"--model {args.model} returned {type(got).__name__}; it must return "
                          "(model_fn, loss_fn, data): model_fn(key) -> (predict, params) (e.g. "
                          "ht.nnx_model_fn(lambda rngs: MyModule(rngs=rngs))), loss_fn(outputs, "
                          "batch) -> mean loss, and data an in-memory batch such as (x, y).")
    model_fn, loss_fn, data = got
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise _user_error(f"--model {args.model}: the data are empty.")
    if args.num_examples:
        data = jax.tree.map(lambda a: a[:args.num_examples], data)
    return model_fn, loss_fn, data, accuracy_fn, args.model


def _markdown(name, args, res) -> str:
    cfg = res.config
    batch = "full batch" if cfg["batch_size"] is None else f"batch size {cfg['batch_size']}"
    return (f"# Optimizer comparison: {name}\n\n"
            f"{cfg['num_steps']} steps, {batch}, {cfg['num_examples']} examples, sharpness "
            f"measured every {cfg['every']} steps on {cfg['measure_size']} examples (seed "
            f"{args.seed}). The threshold is 2/η for SGD, (2+2β)/η for heavy-ball momentum, "
            "and (2+2β₁)/((1-β₁)η) on the preconditioned sharpness for Adam.\n\n"
            f"{res.table()}\n")
