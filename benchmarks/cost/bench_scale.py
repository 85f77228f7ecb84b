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

``reorth``: on one CPU device, a default top-5 (``ht.eigenvalues(op, k=5, key=...)``) split
into the products, the projection steps (Gram-Schmidt against the basis and the locked
rows) and the rest, with the host algebra as it was before issue 22 part 4 (two sweeps in
every step, the locked rows twice per sweep, float64 block norms, one transfer per leaf, a
fresh BLAS search per solve) and as it is now, alternating in one process (the median of
``--repeats`` warm solves each); with the arithmetic floor of the projection (one sweep at
the measured single-thread bandwidth of a ``(32, dim)`` ``V w``).

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
    flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/cost/bench_scale.py \
        reorth --params 1e4,1e5,1e6 --examples 64 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np


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


def _cgs2_project(basis, j, w, scale, locked=None):
    """The host projection step before issue 22 part 4 (the reference for ``reorth``): two
    full Gram-Schmidt sweeps against the basis in every step, each followed by CGS2 against
    the locked rows (so 4 passes over the basis and 8 over the locked rows)."""
    from hessian_tools.linalg import _space

    def cgs2(w, rows):
        if rows is None or rows.shape[-2] == 0:
            return w
        for _ in range(2):
            w = w - _space._host_combine(_space._host_dot_rows(rows, w), rows)
        return w
    filled = basis[..., :j + 1, :]
    h = _space._host_dot_rows(filled, w)
    w = cgs2(w - _space._host_combine(h, filled), locked)
    h2 = _space._host_dot_rows(filled, w)
    w = cgs2(w - _space._host_combine(h2, filled), locked)
    h = (h + h2).astype(np.float64)
    beta = _space._norm(w)
    scale = np.maximum(np.max(np.abs(h), axis=-1) + beta, scale)
    tiny = beta <= _space.BREAKDOWN * np.finfo(basis.dtype).eps * scale
    inv = np.where(tiny, 0.0, 1.0 / np.where(tiny, 1.0, beta))
    q_next = np.multiply(w, np.asarray(inv)[..., None], out=np.empty(w.shape, basis.dtype),
                         casting="unsafe")
    if j + 1 < basis.shape[-2]:
        basis[..., j + 1, :] = q_next
    return q_next, h, np.where(tiny, 0.0, beta)


def _bandwidth(dim: int, dtype) -> float:
    """Bytes per second of one BLAS thread streaming a ``(32, dim)`` basis (``V w``)."""
    from hessian_tools import _host
    basis = np.random.default_rng(0).standard_normal((32, dim)).astype(dtype)
    w = basis[0].copy()
    with _host.single_threaded_blas():
        best = min(_timed(lambda: basis @ w) for _ in range(7))
    return basis.nbytes / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cgs2_norm(w):
    """The float64 norm before part 4: blocks converted to float64, then summed."""
    total = 0.0
    for lo in range(0, w.shape[-1], 1 << 15):
        block = w[..., lo:lo + (1 << 15)].astype(np.float64)
        total = total + np.einsum("...n,...n->...", block, block)
    return np.sqrt(total)


def _per_leaf_tree(self, flat, *, once=False):
    """``FlatLayout.tree`` before part 4: one transfer per leaf."""
    import jax.numpy as jnp
    lead = flat.shape[:-1]
    parts = np.split(flat, np.cumsum(self.sizes)[:-1], axis=-1)
    return self.treedef.unflatten([jnp.asarray(p.reshape(lead + s), d) for p, s, d in
                                   zip(parts, self.shapes, self.dtypes)])


