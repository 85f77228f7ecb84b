"""Ghorbani, Krishnan & Xiao (2019): stochastic Lanczos quadrature recovers the whole Hessian
spectrum, and BatchNorm (with batch statistics) suppresses the outlier eigenvalues.

Two experiments on scikit-learn's digits, in float64:

(a) a tanh MLP without BatchNorm (a few thousand parameters): its exact spectrum (the dense
    Hessian, ``eigvalsh``) against ``density`` (SLQ) with one and with several probes:
    Wasserstein-1 distance, moments, the top eigenvalue (:func:`slq_check`);
(b) the same MLP with BatchNorm after each hidden layer, trained the same way: the top
    eigenvalues and the density of the Hessian with the batch statistics (``bn_mode="batch"``,
    the training loss the network is optimised on) and with the population (running)
    statistics (``bn_mode="eval"``), beside the network without BatchNorm
    (:func:`bn_spectrum`): outlier counts (``outliers``) and ``lambda_max`` over the bulk edge.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from hessian_tools import plots
from hessian_tools.analysis import density, outliers
from hessian_tools.examples.digits import cross_entropy, load_digits_data
from hessian_tools.gallery._entry import Entry, Report, Row
from hessian_tools.objective import Objective
from hessian_tools.operators import dense_hessian, hessian
from hessian_tools.results import OutlierSplit, Result, SpectralDensity
from hessian_tools.tree import key_bits

__all__ = ["CONFIGS", "Config", "BNMLP", "SLQCheck", "BNSpectrum", "load_data", "train_pair",
           "batches", "slq_check", "bn_spectrum", "bn_spectra", "numbers", "rows", "verdict",
           "plot_slq_check", "plot_bn_spectra", "run", "ENTRY"]

NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The sizes of one run.

    Attributes:
      widths: hidden widths of the tanh MLP (64 -> widths -> 10).
      num_examples: digits used (a multiple of ``batch_size``: every batch is full, so the
        batch statistics of ``bn_mode="batch"`` are those of training).
      batch_size: the minibatch of training and of the batch-statistics Hessian.
      epochs: SGD (momentum 0.9) epochs. learning_rate: its step size.
      probes: the probe counts SLQ is checked with. num_steps: Lanczos steps per probe.
      k: top eigenvalues examined for the outlier split (``outliers(k=k, max_k=k)``).
      bn_probes: probes of the densities of experiment (b).
    """

    widths: tuple = (32, 32)
    num_examples: int = 1792
    batch_size: int = 128
    epochs: int = 20
    learning_rate: float = 0.05
    probes: tuple = (1, 10)
    num_steps: int = 80
    k: int = 24
    bn_probes: int = 4


CONFIGS = {
    "small": Config(widths=(8, 8), num_examples=256, batch_size=64, epochs=5, probes=(1, 4),
                    num_steps=30, k=16, bn_probes=2),
    "full": Config(),
}


class BNMLP(nnx.Module):
    """A tanh MLP on 8x8 digits; with ``batch_norm`` a BatchNorm after each hidden Linear."""

    def __init__(self, widths=(32, 32), *, batch_norm: bool, rngs: nnx.Rngs,
                 param_dtype=jnp.float64):
        sizes = (64, *widths)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs, param_dtype=param_dtype)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.norms = nnx.List([nnx.BatchNorm(b, momentum=0.9, rngs=rngs,
                                             param_dtype=param_dtype) for b in widths]
                              ) if batch_norm else None
        self.head = nnx.Linear(sizes[-1], NUM_CLASSES, rngs=rngs, param_dtype=param_dtype)
        stats = nnx.state(self, nnx.BatchStat)     # nnx keeps them in float32 otherwise
        nnx.update(self, jax.tree.map(lambda a: a.astype(param_dtype), stats))

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = jnp.tanh(x)
        return self.head(x)


def load_data(config: Config):
    """The first ``config.num_examples`` digits as float64 ``(x, y)``."""
    x, y = load_digits_data(dtype=jnp.float64)
    return x[:config.num_examples], y[:config.num_examples]


