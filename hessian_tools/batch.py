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
import jax.numpy as jnp
import numpy as np

from hessian_tools import tree
from hessian_tools.checkpoints import CheckpointError, load_checkpoint, match_params, step_of
from hessian_tools.objective import Objective
from hessian_tools.operators import hessian, value_and_grad
from hessian_tools.report import write_json
from hessian_tools.spectrum import eigenvalues

__all__ = ["AnalysisConfig", "analyze", "load_model_target", "run_checkpoints", "CheckpointResult"]


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


def analyze(obj: Objective, config: AnalysisConfig, *, progress: bool = False) -> dict:
    """Loss, gradient norm, extreme eigenvalues (and optionally trace, density) at one point.

    Cost: one gradient pass, the Lanczos matvecs (see ``ht.eigenvalues``), plus
    ``trace_matvecs`` for the trace and ``num_probes x num_steps`` for the density.
    """
    start = time.perf_counter()
    key = jax.random.key(config.seed)
    H = hessian(obj)
    loss, grad = value_and_grad(obj)
    out = {"loss": float(loss), "grad_norm": float(tree.norm(grad)),
           "num_params": obj.num_params, "num_examples": obj.num_examples,
           "dtype": str(H.dtype), "seed": config.seed}
    ends = []
    if config.top and config.bottom and config.top == config.bottom:
        ends = [("both", config.top)]
    else:
        ends = [(w, k) for w, k in (("largest", config.top), ("smallest", config.bottom)) if k]
    for i, (which, k) in enumerate(ends):
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


# ---- the user's model ------------------------------------------------------------------

class ModelTargetError(ValueError):
    """``--model`` names something that cannot be imported or called."""


def load_model_target(spec: str, kwargs: dict | None = None) -> Objective:
    """Import ``module:function`` (or ``path/to/file.py:function``) and build the Objective.

    The function returns an :class:`Objective`, or ``(model, loss_fn, data)`` for a flax NNX
    model (passed to ``Objective.from_nnx``).
    """
    if ":" not in spec:
        raise ModelTargetError(f"--model {spec!r} must look like 'package.module:function' or "
                               "'path/to/file.py:function'.")
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.exists():
                raise ModelTargetError(f"--model: file {path} does not exist.")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[path.stem] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ModelTargetError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ModelTargetError(f"--model: cannot import {module_name!r} ({type(err).__name__}: "
                               f"{err}). Is it on PYTHONPATH?") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ModelTargetError(f"--model: {module_name!r} has no callable {attr!r}.")
    result = fn(**(kwargs or {}))
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
    """Analyse each checkpoint; one bad checkpoint is recorded and the rest still run."""
    results, taken = [], set()
    for path in paths:
        name = _result_name(Path(path), taken)
        target = out / f"{name}.json"
        rec = CheckpointResult(str(path), name, "done", output=str(target))
        if target.exists() and not overwrite:
            try:
                rec.result = json.loads(target.read_text())["result"]
                rec.status = "skipped"
            except (ValueError, KeyError):
                rec.status, rec.error = "failed", (f"existing result {target} is unreadable; "
                                                   "pass --overwrite to recompute it")
        else:
            try:
                params = match_params(obj.params, load_checkpoint(path), source=str(path))
                rec.result = analyze(obj.with_params(params), config, progress=progress)
                write_json(target, {"checkpoint": str(path), "step": step_of(path),
                                    "config": dataclasses.asdict(config), "result": rec.result,
                                    **(extra or {})})
            except CheckpointError as err:
                rec.status, rec.error = "failed", str(err)
            except Exception as err:  # noqa: BLE001  (report, keep going with the others)
                rec.status = "failed"
                rec.error = f"{type(err).__name__}: {err}"
                traceback.print_exc(file=sys.stderr)
        results.append(rec)
        if on_done is not None:
            on_done(rec)
    return results


def cast_objective(obj: Objective, dtype) -> Objective:
    """The objective with floating parameters and data cast to ``dtype``."""
    cast = lambda a: (jnp.asarray(a).astype(dtype)
                      if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a)
    data = obj.data if obj.streaming else jax.tree.map(cast, obj.data)
    return Objective(obj.loss, jax.tree.map(cast, obj.params), data, predict=obj.predict,
                     output_loss=obj.output_loss)
