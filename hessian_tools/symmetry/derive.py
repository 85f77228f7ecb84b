"""Deriving a :class:`PermutationSpec` from a JAX model, and reading its hidden activations.

The model is traced to a jaxpr with its parameter (and state) leaves as inputs, and the axis
classes are propagated through it (see :mod:`hessian_tools.symmetry.graph`). Every class
that holds a parameter axis and is neither an input nor an output axis, nor mixed by an
operation we do not model, becomes a permutation group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.extend as jex
import numpy as np
from flax import linen, nnx

from hessian_tools.objective import Objective
from hessian_tools.symmetry._imports import LinenPredict, NNXPredict, path_str, unwrap
from hessian_tools.symmetry.graph import CALLS, Propagation
from hessian_tools.symmetry.spec import PermutationSpec, apply_permutation, random_permutation

__all__ = ["hidden_activations", "permutation_spec"]


# ---- what is traced ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Model:
    """``fn(params, state, inputs) -> outputs`` with its parameters and state."""

    fn: Callable
    params: Any
    state: Any
    source: str
    inputs: Any = None          # an example input when the model carries one (objectives)


def _replace_rest(predict, state):
    return predict.with_state(state)


def as_model(model, *, params=None, state=None, variables=None,
             apply_kwargs: Mapping | None = None) -> Model:
    """Adapt an NNX module, an :class:`Objective`, a linen module or ``predict(params, x)``."""
    if isinstance(model, Objective):
        return _objective_model(model)
    if isinstance(model, nnx.Module):
        model = nnx.clone(model)
        model.eval()
        graphdef, own_params, own_state = nnx.split(model, nnx.Param, ...)
        return Model(lambda p, s, x: nnx.merge(graphdef, p, s)(x),
                     own_params if params is None else params,
                     own_state if state is None else state, f"nnx {type(model).__name__}")
    if isinstance(model, linen.Module):
        if variables is None or "params" not in variables:
            raise ValueError(f"A linen module needs its variables (the output of module.init, "
                             f"with a 'params' collection); got variables={variables!r}. Pass "
                             "variables=variables.")
        rest = {k: v for k, v in variables.items() if k != "params"}
        kwargs = dict(apply_kwargs or {})
        return Model(lambda p, s, x: model.apply({**s, "params": p}, x, **kwargs),
                     variables["params"], rest if state is None else state,
                     f"linen {type(model).__name__}")
    if callable(model):
        if params is None:
            raise ValueError("A plain function predict(params, x) needs example parameters: "
                             "pass params=... (the pytree the function takes).")
        return Model(lambda p, s, x: model(p, x), params, None,
                     f"function {getattr(model, '__name__', type(model).__name__)}")
    raise TypeError(f"Expected an nnx.Module, an Objective, a linen Module (with variables=) or "
                    f"a function predict(params, x); got {type(model).__name__}.")


def _objective_model(obj: Objective) -> Model:
    first = next(iter(obj.batches()))[0]
    fn = obj.predict if obj.predict is not None else obj.loss
    inner = unwrap(fn)
    if isinstance(inner, (NNXPredict, LinenPredict)):
        kind = "an NNX model" if isinstance(inner, NNXPredict) else "a linen module"
        return Model(lambda p, s, batch: _replace_rest(inner, s)(p, batch), obj.params,
                     inner.state, f"the objective of {kind}", first)
    what = "predict" if obj.predict is not None else "loss"
    return Model(lambda p, s, batch: inner(p, batch), obj.params, None,
                 f"an objective's {what}", first)


# ---- tracing and propagation ---------------------------------------------------------------

@dataclasses.dataclass
class Trace:
    """A traced model: its jaxpr, the axis classes, and the nodes of every input leaf."""

    jaxpr: Any
    prop: Propagation
    param_labels: dict          # param leaf path -> nodes per axis
    state_labels: dict
    order: dict                 # leaf path -> index of its first use


def trace(m: Model, inputs) -> Trace:
    """Trace ``m`` at ``inputs`` and propagate the axis classes through its jaxpr."""
    closed = jax.make_jaxpr(m.fn)(m.params, m.state, inputs)
    prop = Propagation()
    groups = []
    env = {}
    for what, tree_ in (("params", m.params), ("state", m.state), ("inputs", inputs)):
        flat = jax.tree_util.tree_flatten_with_path(tree_)[0]
        reason = "is an axis of the input data" if what == "inputs" else None
        labels = {}
        for path, leaf in flat:
            labels[path_str(path)] = prop.label(np.shape(leaf), reason)
        groups.append(labels)
    ordered = [n for labels in groups for n in labels.values()]
    for labels in groups[:2]:
        for nodes in labels.values():
            prop.input_nodes.update(nodes)
    for v, c in zip(closed.jaxpr.constvars, closed.consts):
        env[v] = (prop.label(np.shape(c), "is an axis of a constant captured by the model"),
                  False)
    n_params_state = len(groups[0]) + len(groups[1])
    for k, (v, nodes) in enumerate(zip(closed.jaxpr.invars, ordered)):
        env[v] = (nodes, k >= n_params_state)
    prop.walk(closed.jaxpr, env)
    for k, out in enumerate(closed.jaxpr.outvars):
        labels, _ = prop.read(env, out)
        for axis, n in enumerate(labels):
            prop.graph.block(n, f"reaches the model output (output {k}, axis {axis})")
    order = {path: min((prop.first_use.get(n, 1 << 60) for n in nodes), default=1 << 60)
             for labels in groups[:2] for path, nodes in labels.items()}
    return Trace(closed, prop, groups[0], groups[1], order)


class _Inexpressible(Exception):
    def __init__(self, node):
        self.node = node


def _factors(g, node):
    """``[(root or None, size)]``: a node as a product of factors (raises when a factor is a
    concatenation nested inside a product)."""
    r = g.find(node)
    if g.blocked(r) is not None or g.size[r] == 1:
        return [(None, g.size[r])]
    layout = g.layout.get(r)
    if layout is None:
        return [(r, g.size[r])]
    if len(layout) > 1:
        raise _Inexpressible(r)
    return [f for c in layout[0] for f in _factors(g, c)]


def _entry(g, node, names: dict):
    r = g.find(node)
    if g.blocked(r) is not None or g.size[r] == 1:
        return None
    layout = g.layout.get(r) or ((node,),)
    segments = []
    for seg in layout:
        factors = [f for c in seg for f in _factors(g, c)] if seg else []
        segments.append(tuple((None if root is None else names.setdefault(root, f"P{len(names)}"),
                               size) for root, size in factors))
    if all(name is None for seg in segments for name, _ in seg):
        return None
    if len(segments) == 1 and len(segments[0]) == 1:
        return segments[0][0][0]
    return tuple(tuple(seg) if seg else ((None, 1),) for seg in segments)


def spec_from_trace(t: Trace, source: str) -> PermutationSpec:
    """The spec of a traced model: a group per unblocked class holding a parameter axis."""
    g = t.prop.graph
    while True:
        names: dict = {}
        try:
            params = _entries(g, t.param_labels, t.order, names)
            sizes = {name: g.size[root] for root, name in names.items()}
            state = _entries(g, t.state_labels, t.order, dict(names))
            break
        except _Inexpressible as e:     # left in place everywhere, then written out again
            g.block(e.node, "is a concatenated axis merged into a larger one by a reshape "
                    "(not supported)")
    # a class that only state leaves carry gets no group: it stays in place (sound: the
    # identity is one consistent choice of its permutation)
    state = {k: tuple(_drop(e, sizes) for e in v) for k, v in state.items()}
    return PermutationSpec(axes_to_perm=params, state_axes_to_perm=state, sizes=sizes,
                           why=_why(g, t), source=source)


def _drop(entry, groups):
    """``entry`` with every group not in ``groups`` replaced by ``None``."""
    if entry is None or isinstance(entry, str):
        return entry if entry in groups else None
    segs = tuple(tuple((n if n in groups else None, s) for n, s in seg) for seg in entry)
    return None if all(n is None for seg in segs for n, _ in seg) else segs


def _entries(g, labels: dict, order: dict, names: dict) -> dict:
    out = {}
    for path in sorted(labels, key=lambda p: order.get(p, 0)):
        out[path] = tuple(_entry(g, n, names) for n in labels[path])
    return {path: out[path] for path in labels}


def _why(g, t: Trace) -> tuple[str, ...]:
    by_reason: dict[str, list[str]] = {}
    for path in sorted(t.param_labels, key=lambda p: t.order.get(p, 0)):
        for axis, n in enumerate(t.param_labels[path]):
            if g.size[n] > 1 and g.blocked(n) is not None:
                by_reason.setdefault(g.blocked(n), []).append(f"{path}[{axis}]")
    return tuple(f"{', '.join(axes)}: {reason}" for reason, axes in by_reason.items())


def permutation_spec(model, inputs=None, *, params=None, variables=None,
                     apply_kwargs: Mapping | None = None, check: bool = True,
                     key=None) -> PermutationSpec:
    """Derive which parameter axes share a permutation of hidden units, from the model.

    The forward function is traced to a jaxpr with the parameter and state leaves as
    inputs, and "which axis may be permuted with which" is propagated through every
    operation: a group is born on the output axis of a dense or convolution kernel, flows
    through element-wise ops (activations, bias additions, norm scales), normalisations
    (their reductions commute with permutations), reshapes that keep the axis, is tied
    across residual additions and concatenations (each part keeps its group), and is
    consumed by the contracted axis of the next kernel. Axes of the input data or of the
    output, and axes mixed by operations whose symmetry is not modelled (cumulative sums,
    argmax, sorting, reversal, an unknown primitive), are not permuted; ``spec.why`` says
    which parameter axes these are and why. BatchNorm statistics (non-parameter state) get
    entries in ``spec.state_axes_to_perm``. Attention heads and the per-head feature axes
    come out as groups, and an embedding table's feature axis joins the hidden stream.

    Args:
      model: an ``nnx.Module`` (traced in eval mode on a copy; parameters are its
        ``nnx.Param`` variables, state the rest), an :class:`~hessian_tools.Objective`
        (its ``predict`` if it has one, else its loss, on its first batch), a linen module
        (with ``variables``), or a function ``predict(params, x)`` (with ``params``).
      inputs: an example model input (arrays or ``jax.ShapeDtypeStruct``); not needed for
        an Objective. Only its shapes matter, except for ``check``.
      params: example parameters for a plain function (or to override a module's).
      variables: a linen module's variables (``module.init(...)``); ``params`` is its
        ``'params'`` collection, state the other collections.
      apply_kwargs: keyword arguments of a linen module's ``apply`` (e.g. ``train=False``).
      check: when the example input holds values, apply a random permutation drawn from the
        derived spec and check the outputs are unchanged (two forward passes); a failure is
        a bug in the derivation and raises ``RuntimeError``.
      key: the key of that check's permutation (default ``jax.random.key(0)``; no other
        randomness is involved).

    Returns:
      A :class:`PermutationSpec` (``source`` says what it was derived from). Cost: one trace
      of the forward pass, linear in the number of operations; no FLOPs beyond ``check``.

    Raises:
      ValueError: a missing example input, parameters or linen variables.
      TypeError: a model of another kind.

    >>> import jax.numpy as jnp
    >>> def predict(p, x):
    ...     return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
    >>> params = {"w1": jnp.ones((3, 4)), "b1": jnp.ones(4), "w2": jnp.ones((4, 2))}
    >>> spec = permutation_spec(predict, jnp.ones((5, 3)), params=params)
    >>> dict(spec.axes_to_perm), dict(spec.sizes)
    ({'b1': ('P0',), 'w1': (None, 'P0'), 'w2': ('P0', None)}, {'P0': 4})
    """
    m = as_model(model, params=params, variables=variables, apply_kwargs=apply_kwargs)
    inputs = m.inputs if inputs is None else inputs
    if inputs is None:
        raise ValueError(f"permutation_spec of a {m.source} needs an example input: pass "
                         "inputs=x (a batch the model accepts; a jax.ShapeDtypeStruct works).")
    t = trace(m, inputs)
    spec = spec_from_trace(t, f"derived from {m.source} by tracing its jaxpr")
    if check and spec.sizes and _concrete(inputs):
        _check_invariance(m, spec, inputs, jax.random.key(0) if key is None else key)
    return spec


def _concrete(tree_) -> bool:
    return all(not isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree_))


def _check_invariance(m: Model, spec: PermutationSpec, inputs, key) -> None:
    perm = random_permutation(spec, key)
    if m.state is None:
        p2, s2 = apply_permutation(m.params, spec, perm), None
    else:
        p2, s2 = apply_permutation(m.params, spec, perm, state=m.state)
    fn = jax.jit(m.fn)           # one compilation, two calls
    out_a = jax.tree.leaves(fn(m.params, m.state, inputs))
    out_b = jax.tree.leaves(fn(p2, s2, inputs))
    for a, b in zip(out_a, out_b):
        tol = 1e-9 if np.asarray(a).dtype == np.float64 else 1e-4
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        scale = max(float(np.max(np.abs(a), initial=0.0)), 1.0)
        if not np.allclose(a, b, rtol=0.0, atol=tol * scale):
            raise RuntimeError(
                f"The spec derived from {m.source} does not leave the outputs unchanged (max "
                f"difference {np.max(np.abs(a - b)):.3g} at scale {scale:.3g}). This is a bug "
                "in the derivation: please report it with the model, and pass a hand-written "
                "PermutationSpec.from_axes_to_perm(...) meanwhile.\n" + str(spec))


# ---- hidden activations ----------------------------------------------------------------------

def _group_roots(t: Trace, spec: PermutationSpec) -> dict[str, int]:
    """The class root of each group of ``spec`` in this trace (via a parameter axis the spec
    assigns to it whole)."""
    roots = {}
    for table, labels in ((spec.axes_to_perm, t.param_labels),
                          (spec.state_axes_to_perm, t.state_labels)):
        for path, entries in table.items():
            for axis, e in enumerate(entries):
                if isinstance(e, str) and path in labels:
                    roots.setdefault(e, t.prop.graph.find(labels[path][axis]))
    return roots


def find_taps(t: Trace, spec: PermutationSpec) -> dict[str, list]:
    roots = _group_roots(t, spec)
    taps = {}
    for name in spec.sizes:
        if name not in roots:
            raise ValueError(f"Group {name!r} is not the whole axis of any parameter, so its "
                             "hidden units cannot be located in the computation. Use "
                             "method='weights'.")
        found = list(dict.fromkeys((path, v, axis) for path, v, axis, n in t.prop.taps
                                   if t.prop.graph.find(n) == roots[name]))
        if not found:
            raise ValueError(f"No hidden activations of group {name!r} were found (no layer "
                             "input carries it). Use method='weights'.")
        taps[name] = found
    return taps


def _evaluate(jaxpr, consts, args, wanted: set, out: dict, path=()):
    """Evaluate a jaxpr primitive by primitive, recording the ``(path, var)`` in ``wanted``
    as they are consumed (sub-computations in ``CALLS`` are entered, as the walk does)."""
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))

    def read(v):
        return v.val if isinstance(v, jex.core.Literal) else env[v]

    for i, eqn in enumerate(jaxpr.eqns):
        invals = [read(v) for v in eqn.invars]
        for v, x in zip(eqn.invars, invals):
            if not isinstance(v, jex.core.Literal) and (path, v) in wanted:
                out[(path, v)] = x
        sub = eqn.params.get(CALLS.get(eqn.primitive.name, ""))
        if isinstance(sub, (jex.core.ClosedJaxpr, jex.core.Jaxpr)):
            closed = sub if isinstance(sub, jex.core.ClosedJaxpr) else jex.core.ClosedJaxpr(sub, ())
            outvals = _evaluate(closed.jaxpr, closed.consts, invals, wanted, out, path + (i,))
        else:
            with eqn.ctx.manager:       # as jax.core.eval_jaxpr binds a primitive
                outvals = eqn.primitive.bind(*invals,
                                             **eqn.primitive.get_bind_params(eqn.params))
            outvals = outvals if eqn.primitive.multiple_results else [outvals]
        env.update(zip(eqn.outvars, outvals))
    return [read(v) for v in jaxpr.outvars]


def activation_fn(t: Trace, taps: dict):
    """A jitted ``f(params, state, inputs) -> {group: (samples, units) array}``."""
    wanted = {(path, v) for found in taps.values() for path, v, _ in found}
    jaxpr, consts = t.jaxpr.jaxpr, t.jaxpr.consts

    @jax.jit
    def f(params, state, inputs):
        out: dict = {}
        _evaluate(jaxpr, consts, jax.tree.leaves((params, state, inputs)), wanted, out)
        result = {}
        for name, found in taps.items():
            parts = [jax.numpy.moveaxis(out[(path, v)], axis, -1) for path, v, axis in found]
            result[name] = jax.numpy.concatenate(
                [x.reshape(-1, x.shape[-1]) for x in parts], axis=0)
        return result
    return f


def hidden_activations(model, spec: PermutationSpec, inputs, *, params=None, state=None,
                       variables=None, apply_kwargs: Mapping | None = None) -> dict:
    """The hidden activations of every permutation group, as ``(samples, units)`` arrays.

    A group's activations are the values of its hidden units where they enter the next
    layer (the inputs of dense and convolution layers, of reshapes and concatenations), so
    after the activation function and any normalisation. Every example, and every spatial
    position of a convolution, is a sample; a residual stream read by several layers
    stacks the samples of each.

    Args:
      model: as in :func:`permutation_spec`.
      params: as in :func:`permutation_spec` (overrides the model's own).
      variables: as in :func:`permutation_spec` (overrides the model's own state).
      apply_kwargs: as in :func:`permutation_spec`.
      spec: a spec of this model (derived or hand-written; each group must be the whole
        axis of some parameter).
      inputs: a batch of model inputs (for an Objective, a batch of its data).

    Returns:
      ``{group: array of shape (samples, spec.sizes[group])}``. Cost: one forward pass (one
      compilation per input shape); memory: the recorded activations.

    Raises:
      ValueError: a group whose hidden units cannot be located.
    """
    m = as_model(model, params=params, state=state, variables=variables,
                 apply_kwargs=apply_kwargs)
    t = trace(m, inputs)
    return activation_fn(t, find_taps(t, spec))(m.params, m.state, inputs)

