"""Small reference models and data sets that ship offline (the built-in defaults)."""

from hessian_tools.examples.digits import (CNN, MLP, cross_entropy, digits_objective,
                                           load_digits_data, make_model, train)

__all__ = ["CNN", "MLP", "cross_entropy", "digits_objective", "load_digits_data",
           "make_model", "train"]
