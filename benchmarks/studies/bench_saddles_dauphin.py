"""Study: saddles of intermediate index and certified minima on notebook 09's network.

The problem of notebook 09 (Dauphin et al. 2014): a 16-4-10 tanh MLP (118 parameters,
float64) on the first 800 scikit-learn digits pooled to 4x4, cross-entropy + 1e-3 ||w||^2,
trained by Adam (lr 1e-2, full batch, 300 steps) from 3 seeds with checkpoints at steps
0, 5, 10, 20, 40, 80, 150, 300. Measured:

1. ``ht.polish`` from the three Adam end points: the trust region before 0.3
   (``subproblem="lm-minres", forcing="sqrt"``), the Levenberg-Marquardt step with the new
   forcing, the new default (Steihaug-Toint CG, ``forcing="gradient"``), each without the
   Newton-MR fallback, and ``method="newton-mr"``: status, |grad| reached, steps, products,
   wall time (60 steps at most, as in the notebook).
2. ``ht.find_critical_points`` (Newton-MR, 50 steps) from the 24 checkpoints and 6 small
   initialisations (the notebook's starts): the ln 10 saddle and the unconverged points.
3. ``ht.find_saddles(target_index=k)`` for k = 1, 4, 8, 16 from the nudged ln 10 saddle and
   a nudged polished minimum (the notebook's starts): the notebook's settings (order-by-index
   following, 15 steps) against mode tracking with longer following; and, with mode
   tracking, from every unconverged Newton-MR point of index >= 1 below loss 2.2 (not the
   ln 10 family) with the target set to its index. Per run: reached or not, (loss,
   index), products, wall time.

Usage (from the repository root; the numbers go into ``benchmarks/RESULTS_saddles.md``)::

    flock /tmp/bench.lock env PYTHONPATH=$PWD .venv/bin/python \\
        benchmarks/studies/bench_saddles_dauphin.py [--quick] [--parts polish,targets,stuck]

4. ``--parts continuum``: critical points of every index. The Adam end points with hidden
   units removed (incoming and outgoing weights zero), polished: the critical points of the
   narrower nets, which embed as saddles (Fukumizu & Amari 2000); Newton-MR from each of
   them nudged (Dauphin et al.'s perturbed saddles); eigenvector following to k = 1 .. 4
   from nudged minima (the weak saddles next to them). All classified at find_saddles'
   threshold, ``sqrt(eps) max|lambda|``.

Writes ``<out>/saddles_dauphin.json`` and ``<out>/saddles_dauphin.png`` (loss against index
of every certified point); without the parts polish and stuck
``<out>/saddles_dauphin_<parts>.{json,png}`` (e.g. ``saddles_dauphin_continuum``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import hessian_tools as ht  # noqa: E402
from hessian_tools.examples.digits import load_digits_data  # noqa: E402
from hessian_tools.files import save_figure, write_json  # noqa: E402
from hessian_tools.gallery.dauphin import keep_units  # noqa: E402

BENCH = Path(__file__).resolve().parents[1]
N_EXAMPLES, HIDDEN, SEEDS = 800, 4, 3
CHECK = [0, 5, 10, 20, 40, 80, 150, 300]


def build():
    """Notebook 09's objective, Adam checkpoints and end points, and small initialisations."""
    x, y = load_digits_data(dtype=jnp.float64)
    x = x.reshape(-1, 4, 2, 4, 2).mean((2, 4)).reshape(-1, 16)[:N_EXAMPLES]
    y = y[:N_EXAMPLES]
    data = (x, y)

    def init(key, scale=1.0):
        k1, k2 = jax.random.split(key)
        return {"w1": scale * jax.random.normal(k1, (16, HIDDEN)) / 4, "b1": jnp.zeros(HIDDEN),
                "w2": scale * jax.random.normal(k2, (HIDDEN, 10)) / np.sqrt(HIDDEN),
                "b2": jnp.zeros(10)}

    def loss(p, batch):
        xb, yb = batch
        logits = jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return ce + 1e-3 * (jnp.sum(p["w1"] ** 2) + jnp.sum(p["w2"] ** 2))

    opt = optax.adam(1e-2)

    @jax.jit
    def train_step(p, s):
        u, s = opt.update(jax.grad(loss)(p, data), s)
        return optax.apply_updates(p, u), s

    checkpoints, ends = [], []
    for seed in range(SEEDS):
        p = init(jax.random.key(seed))
        s = opt.init(p)
        for t in range(CHECK[-1] + 1):
            if t in CHECK:
                checkpoints.append(p)
            p, s = train_step(p, s)
        ends.append(p)
    small = [init(jax.random.key(100 + i), scale=s)
             for i, s in enumerate([0.02, 0.05, 0.1, 0.2, 0.4, 0.7])]
    return ht.Objective(loss, init(jax.random.key(0)), data), checkpoints, ends, small


