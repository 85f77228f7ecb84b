"""Bulk and outliers (Sagun et al. 2017; Papyan 2019): the Hessian of a trained classifier is a
bulk near zero plus about ``C`` outliers, whose eigenvectors lie in the span of the class means.

The steps, each a few library calls (the notebook ``07_bulk_and_outliers.ipynb`` runs them one
cell each; ``hessian-tools gallery sagun`` runs :func:`run`):

1. :func:`setup`: the cached ``mlp-small`` digits model (3,466 parameters) and its fit;
2. :func:`spectrum`: the SLQ density of the Hessian and its top eigenvalues;
3. :func:`count_outliers`: the top eigenvalues of the Gauss-Newton matrix ``G`` and the
   outlier split (``ht.outliers``) of both;
4. :func:`overlap`: Papyan's decomposition and the overlap of the top eigenvectors with the
   span of the class means, against a random subspace;
5. :func:`parts`: the top eigenvalues of each of Papyan's parts of ``G``, with the ``C x C``
   Gram-matrix cross-check of ``G_class`` and how concentrated the wrong-class probability is.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax.flatten_util import ravel_pytree

from hessian_tools import plots
from hessian_tools.analysis import (class_mean_vectors, class_means_overlap, density,
                                    eigenvalues, outliers, papyan_decomposition)
from hessian_tools.examples import digits
from hessian_tools.gallery._entry import Entry, Report, Row
from hessian_tools.operators import gauss_newton, hessian

__all__ = ["CONFIGS", "Config", "ENTRY", "class_means_gram_eigenvalues", "count_outliers", "overlap", "parts", "plot_overlap",
           "plot_parts", "plot_spectrum", "plot_top", "run", "setup", "spectrum"]

C = 10
"""The number of classes of digits."""


@dataclasses.dataclass(frozen=True)
class Config:
    """The sizes of one configuration: top eigenvalues examined, SLQ probes x Lanczos steps,
    and the top eigenvalues computed for each of Papyan's parts."""
    k_top: int
    probes: int
    steps: int
    k_part: int = 12


CONFIGS = {"small": Config(k_top=20, probes=4, steps=40), "full": Config(k_top=40, probes=16, steps=100)}


def _ns(**kw):
    """A plain record of a step's results (attribute access in the notebook)."""
    return dataclasses.make_dataclass("Step", list(kw), frozen=True)(**kw)


def setup(*, seed: int = 0):
    """The trained ``mlp-small`` digits objective (cached after the first training, 300 Adam
    steps), its Hessian and Gauss-Newton operators, its training loss and accuracy (one
    forward pass)."""
    obj = digits.digits_objective("mlp-small", seed=seed)
    x, y = digits.load_digits_data()
    logits = obj.predict(obj.params, (x, y))
    return _ns(obj=obj, y=y, logits=logits, H=hessian(obj), G=gauss_newton(obj),
               loss=float(digits.cross_entropy(logits, (x, y))),
               accuracy=float(jnp.mean(jnp.argmax(logits, -1) == y)))


def spectrum(s, cfg: Config, *, keys):
    """The SLQ density of the Hessian (``probes x steps`` products; key ``keys[0]``) and its
    top ``k_top`` eigenvalues (restarted Lanczos, a few hundred products; key ``keys[1]``);
    the fraction of eigenvalues within ``|lambda| < 0.01`` and the SLQ count above the
    ``(C+1)``-th eigenvalue."""
    k1, k2 = keys
    dens = density(s.H, key=k1, num_probes=cfg.probes, num_steps=cfg.steps)
    eig_h = eigenvalues(s.H, k=cfg.k_top, key=k2)
    top_h = np.sort(eig_h.largest)[::-1]
    return _ns(dens=dens, eig_h=eig_h, top_h=top_h,
               near_zero=float(dens.cdf(0.01) - dens.cdf(-0.01)),
               slq_above=float(dens.num_above(top_h[C]).count))


