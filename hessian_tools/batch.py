"""Analysing many points (checkpoints) of one architecture, paying compilation once.

``analyze(obj, ...)`` computes a dictionary of numbers for one point; ``run_checkpoints`` loads
each checkpoint, swaps its parameters into the objective (``obj.with_params``: the compiled
operator and solver steps are reused), analyses it and writes one JSON per checkpoint,
atomically, skipping checkpoints whose results exist (resume semantics).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from hessian_tools import tree
from hessian_tools.checkpoints import CheckpointError, restore, step_of
from hessian_tools.objective import Objective
from hessian_tools.operators import hessian, value_and_grad
from hessian_tools.report import write_json
from hessian_tools.spectrum import eigenvalues

__all__ = ["AnalysisConfig", "BatchProgress", "analyze", "planned_matvecs", "import_target", "parse_model_kwargs", "stored_result", "load_model_target", "run_checkpoints", "CheckpointResult"]


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """What to compute at each point."""

    top: int = 5
    bottom: int = 5
    tol: float | None = None
    density: bool = False
    trace: bool = False
    seed: int = 0
    num_probes: int = 10
    num_steps: int = 80
    trace_matvecs: int = 60
    precision: str | None = "highest"    # the objective's matmul precision (recorded)


def _ends(config: AnalysisConfig) -> list:
    """The ``(which, k)`` eigensolver calls for ``config``: one ``"both"`` call when the top and
    bottom counts agree, else one call per requested end."""
    if config.top and config.bottom and config.top == config.bottom:
        return [("both", config.top)]
    return [(w, k) for w, k in (("largest", config.top), ("smallest", config.bottom)) if k]


def planned_matvecs(config: AnalysisConfig) -> int:
    """A first guess of the matvecs ``analyze`` spends (progress bars; refined as runs finish).

    Lanczos usually converges within about two bases of ``default_krylov_dim`` rows per end.
    """
    from hessian_tools.linalg.lanczos import default_krylov_dim
    plan = sum(2 * default_krylov_dim(k, which) for which, k in _ends(config))
    plan += config.trace_matvecs if config.trace else 0
    plan += config.num_probes * config.num_steps if config.density else 0
    return plan


class BatchProgress:
    """Two progress bars for a batch run, both in matvecs: the current checkpoint and overall.

    The plan for a checkpoint starts at :func:`planned_matvecs` and becomes the matvec count
    of the last checkpoint analysed, so the overall ETA sharpens as the run goes. Writes to
    stderr; create it only when stderr is a terminal.
    """

    def __init__(self, num_checkpoints: int, config: AnalysisConfig):
        from tqdm.auto import tqdm
        self._plan = planned_matvecs(config)
        self._left = num_checkpoints
        self._done = 0
        self.overall = tqdm(total=self._plan * num_checkpoints, desc="all checkpoints",
                            unit="matvec", position=0)
        self.current = None

    def start(self, name: str):
        """Open the bar of one checkpoint; returns the observer for ``H.observe``."""
        from tqdm.auto import tqdm
        self.current = tqdm(total=self._plan, desc=name[:30], unit="matvec", position=1,
                            leave=False)

        def observe(n):
            if n > self.current.total:
                self.current.total = n
            self.current.n = n
            self.current.refresh()
            self.overall.n = self._done + n
            self.overall.refresh()
        return observe

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


def analyze(obj: Objective, config: AnalysisConfig, *, progress: bool = False,
            on_matvec: Callable[[int], None] | None = None) -> dict:
    """Loss, gradient norm, extreme eigenvalues (and optionally trace, density) at one point.

    Cost: one gradient pass, the Lanczos matvecs (see ``ht.eigenvalues``), plus
    ``trace_matvecs`` for the trace and ``num_probes x num_steps`` for the density (which
    also gives ``negative_fraction``: eigenvalues below ``-tau``, ``ht.negative_count``'s
    default threshold, with its interval in ``negative_count``). ``on_matvec(n)`` is called with the running matvec count (then no per-solver bars are
    drawn: ``progress`` is for interactive single runs).
    """
    start = time.perf_counter()
    key = jax.random.key(config.seed)
    H = hessian(obj)
    if on_matvec is not None:
        H.observe(on_matvec)
        progress = False
    loss, grad = value_and_grad(obj)
    out = {"loss": float(loss), "grad_norm": float(tree.norm(grad)),
           "num_params": obj.num_params, "num_examples": obj.num_examples,
           "dtype": str(H.dtype), "precision": obj.precision, "seed": config.seed}
    for i, (which, k) in enumerate(_ends(config)):
        eig = eigenvalues(H, k=min(k, H.dim // (2 if which == "both" else 1)), which=which,
                          key=jax.random.fold_in(key, i), tol=config.tol, progress=progress)
        out.setdefault("eigenvalues", []).append(eig.to_dict())
    eigs = out.get("eigenvalues", [])
    values = np.concatenate([np.asarray(e["values"]) for e in eigs]) if eigs else np.array([])
    if len(values):
        out["lambda_max"] = float(values.max()) if config.top else None
        out["lambda_min"] = float(values.min()) if config.bottom else None
        out["converged"] = all(e["converged"] for e in eigs)
    _optional_estimates(H, config, jax.random.fold_in(key, 99), out)
    out["num_matvecs"] = H.num_matvecs
    out["wall_time"] = time.perf_counter() - start
    return out


def _optional_estimates(H, config, key, out) -> None:
    import hessian_tools as ht
    if config.trace:
        if not hasattr(ht, "trace"):
            out["trace"] = {"error": "trace estimation is not available in this version"}
        else:
            out["trace"] = ht.trace(H, method="hutch++", num_matvecs=config.trace_matvecs,
                                    key=jax.random.fold_in(key, 1)).to_dict()
    if config.density:
        if not hasattr(ht, "density"):
            out["density"] = {"error": "density estimation is not available in this version"}
        else:
            dens = ht.density(H, num_probes=config.num_probes, num_steps=config.num_steps,
                              key=jax.random.fold_in(key, 2))
            out["density"] = dens.to_dict()
            neg = ht.negative_count(dens)          # no new matvecs: read off the density
            out["negative_count"] = neg.to_dict()
            out["negative_fraction"] = neg.fraction


# ---- the user's model ------------------------------------------------------------------

class ModelTargetError(ValueError):
    """``--model`` names something that cannot be imported or called."""


def import_target(spec: str, kwargs: dict | None = None, *, flag: str = "--model"):
    """Import ``module:function`` (or ``path/to/file.py:function``), call it, return the result.

    Raises:
      ModelTargetError: a malformed spec, a module that cannot be imported, a missing or
        non-callable function (the messages say how to fix each).
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ModelTargetError(f"{flag} {spec!r} must look like module:function, e.g. "
                               "my_pkg.models:make_objective or path/to/models.py:make_objective.")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ModelTargetError(f"{flag}: file {path} does not exist.")
            folder = str(path.resolve().parent)      # so that it can import its siblings
            if folder not in sys.path:
                sys.path.insert(0, folder)
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[path.stem] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ModelTargetError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ModelTargetError(f"{flag}: cannot import {module_name!r} ({type(err).__name__}: "
                               f"{err}). Run from the folder that contains it, add it to "
                               "PYTHONPATH, or pass a path like models.py:make_objective.") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        public = sorted(n for n in vars(module) if not n.startswith("_"))[:10]
        raise ModelTargetError(f"{flag}: {module_name!r} has no callable {attr!r} (it has "
                               f"{public}).")
    return fn(**(kwargs or {}))