def nudge(p, key, eps=0.05):
    leaves, treedef = jax.tree.flatten(p)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [a + eps * jax.random.normal(k, a.shape)
                                        for a, k in zip(leaves, keys)])


def point_row(p, wall):
    return dict(status=p.status, index=p.index, loss=p.loss, grad_norm=p.grad_norm,
                steps=p.newton_steps, products=p.num_matvecs, wall_time=wall)


POLISH = {"trust region before 0.3 (lm-minres, sqrt forcing)":
          dict(subproblem="lm-minres", forcing="sqrt", fallback=None),
          "lm-minres, gradient forcing": dict(subproblem="lm-minres", fallback=None),
          "steihaug-cg (new default), no fallback": dict(fallback=None),
          "newton-mr": dict(method="newton-mr")}


def polish_study(obj, ends):
    rows = []
    for name, kw in POLISH.items():
        for i, p in enumerate(ends):
            t0 = time.perf_counter()
            r = ht.polish(obj, p, key=jax.random.key(10 + i), max_steps=60, **kw)
            rows.append(dict(config=name, end=i, verdict=r.verdict, certified_by=r.certified_by,
                             **point_row(r, time.perf_counter() - t0)))
            print(f"polish {name:45s} end {i}: {r.status:13s} {r.verdict:18s} loss "
                  f"{r.loss:.5f} |g| {r.grad_norm:.1e} {r.newton_steps:3d} steps "
                  f"{r.num_matvecs:5d} products {rows[-1]['wall_time']:.1f} s", flush=True)
    return rows


def search_rows(search, label, walls):
    return [dict(label=label, target=p.target_index, start=p.start, reached=p.reached,
                 **point_row(p, w)) for p, w in zip(search, walls)]


def run_search(obj, starts, key, label, **kw):
    """find_saddles one start at a time (so each run has its own wall time)."""
    points, walls = [], []
    for i, s in enumerate(starts):
        t0 = time.perf_counter()
        found = ht.find_saddles(obj, [s], key=jax.random.fold_in(key, i), **kw)
        walls.append(time.perf_counter() - t0)
        points.append(found.points[0])
        p = points[-1]
        print(f"{label:28s} target {kw.get('target_index')!s:>3}: {p.status:13s} index "
              f"{p.index!s:>3} loss {p.loss:.4f} |g| {p.grad_norm:.1e} {p.num_matvecs:6d} "
              f"products {walls[-1]:.1f} s", flush=True)
    return ht.SaddleSearch(points=tuple(points), options=kw), walls


REL_TAU = float(np.sqrt(np.finfo(np.float64).eps))   # find_saddles' default zero threshold


