"""The grid CRF: unaries plus a contrast-weighted nearest-neighbour Potts term, with scribbles as
hard constraints (eq. 8 of Marin et al., CVPR 2019), its reference energy and the relaxation of eq. 9.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .._array import AnyArray, array_module, label_sum
from .._validation import UNLABELED, as_connectivity, as_real_array, as_scalar, describe
from .problem import LabelingProblem, check_relaxed

#: Edge directions (dy, dx). ``weights[d, y, x]`` is the weight of the edge between pixel (y, x) and
#: (y + dy, x + dx); 4-connectivity uses the first two directions, 8-connectivity all four.
OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
N_DIRECTIONS = {4: 2, 8: 4}


def edge_slices(direction: int, height: int, width: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices ``(p, q)`` selecting, in an (H, W) array, the pixels p whose neighbour
    q = p + OFFSETS[direction] lies inside the image, and those neighbours."""
    dy, dx = OFFSETS[direction]
    rows_p, rows_q = slice(0, height - dy), slice(dy, height)
    if dx >= 0:
        cols_p, cols_q = slice(0, width - dx), slice(dx, width)
    else:
        cols_p, cols_q = slice(-dx, width), slice(0, width + dx)
    return (rows_p, cols_p), (rows_q, cols_q)


def inside_mask(n_directions: int, height: int, width: int) -> np.ndarray:
    """(D, H, W) bool array, True where the edge of ``weights[d, y, x]`` lies inside the image."""
    mask = np.zeros((n_directions, height, width), dtype=bool)
    for d in range(n_directions):
        p, _ = edge_slices(d, height, width)
        mask[(d, *p)] = True
    return mask


