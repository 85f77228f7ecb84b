"""The reproduction gallery: classic loss-landscape results, each reproduced by one function
on data that ships offline, with the paper's figures beside ours.

Each entry is a module here declaring an :class:`Entry` (the paper, its claim, its notebook)
whose ``run(small=, seed=, say=)`` returns a :class:`Report` (ours against the paper's,
a verdict paragraph, figures). The notebooks call the same module's functions step by step;
``hessian-tools gallery NAME --out DIR`` calls ``run`` and writes the report.

>>> from hessian_tools import gallery
>>> sorted(gallery.entries())  # doctest: +SKIP
['cohen', 'dauphin', ...]
"""

from __future__ import annotations

from hessian_tools.gallery import cohen, li, entezari, sagun, keskar, dauphin, saxe, choromanska, ghorbani
from hessian_tools.gallery._entry import Entry, Report, ReportExists, Row

__all__ = ["Entry", "Report", "ReportExists", "Row", "ENTRIES", "entries", "get"]

ENTRIES: tuple[Entry, ...] = (
    cohen.ENTRY,
    li.ENTRY,
    entezari.ENTRY,
    sagun.ENTRY,
    keskar.ENTRY,
    dauphin.ENTRY,
    saxe.ENTRY,
    choromanska.ENTRY,
    ghorbani.ENTRY,
)
"""Every entry, in the gallery's order (that of their notebooks)."""


def entries() -> dict[str, Entry]:
    """The entries by name, in the gallery's order."""
    return {e.name: e for e in ENTRIES}


def get(name: str) -> Entry:
    """The entry called ``name``.

    Raises:
      ValueError: no entry has that name (the message lists those that exist).
    """
    found = entries()
    if name not in found:
        raise ValueError(f"no gallery entry is called {name!r}; the entries are: "
                         f"{', '.join(found) or '(none)'}.")
    return found[name]