def continuum_study(obj, ends, minima, follow, targets_up):
    """Critical points of every index: (a) the Adam end points with hidden units removed,
    driven to a critical point of the narrower net by ``ht.polish`` (which keeps dead units
    dead: the gradient and Hessian-vector products vanish on them); (b) Newton-MR
    (``find_saddles`` without a target) from each of those nudged, Dauphin et al.'s
    perturbed saddles; (c) eigenvector following to ``k = 1 .. targets_up`` from nudged
    polished minima (the weak saddles next to the minima). Every point classified at
    ``sqrt(eps) max|lambda|``."""
    rows, points = [], []
    hidden = ends[0]["b1"].shape[0]
    subsets = sorted({tuple(range(h)) for h in range(hidden)}
                     | {tuple(range(hidden - h, hidden)) for h in range(1, hidden)})
    embedded = []
    for seed, p in enumerate(ends):
        for units in subsets:
            t0 = time.perf_counter()
            r = ht.polish(obj, keep_units(p, units), key=jax.random.key(50 + seed),
                          max_steps=60, classify_options={"relative_tau": REL_TAU})
            rows.append(dict(label="embedded, polished", end=seed, units=list(units),
                             target=None, reached=None, **point_row(r, time.perf_counter() - t0)))
            print(f"end {seed} units {units!s:12s}: {r.status:13s} {r.verdict:18s} index "
                  f"{r.index:3d} loss {r.loss:.4f} |g| {r.grad_norm:.1e}", flush=True)
            points.append(("embedded, polished", r))
            if r.status == "critical" and r.index:
                embedded.append(r)
    for eps in (0.02, 0.2):
        label = f"Newton-MR from embedded nudged by {eps}"
        starts = [nudge(r.params, jax.random.key(600 + i), eps=eps)
                  for i, r in enumerate(embedded)]
        s, w = run_search(obj, starts, jax.random.key(700), label, newton_steps=50)
        rows += search_rows(s, label, w)
        points += [(label, p) for p in s]
    label = f"following up from nudged minima, {follow} steps"
    for k in range(1, targets_up + 1):
        starts = [nudge(m.params, jax.random.key(800 + 10 * k + i)) for i, m in
                  enumerate(minima[:2])]
        s, w = run_search(obj, starts, jax.random.key(900 + k), label, target_index=k,
                          follow_steps=follow, newton_steps=30)
        rows += search_rows(s, label, w)
        points += [(label, p) for p in s]
    label = f"following down from nudged embedded, {follow} steps"
    distinct = {}
    for r in embedded:                   # two per index, the lowest losses
        distinct.setdefault(r.index, {}).setdefault(round(r.loss, 4), r)
    for index, by_loss in sorted(distinct.items()):
        for j, (_, r) in enumerate(sorted(by_loss.items())[:2]):
            for k in DOWN.get(index, ()):
                s, w = run_search(obj, [nudge(r.params, jax.random.key(1000 + 7 * k + j), 0.02)],
                                  jax.random.key(1100 + k), label, target_index=k,
                                  follow_steps=follow, newton_steps=30)
                rows += search_rows(s, label, w)
                points += [(label, p) for p in s]
    points += [("polished Adam end points", m) for m in minima]
    rows += [dict(label="polished Adam end points", end=i, target=None, reached=None,
                  **point_row(m, m.wall_time)) for i, m in enumerate(minima)]
    return rows, points


DOWN = {9: (2, 4, 6, 8), 18: (10, 13, 16), 27: (20, 24)}   # targets below embedded saddles