def count_outliers(s, spec, cfg: Config, *, key):
    """The top ``k_top`` eigenvalues of ``G`` and the outlier split (``ht.outliers``, gap
    rule with its stability in ``k``) of the Hessian's and of ``G``'s."""
    eig_g = eigenvalues(s.G, k=cfg.k_top, key=key)
    splits = {"Hessian": outliers(spec.eig_h, k=cfg.k_top),
              "Gauss-Newton": outliers(eig_g, k=cfg.k_top)}
    return _ns(eig_g=eig_g, top_g=np.sort(eig_g.largest)[::-1], splits=splits,
               ratios=spec.top_h[:-1] / spec.top_h[1:])


def overlap(s, spec, out, *, key):
    """Papyan's decomposition (``true_class="separate"``) and ``||P v||^2 / ||v||^2`` for every
    top eigenvector (``P``: the projector onto the span of the ``C`` class means), the mean
    over the top-``C`` eigenspaces, and over a random ``C``-dimensional subspace (the
    baseline, ``C/P`` on average). Cost: one pass over the data for the class means."""
    dec = papyan_decomposition(s.obj, true_class="separate")
    top10 = {name: class_means_overlap(
        jax.tree.map(lambda a, e=e: a[np.argsort(-e.values)[:C]], e.vectors), dec)
        for name, e in (("Hessian", spec.eig_h), ("Gauss-Newton", out.eig_g))}
    flat, unravel = ravel_pytree(s.obj.params)
    rand = jax.vmap(unravel)(jax.random.normal(key, (C, flat.size), flat.dtype))
    return _ns(dec=dec, per_h=class_means_overlap(spec.eig_h, dec).per_vector[np.argsort(-spec.eig_h.values)],
               per_g=class_means_overlap(out.eig_g, dec).per_vector[np.argsort(-out.eig_g.values)],
               top10=top10, random=float(class_means_overlap(rand, dec).mean))


def parts(s, ov, cfg: Config, *, key):
    """The top ``k_part`` eigenvalues of each of Papyan's parts (``G_class``, ``G_cross``,
    ``G_within``, ``G_true``); the nonzero eigenvalues of ``G_class`` recomputed from the
    ``C x C`` Gram matrix of the class-mean vectors (a cross-check); and the share of the
    wrong-class probability carried by the top 1% of examples."""
    dec = ov.dec
    part_top = {name: np.sort(eigenvalues(op, k=cfg.k_part, key=key).largest)[::-1]
                for name, op in dec.parts.items()}
    gram = class_means_gram_eigenvalues(dec)
    y = s.y
    wrong = np.sort(np.asarray(1 - jax.nn.softmax(s.logits)[jnp.arange(len(y)), y]))[::-1]
    n1 = len(y) // 100
    return _ns(top=part_top, gram=gram, wrong_top1=float(wrong[:n1].sum() / wrong.sum()),
               wrong_median=float(np.median(wrong)), n_top1=n1)


def class_means_gram_eigenvalues(dec) -> np.ndarray:
    """The ``C`` eigenvalues of ``G_class = sum_c pi_c W_c delta_c delta_c^T``, largest first,
    from the ``C x C`` matrix ``diag(sqrt(a)) Gram(delta) diag(sqrt(a))``, ``a_c = pi_c W_c``
    (``W_c = C - 1`` with ``true_class="separate"``, ``C`` otherwise): the same nonzero
    eigenvalues as the matrix-free operator, from the explicit class-mean vectors (one pass
    over the data, ``C`` parameter-sized vectors, float64)."""
    means = class_mean_vectors(dec)
    mflat = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(means), np.float64)
    w = dec.num_classes - (dec.true_class_mode == "separate")
    a = np.sqrt(dec.class_weights * w)
    return np.sort(np.linalg.eigvalsh(a[:, None] * (mflat @ mflat.T) * a[None, :]))[::-1]


