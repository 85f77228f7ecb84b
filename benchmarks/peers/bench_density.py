"""Benchmark: Hessian eigenvalue density and trace, hessian_tools vs PyHessian.

On identical weights and data (the trained digits MLPs, all 1797 samples, float32) it
measures:

1. **density**: our ``ht.density`` (SLQ, all probes in one compiled call) vs PyHessian's
   ``hessian.density()`` (SLQ, one Python-level Lanczos per probe) at the same number of
   probes and Lanczos steps: wall time (ours cold, i.e. operator build + compilation + run,
   and warm), Hessian-vector products, and the Wasserstein-1 distance to the exact spectrum
   (``eigh`` of the float64 dense Hessian; small model only). For the wide model, where no
   exact spectrum is available, the distance between the two estimates is compared with
   the distance between two of our runs with different seeds (the sampling noise floor);
2. **trace**: PyHessian's ``hessian.trace()`` (Hutchinson with Rademacher probes) run for
   ``--trace-probes`` probes, vs our Hutchinson with as many probes and our Hutch++ and
   XTrace, each with the smallest budget on a grid (12, 16, 24, 32, ...) as accurate as
   PyHessian. Accuracy is measured the same way on both sides: every trace runs with
   ``--trace-seeds`` seeds (PyHessian: torch seeds 0, 1, ...; ours: keys 0, 1, ..., the
   first call cold) and its error is the RMS over them against a reference trace: the
   exact one (``eigh`` of the float64 dense Hessian) for the small model, and for the wide
   model the mean of Hutch++ at 300 products over 8 other keys (unbiased; its standard
   error is recorded, cached in ``<out>/reference_trace_<model>.json``). Times are medians
   over the seeds (ours warm: all but the first). PyHessian's default call (``maxIter=100,
   tol=1e-3``) is reported too. Our first call at each budget is reported as *cold*, but
   it runs after the density in the same process, so it compiles only what is new at that
   budget; a fresh process's trace is ``cold_density.py --probes 0``.

PyHessian 0.1's ``density()`` calls ``torch.eig``, removed in torch 2; it is monkeypatched
with ``torch.linalg.eigh`` (the tridiagonal matrix is symmetric, so the results are the
same).

Usage (from the repository root)::

    .venv/bin/python benchmarks/peers/bench_density.py                       # both models
    .venv/bin/python benchmarks/peers/bench_density.py --models mlp-small --probes 10 --steps 80

Writes ``<out>/bench_density_<model>.json`` and prints tables. Needs the ``compare`` extra
(torch==2.13.0 CPU, pyhessian==0.1). The float64 reference eigenvalues are computed in a
subprocess with x64 enabled and cached as ``<out>/reference_density_<model>.json`` (keyed
by a hash of the weights).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/: shared helpers, results/, RESULTS*.md
sys.path.insert(0, str(BENCH))

EXACT_MAX_PARAMS = 5000          # models up to this size get the dense float64 reference


# ---- the float64 reference (subprocess) -------------------------------------------------------

def _worker_reference(args) -> dict:
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import hessian_tools as ht
    from hessian_tools.examples import digits
    obj = digits.digits_objective(args.model, dtype=jnp.float64)
    t0 = time.perf_counter()
    eigs = np.linalg.eigvalsh(ht.to_dense(ht.hessian(obj, linearize=False)))
    return {"eigenvalues": eigs.tolist(), "time_s": time.perf_counter() - t0,
            "dtype": "float64", "method": "to_dense + eigvalsh",
            "weights_sha256": args.weights_sha256}


def _reference(name, sha, out) -> dict:
    path = Path(out) / f"reference_density_{name}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("weights_sha256") == sha:
            return cached
    print(f"[{name}] float64 dense reference (subprocess) ...", file=sys.stderr)
    tmp = Path(out) / f".tmp_reference_density_{name}.json"
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "reference",
                    "--model", name, "--weights-sha256", sha, "--result-file", str(tmp)],
                   check=True, stdout=sys.stderr)
    ref = json.loads(tmp.read_text())
    tmp.unlink()
    path.write_text(json.dumps(ref))
    return ref


# ---- setup ------------------------------------------------------------------------------------

def _setup(name, *, device="cpu", loss_tol=1e-5):
    """The objective, its torch twin on ``device`` with the data there, and the loss check
    (the two losses must agree to ``loss_tol``)."""
    import torch
    import hessian_tools as ht
    from hessian_tools.examples import digits
    from _torch_twins import build_twin, torch_data
    obj = digits.digits_objective(name)
    twin = build_twin(digits.CONFIGS[name], obj.params)
    twin.model.to(device)
    tx, ty = torch_data(*obj.data, image=digits.CONFIGS[name]["kind"] == "cnn")
    tx, ty = tx.to(device), ty.to(device)
    with torch.no_grad():
        loss_t = float(torch.nn.functional.cross_entropy(twin.model(tx), ty))
    loss_j = float(ht.value_and_grad(obj)[0])
    if not abs(loss_j - loss_t) <= loss_tol:
        raise RuntimeError(f"The torch twin does not match: loss {loss_j} vs {loss_t}")
    return obj, twin, tx, ty, {"loss_jax": loss_j, "loss_torch": loss_t}


# ---- ours -------------------------------------------------------------------------------------

def _ours_density(obj, args) -> dict:
    """Cold: operator build + compile + run; warm: the same call with other keys."""
    import jax
    import hessian_tools as ht
    t0 = time.perf_counter()
    op = ht.hessian(obj)
    jax.block_until_ready(op.matvec_fn)
    build = time.perf_counter() - t0
    runs = [ht.density(op, num_probes=args.probes, num_steps=args.steps,
                       key=jax.random.key(seed)) for seed in range(1 + args.warm_repeats)]
    return {"build_s": build, "cold_s": build + runs[0].wall_time,
            "warm_s": statistics.median(r.wall_time for r in runs[1:]),
            "num_matvecs": runs[0].num_matvecs, "op": op, "densities": runs}


def _ours_trace(op, args, target_rms: float, reference: float) -> dict:
    """Our Hutchinson at PyHessian's probe count, and Hutch++ and XTrace at the smallest
    budget on ``_BUDGETS`` that is as accurate as PyHessian: RMS error over
    ``--trace-seeds`` keys, against the reference, at most PyHessian's over as many seeds.
    (Self-reported standard errors are too noisy to pick a budget by: Hutch++ at 6 matvecs
    reported 0.066 and erred by 0.63 on mlp-small.)"""
    import jax
    import hessian_tools as ht
    out = {}

    def runs_at(method, budget):
        return [ht.trace(op, method=method, num_matvecs=budget, key=jax.random.key(s))
                for s in range(args.trace_seeds)]

    out["hutchinson"] = _trace_entry(runs_at("hutchinson", args.trace_probes), reference)
    for method in ("hutch++", "xtrace"):
        chosen, budget = None, None
        for budget in _BUDGETS:
            if budget > 4 * args.trace_probes:
                break
            entry = _trace_entry(runs_at(method, budget), reference)
            if entry["rms_error"] <= target_rms:
                chosen = entry
                break
        out[f"{method}_at_equal_se"] = chosen or {"error": f"error > target up to {budget} "
                                                            "matvecs"}
    return out


REF_TRACE_BUDGET, REF_TRACE_KEYS = 300, 8


def _trace_reference(op, name, sha, out) -> dict:
    """The reference trace where no dense Hessian is available: the mean of Hutch++ at
    ``REF_TRACE_BUDGET`` products over ``REF_TRACE_KEYS`` keys that the compared runs do not
    use (unbiased; its standard error is recorded), cached by the weights' hash."""
    import jax
    import numpy as np
    import hessian_tools as ht
    path = Path(out) / f"reference_trace_{name}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("weights_sha256") == sha:
            return cached
    print(f"[{name}] reference trace: Hutch++ {REF_TRACE_KEYS} x {REF_TRACE_BUDGET} ...",
          file=sys.stderr)
    t0 = time.perf_counter()
    values = [ht.trace(op, method="hutch++", num_matvecs=REF_TRACE_BUDGET,
                       key=jax.random.key(10_000 + s)).value for s in range(REF_TRACE_KEYS)]
    ref = {"value": float(np.mean(values)),
           "stderr": float(np.std(values, ddof=1) / math.sqrt(len(values))),
           "values": values, "method": "hutch++", "num_matvecs_each": REF_TRACE_BUDGET,
           "keys": [10_000 + s for s in range(REF_TRACE_KEYS)],
           "time_s": time.perf_counter() - t0, "weights_sha256": sha}
    path.write_text(json.dumps(ref, indent=1))
    return ref


