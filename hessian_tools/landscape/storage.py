"""A surface file that fills as the surface is computed, so an interrupted run resumes.

**Format: ``.npz``, rewritten atomically after every chunk.** The file holds the grid axes,
every value computed so far (NaN where missing), a mask of the points done, and the
provenance as JSON (the directions' kind, seed, normalisation and fingerprints, the
origin's and the data's fingerprints, the metric, the dtype). Why not HDF5 (Li et al.'s
choice) or zarr: both would be a new dependency; an HDF5 file interrupted mid-write can
be left unreadable, and zarr is a directory of chunk files. A surface is small (a 51x51
grid with a metric is 42 kB), so rewriting the whole file after each chunk of points costs
well under a millisecond per chunk, against seconds of evaluation, and the write is a
rename of a complete temporary file (:func:`hessian_tools.files.atomic_write_bytes`):
the file on disk is always a complete, consistent surface. NumPy reads it without pickle.
A grid of millions of points would make each rewrite cost tens of milliseconds; chunks
then should be larger.

A stored file made with other directions, another grid, another checkpoint, other data,
metric or dtype is refused with the differences listed, never mixed in.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from hessian_tools.files import atomic_write_bytes

__all__ = ["SurfaceStore", "read_surface_file"]

_FORMAT = "hessian_tools.loss_surface/1"


def _summary(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


class SurfaceStore:
    """The values of a surface in progress, kept in an ``.npz`` file at ``path``.

    Attributes:
      values: ``(m, *shape)`` float64, NaN where not computed (``m``: loss, metric).
      done: ``shape`` bool, the points computed.
      origin: ``(m,)`` the values at the origin; ``origin_done``: whether computed.
      num_reused: points (origin included) that were already in the file when opened.
    """

    def __init__(self, path, *, axes, meta: dict, num_values: int):
        self.path = None if path is None else Path(path)
        self.axes = [np.asarray(a, np.float64) for a in axes]
        self.meta = json.loads(json.dumps({"format": _FORMAT, **meta}))   # as stored
        shape = tuple(len(a) for a in self.axes)
        self.values = np.full((num_values,) + shape, np.nan)
        self.done = np.zeros(shape, bool)
        self.origin = np.full(num_values, np.nan)
        self.origin_done = False
        if self.path is not None and self.path.exists():
            self._load()
        self.num_reused = int(self.done.sum()) + int(self.origin_done)

    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as f:
                stored = json.loads(str(f["__meta__"]))
                axes = [f[f"axis{i}"] for i in range(len(stored.get("grid_shape", [])))]
                arrays = {k: f[k] for k in ("values", "done", "origin", "origin_done")}
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{self.path} is not a readable surface file ({err}). Pass another "
                             "path, or delete it to start over.") from err
        diffs = [f"{k}: stored {_summary(stored.get(k))}, now {_summary(v)}"
                 for k, v in self.meta.items() if stored.get(k) != v]
        if len(axes) != len(self.axes) or any(
                a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(axes, self.axes)):
            diffs.append("grid: the stored axes differ from the grid given")
        if diffs:
            raise ValueError(f"The surface file {self.path} was made with other settings, so its "
                             "values cannot be reused for this surface:\n  " + "\n  ".join(diffs)
                             + "\nPass another path, or delete the file to recompute.")
        if arrays["values"].shape != self.values.shape:
            raise ValueError(f"The surface file {self.path} holds values of shape "
                             f"{arrays['values'].shape}, expected {self.values.shape}.")
        self.values, self.done = arrays["values"].astype(np.float64), arrays["done"].astype(bool)
        self.origin = arrays["origin"].astype(np.float64)
        self.origin_done = bool(arrays["origin_done"])

    def missing(self) -> np.ndarray:
        """Flat (C-order) indices of the grid points not yet computed."""
        return np.flatnonzero(~self.done.reshape(-1))

    def update(self, flat_indices, values, *, origin=None) -> None:
        """Record ``values`` (``(n, m)``) at ``flat_indices``, and the origin's; then write."""
        flat_values = self.values.reshape(self.values.shape[0], -1)
        flat_values[:, flat_indices] = np.asarray(values, np.float64).T
        self.done.reshape(-1)[flat_indices] = True
        if origin is not None:
            self.origin, self.origin_done = np.asarray(origin, np.float64), True
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        arrays = {f"axis{i}": a for i, a in enumerate(self.axes)}
        meta = {**self.meta, "grid_shape": list(self.done.shape)}
        arrays.update(values=self.values, done=self.done, origin=self.origin,
                      origin_done=np.asarray(self.origin_done),
                      __meta__=np.asarray(json.dumps(meta)))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self.path, buf.getvalue())


def read_surface_file(path) -> dict:
    """The raw contents of a surface file: ``axes``, ``values``, ``done``, ``origin``,
    ``meta`` (for inspecting a partial run; :func:`loss_surface` with ``path=`` resumes it)."""
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["__meta__"]))
        return {"axes": [f[f"axis{i}"] for i in range(len(meta["grid_shape"]))],
                "values": f["values"], "done": f["done"], "origin": f["origin"],
                "origin_done": bool(f["origin_done"]), "meta": meta}