def parse_model_kwargs(text: str | None) -> dict:
    """``--model-kwargs``: a JSON object of keyword arguments (``{}`` when empty).

    Raises:
      ModelTargetError: not valid JSON, or JSON that is not an object.
    """
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except ValueError as err:
        raise ModelTargetError(f"--model-kwargs is not valid JSON ({err}).") from None
    if not isinstance(kwargs, dict):
        raise ModelTargetError("--model-kwargs must be a JSON object, e.g. '{\"width\": 64}'.")
    return kwargs


def load_model_target(spec: str, kwargs: dict | None = None) -> Objective:
    """Import ``module:function`` (or ``path/to/file.py:function``) and build the Objective.

    The function returns an :class:`Objective`, or ``(model, loss_fn, data)`` for a flax NNX
    model (passed to ``Objective.from_nnx``).
    """
    result = import_target(spec, kwargs)
    if isinstance(result, Objective):
        return result
    if isinstance(result, tuple) and len(result) == 3:
        return Objective.from_nnx(*result)
    raise ModelTargetError(f"--model: {spec} returned {type(result).__name__}; it must return a "
                           "hessian_tools.Objective or a (model, loss_fn, data) tuple.")


# ---- many checkpoints ------------------------------------------------------------------

@dataclasses.dataclass
class CheckpointResult:
    path: str
    name: str
    status: str                 # "done", "skipped" (results existed) or "failed"
    result: dict | None = None
    error: str | None = None
    output: str | None = None


