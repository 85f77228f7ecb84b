"""Builds notebooks/09_saddles_dauphin.ipynb (then execute it: python tools/run_notebook.py ...).

Run again after editing only markdown: the outputs of an already executed notebook are kept
when every code cell is unchanged (otherwise they are dropped and the notebook must be
executed again).
"""
from pathlib import Path

import nbformat as nbf
from _notebook import write_notebook

PATH = Path("notebooks/09_saddles_dauphin.ipynb")

cells = [
    nbf.v4.new_markdown_cell("""# Saddles, not minima: Dauphin et al. 2014

**Dauphin, Pascanu, Gulcehre, Cho, Ganguli & Bengio (2014)**, *Identifying and attacking the
saddle point problem in high-dimensional non-convex optimization*, make two claims:

1. **Fig. 1 (their MNIST/CIFAR nets):** critical points of a neural network's training loss
   are not scattered at random: their training error rises with their **index** `α` (the
   fraction of negative Hessian eigenvalues), on a continuum from the minima (`α = 0`,
   lowest error) up through saddles of increasing index. Local minima with high error are
   exponentially rare; most high-error critical points are saddles.
2. **Sec. 6-7:** Newton's method is *attracted* to saddles (it rescales each eigendirection
   by `1/λ`, flipping negative-curvature directions), gradient descent escapes them slowly
   (small gradients), and **saddle-free Newton** (`1/|λ|`) escapes fast.

Here: a small tanh MLP on scikit-learn's digits (2×2-pooled images, 16 inputs, a few hidden
units, float64) so that every Hessian is classified exactly by a dense eigendecomposition.
Set `HESSIAN_TOOLS_SMALL=1` for a smaller configuration (the test suite runs it); the
numbers quoted in the text are those of the full configuration, whose outputs are stored
here."""),
    nbf.v4.new_code_cell("""import os, time
import jax
jax.config.update("jax_enable_x64", True)     # float64: critical points need accurate gradients
import jax.numpy as jnp
import numpy as np
import optax
import matplotlib.pyplot as plt
import hessian_tools as ht
from hessian_tools.examples.digits import load_digits_data

SMALL = os.environ.get("HESSIAN_TOOLS_SMALL") == "1"
N_EXAMPLES, HIDDEN = (300, 3) if SMALL else (800, 4)
SEEDS = 1 if SMALL else 3
TARGETS = [2] if SMALL else [1, 4, 8, 16]      # indices sought by eigenvector following
FOLLOW = 4 if SMALL else 15                    # eigenvector-following steps per start
RUN_STEPS = 8 if SMALL else 60                # Newton-type steps in section 3

x, y = load_digits_data(dtype=jnp.float64)
x = x.reshape(-1, 4, 2, 4, 2).mean((2, 4)).reshape(-1, 16)   # 8x8 -> 4x4 pixels
x, y = x[:N_EXAMPLES], y[:N_EXAMPLES]
data = (x, y)

def init(key, scale=1.0):
    k1, k2 = jax.random.split(key)
    return {"w1": scale * jax.random.normal(k1, (16, HIDDEN)) / 4, "b1": jnp.zeros(HIDDEN),
            "w2": scale * jax.random.normal(k2, (HIDDEN, 10)) / np.sqrt(HIDDEN), "b2": jnp.zeros(10)}

def loss(p, batch):
    xb, yb = batch
    logits = jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return ce + 1e-3 * (jnp.sum(p["w1"] ** 2) + jnp.sum(p["w2"] ** 2))   # small weight decay

def error(p):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return float(jnp.mean(jnp.argmax(logits, -1) != y))

obj = ht.Objective(loss, init(jax.random.key(0)), data)
print(f"{obj.num_params} parameters, {obj.num_examples} examples")
start = time.perf_counter()"""),
    nbf.v4.new_markdown_cell("""## 1. Where do we look? Training trajectories and the points near them

Dauphin et al. ran Newton's method on the gradient norm from points along training runs. We
train with Adam from `SEEDS` initialisations and keep checkpoints; then ``ht.polish``
(trust region, monotone in the loss) tries to take each end point to a certified minimum, and
``ht.find_critical_points`` (Newton-MR on `½‖∇L‖²`: attracted to the nearest critical point
of *any* index) starts from every checkpoint and from small-scale initialisations (near
the symmetric point where all hidden units are off, whose loss is about `ln 10`)."""),
    nbf.v4.new_code_cell("""opt = optax.adam(1e-2)

@jax.jit
def train_step(p, s):
    u, s = opt.update(jax.grad(loss)(p, data), s)
    return optax.apply_updates(p, u), s

CHECK = [0, 30] if SMALL else [0, 5, 10, 20, 40, 80, 150, 300]
checkpoints, ends = [], []
for seed in range(SEEDS):
    p = init(jax.random.key(seed))
    s = opt.init(p)
    for t in range(CHECK[-1] + 1):
        if t in CHECK:
            checkpoints.append(p)
        p, s = train_step(p, s)
    ends.append(p)

minima = [ht.polish(obj, p, key=jax.random.key(10 + i), max_steps=15 if SMALL else 60)
          for i, p in enumerate(ends)]
for m in minima:
    print(f"polished: {m.status}, verdict {m.verdict}, loss {m.loss:.4f}, index {m.index}, "
          f"|grad| {m.grad_norm:.1e}, error {error(m.params):.3f}")

small_inits = [init(jax.random.key(100 + i), scale=s)
               for i, s in enumerate([0.05, 0.2] if SMALL else [0.02, 0.05, 0.1, 0.2, 0.4, 0.7])]
t0 = time.perf_counter()
found = ht.find_critical_points(obj, checkpoints + small_inits, key=jax.random.key(1),
                                newton_steps=12 if SMALL else 50)
print(f"Newton-MR from {len(found)} starts: {time.perf_counter() - t0:.1f} s")
print(found)"""),
    nbf.v4.new_markdown_cell("""NEWTONMR"""),
    nbf.v4.new_markdown_cell("""## 2. Filling in the continuum: saddles of a chosen index

Newton-MR lands where it lands. ``ht.find_saddles(obj, starts, target_index=k)`` instead
*follows eigenvectors*: uphill along the `k` lowest Hessian eigenvectors, downhill in their
complement, then Newton-MR to converge; a run has ``reached`` its target when the point is
critical with exactly `k` negative eigenvalues. We also follow Dauphin et al.'s recipe and run
Newton-MR from points on the straight lines between the `ln 10` saddle and the minima. The
eigenvector following starts from the saddle and from a minimum, each nudged by a small
random step, for several target indices, and plot every critical point we have
(Dauphin et al.'s Fig. 1: training error and loss against the index)."""),
    nbf.v4.new_code_cell("""def nudge(p, key, eps=0.05):
    leaves, treedef = jax.tree.flatten(p)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [l + eps * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])

top = max((q for q in found if q.status == "critical"), key=lambda q: q.index)   # the ln 10 saddle
# Dauphin et al.'s recipe: Newton from points between a high-error saddle and the minima
line = [jax.tree.map(lambda a, b: (1 - t) * a + t * b, top.params, m.params)
        for m in minima for t in ([0.5] if SMALL else [0.2, 0.4, 0.6, 0.8])]
t0 = time.perf_counter()
between = ht.find_critical_points(obj, line, key=jax.random.key(2), newton_steps=12 if SMALL else 50)
print(f"Newton-MR from {len(line)} points on the lines saddle -> minima: "
      f"{len(between.critical)} critical "
      f"({time.perf_counter() - t0:.0f} s)")
searches = {}
for k in TARGETS:   # eigenvector following: from the nudged saddle and from nudged minima
    starts = [nudge(top.params, jax.random.key(200 + 10 * k))]
    starts += [nudge(m.params, jax.random.key(200 + 10 * k + i + 1)) for i, m in enumerate(minima[:1])]
    searches[k] = ht.find_saddles(obj, starts, target_index=k, key=jax.random.key(300 + k),
                                  follow_steps=FOLLOW, newton_steps=10 if SMALL else 30)
    print(f"target {k:>2}: {searches[k]}   ({time.perf_counter() - t0:.0f} s so far)")

points = [p for p in list(found) + list(between) if p.status == "critical"]
points += [m for m in minima if m.status == "critical"]
points += [p for s in searches.values() for p in s if p.status == "critical"]
alpha = np.array([p.index_fraction for p in points])
losses = np.array([p.loss for p in points])
errors = np.array([error(p.params) for p in points])
order = np.argsort(alpha)
print(f"{len(points)} critical points; index fraction, loss, training error:")
for i in order:
    print(f"  α = {alpha[i]:.3f} (index {points[i].index:>3}), loss {losses[i]:.4f}, error {errors[i]:.3f}")
if len(points) > 2:
    print(f"rank correlation (Spearman) of α with error: "
          f"{np.corrcoef(np.argsort(np.argsort(alpha)), np.argsort(np.argsort(errors)))[0, 1]:.2f}")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.3), layout="constrained")
ht.plot_index_vs_loss(found, ax=axes[0], label="Newton-MR")
ht.plot_index_vs_loss(between, ax=axes[0], label="Newton-MR, lines", color="C1")
for k, s in searches.items():
    ht.plot_index_vs_loss(s, ax=axes[0], label=f"target {k}", color=f"C{2 + TARGETS.index(k)}")
axes[0].set_title("loss at the points reached (filled: critical)")
axes[1].scatter(alpha, 100 * errors, c=np.log10(losses), cmap="viridis")
axes[1].set(xlabel="index α (fraction of negative eigenvalues)", ylabel="training error (%)",
            title="Dauphin et al. Fig. 1: error against index, critical points only")
axes[1].grid(alpha=0.3)
fig.colorbar(axes[1].collections[0], ax=axes[1], label="log10 loss")
plt.show()"""),
    nbf.v4.new_markdown_cell("""CONTINUUM"""),
    nbf.v4.new_markdown_cell("""## 3. Escaping a saddle: saddle-free Newton against Newton, GD and Adam

We start next to the highest-index saddle found (a random step of norm `1e-3` off it) and run
four optimizers for the same budget of products (a gradient counts one, each Krylov step of
the Newton methods `k` Hessian-vector products plus the gradient): ``ht.damped_newton``
(Newton regularised by `δ`, the paper's baseline), ``ht.saddle_free_newton`` (the same Krylov
step with `|λ|`), and ``optax.sgd`` / ``optax.adam``."""),
    nbf.v4.new_code_cell("""crit = [p for p in points if p.index and p.index > 0]
saddle = max(crit, key=lambda p: p.index) if crit else minima[0]
print(f"start next to a saddle of index {saddle.index} (α = {saddle.index_fraction:.3f}), loss {saddle.loss:.4f}")
x0 = nudge(saddle.params, jax.random.key(7), eps=1e-3 / np.sqrt(obj.num_params))
K, DAMP = 10, 1e-2

def run(opt, steps, cost):
    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p, data)
        u, s = opt.update(g, s, p, batch=data, value=value)
        return optax.apply_updates(p, u), s, value
    p, s, curve = x0, opt.init(x0), []
    for i in range(steps):
        p, s, value = step(p, s)
        curve.append(((i + 1) * cost, float(value)))
    return np.array(curve), p

runs = {f"saddle-free Newton (k={K}, δ={DAMP})": run(ht.saddle_free_newton(loss, num_steps=K, damping=DAMP), RUN_STEPS, K + 1),
        f"damped Newton (k={K}, δ={DAMP})": run(ht.damped_newton(loss, num_steps=K, damping=DAMP), RUN_STEPS, K + 1),
        "gradient descent (lr 0.5)": run(optax.sgd(0.5), RUN_STEPS * (K + 1), 1),
        "Adam (lr 0.01)": run(optax.adam(1e-2), RUN_STEPS * (K + 1), 1)}
fig, ax = plt.subplots(figsize=(8, 4.3), layout="constrained")
for name, (c, _) in runs.items():
    ax.plot(c[:, 0], c[:, 1], label=name)
ax.axhline(saddle.loss, color="0.5", ls=":", label=f"the saddle (index {saddle.index})")
ax.axhline(min(m.loss for m in minima), color="k", ls="--", lw=0.8, label="best polished minimum")
ax.set(xlabel="products (gradients + Hessian-vector products)", ylabel="training loss",
       title="starting 1e-3 away from a saddle (losses above 2.6 clipped)", ylim=(0.6, 2.6))
ax.legend(fontsize=8); ax.grid(alpha=0.3)
plt.show()
for name, (c, p) in runs.items():
    rep = ht.classify(obj.with_params(p), key=jax.random.key(8))
    print(f"{name:34s} final loss {c[-1, 1]:.4f}, error {error(p):.3f}, |grad| {rep.grad_norm:.1e}, "
          f"index {rep.index}, max loss {c[:, 1].max():.3g}")
    left = c[c[:, 1] < 0.95 * saddle.loss, 0]
    print(f"{'':34s} loss below 95% of the saddle's after {int(left[0]) if len(left) else 'never'} products")
print(f"total {time.perf_counter() - start:.1f} s")"""),
    nbf.v4.new_markdown_cell("""ESCAPE"""),
    nbf.v4.new_markdown_cell("""## Summary

SUMMARY"""),
]

