"""Builds notebooks/07_bulk_and_outliers.ipynb (then execute it: python tools/run_notebook.py ...).

Run again after editing only markdown: the outputs of an already executed notebook are kept
when every code cell is unchanged (otherwise they are dropped and the notebook must be
executed again).
"""
from pathlib import Path

import nbformat as nbf
from _notebook import write_notebook

PATH = Path("notebooks/07_bulk_and_outliers.ipynb")

cells = [
    nbf.v4.new_markdown_cell("""# Bulk and outliers: the Hessian of a trained classifier (Sagun et al. 2017, Papyan 2019)

Two classic observations about the loss Hessian of a trained network:

* **Sagun, Evci, Güney, Dauphin & Bottou (2017)**, *Empirical analysis of the Hessian of
  over-parametrized neural networks*: the spectrum is a **bulk** concentrated near zero plus
  a few **outliers** well above it, and the number of outliers is about the number of
  classes `C`.
* **Papyan (2019)**, *Measurements of three-level hierarchical structure in the outliers in
  the spectrum of deepnet Hessians*: the outliers come from the Gauss-Newton part `G` of the
  Hessian, and within `G` from the **class means** `δ_c` of the per-example gradient
  directions: `G = G_class + G_cross + G_within (+ G_true)`, the top-`C` eigenspace lies in
  `span{δ_c}`, the `C(C−1)` cross-class deviations give a second, smaller level, and the
  within-class variation gives the bulk.

Here: scikit-learn's digits (1,797 8×8 images, `C = 10` classes), the library's `mlp-small`
(64-32-32-10 tanh, 3,466 parameters, 300 steps of full-batch Adam, cached). Set
`HESSIAN_TOOLS_SMALL=1` for a smaller configuration (the test suite runs it); the numbers
quoted in the text are those of the full configuration, whose outputs are stored here."""),
    nbf.v4.new_code_cell("""import os, time
import jax
import jax.numpy as jnp
import numpy as np
import matplotlib.pyplot as plt
from jax.flatten_util import ravel_pytree
import hessian_tools as ht
from hessian_tools.examples import digits

SMALL = os.environ.get("HESSIAN_TOOLS_SMALL") == "1"
C = 10
K_TOP = 20 if SMALL else 40            # top eigenvalues examined
PROBES, STEPS = (4, 40) if SMALL else (16, 100)   # SLQ probes x Lanczos steps

start = time.perf_counter()
obj = digits.digits_objective("mlp-small")
x, y = digits.load_digits_data()
logits = obj.predict(obj.params, (x, y))
H, G = ht.hessian(obj), ht.gauss_newton(obj)
print(f"P = {H.dim} parameters, training loss {float(digits.cross_entropy(logits, (x, y))):.2e}, "
      f"accuracy {float(jnp.mean(jnp.argmax(logits, -1) == y)):.3f}")"""),
    nbf.v4.new_markdown_cell("""## 1. The spectrum: a bulk near zero and a few outliers

**Claim (Sagun et al.).** The eigenvalue density is concentrated at zero; a handful of
eigenvalues sit far to the right of it.

We estimate the density with stochastic Lanczos quadrature (`ht.density`) and compute the
top eigenvalues with restarted Lanczos (`ht.eigenvalues`), marked in red. On the left the
density on a linear eigenvalue axis (log density), on the right the density of
`log10 |λ|` (`ht.plot_log_density`, Papyan's log-scale view), which resolves the bulk."""),
    nbf.v4.new_code_cell("""dens = ht.density(H, key=jax.random.key(0), num_probes=PROBES, num_steps=STEPS)
eig_h = ht.eigenvalues(H, k=K_TOP, key=jax.random.key(1))
top_h = np.sort(eig_h.largest)[::-1]
print(dens)
print(f"top {K_TOP} Hessian eigenvalues:", np.round(top_h, 4))
near_zero = float(dens.cdf(0.01) - dens.cdf(-0.01))
print(f"SLQ: λ from {dens.lambda_min:.3g} to {dens.lambda_max:.3g}; {near_zero:.1%} of the "
      f"{H.dim} eigenvalues have |λ| < 0.01 (the largest is {top_h[0]:.3f}); "
      f"eigenvalues above {top_h[C]:.3f} (the 11th): {dens.num_above(top_h[C]).count:.1f}")

fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), layout="constrained")
ht.plot_density(dens, ax=axes[0], eig=top_h[:C], counts=True, eig_label=f"top {C} eigenvalues")
axes[0].set_title("Hessian spectrum (SLQ), eigenvalues per unit")
ht.plot_log_density(dens, ax=axes[1], eig=top_h[:C], counts=True)
plt.show()"""),
]
cells += [
    nbf.v4.new_markdown_cell("""SPECTRUM"""),
    nbf.v4.new_markdown_cell("""## 2. How many outliers? The count and its stability in `k`

**Claim (Sagun et al.; Papyan).** About `C` outliers: one per class (Papyan: exactly `C`
for the class means, plus `C(C−1)` weaker "mini-outliers" from the cross-class terms).

`ht.outliers` splits the top `k` eigenvalues at the last gap that is `gap_factor = 10` times
the typical bulk spacing, and repeats the rule on the top `k' = k, 2k/3, 4k/9, …` values
(`counts_by_k`): a count that changes with `k'` is not to be trusted. We do it for the
Hessian and for the Gauss-Newton matrix `G` (positive semi-definite; Papyan's object)."""),
    nbf.v4.new_code_cell("""eig_g = ht.eigenvalues(G, k=K_TOP, key=jax.random.key(2))
top_g = np.sort(eig_g.largest)[::-1]
splits = {"Hessian": ht.outliers(eig_h, k=K_TOP), "Gauss-Newton": ht.outliers(eig_g, k=K_TOP)}
for name, s in splits.items():
    print(f"{name:>12}: {s.num_outliers} outliers, bulk edge {s.bulk_edge:.4f}, gap {s.gap:.4f} "
          f"= {s.gap / s.reference_gap:.0f}x the bulk spacing; stable: {s.extra['stable']}; "
          f"counts by k: {s.extra['counts_by_k']}")
ratios = top_h[:-1] / top_h[1:]
print("λ_i / λ_(i+1) for i = 1..14:", np.round(ratios[:14], 2))

fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), layout="constrained")
i = np.arange(1, K_TOP + 1)
axes[0].semilogy(i, top_h, "o-", ms=4, label="Hessian")
axes[0].semilogy(i, top_g, "s--", ms=4, mfc="none", label="Gauss-Newton G")
n_h = splits["Hessian"].num_outliers
axes[0].axvspan(0.5, n_h + 0.5, color="C3", alpha=0.1, label=f"outliers found ({n_h})")
axes[0].axvline(C + 0.5, color="0.3", ls=":", label=f"C = {C}")
axes[0].set(xlabel="index i", ylabel="eigenvalue λ_i (log scale)",
            title=f"top {K_TOP} eigenvalues")
axes[0].legend()
axes[1].bar(i[:-1], ratios, color=["C3" if j < n_h else "C0" for j in range(K_TOP - 1)])
axes[1].axvline(C + 0.5, color="0.3", ls=":")
axes[1].set(xlabel="index i", ylabel="λ_i / λ_(i+1)",
            title="relative gap after each eigenvalue (red: inside the outliers)")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.set_xticks(np.arange(0, K_TOP + 1, 5 if K_TOP > 20 else 2))
plt.show()"""),
    nbf.v4.new_markdown_cell("""OUTLIERS"""),
    nbf.v4.new_markdown_cell("""## 3. Do the outliers live in the span of the class means?

**Claim (Papyan).** The top-`C` eigenspace of `G` (and of the Hessian) is spanned by the `C`
class means `δ_c`: the projection of each top eigenvector onto `span{δ_c}` keeps nearly all
of it.

`ht.class_means_overlap(vectors, dec)` computes the class means from
`ht.papyan_decomposition(obj)` and returns, for each vector, `‖P v‖² / ‖v‖²` (`P`: the
projector onto the span) and the mean over the subspace (the mean squared cosine of the
principal angles). We use Papyan 2019's convention `true_class="separate"` (the class mean
averages the `C − 1` wrong-class directions; the true-class terms form a fourth part). A
random 10-dimensional subspace of the `P`-dimensional parameter space overlaps a fixed
10-dimensional span by `10/P` on average: that is the baseline."""),
    nbf.v4.new_code_cell("""dec = ht.papyan_decomposition(obj, true_class="separate")
ov_h = ht.class_means_overlap(eig_h, dec)          # all K_TOP vectors, one per eigenvalue
ov_g = ht.class_means_overlap(eig_g, dec)
top10 = {name: ht.class_means_overlap(jax.tree.map(lambda a: a[np.argsort(-e.values)[:C]], e.vectors), dec)
         for name, e in (("Hessian", eig_h), ("Gauss-Newton", eig_g))}
flat, unravel = ravel_pytree(obj.params)
rand = jax.vmap(unravel)(jax.random.normal(jax.random.key(3), (C, flat.size), flat.dtype))
ov_r = ht.class_means_overlap(rand, dec)
for name, ov in top10.items():
    print(f"top-{C} eigenspace of the {name}: mean overlap {ov.mean:.3f}; "
          f"per vector {np.round(ov.per_vector, 2)}")
print(f"random {C}-dim subspace: {ov_r.mean:.4f} (10/P = {C / H.dim:.4f})")

order_h, order_g = np.argsort(-eig_h.values), np.argsort(-eig_g.values)
fig, ax = plt.subplots(figsize=(9, 4.2), layout="constrained")
ax.plot(i, ov_h.per_vector[order_h], "o-", label="Hessian eigenvectors")
ax.plot(i, ov_g.per_vector[order_g], "s--", mfc="none", label="Gauss-Newton eigenvectors")
ax.axhline(ov_r.mean, color="C2", label=f"random {C}-dim subspace ({ov_r.mean:.4f})")
ax.axvline(C + 0.5, color="0.3", ls=":", label=f"C = {C}")
ax.set(xlabel="eigenvector of the i-th largest eigenvalue", ylim=(-0.02, 1.02),
       ylabel="‖P v‖² / ‖v‖²  (fraction in span{δ_c})",
       title="overlap of each top eigenvector with the span of the class means")
ax.legend()
ax.grid(alpha=0.3)
plt.show()"""),
    nbf.v4.new_markdown_cell("""OVERLAP"""),
    nbf.v4.new_markdown_cell("""## 4. Papyan's parts: which one carries the outliers?

**Claim (Papyan).** `G_class` (rank ≤ `C`) has the `C` outliers, `G_cross` (rank ≤ `C(C−1)`)
a second level of smaller outliers, and the within-class part `G_within` the bulk: the top
eigenvalues of `G_class` are close to the outliers of `G`, those of `G_within` near the
bulk edge.

Each part is a matrix-free `CurvatureOperator`; their sum is `ht.gauss_newton(obj)`
exactly. We compute the top eigenvalues of each with `ht.eigenvalues`."""),
    nbf.v4.new_code_cell("""K_PART = 12
part_top = {name: np.sort(ht.eigenvalues(op, k=K_PART, key=jax.random.key(4)).largest)[::-1]
            for name, op in dec.parts.items()}
for name, v in part_top.items():
    print(f"{name:>13}: {np.round(v, 4)}")
print(f"{'G':>13}: {np.round(top_g[:K_PART], 4)}")
# cross-check: G_class = sum_c pi_c W_c δ_c δ_c^T has the nonzero eigenvalues of the C x C
# matrix diag(sqrt(a)) Gram(δ) diag(sqrt(a)), a_c = pi_c W_c (W_c = C - 1 here)
means = ht.class_mean_vectors(dec)
mflat = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(means), np.float64)
a = np.sqrt(dec.class_weights * (C - 1))
small = np.sort(np.linalg.eigvalsh(a[:, None] * (mflat @ mflat.T) * a[None, :]))[::-1]
print(f"G_class from the {C}x{C} Gram matrix of the class means: {np.round(small, 4)}")
# how concentrated the wrong-class probability is: near zero loss a few examples carry it
wrong = np.sort(np.asarray(1 - jax.nn.softmax(logits)[jnp.arange(len(y)), y]))[::-1]
print(f"probability on wrong classes: the top 1% of examples ({len(y) // 100}) carry "
      f"{wrong[:len(y) // 100].sum() / wrong.sum():.0%} of it, the median example {np.median(wrong):.1e}")

fig, ax = plt.subplots(figsize=(9, 4.4), layout="constrained")
j = np.arange(1, K_PART + 1)
ax.semilogy(j, top_g[:K_PART], "k-", lw=2, label="G (sum of the parts)")
for (name, v), m in zip(part_top.items(), "osD^"):
    keep = v > 1e-9 * top_g[0]     # rank <= C: the rest is rounding, left out
    ax.semilogy(j[keep], v[keep], m + "--", ms=5, label=f"G_{name.split('_')[0]}")
ax.axvline(C + 0.5, color="0.3", ls=":", label=f"C = {C}")
ax.set(xlabel="index i", ylabel="λ_i (log scale)", xticks=j,
       title="top eigenvalues of Papyan's parts of G (zeros of the rank-C parts omitted)")
ax.legend()
ax.grid(alpha=0.3)
plt.show()
print(f"total {time.perf_counter() - start:.1f} s")"""),
    nbf.v4.new_markdown_cell("""PARTS"""),
    nbf.v4.new_markdown_cell("""## Summary

SUMMARY"""),
]

