"""Benchmark: loss surfaces and curvature maps (issue 18).

For each digits model (default: the MLP 64-512-512-10 and the CNN), in one process, on the
same trained weights and data (all 1,797 images, float32):

* **floor**: one forward pass of the loss over the data, timed as a jitted call (the best of
  the whole batch and the cache-sized chunks the operators use), times the grid points;
* **ours**: ``loss_surface`` on a 51x51 filter-normalised grid, cold (compilation included)
  and warm (the fastest of ``--surface-repeats`` runs);
* **plain JAX loop**: one jitted ``loss(params + a d1 + b d2, data)`` per grid point, the
  point built with ``jax.tree.map`` (what a user writes first); timed on ``--loop-rows``
  rows of the grid and extrapolated to the whole grid when fewer than 51;
* **loss-landscapes 3.0.6** ``random_plane`` (PyTorch twin with the same weights and data,
  filter normalisation, ``steps=--peer-steps``), extrapolated per point when fewer than 51;
* **paired rounds**: ours, the floor and loss-landscapes (as shipped, and with torch
  flushing denormals to zero as XLA does) on 8x8 grids, interleaved round by round, the
  minimum over rounds (a shared machine's load changes between the full-grid timings);
* **plans**: seconds per point of 64 points evaluated with each evaluation plan
  (``lax.map`` with vmap widths 1, 4, 16, with and without the affine part shared, and one
  call per point), and what ``_plan`` chooses;
* **linearity by hand** (MLPs): the first layer's pre-activation ``x W(c) = x W + c1 x D1 +
  c2 x D2`` computed once and combined per point, against the same hand-written forward
  pass without it (the ceiling of what :mod:`hessian_tools.landscape.affine` can gain).

Then the **curvature map** on an 11x11 grid (``--curvature-models``): products and accuracy
of the warm-started map against independent cold solves by the same solver and by
``ht.eigenvalues(k=1, which="both")``, at tolerances ``--curvature-tols``, errors against a
reference (``--curvature-reference``): the same weights in float64, warm-started at
``tol=1e-7`` (x64 is enabled for that alone; every other array is float32), or, for the
wide MLP whose float64 bottom eigenvalues took over an hour here, independent
``ht.eigenvalues`` solves at a tighter tolerance.

Usage (from the repository root, under the bench lock, from a snapshot of the package)::

    mkdir -p /tmp/ht_snap && cp -r hessian_tools /tmp/ht_snap/
    flock /tmp/bench.lock env PYTHONPATH=/tmp/ht_snap .venv/bin/python benchmarks/peers/bench_landscape.py
    ... --models cnn --peer-steps 21 --loop-rows 5 --curvature-models ''    # a quicker run

Writes ``<out>/bench_landscape_<model>.json`` (``_paired.json`` with ``--only-paired``) and
``bench_landscape_curvature_<model>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)     # for the float64 curvature reference only

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import hessian_tools as ht  # noqa: E402
from hessian_tools import landscape as L  # noqa: E402
from hessian_tools.examples import digits  # noqa: E402
from hessian_tools.landscape import evaluate as ev  # noqa: E402
from hessian_tools.tree import path_str  # noqa: E402
from hessian_tools.files import write_json  # noqa: E402
from hessian_tools.results import jsonable  # noqa: E402

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/: shared helpers, results/, RESULTS*.md
sys.path.insert(0, str(BENCH))


def _machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "loadavg_start": os.getloadavg()}


def _timed(fn, repeats: int):
    """Median and min seconds of ``fn()`` (blocked until ready) over ``repeats`` calls."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.min(times))


def forward_floor(obj, repeats: int) -> dict:
    """One forward pass of the loss over the data, the faster of two layouts."""
    data = obj.data
    whole = jax.jit(lambda p, b: obj.loss(p, b))
    groups = ev._product_groups(obj, "auto")
    chunked = jax.jit(lambda p, g: ev._dataset_mean(lambda b: obj.loss(p, b), g))
    t_whole = _timed(lambda: whole(obj.params, data), repeats)
    t_chunked = _timed(lambda: chunked(obj.params, groups), repeats)
    return {"whole_batch_s": t_whole, "chunked_s": t_chunked, "chunks": groups.num_batches,
            "forward_s": min(t_whole[0], t_chunked[0])}


