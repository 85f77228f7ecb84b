"""Sharpness logs: append-only JSON lines, written record by record (flushed and fsynced),
read back with a truncated last line (a crash while writing) repaired.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path


from hessian_tools.results import SharpnessLog, jsonable

__all__ = ['read_sharpness_log']


def read_sharpness_log(path, *, strict: bool = True) -> SharpnessLog:
    """Read a JSON-lines sharpness log written by :class:`SharpnessTracker`.

    A last line that is not valid JSON (a crash in the middle of a write) is skipped with a
    ``RuntimeWarning``; everything before it is returned.

    Args:
      path: the ``.jsonl`` file.
      strict: raise on an invalid line that is *not* the last (real corruption); with
        ``strict=False`` such lines are skipped with a warning too.

    Returns:
      A :class:`SharpnessLog`.

    Raises:
      FileNotFoundError: no such file.
      ValueError: an invalid line before the last one (with ``strict``).
    """
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    records, meta = [], []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            last = i == len(lines) - 1
            if last or not strict:
                what = "truncated last line" if last else f"invalid line {i + 1}"
                warnings.warn(f"{path}: skipped a {what} ({len(raw)} bytes; probably a crash "
                              "while writing).", RuntimeWarning, stacklevel=2)
                continue
            raise ValueError(f"{path}: line {i + 1} is not a valid JSON record ({err}); the "
                             "log is corrupted. Pass strict=False to skip such lines.") from err
        (meta if rec.get("type") == "meta" else records).append(rec)
    return SharpnessLog(records=tuple(records), meta=tuple(meta))


def _drop_partial_line(path: Path) -> None:
    """Cut a trailing partial record (no newline) left by a crash, with a warning."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
            f.write(b"\n")              # a complete record that only lacks its newline
            return
        except ValueError:
            pass
        f.truncate(cut)
    warnings.warn(f"{path}: removed a partial last record ({len(data) - cut} bytes) left by "
                  "an interrupted write before appending.", RuntimeWarning, stacklevel=3)


def _append_line(path: Path, record: dict, fsync: bool) -> None:
    line = json.dumps(jsonable(record), allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
