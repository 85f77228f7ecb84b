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


def rounding_perturbed_diag(size, seed=0):
    """``diag(2, 2, 1, 1, 0)`` plus a symmetric perturbation of spectral norm ``size``: three
    distinct values up to rounding, so Lanczos breaks down after 3 steps (the remainder is
    of ``size``, as a GPU's float64 products left it)."""
    a = np.diag(np.r_[2.0, 2.0, 1.0, 1.0, 0.0])
    g = np.random.default_rng(seed).normal(size=(5, 5))
    return a + size * (g + g.T) / np.linalg.norm(g + g.T, 2)


def dot_precisions(fn, *args):
    """The precision of every matrix product and convolution in ``fn``'s traced jaxpr."""
    from hessian_tools._callables import jaxpr_eqns
    return [eqn.params["precision"] for eqn in jaxpr_eqns(jax.make_jaxpr(fn)(*args))
            if eqn.primitive.name in ("dot_general", "conv_general_dilated")]


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    # trained example weights are cached once per test session, not in the user's home
    monkeypatch.setenv("HESSIAN_TOOLS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
