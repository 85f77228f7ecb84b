"""Builds notebooks/08_large_vs_small_batch.ipynb (then execute it: python tools/run_notebook.py ...).

Run again after editing only markdown: the outputs of an already executed notebook are kept
when every code cell is unchanged (otherwise they are dropped and the notebook must be
executed again).
"""
from pathlib import Path

import nbformat as nbf
from _notebook import write_notebook

PATH = Path("notebooks/08_large_vs_small_batch.ipynb")

cells = [
    nbf.v4.new_markdown_cell("""# Large-batch training finds sharper minima (Keskar et al. 2017)

**Keskar, Mudigere, Nocedal, Smelyanskiy & Tang (2017)**, *On large-batch training for deep
learning: generalization gap and sharp minima* (ICLR): networks trained with large batches
(10% of the data) reach the same training loss as with small batches (256 examples) but
generalise worse, and the large-batch solutions are **sharper**: their ε-sharpness (the
largest relative rise of the loss in a box of relative size ε around the point, their eq. 4)
is larger for every network they trained, often by two orders of magnitude in the full
parameter space (their Table 3) and less so in a random subspace (Table 4), and on the line through both solutions
`x(α) = α x_LB + (1 − α) x_SB` (their Fig. 3) the loss rises steeply around the large-batch
end and stays flat around the small-batch end.

Here: scikit-learn's digits split into 1,297 training and 500 test images, the library's
`mlp-small` (64-32-32-10 tanh, 3,466 parameters), one initialisation, Adam with the same
learning rate for both: **small batch** (32 examples) against **full batch** (all 1,297),
each trained until its training loss is below the same target. We measure the sharpness four
ways: the top Hessian eigenvalue `λ_max`, the Hessian trace, Keskar et al.'s ε-sharpness,
and the loss along the line through both solutions (extended beyond them, as in their
figure). (Notebook 04 touches the same question through the sharpness during training;
here we compare the two end points.) Set `HESSIAN_TOOLS_SMALL=1` for a smaller configuration (the test suite runs it);
the numbers quoted in the text are those of the full configuration, whose outputs are
stored here."""),
    nbf.v4.new_code_cell("""import os, time
import jax
import jax.numpy as jnp
import numpy as np
import optax
import matplotlib.pyplot as plt
import hessian_tools as ht
from hessian_tools.examples import digits

SMALL = os.environ.get("HESSIAN_TOOLS_SMALL") == "1"
TARGET = 0.1 if SMALL else 0.01         # training loss at which both runs stop
LR = 1e-2                               # Adam, the same for both runs
BATCHES = {"small batch (32)": 32, "full batch (1297)": None}
EPS_STEPS, EPS_STARTS = (5, 1) if SMALL else (50, 3)
NUM_ALPHA = 13 if SMALL else 61         # points on the line alpha in [-1, 2]

start = time.perf_counter()
x, y = digits.load_digits_data()
perm = np.asarray(jax.random.permutation(jax.random.key(0), len(y)))
train, test = (x[perm[:1297]], y[perm[:1297]]), (x[perm[1297:]], y[perm[1297:]])
n = len(train[1])
obj = ht.Objective.from_nnx(digits.make_model("mlp-small", seed=0), digits.cross_entropy, train)
p0 = obj.params
print(f"{n} training and {len(test[1])} test images, P = {ht.hessian(obj).dim} parameters")"""),
    nbf.v4.new_markdown_cell("""## 1. Two solutions from one initialisation

An Adam loop over epochs (a fixed random permutation per epoch; a full-batch "epoch" is 10
steps), checking the training loss on the whole training set after every epoch and stopping
once it is below `TARGET`. Both runs start from `p0`."""),
    nbf.v4.new_code_cell("""def fit(batch_size, *, key, max_epochs=500):
    opt = optax.adam(LR)

    @jax.jit
    def epoch(p, s, idx):
        def step(carry, i):
            p, s = carry
            g = jax.grad(obj.loss)(p, jax.tree.map(lambda a: a[i], train))
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        (p, s), _ = jax.lax.scan(step, (p, s), idx)
        return p, s, obj.loss(p, train)

    p, s, history, steps = p0, opt.init(p0), [], 0
    for _ in range(max_epochs):
        key, k = jax.random.split(key)
        idx = (jnp.tile(jnp.arange(n), (10, 1)) if batch_size is None else
               jax.random.permutation(k, n)[: n // batch_size * batch_size].reshape(-1, batch_size))
        p, s, loss = epoch(p, s, idx)
        steps += idx.shape[0]
        history.append((steps, float(loss)))
        if loss <= TARGET:
            break
    return p, np.array(history)

def accuracy(p, data):
    return float(jnp.mean(jnp.argmax(obj.predict(p, data), -1) == data[1]))

sol, hist = {}, {}
for name, b in BATCHES.items():
    sol[name], hist[name] = fit(b, key=jax.random.key(1))
    p = sol[name]
    print(f"{name:>18}: {int(hist[name][-1, 0]):5d} steps, train loss {obj.loss(p, train):.4f}, "
          f"train acc {accuracy(p, train):.3f} | test loss {obj.loss(p, test):.4f}, "
          f"test acc {accuracy(p, test):.3f}")
(sb, p_sb), (lb, p_lb) = sol.items()
print(f"distance ||x_LB - x_SB|| = {ht.tree.norm(ht.tree.sub(p_lb, p_sb)):.3f}, "
      f"from the init: SB {ht.tree.norm(ht.tree.sub(p_sb, p0)):.3f}, "
      f"LB {ht.tree.norm(ht.tree.sub(p_lb, p0)):.3f}")

fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
for name, h in hist.items():
    ax.semilogy(h[:, 0], h[:, 1], "o-", ms=3, label=name)
ax.axhline(TARGET, color="0.4", ls=":", label=f"target {TARGET}")
ax.set(xlabel="optimizer steps", ylabel="training loss (whole training set)",
       title="training to the same loss", xscale="log")
ax.legend()
ax.grid(alpha=0.3)
plt.show()"""),
    nbf.v4.new_markdown_cell("""TRAINING"""),
    nbf.v4.new_markdown_cell("""## 2. Sharpness at the two solutions

* `λ_max`: the top eigenvalue of the training-loss Hessian (`ht.eigenvalues(..., k=1)`).
* the trace: Hutch++ (`ht.trace`), the sum of all curvatures.
* ε-sharpness (`ht.epsilon_sharpness`, ε = 1e-3, Keskar et al.'s eq. 4), in percent of
  `1 + L(x)`: in the full parameter space (`A = I`) and in a random 100-dimensional
  subspace (`subspace="random"`, the same subspace for both), as in their Tables 3 and 4.
  We also print the gradient norm and the first-order part of the full-space maximum,
  `ε Σ_i |g_i| (|x_i| + 1)`: a box that wide rewards a leftover gradient as much as
  curvature.

**Claim (Keskar et al., Table 2).** The large-batch solution has the larger ε-sharpness
(theirs: for the fully connected network F1 on MNIST, ε = 1e-3, full space: about 1.2 for
small and 205 for large batches; all six networks agree in direction)."""),
    nbf.v4.new_code_cell("""rows = {}
for i, (name, p) in enumerate(sol.items()):
    at = obj.with_params(p)
    H = ht.hessian(at)
    eig = ht.eigenvalues(H, k=1, key=jax.random.key(10 + i))
    tr = ht.trace(H, key=jax.random.key(20 + i))
    eps = ht.epsilon_sharpness(at, epsilon=1e-3, key=jax.random.key(30 + i), steps=EPS_STEPS,
                               num_starts=EPS_STARTS)
    eps_sub = ht.epsilon_sharpness(at, epsilon=1e-3, key=jax.random.key(40), subspace="random",
                                   steps=EPS_STEPS, num_starts=EPS_STARTS)
    # the first-order part of the full-space box maximum: eps sum_i |g_i| (|x_i| + 1)
    loss, g = ht.value_and_grad(at)
    flat_g, flat_x = (np.abs(np.asarray(ht.tree.ravel(t), np.float64)) for t in (g, p))
    linear = 100 * 1e-3 * float(flat_g @ (flat_x + 1)) / (1 + float(loss))
    rows[name] = {"lambda_max": float(eig.largest[0]), "trace": tr, "eps": eps, "eps_sub": eps_sub}
    print(f"{name:>18}: λ_max {eig.largest[0]:.3f}, trace {tr.value:.2f} ± {tr.stderr:.2f}, "
          f"ε-sharpness {eps.value:.3f} (loss {eps.loss:.4f} -> {eps.max_loss:.4f}, "
          f"{eps.num_evaluations} evaluations, stops {eps.stops}), in a random 100-dim "
          f"subspace {eps_sub.value:.4f}; ||grad|| {np.linalg.norm(flat_g):.2e}, "
          f"first-order term {linear:.3f}")
for key in ("lambda_max", "trace", "eps", "eps_sub"):
    a, b = (float(getattr(rows[k][key], "value", rows[k][key])) for k in (lb, sb))
    print(f"  {key:>10}: large / small = {a / b:.2f}")

fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), layout="constrained")
labels = ["small\\nbatch", "full\\nbatch"]
for ax, (key, title) in zip(axes, [("lambda_max", "λ_max (top Hessian eigenvalue)"),
                                   ("trace", "Hessian trace (Hutch++, ± 1 s.e.)"),
                                   ("eps", "ε-sharpness, full space (ε = 1e-3), %"),
                                   ("eps_sub", "ε-sharpness, random 100-dim subspace, %")]):
    vals = [float(getattr(rows[k][key], "value", rows[k][key])) for k in (sb, lb)]
    err = [rows[k][key].stderr for k in (sb, lb)] if key == "trace" else None
    ax.bar(labels, vals, yerr=err, color=["C0", "C1"], capsize=4)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
plt.show()"""),
    nbf.v4.new_markdown_cell("""SHARPNESS"""),
    nbf.v4.new_markdown_cell("""## 3. The line through both solutions

**Claim (Keskar et al., Fig. 3).** Along `x(α) = x_SB + α (x_LB − x_SB)` (α = 0: small
batch, α = 1: large batch; they plot α from −1 to 2) the training and test loss are low at
both ends, but the curve is narrow around α = 1 and wide around α = 0; the test accuracy
falls off faster on the large-batch side.

`ht.interpolate` evaluates the segment α ∈ [0, 1] (with its barrier); for the extension we
use `ht.loss_surface` along `ht.difference_direction(x_SB, x_LB)` (coordinate 1 reaches
`x_LB`) on a grid α ∈ [−1, 2], on the training and on the test set, with `ht.accuracy`."""),
    nbf.v4.new_code_cell("""seg = ht.interpolate(obj, p_sb, p_lb, num_points=21 if SMALL else 41, metric=ht.accuracy)
print(f"segment: loss {seg.loss[0]:.4f} (SB) -> max {seg.loss.max():.4f} -> {seg.loss[-1]:.4f} "
      f"(LB), barrier {seg.barrier:.4f} at t = {seg.barrier_t:.2f}; training accuracy >= "
      f"{seg.metric.min():.3f} along it")
alpha = np.linspace(-1.0, 2.0, NUM_ALPHA)
d = ht.difference_direction(p_sb, p_lb)
line = {part: ht.loss_surface(obj.with_data(data).with_params(p_sb), d, grid=(alpha,),
                              metric=ht.accuracy)
        for part, data in (("train", train), ("test", test))}
for part, s in line.items():
    lo, hi = np.argmin(np.abs(alpha + 0.5)), np.argmin(np.abs(alpha - 1.5))
    print(f"{part:>5}: loss at α = −0.5 (beyond SB) {s.values[lo]:.3f}, at α = 1.5 (beyond LB) "
          f"{s.values[hi]:.3f}; accuracy {s.metric[lo]:.3f} and {s.metric[hi]:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), layout="constrained")
ht.plot_interpolation(seg, ax=axes[0])
axes[0].set_xlabel("t   (0: small batch, 1: full batch)")
axes[0].set_title(f"segment between the two solutions (training set), ||x_LB − x_SB|| = {seg.distance:.2f}")
ax, twin = axes[1], axes[1].twinx()
for part, ls in (("train", "-"), ("test", "--")):
    ax.semilogy(alpha, line[part].values, "C0" + ls, lw=1.8, label=f"{part} loss")
    twin.plot(alpha, line[part].metric, "C3" + ls, lw=1.3, label=f"{part} accuracy")
for a0, lab in ((0, "SB"), (1, "LB")):
    ax.axvline(a0, color="0.5", ls=":")
    ax.text(a0, 0.03, f" {lab}", transform=ax.get_xaxis_transform(), ha="left")
ax.set(xlabel="α   (x = x_SB + α (x_LB − x_SB))", ylabel="cross-entropy (log scale)",
       title="the line through both solutions, α ∈ [−1, 2] (Keskar et al., Fig. 3)")
twin.set_ylabel("accuracy", color="C3")
twin.set_ylim(0, 1.02)
h1, l1 = ax.get_legend_handles_labels()
h2, l2 = twin.get_legend_handles_labels()
ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4,
          fontsize=8, frameon=False)
ax.grid(alpha=0.3)
plt.show()
print(f"total {time.perf_counter() - start:.1f} s")"""),
    nbf.v4.new_markdown_cell("""LINE"""),
    nbf.v4.new_markdown_cell("""## Summary

SUMMARY"""),
]

