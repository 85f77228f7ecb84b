import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


def spectrum_matrix(eigs, seed=0):
    """A symmetric matrix Q diag(eigs) Q^T with a random orthogonal Q (float64)."""
    eigs = np.asarray(eigs, dtype=np.float64)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigs), len(eigs))))
    a = q @ np.diag(eigs) @ q.T
    return (a + a.T) / 2


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    # trained example weights are cached once per test session, not in the user's home
    monkeypatch.setenv("HESSIAN_TOOLS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
