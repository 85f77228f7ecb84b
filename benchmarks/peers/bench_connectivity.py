"""Benchmark: the loss barrier between two independently trained networks, before and after
permutation alignment, and our weight matching against ``rebasin`` (PyTorch).

For each width ``h`` in (64, 256, 512), two digits tanh MLPs 64-h-h-10 are trained from
seeds 0 and 1 (full-batch Adam, learning rate 1e-2, 300 steps, float32; the weights are
cached as flax msgpack). Then, in the same run:

1. the spec is derived from the model (``permutation_spec``), timed;
2. **ours**: ``align(a, b, spec, method="weights", key=key(0))`` (Ainsworth et al.'s weight
   matching), median wall time of 5 runs after a warm-up; and activation matching on the
   training inputs;
3. **rebasin** 0.0.47: ``PermutationCoordinateDescent(model_a, model_b, x[:8]).rebasin()`` on
   the torch twins (same weights, ``benchmarks/_torch_twins.py``), ``torch.manual_seed(0)``,
   median of 5 runs after a warm-up (its graph tracing included; ours is the matching alone,
   and our spec derivation is timed separately);
4. the train-loss barrier (Frankle et al. 2020) on the linear path between ``a`` and each
   ``b`` (naive, ours, activation-matched, rebasin's), 25 evenly spaced points:
   ``max_t L((1-t)a + tb) - ((1-t)L(a) + tL(b))`` with ``L`` the mean cross-entropy on all
   1797 training examples (evaluated in JAX, float32, for every candidate).

Usage (from the repository root, under the benchmark lock)::

    flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/peers/bench_connectivity.py
    ... benchmarks/peers/bench_connectivity.py --quick       # h = 64 only, fewer repeats

Writes ``<out>/connectivity.json``, ``<out>/connectivity_paths.png`` and
``benchmarks/RESULTS_connectivity.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from hessian_tools.examples import digits
from hessian_tools.files import atomic_write_bytes, atomic_write_text, save_figure, write_json
from hessian_tools.symmetry import align, permutation_spec

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/: shared helpers, results/, RESULTS*.md
sys.path.insert(0, str(BENCH))
from _torch_twins import build_twin, torch_data
from studies.bench_sharpness import _kept_block

STEPS, LR = 300, 1e-2
NUM_POINTS = 25


def _machine() -> dict:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "jax": jax.__version__,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average_start": os.getloadavg()}


# ---- trained pairs (cached) ------------------------------------------------------------------

def _cache_file(width: int, seed: int) -> Path:
    tag = json.dumps({"widths": [width, width], "seed": seed, "steps": STEPS, "lr": LR, "v": 1},
                     sort_keys=True)
    digest = hashlib.sha256(tag.encode()).hexdigest()[:12]
    return digits.cache_dir() / f"connectivity-mlp{width}-seed{seed}-{digest}.msgpack"


def trained_mlp(width: int, seed: int, data):
    """A digits MLP 64-width-width-10 trained from ``seed`` (cached weights)."""
    model = digits.MLP((width, width), rngs=nnx.Rngs(seed))
    path = _cache_file(width, seed)
    state = nnx.state(model, nnx.Param)
    if path.exists():
        restored = flax.serialization.from_bytes(nnx.to_pure_dict(state), path.read_bytes())
        nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, restored))
        nnx.update(model, state)
        return model
    digits.train(model, data, steps=STEPS, learning_rate=LR)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, flax.serialization.to_bytes(
        nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    return model


# ---- path losses (private: to be replaced by ht.interpolate) ---------------------------------

def _path_losses(model, a, b, data, num_points: int = NUM_POINTS) -> np.ndarray:
    """The mean training loss at ``num_points`` evenly spaced points of the segment a -> b."""
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def losses(a, b, ts):
        def at(t):
            p = jax.tree.map(lambda u, v: (1 - t) * u + t * v, a, b)
            return digits.cross_entropy(nnx.merge(graphdef, p, rest)(data[0]), data)
        return jax.lax.map(at, ts)
    return np.asarray(losses(a, b, jnp.linspace(0.0, 1.0, num_points, dtype=jnp.float32)))


def barrier(losses: np.ndarray) -> float:
    """Frankle et al.'s barrier: the largest rise of the path above the chord."""
    ts = np.linspace(0.0, 1.0, len(losses))
    return float(np.max(losses - ((1 - ts) * losses[0] + ts * losses[-1])))