TEXT = {}   # the markdown that quotes the executed run's numbers (full configuration)

TEXT["TRAINING"] = """**Ours.** From the same initialisation and with the same Adam step (1e-2), the small-batch
run needs 520 steps (13 epochs) and the full-batch run 160 steps to go below a training loss
of 0.01; they stop at 0.0080 and 0.0087, both with training accuracy 1.000. On the 500 held-out
images they are indistinguishable: test loss 0.0853 (small batch) against 0.0870 (full batch),
test accuracy 0.980 for both. The two solutions are 10.4 apart, against 15.7 and 17.1 from the
initialisation: different points, not one."""

TEXT["SHARPNESS"] = """**Ours.** The curvature measures lean Keskar et al.'s way, but weakly: `λ_max` is 0.943
(small batch) against 1.067 (full batch), a ratio of **1.13**, and the trace 5.28 ± 0.04
against 6.63 ± 0.04, a ratio of **1.26**. The ε-sharpness points the **other way**: 0.234%
against 0.104% in the full space (ratio 0.44) and 0.0082% against 0.0009% in the random
subspace (0.11); every start of the box solver ended at a stationary point. The reason is in
the last numbers of the printout: the small-batch point is not a minimum of the full training
loss, it is where minibatch noise left it, with a gradient norm of 4.3e-2 against 5.6e-3 for
the full-batch point. In a box of half-width `1e-3 (|x_i| + 1)` the first-order term
`ε Σ_i |g_i| (|x_i| + 1)` alone is worth 0.162% at the small-batch point and 0.028% at the
full-batch point: most of the small-batch ε-sharpness is slope, not curvature. Keskar et al.
measured after many epochs at loss levels where this term is small next to their large
(order 100%) rises; here the curvature part is tiny (λ_max ≈ 1 times a box of norm about 0.1
gives a rise of order 1e-3 in the loss) and the slope wins. The Hessian-based measures, which
look only at curvature, are the cleaner comparison at this scale."""

