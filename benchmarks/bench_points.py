"""Benchmark: analyses at many points of one architecture, batched vs one call per point.

Ten end points of a digits MLP (``mlp-small``: 64 -> 32 -> 32 -> 10, tanh, 3.5k parameters,
all 1797 images, float32; ten training seeds, 300 Adam steps each, cached) are analysed:

- ``eigenvalues``: the 5 largest and 5 smallest Hessian eigenvalues at every point, by
  ``ht.eigenvalues`` in a loop (sequential) and by ``eigenvalues_at`` (batched: one
  compiled call per round of products, the points in lockstep);
- ``trace``: Hutch++ with 90 products per point, the same two ways.

Every timing is warm (each path run once before, to compile) and the best of ``--repeats``.
"Same accuracy": both paths run the same solver with the same keys, tolerance and
residual test; the largest difference between their eigenvalues is printed (and must be
at rounding level), with every point's maximum residual.

The batched product is vmapped over the points (``vmap=True``: matrix-vector becomes
matrix-matrix work) or a compiled loop over them (``vmap=False``); both are timed.

Usage (repository root)::

    flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_points.py
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np
from flax import nnx

import hessian_tools as ht
from hessian_tools import stacked as stacked_mod
from hessian_tools.analysis.points import eigenvalues_at, trace_at
from hessian_tools.examples.digits import digits_objective, trained_model


def points(num):
    return [nnx.state(trained_model("mlp-small", seed=s), nnx.Param) for s in range(num)]


def best(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def sequential(obj, pts, analysis, key, **kw):
    keys = jax.random.split(key, len(pts))
    out = []
    for p, sub in zip(pts, keys):
        op = ht.hessian(obj.with_params(p))
        out.append(ht.eigenvalues(op, key=sub, **kw) if analysis == "eigenvalues"
                   else ht.trace(op, key=sub, **kw))
    return out


def batched(obj, pts, analysis, key, vmap, **kw):
    original = stacked_mod.StackedOperator.__init__

    def init(self, *a, **k):
        original(self, *a, **{**k, "vmap": vmap})
    stacked_mod.StackedOperator.__init__ = init
    try:
        fn = eigenvalues_at if analysis == "eigenvalues" else trace_at
        return fn(obj, pts, key=key, mode="batched", **kw)
    finally:
        stacked_mod.StackedOperator.__init__ = original


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    obj = digits_objective("mlp-small")
    pts = points(args.points)
    key = jax.random.key(0)
    print(f"machine: {platform.machine()} {platform.system()}, backend {jax.default_backend()},"
          f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; jax {jax.__version__}")
    print(f"{args.points} points of mlp-small ({obj.num_params} parameters), float32, "
          f"{obj.groups.num_examples if hasattr(obj.groups, 'num_examples') else 1797} examples")
    cases = {"eigenvalues": dict(k=5, which="both"),
             "trace": dict(method="hutch++", num_matvecs=90)}
    for analysis, kw in cases.items():
        seq_fn = lambda: sequential(obj, pts, analysis, key, **kw)
        seq_fn()
        t_seq, seq = best(seq_fn, args.repeats)
        for vmap in (True, False):
            b_fn = lambda: batched(obj, pts, analysis, key, vmap, **kw)
            b_fn()
            t_b, res = best(b_fn, args.repeats)
            if analysis == "eigenvalues":
                diff = max(float(np.max(np.abs(np.asarray(a.values) - np.asarray(b.values))))
                           for a, b in zip(seq, res))
                resid = max(float(np.max(r.residuals)) for r in res)
                acc = f"max |eig diff| {diff:.1e}, max residual {resid:.1e}"
            else:
                diff = max(abs(a.value - b.value) for a, b in zip(seq, res))
                acc = f"max |trace diff| {diff:.1e}"
            print(f"{analysis:>11} vmap={vmap!s:5}: sequential {t_seq:6.2f} s, batched "
                  f"{t_b:6.2f} s, speed-up {t_seq / t_b:4.2f}x ({res.num_matvecs} products, "
                  f"{res.num_rounds} rounds, {res.num_calls} calls; {acc})", flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
