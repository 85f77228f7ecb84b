"""Benchmark: the edge of stability reproduced, and what sharpness tracking costs.

1. **Edge of stability** (Cohen et al. 2021). Full-batch gradient descent on the digits tanh
   MLP 64 -> 32 -> 32 -> 10 (squared error to one-hot labels, output layer initialised 5x
   smaller than Glorot so the sharpness starts low), at two learning rates. The sharpness
   ``lambda_max`` of the full-batch loss is measured every 10 steps with
   ``ht.SharpnessTracker`` on all 1797 examples: it rises (progressive sharpening), reaches
   ``2/eta`` and hovers there while the loss keeps falling non-monotonically. Reported:
   final sharpness / (2/eta), the median over the last quarter, the maximum, HVPs per
   measurement.
2. **Tracker overhead** on ``mlp-wide`` (301k parameters): full-batch gradient descent on
   all 1797 examples, with tracking every 10 steps (warm-started, on a fixed random
   measurement subset of 128, 256 or 512 examples) vs without. Both loops synchronise every
   10 steps so the measurement is not hidden by asynchronous dispatch, and the time spent
   measuring is split from the time spent training within each run (the *paired*
   overhead, robust to load changes on a shared machine); each configuration is repeated
   and the median taken. Also: the same run with cold starts (``warm_start=False``)
   for the HVP count, and the one-time compilation cost of the first measurement. One
   untimed pass of every configuration compiles everything before the timed repeats.

Usage (from the repository root)::

    .venv/bin/python benchmarks/studies/bench_sharpness.py            # ~10 minutes on 2 CPU cores
    .venv/bin/python benchmarks/studies/bench_sharpness.py --quick    # a smoke run

Writes ``<out>/sharpness_eos.json``, ``<out>/sharpness_eos.png``,
``<out>/sharpness_overhead.json`` and ``benchmarks/RESULTS_sharpness.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import hessian_tools as ht
from hessian_tools.examples import digits
from hessian_tools.files import atomic_write_text, save_figure, write_json

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/: shared helpers, results/, RESULTS*.md


def _machine() -> dict:
    dev = jax.devices()[0]
    return {"platform": platform.platform(), "processor": platform.processor() or "unknown",
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "device": getattr(dev, "device_kind", str(dev)),
            "load_average_start": os.getloadavg()}


# ---- 1. the edge of stability ---------------------------------------------------------------

def _mse(outputs, batch):
    return 0.5 * jnp.mean(jnp.sum((outputs - batch[1]) ** 2, axis=-1))


def _eos_setup():
    x, y = digits.load_digits_data()
    data = (x, jax.nn.one_hot(y, 10))
    model = digits.MLP((32, 32), rngs=nnx.Rngs(0))
    model.layers[-1].kernel[...] = 0.2 * model.layers[-1].kernel[...]
    obj = ht.Objective.from_nnx(model, _mse, data)
    return obj.loss, obj.params, data


def eos_run(lr: float, steps: int, every: int) -> dict:
    """Full-batch GD at step size ``lr``; sharpness on the full data every ``every`` steps."""
    loss_fn, params, data = _eos_setup()
    opt = optax.sgd(lr)
    tracker = ht.SharpnessTracker(ht.Objective(loss_fn, params, data), every=every,
                                  key=jax.random.key(1), optimizer=opt)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params, data)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state, losses, start = opt.init(params), [], time.perf_counter()
    for i in range(steps + 1):
        tracker.update(i, params, opt_state=state, learning_rate=lr)
        params, state, loss = step(params, state)
        losses.append(loss)
    log = tracker.log
    lam, thr = log["lambda_max"], 2.0 / lr
    tail = lam[-max(1, len(lam) // 4):]
    losses = np.asarray(jnp.stack(losses), np.float64)
    ups = int(np.sum(np.diff(losses[len(losses) // 2:]) > 0))
    return {"learning_rate": lr, "threshold": thr, "steps": log.steps.tolist(),
            "lambda_max": lam.tolist(), "loss": losses.tolist(),
            "num_matvecs": log["num_matvecs"].tolist(),
            "initial_sharpness": float(lam[0]), "final_over_threshold": float(lam[-1] / thr),
            "median_last_quarter_over_threshold": float(np.median(tail) / thr),
            "max_over_threshold": float(lam.max() / thr),
            "first_step_within_5pct": int(log.steps[np.argmax(lam >= 0.95 * thr)])
            if np.any(lam >= 0.95 * thr) else None,
            "loss_increases_second_half": ups,
            "mean_matvecs_per_measurement": float(np.mean(log["num_matvecs"][1:])),
            "wall_time_s": time.perf_counter() - start}


def eos_figure(runs: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for i, r in enumerate(runs):
        c = f"C{i}"
        axes[0].plot(r["steps"], r["lambda_max"], color=c, lw=1.2,
                     label=f"η = {r['learning_rate']}")
        axes[0].axhline(r["threshold"], ls="--", color=c, lw=1,
                        label=f"2/η = {r['threshold']:g}")
        axes[1].plot(r["loss"], color=c, lw=1, label=f"η = {r['learning_rate']}")
    axes[0].set(xlabel="step", ylabel="sharpness λmax (full batch)",
                title="progressive sharpening, then the edge of stability")
    axes[1].set(xlabel="step", ylabel="training loss (MSE)", yscale="log",
                title="the loss keeps falling, non-monotonically")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("digits tanh MLP 64-32-32-10, full-batch gradient descent")
    save_figure(fig, path)
    plt.close(fig)


# ---- 2. tracker overhead ----------------------------------------------------------------

def _wide_setup():
    x, y = digits.load_digits_data()
    obj = ht.Objective.from_nnx(digits.MLP((512, 512), rngs=nnx.Rngs(0)),
                                digits.cross_entropy, (x, y))
    return obj.loss, obj.params, (x, y)


def _timed_training(loss_fn, params, data, steps, every, tracker_kwargs):
    """Run ``steps`` GD steps (+ tracking when ``tracker_kwargs``).

    Returns ``(total_s, train_s, measure_s, log)`` (see :func:`_timed_loop`).
    """
    opt = optax.sgd(0.05)
    step = _train_step(loss_fn, opt, data)
    tracker = None
    if tracker_kwargs is not None:
        kwargs = dict(tracker_kwargs)
        tracker = ht.SharpnessTracker(ht.Objective(loss_fn, params, kwargs.pop("measure_data")),
                                      every=every, key=jax.random.key(2), **kwargs)
    carry = [params, opt.init(params)]
    jax.block_until_ready(step(*carry))                             # compiled before timing

    def train(i):
        carry[:2] = step(*carry)[:2]
        return carry[0]

    measure = None if tracker is None else (
        lambda i: tracker.update(i, carry[0], learning_rate=0.05))
    total, train_s, measure_s = _timed_loop(steps, every, train, measure)
    return total, train_s, measure_s, (tracker.log if tracker else None)


def _timed_loop(steps, every, train, measure=None):
    """``train(i)`` for ``i < steps`` (it returns something to wait on), with ``measure(i)``
    before every ``every``-th step when given.

    Returns ``(total_s, train_s, measure_s)``: the wall time, and its split into training and
    measuring. Both loops (with and without ``measure``) synchronise every ``every`` steps,
    so the split is exact; the ratio ``measure_s / train_s`` compares costs paid seconds
    apart, under the same load, which is far steadier on a shared machine than comparing
    two runs.
    """
    measure_s, out, start = 0.0, None, time.perf_counter()
    for i in range(steps):
        if i % every == 0:
            jax.block_until_ready(out)                             # same sync points in both
            if measure is not None:
                t0 = time.perf_counter()
                measure(i)
                measure_s += time.perf_counter() - t0
        out = train(i)
    jax.block_until_ready(out)
    total = time.perf_counter() - start
    return total, total - measure_s, measure_s


_STEPS = {}


def _train_step(loss_fn, opt, data):
    key = (id(loss_fn), id(data))
    if key not in _STEPS:
        @jax.jit
        def step(params, state):
            loss, grads = jax.value_and_grad(loss_fn)(params, data)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state, loss
        _STEPS[key] = step
    return _STEPS[key]


def overhead(steps: int, every: int, sizes, repeats: int) -> dict:
    loss_fn, params, data = _wide_setup()
    subsets = {n: ht.measurement_subset(data, n, key=jax.random.key(1)) for n in sizes}
    opt = optax.sgd(0.05)
    step, later = _train_step(loss_fn, opt, data), (params, opt.init(params))
    for _ in range(every):
        later = step(*later)[:2]
    first = {}
    for n in sizes:     # one-time costs: compiling, a cold start, then the warm path
        tracker = ht.SharpnessTracker(ht.Objective(loss_fn, params, subsets[n]),
                                      key=jax.random.key(3))
        t0 = time.perf_counter()
        rec = tracker.update(0, params)
        first[n] = {"seconds": time.perf_counter() - t0, "num_matvecs": rec["num_matvecs"]}
        tracker.update(every, later[0])
    mid = sizes[len(sizes) // 2]
    configs = [("none", None)] + [(f"track-{n}", {"measure_data": subsets[n]}) for n in sizes]
    configs += [(f"track-{mid} tol=1e-2", {"measure_data": subsets[mid], "tol": 1e-2}),
                (f"cold-{mid}", {"measure_data": subsets[mid], "warm_start": False})]
    times = {name: [] for name, _ in configs}
    paired = {name: [] for name, _ in configs}
    logs = {}
    for rep in range(repeats + 1):             # interleaved, so load drifts hit all alike;
        for name, kwargs in configs:           # pass 0 is untimed: it compiles every variant
            total, train_s, measure_s, log = _timed_training(loss_fn, params, data, steps,
                                                             every, kwargs)
            if rep:
                times[name].append(total)
                paired[name].append(measure_s / train_s)
            if log is not None:
                logs[name] = log
    base = statistics.median(times["none"])
    rows = {}
    for name, _ in configs:
        med = statistics.median(times[name])
        row = {"seconds": times[name], "median_s": med, "overhead": med / base - 1.0,
               "paired_overhead": statistics.median(paired[name]),
               "paired_overhead_all": paired[name]}
        if name in logs:
            log = logs[name]
            row.update(mean_matvecs_per_measurement=float(np.mean(log["num_matvecs"])),
                       mean_matvecs_after_first=float(np.mean(log["num_matvecs"][1:])),
                       mean_measurement_s=float(np.mean(log["wall_time"])),
                       measurements=len(log))
        rows[name] = row
    loose, ref = logs[f"track-{mid} tol=1e-2"]["lambda_max"], logs[f"track-{mid}"]["lambda_max"]
    rows[f"track-{mid} tol=1e-2"]["max_rel_diff_vs_tol_1e-3"] = float(
        np.max(np.abs(loose - ref) / np.abs(ref)))
    return {"model": "mlp-wide", "num_params": ht.tree.size(params), "steps": steps,
            "every": every, "train_examples": int(data[0].shape[0]), "repeats": repeats,
            "learning_rate": 0.05, "first_measurement": first, "runs": rows,
            "train_step_ms": 1000 * base / steps,
            "costs_ms": _costs(loss_fn, params, subsets),
            "subset_vs_full": _subset_vs_full(loss_fn, params, data, subsets, step, opt, steps)}


def _median_ms(fn, repeats: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _costs(loss_fn, params, subsets) -> dict:
    """Milliseconds of one gradient, one linearisation and one HVP on each measurement set."""
    out = {}
    for n, sub in subsets.items():
        obj = ht.Objective(loss_fn, params, sub)
        H = ht.hessian(obj)
        v = H.random_vector(jax.random.key(0))
        out[n] = {"gradient": _median_ms(lambda: jax.block_until_ready(ht.gradient(obj))),
                  "linearize": _median_ms(lambda: jax.block_until_ready(
                      jax.tree.leaves(ht.hessian(obj).matvec_fn))),
                  "hvp": _median_ms(lambda: jax.block_until_ready(H(v)))}
    return out


def _subset_vs_full(loss_fn, params, data, subsets, step, opt, steps) -> dict:
    """Sharpness on each measurement subset relative to the full-data sharpness, at the
    parameters reached after ``steps`` steps (how much a small measurement set costs in
    accuracy, not only in time)."""
    state = opt.init(params)
    for _ in range(steps):
        params, state, _ = step(params, state)
    full = ht.sharpness(ht.Objective(loss_fn, params, data), key=jax.random.key(7),
                        tol=1e-6).value
    return {"full": full, **{n: ht.sharpness(ht.Objective(loss_fn, params, sub),
                                             key=jax.random.key(7), tol=1e-6).value / full - 1.0
                             for n, sub in subsets.items()}}


# ---- report ------------------------------------------------------------------------------

KEEP_START = "<!-- hand-written section: kept when this file is regenerated -->"
KEEP_END = "<!-- end of hand-written section -->"
# written by bench_tracker_minibatch.py, kept here when this script regenerates the file
MINIBATCH_START = "<!-- minibatch section: written by benchmarks/cost/bench_tracker_minibatch.py -->"
MINIBATCH_END = "<!-- end of minibatch section -->"


def _kept_block(path: Path, start: str = KEEP_START, end: str = KEEP_END) -> list:
    """The block between ``start`` and ``end`` of an existing results file (markers
    included; by default the hand-written one), or []."""
    if not path.exists():
        return []
    text = path.read_text()
    if start not in text or end not in text:
        return []
    block = text[text.index(start):text.index(end) + len(end)]
    return block.split("\n") + [""]


def write_markdown(path: Path, command: str, machine: dict, eos: list | None,
                   over: dict | None) -> None:
    kept = _kept_block(path)
    lines = ["# Sharpness tracking: benchmark results", "",
             f"Command: `{command}`", "",
             f"Machine: {machine['platform']}, {machine['cpu_count']} CPU cores "
             f"({machine['processor']}), JAX {machine['jax']} on {machine['backend']} "
             f"({machine['device']}), Python {machine['python']}. Load average at start "
             f"{', '.join(f'{v:.1f}' for v in machine['load_average_start'])}; at end "
             f"{', '.join(f'{v:.1f}' for v in machine.get('load_average_end', ()))} "
             "(a shared machine: timings are indicative).", ""]
    lines += kept + _kept_block(path, MINIBATCH_START, MINIBATCH_END)
    if eos:
        lines += ["## Edge of stability (Cohen et al. 2021)", "",
                  "Digits tanh MLP 64-32-32-10 (output layer initialised at 0.2x Glorot), "
                  "squared error to one-hot labels, full-batch gradient descent on all 1797 "
                  "examples; sharpness of the full-batch loss every "
                  f"{eos[0]['steps'][1] - eos[0]['steps'][0]} steps, warm-started Lanczos "
                  "(tol 1e-3). Figure: `benchmarks/results/sharpness_eos.png`.", "",
                  "| η | 2/η | steps | initial λmax | first step ≥ 0.95·2/η | "
                  "final λmax/(2/η) | median last quarter/(2/η) | max/(2/η) | "
                  "loss rises (2nd half) | "
                  "HVPs/measurement | wall s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in eos:
            lines.append(f"| {r['learning_rate']} | {r['threshold']:g} | {r['steps'][-1]} | "
                         f"{r['initial_sharpness']:.2f} | {r['first_step_within_5pct']} | "
                         f"{r['final_over_threshold']:.3f} | "
                         f"{r['median_last_quarter_over_threshold']:.3f} | "
                         f"{r['max_over_threshold']:.3f} | {r['loss_increases_second_half']} | "
                         f"{r['mean_matvecs_per_measurement']:.1f} | {r['wall_time_s']:.0f} |")
        lines.append("")
    if over:
        lines += ["## Tracker overhead on mlp-wide", "",
                  f"{over['num_params']:,} parameters; full-batch gradient descent (η = "
                  f"{over['learning_rate']}) on {over['train_examples']} examples, "
                  f"{over['steps']} steps (median of {over['repeats']} interleaved repeats; "
                  f"one training step ≈ {over['train_step_ms']:.0f} ms). Tracking "
                  f"`lambda_max` every {over['every']} steps on a fixed random measurement "
                  "subset, tol 1e-3. Everything is compiled before timing (one untimed pass "
                  "of every configuration).", "",
                  "| run | overhead (paired) | overhead (run vs run) | median s | "
                  "HVPs/measurement (after the first) | s/measurement |",
                  "|---|---|---|---|---|---|"]
        for name, r in over["runs"].items():
            hvps = (f"{r['mean_matvecs_after_first']:.1f}" if "mean_matvecs_after_first" in r
                    else "—")
            per = f"{r['mean_measurement_s']:.3f}" if "mean_measurement_s" in r else "—"
            pair = "—" if name == "none" else f"{100 * r['paired_overhead']:+.1f}%"
            lines.append(f"| {name} | {pair} | {100 * r['overhead']:+.1f}% | "
                         f"{r['median_s']:.2f} | {hvps} | {per} |")
        lines += ["", "*Paired*: time spent measuring / time spent training within the same "
                  "run (median over repeats): both are paid seconds apart under the same load. "
                  "*Run vs run*: median wall time of the run / median wall time without "
                  "tracking, which also absorbs load changes between runs."]
        diff = next(r["max_rel_diff_vs_tol_1e-3"] for r in over["runs"].values()
                    if "max_rel_diff_vs_tol_1e-3" in r)
        lines += ["", "`track-N`: warm-started measurements on N examples (tol 1e-3 unless "
                  "stated; the tol=1e-2 values differ from the tol=1e-3 ones by at most "
                  f"{diff:.1e} relative along the same trajectory: the eigenvalue error is "
                  "about residual²/gap); `cold-N`: the same with `warm_start=False` (every "
                  "measurement from a random vector).", "",
                  "One-time cost of the first measurement in the process (compilation + a cold "
                  "start): " +
                  ", ".join(f"{n} examples: {v['seconds']:.1f} s ({v['num_matvecs']} HVPs)"
                            for n, v in over["first_measurement"].items()) + ".", ""]
        lines += _overhead_notes(over)
    atomic_write_text(path, "\n".join(lines))


def _overhead_notes(over: dict) -> list:
    """What the overhead table says, in words (target: at most 25%)."""
    runs = over["runs"]
    base = runs["none"]["seconds"]
    met = [n for n, r in runs.items() if n != "none" and r["paired_overhead"] <= 0.25]
    per_step = 1000 * runs["none"]["median_s"] / over["steps"]
    mid = next(n.split("-")[1] for n in runs if n.startswith("cold-"))
    warm = runs[f"track-{mid}"]["mean_matvecs_after_first"]
    cold = runs[f"cold-{mid}"]["mean_matvecs_after_first"]
    lines = ["### Reading the numbers", "",
             f"- Target: at most 25% with the warm start. Met (paired) by: "
             f"{', '.join(met) or 'none'}. "
             "The overhead grows with the measurement set: a measurement costs one "
             "linearisation plus a handful of HVPs on it. Measured separately (ms, median): "
             + "; ".join(f"{n} examples: gradient {c['gradient']:.1f}, linearisation "
                         f"{c['linearize']:.1f}, HVP {c['hvp']:.1f}"
                         for n, c in over.get("costs_ms", {}).items())
             + f"; a training step on all {over['train_examples']} examples "
             f"{over['train_step_ms']:.1f}.",
             f"- The untracked baseline itself varied from {min(base):.1f} to {max(base):.1f} s "
             f"across repeats ({per_step:.0f} ms per step at the median): differences of "
             "~10% are within the noise of this shared machine.",
             f"- Warm starts spend {warm / cold:.0%} of the HVPs of cold starts on the same "
             f"trajectory ({warm:.1f} vs {cold:.1f} per measurement, `track-{mid}` vs "
             f"`cold-{mid}`). These are the first {over['steps']} steps, where the top "
             "eigenvector still moves quickly; later in training warm measurements get "
             "cheaper (compare the HVPs per measurement of the 3000-step runs above).", ""]
    sub = over.get("subset_vs_full")
    if sub:
        lines.insert(-1, f"- What a smaller measurement set costs in accuracy: after "
                     f"{over['steps']} steps the full-data sharpness is {sub['full']:.4g}; "
                     "the subsets give " + ", ".join(
                         f"{100 * v:+.1f}% ({n} examples)" for n, v in sub.items()
                         if n != "full") + " (a different loss, not a solver error).")
    return lines


def _render_only(out: Path, markdown: Path) -> int:
    import json
    eos = json.loads((out / "sharpness_eos.json").read_text())
    over = json.loads((out / "sharpness_overhead.json").read_text())
    machine = dict(eos["machine"])
    machine["load_average_end"] = over["machine"].get("load_average_end",
                                                      over["machine"]["load_average_start"])
    write_markdown(markdown, over.get("command", "python benchmarks/studies/bench_sharpness.py"),
                   machine, eos["runs"], over)
    print(f"wrote {markdown}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--out", default=str(BENCH / "results"), help="results folder")
    parser.add_argument("--markdown", default=str(BENCH / "RESULTS_sharpness.md"))
    parser.add_argument("--skip-eos", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--overhead-steps", type=int, default=None,
                        help="training steps per overhead run (default 200; 60 with --quick)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the Markdown from the JSON results in --out")
    args = parser.parse_args(argv)
    if args.render_only:
        return _render_only(Path(args.out), Path(args.markdown))
    out = Path(args.out)
    command = "python benchmarks/studies/bench_sharpness.py" + (" " + " ".join(argv or sys.argv[1:])
                                                        if (argv or sys.argv[1:]) else "")
    machine = _machine()
    eos = over = None
    if not args.skip_eos:
        steps = 400 if args.quick else 3000
        eos = []
        for lr in (0.1, 0.2):
            r = eos_run(lr, steps, 10)
            print(f"EoS eta={lr}: final/(2/eta) {r['final_over_threshold']:.3f}, median last "
                  f"quarter {r['median_last_quarter_over_threshold']:.3f}, max "
                  f"{r['max_over_threshold']:.3f}, {r['mean_matvecs_per_measurement']:.1f} HVPs/"
                  f"measurement, {r['wall_time_s']:.0f} s", flush=True)
            eos.append(r)
        write_json(out / "sharpness_eos.json", {"machine": machine, "runs": eos})
        eos_figure(eos, out / "sharpness_eos.png")
    if not args.skip_overhead:
        over = overhead(steps=args.overhead_steps or (60 if args.quick else 200), every=10,
                        sizes=(128, 256, 512), repeats=1 if args.quick else 3)
        for name, r in over["runs"].items():
            print(f"overhead {name}: {r['median_s']:.2f} s ({100 * r['overhead']:+.1f}% run vs "
                  f"run, {100 * r['paired_overhead']:+.1f}% paired)",
                  flush=True)
        machine["load_average_end"] = os.getloadavg()
        write_json(out / "sharpness_overhead.json", {"machine": machine, "command": command,
                                                     **over})
    machine["load_average_end"] = os.getloadavg()
    write_markdown(Path(args.markdown), command, machine, eos, over)
    print(f"wrote {out}/ and {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
