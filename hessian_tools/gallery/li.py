"""Li et al. (2018): skip connections keep a deep network's loss surface smooth and convex.

Two deep ReLU MLPs on digits, identical but for ``h = relu(W h)`` against
``h = h + relu(W h)``, are trained the same way; around each minimum we draw the
filter-normalised surface on a random plane (Li et al.'s Fig. 5) and map the Hessian's
``|lambda_min / lambda_max|`` over the same plane (their Sec. 6 curvature maps: near 0 where
the surface is locally convex, large where negative curvature matters).

The notebook ``notebooks/05_loss_landscapes.ipynb`` (sections 2, 5 and 5b) calls these steps;
``hessian-tools gallery li --out DIR`` runs :func:`run`.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from hessian_tools.examples import digits
from hessian_tools.gallery._entry import Entry, Report, Row
from hessian_tools.landscape import (CurvatureMap, Directions, LossSurface, accuracy,
                                     curvature_map, loss_surface, plot_curvature_map,
                                     plot_surface, random_directions)
from hessian_tools.objective import Objective

__all__ = ["CONFIGS", "Config", "DeepMLP", "ENTRY", "basin_share", "curvature_maps",
           "grid_local_minima", "plot_ratio_maps", "plot_surfaces", "rows", "run", "summary",
           "surfaces", "train_pair", "verdict"]

ARCHS = ("no skip", "skip")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The sizes of one configuration.

    Attributes:
      depth, width: hidden layers of the deep MLP (64 -> width -> ... -> 10) and their width.
      steps: full-batch Adam steps (learning rate 3e-3).
      grid: surface points per axis on [-1, 1] (filter-normalised units).
      curvature_grid: curvature-map points per axis on [-1, 1] (each point a Lanczos solve).
      tol: the curvature map's relative residual tolerance.
    """

    depth: int
    width: int
    steps: int
    grid: int
    curvature_grid: int
    tol: float = 1e-3


CONFIGS = {"small": Config(depth=2, width=16, steps=40, grid=7, curvature_grid=3),
           "full": Config(depth=10, width=32, steps=300, grid=41, curvature_grid=9)}

# Li et al. 2018: CIFAR-10 test errors (Table 1) and what their figures show.
PAPER_ERROR = {"no skip": "13.31% (ResNet-56-noshort, CIFAR-10 test, Table 1)",
               "skip": "5.89% (ResNet-56, CIFAR-10 test, Table 1)"}


class DeepMLP(nnx.Module):
    """64 -> width -> ... (``depth`` hidden layers) -> 10, ReLU, optionally residual."""

    def __init__(self, depth, width, *, skip, rngs):
        self.inp = nnx.Linear(64, width, rngs=rngs)
        self.hidden = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])
        self.out = nnx.Linear(width, 10, rngs=rngs)
        self.skip = skip

    def __call__(self, x):
        h = jax.nn.relu(self.inp(x))
        for layer in self.hidden:
            z = jax.nn.relu(layer(h))
            h = h + z if self.skip else z
        return self.out(h)


def train_pair(cfg: Config, *, seed: int = 0, data=None) -> dict[str, Objective]:
    """The two deep MLPs, without and with skip connections, from the same initial weights'
    seed, trained by ``cfg.steps`` full-batch Adam steps on digits.

    Cost: ``2 cfg.steps`` gradient passes over the 1,797 images (seconds).

    Returns:
      ``{"no skip": objective, "skip": objective}``: the training cross-entropy at each
      trained network (all images, one batch).
    """
    data = digits.load_digits_data() if data is None else data
    nets = {}
    for arch in ARCHS:
        model = DeepMLP(cfg.depth, cfg.width, skip=arch == "skip", rngs=nnx.Rngs(seed))
        digits.train(model, data, steps=cfg.steps, learning_rate=3e-3)
        nets[arch] = Objective.from_nnx(model, digits.cross_entropy, data)
    return nets


def surfaces(nets: dict[str, Objective], cfg: Config, *,
             seed: int = 0) -> tuple[dict[str, Directions], dict[str, LossSurface]]:
    """Filter-normalised random planes (biases fixed) around each network and the loss and
    accuracy on a ``cfg.grid`` x ``cfg.grid`` grid over [-1, 1]^2.

    Cost: ``cfg.grid ** 2`` forward passes over the data per network, many per compiled call.

    Returns:
      ``(directions, surfaces)``, both keyed like ``nets``.
    """
    axes = (np.linspace(-1, 1, cfg.grid),) * 2
    dirs = {k: random_directions(o.params, jax.random.key(seed)) for k, o in nets.items()}
    surfs = {k: loss_surface(o, dirs[k], grid=axes, metric=accuracy) for k, o in nets.items()}
    return dirs, surfs


