"""Benchmark: analyses at many points of one architecture, batched vs one call per point.

Ten end points of a digits MLP (``mlp-small``: 64 -> 32 -> 32 -> 10, tanh, 3.5k parameters,
all 1797 images, float32; ten training seeds, 300 Adam steps each, cached) are analysed:

- ``eigenvalues``: the 5 largest and 5 smallest Hessian eigenvalues at every point, by
  ``ht.eigenvalues`` in a loop (sequential) and by ``eigenvalues_at`` (batched) with its
  two solvers: ``compiled`` (one vmapped Lanczos run for all points in one compiled call,
  then one batched product for the explicit residuals) and ``lockstep`` (``ht.eigenvalues``
  itself at every point, one compiled product call per round);
- ``trace``: Hutch++ with 90 products per point, the same two ways.

Every timing is warm (each path run once before, to compile) and the best of ``--repeats``.
"Same accuracy": every path reports explicit residuals ``||H v - lambda v||`` and calls a
point converged under the same test (all within ``10 tol max|lambda|``, default tol 1e-4 in
float32); the largest difference from the sequential eigenvalues and the largest residual
are printed, and the run fails if a point did not converge.

The batched product is vmapped over the points (``vmap=True``: matrix-vector becomes
matrix-matrix work) or a compiled loop over them (``vmap=False``); both are timed.

Usage (repository root)::

    flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/cost/bench_points.py
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
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


def batched(obj, pts, analysis, key, vmap, solver, **kw):
    original = stacked_mod.StackedOperator.__init__

    def init(self, *a, **k):
        original(self, *a, **{**k, "vmap": vmap})
    stacked_mod.StackedOperator.__init__ = init
    try:
        if analysis == "eigenvalues":
            return eigenvalues_at(obj, pts, key=key, mode="batched", solver=solver, **kw)
        return trace_at(obj, pts, key=key, mode="batched", **kw)
    finally:
        stacked_mod.StackedOperator.__init__ = original


def product_times(obj, pts, repeats):
    """Seconds per round of products: one single-point HVP per point (P calls) against one
    stacked call for all P points (vmapped and looped), warm, best of ``repeats``."""
    ops = [ht.hessian(obj.with_params(p)) for p in pts]
    vecs = [jax.tree.map(jnp.ones_like, obj.params) for _ in pts]
    block = lambda out: jax.block_until_ready(out)
    single = lambda: block([op.apply_unchecked(v) for op, v in zip(ops, vecs)])
    rows = jax.tree.map(lambda a: jnp.ones((len(pts), 1) + a.shape, a.dtype), obj.params)
    single()
    out = {"single x P": best(single, repeats)[0]}
    for vmap in (True, False):
        op = stacked_mod.StackedOperator(obj, pts, vmap=vmap)
        call = lambda: block(op.products(list(range(len(pts))), rows))
        call()
        out[f"stacked vmap={vmap}"] = best(call, repeats)[0]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only-eigenvalues", action="store_true", help="skip the traces, the "
                        "lockstep variants and the product timings")
    args = parser.parse_args()
    obj = digits_objective("mlp-small")
    pts = points(args.points)
    key = jax.random.key(0)
    print(f"machine: {platform.machine()} {platform.system()}, backend {jax.default_backend()},"
          f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; jax {jax.__version__}")
    print(f"{args.points} points of mlp-small ({obj.num_params} parameters), float32, "
          f"{obj.groups.num_examples if hasattr(obj.groups, 'num_examples') else 1797} examples")
    if not args.only_eigenvalues:
        for name, t in product_times(obj, pts, 20).items():
            print(f"one product at each of {len(pts)} points, {name:>18}: {1e3 * t:7.2f} ms")
    cases = {"eigenvalues": dict(k=5, which="both"),
             "trace": dict(method="hutch++", num_matvecs=90)}
    if args.only_eigenvalues:
        del cases["trace"]
    for analysis, kw in cases.items():
        seq_fn = lambda: sequential(obj, pts, analysis, key, **kw)
        seq_fn()
        t_seq, seq = best(seq_fn, args.repeats)
        if analysis == "eigenvalues":
            print(f"sequential: max residual {max(float(np.max(r.residuals)) for r in seq):.1e}, "
                  f"{sum(r.num_matvecs for r in seq)} products")
        variants = [] if args.only_eigenvalues else [(True, "lockstep", {}),
                                                     (False, "lockstep", {})]
        if analysis == "eigenvalues":     # the others: residuals nearer the sequential ones
            variants = [(True, "compiled", {}), (True, "compiled", {"num_steps": 100}),
                        (True, "compiled", {"num_steps": 120}),
                        (True, "compiled", {"num_steps": 140}),
                        (True, "compiled", {"tol": 1e-5})] + variants
        for vmap, solver, more in variants:
            b_fn = lambda: batched(obj, pts, analysis, key, vmap, solver, **kw, **more)
            b_fn()
            t_b, res = best(b_fn, args.repeats)
            if analysis == "eigenvalues":
                diff = max(float(np.max(np.abs(np.asarray(a.values) - np.asarray(b.values))))
                           for a, b in zip(seq, res))
                resid = max(float(np.max(r.residuals)) for r in res)
                assert res.converged and all(r.converged for r in seq), "not converged"
                acc = f"max |eig diff| {diff:.1e}, max residual {resid:.1e}"
            else:
                diff = max(abs(a.value - b.value) for a, b in zip(seq, res))
                acc = f"max |trace diff| {diff:.1e}"
            label = solver + "".join(f" {k}={v:g}" for k, v in more.items())
            print(f"{analysis:>11} {label:>17} vmap={vmap!s:5}: sequential {t_seq:6.2f} s, batched "
                  f"{t_b:6.2f} s, speed-up {t_seq / t_b:4.2f}x ({res.num_matvecs} products, "
                  f"{res.num_rounds} rounds, {res.num_calls} calls; {acc})", flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
