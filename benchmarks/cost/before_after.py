"""Before and after a change: the same tasks on two snapshots of the package, interleaved.

Each snapshot is a folder holding a ``hessian_tools/`` copy, for instance::

    mkdir -p /tmp/ba_before /tmp/ba_after
    git archive baa54c0 hessian_tools | tar -x -C /tmp/ba_before     # 0.1.0
    git archive main hessian_tools | tar -x -C /tmp/ba_after         # 0.2.0

Every measurement runs in a fresh Python process with ``PYTHONPATH`` set to one snapshot
(the worker checks that ``hessian_tools`` was imported from there), and the processes
alternate: for each round, for each task, *before* then *after*. A change in the shared
machine's load therefore hits both versions alike; the table gives the ratio after/before of
the median and of the minimum over the rounds. The persistent compilation cache is off, so
*cold* (the first call in the process) includes compilation. The digits weights come from
``~/.cache/hessian_tools``, which both versions read (the cache path is the same in both).

Tasks (all on the digits example models, float32):

* ``eig-mlp-wide``, ``eig-cnn``: ``ht.eigenvalues(ht.hessian(obj), k=5, which="largest",
  key=key(0))`` twice in one process: cold (first call), warm (second call, same key);
  HVPs, the values and the largest relative residual.
* ``density``: ``ht.density`` with 10 probes x 80 steps on ``mlp-small``: cold, warm,
  matvecs.
* ``trace``: ``ht.trace`` by Hutch++ and by XTrace with 24 matvecs on ``mlp-small``: cold,
  warm, value.
* ``tracker``: ``ht.SharpnessTracker`` every 5 steps of 100 steps of full-batch gradient
  descent (``optax.sgd(0.5)``) from the initialisation of ``mlp-small``: 20 warm-started
  measurements; total HVPs, the first measurement (compilation) and the median of the other
  19.
* ``classify``: ``ht.classify(obj, key=key(0))`` on ``mlp-tiny``: cold, warm, verdict.

The API differences between versions are handled by :class:`_Adapter`, keyed on
``ht.__version__``.

Diagnostics (``--diagnose TASKS``, instead of the rounds): ``python -X importtime`` of each
version by top-level package, ``--rounds`` plain runs of the tasks and one run each with
``cProfile`` switched on around the warm calls; ``slq-host`` is a diagnostic task of its own
(density's host Lanczos algebra with a NumPy diagonal operator). Appended to the JSON's
``diagnostics`` list.

Usage (from the repository root; 17 minutes at load 7 on 2 cores)::

    flock /tmp/bench.lock /work/main/.venv/bin/python benchmarks/cost/before_after.py \\
        --before /tmp/ba_before --after /tmp/ba_after --rounds 3 \\
        --revs "before=baa54c0 after=main@9c0634d"

Writes ``benchmarks/results/before_after.json`` and prints the Markdown table (also stored
in the JSON as ``table``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/: shared helpers, results/, RESULTS*.md
TASKS = ("eig-mlp-wide", "eig-cnn", "density", "trace", "tracker", "classify")
VERSIONS = ("before", "after")


# =============================================================================================
# Worker: one task in one process, under one snapshot (jax and the package imported here)
# =============================================================================================

class _Adapter:
    """What differs between 0.1 and 0.2 for these tasks (keyed on ``ht.__version__``)."""

    def __init__(self, ht):
        self.ht = ht
        self.version = tuple(int(p) for p in ht.__version__.split(".")[:2])

    def tracker(self, loss, params, data, **kwargs):
        """``SharpnessTracker(loss_fn, measure_data, ...)`` in 0.1; ``(Objective, ...)`` in 0.2."""
        if self.version < (0, 2):
            return self.ht.SharpnessTracker(loss, data, **kwargs)
        return self.ht.SharpnessTracker(self.ht.Objective(loss, params, data), **kwargs)

    def tracker_update(self, tracker, step, params, opt_state, learning_rate):
        """``update(step, params, opt_state=...)``: keyword in 0.1, positional or keyword in 0.2."""
        return tracker.update(step, params, opt_state=opt_state, learning_rate=learning_rate)


_PROFILER = None
"""A ``cProfile.Profile`` switched on around the warm calls when ``--diagnose`` asks."""


def _timed(fn, warm: bool = False):
    if warm and _PROFILER is not None:
        _PROFILER.enable()
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    if warm and _PROFILER is not None:
        _PROFILER.disable()
    return out, elapsed


def _eig_task(ht, jax, name):
    from hessian_tools.examples.digits import digits_objective
    import numpy as np
    obj = digits_objective(name)
    op = ht.hessian(obj)
    key = jax.random.key(0)
    call = lambda: ht.eigenvalues(op, k=5, which="largest", key=key)  # noqa: E731
    cold_res, cold = _timed(call)
    res, warm = _timed(call, warm=True)
    rel = np.asarray(res.residuals, np.float64) / max(float(res.scale), 1e-30)
    return {"cold_s": cold, "warm_s": warm, "num_matvecs": int(res.num_matvecs),
            "num_matvecs_cold": int(cold_res.num_matvecs), "converged": bool(res.converged),
            "values": np.asarray(res.values, np.float64).tolist(),
            "residuals": np.asarray(res.residuals, np.float64).tolist(),
            "scale": float(res.scale), "tol": float(res.tol),
            "max_rel_residual": float(rel.max()), "num_params": int(op.dim)}


def _density_task(ht, jax):
    from hessian_tools.examples.digits import digits_objective
    import numpy as np
    op = ht.hessian(digits_objective("mlp-small"))
    key = jax.random.key(0)
    call = lambda: ht.density(op, key=key, num_probes=10, num_steps=80)  # noqa: E731
    _, cold = _timed(call)
    res, warm = _timed(call, warm=True)
    nodes = np.asarray(res.nodes, np.float64)
    return {"cold_s": cold, "warm_s": warm, "num_matvecs": int(res.num_matvecs),
            "loop": str(getattr(res, "loop", "")), "node_min": float(nodes.min()),
            "node_max": float(nodes.max()), "num_params": int(op.dim)}


def _trace_task(ht, jax):
    from hessian_tools.examples.digits import digits_objective
    op = ht.hessian(digits_objective("mlp-small"))
    out = {"num_params": int(op.dim)}
    for method, tag in (("hutch++", "hutchpp"), ("xtrace", "xtrace")):
        key = jax.random.key(0)
        call = lambda: ht.trace(op, method=method, num_matvecs=24, key=key)  # noqa: E731
        _, cold = _timed(call)
        res, warm = _timed(call, warm=True)
        out[tag] = {"cold_s": cold, "warm_s": warm, "value": float(res.value),
                    "stderr": float(res.stderr), "num_matvecs": int(res.num_matvecs)}
    return out


def _tracker_task(ht, jax, adapter, *, steps=100, every=5, lr=0.5):
    import numpy as np
    import optax
    from hessian_tools.examples.digits import digits_objective
    obj = digits_objective("mlp-small", trained=False)
    loss, params, data = obj.loss, obj.params, obj.data
    opt = optax.sgd(lr)
    tracker = adapter.tracker(loss, params, data, every=every, key=jax.random.key(1),
                              optimizer=opt, fsync=False)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params, data)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    state, times, losses = opt.init(params), [], []
    for i in range(steps):
        rec, dt = _timed(lambda: adapter.tracker_update(tracker, i, params, state, lr))
        if rec is not None:
            times.append(dt)
        params, state, value = step(params, state)
        losses.append(value)
    log = tracker.log
    per = [int(v) for v in log["num_matvecs"]]
    return {"num_measurements": len(times), "total_matvecs": int(tracker.total_matvecs),
            "matvecs_per_measurement": per, "first_s": times[0],
            "warm_median_s": statistics.median(times[1:]), "warm_min_s": min(times[1:]),
            "lambda_max": [float(v) for v in log["lambda_max"]],
            "final_loss": float(np.asarray(losses[-1]))}


def _slq_host_task(ht, jax, *, dim=3466, num_probes=10, num_steps=80, repeats=5):
    """The host Lanczos algebra of ``density`` alone: ``slq_quadrature_numpy`` as ``density``
    calls it on mlp-small (10 probes x 80 steps, 3,466 float32 parameters, ``interleave=2``)
    with a diagonal operator in NumPy, so that no product is compiled."""
    import numpy as np
    from hessian_tools.linalg.slq import slq_quadrature_numpy
    d = np.linspace(-1.0, 2.0, dim, dtype=np.float32)
    probes = jax.random.rademacher(jax.random.key(0), (num_probes, dim), dtype=np.float32)
    call = lambda: slq_quadrature_numpy(lambda q: q * d, probes, num_steps=num_steps,  # noqa: E731
                                        flat=True, interleave=2)
    _, first = _timed(call)
    times = [_timed(call, warm=True)[1] for _ in range(repeats)]
    return {"first_s": first, "warm_s": statistics.median(times), "warm_min_s": min(times),
            "warm_all_s": times}


def _classify_task(ht, jax):
    from hessian_tools.examples.digits import digits_objective
    obj = digits_objective("mlp-tiny")
    key = jax.random.key(0)
    call = lambda: ht.classify(obj, key=key)  # noqa: E731
    _, cold = _timed(call)
    rep, warm = _timed(call, warm=True)
    return {"cold_s": cold, "warm_s": warm, "verdict": rep.verdict,
            "num_matvecs": int(rep.num_matvecs), "index": rep.index,
            "num_flat": rep.num_flat, "lambda_max": float(rep.lambda_max),
            "lambda_min": float(rep.lambda_min), "num_params": int(rep.num_params)}


def worker(task: str, expect_root: str) -> dict:
    """Run one task in this process and return its measurements (with provenance)."""
    t0 = time.perf_counter()
    import jax
    import hessian_tools as ht
    origin = Path(ht.__file__).resolve()
    if not str(origin).startswith(str(Path(expect_root).resolve())):
        raise RuntimeError(f"hessian_tools was imported from {origin}, not from the snapshot "
                           f"{expect_root}: an editable install or a path entry takes "
                           "precedence over PYTHONPATH.")
    adapter = _Adapter(ht)
    import_s = time.perf_counter() - t0
    global _PROFILER
    if os.environ.get("BEFORE_AFTER_PROFILE"):
        import cProfile
        _PROFILER = cProfile.Profile()
    if task.startswith("eig-"):
        out = _eig_task(ht, jax, task[4:])
    elif task == "density":
        out = _density_task(ht, jax)
    elif task == "trace":
        out = _trace_task(ht, jax)
    elif task == "tracker":
        out = _tracker_task(ht, jax, adapter)
    elif task == "classify":
        out = _classify_task(ht, jax)
    elif task == "slq-host":
        out = _slq_host_task(ht, jax)
    else:
        raise ValueError(f"Unknown task {task!r}; choose from {TASKS}.")
    if _PROFILER is not None:
        _PROFILER.dump_stats(os.environ["BEFORE_AFTER_PROFILE"])
    out.update(version=ht.__version__, package=str(origin.parent), import_s=import_s,
               jax=jax.__version__, process_s=time.perf_counter() - t0)
    return out


# =============================================================================================
# Driver: interleaved fresh processes, then the table
# =============================================================================================

def _env(root: Path) -> dict:
    """The environment of a worker: only ``root`` on the path, no compilation cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(PYTHONPATH=str(root), HESSIAN_TOOLS_NO_COMPILE_CACHE="1",
               JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1")
    return env


def _run_one(task: str, root: Path, timeout: float, profile_to: str = "") -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", task,
           "--expect-root", str(root)]
    env = _env(root)
    if profile_to:
        env["BEFORE_AFTER_PROFILE"] = profile_to
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=timeout, cwd="/tmp")
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:], "returncode": proc.returncode, "wall_s": wall}
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    out["wall_s"], out["load_after"] = wall, os.getloadavg()
    return out


