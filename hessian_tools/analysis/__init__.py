"""Analyses of a point: eigenvalues, the density, the trace, counts, minimum or saddle."""

from hessian_tools.analysis.critical import classify, default_grad_tol
from hessian_tools.analysis.curvature_report import (curvature_report, gradient_density,
                                                     parameter_blocks)
from hessian_tools.analysis.diagonal import diagonal, frobenius_norm_sq, ggn_diagonal
from hessian_tools.analysis.epsilon_sharpness import epsilon_sharpness, random_subspace
from hessian_tools.analysis.functions import logdet, spectral_entropy, trace_function
from hessian_tools.analysis.points import classify_at, eigenvalues_at, trace_at
from hessian_tools.analysis.polish import find_saddles, polish
from hessian_tools.analysis.papyan import (class_mean_vectors, class_means_overlap,
                                           papyan_decomposition)
from hessian_tools.analysis.solve import solve
from hessian_tools.analysis.spectral import (default_threshold, density, negative_count,
                                            outliers)
from hessian_tools.analysis.eigen import default_tol, eigenvalues
from hessian_tools.analysis.newton_mr import find_critical_points
from hessian_tools.analysis.traces import trace
from hessian_tools.linalg.slq import default_sigma

__all__ = ["class_mean_vectors", "class_means_overlap", "classify", "curvature_report",
           "default_grad_tol", "default_sigma", "default_threshold", "default_tol", "density",
           "diagonal", "classify_at", "eigenvalues", "eigenvalues_at", "epsilon_sharpness",
           "find_critical_points", "find_saddles", "polish", "trace_at",
           "frobenius_norm_sq", "ggn_diagonal", "gradient_density", "logdet", "negative_count",
           "outliers", "papyan_decomposition", "parameter_blocks", "random_subspace", "solve",
           "spectral_entropy", "trace", "trace_function"]
