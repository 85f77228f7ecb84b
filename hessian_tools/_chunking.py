"""How the data are cut for a compiled product: convolutions on XLA:CPU run about 2x faster
per example on chunks whose activations fit in a core's cache, and must never sit inside a
compiled loop (~36x slower). Everything here is decided once per architecture (traced on
shapes) and once per dataset (cached per ``BatchGroups``).

A loss that couples the examples of a batch (batch statistics, in-batch negatives) is never
split: ``"auto"`` leaves its batches whole and an explicit size raises.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._callables import jaxpr_eqns
from hessian_tools.data import MAX_UNROLLED_BATCHES, BatchGroups
from hessian_tools.objective import Objective

__all__ = ["CHUNK_BYTES", "MAX_CHUNKS", "check_chunk_size", "conv_on_cpu", "product_groups",
           "spec_cached"]


def _spec(a):
    """The abstract value jit sees for ``a``: Python scalars (the batch weights) are weakly
    typed, so an ``eval_shape`` on the spec shares jit's trace of the real call."""
    weak = isinstance(a, (int, float)) and not isinstance(a, bool)
    return jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a), weak_type=weak)

def spec_cached(cached_fn, fn, *trees):
    """``cached_fn(fn, treedef, leaves)`` on the shapes of ``trees`` (once per architecture)."""
    spec = jax.tree.map(_spec, trees)
    leaves, treedef = jax.tree.flatten(spec)
    try:
        return cached_fn(fn, treedef, tuple(leaves))
    except TypeError:                 # an unhashable loss: trace every time
        return cached_fn.__wrapped__(fn, treedef, tuple(leaves))

CHUNK_BYTES = 2 * 1024**2
"""Auto chunking's target: the largest per-chunk activation of the loss, in bytes (about one
core's L2 cache here). Measured on the digits CNN (2-core EPYC, benchmarks/RESULTS.md): one
HVP over all 1,797 images took 0.16-0.25 s as one batch, 0.085-0.105 s in chunks of 192-256
(1.5-2 MiB of activations), 0.12-0.13 s in chunks of 320-450. MLPs gained nothing."""

MAX_CHUNKS = 64
"""At most this many unrolled batches in a compiled product (compile time grows ~50 ms per
chunk of the digits CNN); more fall back to a ``lax.scan`` (with a warning for conv nets)."""

_MIN_CHUNK = 16

@functools.lru_cache(maxsize=64)
def _conv_activation_cached(loss, treedef, leaves):
    """``(has_convolution, largest per-example activation in bytes)`` of one batch's loss."""
    params, batch = jax.tree.unflatten(treedef, leaves)
    size = int(jax.tree.leaves(batch)[0].shape[0])
    conv, largest = False, 0
    for eqn in jaxpr_eqns(jax.make_jaxpr(loss)(params, batch)):
        conv |= eqn.primitive.name == "conv_general_dilated"
        for var in eqn.outvars:
            shape = getattr(var.aval, "shape", ())
            if len(shape) and shape[0] == size:
                largest = max(largest, int(np.prod(shape, dtype=np.int64))
                              * jnp.dtype(var.aval.dtype).itemsize)
    return conv, largest / size

def conv_on_cpu(obj: Objective) -> tuple[bool, float]:
    """``(the loss has convolutions and JAX computes on the CPU, largest per-example
    activation in bytes)``, traced once per architecture from one batch's shapes."""
    if jax.default_backend() != "cpu":
        return False, 0.0
    return spec_cached(_conv_activation_cached, obj.loss, obj.params,
                        obj.groups.first_batch_spec)

def check_chunk_size(chunk_size) -> None:
    if not (chunk_size is None or (isinstance(chunk_size, str) and chunk_size == "auto") or (
            isinstance(chunk_size, (int, np.integer)) and not isinstance(chunk_size, bool)
            and chunk_size >= 1)):
        raise ValueError(f"chunk_size must be 'auto', None or a positive int, got {chunk_size!r}.")

def product_groups(obj: Objective, chunk_size) -> BatchGroups:
    """The batches a compiled product sums over: the objective's, or smaller chunks of them.

    ``chunk_size="auto"`` chunks only convolutional losses on the CPU backend: XLA:CPU's
    convolutions run about 2x faster per example on chunks whose activations fit in a core's
    cache (``CHUNK_BYTES``). An int splits batches larger than it (any model, any backend);
    ``None`` keeps the batches as given. Whatever the chunking, the batches of a
    convolutional loss on the CPU are unrolled, never scanned (a scan puts the convolutions
    on a ~36x slower path), up to ``MAX_CHUNKS`` of them. Built once per objective.
    """
    check_chunk_size(chunk_size)
    groups = obj.groups
    cache = _CHUNKED.get(id(groups))
    if cache is None:                       # one cache per dataset, dropped with it
        cache = _CHUNKED[id(groups)] = {}
        weakref.finalize(groups, _CHUNKED.pop, id(groups), None)
    key = chunk_size if chunk_size is None or isinstance(chunk_size, str) else int(chunk_size)
    if key not in cache:
        cache[key] = _split_groups(obj, key)
    return cache[key]

_CHUNKED: dict = {}
"""``id(BatchGroups) -> {chunk_size: BatchGroups}``: the chunked data of each dataset, built
once (``Objective.with_params`` keeps the dataset, so a new point reuses its chunks)."""

def _split_groups(obj: Objective, chunk_size) -> BatchGroups:
    groups = obj.groups
    conv, per_example = conv_on_cpu(obj)
    sharded = any(isinstance(a, jax.Array) and len(a.sharding.device_set) > 1
                  for a in jax.tree.leaves(groups.stacks))
    if chunk_size == "auto":
        if not conv or sharded or obj.examples_coupled():   # never split a coupled batch
            return groups
        chunk = max(_MIN_CHUNK, int(CHUNK_BYTES // max(per_example, 1.0)))
        if -(-groups.num_examples // chunk) > MAX_CHUNKS:
            chunk = -(-groups.num_examples // MAX_CHUNKS)
        groups = groups.split(chunk)
    elif chunk_size is not None:
        if sharded:
            raise ValueError(
                f"chunk_size={chunk_size} would re-stack data sharded over several devices on "
                "the host and lose its sharding. Pass chunk_size=None (or 'auto') and split "
                "the data into batches yourself before sharding them.")
        if obj.examples_coupled() and groups.num_examples > 0 and any(
                int(jax.tree.leaves(st)[0].shape[1]) > chunk_size for st in groups.stacks):
            raise ValueError(
                f"chunk_size={chunk_size} would split batches of a loss that couples the examples "
                "of a batch (batch statistics, in-batch negatives), which changes the loss. "
                "Pass chunk_size=None, or make the batches themselves smaller.")
        groups = groups.split(chunk_size)
    if not conv or groups.num_batches <= MAX_UNROLLED_BATCHES:
        return groups
    if groups.num_batches > MAX_CHUNKS:
        warnings.warn(
            f"The data has {groups.num_batches} batches and the loss has convolutions: on the "
            "CPU, XLA runs convolutions inside a compiled loop about 36x slower, and more than "
            f"{MAX_CHUNKS} batches are not unrolled. Pass fewer, larger batches, or stream the "
            "data (data=callable) to apply one compiled batch at a time.", stacklevel=4)
        return groups
    return dataclasses.replace(groups, unroll=True)
