"""hessian_tools: Hessian spectra, saddle points and loss surfaces of JAX models.

>>> import hessian_tools as ht
>>> obj = ht.Objective(loss, params, data)          # doctest: +SKIP
>>> eig = ht.eigenvalues(ht.hessian(obj), k=5, key=jax.random.key(0))   # doctest: +SKIP

The public face, grouped as the layers are (each layer imports only those above it here):
what is analysed; the curvature operators; the analyses; training; loss landscapes;
permutation symmetry; the results; the plots; checkpoints and the compilation cache.
"""

from hessian_tools import algebra, landscape, linalg, plots, symmetry, tree
# ---- what is analysed
from hessian_tools.objective import Objective
# ---- curvature operators
from hessian_tools.operators import (CurvatureOperator, dense_hessian, empirical_fisher,
                                     from_dense, gauss_newton, gradient, hessian, to_dense,
                                     value_and_grad)
# ---- analyses of a point
from hessian_tools.analysis import (class_mean_vectors, class_means_overlap, classify,
                                    classify_at, curvature_report, default_grad_tol,
                                    default_sigma, default_threshold, default_tol, density,
                                    diagonal, eigenvalues, eigenvalues_at, epsilon_sharpness,
                                    find_critical_points, find_saddles, polish, trace_at,
                                    frobenius_norm_sq, ggn_diagonal, gradient_density, logdet,
                                    negative_count, outliers, papyan_decomposition,
                                    parameter_blocks, random_subspace, solve, spectral_entropy,
                                    trace, trace_function)
# ---- training
from hessian_tools.training import (QUANTITIES, SaddleFreeNewtonState, SharpnessMonitorState,
                                    SharpnessTracker, adaptive_preconditioner,
                                    compare_optimizers, damped_newton, gradient_flow,
                                    learning_rate_sweep,
                                    measurement_subset, optimizer_info,
                                    read_sharpness_log, saddle_free_newton, sharpness,
                                    sharpness_monitor, stability_threshold)
# ---- loss landscapes
from hessian_tools.landscape import (CurvatureMap, Directions, InterpolationPath, LossSurface,
                                     accuracy, barrier, curvature_map, difference_direction,
                                     eigenvector_directions, interpolate, load_directions,
                                     loss_surface, on_outputs, plane, plane_directions,
                                     plot_curvature_map, plot_interpolation, plot_surface,
                                     plot_trajectory, random_directions, read_surface_file,
                                     save_directions, trajectory_directions)
# ---- permutation symmetry
from hessian_tools.symmetry import (Alignment, Connectivity, PermutationSpec, align,
                                    apply_permutation, connectivity, permutation_spec,
                                    plot_connectivity, random_permutation, reset_batch_stats)
# ---- results
from hessian_tools.results import (VERDICTS, CriticalPointReport, CriticalPointSearch,
                                   CurvatureReport, DiagonalEstimate, Eigenpairs,
                                   EigenvalueCount, EpsilonSharpness, FoundPoint, FoundSaddle,
                                   FunctionTrace, PointResults, PolishResult, SaddleSearch,
                                   GradientFlow, LearningRateSweep, OptimizerComparison,
                                   OptimizerInfo, OptimizerRun, OutlierSplit,
                                   PapyanDecomposition, Result, SharpnessLog, SharpnessResult,
                                   SolveResult, SpectralDensity, Status, SubspaceOverlap,
                                   TraceEstimate)
# ---- plots
from hessian_tools.plots import (plot_comparison, plot_curvature_report, plot_densities,
                                 plot_density, plot_eigenvalues, plot_gradient_flow,
                                 plot_index_vs_loss, plot_learning_rate_sweep, plot_log_density,
                                 plot_sharpness)
# ---- checkpoints and the compilation cache
from hessian_tools.checkpoints import load_checkpoint, restore
from hessian_tools.compile_cache import enable_compilation_cache

__version__ = "0.2.0"

__all__ = [
    # what is analysed
    "Objective",
    # curvature operators
    "CurvatureOperator", "dense_hessian", "empirical_fisher", "from_dense", "gauss_newton",
    "gradient", "hessian", "to_dense", "value_and_grad",
    # analyses
    "class_mean_vectors", "class_means_overlap", "classify", "curvature_report",
    "default_grad_tol", "default_sigma", "default_threshold", "default_tol", "density",
    "classify_at", "diagonal", "eigenvalues", "eigenvalues_at", "epsilon_sharpness",
    "find_critical_points", "find_saddles", "frobenius_norm_sq", "polish", "trace_at",
    "ggn_diagonal", "gradient_density", "logdet", "negative_count", "outliers",
    "papyan_decomposition", "parameter_blocks", "random_subspace", "solve", "spectral_entropy",
    "trace", "trace_function",
    # training
    "QUANTITIES", "SaddleFreeNewtonState", "SharpnessMonitorState", "SharpnessTracker",
    "adaptive_preconditioner", "compare_optimizers", "damped_newton", "gradient_flow",
    "learning_rate_sweep",
    "measurement_subset", "optimizer_info",
    "read_sharpness_log", "saddle_free_newton", "sharpness", "sharpness_monitor",
    "stability_threshold",
    # loss landscapes
    "CurvatureMap", "Directions", "InterpolationPath", "LossSurface", "accuracy", "barrier",
    "curvature_map", "difference_direction", "eigenvector_directions", "interpolate",
    "load_directions", "loss_surface", "on_outputs", "plane", "plane_directions",
    "plot_curvature_map", "plot_interpolation", "plot_surface", "plot_trajectory",
    "random_directions", "read_surface_file", "save_directions", "trajectory_directions",
    # permutation symmetry
    "Alignment", "Connectivity", "PermutationSpec", "align", "apply_permutation",
    "connectivity", "permutation_spec", "plot_connectivity", "random_permutation",
    "reset_batch_stats",
    # results
    "VERDICTS", "CriticalPointReport", "CriticalPointSearch", "CurvatureReport",
    "DiagonalEstimate", "Eigenpairs", "EigenvalueCount", "EpsilonSharpness", "FoundPoint",
    "FoundSaddle", "PointResults", "PolishResult", "SaddleSearch",
    "FunctionTrace", "GradientFlow", "LearningRateSweep", "OptimizerComparison",
    "OptimizerInfo", "OptimizerRun", "OutlierSplit", "PapyanDecomposition", "Result",
    "SharpnessLog", "SharpnessResult", "SolveResult", "SpectralDensity", "Status",
    "SubspaceOverlap", "TraceEstimate",
    # plots
    "plot_comparison", "plot_curvature_report", "plot_densities", "plot_density",
    "plot_eigenvalues", "plot_gradient_flow", "plot_index_vs_loss", "plot_learning_rate_sweep",
    "plot_log_density", "plot_sharpness",
    # checkpoints, compilation cache, submodules
    "algebra", "enable_compilation_cache", "landscape", "linalg", "load_checkpoint", "plots", "restore",
    "symmetry", "tree",
]