def plot_continuum(points, error, axes):
    """Loss (left) and training error (right) against index of every certified critical
    point found, one colour per method; ``error(params)`` is the training error."""
    for j, label in enumerate(dict.fromkeys(lab for lab, _ in points)):
        crit = [p for lab, p in points if lab == label and p.status == "critical"]
        for ax, y in zip(axes, ([p.loss for p in crit], [100 * error(p.params) for p in crit])):
            ax.scatter([p.index for p in crit], y, s=30, color=f"C{j}", alpha=0.7,
                       edgecolor="k", linewidth=0.4, label=f"{label} ({len(crit)})")
    for ax, what in zip(axes, ("training loss", "training error (%)")):
        ax.set_xlabel(f"index (eigenvalues below -{REL_TAU:.1e} max|λ|; of 118)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return axes


def training_error(obj):
    """``params -> `` the fraction of misclassified training examples."""
    x, y = obj.data

    @jax.jit
    def error(p):
        logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return jnp.mean(jnp.argmax(logits, axis=-1) != y)
    return lambda p: float(error(p))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="targets 1 and 4 only, fewer steps")
    ap.add_argument("--out", default=str(BENCH / "results"))
    ap.add_argument("--follow", type=int, default=100, help="following steps with tracking")
    ap.add_argument("--targets-up", type=int, default=4,
                    help="continuum: following targets 1 .. this from the minima")
    ap.add_argument("--parts", default="polish,targets,stuck,continuum",
                    help="comma-separated: polish (section 1), targets (3, the notebook's "
                         "starts), stuck (3, from Newton-MR's unconverged points), "
                         "continuum (4: embedded, perturbed and followed saddles)")
    args = ap.parse_args()
    begin = time.perf_counter()
    obj, checkpoints, ends, small = build()
    print(f"{obj.num_params} parameters, {obj.num_examples} examples; load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    parts = args.parts.split(",")
    out = dict(machine=platform.machine(), cpus=os.cpu_count(), load_start=os.getloadavg(),
               parts=parts, polish=polish_study(obj, ends) if "polish" in parts else [])
    minima = [ht.polish(obj, p, key=jax.random.key(10 + i), max_steps=60,
                        classify_options={"relative_tau": REL_TAU}) for i, p in enumerate(ends)]
    searches, rows, found = [], [], None
    if "targets" in parts or "stuck" in parts:
        t0 = time.perf_counter()
        found = ht.find_critical_points(obj, checkpoints + small, key=jax.random.key(1),
                                        newton_steps=50)
        out["newton_mr"] = [point_row(p, None) for p in found]
        print(f"Newton-MR from {len(found)} starts ({time.perf_counter() - t0:.0f} s):\n"
              f"{found}", flush=True)
        top = max((q for q in found if q.status == "critical"), key=lambda q: q.index)
    targets = [1, 4] if args.quick else [1, 4, 8, 16]
    follow = 30 if args.quick else args.follow
    for k in targets if "targets" in parts else ():   # nudged saddle and nudged minimum
        starts = [nudge(top.params, jax.random.key(200 + 10 * k)),
                  nudge(minima[0].params, jax.random.key(200 + 10 * k + 1))]
        for label, kw in [("order-by-index, 15 steps", dict(track_modes=0, follow_steps=15)),
                          (f"tracking, {follow} steps", dict(follow_steps=follow))]:
            s, w = run_search(obj, starts, jax.random.key(300 + k), label, target_index=k,
                              newton_steps=30, **kw)
            searches.append((label, s))
            rows += search_rows(s, label, w)
    stuck = [q for q in found if q.status != "critical" and q.index and q.index > 0
             and q.loss < 2.2] if "stuck" in parts else []
    for q in stuck:   # Newton-MR's unconverged points below ln 10: towards their own index
        label = "tracking from Newton-MR's"
        s, w = run_search(obj, [q.params], jax.random.key(400 + q.start), label,
                          target_index=q.index, follow_steps=follow, newton_steps=50)
        searches.append((label, s))
        rows += search_rows(s, label, w)
    if "continuum" in parts:
        crow, cpoints = continuum_study(obj, ends, minima, args.follow, args.targets_up)
        rows += crow
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
        plot_continuum(cpoints, training_error(obj), axes)
        fig.suptitle("notebook 09's net (16-4-10 tanh, 118 parameters): every certified "
                     "critical point found, against its index")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        save_figure(fig, Path(args.out) / "saddles_dauphin_continuum.png")
    out["searches"] = rows
    out["wall_time"] = time.perf_counter() - begin
    out["load_end"] = os.getloadavg()
    summary = {}
    for r in rows:
        key = (r["label"], r["target"] if r["label"] != "tracking from Newton-MR's" else "own")
        if r["label"] == "embedded, polished":
            key = (r["label"], f"{len(r['units'])} units")
        d = summary.setdefault(str(key), dict(runs=0, reached=0, certified=[], products=0,
                                              wall_time=0.0))
        d["runs"] += 1
        d["reached"] += int(bool(r["reached"]))
        d["products"] += r["products"]
        d["wall_time"] += r["wall_time"]
        if r["status"] == "critical":
            d["certified"].append((round(r["loss"], 4), r["index"]))
    out["summary"] = summary
    for k, v in summary.items():
        print(f"{k}: {v['reached']}/{v['runs']} reached; certified (loss, index) "
              f"{v['certified']}; {v['products']} products, {v['wall_time']:.0f} s")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    stem = ("saddles_dauphin" if {"polish", "stuck"} & set(parts)
            else "saddles_dauphin_" + "_".join(parts))
    write_json(Path(args.out) / f"{stem}.json", out)
    if found is None:
        print(f"total {out['wall_time']:.0f} s; load {out['load_start'][0]:.1f} -> "
              f"{out['load_end'][0]:.1f}")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    ht.plot_index_vs_loss(found, ax=ax, label="Newton-MR", fraction=False)
    for j, (label, s) in enumerate(searches):
        if any(p.status == "critical" for p in s):
            ht.plot_index_vs_loss(s, ax=ax, fraction=False, color=f"C{1 + j % 9}",
                                  label=f"{label} (target {s.options['target_index']})")
    ax.set_title("notebook 09's net: loss against index (filled: certified critical)")
    ax.legend(fontsize=6, ncol=2)
    save_figure(fig, Path(args.out) / f"{stem}.png")
    print(f"total {out['wall_time']:.0f} s; load {out['load_start'][0]:.1f} -> "
          f"{out['load_end'][0]:.1f}")


if __name__ == "__main__":
    main()