def curvature_maps(nets: dict[str, Objective], dirs: dict[str, Directions], cfg: Config, *,
                   key) -> dict[str, CurvatureMap]:
    """``lambda_max``, ``lambda_min`` and ``|lambda_min / lambda_max|`` of the Hessian on a
    ``cfg.curvature_grid``-point grid over the same planes as :func:`surfaces`.

    Cost: per point, one linearisation plus a few dozen Hessian-vector products (Lanczos to
    ``cfg.tol``, warm-started from the neighbour), each about two gradients.
    """
    axes = (np.linspace(-1, 1, cfg.curvature_grid),) * 2
    return {k: curvature_map(o, dirs[k], grid=axes, key=key, tol=cfg.tol)
            for k, o in nets.items()}


def grid_local_minima(values) -> int:
    """How many points of a 2-D grid are strict local minima among their (up to) 8
    neighbours: 1 for a bowl, many for a chaotic surface.

    >>> x = np.linspace(-1, 1, 5)
    >>> grid_local_minima(np.add.outer(x ** 2, x ** 2))
    1
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 2:
        raise ValueError(f"grid_local_minima needs a 2-D grid of values, got shape {v.shape}.")
    pad = np.pad(v, 1, constant_values=np.inf)
    n1, n2 = v.shape
    neighbours = [pad[1 + di:1 + di + n1, 1 + dj:1 + dj + n2]
                  for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]
    return int(np.sum(np.all([v < nb for nb in neighbours], axis=0)))


def basin_share(surf: LossSurface, *, min_accuracy: float = 0.9) -> float:
    """The share of the plotted plane where the training accuracy stays at or above
    ``min_accuracy``: how wide the basin around the minimum is."""
    return float(np.mean(np.asarray(surf.metric) >= min_accuracy))


def summary(surfs: dict[str, LossSurface], maps: dict[str, CurvatureMap]) -> dict:
    """Every number the comparison quotes, per network (``"no skip"``/``"skip"``): the loss
    and accuracy at the minimum, the basin's share of the plane, the surface's local minima,
    and the curvature map's ratio at the centre, its median and its largest value."""
    out = {}
    for k in ARCHS:
        s, m = surfs[k], maps[k]
        c = tuple(len(a) // 2 for a in m.grid)
        out[k] = {"origin_loss": float(s.origin_loss), "origin_accuracy": float(s.origin_metric),
                  "max_loss": float(np.max(s.values)), "basin_share": basin_share(s),
                  "local_minima": grid_local_minima(s.values),
                  "ratio_centre": float(m.ratio[c]), "ratio_median": float(np.median(m.ratio)),
                  "ratio_max": float(np.max(m.ratio)),
                  "lambda_max_centre": float(m.lambda_max[c]),
                  "converged": int(np.sum(m.converged)), "points": int(m.ratio.size),
                  "matvecs": int(m.num_matvecs)}
    return out


def rows(numbers: dict) -> tuple[Row, ...]:
    """Ours beside Li et al.'s, from :func:`summary`'s numbers."""
    out = []
    for k in ARCHS:
        n = numbers[k]
        out += [Row(quantity=f"{k}: training error at the minimum (paper: test error)",
                    ours=f"{100 * (1 - n['origin_accuracy']):.2f}%", paper=PAPER_ERROR[k])]
    paper_shape = {"no skip": "chaotic, many local minima (Fig. 5, 56-110 layers)",
                   "skip": "one smooth, convex-looking basin (Fig. 5)"}
    paper_ratio = {"no skip": "large (yellow) in the chaotic regions (Sec. 6 maps)",
                   "skip": "near 0 (blue) over the plane (Sec. 6 maps)"}
    for k in ARCHS:
        n = numbers[k]
        out += [Row(quantity=f"{k}: share of the plane at >= 90% training accuracy",
                    ours=round(n["basin_share"], 3), paper="-"),
                Row(quantity=f"{k}: local minima of the surface on the grid",
                    ours=n["local_minima"], paper=paper_shape[k]),
                Row(quantity=f"{k}: median |lambda_min/lambda_max| over the plane",
                    ours=round(n["ratio_median"], 3), paper=paper_ratio[k])]
    return tuple(out)


def verdict(numbers: dict, cfg: Config) -> str:
    """The paragraph saying where ours and Li et al.'s agree, generated from the numbers."""
    a, b = numbers["no skip"], numbers["skip"]
    wider = b["basin_share"] > a["basin_share"]
    flatter = b["ratio_median"] < a["ratio_median"]
    width = ("the wider basin" if wider else "a basin no wider than the one without them"
             if b["basin_share"] == a["basin_share"] else "the narrower basin")
    text = [f"With {cfg.depth} hidden layers of width {cfg.width} on digits, the network "
            f"with skip connections has {width}: {100 * b['basin_share']:.1f}% of the plane "
            f"keeps 90% training accuracy against {100 * a['basin_share']:.1f}% without them"]
    text.append(f" ({b['local_minima']} against {a['local_minima']} local minima on the "
                f"{cfg.grid}x{cfg.grid} grid).")
    text.append(f" The median |λ_min/λ_max| over the plane is {b['ratio_median']:.3f} with "
                f"skips against {a['ratio_median']:.3f} without: the surface with skips is "
                f"{'the more' if flatter else 'not the more'} convex of the two, "
                f"{'as' if wider and flatter else 'not entirely as'} Li et al. find for "
                "ResNet-56 against ResNet-56-noshort.")
    if min(a["origin_accuracy"], b["origin_accuracy"]) >= 0.99:
        text.append(" Both networks fit the training set, so the test-error gap of their "
                    "Table 1 has no counterpart here (digits is easy; we report training error).")
    else:
        text.append(f" The networks reach {100 * a['origin_accuracy']:.0f}% (without) and "
                    f"{100 * b['origin_accuracy']:.0f}% (with skips) training accuracy in "
                    f"{cfg.steps} steps, so their minima are not comparable with Li et al.'s "
                    "converged ResNets.")
    text.append(" Li et al. see chaotic surfaces at 20-110 layers on CIFAR-10 with "
                f"convolutions and BatchNorm; {cfg.depth} dense layers on 8x8 digits can show "
                "the start of the effect, not the chaos.")
    return "".join(text)


def plot_surfaces(surfs: dict[str, LossSurface], cfg: Config, axes=None):
    """The two surfaces' contours side by side (log-spaced levels); returns the axes."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    for ax, k in zip(axes, ARCHS):
        s = surfs[k]
        plot_surface(s, kind="contour", ax=ax)
        ax.set_title(f"{cfg.depth} hidden layers {'with' if k == 'skip' else 'without'} skip "
                     f"connections\nloss {s.origin_loss:.2g} at the origin, accuracy "
                     f"{s.origin_metric:.3f}")
    return axes


def plot_ratio_maps(maps: dict[str, CurvatureMap], cfg: Config, axes=None):
    """The two ``|lambda_min / lambda_max|`` maps side by side on one colour scale."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    top = max(float(np.max(m.ratio)) for m in maps.values())
    for ax, k in zip(axes, ARCHS):
        plot_curvature_map(maps[k], ax=ax)
        ax.collections[0].set_clim(0.0, top)
        ax.set_title(f"{cfg.depth} layers, {k}: |λ_min / λ_max| "
                     f"(median {np.median(maps[k].ratio):.3f})")
    return axes


def run(*, small: bool = False, seed: int = 0, say=print) -> Report:
    """Train both networks, draw their surfaces and curvature maps, compare with Li et al."""
    cfg = CONFIGS["small" if small else "full"]
    start = time.perf_counter()
    nets = train_pair(cfg, seed=seed)
    say(f"trained the two {cfg.depth}-layer MLPs ({time.perf_counter() - start:.1f} s)")
    dirs, surfs = surfaces(nets, cfg, seed=seed)
    say(f"surfaces on {cfg.grid}x{cfg.grid} grids ({time.perf_counter() - start:.1f} s)")
    maps = curvature_maps(nets, dirs, cfg, key=jax.random.key(seed + 1))
    say(f"curvature maps on {cfg.curvature_grid}x{cfg.curvature_grid} grids "
        f"({time.perf_counter() - start:.1f} s)")
    numbers = summary(surfs, maps)
    fig_s = plot_surfaces(surfs, cfg)[0].figure
    fig_c = plot_ratio_maps(maps, cfg)[0].figure
    return ENTRY.report(small=small, seed=seed, start=start, rows=rows(numbers),
                        verdict=verdict(numbers, cfg),
                        figures={"surfaces": fig_s, "curvature": fig_c}, numbers=numbers)


ENTRY = Entry(
    name="li", title="Skip connections keep deep loss surfaces smooth (Li et al. 2018)",
    citation="H. Li, Z. Xu, G. Taylor, C. Studer, T. Goldstein (2018), Visualizing the Loss "
             "Landscape of Neural Nets, NeurIPS",
    claim="Filter-normalised surfaces of deep networks without skip connections turn chaotic "
          "with depth, while skip connections keep one smooth, convex-looking basin (Fig. 5); "
          "the Hessian's |lambda_min/lambda_max| is near 0 over the convex-looking regions and "
          "large over the chaotic ones (Sec. 6).",
    notebook="05_loss_landscapes.ipynb", run=run, full_seconds=119)