_BUDGETS = (12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384)


def _trace_entry(runs, reference: float) -> dict:
    first = runs[0]
    values = [r.value for r in runs]
    return {"value": first.value, "stderr": first.stderr, "num_matvecs": first.num_matvecs,
            "cold_s": first.wall_time,
            "warm_s": statistics.median(r.wall_time for r in runs[1:]) if runs[1:] else None,
            "values_all_seeds": values, "stderrs_all_seeds": [r.stderr for r in runs],
            "rms_error": _rms_error(values, reference)}


def _rms_error(values, reference: float) -> float:
    """The error an estimator really makes: RMS over seeds against the reference."""
    return math.sqrt(statistics.fmean((v - reference) ** 2 for v in values))


# ---- PyHessian ----------------------------------------------------------------------------------

def _patch_torch_eig():
    """PyHessian 0.1 calls ``torch.eig`` (removed in torch 2): use ``torch.linalg.eigh``."""
    import torch

    def eig(matrix, eigenvectors=True):
        w, v = torch.linalg.eigh(matrix)
        return torch.stack([w, torch.zeros_like(w)], dim=1), v
    torch.eig = eig


class _CountingHVP:
    def __init__(self, module):
        self.module, self.fn, self.count = module, module.hessian_vector_product, 0

    def __enter__(self):
        def counted(*a, **k):
            self.count += 1
            return self.fn(*a, **k)
        self.module.hessian_vector_product = counted
        return self

    def __exit__(self, *exc):
        self.module.hessian_vector_product = self.fn


