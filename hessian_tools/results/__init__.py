"""Frozen, keyword-only result types with one serialisation (:class:`Result`)."""

from hessian_tools.results._base import Result, Status, jsonable
from hessian_tools.results.critical import (VERDICTS, CriticalPointReport, CriticalPointSearch,
                                            FoundPoint)
from hessian_tools.results.curvature import CurvatureReport, EpsilonSharpness
from hessian_tools.results.dynamics import GradientFlow, LearningRateSweep
from hessian_tools.results.eigen import Eigenpairs
from hessian_tools.results.papyan import PapyanDecomposition, SubspaceOverlap
from hessian_tools.results.spectral import (EigenvalueCount, OutlierSplit, SpectralDensity,
                                            TraceEstimate)
from hessian_tools.results.points import FoundSaddle, PointResults, PolishResult, SaddleSearch
from hessian_tools.results.toolbox import DiagonalEstimate, FunctionTrace, SolveResult
from hessian_tools.results.training import (OptimizerComparison, OptimizerInfo, OptimizerRun,
                                            SharpnessLog, SharpnessResult, stability_threshold)

__all__ = ["VERDICTS", "CriticalPointReport", "CriticalPointSearch", "CurvatureReport",
           "DiagonalEstimate", "Eigenpairs", "EigenvalueCount", "EpsilonSharpness",
           "FoundPoint", "FoundSaddle", "FunctionTrace", "GradientFlow", "LearningRateSweep",
           "OptimizerComparison", "OptimizerInfo", "OptimizerRun", "OutlierSplit",
           "PapyanDecomposition", "PointResults", "PolishResult", "Result", "SaddleSearch", "SharpnessLog", "SharpnessResult", "SolveResult",
           "SpectralDensity", "Status", "SubspaceOverlap", "TraceEstimate", "jsonable",
           "stability_threshold"]