def plain_loop(obj, dirs, grid, rows: int) -> dict:
    """One jitted loss per grid point, the point built on the host side of the call."""
    loss = jax.jit(lambda p, b: obj.loss(p, b))
    p0, d1, d2 = obj.params, dirs[0], dirs[1]
    at = lambda a, b: jax.tree.map(lambda o, u, v: o + a * u + b * v, p0, d1, d2)
    float(loss(at(0.1, 0.2), obj.data))                       # compile
    xs, ys = grid[0][:rows], grid[1]
    t = time.perf_counter()
    values = [[float(loss(at(a, b), obj.data)) for b in ys] for a in xs]
    seconds = time.perf_counter() - t
    n = len(xs) * len(ys)
    return {"points_timed": n, "seconds": seconds, "per_point_s": seconds / n,
            "values": np.asarray(values)}


def loss_landscapes_peer(name, obj, steps: int) -> dict:
    import loss_landscapes
    import loss_landscapes.metrics
    import torch
    from _torch_twins import build_twin, torch_data
    cfg = digits.CONFIGS[name]
    twin = build_twin(cfg, obj.params)
    x, y = torch_data(*obj.data, image=cfg["kind"] == "cnn")
    criterion = torch.nn.CrossEntropyLoss()
    with torch.no_grad():
        origin = float(criterion(twin.model(x), y))
    metric = loss_landscapes.metrics.Loss(criterion, x, y)
    torch.manual_seed(0)
    t = time.perf_counter()
    values = loss_landscapes.random_plane(twin.model, metric, distance=1, steps=steps,
                                          normalization="filter", deepcopy_model=True)
    seconds = time.perf_counter() - t
    return {"steps": steps, "points": steps * steps, "seconds": seconds,
            "per_point_s": seconds / steps ** 2, "torch_threads": torch.get_num_threads(),
            "twin_origin_loss": origin, "finite": bool(np.all(np.isfinite(values)))}


_one_point = jax.jit(ev._mean_at)


def paired_rounds(name, obj, dirs, rounds: int, side: int = 8) -> dict:
    """Per-point seconds of ours, the forward floor and loss-landscapes (as shipped, and with
    torch flushing denormals to zero, as XLA does) on small grids, interleaved round by
    round: on a shared machine whose load changes, the minimum over rounds compares the
    three at the same load."""
    import loss_landscapes
    import loss_landscapes.metrics
    import torch
    from _torch_twins import build_twin, torch_data
    cfg = digits.CONFIGS[name]
    x, y = torch_data(*obj.data, image=cfg["kind"] == "cnn")
    criterion = torch.nn.CrossEntropyLoss()
    metric = loss_landscapes.metrics.Loss(criterion, x, y)
    grid = (np.linspace(-1, 1, side),) * 2
    points = side * side
    forward = jax.jit(lambda p, g: ev._dataset_mean(lambda b: obj.loss(p, b), g))
    groups = ev._product_groups(obj, "auto")

    def peer(flush):
        torch.set_flush_denormal(flush)
        twin = build_twin(cfg, obj.params)
        t = time.perf_counter()
        loss_landscapes.random_plane(twin.model, metric, distance=1, steps=side,
                                     normalization="filter")
        torch.set_flush_denormal(False)
        return (time.perf_counter() - t) / points

    def ours():
        t = time.perf_counter()
        L.loss_surface(obj, dirs, grid=grid)
        return (time.perf_counter() - t) / points

    def floor():
        return _timed(lambda: forward(obj.params, groups), 5)[1]

    runs = {"ours": ours, "floor (one forward pass)": floor,
            "loss-landscapes": lambda: peer(False),
            "loss-landscapes, denormals flushed": lambda: peer(True)}
    for run in runs.values():
        run()                                               # compile, warm up
    times = {label: [] for label in runs}
    for _ in range(rounds):
        for label, run in runs.items():
            times[label].append(run())
    return {label: {"min_s": float(np.min(t)), "median_s": float(np.median(t))}
            for label, t in times.items()} | {"points_per_round": points, "rounds": rounds}


