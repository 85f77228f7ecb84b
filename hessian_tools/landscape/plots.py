"""Plots of landscape results. Each takes a result and an optional ``ax`` and returns the
``ax``; none calls ``savefig`` or picks a backend."""

from __future__ import annotations

import numpy as np

from hessian_tools.landscape.directions import Directions
from hessian_tools.landscape.results import CurvatureMap, InterpolationPath, LossSurface

__all__ = ["plot_curvature_map", "plot_interpolation", "plot_surface", "plot_trajectory"]

_KINDS = ("contour", "filled", "3d")
_ORIGIN = dict(marker="*", s=160, color="white", edgecolors="black", linewidths=1.0, zorder=5)


def _axes(ax, *, three_d: bool = False):
    if ax is None:
        import matplotlib.pyplot as plt
        fig = plt.figure(figsize=(6, 4.8) if not three_d else (7, 5.5))
        ax = fig.add_subplot(projection="3d" if three_d else None)
    elif three_d and getattr(ax, "name", "") != "3d":
        raise ValueError("kind='3d' needs a 3-D axes: fig.add_subplot(projection='3d'), or "
                         "ax=None.")
    return ax


def _direction_labels(provenance: dict) -> list[str]:
    return Directions.from_dict(provenance).labels()


def _log_scale(values, log) -> bool:
    """Log-spaced levels when asked, or (``log=None``) when the values span over two decades."""
    finite = values[np.isfinite(values)]
    if log is not None:
        if log and (finite.size == 0 or finite.min() <= 0):
            raise ValueError("log=True needs positive values.")
        return bool(log)
    return finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 100


def _levels(values, log: bool, num: int):
    finite = values[np.isfinite(values)]
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + max(abs(lo), 1.0) * 1e-6
    return np.geomspace(lo, hi, num) if log else np.linspace(lo, hi, num)


def _plot_curve(surf, ax, values, label, origin_value, log):
    ax = _axes(ax)
    xs = surf.grid[0]
    ax.plot(xs, values, color="C0", lw=1.8, label=label)
    ax.scatter([0.0], [origin_value], **{**_ORIGIN, "color": "C1", "s": 120}, label="origin")
    if _log_scale(values, log):
        ax.set_yscale("log")
    ax.set_xlabel(_direction_labels(surf.directions)[0])
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(f"{label} along one direction, {surf.shape[0]} points")
    return ax


