"""Plots of result objects. Each takes a result and an optional ``ax`` and returns the ``ax``;
none calls ``savefig`` or picks a backend."""

from __future__ import annotations


from hessian_tools.results import Eigenpairs

__all__ = ["plot_eigenvalues"]


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(6, 3.5))
    return ax


def plot_eigenvalues(eig: Eigenpairs, ax=None, *, label: str | None = None, color=None):
    """The eigenvalues found, largest and smallest, on a symmetric-log axis.

    Points are ranked from the top (``1, 2, ...``) and from the bottom (``-1, -2, ...``);
    error bars show the residual bound ``|lambda - lambda_true| <= ||H v - lambda v||``;
    the zero line separates positive from negative curvature.
    """
    ax = _axes(ax)
    top, bottom = eig.largest, eig.smallest
    res = dict(zip(eig.values.tolist(), eig.residuals.tolist()))
    xs = list(range(1, len(top) + 1)) + [-i for i in range(1, len(bottom) + 1)]
    ys = list(top) + list(bottom)
    errs = [res.get(v, 0.0) for v in ys]
    ax.errorbar(xs, ys, yerr=errs, fmt="o", color=color, label=label or eig.operator, capsize=3)
    ax.axhline(0.0, color="0.5", lw=0.8)
    linthresh = max(1e-6, 1e-4 * max(abs(v) for v in ys)) if ys else 1.0
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.set_xlabel("rank (1 = largest, -1 = smallest)")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"{eig.operator or 'operator'}: extreme eigenvalues ({eig.num_matvecs} matvecs)")
    ax.grid(alpha=0.3)
    return ax