def import_times(root: Path) -> dict:
    """Seconds of ``import hessian_tools`` by top-level package (``python -X importtime``).

    Each module's *self* time is charged to the first component of its name, so
    ``orbax.checkpoint._src...`` counts under ``orbax``; the sum is the whole import.
    """
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import hessian_tools"],
                          env=_env(root), capture_output=True, text=True, cwd="/tmp",
                          check=True)
    by_package: dict = {}
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "self" in parts[0]:
            continue
        self_us = int(parts[0].split(":")[1])
        name = parts[2].strip().split(".")[0]
        by_package[name] = by_package.get(name, 0.0) + self_us / 1e6
    top = dict(sorted(by_package.items(), key=lambda kv: -kv[1])[:12])
    return {"total_s": sum(by_package.values()), "top_packages_s": top,
            "load": os.getloadavg()}


def profile(task: str, root: Path, timeout: float, tmp: Path, lines: int = 25) -> dict:
    """One worker with ``cProfile`` on around its warm calls: the result and the top
    functions by cumulative and by own time (the profiler's overhead is in the result's
    timings)."""
    import pstats
    import io as _io
    stats_file = tmp / f"profile_{task}_{root.name}.prof"
    res = _run_one(task, root, timeout, profile_to=str(stats_file))
    if "error" in res:
        return {"result": res, "stats": ""}
    buf = _io.StringIO()
    stats = pstats.Stats(str(stats_file), stream=buf)
    stats.sort_stats("cumulative").print_stats(lines)
    stats.sort_stats("tottime").print_stats(lines)
    return {"result": res, "stats": buf.getvalue()}


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


