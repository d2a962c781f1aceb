"""The energies: problem classes (:class:`LabelingProblem`, :class:`GridCRF`, :class:`DenseCRF`) as
read-only array data with their one reference ``energy()``, contrast weights, and unaries.

Layer: imports :mod:`admsolve.filters` (the dense CRF's lattice) and the root's private helpers; never
the backends, :mod:`admsolve.solve`, data or training.
"""

from .densecrf import DenseCRF
from .gridcrf import OFFSETS, GridCRF, contrast_weights
from .problem import LabelingProblem
from .unaries import adm_unary, scribble_unary

__all__ = ["OFFSETS", "DenseCRF", "GridCRF", "LabelingProblem", "adm_unary", "contrast_weights", "scribble_unary"]