def _pyhessian_module():
    """``pyhessian.hessian`` the module (the package's ``hessian`` attribute is the class)."""
    import importlib
    return importlib.import_module("pyhessian.hessian")


def _pyhessian_density(twin, tx, ty, args, *, cuda=False) -> dict:
    import numpy as np
    import torch
    ph = _pyhessian_module()
    _patch_torch_eig()
    torch.manual_seed(0)
    twin.model.zero_grad(set_to_none=True)
    with _CountingHVP(ph) as counter:
        t0 = time.perf_counter()
        hc = ph.hessian(twin.model, torch.nn.CrossEntropyLoss(), data=(tx, ty), cuda=cuda)
        nodes, weights = hc.density(iter=args.steps, n_v=args.probes)
        elapsed = time.perf_counter() - t0
    twin.model.zero_grad(set_to_none=True)
    return {"time_s": elapsed, "num_matvecs": counter.count,
            "nodes": np.asarray(nodes, np.float64), "weights": np.asarray(weights, np.float64)}


def _pyhessian_trace(twin, tx, ty, *, max_iter, tol, seeds, reference, cuda=False) -> dict:
    """PyHessian's trace with torch seeds ``0 .. seeds-1``: the RMS error over them against
    the reference, and the median time (a sub-second call is at the mercy of the machine's
    noise). ``value``, ``stderr`` and ``num_matvecs`` are seed 0's."""
    import numpy as np
    import torch
    ph = _pyhessian_module()
    times, values, stderrs, counts = [], [], [], []
    for seed in range(seeds):
        torch.manual_seed(seed)
        twin.model.zero_grad(set_to_none=True)
        with _CountingHVP(ph) as counter:
            t0 = time.perf_counter()
            hc = ph.hessian(twin.model, torch.nn.CrossEntropyLoss(), data=(tx, ty), cuda=cuda)
            samples = np.asarray(hc.trace(maxIter=max_iter, tol=tol), np.float64)
            times.append(time.perf_counter() - t0)
        values.append(float(np.mean(samples)))
        stderrs.append(float(np.std(samples, ddof=1) / math.sqrt(len(samples)))
                       if len(samples) > 1 else None)
        counts.append(counter.count)
    twin.model.zero_grad(set_to_none=True)
    return {"value": values[0], "stderr": stderrs[0], "num_matvecs": counts[0],
            "num_matvecs_all_seeds": counts, "time_s": statistics.median(times),
            "times_s": times, "values_all_seeds": values, "stderrs_all_seeds": stderrs,
            "rms_error": _rms_error(values, reference), "max_iter": max_iter, "tol": tol}


