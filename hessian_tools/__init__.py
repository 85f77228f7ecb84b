"""hessian_tools: Hessian spectra and saddle-point analysis for JAX models.

>>> import hessian_tools as ht
>>> obj = ht.Objective(loss, params, data)          # doctest: +SKIP
>>> eig = ht.eigenvalues(ht.hessian(obj), k=5, key=jax.random.key(0))   # doctest: +SKIP
"""

from hessian_tools import linalg, plots, tree
from hessian_tools.plots import plot_eigenvalues
from hessian_tools.objective import Objective
from hessian_tools.operators import (CurvatureOperator, dense_hessian, empirical_fisher,
                                     from_dense, gauss_newton, gradient, hessian, to_dense,
                                     value_and_grad)
from hessian_tools.compile_cache import enable_compilation_cache
from hessian_tools.results import Eigenpairs
from hessian_tools.spectrum import default_tol, eigenvalues

__version__ = "0.1.0"

__all__ = [
    "CurvatureOperator", "Eigenpairs", "Objective", "default_tol", "dense_hessian",
    "eigenvalues", "empirical_fisher", "enable_compilation_cache", "from_dense", "gauss_newton", "gradient", "hessian",
    "linalg", "plot_eigenvalues", "plots", "to_dense", "tree", "value_and_grad",
]

# ---- critical points and saddle-free Newton (issue 4) ----------------------------------------
from hessian_tools.critical import (CriticalPointReport, CriticalPointSearch, FoundPoint,  # noqa: E402
                                    classify, find_critical_points, plot_index_vs_loss)
from hessian_tools.saddle_free import SaddleFreeNewtonState, saddle_free_newton  # noqa: E402

__all__ += ["CriticalPointReport", "CriticalPointSearch", "FoundPoint", "SaddleFreeNewtonState",
            "classify", "find_critical_points", "plot_index_vs_loss", "saddle_free_newton"]

# ---- the whole spectrum: SLQ density, traces, negative counts, outliers (issue 3) -------------
from hessian_tools.spectral_density import (EigenvalueCount, OutlierSplit, SpectralDensity,  # noqa: E402
                                   TraceEstimate, default_sigma, default_threshold, density,
                                   negative_count, outliers, trace)
from hessian_tools.plots_density import plot_densities, plot_density  # noqa: E402

__all__ += ["EigenvalueCount", "OutlierSplit", "SpectralDensity", "TraceEstimate",
            "default_sigma", "default_threshold", "density", "negative_count", "outliers",
            "plot_densities", "plot_density", "trace"]

# ---- sharpness during training, comparing optimizers (issue 5) ------------------------------
from hessian_tools.tracking import (OptimizerComparison, OptimizerInfo, OptimizerRun,  # noqa: E402
                                    SharpnessLog, SharpnessMonitorState, SharpnessResult,
                                    SharpnessTracker, adaptive_preconditioner,
                                    compare_optimizers, measurement_subset,
                                    optimizer_info, plot_comparison, plot_sharpness,
                                    read_sharpness_log, sharpness, sharpness_monitor,
                                    stability_threshold)

__all__ += ["OptimizerComparison", "OptimizerInfo", "OptimizerRun", "SharpnessLog",
            "SharpnessMonitorState", "SharpnessResult", "SharpnessTracker",
            "adaptive_preconditioner", "compare_optimizers", "measurement_subset",
            "optimizer_info", "plot_comparison", "plot_sharpness",
            "read_sharpness_log", "sharpness", "sharpness_monitor", "stability_threshold"]
