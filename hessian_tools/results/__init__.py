"""Frozen, keyword-only result types with one serialisation (:class:`Result`)."""

from hessian_tools.results._base import Result, Status, jsonable
from hessian_tools.results.critical import (VERDICTS, CriticalPointReport, CriticalPointSearch,
                                            FoundPoint)
from hessian_tools.results.eigen import Eigenpairs
from hessian_tools.results.spectral import (EigenvalueCount, OutlierSplit, SpectralDensity,
                                            TraceEstimate)
from hessian_tools.results.training import (OptimizerComparison, OptimizerInfo, OptimizerRun,
                                            SharpnessLog, SharpnessResult, stability_threshold)

__all__ = ["VERDICTS", "CriticalPointReport", "CriticalPointSearch", "Eigenpairs",
           "EigenvalueCount", "FoundPoint", "OptimizerComparison", "OptimizerInfo",
           "OptimizerRun", "OutlierSplit", "Result", "SharpnessLog", "SharpnessResult",
           "SpectralDensity", "Status", "TraceEstimate", "jsonable", "stability_threshold"]
