"""DeepLab's dense-CRF post-processing of a network's softmax, through ``solve(DenseCRF, "mean-field")``
(torch-free, so that the command line reads its defaults without importing torch)."""

from __future__ import annotations

import numpy as np

from ..energies.densecrf import DenseCRF
from ..energies.unaries import adm_unary
from ..solve import SolveResult, solve

__all__ = ["CRF_DEFAULTS", "dense_crf"]

#: DeepLab's usual dense-CRF post-processing: the bilateral kernel of DeepLab v2's released models (weight 4,
#: spatial width 67 px, colour width 3), the common Gaussian kernel (weight 3, width 3 px), 10 mean-field
#: iterations. The weights and widths mean what pydensecrf's (and :class:`admsolve.DenseCRF`'s) do.
CRF_DEFAULTS = {"sxy": 67.0, "srgb": 3.0, "compat": 4.0, "gaussian_sxy": 3.0, "gaussian_compat": 3.0, "max_iter": 10}


def dense_crf(image: np.ndarray, probs: np.ndarray, *, sxy: float = CRF_DEFAULTS["sxy"],
              srgb: float = CRF_DEFAULTS["srgb"], compat: float = CRF_DEFAULTS["compat"],
              gaussian_sxy: float = CRF_DEFAULTS["gaussian_sxy"],
              gaussian_compat: float = CRF_DEFAULTS["gaussian_compat"],
              max_iter: int = CRF_DEFAULTS["max_iter"]) -> SolveResult:
    """A network's softmax refined by a dense CRF, as DeepLab post-processes: unaries -log S
    (:func:`admsolve.adm_unary`), bilateral and Gaussian kernels as :class:`admsolve.DenseCRF` takes them,
    solved by ``solve(problem, "mean-field", max_iter=max_iter)``.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
    probs : (H, W, K) ndarray of float
        The softmax of the network.
    sxy, srgb, compat : float, optional
        The bilateral kernel's spatial width (px), colour width and weight (pydensecrf's meaning).
    gaussian_sxy, gaussian_compat : float, optional
        The Gaussian kernel's width (px) and weight.
    max_iter : int, optional
        Mean-field iterations.

    Returns
    -------
    SolveResult
        ``labels`` (H, W) and ``probs`` (H, W, K), the mean-field marginals, among its fields.
    """
    problem = DenseCRF(adm_unary(probs), image, sxy=sxy, srgb=srgb, compat=compat, gaussian_sxy=gaussian_sxy,
                       gaussian_compat=gaussian_compat)
    return solve(problem, "mean-field", max_iter=max_iter)
