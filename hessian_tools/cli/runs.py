"""Analysing many points (checkpoints) of one architecture, paying compilation once.

:func:`analyze` computes a dictionary of numbers for one point. :func:`run_checkpoints`
restores each checkpoint into the objective (``checkpoints.restore``: parameters and model
state; the compiled operator and solver steps are reused), analyses it and writes one JSON
per checkpoint under ``checkpoints/`` of the output folder, atomically. A stored result is
reused only when it was computed from the same checkpoint (resolved path, size, modification
time and a hash of its bytes) with the same settings; otherwise it is recomputed (the same
path with new content) or reported (another checkpoint of the same name), never silently
taken for this one.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from hessian_tools import tree
from hessian_tools._checks import NonFiniteLoss, check_finite_loss
from hessian_tools._progress import progress_bar
from hessian_tools.checkpoints import CheckpointError, restore, step_of
from hessian_tools.cli._common import UserError
from hessian_tools.files import write_json
from hessian_tools.linalg.eigsolve import default_krylov_dim
from hessian_tools.objective import Objective
from hessian_tools.operators import empirical_fisher, gauss_newton, hessian, value_and_grad
from hessian_tools.analysis import density, eigenvalues, negative_count, trace

__all__ = ["AnalysisConfig", "BatchProgress", "CheckpointResult", "OPERATORS", "analyze",
           "planned_matvecs", "run_checkpoints", "stored_result", "checkpoint_identity",
           "result_names", "OutputLock", "AnalysisError"]

OPERATORS = {"hessian": hessian, "ggn": gauss_newton, "fisher": empirical_fisher}


class AnalysisError(ValueError):
    """A point that cannot be analysed (a non-finite loss, a random loss): says why."""


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """What to compute at each point, and what the point is (dtype, mode, data): a stored
    result computed with any other setting is not taken for this one."""

    top: int = 5
    bottom: int = 5
    tol: float | None = None
    density: bool = False
    trace: bool = False
    seed: int = 0
    num_probes: int = 10
    num_steps: int = 80
    trace_matvecs: int = 60
    precision: str | None = "highest"
    operator: str = "hessian"
    layers: tuple = ()
    dtype: str = "float32"
    bn_mode: str | None = None
    num_examples: int | None = None
    check_determinism: bool = True

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "layers": list(self.layers)}


def _ends(config: AnalysisConfig) -> list:
    """The ``(which, k)`` eigensolver calls: one ``"both"`` call when the top and bottom
    counts agree, else one call per requested end."""
    if config.top and config.bottom and config.top == config.bottom:
        return [("both", config.top)]
    return [(w, k) for w, k in (("largest", config.top), ("smallest", config.bottom)) if k]


def planned_matvecs(config: AnalysisConfig) -> int:
    """A first guess of the matvecs :func:`analyze` spends (progress bars; refined as runs
    finish). Lanczos usually converges within about two bases per end."""
    plan = sum(2 * default_krylov_dim(k, which) for which, k in _ends(config))
    plan *= 1 + len(config.layers)
    plan += config.trace_matvecs if config.trace else 0
    plan += config.num_probes * config.num_steps if config.density else 0
    return plan + (2 if config.check_determinism else 0)


class BatchProgress:
    """Two progress bars for a batch run, both in matvecs: the current checkpoint and overall.

    The plan for a checkpoint starts at :func:`planned_matvecs` and becomes the matvec count
    of the last checkpoint analysed, so the overall ETA sharpens as the run goes.
    """

    def __init__(self, num_checkpoints: int, config: AnalysisConfig):
        self._plan = planned_matvecs(config)
        self._left = num_checkpoints
        self._done = 0
        self.overall = progress_bar(self._plan * num_checkpoints, "all checkpoints")
        self.current = None

    def start(self, name: str):
        """Open the bar of one checkpoint; returns the observer for ``H.observe``."""
        self.current = progress_bar(self._plan, name[:30], position=1, leave=False)

        def observe(n):
            if n > self.current.total:
                self.current.total = n
            self.current.n = n
            self.current.refresh()
            self.overall.n = self._done + n
            self.overall.refresh()
        return observe

    def write(self, line: str) -> None:
        """A line above the bars (not through them)."""
        self.overall.write(line, file=sys.stderr)

    def finish(self, matvecs: int | None) -> None:
        """Close the current checkpoint's bar; ``matvecs`` None for a skipped or failed one."""
        if self.current is not None:
            self.current.close()
            self.current = None
        self._left -= 1
        if matvecs:
            self._plan = matvecs
            self._done += matvecs
        self.overall.total = self._done + self._left * self._plan
        self.overall.n = self._done
        self.overall.refresh()

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
        self.overall.close()


# ---- one point -------------------------------------------------------------------------------

