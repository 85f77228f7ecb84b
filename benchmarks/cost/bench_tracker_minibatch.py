"""Benchmark: what the sharpness tracker costs in minibatch training (issue 15).

Minibatch SGD (batch 32, η = 0.05; epochs of random permutations of the 1797 digits) of
``mlp-small`` and ``cnn`` from :mod:`hessian_tools.examples.digits`, in the NNX form a user
writes: an ``nnx.jit`` training step on ``(model, optimizer, x, y)`` and
``tracker.update(step, model, optimizer)`` before each step, the tracker built on
``Objective.from_nnx(model, cross_entropy, ht.measurement_subset(data, n, key=...))``.

The grid is the three knobs that bound the cost: the measurement subset size ``n``
(128, 512, all 1797), the period ``every`` (10, 50, 200) and the budget ``num_matvecs``
(the default 300 and a small one), with ``quantities=("lambda_max",)`` (the default). One
extra row per model uses Adam (its preconditioned ``lambda_max`` is measured too, read from
the optimizer state).

Reported per configuration: the *paired* ratio (time training + time measuring) / (time
training) within the same run, and the run-vs-run ratio (wall time of the run / median wall
time without tracking); HVPs per measurement after the first (warm), seconds per
measurement, and what the rule of thumb ``(n / batch) x HVPs / every`` predicts. Both loops
synchronise before every ``every``-th step (``bench_sharpness._timed_loop``). Everything is
compiled before timing (an untimed short run of every tracker configuration), and the timed
runs are interleaved over ``--repeats`` passes (median taken). Training does not depend on
the tracker, so every run of a model follows the same trajectory: the small budget's and the
subsets' ``lambda_max`` are compared with the default budget on all 1797 examples at the
same steps.

Usage (from the repository root; run alone, the machine is shared)::

    flock /tmp/bench.lock .venv/bin/python benchmarks/cost/bench_tracker_minibatch.py  # ~15 min*
    .venv/bin/python benchmarks/cost/bench_tracker_minibatch.py --quick                # smoke run

(*) on 2 CPU cores at load 2-7: 3.6 min of untimed warm-up (compiling), 10 min of timed runs.

Writes ``<out>/sharpness_minibatch.json`` and its section of
``benchmarks/RESULTS_sharpness.md`` (between the minibatch markers; the rest of the file is
kept).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

import hessian_tools as ht
from hessian_tools.examples import digits
from hessian_tools.files import atomic_write_text, write_json

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/: shared helpers, results/, RESULTS*.md
sys.path.insert(0, str(BENCH))

from studies.bench_sharpness import (MINIBATCH_END, MINIBATCH_START, _costs,  # noqa: E402
                                     _kept_block, _machine, _timed_loop)

BATCH = 32
LR = 0.05
SMALL_BUDGET = 5
NOTES_START = "<!-- minibatch notes: hand-written, kept when the section is regenerated -->"
NOTES_END = "<!-- end of minibatch notes -->"


@nnx.jit
def _train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: digits.cross_entropy(m(x), (x, y)))(model)
    optimizer.update(model, grads)
    return loss


def _batches(data, steps: int, seed: int = 0) -> list:
    """Every step's minibatch (device arrays, made before timing): epochs of permutations."""
    x, y = data
    n, rng, idx = len(y), np.random.default_rng(seed), []
    while len(idx) < steps:
        perm = rng.permutation(n)
        idx += [perm[i:i + BATCH] for i in range(0, n - BATCH + 1, BATCH)]
    return [(jax.device_put(x[i]), jax.device_put(y[i])) for i in idx[:steps]]


def _optimizer(name: str):
    return optax.sgd(LR) if name == "sgd" else optax.adam(1e-3)


def _run(model_name, batches, steps, every, opt_name, objective=None, tracker_kwargs=None):
    """One training run from the same initialisation; ``(total_s, train_s, measure_s, log)``."""
    model = digits.make_model(model_name, seed=0)
    opt = _optimizer(opt_name)
    optimizer = nnx.Optimizer(model, opt, wrt=nnx.Param)
    tracker = None if objective is None else ht.SharpnessTracker(
        objective, every=every, key=jax.random.key(2), optimizer=opt, **(tracker_kwargs or {}))

    def train(i):
        return _train_step(model, optimizer, *batches[i])

    measure = None if tracker is None else (lambda i: tracker.update(i, model, optimizer))
    total, train_s, measure_s = _timed_loop(steps, every, train, measure)
    return total, train_s, measure_s, (tracker.log if tracker else None)


