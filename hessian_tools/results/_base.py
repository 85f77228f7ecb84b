"""The result contract: frozen, keyword-only, carrying how it was computed, with one
serialisation for every result type.

Every result is a frozen dataclass built with keywords only (``kw_only``: a reordered field
cannot silently swap two numbers), derived from :class:`Result`: it carries the products
it spent (``num_matvecs``), its ``wall_time``, the key data it was drawn from (``seed``) and
the operator kind, and round-trips through JSON with :meth:`Result.to_dict` /
:meth:`Result.from_dict`. Solvers report a :class:`Status` (lineax's ``RESULTS``) instead of
a bare ``converged`` flag plus free text.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from typing import ClassVar

import numpy as np

__all__ = ["Result", "Status", "jsonable"]


class Status(enum.Enum):
    """How a solve ended. The value says what it means and what to do about it."""

    converged = "every tolerance was met"
    least_squares = "a least-squares solution of an inconsistent (singular) system was reached"
    breakdown = "an invariant Krylov space was found: the answer is exact on it"
    zero_rhs = "the right-hand side is zero: the solution is zero"
    negative_curvature = ("conjugate gradients met a direction with p^T A p <= 0: the operator "
                          "is not positive definite on the Krylov space (indefinite, or "
                          "singular with an inconsistent right-hand side): use method='minres'")
    budget = ("the budget of products ran out before every tolerance was met: raise "
              "num_matvecs, or loosen tol")

    @property
    def ok(self) -> bool:
        """Whether a stopping test was met (anything but the budget running out or negative
        curvature in conjugate gradients)."""
        return self not in (Status.budget, Status.negative_curvature)

    def __str__(self) -> str:
        return self.name


def jsonable(x, *, finite: bool = False):
    """``x`` with NumPy arrays and scalars as Python lists and numbers, enums as their names,
    ready for ``json.dumps``. With ``finite``, NaN and infinities become ``None`` (strict
    JSON, as in JSON-lines logs)."""
    if isinstance(x, enum.Enum):
        return x.name
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist(), finite=finite)
    if isinstance(x, (np.floating, float)) and not isinstance(x, bool):
        value = float(x)
        return None if finite and not math.isfinite(value) else value
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, dict):
        return {k: jsonable(v, finite=finite) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, finite=finite) for v in x]
    return x


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result:
    """The base of every result: provenance and one serialisation.

    Attributes:
      num_matvecs: operator products spent (0 for results that need none).
      wall_time: seconds, compilation included.
      seed: the data of the PRNG key behind it (empty when deterministic).
      operator: the operator kind (``"hessian"``, ``"ggn"``, ...), when there is one.

    Subclasses name in ``_arrays`` the fields restored as float64 arrays, in ``_tuples`` those
    restored as tuples, in ``_skip`` those not serialised (eigenvectors), and in
    ``_results`` fields that hold other results (``{field: type}``; lists of them too).
    """

    num_matvecs: int = 0
    wall_time: float = 0.0
    seed: list = dataclasses.field(default_factory=list)
    operator: str = ""

    _arrays: ClassVar[tuple] = ()
    _tuples: ClassVar[tuple] = ()
    _skip: ClassVar[tuple] = ()
    _results: ClassVar[dict] = {}

    def to_dict(self) -> dict:
        """A JSON-ready dict (``"type"`` names the class)."""
        d = {"type": type(self).__name__}
        for f in dataclasses.fields(self):
            if f.name in self._skip:
                continue
            value = getattr(self, f.name)
            if isinstance(value, Result):
                value = value.to_dict()
            elif isinstance(value, (list, tuple)) and value and isinstance(value[0], Result):
                value = [v.to_dict() for v in value]
            elif isinstance(value, dict) and value and \
                    isinstance(next(iter(value.values())), Result):
                value = {k: v.to_dict() for k, v in value.items()}
            d[f.name] = jsonable(value)
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict):
        """The result back from :meth:`to_dict` (unknown keys are an error)."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        if "converged" in d and "status" in names and "status" not in d:   # 0.1 results
            d = {k: v for k, v in d.items() if k != "converged"} | {
                "status": "converged" if d["converged"] else "budget"}
        kwargs = {}
        for key, value in d.items():
            if key == "type":
                continue
            if key not in names:
                raise ValueError(f"{cls.__name__}.from_dict: unknown field {key!r}.")
            kwargs[key] = cls._restore(key, value, names[key])
        return cls(**kwargs)

    @classmethod
    def _restore(cls, key, value, field):
        if value is None:
            return None
        if key in cls._arrays:
            return np.asarray(value, dtype=np.float64)
        if key in cls._tuples:
            return tuple(value)
        if field.type in ("Status", Status):
            return Status[value]
        if key in cls._results:
            kind = cls._results[key]
            if isinstance(value, list):
                return tuple(kind.from_dict(v) for v in value)
            if isinstance(value, dict) and "type" not in value:
                return {k: kind.from_dict(v) for k, v in value.items()}
            return kind.from_dict(value)
        return value

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))
