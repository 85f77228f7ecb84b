"""Keskar et al. 2017: large-batch training finds sharper minima.

Two solutions of the same network from one initialisation, Adam with one learning rate,
a small batch (32) against the full batch, each trained to the same training loss; then
four sharpness measures at both (``lambda_max``, the Hessian trace, Keskar et al.'s
epsilon-sharpness in the full space and in a random subspace) and the loss on the line
through both (their Fig. 3). Notebook: ``notebooks/08_large_vs_small_batch.ipynb``;
``hessian-tools gallery keskar --out DIR`` runs the same steps.
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
from hessian_tools.analysis import eigenvalues, epsilon_sharpness, trace
from hessian_tools.examples import digits
from hessian_tools.gallery._entry import Entry, Report, Row
from hessian_tools.landscape import (accuracy, difference_direction, interpolate, loss_surface,
                                     plot_interpolation)
from hessian_tools.objective import Objective
from hessian_tools.operators import hessian, value_and_grad

__all__ = ["CONFIGS", "Config", "ENTRY", "accuracy_of", "at_alpha", "fit", "line",
           "measure", "plot_line", "plot_sharpness", "plot_training", "run", "setup"]

NUM_TRAIN = 1297
EPSILON = 1e-3


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The sizes of one run.

    Attributes:
      target: training loss at which both runs stop.
      lr: Adam's learning rate, the same for both runs.
      small_batch: the small batch size (the large one is the whole training set).
      eps_steps, eps_starts: the epsilon-sharpness box solver's steps and starts.
      num_alpha: points on the line ``alpha in [-1, 2]``.
      num_segment: points on the segment ``t in [0, 1]``.
    """

    target: float
    lr: float = 1e-2
    small_batch: int = 32
    eps_steps: int
    eps_starts: int
    num_alpha: int
    num_segment: int


CONFIGS = {"small": Config(target=0.1, eps_steps=5, eps_starts=1, num_alpha=13, num_segment=21),
           "full": Config(target=0.01, eps_steps=50, eps_starts=3, num_alpha=61, num_segment=41)}


def setup(seed: int = 0):
    """Digits split into 1,297 training and 500 test images (permutation drawn from ``seed``)
    and the objective of ``mlp-small`` (64-32-32-10 tanh, 3,466 parameters) on the training
    set. Returns ``(obj, train, test)``."""
    x, y = digits.load_digits_data()
    perm = np.asarray(jax.random.permutation(jax.random.key(seed), len(y)))
    train = (x[perm[:NUM_TRAIN]], y[perm[:NUM_TRAIN]])
    test = (x[perm[NUM_TRAIN:]], y[perm[NUM_TRAIN:]])
    model = digits.make_model("mlp-small", seed=seed)
    return Objective.from_nnx(model, digits.cross_entropy, train), train, test