TEXT = {}   # the markdown that quotes the executed run's numbers (full configuration)

TEXT["NEWTONMR"] = """**Ours.** The network has 118 parameters (800 examples). `ht.polish` did **not** certify
the three Adam end points within 60 trust-region steps (status "not converged", |grad| 1.3e-2,
1.6e-5, 3.2e-5; loss 0.718-0.733, training error 12.7-15.0%), but Newton-MR from them (next
section) converges to index-0 critical points at the same losses. Newton-MR from the 30 starts
(32 s) finds 12 critical points, all at loss 2.3025 ≈ ln 10 (the network outputs the class
frequencies) with index 27-36 (α = 0.23-0.31): the saddle(s) of the "all hidden units off"
family. Ten more stop as *gradient-flat* (near the minima, and at ln 10 with index 23-28) and
eight do not converge (among them points at loss 1.25-1.82 with index 1-3: the only hints of
intermediate saddles)."""

TEXT["CONTINUUM"] = """**Ours.** Newton-MR from the 12 points on the lines between the ln 10 saddle and the minima
reaches a critical point from 11 of them, but only the two ends again (minima at loss
0.718-0.733, α = 0; the ln 10 saddle, α = 0.31). Eigenvector following reached **none** of
its targets (0 of 8 runs): from a nudged minimum it falls back into the minimum (index 0) for
every target 1-16; from the nudged ln 10 saddle it stops, gradient-flat or not converged, at
loss 1.05-1.76 with index 0-4 (the hollow and × marks at α ≤ 0.034 on the left). Over the 26
certified critical points the Spearman rank correlation of α with the training error is
0.87, but the certified points form **two clusters** (α = 0 with 13-15% error; α = 0.23-0.31
with 89.7% error), not a continuum.

**Where we agree and where not.** The direction of Dauphin et al.'s Fig. 1 holds: every
certified critical point with high error is a saddle of large index, every certified
low-error point is a minimum, and no high-error minimum turned up. The continuum between
does not show here. A 4-hidden-unit network has few intermediate critical points to find
(saddles with one, two or three units active), and the searches that approach them (index
1-4 at loss 1.05-1.82) do not converge within their budgets (15 following steps, 30-50
Newton-MR steps): these regions are nearly degenerate (tanh units at saturation,
weight-decay-sized curvature), so Newton-MR ends gradient-flat rather than critical. Dauphin
et al. used larger networks (MNIST/CIFAR, down-sampled, thousands of parameters), whose
critical points are far more numerous at every index, and a Newton method on the gradient
norm with larger budgets. A wider hidden layer (8-16 units), longer following runs, or
starts from every Adam checkpoint of many seeds are the obvious next tries; the
eigenvector-following failure from minima is reported as a possible library issue."""

