"""The private names the symmetry package takes from the rest of hessian_tools (and from
JAX), in one place, to re-point when those modules move."""

from jax._src.source_info_util import summarize as summarize_source

from hessian_tools._callables import LinenPredict, NNXPredict, unwrap
from hessian_tools.tree import path_str

__all__ = ["LinenPredict", "NNXPredict", "path_str", "summarize_source", "unwrap"]
