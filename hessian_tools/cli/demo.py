"""The ``demo`` subcommand: train the built-in digits MLP (cached, its sharpness tracked), then
report its Hessian's extreme eigenvalues, density, trace, negative count and verdict."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
import optax

from hessian_tools._progress import interactive
from hessian_tools.cli._common import (add_output_flags, check_output_folder, positive_int,
                                       speaker, versions)
from hessian_tools.analysis import classify, density, eigenvalues, negative_count, trace
from hessian_tools.examples import digits
from hessian_tools.files import save_figure, write_json
from hessian_tools.objective import Objective
from hessian_tools.operators import hessian, value_and_grad
from hessian_tools.plots import plot_density, plot_eigenvalues, plot_sharpness
from hessian_tools.training import SharpnessTracker, read_sharpness_log
from hessian_tools.tree import norm

__all__ = ["add_parser", "run_demo"]


def add_parser(sub) -> argparse.ArgumentParser:
    demo = sub.add_parser(
        "demo", help="train a small digits MLP (cached) and report its extreme Hessian "
        "eigenvalues", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--example", default="mlp-small", choices=sorted(digits.CONFIGS),
                      help="built-in model")
    demo.add_argument("--k", type=positive_int, default=5, help="eigenvalues at each end")
    demo.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                      help="precision of the analysis (training is float32)")
    demo.add_argument("--no-cache", action="store_true", help="retrain instead of loading "
                      "cached weights")
    add_output_flags(demo, out="hessian_tools_out/demo")
    demo.set_defaults(func=run_demo)
    return demo


def run_demo(args) -> int:
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    say = speaker(args)
    out = check_output_folder(Path(args.out))
    targets = [out / "eigenvalues.json", out / "eigenvalues.png"]
    existing = [p for p in targets if p.exists()]
    if existing and not args.overwrite:
        say(f"note: replacing the previous demo results in {out}/ (pass --out elsewhere to keep "
            "them)")
    start = time.perf_counter()
    sharp_log = _train_with_sharpness(args, say)
    obj = digits.digits_objective(args.example, dtype=args.dtype, seed=args.seed)
    say(f"model: digits {args.example}, {obj.num_params:,} parameters, {obj.num_examples} "
        f"examples, {args.dtype}")
    H = hessian(obj)
    eig = eigenvalues(H, k=args.k, which="both", key=jax.random.key(args.seed),
                      progress=not (args.quiet or args.json) and interactive())
    loss, grad = value_and_grad(obj)
    summary = {"example": args.example, "num_params": obj.num_params,
               "num_examples": obj.num_examples, "dtype": args.dtype, "seed": args.seed,
               "loss": float(loss), "grad_norm": float(norm(grad)),
               "eigenvalues": eig.to_dict(), "versions": versions()}
    extras = _demo_extras(obj, H, jax.random.key(args.seed + 1), out, sharp_log)
    lines = extras.pop("lines")
    summary.update(extras)
    summary["wall_time"] = time.perf_counter() - start
    write_json(targets[0], summary)
    ax = plot_eigenvalues(eig)
    ax.set_title(f"digits {args.example}: top-{args.k} and bottom-{args.k} Hessian eigenvalues")
    save_figure(ax.figure, targets[1])
    plt.close(ax.figure)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0 if eig.converged else 1
    say(f"loss {float(loss):.4f}, gradient norm {summary['grad_norm']:.3g}")
    say(eig.table())
    for line in lines:
        say(line)
    written = [name for part, name in (("density", "density.png"), ("sharpness", "sharpness.png"))
               if part in summary]
    say(f"wrote {targets[0]}, {targets[1].name}" + "".join(f", {w}" for w in written)
        + f" ({summary['wall_time']:.1f} s)")
    if not eig.converged:
        print("warning: not every eigenpair reached the tolerance; see the residuals",
              file=sys.stderr)
        return 1
    return 0


def _train_with_sharpness(args, say):
    """Train the demo model (or load it), with the sharpness of its training run tracked.

    The sharpness log is cached next to the weights, so a second run neither retrains nor
    re-measures. Returns the log.
    """
    verbose = not (args.quiet or args.json)
    log_path = digits.cache_path(args.example, args.seed).with_suffix(".sharpness.jsonl")
    weights = digits.cache_path(args.example, args.seed)
    if not args.no_cache and weights.exists() and log_path.exists():
        log = read_sharpness_log(log_path, strict=False)
        if len(log) and np.isfinite(log["precond_lambda_max"]).any():
            digits.trained_model(args.example, seed=args.seed, verbose=verbose)
            return log
    model = digits.make_model(args.example, seed=args.seed)
    x, y = digits.load_digits_data(image=digits.CONFIGS[args.example]["kind"] == "cnn")
    log_path.unlink(missing_ok=True)
    measured = Objective.from_nnx(model, digits.cross_entropy, (x[:512], y[:512]))
    tracker = SharpnessTracker(measured, every=25, log_path=log_path,
                               quantities=("lambda_max", "precond_lambda_max"),
                               optimizer=optax.adam(digits.LEARNING_RATE),
                               key=jax.random.key(args.seed), overwrite=True)
    say(f"training {args.example} with its sharpness (raw and Adam-preconditioned) measured "
        "every 25 steps ...")
    digits.trained_model(args.example, seed=args.seed, use_cache=not args.no_cache,
                         callback=lambda step, params, opt_state: tracker.update(
                             step, params, opt_state=opt_state))
    return tracker.log


def _demo_extras(obj, H, key, out, sharp_log) -> dict:
    """The rest of the demo report: density, trace, negative count, verdict, and the
    sharpness of the training run."""
    extras, lines = {}, []
    dens = density(H, key=jax.random.fold_in(key, 0))
    tr = trace(H, key=jax.random.fold_in(key, 1))
    neg = negative_count(dens)          # from the density: no further matvecs
    extras.update(density=dens.to_dict(), trace=tr.to_dict(), negative_count=neg.to_dict())
    lo, hi = neg.fraction_interval
    lines += [f"trace: {tr}",
              f"negative eigenvalues (lambda < -tau, tau = {neg.tau:.3g}: 1% of max|lambda|, "
              f"the library's one definition): {neg.count:.1f} of {neg.dim} by SLQ (95% CI "
              f"{100 * lo:.2f}%-{100 * hi:.2f}%)"]
    ax = plot_density(dens, tau=neg.tau)
    save_figure(ax.figure, out / "density.png")
    plt.close(ax.figure)
    rep = classify(obj, key=jax.random.fold_in(key, 3))
    extras["critical_point"] = {"verdict": rep.verdict, "summary": rep.summary,
                                "report": rep.to_dict()}
    lines.append(f"verdict: {rep.summary}")
    lines.append(f"  (the index counts the same eigenvalues, lambda < -tau = "
                 f"{-rep.thresholds['tau']:.3g}, {rep.index_method})")
    if sharp_log is not None and len(sharp_log.steps):
        extras["sharpness"] = {"steps": [int(s) for s in sharp_log.steps],
                               "lambda_max": [float(v) for v in sharp_log["lambda_max"]]}
        precond = sharp_log["precond_lambda_max"]
        extras["sharpness"]["precond_lambda_max"] = [None if not np.isfinite(v) else float(v)
                                                     for v in precond]
        fig, (ax_raw, ax_pre) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
        # Adam: 2/eta is gradient descent's threshold and does not apply to the raw value;
        # the preconditioned sharpness is compared with Adam's (Cohen et al. 2022)
        plot_sharpness(sharp_log, ax=ax_raw, show_threshold=False)
        ax_raw.set_title("raw sharpness (Adam training)")
        plot_sharpness(sharp_log, ax=ax_pre, quantity="precond_lambda_max")
        ax_pre.set_title("preconditioned sharpness vs Adam's threshold")
        save_figure(fig, out / "sharpness.png")
        plt.close(fig)
        last = precond[np.isfinite(precond)]
        lines.append(f"sharpness during training: {len(sharp_log.steps)} measurements, final "
                     f"lambda_max {float(sharp_log['lambda_max'][-1]):.4g}, preconditioned "
                     f"{float(last[-1]) if last.size else float('nan'):.4g} (Adam threshold "
                     f"{float(np.nanmax(sharp_log['precond_threshold'])):.4g})")
    extras["lines"] = lines
    return extras


