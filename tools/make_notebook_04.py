"""Builds notebooks/04_sharpness_and_optimizers.ipynb (then execute it: python tools/run_notebook.py ...).

Sections 1-4 are the notebook as it was written by hand; section 5 is the gallery entry
``cohen`` (hessian_tools/gallery/cohen.py). Run again after editing only markdown: the outputs
of an already executed notebook are kept when every code cell is unchanged (otherwise they
are dropped and the notebook must be executed again).
"""
from pathlib import Path

import nbformat as nbf
from _notebook import write_notebook

PATH = Path("notebooks/04_sharpness_and_optimizers.ipynb")

cells = [
    nbf.v4.new_markdown_cell(r"""# 04 · Sharpness during training: the edge of stability, and optimizers compared

The *sharpness* of a loss is the top eigenvalue $\lambda_{\max}(H)$ of its Hessian. On a
quadratic, gradient descent with step size $\eta$ diverges along any direction whose curvature
exceeds $2/\eta$ (heavy-ball momentum $\beta$: $(2+2\beta)/\eta$). Cohen et al. (2021) found
that full-batch training of a neural network drives the sharpness **up** (*progressive
sharpening*) until it reaches $2/\eta$, and then it **hovers there** while the loss keeps
falling, non-monotonically: the *edge of stability*. For adaptive optimizers the quantity that
equilibrates is the *preconditioned* sharpness $\lambda_{\max}(P^{-1/2} H P^{-1/2})$, at
$(2+2\beta_1)/((1-\beta_1)\eta)$ ($38/\eta$ for Adam with $\beta_1=0.9$; Cohen et al. 2022).

This notebook shows

1. the edge of stability with `ht.SharpnessTracker` (warm-started Lanczos, a crash-safe log);
2. SGD vs heavy-ball momentum vs Adam with `ht.compare_optimizers`, raw and preconditioned;
3. small vs large batches (Keskar et al. 2017);
4. the optax transformation `ht.sharpness_monitor`, measuring inside a jitted train step.

Set `HESSIAN_TOOLS_SMALL=1` for a quick run (the tests do)."""),
    nbf.v4.new_code_cell("""%matplotlib inline
import os, tempfile, time
from pathlib import Path
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
import matplotlib.pyplot as plt
import hessian_tools as ht
from hessian_tools.examples import digits

SMALL = os.environ.get("HESSIAN_TOOLS_SMALL") == "1"
N_EXAMPLES = 300 if SMALL else 1797          # digits examples used for training
EOS_STEPS = 60 if SMALL else 3000            # full-batch GD steps for the edge of stability
EOS_EVERY = 20 if SMALL else 10
CMP_STEPS = 20 if SMALL else 2000            # steps per optimizer in the comparison
KESKAR_STEPS = 30 if SMALL else 1500         # steps per batch size
MONITOR_STEPS = 20 if SMALL else 400
RUN_DIR = Path(tempfile.mkdtemp(prefix="sharpness-"))   # logs go here

x, y = digits.load_digits_data()
x, y = x[:N_EXAMPLES], y[:N_EXAMPLES]
print(f"{len(x)} examples, 64 pixels, 10 classes; small={SMALL}")"""),
    nbf.v4.new_markdown_cell(r"""## 1 · The edge of stability

A tanh MLP 64 → 32 → 32 → 10 trained by full-batch gradient descent on the squared error to
one-hot labels (the setting where Cohen et al. see the cleanest edge of stability). The last
layer is initialised 5× smaller than Glorot's default, so the sharpness starts low and we can
watch it rise. We train at two step sizes and measure $\lambda_{\max}$ on **all** training
examples (the full-batch sharpness) every few steps.

`SharpnessTracker.update(step, params, ...)` measures when `step % every == 0`. Each
measurement starts Lanczos from the previous top eigenvector (plus a converged runner-up that
guards against the top eigenvalue being overtaken), so it costs a handful of Hessian-vector
products; the record says how many."""),
    nbf.v4.new_code_cell("""data = (x, jax.nn.one_hot(y, 10))

def mse(outputs, batch):
    return 0.5 * jnp.mean(jnp.sum((outputs - batch[1]) ** 2, axis=-1))

def accuracy(outputs, batch):
    return jnp.mean(jnp.argmax(outputs, -1) == jnp.argmax(batch[1], -1))

model = digits.MLP((32, 32), rngs=nnx.Rngs(0))
last = model.layers[-1]
last.kernel[...] = 0.2 * last.kernel[...]      # output layer shrunk 5x: low initial sharpness
obj = ht.Objective.from_nnx(model, mse, data)  # the initialisation, the loss and the data
params0, loss_fn = obj.params, obj.loss

def train_gd(lr, steps, every, log_path):
    opt = optax.sgd(lr)
    tracker = ht.SharpnessTracker(obj, every=every, key=jax.random.key(1),
                                  optimizer=opt, log_path=log_path, overwrite=True)
    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params, data)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss
    params, state, losses = params0, opt.init(params0), []
    for i in range(steps + 1):
        tracker.update(i, params, opt_state=state, learning_rate=lr)
        params, state, loss = step(params, state)
        losses.append(loss)
    return tracker, np.asarray(jnp.stack(losses))

runs = {}
for lr in (0.1, 0.2):
    t0 = time.perf_counter()
    runs[lr] = train_gd(lr, EOS_STEPS, EOS_EVERY, RUN_DIR / f"gd_lr{lr}.jsonl")
    log = runs[lr][0].log
    print(f"eta={lr}: 2/eta={2 / lr:.1f}, sharpness {log['lambda_max'][0]:.2f} -> "
          f"{log['lambda_max'][-1]:.2f}, {np.mean(log['num_matvecs'][1:]):.1f} HVPs per "
          f"measurement, {time.perf_counter() - t0:.1f} s")"""),
    nbf.v4.new_code_cell("""fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for i, (lr, (tracker, losses)) in enumerate(runs.items()):
    ht.plot_sharpness(tracker.log, axes[0], learning_rate=lr, label=f"η = {lr}", color=f"C{i}")
    axes[1].plot(losses, color=f"C{i}", lw=1, label=f"η = {lr}")
axes[0].set_title("sharpness rises to 2/η (dashed) and hovers there")
axes[1].set(yscale="log", xlabel="step", ylabel="training loss",
            title="the loss keeps falling, non-monotonically")
axes[1].legend(); axes[1].grid(alpha=0.3)
plt.tight_layout()
plt.show()"""),
    nbf.v4.new_markdown_cell(r"""At the edge of stability the ratio $\lambda_{\max} / (2/\eta)$ sits near 1. The log on disk is
append-only JSON lines, one record per measurement, flushed as it is written; reading it back
gives arrays by quantity (a truncated last line, left by a crash, is skipped with a warning)."""),
    nbf.v4.new_code_cell("""for lr, (tracker, _) in runs.items():
    log = ht.read_sharpness_log(RUN_DIR / f"gd_lr{lr}.jsonl")
    tail = log["lambda_max"][-max(1, len(log) // 4):]
    print(f"eta={lr}: final sharpness / (2/eta) = {log['lambda_max'][-1] * lr / 2:.3f}, "
          f"median over the last quarter = {np.median(tail) * lr / 2:.3f}, "
          f"{len(log)} records, {log.total_matvecs} HVPs in all")
print(sorted(k for k in log.records[-1]))"""),
    nbf.v4.new_markdown_cell(r"""## 2 · SGD vs momentum vs Adam

`compare_optimizers` trains one model from one initialisation with the same data order under
each optimizer. It probes each optimizer for its step size and momentum
(`ht.optimizer_info`), tracks the raw sharpness and, for adaptive optimizers, the
preconditioned sharpness with $P = \sqrt{\hat\nu} + \epsilon$ read from the optimizer state,
and draws every run against its own threshold: $2/\eta$ for gradient descent,
$(2+2\beta)/\eta$ for heavy-ball momentum, $(2+2\beta_1)/((1-\beta_1)\eta) = 38/\eta$ for Adam
(on the preconditioned sharpness). Same model and loss as above, full batch; the sharpness is
measured on all training examples."""),
    nbf.v4.new_code_cell("""optimizers = {"GD η=0.2": optax.sgd(0.2),
              "momentum η=0.2 β=0.5": optax.sgd(0.2, momentum=0.5),
              "Adam η=0.01": optax.adam(0.01)}
for name, opt in optimizers.items():
    info = ht.optimizer_info(opt)
    print(f"{name:>22}: {info.kind}, η={info.learning_rate}, β={info.momentum}, threshold "
          f"{info.threshold():.4g} on {info.threshold_quantity}")
t0 = time.perf_counter()
res = ht.compare_optimizers(obj, optimizers, train_steps=CMP_STEPS, every=20,
                            key=jax.random.key(0), measure_size=None, accuracy_fn=accuracy)
print(f"{time.perf_counter() - t0:.1f} s")
print(res.table())"""),
    nbf.v4.new_code_cell("""axes = ht.plot_comparison(res)
axes[0].figure.tight_layout()
plt.show()"""),
    nbf.v4.new_markdown_cell(r"""Gradient descent settles at $2/\eta = 10$; heavy-ball momentum with the same $\eta$ goes past
$2/\eta$ and settles at its own threshold $(2+2\beta)/\eta = 15$. Adam's *raw* sharpness means
little for its stability (its steps are preconditioned); its *preconditioned* sharpness climbs
to the adaptive threshold $38/\eta = 3800$ and stays there (Cohen et al. 2022).

## 3 · Small vs large batches

Keskar et al. (2017) observed that large-batch training finds sharper minima. Same optimizer
(SGD, η = 0.1) and number of steps, batch sizes 32, 128 and the full batch; the sharpness is
always that of the full training loss."""),
    nbf.v4.new_code_cell("""batch_runs = {}
for bs in (32, 128, None):
    r = ht.compare_optimizers(obj, {"sgd": optax.sgd(0.1)},
                              train_steps=KESKAR_STEPS, every=KESKAR_STEPS // 15, batch_size=bs,
                              key=jax.random.key(0), measure_size=None, accuracy_fn=accuracy)
    batch_runs["full batch" if bs is None else f"batch {bs}"] = r.runs["sgd"]
fig, ax = plt.subplots(figsize=(6, 3.5))
for i, (name, run) in enumerate(batch_runs.items()):
    s = run.summary()
    print(f"{name:>10}: final sharpness {s['final_sharpness']:6.2f}, final loss "
          f"{s['final_loss']:.4f}, accuracy {s['final_accuracy']:.3f}")
    ax.plot(run.log.steps, run.log["lambda_max"], marker=".", color=f"C{i}", label=name)
ax.axhline(2 / 0.1, ls="--", color="0.5", label="2/η")
ax.set(xlabel="step", ylabel="sharpness λmax(H)", title="smaller batches stay flatter")
ax.legend(); ax.grid(alpha=0.3)
plt.show()"""),
    nbf.v4.new_markdown_cell("""## 4 · Measuring inside the train step: `sharpness_monitor`

`ht.sharpness_monitor` is an optax transformation in the style of `optax.snapshot`: it can
wrap an optimizer, passes its updates through unchanged, and every `every` updates runs a few
Lanczos steps (warm-started from its previous vector, kept in the state) at the current
parameters, all inside the jitted step. Read the values with `optax.tree.get`."""),
    nbf.v4.new_code_cell("""measure = jax.tree.map(lambda a: a[:256], data)           # compiled into the step: keep small
tx = ht.sharpness_monitor(loss_fn, measure, every=10, num_steps=8, optimizer=optax.adam(0.01),
                          key=jax.random.key(2))
params, state = params0, tx.init(params0)

@jax.jit
def train_step(params, state):
    grads = jax.grad(loss_fn)(params, data)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

for i in range(MONITOR_STEPS):
    params, state = train_step(params, state)
    if i % (MONITOR_STEPS // 4) == 0 or i == MONITOR_STEPS - 1:
        print(f"step {i:4d}: sharpness {float(optax.tree.get(state, 'sharpness')):7.3f}   "
              f"preconditioned {float(optax.tree.get(state, 'sharpness_preconditioned')):8.1f}"
              f"   (38/η = {38 / 0.01:.0f})")
print("compiled train steps:", train_step._cache_size())"""),
    nbf.v4.new_markdown_cell("""**Cost.** A tracker measurement is one linearisation of the gradient plus a few HVPs on the
measurement set (the record's `num_matvecs`); the transform spends `num_steps` HVPs per
measurement. Keep the measurement set small (a few hundred examples) and the period at ten
steps or more and tracking adds a fraction of the training time
(see `benchmarks/RESULTS_sharpness.md`).

References: Cohen, Kaur, Li, Kolter & Talwalkar (2021), *Gradient descent on neural networks
typically occurs at the edge of stability*; Cohen et al. (2022), *Adaptive gradient methods
at the edge of stability*; Keskar et al. (2017), *On large-batch training for deep learning*;
Gur-Ari, Roberts & Dyer (2018), *Gradient descent happens in a tiny subspace*."""),
    # ---- section 5: the gallery entry ``cohen`` (hessian_tools/gallery/cohen.py)
    nbf.v4.new_markdown_cell(r"""## 5 · Cohen et al. reproduced: three step sizes, two losses, gradient flow, Adam

The code of this section lives in `hessian_tools/gallery/cohen.py` (gallery entry `cohen`);
`hessian-tools gallery cohen --out DIR` runs the same steps and writes the figures and a
short report (our numbers beside the papers' claims, and the verdict).

Sections 1 and 2 showed the edge of stability at two step sizes with the squared error, and
Adam at one. Cohen et al. (2021, Sec. 3) claim more: at **every** step size, for the
**squared error and the cross-entropy** alike, full-batch gradient descent's sharpness rises
until it reaches $2/\eta$ and then hovers there; and *gradient flow*, the small-step limit,
follows the same rise but has no ceiling, so gradient descent tracks the flow only until
its sharpness meets $2/\eta$. Cohen et al. (2022, Sec. 3) find the same for Adam with the
preconditioned sharpness $\lambda_{\max}(P^{-1}H)$ against $38/\eta$.

Cohen et al. trained on a 5,000-image subset of CIFAR-10, which a network fits only after
thousands of steps. Digits is far easier: with the cross-entropy the loss goes to nearly
zero within a few hundred steps, and the sharpness falls with it before it can settle
(Cohen et al. see the same fall late in their cross-entropy runs). To give the networks a
fit as hard as theirs we replace the labels of 30% of the 1,000 training images by random
classes (`label_noise=0.3`), for both losses. Same network as above (tanh 64-32-32-10, the
output layer shrunk 5×), gradient descent at three step sizes per loss, the sharpness on all
training examples every `cfg.every` steps (`ht.compare_optimizers`)."""),
    nbf.v4.new_code_cell("""from hessian_tools.gallery import cohen

cfg = cohen.CONFIGS["small" if SMALL else "full"]
print(cfg)
t_cohen = time.perf_counter()
objs = {loss: cohen.setup(loss, num_examples=cfg.num_examples, label_noise=cfg.label_noise)
        for loss in cohen.LOSSES}
gd = {}
for i, loss in enumerate(cohen.LOSSES):
    lrs = cfg.mse_lrs if loss == "mse" else cfg.ce_lrs
    gd[loss] = cohen.gd_runs(objs[loss], lrs, steps=cfg.gd_steps, every=cfg.every,
                             key=jax.random.fold_in(jax.random.key(0), i))
    for lr, r in zip(lrs, gd[loss].runs.values()):
        e = cohen.edge_ratio(r.log, lr)
        print(f"{loss:>13}, η = {lr:g}: 2/η = {2 / lr:5.2f}, sharpness {r.log['lambda_max'][0]:.2f}"
              f" -> {r.log['lambda_max'][-1]:.2f}; λ_max/(2/η) over the last quarter: median "
              f"{e['median']:.2f} (10-90%: {e['low']:.2f}-{e['high']:.2f}), first ≥ 0.9 at step "
              f"{e['first_step']}; final loss {r.eval_loss[-1]:.4f}")
print(f"{time.perf_counter() - t_cohen:.1f} s")"""),
    nbf.v4.new_markdown_cell("""COHEN_GD"""),
    nbf.v4.new_markdown_cell(r"""### Gradient flow as the reference

`ht.gradient_flow(obj, t_max=..., alpha=...)` integrates $\dot\theta = -\nabla L(\theta)$
with RK4 at Cohen et al.'s step $\Delta t = \alpha / \lambda_{\max}$ ($\lambda_{\max}$
re-measured at every output time), and records the sharpness there. Gradient descent at
step $\eta$ after $k$ steps is compared with the flow at time $t = \eta k$; the flow runs
as long as the slowest gradient descent run (the smallest $\eta$)."""),
    nbf.v4.new_code_cell("""t0 = time.perf_counter()
ref = cohen.flow(objs["mse"], t_max=min(cfg.mse_lrs) * cfg.gd_steps, num_points=cfg.flow_points,
                 alpha=cfg.alpha, key=jax.random.fold_in(jax.random.key(0), 10))
print(f"gradient flow to t = {ref.times[-1]:g}: sharpness {ref.sharpness[0]:.2f} -> "
      f"{ref.sharpness[-1]:.2f} (max {ref.sharpness.max():.2f}), {ref.num_steps} RK4 steps "
      f"({ref.num_gradient_evals} gradients, dt {ref.dt_min:.3g}-{ref.dt_max:.3g}), "
      f"{time.perf_counter() - t0:.1f} s")
fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained")
cohen.plot_gd(gd["mse"], ref, ax=axes[0], title="squared error: GD and gradient flow")
cohen.plot_gd(gd["cross-entropy"], ax=axes[1], title="cross-entropy: GD")
plt.show()"""),
    nbf.v4.new_markdown_cell("""COHEN_FLOW"""),
    nbf.v4.new_markdown_cell(r"""### Adam at the adaptive edge of stability

**Claim (Cohen et al. 2022, Sec. 3).** Full-batch Adam with $\beta_1 = 0.9$ trains with
its preconditioned sharpness $\lambda_{\max}(P^{-1}H)$ at
$(2 + 2\beta_1)/((1-\beta_1)\eta) = 38/\eta$, where $P = \sqrt{\hat\nu} + \epsilon$ is
the diagonal preconditioner in Adam's state; the raw sharpness is not held by any
threshold. `ht.compare_optimizers` measures both (the tracker reads $P$ from the optimizer
state; $\lambda_{\max}(P^{-1/2} H P^{-1/2})$, the same spectrum as $P^{-1}H$). Squared
error, the noisy-label data above, two step sizes."""),
    nbf.v4.new_code_cell("""adam = cohen.adam_runs(objs["mse"], cfg.adam_lrs, steps=cfg.adam_steps, every=cfg.every,
                       key=jax.random.fold_in(jax.random.key(0), 20))
for lr, r in zip(cfg.adam_lrs, adam.runs.values()):
    e = cohen.edge_ratio(r.log, lr, quantity="precond_lambda_max", threshold=r.info.threshold())
    print(f"Adam η = {lr:g}: 38/η = {r.info.threshold():.0f}, λ_max(P⁻¹H)/(38/η) over the last "
          f"quarter: median {e['median']:.2f} (10-90%: {e['low']:.2f}-{e['high']:.2f}); raw "
          f"sharpness at the end {r.log['lambda_max'][-1]:.2f}; final loss {r.eval_loss[-1]:.4f}")
cohen.plot_adam(adam)
plt.show()
print(f"section 5: {time.perf_counter() - t_cohen:.1f} s")"""),
    nbf.v4.new_markdown_cell("""COHEN_ADAM"""),
    nbf.v4.new_markdown_cell("""### Where we agree with Cohen et al., and where not

COHEN_SUMMARY"""),
]

