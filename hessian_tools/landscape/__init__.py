"""Loss landscapes: directions, surfaces, interpolation and barriers, trajectories, curvature maps.

Li et al. (2018)'s filter-normalised surfaces and PCA trajectory plots, Frankle et al.
(2020)'s barriers on linear paths, Garipov et al. (2018)'s planes through three points, and
Li et al.'s ``|lambda_min / lambda_max|`` curvature maps. Many points run per compiled call,
with the work that is affine in the grid coordinates (the first layer) shared across them.

Example::

    from hessian_tools import landscape as L
    dirs = L.random_directions(obj.params, key, normalization="filter", ignore="biasbn")
    surf = L.loss_surface(obj, dirs, grid=(np.linspace(-1, 1, 51),) * 2,
                          metric=L.accuracy, path="surface.npz")        # resumable
    L.plot_surface(surf, kind="filled")
    path = L.interpolate(obj, params_a, params_b, num_points=25)        # path.barrier
    traj = L.trajectory_directions(checkpoints)       # PCA of checkpoint - final
    tsurf = L.loss_surface(obj.with_params(checkpoints[-1]), traj, grid=...)
    L.plot_trajectory(tsurf, traj)
    cmap = L.curvature_map(obj, dirs, grid=(np.linspace(-1, 1, 11),) * 2, key=key)
"""

from hessian_tools.landscape.curvature import curvature_map, snake_order
from hessian_tools.landscape.directions import (Directions, difference_direction,
                                                eigenvector_directions, fingerprint,
                                                load_directions, plane_directions,
                                                random_directions, save_directions,
                                                trajectory_directions)
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
