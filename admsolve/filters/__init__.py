"""The permutohedral lattice (Adams, Baek & Davis 2010): one algorithm in two forms sharing their
helpers (:mod:`.features`): :class:`PermutohedralLattice` in Numba kernels (CPU) and
:class:`ArrayLattice` in array-module operations (NumPy or CuPy, the module taken from the features).

Layer: the lowest above the root's private helpers; imports nothing else of admsolve.
"""

from .array_lattice import ArrayLattice
from .features import NORMALIZATIONS, bilateral_features, gaussian_features
from .lattice import PermutohedralLattice, bilateral_filter, exact_filter

__all__ = ["NORMALIZATIONS", "ArrayLattice", "PermutohedralLattice", "bilateral_features", "bilateral_filter",
           "exact_filter", "gaussian_features"]
