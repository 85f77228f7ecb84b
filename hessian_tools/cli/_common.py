"""What every subcommand shares: errors, flags, the user's model, output folders.

``--model`` means one thing everywhere: ``MODULE:FUNCTION`` (a dotted module, or a path
``path/to/file.py:FUNCTION`` whose folder is importable, so the file can import its
siblings). ``FUNCTION(**MODEL_KWARGS)`` returns one of

* a ``hessian_tools.Objective``;
* ``(model, loss_fn, data)`` for a flax NNX model: ``loss_fn(outputs, batch) -> mean loss``
  with ``outputs = model(batch[0])``, and ``data`` one batch ``(x, y)`` or a list of batches;
* ``(module, variables, loss_fn, data)`` or ``(module, variables, loss_fn, data,
  apply_kwargs)`` for a flax linen module.

The model's own weights are the point analysed unless checkpoints are given (then each
checkpoint's parameters and model state replace them).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import flax
import flax.linen
import jax
import jax.numpy as jnp
from flax import nnx

from hessian_tools import __version__
from hessian_tools.examples import digits
from hessian_tools.objective import BN_MODES, Objective

__all__ = ["UserError", "MODEL_HELP", "add_output_flags", "add_model_flags", "versions",
           "load_model", "objective_from_args", "import_target", "parse_model_kwargs",
           "speaker", "check_output_folder", "start_distributed", "writes_files", "positive_int", "nonnegative_int",
           "positive_float", "seed_value"]

MODEL_HELP = ("MODULE:FUNCTION or path/to/file.py:FUNCTION. FUNCTION(**MODEL_KWARGS) returns a "
              "hessian_tools.Objective, (nnx_model, loss_fn, data) or (linen_module, variables, "
              "loss_fn, data[, apply_kwargs]); loss_fn(outputs, batch) is the mean loss. The "
              "model's weights are the point analysed unless checkpoints are given.")


class UserError(Exception):
    """A mistake in the command line or the inputs: reported in one line, no traceback."""


def versions() -> dict:
    """Versions and backend, recorded with every result."""
    return {"hessian_tools": __version__, "jax": jax.__version__, "flax": flax.__version__,
            "backend": jax.default_backend()}


# ---- argument types: every numeric option is validated by argparse ---------------------------

def _number(kind, low, strict, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if kind is float and not (value == value and abs(value) != float("inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (value <= low) if strict else (value < low):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'>' if strict else '>='} {low}")
        return value
    parse.__name__ = what
    return parse


positive_int = _number(int, 0, True, "a positive integer")
nonnegative_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0.0, True, "a positive number")


def seed_value(text):
    """A PRNG seed: an integer in [0, 2**32)."""
    value = _number(int, 0, False, "an integer seed")(text)
    if value >= 2 ** 32:
        raise argparse.ArgumentTypeError(f"{text!r} must be below 2**32 (a 32-bit seed)")
    return value


# ---- flags -----------------------------------------------------------------------------------

def add_output_flags(p, *, out: str, overwrite: bool = True) -> None:
    """``--out``, ``--quiet``, ``--json``, ``--seed``, ``--no-compile-cache`` (and
    ``--overwrite``)."""
    p.add_argument("--out", default=out, help="output folder")
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="recompute and replace "
                       "existing results (default: keep them)")
    p.add_argument("--seed", type=seed_value, default=0, help="PRNG seed (start vectors, "
                   "probes, subsets)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--no-compile-cache", action="store_true", help="do not use JAX's "
                   "persistent compilation cache (~/.cache/hessian_tools/jax, or "
                   "$HESSIAN_TOOLS_CACHE/jax)")


def add_model_flags(p, *, example: str | None) -> None:
    """The model and what exactly is analysed: ``--model``, ``--model-kwargs``,
    ``--example``, ``--dtype``, ``--precision``, ``--bn-mode``, ``--num-examples``."""
    p.add_argument("--model", metavar="MODULE:FUNCTION", help=MODEL_HELP)
    p.add_argument("--model-kwargs", default="{}", metavar="JSON",
                   help="keyword arguments for --model, as a JSON object")
    p.add_argument("--example", choices=sorted(digits.CONFIGS), default=example,
                   help="a built-in digits model (trained briefly, cached); ignored with "
                   "--model")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="the dtype of the analysis: parameters, data, model state and the "
                   "model's computation are cast to it")
    p.add_argument("--precision", choices=["highest", "high", "default"], default=None,
                   help="float32 matrix-product precision (default 'highest'; 'default' is "
                   "JAX's, TF32 on NVIDIA GPUs)")
    p.add_argument("--bn-mode", choices=list(BN_MODES), default=None,
                   help="BatchNorm: 'eval' uses the running statistics (the trained model's "
                   "function), 'batch' the statistics of each batch (the training loss); "
                   "default eval")
    p.add_argument("--num-examples", type=positive_int, default=None,
                   help="analyse a fixed random subset of this many examples (seeded by "
                   "--seed; default: all)")


def speaker(args):
    """``print`` unless ``--quiet`` or ``--json``. A reader that goes away (``| head``) does
    not stop the run: its results are still written, the rest of the text is dropped."""
    if args.quiet or args.json:
        return lambda *a: None

    def say(*a):
        try:
            print(*a, flush=True)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())       # later prints go nowhere, quietly
    return say


# ---- the user's model ------------------------------------------------------------------------

def parse_model_kwargs(text: str | None) -> dict:
    """``--model-kwargs``: a JSON object of keyword arguments (``{}`` when empty)."""
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except ValueError as err:
        raise UserError(f"--model-kwargs is not valid JSON ({err}).") from None
    if not isinstance(kwargs, dict):
        raise UserError("--model-kwargs must be a JSON object, e.g. '{\"width\": 64}'.")
    return kwargs


def _import_module(module_name: str, flag: str):
    if not module_name.endswith(".py"):
        return importlib.import_module(module_name)
    path = Path(module_name)
    if not path.is_file():
        raise UserError(f"{flag}: file {path} does not exist.")
    folder = str(path.resolve().parent)          # so that the file can import its siblings
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def import_target(spec: str, kwargs: dict | None = None, *, flag: str = "--model"):
    """Import ``module:function`` (or ``path/to/file.py:function``), call it, return the result.

    Raises:
      UserError: a malformed spec, a module that cannot be imported, a missing or
        non-callable function, unknown keyword arguments, or a function that raises.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"{flag} {spec!r} must look like module:function, e.g. "
                        "my_pkg.models:make_model or path/to/models.py:make_model.")
    try:
        module = _import_module(module_name, flag)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{flag}: cannot import {module_name!r} ({type(err).__name__}: {err}). "
                        "Run from the folder that contains it, add it to PYTHONPATH, or pass "
                        "a path like models.py:make_model.") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        public = sorted(n for n in vars(module) if not n.startswith("_"))[:10]
        raise UserError(f"{flag}: {module_name!r} has no callable {attr!r} (it has {public}).")
    try:
        return fn(**(kwargs or {}))
    except TypeError as err:
        raise UserError(f"{flag} {spec}: calling it with --model-kwargs "
                        f"{json.dumps(kwargs or {})} failed: {err}.") from None
    except Exception as err:  # noqa: BLE001  (the user's code: say where it failed)
        raise UserError(f"{flag} {spec} raised {type(err).__name__}: {err}") from None


