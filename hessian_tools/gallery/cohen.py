"""Cohen et al. 2021 and 2022: training at the edge of stability.

Full-batch gradient descent at step size ``eta`` drives the sharpness (``lambda_max`` of the
training-loss Hessian) up until it reaches ``2 / eta`` and then hovers there while the loss
keeps falling; gradient flow (the small-step limit) follows the same rise without the
ceiling; Adam's *preconditioned* sharpness ``lambda_max(P^-1 H)`` hovers at its own
threshold ``(2 + 2 beta1) / ((1 - beta1) eta) = 38 / eta``. Here with a tanh MLP on a digits
subset, for the squared error and the cross-entropy. Notebook: the last section of
``notebooks/04_sharpness_and_optimizers.ipynb``; ``hessian-tools gallery cohen --out DIR``
runs the same steps.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from hessian_tools.examples import digits
from hessian_tools.gallery._entry import Entry, Report, Row
from hessian_tools.objective import Objective
from hessian_tools.results import GradientFlow, OptimizerComparison
from hessian_tools.training import compare_optimizers, gradient_flow

__all__ = ["CONFIGS", "Config", "ENTRY", "adam_runs", "edge_ratio", "flow", "gd_runs",
           "plot_adam", "plot_gd", "run", "setup"]

LOSSES = ("mse", "cross-entropy")
EDGE = (0.85, 1.35)
"""A run is at the edge of stability when its median ratio to the threshold is in here."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The sizes of one run.

    Attributes:
      num_examples: digits examples trained on (all of them in every step).
      label_noise: the fraction of them whose label is replaced by a random class (a
        harder fit, as Cohen et al.'s CIFAR-10 subset is: on clean digits the cross-entropy
        drops to zero before the sharpness can settle).
      mse_lrs, ce_lrs: gradient descent's step sizes for the squared error and the
        cross-entropy.
      gd_steps: steps of each gradient descent run.
      adam_lrs: Adam's step sizes (squared error).
      adam_steps: steps of each Adam run.
      every: steps between sharpness measurements.
      flow_points: output times of the gradient flow (each with a sharpness).
      alpha: the flow's step control, ``dt = alpha / lambda_max`` (Cohen et al.).
    """

    num_examples: int
    label_noise: float = 0.3
    mse_lrs: tuple = (0.1, 0.2, 0.3)
    ce_lrs: tuple = (0.2, 0.4, 0.8)
    gd_steps: int
    adam_lrs: tuple = (0.005, 0.01)
    adam_steps: int
    every: int
    flow_points: int
    alpha: float = 0.5


CONFIGS = {"small": Config(num_examples=200, mse_lrs=(0.2,), ce_lrs=(0.4,), adam_lrs=(0.01,),
                           gd_steps=150, adam_steps=100, every=25, flow_points=6),
           "full": Config(num_examples=1000, gd_steps=3000, adam_steps=2000, every=20,
                          flow_points=61)}


def _mse(outputs, batch):
    return 0.5 * jnp.mean(jnp.sum((outputs - jax.nn.one_hot(batch[1], 10)) ** 2, axis=-1))


def setup(loss: str, *, num_examples: int, label_noise: float = 0.0,
          seed: int = 0) -> Objective:
    """The first ``num_examples`` digits images, a fraction ``label_noise`` of them with a
    random label (drawn from ``seed``), and a tanh MLP 64-32-32-10 whose output layer is
    initialised 5x smaller than Glorot's (a low initial sharpness, so that the rise can be
    seen), with the squared error to one-hot labels (``loss="mse"``, halved, summed over
    classes) or the cross-entropy. Cost: nothing beyond building the model."""
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not one of {LOSSES}; pick one of them.")
    x, y = digits.load_digits_data()
    x, y = x[:num_examples], np.array(y[:num_examples])
    rng = np.random.default_rng(seed)
    noisy = rng.random(len(y)) < label_noise
    y[noisy] = rng.integers(0, 10, int(noisy.sum()))
    model = digits.MLP((32, 32), rngs=nnx.Rngs(seed))
    last = model.layers[-1]
    last.kernel[...] = 0.2 * last.kernel[...]
    return Objective.from_nnx(model, _mse if loss == "mse" else digits.cross_entropy,
                              (x, jnp.asarray(y)))


def gd_runs(obj: Objective, lrs, *, steps: int, every: int, key) -> OptimizerComparison:
    """Full-batch gradient descent at each step size in ``lrs``, from ``obj.params``, with
    the full-batch sharpness measured every ``every`` steps (``compare_optimizers``, names
    ``"GD η=..."``). Cost: ``len(lrs) * steps`` full-batch gradients plus about ``steps /
    every`` warm-started Lanczos solves per run (a few HVPs each)."""
    return compare_optimizers(obj, {f"GD η={lr:g}": optax.sgd(lr) for lr in lrs},
                              train_steps=steps, every=every, key=key, measure_size=None)


def adam_runs(obj: Objective, lrs, *, steps: int, every: int, key) -> OptimizerComparison:
    """Full-batch Adam (``beta1 = 0.9``) at each step size, with the raw and the
    preconditioned sharpness ``lambda_max(P^-1/2 H P^-1/2)`` (``P = sqrt(nu_hat) + eps``
    read from Adam's state; the same spectrum as ``P^-1 H``) every ``every`` steps. Cost:
    as :func:`gd_runs`, twice the HVPs per measurement."""
    return compare_optimizers(obj, {f"Adam η={lr:g}": optax.adam(lr) for lr in lrs},
                              train_steps=steps, every=every, key=key, measure_size=None)


def flow(obj: Objective, *, t_max: float, num_points: int, alpha: float, key) -> GradientFlow:
    """Gradient flow from ``obj.params`` to time ``t_max`` (RK4 with Cohen et al.'s step
    ``alpha / lambda_max``), with the sharpness at ``num_points`` evenly spaced times.
    Cost: about ``4 t_max mean(lambda_max) / alpha`` full-batch gradients plus one
    warm-started Lanczos solve per output time."""
    return gradient_flow(obj, t_max=t_max, num_points=num_points, alpha=alpha, key=key)


def edge_ratio(log, lr: float, *, quantity: str = "lambda_max", threshold: float | None = None,
               tail: float = 0.25) -> dict:
    """How a run sits against its threshold (``2 / lr`` unless given): the first step where
    ``quantity`` reached 90% of it, and the median and the 10-90% range of ``quantity /
    threshold`` over the last ``tail`` of the measurements."""
    threshold = 2.0 / lr if threshold is None else threshold
    values = np.asarray(log[quantity], np.float64)
    steps = np.asarray(log.steps)
    ok = np.isfinite(values)
    values, steps = values[ok], steps[ok]
    ratio = values / threshold
    last = ratio[-max(1, int(len(ratio) * tail)):]
    hit = np.nonzero(ratio >= 0.9)[0]
    return {"threshold": float(threshold), "median": float(np.median(last)),
            "low": float(np.quantile(last, 0.1)), "high": float(np.quantile(last, 0.9)),
            "max": float(ratio.max()), "first_step": int(steps[hit[0]]) if hit.size else None}


def plot_gd(comparison: OptimizerComparison, reference: GradientFlow | None = None, ax=None,
            *, title: str = ""):
    """Sharpness against time ``eta * step`` for every gradient descent run, each with its
    ``2 / eta`` (dashed, same colour), and the gradient flow's sharpness (black)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for i, (name, r) in enumerate(comparison.runs.items()):
        lr = r.info.learning_rate
        ax.plot(lr * np.asarray(r.log.steps), r.log["lambda_max"], color=f"C{i}", lw=1.3,
                label=name)
        ax.axhline(2 / lr, color=f"C{i}", ls="--", lw=1)
    if reference is not None:                   # wide and grey: the GD run it tracks shows
        ax.plot(reference.times, reference.sharpness, color="0.2", lw=4, alpha=0.45,
                zorder=1, label="gradient flow")
    ax.set(xlabel="time  η × step", ylabel="sharpness λ_max(H)",
           title=title or "sharpness rises to 2/η (dashed) and hovers there")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_adam(comparison: OptimizerComparison, ax=None):
    """Adam's preconditioned sharpness against step, each with its ``38 / eta`` (dashed)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for i, (name, r) in enumerate(comparison.runs.items()):
        ax.plot(r.log.steps, r.log["precond_lambda_max"], color=f"C{i}", lw=1.3, label=name)
        ax.axhline(r.info.threshold(), color=f"C{i}", ls="--", lw=1)
    ax.set(xlabel="step", ylabel="preconditioned sharpness λ_max(P⁻¹H)",
           title="Adam: preconditioned sharpness at 38/η (dashed)", yscale="log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return ax


def _lrs(cfg: Config, loss: str) -> tuple:
    return cfg.mse_lrs if loss == "mse" else cfg.ce_lrs


def _verdict(n: dict, cfg: Config) -> str:
    parts = []
    for loss in LOSSES:
        lrs = _lrs(cfg, loss)
        meds = [n[f"{loss}_gd{lr:g}_median"] for lr in lrs]
        at_edge = [lr for lr, m in zip(lrs, meds) if EDGE[0] <= m <= EDGE[1]]
        text = (f"With {'the squared error' if loss == 'mse' else 'the cross-entropy'}, "
                f"gradient descent's sharpness ends at {', '.join(f'{m:.2f}' for m in meds)} "
                f"times 2/η (η = {', '.join(f'{lr:g}' for lr in lrs)}; median of the last "
                "quarter of the run): " +
                (f"at the edge of stability for η = {', '.join(f'{lr:g}' for lr in at_edge)}"
                 if at_edge else "none at the edge") +
                (", as in Cohen et al. 2021 (Sec. 3)." if len(at_edge) == len(lrs) else "."))
        for lr, m in zip(lrs, meds):
            peak, final = n[f"{loss}_gd{lr:g}_max"], n[f"{loss}_gd{lr:g}_final_loss"]
            if m > EDGE[1]:
                text += f" At η = {lr:g} it stays above 2/η."
            elif m < EDGE[0] and peak < 0.9:
                text += (f" At η = {lr:g} it has not sharpened that far within the run "
                         f"(at most {peak:.2f} times 2/η).")
            elif m < EDGE[0]:
                text += (f" At η = {lr:g} it reached 2/η (up to {peak:.2f} times) and then "
                         f"fell as the loss went towards zero ({final:.3g} at the end): the "
                         "decline Cohen et al. report late in cross-entropy training, which a "
                         "fit this easy reaches early.")
        parts.append(text)
    fl = n["flow_max_over_gd_thresholds"]
    parts.append(f"Gradient flow (squared error) reaches a sharpness of "
                 f"{n['flow_sharpness_max']:.1f} by time {n['flow_t_max']:g}, {fl:.2f} times "
                 f"the ceiling 2/η = {n['flow_ceiling']:.3g} at which a faster gradient descent "
                 "run stopped" +
                 (": it goes through the ceilings where gradient descent stops, as Cohen "
                  "et al. 2021 describe it (Sec. 3)." if fl > 1.05 else
                  ": within this time it does not pass them."))
    meds = [n[f"adam{lr:g}_median"] for lr in cfg.adam_lrs]
    parts.append(f"Adam's preconditioned sharpness ends at "
                 f"{', '.join(f'{m:.2f}' for m in meds)} times 38/η (η = "
                 f"{', '.join(f'{lr:g}' for lr in cfg.adam_lrs)}), " +
                 ("at the adaptive edge of stability as in Cohen et al. 2022 (Sec. 3)."
                  if all(EDGE[0] <= m <= EDGE[1] for m in meds) else
                  "not all at the adaptive edge of stability, where Cohen et al. 2022 see it "
                  "hover."))
    return " ".join(parts)


def run(*, small: bool = False, seed: int = 0, say=print) -> Report:
    """GD at each step size for both losses, the flow for the squared error, Adam; the
    figures, the table and the verdict."""
    cfg = CONFIGS["small" if small else "full"]
    start = time.perf_counter()
    key = jax.random.key(seed)
    n, gd, objs, figures = {}, {}, {}, {}
    for i, loss in enumerate(LOSSES):
        objs[loss] = setup(loss, num_examples=cfg.num_examples, label_noise=cfg.label_noise,
                           seed=seed)
        gd[loss] = gd_runs(objs[loss], _lrs(cfg, loss), steps=cfg.gd_steps, every=cfg.every,
                           key=jax.random.fold_in(key, i))
        for lr, r in zip(_lrs(cfg, loss), gd[loss].runs.values()):
            n.update({f"{loss}_gd{lr:g}_{k}": v for k, v in edge_ratio(r.log, lr).items()})
            n[f"{loss}_gd{lr:g}_final_loss"] = float(r.eval_loss[-1])
        first = next(iter(gd[loss].runs.values()))
        n[f"{loss}_initial_sharpness"] = float(first.log["lambda_max"][0])
        say(f"gradient descent, {loss} ({time.perf_counter() - start:.1f} s)")
    t_max = min(cfg.mse_lrs) * cfg.gd_steps
    ref = flow(objs["mse"], t_max=t_max, num_points=cfg.flow_points, alpha=cfg.alpha,
               key=jax.random.fold_in(key, 10))
    # the highest ceiling that a faster run (larger eta) reached within the flow's time
    faster = [lr for lr in cfg.mse_lrs if lr > min(cfg.mse_lrs)] or list(cfg.mse_lrs)
    reached = [2 / lr for lr in faster if n[f"mse_gd{lr:g}_max"] >= 0.9] or [np.nan]
    n.update({"flow_t_max": float(ref.times[-1]),
              "flow_sharpness_max": float(ref.sharpness.max()),
              "flow_ceiling": float(max(reached)),
              "flow_max_over_gd_thresholds": float(ref.sharpness.max() / max(reached)),
              "flow_steps": ref.num_steps, "flow_gradients": ref.num_gradient_evals})
    say(f"gradient flow to t = {t_max:g} ({time.perf_counter() - start:.1f} s)")
    adam = adam_runs(objs["mse"], cfg.adam_lrs, steps=cfg.adam_steps, every=cfg.every,
                     key=jax.random.fold_in(key, 20))
    for lr, r in zip(cfg.adam_lrs, adam.runs.values()):
        e = edge_ratio(r.log, lr, quantity="precond_lambda_max", threshold=r.info.threshold())
        n.update({f"adam{lr:g}_{k}": v for k, v in e.items()})
        n[f"adam{lr:g}_raw_final"] = float(r.log["lambda_max"][-1])
    say(f"Adam ({time.perf_counter() - start:.1f} s)")

    rows = []
    for loss in LOSSES:
        for lr in _lrs(cfg, loss):
            rows.append(Row(quantity=f"GD {loss}, η = {lr:g}: λ_max / (2/η), last quarter",
                            ours=n[f"{loss}_gd{lr:g}_median"],
                            paper="~1, hovering (2021, Sec. 3)"))
    rows.append(Row(quantity="gradient flow: max λ_max / a faster GD run's 2/η (MSE)",
                    ours=n["flow_max_over_gd_thresholds"],
                    paper="> 1: no ceiling (2021, Sec. 3)"))
    for lr in cfg.adam_lrs:
        rows.append(Row(quantity=f"Adam η = {lr:g}: λ_max(P⁻¹H) / (38/η), last quarter",
                        ours=n[f"adam{lr:g}_median"], paper="~1, hovering (2022, Sec. 3)"))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained")
    plot_gd(gd["mse"], ref, ax=axes[0], title="squared error: GD and gradient flow")
    plot_gd(gd["cross-entropy"], ax=axes[1], title="cross-entropy: GD")
    figures["gd"] = fig
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    figures["adam"] = plot_adam(adam, ax=ax).figure
    return ENTRY.report(small=small, seed=seed, start=start, rows=tuple(rows),
                        verdict=_verdict(n, cfg), figures=figures, numbers=n)


ENTRY = Entry(
    name="cohen",
    title="Training at the edge of stability (Cohen et al. 2021, 2022)",
    citation="Cohen, Kaur, Li, Kolter & Talwalkar (2021), Gradient descent on neural networks "
             "typically occurs at the edge of stability, ICLR; Cohen, Ghorbani, Krishnan, "
             "Agarwal, Medapati, Badura, Suo, Cardoze, Nado, Dahl & Gilmer (2022), Adaptive "
             "gradient methods at the edge of stability, arXiv:2207.14484.",
    claim="Full-batch gradient descent's sharpness rises until it reaches 2/η and hovers "
          "there, for the squared error and the cross-entropy (2021, Sec. 3); gradient flow "
          "has no such ceiling; Adam's preconditioned sharpness hovers at "
          "38/η (2022, Sec. 3).",
    notebook="04_sharpness_and_optimizers.ipynb",
    run=run,
    full_seconds=79.0,  # benchmarks/RESULTS_science.md (under the bench lock)
)