def batches(data, config: Config) -> list:
    """``data`` cut into the training minibatches (in order): the batches whose statistics
    the ``bn_mode="batch"`` Hessian normalises with."""
    x, y = data
    b = config.batch_size
    return [(x[i:i + b], y[i:i + b]) for i in range(0, len(y), b)]


def train_pair(config: Config, data, *, seed: int = 0) -> dict:
    """The MLP without and with BatchNorm, each from ``nnx.Rngs(seed)``, trained by SGD with
    momentum on the same shuffled minibatches (BatchNorm in training mode, its running
    statistics updated). Cost: ``epochs * num_examples / batch_size`` steps per network,
    all in one compiled ``lax.scan`` per network."""
    x, y = data
    steps = len(y) // config.batch_size
    order = np.concatenate([np.asarray(jax.random.permutation(k, len(y)))[:steps * config.batch_size]
                            for k in jax.random.split(jax.random.key(seed), config.epochs)])
    order = jnp.asarray(order.reshape(-1, config.batch_size))
    tx = optax.sgd(config.learning_rate, momentum=0.9)
    models = {}
    for name, bn in (("no BN", False), ("BN", True)):
        model = BNMLP(config.widths, batch_norm=bn, rngs=nnx.Rngs(seed))
        model.train()
        graph, params, rest = nnx.split(model, nnx.Param, ...)
        params, rest = _fit(graph, params, rest, tx.init(params), tx, x, y, order)
        nnx.update(model, params, rest)
        model.eval()
        models[name] = model
    return models


@functools.partial(jax.jit, static_argnums=(0, 4))
def _fit(graph, params, rest, opt_state, tx, x, y, order):
    def loss(p, rest, idx):
        model = nnx.merge(graph, *jax.tree.map(jnp.asarray, (p, rest)))  # this trace's
        value = cross_entropy(model(x[idx]), (x[idx], y[idx]))
        return value, nnx.state(model, nnx.Not(nnx.Param))

    def step(carry, idx):
        p, rest, s = carry
        grads, rest = jax.grad(loss, has_aux=True)(p, rest, idx)
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), rest, s), None

    (params, rest, _), _ = jax.lax.scan(step, (params, rest, opt_state), order)
    return params, rest


@dataclasses.dataclass(frozen=True, kw_only=True)
class SLQCheck(Result):
    """The exact Hessian spectrum beside SLQ estimates of its density.

    Attributes:
      exact: all ``n`` eigenvalues (ascending) of the dense float64 Hessian.
      densities: one SLQ density per probe count.
      dense_seconds: seconds for the dense Hessian and ``eigvalsh``.
    """

    exact: np.ndarray
    densities: tuple = ()
    dense_seconds: float = 0.0

    _arrays = ("exact",)
    _results = {"densities": SpectralDensity}

    def exact_density(self) -> SpectralDensity:
        """The exact spectrum as a (one-probe, ``n``-node) density, to smooth and plot like
        the SLQ ones."""
        n = len(self.exact)
        return SpectralDensity(nodes=self.exact[None, :], weights=np.full((1, n), 1.0 / n),
                               residuals=np.zeros((1, n)), dim=n, num_probes=1, num_steps=n,
                               dtype="float64", operator="exact")

    def metrics(self) -> list[dict]:
        """Per SLQ density: probes, matvecs, ``W1 / (lambda_max - lambda_min)``, the relative
        errors of the first two moments (``tr H / n``, ``tr H^2 / n``) and of ``lambda_max``."""
        ev = self.exact
        span = ev[-1] - ev[0]
        rows = []
        for d in self.densities:
            x, w = d.measure()
            rows.append({"probes": d.num_probes, "matvecs": d.num_matvecs,
                         "w1_rel": d.wasserstein1(ev) / span,
                         "mean_rel_err": abs(x @ w - ev.mean()) / abs(ev.mean()),
                         "m2_rel_err": abs(x ** 2 @ w - np.mean(ev ** 2)) / np.mean(ev ** 2),
                         "lambda_max_rel_err": abs(d.lambda_max - ev[-1]) / abs(ev[-1]),
                         "seconds": d.wall_time})
        return rows


