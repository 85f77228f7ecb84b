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
from hessian_tools.results import Eigenpairs
from hessian_tools.spectrum import default_tol, eigenvalues

__version__ = "0.1.0"

__all__ = [
    "CurvatureOperator", "Eigenpairs", "Objective", "default_tol", "dense_hessian",
    "eigenvalues", "empirical_fisher", "from_dense", "gauss_newton", "gradient", "hessian",
    "linalg", "plot_eigenvalues", "plots", "to_dense", "tree", "value_and_grad",
]