def _result_name(path: Path, taken: set) -> str:
    name = path.stem if path.is_file() else path.name
    base, i = name, 1
    while name in taken:
        i += 1
        name = f"{base}-{i}"
    taken.add(name)
    return name


def run_checkpoints(obj: Objective, paths: list[Path], out: Path, config: AnalysisConfig, *,
                    overwrite: bool = False, progress: bool = False,
                    on_done: Callable[[CheckpointResult], None] | None = None,
                    extra: dict | None = None) -> list[CheckpointResult]:
    """Analyse each checkpoint; one bad checkpoint is recorded and the rest still run.

    ``progress=True`` draws two bars on stderr (this checkpoint and overall, in matvecs done
    of planned, with an ETA): see :class:`BatchProgress`.
    """
    bars = BatchProgress(len(paths), config) if progress else None
    try:
        return _run_checkpoints(obj, paths, out, config, overwrite, bars, on_done, extra)
    finally:
        if bars is not None:
            bars.close()


def _run_checkpoints(obj, paths, out, config, overwrite, bars, on_done, extra):
    results, taken = [], set()
    for path in paths:
        name = _result_name(Path(path), taken)
        target = out / f"{name}.json"
        rec = CheckpointResult(str(path), name, "done", output=str(target))
        if target.exists() and not overwrite:
            rec.result, rec.error = stored_result(target, config)
            rec.status = "skipped" if rec.error is None else "failed"
        else:
            try:
                restored = restore(obj, path)
                observer = bars.start(name) if bars is not None else None
                rec.result = analyze(restored.objective, config, on_matvec=observer)
                rec.result["restored"] = {"params_at": restored.params_at,
                                          "state_at": restored.state_at,
                                          "notes": list(restored.notes)}
                write_json(target, {"checkpoint": str(path), "step": step_of(path),
                                    "config": dataclasses.asdict(config), "result": rec.result,
                                    **(extra or {})})
            except CheckpointError as err:
                rec.status, rec.error = "failed", str(err)
            except Exception as err:  # noqa: BLE001  (report, keep going with the others)
                rec.status = "failed"
                rec.error = f"{type(err).__name__}: {err}"
                traceback.print_exc(file=sys.stderr)
        if bars is not None:
            bars.finish(rec.result.get("num_matvecs") if rec.status == "done" else None)
        results.append(rec)
        if on_done is not None:
            on_done(rec)
    return results


def stored_result(target: Path, config: AnalysisConfig) -> tuple[dict | None, str | None]:
    """``(result, None)`` from an existing result file computed with ``config``, else
    ``(None, why)``: the file is unreadable, or its settings differ (never reused then)."""
    try:
        stored = json.loads(Path(target).read_text())
        result = stored["result"]
    except (ValueError, KeyError):
        return None, f"existing result {target} is unreadable; pass --overwrite to recompute it"
    differ = _config_differences(stored.get("config"), config)
    if differ:
        return None, (f"existing result {target} was computed with different settings "
                      f"({differ}); pass --overwrite to recompute it, or choose another --out")
    return result, None


def _config_differences(stored: dict | None, config: AnalysisConfig) -> str:
    """``"top: 5 -> 10, ..."`` for settings that differ from a stored result's ('' if none)."""
    if not isinstance(stored, dict):
        return ""
    now = dataclasses.asdict(config)
    return ", ".join(f"{k}: {stored[k]!r} -> {v!r}" for k, v in now.items()
                     if k in stored and stored[k] != v)