TEXT = {}   # the markdown that quotes the executed run's numbers (full configuration)

TEXT["SPECTRUM"] = """**Ours.** The network fits the training set (loss 2.9e-3, accuracy 1.000). Of its 3,466
eigenvalues, SLQ puts 98.9% within `|λ| < 0.01`, while the largest is 0.527: the bulk is a
spike at zero on the left (note the log density axis: the spike is three to four orders of
magnitude above the isolated peaks) and the log-scale view shows it spread over `|λ|` up to about 1e-2
(below 7e-5 it is not resolved), with negative eigenvalues only down to about −6e-4. Each eigenvalue above the bulk
appears as its own narrow SLQ peak, sitting on the red line of a Lanczos eigenvalue; SLQ
counts 10.3 eigenvalues above the 11th Lanczos one (exactly 10 are), so the two methods
agree.

**Agreement.** The shape is Sagun et al.'s: almost all of the spectrum is at zero, a few
eigenvalues are one to two orders of magnitude above it. The negative eigenvalues are tiny,
as they report after training (a near-minimum, not a saddle). The grey band of the log view
is below the resolution of 100 Lanczos steps: how the bulk near zero splits into signs is not
resolved there, which matters little for this notebook."""

TEXT["OUTLIERS"] = """**Ours.** The rule finds **8 outliers**, for the Hessian and for `G` alike: the gap after
the 8th eigenvalue (0.068 → 0.039, a ratio of 1.77) is 68 times the bulk spacing. The
ratios inside the outliers are 1.26-1.41 and those in the bulk 1.02-1.12; there is **no gap
after the 10th** (0.0361 → 0.0337, ratio 1.07), and nothing marks the 9th and 10th
eigenvalues as different from the bulk. For the Hessian the count is the same at `k' = 40,
27, 18`, so it is stable; for `G` the `k' = 18` window puts the split after the 6th
eigenvalue, so the library flags `G`'s count as not stable, although the full-window
count is 8. Windows of 12 and fewer count 0-1, as documented: a window must hold more than
twice the outliers for the rule to see the bulk spacing.

**Where we agree and where not.** A small group of outliers clearly separated from the bulk,
of the order of `C`, and the Hessian and `G` share them (the two curves run parallel, `G`
slightly below: at a near-minimum the residual term `H − G` is small), as Papyan shows.
But we get 8 rather than 10. A 3,466-parameter MLP on 1,797 digits is far from the wide
networks on MNIST/CIFAR of the papers: with 32 units in the last hidden layer and every
training example already fitted, two of the class directions plausibly carry too little
curvature to rise above the bulk (their eigenvectors are only partly in the class-means span:
section 3). "About C" is the honest summary; "exactly C" is not what this model shows."""

