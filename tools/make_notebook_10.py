"""Builds notebooks/10_deep_linear_saxe.ipynb (then execute it: python tools/run_notebook.py ...).

Run again after editing only markdown: the outputs of an already executed notebook are kept
when every code cell is unchanged (otherwise they are dropped and the notebook must be
executed again).
"""
from pathlib import Path

import nbformat as nbf
from _notebook import write_notebook

PATH = Path("notebooks/10_deep_linear_saxe.ipynb")

cells = [
    nbf.v4.new_markdown_cell("""# Deep linear networks: Saxe, McClelland & Ganguli 2014

**Saxe, McClelland & Ganguli (2014)**, *Exact solutions to the nonlinear dynamics of learning
in deep linear neural networks* (ICLR), study `x -> W_D ... W_1 x` trained by gradient descent
on the squared error. Two of their statements are about the loss surface:

1. **The origin is a saddle** from which learning starts on a plateau (Sec. 2-3); the deeper
   the network, the flatter it is there: from depth 3 the Hessian at the origin is zero, so
   the saddle is of higher order (the loss falls like `t^D` along a ray).
2. **Training time and depth (Sec. 4):** with *random orthogonal* initialisation the time to
   reach a training criterion is (asymptotically) independent of depth, while with *scaled
   random Gaussian* initialisation (`N(0, 1/fan_in)`) it grows with depth. Their explanation
   is *dynamical isometry*: orthogonal layers make every singular value of the input-output
   map's Jacobian 1.

The code lives in `hessian_tools/gallery/saxe.py`; `hessian-tools gallery saxe --out DIR`
runs the same steps and writes the figures and a report. Data: scikit-learn's digits,
PCA-whitened, regressing the centred one-hot class. Set `HESSIAN_TOOLS_SMALL=1` for the small
configuration (the test suite runs it); the numbers quoted in the text are those of the full
configuration, whose outputs are stored here."""),
    nbf.v4.new_code_cell("""import os, time
import jax
import jax.numpy as jnp
import numpy as np
import matplotlib.pyplot as plt
import hessian_tools as ht
from hessian_tools.examples.digits import load_digits_data
from hessian_tools.gallery import saxe

SMALL = os.environ.get("HESSIAN_TOOLS_SMALL") == "1"
cfg = saxe.CONFIGS["small" if SMALL else "full"]
print(cfg)
digits = load_digits_data()
start = time.perf_counter()"""),
    nbf.v4.new_markdown_cell("""## 1. The origin: a saddle, of higher order from depth 3

With whitened inputs (`Σxx = I`) the loss is `L(W) = L₀ − ⟨Σyx, W_D⋯W_1⟩ + ½‖W_D⋯W_1‖²`:
it depends on the data only through the input-output correlation `Σyx`. At the origin:

* **depth 2**: the quadratic part is `−Σ_j b_jᵀ Σyx a_j` (`a_j`, `b_j`: hidden unit `j`'s
  input and output weights), so the Hessian is `I_h ⊗ [[0, −Σyxᵀ], [−Σyx, 0]]`: every singular
  value `s_α` of `Σyx` gives the eigenvalues `+s_α` and `−s_α`, `h` times each, the rest are 0.
  The index is `h · rank(Σyx)`.
* **depth `D ≥ 3`**: the product is of degree `D ≥ 3`, so gradient *and* Hessian vanish; along
  a ray `t·d` the loss is exactly `L₀ − c tᴰ + q t²ᴰ` with `c = ⟨Σyx, d_D⋯d_1⟩`.

Because the loss only sees `Σyx`, we can replace the 1797 examples by `d` of them
(`saxe.sufficient_batch`: `x' = √d I`, `y' = √d Σyxᵀ`) with *the same* gradients and Hessians
everywhere (the loss is shifted by the constant `L_min`; tested). `ht.classify` (dense
Hessian, then a higher-order probe along flat directions) at the origin of each depth, the
dense spectrum at depth 2 against the closed form, and the loss along the ray through the top
singular pair of `Σyx`, in float64:"""),
    nbf.v4.new_code_cell("""with jax.enable_x64(True):
    x, y = saxe.whitened_digits(cfg.origin_components, digits=digits)
    batch = saxe.sufficient_batch((x, y), dtype=jnp.float64)
    origin = saxe.origin_study(batch, depths=cfg.origin_depths, width=cfg.origin_width,
                               key=jax.random.key(0))
sv = np.linalg.svd(saxe.correlation((x, y)), compute_uv=False)
print("singular values of Sigma_yx:", np.round(sv, 4))
for d, n, detail in zip(origin.depths, origin.num_params, origin.details):
    print(f"depth {d} ({n} parameters): {detail}")
print(f"depth 2: max |dense - closed form| = {np.abs(origin.spectrum - origin.closed_form).max():.1e}")
print("log-log slope of the loss drop along the ray:", np.round(origin.slopes, 3))
saxe.plot_origin(origin)
plt.show()"""),
    nbf.v4.new_markdown_cell("""ORIGIN"""),
    nbf.v4.new_markdown_cell("""## 2. Training time against depth: orthogonal against scaled Gaussian initialisation

Saxe et al. train each depth at its best learning rate and count the steps to a criterion.
We do the same with ``ht.training.learning_rate_sweep`` (full-batch gradient descent, the
same initialisation for every rate, stopped when the loss falls below `L_min + 10%` of
`L₀ − L_min`), with rates `factor / D` (the paper's optimal rate scales like `1/D`),
hidden width `cfg.width`, `cfg.seeds` initialisations per depth. At each initialisation we
also measure the curvature: the Hessian's extreme eigenvalues (``ht.eigenvalues``) and the
Gauss-Newton matrix's non-zero eigenvalues (``saxe.gauss_newton_nonzero``: those of the
end-to-end kernel `K` below, tested equal to the top of ``ht.gauss_newton``'s dense spectrum)."""),
    nbf.v4.new_code_cell("""x, y = saxe.whitened_digits(cfg.components, dtype=jnp.float32, digits=digits)
sv = np.linalg.svd(saxe.correlation((x, y)), compute_uv=False)
criterion = cfg.criterion * 0.5 * float(np.sum(sv ** 2))      # on the sufficient batch: L - L_min
study = saxe.depth_study(saxe.sufficient_batch((x, y)), width=cfg.width, depths=cfg.depths,
                         rate_factors=cfg.rate_factors, criterion_loss=criterion,
                         max_steps=cfg.max_steps, key=jax.random.key(1), seeds=cfg.seeds,
                         curvature_depths=cfg.curvature_depths,
                         say=print)
print("depth:", study.depths)
for i, kind in enumerate(study.inits):
    print(f"{kind:10s} steps at the best rate: {study.best_steps[i]}, best rate x depth: "
          f"{study.best_rate_factor[i]}")
saxe.plot_training_time(study)
plt.show()"""),
    nbf.v4.new_markdown_cell("""TRAINING"""),
    nbf.v4.new_markdown_cell("""## 3. Why: the curvature at initialisation

Near the initialisation, gradient descent on the weights moves the end-to-end map `W` by
`−η K ∇_W L`, where `K = Σ_l (A_l A_lᵀ) ⊗ (B_lᵀ B_l)` (`A_l`, `B_l`: the products above and
below layer `l`); the non-zero eigenvalues of the Gauss-Newton matrix are those of `K`. With
orthogonal layers every `A_l A_lᵀ` and `B_lᵀ B_l` is the identity, so `K = D · I`: all
`d_in · d_out` non-zero Gauss-Newton eigenvalues equal `D` (tested), one rate `~1/D` suits
every direction, and every mode of `Σyx` is learned at the same pace. With Gaussian layers
`K`'s eigenvalues spread (products of random matrices), the stable rate is set by the largest
and the training time by the smallest."""),
    nbf.v4.new_code_cell("""for i, kind in enumerate(study.inits):
    print(f"{kind:10s} GN non-zero spread (q90/q10): {np.round(study.gn_spread[i], 3)}")
    print(f"{'':10s} GN non-zero max/min:         {np.array2string(study.gn_condition[i], precision=3)}")
    print(f"{'':10s} GN non-zero median:          {np.round(study.gn_median[i], 3)}")
    print(f"{'':10s} Hessian lambda_max, lambda_min: {np.round(study.lambda_max[i], 3)}, "
          f"{np.round(study.lambda_min[i], 3)}")
saxe.plot_init_spectrum(study)
plt.show()
print(f"total {time.perf_counter() - start:.0f} s")"""),
    nbf.v4.new_markdown_cell("""SPECTRUM"""),
    nbf.v4.new_markdown_cell("""## Summary: where we agree with Saxe et al., and where not

SUMMARY"""),
]