class GridCRF(LabelingProblem):
    """Grid CRF energy with Potts pairwise terms and hard constraints.

    ``E(X) = sum_p unary[p, X_p] + lam * sum_{d, p} weights[d, p] * [X_p != X_{p + OFFSETS[d]}]``,
    minimised over labelings X that agree with ``seeds`` wherever a seed is given.

    Parameters
    ----------
    unary : (H, W, K) array_like of float
        Cost of each label at each pixel. Must be finite.
    weights : (D, H, W) array_like of float
        Non-negative edge weights, D = 2 (4-connectivity) or 4 (8-connectivity), directions as in
        :data:`OFFSETS`. Entries for edges leaving the image are ignored (stored as zero).
    lam : float, optional
        Non-negative weight of the Potts term (lambda of the paper).
    seeds, unlabeled
        Hard constraints, as in :class:`~admsolve.energies.problem.LabelingProblem`.

    Notes
    -----
    The arrays are copied, so the caller's arrays are never modified or aliased, and stored
    read-only. The problem holds plain NumPy data and pickles cheaply.
    """

    def __init__(self, unary: ArrayLike, weights: ArrayLike, *, lam: float = 1.0, seeds: ArrayLike | None = None,
                 unlabeled: int = UNLABELED) -> None:
        super().__init__(unary, seeds=seeds, unlabeled=unlabeled)
        height, width = self.shape
        weights = as_real_array(weights, "weights", 3, allow_negative=False)
        if weights.shape[0] not in (2, 4) or weights.shape[1:] != (height, width):
            raise ValueError(
                f"weights: expected shape (2, {height}, {width}) or (4, {height}, {width}) to match "
                f"unary of shape {self.unary.shape}, got {describe(weights)}"
            )
        weights[~inside_mask(weights.shape[0], height, width)] = 0.0
        self.weights = weights
        self.lam = as_scalar(lam, "lam", minimum=0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            pairwise = self.lam * float(weights.sum())
        self._check_energy_scale("unary, weights, lam", "sum of max |unary| per pixel + lam * sum of weights",
                                 0.0 if self.lam == 0 else pairwise)
        self._freeze()

    @property
    def connectivity(self) -> int:
        return 4 if self.weights.shape[0] == 2 else 8

    def __repr__(self) -> str:
        h, w = self.shape
        return (f"GridCRF({h}x{w}, K={self.n_labels}, connectivity={self.connectivity}, "
                f"lam={self.lam:g}, seeded={int(self.seeded.sum())})")

    def energy(self, labels: ArrayLike) -> float:
        """Reference energy of a discrete labeling (the one figure every backend reports).

        Parameters
        ----------
        labels : (H, W) array_like of int
            Values in [0, K). Seeds are not checked here: see :meth:`violates_seeds`.

        Returns
        -------
        float
        """
        labels = self.check_labels(labels)
        data = np.take(self.unary, np.arange(labels.size) * self.n_labels + labels.ravel()).sum()
        return float(data + self.lam * self.cut_weight(labels))

    def cut_weight(self, labels: np.ndarray) -> float:
        """Sum of the weights of the edges whose two pixels have different labels (no lambda)."""
        height, width = self.shape
        total = 0.0
        for d in range(self.weights.shape[0]):
            p, q = edge_slices(d, height, width)
            total += np.sum(self.weights[(d, *p)] * (labels[p] != labels[q]))
        return float(total)

    def relaxed_energy(self, probs: ArrayLike) -> tuple[float, np.ndarray]:
        """Relaxed energy of soft labels and its gradient.

        ``R(S) = sum_p <unary_p, S_p> + lam * sum_{pq} w_pq * (<1, S_p>/2 + <1, S_q>/2 - <S_p, S_q>)``,
        which is eq. 9 of the paper halved, so that at one-hot S it equals :meth:`energy` (eq. 9 counts
        every cut edge twice).

        Parameters
        ----------
        probs : (H, W, K) array_like of float
            Soft labeling S, normally on the probability simplex (not required).

        Returns
        -------
        value : float
        grad : (H, W, K) ndarray, dR/dS.
        """
        probs = self.check_probs(probs)
        with np.errstate(over="ignore", invalid="ignore"):
            value, grad = relaxed_energy_arrays(self.unary, self.weights, self.lam, probs)
        return check_relaxed(value, grad)



def relaxed_energy_arrays(unary: AnyArray, weights: AnyArray, lam: float, probs: AnyArray) -> tuple[float, AnyArray]:
    """The arithmetic of :meth:`GridCRF.relaxed_energy`, without validation, on NumPy or CuPy arrays.

    ``unary`` and ``probs`` are (H, W, K), ``weights`` (D, H, W), all of one array module (that of
    ``probs``); ``lam`` a float. Returns ``(value, grad)``: value a Python float, grad an (H, W, K)
    array of that module with the dtype of ``unary``.

    Per edge pq of weight w: ``w (mass_p / 2 + mass_q / 2 - <S_p, S_q>)``, gradient ``w (1/2 - S_q)``
    at p; the halves are gathered per pixel first, and every sum is over whole arrays (no reduction
    over the short label axis), one read of the sums at the end.
    """
    xp = array_module(probs)
    height, width = probs.shape[:2]
    grad = unary.copy()
    half = xp.zeros((height, width), dtype=grad.dtype)  # lam / 2 times the weight of the edges at each pixel
    overlap = []
    for d in range(weights.shape[0]):
        p, q = edge_slices(d, height, width)
        w = lam * weights[(d, *p)]
        half[p] += 0.5 * w
        half[q] += 0.5 * w
        towards_q = w[..., None] * probs[q]
        overlap.append(xp.sum(towards_q * probs[p]))
        grad[p] -= towards_q
        grad[q] -= w[..., None] * probs[p]
    grad += half[..., None]
    value = xp.sum(unary * probs) + xp.sum(half * label_sum(probs))
    for term in overlap:
        value = value - term
    return float(value), grad


def contrast_weights(image: ArrayLike, *, connectivity: int = 8, sigma2: float | None = None,
                     mask: ArrayLike | None = None) -> np.ndarray:
    """Contrast-sensitive edge weights of a grid CRF (eq. 2 of the paper, without lambda).

    ``w_pq = exp(-||I_p - I_q||^2 / (2 sigma^2)) / dist(p, q)``: diagonal edges are divided by sqrt(2).

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
        Grayscale or colour image, integer (e.g. uint8) or float.
    connectivity : {4, 8}, optional
    sigma2 : float, optional
        sigma^2 of eq. 2. By default the Boykov-Jolly rule: the mean of ||I_p - I_q||^2 over all
        neighbouring pairs of the chosen connectivity. If that mean is 0 (a constant image) the
        exponential is taken as 1: weights are 1 (diagonals 1/sqrt(2)).
    mask : (H, W) array_like of bool, optional
        The pixels that take part (e.g. not crop padding): an edge with an end outside the mask gets
        weight 0 and is left out of sigma^2's mean, so the weights inside equal those of the
        masked-out pixels' absence. Default: every pixel.

    Returns
    -------
    weights : (D, H, W) ndarray of float64
        D = 2 or 4; entries for edges leaving the image (or the mask) are 0.
    """
    connectivity = as_connectivity(connectivity)
    image = as_real_array(image, "image", (2, 3))
    if image.ndim == 2:
        image = image[..., None]
    if sigma2 is not None:
        sigma2 = as_scalar(sigma2, "sigma2")
        if sigma2 <= 0:
            raise ValueError(f"sigma2: expected a positive number, got {sigma2!r}")
    peak = float(np.abs(image).max())
    if peak > 2.0**400 or 0 < peak < 2.0**-400:
        # squared differences would overflow (or underflow): work in units of a power of two near the
        # largest value, which is exact and leaves the ratios ||I_p - I_q||^2 / sigma^2 unchanged
        exponent = int(np.frexp(peak)[1])
        image = np.ldexp(image, -exponent)
        if sigma2 is not None:
            with np.errstate(over="ignore", under="ignore"):
                sigma2 = float(np.ldexp(sigma2, -2 * exponent))
    from ._kernels import contrast_weights_into  # Numba, loaded when first used

    height, width = image.shape[:2]
    if mask is None:
        mask = np.ones((height, width), dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != (height, width) or mask.dtype != bool:
            raise ValueError(f"mask: expected a bool array of shape {(height, width)} (the image's), "
                             f"got {describe(mask)}")
    weights = np.zeros((N_DIRECTIONS[connectivity], height, width))
    contrast_weights_into(np.ascontiguousarray(image), np.ascontiguousarray(mask), -1.0 if sigma2 is None else sigma2,
                          weights)
    if not np.all(np.isfinite(weights)):  # not expected: every step above stays in range
        raise ValueError("image: the contrast weights are not finite; expected an image of moderate values")
    return weights