# ---- one model --------------------------------------------------------------------------------

def _w1_rel(nodes, weights, eigs):
    from hessian_tools.linalg.slq import wasserstein1
    return wasserstein1(nodes, weights, eigs) / (eigs[-1] - eigs[0])


def bench_model(name, args) -> dict:
    import numpy as np
    from _jax_extras import weights_sha
    from hessian_tools.linalg.slq import wasserstein1
    obj, twin, tx, ty, check = _setup(name)
    res = {"meta": _meta(name, obj, check, args)}
    exact = None
    if obj.num_params <= EXACT_MAX_PARAMS:
        ref = _reference(name, weights_sha(obj.params), args.out)
        exact = np.asarray(ref["eigenvalues"])
        res["reference"] = {k: v for k, v in ref.items() if k != "eigenvalues"}
        res["reference"].update(trace=float(exact.sum()), lambda_max=float(exact[-1]),
                                lambda_min=float(exact[0]), dim=len(exact))
    print(f"[{name}] ours: density ({args.probes} probes x {args.steps} steps) ...",
          file=sys.stderr)
    ours = _ours_density(obj, args)
    print(f"[{name}] PyHessian: density ...", file=sys.stderr)
    peer = _pyhessian_density(twin, tx, ty, args)
    d0, d1 = ours["densities"][0], ours["densities"][1]
    rng = (max(d0.lambda_max, float(np.max(peer["nodes"])))
           - min(d0.lambda_min, float(np.min(peer["nodes"]))))
    dens = {"ours": {k: ours[k] for k in ("build_s", "cold_s", "warm_s", "num_matvecs")},
            "pyhessian": {k: peer[k] for k in ("time_s", "num_matvecs")}}
    dens["ours"]["ritz_range"] = [d0.lambda_min, d0.lambda_max]
    dens["pyhessian"]["ritz_range"] = [float(np.min(peer["nodes"])),
                                       float(np.max(peer["nodes"]))]
    dens["w1_ours_vs_pyhessian_rel"] = wasserstein1(d0.nodes, d0.weights, peer["nodes"],
                                                    peer["weights"]) / rng
    dens["w1_ours_seed0_vs_seed1_rel"] = wasserstein1(d0.nodes, d0.weights, d1.nodes,
                                                      d1.weights) / rng
    if exact is not None:
        dens["ours"]["w1_exact_rel"] = [_w1_rel(d.nodes, d.weights, exact)
                                        for d in ours["densities"]]
        dens["pyhessian"]["w1_exact_rel"] = _w1_rel(peer["nodes"], peer["weights"], exact)
        tau = 0.01 * float(np.max(np.abs(exact)))
        neg = d0.num_below(-tau)
        dens["negative_count"] = {"tau": tau, "exact": int(np.sum(exact < -tau)),
                                  "slq": [neg.count, neg.low, neg.high]}
    res["density"] = dens
    print(f"[{name}] PyHessian: trace ({args.trace_probes} probes; default call) ...",
          file=sys.stderr)
    if exact is not None:
        reference = {"value": float(exact.sum()), "stderr": 0.0, "method": "exact"}
    else:
        reference = _trace_reference(ours["op"], name, weights_sha(obj.params), args.out)
    ref = reference["value"]
    ph_fixed = _pyhessian_trace(twin, tx, ty, max_iter=args.trace_probes, tol=0.0,
                                seeds=args.trace_seeds, reference=ref)
    ph_default = _pyhessian_trace(twin, tx, ty, max_iter=100, tol=1e-3,
                                  seeds=args.trace_seeds, reference=ref)
    print(f"[{name}] ours: trace ...", file=sys.stderr)
    tr = _ours_trace(ours["op"], args, ph_fixed["rms_error"], ref)
    tr["pyhessian"] = ph_fixed
    tr["pyhessian_default"] = ph_default
    tr["reference"] = reference
    if exact is not None:
        tr["exact"] = ref
    res["trace"] = tr
    res["targets"] = _targets(res)
    res["meta"]["load_average_at_end"] = os.getloadavg()
    return res


