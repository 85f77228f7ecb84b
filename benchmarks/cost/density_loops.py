"""Which SLQ loop form is faster per model: the compiled loop or the host loop with NumPy bases.

    .venv/bin/python benchmarks/cost/density_loops.py                       # mlp-small, 10 x 80
    .venv/bin/python benchmarks/cost/density_loops.py --example mlp-wide
    .venv/bin/python benchmarks/cost/density_loops.py --example cnn --probes 4 --steps 30

Each form runs in a fresh process: the first ``ht.density`` call (cold, compilation included)
and a second one with another key (warm). For conv nets on CPU both forms are host loops:
the comparison is then NumPy bases against the compiled host step (``--bases``).
Prints one line per form; results go to ``RESULTS_density.md`` by hand.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def _one(args) -> None:
    import jax

    import hessian_tools as ht
    import hessian_tools.analysis.spectral as sd
    from hessian_tools.examples.digits import digits_objective
    if args.bases == "device":
        sd._numpy_basis = lambda op: False
    H = ht.hessian(digits_objective(args.example))
    times = []
    for seed in (0, 1):
        t0 = time.perf_counter()
        dens = ht.density(H, num_probes=args.probes, num_steps=args.steps,
                          key=jax.random.key(seed), loop=args.loop)
        times.append(time.perf_counter() - t0)
    print(f"{args.example} {args.probes}x{args.steps} loop={dens.loop} "
          f"bases={dens.extra['basis']}: cold {times[0]:.2f} s, warm {times[1]:.2f} s, "
          f"{dens.num_matvecs} matvecs, top node {dens.nodes.max():.6f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--example", default="mlp-small")
    p.add_argument("--probes", type=int, default=10)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--loop", default=None, help=argparse.SUPPRESS)
    p.add_argument("--bases", default="auto", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.loop:
        return _one(args)
    forms = ([("host", "numpy"), ("host", "device")] if args.example == "cnn"
             else [("compiled", "auto"), ("host", "numpy")])
    for loop, bases in forms:
        subprocess.run([sys.executable, __file__, "--example", args.example, "--probes",
                        str(args.probes), "--steps", str(args.steps), "--loop", loop,
                        "--bases", bases], check=True)


if __name__ == "__main__":
    main()
