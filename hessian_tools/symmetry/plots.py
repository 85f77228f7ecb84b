"""The picture of a :class:`~hessian_tools.symmetry.connectivity.Connectivity`."""

from __future__ import annotations

import numpy as np

from hessian_tools.plots import symlog_eigenvalue_axis
from hessian_tools.symmetry.connectivity import PATHS, Connectivity

__all__ = ["plot_connectivity"]

_STYLE = {"naive": dict(color="C3", label="as trained"),
          "aligned": dict(color="C0", label="aligned")}


def plot_connectivity(conn: Connectivity, axes=None):
    """The loss along both paths, and the curvature along them.

    Left: the loss from A (``t = 0``) to B (``t = 1``) as trained and after alignment, each
    with its barrier marked (the vertical segment from the chord to the curve) and given in
    the legend. Middle: ``lambda_max`` (solid) and ``lambda_min`` (dashed) of the Hessian at
    the measured points (symmetric-log axis when ``lambda_min`` is negative). Right: the
    trace with its standard error. Without curvature only the left panel is drawn.

    Args:
      conn: the result of :func:`hessian_tools.connectivity`.
      axes: a sequence of three axes (one when no curvature was measured); default: a new
        figure.

    Returns:
      The axes.
    """
    panels = 3 if len(conn.curvature_t) else 1
    if axes is None:
        import matplotlib.pyplot as plt     # pyplot only when a figure is made (~0.4 s import)
        _, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.8), layout="constrained",
                               squeeze=False)
        axes = axes[0]
    if len(axes) != panels:
        raise ValueError(f"plot_connectivity needs {panels} axes here, got {len(axes)}.")
    _loss_panel(conn, axes[0])
    if panels == 3:
        _eigen_panel(conn, axes[1])
        _trace_panel(conn, axes[2])
    return axes


def _loss_panel(conn, ax):
    for name in PATHS:
        path = getattr(conn, name)
        style = _STYLE[name]
        t, loss = path.t, path.loss
        chord = (1.0 - t) * loss[0] + t * loss[-1]
        ax.plot(t, loss, marker="o", ms=3, lw=1.6, color=style["color"],
                label=f"{style['label']}: barrier {path.barrier:.3g}")
        ax.plot(t, chord, ls=":", lw=0.9, color=style["color"])
        i = int(np.argmin(np.abs(t - path.barrier_t)))
        ax.vlines(t[i], chord[i], loss[i], color=style["color"], lw=2.5, alpha=0.6)
    _label(ax, "t   (0: network A, 1: network B)", "loss",
           f"linear paths ({conn.method} matching)")


def _eigen_panel(conn, ax):
    t = conn.curvature_t
    for row, name in enumerate(PATHS):
        style = _STYLE[name]
        ax.plot(t, conn.lambda_max[row], marker="o", ms=3, color=style["color"],
                label=f"λmax, {style['label']}")
        ax.plot(t, conn.lambda_min[row], marker="s", ms=3, ls="--", color=style["color"],
                label=f"λmin, {style['label']}")
    if np.nanmin(conn.lambda_min) < 0:
        scale = np.nanmax(np.abs(np.concatenate([conn.lambda_max, conn.lambda_min], axis=None)))
        symlog_eigenvalue_axis(ax, [conn.lambda_max, conn.lambda_min],
                               max(1e-2 * scale, np.finfo(float).tiny))
    _label(ax, "t", "Hessian eigenvalue", "extreme eigenvalues along the paths", fontsize=7)


def _trace_panel(conn, ax):
    t = conn.curvature_t
    for row, name in enumerate(PATHS):
        style = _STYLE[name]
        ax.errorbar(t, conn.trace[row], yerr=conn.trace_stderr[row], marker="o", ms=3,
                    capsize=2, color=style["color"], label=style["label"])
    _label(ax, "t", "tr(H)", "trace along the paths (Hutch++)")


def _label(ax, xlabel, ylabel, title, fontsize=8):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=fontsize)
