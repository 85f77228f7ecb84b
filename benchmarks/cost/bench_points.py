"""Benchmark: analyses at many points of one architecture, batched vs one call per point.

Ten end points of a digits MLP (``mlp-small``: 64 -> 32 -> 32 -> 10, tanh, 3.5k parameters,
all 1797 images, float32; ten training seeds, 300 Adam steps each, cached) are analysed:

- ``eigenvalues``: the 5 largest and 5 smallest Hessian eigenvalues at every point, by
  ``ht.eigenvalues`` in a loop (sequential) and by ``eigenvalues_at`` (batched) with its
  two solvers: ``compiled`` (one vmapped Lanczos run for all points in one compiled call,
  then one batched product for the explicit residuals) and ``lockstep`` (``ht.eigenvalues``
  itself at every point, one compiled product call per round);
- ``trace``: Hutch++ with 90 products per point, sequential, ``trace_at``'s compiled
  solver (one vmapped Hutch++ for all points) and its lockstep; ``--only-traces`` adds the
  floor: the same products alone, per point and stacked.

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
from hessian_tools.analysis.points import classify_at, eigenvalues_at, trace_at
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
        return trace_at(obj, pts, key=key, mode="batched", solver=solver, **kw)
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


def trace_floor(obj, pts, repeats):
    """The products alone of the sequential traces (Hutch++ with 90 products: blocks of 30
    and 60 random vectors per point through ``op.rows``, as ``ht.trace`` makes them), warm,
    best of ``repeats``: the part of the sequential time that batching the points can only
    save by making the products themselves cheaper."""
    ops = [ht.hessian(obj.with_params(p)) for p in pts]
    keys = jax.random.split(jax.random.key(1), 2)
    blocks = [jax.tree.map(lambda a, k=k: jax.random.normal(k, (n,) + a.shape, a.dtype),
                           obj.params) for k, n in zip(keys, (30, 60))]
    call = lambda: jax.block_until_ready([op.rows(b) for op in ops for b in blocks])
    call()
    return {f"{len(pts)} x op.rows(30 + 60)": best(call, repeats)[0]}


def classify_case(obj, pts, key):
    """``ht.classify`` at every point (the dense path: 3466 <= dense_max_params), one call per
    point against ``classify_at``'s lockstep, each once after a warm-up at two points."""
    keys = jax.random.split(key, len(pts))
    seq = lambda ps: [ht.classify(obj.with_params(p), key=k) for p, k in zip(ps, keys)]
    seq(pts[:1])
    classify_at(obj, pts[:2], key=key)
    t = time.perf_counter()
    a = seq(pts)
    t_seq = time.perf_counter() - t
    t = time.perf_counter()
    b = classify_at(obj, pts, key=key)
    t_b = time.perf_counter() - t
    same = all(x.verdict == y.verdict and x.index == y.index for x, y in zip(a, b))
    diff = max(abs(x.lambda_min - y.lambda_min) for x, y in zip(a, b))
    print(f"   classify lockstep: sequential {t_seq:6.2f} s, batched {t_b:6.2f} s, speed-up "
          f"{t_seq / t_b:4.2f}x ({b.num_matvecs} products, {b.num_rounds} rounds, "
          f"{b.num_calls} calls; verdicts and indices equal: {same}, max |d lambda_min| "
          f"{diff:.1e}; verdicts {sorted(set(r.verdict for r in b))})", flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only-eigenvalues", action="store_true", help="skip the traces, the "
                        "lockstep variants and the product timings")
    parser.add_argument("--classify", action="store_true", help="only classify: 10 x "
                        "ht.classify against classify_at (lockstep), one repeat each")
    parser.add_argument("--only-traces", action="store_true", help="the traces (compiled and "
                        "lockstep) and the products-alone floor only")
    args = parser.parse_args()
    obj = digits_objective("mlp-small")
    pts = points(args.points)
    key = jax.random.key(0)
    print(f"machine: {platform.machine()} {platform.system()}, backend {jax.default_backend()},"
          f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; jax {jax.__version__}")
    print(f"{args.points} points of mlp-small ({obj.num_params} parameters), float32, "
          f"{obj.groups.num_examples if hasattr(obj.groups, 'num_examples') else 1797} examples")
    if args.classify:
        return classify_case(obj, pts, key)
    if args.only_traces:
        for name, t in trace_floor(obj, pts, 5).items():
            print(f"products alone, 90 per point, {name:>24}: {t:6.3f} s")
    if not (args.only_eigenvalues or args.only_traces):
        for name, t in product_times(obj, pts, 20).items():
            print(f"one product at each of {len(pts)} points, {name:>18}: {1e3 * t:7.2f} ms")
    cases = {"eigenvalues": dict(k=5, which="both"),
             "trace": dict(method="hutch++", num_matvecs=90)}
    if args.only_eigenvalues:
        del cases["trace"]
    if args.only_traces:
        del cases["eigenvalues"]
    for analysis, kw in cases.items():
        seq_fn = lambda: sequential(obj, pts, analysis, key, **kw)
        seq_fn()
        t_seq, seq = best(seq_fn, args.repeats)
        if analysis == "eigenvalues":
            print(f"sequential: max residual {max(float(np.max(r.residuals)) for r in seq):.1e}, "
                  f"{sum(r.num_matvecs for r in seq)} products")
        variants = [] if args.only_eigenvalues else [(True, "lockstep", {}),
                                                     (False, "lockstep", {})]
        if analysis == "trace":
            variants = [(True, "compiled", {}), (False, "compiled", {})] + variants
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
