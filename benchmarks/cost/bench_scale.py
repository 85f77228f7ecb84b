"""Benchmark: the eigensolver's memory against the formula, and collectives when sharded.

``memory``: one fresh process per parameter count. A two-hidden-layer tanh MLP on the digits
inputs (64 examples, float32) of about ``--params`` parameters; after the operator is built
and one product computed (compiled), the peak RSS is reset (``/proc/self/clear_refs``) and
``ht.eigenvalues(op, k=5)`` runs with the defaults (``--num-matvecs`` caps the budget to keep
a run short: the peak is reached once the first basis is full and a restart locks). Reports
the growth of the peak RSS over the RSS before the solve, against
:func:`hessian_tools.linalg.memory.plan`'s bytes.

``collectives``: on 8 host devices (a 2x4 mesh, the kernels split over both axes) the
compiled projection step's all-gathers and all-reduces, with this package's vector algebra
(``lax.dot_general`` per leaf, outputs pinned) and with the flattening form it replaced
(``jnp.vdot``/``tensordot``, nothing pinned).

Usage (from the repository root, under the benchmark lock)::

    flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/cost/bench_scale.py \
        memory --params 1e6,5e6,2e7
    flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/cost/bench_scale.py \
        collectives
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _memory_worker(params: float, num_matvecs: int | None, tol: float | None) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import hessian_tools as ht
    from hessian_tools.examples import digits
    from hessian_tools.linalg import memory

    width = int((-75 + math.sqrt(75 ** 2 + 4 * params)) / 2)   # 64w + w^2 + 10w + ... = params
    model = digits.MLP((width, width), rngs=nnx.Rngs(0))
    x, y = digits.load_digits_data()
    obj = ht.Objective.from_nnx(model, digits.cross_entropy, (x[:64], y[:64]))
    op = ht.hessian(obj)
    jax.block_until_ready(op(obj.params))
    plan = memory.plan(op.params_like, 5, "largest", None, keep_products=True)
    before = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                  # VmHWM := VmRSS
    t0 = time.perf_counter()
    eig = ht.eigenvalues(op, k=5, key=jax.random.key(0), num_matvecs=num_matvecs, tol=tol)
    wall = time.perf_counter() - t0
    peak = _rss("VmHWM")
    planned = eig.extra["memory_bytes"]
    # with nothing locked (tol out of reach) the lock buffer is never written, and NumPy's
    # zeros are mapped lazily: the rows written are the basis (and its products)
    rows = min(eig.num_matvecs, eig.extra["krylov_dim"]) + 1
    written = (rows * (2 if eig.residual_kind == "explicit" else 1)
               + memory.WORK_VECTORS) * plan.vector_bytes
    return {"params": op.dim, "width": width, "dtype": str(jnp.dtype(op.dtype)),
            "residual_kind": eig.residual_kind, "krylov_dim": eig.extra["krylov_dim"],
            "vector_mb": plan.vector_bytes / 1e6, "formula_vectors": planned // plan.vector_bytes,
            "formula_gb": planned / 1e9, "rss_before_gb": before / 1e9,
            "peak_growth_gb": (peak - before) / 1e9, "ratio": (peak - before) / planned,
            "written_gb": written / 1e9, "ratio_written": (peak - before) / written,
            "num_matvecs": eig.num_matvecs, "status": str(eig.status), "wall_s": wall,
            "values": [float(v) for v in eig.values]}


COLLECTIVE_SCRIPT = r"""
import re, jax, numpy as np, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from hessian_tools import tree
from hessian_tools.linalg import _space
width = int(__import__("sys").argv[1])
shapes = [(64, width), (width,), (width, width), (width,), (width, 8), (8,)]
mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
spec = lambda s: P("a", "b") if len(s) == 2 else P("b")
like = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=NamedSharding(mesh, spec(s)))
        for s in shapes]
space = _space.DeviceSpace(like)
basis, locked = space.zeros(61), space.zeros(18)
w = space.draw(np.random.default_rng(0))
def count(text):
    ops = [l for l in text.splitlines() if "=" in l]
    return {c: sum(1 for l in ops if re.search(c + r"(-start)?\(", l))
            for c in ("all-gather", "all-reduce", "all-to-all", "collective-permute")}
new = count(_space._project.lower(basis, locked, np.int32(5), w, 1.0,
                                  pin=space.pin).compile().as_text())
# the form before: leaves flattened for every inner product, nothing pinned
flat_vdot = lambda x, y: sum(jnp.vdot(a, b, precision="highest")
                             for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
flat_dot = lambda V, x: sum(jnp.tensordot(b, a, axes=a.ndim, precision="highest")
                            for b, a in zip(jax.tree.leaves(V), jax.tree.leaves(x)))
tree.vdot, tree.basis_dot = flat_vdot, flat_dot
old = count(jax.jit(_space.project_step, donate_argnums=(0,)).lower(
    basis, locked, np.int32(5), w, 1.0).compile().as_text())
print(__import__("json").dumps({"width": width, "params": sum(int(np.prod(s)) for s in shapes),
                                "after": new, "before": old}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("memory", "collectives", "_worker"))
    parser.add_argument("--params", default="1e6,5e6,2e7")
    parser.add_argument("--num-matvecs", type=int, default=None)
    parser.add_argument("--tol", type=float, default=None)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    if args.mode == "_worker":
        print(json.dumps(_memory_worker(float(args.params), args.num_matvecs, args.tol)))
        return
    if args.mode == "collectives":
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
               "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, "-c", COLLECTIVE_SCRIPT, str(args.width)],
                             env=env, capture_output=True, text=True, check=True)
        print(out.stdout.strip())
        return
    for p in args.params.split(","):
        cmd = [sys.executable, __file__, "_worker", "--params", p]
        if args.num_matvecs:
            cmd += ["--num-matvecs", str(args.num_matvecs)]
        if args.tol:
            cmd += ["--tol", str(args.tol)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        print(lines[-1] if lines else json.dumps({"params": p, "error": out.stderr[-1500:]}),
              flush=True)


if __name__ == "__main__":
    main()