def _targets(res) -> dict:
    d, t = res["density"], res["trace"]
    out = {"density: pyhessian_time / ours_cold": round(d["pyhessian"]["time_s"]
                                                        / d["ours"]["cold_s"], 2),
           "density: pyhessian_time / ours_warm": round(d["pyhessian"]["time_s"]
                                                        / d["ours"]["warm_s"], 2),
           "density: pyhessian_matvecs / ours": round(d["pyhessian"]["num_matvecs"]
                                                      / d["ours"]["num_matvecs"], 2)}
    if "w1_exact_rel" in d["ours"]:
        out["density: ours W1 <= pyhessian W1 (seed 0)"] = (
            d["ours"]["w1_exact_rel"][0] <= d["pyhessian"]["w1_exact_rel"])
        out["density: ours median W1 / pyhessian W1"] = round(
            statistics.median(d["ours"]["w1_exact_rel"]) / d["pyhessian"]["w1_exact_rel"], 2)
    for method in ("hutch++", "xtrace"):
        est = t.get(f"{method}_at_equal_se", {})
        if "cold_s" not in est:
            continue
        out[f"trace: pyhessian_time / ours {method} cold (equal SE)"] = round(
            t["pyhessian"]["time_s"] / est["cold_s"], 2)
        out[f"trace: pyhessian_time / ours {method} warm (equal SE)"] = round(
            t["pyhessian"]["time_s"] / est["warm_s"], 2)
        out[f"trace: pyhessian_matvecs / ours {method} (equal SE)"] = round(
            t["pyhessian"]["num_matvecs"] / est["num_matvecs"], 2)
        out[f"trace: ours {method} rms error / pyhessian rms error"] = round(
            est["rms_error"] / t["pyhessian"]["rms_error"], 2)
    h = t["hutchinson"]
    out["trace: pyhessian_time / ours hutchinson warm (same probes)"] = round(
        t["pyhessian"]["time_s"] / h["warm_s"], 2)
    out["target density >= 5x faster (cold)"] = out["density: pyhessian_time / ours_cold"] >= 5
    out["target density >= 5x faster (warm)"] = out["density: pyhessian_time / ours_warm"] >= 5
    for method in ("hutch++", "xtrace"):
        for when in ("cold", "warm"):
            key = f"trace: pyhessian_time / ours {method} {when} (equal SE)"
            if key in out:
                out[f"target trace >= 5x faster at equal SE ({method}, {when})"] = out[key] >= 5
    return out


def _meta(name, obj, check, args) -> dict:
    import jax
    import torch
    from importlib.metadata import version
    from _jax_extras import package_fingerprint
    return {"model": name, "num_params": obj.num_params, "num_examples": obj.num_examples,
            "probes": args.probes, "steps": args.steps, "trace_probes": args.trace_probes,
            "warm_repeats": args.warm_repeats, "trace_seeds": args.trace_seeds,
            "twin_check": check,
            "devices": str(jax.devices()), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": {"jax": jax.__version__, "torch": torch.__version__,
                         "pyhessian": version("pyhessian")},
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "load_average_at_start": os.getloadavg(),
            "hessian_tools": package_fingerprint()}


# ---- report -----------------------------------------------------------------------------------

