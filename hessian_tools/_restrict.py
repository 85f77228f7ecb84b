"""Restricting an objective to a subset of its parameters (per-layer spectra)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from hessian_tools.objective import Objective, Static, _path_str

__all__ = ["restrict_objective"]


def _selector(select):
    if callable(select):
        return select
    patterns = [select] if isinstance(select, str) else list(select)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"select must be a string, a list of strings or a predicate "
                        f"(path, leaf) -> bool; got {select!r}.")

    def match(path: str, leaf) -> bool:
        parts = path.split("/")
        return any(path.startswith(p) or p in parts or f"/{p}/" in f"/{path}/" for p in patterns)
    return match


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Embed:
    """Rebuild the full parameter tree from the selected leaves and the fixed rest."""

    treedef: Any = dataclasses.field(metadata=dict(static=True))
    selected: tuple = dataclasses.field(metadata=dict(static=True))
    fixed: tuple = ()

    def __call__(self, sub: dict):
        leaves, fixed = [], iter(self.fixed)
        for path, chosen in self.selected:
            leaves.append(sub[path] if chosen else next(fixed))
        return self.treedef.unflatten(leaves)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _RestrictedFn:
    fn: Any
    embed: _Embed

    def __call__(self, sub, batch):
        return self.fn(self.embed(sub), batch)


def restrict_objective(obj: Objective, select) -> Objective:
    """See :meth:`Objective.restrict`."""
    match = _selector(select)
    flat, treedef = jax.tree_util.tree_flatten_with_path(obj.params)
    paths = [_path_str(p) for p, _ in flat]
    chosen = [bool(match(path, leaf)) for path, (_, leaf) in zip(paths, flat)]
    if not any(chosen):
        raise ValueError(f"select={select!r} matched none of the parameter leaves. "
                         f"Available paths: {paths[:20]}{' ...' if len(paths) > 20 else ''}.")
    embed = _Embed(treedef, tuple(zip(paths, chosen)),
                   tuple(leaf for (_, leaf), c in zip(flat, chosen) if not c))
    sub = {path: leaf for path, (_, leaf), c in zip(paths, flat, chosen) if c}
    predict = _RestrictedFn(obj.predict, embed) if obj.predict is not None else None
    return Objective(_RestrictedFn(obj.loss, embed), sub, obj.data, predict=predict,
                     output_loss=obj.output_loss, precision=obj.precision)


del Static
