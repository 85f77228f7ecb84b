"""Every private name the landscape package borrows from the rest of hessian_tools.

Kept in one module so that when those pieces move (``operators`` -> ``linalg``/``data``,
``tracking`` -> ``training``) only these imports need re-pointing.
"""

from hessian_tools.objective import (_as_pytree_fn, _check_same_structure, _path_str,
                                     _with_precision, check_finite)
from hessian_tools.operators import (_conv_activation_cached, _conv_on_cpu, _dataset_mean,
                                     _product_groups, _spec_cached)
from hessian_tools.results import _jsonable
from hessian_tools.spectral_density import _Serializable
from hessian_tools.tracking import _top

__all__ = ["_as_pytree_fn", "_check_same_structure", "_conv_activation_cached", "_conv_on_cpu",
           "_dataset_mean", "_jsonable", "_path_str", "_product_groups", "_Serializable", "_spec_cached", "_top",
           "_with_precision", "check_finite"]
