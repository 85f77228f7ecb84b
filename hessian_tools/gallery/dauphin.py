"""Saddles, not minima (Dauphin et al. 2014): critical points located by Newton methods, their
index against their training error, and saddle-free Newton against damped Newton, gradient
descent and Adam next to a saddle.

A small tanh MLP on 2x2-pooled digits (16 inputs, float64), so that every Hessian is
classified exactly. The steps (the notebook ``09_saddles_dauphin.ipynb`` runs them one cell
each; ``hessian-tools gallery dauphin`` runs :func:`run`, inside ``jax.enable_x64(True)``):

1. :func:`make_problem`, :func:`train`: the objective, Adam runs with their checkpoints;
2. :func:`locate`: ``ht.polish`` of the end points and ``ht.find_critical_points`` (Newton-MR
   on ``1/2 ||grad L||^2``) from the checkpoints and small-scale initialisations;
3. :func:`continuum`: Newton-MR from the lines between the ``ln 10`` saddle and the minima,
   and :func:`search_saddles` (the one saddle-search step) for several target indices;
4. :func:`escape`: four optimizers started next to the highest-index saddle.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from hessian_tools import plots
from hessian_tools._checks import check_key
from hessian_tools.analysis import classify, find_critical_points, find_saddles, polish
from hessian_tools.examples.digits import load_digits_data
from hessian_tools.gallery._entry import Entry, Report, Row
from hessian_tools.objective import Objective
from hessian_tools.training import damped_newton, saddle_free_newton

__all__ = ["CONFIGS", "Config", "ENTRY", "INDEX_TAU", "Problem", "continuum", "escape",
           "keep_units", "locate", "make_problem", "nudge", "plot_continuum", "plot_escape",
           "run", "search_saddles", "train"]


@dataclasses.dataclass(frozen=True)
class Config:
    """The sizes of one configuration."""
    num_examples: int
    hidden: int
    seeds: int
    checkpoints: tuple             # Adam steps at which the training runs are kept
    polish_steps: int
    small_scales: tuple            # initialisation scales of the extra Newton-MR starts
    newton_steps: int              # Newton-MR iterations per start (sections 1-2)
    line_ts: tuple                 # points on the lines saddle -> minima
    targets: tuple                 # indices sought by eigenvector following
    follow_steps: int
    search_newton_steps: int
    run_steps: int                 # Newton-type steps in the escape comparison
    krylov: int = 10
    damping: float = 1e-2


CONFIGS = {
    "small": Config(num_examples=300, hidden=3, seeds=1, checkpoints=(0, 30), polish_steps=15,
                    small_scales=(0.05, 0.2), newton_steps=12, line_ts=(0.5,), targets=(2,),
                    follow_steps=4, search_newton_steps=10, run_steps=8),
    "full": Config(num_examples=800, hidden=4, seeds=3, checkpoints=(0, 5, 10, 20, 40, 80, 150, 300),
                   polish_steps=60, small_scales=(0.02, 0.05, 0.1, 0.2, 0.4, 0.7), newton_steps=50,
                   line_ts=(0.2, 0.4, 0.6, 0.8), targets=(1, 4, 8, 16), follow_steps=150,
                   search_newton_steps=30, run_steps=60)}


def loss(p, batch):
    """Softmax cross-entropy of the 16-H-10 tanh network plus a small weight decay (1e-3)."""
    xb, yb = batch
    logits = jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return ce + 1e-3 * (jnp.sum(p["w1"] ** 2) + jnp.sum(p["w2"] ** 2))


@dataclasses.dataclass(frozen=True)
class Problem:
    """The objective, its data and hidden width."""
    obj: Objective
    data: tuple
    hidden: int

    def init(self, key, scale=1.0):
        """A random initialisation (``scale`` times the default one), zero biases."""
        return _init(key, self.hidden, scale)

    def error(self, p) -> float:
        """The training error (fraction misclassified) at ``p``."""
        x, y = self.data
        logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return float(jnp.mean(jnp.argmax(logits, -1) != y))


def make_problem(cfg: Config, *, seed: int = 0) -> Problem:
    """The first ``num_examples`` digits pooled to 4x4 pixels (float64: call inside
    ``jax.enable_x64(True)``) and the objective at the initialisation ``seed``."""
    x, y = load_digits_data(dtype=jnp.float64)
    x = x.reshape(-1, 4, 2, 4, 2).mean((2, 4)).reshape(-1, 16)   # 8x8 -> 4x4 pixels
    data = (x[:cfg.num_examples], y[:cfg.num_examples])
    return Problem(obj=Objective(loss, _init(jax.random.key(seed), cfg.hidden), data), data=data,
                   hidden=cfg.hidden)


def _init(key, hidden: int, scale=1.0):
    k1, k2 = jax.random.split(key)
    return {"w1": scale * jax.random.normal(k1, (16, hidden)) / 4, "b1": jnp.zeros(hidden),
            "w2": scale * jax.random.normal(k2, (hidden, 10)) / np.sqrt(hidden),
            "b2": jnp.zeros(10)}


# the zero threshold of every index here: find_saddles' default (sqrt(eps) max|lambda|), so
# the weak saddles next to the minima (negative eigenvalues 1e-5 .. 1e-3 against a top of ~3)
# are counted with their index and every point of the figures is counted alike
INDEX_TAU = {"relative_tau": float(np.sqrt(np.finfo(np.float64).eps))}


def keep_units(p, units):
    """``p`` with every hidden unit outside ``units`` removed (incoming weights, bias and
    outgoing weights zero): a critical point of the narrower network embeds as a saddle of
    this one (Fukumizu & Amari 2000), and Newton-MR from such a point stays in that
    subspace (the gradient and Hessian-vector products vanish on the removed units)."""
    mask = jnp.zeros(p["b1"].shape, p["b1"].dtype).at[jnp.asarray(units, int)].set(1.0)
    return dict(p, w1=p["w1"] * mask, b1=p["b1"] * mask, w2=p["w2"] * mask[:, None])


def nudge(p, key, eps=0.05):
    """``p`` plus ``eps`` times a standard normal draw (each leaf its own key)."""
    check_key(key, "nudge")
    leaves, treedef = jax.tree.flatten(p)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [a + eps * jax.random.normal(k, a.shape)
                                        for a, k in zip(leaves, keys)])


def train(pr: Problem, cfg: Config, *, seed: int = 0):
    """Full-batch Adam (lr 0.01) from ``seeds`` initialisations; returns the checkpoints
    (every seed's, at the steps in ``cfg.checkpoints``) and the end points. Cost: one
    gradient per step."""
    opt = optax.adam(1e-2)

    @jax.jit
    def step(p, s):
        u, s = opt.update(jax.grad(loss)(p, pr.data), s)
        return optax.apply_updates(p, u), s

    checkpoints, ends = [], []
    for i in range(cfg.seeds):
        p = pr.init(jax.random.key(seed + i))
        s = opt.init(p)
        for t in range(cfg.checkpoints[-1] + 1):
            if t in cfg.checkpoints:
                checkpoints.append(p)
            p, s = step(p, s)
        ends.append(p)
    return checkpoints, ends


def locate(pr: Problem, cfg: Config, checkpoints, ends, *, key_base: int = 0):
    """``ht.polish`` (trust region) of every end point, then ``ht.find_critical_points``
    (Newton-MR) from every checkpoint and from small-scale initialisations. Returns
    ``(minima, found)``. Cost: up to ``polish_steps`` (``newton_steps``) MINRES solves of
    up to 100 products per point, one exact classification per point."""
    minima = [polish(pr.obj, p, key=jax.random.key(key_base + 10 + i), max_steps=cfg.polish_steps,
                     classify_options=INDEX_TAU) for i, p in enumerate(ends)]
    small = [pr.init(jax.random.key(key_base + 100 + i), scale=s)
             for i, s in enumerate(cfg.small_scales)]
    found = find_critical_points(pr.obj, checkpoints + small, key=jax.random.key(key_base + 1),
                                 newton_steps=cfg.newton_steps, classify_options=INDEX_TAU)
    return minima, found


def search_saddles(pr: Problem, starts, target: int, cfg: Config, *, key):
    """The saddle search: critical points of index ``target`` near ``starts`` (eigenvector
    following then Newton-MR, ``ht.find_saddles``). The one place to switch the search
    method. Cost: ``follow_steps`` exact eigendecompositions plus MINRES solves per start."""
    return find_saddles(pr.obj, starts, target_index=target, key=key,
                        follow_steps=cfg.follow_steps, newton_steps=cfg.search_newton_steps)


def continuum(pr: Problem, cfg: Config, found, minima, *, key_base: int = 0, say=print):
    """Newton-MR from the points on the lines between the highest-index critical point of
    ``found`` (the ``ln 10`` saddle) and the minima and from the minima with hidden units
    removed (:func:`keep_units`: the narrower networks' critical points, saddles of index
    rising as units are removed), and :func:`search_saddles` for every target index ``k``
    from the certified saddle of the lowest index above ``k`` (nudged by 0.02: the search
    descends along all but ``k`` of its negative modes) and from a nudged minimum. Returns
    ``(between, searches, points)``: ``points`` every certified critical point with its
    index fraction, loss and training error (arrays ``alpha``, ``loss``, ``error``)."""
    crit = [q for q in found if q.status == "critical"] or list(found)
    top = max(crit, key=lambda q: q.index or 0)
    line = [jax.tree.map(lambda a, b, t=t: (1 - t) * a + t * b, top.params, m.params)
            for m in minima for t in cfg.line_ts]
    line += [keep_units(m.params, range(h)) for m in minima for h in range(1, pr.hidden)]
    t0 = time.perf_counter()
    between = find_critical_points(pr.obj, line, key=jax.random.key(key_base + 2),
                                   newton_steps=cfg.newton_steps, classify_options=INDEX_TAU)
    say(f"Newton-MR from {len(line)} points on the lines saddle -> minima and the minima "
        f"with hidden units removed: {len(between.critical)} critical "
        f"({time.perf_counter() - t0:.0f} s)")
    searches = {}
    certified = crit + [q for q in between if q.status == "critical"]
    for k in cfg.targets:
        # down from the certified saddle of the next higher index, up from a minimum
        above = [q for q in certified if (q.index or 0) > k]
        upper = min(above, key=lambda q: (q.index, q.loss)) if above else top
        starts = [nudge(upper.params, jax.random.key(key_base + 200 + 10 * k), eps=0.02)]
        starts += [nudge(m.params, jax.random.key(key_base + 200 + 10 * k + i + 1))
                   for i, m in enumerate(minima[:1])]
        searches[k] = search_saddles(pr, starts, k, cfg, key=jax.random.key(key_base + 300 + k))
        say(f"target {k:>2}: {searches[k]}   ({time.perf_counter() - t0:.0f} s so far)")
    pts = [p for p in list(found) + list(between) if p.status == "critical"]
    pts += [m for m in minima if m.status == "critical"]
    pts += [p for s in searches.values() for p in s if p.status == "critical"]
    points = {"points": pts, "alpha": np.array([p.index_fraction for p in pts]),
              "loss": np.array([p.loss for p in pts]),
              "error": np.array([pr.error(p.params) for p in pts])}
    return between, searches, points


def spearman(a, b) -> float:
    """The Spearman rank correlation of ``a`` and ``b`` (ties broken by order, as the
    notebook's figures were computed)."""
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def escape(pr: Problem, cfg: Config, points, minima, *, key_base: int = 0):
    """Start ``1e-3`` away from the highest-index saddle in ``points`` and run saddle-free
    Newton, damped Newton (``krylov`` Lanczos steps, ``damping``; ``krylov + 1`` products a
    step), gradient descent (lr 0.5) and Adam (lr 0.01) for the same number of products.
    Returns ``(saddle, runs)``; ``runs[name] = (curve, params, report)``, ``curve`` rows
    ``(products, loss)``, ``report`` the final point's ``ht.classify``."""
    crit = [p for p in points["points"] if p.index and p.index > 0]
    saddle = max(crit, key=lambda p: p.index) if crit else minima[0]
    x0 = nudge(saddle.params, jax.random.key(key_base + 7), eps=1e-3 / np.sqrt(pr.obj.num_params))
    k, d, n = cfg.krylov, cfg.damping, cfg.run_steps
    runs = {f"saddle-free Newton (k={k}, δ={d})": _optimize(pr, x0, saddle_free_newton(loss, num_steps=k, damping=d), n, k + 1),
            f"damped Newton (k={k}, δ={d})": _optimize(pr, x0, damped_newton(loss, num_steps=k, damping=d), n, k + 1),
            "gradient descent (lr 0.5)": _optimize(pr, x0, optax.sgd(0.5), n * (k + 1), 1),
            "Adam (lr 0.01)": _optimize(pr, x0, optax.adam(1e-2), n * (k + 1), 1)}
    runs = {name: (c, p, classify(pr.obj.with_params(p), key=jax.random.key(key_base + 8)))
            for name, (c, p) in runs.items()}
    return saddle, runs


def _optimize(pr: Problem, x0, opt, steps: int, cost: int):
    """``steps`` steps of ``opt`` from ``x0``; the loss curve against the products spent."""
    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p, pr.data)
        u, s = opt.update(g, s, p, batch=pr.data, value=value)
        return optax.apply_updates(p, u), s, value
    p, s, curve = x0, opt.init(x0), []
    for i in range(steps):
        p, s, value = step(p, s)
        curve.append(((i + 1) * cost, float(value)))
    return np.array(curve), p


def escaped_after(curve, saddle_loss: float):
    """Products spent until the loss is below 95% of the saddle's (None: never)."""
    left = curve[curve[:, 1] < 0.95 * saddle_loss, 0]
    return int(left[0]) if len(left) else None


def plot_continuum(found, between, searches, points, axes=None):
    """Left: loss against index at every point reached (filled: critical). Right: Dauphin et
    al.'s Fig. 1, training error against index at the critical points, coloured by the log
    loss. Returns the two axes."""
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(12, 4.3), layout="constrained")[1]
    plots.plot_index_vs_loss(found, ax=axes[0], label="Newton-MR")
    plots.plot_index_vs_loss(between, ax=axes[0], label="Newton-MR, lines", color="C1")
    for i, (k, s) in enumerate(searches.items()):
        plots.plot_index_vs_loss(s, ax=axes[0], label=f"target {k}", color=f"C{2 + i}")
    axes[0].set_title("loss at the points reached (filled: critical)")
    c = np.log10(points["loss"])
    lo, hi = (c.min(), c.max()) if len(c) and np.ptp(c) > 0.05 else (c.min() - 0.5, c.min() + 0.5) if len(c) else (0, 1)
    sc = axes[1].scatter(points["alpha"], 100 * points["error"], c=c, cmap="viridis", vmin=lo, vmax=hi)
    axes[1].set(xlabel="index α (fraction of negative eigenvalues)", ylabel="training error (%)",
                title="Dauphin et al. Fig. 1: error against index, critical points only")
    axes[1].grid(alpha=0.3)
    axes[1].figure.colorbar(sc, ax=axes[1], label="log10 loss")
    return axes