def load_model(spec: str, kwargs: dict | None = None, *, bn_mode: str | None = None
               ) -> Objective:
    """The :class:`Objective` of ``--model`` (see the module docstring for the forms).

    Raises:
      UserError: an unusable return value, or ``bn_mode`` for a ready-made Objective of
        another mode.
    """
    got = import_target(spec, kwargs)
    mode = bn_mode or "eval"
    try:
        if isinstance(got, Objective):
            if bn_mode is not None and got.bn_mode != bn_mode:
                raise UserError(f"--bn-mode {bn_mode}: {spec} returned a ready-made Objective "
                                f"(bn_mode {got.bn_mode}). Return (model, loss_fn, data) "
                                "instead, or build the Objective with bn_mode=...")
            return got
        if isinstance(got, tuple) and len(got) == 3 and isinstance(got[0], nnx.Module):
            return Objective.from_nnx(*got, bn_mode=mode)
        if isinstance(got, tuple) and len(got) in (4, 5) and \
                isinstance(got[0], flax.linen.Module):
            module, variables, loss_fn, data, *apply_kwargs = got
            return Objective.from_linen(module, variables, loss_fn, data, bn_mode=mode,
                                        apply_kwargs=apply_kwargs[0] if apply_kwargs else None)
    except UserError:
        raise
    except (TypeError, ValueError) as err:
        raise UserError(f"--model {spec}: {err}") from None
    raise UserError(f"--model {spec} returned {type(got).__name__}; it must return a "
                    "hessian_tools.Objective, (nnx_model, loss_fn, data) or (linen_module, "
                    "variables, loss_fn, data[, apply_kwargs]).")


