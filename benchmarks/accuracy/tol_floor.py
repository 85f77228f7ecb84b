"""How far tightening ``tol`` takes the top-5 eigenvalue error of a float32 operator.

Runs ``ht.eigenvalues(H, k=5, tol=t, key=key(s))`` for several ``t`` and keys ``s`` and
compares with the float64 reference that ``bench_eigs.py`` caches in
``results/reference_<model>.json`` (run that first). The error stops falling where the
float32 HVP's rounding takes over. Run with ``--chunk-sizes auto,none`` to compare operators.

    .venv/bin/python benchmarks/accuracy/tol_floor.py --model cnn
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
    parser.add_argument("--tols", default="1e-3,5e-4,2.5e-4,1e-4")
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--chunk-sizes", default="auto,none")
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args(argv)

    import jax
    import numpy as np
    import hessian_tools as ht
    from hessian_tools.examples import digits
    from _jax_extras import cached_eig_reference

    ref = cached_eig_reference(args.out, args.model)
    obj = digits.digits_objective(args.model)
    rows = []
    for token in args.chunk_sizes.split(","):
        size = None if token == "none" else token if token == "auto" else int(token)
        H = ht.hessian(obj, chunk_size=size)
        for tol in (float(t) for t in args.tols.split(",")):
            for seed in range(args.keys):
                eig = ht.eigenvalues(H, k=len(ref), tol=tol, key=jax.random.key(seed))
                err = np.abs(np.asarray(eig.values) - ref) / np.abs(ref)
                rows.append({"chunk_size": token, "tol": tol, "key": seed,
                             "matvecs": eig.num_matvecs, "max_rel_error": float(err.max()),
                             "rel_errors": err.tolist()})
                print(json.dumps({k: rows[-1][k] for k in ("chunk_size", "tol", "key",
                                                            "matvecs", "max_rel_error")}),
                      flush=True)
    print(f"\n{args.model}: max relative eigenvalue error (matvecs) per key")
    for token in args.chunk_sizes.split(","):
        for tol in sorted({r["tol"] for r in rows}, reverse=True):
            cell = [f"{r['max_rel_error']:.1e} ({r['matvecs']})" for r in rows
                    if r["chunk_size"] == token and r["tol"] == tol]
            print(f"  {token:>5}  tol {tol:<7g} " + ", ".join(cell))
    path = Path(args.out) / f"tol_floor_{args.model}.json"
    path.write_text(json.dumps({"model": args.model, "reference": ref.tolist(), "rows": rows,
                                "load_average": os.getloadavg(),
                                "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