def plans(obj, dirs, num: int = 64, rounds: int = 5) -> dict:
    """Seconds per point (median and min over ``rounds``, the plans interleaved so that a
    change in the machine's load hits them alike) of ``num`` points with each plan."""
    coords = np.random.default_rng(0).uniform(-1, 1, size=(num, 2))
    fn = ev._values_fn(obj, None)
    chosen = ev._plan(obj, 2601, None, None, fn=fn)
    groups = ev._product_groups(obj, "auto")
    dtype = jax.tree.leaves(obj.params)[0].dtype
    runs = {"one call per point": lambda: [
        _one_point(fn, obj.params, dirs.vectors, jnp.asarray(c, dtype), groups) for c in coords]}
    for width in sorted({1, 4, 16, chosen.width}):
        for affine in (False, True):
            e = ev._Evaluator(obj, obj.params, dirs.vectors, num_points=num, chunk_size=num,
                              vmap_width=width)
            e.plan = ev._Plan("compiled", width, num, affine)
            label = f"lax.map width {width}" + (", affine part shared" if affine else "")
            runs[label] = lambda e=e: e(coords)
    times = {label: [] for label in runs}
    for label, run in runs.items():
        jax.block_until_ready(run())                        # compile
    for _ in range(rounds):
        for label, run in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(run())
            times[label].append((time.perf_counter() - t) / num)
    out = {label: {"median_s": float(np.median(t)), "min_s": float(np.min(t))}
           for label, t in times.items()}
    out["chosen"] = chosen.__dict__
    return out


def linearity(name, obj, dirs, num: int = 256, repeats: int = 3) -> dict:
    """The MLP forward pass with and without the first layer's affine pre-activation shared."""
    flat = lambda t: {path_str(p): jnp.asarray(v) for p, v in
                      jax.tree_util.tree_flatten_with_path(t)[0]}
    p, d1, d2 = flat(obj.params), flat(dirs[0]), flat(dirs[1])
    n = len(digits.CONFIGS[name]["widths"]) + 1
    W = [[t[f"layers/{i}/kernel"] for i in range(n)] for t in (p, d1, d2)]
    B = [[t[f"layers/{i}/bias"] for i in range(n)] for t in (p, d1, d2)]
    x, y = obj.data

    def layer(i, c):
        return (W[0][i] + c[0] * W[1][i] + c[1] * W[2][i],
                B[0][i] + c[0] * B[1][i] + c[1] * B[2][i])

    def head(h, c):
        for i in range(1, n):
            w, b = layer(i, c)
            h = h @ w + b
            h = jnp.tanh(h) if i < n - 1 else h
        return digits.cross_entropy(h, (x, y))

    @jax.jit
    def plain(cs):
        return jax.lax.map(lambda c: head(jnp.tanh(x @ layer(0, c)[0] + layer(0, c)[1]), c), cs)

    @jax.jit
    def shared(cs):
        z = [x @ W[k][0] + B[k][0] for k in range(3)]
        return jax.lax.map(lambda c: head(jnp.tanh(z[0] + c[0] * z[1] + c[1] * z[2]), c), cs)

    cs = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, size=(num, 2)), jnp.float32)
    diff = float(jnp.max(jnp.abs(plain(cs) - shared(cs))))
    t_plain = _timed(lambda: plain(cs), repeats)[0] / num
    t_shared = _timed(lambda: shared(cs), repeats)[0] / num
    return {"plain_per_point_s": t_plain, "shared_first_layer_per_point_s": t_shared,
            "speedup": t_plain / t_shared, "max_abs_difference": diff}


