"""Which axes of a traced computation may be permuted together: propagation through a jaxpr.

Every axis of every array in the computation gets a node; a rule per primitive joins the
nodes that must be permuted by the same permutation for the primitive to commute with it
(an element-wise op joins each axis of its operands to the same axis of its result; a
matrix product joins the two contracted axes, so that ``sum_k a_k b_k`` is unchanged, and
each free axis to the result's). Axes of the input data and of the outputs are *blocked*
(left in place), and so is every axis an operation mixes in a way we do not model (a
cumulative sum, an ``argmax``, a reversal, an unknown primitive), with the reason kept.

Whatever is joined to a blocked axis is blocked. What remains are classes of axes that can
be permuted freely and consistently: the hidden units of the network. Reductions (sums,
maxima) over an axis commute with any permutation of it, so norms and softmaxes over hidden
units need no special case. Reshapes that merge axes and concatenations create *composite*
nodes whose permutation is built from their parts (a product of factors, a sequence of
segments); joining two composites joins their parts when their shapes agree and blocks them
otherwise.

The rules are the equivariance of each primitive, so the result is sound by construction:
any permutation that is uniform on each class leaves the outputs unchanged (tests check it
numerically for every supported architecture).
"""

from __future__ import annotations

import os

import jax.extend as jex
import numpy as np

from hessian_tools.symmetry._imports import summarize_source

__all__ = []

# sub-computations entered as if inlined: primitive name -> the parameter holding the jaxpr
CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
         "custom_vjp_call_jaxpr": "fun_jaxpr", "remat": "jaxpr", "remat2": "jaxpr",
         "checkpoint": "jaxpr"}