def _fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def print_tables(res) -> None:
    m, d, t = res["meta"], res["density"], res["trace"]
    print(f"\n=== {m['model']}: {m['num_params']:,} params, {m['num_examples']} examples, "
          f"{m['cpu_count']} CPUs (load {m['load_average_at_start'][0]:.1f}) ===")
    print(f"density: {m['probes']} probes x {m['steps']} Lanczos steps")
    print(f"  {'':<12}{'matvecs':>8}{'cold s':>9}{'warm s':>9}  {'W1/range vs exact':>30}")
    o, p = d["ours"], d["pyhessian"]
    w1o = o.get("w1_exact_rel")
    w1_text = (f"{w1o[0]:.2e} (median {statistics.median(w1o):.2e})" if w1o else "-")
    print(f"  {'ours':<12}{o['num_matvecs']:>8}{o['cold_s']:>9.2f}{o['warm_s']:>9.2f}"
          f"  {w1_text:>30}")
    print(f"  {'PyHessian':<12}{p['num_matvecs']:>8}{p['time_s']:>9.2f}{'':>9}"
          f"  {_fmt(p.get('w1_exact_rel'), '.2e'):>30}")
    print(f"  W1/range ours vs PyHessian {d['w1_ours_vs_pyhessian_rel']:.2e}; ours seed 0 vs "
          f"seed 1 {d['w1_ours_seed0_vs_seed1_rel']:.2e} (sampling noise floor)")
    if "negative_count" in d:
        n = d["negative_count"]
        print(f"  #(lambda < -{n['tau']:.3g}): exact {n['exact']}, SLQ {n['slq'][0]:.1f} "
              f"[{n['slq'][1]:.1f}, {n['slq'][2]:.1f}]")
    print(f"trace{'':<24}{'value':>10}{'s.e.':>9}{'matvecs':>9}{'cold s':>9}{'warm s':>9}")
    rows = [("PyHessian (fixed probes)", t["pyhessian"]), ("PyHessian default", t[
        "pyhessian_default"]), ("ours Hutchinson", t["hutchinson"]),
            ("ours Hutch++ (equal SE)", t["hutch++_at_equal_se"]),
            ("ours XTrace (equal SE)", t.get("xtrace_at_equal_se", {"error": "not run"}))]
    for label, r in rows:
        if "error" in r:
            print(f"  {label:<27}{r['error']}")
            continue
        cold = r.get("cold_s", r.get("time_s"))
        rms = f"  rms err over {len(r['values_all_seeds'])} keys {r['rms_error']:.4f}" \
            if "rms_error" in r else ""
        print(f"  {label:<27}{r['value']:>10.4f}{_fmt(r['stderr'], '.4f'):>9}"
              f"{r['num_matvecs']:>9}{cold:>9.2f}{_fmt(r.get('warm_s'), '.2f'):>9}{rms}")
    ref = t["reference"]
    label = "exact (dense)" if ref["method"] == "exact" else (
        f"reference ({ref['method']}, {len(ref['values'])} x {ref['num_matvecs_each']})")
    print(f"  {label:<27}{ref['value']:>10.4f}{ref['stderr']:>9.4f}")
    print("ratios / targets:")
    for key, val in res["targets"].items():
        print(f"  {key:<58} {val}")


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mlp-small,mlp-wide")
    p.add_argument("--probes", type=int, default=10, help="SLQ probes (both libraries)")
    p.add_argument("--steps", type=int, default=80, help="Lanczos steps per probe")
    p.add_argument("--trace-probes", type=int, default=100,
                   help="PyHessian trace probes (its RMS error sets the target for Hutch++)")
    p.add_argument("--warm-repeats", type=int, default=2)
    p.add_argument("--trace-seeds", type=int, default=8,
                   help="seeds per trace, both libraries: the RMS error over them against "
                        "the reference is the accuracy, the median time the speed")
    p.add_argument("--out", default=str(BENCH / "results"))
    p.add_argument("--worker", choices=("reference",), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--weights-sha256", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    if args.worker:
        Path(args.result_file).write_text(json.dumps(_worker_reference(args)))
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in (n.strip() for n in args.models.split(",")):
        res = bench_model(name, args)
        print_tables(res)
        path = Path(args.out) / f"bench_density_{name}.json"
        path.write_text(json.dumps(res, indent=1, default=_json_default))
        print(f"\nwrote {path}")


def _json_default(x):
    import numpy as np
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


if __name__ == "__main__":
    main()
