"""Loading checkpoints safely: orbax, flax msgpack, ``.npz`` and safetensors. Never pickle.

:func:`load_checkpoint` reads a checkpoint as a nested dict of NumPy arrays, whatever wrote
it: ``nnx.state(model)`` (whose leaves sit under a ``value`` key), ``nnx.to_pure_dict``,
``nnx.split`` states, linen ``{"params", "batch_stats"}`` variables, orbax composite
checkpoints holding the model next to the optimizer. :func:`restore` then finds the model's
parameters *and* its state (BatchNorm statistics and other non-parameter variables) in it,
checks them against the objective's trees (naming the first mismatching leaf), and returns
the objective at that point. State the function depends on is never silently taken from
the model instead of the checkpoint: missing state is an error that names it.
Checkpoints are only ever opened for reading.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import re
import stat
import warnings
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors.numpy

from hessian_tools import tree
from hessian_tools.objective import Objective, check_finite
from hessian_tools.files import atomic_write_bytes

__all__ = ["CheckpointError", "Restored", "load_checkpoint", "restore", "match_params",
           "find_checkpoints", "checkpoint_format", "step_of", "save_npz", "save_safetensors",
           "save_msgpack", "save_orbax"]

PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".bin", ".joblib"}
FILE_FORMATS = {".npz": "npz", ".msgpack": "msgpack", ".safetensors": "safetensors"}
_VALUE_KEYS = ("value", "raw_value")          # how nnx.Variable leaves are serialised
_OPTIMIZER_WORDS = ("opt", "mu", "nu", "moment", "trace", "ema", "momentum", "inner_state")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model (message says why)."""


def _is_orbax_dir(path: Path) -> bool:
    return (path / "_METADATA").exists() or (path / "_CHECKPOINT_METADATA").exists()


