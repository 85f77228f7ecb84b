"""Analyses of a point: eigenvalues, the density, the trace, counts, minimum or saddle."""

from hessian_tools.analysis.critical import classify, default_grad_tol
from hessian_tools.analysis.spectral import (default_threshold, density, negative_count,
                                            outliers)
from hessian_tools.analysis.eigen import default_tol, eigenvalues
from hessian_tools.analysis.newton_mr import find_critical_points
from hessian_tools.analysis.traces import trace
from hessian_tools.linalg.slq import default_sigma

__all__ = ["classify", "default_grad_tol", "default_sigma", "default_threshold", "default_tol", "density",
           "eigenvalues", "find_critical_points", "negative_count", "outliers", "trace"]
