"""Permutation symmetry of hidden units: specs derived from the model, and alignment.

>>> spec = ht.symmetry.permutation_spec(model, x)                        # doctest: +SKIP
>>> aligned, perm = ht.symmetry.align(params_a, params_b, spec)         # doctest: +SKIP
"""

from hessian_tools.symmetry.align import Alignment, activation_matching, align, weight_matching
from hessian_tools.symmetry.connectivity import Connectivity, connectivity
from hessian_tools.symmetry.derive import hidden_activations, permutation_spec
from hessian_tools.symmetry.plots import plot_connectivity
from hessian_tools.symmetry.repair import reset_batch_stats
from hessian_tools.symmetry.spec import (
    PermutationSpec,
    apply_permutation,
    identity_permutation,
    inverse_permutation,
    random_permutation,
)

__all__ = ["Alignment", "Connectivity", "PermutationSpec", "activation_matching", "align",
           "apply_permutation", "connectivity", "plot_connectivity",
           "hidden_activations", "identity_permutation", "inverse_permutation",
           "permutation_spec", "random_permutation", "reset_batch_stats", "weight_matching"]
