"""Do the trace estimators' standard errors match the errors they make?

For each budget, runs ``ht.trace`` with XTrace (Rademacher and Gaussian probes) and Hutch++
over ``--keys`` keys on a digits model, and compares the RMS of the reported standard errors
with the RMS error against a reference trace: the exact one for ``mlp-small`` (from
``results/reference_density_mlp-small.json``, which ``bench_density.py`` writes) and the
cached Hutch++ reference for ``mlp-wide`` (``results/reference_trace_mlp-wide.json``). For
XTrace it also shows the paper's error estimate (the spread of the leave-one-out estimates
over ``sqrt(m)``) next to the jackknife that ``ht.trace`` reports. *Coverage* is the share of
keys whose 2-standard-error interval holds the reference.

    .venv/bin/python benchmarks/accuracy/trace_calibration.py --model mlp-small --keys 40
    .venv/bin/python benchmarks/accuracy/trace_calibration.py --model mlp-wide --keys 20 \\
        --budgets 16,24 --probes rademacher
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


def _reference(model: str, out: Path) -> float:
    from _jax_extras import cached_trace_reference
    ref = cached_trace_reference(out, model)
    if ref is not None:
        return ref
    raise SystemExit(f"No reference trace for {model} in {out}: run benchmarks/peers/bench_density.py "
                     f"--models {model} first.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp-small")
    parser.add_argument("--keys", type=int, default=40)
    parser.add_argument("--budgets", default="12,16,24,48")
    parser.add_argument("--probes", default="rademacher,gaussian", help="XTrace's probes")
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args(argv)

    import jax
    import numpy as np
    import hessian_tools as ht
    from hessian_tools.examples.digits import digits_objective

    ref = _reference(args.model, Path(args.out))
    H = ht.hessian(digits_objective(args.model))
    rows = []

    def summarise(label, probe, budget, runs, paper=None):
        err = np.array([r.value - ref for r in runs])
        rms = float(np.sqrt(np.mean(err ** 2)))
        row = {"method": label, "probe": probe, "num_matvecs": budget, "rms_error": rms}
        for name, se in (("reported", np.array([r.stderr for r in runs])), ("paper", paper)):
            if se is not None:
                row[f"{name}_se_over_rms"] = float(np.sqrt(np.mean(se ** 2)) / rms)
                row[f"{name}_coverage_2se"] = float(np.mean(np.abs(err) <= 2 * se))
        rows.append(row)
        print(json.dumps(row), flush=True)

    for budget in (int(b) for b in args.budgets.split(",")):
        for probe in args.probes.split(","):
            runs = [ht.trace(H, method="xtrace", num_matvecs=budget, probe=probe,
                             key=jax.random.key(1000 + s)) for s in range(args.keys)]
            paper = np.array([np.std(r.samples, ddof=1) / np.sqrt(r.num_samples) for r in runs])
            summarise("xtrace", probe, budget, runs, paper)
        runs = [ht.trace(H, method="hutch++", num_matvecs=budget, key=jax.random.key(1000 + s))
                for s in range(args.keys)]
        summarise("hutch++", "rademacher", budget, runs)

    print(f"\n{args.model}, {args.keys} keys, reference trace {ref:.4f}")
    print("| method | probe | matvecs | RMS error | reported s.e. / RMS (coverage) | "
          "paper's s.e. / RMS (coverage) |")
    print("| --- | --- | ---: | ---: | --- | --- |")
    for r in rows:
        paper = (f"{r['paper_se_over_rms']:.2f} ({r['paper_coverage_2se']:.2f})"
                 if "paper_se_over_rms" in r else "–")
        print(f"| {r['method']} | {r['probe']} | {r['num_matvecs']} | {r['rms_error']:.4f} | "
              f"{r['reported_se_over_rms']:.2f} ({r['reported_coverage_2se']:.2f}) | {paper} |")
    path = Path(args.out) / f"trace_calibration_{args.model}.json"
    path.write_text(json.dumps({"model": args.model, "keys": args.keys, "reference": ref,
                                "rows": rows, "load_average": os.getloadavg(),
                                "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
