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

The code of this notebook lives in `hessian_tools/gallery/keskar.py`;
`hessian-tools gallery keskar --out DIR` runs the same steps and writes the figures and a
short report (the table of ours against the paper's and the verdict).

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
import matplotlib.pyplot as plt
import hessian_tools as ht
from hessian_tools.gallery import keskar

SMALL = os.environ.get("HESSIAN_TOOLS_SMALL") == "1"
cfg = keskar.CONFIGS["small" if SMALL else "full"]
print(cfg)

start = time.perf_counter()
obj, train, test = keskar.setup(seed=0)
print(f"{len(train[1])} training and {len(test[1])} test images, "
      f"P = {ht.hessian(obj).dim} parameters")"""),
    nbf.v4.new_markdown_cell("""## 1. Two solutions from one initialisation

`keskar.fit`: an Adam loop over epochs (a fresh random permutation per epoch; a full-batch
"epoch" is 10 steps), checking the training loss on the whole training set after every
epoch and stopping once it is below `cfg.target`. Both runs start from `obj.params`."""),
    nbf.v4.new_code_cell("""BATCHES = {"small batch (32)": cfg.small_batch, "full batch (1297)": None}
sol, hist = {}, {}
for name, b in BATCHES.items():
    sol[name], hist[name] = keskar.fit(obj, b, key=jax.random.key(1), lr=cfg.lr,
                                       target=cfg.target)
    p = sol[name]
    print(f"{name:>18}: {int(hist[name][-1, 0]):5d} steps, train loss {obj.loss(p, train):.4f}, "
          f"train acc {keskar.accuracy_of(obj, p, train):.3f} | test loss "
          f"{obj.loss(p, test):.4f}, test acc {keskar.accuracy_of(obj, p, test):.3f}")
(sb, p_sb), (lb, p_lb) = sol.items()
p0 = obj.params
print(f"distance ||x_LB - x_SB|| = {ht.tree.norm(ht.tree.sub(p_lb, p_sb)):.3f}, "
      f"from the init: SB {ht.tree.norm(ht.tree.sub(p_sb, p0)):.3f}, "
      f"LB {ht.tree.norm(ht.tree.sub(p_lb, p0)):.3f}")
keskar.plot_training(hist, cfg.target)
plt.show()"""),
    nbf.v4.new_markdown_cell("""TRAINING"""),
    nbf.v4.new_markdown_cell("""## 2. Sharpness at the two solutions

`keskar.measure` computes, at one point:

* `λ_max`: the top eigenvalue of the training-loss Hessian (`ht.eigenvalues(..., k=1)`).
* the trace: Hutch++ (`ht.trace`), the sum of all curvatures.
* ε-sharpness (`ht.epsilon_sharpness`, ε = 1e-3, Keskar et al.'s eq. 4), in percent of
  `1 + L(x)`: in the full parameter space (`A = I`) and in a random 100-dimensional
  subspace (`subspace="random"`, the same subspace for both), as in their Tables 3 and 4.
  It also returns the gradient norm and the first-order part of the full-space maximum,
  `ε Σ_i |g_i| (|x_i| + 1)`: a box that wide rewards a leftover gradient as much as
  curvature.

**Claim (Keskar et al., Table 2).** The large-batch solution has the larger ε-sharpness
(theirs: for the fully connected network F1 on MNIST, ε = 1e-3, full space: about 1.2 for
small and 205 for large batches; all six networks agree in direction)."""),
    nbf.v4.new_code_cell("""rows = {name: keskar.measure(obj, p, key=jax.random.key(10 + i), eps_steps=cfg.eps_steps,
                             eps_starts=cfg.eps_starts)
        for i, (name, p) in enumerate(sol.items())}
for name, r in rows.items():
    print(f"{name:>18}: λ_max {r['lambda_max']:.3f}, trace {r['trace']:.2f} ± "
          f"{r['trace_stderr']:.2f}, ε-sharpness {r['eps']:.3f} (stops {r['eps_stops']}), in a "
          f"random 100-dim subspace {r['eps_sub']:.4f}; ||grad|| {r['grad_norm']:.2e}, "
          f"first-order term {r['first_order']:.3f}")
for key in ("lambda_max", "trace", "eps", "eps_sub"):
    print(f"  {key:>10}: large / small = {rows[lb][key] / rows[sb][key]:.2f}")
keskar.plot_sharpness(rows)
plt.show()"""),
    nbf.v4.new_markdown_cell("""SHARPNESS"""),
    nbf.v4.new_markdown_cell("""## 3. The line through both solutions

**Claim (Keskar et al., Fig. 3).** Along `x(α) = x_SB + α (x_LB − x_SB)` (α = 0: small
batch, α = 1: large batch; they plot α from −1 to 2) the training and test loss are low at
both ends, but the curve is narrow around α = 1 and wide around α = 0; the test accuracy
falls off faster on the large-batch side.

`keskar.line` evaluates the segment α ∈ [0, 1] with `ht.interpolate` (with its barrier);
for the extension it uses `ht.loss_surface` along `ht.difference_direction(x_SB, x_LB)`
(coordinate 1 reaches `x_LB`) on a grid α ∈ [−1, 2], on the training and on the test set,
with `ht.accuracy`."""),
    nbf.v4.new_code_cell("""found = keskar.line(obj, p_sb, p_lb, test, num_alpha=cfg.num_alpha,
                    num_segment=cfg.num_segment)
seg = found["segment"]
print(f"segment: loss {seg.loss[0]:.4f} (SB) -> max {seg.loss.max():.4f} -> {seg.loss[-1]:.4f} "
      f"(LB), barrier {seg.barrier:.4f} at t = {seg.barrier_t:.2f}; training accuracy >= "
      f"{seg.metric.min():.3f} along it")
for part in ("train", "test"):
    (lo, acc_lo), (hi, acc_hi) = (keskar.at_alpha(found, part, a) for a in (-0.5, 1.5))
    print(f"{part:>5}: loss at α = −0.5 (beyond SB) {lo:.3f}, at α = 1.5 (beyond LB) "
          f"{hi:.3f}; accuracy {acc_lo:.3f} and {acc_hi:.3f}")
keskar.plot_line(found)
plt.show()
print(f"total {time.perf_counter() - start:.1f} s")"""),
    nbf.v4.new_markdown_cell("""LINE"""),
    nbf.v4.new_markdown_cell("""## Summary

SUMMARY"""),
]

# The markdown that quotes the executed run's numbers (full configuration). Since the steps
# moved to hessian_tools/gallery/keskar.py the Hutch++ probes come from other keys: the traces
# are 5.25 and 6.69 (were 5.28 and 6.63); every other number is unchanged.
TEXT = {}

TEXT["TRAINING"] = """**Ours.** From the same initialisation and with the same Adam step (1e-2), the small-batch
run needs 520 steps (13 epochs) and the full-batch run 160 steps to go below a training loss
of 0.01; they stop at 0.0080 and 0.0087, both with training accuracy 1.000. On the 500 held-out
images they are indistinguishable: test loss 0.0853 (small batch) against 0.0870 (full batch),
test accuracy 0.980 for both. The two solutions are 10.4 apart, against 15.7 and 17.1 from the
initialisation: different points, not one."""

TEXT["SHARPNESS"] = """**Ours.** The curvature measures lean Keskar et al.'s way, but weakly: `λ_max` is 0.943
(small batch) against 1.067 (full batch), a ratio of **1.13**, and the trace 5.25 ± 0.04
against 6.69 ± 0.05, a ratio of **1.27**. The ε-sharpness points the **other way**: 0.234%
against 0.104% in the full space (ratio 0.44) and 0.0082% against 0.0009% in the random
subspace (0.11); every start of the box solver but one ended at a stationary point (the
other found no ascent direction). The reason is in
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
| Hessian trace | (not in the paper) | 5.25 vs 6.69 (LB 1.27x) |
| ε-sharpness, ε = 1e-3, full space | LB larger, often 100x | 0.234% vs 0.104%: SB larger, from its leftover gradient |
| ε-sharpness, random 100-dim subspace | LB larger | 0.0082% vs 0.0009%: SB larger |
| 1-D line through both | narrow at LB, wide at SB | both in one valley (barrier 0.0024); slightly steeper beyond LB |

On digits the large-batch solution is sharper by the Hessian's measures, as Keskar et al.
claim, but only by 13-27%, and it generalises as well as the small-batch one: the sharp-
minimum generalisation gap needs a harder problem than digits to appear (the issue suggests
MNIST-1D for that). Keskar et al.'s ε-sharpness, taken at equal training loss, mixes slope
into curvature and here ranks the two the other way."""


write_notebook(PATH, cells, TEXT)
