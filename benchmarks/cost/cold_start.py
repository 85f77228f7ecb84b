"""Where a cold ``ht.eigenvalues`` call spends its time: import, model, compilation, solve.

    .venv/bin/python benchmarks/cost/cold_start.py --example mlp-wide            # no disk cache
    .venv/bin/python benchmarks/cost/cold_start.py --example mlp-wide --cache /tmp/cc   # run twice

Prints the wall time of each phase, the number of XLA compilations and their total time
(the largest first), and the cold and warm top-5 solve. With ``--cache`` the persistent
compilation cache (``ht.enable_compilation_cache``) is used: run it twice to see what a
second process pays.
"""

from __future__ import annotations

import argparse
import dataclasses
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", default="mlp-wide")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--cache", default=None, help="persistent compilation cache folder")
    parser.add_argument("--precision", default="highest",
                        help="the Objective's matmul precision ('none': JAX's global default)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    import jax
    from jax._src import monitoring

    import hessian_tools as ht
    from hessian_tools.examples.digits import digits_objective
    if args.cache:
        ht.enable_compilation_cache(args.cache)
    t1 = time.perf_counter()
    obj = digits_objective(args.example)
    obj = dataclasses.replace(obj, precision=None if args.precision == "none" else args.precision)
    t2 = time.perf_counter()
    compiles = []
    monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiles.append(duration)
        if "backend_compile" in event else None)
    H = ht.hessian(obj)
    jax.block_until_ready(jax.tree.leaves(H.matvec_fn))
    t3 = time.perf_counter()
    cold = ht.eigenvalues(H, k=args.k, key=jax.random.key(0), tol=1e-3)
    t4 = time.perf_counter()
    warm = ht.eigenvalues(H, k=args.k, key=jax.random.key(1), tol=1e-3)
    t5 = time.perf_counter()
    top = sorted((round(c, 2) for c in compiles), reverse=True)[:8]
    print(f"{args.example}: import {t1 - t0:.2f} s, data and model {t2 - t1:.2f} s, "
          f"ht.hessian {t3 - t2:.2f} s, top-{args.k} cold {t4 - t3:.2f} s "
          f"({cold.num_matvecs} matvecs), warm {t5 - t4:.2f} s ({warm.num_matvecs} matvecs)")
    print(f"XLA compilations after the model was built: {len(compiles)}, "
          f"{sum(compiles):.2f} s in all; largest {top}")


if __name__ == "__main__":
    main()
