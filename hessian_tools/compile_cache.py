"""JAX's persistent compilation cache, for processes that analyse a model once and exit."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["enable_compilation_cache", "default_cache_dir", "cache_root"]


def cache_root() -> Path:
    """hessian_tools' cache folder: ``$HESSIAN_TOOLS_CACHE``, else ``~/.cache/hessian_tools``
    (trained example weights, and the compilation cache in ``jax/``)."""
    return Path(os.environ.get("HESSIAN_TOOLS_CACHE") or Path.home() / ".cache" / "hessian_tools")


def default_cache_dir() -> Path:
    """``cache_root() / "jax"``: ``$HESSIAN_TOOLS_CACHE/jax``, else ``~/.cache/hessian_tools/jax``."""
    return cache_root() / "jax"


def enable_compilation_cache(path=None, *, min_compile_time_secs: float = 0.0) -> Path | None:
    """Keep compiled XLA executables on disk so the next process skips compiling them.

    A first ``ht.eigenvalues`` call in a process compiles about 15 functions: HVP,
    linearisation and solver steps. On a 2-core CPU that is 3-6 s for a 300k-parameter MLP.
    With the cache filled by an earlier process, the same call loads them in about 0.1 s
    (``benchmarks/RESULTS.md``). Entries are keyed by the computation and the JAX
    version, so a stale entry is never used. The folder is not size-bounded (a digits run
    adds a few MB; delete it to clear it). JAX's own LRU bound is not used: it needs the
    ``filelock`` package, and it fails on every write to a folder filled without it.

    This sets JAX's global configuration (``jax_compilation_cache_dir`` and friends). It is
    therefore opt-in for library users; the ``hessian-tools`` CLI turns it on unless
    ``--no-compile-cache`` is given or ``HESSIAN_TOOLS_NO_COMPILE_CACHE`` is set. The
    environment variable also makes this function a no-op.

    Args:
      path: the cache folder (default :func:`default_cache_dir`).
      min_compile_time_secs: cache only executables that took at least this long to compile
        (0: all of them. Small solver steps add up to seconds on CPU).

    Returns:
      The folder, or ``None`` when disabled by the environment variable.
    """
    if os.environ.get("HESSIAN_TOOLS_NO_COMPILE_CACHE"):
        return None
    import jax
    folder = Path(path) if path is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
