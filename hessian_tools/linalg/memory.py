"""How much memory an eigensolve takes, whether it fits, and the largest basis that does.

:func:`~hessian_tools.linalg.lanczos_eigs` holds, at its peak,

    (krylov_dim + 1 + lock_rows) x (2 with kept products, else 1) + WORK_VECTORS

parameter-sized vectors: the Krylov basis (``krylov_dim + 1`` rows), the locked vectors
(``lock_rows = 2 k + 8`` per requested end, 4k + 8 for ``"both"``), the products ``A q`` kept
next to both, and a few working vectors (the current Lanczos vector, its product, the
orthogonalisation's temporaries, a start vector). Nothing else grows with the basis: a run's
buffers are reused by the next run, restarts and locking combine rows in place.
:func:`plan` turns that into bytes for the parameters at hand (their dtype and, when
sharded, the shards this process holds), reads the memory available, and
:meth:`MemoryPlan.check` refuses a solve that would not fit, naming the numbers and the fixes.
"""

from __future__ import annotations

import dataclasses

from hessian_tools import _host, tree
from hessian_tools.linalg._space import space_for

__all__ = ["MemoryPlan", "WORK_VECTORS", "buffer_rows", "default_krylov_dim",
           "min_krylov_dim", "plan"]

WORK_VECTORS = 6
"""Parameter-sized working vectors of a Lanczos step besides the buffers: the current
vector and its product, the operator's copy of the vector, the new vector and two
temporaries of the Gram-Schmidt sweeps (measured: ``benchmarks/RESULTS_scale.md``)."""

AUTO_FRACTION = 0.9
"""``krylov_dim="auto"`` plans for this fraction of the available memory: the operator's
own temporaries (a product's activations) need the rest."""


def default_krylov_dim(k: int, which: str) -> int:
    """The default basis size before a restart (see :func:`lanczos_eigs`)."""
    return max(6 * k + 40, 100) if which == "both" else max(3 * k + 30, 60)


def min_krylov_dim(k: int, which: str) -> int:
    """The smallest basis ``krylov_dim="auto"`` will choose: twice the wanted pairs plus
    four, so that each thick restart (which keeps about half) still adds new directions."""
    return 2 * (2 * k if which == "both" else k) + 4


def buffer_rows(dim: int, k: int, which: str, krylov_dim: int | None) -> tuple[int, int]:
    """``(m_max, lock_rows)``: the basis rows kept before a restart (the basis buffer holds
    ``m_max + 1``) and the locked-vector buffer's rows, as :func:`lanczos_eigs` allocates
    them (the same again for ``keep_products``)."""
    ends = 2 if which == "both" else 1
    return min(dim, krylov_dim or default_krylov_dim(k, which)), min(dim, 2 * ends * k + 8)