ELEMENTWISE = frozenset(["abs", "acos", "acosh", "add", "add_any", "and", "asin", "asinh", "atan", "atan2", "atanh", "cbrt", "ceil", "clamp", "conj", "convert_element_type", "copy", "copy_p", "cos", "cosh", "digamma", "div", "eq", "erf", "erf_inv", "erfc", "exp", "exp2", "expm1", "floor", "ge", "gt", "igamma", "imag", "integer_pow", "is_finite", "le", "lgamma", "log", "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "nextafter", "not", "or", "population_count", "pow", "real", "reduce_precision", "rem", "round", "rsqrt", "select_n", "shift_left", "shift_right_arithmetic", "shift_right_logical", "sign", "sin", "sinh", "sqrt", "square", "stop_gradient", "sub", "tan", "tanh", "xor", "optimization_barrier"])

SYMMETRIC_REDUCTIONS = frozenset(["reduce_sum", "reduce_max", "reduce_min", "reduce_prod",
                                  "reduce_and", "reduce_or", "reduce_xor"])
CUMULATIVE = frozenset(["cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"])
# operands whose hidden activations the activation matching reads (inputs of layers)
TAPPED = frozenset(["dot_general", "conv_general_dilated", "reshape", "concatenate"])


def where(eqn) -> str:
    """``prim in fn (file:line)`` for a reason string (``prim`` alone without a source)."""
    text = summarize_source(eqn.source_info)
    location, _, fn = text.partition(" ")
    parts = location.split(":")
    if not parts[0]:
        return f"`{eqn.primitive.name}`"
    short = "/".join(parts[0].split(os.sep)[-2:]) + (f":{parts[1]}" if len(parts) > 1 else "")
    return f"`{eqn.primitive.name}` in {fn.strip('()') or '?'} ({short})"


class AxisGraph:
    """Union-find over axis nodes, with blocked classes (and why) and composite layouts.

    A composite node's ``layout`` is a tuple of segments, each a tuple of child nodes (the
    factors of that segment, major to minor): the node's permutation is the concatenation
    over segments of the Kronecker products of its factors' permutations.
    """

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.reason: dict[int, str] = {}
        self.layout: dict[int, tuple] = {}

    def node(self, size: int, reason: str | None = None) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.size.append(int(size))
        if reason is not None:
            self.block(i, reason)
        return i

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def blocked(self, i: int) -> str | None:
        return self.reason.get(self.find(i))

    def children(self, i: int) -> list[int]:
        return [c for seg in self.layout.get(self.find(i), ()) for c in seg]

    def block(self, i: int, reason: str) -> None:
        stack = [i]
        while stack:
            r = self.find(stack.pop())
            if r in self.reason:
                continue
            self.reason[r] = reason
            stack.extend(self.children(r))

    def composite(self, segments) -> int:
        """A node laid out as ``segments`` (lists of factor nodes); trivial layouts collapse."""
        segments = [tuple(c for c in seg if self.size[c] != 1) for seg in segments]
        if len(segments) == 1 and len(segments[0]) == 1:
            return segments[0][0]
        total = sum(int(np.prod([self.size[c] for c in seg], dtype=np.int64)) for seg in segments)
        i = self.node(total)
        self.layout[i] = tuple(segments)
        return i

    def _shape(self, layout):
        return tuple(tuple(self.size[c] for c in seg) for seg in layout)

    def union(self, a: int, b: int, why: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            raise AssertionError(f"internal: joining axes of sizes {self.size[ra]} and "
                                 f"{self.size[rb]} at {why}")
        la, lb = self.layout.pop(ra, None), self.layout.pop(rb, None)
        reason = self.reason.pop(ra, None) or self.reason.pop(rb, None)
        self.reason.pop(rb, None)
        self.parent[rb] = ra
        if la is not None and lb is not None and self._shape(la) != self._shape(lb):
            reason = reason or (f"{why} joins this axis, laid out as "
                                f"{self._shape(la)}, with one laid out as {self._shape(lb)}")
            for c in [c for seg in la + lb for c in seg]:
                self.block(c, reason)
            self.layout[ra] = la
        elif la is not None and lb is not None:
            self.layout[ra] = la
            for sa, sb in zip(la, lb):
                for ca, cb in zip(sa, sb):
                    self.union(ca, cb, why)
        elif la is not None or lb is not None:
            self.layout[ra] = la if la is not None else lb
        if reason is not None:
            self.block(ra, reason)


# ---- the walk over a jaxpr -----------------------------------------------------------------

class Propagation:
    """The axis classes of one traced function (``walk`` then read ``graph`` and ``taps``).

    ``env`` frames map a jaxpr variable to ``(nodes per axis, depends on data)``; ``taps``
    lists ``(frame path, variable, axis, node)`` for data-dependent operands of layers (the
    hidden activations read by activation matching).
    """

    def __init__(self):
        self.graph = AxisGraph()
        self.taps: list[tuple] = []
        self.first_use: dict[int, int] = {}     # input node -> index of the first eqn using it
        self.input_nodes: set[int] = set()
        self._count = 0

    def label(self, shape, reason=None) -> tuple[int, ...]:
        return tuple(self.graph.node(s, reason if s > 1 else None) for s in shape)

    def read(self, env, var):
        if isinstance(var, jex.core.Literal):
            shape = np.shape(var.val)
            return self.label(shape, "a constant in the computation"), False
        return env[var]

    def walk(self, jaxpr, env: dict, path: tuple = ()) -> None:
        for i, eqn in enumerate(jaxpr.eqns):
            ins = [self.read(env, v) for v in eqn.invars]
            self._count += 1
            for labels, _ in ins:
                for n in labels:
                    if n in self.input_nodes:
                        self.first_use.setdefault(n, self._count)
            dep = any(d for _, d in ins)
            name = eqn.primitive.name
            if name in CALLS and _sub_jaxpr(eqn) is not None:
                sub, consts = _sub_jaxpr(eqn)
                inner = {v: (self.label(np.shape(c), "a constant captured by the function"), False)
                         for v, c in zip(sub.constvars, consts)}
                inner.update(zip(sub.invars, ins))
                self.walk(sub, inner, path + (i,))
                for v, out in zip(eqn.outvars, sub.outvars):
                    env[v] = self.read(inner, out)
                continue
            outs = [self.label(v.aval.shape) for v in eqn.outvars]
            shapes_in = [tuple(getattr(v.aval, "shape", ())) for v in eqn.invars]
            if name in TAPPED:
                for (labels, d), v in zip(ins, eqn.invars):
                    if d and not isinstance(v, jex.core.Literal):
                        self.taps.extend((path, v, ax, n) for ax, n in enumerate(labels))
            rule = RULES.get(name)
            if rule is None:
                rule = _elementwise if name in ELEMENTWISE else _unknown
            rule(self.graph, eqn, [labels for labels, _ in ins], shapes_in, outs)
            for v, labels in zip(eqn.outvars, outs):
                env[v] = (labels, dep)


def _sub_jaxpr(eqn):
    sub = eqn.params.get(CALLS[eqn.primitive.name])
    if isinstance(sub, jex.core.ClosedJaxpr):
        return sub.jaxpr, sub.consts
    if isinstance(sub, jex.core.Jaxpr):
        return sub, ()
    return None


# ---- rules: (graph, eqn, input labels, input shapes, output labels) ------------------------

def _unknown(g, eqn, ins, shapes, outs):
    reason = f"{where(eqn)} is not a primitive whose symmetry is modelled"
    for labels in list(ins) + list(outs):
        for n in labels:
            g.block(n, reason)


def _elementwise(g, eqn, ins, shapes, outs):
    if len(outs) > 1:   # n-ary identity (optimization_barrier)
        for a, b in zip(ins, outs):
            for x, y in zip(a, b):
                g.union(x, y, where(eqn))
        return
    out, out_shape = outs[0], eqn.outvars[0].aval.shape
    for labels, shape in zip(ins, shapes):
        if len(labels) == 0:
            continue
        if len(labels) != len(out):
            return _unknown(g, eqn, ins, shapes, outs)
        for x, y, s, t in zip(labels, out, shape, out_shape):
            if s == t:
                g.union(x, y, where(eqn))


def _broadcast_in_dim(g, eqn, ins, shapes, outs):
    out_shape = eqn.outvars[0].aval.shape
    for j, d in enumerate(eqn.params["broadcast_dimensions"]):
        if shapes[0][j] == out_shape[d]:
            g.union(ins[0][j], outs[0][d], where(eqn))


def _reshape(g, eqn, ins, shapes, outs):
    labels, shape = ins[0], shapes[0]
    if eqn.params.get("dimensions") is not None:
        order = eqn.params["dimensions"]
        labels, shape = [labels[k] for k in order], [shape[k] for k in order]
    join_reshaped(g, list(zip(labels, shape)), list(zip(outs[0], eqn.outvars[0].aval.shape)),
                  where(eqn))


def join_reshaped(g, a, b, why):
    """Join the axes of a reshape ``a -> b`` (lists of ``(node, size)``), block by block."""
    a = [x for x in a if x[1] != 1]
    b = [x for x in b if x[1] != 1]
    i = j = 0
    while i < len(a) and j < len(b):
        ii, jj, pa, pb = i + 1, j + 1, a[i][1], b[j][1]
        while pa != pb:
            if pa < pb:
                pa, ii = pa * a[ii][1], ii + 1
            else:
                pb, jj = pb * b[jj][1], jj + 1
        left = g.composite([[n for n, _ in a[i:ii]]])
        right = g.composite([[n for n, _ in b[j:jj]]])
        g.union(left, right, why)
        i, j = ii, jj


def _transpose(g, eqn, ins, shapes, outs):
    for i, k in enumerate(eqn.params["permutation"]):
        g.union(outs[0][i], ins[0][k], where(eqn))


def _squeeze(g, eqn, ins, shapes, outs):
    kept = [n for k, n in enumerate(ins[0]) if k not in set(eqn.params["dimensions"])]
    for x, y in zip(kept, outs[0]):
        g.union(x, y, where(eqn))


def _keep_except(g, eqn, labels, out, dropped, block_reason=None):
    kept = [n for k, n in enumerate(labels) if k not in dropped]
    for x, y in zip(kept, out):
        g.union(x, y, where(eqn))
    if block_reason:
        for k in dropped:
            g.block(labels[k], block_reason)


def _reduce(g, eqn, ins, shapes, outs):
    _keep_except(g, eqn, ins[0], outs[0], set(eqn.params["axes"]))


def _argreduce(g, eqn, ins, shapes, outs):
    _keep_except(g, eqn, ins[0], outs[0], set(eqn.params["axes"]),
                 f"{where(eqn)} returns positions along this axis")


def _cumulative(g, eqn, ins, shapes, outs):
    axis = eqn.params["axis"]
    _elementwise(g, eqn, ins, shapes, outs)
    g.block(ins[0][axis], f"{where(eqn)} accumulates along this axis in order")


def _sort(g, eqn, ins, shapes, outs):
    why = where(eqn)
    for labels in list(ins[1:]) + list(outs):
        for x, y in zip(ins[0], labels):
            g.union(x, y, why)
    g.block(ins[0][eqn.params["dimension"]], f"{why} orders this axis")


def _top_k(g, eqn, ins, shapes, outs):
    axis = eqn.params.get("axis", len(shapes[0]) - 1) % len(shapes[0])
    reason = f"{where(eqn)} selects along this axis"
    for out in outs:
        _keep_except(g, eqn, ins[0], [n for k, n in enumerate(out) if k != axis], {axis})
        g.block(out[axis], reason)
    g.block(ins[0][axis], reason)


def _dot_general(g, eqn, ins, shapes, outs):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs, out, why = ins[0], ins[1], outs[0], where(eqn)
    for a, b in zip(lc, rc):
        g.union(lhs[a], rhs[b], why)
    free_l = [k for k in range(len(lhs)) if k not in lc and k not in lb]
    free_r = [k for k in range(len(rhs)) if k not in rc and k not in rb]
    pairs = ([(lhs[a], rhs[b]) for a, b in zip(lb, rb)] + [(lhs[k], None) for k in free_l]
             + [(rhs[k], None) for k in free_r])
    for (x, y), o in zip(pairs, out):
        g.union(x, o, why)
        if y is not None:
            g.union(y, o, why)


def _conv(g, eqn, ins, shapes, outs):
    dn = eqn.params["dimension_numbers"]
    lhs, rhs, out, why = ins[0], ins[1], outs[0], where(eqn)
    (lb, lf, *ls), (ro, ri, *rs), (ob, of, *os_) = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    spatial = f"{why} mixes neighbouring positions along this spatial axis"
    for labels, axes in ((lhs, ls), (rhs, rs), (out, os_)):
        for k in axes:
            g.block(labels[k], spatial)
    if eqn.params["batch_group_count"] != 1:
        return _unknown(g, eqn, ins, shapes, outs)
    g.union(lhs[lb], out[ob], why)
    groups = eqn.params["feature_group_count"]
    if groups == 1:
        g.union(lhs[lf], rhs[ri], why)
        g.union(rhs[ro], out[of], why)
        return
    # grouped convolution: the features split as (groups, per group); permuting the groups
    # together with the units within every group commutes with it
    gnode, onode = g.node(groups), g.node(shapes[1][ro] // groups)
    g.union(lhs[lf], g.composite([[gnode, rhs[ri]]]), why)
    g.union(rhs[ro], g.composite([[gnode, onode]]), why)
    g.union(out[of], rhs[ro], why)


def _concatenate(g, eqn, ins, shapes, outs):
    d, out, why = eqn.params["dimension"], outs[0], where(eqn)
    for labels in ins:
        for k, (x, y) in enumerate(zip(labels, out)):
            if k != d:
                g.union(x, y, why)
    g.union(out[d], g.composite([[labels[d]] for labels in ins]), why)


def _split(g, eqn, ins, shapes, outs):
    d, why = eqn.params["axis"], where(eqn)
    for labels in outs:
        for k, (x, y) in enumerate(zip(ins[0], labels)):
            if k != d:
                g.union(x, y, why)
    g.union(ins[0][d], g.composite([[labels[d]] for labels in outs]), why)


def _partial_axes(g, eqn, ins, outs, whole, reason):
    """Join operand and result axes that an op keeps whole; block the others."""
    for k, (x, y) in enumerate(zip(ins[0], outs[0])):
        if whole[k]:
            g.union(x, y, where(eqn))
        else:
            g.block(x, f"{where(eqn)} {reason}")
            g.block(y, f"{where(eqn)} {reason}")


def _slice(g, eqn, ins, shapes, outs):
    p = eqn.params
    strides = p["strides"] or (1,) * len(shapes[0])
    whole = [s == 0 and e == n and st == 1 for s, e, n, st in
             zip(p["start_indices"], p["limit_indices"], shapes[0], strides)]
    _partial_axes(g, eqn, ins, outs, whole, "takes part of this axis")


def _dynamic_slice(g, eqn, ins, shapes, outs):
    whole = [s == n for s, n in zip(eqn.params["slice_sizes"], shapes[0])]
    _partial_axes(g, eqn, ins, outs, whole, "takes part of this axis")


def _dynamic_update_slice(g, eqn, ins, shapes, outs):
    whole = [u == n for u, n in zip(shapes[1], shapes[0])]
    _partial_axes(g, eqn, ins, outs, whole, "writes into part of this axis")
    _partial_axes(g, eqn, ins[1:], outs, whole, "writes into part of this axis")


def _pad(g, eqn, ins, shapes, outs):
    whole = [lo == 0 and hi == 0 and mid == 0 for lo, hi, mid in eqn.params["padding_config"]]
    _partial_axes(g, eqn, ins, outs, whole, "pads this axis")


def _rev(g, eqn, ins, shapes, outs):
    whole = [k not in eqn.params["dimensions"] for k in range(len(shapes[0]))]
    _partial_axes(g, eqn, ins, outs, whole, "reverses this axis")


def _reduce_window(g, eqn, ins, shapes, outs):
    p, n = eqn.params, len(shapes[0])
    ones = (1,) * n
    whole = [w == 1 and s == 1 and tuple(pad) == (0, 0) and bd == 1 and wd == 1
             for w, s, pad, bd, wd in zip(p["window_dimensions"], p["window_strides"],
                                          p["padding"], p.get("base_dilation") or ones,
                                          p.get("window_dilation") or ones)]
    operands = ins[:len(outs)]          # the generic form also takes one init value per output
    for a, b in zip(operands, outs):
        _partial_axes(g, eqn, [a], [b], whole, "pools over windows of this axis")


def _gather(g, eqn, ins, shapes, outs):
    dn, p = eqn.params["dimension_numbers"], eqn.params
    operand, out, why = ins[0], outs[0], where(eqn)
    dropped = set(dn.collapsed_slice_dims) | set(dn.operand_batching_dims)
    kept = [k for k in range(len(operand)) if k not in dropped]
    joined = set()
    for k, o in zip(kept, dn.offset_dims):
        if p["slice_sizes"][k] == shapes[0][k] and k not in dn.start_index_map:
            g.union(operand[k], out[o], why)
            joined.add(o)
    reason = f"{why} indexes along this axis"
    for k in range(len(operand)):
        if k in dropped or k in dn.start_index_map or p["slice_sizes"][k] != shapes[0][k]:
            g.block(operand[k], reason)
    for labels in [ins[1]] + [[n for o, n in enumerate(out) if o not in joined]]:
        for n in labels:
            g.block(n, reason)


def _iota(g, eqn, ins, shapes, outs):
    for n in outs[0]:
        g.block(n, f"{where(eqn)} numbers the positions of this axis")


RULES = {
    "broadcast_in_dim": _broadcast_in_dim, "reshape": _reshape, "transpose": _transpose,
    "squeeze": _squeeze, "argmax": _argreduce, "argmin": _argreduce, "sort": _sort,
    "top_k": _top_k, "dot_general": _dot_general, "conv_general_dilated": _conv,
    "concatenate": _concatenate, "split": _split, "slice": _slice,
    "dynamic_slice": _dynamic_slice, "dynamic_update_slice": _dynamic_update_slice,
    "pad": _pad, "rev": _rev, "gather": _gather, "iota": _iota,
    "reduce_window_sum": _reduce_window, "reduce_window_max": _reduce_window,
    "reduce_window_min": _reduce_window, "reduce_window": _reduce_window,
    **{name: _reduce for name in SYMMETRIC_REDUCTIONS},
    **{name: _cumulative for name in CUMULATIVE},
}