TEXT = {}   # the markdown that quotes the executed run's numbers (full configuration)

TEXT["ORIGIN"] = """**Ours.** `Σyx` has rank 9 (the centred one-hot targets sum to zero), singular values
0.18-0.30. At depth 2 (132 parameters) ``ht.classify`` finds a saddle of index 54 = 6 × 9, and
the dense spectrum matches `±s_α` (each 6 times, 24 zeros) to 1e-15. At depths 3 and 4 the
Hessian at the origin is exactly zero: ``classify`` sees no negative eigenvalue, probes the
flat directions and calls the origin a *higher-order* saddle (a decrease of 3e-6 at depth 3,
2e-8 at depth 4, at radius 0.1). Along the ray through the top singular pair the loss drop
follows the closed form `c tᴰ − q t²ᴰ` exactly, with log-log slopes 2.00, 3.00, 4.00: the
deeper the network, the flatter its start. This is the mechanism behind the paper's long
plateaus from small initial weights (their escape time grows with depth)."""

TEXT["TRAINING"] = """**Ours.** With orthogonal initialisation the steps to the criterion rise over the first
doublings of depth (depth 1 is linear regression, solved in one step at rate 1) and then
level off: 1, 5, 10, 19, 19, 22 steps at depths 1-32 (median of 3 seeds; ×1.16 from depth
8 to 32). With scaled Gaussian initialisation they keep growing: 1, 7, 25, 84, 441, 1089
(×13 from depth 8 to 32; one of the three seeds at depth 32 met the criterion at no rate
within 4000 steps). The best orthogonal rate × depth stays between 1 and 3 (1, 3, 2, 2, 3,
3), so the optimal rate falls roughly like `1/D`; the Gaussian nets need smaller rates
(0.5/D from depth 16)."""