TEXT["LINE"] = """**Ours.** On the segment the training loss rises from 0.0080 (small batch) to 0.0108 at
t = 0.53 and falls to 0.0087 (full batch): a barrier of 0.0024, with the training accuracy
never below 0.999. Both solutions lie in one low valley. Beyond the ends the training loss
rises a little faster on the full-batch side (0.016 at α = 1.5 against 0.013 at α = −0.5,
and on the figure about 0.1 at α = 2 against about 0.05 at α = −1), in the direction of
Keskar et al.'s Fig. 3, but the basins are of similar width. The test loss is flat around
both (0.113 and 0.114 at α = −0.5 and 1.5) and the test accuracy falls off about equally
(0.968 and 0.962).

**Where we agree and where not.** Keskar et al.'s figure shows a sharp, narrow dip at the
large-batch end and a wide one at the small-batch end, with a visible test-accuracy gap;
ours shows two dips of nearly the same width and no gap. The direction of every curvature
measure (λ_max, the trace, the loss slope beyond each end) agrees with theirs, the size does
not: 1.1-1.3 times rather than one to two orders of magnitude. Digits is small and easy:
1,297 training images that a 3,466-parameter network fits to 100% accuracy in a few hundred
steps, so neither run has much room to find a different kind of minimum, and the full batch
here (the whole data set, 160 steps of Adam) is not Keskar et al.'s regime of a large batch
trained for a fixed number of epochs (their large batch took ten times fewer steps than the
small one and, in their explanation, could not escape the sharp basins near the initialisation). The ε-sharpness
disagrees in sign, for the reason given in section 2: at equal training loss the
small-batch point keeps a gradient from its minibatch noise, and the full-space box of
Keskar et al.'s definition measures that slope along with the curvature."""