def slq_check(obj: Objective, *, probes=(1, 10), num_steps: int = 80, key) -> SLQCheck:
    """The exact spectrum of ``obj``'s Hessian (dense, ``eigvalsh``) against SLQ densities
    with each probe count in ``probes``: one SLQ run with ``max(probes)`` probes from
    ``key``, and its first ``p`` probes for each smaller count.

    Cost: the dense Hessian (forward-over-reverse ``jax.hessian``, ``O(n^2)`` memory) and
    an ``O(n^3)`` eigendecomposition, for a few thousand parameters; SLQ spends
    ``max(probes) * num_steps`` Hessian-vector products.
    """
    if key is None:
        raise ValueError("slq_check needs a key (jax.random.key(seed)) for the SLQ probes.")
    start = time.perf_counter()
    exact = np.linalg.eigvalsh(dense_hessian(obj))
    dense_seconds = time.perf_counter() - start
    full = density(hessian(obj), key=key, num_probes=max(probes), num_steps=num_steps)
    dens = tuple(_first_probes(full, p) for p in probes)
    return SLQCheck(exact=exact, densities=dens, dense_seconds=dense_seconds,
                    num_matvecs=full.num_matvecs, seed=key_bits(key),
                    operator="hessian", wall_time=time.perf_counter() - start)