TEXT["OVERLAP"] = """**Ours.** The top-10 eigenspace overlaps the span of the 10 class means by **0.710**
(Hessian) and **0.716** (`G`), against **0.0035** for a random 10-dimensional subspace
(`10/P = 0.0029`): about 200 times the chance level. Vector by vector, the top 8 eigenvectors
lie 64-99% in the span (0.99, 0.96, 0.92, 0.94, 0.84, 0.80, 0.69, 0.64 for the Hessian), the
9th and 10th only 24% and 9%, and further down the overlap falls to a few percent (with a
bump of 0.2-0.4 at the 12th, the class direction that did not make it into the outliers).

**Where we agree and where not.** Papyan's claim holds for the outliers: the eigenvectors
that rise above the bulk are nearly in the span of the class means, the more so the larger
the eigenvalue. The mean overlap of the top 10 is 0.71, not "near 1", and the reason is
section 2's: only 8 eigenvalues are outliers, and the 9th and 10th eigenvectors belong to
the bulk, which is not in the class-means span. Over the 8 outliers the overlap averages
about 0.85."""

TEXT["PARTS"] = """**Ours.** The parts' top eigenvalues: `G_within` 0.405, `G_cross` 0.048, `G_class` 0.033,
`G_true` 0.0013, against 0.482 for `G`. The rank-`C` part `G_class` has exactly 10 nonzero
eigenvalues (the 11th is at rounding level), and they equal those of the `10×10` Gram
matrix of the class means computed from `ht.class_mean_vectors` (0.0333, 0.0162, …,
0.0004): the matrix-free operator and the explicit vectors agree to the four digits shown.

**Where we agree and where not.** Here we **disagree** with Papyan's attribution: on this
model `G_class` carries only about 7% of the top eigenvalue of `G`, and the outliers of `G`
are matched almost one for one by those of the **within-class** part (0.405, 0.304, 0.236, …
vs 0.482, 0.354, 0.271, …), with the cross-class part a factor of ten below. Yet section 3
found the outlier eigenvectors inside the span of the class means. Both hold if the
within-class variation is itself concentrated along the class-mean directions. That is what
a network at near-zero loss produces: the per-example weights `sqrt(p_ic')` on the wrong
classes are heavy-tailed (the top 1% of examples carry 22% of the wrong-class probability,
the median example 2.5e-4), so each cross-class mean `δ_{c,c'}` is dominated by a few hard
examples, and those examples' deviations from the mean point the same way as the mean
itself, only larger. Papyan's networks (larger, trained on tens of thousands of examples
per class) average over many more examples, and their class means dominate. Our
explanation is a reading of the numbers above, not a separate experiment: a less-trained
checkpoint or a wider model would test it."""

TEXT["SUMMARY"] = """| | paper | this notebook (digits, `mlp-small`, 3,466 parameters) |
|---|---|---|
| bulk near zero | most eigenvalues ≈ 0 | 98.9% within ±0.01; λ_max = 0.527 |
| number of outliers | ≈ `C` = 10 | 8 (stable for `k' ≥ 18` for the Hessian) |
| gap after the `C`-th | yes | no: after the 8th (ratio 1.77); λ10/λ11 = 1.07 |
| top-`C` eigenspace in span{δ_c} | ≈ 1 | 0.71 (top 8 vectors: 0.64-0.99); random: 0.0035 ≈ 10/P |
| outliers carried by | `G_class` | `G_within` (0.405 vs 0.033 for `G_class`), along the class-mean directions |

Sagun et al.'s picture (a bulk at zero and about `C` outliers) and Papyan's geometric claim
(the outlier eigenvectors lie in the class-means span) hold on this small model; Papyan's
attribution of the outliers' *size* to the class-means part does not, which we trace to the
few hard examples that dominate the curvature of a network at near-zero training loss."""

write_notebook(PATH, cells, TEXT)
