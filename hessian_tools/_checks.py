"""Argument validation, one wording per kind of mistake: what was wrong, the value received,
what is accepted and how to fix it. Public functions validate before tracing."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["NonFiniteLoss", "check_finite_loss", "check_key", "check_count", "check_choice", "check_confidence", "check_tol",
           "check_positive"]


def check_key(key, what: str) -> None:
    """A stochastic routine needs an explicit ``jax.random`` key."""
    if key is None:
        raise ValueError(f"{what} is stochastic and needs an explicit PRNG key: pass "
                         "key=jax.random.key(0).")


def check_count(name: str, value, *, minimum: int = 1, maximum: int | None = None,
                hint: str = "", why: str = "") -> None:
    """An integer in ``[minimum, maximum]``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.{why}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} exceeds {hint} {maximum}. Pass {name} <= {maximum}.")


def check_choice(name: str, value, choices) -> None:
    """One of a fixed set of values."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {tuple(choices)}.")


def check_confidence(confidence) -> None:
    """A coverage probability strictly between 0 and 1."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must lie strictly between 0 and 1, e.g. 0.95.")


def check_tol(name: str, value, *, relative_to: str = "the largest eigenvalue") -> None:
    """A relative tolerance in ``(0, 1)`` (``None`` means the default)."""
    if value is None:
        return
    if not (isinstance(value, (int, float, np.floating)) and 0.0 < float(value) < 1.0):
        raise ValueError(f"{name}={value!r} must lie in (0, 1): it is a residual relative to "
                         f"{relative_to}, e.g. 1e-4.")


def check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    """A finite number ``> 0`` (or ``>= 0``)."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name}={value!r} must be a finite number "
                         f"{'>= 0' if allow_zero else '> 0'}.")


class NonFiniteLoss(ValueError):
    """The loss is NaN or infinite at the point analysed: its curvature is undefined."""


def check_finite_loss(loss, where: str = "at this point") -> float:
    """The loss as a float, or :class:`NonFiniteLoss` naming the value and the likely causes."""
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteLoss(f"the loss is {value} {where}: the curvature of a non-finite loss is "
                            "undefined (a diverged checkpoint, or a log of zero in the loss?).")
    return value