def _full_grid(name, obj, dirs, grid, args, res) -> None:
    """The 51x51 timings: floor, ours cold and warm, the plain loop, the peer."""
    points = args.grid ** 2
    res["floor_before"] = forward_floor(obj, args.repeats)
    t = time.perf_counter()
    cold = L.loss_surface(obj, dirs, grid=grid)
    cold_s = time.perf_counter() - t
    warm_runs = []
    for _ in range(args.surface_repeats):
        t = time.perf_counter()
        warm = L.loss_surface(obj, dirs, grid=grid)
        warm_runs.append(time.perf_counter() - t)
    warm_s = min(warm_runs)
    res["floor_after"] = forward_floor(obj, args.repeats)
    forward = float(np.median([res["floor_before"]["forward_s"],
                               res["floor_after"]["forward_s"]]))
    floor = points * forward
    res["ours"] = {"cold_s": cold_s, "warm_s": warm_s, "warm_runs_s": warm_runs,
                   "num_evaluations": warm.num_evaluations,
                   "plan": warm.plan, "origin_loss": warm.origin_loss,
                   "warm_over_floor": warm_s / floor, "cold_over_floor": cold_s / floor,
                   "identical_cold_warm": bool(np.array_equal(cold.values, warm.values))}
    res["floor"] = {"forward_s": forward, "grid_s": floor}
    print(f"[{name}] floor {floor:.1f} s ({forward * 1e3:.2f} ms per forward pass); ours warm "
          f"{warm_s:.1f} s ({warm_s / floor:.2f}x floor), cold {cold_s:.1f} s", flush=True)
    loop = plain_loop(obj, dirs, grid, args.loop_rows)
    res["plain_loop"] = {k: v for k, v in loop.items() if k != "values"}
    res["plain_loop"]["grid_s"] = loop["per_point_s"] * points
    res["plain_loop"]["max_rel_diff_vs_ours"] = float(np.max(
        np.abs(loop["values"] - warm.values[:args.loop_rows]) / warm.values[:args.loop_rows]))
    print(f"[{name}] plain JAX loop {loop['per_point_s'] * 1e3:.2f} ms per point -> "
          f"{res['plain_loop']['grid_s']:.1f} s", flush=True)
    if args.peer_steps:
        peer = loss_landscapes_peer(name, obj, args.peer_steps)
        peer["grid_s"] = peer["per_point_s"] * points
        peer["origin_loss_diff"] = abs(peer["twin_origin_loss"] - warm.origin_loss)
        res["loss_landscapes"] = peer
        print(f"[{name}] loss-landscapes {peer['per_point_s'] * 1e3:.2f} ms per point -> "
              f"{peer['grid_s']:.1f} s ({peer['grid_s'] / warm_s:.1f}x ours)", flush=True)


def surface_bench(name, args) -> dict:
    obj = digits.digits_objective(name)
    dirs = L.random_directions(obj.params, jax.random.key(0), normalization="filter",
                               ignore="biasbn")
    grid = (np.linspace(-1, 1, args.grid),) * 2
    res = {"model": name, "num_params": obj.num_params, "num_examples": obj.num_examples,
           "grid": args.grid, "machine": _machine()}
    if not args.only_paired:
        _full_grid(name, obj, dirs, grid, args, res)
    if args.paired_rounds:
        res["paired_per_point_s"] = paired_rounds(name, obj, dirs, args.paired_rounds)
        for label, t in res["paired_per_point_s"].items():
            print(f"[{name}] paired {label}: {t}", flush=True)
    res["plans_per_point_s"] = plans(obj, dirs)
    for label, t in res["plans_per_point_s"].items():
        print(f"[{name}] plan {label}: {t}", flush=True)
    if digits.CONFIGS[name]["kind"] == "mlp":
        res["linearity"] = linearity(name, obj, dirs)
        print(f"[{name}] linearity: {res['linearity']}", flush=True)
    res["machine"]["loadavg_end"] = os.getloadavg()
    return res


def _errors(m, ref) -> dict:
    scale = np.abs(ref["lambda_max"])
    top = np.abs(m["lambda_max"] - ref["lambda_max"]) / scale
    bottom = np.abs(m["lambda_min"] - ref["lambda_min"]) / scale
    return {"top_max": float(top.max()), "top_median": float(np.median(top)),
            "bottom_max": float(bottom.max()), "bottom_median": float(np.median(bottom))}


def independent_eigenvalues(obj, dirs, grid, tol) -> dict:
    lmax, lmin, total = [], [], 0
    for i, a in enumerate(grid[0]):
        for j, b in enumerate(grid[1]):
            p = jax.tree.map(lambda o, u, v: o + a * u + b * v, obj.params, dirs[0], dirs[1])
            e = ht.eigenvalues(ht.hessian(obj.with_params(p)), k=1, which="both", tol=tol,
                               key=jax.random.key(i * len(grid[1]) + j))
            lmax.append(e.values[0])
            lmin.append(e.values[-1])
            total += e.num_matvecs
    shape = (len(grid[0]), len(grid[1]))
    return {"lambda_max": np.reshape(lmax, shape), "lambda_min": np.reshape(lmin, shape),
            "total_matvecs": total}