def plot_escape(runs, saddle, minima, ax=None):
    """The loss against the products spent, for each optimizer started next to the saddle.
    Returns the ax."""
    if ax is None:
        ax = plt.subplots(figsize=(8, 4.3), layout="constrained")[1]
    for name, (c, _, _) in runs.items():
        ax.plot(c[:, 0], c[:, 1], label=name)
    ax.axhline(saddle.loss, color="0.5", ls=":", label=f"the saddle (index {saddle.index})")
    ax.axhline(min(m.loss for m in minima), color="k", ls="--", lw=0.8, label="best polished minimum")
    ax.set(xlabel="products (gradients + Hessian-vector products)", ylabel="training loss",
           title="starting 1e-3 away from a saddle (losses above 2.6 clipped)", ylim=(0.6, 2.6))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def _numbers(pr, found, minima, between, searches, points, saddle, runs) -> dict:
    """Every measured number of a run, JSON-ready."""
    n = {"num_params": pr.obj.num_params, "num_examples": pr.obj.num_examples,
         "newton_mr_starts": len(found), "newton_mr_critical": len(found.critical),
         "line_starts": len(between), "line_critical": len(between.critical),
         "minima": [{"status": m.status, "loss": m.loss, "index": m.index,
                     "grad_norm": m.grad_norm, "error": pr.error(m.params)} for m in minima],
         "searches": {str(k): {"runs": len(s), "reached": sum(bool(p.reached) for p in s),
                               "indices": [p.index for p in s], "losses": [p.loss for p in s]}
                      for k, s in searches.items()},
         "critical_alpha": points["alpha"].tolist(), "critical_loss": points["loss"].tolist(),
         "critical_error": points["error"].tolist(),
         "spearman_alpha_error": (spearman(points["alpha"], points["error"]) if len(points["alpha"]) > 2
                                  and np.ptp(points["alpha"]) > 0 and np.ptp(points["error"]) > 0 else None),
         "saddle_index": saddle.index, "saddle_loss": saddle.loss, "escape": {}}
    for name, (c, p, rep) in runs.items():
        n["escape"][name] = {"final_loss": float(c[-1, 1]), "max_loss": float(c[:, 1].max()),
                             "error": pr.error(p), "grad_norm": float(rep.grad_norm),
                             "index": rep.index, "products": int(c[-1, 0]),
                             "escaped_after": escaped_after(c, saddle.loss)}
    return n


