"""Loss landscapes: directions, surfaces, interpolation and barriers, trajectories, curvature maps.

Li et al. (2018)'s filter-normalised surfaces, Frankle et al. (2020)'s barriers on linear
paths, Garipov et al. (2018)'s planes through three points, Li et al.'s PCA trajectory
plots and |lambda_min / lambda_max| curvature maps, evaluated many points per compiled
call.
"""

from hessian_tools.landscape.directions import (Directions, difference_direction,
                                                eigenvector_directions, fingerprint,
                                                load_directions, plane_directions,
                                                random_directions, save_directions,
                                                trajectory_directions)
from hessian_tools.landscape.curvature import curvature_map, snake_order
from hessian_tools.landscape.evaluate import OutputMetric, accuracy, evaluate_points, on_outputs
from hessian_tools.landscape.plots import (plot_curvature_map, plot_interpolation, plot_surface,
                                           plot_trajectory)
from hessian_tools.landscape.results import CurvatureMap, InterpolationPath, LossSurface, barrier
from hessian_tools.landscape.storage import read_surface_file
from hessian_tools.landscape.surface import interpolate, loss_surface, plane

__all__ = ["CurvatureMap", "Directions", "InterpolationPath", "LossSurface", "OutputMetric",
           "accuracy", "barrier", "curvature_map", "difference_direction",
           "eigenvector_directions", "evaluate_points", "fingerprint", "interpolate",
           "load_directions", "loss_surface", "on_outputs", "plane", "plane_directions",
           "plot_curvature_map", "plot_interpolation", "plot_surface", "plot_trajectory",
           "random_directions", "read_surface_file", "save_directions", "snake_order",
           "trajectory_directions"]