def _extremes(op, config, key, progress) -> list:
    out = []
    for i, (which, k) in enumerate(_ends(config)):
        eig = eigenvalues(op, k=min(k, op.dim // (2 if which == "both" else 1)), which=which,
                          key=jax.random.fold_in(key, i), tol=config.tol, progress=progress)
        out.append(eig.to_dict())
    return out


def _summarise_eigs(eigs: list, config) -> dict:
    values = np.concatenate([np.asarray(e["values"]) for e in eigs]) if eigs else np.array([])
    if not len(values):
        return {}
    return {"lambda_max": float(values.max()) if config.top else None,
            "lambda_min": float(values.min()) if config.bottom else None,
            "converged": all(e["status"] == "converged" for e in eigs)}


def analyze(obj: Objective, config: AnalysisConfig, *, progress: bool = False,
            on_matvec: Callable[[int], None] | None = None) -> dict:
    """Loss, gradient norm, extreme eigenvalues (and optionally per-layer spectra, trace,
    density and the negative fraction) at one point.

    Cost: one gradient pass, 2 products for the determinism check, the Lanczos products
    (see ``ht.eigenvalues``) once for the whole model and once per entry of
    ``config.layers``, plus ``trace_matvecs`` for the trace and ``num_probes x num_steps``
    for the density. The negative fraction counts eigenvalues below ``-tau`` with ``tau``
    the library's one default (``ht.default_threshold``: 1% of max|lambda|), recorded in
    ``negative_count``. ``on_matvec(n)`` is called with the running matvec count.

    Raises:
      AnalysisError: a non-finite loss, or a loss whose products are not deterministic.
    """
    start = time.perf_counter()
    key = jax.random.key(config.seed)
    H = OPERATORS[config.operator](obj)
    if on_matvec is not None:
        H.observe(on_matvec)
        progress = False
    loss, grad = value_and_grad(obj)
    try:
        check_finite_loss(loss)
    except NonFiniteLoss as err:
        raise AnalysisError(str(err)) from None
    if config.check_determinism:
        try:
            H.check_determinism(jax.random.fold_in(key, 98))
        except ValueError as err:
            raise AnalysisError(str(err)) from None
    out = {"loss": float(loss), "grad_norm": float(tree.norm(grad)), "analysed": {
        **obj.describe(), "operator": config.operator}, "seed": config.seed}
    out["eigenvalues"] = _extremes(H, config, key, progress)
    out.update(_summarise_eigs(out["eigenvalues"], config))
    if config.layers:
        out["layers"] = _layers(obj, config, jax.random.fold_in(key, 77), H)
    _optional_estimates(H, config, jax.random.fold_in(key, 99), out)
    out["num_matvecs"] = H.num_matvecs
    out["wall_time"] = time.perf_counter() - start
    return out


def _layers(obj, config, key, H) -> dict:
    """One spectrum per parameter block (``Objective.restrict``), products counted on ``H``."""
    rows = {}
    for i, path in enumerate(config.layers):
        try:
            sub = obj.restrict(path)
        except (ValueError, TypeError) as err:
            raise UserError(f"--layers {path}: {err}") from None
        op = OPERATORS[config.operator](sub)
        op.observe(lambda n, base=H.num_matvecs: setattr(H, "num_matvecs", base + n))
        eigs = _extremes(op, config, jax.random.fold_in(key, i), False)
        rows[path] = {"num_params": sub.num_params, "eigenvalues": eigs,
                      **_summarise_eigs(eigs, config)}
    return rows


def _optional_estimates(H, config, key, out) -> None:
    if config.trace:
        out["trace"] = trace(H, method="hutch++", num_matvecs=config.trace_matvecs,
                             key=jax.random.fold_in(key, 1)).to_dict()
    if config.density:
        dens = density(H, num_probes=config.num_probes, num_steps=config.num_steps,
                       key=jax.random.fold_in(key, 2))
        out["density"] = dens.to_dict()
        neg = negative_count(dens)          # no new matvecs: read off the density
        out["negative_count"] = neg.to_dict()
        out["negative_fraction"] = neg.fraction
        out["tau"] = neg.tau


# ---- checkpoint identity and stored results ------------------------------------------------

def _file_digest(path: Path, digest) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def checkpoint_identity(path) -> dict:
    """What ties a result to a checkpoint: resolved path, size, modification time and the
    SHA-256 of its bytes (every file of an orbax folder, in name order)."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(path) if f != path else f.name).encode())
        _file_digest(f, digest)
    stats = [f.stat() for f in files]
    return {"path": str(path), "size": int(sum(s.st_size for s in stats)),
            "mtime": max((s.st_mtime for s in stats), default=0.0),
            "sha256": digest.hexdigest()}


def stored_result(target: Path, config: AnalysisConfig, identity: dict | None = None
                  ) -> tuple[dict | None, str | None, bool]:
    """``(result, None, False)`` for a stored result of this checkpoint and settings, else
    ``(None, why, recompute)``: ``recompute`` when the same checkpoint path changed (its
    stored result is stale and may be replaced); otherwise the stored file belongs to
    something else and is kept."""
    try:
        stored = json.loads(Path(target).read_text())
        if not isinstance(stored, dict) or not isinstance(stored.get("result"), dict):
            raise ValueError("not a result")
        result = stored["result"]
    except (OSError, ValueError, UnicodeDecodeError):
        return None, (f"existing result {target} is unreadable (not a result file); pass "
                      "--overwrite to replace it, or choose another --out"), False
    differ = _config_differences(stored.get("config"), config)
    if differ:
        return None, (f"existing result {target} was computed with different settings "
                      f"({differ}); pass --overwrite to recompute it, or choose another "
                      "--out"), False
    if identity is not None:
        old = stored.get("identity") or {}
        if old.get("path") != identity["path"]:
            return None, (f"existing result {target} belongs to another checkpoint "
                          f"({old.get('path')}); pass --overwrite to replace it, or choose "
                          "another --out"), False
        if any(old.get(k) != identity[k] for k in ("size", "sha256")):
            return None, f"the checkpoint changed since {target} was computed", True
    return result, None, False


def _config_differences(stored: dict | None, config: AnalysisConfig) -> str:
    """``"top: 5 -> 10, ..."`` for settings that differ from a stored result's ('' if none)."""
    if not isinstance(stored, dict):
        return "no settings recorded"
    now = config.to_dict()
    return ", ".join(f"{k}: {stored.get(k)!r} -> {v!r}" for k, v in now.items()
                     if stored.get(k) != v)


# ---- many checkpoints ------------------------------------------------------------------------

@dataclasses.dataclass
class CheckpointResult:
    path: str
    name: str
    status: str                 # "done", "skipped" (stored result reused) or "failed"
    result: dict | None = None
    error: str | None = None
    output: str | None = None


def result_names(paths: list[Path]) -> list[str]:
    """One distinct file-name stem per checkpoint: its name, with the parent folder's name in
    front where two checkpoints share a name, and a number as a last resort."""
    stems = [Path(p).stem if Path(p).is_file() else Path(p).name for p in paths]
    names, taken = [], set()
    for p, stem in zip(paths, stems):
        name = stem if stems.count(stem) == 1 else f"{Path(p).resolve().parent.name}-{stem}"
        base, i = name, 1
        while name in taken:
            i += 1
            name = f"{base}-{i}"
        taken.add(name)
        names.append(name)
    return names


def run_checkpoints(obj: Objective, paths: list[Path], out: Path, config: AnalysisConfig, *,
                    overwrite: bool = False, progress: bool = False,
                    on_done: Callable[[CheckpointResult], None] | None = None,
                    extra: dict | None = None, write: bool = True) -> list[CheckpointResult]:
    """Analyse each checkpoint; one bad checkpoint is recorded and the rest still run.

    Results go to ``out/checkpoints/<name>.json``, a folder of their own, so no checkpoint's
    name can collide with the run's own files. ``progress=True`` draws two bars on stderr.
    ``write=False`` (the processes after the first under ``jax.distributed``) computes and
    reuses stored results alike but writes nothing.
    """
    bars = BatchProgress(len(paths), config) if progress else None
    folder = out / "checkpoints"
    try:
        results = []
        for path, name in zip(paths, result_names(paths)):
            rec = _one(obj, Path(path), name, folder / f"{name}.json", config, overwrite, bars,
                       extra, write)
            if bars is not None:
                bars.finish(rec.result.get("num_matvecs") if rec.status == "done" else None)
            results.append(rec)
            if on_done is not None:
                on_done(rec)
        return results
    finally:
        if bars is not None:
            bars.close()


def _one(obj, path, name, target, config, overwrite, bars, extra, write) -> CheckpointResult:
    rec = CheckpointResult(str(path), name, "done", output=str(target))
    try:
        identity = checkpoint_identity(path)
    except OSError as err:
        rec.status, rec.error = "failed", f"{path}: cannot read it ({err.strerror or err})"
        return rec
    if target.exists() and not overwrite:
        rec.result, rec.error, recompute = stored_result(target, config, identity)
        if rec.error is None:
            rec.status = "skipped"
            return rec
        if not recompute:
            rec.status = "failed"
            return rec
        rec.error = None
    try:
        restored = restore(obj, path)
        observer = bars.start(name) if bars is not None else None
        rec.result = analyze(restored.objective, config, on_matvec=observer)
        rec.result["restored"] = {"params_at": restored.params_at,
                                  "state_at": restored.state_at, "notes": list(restored.notes)}
        if write:
            write_json(target, {"checkpoint": str(path), "identity": identity,
                                "step": step_of(path), "config": config.to_dict(),
                                "result": rec.result, **(extra or {})})
    except (CheckpointError, AnalysisError, UserError) as err:
        rec.status, rec.error = "failed", str(err)
    except OSError as err:              # writing the result: keep what was written before
        rec.status, rec.error = "failed", f"cannot write {target} ({err.strerror or err})"
    except Exception as err:  # noqa: BLE001  (report, keep going with the others)
        rec.status, rec.error = "failed", f"{type(err).__name__}: {err}"
        traceback.print_exc(file=sys.stderr)
    return rec


class OutputLock:
    """An exclusive lock on an output folder, so that two runs never write it at once.

    Raises:
      UserError: another process holds it (its pid is named).
    """

    def __init__(self, out: Path):
        self.path = Path(out) / ".hessian_tools.lock"
        self._fd = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.path.parent} is being written by another hessian-tools run "
                            f"(pid {holder}): wait for it to finish, or choose another --out."
                            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        return False
