"""HVP time against the chunk size the data is split into, ours and torch's, side by side.

``ht.hessian(obj, chunk_size=...)`` sums a product over chunks of the data, unrolled in one
compiled function; ``chunk_size="auto"`` picks cache-sized chunks for convolutional losses
on the CPU (``operators.CHUNK_BYTES``). This script times one linearised HVP for each chunk
size, and a PyHessian-style torch HVP (one retained double-backward graph per chunk) on the
same weights and data, so the two can be compared as ratios in one run.

    .venv/bin/python benchmarks/cost/chunk_sizes.py --model cnn --sizes none,auto,128,256,450,900
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/: shared helpers, results/, RESULTS*.md
sys.path.insert(0, str(BENCH))


def _median_time(fn, repeats):
    """Median of ``repeats`` timed calls after one untimed warm-up (no time budget)."""
    from _jax_extras import timeit
    return timeit(fn, repeats=repeats, budget_s=math.inf)["median_s"]


def _ours(obj, size, repeats):
    import jax
    import jax.numpy as jnp
    import hessian_tools as ht
    start = time.perf_counter()
    H = ht.hessian(obj, chunk_size=size)
    v = jax.tree.map(jnp.ones_like, obj.params)
    jax.block_until_ready(H(v))
    first = time.perf_counter() - start
    seconds = _median_time(lambda: jax.block_until_ready(H(v)), repeats)
    return {"batches": H.meta["batches"], "build_and_first_s": first, "hvp_s": seconds}


def _torch(twin, tx, ty, size, repeats):
    import torch
    params = [p for p in twin.model.parameters()]
    n = len(tx)
    size = size or n
    graphs = []
    for start in range(0, n, size):
        loss = torch.nn.functional.cross_entropy(twin.model(tx[start:start + size]),
                                                 ty[start:start + size])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        graphs.append((min(size, n - start) / n, grads))
    v = [torch.ones_like(p) for p in params]

    def hvp():
        total = None
        for weight, grads in graphs:
            part = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            total = [weight * p for p in part] if total is None else [
                t + weight * p for t, p in zip(total, part)]
        return total
    return {"hvp_s": _median_time(hvp, repeats)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--sizes", default="none,auto,128,256,450,900",
                        help="comma-separated chunk sizes: none (one batch), auto, or ints")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args(argv)

    import jax
    from hessian_tools.examples import digits
    obj = digits.digits_objective(args.model)
    twin = tx = ty = None
    if not args.no_torch:
        import torch
        from _torch_twins import build_twin, torch_data
        torch.set_num_threads(os.cpu_count() or 1)
        twin = build_twin(digits.CONFIGS[args.model], obj.params)
        tx, ty = torch_data(*obj.data, image=digits.CONFIGS[args.model]["kind"] == "cnn")

    rows = []
    for token in args.sizes.split(","):
        token = token.strip()
        size = None if token == "none" else token if token == "auto" else int(token)
        row = {"chunk_size": token, **_ours(obj, size, args.repeats)}
        if twin is not None:
            torch_size = None if size in (None, "auto") else size
            if size == "auto":
                torch_size = -(-obj.num_examples // row["batches"])
            row["torch"] = _torch(twin, tx, ty, torch_size, args.repeats)
            row["torch_chunk"] = torch_size or obj.num_examples
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{args.model}: one HVP over {obj.num_examples} examples, median of {args.repeats}")
    print(f"{'chunk size':>10} {'chunks':>6} {'ours s':>8} {'build+1st s':>11} "
          f"{'torch s':>8} {'torch/ours':>10}")
    for row in rows:
        t = row.get("torch", {}).get("hvp_s")
        print(f"{row['chunk_size']:>10} {row['batches']:>6} {row['hvp_s']:>8.4f} "
              f"{row['build_and_first_s']:>11.2f} "
              + (f"{t:>8.4f} {t / row['hvp_s']:>10.2f}" if t else ""))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"chunk_sizes_{args.model}.json"
    path.write_text(json.dumps({"model": args.model, "rows": rows, "repeats": args.repeats,
                                "load_average": os.getloadavg(), "jax": jax.__version__,
                                "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
