"""Pure solvers: functions of a matvec, never of a model.

* :mod:`~hessian_tools.linalg.lanczos`: ``lanczos_tridiag`` (fully compiled, vmappable) and
  ``ritz_pairs``.
* :mod:`~hessian_tools.linalg.eigsolve`: the Krylov-Schur engine and its drivers,
  ``lanczos_eigs`` (locking) and ``warm_eigs`` (warm starts).
* :mod:`~hessian_tools.linalg.power`: power iteration with deflation.
* :mod:`~hessian_tools.linalg.slq`: stochastic Lanczos quadrature.
* :mod:`~hessian_tools.linalg.trace`: Hutchinson, Hutch++ and XTrace.
"""

from hessian_tools.linalg.eigsolve import (LanczosEigsResult, WarmEigsResult, krylov_schur,
                                           lanczos_eigs, warm_eigs)
from hessian_tools.linalg.lanczos import (LanczosDecomposition, RitzPairs, lanczos_tridiag,
                                          ritz_pairs)
from hessian_tools.linalg.power import PowerResult, power_eigs, power_iteration

__all__ = ["LanczosDecomposition", "LanczosEigsResult", "PowerResult", "RitzPairs",
           "WarmEigsResult", "krylov_schur", "lanczos_eigs", "lanczos_tridiag", "power_eigs",
           "power_iteration", "ritz_pairs", "warm_eigs"]