def _subset(obj: Objective, num: int, seed: int) -> Objective:
    """The objective on a fixed random subset of ``num`` examples (one batch)."""
    if obj.streaming:
        raise UserError("--num-examples needs in-memory data; this model streams its data.")
    batches = [b for b, _ in obj.batches()]
    data = jax.tree.map(lambda *xs: jnp.concatenate(xs), *batches)
    total = int(jax.tree.leaves(data)[0].shape[0])
    if num > total:
        raise UserError(f"--num-examples {num} exceeds the {total} examples of the model's "
                        "data.")
    idx = jnp.sort(jax.random.permutation(jax.random.key(seed), total)[:num])
    return dataclasses.replace(obj, data=jax.tree.map(lambda a: a[idx], data))


def objective_from_args(args, *, trained: bool = True) -> tuple[Objective, str]:
    """The objective the flags describe, and a name for it in reports."""
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if args.model:
        obj = load_model(args.model, parse_model_kwargs(args.model_kwargs), bn_mode=args.bn_mode)
        name = args.model
    elif args.example:
        if args.bn_mode == "batch":
            raise UserError(f"--bn-mode batch: the built-in {args.example} has no BatchNorm.")
        obj = digits.digits_objective(args.example, trained=trained, seed=args.seed)
        name = f"digits {args.example}" + ("" if trained else " (untrained)")
    else:
        raise UserError("say which model: --model module:function, or --example mlp-small "
                        "for a built-in one.")
    if args.num_examples is not None:
        obj = _subset(obj, args.num_examples, args.seed)
    if args.precision is not None:
        obj = dataclasses.replace(obj, precision=args.precision)
    if args.dtype == "float64":
        obj = obj.astype(jnp.float64)
    return obj, name


# ---- output folders --------------------------------------------------------------------------

def check_output_folder(out: Path) -> Path:
    """Create ``out`` and prove it writable (write and remove a probe file) before any work.

    Raises:
      UserError: ``out`` is a file, or cannot be created or written (read-only, no space).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: choose another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as err:
        raise UserError(f"--out {out} cannot be written ({err.strerror or err}): choose a "
                        "writable folder.") from None
    return out


# ---- several processes (jax.distributed) -----------------------------------------------------

DISTRIBUTED_COMMANDS = ("spectrum", "compare")
"""The subcommands that run under ``jax.distributed`` (process 0 writes, the others compute)."""


def _env_int(name: str, environ) -> int | None:
    text = environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text!r} is not an integer: set it to the number (of "
                        "processes, or this process's index from 0).") from None


def start_distributed(command: str | None, environ=None) -> bool:
    """Join a ``jax.distributed`` run when the environment asks for one; ``True`` if joined.

    Asked for by ``HESSIAN_TOOLS_NUM_PROCESSES`` (with ``HESSIAN_TOOLS_PROCESS_ID`` and JAX's
    ``JAX_COORDINATOR_ADDRESS=host:port``), by ``JAX_COORDINATOR_ADDRESS`` alone, or by
    ``HESSIAN_TOOLS_DISTRIBUTED=1``; what is not given is detected by JAX on a cluster it
    knows (SLURM, Open MPI, Kubernetes, Cloud TPU). CPU collectives use gloo. Must run
    before JAX starts its backend (the CLI calls it before building the model).

    Raises:
      UserError: a malformed variable, a subcommand that does not run on several processes,
        or a ``jax.distributed.initialize`` that fails (its message is kept).
    """
    environ = os.environ if environ is None else environ
    num = _env_int("HESSIAN_TOOLS_NUM_PROCESSES", environ)
    pid = _env_int("HESSIAN_TOOLS_PROCESS_ID", environ)
    if num is None and pid is None and not environ.get("JAX_COORDINATOR_ADDRESS") \
            and environ.get("HESSIAN_TOOLS_DISTRIBUTED", "") in ("", "0"):
        return False
    if command not in DISTRIBUTED_COMMANDS:
        raise UserError(f"hessian-tools {command} runs in one process; only "
                        f"{' and '.join(DISTRIBUTED_COMMANDS)} run under jax.distributed. "
                        "Unset HESSIAN_TOOLS_NUM_PROCESSES, HESSIAN_TOOLS_PROCESS_ID, "
                        "JAX_COORDINATOR_ADDRESS and HESSIAN_TOOLS_DISTRIBUTED.")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(num_processes=num, process_id=pid)
    except (ValueError, TypeError, RuntimeError) as err:
        raise UserError(f"jax.distributed.initialize failed ({err}). Set "
                        "JAX_COORDINATOR_ADDRESS=host:port (process 0's), "
                        "HESSIAN_TOOLS_NUM_PROCESSES and HESSIAN_TOOLS_PROCESS_ID on every "
                        "process (see docs/scale.md).") from None
    return True


def writes_files() -> bool:
    """Whether this process writes the output folder and prints: process 0 of a
    ``jax.distributed`` run (every process computes; the others only read ``--out``)."""
    return jax.process_index() == 0
