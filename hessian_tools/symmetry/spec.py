"""Permutation specs: which axes of which parameters share a permutation of hidden units.

A network's hidden units can be reordered without changing its function: permute the
output units of one layer (the columns of its kernel, its bias, the scale and bias of the
norm that follows, the BatchNorm statistics) and the input rows of the next layer's kernel
the same way. A :class:`PermutationSpec` records this structure in Ainsworth et al.'s form
("Git Re-Basin", 2023): for every parameter leaf, named by its path ``a/b/c``, a tuple with
one entry per axis, the name of the permutation group that reorders that axis or ``None``.

Two extensions cover what flattening and concatenation produce. An axis made by reshaping
``(8, 8, 32)`` into ``2048`` is permuted by a group on its last factor only, and an axis
made by concatenating two hidden layers is permuted by each part's group on its own
segment. Such an entry is a tuple of *segments* (consecutive slices of the axis, in
order), each a tuple of *factors* ``(group or None, size)`` (its shape, major to minor):
``(((None, 8), (None, 8), ("P1", 32)),)`` for the flattened axis,
``((("P1", 16),), (("P2", 16),))`` for the concatenation.

A permutation is a dict ``{group: index array}``; applying it replaces every permuted axis
``w`` by ``w[..., perm[group], ...]`` (the new unit ``i`` is the old unit ``perm[group][i]``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools.symmetry._imports import path_str

__all__ = [
    "PermutationSpec",
    "apply_permutation",
    "identity_permutation",
    "inverse_permutation",
    "random_permutation",
]


# ---- entries -----------------------------------------------------------------------------

def _normalize_entry(entry, size: int, where: str):
    """``None``, a group name, or a tuple of segments of ``(name | None, size)`` factors."""
    if entry is None or isinstance(entry, str):
        return entry
    if not isinstance(entry, (tuple, list)) or not entry:
        raise TypeError(f"{where}: an axis entry is None, a group name, or a tuple of segments "
                        f"(each a tuple of (group or None, size) factors); got {entry!r}.")
    segments = []
    for segment in entry:
        factors = []
        for factor in segment:
            if (not isinstance(factor, (tuple, list)) or len(factor) != 2
                    or not (factor[0] is None or isinstance(factor[0], str))
                    or not isinstance(factor[1], (int, np.integer)) or factor[1] < 1):
                raise TypeError(f"{where}: a factor is (group or None, positive size); got "
                                f"{factor!r} in {entry!r}.")
            factors.append((factor[0], int(factor[1])))
        segments.append(tuple(factors))
    total = sum(int(np.prod([s for _, s in seg], dtype=np.int64)) for seg in segments)
    if total != size:
        raise ValueError(f"{where}: the segments of {entry!r} cover {total} positions but the "
                         f"axis has {size}.")
    if all(name is None for seg in segments for name, _ in seg):
        return None
    if len(segments) == 1 and len(segments[0]) == 1:
        return segments[0][0][0]
    return tuple(segments)


def _entry_groups(entry, size: int):
    """``[(group, group size)]`` for every occurrence of a group in an entry."""
    if entry is None:
        return []
    if isinstance(entry, str):
        return [(entry, size)]
    return [(name, s) for seg in entry for name, s in seg if name is not None]


def _entry_json(entry):
    if entry is None or isinstance(entry, str):
        return entry
    return [[[name, s] for name, s in seg] for seg in entry]


def index_map(entry, size: int, perm: Mapping, skip=None) -> np.ndarray:
    """The index array that permutes one axis: ``w_new = w.take(index, axis)``.

    ``skip`` names one occurrence ``(segment, factor)`` (or ``(0, 0)`` for a plain group
    entry) left unpermuted: weight matching's cost for that occurrence needs the rest applied.
    """
    if entry is None:
        return np.arange(size)
    if isinstance(entry, str):
        return np.arange(size) if skip == (0, 0) else np.asarray(perm[entry])
    parts, offset = [], 0
    for s, seg in enumerate(entry):
        dims = [n for _, n in seg]
        maps = [np.arange(n) if name is None or skip == (s, f) else np.asarray(perm[name])
                for f, (name, n) in enumerate(seg)]
        parts.append(offset + np.ravel_multi_index(np.ix_(*maps), dims).reshape(-1))
        offset += int(np.prod(dims, dtype=np.int64))
    return np.concatenate(parts)


def occurrence_rows(entry, sizes: Mapping):
    """For each group occurrence in an entry: ``(group, skip key, segment slice, factor
    shape, factor index)`` locating its rows (used to build weight-matching costs)."""
    if isinstance(entry, str):
        return [(entry, (0, 0), slice(0, sizes[entry]), (sizes[entry],), 0)]
    out, offset = [], 0
    for s, seg in enumerate(entry or ()):
        dims = tuple(n for _, n in seg)
        length = int(np.prod(dims, dtype=np.int64))
        for f, (name, _) in enumerate(seg):
            if name is not None:
                out.append((name, (s, f), slice(offset, offset + length), dims, f))
        offset += length
    return out


# ---- the spec ----------------------------------------------------------------------------

def _frozen(mapping):
    return MappingProxyType(dict(mapping))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PermutationSpec:
    """Which axes of which parameter (and state) leaves share which permutation group.

    Attributes:
      axes_to_perm: ``{leaf path: (entry per axis)}`` for every parameter leaf; an entry is
        ``None``, a group name, or (for flattened or concatenated axes) a tuple of segments
        of ``(group or None, size)`` factors (see the module docstring).
      state_axes_to_perm: the same for non-parameter state that must follow the permutation
        (BatchNorm running means and variances), keyed by their paths in the state tree
        (``nnx.split(model, nnx.Param, ...)[2]``, or the linen variables minus ``params``).
      sizes: ``{group: number of units}``.
      why: one line per parameter axis that is not permuted, saying why (it is an axis of
        the input, reaches the output, or is mixed by an operation named there).
      source: how the spec was made (``"hand-written"`` or what it was derived from).
    """

    axes_to_perm: Mapping[str, tuple]
    state_axes_to_perm: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
    sizes: Mapping[str, int]
    why: tuple[str, ...] = ()
    source: str = "hand-written"

    def __post_init__(self):
        object.__setattr__(self, "axes_to_perm", _frozen(
            (k, tuple(v)) for k, v in self.axes_to_perm.items()))
        object.__setattr__(self, "state_axes_to_perm", _frozen(
            (k, tuple(v)) for k, v in self.state_axes_to_perm.items()))
        object.__setattr__(self, "sizes", _frozen((k, int(v)) for k, v in self.sizes.items()))
        object.__setattr__(self, "why", tuple(self.why))
        used = {name for table in (self.axes_to_perm, self.state_axes_to_perm)
                for entries in table.values() for e in entries
                for name, _ in _entry_groups(e, 0)}
        if used - set(self.sizes):
            raise ValueError(f"Groups {sorted(used - set(self.sizes))} are used by the spec but "
                             "have no size in `sizes`.")

    @property
    def groups(self) -> tuple[str, ...]:
        """The group names, in the spec's order (layer order for derived specs)."""
        return tuple(self.sizes)

    @property
    def perm_to_axes(self) -> dict[str, list[tuple[str, int]]]:
        """Ainsworth's inverse map: ``{group: [(param leaf path, axis), ...]}``."""
        out = {g: [] for g in self.sizes}
        for path, entries in self.axes_to_perm.items():
            for axis, e in enumerate(entries):
                for name in dict.fromkeys(n for n, _ in _entry_groups(e, 0)):
                    out[name].append((path, axis))
        return out

    @classmethod
    def from_axes_to_perm(cls, axes_to_perm: Mapping, params, *, state=None,
                          state_axes_to_perm: Mapping | None = None,
                          source: str = "hand-written") -> PermutationSpec:
        """A spec from Ainsworth et al.'s ``axes_to_perm`` form, validated against ``params``.

        Args:
          axes_to_perm: ``{leaf path: (entry per axis)}`` naming every parameter leaf (a
            leaf that is not permuted is listed with all-``None`` entries, e.g.
            ``"head/bias": (None,)``). A ``git-re-basin`` ``PermutationSpec`` (anything with
            an ``axes_to_perm`` attribute) is accepted as well.
          params: the parameter pytree the spec describes (arrays or shape structs).
          state: optional non-parameter state (BatchNorm statistics) that follows the
            permutation, described by ``state_axes_to_perm`` (its floating-point leaves must
            all be listed; integer leaves such as RNG counters may be omitted).

        Raises:
          ValueError: a leaf missing from the spec or from ``params`` (named), an entry whose
            length is not the leaf's rank, or a group whose size differs between two axes.
          TypeError: an entry that is not ``None``, a name or a tuple of segments.
        """
        table = getattr(axes_to_perm, "axes_to_perm", axes_to_perm)
        groups: dict[str, int] = {}
        entries = _validate_table(table, params, groups, what="params", require_all=True)
        state_entries = {}
        if state is not None or state_axes_to_perm:
            if state is None:
                raise ValueError("state_axes_to_perm was given without the state it describes; "
                                 "pass state= (e.g. the BatchNorm statistics).")
            state_entries = _validate_table(state_axes_to_perm or {}, state, groups,
                                            what="state", require_all=False)
        return cls(axes_to_perm=entries, state_axes_to_perm=state_entries, sizes=groups,
                   source=source)

    @classmethod
    def from_perm_to_axes(cls, perm_to_axes: Mapping, params, **kwargs) -> PermutationSpec:
        """A spec from ``{group: [(leaf path, axis), ...]}``; unnamed axes are not permuted.

        ``kwargs`` are those of :meth:`from_axes_to_perm` (``state``, ``state_axes_to_perm``).
        """
        shapes = leaf_shapes(params)
        table = {path: [None] * len(shape) for path, shape in shapes.items()}
        for name, axes in perm_to_axes.items():
            for path, axis in axes:
                if path not in table:
                    raise ValueError(f"Group {name!r} names leaf {path!r}, which is not in params "
                                     f"(leaves: {_preview(table)}).")
                if not 0 <= int(axis) < len(table[path]):
                    raise ValueError(f"Group {name!r} names axis {axis} of leaf {path!r}, which "
                                     f"has shape {shapes[path]}.")
                table[path][int(axis)] = name
        return cls.from_axes_to_perm({k: tuple(v) for k, v in table.items()}, params, **kwargs)

    def validate(self, params, state=None) -> None:
        """Raise ``ValueError`` naming the first leaf of ``params`` (and ``state``) that does
        not match the spec (missing, extra, wrong rank or group size)."""
        sizes = dict(self.sizes)
        _validate_table(self.axes_to_perm, params, sizes, what="params", require_all=True)
        if state is not None:
            _validate_table(self.state_axes_to_perm, state, sizes, what="state",
                            require_all=False)
        if sizes != dict(self.sizes):
            raise ValueError(f"The spec's group sizes {dict(self.sizes)} differ from those "
                             f"of the parameters {sizes}.")

    def to_dict(self) -> dict:
        return {"type": "PermutationSpec",
                "axes_to_perm": {k: [_entry_json(e) for e in v]
                                 for k, v in self.axes_to_perm.items()},
                "state_axes_to_perm": {k: [_entry_json(e) for e in v]
                                       for k, v in self.state_axes_to_perm.items()},
                "sizes": dict(self.sizes), "why": list(self.why), "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> PermutationSpec:
        def entries(table):
            return {k: tuple(_entry_from_json(e) for e in v) for k, v in table.items()}
        return cls(axes_to_perm=entries(d["axes_to_perm"]),
                   state_axes_to_perm=entries(d.get("state_axes_to_perm", {})),
                   sizes=d["sizes"], why=tuple(d.get("why", ())), source=d.get("source", ""))

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> PermutationSpec:
        return cls.from_dict(json.loads(text))

    def table(self) -> str:
        """A plain-text table: each group, its size, and the axes it permutes."""
        rows = []
        occurrences = {g: [] for g in self.sizes}
        for table, mark in ((self.axes_to_perm, ""), (self.state_axes_to_perm, " (state)")):
            for path, entries in table.items():
                for axis, e in enumerate(entries):
                    for name in dict.fromkeys(n for n, _ in _entry_groups(e, 0)):
                        part = "" if isinstance(e, str) else "*"
                        occurrences[name].append(f"{path}[{axis}]{part}{mark}")
        for g, n in self.sizes.items():
            rows.append(f"{g} ({n}): " + ", ".join(occurrences[g]))
        if self.why:
            rows.append("not permuted:")
            rows.extend(f"  {line}" for line in self.why)
        return "\n".join(rows)

    def __str__(self) -> str:
        composite = any(not (e is None or isinstance(e, str)) for table in
                        (self.axes_to_perm, self.state_axes_to_perm)
                        for entries in table.values() for e in entries)
        note = "\n(* = part of a flattened or concatenated axis)" if composite else ""
        return f"PermutationSpec({len(self.sizes)} groups, {self.source})\n{self.table()}{note}"


def _entry_from_json(e):
    if e is None or isinstance(e, str):
        return e
    return tuple(tuple((name, int(s)) for name, s in seg) for seg in e)


def leaf_shapes(tree_) -> dict[str, tuple]:
    return {path_str(p): tuple(np.shape(x)) for p, x in
            jax.tree_util.tree_flatten_with_path(tree_)[0]}


def _leaf_dtypes(tree_) -> dict[str, Any]:
    return {path_str(p): getattr(x, "dtype", np.asarray(x).dtype) for p, x in
            jax.tree_util.tree_flatten_with_path(tree_)[0]}


def _preview(names, k: int = 6) -> str:
    names = list(names)
    return ", ".join(repr(n) for n in names[:k]) + (", ..." if len(names) > k else "")


def _validate_table(table: Mapping, tree_, groups: dict, *, what: str, require_all: bool):
    """Normalised entries of ``table`` checked against the leaves of ``tree_``; fills
    ``groups`` with the group sizes (raising when two axes disagree)."""
    shapes, dtypes = leaf_shapes(tree_), _leaf_dtypes(tree_)
    extra = [k for k in table if k not in shapes]
    if extra:
        raise ValueError(f"The spec names {what} leaf {extra[0]!r}, which is not in the {what} "
                         f"tree (its leaves: {_preview(shapes)}). Check the path spelling "
                         "(paths are written a/b/c).")
    missing = [k for k in shapes if k not in table
               and (require_all or np.issubdtype(np.dtype(dtypes[k]), np.inexact))]
    if missing:
        raise ValueError(f"{what} leaf {missing[0]!r} (shape {shapes[missing[0]]}) is not in the "
                         f"spec (missing: {_preview(missing)}). List every leaf; one that is not "
                         f"permuted gets None per axis, e.g. {missing[0]!r}: "
                         f"{(None,) * len(shapes[missing[0]])}.")
    out = {}
    for path, entries in table.items():
        shape = shapes[path]
        if not isinstance(entries, (tuple, list)) or len(entries) != len(shape):
            raise ValueError(f"{what} leaf {path!r} has shape {shape} ({len(shape)} axes) but its "
                             f"spec entry is {entries!r}; give one entry per axis.")
        normal = []
        for axis, (e, size) in enumerate(zip(entries, shape)):
            e = _normalize_entry(e, size, f"{what} leaf {path!r} axis {axis}")
            for name, n in _entry_groups(e, size):
                if groups.setdefault(name, n) != n:
                    raise ValueError(f"Group {name!r} has {groups[name]} units elsewhere but "
                                     f"{n} at {what} leaf {path!r} axis {axis} (shape {shape}). "
                                     "Axes sharing a group must have the same size.")
            normal.append(e)
        out[path] = tuple(normal)
    return out


# ---- permutations ------------------------------------------------------------------------

def _as_perm(perm, spec: PermutationSpec) -> dict[str, np.ndarray]:
    if not isinstance(perm, Mapping):
        raise TypeError(f"perm must be a dict {{group: index array}} (or an alignment result), "
                        f"got {type(perm).__name__}.")
    unknown = sorted(set(perm) - set(spec.sizes))
    if unknown:
        raise ValueError(f"perm has groups {unknown} that the spec does not have "
                         f"(its groups: {list(spec.sizes)}).")
    out = {}
    for name, n in spec.sizes.items():
        if name not in perm:
            raise ValueError(f"perm has no entry for group {name!r} ({n} units); pass "
                             "identity_permutation(spec) entries for groups left in place.")
        p = np.asarray(perm[name])
        if p.shape != (n,) or not np.array_equal(np.sort(p), np.arange(n)):
            raise ValueError(f"perm[{name!r}] must be a permutation of range({n}); got an array "
                             f"of shape {p.shape}.")
        out[name] = p
    return out


def _permute_tree(tree_, table: Mapping, perm: dict, *, what: str, require_all: bool):
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree_)
    paths = [path_str(p) for p, _ in flat]
    missing = [k for k in table if k not in paths]
    if missing and require_all:
        raise ValueError(f"{what} has no leaf {missing[0]!r}, which the spec permutes; pass the "
                         f"whole {what} tree the spec was made for.")
    leaves, indices, axes = [x for _, x in flat], [], []
    for path, leaf in zip(paths, leaves):
        if path not in table and (require_all or np.issubdtype(np.dtype(leaf.dtype), np.inexact)):
            raise ValueError(f"{what} leaf {path!r} is not in the spec (its leaves: "
                             f"{_preview(table)}). Derive the spec from this model or "
                             "list the leaf.")
        moved = [(a, index_map(e, np.shape(leaf)[a], perm))
                 for a, e in enumerate(table.get(path, ())) if e is not None]
        axes.append(tuple(a for a, _ in moved))
        indices.append([i for _, i in moved])
    if all(isinstance(x, np.ndarray) for x in leaves):
        out = [_take(np, x, idx, ax) for x, idx, ax in zip(leaves, indices, axes)]
    else:
        out = _take_jit(leaves, indices, tuple(axes))
    return jax.tree.unflatten(treedef, out)


