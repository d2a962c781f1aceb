"""What every energy model shares: per-pixel unaries and scribbles as hard constraints."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .._array import device_of, label_max
from .._validation import UNLABELED, as_label_map, as_real_array, as_scalar, describe

#: The largest energy bound a problem may have: the solvers add up to a dozen times the energy (the
#: capacities of a graph-cut move), which must stay finite in float64.
ENERGY_LIMIT = float(np.finfo(np.float64).max) / 64


def check_relaxed(value: float, grad: np.ndarray) -> tuple[float, np.ndarray]:
    """(value, grad) of a relaxed energy, or a ValueError when they overflowed float64."""
    if not (np.isfinite(value) and np.all(np.isfinite(grad))):
        raise ValueError(f"probs: the relaxed energy at these soft labels is not finite (got {value:g}): "
                         f"expected soft labels of moderate size, e.g. on the probability simplex")
    return value, grad


class LabelingProblem:
    """Unaries and seeds of a labeling problem on an H x W image with K labels.

    Subclasses (:class:`~admsolve.GridCRF`, :class:`~admsolve.DenseCRF`) add the pairwise model
    and the energy. All arrays are validated NumPy copies, stored read-only (also after unpickling),
    so that the reference energy is computed in one place; :attr:`device` remembers where the
    inputs came from ("cuda" when the unaries were a CuPy array), and the array-module backends
    (``relaxed-gd``, ``mean-field``) run there by default.

    Parameters
    ----------
    unary : (H, W, K) array_like of float
        Cost of each label at each pixel. Must be finite.
    seeds : (H, W) array_like of int, optional
        Hard constraints: a value in [0, K) fixes that pixel's label, ``unlabeled`` leaves it free.
    unlabeled : int, optional
        The value of ``seeds`` that marks a free pixel (:data:`admsolve.UNLABELED`, 255, as in
        scribble PNGs).

    Attributes
    ----------
    device : {"cpu", "cuda"}
        Where `unary` lived: the default device of the array-module backends.
    energy_scale : float
        An upper bound of ``|E(X)|`` over all labelings (``sum_p max_k |unary[p, k]|`` plus the
        largest pairwise total, set by the subclass); the scale of the solvers' relative tolerances.
        Problems whose bound exceeds :data:`ENERGY_LIMIT` (float64 overflow) are refused.
    """

    def __init__(self, unary: ArrayLike, *, seeds: ArrayLike | None = None, unlabeled: int = UNLABELED) -> None:
        self.device = device_of(unary)
        unary = as_real_array(unary, "unary", 3)
        height, width, n_labels = unary.shape
        self.unlabeled = as_scalar(unlabeled, "unlabeled", integer=True)
        if 0 <= self.unlabeled < n_labels:
            raise ValueError(f"unlabeled: expected a value outside [0, {n_labels}), got {unlabeled} (the labels "
                             f"of unary, K = {n_labels}, include it: pass another unlabeled=)")
        if not -2**31 <= self.unlabeled < 2**31:
            raise ValueError(f"unlabeled: expected a 32-bit integer, got {unlabeled}")
        if seeds is None:
            seeds = np.full((height, width), self.unlabeled, dtype=np.int32)
        else:
            seeds = as_label_map(seeds, "seeds", (height, width), n_labels, unlabeled=self.unlabeled)
        self.unary, self.seeds = unary, seeds
        with np.errstate(over="ignore"):
            self.energy_scale = float(label_max(np.abs(unary)).sum())
        self._check_energy_scale("unary", "the unaries")

    def _check_energy_scale(self, names, terms, pairwise=0.0):
        """Add the bound of the pairwise terms to ``energy_scale`` and refuse a problem whose energy
        can leave float64's range (`names`: the arguments to scale down; `terms`: what they sum)."""
        with np.errstate(over="ignore", invalid="ignore"):
            bound = self.energy_scale + float(pairwise)
        if not bound <= ENERGY_LIMIT:  # also catches inf and NaN
            raise ValueError(f"{names}: the energy can reach {bound:.4g} ({terms}), beyond the {ENERGY_LIMIT:.4g} "
                             f"that float64 sums safely; scale them down")
        self.energy_scale = bound

    def _freeze(self):
        """Make every array attribute read-only."""
        for value in vars(self).values():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False

    def __setstate__(self, state):
        """Unpickled copies (e.g. in solve_batch's worker processes) stay read-only too."""
        self.__dict__.update(state)
        self._freeze()

    @property
    def shape(self) -> tuple[int, ...]:
        """(H, W) of the image."""
        return self.unary.shape[:2]

    @property
    def n_labels(self) -> int:
        return self.unary.shape[2]

    @property
    def seeded(self) -> np.ndarray:
        """(H, W) bool array, True where a seed fixes the label."""
        return self.seeds != self.unlabeled

    def energy(self, labels: ArrayLike) -> float:
        """The reference energy of a labeling; every subclass defines its own."""
        raise NotImplementedError(f"{type(self).__name__} defines no energy: subclass GridCRF or DenseCRF, or define "
                                  f"energy(labels)")

    def check_labels(self, labels: ArrayLike, name: str = "labels") -> np.ndarray:
        """Return `labels` as a new int32 (H, W) array, checking shape and range."""
        return as_label_map(labels, name, self.shape, self.n_labels)

    def apply_seeds(self, labels: ArrayLike, name: str = "labels") -> np.ndarray:
        """Return a copy of `labels` (checked, errors naming `name`) with every seeded pixel set to its seed."""
        labels = self.check_labels(labels, name)
        return np.where(self.seeded, self.seeds, labels).astype(np.int32)

    def initial_labels(self) -> np.ndarray:
        """The labeling solvers start from by default: per-pixel argmin of the unaries, seeds applied."""
        return self.apply_seeds(np.argmin(self.unary, axis=2))

    def check_probs(self, probs: ArrayLike) -> np.ndarray:
        """Return soft labels `probs` as a new float (H, W, K) array, checking their shape."""
        probs = as_real_array(probs, "probs", 3)
        if probs.shape != self.unary.shape:
            raise ValueError(f"probs: expected shape {self.unary.shape}, got {describe(probs)}")
        return probs

    def violates_seeds(self, labels: ArrayLike) -> bool:
        """True if `labels` differs from a seed anywhere."""
        labels = self.check_labels(labels)
        return bool(np.any(self.seeded & (labels != self.seeds)))
