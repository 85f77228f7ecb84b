"""Benchmark: Hessian-vector products and top Hessian eigenvalues, hessian_tools vs peers.

On identical weights and data (the digits example models, all 1797 samples) it measures:

1. one gradient vs one HVP (JAX, linearised and not; PyHessian; hessian-eigenthings);
2. top-1 and top-5 eigenvalues to relative residual ``tol`` (default 1e-3): ours (cold and
   warm, in fresh subprocesses; the defaults, and the lean settings ``verify=False,
   residuals="estimate"``), PyHessian, hessian-eigenthings 1.0 Lanczos, scipy ``eigsh``
   and matfree on our operator; matvec counts (ours: the median over the cold and two
   warm keys, since the count depends on the start vector); accuracy against a float64
   reference (our Lanczos at tol=1e-10, computed in a subprocess with x64, cached);
3. the loop form: ``lanczos_tridiag`` inside ``jax.jit`` (rolled ``fori_loop`` and
   ``unroll=True``) vs the host-driven ``ht.eigenvalues``, per matvec.

Usage (from the repository root)::

    .venv/bin/python benchmarks/peers/bench_eigs.py --models mlp-wide,cnn
    .venv/bin/python benchmarks/peers/bench_eigs.py --models mlp-wide --quick

Writes ``<out>/bench_eigs_<model>.json`` and prints tables. Needs the ``compare`` extra
(torch==2.13.0 CPU, pyhessian==0.1, hessian-eigenthings==1.0.0a5, matfree).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/: shared helpers, results/, RESULTS*.md
sys.path.insert(0, str(BENCH))

K_VALUES = (1, 5)


# ---- workers (run in fresh subprocesses) ------------------------------------------------------

def _worker_ours(args) -> dict:
    """Cold (first call in a fresh process) and warm timings of ``ht.eigenvalues``."""
    import jax
    import hessian_tools as ht
    from hessian_tools.examples import digits
    from _jax_extras import block, noscan_hessian
    obj = digits.digits_objective(args.model)
    t0 = time.perf_counter()
    op = ht.hessian(obj) if args.operator == "library" else noscan_hessian(obj)
    block(op.matvec_fn)
    build = time.perf_counter() - t0
    runs = []
    for i in range(1 + args.warm_repeats):
        lean = {"verify": False, "residuals": "estimate"} if args.lean == "1" else {}
        eig = ht.eigenvalues(op, k=args.k, which="largest", key=jax.random.key(i), tol=args.tol,
                             **lean)
        runs.append({"time_s": eig.wall_time, "num_matvecs": eig.num_matvecs,
                     "values": eig.values.tolist(), "residuals": eig.residuals.tolist(),
                     "converged": eig.converged, "num_restarts": eig.num_restarts,
                     "scale": eig.scale})
        if eig.wall_time > args.warm_if_under_s:
            break
    return {"operator": args.operator, "lean": args.lean == "1", "build_s": build, "runs": runs,
            "linearized": bool(op.meta.get("linearized"))}


def _worker_reference(args) -> dict:
    """Top eigenvalues in float64 to tol=1e-10 (our Lanczos, the same weights cast)."""
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import hessian_tools as ht
    from hessian_tools.examples import digits
    from _jax_extras import noscan_hessian
    obj = digits.digits_objective(args.model, dtype=jnp.float64)
    op = noscan_hessian(obj)
    eig = ht.eigenvalues(op, k=args.k, which="largest", key=jax.random.key(2024), tol=1e-10)
    return {"values": eig.values.tolist(), "residuals": eig.residuals.tolist(),
            "num_matvecs": eig.num_matvecs, "converged": eig.converged, "time_s": eig.wall_time,
            "tol": 1e-10, "dtype": "float64", "weights_sha256": args.weights_sha256}


def _spawn(worker: str, **kwargs) -> dict:
    out = Path(kwargs.pop("result_file"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker,
           "--result-file", str(out)]
    for key, value in kwargs.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    return json.loads(out.read_text())


# ---- setup ------------------------------------------------------------------------------------

def _setup(name):
    import numpy as np
    import torch
    import hessian_tools as ht
    from hessian_tools.examples import digits
    from _torch_twins import build_twin, torch_data
    obj = digits.digits_objective(name)
    twin = build_twin(digits.CONFIGS[name], obj.params)
    tx, ty = torch_data(*obj.data, image=digits.CONFIGS[name]["kind"] == "cnn")
    logits_j = np.asarray(obj.predict(obj.params, obj.data))
    with torch.no_grad():
        logits_t = twin.model(tx).numpy()
        loss_t = float(torch.nn.functional.cross_entropy(twin.model(tx), ty))
    loss_j = float(ht.value_and_grad(obj)[0])
    check = {"loss_jax": loss_j, "loss_torch": loss_t, "abs_loss_diff": abs(loss_j - loss_t),
             "max_abs_logit_diff": float(np.max(np.abs(logits_j - logits_t))),
             "max_abs_logit": float(np.max(np.abs(logits_j)))}
    if check["abs_loss_diff"] > 1e-5 or check["max_abs_logit_diff"] > 1e-5 * check[
            "max_abs_logit"] + 1e-5:
        raise RuntimeError(f"The torch twin does not match the JAX model: {check}")
    return obj, twin, tx, ty, check


def _reference(name, args, sha):
    path = Path(args.out) / f"reference_{name}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("weights_sha256") == sha and len(cached["values"]) >= max(K_VALUES):
            return cached
    print(f"[{name}] float64 reference (subprocess, x64, tol=1e-10) ...", file=sys.stderr)
    ref = _spawn("reference", model=name, k=max(K_VALUES), weights_sha256=sha,
                 result_file=Path(args.out) / f".tmp_reference_{name}.json")
    path.write_text(json.dumps(ref, indent=1))
    return ref


# ---- sections ---------------------------------------------------------------------------------

def _hvp_section(obj, twin, tx, ty, ops, args):
    import jax
    import hessian_tools as ht
    from _jax_extras import block, direct_grad_fn, direct_hvp_fn, timeit
    from _peers import eigenthings_hvp_fn, pyhessian_hvp_fn, torch_grad_time
    reps, budget = (3, 15.0) if args.quick else (7, 30.0)
    v = ops["library"].random_vector(jax.random.key(0))
    t = functools.partial(timeit, repeats=reps, budget_s=budget)
    out = {
        "jax_grad_library": t(lambda: block(ht.gradient(obj))),
        "jax_grad_noscan": t(lambda: block(direct_grad_fn(obj.loss, obj.params, obj.data))),
        "jax_hvp_linearized_library": t(lambda: block(ops["library"](v))),
        "jax_hvp_jvp_of_grad_library": t(lambda: block(ops["library_jvp"](v))),
        "jax_hvp_linearized_noscan": t(lambda: block(ops["noscan"](v))),
        "jax_hvp_jvp_of_grad_noscan": t(lambda: block(direct_hvp_fn(obj.loss, obj.params, v,
                                                                    obj.data))),
        "torch_grad": t(torch_grad_time(twin, tx, ty)),
        "torch_hvp_eigenthings": t(eigenthings_hvp_fn(twin, tx, ty)),
    }
    hvp, hc = pyhessian_hvp_fn(twin, tx, ty)
    out["torch_hvp_pyhessian"] = t(hvp)
    del hc
    twin.model.zero_grad(set_to_none=True)
    return out


def _ours(name, k, operator, args, lean=False):
    return _spawn("ours", model=name, k=k, operator=operator, tol=args.tol,
                  warm_repeats=1 if args.quick else 2, warm_if_under_s=args.warm_if_under_s,
                  lean=int(lean), result_file=Path(args.out)
                  / f".tmp_ours_{name}_{k}_{operator}{'_lean' if lean else ''}.json")


def _ours_summary(res):
    import numpy as np
    runs = res["runs"]
    cold, warm = runs[0], runs[1:]
    best = min(warm, key=lambda r: r["time_s"]) if warm else None
    return {"values": (best or cold)["values"], "residuals": (best or cold)["residuals"],
            # the count depends on the start vector: the median over the keys (cold, warm)
            "num_matvecs": int(np.median([r["num_matvecs"] for r in runs])),
            "cold_num_matvecs": cold["num_matvecs"], "build_s": res["build_s"],
            "cold_eig_s": cold["time_s"], "cold_total_s": res["build_s"] + cold["time_s"],
            "warm_s": float(np.median([r["time_s"] for r in warm])) if warm else None,
            "warm_num_matvecs": [r["num_matvecs"] for r in warm], "converged":
            all(r["converged"] for r in runs), "time_s": best["time_s"] if best else
            cold["time_s"], "operator": res["operator"], "runs": runs}


def _eig_section(name, obj, twin, tx, ty, flat_op, ref, args):
    from _peers import run_eigenthings, run_eigenthings_defaults, run_matfree, run_pyhessian, \
        run_scipy
    scale = abs(ref["values"][0])
    out = {}
    for k in K_VALUES:
        row = {}
        for operator in ("library", "noscan"):
            print(f"[{name}] top-{k}: ours ({operator} operator) ...", file=sys.stderr)
            row[f"ours_{operator}"] = _ours_summary(_ours(name, k, operator, args))
        print(f"[{name}] top-{k}: ours, lean (verify=False, residuals='estimate') ...",
              file=sys.stderr)
        row["ours_lean"] = _ours_summary(_ours(name, k, "library", args, lean=True))
        print(f"[{name}] top-{k}: PyHessian ...", file=sys.stderr)
        row["pyhessian"] = run_pyhessian(twin, tx, ty, flat_op, k=k, tol=args.tol)
        row["pyhessian_matched"] = _pyhessian_matched(name, k, twin, tx, ty, flat_op, scale,
                                                      args)
        print(f"[{name}] top-{k}: hessian-eigenthings ...", file=sys.stderr)
        row["eigenthings"] = run_eigenthings(twin, tx, ty, flat_op, scale, k=k, tol=args.tol)
        row["eigenthings_defaults"] = run_eigenthings_defaults(twin, tx, ty, flat_op, k=k,
                                                               tol=args.tol)
        print(f"[{name}] top-{k}: scipy eigsh ...", file=sys.stderr)
        row["scipy_eigsh"] = run_scipy(flat_op, k=k, tol=args.tol)
        print(f"[{name}] top-{k}: matfree ...", file=sys.stderr)
        row["matfree"] = run_matfree(flat_op, scale, k=k, tol=args.tol,
                                     warm_if_under_s=args.warm_if_under_s)
        for res in row.values():
            _add_accuracy(res, ref, scale, k)
        out[f"top{k}"] = row
    return out


def _pyhessian_matched(name, k, twin, tx, ty, flat_op, scale, args):
    from _peers import run_pyhessian_matched
    print(f"[{name}] top-{k}: PyHessian with tol tightened to match accuracy ...",
          file=sys.stderr)
    return run_pyhessian_matched(twin, tx, ty, flat_op, scale, k=k, tol=args.tol)


def _add_pyhessian_matched(name, args):
    """Add the matched-accuracy PyHessian rows to an existing result file."""
    from _jax_extras import FlatOperator, noscan_hessian, package_fingerprint
    path = Path(args.out) / f"bench_eigs_{name}.json"
    res = json.loads(path.read_text())
    obj, twin, tx, ty, _ = _setup(name)
    flat_op = FlatOperator(noscan_hessian(obj))
    scale = abs(res["reference"]["values"][0])
    for kk, row in res["eigs"].items():
        k = int(kk[3:])
        row["pyhessian_matched"] = _pyhessian_matched(name, k, twin, tx, ty, flat_op, scale, args)
        _add_accuracy(row["pyhessian_matched"], res["reference"], scale, k)
    res["targets"] = _targets(res)
    res["meta"]["pyhessian_matched_added"] = {"load_average": os.getloadavg(),
                                              "hessian_tools": package_fingerprint()}
    path.write_text(json.dumps(res, indent=1))
    return res


def _add_accuracy(res, ref, scale, k):
    import numpy as np
    if "values" not in res:
        return
    got = np.sort(np.asarray(res["values"], np.float64))[::-1][:k]
    want = np.asarray(ref["values"][:k], np.float64)
    if len(got) < k:
        res["max_rel_error"] = None
        return
    res["rel_errors"] = (np.abs(got - want) / np.abs(want)).tolist()
    res["max_rel_error"] = float(np.max(res["rel_errors"]))
    res["max_rel_residual"] = float(np.max(res["residuals"]) / scale)


def _loop_section(ops, args):
    """Per-matvec time of the same Lanczos tridiagonalisation in three loop forms."""
    import jax
    import hessian_tools as ht
    from _jax_extras import block, timeit
    iters = args.loop_iters
    out = {}
    for label in ("library", "noscan"):
        op = ops[label]
        v0 = op.random_vector(jax.random.key(1))
        entry = {"python_hvp": timeit(lambda: block(op(v0)), repeats=3, budget_s=20.0)}
        for form, unroll in (("fori_rolled", 1), ("fori_unroll_true", True)):
            fn = jax.jit(functools.partial(ht.linalg.lanczos_tridiag, num_steps=iters,
                                           unroll=unroll))
            t0 = time.perf_counter()
            lowered = fn.lower(op.matvec_fn, v0)
            compiled = lowered.compile()
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            block(compiled(op.matvec_fn, v0))
            run_s = time.perf_counter() - t0
            entry[form] = {"num_iters": iters, "compile_s": compile_s, "run_s": run_s,
                           "per_matvec_s": run_s / iters,
                           "while_loops_in_hlo": compiled.as_text().count(" while(")}
            print(f"   loop form {label}/{form}: {run_s / iters:.4f} s per matvec",
                  file=sys.stderr)
        out[label] = entry
    return out


# ---- report -----------------------------------------------------------------------------------

def _fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def _print_tables(name, res):
    h = res["hvp"]
    g = h["jax_grad_library"]["median_s"]
    print(f"\n=== {name}: {res['meta']['num_params']:,} params, {res['meta']['num_examples']} "
          f"examples ===")
    print(f"{'gradient / HVP':<34}{'median s':>10}{'x JAX grad':>12}")
    for key, val in h.items():
        print(f"{key:<34}{val['median_s']:>10.4f}{val['median_s'] / g:>12.2f}")
    for kk in (f"top{k}" for k in K_VALUES):
        row = res["eigs"][kk]
        print(f"\n{kk} (tol {res['meta']['tol']:g}){'':<4}{'matvecs':>8}{'cold s':>9}"
              f"{'warm s':>9}{'max rel err':>13}{'max rel res':>13}")
        for method, r in row.items():
            if "error" in r:
                print(f"  {method:<26}{r['error']}")
                continue
            cold = r.get("cold_total_s", r.get("cold_time_s", r.get("time_s")))
            warm = r.get("warm_s", r.get("warm_time_s"))
            print(f"  {method:<26}{r['num_matvecs']:>8}{_fmt(cold, '.2f'):>9}"
                  f"{_fmt(warm, '.2f'):>9}{_fmt(r.get('max_rel_error'), '.1e'):>13}"
                  f"{_fmt(r.get('max_rel_residual'), '.1e'):>13}")
    print(f"\nloop form ({res['meta']['loop_iters']} Lanczos steps), seconds per matvec:")
    for label, entry in res["loop_form"].items():
        print(f"  {label:<8} python HVP {entry['python_hvp']['median_s']:.4f}  "
              f"fori rolled {entry['fori_rolled']['per_matvec_s']:.4f}  "
              f"unroll=True {entry['fori_unroll_true']['per_matvec_s']:.4f}  "
              f"ht.eigenvalues {_fmt(entry.get('eigenvalues_per_matvec_s'), '.4f')}")
    print("\nratios / targets:")
    for key, val in res["targets"].items():
        print(f"  {key:<48} {val}")


def _targets(res):
    h, e = res["hvp"], res["eigs"]
    g = h["jax_grad_library"]["median_s"]
    t = {"hvp_over_grad (linearized, library)": round(
        h["jax_hvp_linearized_library"]["median_s"] / g, 2),
        "hvp_over_grad (jvp-of-grad, library)": round(
        h["jax_hvp_jvp_of_grad_library"]["median_s"] / g, 2),
        "hvp_over_grad (linearized, noscan)": round(
        h["jax_hvp_linearized_noscan"]["median_s"] / h["jax_grad_noscan"]["median_s"], 2),
        "pyhessian_hvp_over_ours_hvp (library)": round(
        h["torch_hvp_pyhessian"]["median_s"] / h["jax_hvp_linearized_library"]["median_s"], 2)}
    t["target hvp <= 3x grad (library, linearized)"] = t[
        "hvp_over_grad (linearized, library)"] <= 3.0
    for kk in e:
        ph = e[kk]["pyhessian"]
        for op in ("library", "noscan"):
            ours = e[kk][f"ours_{op}"]
            t[f"{kk} {op}: pyhessian_matvecs / ours"] = round(ph["num_matvecs"]
                                                              / ours["num_matvecs"], 2)
            t[f"{kk} {op}: pyhessian_time / ours_cold"] = round(ph["time_s"]
                                                                / ours["cold_total_s"], 2)
            if ours["warm_s"]:
                t[f"{kk} {op}: pyhessian_time / ours_warm"] = round(ph["time_s"]
                                                                    / ours["warm_s"], 2)
            better = (ours["max_rel_error"] or 0) <= (ph["max_rel_error"] or 0)
            t[f"{kk} {op}: ours at least as accurate"] = better
        for peer in ("eigenthings", "scipy_eigsh", "matfree"):
            r = e[kk][peer]
            if "time_s" in r:
                t[f"{kk}: {peer}_time / ours_noscan_warm"] = round(
                    r["time_s"] / (e[kk]["ours_noscan"]["warm_s"] or
                                   e[kk]["ours_noscan"]["cold_total_s"]), 2)
    for kk in e:
        pm = e[kk].get("pyhessian_matched")
        for label in ("library", "lean"):
            lib = e[kk].get(f"ours_{label}")
            if not (pm and "num_matvecs" in pm and lib):
                continue
            t[f"{kk} {label}: pyhessian_matched_matvecs / ours"] = round(
                pm["num_matvecs"] / lib["num_matvecs"], 2)
            t[f"{kk} {label}: pyhessian_matched_time / ours_cold"] = round(
                pm["time_s"] / lib["cold_total_s"], 2)
            if lib["warm_s"]:
                t[f"{kk} {label}: pyhessian_matched_time / ours_warm"] = round(
                    pm["time_s"] / lib["warm_s"], 2)
            t[f"{kk} {label}: at least as accurate as pyhessian_matched"] = (
                (lib["max_rel_error"] or 0) <= (pm["max_rel_error"] or 0))
    k5 = e.get("top5")
    if k5:
        lib = k5["ours_library"]
        t["target top5 matvecs <= 1/5 pyhessian (library)"] = (
            lib["num_matvecs"] * 5 <= k5["pyhessian"]["num_matvecs"])
        pm = k5.get("pyhessian_matched")
        for label in ("library", "lean"):
            ours = k5.get(f"ours_{label}")
            if not (pm and "num_matvecs" in pm and ours):
                continue
            t[f"target top5 matvecs <= 1/5 pyhessian_matched ({label})"] = (
                ours["num_matvecs"] * 5 <= pm["num_matvecs"])
            t[f"target top5 >= 5x faster than pyhessian_matched, cold ({label})"] = (
                pm["time_s"] >= 5 * ours["cold_total_s"])
            t[f"target top5 >= 5x faster than pyhessian_matched, warm ({label})"] = bool(
                ours["warm_s"]) and pm["time_s"] >= 5 * ours["warm_s"]
        t["target top5 >= 5x faster cold incl. compile (library)"] = (
            k5["pyhessian"]["time_s"] >= 5 * lib["cold_total_s"])
        t["target top5 >= 5x faster cold incl. compile (noscan)"] = (
            k5["pyhessian"]["time_s"] >= 5 * k5["ours_noscan"]["cold_total_s"])
    return t


def _meta(name, obj, check, args):
    import jax
    import matfree
    import scipy
    from _jax_extras import package_fingerprint
    import torch
    from importlib.metadata import version
    return {"model": name, "num_params": obj.num_params, "num_examples": obj.num_examples,
            "tol": args.tol, "quick": args.quick, "loop_iters": args.loop_iters,
            "twin_check": check, "devices": str(jax.devices()), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": {"jax": jax.__version__, "torch": torch.__version__,
                         "pyhessian": version("pyhessian"),
                         "hessian-eigenthings": version("hessian-eigenthings"),
                         "matfree": getattr(matfree, "__version__", version("matfree")),
                         "scipy": scipy.__version__},
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "load_average_at_start": os.getloadavg(), "hessian_tools": package_fingerprint()}


def bench_model(name, args) -> dict:
    import hessian_tools as ht
    from _jax_extras import FlatOperator, noscan_hessian, weights_sha
    obj, twin, tx, ty, check = _setup(name)
    ops = {"library": ht.hessian(obj), "library_jvp": ht.hessian(obj, linearize=False),
           "noscan": noscan_hessian(obj)}
    res = {"meta": _meta(name, obj, check, args)}
    print(f"[{name}] gradient and HVP timings ...", file=sys.stderr)
    res["hvp"] = _hvp_section(obj, twin, tx, ty, ops, args)
    res["reference"] = _reference(name, args, weights_sha(obj.params))
    flat_op = FlatOperator(ops["noscan"])
    res["eigs"] = _eig_section(name, obj, twin, tx, ty, flat_op, res["reference"], args)
    print(f"[{name}] loop form ...", file=sys.stderr)
    res["loop_form"] = _loop_section(ops, args)
    for label in ("library", "noscan"):
        ours = res["eigs"][f"top{max(K_VALUES)}"][f"ours_{label}"]
        res["loop_form"][label]["eigenvalues_per_matvec_s"] = ours["time_s"] / ours[
            "num_matvecs"]
    res["targets"] = _targets(res)
    res["meta"]["load_average_at_end"] = os.getloadavg()
    return res


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mlp-wide,cnn")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, 5 loop steps")
    p.add_argument("--out", default=str(BENCH / "results"))
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--loop-iters", type=int, default=None)
    p.add_argument("--add-pyhessian-matched", action="store_true",
                   help="only add the matched-accuracy PyHessian rows to existing JSON files")
    p.add_argument("--warm-if-under-s", type=float, default=240.0,
                   help="skip warm repeats when a cold solve took longer than this")
    # worker-only options
    p.add_argument("--worker", choices=("ours", "reference"), help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    p.add_argument("--operator", default="library", help=argparse.SUPPRESS)
    p.add_argument("--lean", default="0", help=argparse.SUPPRESS)
    p.add_argument("--warm-repeats", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--weights-sha256", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.loop_iters is None:
        args.loop_iters = 5 if args.quick else 20
    return args


def main(argv=None):
    args = _parse(argv)
    if args.worker:
        worker = {"ours": _worker_ours, "reference": _worker_reference}[args.worker]
        Path(args.result_file).write_text(json.dumps(worker(args)))
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        if args.add_pyhessian_matched:
            _print_tables(name.strip(), _add_pyhessian_matched(name.strip(), args))
            continue
        res = bench_model(name.strip(), args)
        path = Path(args.out) / f"bench_eigs_{name.strip()}.json"
        path.write_text(json.dumps(res, indent=1))
        _print_tables(name.strip(), res)
        print(f"\nwrote {path}")
        for tmp in Path(args.out).glob(".tmp_*.json"):
            tmp.unlink()


if __name__ == "__main__":
    main()