# Rows of the table: (task, label, path into a worker's result, kind)
# kind: "time" (median/min and their ratios), "count" (side by side), "value" (side by side).
_ROWS = [
    ("eig-mlp-wide", "top-5, mlp-wide: warm s", ("warm_s",), "time"),
    ("eig-mlp-wide", "top-5, mlp-wide: cold s", ("cold_s",), "time"),
    ("eig-mlp-wide", "top-5, mlp-wide: HVPs", ("num_matvecs",), "count"),
    ("eig-mlp-wide", "top-5, mlp-wide: max rel. residual", ("max_rel_residual",), "value"),
    ("eig-cnn", "top-5, cnn: warm s", ("warm_s",), "time"),
    ("eig-cnn", "top-5, cnn: cold s", ("cold_s",), "time"),
    ("eig-cnn", "top-5, cnn: HVPs", ("num_matvecs",), "count"),
    ("eig-cnn", "top-5, cnn: max rel. residual", ("max_rel_residual",), "value"),
    ("density", "density SLQ 10x80, mlp-small: warm s", ("warm_s",), "time"),
    ("density", "density SLQ 10x80, mlp-small: cold s", ("cold_s",), "time"),
    ("density", "density SLQ 10x80, mlp-small: matvecs", ("num_matvecs",), "count"),
    ("trace", "trace Hutch++ 24, mlp-small: warm s", ("hutchpp", "warm_s"), "time"),
    ("trace", "trace Hutch++ 24, mlp-small: cold s", ("hutchpp", "cold_s"), "time"),
    ("trace", "trace Hutch++ 24, mlp-small: value", ("hutchpp", "value"), "value"),
    ("trace", "trace XTrace 24, mlp-small: warm s", ("xtrace", "warm_s"), "time"),
    ("trace", "trace XTrace 24, mlp-small: cold s", ("xtrace", "cold_s"), "time"),
    ("trace", "trace XTrace 24, mlp-small: value", ("xtrace", "value"), "value"),
    ("tracker", "tracker, 20 measurements: s per measurement (2nd-20th, median)",
     ("warm_median_s",), "time"),
    ("tracker", "tracker: first measurement s (compiles)", ("first_s",), "time"),
    ("tracker", "tracker: total HVPs", ("total_matvecs",), "count"),
    ("classify", "classify, mlp-tiny: warm s", ("warm_s",), "time"),
    ("classify", "classify, mlp-tiny: cold s", ("cold_s",), "time"),
    ("classify", "classify, mlp-tiny: HVPs", ("num_matvecs",), "count"),
    ("classify", "classify, mlp-tiny: verdict", ("verdict",), "value"),
    ("classify", "classify, mlp-tiny: index (below -tau)", ("index",), "value"),
    ("*", "import jax + hessian_tools s (every process)", ("import_s",), "time"),
]


