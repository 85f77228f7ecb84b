"""A fresh process's ``ht.density`` and ``ht.trace``, with the persistent compilation cache.

    c=$(mktemp -d); for i in 1 2 3; do
        .venv/bin/python benchmarks/cold_density.py --cache $c; done

The first process compiles into the empty cache folder; later ones load the compiled code
(what the CLI does: it calls ``ht.enable_compilation_cache()``). Prints the wall time of
building the operator plus a density, then of a Hutch++ trace.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", default="mlp-small")
    parser.add_argument("--cache", required=True, help="persistent compilation cache folder")
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--trace-matvecs", type=int, default=48)
    args = parser.parse_args()
    import jax

    import hessian_tools as ht
    from hessian_tools.examples.digits import digits_objective
    ht.enable_compilation_cache(args.cache)
    obj = digits_objective(args.example)
    t0 = time.perf_counter()
    H = ht.hessian(obj)
    ht.density(H, num_probes=args.probes, num_steps=args.steps, key=jax.random.key(0))
    t1 = time.perf_counter()
    ht.trace(H, method="hutch++", num_matvecs=args.trace_matvecs, key=jax.random.key(0))
    t2 = time.perf_counter()
    print(f"{args.example}: operator + density {args.probes}x{args.steps} {t1 - t0:.2f} s, "
          f"then Hutch++ with {args.trace_matvecs} products {t2 - t1:.2f} s")


if __name__ == "__main__":
    main()
