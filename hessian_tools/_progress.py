"""Progress bars on stderr: one factory, so every bar shows on every terminal.

tqdm sizes its bars from the terminal; a pseudo-terminal that reports a size of 0x0 (as
``script``, CI runners and some multiplexers do) made it hide every bar (``nrows = -1``).
The size here falls back to 80x24, as ``shutil.get_terminal_size`` does.
"""

from __future__ import annotations

import shutil
import sys

from tqdm import tqdm

__all__ = ["progress_bar", "interactive"]


def interactive() -> bool:
    """Whether stderr is a terminal (bars are drawn only then)."""
    return sys.stderr.isatty()


def progress_bar(total: int, desc: str, *, unit: str = "matvec", position: int = 0,
                 leave: bool = True) -> tqdm:
    """A tqdm bar on stderr, at most 100 columns wide, that shows on any terminal."""
    size = shutil.get_terminal_size()
    return tqdm(total=total, desc=desc, unit=unit, position=position, leave=leave,
                file=sys.stderr, ncols=min(size.columns, 100), nrows=max(size.lines, 2),
                dynamic_ncols=False)
