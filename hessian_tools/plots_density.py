"""Plots of spectral densities. Each takes results and an optional ``ax`` and returns the
``ax``; none calls ``savefig`` or picks a backend."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hessian_tools.spectral_density import SpectralDensity

__all__ = ["plot_density", "plot_densities"]


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(6.5, 3.8))
    return ax


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
      label, color: for the curve.
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
      sigma, num_points, log, counts, dynamic_range, mark_ends: as in :func:`plot_density`.
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


def _finish(ax, log, floor, counts, title):
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("eigenvalues per unit" if counts else "density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
