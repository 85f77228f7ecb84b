"""Throughput of `hessian-tools spectrum` over a run of checkpoints vs one process per checkpoint.

Writes N checkpoints of a digits model (perturbed copies of the trained weights), then times
(a) one batch invocation over the whole directory, (b) N separate invocations, each in a
fresh process with the persistent compilation cache off, so each pays its own compile, and
(c) separate invocations with the persistent cache on and warm (a user's second command).

    .venv/bin/python benchmarks/cost/bench_batch.py --example mlp-wide --num 20
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
    parser.add_argument("--example", default="mlp-wide")
    parser.add_argument("--num", type=int, default=20, help="number of checkpoints")
    parser.add_argument("--singles", type=int, default=None,
                        help="time only this many separate runs and extrapolate (default: all)")
    parser.add_argument("--cached-singles", type=int, default=3,
                        help="separate runs timed with the persistent compilation cache warm")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    from hessian_tools.checkpoints import save_npz
    from hessian_tools.examples import digits
    obj = digits.digits_objective(args.example)
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    for i in range(args.num):
        scale = 1.0 + 0.01 * i
        save_npz(work / "run" / f"step_{i:03d}.npz", jax.tree.map(lambda a: a * scale, obj.params))
    env = {**os.environ, "HESSIAN_TOOLS_NO_COMPILE_CACHE": "1"}
    common = ["--example", args.example, "--top", "5", "--bottom", "0", "--trace", "--quiet"]

    def run(paths, out, env=env):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hessian_tools", "spectrum", *map(str, paths),
                        *common, "--out", str(out)], check=False, env=env)
        return time.perf_counter() - start

    batch = run([work / "run"], work / "batch")
    ckpts = sorted((work / "run").iterdir())
    n_single = args.singles or len(ckpts)
    singles = [run([c], work / f"single_{i}") for i, c in enumerate(ckpts[:n_single])]
    per_single = sum(singles) / len(singles)
    cached_env = {k: v for k, v in os.environ.items() if k != "HESSIAN_TOOLS_NO_COMPILE_CACHE"}
    cached = []
    if args.cached_singles:
        run([ckpts[0]], work / "cache_warmup", cached_env)        # fills the cache
        cached = [run([c], work / f"cached_{i}", cached_env)
                  for i, c in enumerate(ckpts[:args.cached_singles])]
    per_cached = sum(cached) / len(cached) if cached else None
    result = {"example": args.example, "num_checkpoints": len(ckpts), "batch_s": batch,
              "single_mean_s": per_single, "singles_timed": len(singles),
              "separate_total_s_extrapolated": per_single * len(ckpts),
              "speedup": per_single * len(ckpts) / batch,
              "single_cached_mean_s": per_cached, "cached_singles_timed": len(cached),
              "speedup_vs_cached": per_cached * len(ckpts) / batch if cached else None,
              "load_average": os.getloadavg()}
    print(f"{len(ckpts)} checkpoints of {args.example}: one batch run {batch:.1f} s; "
          f"separate runs {per_single:.1f} s each -> {per_single * len(ckpts):.1f} s "
          f"({result['speedup']:.1f}x)")
    if cached:
        print(f"separate runs with the persistent compilation cache warm: {per_cached:.1f} s "
              f"each -> {per_cached * len(ckpts):.1f} s ({result['speedup_vs_cached']:.1f}x)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"bench_batch_{args.example}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