TEXT = {}   # the markdown that quotes the executed run's numbers (full configuration)

TEXT["COHEN_GD"] = """**Ours.** With the squared error every run sharpens from 5.55 and settles at its own
`2/η`: the median of `λ_max / (2/η)` over the last quarter of the run is 0.95 (η = 0.1,
which reaches 90% of its threshold only at step 2,440 of 3,000), 1.03 (η = 0.2) and 1.05
(η = 0.3), each within a few percent of 1 while the loss keeps falling. With the
cross-entropy the sharpness starts lower (0.56) and rises faster: at η = 0.2 it settles at
1.07 times `2/η`, hovering a little above the threshold as Cohen et al.'s cross-entropy runs
also do; at η = 0.4 and 0.8 it reaches `2/η` within 60 and 20 steps (peaking at 1.77 and
1.97 times it), hovers, and then **falls** once the loss is small (final losses 0.036 and
0.011; last-quarter medians 0.84 and 0.58): the late decline that Cohen et al. describe for
the cross-entropy, reached early here because even with noisy labels digits is an easy fit."""

TEXT["COHEN_FLOW"] = """**Ours.** The flow, integrated to t = 300 (8,331 RK4 steps, 33,324 full-batch gradients),
raises the sharpness from 5.55 to 20.5, through the ceilings 6.7 and 10 where gradient
descent at η = 0.3 and 0.2 stopped (2.05 times the latter), and to the threshold of the
η = 0.1 run, which follows the flow all the way (the two curves lie on top of each other
on the left). So gradient descent is the flow until its sharpness meets `2/η`, then departs
from it, as Cohen et al. show."""

