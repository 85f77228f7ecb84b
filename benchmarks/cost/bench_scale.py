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

``products``: Hessian-vector products per second of a two-hidden-layer tanh MLP (float32,
compiled, one product at a time as the solvers call them) against the parameter count at
``--examples`` examples, and against the number of examples at ``--width``.

``sharded``: on 8 host devices, the wall time of ``ht.eigenvalues(op, k=5)`` with the
parameters on one device against the same solve with the kernels split over a 2x4 mesh
(the second of two solves of each: compiling is excluded). Host devices on a 2-core CPU
share the same two cores, so this measures the overhead of sharding, not a speed-up.

``basis``: on one CPU device, the wall time of a top-5 with the Krylov basis as host NumPy
(``basis="host"``, the default there) against device arrays in compiled steps
(``basis="device"``, the default on accelerators and with sharded parameters), against the
parameter count at ``--examples`` examples (the second of two solves: compiling excluded),
with the product's share of each.

Usage (from the repository root, under the benchmark lock)::

    flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/cost/bench_scale.py \
        memory --params 1e6,5e6,2e7
    flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/cost/bench_scale.py \
        collectives
    flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/cost/bench_scale.py \
        products --params 1e4,1e5,1e6 --examples 64,256,1024
    flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/cost/bench_scale.py \
        sharded --params 1e5,1e6
    flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/cost/bench_scale.py \
        basis --params 1e4,1e5,1e6 --examples 64
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


def _mlp_objective(params: float, examples: int, multiple: int = 1):
    from flax import nnx

    import hessian_tools as ht
    from hessian_tools.examples import digits
    width = int((-75 + math.sqrt(75 ** 2 + 4 * params)) / 2)   # 64w + w^2 + 10w + ... = params
    width = max(multiple, multiple * round(width / multiple))  # divisible by the mesh's axes
    model = digits.MLP((width, width), rngs=nnx.Rngs(0))
    x, y = digits.load_digits_data()
    return ht.Objective.from_nnx(model, digits.cross_entropy, (x[:examples], y[:examples]))


def _products(params: float, examples: int, seconds: float = 3.0) -> dict:
    import jax

    import hessian_tools as ht
    obj = _mlp_objective(params, examples)
    op = ht.hessian(obj)
    v = ht.tree.normal_like(jax.random.key(0), obj.params)
    jax.block_until_ready(op(v))                          # compile
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        v = op(v)
        v = jax.tree.map(lambda a: a / 1e3, jax.block_until_ready(v))
        n += 1
    wall = time.perf_counter() - t0
    return {"params": op.dim, "examples": examples, "products": n,
            "per_second": n / wall, "ns_per_param_example": wall / n / op.dim / examples * 1e9}


def _basis(params: float, examples: int) -> dict:
    import jax

    import hessian_tools as ht
    from hessian_tools.linalg.eigsolve import lanczos_eigs
    op = ht.hessian(_mlp_objective(params, examples))
    out = {"params": op.dim, "examples": examples}
    for where in ("host", "device"):
        for _ in range(2):                     # the second solve: compiled code reused
            calls = []

            def product(v):
                t0 = time.perf_counter()
                r = jax.block_until_ready(op(v))
                calls.append(time.perf_counter() - t0)
                return r
            t0 = time.perf_counter()
            lanczos_eigs(product, jax.random.key(0), op.params_like, k=5,
                                           tol=1e-4, basis=where)
            wall = time.perf_counter() - t0
        out[where] = {"wall_s": wall, "products": len(calls), "product_s": sum(calls),
                      "algebra_share": 1 - sum(calls) / wall}
    out["device_over_host"] = out["device"]["wall_s"] / out["host"]["wall_s"]
    return out


SHARDED_SCRIPT = r"""
import json, sys, time, jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import hessian_tools as ht
sys.path.insert(0, sys.argv[2])
from bench_scale import _mlp_objective
obj = _mlp_objective(float(sys.argv[1]), 64, multiple=8)
mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
def spec(a):
    if a.ndim == 2:
        return P("a", "b") if a.shape[1] % 4 == 0 else P("b", "a")
    return P("b") if a.shape[0] % 4 == 0 else P()
params = jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, spec(a))), obj.params)
out = {"params": obj.num_params, "devices": len(jax.devices())}
for label, o in (("one_device", obj), ("sharded_2x4", obj.with_params(params))):
    op = ht.hessian(o)
    for _ in range(2):                         # the second solve: compiled code reused
        t0 = time.perf_counter()
        eig = ht.eigenvalues(op, k=5, key=jax.random.key(0))
        wall = time.perf_counter() - t0
    out[label] = {"wall_s": wall, "num_matvecs": eig.num_matvecs,
                  "values": [float(x) for x in eig.values]}
out["ratio_sharded_over_one"] = out["sharded_2x4"]["wall_s"] / out["one_device"]["wall_s"]
print(json.dumps(out))
"""


def _memory_worker(params: float, num_matvecs: int | None, tol: float | None) -> dict:
    import jax
    import jax.numpy as jnp

    import hessian_tools as ht
    from hessian_tools.linalg import memory

    obj = _mlp_objective(params, 64)
    width = obj.params["layers"][0]["kernel"].value.shape[1]
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
    parser.add_argument("mode", choices=("memory", "collectives", "products", "sharded",
                                         "basis", "_worker"))
    parser.add_argument("--examples", default="64,256,1024")
    parser.add_argument("--params", default="1e6,5e6,2e7")
    parser.add_argument("--num-matvecs", type=int, default=None)
    parser.add_argument("--tol", type=float, default=None)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    if args.mode == "_worker":
        print(json.dumps(_memory_worker(float(args.params), args.num_matvecs, args.tol)))
        return
    if args.mode == "products":
        params = [float(p) for p in args.params.split(",")]
        examples = [int(e) for e in args.examples.split(",")]
        for p in params:
            print(json.dumps(_products(p, examples[0])), flush=True)
        for e in examples[1:]:
            print(json.dumps(_products(params[len(params) // 2], e)), flush=True)
        return
    if args.mode == "basis":
        for p in args.params.split(","):
            for e in args.examples.split(","):
                print(json.dumps(_basis(float(p), int(e))), flush=True)
        return
    if args.mode == "sharded":
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
               "JAX_PLATFORMS": "cpu"}
        for p in args.params.split(","):
            out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, p,
                                  os.path.dirname(os.path.abspath(__file__))],
                                 env=env, capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            print(lines[-1] if lines else json.dumps({"params": p, "error": out.stderr[-1500:]}),
                  flush=True)
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