def _first_probes(dens: SpectralDensity, p: int) -> SpectralDensity:
    """The SLQ estimate from the first ``p`` probes of ``dens`` (the same probes as a run
    with ``num_probes=p`` and the same key would not draw: a prefix, not a new sample)."""
    return dataclasses.replace(dens, nodes=dens.nodes[:p], weights=dens.weights[:p],
                               residuals=dens.residuals[:p], num_probes=p,
                               num_matvecs=p * dens.num_steps,
                               wall_time=dens.wall_time * p / dens.num_probes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BNSpectrum(Result):
    """The top of one network's Hessian spectrum, and its density.

    Attributes:
      label: which network and statistics (``"BN, batch statistics"``).
      bn_mode: ``"batch"``, ``"eval"``, or ``"none"`` (no BatchNorm).
      loss: the training loss the Hessian is of.
      split: the outlier split of the top ``k`` eigenvalues (Lanczos).
      density: the SLQ density.
    """

    label: str
    bn_mode: str
    loss: float
    split: OutlierSplit
    density: SpectralDensity

    _results = {"split": OutlierSplit, "density": SpectralDensity}

    @property
    def lambda_max(self) -> float:
        return float(self.split.top[0])

    @property
    def edge_ratio(self) -> float:
        """``lambda_max`` over the bulk edge of the outlier split."""
        return self.lambda_max / self.split.bulk_edge

    @property
    def class_ratio(self) -> float:
        """``lambda_1 / lambda_{C+1}`` (C = 10 classes): the top over the first eigenvalue
        below the ``C`` expected outliers (no gap rule needed)."""
        return self.lambda_max / float(self.split.top[NUM_CLASSES])


def bn_spectrum(model, data_batches, *, label: str, bn_mode: str, k: int = 24,
                num_probes: int = 4, num_steps: int = 80, key) -> BNSpectrum:
    """The Hessian of ``model``'s mean cross-entropy over ``data_batches`` with BatchNorm in
    ``bn_mode`` (``"none"`` for a network without it): its top ``k`` eigenvalues split by
    ``outliers`` (``k`` fixed), and its SLQ density.

    Cost: about ``k + 100`` Hessian-vector products for the top, ``num_probes * num_steps``
    for the density, one pass for the loss (the mean over ``data_batches``, all of one size).
    """
    if key is None:
        raise ValueError("bn_spectrum needs a key (jax.random.key(seed)).")
    start = time.perf_counter()
    obj = Objective.from_nnx(model, cross_entropy, data_batches,
                             bn_mode="eval" if bn_mode == "none" else bn_mode)
    op = hessian(obj)
    k1, k2 = jax.random.split(key)
    split = outliers(op, key=k1, k=k, max_k=k)
    dens = density(op, key=k2, num_probes=num_probes, num_steps=num_steps)
    loss = float(np.mean([obj.loss(obj.params, b) for b in data_batches]))   # full batches
    return BNSpectrum(label=label, bn_mode=bn_mode, loss=loss, split=split, density=dens,
                      num_matvecs=split.num_matvecs + dens.num_matvecs, seed=key_bits(key),
                      operator="hessian", wall_time=time.perf_counter() - start)


def plot_slq_check(check: SLQCheck, axes=None):
    """Left: the exact smoothed density and the SLQ ones on one grid (log scale). Right:
    the cumulative eigenvalue count, exact (a staircase) against SLQ; the area between the
    curves over ``n`` is the Wasserstein-1 distance. Returns the two axes."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    exact = check.exact_density()
    labels = ["exact (dense eigvalsh)"] + [
        f"SLQ, {d.num_probes} probe{'s' if d.num_probes > 1 else ''} x {d.num_steps} steps"
        for d in check.densities]
    colors = ["k", "tab:orange", "tab:green", "tab:purple"][:len(labels)]
    plots.plot_densities([exact, *check.densities], ax=axes[0], labels=labels, colors=colors,
                         sigma=check.densities[-1].default_sigma, mark_ends=False)
    axes[0].set_title(f"Hessian eigenvalue density, n = {exact.dim}")
    ev = check.exact
    grid = np.linspace(ev[0], ev[-1], 2000)
    axes[1].step(ev, np.arange(1, len(ev) + 1), where="post", color="k", lw=1.2,
                 label="exact")
    for d, lab, c in zip(check.densities, labels[1:], colors[1:]):
        axes[1].plot(grid, d.cdf(grid) * d.dim, label=lab, color=c)
    axes[1].set_xscale("symlog", linthresh=1e-2 * abs(ev[-1]))
    axes[1].set_xlabel("eigenvalue (symlog)")
    axes[1].set_ylabel("number of eigenvalues ≤ x")
    axes[1].set_title("cumulative count")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    return axes


def plot_bn_spectra(spectra, axes=None):
    """Left: the top eigenvalues by rank (log scale), the bulk edge of each outlier split
    marked. Right: the SLQ densities overlaid. Returns the two axes."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = ["tab:red", "tab:blue", "tab:green"]
    for s, c in zip(spectra, colors):
        top = s.split.top
        axes[0].plot(np.arange(1, len(top) + 1), top, "o-", ms=4, color=c,
                     label=f"{s.label}: {s.split.num_outliers} outliers, "
                           f"λmax = {s.lambda_max:.3g}")
        axes[0].axhline(s.split.bulk_edge, color=c, ls=":", lw=0.9)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("rank i")
    axes[0].set_ylabel("eigenvalue λ_i (dotted: bulk edge)")
    axes[0].set_title("top of the Hessian spectrum")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    plots.plot_densities([s.density for s in spectra], ax=axes[1],
                         labels=[s.label for s in spectra], colors=colors[:len(spectra)])
    return axes


def bn_spectra(models: dict, data, config: Config, *, key) -> tuple:
    """:func:`bn_spectrum` of the three cases: without BatchNorm, BatchNorm with batch
    statistics (the training loss), BatchNorm with the population (running) statistics;
    all over the training minibatches of ``data``."""
    cases = (("no BN", "none", models["no BN"]), ("BN, batch statistics", "batch", models["BN"]),
             ("BN, population statistics", "eval", models["BN"]))
    return tuple(bn_spectrum(model, batches(data, config), label=label, bn_mode=mode,
                             k=config.k, num_probes=config.bn_probes,
                             num_steps=config.num_steps, key=k)
                 for (label, mode, model), k in zip(cases, jax.random.split(key, len(cases))))


def numbers(check: SLQCheck, spectra) -> dict:
    """Every measured number of both experiments, JSON-ready (the report's ``numbers``)."""
    out = {"num_params_no_bn": len(check.exact), "exact_lambda_max": float(check.exact[-1]),
           "exact_lambda_min": float(check.exact[0]), "dense_seconds": check.dense_seconds,
           "slq": check.metrics(),
           "exact_outliers": outliers(check.exact[::-1][:spectra[0].split.extra["k"]]
                                      ).num_outliers}
    for s in spectra:
        out[s.bn_mode] = {"label": s.label, "loss": s.loss, "lambda_max": s.lambda_max,
                          "num_outliers": s.split.num_outliers, "bulk_edge": s.split.bulk_edge,
                          "edge_ratio": s.edge_ratio, "class_ratio": s.class_ratio,
                          "stable": s.split.extra["stable"],
                          "counts_by_k": s.split.extra["counts_by_k"],
                          "top": s.split.top, "density_lambda_min": s.density.lambda_min}
    return out


def verdict(num: dict) -> str:
    """The verdict paragraph, written from the measured :func:`numbers`."""
    one, many = num["slq"][0], num["slq"][-1]
    a = (f"(a) SLQ: with {one['probes']} probe the Wasserstein-1 distance to the exact spectrum "
         f"is {one['w1_rel']:.1e} of its range and with {many['probes']} probes "
         f"{many['w1_rel']:.1e}; lambda_max is found to a relative {one['lambda_max_rel_err']:.1e}"
         " already with one probe. ")
    a += ("This agrees with the paper's Sec. 2.3: the whole density is recovered, the extreme "
          "eigenvalues most precisely. " if many["w1_rel"] < 0.01 else
          "This agrees only roughly with the paper's Sec. 2.3 (W1 above 1% of the range). ")
    a += (f"The mean eigenvalue tr(H)/n is off by {one['mean_rel_err']:.0%} (1 probe) and "
          f"{many['mean_rel_err']:.0%} ({many['probes']} probes): it is small against the "
          "spread of the eigenvalues, so its relative error is the Hutchinson sampling error "
          "(unbiased, falling like 1/sqrt(probes)), not a fault of the quadrature.")
    nb, ba, ev = num["none"], num["batch"], num["eval"]
    suppressed = (ba["lambda_max"] < ev["lambda_max"] and ba["lambda_max"] < nb["lambda_max"]
                  and ba["class_ratio"] < min(ev["class_ratio"], nb["class_ratio"]))
    b = (f"(b) BatchNorm: lambda_max is {nb['lambda_max']:.3g} without BN, {ba['lambda_max']:.3g}"
         f" with BN and batch statistics and {ev['lambda_max']:.3g} for the same BN network with "
         f"its population statistics; lambda_1/lambda_11 is {nb['class_ratio']:.3g}, "
         f"{ba['class_ratio']:.3g} and {ev['class_ratio']:.3g}; the gap rule counts "
         f"{nb['num_outliers']}, {ba['num_outliers']} and {ev['num_outliers']} outliers "
         f"(lambda_max/bulk edge {nb['edge_ratio']:.3g}, {ba['edge_ratio']:.3g}, "
         f"{ev['edge_ratio']:.3g}). ")
    if suppressed:
        b += ("With batch statistics the top of the spectrum is flattened and comes back with "
              "the population statistics, as in the paper's Sec. 4 (Figs. 5-6). ")
    else:
        b += ("The suppression with batch statistics does NOT reproduce here: the top is not "
              "the lowest with batch statistics. ")
    b += ("Differences: the paper's networks are ResNets on CIFAR-10/ImageNet, whose "
          "outliers stand orders of magnitude above the bulk; on a small digits MLP the top "
          "decays more gradually, so the gap rule's counts depend on k (their stability is "
          "in the numbers) and the ratios are the firmer evidence. The two BN Hessians are of "
          "the same weights: only the statistics differ (with batch statistics the loss also "
          "differs slightly).")
    return a + "\n\n" + b


def rows(num: dict) -> tuple:
    """Our figures beside the paper's statements (the report's rows)."""
    one, many = num["slq"][0], num["slq"][-1]
    return (
        Row(quantity=f"W1(SLQ, exact) / range, {one['probes']} probe", ours=one["w1_rel"],
            paper="SLQ density matches the exact one (Sec. 2.3)"),
        Row(quantity=f"W1(SLQ, exact) / range, {many['probes']} probes", ours=many["w1_rel"],
            paper="SLQ density matches the exact one (Sec. 2.3)"),
        Row(quantity="lambda_max relative error, 1 probe", ours=one["lambda_max_rel_err"],
            paper="extreme eigenvalues accurate (Sec. 2.3)"),
        Row(quantity=f"tr(H)/n relative error, {many['probes']} probes",
            ours=many["mean_rel_err"], paper="-"),
        Row(quantity="outliers, no BN (exact spectrum)", ours=num["exact_outliers"],
            paper="large isolated outliers (Sec. 4, Fig. 5)"),
    ) + tuple(
        Row(quantity=f"{what}, no BN / BN batch / BN population",
            ours=" / ".join(f"{num[m][field]:.3g}" for m in ("none", "batch", "eval")),
            paper=paper)
        for what, field, paper in (
            ("outliers (gap rule)", "num_outliers",
             "present / almost absent / reappear (Sec. 4, Figs. 5-6)"),
            ("lambda_max", "lambda_max", "- (ResNet-32: BN removes the large outliers, Fig. 5)"),
            ("lambda_1 / lambda_11", "class_ratio", "large / ~1 / large (Sec. 4)"),
            ("lambda_max / bulk edge", "edge_ratio", "large / ~1 / large (Sec. 4)")))


def run(*, small: bool = False, seed: int = 0, say=print) -> Report:
    """Both experiments (see the module docstring), in float64. Full configuration: a few
    minutes on a 2-core CPU (the dense 3,466 x 3,466 Hessian is most of it)."""
    config = CONFIGS["small" if small else "full"]
    start = time.perf_counter()
    with jax.enable_x64(True):
        data = load_data(config)
        models = train_pair(config, data, seed=seed)
        say(f"trained the MLP without and with BatchNorm ({time.perf_counter() - start:.0f} s)")
        key_a, key_b = jax.random.split(jax.random.key(seed))
        obj = Objective.from_nnx(models["no BN"], cross_entropy, data)
        check = slq_check(obj, probes=config.probes, num_steps=config.num_steps, key=key_a)
        say(f"(a) exact spectrum (n = {len(check.exact)}) and SLQ "
            f"({time.perf_counter() - start:.0f} s)")
        spectra = bn_spectra(models, data, config, key=key_b)
        say(f"(b) top eigenvalues and densities with and without BatchNorm "
            f"({time.perf_counter() - start:.0f} s)")
    num = numbers(check, spectra)
    fig_a, axes_a = plt.subplots(1, 2, figsize=(12, 4.2))
    plot_slq_check(check, axes_a)
    fig_b, axes_b = plt.subplots(1, 2, figsize=(12, 4.2))
    plot_bn_spectra(spectra, axes_b)
    for fig in (fig_a, fig_b):
        fig.tight_layout()
    return ENTRY.report(small=small, seed=seed, start=start, rows=rows(num), verdict=verdict(num),
                        figures={"slq_vs_exact": fig_a, "batchnorm_outliers": fig_b}, numbers=num)


ENTRY = Entry(
    name="ghorbani",
    title="SLQ recovers the Hessian spectrum; BatchNorm suppresses the outliers "
          "(Ghorbani et al. 2019)",
    citation="B. Ghorbani, S. Krishnan, Y. Xiao (2019), An investigation into neural net "
             "optimization via Hessian eigenvalue density, ICML.",
    claim="Stochastic Lanczos quadrature estimates the whole Hessian eigenvalue density "
          "accurately (Sec. 2.3); without BatchNorm the spectrum has large isolated outliers, "
          "with BatchNorm (batch statistics) they are almost absent, and they reappear when "
          "the population statistics are used (Sec. 4, Figs. 5-6).",
    notebook="12_spectrum_batchnorm_ghorbani.ipynb",
    run=run,
    full_seconds=52.0,
)