# ---- the peer --------------------------------------------------------------------------------

def rebasin_align(cfg, params_a, params_b, tx):
    """``rebasin``'s weight matching on the torch twins: ``(aligned JAX params, seconds)``."""
    from rebasin import PermutationCoordinateDescent
    twin_a, twin_b = build_twin(cfg, params_a), build_twin(cfg, params_b)
    torch.manual_seed(0)
    start = time.perf_counter()
    PermutationCoordinateDescent(twin_a.model, twin_b.model, tx[:8]).rebasin()
    seconds = time.perf_counter() - start
    return twin_b.to_jax_tree(list(twin_b.model.parameters())), seconds


def _median_time(fn, repeats: int):
    """``(last result, median seconds, all seconds)`` after one untimed warm-up call."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times), times


def run_width(width: int, data, *, repeats: int, peer_repeats: int) -> dict:
    model_a, model_b = trained_mlp(width, 0, data), trained_mlp(width, 1, data)
    params_a = nnx.split(model_a, nnx.Param, ...)[1]
    params_b = nnx.split(model_b, nnx.Param, ...)[1]
    start = time.perf_counter()
    spec = permutation_spec(model_a, data[0][:8])
    derive_s = time.perf_counter() - start
    (ours, wm), ours_s, ours_times = _median_time(
        lambda: align(params_a, params_b, spec, method="weights", key=jax.random.key(0)),
        repeats)
    start = time.perf_counter()
    acts, am = align(params_a, params_b, spec, method="activations", data=data[0],
                     predict=model_a)
    acts_s = time.perf_counter() - start
    cfg = {"kind": "mlp", "widths": (width, width)}
    tx, _ = torch_data(*data, image=False)
    rebasin_align(cfg, params_a, params_b, tx)       # untimed warm-up (torchview, threads)
    peer_runs = [rebasin_align(cfg, params_a, params_b, tx) for _ in range(peer_repeats)]
    peer = peer_runs[0][0]
    peer_s = statistics.median(s for _, s in peer_runs)
    paths = {name: _path_losses(model_a, params_a, p, data) for name, p in
             (("naive", params_b), ("ours", ours), ("activations", acts), ("rebasin", peer))}
    same_fn = float(np.max(np.abs(np.asarray(model_b(data[0])) - np.asarray(
        nnx.merge(nnx.split(model_b, nnx.Param, ...)[0], peer,
                  nnx.split(model_b, nnx.Param, ...)[2])(data[0])))))
    return {"width": width, "groups": dict(spec.sizes), "derive_s": derive_s,
            "ours_s": ours_s, "ours_times": ours_times, "ours_sweeps": wm.num_iters,
            "ours_converged": wm.converged, "ours_distance": wm.distance_after,
            "activation_s": acts_s, "activation_distance": am.distance_after,
            "rebasin_s": peer_s, "rebasin_times": [s for _, s in peer_runs],
            "rebasin_output_change": same_fn,
            "rebasin_distance": float(np.sqrt(sum(np.sum((np.asarray(u, np.float64) - np.asarray(
                v, np.float64)) ** 2) for u, v in zip(jax.tree.leaves(params_a),
                                                      jax.tree.leaves(peer))))),
            "naive_distance": wm.distance_before,
            "loss_a": float(paths["naive"][0]), "loss_b": float(paths["naive"][-1]),
            "paths": {k: v.tolist() for k, v in paths.items()},
            "barriers": {k: barrier(v) for k, v in paths.items()}}


# ---- report ----------------------------------------------------------------------------------

def plot_paths(runs: list):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), squeeze=False)
    styles = {"naive": ("naive (no alignment)", "C3", "-"), "ours": ("ours, weights", "C0", "-"),
              "activations": ("ours, activations", "C2", "--"),
              "rebasin": ("rebasin, weights", "C1", ":")}
    for ax, run in zip(axes[0], runs):
        ts = np.linspace(0.0, 1.0, len(run["paths"]["naive"]))
        for name, (label, colour, ls) in styles.items():
            ax.plot(ts, run["paths"][name], ls, color=colour, label=label, lw=1.6)
        ax.set_title(f"64-{run['width']}-{run['width']}-10")
        ax.set_xlabel("t  (a at 0, b at 1)")
        ax.set_ylabel("train loss (cross-entropy)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_markdown(path: Path, report: dict) -> None:
    m = report["machine"]
    lines = [
        "# Mode connectivity: barriers before and after alignment, and weight matching "
        "against rebasin", "",
        f"Command: `{report['command']}`. Machine: {m['platform']}, {m['cpu_count']} CPU "
        f"cores, JAX {m['jax']}, torch {m['torch']} ({m['torch_threads']} threads), Python "
        f"{m['python']}. Load average {m['load_average_start'][0]:.1f} at the start and "
        f"{m['load_average_end'][0]:.1f} at the end (a shared machine: timings are "
        "indicative). Raw numbers: `benchmarks/results/connectivity.json`; figure: "
        "`benchmarks/results/connectivity_paths.png`.", "",
        f"Two digits tanh MLPs 64-h-h-10 per width, trained from seeds 0 and 1 (full-batch "
        f"Adam, lr {LR}, {STEPS} steps, float32). Barrier: Frankle et al.'s "
        f"`max_t L((1-t)a + tb) - ((1-t)L(a) + tL(b))` on {NUM_POINTS} points, L the mean "
        "training cross-entropy on all 1797 examples.", "",
        "| h | L(a) | L(b) | barrier: naive | ours, weights | ours, activations | rebasin | "
        "fall: naive / ours | naive / rebasin | ours s: matching | ours s: derive + match | "
        "rebasin s | time: rebasin / ours (matching) | sweeps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        b = r["barriers"]
        lines.append(
            f"| {r['width']} | {r['loss_a']:.4f} | {r['loss_b']:.4f} | {b['naive']:.4f} | "
            f"**{b['ours']:.4f}** | {b['activations']:.4f} | {b['rebasin']:.4f} | "
            f"**{b['naive'] / max(b['ours'], 1e-12):.1f}x** | "
            f"{b['naive'] / max(b['rebasin'], 1e-12):.1f}x | {r['ours_s']:.3f} | "
            f"{r['ours_s'] + r['derive_s']:.2f} | {r['rebasin_s']:.2f} "
            f"({min(r['rebasin_times']):.2f}-{max(r['rebasin_times']):.2f}) | "
            f"{r['rebasin_s'] / r['ours_s']:.1f}x | {r['ours_sweeps']} |")
    lines += ["", "Distances `||a - P(b)||` (all parameters): "
              + "; ".join(f"h={r['width']}: naive {r['naive_distance']:.2f}, ours "
                          f"{r['ours_distance']:.2f}, activations "
                          f"{r['activation_distance']:.2f}, rebasin {r['rebasin_distance']:.2f}"
                          for r in report["runs"]) + ".",
              "", "rebasin's aligned network computes what b computes (largest output change: "
              + ", ".join(f"{r['rebasin_output_change']:.1e}" for r in report["runs"]) + ").", ""]
    kept = _kept_block(path)
    atomic_write_text(path, "\n".join(lines[:1] + [""] + kept + lines[2:]) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="h = 64 only, fewer repeats")
    parser.add_argument("--out", default=str(BENCH / "results"))
    parser.add_argument("--markdown", default=str(BENCH / "RESULTS_connectivity.md"))
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the Markdown and the figure from <out>/connectivity.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        report = json.loads((out / "connectivity.json").read_text())
        save_figure(plot_paths(report["runs"]), out / "connectivity_paths.png")
        write_markdown(Path(args.markdown), report)
        return 0
    data = digits.load_digits_data()
    widths = (64,) if args.quick else (64, 256, 512)
    report = {"command": "python benchmarks/peers/bench_connectivity.py" + " ".join(
        [""] + (argv if argv is not None else sys.argv[1:])), "machine": _machine(), "runs": []}
    for width in widths:
        run = run_width(width, data, repeats=2 if args.quick else 5,
                        peer_repeats=1 if args.quick else 5)
        print(json.dumps({k: v for k, v in run.items() if k != "paths"}, default=str))
        report["runs"].append(run)
    report["machine"]["load_average_end"] = os.getloadavg()
    write_json(out / "connectivity.json", report)
    save_figure(plot_paths(report["runs"]), out / "connectivity_paths.png")
    write_markdown(Path(args.markdown), report)
    print(f"wrote {out / 'connectivity.json'} and {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
