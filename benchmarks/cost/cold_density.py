"""A fresh process's ``ht.density`` and ``ht.trace``, with or without the compilation cache.

    c=$(mktemp -d); for i in 1 2 3; do
        .venv/bin/python benchmarks/cost/cold_density.py --cache $c; done
    .venv/bin/python benchmarks/cost/cold_density.py --example mlp-wide --probes 0 \
        --trace-method xtrace --trace-matvecs 16              # a cold trace, no cache

With ``--cache`` the first process compiles into the empty cache folder and later ones load
the compiled code (what the CLI does: it calls ``ht.enable_compilation_cache()``). Prints
the wall time of building the operator plus a density (``--probes 0``: the operator only),
then of a trace.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", default="mlp-small")
    parser.add_argument("--cache", default=None, help="persistent compilation cache folder")
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--trace-matvecs", type=int, default=48)
    parser.add_argument("--trace-method", default="hutch++")
    args = parser.parse_args()
    import jax

    import hessian_tools as ht
    from hessian_tools.examples.digits import digits_objective
    if args.cache:
        ht.enable_compilation_cache(args.cache)
    obj = digits_objective(args.example)
    t0 = time.perf_counter()
    H = ht.hessian(obj)
    jax.block_until_ready(H.matvec_fn)
    if args.probes:
        ht.density(H, num_probes=args.probes, num_steps=args.steps, key=jax.random.key(0))
    t1 = time.perf_counter()
    tr = ht.trace(H, method=args.trace_method, num_matvecs=args.trace_matvecs,
                  key=jax.random.key(0))
    t2 = time.perf_counter()
    what = f"density {args.probes}x{args.steps}" if args.probes else "(no density)"
    print(f"{args.example}: operator + {what} {t1 - t0:.2f} s, then {args.trace_method} with "
          f"{tr.num_matvecs} products {t2 - t1:.2f} s; operator + trace "
          f"{t2 - t0 if not args.probes else float('nan'):.2f} s")


if __name__ == "__main__":
    main()