def _span(x, pct: bool = False) -> str:
    """``"0.23-0.31"`` (``pct``: ``"13-37%"``), or one value when all are equal."""
    x = 100 * np.asarray(x) if pct else x
    fmt = "{:.0f}" if pct else "{:.2f}"
    lo, hi = fmt.format(np.min(x)), fmt.format(np.max(x))
    return (lo if lo == hi else f"{lo}-{hi}") + ("%" if pct else "")


def _verdict(n: dict) -> str:
    """The paragraph of where ours and the paper's agree, written from the measured numbers."""
    a, e, lo = (np.array(n[k]) for k in ("critical_alpha", "critical_error", "critical_loss"))
    if not len(a):
        return "No certified critical point was found: nothing to compare with Dauphin et al.'s Fig. 1."
    hi, minima = e > 0.5, a == 0
    saddles = ~minima
    first = f"Of the {len(a)} certified critical points, "
    if not hi.any():
        first += "none has high training error (>50%)"
    elif (a[hi] > 0).all():
        first += f"every one with high training error (>50%) is a saddle (α = {_span(a[hi])})"
    else:
        first += "not every one with high training error (>50%) is a saddle"
    lowest = minima.any() and saddles.any() and e[minima].max() <= e[saddles].min()
    if minima.any() and saddles.any():
        first += (f", and the minima have the lowest error ({_span(e[minima], pct=True)}, "
                  f"saddles {_span(e[saddles], pct=True)})" if lowest else
                  ", but some saddle has a lower training error than a minimum")
    agree = hi.any() and (a[hi] > 0).all() and lowest
    parts = [first + ": " + ("the direction of Dauphin et al.'s Fig. 1" if agree else
                             "too few kinds of point to test Dauphin et al.'s Fig. 1"
                             if not (minima.any() and saddles.any()) else
                             "not the order of Dauphin et al.'s Fig. 1")
             + (f" (Spearman ρ of α with the error {n['spearman_alpha_error']:.2f})."
                if n["spearman_alpha_error"] is not None else ".")]
    mid = ((lo > 1.1 * lo.min()) & (lo < 0.95 * lo.max())).sum()
    runs = sum(v["runs"] for v in n["searches"].values())
    reached = sum(v["reached"] for v in n["searches"].values())
    clusters = "two clusters" if hi.any() and (e <= 0.5).any() else "one cluster"
    parts.append((f"The continuum between does not show: the points form {clusters}, none at an "
                  f"intermediate loss; the saddle searches reached {reached} of {runs} target "
                  f"indices (plausibly, a {n['num_params']}-parameter network has few such critical "
                  "points, in nearly degenerate regions).") if mid == 0 else
                 (f"{mid} certified critical points lie" if mid != 1 else "1 certified critical point lies")
                 + " at intermediate losses, part of a continuum "
                 f"(the saddle searches reached {reached} of {runs} target indices).")
    esc = n["escape"]
    sfn = next(v for k, v in esc.items() if k.startswith("saddle-free"))
    dn = next(v for k, v in esc.items() if k.startswith("damped"))
    gd = next(v for k, v in esc.items() if k.startswith("gradient"))
    adam = next(v for k, v in esc.items() if k.startswith("Adam"))
    parts.append(
        f"Next to the index-{n['saddle_index']} saddle, saddle-free Newton "
        + (f"escapes after {sfn['escaped_after']} products and ends at loss {sfn['final_loss']:.4f}"
           if sfn["escaped_after"] is not None else "does not escape")
        + f" (gradient descent: {gd['final_loss']:.4f}, Adam: {adam['final_loss']:.4f}); damped Newton "
        + ("never gets below the saddle's loss"
           + (f" and diverges (max loss {dn['max_loss']:.3g})" if dn["max_loss"] > 10 * n["saddle_loss"] else "")
           if dn["escaped_after"] is None else f"escapes after {dn['escaped_after']} products")
        + ". The paper has damped Newton stuck at the saddle and saddle-free Newton escaping fast (Sec. 7); "
        + ("Adam, which the paper did not compare, leaves the plateau first."
           if adam["escaped_after"] is not None and (sfn["escaped_after"] is None
                                                     or adam["escaped_after"] < sfn["escaped_after"])
           else "saddle-free Newton leaves the plateau before Adam."))
    return " ".join(parts)


