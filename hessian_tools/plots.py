"""Every figure of the library. Each takes result objects and an optional ``ax`` and returns
the ``ax``; none calls ``savefig`` or picks a backend. Imports only results (and the
thresholds the sharpness plots draw).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hessian_tools.results import (Eigenpairs, OptimizerComparison,
                                   SharpnessLog, SpectralDensity, stability_threshold)
from hessian_tools.results.curvature import CurvatureReport
from hessian_tools.results.dynamics import GradientFlow, LearningRateSweep

__all__ = ['plot_comparison', 'plot_curvature_report', 'plot_densities', 'plot_density',
           'plot_eigenvalues', 'plot_gradient_flow', 'plot_index_vs_loss',
           'plot_learning_rate_sweep', 'plot_log_density', 'plot_sharpness']


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(6, 3.5))
    return ax


def plot_eigenvalues(eig: Eigenpairs, ax=None, *, label: str | None = None, color=None,
                     tau: float | None = None):
    """The eigenvalues found, largest and smallest, on a symmetric-log axis.

    Points are ranked from the top (``1, 2, ...``) and from the bottom (``-1, -2, ...``);
    error bars show the residual bound ``|lambda - lambda_true| <= ||H v - lambda v||``.
    The axis is linear inside ``[-tau, tau]``, the band that counts and verdicts treat as
    zero (shaded), and logarithmic outside it.

    Args:
      eig: an :class:`~hessian_tools.Eigenpairs`.
      ax: matplotlib axes (a new figure if ``None``).
      label: for the points (default: the operator's name).
      color: see ``label``.
      tau: the zero band (default ``ht.default_threshold``: 1% of ``max|lambda|``).
    """
    ax = _axes(ax)
    top, bottom = eig.largest, eig.smallest
    res = dict(zip(eig.values.tolist(), eig.residuals.tolist()))
    xs = list(range(1, len(top) + 1)) + [-i for i in range(1, len(bottom) + 1)]
    ys = list(top) + list(bottom)
    errs = [res.get(v, 0.0) for v in ys]
    scale = max((abs(v) for v in ys), default=1.0) or 1.0
    tau = 1e-2 * scale if tau is None else float(tau)
    ax.errorbar(xs, ys, yerr=errs, fmt="o", color=color, label=label or eig.operator, capsize=3)
    earlier = any(patch.get_gid() == "tau-band" for patch in ax.patches)  # drawn here before
    if not earlier:
        ax.axhspan(-tau, tau, color="0.85", alpha=0.6, lw=0, gid="tau-band",
                   label=f"|λ| ≤ τ = {tau:.2g} (treated as zero)")
    symlog_eigenvalue_axis(ax, ys, tau, extend=earlier)
    ax.set_xlabel("rank (1 = largest, -1 = smallest)")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"{eig.operator or 'operator'}: extreme eigenvalues ({eig.num_matvecs} matvecs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return ax


def symlog_eigenvalue_axis(ax, values, tau: float, *, extend: bool = False) -> None:
    """A y axis for eigenvalues of both signs: symmetric-log, linear inside ``[-tau, tau]``,
    a zero line, decade ticks outside the band only (ticks inside it crowd), limits with
    room for every value (``extend``: keep room for values drawn on it before)."""
    values = [float(v) for v in np.ravel(values) if np.isfinite(v)]
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_yscale("symlog", linthresh=tau, linscale=0.6)
    lo0, hi0 = ax.get_ylim() if extend else (0.0, 0.0)
    hi = max(max(values, default=tau) * 2.0, tau * 2.0, hi0)
    lo = min(min(values, default=-tau) * 2.0, -tau * 2.0, lo0)
    ax.set_ylim(lo, hi)
    ticks = _symlog_ticks(lo, hi, tau)
    ax.set_yticks(ticks, [_decade_label(t) for t in ticks])


def _symlog_ticks(lo: float, hi: float, tau: float) -> list:
    """Zero and the decades outside the linear band ``[-tau, tau]`` (ticks inside the band
    crowd onto one another)."""
    first = int(np.ceil(np.log10(tau) - 0.05))      # a decade at the band's edge counts
    ticks = [0.0]
    for sign, end in ((1.0, hi), (-1.0, -lo)):
        if end > tau:
            ticks += [sign * 10.0 ** k for k in range(first, int(np.floor(np.log10(end))) + 1)]
    return sorted(ticks)


def _decade_label(value: float) -> str:
    if value == 0:
        return "0"
    return f"{'−' if value < 0 else ''}$10^{{{int(round(np.log10(abs(value))))}}}$"


def _curve(dens: SpectralDensity, grid, sigma, counts: bool):
    y = dens.pdf(grid, sigma=sigma)
    return y * dens.dim if counts else y


def _floor(ys, dynamic_range: float) -> float:
    top = max(float(np.max(y)) for y in ys)
    return top / dynamic_range if top > 0 else 1e-12


def _mark_values(ax, values, *, color, style, label):
    for i, v in enumerate(values):
        ax.axvline(float(v), color=color, ls=style, lw=0.9, alpha=0.8,
                   label=label if i == 0 else None)


def plot_density(dens: SpectralDensity, ax=None, *, eig=None, sigma: float | None = None,
                 num_points: int = 1000, log: bool = True, counts: bool = False,
                 dynamic_range: float = 1e7, mark_ends: bool = True, label: str | None = None,
                 color=None, tau: float | None = None, eig_label: str = "top eigenvalues"):
    """The smoothed eigenvalue density on a log scale, with the ends of the spectrum marked.

    Args:
      dens: a :class:`SpectralDensity`.
      ax: matplotlib axes (a new figure if ``None``).
      eig: optional :class:`~hessian_tools.Eigenpairs` (e.g. the top eigenvalues from
        ``ht.eigenvalues``) or array of eigenvalues, marked as dotted vertical lines.
      sigma: smoothing width (default ``dens.default_sigma``).
      num_points: grid size.
      log: logarithmic density axis (the bulk near zero and the outliers differ by orders of
        magnitude); values below ``max / dynamic_range`` are clipped.
      counts: plot eigenvalues per unit (``dim * pdf``) instead of a probability density.
      mark_ends: dashed lines at the extreme Ritz values ``lambda_min``/``lambda_max``.
      label: for the curve.
      color: see ``label``.
      tau: if given, shade ``[-tau, tau]`` (the band treated as zero by negative counts).
      eig_label: the legend entry of the ``eig`` lines.

    Returns:
      The axes.
    """
    ax = _axes(ax)
    s = dens.default_sigma if sigma is None else float(sigma)
    grid = dens.grid(num_points, sigma=s)
    y = _curve(dens, grid, s, counts)
    floor = _floor([y], dynamic_range) if log else 0.0
    line, = ax.plot(grid, np.maximum(y, floor), color=color,
                    label=label or f"{dens.operator or 'SLQ'} ({dens.num_matvecs} matvecs)")
    color = line.get_color()
    if mark_ends:
        _mark_values(ax, [dens.lambda_min, dens.lambda_max], color=color, style="--",
                     label="extreme Ritz values")
    if eig is not None:
        values = np.asarray(getattr(eig, "values", eig), np.float64).reshape(-1)
        _mark_values(ax, values, color="tab:red", style=":", label=eig_label)
    if tau is not None:
        ax.axvspan(-tau, tau, color="0.85", alpha=0.6, lw=0, label=f"|λ| ≤ τ = {tau:.2g}")
    ax.axvline(0.0, color="0.5", lw=0.6)
    _finish(ax, log, floor, counts, f"eigenvalue density (sigma = {s:.2g})")
    return ax


def plot_densities(densities: Sequence[SpectralDensity], ax=None, *,
                   labels: Sequence[str] | None = None, sigma: float | None = None,
                   num_points: int = 1000, log: bool = True, counts: bool = False,
                   dynamic_range: float = 1e7, mark_ends: bool = True, colors=None):
    """Several densities overlaid on one grid (e.g. two checkpoints, or Hessian vs GGN).

    All curves use the same ``sigma`` (default: the largest of their default widths) so
    that they are comparable; dashed lines mark each density's extreme Ritz values.

    Args:
      densities: a sequence of :class:`SpectralDensity`.
      ax: matplotlib axes (a new figure if ``None``).
      labels: one label per density.
      sigma: as in :func:`plot_density`.
      num_points: see ``sigma``.
      log: see ``sigma``.
      counts: see ``sigma``.
      dynamic_range: see ``sigma``.
      mark_ends: see ``sigma``.
      colors: one matplotlib color per density.

    Returns:
      The axes.

    Raises:
      ValueError: no densities, or labels/colors of the wrong length.
    """
    densities = list(densities)
    if not densities:
        raise ValueError("plot_densities needs at least one SpectralDensity.")
    for name, seq in (("labels", labels), ("colors", colors)):
        if seq is not None and len(seq) != len(densities):
            raise ValueError(f"Got {len(seq)} {name} for {len(densities)} densities.")
    ax = _axes(ax)
    s = max(d.default_sigma for d in densities) if sigma is None else float(sigma)
    lo = min(d.lambda_min for d in densities) - 5 * s
    hi = max(d.lambda_max for d in densities) + 5 * s
    grid = np.linspace(lo, hi, num_points)
    ys = [_curve(d, grid, s, counts) for d in densities]
    floor = _floor(ys, dynamic_range) if log else 0.0
    for i, (d, y) in enumerate(zip(densities, ys)):
        label = labels[i] if labels is not None else f"density {i + 1} ({d.num_matvecs} matvecs)"
        line, = ax.plot(grid, np.maximum(y, floor), label=label,
                        color=None if colors is None else colors[i])
        if mark_ends:
            _mark_values(ax, [d.lambda_min, d.lambda_max], color=line.get_color(), style="--",
                         label=None)
    ax.axvline(0.0, color="0.5", lw=0.6)
    _finish(ax, log, floor, counts, f"eigenvalue densities (sigma = {s:.2g})")
    return ax


def plot_log_density(dens: SpectralDensity, ax=None, *, sigma: float = 0.25,
                     floor: float | None = None, num_points: int = 1000, counts: bool = False,
                     dynamic_range: float = 1e4, eig=None, label: str | None = None,
                     color=None):
    """The log-scale spectrum (Papyan 2019): the density of ``log10 |lambda|``, positive
    eigenvalues solid and negative ones dashed (:meth:`SpectralDensity.log_abs_pdf`).

    The legend gives each sign's share of the eigenvalues; the mass of Ritz values below
    ``floor`` (rounding) is in neither curve. The grey band marks ``|lambda|`` below
    :attr:`SpectralDensity.zero_resolution`, where the quadrature lumps eigenvalues of
    both signs onto the two Ritz values around zero: there neither the shape nor the split
    between the signs is resolved.

    Args:
      dens: a :class:`SpectralDensity`.
      ax: matplotlib axes (a new figure if ``None``).
      sigma: the smoothing width in decades.
      floor: ``|lambda|`` below which Ritz values are left out (default
        ``dens.default_floor``).
      num_points: grid size.
      counts: eigenvalues per decade (``dim * pdf``) instead of a probability density.
      dynamic_range: the density axis spans ``max / dynamic_range`` to ``max``.
      eig: optional :class:`~hessian_tools.Eigenpairs` or array of eigenvalues, marked at
        ``log10 |lambda|`` as dotted lines (red: positive, blue: negative).
      label: a prefix for the legend entries.
      color: the colour of both curves.

    Returns:
      The axes.
    """
    ax = _axes(ax)
    t = dens.log_abs_grid(num_points, sigma=sigma, floor=floor)
    scale = dens.dim if counts else 1.0
    ys = {sign: dens.log_abs_pdf(t, sign=sign, sigma=sigma, floor=floor) * scale
          for sign in (1, -1)}
    bottom = _floor(list(ys.values()), dynamic_range)
    prefix = f"{label}: " if label else ""
    for sign, style in ((1, "-"), (-1, "--")):
        share = float(np.trapezoid(ys[sign], t)) / scale
        line, = ax.plot(t, np.maximum(ys[sign], bottom), ls=style, color=color,
                        label=f"{prefix}λ {'>' if sign > 0 else '<'} 0 ({share:.0%} of eigenvalues)")
        color = line.get_color() if color is None and sign > 0 else color
    resolution = dens.zero_resolution
    if resolution > 0 and np.log10(resolution) > t[0]:
        ax.axvspan(t[0], np.log10(resolution), color="0.88", lw=0,
                   label=f"unresolved: |λ| < {resolution:.2g}")
    if eig is not None:
        values = np.asarray(getattr(eig, "values", eig), np.float64).reshape(-1)
        for i, v in enumerate(values[values != 0]):
            ax.axvline(np.log10(abs(v)), color="tab:red" if v > 0 else "tab:blue", ls=":",
                       lw=0.9, label="eigenvalues given" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_ylim(bottom=bottom)
    ax.set_xlabel("log10 |eigenvalue|")
    ax.set_ylabel("eigenvalues per decade" if counts else "density per decade")
    ax.set_title(f"log-scale spectrum (sigma = {sigma:g} decades, {dens.num_matvecs} matvecs)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax

def _finish(ax, log, floor, counts, title):
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("eigenvalues per unit" if counts else "density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


_YLABELS = {"lambda_max": "sharpness λmax(H)",
            "precond_lambda_max": "λmax(P⁻¹ᐟ²HP⁻¹ᐟ²)",
            "lambda_min": "λmin(H)", "trace": "trace(H)", "grad_overlap": "gradient overlap"}
_LEGEND = {"lambda_max": "λmax(H)", "precond_lambda_max": "λmax(P⁻¹ᐟ²HP⁻¹ᐟ²)",
           "lambda_min": "λmin(H)", "trace": "trace(H)",
           "grad_overlap": "overlap of the gradient with the top eigenvectors"}


def plot_sharpness(log: SharpnessLog, ax=None, *, learning_rate: float | None = None,
                   momentum: float = 0.0, kind: str = "heavy_ball",
                   quantity: str = "lambda_max", threshold: float | None = None,
                   label: str | None = None, color=None, show_threshold: bool = True):
    """Sharpness against training step, with the stability threshold as a dashed line.

    The threshold is ``threshold`` if given, else :func:`stability_threshold` of
    ``learning_rate`` (``2/eta`` for gradient descent), else the ``threshold`` (or
    ``precond_threshold``) column of the log when it has one.

    Args:
      log: a :class:`SharpnessLog` (``tracker.log`` or :func:`read_sharpness_log`).
      ax: a matplotlib axes (a new figure when ``None``).
      learning_rate: for the threshold line.
      momentum: see ``learning_rate``.
      kind: see ``learning_rate``.
      quantity: the column to plot (``"lambda_max"``, ``"precond_lambda_max"``, ...).
      threshold: an explicit threshold value.
      label: for the curve.
      color: see ``label``.
      show_threshold: draw the threshold line.

    Returns:
      The axes.
    """
    ax = _axes(ax)
    steps, values = log.steps, log[quantity]
    if values.ndim == 2:
        values = values[:, 0]
    line, = ax.plot(steps, values, marker=".", ms=3, lw=1.2, color=color,
                    label=label or _LEGEND.get(quantity, quantity))
    if show_threshold:
        _draw_threshold(ax, log, steps, quantity, learning_rate, momentum, kind, threshold,
                        line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel(_YLABELS.get(quantity, quantity))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def _draw_threshold(ax, log, steps, quantity, learning_rate, momentum, kind, threshold, color):
    if threshold is None and learning_rate is not None:
        threshold = stability_threshold(learning_rate, momentum=momentum, kind=kind)
    if threshold is not None:
        name = "2/η" if momentum == 0 and learning_rate is not None else "threshold"
        ax.axhline(threshold, ls="--", lw=1, color=color, label=f"{name} = {threshold:.3g}")
        return
    column = "precond_threshold" if quantity == "precond_lambda_max" else "threshold"
    values = log[column] if len(log) else np.array([])
    if values.size and np.isfinite(values).any():
        ax.plot(steps, values, ls="--", lw=1, color=color, drawstyle="steps-post",
                label=f"threshold ({np.nanmax(values):.4g})")


def plot_comparison(comparison: OptimizerComparison, axes=None):
    """Overlay the runs of :func:`compare_optimizers`: loss, sharpness, preconditioned
    sharpness and accuracy against step, thresholds dashed in each run's colour.

    Args:
      comparison: an :class:`OptimizerComparison`.
      axes: four matplotlib axes (a new 2x2 figure when ``None``).

    Returns:
      The four axes (``axes[0].figure`` is the figure).
    """
    if axes is None:
        import matplotlib.pyplot as plt
        _, grid = plt.subplots(2, 2, figsize=(11, 7), layout="constrained")
        axes = grid.ravel()
    ax_loss, ax_raw, ax_pre, ax_acc = axes
    for i, (name, run) in enumerate(comparison.runs.items()):
        color = f"C{i}"
        ax_loss.plot(np.arange(len(run.train_loss)), run.train_loss, color=color, lw=1,
                     label=name)
        raw_thr = None if run.info.adaptive else run.threshold
        plot_sharpness(run.log, ax_raw, label=name, color=color, threshold=raw_thr,
                       show_threshold=raw_thr is not None)
        if run.info.adaptive and "precond_lambda_max" in run.log:
            plot_sharpness(run.log, ax_pre, quantity="precond_lambda_max", label=name,
                           color=color, threshold=run.threshold,
                           show_threshold=run.threshold is not None)
        ax_acc.plot(run.eval_steps, run.eval_accuracy, marker=".", color=color, label=name)
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    ax_raw.set_title("sharpness (dashed: 2/η or (2+2β)/η)")
    ax_raw.set_yscale("log")
    ax_pre.set_title("preconditioned sharpness (dashed: adaptive threshold)")
    ax_pre.set_xlabel("step")
    if ax_pre.has_data():
        ax_pre.set_yscale("log")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy (full data)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return axes


def plot_index_vs_loss(search, ax=None, *, fraction: bool = True, label: str | None = None,
                       color=None):
    """Loss against index at the points found (Dauphin et al. 2014, Fig. 1).

    Critical points are filled circles; gradient-flat and unconverged points are hollow
    (they are not critical points; shown for honesty). Returns the ``ax``.

    Args:
      search: a :class:`CriticalPointSearch` (or a sequence of :class:`FoundPoint`).
      ax: a matplotlib axes (a new figure if None).
      fraction: plot the index as a fraction of the parameters (as in the paper).
    """
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(5, 3.5))
    points = list(search)
    styles = (("critical", "o", "C0", True), ("gradient-flat", "s", "C1", False),
              ("not converged", "x", "0.5", True))
    for status, marker, default, filled in styles:
        pts = [p for p in points if p.status == status and p.index is not None]
        if not pts:
            continue
        xs = [p.index_fraction if fraction else p.index for p in pts]
        c = color or default
        kw = dict(color=c) if filled else dict(facecolors="none", edgecolors=c)
        ax.scatter(xs, [p.loss for p in pts], marker=marker,
                   label=f"{label + ': ' if label else ''}{status} ({len(pts)})", **kw)
    ax.set_xlabel("index (fraction of negative eigenvalues)" if fraction else "index")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_curvature_report(report: CurvatureReport, axes=None):
    """A :class:`~hessian_tools.results.curvature.CurvatureReport` on four panels.

    (1) the top eigenvalues by rank, with the gradient's weight ``<g, v_i>^2 / ||g||^2``
    on each eigenvector as bars (right axis); (2) the gradient's spectral measure over the
    whole spectrum (Lanczos from ``g``: one stem per quadrature node) with the top-k
    weights marked; (3) per block: the share ``||v_1||^2`` of the top eigenvector (bars)
    and the block's own ``lambda_max`` (dots, right axis, log scale); (4) the densities,
    whole and per block, overlaid (when computed).

    Args:
      report: the result of ``curvature_report``.
      axes: four matplotlib axes (a new 2x2 figure when ``None``).

    Returns:
      The four axes (``axes[0].figure`` is the figure).
    """
    if axes is None:
        import matplotlib.pyplot as plt
        _, grid = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
        axes = grid.ravel()
    ax_top, ax_grad, ax_blocks, ax_dens = axes
    _plot_top(report, ax_top)
    _plot_grad_measure(report, ax_grad)
    _plot_blocks(report, ax_blocks)
    densities = ([report.density] if report.density is not None else []) + list(
        report.layer_densities.values())
    if densities:
        labels = (["all parameters"] if report.density is not None else []) + list(
            report.layer_densities)
        plot_densities(densities, ax_dens, labels=labels, mark_ends=False)
        ax_dens.set_title(f"eigenvalue densities ({report.operator})")
    else:
        ax_dens.set_axis_off()
        ax_dens.set_title("(no densities computed)")
    return axes


def _plot_top(report, ax):
    ranks = np.arange(1, len(report.top) + 1)
    ax.plot(ranks, report.top, "o-", color="C0", label="eigenvalue")
    ax.set(xlabel="rank", ylabel="eigenvalue", xticks=ranks)
    twin = ax.twinx()
    twin.bar(ranks, report.grad_weights, width=0.5, color="C1", alpha=0.5,
             label="gradient weight")
    twin.set_ylabel("gradient weight ⟨g, v_i⟩² / ‖g‖²", color="C1")
    twin.set_ylim(0, max(1e-12, 1.15 * float(np.max(report.grad_weights, initial=0.0))))
    ax.set_zorder(twin.get_zorder() + 1)             # the eigenvalues above the bars
    ax.patch.set_visible(False)
    ax.set_title(f"top {report.k}: λ1/λ2 = {report.ratio:.3g}, gradient in top-{report.k} "
                 f"= {report.grad_overlap:.2f}")
    ax.grid(alpha=0.3)


def _plot_grad_measure(report, ax):
    dens = report.grad_density
    if dens is None:
        ax.set_axis_off()
        ax.set_title("(zero gradient: no spectral measure)")
        return
    nodes, weights = dens.measure()
    floor = max(float(weights.max()) * 1e-8, 1e-300)
    ax.vlines(nodes, floor, np.maximum(weights, floor), color="C0", lw=1.2,
              label=f"Lanczos from g ({dens.num_steps} nodes)")
    ax.plot(report.top, np.maximum(report.grad_weights, floor), "v", color="C3", ms=6,
            label=f"top-{report.k} eigenvectors")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.axvline(0.0, color="0.5", lw=0.6)
    ax.set(xlabel="eigenvalue", ylabel="gradient weight",
           title="gradient's spectral measure")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _plot_blocks(report, ax):
    names = list(report.block_norms)
    if not names:
        ax.set_axis_off()
        ax.set_title("(no blocks)")
        return
    x = np.arange(len(names))
    ax.bar(x, [report.block_norms[n] ** 2 for n in names], color="C2", alpha=0.7)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="share of v1: ‖v1 on block‖²", ylim=(0, 1.05),
           title="top eigenvector by block (bars), block λmax (dots)")
    if report.layer_lambda_max:
        twin = ax.twinx()
        values = [report.layer_lambda_max.get(n, np.nan) for n in names]
        twin.plot(x, values, "o", color="C3", ms=7)
        for xi, v in zip(x, values):
            twin.annotate(f"{v:.3g}", (xi, v), xytext=(6, 0), textcoords="offset points",
                          va="center", color="C3", fontsize=8)
        twin.axhline(report.lambda1, color="C3", ls="--", lw=1)
        twin.set_ylabel("block λmax (dashed: λ1 of all)", color="C3")
        if all(np.isfinite(v) and v > 0 for v in values):
            twin.set_yscale("log")
            twin.yaxis.set_minor_formatter("")          # no labels on minor ticks
    ax.grid(alpha=0.3, axis="y")


def plot_gradient_flow(flow: GradientFlow, ax=None, *, learning_rate: float | None = None,
                       color=None):
    """The sharpness along gradient flow against time, with the loss on a second (log) axis.

    With ``learning_rate`` the gradient-descent threshold ``2/eta`` is drawn: Cohen et al.
    (2021) compare the flow's sharpness, which keeps rising, with gradient descent's, which
    stops there. Without a measured sharpness only the loss is drawn (on ``ax``).

    Returns:
      The axes of the sharpness (or of the loss when there is none).
    """
    ax = _axes(ax)
    loss_ax = ax if flow.sharpness is None else ax.twinx()
    loss_ax.semilogy(flow.times, flow.loss, color="0.45", lw=1.0, ls="--", label="loss")
    loss_ax.set_ylabel("loss (full data)")
    if flow.sharpness is not None:
        ax.plot(flow.times, flow.sharpness, marker=".", ms=3, lw=1.4, color=color or "C0",
                label=r"$\lambda_{\max}(H)$")
        if learning_rate is not None:
            ax.axhline(2.0 / learning_rate, color="C3", ls=":", lw=1.2,
                       label=rf"$2/\eta$ ($\eta$ = {learning_rate:g})")
        ax.set_ylabel(r"sharpness $\lambda_{\max}$")
        lines = ax.get_legend_handles_labels()
        more = loss_ax.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center right")
    else:
        ax.legend(fontsize=8)
    ax.set_xlabel("time t (gradient flow)")
    ax.set_title(f"gradient flow ({flow.method}, {flow.num_steps} steps)", fontsize=9)
    ax.grid(alpha=0.3)
    return ax


def plot_learning_rate_sweep(sweep: LearningRateSweep, ax=None, *, label: str | None = None,
                             color=None):
    """Steps to the criterion against the learning rate (log-log), Saxe et al.'s training
    time. Rates that missed it are drawn as crosses at the budget (dotted line); the best
    rate is starred.

    Returns:
      The axes.
    """
    ax = _axes(ax)
    rates, reached = sweep.learning_rates, sweep.reached
    line, = ax.loglog(rates[reached], sweep.steps[reached], marker="o", ms=4, lw=1.2,
                      color=color, label=label or "steps to criterion")
    if (~reached).any():
        ax.scatter(rates[~reached], np.full((~reached).sum(), sweep.max_steps), marker="x",
                   color=line.get_color(), label="not reached (budget or diverged)")
    ax.axhline(sweep.max_steps, color="0.5", ls=":", lw=1.0, label="budget")
    if sweep.best_learning_rate is not None:
        best = rates == sweep.best_learning_rate
        ax.scatter(rates[best], sweep.steps[best], marker="*", s=120, zorder=3,
                   color=line.get_color(), label=rf"best: $\eta$ = {sweep.best_learning_rate:.3g}")
    crit = ", ".join(f"{k} {'<=' if k == 'loss' else '>='} {v:g}"
                     for k, v in sweep.criterion.items())
    ax.set_xlabel(r"learning rate $\eta$")
    ax.set_ylabel("training steps")
    ax.set_title(f"time to criterion ({crit})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax
