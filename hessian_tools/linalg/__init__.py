"""Pure solvers: functions of a matvec, never of a model."""

from hessian_tools.linalg.lanczos import (LanczosDecomposition, LanczosEigsResult, lanczos_eigs,
                                          lanczos_tridiag)
from hessian_tools.linalg.power import PowerResult, power_eigs, power_iteration

__all__ = ["LanczosDecomposition", "LanczosEigsResult", "PowerResult", "lanczos_eigs",
           "lanczos_tridiag", "power_eigs", "power_iteration"]
from hessian_tools.linalg import slq, trace  # noqa: E402,F401  (SLQ and trace estimators)