def run(*, small: bool = False, seed: int = 0, say=print) -> Report:
    """The whole reproduction in float64 (full: about 4-5 min on 2 CPU cores, most of it the
    saddle searches' 150 following steps; small: about 25 s)."""
    cfg = CONFIGS["small" if small else "full"]
    t0 = time.perf_counter()
    base = 1000 * seed
    with jax.enable_x64(True):
        pr = make_problem(cfg, seed=base)
        checkpoints, ends = train(pr, cfg, seed=base)
        say(f"trained {cfg.seeds} Adam runs, {len(checkpoints)} checkpoints ({time.perf_counter() - t0:.0f} s)")
        minima, found = locate(pr, cfg, checkpoints, ends, key_base=base)
        say(f"polished {len(minima)} end points; Newton-MR: {len(found.critical)} critical of "
            f"{len(found)} starts ({time.perf_counter() - t0:.0f} s)")
        between, searches, points = continuum(pr, cfg, found, minima, key_base=base,
                                              say=lambda m: None)
        say(f"continuum: {len(points['points'])} critical points ({time.perf_counter() - t0:.0f} s)")
        saddle, runs = escape(pr, cfg, points, minima, key_base=base)
        say(f"escape from the index-{saddle.index} saddle: done ({time.perf_counter() - t0:.0f} s)")
        n = _numbers(pr, found, minima, between, searches, points, saddle, runs)
    figures = {}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3), layout="constrained")
    figures["index_vs_error"] = plot_continuum(found, between, searches, points, axes)[0].figure
    fig, ax = plt.subplots(figsize=(8, 4.3), layout="constrained")
    figures["escape"] = plot_escape(runs, saddle, minima, ax).figure
    a, e = points["alpha"], points["error"]
    hi = e > 0.5
    esc = n["escape"]
    row = {k.split(" (")[0]: {**v, "escaped_after": v["escaped_after"] or "never"} for k, v in esc.items()}
    rows = (Row(quantity="certified critical points", ours=len(a), paper="-"),
            Row(quantity="high-error (>50%) critical points: index α",
                ours=_span(a[hi]) if hi.any() else "none", paper="α > 0: saddles (Fig. 1)"),
            Row(quantity="training error: minima (α = 0) / saddles",
                ours=(f"{_span(e[a == 0], pct=True) if (a == 0).any() else 'none'} / "
                      f"{_span(e[a > 0], pct=True) if (a > 0).any() else 'none'}"),
                paper="minima lowest (Fig. 1)"),
            Row(quantity="distinct indices found / saddle-search targets reached",
                ours=(f"{len(set(np.round(a * n['num_params']).astype(int)))} / "
                      f"{sum(v['reached'] for v in n['searches'].values())} of "
                      f"{sum(v['runs'] for v in n['searches'].values())}"),
                paper="a continuum of indices (Fig. 1)"),
            Row(quantity="Spearman ρ(α, training error)", ours=n["spearman_alpha_error"] if n["spearman_alpha_error"] is not None else "-",
                paper="positive, a continuum (Fig. 1)"),
            Row(quantity="saddle-free Newton: products to escape / final loss",
                ours=f"{row['saddle-free Newton']['escaped_after']} / {row['saddle-free Newton']['final_loss']:.4f}",
                paper="escapes fast (Sec. 7)"),
            Row(quantity="damped Newton: products to escape / max loss",
                ours=f"{row['damped Newton']['escaped_after']} / {row['damped Newton']['max_loss']:.3g}",
                paper="stuck at the saddle (Sec. 7)"),
            Row(quantity="gradient descent: products to escape / final loss",
                ours=f"{row['gradient descent']['escaped_after']} / {row['gradient descent']['final_loss']:.4f}",
                paper="slow (Sec. 7)"),
            Row(quantity="Adam: products to escape / final loss",
                ours=f"{row['Adam']['escaped_after']} / {row['Adam']['final_loss']:.4f}", paper="not compared"))
    return ENTRY.report(small=small, seed=seed, start=t0, rows=rows, verdict=_verdict(n),
                        figures=figures, numbers=n)


ENTRY = Entry(
    name="dauphin",
    title="Saddles, not minima: critical points' index against error; saddle-free Newton",
    citation=("Dauphin, Pascanu, Gulcehre, Cho, Ganguli & Bengio (2014), Identifying and attacking "
              "the saddle point problem in high-dimensional non-convex optimization, NeurIPS"),
    claim=("The training error of a network's critical points rises with their index (Fig. 1): "
           "high-error critical points are saddles, not minima; Newton's method is attracted to "
           "saddles, and saddle-free Newton escapes them fast (Sec. 7)."),
    notebook="09_saddles_dauphin.ipynb", run=run, full_seconds=185.0)