TEXT["COHEN_ADAM"] = """**Ours.** The preconditioned sharpness of both Adam runs climbs to `38/η` within 60-100
steps and stays there: medians 0.99 (η = 0.005, `38/η` = 7,600) and 0.98 (η = 0.01, 3,800)
over the last quarter, 10-90% ranges 0.97-1.01 and 0.96-1.01. The raw sharpness ends at
23.9 and 18.0, nowhere near the `2/η` of gradient descent at these step sizes (400 and 200):
for Adam it is the preconditioned sharpness that equilibrates."""

TEXT["COHEN_SUMMARY"] = """| | Cohen et al. | ours (1,000 digits, 30% random labels, tanh MLP 64-32-32-10) |
|---|---|---|
| GD, squared error: `λ_max / (2/η)` | ~1, hovering, every η (2021, Sec. 3) | 0.95, 1.03, 1.05 (η = 0.1, 0.2, 0.3) |
| GD, cross-entropy | ~1 then a late decline (2021, Sec. 3) | 1.07 (η = 0.2); 0.84 and 0.58 after reaching 1.8-2.0 (η = 0.4, 0.8) |
| gradient flow | follows the rise with no ceiling | 20.5 by t = 300: 2.05 times the ceiling of η = 0.2 |
| Adam, `λ_max(P⁻¹H) / (38/η)` | ~1, hovering (2022, Sec. 3) | 0.99, 0.98 (η = 0.005, 0.01) |

We agree on every qualitative claim: progressive sharpening up to `2/η` and hovering there
for the squared error at all three step sizes; gradient flow sharpening through the
ceilings that stop gradient descent, with gradient descent tracking it until then; Adam's
preconditioned sharpness at `38/η` to within 2% at both step sizes. Where we differ is
the cross-entropy at the larger step sizes: there the sharpness reaches and overshoots
`2/η` but falls away once the loss is nearly zero, after a few hundred steps rather than
late in a long run. That is the decline Cohen et al. themselves report for the
cross-entropy, brought forward by an easier problem: on clean digits the loss reaches zero
so fast that the sharpness never settles at all, which is why we relabelled 30% of the
images at random (Cohen et al.'s 5,000 CIFAR-10 images take thousands of steps to fit).
Our networks and data are much smaller than theirs (3,466 parameters, 1,000 images), and
the sharpness is measured every 20 steps, so the period-two oscillations around `2/η`
that they show step by step are not resolved here."""

write_notebook(PATH, cells, TEXT)
