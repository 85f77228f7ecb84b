"""Top-k eigenvalues with every solver in float64: the solvers' accuracy without float32's floor.

In float32 the top-5 error of every solver on the digits CNN stops at 2e-5 to 1e-4 of the
float64 reference (``tol_floor.py``): XLA and torch round the HVP's sums differently, so a
float32 comparison cannot tell which solver is more accurate. Here the JAX model and its
torch twin both compute in float64 on the same weights, and each solver's error against the
float64 reference (``bench_eigs.py`` caches it in ``results/reference_<model>.json``; run
that first) is the solver's own.

Ours runs at ``tol`` on keys 0..keys-1 (the first call is cold: ``ht.hessian`` plus the
solve, compilation included); PyHessian runs at the same ``tol`` and then with its ``tol``
tightened until its explicit residual meets ``tol`` (``_peers.run_pyhessian_matched``).

    .venv/bin/python benchmarks/peers/float64_peers.py --model cnn
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/: shared helpers, results/, RESULTS*.md
sys.path.insert(0, str(BENCH))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--our-tols", default=None,
                        help="comma-separated tols for ours (default: --tol)")
    parser.add_argument("--pyhessian-seeds", type=int, default=1,
                        help="torch seeds for the tightened PyHessian run")
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args(argv)

    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import torch
    import hessian_tools as ht
    from hessian_tools.examples import digits
    from _jax_extras import FlatOperator, block, cached_eig_reference
    from _peers import run_pyhessian, run_pyhessian_matched
    from _torch_twins import build_twin, torch_data

    ref = cached_eig_reference(args.out, args.model)[:args.k]
    obj = digits.digits_objective(args.model, dtype=jnp.float64)
    twin = build_twin(digits.CONFIGS[args.model], obj.params)
    twin.model.double()
    tx, ty = torch_data(*obj.data, image=digits.CONFIGS[args.model]["kind"] == "cnn")
    tx = tx.double()
    with torch.no_grad():
        gap = float(np.max(np.abs(np.asarray(obj.predict(obj.params, obj.data))
                                  - twin.model(tx).numpy())))
    if gap > 1e-10:
        raise RuntimeError(f"The float64 torch twin's logits differ from JAX's by {gap:.3g}.")

    def accuracy(values, residuals):
        values = np.sort(np.asarray(values))[::-1]
        return {"max_rel_error": float(np.max(np.abs(values - ref) / np.abs(ref))),
                "max_rel_residual": float(np.max(residuals) / abs(ref[0]))}

    rows = []
    t0 = time.perf_counter()
    H = ht.hessian(obj)
    block(H.matvec_fn)
    build = time.perf_counter() - t0
    cold = True
    for tol in (float(t) for t in (args.our_tols or str(args.tol)).split(",")):
        for seed in range(args.keys):
            t0 = time.perf_counter()
            eig = ht.eigenvalues(H, k=args.k, tol=tol, key=jax.random.key(seed))
            seconds = time.perf_counter() - t0 + (build if cold else 0.0)
            rows.append({"solver": f"ours, tol {tol:g}" + (" (cold: ht.hessian + solve)"
                                                          if cold else ""),
                         "key": seed, "matvecs": eig.num_matvecs, "time_s": seconds,
                         **accuracy(eig.values, eig.residuals)})
            print(json.dumps(rows[-1]), flush=True)
            cold = False
    flat_op = FlatOperator(H)
    runs = [("PyHessian, same tol", 0,
             lambda seed: run_pyhessian(twin, tx, ty, flat_op, k=args.k, tol=args.tol))]
    runs += [("PyHessian, tol tightened to the same residual", seed,
              lambda seed: run_pyhessian_matched(twin, tx, ty, flat_op, abs(ref[0]), k=args.k,
                                                 tol=args.tol, seed=seed))
             for seed in range(args.pyhessian_seeds)]
    for name, seed, run in runs:
        res = run(seed)
        rows.append({"solver": name + f", tol {res.get('pyhessian_tol', args.tol):g}",
                     "key": seed, "matvecs": res["num_matvecs"], "time_s": res["time_s"],
                     **accuracy(res["values"], res["residuals"])})
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{args.model}, float64, top-{args.k} at tol {args.tol:g}")
    print("| solver | key | matvecs | time s | max rel. error | max rel. residual |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['solver']} | {r['key']} | {r['matvecs']} | {r['time_s']:.2f} | "
              f"{r['max_rel_error']:.1e} | {r['max_rel_residual']:.1e} |")
    path = Path(args.out) / f"float64_peers_{args.model}.json"
    path.write_text(json.dumps({"model": args.model, "k": args.k, "tol": args.tol,
                                "reference": ref.tolist(), "rows": rows,
                                "torch_threads": torch.get_num_threads(),
                                "load_average": os.getloadavg(),
                                "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