TEXT["ESCAPE"] = """**Ours.** Starting 1e-3 from the index-36 ln 10 saddle (loss 2.3025), with 660 products each:
**saddle-free Newton** leaves the plateau (loss below 95% of the saddle's) after 165
products and ends at loss 0.7345 (error 14.7%, index 0, |grad| 9.8e-4), the lowest of the
four and close to the best Adam end point (0.718; the dashed line). **Damped Newton** (δ = 0.01, the full
step as in the paper) never gets below the saddle's loss: it stays on the plateau for about
130 products, then jumps to losses of 1e2-1e3 (max 1.06e3) and ends at 90.7 with an index-3
Hessian. **Gradient descent** (lr 0.5) leaves after 200 products and is still at 0.940 at the
end; **Adam** (lr 0.01) leaves after 24 products and ends at 0.7527.

**Where we agree and where not.** Saddle-free Newton escapes the saddle and beats plain
gradient descent per product, and the damped Newton baseline fails, as in the paper's Fig. 4
(there Newton stalls at the saddle; here, without a line search, its steps along
negative-curvature directions weaker than its damping are enormous, so it diverges instead).
Adam, which the paper did not compare, leaves the plateau first: its per-coordinate
normalisation makes the tiny gradient at the saddle a full-sized step, while the Krylov
methods pay 11 products per step and need a few steps before the Lanczos subspace sees the
negative directions. In the end saddle-free Newton reaches a lower loss than Adam."""

TEXT["SUMMARY"] = """| | Dauphin et al. 2014 | this notebook (digits 4×4, 16-4-10 tanh, 118 parameters) |
|---|---|---|
| high-error critical points are saddles | yes | yes: all at ln 10, α = 0.23-0.31, 89.7% error |
| low-error critical points are minima | yes | yes: α = 0, 13-15% error |
| a continuum of error against index | yes (Fig. 1) | **no**: two clusters; intermediate points (α ≤ 0.034, loss 1.05-1.82) not converged |
| saddle-free Newton escapes a saddle | yes | yes: below 95% of the saddle's loss after 165 products, final 0.7345 |
| damped Newton | stuck at the saddle | diverges (max loss 1.06e3, final 90.7) |
| gradient descent / Adam | slow | GD 200 products, final 0.940; Adam 24 products, final 0.7527 |

The qualitative claims hold on this tiny model; the continuum in Fig. 1 does not show, because
the intermediate critical points were not certified within our budgets."""


write_notebook(PATH, cells, TEXT)
