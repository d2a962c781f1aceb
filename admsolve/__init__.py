"""admsolve: regularized segmentation losses and swappable CRF solvers.

The solver layer: a grid CRF (unaries + contrast-weighted Potts, scribbles as hard constraints)
minimised by interchangeable backends behind :func:`solve`.
"""

from .backends import available_backends
from .filters.lattice import PermutohedralLattice, bilateral_filter
from .energies.densecrf import DenseCRF
from .energies.gridcrf import OFFSETS, GridCRF, contrast_weights
from .solve import SolveResult, solve, solve_batch
from .energies.unaries import adm_unary, scribble_unary

__all__ = [
    "OFFSETS",
    "DenseCRF",
    "GridCRF",
    "PermutohedralLattice",
    "SolveResult",
    "adm_unary",
    "available_backends",
    "bilateral_filter",
    "contrast_weights",
    "scribble_unary",
    "solve",
    "solve_batch",
]
__version__ = "0.1.0"
