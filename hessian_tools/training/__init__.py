"""Curvature during training: sharpness, the tracker and its log, the optax monitor,
optimizer thresholds and comparisons, saddle-free Newton."""

from hessian_tools.training.compare import compare_optimizers, measurement_subset
from hessian_tools.training.flow import gradient_flow
from hessian_tools.training.log import read_sharpness_log
from hessian_tools.training.monitor import SharpnessMonitorState, sharpness_monitor
from hessian_tools.training.optimizers import (OptimizerInfo, adaptive_preconditioner,
                                               optimizer_info, stability_threshold)
from hessian_tools.training.saddle_free import (SaddleFreeNewtonState, damped_newton,
                                                saddle_free_newton)
from hessian_tools.training.sweep import learning_rate_sweep
from hessian_tools.training.measure import sharpness
from hessian_tools.training.tracker import QUANTITIES, SharpnessTracker

__all__ = ["QUANTITIES", "OptimizerInfo", "SaddleFreeNewtonState", "SharpnessMonitorState",
           "SharpnessTracker", "adaptive_preconditioner", "compare_optimizers",
           "damped_newton", "gradient_flow", "learning_rate_sweep", "measurement_subset", "optimizer_info", "read_sharpness_log", "saddle_free_newton",
           "sharpness", "sharpness_monitor", "stability_threshold"]
