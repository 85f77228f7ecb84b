"""hessian_tools against PyHessian on one GPU: top-5, density and trace, identical weights.

    python3 benchmarks/peers/gpu_peers.py --out /tmp/gpu                    # on the GPU machine
    .venv/bin/python benchmarks/peers/gpu_peers.py --quick --out /tmp/gpu   # a smoke run on a CPU

Both libraries run on the same device: JAX's default backend and torch's ``--torch-device``
(``cuda`` when torch sees a GPU). The weights are the cached trained digits models, so the
float64 references that ``bench_eigs.py`` and ``bench_density.py`` cache in ``results/`` apply
(a weights hash guards each; a mismatch leaves the accuracy column empty).

* **Ours** runs in fresh subprocesses, one per (model, task, matmul precision). *Cold* is
  the operator build plus the first call in that process, compilation included (the
  backend's start-up and the data transfer are not, as for torch); *warm* is the median of
  later calls with other keys.
* **Matmul precision.** On NVIDIA GPUs JAX computes float32 matrix products in TF32 by
  default (XLA's ``DEFAULT`` precision), while torch's float32 matmuls are full float32
  (``allow_tf32`` off). ``ht.Objective`` fixes ``precision="highest"`` unless told
  otherwise; ours runs at each of ``--precisions`` (the objective's ``precision``), so the
  table shows both the speed and the accuracy each costs.
* **PyHessian** runs in this process, after an untimed warm-up HVP that pays CUDA's
  start-up. Its top-5 ``tol`` is tightened until its explicit residual meets ours (as in
  ``bench_eigs.py``); its density runs the same probes and steps; its trace runs its
  defaults (100 probes at most, ``tol`` 1e-3) over ``--trace-seeds`` torch seeds.

Writes ``<out>/gpu_peers.json`` after every section (a run cut short keeps what it
finished) and prints one table with the ratios PyHessian / ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/: shared helpers, results/, RESULTS*.md
sys.path.insert(0, str(BENCH))

EIG_MODELS = ("mlp-wide", "cnn")
DENSITY_MODELS = ("mlp-small", "mlp-wide")
TRACE_MODELS = ("mlp-small", "mlp-wide")
TRACE_BUDGETS = {"xtrace": 16, "hutch++": 24}


# ---- ours, in a fresh subprocess ----------------------------------------------------------------

def _worker(args) -> dict:
    import jax
    import numpy as np
    import hessian_tools as ht
    from hessian_tools.examples import digits
    obj = dataclasses.replace(digits.digits_objective(args.model), precision=args.precision)
    jax.block_until_ready(obj.params)
    t0 = time.perf_counter()
    op = ht.hessian(obj)
    jax.block_until_ready(jax.tree.leaves(op.matvec_fn))
    build = time.perf_counter() - t0
    out = {"build_s": build, "precision": obj.precision,
           "device": str(jax.devices()[0])}
    keys = range(1 + args.repeats)
    if args.task == "eigs":
        runs = [ht.eigenvalues(op, k=5, which="largest", key=jax.random.key(i), tol=args.tol)
                for i in keys]
        out["runs"] = [{"time_s": r.wall_time, "num_matvecs": r.num_matvecs,
                        "values": r.values.tolist(), "converged": bool(np.all(r.converged)),
                        "scale": r.scale} for r in runs]
    elif args.task == "density":
        runs = [ht.density(op, num_probes=args.probes, num_steps=args.steps,
                           key=jax.random.key(i)) for i in keys]
        out["runs"] = [{"time_s": r.wall_time, "num_matvecs": r.num_matvecs,
                        "nodes": np.asarray(r.nodes).tolist(),
                        "weights": np.asarray(r.weights).tolist()} for r in runs]
    else:
        out["runs"] = {}
        for method, budget in TRACE_BUDGETS.items():
            runs = [ht.trace(op, method=method, num_matvecs=budget, key=jax.random.key(i))
                    for i in range(args.trace_seeds)]
            out["runs"][method] = [{"time_s": r.wall_time, "num_matvecs": r.num_matvecs,
                                    "value": float(r.value)} for r in runs]
    return out


def _ours(model, task, precision, args) -> dict:
    result = Path(args.out) / f".tmp_{model}_{task}_{precision}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", model,
           "--task", task, "--result-file", str(result), "--tol", str(args.tol),
           "--probes", str(args.probes), "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--trace-seeds", str(args.trace_seeds)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + ["--precision", precision], stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode:
        return {"error": f"worker exited with {proc.returncode}"}
    res = json.loads(result.read_text())
    result.unlink()
    res["process_s"] = time.perf_counter() - t0
    return res


# ---- references (cached by bench_eigs.py and bench_density.py) -----------------------------------

def _cached(name: str, sha: str):
    path = BENCH / "results" / name
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data if data.get("weights_sha256") == sha else None


# ---- PyHessian, in this process -----------------------------------------------------------------


def _sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _pyhessian_warmup(twin, tx, ty, cuda):
    from _peers import pyhessian_hvp_fn
    hvp, hc = pyhessian_hvp_fn(twin, tx, ty, cuda=cuda)
    hvp()
    _sync()
    del hc
    twin.model.zero_grad(set_to_none=True)


def _pyhessian_eigs(obj, twin, tx, ty, ref, args, cuda):
    import hessian_tools as ht
    from _jax_extras import FlatOperator
    from _peers import run_pyhessian_matched
    flat_op = FlatOperator(ht.hessian(obj))        # the objective computes at "highest"
    return run_pyhessian_matched(twin, tx, ty, flat_op, float(ref[0]), k=5, tol=args.tol,
                                 cuda=cuda)


# ---- tables -------------------------------------------------------------------------------------

def _ours_row(res, *, accuracy):
    if "error" in res:
        return {"error": res["error"]}
    runs = res["runs"]
    cold = res["build_s"] + runs[0]["time_s"]
    warm = statistics.median(r["time_s"] for r in runs[1:]) if runs[1:] else None
    return {"cold_s": cold, "warm_s": warm, "build_s": res["build_s"],
            "num_matvecs": [r["num_matvecs"] for r in runs], "accuracy": accuracy(runs),
            "process_s": res.get("process_s")}


def _eig_error(ref):
    import numpy as np
    if ref is None:
        return lambda runs: None
    r = np.asarray(ref["values"][:5])
    return lambda runs: max(float(np.max(np.abs(np.asarray(x["values"]) - r) / r))
                            for x in runs)


def _w1_error(eigs):
    import numpy as np
    from hessian_tools.linalg.slq import wasserstein1
    if eigs is None:
        return lambda runs: None
    span = eigs[-1] - eigs[0]
    return lambda runs: max(wasserstein1(np.asarray(x["nodes"]), np.asarray(x["weights"]), eigs)
                            / span for x in runs)


def run(args) -> dict:
    import jax
    import numpy as np
    import torch
    from _jax_extras import package_fingerprint, weights_sha
    from peers.bench_density import _setup
    device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device == "cuda"
    res = {"meta": {"jax": jax.__version__, "torch": torch.__version__,
                    "jax_device": str(jax.devices()[0]),
                    "torch_device": torch.cuda.get_device_name() if cuda else "cpu",
                    "cpu_count": os.cpu_count(), "precisions": args.precisions,
                    "date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args),
                    "hessian_tools": package_fingerprint()},
           "rows": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():
        (out / "gpu_peers.json").write_text(json.dumps(res, indent=1))

    precisions = args.precisions.split(",")
    for task, models in (("eigs", EIG_MODELS), ("density", DENSITY_MODELS),
                         ("trace", TRACE_MODELS)):
        if task not in args.tasks.split(","):
            continue
        for name in models:
            if name not in args.models.split(","):
                continue
            print(f"[{task} {name}] ...", file=sys.stderr, flush=True)
            obj, twin, tx, ty, _ = _setup(name, device=device, loss_tol=1e-4)
            sha = weights_sha(obj.params)
            _pyhessian_warmup(twin, tx, ty, cuda)
            row = {"task": task, "model": name, "weights_sha256": sha}
            if task == "eigs":
                ref = _cached(f"reference_{name}.json", sha)
                accuracy = _eig_error(ref)
                if ref is None:
                    row["pyhessian"] = {"error": "no cached float64 reference for these weights"}
                else:
                    ph = _pyhessian_eigs(obj, twin, tx, ty, ref["values"], args, cuda)
                    row["pyhessian"] = {"time_s": ph["time_s"], "num_matvecs": ph["num_matvecs"],
                                        "accuracy": accuracy([ph]), "tol": ph["pyhessian_tol"],
                                        "matched": ph["matched"]}
            elif task == "density":
                from peers.bench_density import _pyhessian_density
                ref = _cached(f"reference_density_{name}.json", sha)
                eigs = None if ref is None else np.asarray(ref["eigenvalues"])
                accuracy = _w1_error(eigs)
                ph = _pyhessian_density(twin, tx, ty, args, cuda=cuda)
                row["pyhessian"] = {"time_s": ph["time_s"], "num_matvecs": ph["num_matvecs"],
                                    "accuracy": accuracy([{"nodes": ph["nodes"],
                                                           "weights": ph["weights"]}])}
            else:
                from peers.bench_density import _pyhessian_trace, _rms_error
                from _jax_extras import cached_trace_reference
                exact = cached_trace_reference(BENCH / "results", name, sha)
                ph = _pyhessian_trace(twin, tx, ty, max_iter=100, tol=1e-3, seeds=args.trace_seeds,
                                      reference=exact if exact is not None else float("nan"),
                                      cuda=cuda)
                row["pyhessian"] = {"time_s": ph["time_s"], "num_matvecs": ph["num_matvecs"],
                                    "accuracy": ph["rms_error"] if exact is not None else None}
            save()
            del twin
            if cuda:
                torch.cuda.empty_cache()
            for precision in precisions:
                ours = _ours(name, task, precision, args)
                if task == "trace":        # only the first method's first call is cold
                    for i, (method, runs) in enumerate(ours.get("runs", {}).items()):
                        r = row[f"ours {method} {precision}"] = _ours_row(
                            {**ours, "runs": runs},
                            accuracy=lambda rs: None if exact is None else _rms_error(
                                [r["value"] for r in rs], exact))
                        if i:
                            r["cold_s"] = None
                    if "error" in ours:
                        row[f"ours {precision}"] = ours
                else:
                    row[f"ours {precision}"] = _ours_row(ours, accuracy=accuracy)
                save()
            res["rows"].append(row)
            save()
            print_row(row)
    return res


def _f(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def print_row(row) -> None:
    ph = row["pyhessian"]
    print(f"\n{row['task']} {row['model']}: PyHessian {_f(ph.get('time_s'))} s, "
          f"{ph.get('num_matvecs')} HVPs, accuracy {_f(ph.get('accuracy'))}")
    print("| ours | HVPs | cold s | warm s | accuracy | PyHessian/ours cold | warm |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key, r in row.items():
        if not key.startswith("ours"):
            continue
        if "error" in r:
            print(f"| {key[5:]} | {r['error']} |")
            continue
        t = ph.get("time_s")
        ratio = (lambda s: _f(t / s, ".2f") if t and s else "-")
        print(f"| {key[5:]} | {r['num_matvecs'][0]} | {_f(r['cold_s'])} | {_f(r['warm_s'])} | "
              f"{_f(r['accuracy'])} | {ratio(r['cold_s'])} | {ratio(r['warm_s'])} |")
    sys.stdout.flush()


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(BENCH / "results" / "gpu"))
    p.add_argument("--tasks", default="eigs,density,trace")
    p.add_argument("--models", default="mlp-small,mlp-wide,cnn")
    p.add_argument("--precisions", default="default,highest",
                   help="JAX float32 matmul precisions to run ours at")
    p.add_argument("--torch-device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--probes", type=int, default=10)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--repeats", type=int, default=3, help="warm calls after the cold one")
    p.add_argument("--trace-seeds", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="2 probes x 20 steps, 1 warm repeat, "
                   "2 trace seeds: a smoke run")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.probes, args.steps, args.repeats, args.trace_seeds = 2, 20, 1, 2
    return args


def main(argv=None):
    args = _parse(argv)
    if args.worker:
        Path(args.result_file).write_text(json.dumps(_worker(args)))
        return
    res = run(args)
    print(f"\nwrote {Path(args.out) / 'gpu_peers.json'}")
    return res


if __name__ == "__main__":
    main()
