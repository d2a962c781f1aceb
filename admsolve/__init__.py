"""admsolve: regularized segmentation losses and swappable CRF solvers.

The solver layer: energies (a grid CRF — unaries + contrast-weighted Potts, scribbles as hard
constraints — and a dense CRF) minimised by interchangeable backends behind :func:`solve`. The
training side (:mod:`admsolve.training`, needs torch) trains networks from scribbles with these
energies as losses, by gradient descent or ADM.

Layers, lowest first (a module imports only from its own layer or lower ones, checked by
tests/test_layers.py): the root's private helpers (``_validation``, ``_array``); ``filters``;
``energies``; ``backends``; ``solve``; ``data`` (which needs only the helpers); ``training``; and
the command line (``cli``, ``__main__``) with this public API on top.
"""

from ._validation import UNLABELED
from .backends import available_backends
from .energies import OFFSETS, DenseCRF, GridCRF, LabelingProblem, adm_unary, contrast_weights, scribble_unary
from .filters import PermutohedralLattice, bilateral_filter
from .solve import SolveResult, solve, solve_batch

__all__ = [
    "OFFSETS",
    "UNLABELED",
    "DenseCRF",
    "GridCRF",
    "LabelingProblem",
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
__version__ = "0.2.0"