def fit(obj: Objective, batch_size: int | None, *, key, lr: float, target: float,
        max_epochs: int = 500):
    """Adam from ``obj.params`` over epochs (a fresh permutation each; a full-batch "epoch",
    ``batch_size=None``, is 10 steps) until the training loss on the whole training set is
    at most ``target``. Cost: one forward and backward pass per example per epoch.

    Returns:
      ``(params, history)``: the solution and an array of ``(steps, training loss)`` rows,
      one per epoch.
    """
    train = obj.data
    n = len(train[1])
    opt = optax.adam(lr)

    @jax.jit
    def epoch(p, s, idx):
        def step(carry, i):
            p, s = carry
            g = jax.grad(obj.loss)(p, jax.tree.map(lambda a: a[i], train))
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        (p, s), _ = jax.lax.scan(step, (p, s), idx)
        return p, s, obj.loss(p, train)

    p, s, history, steps = obj.params, opt.init(obj.params), [], 0
    for _ in range(max_epochs):
        key, k = jax.random.split(key)
        idx = (jnp.tile(jnp.arange(n), (10, 1)) if batch_size is None else
               jax.random.permutation(k, n)[: n // batch_size * batch_size]
               .reshape(-1, batch_size))
        p, s, loss = epoch(p, s, idx)
        steps += idx.shape[0]
        history.append((steps, float(loss)))
        if loss <= target:
            break
    return p, np.array(history)


def accuracy_of(obj: Objective, params, data) -> float:
    """Fraction of ``data`` classified correctly at ``params`` (one forward pass)."""
    return float(jnp.mean(jnp.argmax(obj.predict(params, data), -1) == data[1]))


def measure(obj: Objective, params, *, key, eps_steps: int, eps_starts: int) -> dict:
    """The four sharpness measures at ``params``: ``lambda_max`` (Lanczos, k = 1), the
    Hessian trace (Hutch++, with its standard error), the epsilon-sharpness (eps = 1e-3, in %
    of ``1 + L``) in the full space and in a random 100-dimensional subspace (the same one
    for every point: its key is fixed), plus the gradient norm and the first-order part of
    the full-space box maximum, ``eps sum_i |g_i| (|x_i| + 1)``. Cost: a few hundred
    Hessian-vector products and ``eps_steps * eps_starts`` loss-and-gradient evaluations
    per box."""
    at = obj.with_params(params)
    k_eig, k_tr, k_eps = jax.random.split(key, 3)
    H = hessian(at)
    eig = eigenvalues(H, k=1, key=k_eig)
    tr = trace(H, key=k_tr)
    eps = epsilon_sharpness(at, epsilon=EPSILON, key=k_eps, steps=eps_steps,
                            num_starts=eps_starts)
    eps_sub = epsilon_sharpness(at, epsilon=EPSILON, key=jax.random.key(40), subspace="random",
                                steps=eps_steps, num_starts=eps_starts)
    loss, g = value_and_grad(at)
    flat_g, flat_x = (np.abs(np.asarray(tree.ravel(t), np.float64)) for t in (g, params))
    return {"lambda_max": float(eig.largest[0]), "trace": float(tr.value),
            "trace_stderr": float(tr.stderr), "eps": float(eps.value),
            "eps_sub": float(eps_sub.value), "eps_stops": list(eps.stops),
            "grad_norm": float(np.linalg.norm(flat_g)),
            "first_order": 100 * EPSILON * float(flat_g @ (flat_x + 1)) / (1 + float(loss))}


def line(obj: Objective, p_sb, p_lb, test, *, num_alpha: int, num_segment: int) -> dict:
    """The loss between and beyond the two solutions: ``interpolate`` on the segment
    (training set, with its barrier and accuracy) and ``loss_surface`` along
    ``difference_direction(p_sb, p_lb)`` on ``alpha in [-1, 2]`` on the training and the test
    set. Cost: ``num_segment + 2 num_alpha`` evaluations of the loss and accuracy.

    Returns:
      ``{"segment": InterpolationPath, "alpha": array, "train": LossSurface,
      "test": LossSurface}``.
    """
    seg = interpolate(obj, p_sb, p_lb, num_points=num_segment, metric=accuracy)
    alpha = np.linspace(-1.0, 2.0, num_alpha)
    d = difference_direction(p_sb, p_lb)
    out = {"segment": seg, "alpha": alpha}
    for part, data in (("train", obj.data), ("test", test)):
        out[part] = loss_surface(obj.with_data(data).with_params(p_sb), d, grid=(alpha,),
                                 metric=accuracy)
    return out


def plot_training(history: dict, target: float, ax=None):
    """Training loss against optimizer steps, one curve per run (``{name: history}``)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
    for name, h in history.items():
        ax.semilogy(h[:, 0], h[:, 1], "o-", ms=3, label=name)
    ax.axhline(target, color="0.4", ls=":", label=f"target {target}")
    ax.set(xlabel="optimizer steps", ylabel="training loss (whole training set)",
           title="training to the same loss", xscale="log")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


_PANELS = [("lambda_max", "λ_max (top Hessian eigenvalue)"),
           ("trace", "Hessian trace (Hutch++, ± 1 s.e.)"),
           ("eps", "ε-sharpness, full space (ε = 1e-3), %"),
           ("eps_sub", "ε-sharpness, random 100-dim subspace, %")]


def plot_sharpness(rows: dict, axes=None):
    """One bar chart per measure, small batch against full batch (``{name: measure(...)}``,
    small batch first). Returns the four axes."""
    if axes is None:
        _, axes = plt.subplots(1, 4, figsize=(15, 3.6), layout="constrained")
    labels = [name.replace(" (", "\n(") for name in rows]
    for ax, (key, title) in zip(axes, _PANELS):
        err = [r["trace_stderr"] for r in rows.values()] if key == "trace" else None
        ax.bar(labels, [r[key] for r in rows.values()], yerr=err, color=["C0", "C1"], capsize=4)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    return axes


def plot_line(found: dict, axes=None):
    """Left: the segment (``plot_interpolation``); right: training and test loss (log scale)
    and accuracy on the line ``alpha in [-1, 2]`` (Keskar et al., Fig. 3). Returns both
    axes."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(13, 4.4), layout="constrained")
    seg, alpha = found["segment"], found["alpha"]
    plot_interpolation(seg, ax=axes[0])
    axes[0].set_xlabel("t   (0: small batch, 1: full batch)")
    axes[0].set_title(f"segment between the two solutions (training set), "
                      f"||x_LB − x_SB|| = {seg.distance:.2f}", fontsize=10)
    ax, twin = axes[1], axes[1].twinx()
    for part, ls in (("train", "-"), ("test", "--")):
        ax.semilogy(alpha, found[part].values, "C0" + ls, lw=1.8, label=f"{part} loss")
        twin.plot(alpha, found[part].metric, "C3" + ls, lw=1.3, label=f"{part} accuracy")
    for a0, lab in ((0, "SB"), (1, "LB")):
        ax.axvline(a0, color="0.5", ls=":")
        ax.text(a0, 0.03, f" {lab}", transform=ax.get_xaxis_transform(), ha="left")
    ax.set(xlabel="α   (x = x_SB + α (x_LB − x_SB))", ylabel="cross-entropy (log scale)")
    ax.set_title("the line through both solutions, α ∈ [−1, 2] (Keskar et al., Fig. 3)",
                 fontsize=10)
    twin.set_ylabel("accuracy", color="C3")
    twin.set_ylim(0, 1.02)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4,
              fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return axes


def at_alpha(found: dict, part: str, a: float) -> tuple[float, float]:
    """Loss and accuracy of ``part`` ("train" or "test") at the grid point nearest ``a``."""
    i = int(np.argmin(np.abs(found["alpha"] - a)))
    return float(found[part].values[i]), float(found[part].metric[i])


def _verdict(n: dict) -> str:
    lam, tr, eps, sub = (n[f"ratio_{k}"] for k in ("lambda_max", "trace", "eps", "eps_sub"))
    gap = n["test_acc_sb"] - n["test_acc_lb"]
    curv = ("sharper" if lam > 1 and tr > 1 else "not uniformly sharper")
    text = (f"By the Hessian's measures the full-batch solution is {curv}, as Keskar et al. "
            f"claim, but by {lam:.2f}x in λ_max and {tr:.2f}x in the trace rather than the "
            f"one to two orders of magnitude of their ε-sharpness (Table 3). ")
    if abs(gap) < 0.01:
        text += (f"There is no generalisation gap (test accuracy {n['test_acc_sb']:.3f} small "
                 f"batch, {n['test_acc_lb']:.3f} full batch): digits is small and easy, and a "
                 "full-batch Adam run to a fixed loss is not their regime of a large batch "
                 "trained for a fixed number of epochs. ")
    else:
        text += (f"The test accuracy is {n['test_acc_sb']:.3f} (small batch) against "
                 f"{n['test_acc_lb']:.3f} (full batch): " +
                 ("a gap in their direction. " if gap > 0 else
                  "the full batch generalises better here, the reverse of their Table 2. "))
    if eps < 1:
        text += (f"The ε-sharpness points the other way ({eps:.2f}x full space, {sub:.2f}x in "
                 "a random subspace): at equal training loss the small-batch point keeps a "
                 f"gradient from its minibatch noise (norm {n['grad_norm_sb']:.1e} against "
                 f"{n['grad_norm_lb']:.1e}), and the first-order term ε Σ|g_i|(|x_i|+1) is "
                 f"{n['first_order_sb']:.3f}% of the small-batch box maximum "
                 f"{n['eps_sb']:.3f}%: Keskar et al.'s box measures slope along with "
                 "curvature. ")
    else:
        text += (f"The ε-sharpness agrees in direction ({eps:.2f}x full space, {sub:.2f}x "
                 "subspace). ")
    text += (f"On the line through both, the training loss {n['train_beyond_lb']:.3f} at "
             f"α = 1.5 against {n['train_beyond_sb']:.3f} at α = −0.5, with a barrier of "
             f"{n['barrier']:.4f} between them: " +
             ("one valley, slightly steeper beyond the full-batch end, in the direction of "
              "their Fig. 3 but far less pronounced." if n["train_beyond_lb"] >
              n["train_beyond_sb"] else "not steeper beyond the full-batch end, unlike their "
              "Fig. 3."))
    return text


def run(*, small: bool = False, seed: int = 0, say=print) -> Report:
    """Train both, measure both, the line through both; the figures and the verdict."""
    cfg = CONFIGS["small" if small else "full"]
    start = time.perf_counter()
    obj, train, test = setup(seed)
    names = {"small batch (32)": cfg.small_batch, f"full batch ({NUM_TRAIN})": None}
    sol, hist = {}, {}
    for name, b in names.items():
        sol[name], hist[name] = fit(obj, b, key=jax.random.key(seed + 1), lr=cfg.lr,
                                    target=cfg.target)
    (sb, p_sb), (lb, p_lb) = sol.items()
    say(f"trained both to loss {cfg.target} ({time.perf_counter() - start:.1f} s)")
    rows = {name: measure(obj, p, key=jax.random.key(seed + 10 + i), eps_steps=cfg.eps_steps,
                          eps_starts=cfg.eps_starts) for i, (name, p) in enumerate(sol.items())}
    say(f"sharpness at both ({time.perf_counter() - start:.1f} s)")
    found = line(obj, p_sb, p_lb, test, num_alpha=cfg.num_alpha, num_segment=cfg.num_segment)
    say(f"the line through both ({time.perf_counter() - start:.1f} s)")

    n = {}
    for tag, name in (("sb", sb), ("lb", lb)):
        p = sol[name]
        n.update({f"steps_{tag}": int(hist[name][-1, 0]),
                  f"train_loss_{tag}": float(obj.loss(p, train)),
                  f"test_loss_{tag}": float(obj.loss(p, test)),
                  f"train_acc_{tag}": accuracy_of(obj, p, train),
                  f"test_acc_{tag}": accuracy_of(obj, p, test)})
        n.update({f"{k}_{tag}": v for k, v in rows[name].items()})
    for k in ("lambda_max", "trace", "eps", "eps_sub"):
        n[f"ratio_{k}"] = rows[lb][k] / rows[sb][k]
    seg = found["segment"]
    n.update({"distance": float(seg.distance), "barrier": float(seg.barrier),
              "barrier_t": float(seg.barrier_t), "segment_min_acc": float(seg.metric.min())})
    for part in ("train", "test"):
        (n[f"{part}_beyond_sb"], n[f"{part}_acc_beyond_sb"]) = at_alpha(found, part, -0.5)
        (n[f"{part}_beyond_lb"], n[f"{part}_acc_beyond_lb"]) = at_alpha(found, part, 1.5)

    table = [
        Row(quantity="test accuracy, small / full batch",
            ours=f"{n['test_acc_sb']:.3f} / {n['test_acc_lb']:.3f}",
            paper="LB lower by 1-5 points (Table 2)"),
        Row(quantity="λ_max, full / small batch", ours=n["ratio_lambda_max"],
            paper="- (ε-sharpness stands in)"),
        Row(quantity="Hessian trace, full / small batch", ours=n["ratio_trace"], paper="-"),
        Row(quantity="ε-sharpness (ε = 1e-3, full space), full / small batch",
            ours=n["ratio_eps"], paper="~170 (F1: 205 vs 1.23, Table 3)"),
        Row(quantity="ε-sharpness, random 100-dim subspace, full / small batch",
            ours=n["ratio_eps_sub"], paper="> 1 (Table 4)"),
        Row(quantity="training loss at α = 1.5 / α = −0.5 (beyond LB / beyond SB)",
            ours=n["train_beyond_lb"] / n["train_beyond_sb"], paper="> 1, steep at LB (Fig. 3)"),
        Row(quantity="barrier on the segment", ours=n["barrier"], paper="~0 (Fig. 3)"),
    ]
    figures = {}
    fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
    figures["training"] = plot_training(hist, cfg.target, ax=ax).figure
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), layout="constrained")
    plot_sharpness(rows, axes=axes)
    figures["sharpness"] = fig
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), layout="constrained")
    plot_line(found, axes=axes)
    figures["line"] = fig
    return ENTRY.report(small=small, seed=seed, start=start, rows=tuple(table), verdict=_verdict(n),
                        figures=figures, numbers=n)


ENTRY = Entry(
    name="keskar",
    title="Large-batch training finds sharper minima (Keskar et al. 2017)",
    citation="Keskar, Mudigere, Nocedal, Smelyanskiy & Tang (2017), On large-batch training "
             "for deep learning: generalization gap and sharp minima, ICLR.",
    claim="Large-batch solutions reach the same training loss as small-batch ones but "
          "generalise worse and are sharper: larger ε-sharpness (Tables 3-4) and a narrower "
          "dip on the line through both (Fig. 3).",
    notebook="08_large_vs_small_batch.ipynb",
    run=run,
    full_seconds=6.4,  # benchmarks/RESULTS_science.md (under the bench lock)
)
