"""The private names the symmetry package takes from the rest of hessian_tools (and from
JAX), in one place, to re-point when those modules move."""

from jax._src.source_info_util import summarize as summarize_source

from hessian_tools.objective import _LinenPredict as LinenPredict
from hessian_tools.objective import _NNXPredict as NNXPredict
from hessian_tools.objective import _path_str as path_str

__all__ = ["LinenPredict", "NNXPredict", "path_str", "summarize_source"]
