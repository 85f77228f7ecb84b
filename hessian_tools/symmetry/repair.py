"""Resetting BatchNorm statistics on data, for networks interpolated between two aligned ones.

Interpolating the parameters of two networks also interpolates their BatchNorm running
statistics, which then no longer describe the activations of the interpolated network: its
loss is inflated by stale statistics, not by the landscape. Jordan et al. (2023, "REPAIR")
recompute them on data before measuring the barrier ("RESET" in their terms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["reset_batch_stats"]


def _batch_norms(model) -> list:
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]


def reset_batch_stats(model, data):
    """A copy of an NNX model whose BatchNorm running statistics are those of ``data``.

    For every ``nnx.BatchNorm``, the running mean and variance become the exact mean and
    (biased) variance of its input over all of ``data`` (every example, and every spatial
    position of a convolution map), computed in the copy's current parameters: the
    statistics the network would have if it had been trained to these parameters. Batches
    are combined exactly (``var = E[x^2] - E[x]^2`` across batches, weighted by size). The
    rest of the model runs as it is set (Dropout etc. are not switched on).

    Args:
      model: an ``nnx.Module`` with at least one ``nnx.BatchNorm`` (e.g. a network
        interpolated between two aligned ones).
      data: a batch of model inputs, or a list of batches.

    Returns:
      A new model in eval mode (``model`` is not modified). Cost: one forward pass over
      ``data``; memory: one batch's activations.

    Raises:
      ValueError: a model without BatchNorm layers, or empty data.
    """
    model = nnx.clone(model)
    norms = _batch_norms(model)
    if not norms:
        raise ValueError(f"{type(model).__name__} has no nnx.BatchNorm layer: there are no "
                         "statistics to reset.")
    batches = data if isinstance(data, list) else [data]
    if not batches:
        raise ValueError("data is empty: pass a batch of inputs or a non-empty list.")
    saved = [(bn.use_running_average, bn.momentum) for bn in norms]
    sums = [[0.0, 0.0, 0.0] for _ in norms]        # size, size * mean, size * (var + mean^2)
    for bn in norms:
        bn.use_running_average, bn.momentum = False, 0.0   # each call stores its batch's stats
    for x in batches:
        size = int(jax.tree.leaves(x)[0].shape[0])
        model(x)
        for acc, bn in zip(sums, norms):
            mean, var = np.asarray(bn.mean[...], np.float64), np.asarray(bn.var[...], np.float64)
            acc[0] += size
            acc[1] = acc[1] + size * mean
            acc[2] = acc[2] + size * (var + mean ** 2)
    for (use_running, momentum), acc, bn in zip(saved, sums, norms):
        mean = acc[1] / acc[0]
        bn.mean[...] = jnp.asarray(mean, bn.mean[...].dtype)
        bn.var[...] = jnp.asarray(np.maximum(acc[2] / acc[0] - mean ** 2, 0.0), bn.var[...].dtype)
        bn.use_running_average, bn.momentum = use_running, momentum
    model.eval()
    return model