def _reference(name, obj, dirs, grid, spec: str) -> tuple[dict, dict]:
    """``float64``: the warm-started map of the same weights in float64 at ``tol=1e-7``;
    ``eigenvalues:TOL``: independent ``ht.eigenvalues`` solves in float32 at ``TOL`` (for
    models whose float64 solves take too long here)."""
    t = time.perf_counter()
    if spec == "float64":
        obj64 = digits.digits_objective(name, dtype=jnp.float64)      # the same weights
        dirs64 = dataclasses.replace(dirs, vectors=jax.tree.map(
            lambda a: a.astype(jnp.float64), dirs.vectors))
        ref = L.curvature_map(obj64, dirs64, grid=grid, key=jax.random.key(9), tol=1e-7,
                              num_matvecs=1000)
        values = {"lambda_max": ref.lambda_max, "lambda_min": ref.lambda_min}
        info = {"total_matvecs": ref.num_matvecs, "converged": bool(ref.converged.all())}
    else:
        tol = float(spec.split(":")[1])
        values = independent_eigenvalues(obj, dirs, grid, tol)
        info = {"total_matvecs": values["total_matvecs"]}
    return values, {"spec": spec, "seconds": time.perf_counter() - t, **info}


def curvature_bench(name, args) -> dict:
    obj = digits.digits_objective(name)
    dirs = L.random_directions(obj.params, jax.random.key(0))
    grid = (np.linspace(-1, 1, 11),) * 2
    res = {"model": name, "grid": 11, "machine": _machine(), "runs": {}}
    reference, res["reference"] = _reference(name, obj, dirs, grid, args.curvature_reference)
    print(f"[{name} curvature] reference {res['reference']}", flush=True)
    as_dict = lambda m: {"lambda_max": m.lambda_max, "lambda_min": m.lambda_min}
    for tol in (float(t) for t in args.curvature_tols.split(",")):
        for label, warm_start in (("warm (snake)", True), ("independent, same solver", False)):
            t = time.perf_counter()
            m = L.curvature_map(obj, dirs, grid=grid, key=jax.random.key(1), tol=tol,
                                warm_start=warm_start)
            res["runs"][f"{label}, tol={tol:g}"] = {
                "total_matvecs": m.num_matvecs, "seconds": time.perf_counter() - t,
                "converged": bool(m.converged.all()), **_errors(as_dict(m), reference)}
        t = time.perf_counter()
        e = independent_eigenvalues(obj, dirs, grid, tol)
        res["runs"][f"independent ht.eigenvalues, tol={tol:g}"] = {
            "total_matvecs": e["total_matvecs"], "seconds": time.perf_counter() - t,
            **_errors(e, reference)}
    for label, run in res["runs"].items():
        print(f"[{name} curvature] {label}: {run['total_matvecs']} products, "
              f"{run['seconds']:.1f} s, errors top {run['top_max']:.1e} bottom "
              f"{run['bottom_max']:.1e} (max over points, relative to λ_max)", flush=True)
    res["machine"]["loadavg_end"] = os.getloadavg()
    return res


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp-wide,cnn,mlp-small")
    parser.add_argument("--grid", type=int, default=51)
    parser.add_argument("--peer-steps", type=int, default=51,
                        help="loss-landscapes grid side (0: skip the peer)")
    parser.add_argument("--loop-rows", type=int, default=51,
                        help="rows of the grid timed by the plain JAX loop")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed forward passes for the floor (median)")
    parser.add_argument("--surface-repeats", type=int, default=2,
                        help="warm surfaces timed (the fastest is reported, all are kept)")
    parser.add_argument("--paired-rounds", type=int, default=5,
                        help="interleaved rounds of ours, the floor and the peer on 8x8 grids")
    parser.add_argument("--only-paired", action="store_true",
                        help="skip the full-grid timings (floor, ours, loop, peer)")
    parser.add_argument("--curvature-models", default="mlp-small,mlp-wide")
    parser.add_argument("--curvature-tols", default="1e-3,1e-4")
    parser.add_argument("--curvature-reference", default="float64",
                        help="'float64' or 'eigenvalues:TOL' (see _reference)")
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    for name in filter(None, args.models.split(",")):
        suffix = "_paired" if args.only_paired else ""
        write_json(out / f"bench_landscape_{name}{suffix}.json",
                   jsonable(surface_bench(name, args)))
    for name in filter(None, args.curvature_models.split(",")):
        write_json(out / f"bench_landscape_curvature_{name}.json",
                   jsonable(curvature_bench(name, args)))


if __name__ == "__main__":
    main()