TEXT["SUMMARY"] = """| | Keskar et al. 2017 | this notebook (digits, `mlp-small`, 3,466 parameters) |
|---|---|---|
| training loss reached | same for SB and LB | 0.0080 (SB, batch 32) and 0.0087 (full batch) |
| test accuracy | LB lower (generalisation gap) | 0.980 and 0.980: no gap |
| λ_max | (not computed: ε-sharpness stands in for it) | 0.943 vs 1.067 (LB 1.13x) |
| Hessian trace | (not in the paper) | 5.28 vs 6.63 (LB 1.26x) |
| ε-sharpness, ε = 1e-3, full space | LB larger, often 100x | 0.234% vs 0.104%: SB larger, from its leftover gradient |
| ε-sharpness, random 100-dim subspace | LB larger | 0.0082% vs 0.0009%: SB larger |
| 1-D line through both | narrow at LB, wide at SB | both in one valley (barrier 0.0024); slightly steeper beyond LB |

On digits the large-batch solution is sharper by the Hessian's measures, as Keskar et al.
claim, but only by 13-26%, and it generalises as well as the small-batch one: the sharp-
minimum generalisation gap needs a harder problem than digits to appear (the issue suggests
MNIST-1D for that). Keskar et al.'s ε-sharpness, taken at equal training loss, mixes slope
into curvature and here ranks the two the other way."""


write_notebook(PATH, cells, TEXT)