def _fresh_blas_limit():
    """``single_threaded_blas`` before part 4: the BLAS libraries searched on every solve."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1, user_api="blas")


def _reorth(params: float, examples: int, repeats: int) -> dict:
    """A default top-5 (``ht.eigenvalues(op, k=5, key=...)``) split into products, projection
    steps and the rest, with the host algebra before part 4 (:func:`_cgs2_project`, the
    float64-block norm, a transfer per leaf, a fresh BLAS search) and now, alternating in
    one process; the median of ``repeats`` warm solves of each."""
    import jax

    import hessian_tools as ht
    from hessian_tools import _host
    from hessian_tools.analysis import eigen
    from hessian_tools.linalg import _space
    op = ht.hessian(_mlp_objective(params, examples))
    dtype = np.dtype(op.dtype)
    bandwidth = _bandwidth(op.dim, dtype)
    solver, project, sweep = eigen.lanczos_eigs, _space.HostSpace.project, _space._sweep
    now = {(_space, "host_project"): _space.host_project, (_space, "_norm"): _space._norm,
           (_host.FlatLayout, "tree"): _host.FlatLayout.tree,
           (_host, "single_threaded_blas"): _host.single_threaded_blas}
    before = dict(zip(now, (_cgs2_project, _cgs2_norm, _per_leaf_tree, _fresh_blas_limit)))
    variants = {"before": before, "after": now}
    runs = {name: [] for name in variants}
    for rep in range(repeats + 1):               # the first round compiles: not recorded
        for name, patches in variants.items():
            log = {"product_s": 0.0, "project_s": 0.0, "rows": [], "sweeps": 0}

            def timed_solver(matvec, *args, **kwargs):
                def product(v):
                    t0 = time.perf_counter()
                    out = jax.block_until_ready(matvec(v))
                    log["product_s"] += time.perf_counter() - t0
                    return out
                return solver(product, *args, **kwargs)

            def timed_project(self, basis, locked, num_locked, j, w, scale):
                t0 = time.perf_counter()
                out = project(self, basis, locked, num_locked, j, w, scale)
                log["project_s"] += time.perf_counter() - t0
                log["rows"].append(j + 1 + num_locked)
                return out

            def counted_sweep(*args):
                log["sweeps"] += 1
                return sweep(*args)
            for (owner, attr), value in patches.items():
                setattr(owner, attr, value)
            eigen.lanczos_eigs, _space._sweep = timed_solver, counted_sweep
            _space.HostSpace.project = timed_project
            try:
                t0 = time.perf_counter()
                eig = ht.eigenvalues(op, k=5, key=jax.random.key(rep))
                wall = time.perf_counter() - t0
            finally:
                for (owner, attr), value in now.items():
                    setattr(owner, attr, value)
                eigen.lanczos_eigs, _space._sweep = solver, sweep
                _space.HostSpace.project = project
            rows = np.array(log["rows"], float)
            # the floor: one sweep (V w, then w - V^T h) reads the filled rows twice
            floor_s = 2 * rows.sum() * op.dim * dtype.itemsize / bandwidth
            if rep:
                runs[name].append({
                    "wall_s": wall, "product_s": log["product_s"],
                    "project_s": log["project_s"],
                    "rest_s": wall - log["product_s"] - log["project_s"],
                    "steps": len(rows), "mean_rows": float(rows.mean()),
                    "second_sweeps": (log["sweeps"] - len(rows)) / len(rows)
                    if name == "after" else 1.0,
                    "floor_2pass_s": floor_s, "values": [float(x) for x in eig.values],
                    "max_residual_rel": float(np.max(eig.residuals) / eig.scale),
                    "status": str(eig.status)})
    out = {"params": op.dim, "examples": examples, "dtype": str(dtype),
           "bandwidth_gb_s": bandwidth / 1e9}
    for name, rs in runs.items():
        med = {key: float(np.median([r[key] for r in rs])) for key in
               ("wall_s", "product_s", "project_s", "rest_s", "floor_2pass_s", "steps",
                "mean_rows", "second_sweeps", "max_residual_rel")}
        med["project_share"] = med["project_s"] / med["wall_s"]
        med["not_product_share"] = 1 - med["product_s"] / med["wall_s"]
        # the projection at its arithmetic minimum (one sweep at the measured bandwidth)
        # against the products alone: the least share reorthogonalisation could have
        med["floor_share"] = med["floor_2pass_s"] / (med["floor_2pass_s"] + med["product_s"])
        med["values"], med["status"] = rs[-1]["values"], rs[-1]["status"]
        out[name] = med
    out["wall_after_over_before"] = out["after"]["wall_s"] / out["before"]["wall_s"]
    out["project_after_over_before"] = out["after"]["project_s"] / out["before"]["project_s"]
    out["max_dvalue"] = float(np.max(np.abs(np.subtract(out["after"]["values"],
                                                        out["before"]["values"]))))
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
                                         "basis", "reorth", "_worker"))
    parser.add_argument("--examples", default="64,256,1024")
    parser.add_argument("--params", default="1e6,5e6,2e7")
    parser.add_argument("--num-matvecs", type=int, default=None)
    parser.add_argument("--tol", type=float, default=None)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
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
    if args.mode == "reorth":
        for p in args.params.split(","):
            print(json.dumps(_reorth(float(p), int(args.examples.split(",")[0]),
                                     args.repeats)), flush=True)
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