def _take(xp, leaf, indices, axes):
    for index, axis in zip(indices, axes):
        leaf = xp.take(leaf, index, axis=axis)
    return leaf


@functools.partial(jax.jit, static_argnums=2)
def _take_jit(leaves, indices, axes):
    """Every gather of a tree in one compiled call (compiled once per tree structure)."""
    return [_take(jnp, x, idx, ax) for x, idx, ax in zip(leaves, indices, axes)]


def apply_permutation(params, spec: PermutationSpec, perm, state=None):
    """Reorder the hidden units of ``params`` (and ``state``) by ``perm``.

    Every axis the spec assigns to a group ``g`` becomes ``w.take(perm[g], axis)``; for a
    derived spec the network computes the same function afterwards (up to rounding).

    Args:
      params: the parameter pytree the spec was made for (any pytree; paths ``a/b/c``).
      spec: a :class:`PermutationSpec`.
      perm: ``{group: index array}``, e.g. from :func:`random_permutation` or an alignment
        result (its ``perm``).
      state: optional non-parameter state (BatchNorm statistics) permuted with ``params``.

    Returns:
      The permuted params (same pytree structure), or ``(params, state)`` when ``state`` is
      given. Costs one gather per permuted axis; no model evaluation.

    Raises:
      ValueError: a leaf missing from the spec or the tree (named), or a ``perm`` entry that
        is not a permutation of its group's size.

    >>> import numpy as np
    >>> spec = PermutationSpec.from_axes_to_perm(
    ...     {"w1": (None, "P"), "w2": ("P", None)}, {"w1": np.zeros((2, 3)), "w2": np.zeros((3, 1))})
    >>> out = apply_permutation({"w1": np.arange(6.).reshape(2, 3), "w2": np.arange(3.)[:, None]},
    ...                         spec, {"P": np.array([2, 0, 1])})
    >>> out["w1"].tolist(), out["w2"].ravel().tolist()
    ([[2.0, 0.0, 1.0], [5.0, 3.0, 4.0]], [2.0, 0.0, 1.0])
    """
    perm = _as_perm(perm, spec)
    out = _permute_tree(params, spec.axes_to_perm, perm, what="params", require_all=True)
    if state is None:
        return out
    return out, _permute_tree(state, spec.state_axes_to_perm, perm, what="state",
                              require_all=False)


def random_permutation(spec: PermutationSpec, key) -> dict[str, np.ndarray]:
    """A uniformly random permutation of every group of ``spec``.

    Args:
      spec: a :class:`PermutationSpec`.
      key: a ``jax.random`` key; the same key gives the same permutation.

    Returns:
      ``{group: int index array}``, in the spec's group order.
    """
    if key is None:
        raise ValueError("random_permutation needs a key: pass key=jax.random.key(0) (any seed).")
    rng = np.random.default_rng(tree.key_bits(key))
    return {name: rng.permutation(n) for name, n in spec.sizes.items()}


def identity_permutation(spec: PermutationSpec) -> dict[str, np.ndarray]:
    """The permutation that leaves every group in place."""
    return {name: np.arange(n) for name, n in spec.sizes.items()}


def inverse_permutation(perm) -> dict[str, np.ndarray]:
    """The permutation that undoes ``perm``: applying ``perm`` then its inverse is the
    identity (``inverse[g][perm[g]] == arange``)."""
    return {name: np.argsort(np.asarray(p)) for name, p in perm.items()}
