"""Render the JSON written by ``bench_eigs.py`` as Markdown tables (for RESULTS.md).

Usage::

    .venv/bin/python benchmarks/markdown_tables.py benchmarks/results/bench_eigs_*.json
"""

from __future__ import annotations

import json
import sys

_HVP_ROWS = [
    ("jax_grad_library", "JAX gradient, `ht.gradient`"),
    ("jax_grad_noscan", "JAX gradient, no scan"),
    ("jax_hvp_linearized_library", "JAX HVP, `ht.hessian(obj)` (linearised)"),
    ("jax_hvp_jvp_of_grad_library", "JAX HVP, `ht.hessian(obj, linearize=False)`"),
    ("jax_hvp_linearized_noscan", "JAX HVP, linearised, no scan"),
    ("jax_hvp_jvp_of_grad_noscan", "JAX HVP, jvp-of-grad, no scan"),
    ("torch_grad", "torch gradient (forward + backward)"),
    ("torch_hvp_pyhessian", "torch HVP, PyHessian (retained graph)"),
    ("torch_hvp_eigenthings", "torch HVP, hessian-eigenthings (fresh double backward)"),
]

_METHODS = [
    ("ours_library", "**ours**, `ht.eigenvalues(ht.hessian(obj))`"),
    ("ours_noscan", "ours, no-scan operator"),
    ("ours_lean", "ours, lean: `verify=False, residuals=\"estimate\"`"),
    ("pyhessian", "PyHessian `eigenvalues(top_n, tol=1e-3)`"),
    ("pyhessian_matched", "PyHessian, `tol` tightened to reach the same residual"),
    ("eigenthings", "hessian-eigenthings `lanczos` (oracle length, reorth)"),
    ("eigenthings_defaults", "hessian-eigenthings `lanczos` (defaults)"),
    ("scipy_eigsh", "scipy `eigsh` on our operator"),
    ("matfree", "matfree `tridiag_sym` (oracle length, full reorth)"),
]


def _f(x, spec):
    return "–" if x is None else format(x, spec)


def hvp_table(res) -> str:
    h = res["hvp"]
    g = h["jax_grad_library"]["median_s"]
    lines = ["| product | median s | min s | × JAX gradient |", "| --- | ---: | ---: | ---: |"]
    for key, label in _HVP_ROWS:
        r = h[key]
        lines.append(f"| {label} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                     f"{r['median_s'] / g:.2f} |")
    return "\n".join(lines)


def eig_table(res, kk) -> str:
    row = res["eigs"][kk]
    lines = ["| method | matvecs | cold s | warm s | max rel. eigenvalue error | "
             "max rel. residual |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, label in _METHODS:
        r = row.get(key)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {label} | {r['error']} | | | | |")
            continue
        if key.startswith("ours"):
            cold, warm = r["cold_total_s"], r["warm_s"]
        elif key in ("scipy_eigsh", "matfree"):
            cold, warm = r["cold_time_s"], r["warm_time_s"]
        else:
            cold, warm = r["time_s"], None
        if key == "pyhessian_matched":
            label += f" (tol={r['pyhessian_tol']:g})"
        lines.append(f"| {label} | {r['num_matvecs']} | {_f(cold, '.1f')} | {_f(warm, '.1f')} | "
                     f"{_f(r.get('max_rel_error'), '.1e')} | "
                     f"{_f(r.get('max_rel_residual'), '.1e')} |")
    return "\n".join(lines)


def loop_table(res) -> str:
    lf = res["loop_form"]
    n = res["meta"]["loop_iters"]
    lines = [f"| operator | HVP from Python | `fori_loop` rolled ({n} steps) | "
             f"`unroll=True` | `ht.eigenvalues` (host-driven) | compile rolled / unrolled s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, e in lf.items():
        lines.append(f"| {label} | {e['python_hvp']['median_s']:.3f} | "
                     f"{e['fori_rolled']['per_matvec_s']:.3f} | "
                     f"{e['fori_unroll_true']['per_matvec_s']:.3f} | "
                     f"{_f(e.get('eigenvalues_per_matvec_s'), '.3f')} | "
                     f"{e['fori_rolled']['compile_s']:.1f} / "
                     f"{e['fori_unroll_true']['compile_s']:.1f} |")
    return "\n".join(lines)


def main(paths):
    for path in paths:
        res = json.loads(open(path).read())
        if "hvp" not in res:            # e.g. the HEAD re-run of our rows only
            continue
        m = res["meta"]
        print(f"### {m['model']} ({m['num_params']:,} parameters, {m['num_examples']} examples)\n")
        print(f"Load average at start / end: {m['load_average_at_start'][0]:.1f} / "
              f"{m['load_average_at_end'][0]:.1f}\n")
        print(hvp_table(res) + "\n")
        for kk in res["eigs"]:
            print(f"**{kk}** (tol {m['tol']:g}; reference: float64, tol 1e-10, "
                  f"{res['reference']['num_matvecs']} matvecs; λ = "
                  f"{', '.join(f'{v:.5g}' for v in res['reference']['values'][:int(kk[3:])])})\n")
            print(eig_table(res, kk) + "\n")
        print("Loop form, seconds per matvec:\n")
        print(loop_table(res) + "\n")
        print("Targets and ratios:\n")
        for key, val in res["targets"].items():
            print(f"- {key}: {val}")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