def plot_spectrum(spec, axes=None):
    """The SLQ density (linear axis, log density) and the density of ``log10 |lambda|``, the
    top ``C`` eigenvalues marked. Returns the two axes."""
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(13, 4.6), layout="constrained")[1]
    plots.plot_density(spec.dens, ax=axes[0], eig=spec.top_h[:C], counts=True,
                       eig_label=f"top {C} eigenvalues")
    axes[0].set_title("Hessian spectrum (SLQ), eigenvalues per unit")
    plots.plot_log_density(spec.dens, ax=axes[1], eig=spec.top_h[:C], counts=True)
    return axes


def plot_top(spec, out, axes=None):
    """The top eigenvalues of the Hessian and ``G`` (log scale, the outliers shaded) and the
    ratio of each to the next. Returns the two axes."""
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(13, 4.4), layout="constrained")[1]
    k = len(spec.top_h)
    i = np.arange(1, k + 1)
    axes[0].semilogy(i, spec.top_h, "o-", ms=4, label="Hessian")
    axes[0].semilogy(i, out.top_g, "s--", ms=4, mfc="none", label="Gauss-Newton G")
    n_h = out.splits["Hessian"].num_outliers
    axes[0].axvspan(0.5, n_h + 0.5, color="C3", alpha=0.1, label=f"outliers found ({n_h})")
    axes[0].axvline(C + 0.5, color="0.3", ls=":", label=f"C = {C}")
    axes[0].set(xlabel="index i", ylabel="eigenvalue λ_i (log scale)", title=f"top {k} eigenvalues")
    axes[0].legend()
    axes[1].bar(i[:-1], out.ratios, color=["C3" if j < n_h else "C0" for j in range(k - 1)])
    axes[1].axvline(C + 0.5, color="0.3", ls=":")
    axes[1].set(xlabel="index i", ylabel="λ_i / λ_(i+1)",
                title="relative gap after each eigenvalue (red: inside the outliers)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xticks(np.arange(0, k + 1, 5 if k > 20 else 2))
    return axes


def plot_overlap(ov, ax=None):
    """The fraction of each top eigenvector in the span of the class means. Returns the ax."""
    if ax is None:
        ax = plt.subplots(figsize=(9, 4.2), layout="constrained")[1]
    i = np.arange(1, len(ov.per_h) + 1)
    ax.plot(i, ov.per_h, "o-", label="Hessian eigenvectors")
    ax.plot(i, ov.per_g, "s--", mfc="none", label="Gauss-Newton eigenvectors")
    ax.axhline(ov.random, color="C2", label=f"random {C}-dim subspace ({ov.random:.4f})")
    ax.axvline(C + 0.5, color="0.3", ls=":", label=f"C = {C}")
    ax.set(xlabel="eigenvector of the i-th largest eigenvalue", ylim=(-0.02, 1.02),
           ylabel="‖P v‖² / ‖v‖²  (fraction in span{δ_c})",
           title="overlap of each top eigenvector with the span of the class means")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def plot_parts(pt, out, ax=None):
    """The top eigenvalues of Papyan's parts against those of ``G`` (the zeros of the
    rank-``C`` parts left out). Returns the ax."""
    if ax is None:
        ax = plt.subplots(figsize=(9, 4.4), layout="constrained")[1]
    k = len(next(iter(pt.top.values())))
    j = np.arange(1, k + 1)
    ax.semilogy(j, out.top_g[:k], "k-", lw=2, label="G (sum of the parts)")
    for (name, v), m in zip(pt.top.items(), "osD^"):
        keep = v > 1e-9 * out.top_g[0]     # rank <= C: the rest is rounding, left out
        ax.semilogy(j[keep], v[keep], m + "--", ms=5, label=f"G_{name.split('_')[0]}")
    ax.axvline(C + 0.5, color="0.3", ls=":", label=f"C = {C}")
    ax.set(xlabel="index i", ylabel="λ_i (log scale)", xticks=j,
           title="top eigenvalues of Papyan's parts of G (zeros of the rank-C parts omitted)")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def _verdict(n: dict) -> str:
    """The paragraph of where ours and the papers' agree, written from the measured numbers."""
    n_h, within, cls = n["outliers_hessian"], n["parts_top"]["within_class"][0], n["parts_top"]["class_means"][0]
    count = (f"exactly C = {C} outliers, as Sagun et al. and Papyan report" if n_h == C else
             f"{n_h} outliers rather than C = {C} (\"about C\" holds, \"exactly C\" does not: "
             f"λ{C}/λ{C + 1} = {n['ratios'][C - 1]:.2f}, no gap after the {C}-th)")
    ratio = n["overlap_top10_hessian"] / max(n["overlap_random"], 1e-12)
    geo = (f"The top-{C} eigenspace overlaps the span of the class means by "
           f"{n['overlap_top10_hessian']:.2f} against {n['overlap_random']:.4f} for a random "
           f"subspace ({ratio:.0f}x chance): Papyan's geometric claim "
           + ("holds" if ratio > 20 else "is not borne out")
           + (", the more so the larger the eigenvalue." if n["overlap_per_vector_hessian"][0]
              > n["overlap_per_vector_hessian"][C - 1] else "."))
    attr = (f"Papyan's attribution of the outliers' size to G_class holds (its top eigenvalue "
            f"{cls:.3g} against {within:.3g} for G_within)." if cls > within else
            f"Papyan's attribution of the outliers' size to G_class does not hold here: G_class "
            f"carries {cls:.3g} against {within:.3g} for the within-class part (G: "
            f"{n['top_gauss_newton'][0]:.3g}); our reading: on this small network at near-zero "
            f"loss a few hard examples (the top 1% carry {n['wrong_top1']:.0%} of the wrong-class "
            "probability) dominate the curvature, and their deviations point along the "
            "class-mean directions.")
    return (f"Sagun et al.'s bulk is there: {n['near_zero']:.1%} of the {n['num_params']} "
            f"eigenvalues lie within |λ| < 0.01, the largest is {n['lambda_max']:.3g}. We find "
            f"{count}. {geo} {attr} The model (digits, {n['num_params']} parameters) is far "
            "smaller than the papers' MNIST/CIFAR networks.")


def run(*, small: bool = False, seed: int = 0, say=print) -> Report:
    """The whole reproduction (full: ~30 s on 2 CPU cores once the model is cached): the
    steps above in order, the four figures, our numbers beside the papers'."""
    cfg = CONFIGS["small" if small else "full"]
    t0 = time.perf_counter()
    keys = [jax.random.key(seed + i) for i in range(5)]
    s = setup(seed=seed)
    say(f"model: {s.H.dim} parameters, loss {s.loss:.2e}, accuracy {s.accuracy:.3f} "
        f"({time.perf_counter() - t0:.0f} s)")
    spec = spectrum(s, cfg, keys=keys[:2])
    say(f"spectrum: λ_max {spec.top_h[0]:.3f}, {spec.near_zero:.1%} near zero "
        f"({time.perf_counter() - t0:.0f} s)")
    out = count_outliers(s, spec, cfg, key=keys[2])
    say(f"outliers: {out.splits['Hessian'].num_outliers} (Hessian), "
        f"{out.splits['Gauss-Newton'].num_outliers} (G) ({time.perf_counter() - t0:.0f} s)")
    ov = overlap(s, spec, out, key=keys[3])
    say(f"overlap with the class means: {ov.top10['Hessian'].mean:.3f} "
        f"(random {ov.random:.4f}) ({time.perf_counter() - t0:.0f} s)")
    pt = parts(s, ov, cfg, key=keys[4])
    say(f"Papyan's parts: done ({time.perf_counter() - t0:.0f} s)")
    sh, sg = out.splits["Hessian"], out.splits["Gauss-Newton"]
    n = {"num_params": s.H.dim, "loss": s.loss, "accuracy": s.accuracy,
         "near_zero": spec.near_zero, "lambda_max": float(spec.dens.lambda_max),
         "lambda_min": float(spec.dens.lambda_min), "slq_above_11th": spec.slq_above,
         "top_hessian": spec.top_h.tolist(), "top_gauss_newton": out.top_g.tolist(),
         "ratios": out.ratios.tolist(),
         "outliers_hessian": sh.num_outliers, "outliers_gauss_newton": sg.num_outliers,
         "stable_hessian": bool(sh.extra["stable"]), "stable_gauss_newton": bool(sg.extra["stable"]),
         "counts_by_k_hessian": sh.extra["counts_by_k"], "gap_over_spacing_hessian": float(sh.gap / sh.reference_gap),
         "overlap_top10_hessian": float(ov.top10["Hessian"].mean),
         "overlap_top10_gauss_newton": float(ov.top10["Gauss-Newton"].mean),
         "overlap_per_vector_hessian": ov.per_h.tolist(), "overlap_random": ov.random,
         "parts_top": {k: v.tolist() for k, v in pt.top.items()}, "class_means_gram": pt.gram.tolist(),
         "wrong_top1": pt.wrong_top1, "wrong_median": pt.wrong_median}
    rows = (Row(quantity="eigenvalues within ±0.01", ours=f"{spec.near_zero:.1%}", paper="most (Sagun et al.)"),
            Row(quantity="largest eigenvalue λ_max", ours=float(spec.top_h[0]), paper="-"),
            Row(quantity="number of outliers (Hessian / G)", ours=f"{sh.num_outliers} / {sg.num_outliers}",
                paper=f"≈ C = {C} (Sagun et al.; Papyan)"),
            Row(quantity=f"λ_{C} / λ_{C + 1}", ours=float(out.ratios[C - 1]), paper=f"a gap after the {C}-th (Papyan)"),
            Row(quantity=f"top-{C} eigenspace in span{{δ_c}} (Hessian)", ours=float(ov.top10["Hessian"].mean),
                paper="≈ 1 (Papyan)"),
            Row(quantity=f"random {C}-dim subspace in span{{δ_c}}", ours=ov.random, paper=f"C/P = {C / s.H.dim:.4f}"),
            Row(quantity="top eigenvalue of G_class / G_within",
                ours=f"{pt.top['class_means'][0]:.3g} / {pt.top['within_class'][0]:.3g}",
                paper="G_class carries the outliers (Papyan)"))
    figures = {}
    for stem, draw, shape in (("spectrum", lambda a: plot_spectrum(spec, a), (1, 2, 13, 4.6)),
                              ("top_eigenvalues", lambda a: plot_top(spec, out, a), (1, 2, 13, 4.4)),
                              ("overlap", lambda a: plot_overlap(ov, a), (1, 1, 9, 4.2)),
                              ("parts", lambda a: plot_parts(pt, out, a), (1, 1, 9, 4.4))):
        fig, ax = plt.subplots(shape[0], shape[1], figsize=shape[2:], layout="constrained")
        draw(ax)
        figures[stem] = fig
    return ENTRY.report(small=small, seed=seed, start=t0, rows=rows, verdict=_verdict(n),
                        figures=figures, numbers=n)


ENTRY = Entry(
    name="sagun",
    title="Bulk and outliers: about C outliers in the Hessian, in the span of the class means",
    citation=("Sagun, Evci, Güney, Dauphin & Bottou (2017), Empirical analysis of the Hessian of "
              "over-parametrized neural networks, ICLR workshop; Papyan (2019), Measurements of "
              "three-level hierarchical structure in the outliers in the spectrum of deepnet "
              "Hessians, ICML"),
    claim=("The Hessian of a trained classifier is a bulk near zero plus about C outliers (C "
           "classes); the outliers come from the Gauss-Newton part, their eigenspace is the span "
           "of the C class means, and Papyan's class-means part G_class carries them."),
    notebook="07_bulk_and_outliers.ipynb", run=run, full_seconds=32.0)
