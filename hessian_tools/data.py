"""The data: batches with a leading example axis, grouped and weighted by size.

Curvature operators and losses average over the whole dataset, batches weighted by their
sizes, so a ragged last batch is handled exactly. :class:`BatchGroups` holds an in-memory
dataset as groups of equal-sized batches stacked along a new leading axis;
:func:`dataset_mean` sums a per-batch quantity over them inside ``jit``; :func:`stream_mean`
does the same over a stream of batches from Python.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree

__all__ = ["BatchGroups", "group_batches", "dataset_mean", "stream_mean", "leading_size",
           "couples_examples", "take_examples"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BatchGroups:
    """The dataset materialised as groups of equal-sized batches.

    ``stacks[g]`` is a batch pytree whose leaves have shape ``(num_batches_g, batch_size_g,
    ...)``; ``weights[g]`` is ``batch_size_g / num_examples``. The mean over the dataset of a
    per-batch mean quantity ``f`` is ``sum_g weights[g] * sum_b f(stacks[g][b])``.
    ``unroll`` (static) asks compiled code to sum the batches with a loop unrolled at trace
    time instead of a ``lax.scan`` (see :func:`dataset_mean`).
    """

    stacks: tuple
    weights: tuple
    unroll: bool = dataclasses.field(default=False, metadata=dict(static=True))

    @property
    def num_examples(self) -> int:
        return int(sum(_batch_size(s) * _num_batches(s) for s in self.stacks))

    @property
    def num_batches(self) -> int:
        return int(sum(_num_batches(s) for s in self.stacks))

    @property
    def first_batch_spec(self):
        """The first batch's leaves as ``jax.ShapeDtypeStruct`` (slicing ``s[0]`` would
        compile an XLA slice per leaf)."""
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype),
                            self.stacks[0])

    def split(self, max_size: int, *, unroll: bool | None = None) -> "BatchGroups":
        """The same examples in batches of at most ``max_size``, as equal as possible.

        A batch of ``n > max_size`` examples becomes ``ceil(n / max_size)`` consecutive
        chunks whose sizes differ by at most one; smaller batches are kept. Exact for a loss
        that is a per-example mean (the contract of :class:`Objective`): the chunks are
        weighted by their sizes. Runs in NumPy on the host (nothing is compiled).
        """
        if int(max_size) < 1:
            raise ValueError(f"max_size must be a positive number of examples, got {max_size}.")
        total = self.num_examples
        by_size: dict[int, list] = {}
        for stack in self.stacks:
            num, size = _num_batches(stack), _batch_size(stack)
            parts = -(-size // int(max_size))
            q, r = divmod(size, parts)
            start = 0
            for chunk, count in ((q + 1, r), (q, parts - r)):
                if count == 0:
                    continue
                stop = start + chunk * count
                by_size.setdefault(chunk, []).append(jax.tree.map(
                    lambda s, a=start, b=stop, c=chunk, k=count: np.asarray(s)[:, a:b].reshape(
                        (num * k, c) + np.shape(s)[2:]), stack))
                start = stop
        stacks = tuple(jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs)), *pieces)
                       for pieces in by_size.values())
        weights = tuple(size / total for size in by_size)
        return BatchGroups(stacks, weights, self.unroll if unroll is None else bool(unroll))


def _batch_size(stack) -> int:
    return int(jax.tree.leaves(stack)[0].shape[1])


def _num_batches(stack) -> int:
    return int(jax.tree.leaves(stack)[0].shape[0])


def leading_size(batch, index: int) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError(f"Batch {index} has no array leaves. A batch is a pytree of arrays "
                         "whose leading axis indexes examples, e.g. (x, y).")
    sizes = {int(np.shape(a)[0]) if np.ndim(a) else None for a in leaves}
    if None in sizes:
        raise ValueError(f"Batch {index} has a scalar leaf; every leaf needs a leading "
                         "example axis. Wrap scalars per example or close over them in the loss.")
    if len(sizes) != 1:
        raise ValueError(f"Batch {index} mixes leading sizes {sorted(sizes)}: every leaf of a "
                         "batch must have the same number of examples along axis 0.")
    size = sizes.pop()
    if size == 0:
        raise ValueError(f"Batch {index} is empty (0 examples). Drop it from the data.")
    return size


def _check_batches(batches: Sequence) -> None:
    first = batches[0]
    treedef = jax.tree.structure(first)
    sig = [(np.shape(a)[1:], jnp.result_type(a)) for a in jax.tree.leaves(first)]
    for i, batch in enumerate(batches):
        leading_size(batch, i)
        if jax.tree.structure(batch) != treedef:
            raise ValueError(f"Batch {i} has structure {jax.tree.structure(batch)}, but batch 0 "
                             f"has {treedef}. All batches must share one structure.")
        got = [(np.shape(a)[1:], jnp.result_type(a)) for a in jax.tree.leaves(batch)]
        if got != sig:
            raise ValueError(f"Batch {i} has per-example shapes/dtypes {got}, but batch 0 has "
                             f"{sig}. All batches must agree except in their batch size.")


def group_batches(batches: Sequence) -> BatchGroups:
    """Stack a list of batches into groups of equal batch size (validated)."""
    if len(batches) == 0:
        raise ValueError("The data is empty: got a list of 0 batches. Pass at least one batch.")
    _check_batches(batches)
    by_size: dict[int, list] = {}
    for i, batch in enumerate(batches):
        by_size.setdefault(leading_size(batch, i), []).append(batch)
    total = sum(size * len(group) for size, group in by_size.items())
    stacks = tuple(jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *group)
                   for group in by_size.values())
    weights = tuple(size / total for size in by_size)
    return BatchGroups(stacks, weights)


MAX_UNROLLED_BATCHES = 4


def dataset_mean(fn, groups: BatchGroups):
    """``sum_g w_g sum_b fn(batch_{g,b})``, weighted by batch size.

    A group of up to ``MAX_UNROLLED_BATCHES`` batches (any number when ``groups.unroll``)
    is summed with a Python loop at trace time, more with a ``lax.scan``. Any JAX loop body
    puts XLA:CPU's conv weight-gradient convolutions on a slow path (measured: ~36x per HVP
    of the digits CNN, even with a trip count of 1), so the common one-batch case must not
    be wrapped in a scan, and convolutional products on the CPU unroll (see
    ``operators._product_groups``). ``fn`` should be a jitted per-batch function, so that an
    unrolled loop traces it once per batch shape, not once per batch.
    """
    total = None
    for stack, weight in zip(groups.stacks, groups.weights):
        num = jax.tree.leaves(stack)[0].shape[0]
        if num <= MAX_UNROLLED_BATCHES or groups.unroll:
            acc = None
            for b in range(num):
                part = fn(jax.tree.map(lambda s: s[b], stack))
                acc = part if acc is None else tree.add(acc, part)
        else:
            first = jax.tree.map(lambda s: s[0], stack)
            acc0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, first))
            acc, _ = jax.lax.scan(lambda acc, batch: (tree.add(acc, fn(batch)), None), acc0,
                                  stack)
        part = tree.scale(weight, acc)
        total = part if total is None else tree.add(total, part)
    return total




def stream_mean(fn: Callable, batches: Iterable):
    """``sum_b n_b fn(batch_b) / sum_b n_b`` over ``(batch, n_b)`` pairs, from Python.

    ``fn`` returns a pytree (or a scalar) per batch; the sum is weighted by batch size, as
    :func:`dataset_mean` weights a compiled sum.

    Raises:
      ValueError: the stream yielded no batches.
    """
    total, count = None, 0
    for batch, n in batches:
        part = tree.scale(float(n), fn(batch))
        total = part if total is None else tree.add(total, part)
        count += n
    if total is None:
        raise ValueError("The data stream yielded no batches.")
    return tree.scale(1.0 / count, total)


def take_examples(batch, start: int, stop: int):
    """Examples ``start:stop`` of a batch (every leaf sliced along its leading axis)."""
    return jax.tree.map(lambda a: a[start:stop], batch)


@jax.jit
def _pair_losses(loss, params, pair):
    both = loss(params, pair)
    each = jax.vmap(lambda ex: loss(params, jax.tree.map(lambda a: a[None], ex)))(pair)
    return both, jnp.mean(each)


def couples_examples(loss, params, batch) -> bool:
    """Whether ``loss`` couples the examples of a batch (is not a per-example mean).

    A per-example-mean loss gives, for two examples, the mean of their single-example
    losses up to rounding. Batch statistics (BatchNorm in training mode), in-batch
    negatives (contrastive losses) and any loss normalised by batch-level quantities do
    not. Such a loss is a function of the whole batch: splitting a batch into chunks, or
    forming per-example gradients, changes it.

    Cost: one compiled forward pass on 2 examples and on each alone (compiled once per
    architecture). A batch with fewer than 2 examples, or a loss that fails on single
    examples, counts as coupled (nothing may be split).
    """
    if leading_size(batch, 0) < 2:
        return True
    pair = take_examples(batch, 0, 2)
    try:
        both, each = (float(v) for v in _pair_losses(loss, params, pair))
    except Exception:  # noqa: BLE001  (a loss that cannot take one example is batch-level)
        return True
    dtype = jnp.result_type(*jax.tree.leaves(params))
    rtol = 1e-4 if jnp.finfo(dtype).bits <= 32 else 1e-9
    return not abs(both - each) <= rtol * max(abs(both), abs(each), 1e-30)
