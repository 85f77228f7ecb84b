"""The curvature evaluator's metrics at one point, in one call (init2winit's
``CurvatureEvaluator``): ``lambda_1``, ``lambda_2`` and their ratio, the per-block norms of
the top eigenvector, the overlap of the gradient with the top eigenspace and the gradient's
spectral measure, and each layer's ``lambda_max`` and density.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools._checks import check_choice, check_count, check_key
from hessian_tools.analysis.eigen import eigenvalues
from hessian_tools.analysis.spectral import DEFAULT_NUM_PROBES, DEFAULT_NUM_STEPS
from hessian_tools.analysis.spectral import density as spectral_density
from hessian_tools.linalg.slq import slq_quadrature_host
from hessian_tools.objective import Objective
from hessian_tools.operators import CurvatureOperator, gauss_newton, hessian, value_and_grad
from hessian_tools.results import SpectralDensity
from hessian_tools.results.curvature import CurvatureReport

__all__ = ["curvature_report", "gradient_density", "parameter_blocks"]

_OPERATORS = {"hessian": hessian, "ggn": gauss_newton}


def parameter_blocks(obj: Objective, layers=True) -> dict:
    """``{block name: objective restricted to the block}``.

    ``layers=True``: one block per layer, the leaves grouped by their path without its last
    component (``layers/0/kernel`` and ``layers/0/bias`` form ``layers/0``; a top-level
    leaf is its own block). A string or a list of strings: one block per selector, as in
    :meth:`Objective.restrict`. ``False`` or ``None``: no blocks.
    """
    if layers is None or layers is False:
        return {}
    if layers is True:
        groups: dict = {}
        for path in tree.flat_paths(obj.params):
            parts = path.split("/")
            groups.setdefault("/".join(parts[:-1]) if len(parts) > 1 else path, set()).add(path)
        return {name: obj.restrict(lambda path, leaf, chosen=frozenset(paths): path in chosen)
                for name, paths in groups.items()}
    selectors = [layers] if isinstance(layers, str) else layers
    if not isinstance(selectors, (list, tuple)) or not selectors or not all(
            isinstance(s, str) for s in selectors):
        raise TypeError(f"layers must be True, False, a path prefix or a list of them; got "
                        f"{layers!r}.")
    return {s: obj.restrict(s) for s in selectors}


def gradient_density(op: CurvatureOperator, grad, *, num_steps: int | None = None,
                     seed=()) -> SpectralDensity | None:
    """The spectral measure of ``grad``: ``sum_i <g, u_i>^2 / ||g||^2 delta(lambda_i)``
    over the eigenpairs ``(lambda_i, u_i)`` of ``op``, as the Gauss quadrature rule of
    ``num_steps`` Lanczos steps started from ``g`` (one probe of ``ht.density``, the
    gradient in place of a random vector). Its ``2m``
    first moments ``g^T A^j g / ||g||^2`` are exact; nodes with small residuals are
    eigenvalues. ``None`` for a zero gradient. Cost ``num_steps`` matvecs.
    """
    if not float(tree.norm(grad)) > 0:
        return None
    steps = min(DEFAULT_NUM_STEPS, op.dim) if num_steps is None else num_steps
    check_count("num_steps", steps, maximum=op.dim, hint="the operator dimension")
    start = time.perf_counter()
    rule = slq_quadrature_host(op.rows, jax.tree.map(lambda a: jnp.asarray(a)[None], grad),
                               num_steps=steps)
    nodes, weights, residuals = (np.asarray(a, np.float64) for a in
                                 (rule.nodes, rule.weights, rule.residuals))
    return SpectralDensity(nodes=nodes, weights=weights, residuals=residuals, dim=op.dim,
                           num_probes=1, num_steps=steps, probe="gradient", num_matvecs=steps,
                           operator=op.kind, seed=list(seed), dtype=str(jnp.dtype(op.dtype)),
                           loop="host", wall_time=time.perf_counter() - start)


def _block_norms(vector, blocks: dict) -> dict:
    flat = tree.flat_paths(vector)
    return {name: float(np.sqrt(sum(float(jnp.vdot(flat[p], flat[p])) for p in sub.params)))
            for name, sub in blocks.items()}


def curvature_report(obj: Objective, *, key, k: int = 10, operator: str = "hessian",
                     layers=True, density: bool = True,
                     num_probes: int = DEFAULT_NUM_PROBES, num_steps: int | None = None,
                     tol: float | None = None) -> CurvatureReport:
    """The metrics of a curvature evaluator (init2winit's) at the objective's point.

    Computed: the top ``k`` eigenpairs of the operator (``ht.eigenvalues``), so
    ``lambda_1``, ``lambda_2`` and ``lambda_1 / lambda_2``; the norm of the top eigenvector
    on each parameter block; the loss and gradient ``g``, the overlap ``||P_k g||^2 /
    ||g||^2`` of the gradient with the top-k eigenspace and its weights ``<g, v_i>^2 /
    ||g||^2`` on each eigenvector; the gradient's spectral measure over the whole
    spectrum (:func:`gradient_density`); and, per block, ``lambda_max`` of the block's own
    curvature (the objective restricted to the block, the rest fixed: a diagonal block of
    the operator) and its density, with the whole operator's density.

    Cost: one eigenvalue solve (``k + 50-150`` matvecs), one gradient, ``num_steps``
    matvecs for the gradient's measure, ``num_probes x num_steps`` per density, and per
    block a ``k = 1`` solve (20-60 matvecs of the block) plus its density. Memory: the
    solver's basis (``ht.eigenvalues``) and ``num_probes (num_steps + 1)`` vectors per density.

    Args:
      obj: the objective at the point.
      key: a ``jax.random`` key (start vectors and probes).
      k: top eigenpairs (``>= 2``).
      operator: ``"hessian"`` or ``"ggn"``.
      layers: blocks, as in :func:`parameter_blocks` (``True``: one per layer).
      density: compute the densities (whole and per block).
      num_probes: SLQ probes per density.
      num_steps: Lanczos steps per probe and for the gradient (default ``min(80, dim)``).
      tol: eigenvalue tolerance (default ``ht.default_tol``).

    Returns:
      A :class:`~hessian_tools.results.curvature.CurvatureReport`; plot it with
      :func:`hessian_tools.plots.plot_curvature_report`.

    Raises:
      TypeError: not an Objective, or bad ``layers``.
      ValueError: no key, ``k < 2`` or above the dimension, an unknown ``operator``, a
        selector that matches nothing.
    """
    if not isinstance(obj, Objective):
        raise TypeError(f"curvature_report takes an Objective, got {type(obj).__name__}.")
    check_key(key, "curvature_report")
    check_choice("operator", operator, tuple(_OPERATORS))
    check_count("k", k, minimum=2, maximum=obj.num_params, hint="the number of parameters")
    start = time.perf_counter()
    blocks = parameter_blocks(obj, layers)
    op = _OPERATORS[operator](obj)
    keys = iter(jax.random.split(key, 3 + 2 * len(blocks)))
    eig = eigenvalues(op, k=k, which="largest", key=next(keys), tol=tol)
    loss, grad = value_and_grad(obj)
    g2 = float(tree.vdot(grad, grad))
    coeffs = np.asarray(tree.basis_dot(eig.vectors, grad), np.float64)
    weights = coeffs**2 / g2 if g2 > 0 else np.zeros(k)
    grad_dens = gradient_density(op, grad, num_steps=num_steps, seed=tree.key_bits(key))
    dens = spectral_density(op, key=next(keys), num_probes=num_probes,
                            num_steps=num_steps) if density else None
    layer_max, layer_dens, matvecs = {}, {}, op.num_matvecs
    for name, sub in blocks.items():
        sub_op = _OPERATORS[operator](sub)
        layer_max[name] = float(eigenvalues(sub_op, k=1, key=next(keys), tol=tol).values[0])
        if density:
            steps = None if num_steps is None else min(num_steps, sub_op.dim)
            layer_dens[name] = spectral_density(sub_op, key=next(keys), num_probes=num_probes,
                                                num_steps=steps)
        matvecs += sub_op.num_matvecs
    return CurvatureReport(
        top=np.asarray(eig.values, np.float64), residuals=eig.residuals, status=eig.status,
        loss=float(loss), grad_norm=float(np.sqrt(g2)), grad_weights=weights,
        block_norms=_block_norms(jax.tree.map(lambda a: a[0], eig.vectors), blocks),
        block_sizes={name: sub.num_params for name, sub in blocks.items()},
        layer_lambda_max=layer_max, layer_densities=layer_dens, density=dens,
        grad_density=grad_dens, k=k, num_matvecs=matvecs, operator=op.kind,
        seed=tree.key_bits(key), wall_time=time.perf_counter() - start)