def _get(result: dict, path: tuple):
    for part in path:
        result = result[part]
    return result


def _values(runs: dict, version: str, task: str, path: tuple) -> list:
    """The values at ``path`` over the rounds of ``task`` (``"*"``: over every task)."""
    tasks = list(runs[version]) if task == "*" else [task]
    return [_get(r, path) for t in tasks for r in runs[version][t] if "error" not in r]


def _fmt_num(x) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, int):
        return str(x)
    return f"{x:.3g}" if abs(x) < 1e-2 else f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"


def _distinct(vals: list) -> str:
    seen = list(dict.fromkeys(_fmt_num(v) for v in vals))
    return ", ".join(seen) if seen else "–"


def summarise(runs: dict) -> tuple[list, str]:
    """Per-row medians, minima and ratios, and the Markdown table."""
    rows, lines = [], [
        "| task | before median | after median | ratio after/before (median) | before min | "
        "after min | ratio (min) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for task, label, path, kind in _ROWS:
        b, a = _values(runs, "before", task, path), _values(runs, "after", task, path)
        if not b or not a:
            lines.append(f"| {label} | {'failed' if not b else ''} | {'failed' if not a else ''}"
                         " | | | | |")
            continue
        if kind == "time":
            row = {"task": task, "label": label, "kind": kind, "before": b, "after": a,
                   "before_median": statistics.median(b), "after_median": statistics.median(a),
                   "before_min": min(b), "after_min": min(a)}
            row["ratio_median"] = row["after_median"] / row["before_median"]
            row["ratio_min"] = row["after_min"] / row["before_min"]
            flag = " **!**" if row["ratio_median"] > 1.15 and row["ratio_min"] > 1.15 else ""
            lines.append(f"| {label} | {row['before_median']:.3f} | {row['after_median']:.3f} | "
                         f"{row['ratio_median']:.2f}{flag} | {row['before_min']:.3f} | "
                         f"{row['after_min']:.3f} | {row['ratio_min']:.2f}{flag} |")
        else:
            row = {"task": task, "label": label, "kind": kind, "before": b, "after": a}
            lines.append(f"| {label} | {_distinct(b)} | {_distinct(a)} | | | | |")
        rows.append(row)
    return rows, "\n".join(lines)


def agreement(runs: dict) -> dict:
    """Do the versions compute the same thing? Eigenvalues within the tolerance, and more."""
    import numpy as np
    out = {}
    for task in ("eig-mlp-wide", "eig-cnn"):
        b = [r for r in runs["before"][task] if "error" not in r]
        a = [r for r in runs["after"][task] if "error" not in r]
        if not b or not a:
            continue
        vb, va = np.asarray(b[0]["values"]), np.asarray(a[0]["values"])
        scale = max(b[0]["scale"], a[0]["scale"])
        diff = float(np.max(np.abs(vb - va)) / scale)
        bound = float(np.max(np.asarray(b[0]["residuals"]) + np.asarray(a[0]["residuals"]))
                      / scale)
        out[task] = {"max_rel_value_difference": diff,
                     "sum_of_rel_residuals_bound": bound, "tol": b[0]["tol"],
                     "agree_within_residuals": diff <= bound,
                     "agree_within_tol": diff <= b[0]["tol"],
                     "before_values": vb.tolist(), "after_values": va.tolist(),
                     "deterministic_within_version": all(
                         r["values"] == b[0]["values"] for r in b) and all(
                         r["values"] == a[0]["values"] for r in a)}
    for tag in ("hutchpp", "xtrace"):
        b = _values(runs, "before", "trace", (tag, "value"))
        a = _values(runs, "after", "trace", (tag, "value"))
        if b and a:
            out[f"trace-{tag}"] = {"before": b[0], "after": a[0],
                                   "rel_difference": abs(a[0] - b[0]) / abs(b[0])}
    b = [r for r in runs["before"]["tracker"] if "error" not in r]
    a = [r for r in runs["after"]["tracker"] if "error" not in r]
    if b and a:
        lb, la = np.asarray(b[0]["lambda_max"]), np.asarray(a[0]["lambda_max"])
        out["tracker"] = {"max_rel_lambda_max_difference":
                          float(np.max(np.abs(lb - la) / np.abs(lb))),
                          "before_matvecs_per_measurement": b[0]["matvecs_per_measurement"],
                          "after_matvecs_per_measurement": a[0]["matvecs_per_measurement"]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, help="folder holding the old hessian_tools/")
    parser.add_argument("--after", type=Path, help="folder holding the new hessian_tools/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "before_after.json")
    parser.add_argument("--revs", default="", help="the revisions the snapshots hold (recorded)")
    parser.add_argument("--diagnose", default="",
                        help="instead of the rounds: the import time of each version, --rounds "
                             "plain runs and one cProfile (of the warm calls) of these "
                             "comma-separated tasks (those of --tasks, or 'slq-host': the "
                             "density's host algebra alone), appended to --out's JSON "
                             "list 'diagnostics'")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--expect-root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.expect_root)), flush=True)
        return 0
    if args.before is None or args.after is None:
        parser.error("--before DIR and --after DIR are required")
    tasks = [t for t in args.tasks.split(",") if t]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        parser.error(f"unknown tasks {bad}; choose from {list(TASKS)}")
    if args.rounds < (0 if args.diagnose else 1):
        parser.error(f"--rounds={args.rounds} must be at least 1")
    roots = {"before": args.before.resolve(), "after": args.after.resolve()}
    for name, root in roots.items():
        if not (root / "hessian_tools" / "__init__.py").is_file():
            parser.error(f"--{name} {root} holds no hessian_tools/__init__.py")

    if args.diagnose:
        return diagnose(args, roots)
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
            "roots": {k: str(v) for k, v in roots.items()}, "revs": args.revs,
            "rounds": args.rounds,
            "tasks": tasks, "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "uptime_start": _uptime(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(meta["uptime_start"], flush=True)
    runs = {v: {t: [] for t in TASKS} for v in VERSIONS}
    order = []
    for rnd in range(args.rounds):
        for task in tasks:
            for version in VERSIONS:
                res = _run_one(task, roots[version], args.timeout)
                res["round"] = rnd
                runs[version][task].append(res)
                order.append(f"{rnd}:{task}:{version}")
                status = res.get("error", "").strip().splitlines()[-1:] if "error" in res else \
                    f"{res['process_s']:.1f} s in process ({res['version']})"
                print(f"round {rnd} {task:<13} {version:<6} {status}", flush=True)
    meta["uptime_end"] = _uptime()
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    print(meta["uptime_end"], flush=True)
    rows, table = summarise(runs)
    report = {"meta": meta, "order": order, "runs": runs, "rows": rows,
              "agreement": agreement(runs),
              "table": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(args.out)
    print(table)
    print(json.dumps(report["agreement"], indent=1))
    return 0


def diagnose(args, roots: dict) -> int:
    """Import times and profiles of both versions, stored next to the rounds' results."""
    import tempfile
    tasks = [t for t in args.diagnose.split(",") if t]
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "uptime_start": _uptime(),
           "import": {}, "profiles": {}}
    for _ in range(2):                      # interleaved, twice
        for version in VERSIONS:
            out["import"].setdefault(version, []).append(import_times(roots[version]))
    out["plain"] = {}
    for _ in range(args.rounds):            # the tasks without the profiler, interleaved
        for task in tasks:
            for version in VERSIONS:
                res = _run_one(task, roots[version], args.timeout)
                out["plain"].setdefault(f"{task}:{version}", []).append(res)
                print(task, version, {k: v for k, v in res.items()
                                      if k.endswith("_s") and not isinstance(v, list)},
                      flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            for version in VERSIONS:
                out["profiles"][f"{task}:{version}"] = profile(task, roots[version],
                                                               args.timeout, Path(tmp))
    out["uptime_end"] = _uptime()
    print(json.dumps(out["import"], indent=1))
    for name, prof in out["profiles"].items():
        print(f"===== {name}\n{prof['stats']}")
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report.setdefault("diagnostics", []).append(out)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(report, indent=1, default=str))
    tmp_out.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
