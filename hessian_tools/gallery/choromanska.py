"""Minima concentrate as networks grow (Choromanska et al. 2015): one-hidden-layer tanh
networks of several widths trained from many seeds, every end point polished to a critical
point and certified a minimum by its Hessian, and the spread of the minima's losses by width.

The network is ``16 -> width -> 10`` (tanh) on 2x2-pooled digits (1000 training examples, the
other 797 for testing), with a weight decay on every parameter so that minima are strict
(no flat direction: the softmax's shift of the output biases is the only exact symmetry, and
the decay removes it). The steps (the notebook ``11_minima_spread_choromanska.ipynb`` runs
them one cell each; ``hessian-tools gallery choromanska`` runs :func:`run`, inside
``jax.enable_x64(True)``):

1. :func:`pooled_digits`, :func:`train_runs`: the data; Adam from every seed at once (vmapped,
   float32, cosine-decayed learning rate);
2. :func:`certify`: ``ht.polish`` (trust region; Newton-MR from where it stopped when it did
   not certify a minimum) in float64, then ``ht.classify_at`` at all polished points of the
   width at once (dense Hessians, batched products): the verdict and index of each;
3. :func:`spread`: train and test losses, their standard deviations, the fraction of poor
   minima and the train-test correlation by width; :func:`plot_histograms` (their Fig. 2)
   and :func:`plot_spread`.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from hessian_tools import tree
from hessian_tools._checks import check_key
from hessian_tools.analysis import classify_at, polish
from hessian_tools.examples.digits import load_digits_data
from hessian_tools.gallery._entry import Entry, Report, Row
from hessian_tools.objective import Objective
from hessian_tools.results._base import Result

__all__ = ["CONFIGS", "Config", "ENTRY", "WidthMinima", "certify", "init_params", "loss",
           "plot_histograms", "plot_spread", "pooled_digits", "run", "spread", "test_loss",
           "train_runs"]

WEIGHT_DECAY = 1e-3
TAU = 1e-6
"""Eigenvalues above ``TAU`` count as positive (float64 dense spectra are exact to ~1e-14 here;
the smallest eigenvalues of these minima are ~1e-4, the largest ~4)."""
POOR = 0.05
"""A minimum is *poor* when its training loss is more than 5% above the best of its width."""


@dataclasses.dataclass(frozen=True)
class Config:
    """The sizes of one configuration."""
    widths: tuple
    seeds: int
    num_train: int
    train_steps: int
    polish_steps: int             # trust-region steps at most (Newton-MR: half as many)
    learning_rate: float = 1e-2


CONFIGS = {
    "small": Config(widths=(2, 4), seeds=2, num_train=300, train_steps=2000, polish_steps=30),
    "full": Config(widths=(2, 4, 8, 16, 32), seeds=8, num_train=1000, train_steps=3000,
                   polish_steps=100)}


def pooled_digits(*, num_train: int = 1000):
    """``(train, test)``: digits pooled 2x2 to 16 inputs, the first ``num_train`` examples
    for training and the rest for testing, float64 inputs when x64 is on."""
    x, y = load_digits_data(dtype=jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    x = x.reshape(-1, 4, 2, 4, 2).mean((2, 4)).reshape(-1, 16)
    return (x[:num_train], y[:num_train]), (x[num_train:], y[num_train:])


def _logits(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def test_loss(p, batch):
    """The mean softmax cross-entropy of the network ``p`` on ``batch`` (no weight decay)."""
    return optax.softmax_cross_entropy_with_integer_labels(_logits(p, batch[0]), batch[1]).mean()


def loss(p, batch):
    """The training objective: cross-entropy plus ``WEIGHT_DECAY / 2 ||p||^2`` (every leaf)."""
    decay = sum(jnp.sum(a ** 2) for a in jax.tree.leaves(p))
    return test_loss(p, batch) + WEIGHT_DECAY / 2 * decay


def init_params(key, width: int, *, dtype=jnp.float32):
    """Gaussian weights (variance 1/fan-in), zero biases, for ``16 -> width -> 10``."""
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (16, width), dtype) / 4.0,
            "b1": jnp.zeros(width, dtype),
            "w2": jax.random.normal(k2, (width, 10), dtype) / np.sqrt(width),
            "b2": jnp.zeros(10, dtype)}


def train_runs(width: int, train, *, seeds: int, steps: int, key, learning_rate: float = 1e-2):
    """Full-batch Adam (cosine decay to 1% of ``learning_rate``) from ``seeds``
    initialisations at once, in float32 (vmapped over the seeds, one compiled scan).

    Cost: ``seeds * steps`` gradients. Returns the end points as a list of parameter
    pytrees, float64 when x64 is on (ready to polish)."""
    check_key(key, "train_runs")
    data = (jnp.asarray(train[0], jnp.float32), train[1])
    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01))
    params = jax.vmap(lambda k: init_params(k, width))(jax.random.split(key, seeds))

    @jax.jit
    def fit(params):
        def step(carry, _):
            p, s = carry
            u, s = jax.vmap(opt.update)(jax.vmap(jax.grad(loss), (0, None))(p, data), s)
            return (optax.apply_updates(p, u), s), None
        return jax.lax.scan(step, (params, jax.vmap(opt.init)(params)), None, length=steps)[0][0]

    end = fit(params)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    return [jax.tree.map(lambda a: jnp.asarray(a[i], dtype), end) for i in range(seeds)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class WidthMinima(Result):
    """The polished end points of one width, classified.

    Attributes:
      width: hidden units.
      num_params: parameters of the network.
      train_loss: the objective (cross-entropy + weight decay) at every polished point.
      test_loss: the test cross-entropy there.
      test_error: the test classification error there.
      start_grad_norm: the gradient norm at each training end point.
      grad_norm: the gradient norm at each polished point.
      polished_by: per point, the method whose point is kept (``"trust-region"`` or
        ``"newton-mr"`` when the trust region did not certify a minimum).
      polish_status: per point, the kept polish's status (``"critical"``, ...).
      polish_steps: per point, the iterations spent (both methods).
      fallback: per point, what Newton-MR reached from the trust region's end point
        (``"status, verdict, index k, |grad| g"``), or ``"-"`` where it was not needed.
      verdicts: per point, ``ht.classify_at``'s verdict (``tau = TAU``).
      indices: per point, the number of eigenvalues below ``-TAU``.
      lambda_min: per point, the smallest Hessian eigenvalue.
      lambda_max: per point, the largest.
    """

    width: int
    num_params: int
    train_loss: np.ndarray
    test_loss: np.ndarray
    test_error: np.ndarray
    start_grad_norm: np.ndarray
    grad_norm: np.ndarray
    polished_by: tuple
    polish_status: tuple
    polish_steps: tuple
    fallback: tuple
    verdicts: tuple
    indices: tuple
    lambda_min: np.ndarray
    lambda_max: np.ndarray

    _arrays = ("train_loss", "test_loss", "test_error", "start_grad_norm", "grad_norm",
               "lambda_min", "lambda_max")
    _tuples = ("polished_by", "polish_status", "polish_steps", "fallback", "verdicts",
               "indices")

    @property
    def certified(self) -> np.ndarray:
        """Per point: critical (gradient within tolerance) and a strict minimum."""
        return np.array([v == "minimum" for v in self.verdicts])


def certify(obj: Objective, ends, test, *, key, polish_steps: int = 150) -> WidthMinima:
    """Polish every end point and certify it: ``ht.polish(method="trust-region")``; where that
    does not certify a minimum, ``ht.polish(method="newton-mr")`` from where it stopped (the
    point is kept only if it certifies: Newton-MR goes to the nearest critical point, which may
    be a saddle); then
    ``ht.classify_at`` at all kept points at once with ``tau = TAU`` (float64, dense Hessians).

    Cost: per point up to ``polish_steps`` trust-region steps (each at most 100
    Hessian-vector products) and a dense classification (``num_params`` products) per
    polish, then one batched dense classification of all points."""
    check_key(key, "certify")
    start = time.perf_counter()
    opts = {"tau": TAU, "probe": False}
    kept, by, status, steps, starts, fallback, matvecs = [], [], [], [], [], [], 0
    for i, (p, k) in enumerate(zip(ends, jax.random.split(key, len(ends)))):
        k1, k2 = jax.random.split(k)
        res = polish(obj, p, key=k1, method="trust-region", max_steps=polish_steps,
                     classify_options=opts)
        used, matvecs = res.newton_steps, matvecs + res.num_matvecs
        starts.append(res.grad_norms[0])
        fallback.append("-")
        if not res.certified_minimum:
            alt = polish(obj, res.params, key=k2, method="newton-mr",
                         max_steps=max(1, polish_steps // 2), classify_options=opts)
            used, matvecs = used + alt.newton_steps, matvecs + alt.num_matvecs
            fallback[-1] = (f"{alt.status}, {alt.verdict}, index {alt.index}, "
                            f"|grad| {alt.grad_norm:.1e}")
            if alt.certified_minimum:
                res = alt
        kept.append(res.params)
        by.append(res.method)
        status.append(res.status)
        steps.append(used)
    reports = classify_at(obj, kept, key=jax.random.fold_in(key, 1), tau=TAU, probe=False)
    err = [float(jnp.mean(jnp.argmax(_logits(p, test[0]), -1) != test[1])) for p in kept]
    return WidthMinima(
        width=int(obj.params["w1"].shape[1]), num_params=obj.num_params,
        train_loss=np.array([r.loss for r in reports]),
        test_loss=np.array([float(test_loss(p, test)) for p in kept]),
        test_error=np.array(err), start_grad_norm=np.array(starts),
        grad_norm=np.array([r.grad_norm for r in reports]), polished_by=tuple(by),
        polish_status=tuple(status), polish_steps=tuple(steps), fallback=tuple(fallback),
        verdicts=reports.verdicts,
        indices=tuple(-1 if r.index is None else int(r.index) for r in reports),
        lambda_min=np.array([r.lambda_min for r in reports]),
        lambda_max=np.array([r.lambda_max for r in reports]),
        num_matvecs=matvecs + reports.num_matvecs, wall_time=time.perf_counter() - start,
        seed=tree.key_bits(key), operator="hessian")


def spread(results) -> dict:
    """The statistics by width (numpy arrays, in the order of ``results``): ``std_train``,
    ``std_test`` (sample standard deviations), ``mean_test``, ``poor`` (fraction of points
    whose training loss is more than ``POOR`` above the best of their width), ``corr`` (the
    Pearson correlation of train and test loss; NaN when either is constant), ``certified``
    (fraction certified minima)."""
    def corr(r):
        if np.std(r.train_loss) == 0 or np.std(r.test_loss) == 0:
            return float("nan")
        return float(np.corrcoef(r.train_loss, r.test_loss)[0, 1])
    return {"widths": np.array([r.width for r in results]),
            "std_train": np.array([np.std(r.train_loss, ddof=1) for r in results]),
            "std_test": np.array([np.std(r.test_loss, ddof=1) for r in results]),
            "mean_test": np.array([np.mean(r.test_loss) for r in results]),
            "poor": np.array([np.mean(r.train_loss > (1 + POOR) * r.train_loss.min())
                              for r in results]),
            "corr": np.array([corr(r) for r in results]),
            "certified": np.array([np.mean(r.certified) for r in results])}


def plot_histograms(results, ax=None):
    """Their Fig. 2: the distribution of the test loss at the polished end points, one
    histogram per width; the hatched part counts the points not certified minima."""
    ax = plt.gca() if ax is None else ax
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(results)))
    lo = min(r.test_loss.min() for r in results)
    hi = max(r.test_loss.max() for r in results)
    bins = np.linspace(lo, hi + 1e-9, 60)
    for r, c in zip(results, colors):
        bad = int((~r.certified).sum())
        label = f"width {r.width}" + (f" ({bad} of {len(r.verdicts)} not certified, hatched)"
                                      if bad else " (all certified)")
        ax.hist(r.test_loss, bins=bins, histtype="stepfilled", alpha=0.35, color=c)
        ax.hist(r.test_loss, bins=bins, histtype="step", color=c, lw=1.5, label=label)
        if bad:
            ax.hist(r.test_loss[~r.certified], bins=bins, histtype="step", color=c, lw=0,
                    hatch="///")
    ax.set(xlabel="test loss (cross-entropy) at the polished end point", ylabel="runs",
           title="test loss of the minima by hidden width (their Fig. 2)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_spread(results, ax=None):
    """The standard deviation of the train and test losses of the minima against the width
    (log-log)."""
    ax = plt.gca() if ax is None else ax
    s = spread(results)
    ax.loglog(s["widths"], s["std_test"], "o-", label="test loss")
    ax.loglog(s["widths"], s["std_train"], "s--", label="training objective")
    ax.set(xlabel="hidden units", ylabel="std over seeds",
           title="spread of the minima's losses")
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xticks(s["widths"], [str(w) for w in s["widths"]])
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return ax


def _verdict(n: dict) -> str:
    w, sd = n["widths"], np.asarray(n["std_test"])
    falls = sd[-1] < sd[0]
    monotone = bool(np.all(np.diff(sd) <= 0))
    cert, total = n["num_certified"], n["num_points"]
    text = (f"The spread of the minima's test loss {'falls' if falls else 'does not fall'} "
            f"with the width: its standard deviation over {n['seeds']} seeds goes from "
            f"{sd[0]:.3g} at {w[0]} hidden units to {sd[-1]:.3g} at {w[-1]} "
            f"({sd[0] / max(sd[-1], 1e-300):.3g}x), "
            f"{'monotonically' if monotone else 'though not monotonically'}; "
            f"Choromanska et al. (Fig. 2) report the same narrowing for 25-500 ReLU units on "
            f"MNIST, where {'we agree' if falls else 'we disagree'}. ")
    poor = np.asarray(n["poor"])
    text += (f"Poor minima (training objective more than {POOR:.0%} above the best of the "
             f"width) make up {poor[0]:.0%} of the runs at width {w[0]} and {poor[-1]:.0%} at "
             f"width {w[-1]}"
             + (", becoming rare as the paper says. " if poor[-1] < poor[0] or poor[0] == 0
                else ", not rarer, unlike the paper. "))
    text += (f"Unlike the paper, which took SGD's end points as minima, every end point here "
             f"was polished to a critical point and its dense float64 Hessian inspected: "
             f"{cert} of {total} are certified strict minima")
    if cert < total:
        idx = n["uncertified"]
        text += (f"; the others ({len(idx)}) are "
                 + ", ".join(f"width {u['width']}: {u['verdict']} (index {u['index']}, "
                             f"|grad| {u['grad_norm']:.1e})" for u in idx[:6])
                 + ("..." if len(idx) > 6 else ""))
    frac = np.asarray(n["certified"])
    text += (f". The certified fraction {'falls' if frac[-1] < frac[0] else 'does not fall'} "
             f"with the width ({frac[0]:.0%} at {w[0]} units, {frac[-1]:.0%} at {w[-1]}): the "
             "points not certified stopped where the Hessian still has small negative "
             "eigenvalues (lambda_min down to "
             f"{n['lambda_min_uncertified']:.1e}, against lambda_max ~{n['lambda_max']:.2g}) "
             "with a gradient the polish did not bring to zero within its budget, so they "
             "are points still on their way down (a plateau or a shallow saddle)"
             if cert < total else "")
    if np.isfinite(n["uncertified_gap"]):
        text += (f"; where a width has both, the mean training objective of those not "
                 f"certified differs from the certified minima's by at most "
                 f"{n['uncertified_gap']:.2g}")
    corr = np.asarray(n["corr"])
    text += (f". The correlation of train and test loss across seeds goes from "
             f"{corr[0]:.2f} (width {w[0]}) to {corr[-1]:.2f} (width {w[-1]}), "
             + ("falling at every width, as in the paper"
                if np.all(np.diff(corr) <= 0) else
                "not falling steadily as in the paper"
                + (f" (between: {', '.join(f'{c:.2f}' for c in corr[1:-1])})"
                   if len(corr) > 2 else "")
                + ": where both spreads are ~1e-3 the correlation over a few seeds is noise")
             + ". The trust region certified "
             f"{n['by_trust_region']} of them and Newton-MR (from where the trust region "
             f"stopped) {n['by_newton_mr']}. Differences from the paper: digits (1797 8x8 "
             "images pooled to 4x4) instead of MNIST, tanh with a small weight decay (so that "
             "minima are strict and the Hessian can certify them) instead of ReLU, widths "
             f"{w[0]}-{w[-1]} instead of 25-500, and {n['seeds']} seeds per width instead of "
             "1000, so the histograms are coarse; the trend, not the shape, is compared.")
    return text


def run(*, small: bool = False, seed: int = 0, say=print) -> Report:
    """The whole reproduction: train every width from every seed, certify every end point,
    measure the spread; figures and our numbers beside the paper's (float64 inside
    ``jax.enable_x64(True)``)."""
    cfg = CONFIGS["small" if small else "full"]
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        train, test = pooled_digits(num_train=cfg.num_train)
        results = []
        for j, width in enumerate(cfg.widths):
            key = jax.random.fold_in(jax.random.key(seed), width)
            ends = train_runs(width, train, seeds=cfg.seeds, steps=cfg.train_steps,
                              key=key, learning_rate=cfg.learning_rate)
            obj = Objective(loss, ends[0], train)
            res = certify(obj, ends, test, key=jax.random.fold_in(key, 1),
                          polish_steps=cfg.polish_steps)
            results.append(res)
            say(f"width {width}: {res.num_params} parameters, {int(res.certified.sum())}/"
                f"{cfg.seeds} certified minima, test loss {res.test_loss.mean():.4f} +- "
                f"{res.test_loss.std(ddof=1):.2g} ({time.perf_counter() - t0:.0f} s)")
    s = spread(results)
    uncert = [{"width": r.width, "seed": i, "verdict": r.verdicts[i], "index": r.indices[i],
               "grad_norm": float(r.grad_norm[i])}
              for r in results for i in np.flatnonzero(~r.certified)]
    kept = [m for r in results for m, c in zip(r.polished_by, r.certified) if c]
    n = {k: v.tolist() for k, v in s.items()} | {
        "seeds": cfg.seeds, "num_train": cfg.num_train, "train_steps": cfg.train_steps,
        "num_points": sum(len(r.verdicts) for r in results),
        "num_certified": int(sum(r.certified.sum() for r in results)),
        "uncertified": uncert, "by_trust_region": kept.count("trust-region"),
        "by_newton_mr": kept.count("newton-mr"),
        "lambda_min_uncertified": float(min((r.lambda_min[~r.certified].min() for r in results
                                             if (~r.certified).any()), default=0.0)),
        "lambda_max": float(max(r.lambda_max.max() for r in results)),
        "uncertified_gap": float(max((abs(r.train_loss[~r.certified].mean() -
                                          r.train_loss[r.certified].mean())
                                      for r in results if 0 < r.certified.sum() < len(r.verdicts)),
                                     default=float("nan"))),
        "runs": [r.to_dict() for r in results]}
    w = cfg.widths
    rows = (Row(quantity=f"test-loss std over seeds, width {w[0]} -> {w[-1]}",
                ours=f"{s['std_test'][0]:.3g} -> {s['std_test'][-1]:.3g}",
                paper="shrinks as the width grows, 25 -> 500 units (Fig. 2)"),
            Row(quantity=f"training-objective std, width {w[0]} -> {w[-1]}",
                ours=f"{s['std_train'][0]:.3g} -> {s['std_train'][-1]:.3g}",
                paper="the minima lie in a band that narrows with size (Sec. 1, 5)"),
            Row(quantity=f"poor minima (> {POOR:.0%} above the width's best), width "
                         f"{w[0]} -> {w[-1]}",
                ours=f"{s['poor'][0]:.0%} -> {s['poor'][-1]:.0%}",
                paper="non-zero for small nets, vanishing for large (Sec. 1, 6)"),
            Row(quantity="end points certified strict minima (polish + classify_at)",
                ours=f"{n['num_certified']}/{n['num_points']}",
                paper="SGD's end points taken as minima; not checked"),
            Row(quantity=f"certified fraction, width {w[0]} -> {w[-1]}",
                ours=f"{s['certified'][0]:.0%} -> {s['certified'][-1]:.0%}", paper="-"),
            Row(quantity="index of those not certified (negative eigenvalues below -1e-6)",
                ours=", ".join(str(i) for i in sorted({u["index"] for u in uncert})) or "none",
                paper="-"),
            Row(quantity=f"train-test loss correlation, width {w[0]} -> {w[-1]}",
                ours=f"{s['corr'][0]:.2f} -> {s['corr'][-1]:.2f}",
                paper="falls as the network grows (Sec. 6)"))
    figures = {}
    for stem, draw, size in (("histograms", plot_histograms, (9, 4.5)),
                             ("spread", plot_spread, (6, 4.2))):
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        draw(results, ax=ax)
        figures[stem] = fig
    return ENTRY.report(small=small, seed=seed, start=t0, rows=rows, verdict=_verdict(n),
                        figures=figures, numbers=n)


ENTRY = Entry(
    name="choromanska",
    title="Minima concentrate in larger networks: the spread of their losses shrinks with width",
    citation=("Choromanska, Henaff, Mathieu, Ben Arous & LeCun (2015), The loss surfaces of "
              "multilayer networks, AISTATS"),
    claim=("For larger networks the losses of the minima reached from different "
           "initialisations concentrate in a narrow band and poor minima become rare (Fig. 2: "
           "the distribution of test losses narrows as the hidden layer grows)."),
    notebook="11_minima_spread_choromanska.ipynb", run=run, full_seconds=330.0)