def _vectors(m_max: int, lock_rows: int, keep_products: bool) -> int:
    return (m_max + 1 + lock_rows) * (2 if keep_products else 1) + WORK_VECTORS


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """The memory of one :func:`~hessian_tools.linalg.lanczos_eigs` solve.

    Attributes:
      krylov_dim: the basis rows before a restart (``"auto"`` resolved).
      lock_rows: rows of the locked-vector buffer.
      keep_products: whether the products ``A q`` are kept (doubles the buffers).
      vectors: parameter-sized vectors held at the peak (the module's formula).
      vector_bytes: bytes of one vector in the memory that limits this process (host
        memory on CPU devices, one device's otherwise; only local shards when sharded).
      available: bytes available now (0: unknown, assumed enough).
      where: what ``available`` measured.
      k, which, dim: the request.
    """

    krylov_dim: int
    lock_rows: int
    keep_products: bool
    vectors: int
    vector_bytes: int
    available: int
    where: str
    k: int
    which: str
    dim: int

    @property
    def bytes(self) -> int:
        """The planned peak: ``vectors * vector_bytes``."""
        return self.vectors * self.vector_bytes

    @property
    def fits(self) -> bool:
        return self.available <= 0 or self.bytes <= self.available

    def check(self) -> None:
        """Raise ``ValueError`` when the solve would not fit: the numbers and the fixes."""
        if self.fits:
            return
        gb, mb = 1e-9, 1e-6
        parts = (f"a basis of {self.krylov_dim + 1}, {self.lock_rows} locked"
                 + (", the products kept for both" if self.keep_products else "")
                 + f" and {WORK_VECTORS} working")
        auto = _auto_dim(self.dim, self.k, self.which, self.keep_products, self.vector_bytes,
                         self.available)
        fixes = []
        if auto is not None:
            need = _vectors(auto, self.lock_rows, self.keep_products) * self.vector_bytes
            fixes.append(f"krylov_dim='auto' (the largest basis that fits: {auto}, "
                         f"{need * gb:.1f} GB; the same answer after more restarts)")
        fixes.append(f"a smaller krylov_dim (each row {self.vector_bytes * mb:,.0f} MB"
                     + (", twice that with the kept products)" if self.keep_products else ")"))
        if self.keep_products:
            alone = _vectors(self.krylov_dim, self.lock_rows, False) * self.vector_bytes
            fixes.append(f"residuals='recompute' in ht.eigenvalues (keep_products=False: "
                         f"{alone * gb:.1f} GB)")
        ends = 2 if self.which == "both" else 1
        fixes.append(f"method='power' in ht.eigenvalues ({ends * self.k} + 3 vectors: "
                     f"{(ends * self.k + 3) * self.vector_bytes * gb:.1f} GB; slower)")
        raise ValueError(
            f"This eigensolve would need about {self.bytes * gb:.1f} GB at its peak "
            f"({self.vectors} parameter-sized vectors of {self.vector_bytes * mb:,.0f} MB: "
            f"{parts}), but {self.available * gb:.1f} GB are available ({self.where}). "
            "Pass " + "; or ".join(fixes) + ".")


def _auto_dim(dim, k, which, keep_products, vector_bytes, available) -> int | None:
    """The largest ``krylov_dim`` up to the default whose plan fits in ``AUTO_FRACTION`` of
    ``available`` (``None`` if not even :func:`min_krylov_dim` does)."""
    _, lock_rows = buffer_rows(dim, k, which, None)
    lo, hi = min(dim, min_krylov_dim(k, which)), min(dim, default_krylov_dim(k, which))
    if available <= 0:
        return hi
    budget = AUTO_FRACTION * available
    rows = int(budget // max(vector_bytes, 1)) - WORK_VECTORS
    m = rows // (2 if keep_products else 1) - lock_rows - 1
    return None if m < lo else min(hi, m)


def plan(like, k: int, which: str, krylov_dim, *, keep_products: bool = False,
         basis: str = "auto") -> MemoryPlan:
    """The :class:`MemoryPlan` of ``lanczos_eigs(..., v_like=like, k=k, which=which,
    krylov_dim=krylov_dim, keep_products=keep_products, basis=basis)`` on this machine now.

    ``krylov_dim="auto"`` becomes the largest basis up to the default that fits in 90% of
    the available memory (at least :func:`min_krylov_dim`; if even that does not fit, the
    plan keeps it and :meth:`MemoryPlan.check` refuses).
    """
    like = tree.spec_like(like)
    dim = tree.size(like)
    vector_bytes = space_for(like, basis).vector_bytes
    available, where = _host.available_memory()
    if krylov_dim == "auto":
        krylov_dim = _auto_dim(dim, k, which, keep_products, vector_bytes, available) or \
            min(dim, min_krylov_dim(k, which))
    elif krylov_dim is not None and (isinstance(krylov_dim, bool) or
                                     not isinstance(krylov_dim, int) or krylov_dim < 1):
        raise ValueError(f"krylov_dim={krylov_dim!r} is not a positive integer, None (the "
                         "default size) or 'auto' (the largest that fits in memory).")
    m_max, lock_rows = buffer_rows(dim, k, which, krylov_dim)
    return MemoryPlan(krylov_dim=m_max, lock_rows=lock_rows, keep_products=keep_products,
                      vectors=_vectors(m_max, lock_rows, keep_products),
                      vector_bytes=vector_bytes, available=available, where=where, k=k,
                      which=which, dim=dim)