def _check_exists(path: Path) -> None:
    """Raise a CheckpointError that says what is wrong with a path that cannot be used."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CheckpointError(f"{path}: a symbolic link loop (the link points, directly "
                                  "or not, back to itself).") from None
        if err.errno == errno.EACCES:
            raise CheckpointError(f"{path}: permission denied.") from None
        if os.path.islink(path):
            raise CheckpointError(f"{path}: a broken symbolic link (its target "
                                  f"{os.readlink(path)} does not exist).") from None
        raise CheckpointError(f"{path}: no such file or directory.") from None


def checkpoint_format(path) -> str:
    """``"orbax"``, ``"msgpack"``, ``"npz"`` or ``"safetensors"``; raises for anything else."""
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        if _is_orbax_dir(path):
            return "orbax"
        raise CheckpointError(f"{path} is a directory but not an orbax checkpoint (no _METADATA).")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: '{suffix}' files are pickle-based, and loading a pickle can run arbitrary "
            "code, so hessian_tools never does. Convert it once, in an environment you trust, to "
            "a safe format: e.g. np.savez('params.npz', **{'/'.join(path): array ...}) or "
            "flax.serialization.to_bytes(params) written to a .msgpack file.")
    if suffix not in FILE_FORMATS:
        raise CheckpointError(f"{path}: unknown checkpoint format '{suffix}'. Supported: an orbax "
                              "directory, .msgpack (flax.serialization), .npz, .safetensors.")
    if not stat.S_ISREG(path.stat().st_mode):
        raise CheckpointError(f"{path} is not a regular file (a FIFO, socket or device); "
                              "refusing to read it.")
    return FILE_FORMATS[suffix]


def _orbax_items(path: Path) -> list[Path]:
    """The item folders of a composite orbax checkpoint (``<step>/<item>/_METADATA``)."""
    return sorted(p for p in path.iterdir() if p.is_dir() and _is_orbax_dir(p))


def _nest(flat: dict, sep: str) -> dict:
    out: dict = {}
    for key, value in flat.items():
        parts = [p for p in re.split(sep, key) if p]
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"key '{key}' conflicts with another entry.")
        node[parts[-1]] = value
    return out


def _read_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return _nest({k: _npz_array(f[k]) for k in f.files}, r"[/.]")


def _npz_array(a) -> np.ndarray:
    """NumPy writes bfloat16 arrays (ml_dtypes) to ``.npz`` as 2-byte raw values: read them
    back as bfloat16. Other raw (void) dtypes are not numbers."""
    a = np.asarray(a)
    if a.dtype.kind == "V" and a.dtype.itemsize == 2 and a.dtype.fields is None:
        return a.view(ml_dtypes.bfloat16)
    if a.dtype.kind not in "fiub":
        raise CheckpointError(f"an array has dtype {a.dtype}, which is not a number type.")
    return a


def _read_msgpack(path: Path) -> dict:
    return flax.serialization.msgpack_restore(path.read_bytes())


def _read_safetensors(path: Path) -> dict:
    return _nest(safetensors.numpy.load_file(path), r"[/.]")


def _read_orbax(path: Path) -> dict:
    if _is_orbax_dir(path) and (path / "_METADATA").exists():
        return _restore_orbax(path)
    items = _orbax_items(path)
    if not items:
        raise CheckpointError("no orbax item (no _METADATA) in this directory.")
    return {item.name: _restore_orbax(item) for item in items}


def _restore_orbax(path: Path) -> dict:
    import orbax.checkpoint as ocp      # here: importing orbax costs ~0.5 s, paid only by its users
    restored = ocp.StandardCheckpointer().restore(path.resolve())
    return jax.tree.map(np.asarray, restored)


_READERS = {"npz": _read_npz, "msgpack": _read_msgpack, "safetensors": _read_safetensors,
            "orbax": _read_orbax}


def load_checkpoint(path) -> dict:
    """Read a checkpoint as a nested dict of NumPy arrays (read-only access).

    Raises:
      CheckpointError: missing path, pickle-based or unknown format, a file that is not a
        regular file, a corrupt or truncated file.
    """
    path = Path(path)
    fmt = checkpoint_format(path)
    try:
        loaded = _READERS[fmt](path)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001  (every reader's own errors mean "corrupt")
        raise CheckpointError(f"{path}: cannot read it as {fmt} ({type(err).__name__}: "
                              f"{str(err)[:200]}). Is the file corrupt or truncated?") from None
    if not isinstance(loaded, dict) or not jax.tree.leaves(loaded):
        raise CheckpointError(f"{path}: the {fmt} checkpoint holds no arrays.")
    return loaded


# ---- finding the model's parameters and state in a checkpoint -------------------------------

def _flat(loaded) -> dict:
    """``{"a/b/c": array}``, with the ``value`` key of serialised NNX variables dropped."""
    out = {}
    for path, leaf in tree.flat_paths(loaded).items():
        parts = path.split("/")
        if len(parts) > 1 and parts[-1] in _VALUE_KEYS:
            path = "/".join(parts[:-1])
        out[path] = leaf
    return out


def _rank(prefix: str) -> tuple:
    """Prefer the model's own part over optimizer moments (which repeat the parameter tree),
    then the shortest prefix."""
    words = [w.lower() for w in prefix.split("/") if w]
    optimizer = any(any(o in w for o in _OPTIMIZER_WORDS) for w in words)
    return optimizer, len(words), prefix


def _locate(flat: dict, want: dict, what: str, source: str) -> tuple[str, list[str]]:
    """The prefix under which every path of ``want`` is found in ``flat`` (the best one), and
    the other prefixes that would also have matched."""
    first = next(iter(want))
    prefixes = {k[:len(k) - len(first)] for k in flat
                if k == first or k.endswith("/" + first)}
    full = sorted((p for p in prefixes if all(p + w in flat for w in want)), key=_rank)
    if full:
        return full[0], full[1:]
    best = max(prefixes, key=lambda p: sum(p + w in flat for w in want), default="")
    missing = [w for w in want if best + w not in flat]
    tops = sorted({k.split("/")[0] for k in flat})
    raise CheckpointError(
        f"{source}: {what} '{missing[0]}' (shape {np.shape(want[missing[0]])}) is missing from "
        f"the checkpoint ({len(missing)} of {len(want)} missing). The checkpoint's top-level "
        f"keys are {tops[:8]}{' ...' if len(tops) > 8 else ''}, with leaves such as "
        f"{sorted(flat)[:4]}. Expected the {what}s of the model, e.g. {list(want)[:3]}: is "
        "--model the right architecture, and was the whole model state saved?")


def _take(flat: dict, want: dict, prefix: str, source: str, notes: list, what: str) -> dict:
    """The arrays of ``want``'s paths (under ``prefix``), cast to the model's dtypes."""
    out = {}
    for path, leaf in want.items():
        got = np.asarray(flat[prefix + path])
        want_dtype = jnp.result_type(leaf)
        if np.shape(got) != np.shape(leaf):
            raise CheckpointError(f"{source}: {what} '{path}' has shape {np.shape(got)} in the checkpoint "
                                  f"but {np.shape(leaf)} in the model.")
        if jnp.issubdtype(want_dtype, jnp.floating) and not jnp.issubdtype(got.dtype, jnp.floating):
            raise CheckpointError(f"{source}: {what} '{path}' has dtype {got.dtype} in the checkpoint; "
                                  "the model's is floating point. Integer, boolean or complex "
                                  "values are not parameters of this model.")
        if jnp.issubdtype(got.dtype, jnp.floating) and \
                jnp.finfo(got.dtype).bits < jnp.finfo(want_dtype).bits and not notes:
            notes.append(f"{got.dtype} values upcast to {jnp.dtype(want_dtype)} for the analysis")
        out[path] = jnp.asarray(got.astype(want_dtype))
    return out


def _rebuild(template, values: dict):
    leaves_paths = jax.tree_util.tree_flatten_with_path(template)
    paths = [tree.path_str(p) for p, _ in leaves_paths[0]]
    return leaves_paths[1].unflatten([values[p] for p in paths])


@dataclasses.dataclass(frozen=True)
class Restored:
    """Where :func:`restore` found the model in a checkpoint.

    Attributes:
      objective: the objective at the checkpoint's parameters (and state).
      params_at: the checkpoint path prefix of the parameters (``""``: the top level).
      state_at: the prefix of the model state (``None``: the model has no state to load).
      notes: what was ignored or converted (optimizer moments, dtypes), for the user.
    """

    objective: Objective
    params_at: str
    state_at: str | None
    notes: tuple = ()


def restore(obj: Objective, path_or_tree, *, source: str | None = None) -> Restored:
    """The objective at a checkpoint's parameters and model state.

    The parameters are located in the checkpoint by their paths (``a/b/c``), at the top
    level or under any prefix (``params/``, ``model/``, an orbax item); when the optimizer's
    moments repeat the tree, the model's part is taken and the others are named in
    ``notes``. The model state the loss depends on (:attr:`Objective.required_state`:
    BatchNorm statistics, other non-parameter variables) is located the same way and must
    be present.

    Args:
      obj: the objective of the model the checkpoint belongs to.
      path_or_tree: a checkpoint path (any format :func:`load_checkpoint` reads) or an
        already loaded nested dict.
      source: the name used in messages (default: the path).

    Returns:
      A :class:`Restored` (``.objective`` is the objective at the checkpoint).

    Raises:
      CheckpointError: a missing parameter or state leaf (named, with what was found), a
        shape mismatch, integer or complex values, or non-finite values.
    """
    if isinstance(path_or_tree, dict):
        loaded, source = path_or_tree, source or "checkpoint"
    else:
        loaded, source = load_checkpoint(path_or_tree), source or str(path_or_tree)
    flat, notes = _flat(loaded), []
    want = tree.flat_paths(obj.params)
    prefix, others = _locate(flat, want, "parameter", source)
    if others:
        notes.append(f"parameters read from '{prefix or '/'}'; the same tree under "
                     f"{[o.rstrip('/') for o in others[:3]]} (optimizer moments) was ignored")
    params = _rebuild(obj.params, _take(flat, want, prefix, source, notes, "parameter"))
    _check_finite(params, source)
    required = tree.flat_paths(obj.required_state) if obj.required_state is not None else {}
    if not required:
        return Restored(obj.with_params(params), prefix, None, tuple(notes))
    state_prefix = _locate_state(flat, required, source)
    values = {**tree.flat_paths(obj.state), **_take(flat, required, state_prefix, source, notes,
                                                    "model state")}
    state = _rebuild(obj.state, values)
    _check_finite(state, source)
    return Restored(obj.with_params(params, state=state), prefix, state_prefix, tuple(notes))


def _locate_state(flat, required, source) -> str:
    try:
        return _locate(flat, required, "model state", source)[0]
    except CheckpointError:
        names = sorted(required)
        raise CheckpointError(
            f"{source}: the checkpoint holds the parameters but not the model state "
            f"{names[:4]}{' ...' if len(names) > 4 else ''} (BatchNorm statistics or other "
            "non-parameter variables). Analysing the model's own initial state instead would "
            "analyse a different function. Save the whole state (nnx.state(model), or all of "
            "linen's variables), or use bn_mode='batch' (--bn-mode batch) if the missing "
            "state is BatchNorm statistics and batch statistics are what you want.") from None


def _check_finite(x, source) -> None:
    try:
        check_finite(x)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: {err}") from None


def match_params(template, loaded: dict, *, source: str = "checkpoint"):
    """The parameters of ``template``'s tree found in a loaded checkpoint (see :func:`restore`,
    which also loads the model state)."""
    flat, notes = _flat(loaded), []
    want = tree.flat_paths(template)
    prefix, _ = _locate(flat, want, "parameter", source)
    params = _rebuild(template, _take(flat, want, prefix, source, notes, "parameter"))
    _check_finite(params, source)
    return params


# ---- run directories ------------------------------------------------------------------------

_STEP = re.compile(r"(\d+)(?!.*\d)")


def find_checkpoints(path) -> list[Path]:
    """A single checkpoint, or a run directory's step checkpoints sorted by step number.

    A directory that is not itself an orbax checkpoint is a run directory: its entries that
    are checkpoints (files with a supported or a pickle suffix, orbax directories) are
    returned in order of the last number in their names (the step).
    """
    path = Path(path)
    _check_exists(path)
    if not path.is_dir():
        return [path]
    if _is_orbax_dir(path):
        return [path]
    try:
        entries = sorted(path.iterdir())
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied (cannot list the folder).") from None
    found = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.suffix.lower() in set(FILE_FORMATS) | PICKLE_SUFFIXES and not entry.is_dir():
            found.append(entry)
        elif entry.is_dir() and _holds_checkpoint(entry):
            found.append(entry)
        elif entry.is_dir() and _STEP.search(entry.name):
            warnings.warn(f"{entry}: skipped, a folder that holds no checkpoint (no orbax "
                          "_METADATA).", UserWarning, stacklevel=2)
    if not found:
        raise CheckpointError(f"{path}: no checkpoints found in this directory (looked for "
                              ".msgpack, .npz, .safetensors files and orbax directories).")

    def step(p: Path):
        m = _STEP.search(p.stem if p.is_file() else p.name)
        return (int(m.group(1)) if m else -1, p.name)
    return sorted(found, key=step)


def _holds_checkpoint(folder: Path) -> bool:
    """An orbax checkpoint, or a CheckpointManager step folder (``<step>/<item>/_METADATA``)."""
    try:
        return _is_orbax_dir(folder) or bool(_orbax_items(folder))
    except OSError:
        return False


def step_of(path) -> int | None:
    """The step number in a checkpoint's name (the last number), or None."""
    path = Path(path)
    m = _STEP.search(path.stem if path.suffix else path.name)
    return int(m.group(1)) if m else None


# ---- writers (for tests, examples and users converting their checkpoints) -----------------

def _flat_for_save(params) -> dict:
    return {p: np.asarray(a) for p, a in tree.flat_paths(params).items()}


def save_npz(path, params) -> Path:
    """Save a parameter pytree as ``.npz`` with ``a/b/c`` keys (no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **_flat_for_save(params))
    return atomic_write_bytes(path, buf.getvalue())


def save_safetensors(path, params) -> Path:
    """Save a parameter pytree as safetensors (``a/b/c`` names)."""
    return atomic_write_bytes(path, safetensors.numpy.save(
        {k: np.ascontiguousarray(v) for k, v in _flat_for_save(params).items()}))


def save_msgpack(path, params) -> Path:
    """Save a parameter pytree with ``flax.serialization`` (msgpack)."""
    return atomic_write_bytes(path, flax.serialization.msgpack_serialize(
        _nest(_flat_for_save(params), "/")))


def save_orbax(path, params) -> Path:
    """Save a parameter pytree as an orbax checkpoint directory."""
    import orbax.checkpoint as ocp      # see _restore_orbax
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(Path(path).resolve(), _nest(_flat_for_save(params), "/"))
    ckpt.wait_until_finished()
    return Path(path)
