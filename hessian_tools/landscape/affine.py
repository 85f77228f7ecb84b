"""Share the work that is affine in the grid coordinates across the points of a chunk.

At ``params(c) = origin + sum_k c_k d_k`` every quantity the loss computes *linearly* from
the parameters and the data alone is affine in ``c``: the first layer's pre-activation
``x W(c) + b(c) = (x W0 + b0) + sum_k c_k (x D_k + e_k)``. This module splits the traced
loss (its jaxpr) in two:

* the **shared part**, computed once per batch for all the points of a chunk: every
  quantity that depends on the data only, and every affine one, held as a stack of
  ``1 + K`` arrays (its value at the origin, then its coefficient along each direction);
* the **per-point part**: everything else, with each affine input materialised as
  ``stack[0] + sum_k c_k stack[k]`` (an elementwise combination, fused by XLA into its
  first use).

A quantity is affine when it comes from the parameters and the data through additions,
subtractions, concatenations, and operations linear in their one parameter-dependent
operand (products and divisions by data, matrix products and convolutions with data,
reshapes, broadcasts, transposes, sums, slices, dtype conversions). The first non-linear operation (an
activation) ends it. What it saves is the first layer's matrix product or convolution per
point, at the price of reading ``1 + K`` stacked pre-activations instead of one: on the
digits MLPs it measured 1.3x faster per point for 64-32-32-10 (whose first layer is 60% of
the arithmetic) and 3% for 64-512-512-10 (11%) (``benchmarks/RESULTS_landscape.md``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend.core import Literal

__all__ = ["AffineSplit", "affine_split"]

_ADDITIVE = {"add", "add_any", "sub"}
_UNARY_LINEAR = {"neg", "reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims",
                 "reduce_sum", "convert_element_type", "copy", "copy_p", "slice", "rev"}
_BILINEAR = {"mul", "dot_general", "conv_general_dilated"}

CONST, AFFINE, GENERAL = "const", "affine", "general"


def _kind_of(kinds, var):
    return CONST if isinstance(var, Literal) else kinds[var]


def _eqn_kind(eqn, ins) -> str:
    if all(k == CONST for k in ins):
        return CONST
    if GENERAL in ins:
        return GENERAL
    name = eqn.primitive.name
    num_affine = ins.count(AFFINE)
    if name in _ADDITIVE:
        return AFFINE
    if name in _UNARY_LINEAR and len(ins) == 1:
        return AFFINE
    if name in _BILINEAR and num_affine == 1:
        return AFFINE
    if name == "concatenate":
        return AFFINE
    if name == "div" and ins == [AFFINE, CONST]:
        return AFFINE
    return GENERAL


class AffineSplit:
    """The jaxpr of ``fn(params, batch)`` split into its shared and per-point parts.

    Built once per architecture (:func:`affine_split`); :meth:`shared` and :meth:`at` are
    called inside ``jit``.

    Attributes:
      num_shared_products: matrix products and convolutions moved to the shared part
        (0: nothing to gain; the evaluators then skip the split).
    """

    def __init__(self, closed, num_params: int):
        self.closed = closed
        jaxpr = closed.jaxpr
        kinds = {v: AFFINE for v in jaxpr.invars[:num_params]}
        kinds.update({v: CONST for v in jaxpr.invars[num_params:]})
        kinds.update({v: CONST for v in jaxpr.constvars})
        self.kinds = []
        for eqn in jaxpr.eqns:
            kind = _eqn_kind(eqn, [_kind_of(kinds, v) for v in eqn.invars])
            kinds.update({v: kind for v in eqn.outvars})
            self.kinds.append(kind)
        self.var_kinds = kinds
        self.num_params = num_params
        self.num_shared_products = sum(
            1 for eqn, kind in zip(jaxpr.eqns, self.kinds) if kind == AFFINE
            and eqn.primitive.name in ("dot_general", "conv_general_dilated"))

    # ---- the shared part: data-only values, and affine values as (1 + K) stacks ----------

    def shared(self, fn, origin, basis, batch) -> dict:
        """Every constant and affine value, by jaxpr variable (affine ones stacked)."""
        jaxpr = self.closed.jaxpr
        env = dict(zip(jaxpr.constvars, self.closed.consts))
        for v, o, d in zip(jaxpr.invars, jax.tree.leaves(origin), jax.tree.leaves(basis)):
            env[v] = jnp.concatenate([o[None], d.astype(o.dtype)])
        env.update(zip(jaxpr.invars[self.num_params:],
                       jax.tree.leaves(batch) + jax.tree.leaves(fn)))
        for eqn, kind in zip(jaxpr.eqns, self.kinds):
            if kind == GENERAL:
                continue
            ins = [v.val if isinstance(v, Literal) else env[v] for v in eqn.invars]
            kinds = [_kind_of(self.var_kinds, v) for v in eqn.invars]
            outs = _bind(eqn, ins) if kind == CONST else _affine_bind(eqn, ins, kinds)
            env.update(zip(eqn.outvars, outs))
        return env

    # ---- the per-point part ---------------------------------------------------------------

    def at(self, env: dict, c):
        """The outputs of ``fn`` at coordinates ``c`` (shape ``(K,)``), from :meth:`shared`."""
        jaxpr = self.closed.jaxpr
        local = {}

        def read(v):
            if isinstance(v, Literal):
                return v.val
            if v in local:
                return local[v]
            if self.var_kinds[v] == AFFINE:             # materialise once per point
                stack = env[v]
                value = stack[0]
                for k in range(1, stack.shape[0]):     # a short explicit sum: exact, fused
                    value = value + c[k - 1].astype(stack.dtype) * stack[k]
                local[v] = value
                return value
            return env[v]

        for eqn, kind in zip(jaxpr.eqns, self.kinds):
            if kind == GENERAL:
                local.update(zip(eqn.outvars, _bind(eqn, [read(v) for v in eqn.invars])))
        return [read(v) for v in jaxpr.outvars]


def _bind(eqn, ins):
    """Apply one jaxpr equation to ``ins``, as ``jax.core.eval_jaxpr`` does."""
    params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(params, tuple):           # older JAX: (subfuns, params)
        subfuns, params = params
        ins = [*subfuns, *ins]
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*ins, **params)
    return out if eqn.primitive.multiple_results else [out]


def _affine_bind(eqn, ins, kinds):
    """One linear operation on stacked affine operands (row 0: the value at the origin)."""
    name = eqn.primitive.name
    stack = next(x for x, k in zip(ins, kinds) if k == AFFINE)
    rows = stack.shape[0]
    if name in _ADDITIVE:          # a constant term shifts the value (row 0), not the slopes
        first = jnp.eye(1, rows, dtype=stack.dtype)[0]

        def row(w, *xs):
            xs = [x if k == AFFINE else (w * x).astype(jnp.result_type(x))
                  for x, k in zip(xs, kinds)]
            return _bind(eqn, xs)[0]
        return [jax.vmap(row, in_axes=(0, *[0 if k == AFFINE else None for k in kinds]))(
            first, *ins)]
    if name == "concatenate":                  # constants: no slope along any direction
        ins = [x if k == AFFINE else jnp.concatenate([jnp.asarray(x)[None], jnp.zeros(
            (rows - 1,) + jnp.shape(x), jnp.result_type(x))]) for x, k in zip(ins, kinds)]
        kinds = [AFFINE] * len(ins)
    axes = [0 if k == AFFINE else None for k in kinds]
    fn = lambda *xs: _bind(eqn, list(xs))[0]
    return [jax.vmap(fn, in_axes=axes)(*ins)]


@functools.lru_cache(maxsize=32)
def _split_cached(fn_def, treedef, leaves, num_params):
    params, batch, fn_leaves = jax.tree.unflatten(treedef, leaves)

    def traced(p, b, f):
        return jax.tree.unflatten(fn_def, f)(p, b)
    with jax.disable_jit():          # inline nested jit calls so their insides are visible
        closed = jax.make_jaxpr(traced)(params, batch, fn_leaves)
    return AffineSplit(closed, num_params)


def affine_split(fn, params, batch) -> AffineSplit:
    """The :class:`AffineSplit` of ``fn(params, batch)`` for these shapes (cached per
    architecture). ``fn``'s own array leaves (held state, e.g. normalisation statistics) are
    inputs of the jaxpr, so it may be called on traced arguments inside ``jit``."""
    fn_leaves, fn_def = jax.tree.flatten(fn)
    spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)),
                        (params, batch, fn_leaves))
    leaves, treedef = jax.tree.flatten(spec)
    num_params = len(jax.tree.leaves(params))
    try:
        return _split_cached(fn_def, treedef, tuple(leaves), num_params)
    except TypeError:                # an unhashable static part: trace every time
        return _split_cached.__wrapped__(fn_def, treedef, tuple(leaves), num_params)
