"""Loading parameters safely: orbax, flax msgpack, ``.npz`` and safetensors. Never pickle.

Every reader returns a nested dict of numpy arrays; :func:`match_params` checks it against the
model's parameter tree (naming the first mismatching leaf) and rebuilds the model's structure.
Checkpoints are only ever opened for reading.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import jax
import numpy as np

from hessian_tools.objective import _path_str, check_finite

__all__ = ["CheckpointError", "load_checkpoint", "match_params", "find_checkpoints",
           "checkpoint_format", "save_npz", "save_safetensors"]

PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".bin", ".joblib"}
FILE_FORMATS = {".npz": "npz", ".msgpack": "msgpack", ".safetensors": "safetensors"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model (message says why)."""


def checkpoint_format(path) -> str:
    """``"orbax"``, ``"msgpack"``, ``"npz"`` or ``"safetensors"``; raises for anything else."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory.")
    if path.is_dir():
        if (path / "_METADATA").exists() or (path / "_CHECKPOINT_METADATA").exists():
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
    return FILE_FORMATS[suffix]


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
        return _nest({k: np.asarray(f[k]) for k in f.files}, r"[/.]")


def _read_msgpack(path: Path) -> dict:
    import flax.serialization
    return flax.serialization.msgpack_restore(path.read_bytes())


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                       "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors(path: Path) -> dict:
    """The safetensors layout: u64 header size, a JSON header, then raw little-endian data."""
    data = path.read_bytes()
    if len(data) < 8:
        raise CheckpointError("file shorter than the 8-byte safetensors header.")
    (size,) = struct.unpack("<Q", data[:8])
    if 8 + size > len(data):
        raise CheckpointError("header runs past the end of the file (truncated?).")
    header = json.loads(data[8:8 + size])
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + size:]
    flat = {}
    for name, info in header.items():
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"tensor '{name}' has unsupported dtype {info['dtype']}.")
        start, end = info["data_offsets"]
        if end > len(body):
            raise CheckpointError(f"tensor '{name}' runs past the end of the file (truncated?).")
        arr = np.frombuffer(body[start:end], dtype=np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
                            .newbyteorder("<"))
        flat[name] = arr.reshape(info["shape"]).copy()
    return _nest(flat, r"[/.]")


def _read_orbax(path: Path) -> dict:
    import orbax.checkpoint as ocp
    if not (path / "_METADATA").exists():   # a CheckpointManager step: <step>/<item>/_METADATA
        items = [p for p in path.iterdir() if p.is_dir() and (p / "_METADATA").exists()]
        if len(items) == 1:
            path = items[0]
    restored = ocp.StandardCheckpointer().restore(path.resolve())
    return jax.tree.map(np.asarray, restored)


_READERS = {"npz": _read_npz, "msgpack": _read_msgpack, "safetensors": _read_safetensors,
            "orbax": _read_orbax}


def load_checkpoint(path) -> dict:
    """Read a checkpoint's parameters as a nested dict of numpy arrays (read-only access).

    Raises:
      CheckpointError: missing path, pickle-based or unknown format, corrupt or truncated file.
    """
    path = Path(path)
    fmt = checkpoint_format(path)
    try:
        tree = _READERS[fmt](path)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001  (every reader's own errors mean "corrupt")
        raise CheckpointError(f"{path}: cannot read it as {fmt} ({type(err).__name__}: "
                              f"{str(err)[:200]}). Is the file corrupt or truncated?") from None
    if not isinstance(tree, dict) or not jax.tree.leaves(tree):
        raise CheckpointError(f"{path}: the {fmt} checkpoint holds no arrays.")
    return tree


def _flat_paths(tree) -> dict:
    return {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def match_params(template, loaded: dict, *, source: str = "checkpoint"):
    """The loaded arrays arranged like ``template`` (the model's parameter tree).

    A checkpoint holding a full model state (a ``params`` collection, or extra entries such as
    optimizer state) is accepted when the parameters are found under ``params`` or at the top.

    Raises:
      CheckpointError: a missing or extra leaf or a shape mismatch (the first one is named
        with both shapes), or non-finite values (the leaf is named).
    """
    want = _flat_paths(template)
    if isinstance(loaded, dict) and "params" in loaded and not any(k.startswith("params/")
                                                                   for k in want):
        candidate = _flat_paths(loaded["params"])
        if set(want) <= set(candidate):
            loaded = loaded["params"]
    got = _flat_paths(loaded)
    missing = [p for p in want if p not in got]
    if missing:
        raise CheckpointError(
            f"{source}: parameter '{missing[0]}' (shape {np.shape(want[missing[0]])}) is missing "
            f"from the checkpoint ({len(missing)} missing in all). The checkpoint has "
            f"{sorted(got)[:6]}{' ...' if len(got) > 6 else ''}: is --model the right "
            "architecture?")
    for path, leaf in want.items():
        if np.shape(got[path]) != np.shape(leaf):
            raise CheckpointError(f"{source}: parameter '{path}' has shape "
                                  f"{np.shape(got[path])} in the checkpoint but "
                                  f"{np.shape(leaf)} in the model.")
    extra = sorted(set(got) - set(want))
    leaves = [np.asarray(got[p]).astype(np.asarray(want[p]).dtype) for p in want]
    treedef = jax.tree.structure(template)
    params = treedef.unflatten([jax.numpy.asarray(a) for a in leaves])
    try:
        check_finite(params)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: {err}") from None
    del extra  # extra entries (optimizer state, step counters) are ignored by design
    return params


_STEP = re.compile(r"(\d+)(?!.*\d)")


def find_checkpoints(path) -> list[Path]:
    """A single checkpoint, or a run directory's step checkpoints sorted by step number.

    A directory that is not itself an orbax checkpoint is a run directory: its entries that
    are checkpoints (files with a supported or a pickle suffix, orbax directories) are
    returned in order of the last number in their names (the step).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory.")
    if path.is_file():
        return [path]
    try:
        checkpoint_format(path)
        return [path]
    except CheckpointError:
        pass
    found = []
    for entry in path.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in set(FILE_FORMATS) | PICKLE_SUFFIXES:
            found.append(entry)
        elif entry.is_dir() and ((entry / "_METADATA").exists()
                                 or (entry / "_CHECKPOINT_METADATA").exists()
                                 or _STEP.search(entry.name)):
            found.append(entry)
    if not found:
        raise CheckpointError(f"{path}: no checkpoints found in this directory (looked for "
                              ".msgpack, .npz, .safetensors files and orbax directories).")

    def step(p: Path):
        m = _STEP.search(p.stem if p.is_file() else p.name)
        return (int(m.group(1)) if m else -1, p.name)
    return sorted(found, key=step)


def step_of(path) -> int | None:
    """The step number in a checkpoint's name (the last number), or None."""
    path = Path(path)
    m = _STEP.search(path.stem if path.suffix else path.name)
    return int(m.group(1)) if m else None


# ---- writers (for tests, examples and users converting their checkpoints) -----------------

def _flat_for_save(params) -> dict:
    return {p: np.asarray(a) for p, a in _flat_paths(params).items()}


def save_npz(path, params) -> Path:
    """Save a parameter pytree as ``.npz`` with ``a/b/c`` keys (no pickle)."""
    from hessian_tools.report import atomic_write_bytes
    import io
    buf = io.BytesIO()
    np.savez(buf, **_flat_for_save(params))
    return atomic_write_bytes(path, buf.getvalue())


def save_safetensors(path, params) -> Path:
    """Save a parameter pytree in the safetensors layout (``a/b/c`` names)."""
    from hessian_tools.report import atomic_write_bytes
    names = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
    header, chunks, offset = {}, [], 0
    for name, arr in _flat_for_save(params).items():
        arr = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"))
        raw = arr.tobytes()
        header[name] = {"dtype": names[arr.dtype.newbyteorder("=")], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return atomic_write_bytes(path, struct.pack("<Q", len(head)) + head + b"".join(chunks))


def save_msgpack(path, params) -> Path:
    """Save a parameter pytree with ``flax.serialization`` (msgpack)."""
    import flax.serialization
    from hessian_tools.report import atomic_write_bytes
    return atomic_write_bytes(path, flax.serialization.msgpack_serialize(
        _nest(_flat_for_save(params), "/")))


def save_orbax(path, params) -> Path:
    """Save a parameter pytree as an orbax checkpoint directory."""
    import orbax.checkpoint as ocp
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(Path(path).resolve(), _nest(_flat_for_save(params), "/"))
    ckpt.wait_until_finished()
    return Path(path)
