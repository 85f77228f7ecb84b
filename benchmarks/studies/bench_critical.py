"""Benchmark: critical points of small digits networks, and saddle-free Newton on an autoencoder.

Two reproductions after Dauphin et al. 2014:

1. **Loss vs index** (their Fig. 1). For a small MLP classifier (64 -> 8 -> 10, tanh,
   cross-entropy + 1e-3/2 ||w||^2, so that minima are finite) and a small autoencoder
   (64 -> 6 -> 64, tanh encoder, linear decoder, squared error), Newton-MR
   (``ht.find_critical_points``) runs from several starts: points along an Adam training
   run and random initialisations at several scales. Every point reached is classified
   (``ht.classify``: exact index from the dense Hessian) and plotted as training loss
   against the index fraction. Expected: the index grows with the loss.
2. **Training the autoencoder** with SGD, Adam and saddle-free Newton
   (``ht.saddle_free_newton``) from the same initialisation, full batch, with the same
   budget of *matvecs* (gradients + Hessian-vector products, each one pass over the data):
   loss against matvecs and against wall time. Each optimizer gets a 3-point grid (learning
   rate; damping for saddle-free Newton, whose learning rate is 1) and the best is plotted;
   the point each best run ends at is classified.

Usage (from the repository root)::

    .venv/bin/python benchmarks/studies/bench_critical.py            # ~10 min on 2 busy CPU cores
    .venv/bin/python benchmarks/studies/bench_critical.py --quick    # ~2 min, fewer starts and steps

Writes ``<out>/critical_points.json``, ``critical_index_vs_loss.png``,
``ae_training.json`` and ``ae_training.png`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import hessian_tools as ht  # noqa: E402
from hessian_tools.examples.digits import load_digits_data  # noqa: E402
from hessian_tools.files import save_figure, write_json  # noqa: E402

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/: shared helpers, results/, RESULTS*.md
WEIGHT_DECAY = 1e-3


# ---- the two models (plain JAX, dict parameters) ---------------------------------------------

def init_mlp(key, *, hidden=8, scale=1.0, dtype=jnp.float64):
    k1, k2 = jax.random.split(key)
    return {"w1": scale * jax.random.normal(k1, (64, hidden), dtype) / 8.0,
            "b1": jnp.zeros(hidden, dtype),
            "w2": scale * jax.random.normal(k2, (hidden, 10), dtype) / np.sqrt(hidden),
            "b2": jnp.zeros(10, dtype)}


def mlp_loss(p, batch):
    """Cross-entropy + (WEIGHT_DECAY / 2) ||w||^2 (weights only)."""
    x, y = batch
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * WEIGHT_DECAY * (jnp.sum(p["w1"] ** 2) + jnp.sum(p["w2"] ** 2))


def init_ae(key, *, hidden=6, scale=1.0, dtype=jnp.float64):
    k1, k2 = jax.random.split(key)
    return {"enc": scale * jax.random.normal(k1, (64, hidden), dtype) / 8.0,
            "b_enc": jnp.zeros(hidden, dtype),
            "dec": scale * jax.random.normal(k2, (hidden, 64), dtype) / np.sqrt(hidden),
            "b_dec": jnp.zeros(64, dtype)}


def ae_loss(p, batch):
    """Mean over examples of 1/2 ||x - dec(tanh(enc x))||^2."""
    x = batch[0]
    recon = jnp.tanh(x @ p["enc"] + p["b_enc"]) @ p["dec"] + p["b_dec"]
    return 0.5 * jnp.mean(jnp.sum((recon - x) ** 2, axis=1))


MODELS = {"mlp": (init_mlp, mlp_loss), "autoencoder": (init_ae, ae_loss)}


def data(dtype):
    x, y = load_digits_data(dtype=dtype)
    return x, y


# ---- part 1: critical points, loss vs index -------------------------------------------------

def trajectory_starts(loss, params, batch, checkpoints, *, learning_rate=1e-2):
    """Parameters along a full-batch Adam run, at the given step counts."""
    opt = optax.adam(learning_rate)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params, batch)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state

    out, done = [], 0
    for target in checkpoints:
        for _ in range(target - done):
            params, state = step(params, state)
        done = target
        out.append((f"adam step {target}", params))
    return out


def critical_points(name, args, batch):
    init, loss = MODELS[name]
    key = jax.random.key(args.seed)
    checkpoints = [0, 20, 100, 400] if args.quick else [0, 10, 30, 100, 300, 1000, 3000]
    scales = [0.1, 3.0] if args.quick else [0.03, 0.3, 1.0, 3.0]
    starts = trajectory_starts(loss, init(key), batch, checkpoints)
    for i, s in enumerate(scales):
        starts.append((f"random scale {s}", init(jax.random.fold_in(key, 100 + i), scale=s)))
    obj = ht.Objective(loss, starts[0][1], batch)
    t0 = time.perf_counter()
    search = ht.find_critical_points(obj, [p for _, p in starts], key=key,
                                     newton_steps=args.newton_iters, minres_matvecs=100,
                                     progress=not args.quiet)
    rows = []
    for (label, start), point in zip(starts, search):
        start_loss = float(loss(start, batch))
        rows.append({"start": label, "start_loss": start_loss, "status": point.status,
                     "verdict": point.verdict, "loss": point.loss, "grad_norm": point.grad_norm,
                     "index": point.index, "index_fraction": point.index_fraction,
                     "num_flat": point.report.num_flat, "lambda_min": point.report.lambda_min,
                     "lambda_max": point.report.lambda_max, "iterations": point.newton_steps,
                     "hvps": point.num_matvecs})
    return {"model": name, "num_params": obj.num_params, "num_examples": obj.num_examples,
            "wall_time_s": time.perf_counter() - t0, "points": rows,
            "search": search.to_dict()}, search


# ---- part 2: training the autoencoder ---------------------------------------------------------

GRID = {"sgd": [0.03, 0.1, 0.3], "adam": [3e-3, 1e-2, 3e-2], "sfn": [0.1, 0.3, 1.0]}


def _optimizer(name, value, krylov_dim):
    """``(optax transform, matvecs per step)``; ``value`` is the learning rate (SGD, Adam) or
    the damping (saddle-free Newton, learning rate 1)."""
    if name == "sfn":
        return ht.saddle_free_newton(ae_loss, learning_rate=1.0, num_steps=krylov_dim,
                                     damping=value), 1 + krylov_dim
    return {"sgd": optax.sgd, "adam": optax.adam}[name](value), 1


def train(name, value, params, batch, budget, krylov_dim):
    """Full-batch training with a matvec budget; returns the loss curve and final params."""
    opt, cost = _optimizer(name, value, krylov_dim)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(ae_loss)(params, batch)
        updates, state = opt.update(grads, state, params, batch=batch)
        return optax.apply_updates(params, updates), state, loss

    state = opt.init(params)
    jax.block_until_ready(step(params, state))               # compile outside the clock
    curve, used, t0, every = [(0, 0.0, float(ae_loss(params, batch)))], 0, time.perf_counter(), \
        max(cost, budget // 100)
    while used < budget:
        params, state, _ = step(params, state)
        used += cost
        if used % every < cost or used >= budget:
            curve.append((used, time.perf_counter() - t0, float(ae_loss(params, batch))))
    final = curve[-1][2] if np.isfinite(curve[-1][2]) else float("inf")
    return {"optimizer": name, "setting": value, "matvecs_per_step": cost, "curve": curve,
            "final_loss": final, "wall_time_s": time.perf_counter() - t0}, params


def training(args, batch):
    """Each optimizer over a 3-point grid (learning rate, or damping for SFN); the best of
    each by final loss is plotted. Same initialisation, same matvec budget."""
    params = init_ae(jax.random.key(args.seed), dtype=jnp.float32)
    batch32 = (jnp.asarray(batch[0], jnp.float32), batch[1])
    budget = 1100 if args.quick else args.budget
    runs, best = [], {}
    for name, values in GRID.items():
        for value in values:
            run, final_params = train(name, value, params, batch32, budget, args.krylov_dim)
            runs.append(run)
            if not args.quiet:
                print(f"{name} ({'damping' if name == 'sfn' else 'lr'} {value:g}): final loss "
                      f"{run['final_loss']:.4f} after {budget} matvecs, {run['wall_time_s']:.1f} s",
                      flush=True)
            if run["final_loss"] < best.get(name, ({"final_loss": np.inf},))[0]["final_loss"]:
                best[name] = (run, final_params)
    for name, (run, p) in best.items():                        # where each best run ended
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), p)
        rep = ht.classify(ht.Objective(ae_loss, p64, batch), key=jax.random.key(args.seed))
        run["classify"] = {"verdict": rep.verdict, "grad_norm": rep.grad_norm,
                           "lambda_min": rep.lambda_min, "lambda_max": rep.lambda_max,
                           "index": rep.index, "num_flat": rep.num_flat}
    return {"budget_matvecs": budget, "grid": GRID, "krylov_dim": args.krylov_dim,
            "runs": runs, "best": {name: run for name, (run, _) in best.items()}}


# ---- plots and output ---------------------------------------------------------------------------

def plot_points(searches):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(searches), figsize=(5 * len(searches), 3.8))
    for ax, (name, search) in zip(np.atleast_1d(axes), searches.items()):
        ht.plot_index_vs_loss(search, ax=ax)
        ax.set_title(f"{name}: critical points (Newton-MR)")
    fig.tight_layout()
    return fig


def plot_training(result):
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, run in result["best"].items():
        used, wall, value = np.array(run["curve"]).T
        what = "damping" if name == "sfn" else "lr"
        label = f"{name} ({what} {run['setting']:g})"
        ax1.plot(used, value, label=label)
        ax2.plot(wall, value, label=label)
    for ax, xlabel in ((ax1, "matvecs (gradients + HVPs)"), (ax2, "wall time (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_title("digits autoencoder 64-6-64: same init, same budget")
    fig.tight_layout()
    return fig


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(BENCH / "results"))
    p.add_argument("--quick", action="store_true", help="fewer starts, shorter training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--newton-iters", type=int, default=40)
    p.add_argument("--budget", type=int, default=4400, help="matvecs per optimizer")
    p.add_argument("--krylov-dim", type=int, default=10)
    p.add_argument("--parts", default="critical,training")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--replot", action="store_true", help="redraw the figures from the JSON")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.replot:
        saved = json.loads((out / "critical_points.json").read_text())["models"]
        searches = {k: ht.CriticalPointSearch.from_dict(v["search"]) for k, v in saved.items()}
        save_figure(plot_points(searches), out / "critical_index_vs_loss.png")
        save_figure(plot_training(json.loads((out / "ae_training.json").read_text())),
                    out / "ae_training.png")
        return 0
    batch = data(jnp.float64)
    parts = args.parts.split(",")
    t0 = time.perf_counter()
    if "critical" in parts:
        results, searches = {}, {}
        for name in MODELS:
            results[name], searches[name] = critical_points(name, args, batch)
            if not args.quiet:
                print(searches[name], flush=True)
        write_json(out / "critical_points.json", {"machine": machine(), "quick": args.quick,
                                                  "models": results})
        save_figure(plot_points(searches), out / "critical_index_vs_loss.png")
    if "training" in parts:
        result = training(args, batch)
        write_json(out / "ae_training.json", {"machine": machine(), "quick": args.quick,
                                              **result})
        save_figure(plot_training(result), out / "ae_training.png")
    print(f"done in {time.perf_counter() - t0:.0f} s; results in {out}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
