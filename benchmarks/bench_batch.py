"""Throughput of `hessian-tools spectrum` over a run of checkpoints vs one process per checkpoint.

Writes N checkpoints of a digits model (perturbed copies of the trained weights), then times
(a) one batch invocation over the whole directory and (b) N separate invocations, each in a
fresh process with the persistent compilation cache off, so each pays its own compile.

    .venv/bin/python benchmarks/bench_batch.py --example digits-mlp-wide --num 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", default="digits-mlp-wide")
    parser.add_argument("--num", type=int, default=20, help="number of checkpoints")
    parser.add_argument("--singles", type=int, default=None,
                        help="time only this many separate runs and extrapolate (default: all)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    from hessian_tools.checkpoints import save_npz
    from hessian_tools.examples import digits
    from hessian_tools.spectrum_cli import EXAMPLES
    obj = digits.digits_objective(EXAMPLES[args.example])
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    for i in range(args.num):
        scale = 1.0 + 0.01 * i
        save_npz(work / "run" / f"step_{i:03d}.npz", jax.tree.map(lambda a: a * scale, obj.params))
    env = {**os.environ, "HESSIAN_TOOLS_NO_COMPILE_CACHE": "1"}
    common = ["--example", args.example, "--top", "5", "--bottom", "0", "--trace", "--quiet"]

    def run(paths, out):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hessian_tools", "spectrum", *map(str, paths),
                        *common, "--out", str(out)], check=False, env=env)
        return time.perf_counter() - start

    batch = run([work / "run"], work / "batch")
    ckpts = sorted((work / "run").iterdir())
    n_single = args.singles or len(ckpts)
    singles = [run([c], work / f"single_{i}") for i, c in enumerate(ckpts[:n_single])]
    per_single = sum(singles) / len(singles)
    result = {"example": args.example, "num_checkpoints": len(ckpts), "batch_s": batch,
              "single_mean_s": per_single, "singles_timed": len(singles),
              "separate_total_s_extrapolated": per_single * len(ckpts),
              "speedup": per_single * len(ckpts) / batch,
              "load_average": os.getloadavg()}
    print(f"{len(ckpts)} checkpoints of {args.example}: one batch run {batch:.1f} s; "
          f"separate runs {per_single:.1f} s each -> {per_single * len(ckpts):.1f} s "
          f"({result['speedup']:.1f}x)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"bench_batch_{args.example}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
