"""The fully connected (dense) CRF of Krähenbühl & Koltun (NIPS 2011): unaries plus Potts terms
between every pair of pixels, weighted by Gaussian kernels over position and colour (eq. 3 of the
paper), with scribbles as hard constraints. Kernels are applied with the permutohedral lattice of
:mod:`admsolve.filters.lattice`, exactly as pydensecrf applies them.

The energy
----------
For kernel m (the bilateral one, and the Gaussian one when used) let ``K_m`` be the (N x N) operator
that :meth:`~admsolve.filters.lattice.PermutohedralLattice.filter` applies with pydensecrf's default
symmetric normalisation, ``K_m = n_m^-1/2 W_m n_m^-1/2`` (``W_m`` the lattice's approximation of the
Gaussian kernel matrix, centre included, ``n_m = W_m 1``). Then, for a labeling X,

    E(X) = sum_p unary[p, X_p] + sum_m (compat_m / 2) sum_{p, q} K_m[p, q] [X_p != X_q]
         = sum_p unary[p, X_p] + sum_m (compat_m / 2) sum_k 1_k^T K_m (1 - 1_k),

with ``1_k`` the indicator vector of label k (the diagonal never counts: [X_p != X_p] = 0). For a
symmetric kernel this is ``sum_{p<q} compat_m K_m[p, q] [X_p != X_q]``, the Potts model of the paper
with ``mu(l, l') = compat_m [l != l']`` and kernel weights K_m.

Its relaxation over soft labels S (rows on the probability simplex) is

    R(S) = <unary, S> + sum_m (compat_m / 2) sum_k S_k^T K_m (1 - S_k),

equal to E at one-hot S, with gradient ``unary + sum_m (compat_m / 2) (K_m (1 - S) - K_m^T S)``.
For a symmetric K_m that is ``unary + sum_m compat_m (K_m 1 / 2 - K_m S)``, and as ``K_m 1 / 2`` is
constant across the labels of a pixel, pydensecrf's mean-field update (its ``PottsCompatibility(w)``
gives the message ``-w K_m Q``)

    Q <- softmax(-unary + sum_m compat_m K_m Q)

is exactly ``Q <- softmax(-grad R(Q))``: the fixed points of mean-field are those of the relaxed
energy's "softmax of the negative gradient". The lattice operator is nearly but not exactly
symmetric (see :class:`~admsolve.filters.lattice.PermutohedralLattice`), so this holds up to that asymmetry.
Like pydensecrf, the message includes the pixel itself (``K_m[p, p] Q_p``); that term does not enter
the discrete energy.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .._validation import UNLABELED, as_positive, as_real_array, as_scalar, describe
from ..filters.lattice import PermutohedralLattice, bilateral_features, gaussian_features
from .problem import LabelingProblem, check_relaxed

#: The normalisation of every kernel: pydensecrf's default, NORMALIZE_SYMMETRIC.
NORMALIZATION = "symmetric"


def _as_colour_image(image, shape):
    """`image` as a new float64 (H, W, 3) array with values in [0, 255], checked against (H, W)."""
    if isinstance(image, np.ndarray) and image.dtype == bool:
        raise TypeError(f"image: expected a uint8 or float array, got {describe(image)}")
    arrived = image.dtype if hasattr(image, "dtype") else np.asarray(image).dtype  # what came, not the float64 copy
    image = as_real_array(image, "image", 3)
    if image.shape != (*shape, 3):
        raise ValueError(f"image: expected shape ({shape[0]}, {shape[1]}, 3) to match unary, "
                         f"got array of shape {image.shape} and dtype {arrived}")
    if image.min() < 0 or image.max() > 255:
        raise ValueError(f"image: expected values in [0, 255], got range "
                         f"[{image.min():g}, {image.max():g}]")
    return image


class DenseCRF(LabelingProblem):
    """Dense CRF energy with Gaussian-weighted Potts terms between all pixels, and hard constraints.

    ``E(X) = sum_p unary[p, X_p] + sum_m (compat_m / 2) sum_{p,q} K_m[p, q] [X_p != X_q]`` (see the
    module docstring for ``K_m``), minimised over labelings that agree with ``seeds``.

    Parameters
    ----------
    unary : (H, W, K) array_like of float
        Cost of each label at each pixel (e.g. minus log-probabilities). Must be finite.
    image : (H, W, 3) array_like
        Colour image, uint8 or float with values in [0, 255], used as it is by the bilateral kernel.
    sxy, srgb : float, optional
        Spatial (pixels) and colour standard deviations of the bilateral kernel, > 0: pydensecrf's
        ``addPairwiseBilateral(sxy, srgb, rgbim, compat)``.
    compat : float, optional
        Non-negative Potts weight of the bilateral kernel; 0 drops it.
    gaussian_sxy : float or None, optional
        Spatial standard deviation of the smoothness (position-only) kernel, > 0: pydensecrf's
        ``addPairwiseGaussian(sxy, compat)``. None drops that kernel.
    gaussian_compat : float, optional
        Non-negative Potts weight of the Gaussian kernel; 0 drops it.
    seeds, unlabeled
        Hard constraints, as in :class:`~admsolve.energies.problem.LabelingProblem`.

    Attributes
    ----------
    kernels : tuple of (str, float, PermutohedralLattice)
        ``(name, compat, lattice)`` of each kernel in use ("bilateral", then "gaussian"), built once.

    Notes
    -----
    Arrays are copied and stored read-only. The lattices are not pickled: unpickling rebuilds them
    from the stored image and parameters.
    """

    def __init__(self, unary: ArrayLike, image: ArrayLike, *, sxy: float = 80, srgb: float = 13, compat: float = 10,
                 gaussian_sxy: float | None = 3, gaussian_compat: float = 3, seeds: ArrayLike | None = None,
                 unlabeled: int = UNLABELED) -> None:
        super().__init__(unary, seeds=seeds, unlabeled=unlabeled)
        self.image = _as_colour_image(image, self.shape)
        self.sxy = as_positive(sxy, "sxy")
        self.srgb = as_positive(srgb, "srgb")
        self.compat = as_scalar(compat, "compat", minimum=0.0)
        self.gaussian_sxy = None if gaussian_sxy is None else as_positive(gaussian_sxy, "gaussian_sxy")
        self.gaussian_compat = as_scalar(gaussian_compat, "gaussian_compat", minimum=0.0)
        self._freeze()
        self._build_kernels()
        with np.errstate(over="ignore", invalid="ignore"):
            pairwise = sum(0.5 * compat * lattice.total(NORMALIZATION) for _, compat, lattice in self.kernels)
        self._check_energy_scale("unary, compat, gaussian_compat",
                                 "sum of max |unary| per pixel + the kernels' weights times compat / 2", pairwise)

    def kernel_features(self) -> list[tuple[str, float, np.ndarray]]:
        """``(name, compat, features)`` of each kernel in use: the bilateral one, then the Gaussian."""
        kernels = []
        if self.compat > 0:
            kernels.append(("bilateral", self.compat, bilateral_features(self.image, sxy=self.sxy, srgb=self.srgb)))
        if self.gaussian_sxy is not None and self.gaussian_compat > 0:
            kernels.append(("gaussian", self.gaussian_compat, gaussian_features(self.shape, sxy=self.gaussian_sxy)))
        return kernels

    def _build_kernels(self):
        """Build the lattices of the kernels in use."""
        self.kernels = tuple((name, compat, PermutohedralLattice(features))
                             for name, compat, features in self.kernel_features())
        self._last_energy = None
        self._ones = None

    @property
    def _kernel_ones(self):
        """``K_m 1`` of each kernel (read-only), computed on first use (by :meth:`relaxed_energy`)."""
        if self._ones is None:
            ones = np.ones(self.unary.shape[0] * self.unary.shape[1])
            filtered = tuple(lattice.filter(ones, normalization=NORMALIZATION) for _, _, lattice in self.kernels)
            for array in filtered:
                array.flags.writeable = False
            self._ones = filtered
        return self._ones

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["kernels"], state["_ones"], state["_last_energy"]
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._build_kernels()

    def __repr__(self) -> str:
        h, w = self.shape
        gaussian = "None" if self.gaussian_sxy is None else f"{self.gaussian_sxy:g}"
        return (f"DenseCRF({h}x{w}, K={self.n_labels}, sxy={self.sxy:g}, srgb={self.srgb:g}, "
                f"compat={self.compat:g}, gaussian_sxy={gaussian}, gaussian_compat={self.gaussian_compat:g}, "
                f"seeded={int(self.seeded.sum())})")

    def filter(self, values: ArrayLike, index: int, *, transpose: bool = False,
               out: np.ndarray | None = None) -> np.ndarray:
        """``K_m values`` (or ``K_m^T values``) for kernel ``self.kernels[index]``, on (N, C) values."""
        return self.kernels[index][2].filter(values, normalization=NORMALIZATION, transpose=transpose, out=out)

    def energy(self, labels: ArrayLike) -> float:
        """Reference energy of a discrete labeling (the one figure the backend reports).

        Computed through the lattice: ``sum_m (compat_m / 2) sum_p (K_m (1 - 1_{X_p}))_p``, the filter of
        the indicator of the labels other than p's read at p, by
        :meth:`~admsolve.filters.lattice.PermutohedralLattice.disagreement` (each pixel splats into its
        own label only: about the cost of filtering one channel). The last result is remembered:
        asking again for the same labeling, as :func:`~admsolve.solve` does for a backend's result,
        costs a comparison.

        Parameters
        ----------
        labels : (H, W) array_like of int
            Values in [0, K). Seeds are not checked here: see :meth:`violates_seeds`.

        Returns
        -------
        float
        """
        labels = self.check_labels(labels).ravel()
        last = self._last_energy  # (labels, energy) of the last call: solve() asks again for the result's
        if last is not None and np.array_equal(last[0], labels):
            return last[1]
        data = float(np.take(self.unary, np.arange(labels.size) * self.n_labels + labels).sum())
        pairwise = 0.0
        for _, compat, lattice in self.kernels:
            pairwise += 0.5 * compat * float(lattice.disagreement(labels, normalization=NORMALIZATION).sum())
        value = data + pairwise if self.kernels else data
        self._last_energy = (labels, value)  # labels is our own copy
        return value

    def relaxed_energy(self, probs: ArrayLike) -> tuple[float, np.ndarray]:
        """Relaxed energy of soft labels and its gradient.

        ``R(S) = <unary, S> + sum_m (compat_m / 2) sum_k S_k^T K_m (1 - S_k)``, equal to
        :meth:`energy` at one-hot S. The gradient uses the transpose of the lattice operator.

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
        n = self.shape[0] * self.shape[1]
        flat = probs.reshape(n, self.n_labels)
        value = float(np.sum(self.unary * probs))
        grad = self.unary.reshape(n, self.n_labels).copy()
        mass = flat.sum(axis=1)
        for m, (_, compat, _) in enumerate(self.kernels):
            forward = self.filter(flat, m)
            backward = self.filter(flat, m, transpose=True)
            ones = self._kernel_ones[m]
            value += 0.5 * compat * float(ones @ mass - np.sum(forward * flat))
            grad += 0.5 * compat * (ones[:, None] - forward - backward)
        return check_relaxed(value, grad.reshape(self.unary.shape))