TEXT["SPECTRUM"] = """**Ours.** At every depth the orthogonal initialisation's non-zero Gauss-Newton eigenvalues are
all equal to `D` (spread 1.000, median exactly `D`), the closed form. The Gaussian
initialisation's spread by orders of magnitude more as depth grows (90%/10% quantile ratio
5.6 at depth 2, 223 at depth 8, 2e5 at depth 32; max/min 2.7e9), and its Hessian's
`λ_max` grows much faster than `D` (1563 at depth 32 against 68.5 ≈ 2.1 D for orthogonal), which
caps the stable rate while the smallest eigenvalues set how slowly the last modes are fitted."""

TEXT["SUMMARY"] = """| | Saxe et al. 2014 | this notebook (whitened digits, deep linear nets) |
|---|---|---|
| origin, depth 2 | a saddle (plateau, Sec. 2) | saddle of index 54 = h·rank(Σyx); spectrum ±s_α to 1e-15 |
| origin, depth ≥ 3 | higher-order saddle, plateaus grow with depth (Sec. 3) | Hessian exactly 0; classify's higher-order probe finds descent; loss ∝ tᴰ |
| orthogonal init, training time | depth-independent (Sec. 4) | levels off: 19 steps at depth 8, 22 at depth 32 |
| scaled Gaussian init, training time | grows with depth (Sec. 4) | 84 at depth 8, 1089 at depth 32 (×13) |
| why | dynamical isometry (Sec. 4) | Gauss-Newton non-zero eigenvalues all = D (orthogonal) vs 90/10 spread 2e5 at depth 32 (Gaussian) |

**Where we agree and where not.** Both statements hold here. The origin is a saddle whose
order grows with depth: indefinite at depth 2, flat to second order from depth 3, which is why
small initialisations sit on plateaus. Orthogonal initialisation gives a training time that
stops growing with depth while the Gaussian one grows by an order of magnitude from depth 8
to 32. Two differences: (i) our orthogonal curve is not flat from depth 1: it rises from 1
step (a linear regression) to 19 by depth 8 before levelling off; Saxe et al.'s statement is
asymptotic (a finite delay as depth grows), and our criterion asks for all nine modes of
`Σyx` at once, which a single rate cannot reach in one step once the map is a product;
(ii) the best rate × depth is not constant (1 to 3), because at orthogonal initialisation
the Hessian's `λ_max` is about `2.1 D` (the residual term adds to the Gauss-Newton `D`) and
the nonlinear product dynamics tolerate rates above `2/λ_max` for a few steps. We use
digits (whitened, 32 components) rather than MNIST, widths of 32 rather than hundreds, and
full-batch gradient descent; the paper's exact figure values are not compared here, only
the trends (their figures are in Sec. 3-4)."""

write_notebook(PATH, cells, TEXT)