def _configs(sizes, everies, budgets) -> list:
    """``(name, every, opt, n or None, tracker kwargs)`` of every run, baselines first."""
    out = [(f"none every={e}", e, "sgd", None, None) for e in everies]
    for n in sizes:
        for e in everies:
            for b in budgets:
                out.append((f"n={n} every={e} budget={b}", e, "sgd", n, {"num_matvecs": b}))
    mid = sorted(everies)[len(everies) // 2]
    out += [(f"none every={mid} adam", mid, "adam", None, None),
            (f"n=512 every={mid} budget=300 adam", mid, "adam", 512, {"num_matvecs": 300})]
    return out


def _steps(min_steps: int, every: int) -> int:
    """Steps of a run: at least ``min_steps`` and five measurement periods."""
    return max(min_steps, 5 * every)


def minibatch(model_name: str, min_steps: int, sizes, everies, budgets, repeats: int) -> dict:
    data = digits.load_digits_data(image=digits.CONFIGS[model_name]["kind"] == "cnn")
    batches = _batches(data, max(_steps(min_steps, e) for e in everies))
    subsets = {n: ht.measurement_subset(data, n, key=jax.random.key(1)) for n in sizes}
    template = digits.make_model(model_name, seed=0)
    objectives = {n: ht.Objective.from_nnx(template, digits.cross_entropy, sub)
                  for n, sub in subsets.items()}
    configs = _configs(sizes, everies, budgets)
    first = {}
    for name, every, opt, n, kw in configs:          # untimed: compiles every configuration
        if n is None:
            _run(model_name, batches, 2, every, opt)
            continue
        t0 = time.perf_counter()
        log = _run(model_name, batches, 21, 10, opt, objectives[n], kw)[3]
        first[name] = {"seconds": time.perf_counter() - t0,
                       "first_measurement_s": float(log["wall_time"][0])}
    times = {c[0]: [] for c in configs}
    paired = {c[0]: [] for c in configs}
    logs = {}
    for _ in range(repeats):                 # interleaved, so load drifts hit all alike
        for name, every, opt, n, kw in configs:
            total, train_s, measure_s, log = _run(model_name, batches,
                                                  _steps(min_steps, every), every, opt,
                                                  None if n is None else objectives[n], kw)
            times[name].append(total)
            paired[name].append((train_s + measure_s) / train_s)
            if log is not None:
                logs[name] = log
            print(f"  {model_name} {name}: {total:.2f} s, paired ratio "
                  f"{paired[name][-1]:.2f}", flush=True)
    costs = {str(n): c for n, c in _costs(objectives[sizes[0]].loss,
                                          objectives[sizes[0]].params, subsets).items()}
    rows = {}
    for name, every, opt, n, kw in configs:
        base = statistics.median(times[f"none every={every}" + (" adam" if opt == "adam"
                                                                else "")])
        row = {"every": every, "optimizer": opt, "subset": n, "seconds": times[name],
               "median_s": statistics.median(times[name]),
               "ratio": statistics.median(times[name]) / base,
               "paired_ratio": statistics.median(paired[name]), "paired_all": paired[name]}
        if name in logs:
            log = logs[name]
            mv, wall = np.asarray(log["num_matvecs"]), np.asarray(log["wall_time"])
            hvps = float(np.mean(mv[1:]))
            row.update(budget=kw["num_matvecs"], measurements=len(log),
                       mean_matvecs=float(np.mean(mv)), mean_matvecs_after_first=hvps,
                       mean_measurement_s=float(np.mean(wall)),
                       mean_measurement_s_after_first=float(np.mean(wall[1:])),
                       converged=float(np.mean(np.asarray(log["converged"], bool))),
                       lambda_max=np.asarray(log["lambda_max"], np.float64).tolist(),
                       steps=np.asarray(log.steps).tolist(),
                       rule_of_thumb=n / BATCH * float(np.mean(mv)) / every,
                       steps_run=_steps(min_steps, every))
        rows[name] = row
    _accuracy(rows, max(sizes), max(budgets))
    step_ms = {e: 1000 * statistics.median(times[f"none every={e}"]) / _steps(min_steps, e)
               for e in everies}
    return {"model": model_name, "num_params": ht.tree.size(objectives[sizes[0]].params),
            "min_steps": min_steps, "batch_size": BATCH, "learning_rate": LR, "repeats": repeats,
            "train_step_ms": statistics.median(step_ms.values()), "train_step_ms_by_every":
            step_ms, "costs_ms": costs, "compile": first, "runs": rows}


def _accuracy(rows: dict, full: int, default_budget: int) -> None:
    """Each tracked run's ``lambda_max`` vs the default budget on all examples, same steps."""
    for name, r in rows.items():
        if "lambda_max" not in r or r["optimizer"] != "sgd":
            continue
        ref = rows[f"n={full} every={r['every']} budget={default_budget}"]
        a, b = np.asarray(r["lambda_max"]), np.asarray(ref["lambda_max"])
        rel = np.abs(a - b) / np.abs(b)
        r["rel_diff_vs_full_default"] = {"median": float(np.median(rel)),
                                         "max": float(np.max(rel))}


# ---- report ------------------------------------------------------------------------------

def _fit(models: list) -> dict:
    """Least squares ``measurement seconds ~ a + b x HVPs x t_hvp(n)`` over the warm runs."""
    xs, ys = [], []
    for m in models:
        for r in m["runs"].values():
            if r["optimizer"] == "sgd" and "mean_measurement_s" in r:
                hvp_s = m["costs_ms"][str(r["subset"])]["hvp"] / 1000
                xs.append(r["mean_matvecs"] * hvp_s)
                ys.append(r["mean_measurement_s"])
    A = np.stack([np.ones(len(xs)), np.asarray(xs)], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, np.asarray(ys), rcond=None)
    return {"fixed_s": float(a), "per_hvp_time": float(b)}


def section(result: dict, command: str, markdown) -> list:
    """The Markdown section (the hand-written notes of ``markdown``'s section are kept)."""
    models, machine = result["models"], result["machine"]
    load = (f"{', '.join(f'{v:.1f}' for v in machine['load_average_start'])} at start, "
            f"{', '.join(f'{v:.1f}' for v in machine['load_average_end'])} at end")
    lines = [MINIBATCH_START, "## Tracker overhead in minibatch training (issue 15)", "",
             f"Command ({result['date']}): `{command}` (under `flock /tmp/bench.lock`). "
             f"Machine: {machine['platform']}, {machine['cpu_count']} CPU cores, JAX "
             f"{machine['jax']} on {machine['backend']}; load average {load} (a shared "
             "machine: the paired ratios are the figures to read). Raw JSON: "
             "`results/sharpness_minibatch.json`.", "",
             f"Minibatch SGD (batch {BATCH}, η = {LR}, random epochs) from the same "
             f"initialisation, max({models[0]['min_steps']}, 5 × every) steps per run "
             "(the first measurement, at step 0, is cold), median of "
             f"{models[0]['repeats']} interleaved repeats; `tracker.update(step, model, "
             "optimizer)` on an `Objective.from_nnx` of a fixed random measurement subset "
             "(`ht.measurement_subset`), `quantities=(\"lambda_max\",)`, tol 1e-3, warm "
             "started. *ratio* = (time training + time measuring) / time training within "
             "the run (paired; the run-vs-run ratio of wall times is in brackets). *HVPs* = "
             "mean HVPs per measurement after the first (warm), and over all measurements in "
             "brackets; *s/meas.* = mean seconds per measurement (all of them); *thumb* = "
             "1 + `(n / batch) × HVPs(all) / every`, the ratio the rule of thumb predicts; "
             "*λ err* = median |λmax − λmax(all 1797, budget "
             "300)| / λmax at the same steps; *conv.* = fraction of measurements converged "
             "to tol.", ""]
    for m in models:
        lines += [f"### {m['model']} ({m['num_params']:,} parameters; a training step "
                  f"{m['train_step_ms']:.2f} ms)", "",
                  "| n | every | budget | ratio (run vs run) | HVPs | s/meas. | thumb | "
                  "λ err | conv. |", "|---|---|---|---|---|---|---|---|---|"]
        for name, r in m["runs"].items():
            if "mean_measurement_s" not in r:
                continue
            err = r.get("rel_diff_vs_full_default", {}).get("median")
            lines.append(
                f"| {r['subset']} | {r['every']} | {r['budget']}"
                f"{' (Adam)' if r['optimizer'] == 'adam' else ''} | **{r['paired_ratio']:.2f}×** "
                f"({r['ratio']:.2f}×) | {r['mean_matvecs_after_first']:.1f} "
                f"({r['mean_matvecs']:.1f}) | "
                f"{r['mean_measurement_s']:.3f} | {1 + r['rule_of_thumb']:.2f}× | "
                f"{'—' if err is None else f'{100 * err:.1f}%'} | {r['converged']:.0%} |")
        c = m["costs_ms"]
        lines += ["", "Measured separately (ms, median): " + "; ".join(
            f"{n} examples: gradient {v['gradient']:.2f}, linearisation {v['linearize']:.2f}, "
            f"HVP {v['hvp']:.2f}" for n, v in c.items()) + f"; a training step (batch "
            f"{BATCH}) {m['train_step_ms']:.2f}.", ""]
    fit = result["fit"]
    lines += ["### Rule of thumb", "",
              f"Fitted over all the SGD rows of both models: a measurement takes about "
              f"{1000 * fit['fixed_s']:.0f} ms + {fit['per_hvp_time']:.2f} × (HVPs × the "
              "time of one HVP on the measurement set).", ""]
    for m in models:
        q = [(1 + r["rule_of_thumb"]) / r["paired_ratio"] for r in m["runs"].values()
             if r["optimizer"] == "sgd" and "rule_of_thumb" in r]
        p = [(1 + (fit["fixed_s"] + fit["per_hvp_time"] * r["mean_matvecs"]
                   * m["costs_ms"][str(r["subset"])]["hvp"] / 1000)
              / (r["every"] * m["train_step_ms"] / 1000)) / r["paired_ratio"]
             for r in m["runs"].values() if r["optimizer"] == "sgd" and "rule_of_thumb" in r]
        lines.append(f"- {m['model']}: predicted / measured ratio, `(n / batch) × HVPs / "
                     f"every`: {min(q):.2f} to {max(q):.2f} (median {np.median(q):.2f}); "
                     f"the fitted measurement time / (every × step time): {min(p):.2f} to "
                     f"{max(p):.2f} (median {np.median(p):.2f}).")
    lines += [""] + (_kept_block(Path(markdown), NOTES_START, NOTES_END) or
                     [NOTES_START, "", NOTES_END, ""])
    lines += [MINIBATCH_END, ""]
    return lines


def write_section(path: Path, lines: list) -> None:
    """Replace (or append) the minibatch section of ``path``, keeping the rest."""
    text = path.read_text() if path.exists() else ""
    block = "\n".join(lines)
    if MINIBATCH_START in text and MINIBATCH_END in text:
        head, rest = text.split(MINIBATCH_START, 1)
        tail = rest.split(MINIBATCH_END, 1)[1].lstrip("\n")
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    atomic_write_text(path, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--out", default=str(BENCH / "results"), help="results folder")
    parser.add_argument("--markdown", default=str(BENCH / "RESULTS_sharpness.md"))
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per run, at least 5 x every (default 300; 100 "
                        "with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="default 2; 1 with --quick")
    parser.add_argument("--models", default="mlp-small,cnn")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the Markdown section from the JSON in --out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        import json
        result = json.loads((out / "sharpness_minibatch.json").read_text())
        write_section(Path(args.markdown), section(result, result["command"], args.markdown))
        return 0
    rest = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python benchmarks/cost/bench_tracker_minibatch.py", *rest])
    machine = _machine()
    sizes = (128, 512, 1797)
    everies = (10, 50) if args.quick else (10, 50, 200)
    models = []
    for name in args.models.split(","):
        models.append(minibatch(name, args.steps or (100 if args.quick else 300), sizes,
                                everies, (300, SMALL_BUDGET),
                                args.repeats or (1 if args.quick else 2)))
    machine["load_average_end"] = os.getloadavg()
    result = {"machine": machine, "command": command,
              "date": time.strftime("%Y-%m-%d"), "models": models}
    result["fit"] = _fit(models)
    write_json(out / "sharpness_minibatch.json", result)
    write_section(Path(args.markdown), section(result, command, args.markdown))
    print(f"wrote {out / 'sharpness_minibatch.json'} and {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
