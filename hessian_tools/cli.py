"""Command-line interface: parses arguments, calls the library, writes files. No numerics."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]


from hessian_tools.spectrum_cli import UserError, _versions, add_parsers


def _enable_compile_cache(args) -> None:
    """JAX's persistent compilation cache, so a second invocation skips compiling."""
    if getattr(args, "no_compile_cache", False) or os.environ.get("HESSIAN_TOOLS_NO_COMPILE_CACHE"):
        return
    import jax

    from hessian_tools.examples.digits import cache_dir
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _demo(args) -> int:
    import jax
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import hessian_tools as ht
    from hessian_tools.examples import digits
    from hessian_tools.plots import plot_eigenvalues
    from hessian_tools.report import save_figure, write_json

    say = (lambda *a: None) if args.quiet or args.json else print
    out = Path(args.out)
    targets = [out / "eigenvalues.json", out / "eigenvalues.png"]
    existing = [p for p in targets if p.exists()]
    if existing and not args.overwrite:
        say(f"note: replacing the previous demo results in {out}/ (pass --out elsewhere to keep "
            "them)")
    start = time.perf_counter()
    model = digits.trained_model(args.example, seed=args.seed, use_cache=not args.no_cache,
                                 verbose=not (args.quiet or args.json))
    del model
    obj = digits.digits_objective(args.example, dtype=getattr(jnp, args.dtype), seed=args.seed)
    say(f"model: digits {args.example}, {obj.num_params:,} parameters, {obj.num_examples} "
        f"examples, {args.dtype}")
    H = ht.hessian(obj)
    eig = ht.eigenvalues(H, k=args.k, which="both", key=jax.random.key(args.seed),
                         progress=not (args.quiet or args.json) and sys.stderr.isatty())
    loss, grad = ht.value_and_grad(obj)
    summary = {"example": args.example, "num_params": obj.num_params,
               "num_examples": obj.num_examples, "dtype": args.dtype, "seed": args.seed,
               "loss": float(loss), "grad_norm": float(ht.tree.norm(grad)),
               "eigenvalues": eig.to_dict(), "versions": _versions(),
               "wall_time": time.perf_counter() - start}
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
    say(f"wrote {targets[0]} and {targets[1]} ({summary['wall_time']:.1f} s)")
    if not eig.converged:
        print("warning: not every eigenpair reached the tolerance; see the residuals",
              file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    from hessian_tools.examples.digits import CONFIGS
    parser = argparse.ArgumentParser(
        prog="hessian-tools",
        description="Hessian spectra and saddle-point analysis for JAX models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="train a small digits MLP (cached) and report its extreme Hessian "
        "eigenvalues", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--example", default="mlp-small", choices=sorted(CONFIGS),
                      help="built-in model")
    demo.add_argument("--k", type=int, default=5, help="eigenvalues at each end")
    demo.add_argument("--out", default="hessian_tools_out/demo", help="output folder")
    demo.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                      help="precision of the analysis (training is float32)")
    demo.add_argument("--seed", type=int, default=0, help="initialisation and PRNG seed")
    demo.add_argument("--no-cache", action="store_true", help="retrain instead of loading "
                      "cached weights")
    demo.add_argument("--overwrite", action="store_true", help="replace earlier results "
                      "without a note")
    demo.add_argument("--quiet", action="store_true", help="print nothing but errors")
    demo.add_argument("--json", action="store_true", help="print the results as JSON")
    demo.add_argument("--no-compile-cache", action="store_true", help="do not use JAX's "
                      "persistent compilation cache")
    demo.set_defaults(func=_demo)
    add_parsers(sub, argparse.ArgumentDefaultsHelpFormatter)
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        _enable_compile_cache(args)
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