def plot_surface(surf: LossSurface, kind: str = "contour", ax=None, *, quantity: str = "loss",
                 levels: int = 20, log: bool | None = None, cmap: str = "viridis",
                 colorbar: bool = True):
    """A loss surface: contour lines, filled contours with a colour bar, or a 3-D surface.

    A 1-D surface is drawn as a curve. The origin (the parameters the directions start
    from) is marked with a star. Levels are log-spaced when the values span more than two
    decades (``log=None``), as a trained network's loss does near its minimum.

    Args:
      surf: the :class:`LossSurface`.
      kind: ``"contour"`` (labelled lines), ``"filled"`` (with a colour bar) or ``"3d"``.
      ax: a matplotlib axes (3-D for ``"3d"``), or None for a new figure.
      quantity: ``"loss"`` or ``"metric"`` (the surface's metric, e.g. accuracy).
      levels: the number of contour levels; log: force log-spaced levels on or off.
      cmap: the colour map; colorbar: add a colour bar (filled and 3-D kinds).

    Returns:
      The axes.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind={kind!r} is not one of {_KINDS}.")
    if quantity not in ("loss", "metric"):
        raise ValueError(f"quantity={quantity!r} must be 'loss' or 'metric'.")
    if quantity == "metric" and surf.metric is None:
        raise ValueError("This surface has no metric; compute it with loss_surface(..., "
                         "metric=...).")
    values = np.asarray(surf.values if quantity == "loss" else surf.metric, np.float64)
    label = "loss" if quantity == "loss" else (surf.metric_name or "metric")
    origin_value = surf.origin_loss if quantity == "loss" else surf.origin_metric
    if surf.ndim == 1:
        return _plot_curve(surf, ax, values, label, origin_value, log)
    import matplotlib.colors as mcolors
    from matplotlib.ticker import MaxNLocator
    ax = _axes(ax, three_d=kind == "3d")
    x, y = np.meshgrid(surf.grid[0], surf.grid[1], indexing="ij")
    log = _log_scale(values, log)
    lv = _levels(values, log, levels)
    norm = mcolors.LogNorm(lv[0], lv[-1]) if log else None
    xlabel, ylabel = _direction_labels(surf.directions)
    if kind == "3d":
        z = np.log10(values) if log else values
        art = ax.plot_surface(x, y, z, cmap=cmap, linewidth=0, antialiased=True, alpha=0.95)
        ax.scatter([0.0], [0.0], [np.log10(origin_value) if log else origin_value],
                   **{**_ORIGIN, "s": 120})
        ax.set_zlabel(f"log10 {label}" if log else label)
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(MaxNLocator(5))
        if colorbar:
            ax.figure.colorbar(art, ax=ax, shrink=0.6, pad=0.1,
                               label=f"log10 {label}" if log else label)
    elif kind == "filled":
        art = ax.contourf(x, y, values, levels=lv, cmap=cmap, norm=norm, extend="neither")
        ax.contour(x, y, values, levels=lv, colors="k", linewidths=0.3, norm=norm)
        if colorbar:
            if log:
                ax.figure.colorbar(art, ax=ax, label=label).ax.set_yscale("log")
            else:
                ax.figure.colorbar(art, ax=ax, label=label, ticks=MaxNLocator(7),
                                   format="%.3g")
        ax.scatter([0.0], [0.0], **_ORIGIN)
    else:
        art = ax.contour(x, y, values, levels=lv, cmap=cmap, norm=norm, linewidths=1.0)
        ax.clabel(art, art.levels[::max(1, len(art.levels) // 6)], fontsize=7,
                  fmt=lambda v: f"{v:.2g}")
        ax.scatter([0.0], [0.0], **_ORIGIN)
    if kind != "3d":
        ax.set_aspect("auto")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    scale = " (log-spaced levels)" if log and kind != "3d" else ""
    ax.set_title(f"{label} surface, {surf.shape[0]}x{surf.shape[1]} points{scale}")
    return ax


def plot_interpolation(path: InterpolationPath, ax=None, *, show_metric: bool = True):
    """The loss along ``(1 - t) a + t b``, the chord between its ends, and the barrier.

    The barrier (Frankle et al. 2020) is drawn as a vertical segment from the chord to the
    curve where the excess is largest, and written in the legend. The metric, if any, is
    drawn on a second y-axis.
    """
    ax = _axes(ax)
    t, loss = path.t, path.loss
    chord = (1.0 - t) * loss[0] + t * loss[-1]
    ax.plot(t, loss, color="C0", lw=1.8, marker="o", ms=3, label="loss")
    ax.plot(t, chord, color="0.4", ls="--", lw=1.0, label="linear interpolation of the ends")
    i = int(np.argmin(np.abs(t - path.barrier_t)))
    ax.vlines(t[i], chord[i], loss[i], color="C3", lw=2.5,
              label=f"barrier = {path.barrier:.3g} (t = {path.barrier_t:.2f})")
    ax.set_xlabel("t   (0: a, 1: b)")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if show_metric and path.metric is not None:
        twin = ax.twinx()
        twin.plot(t, path.metric, color="C2", lw=1.2, ls=":", label=path.metric_name)
        twin.set_ylabel(path.metric_name or "metric", color="C2")
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
              fontsize=8, frameon=False)
    ax.set_title(f"linear path, ||b - a|| = {path.distance:.3g}")
    return ax


def plot_trajectory(surf: LossSurface, traj: Directions, ax=None, *, kind: str = "contour",
                    **surface_kwargs):
    """A training trajectory projected onto its PCA plane, over the loss contours there.

    ``surf`` must be the surface computed with ``traj`` around the final checkpoint
    (``loss_surface(obj.with_params(final), traj, grid=...)``); the axes read each
    direction's share of the trajectory's variance.

    Raises:
      ValueError: ``traj`` is not trajectory directions, or ``surf`` was computed with other
        directions or around another point.
    """
    if not isinstance(traj, Directions) or traj.kind != "trajectory" or traj.coordinates is None:
        raise ValueError("plot_trajectory needs the Directions of trajectory_directions(...).")
    if surf.directions.get("vectors_fingerprint") != traj.vectors_fingerprint or \
            surf.origin_fingerprint != traj.fingerprint:
        raise ValueError("This surface was not computed with these trajectory directions around "
                         "the final checkpoint: compute it with loss_surface(obj.with_params("
                         "final), traj, grid=...).")
    ax = plot_surface(surf, kind=kind, ax=ax, **surface_kwargs)
    xy = traj.coordinates[:, :2]
    ax.plot(xy[:, 0], xy[:, 1], color="C3", lw=1.5, marker="o", ms=3.5, zorder=6,
            label="training trajectory")
    ax.scatter(xy[:1, 0], xy[:1, 1], marker="s", s=60, color="C3", edgecolors="k", zorder=7,
               label="first checkpoint")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"trajectory over the loss ({int(traj.extra.get('num_checkpoints', len(xy)))} "
                 "checkpoints)")
    return ax


_QUANTITIES = {"ratio": "|λ_min / λ_max|", "lambda_max": "λ_max", "lambda_min": "λ_min"}


def plot_curvature_map(cmap: CurvatureMap, ax=None, *, quantity: str = "ratio",
                       colormap: str = "magma"):
    """A curvature map: ``|lambda_min / lambda_max|`` (or either eigenvalue) on the grid.

    2-D maps are drawn as coloured cells with a colour bar, points whose solve did not
    converge crossed out, the origin starred; 1-D maps as ``lambda_max`` and
    ``lambda_min`` curves with the ratio on a second axis.
    """
    if quantity not in _QUANTITIES:
        raise ValueError(f"quantity={quantity!r} is not one of {tuple(_QUANTITIES)}.")
    ax = _axes(ax)
    labels = _direction_labels(cmap.directions)
    if len(cmap.grid) == 1:
        xs = cmap.grid[0]
        ax.plot(xs, cmap.lambda_max, color="C0", marker="o", ms=3, label="λ_max")
        ax.plot(xs, cmap.lambda_min, color="C3", marker="o", ms=3, label="λ_min")
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_xlabel(labels[0])
        ax.set_ylabel("Hessian eigenvalue")
        twin = ax.twinx()
        twin.plot(xs, cmap.ratio, color="C2", ls=":", label="|λ_min / λ_max|")
        twin.set_ylabel("|λ_min / λ_max|", color="C2")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = twin.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="best", fontsize=8)
    else:
        values = np.asarray(getattr(cmap, quantity), np.float64)
        x, y = cmap.grid
        mesh = ax.pcolormesh(x, y, values.T, cmap=colormap, shading="nearest")
        ax.figure.colorbar(mesh, ax=ax, label=_QUANTITIES[quantity])
        bad = ~cmap.converged
        if bad.any():
            gx, gy = np.meshgrid(x, y, indexing="ij")
            ax.scatter(gx[bad], gy[bad], marker="x", color="cyan", s=30, label="not converged")
            ax.legend(loc="best", fontsize=8)
        ax.scatter([0.0], [0.0], **_ORIGIN)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    ax.set_title(f"{_QUANTITIES[quantity] if len(cmap.grid) == 2 else 'extreme eigenvalues'}: "
                 f"{cmap.num_matvecs} Hessian-vector products")
    return ax
