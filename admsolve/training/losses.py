"""Losses for weakly supervised (scribble) segmentation, after Marin et al., CVPR 2019.

* :func:`partial_cross_entropy` -- the partial cross-entropy ``l(S, Y)`` over scribbled pixels.
* :func:`grid_crf_loss` -- the relaxed grid-CRF (contrast-weighted Potts) regularised loss of eq. 9
  (halved, so that at one-hot S it equals the discrete Potts energy of :class:`admsolve.GridCRF`).
* :func:`dense_crf_loss` -- the relaxed dense-CRF loss ``sum_k S_k^T W (1 - S_k)``, W the bilateral
  kernel filtered through the permutohedral lattice (CPU, NumPy round trip).
* :func:`proximal_loss` -- the proximal term of eq. 7, ``gamma * sum_{p in Omega_H} D(X_p | S_p)``,
  pulling the network towards the latent labeling X found by a discrete solver (ADM).

Each loss is a function plus an :class:`torch.nn.Module` wrapping it.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validation import as_positive, as_scalar
from ..filters.lattice import PermutohedralLattice, bilateral_features
from ..energies.densecrf import NORMALIZATION
from ..energies.gridcrf import contrast_weights, edge_slices

__all__ = [
    "DenseCRFLoss",
    "GridCRFLoss",
    "PartialCrossEntropyLoss",
    "ProximalLoss",
    "dense_crf_loss",
    "grid_crf_loss",
    "partial_cross_entropy",
    "proximal_loss",
]


# --------------------------------------------------------------------------- input checks


def _describe(value):
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return type(value).__name__


def _check_float_tensor(value, name, ndim=4):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_describe(value)}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {_describe(value)}")
    if value.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor (N, K, H, W), got {_describe(value)}")
    if value.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got {_describe(value)}")
    return value


def _check_labels(value, name, shape, n_labels, ignore_index=None):
    """Check an integer (N, H, W) label tensor with values in [0, K) (or `ignore_index`)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_describe(value)}")
    if value.dtype != torch.int64:
        raise TypeError(f"{name}: expected an int64 (long) tensor, got {_describe(value)}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} to match the predictions, "
                         f"got {_describe(value)}")
    valid = (value >= 0) & (value < n_labels)
    if ignore_index is not None:
        valid |= value == ignore_index
    if not bool(valid.all()):
        bad = torch.unique(value[~valid])[:5].tolist()
        allowed = f"[0, {n_labels})" + ("" if ignore_index is None else f" or {ignore_index} (ignored)")
        raise ValueError(f"{name}: expected values in {allowed}, got {bad}")
    return value


def _check_ignore_index(ignore_index):
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index: expected an integer, got {_describe(ignore_index)}")
    return int(ignore_index)


def _images_as_numpy(images, shape):
    """`images` as a list of N float64 (H, W, 3) NumPy arrays.

    Accepts an (N, H, W, 3) NumPy array (uint8 or float) or an (N, 3, H, W) tensor.
    """
    n, height, width = shape
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or tuple(images.shape) != (n, 3, height, width):
            raise ValueError(f"images: expected a tensor of shape ({n}, 3, {height}, {width}) "
                             f"to match the predictions, got {_describe(images)}")
        if images.dtype == torch.bool or images.is_complex():
            raise TypeError(f"images: expected a real-valued tensor, got {_describe(images)}")
        array = images.detach().cpu().to(torch.float64).permute(0, 2, 3, 1).numpy()
    elif isinstance(images, np.ndarray):
        if images.dtype == bool or not np.issubdtype(images.dtype, np.number) \
                or np.issubdtype(images.dtype, np.complexfloating):
            raise TypeError(f"images: expected a uint8 or float array, got {_describe(images)}")
        if images.shape != (n, height, width, 3):
            raise ValueError(f"images: expected an array of shape ({n}, {height}, {width}, 3) "
                             f"to match the predictions, got {_describe(images)}")
        array = images.astype(np.float64)
    else:
        raise TypeError(f"images: expected an (N, H, W, 3) NumPy array or an (N, 3, H, W) tensor, "
                        f"got {_describe(images)}")
    if not np.all(np.isfinite(array)):
        raise ValueError("images: expected finite values")
    return [np.ascontiguousarray(array[i]) for i in range(n)]


# --------------------------------------------------------------------------- partial cross-entropy


def partial_cross_entropy(logits, scribbles, *, ignore_index=255):
    r"""Partial cross-entropy: the mean cross-entropy over the scribbled pixels.

    ``l(S, Y) = -1/|Omega_L| sum_{p in Omega_L} log S_p[Y_p]`` with ``S = softmax(logits)`` over the
    label dimension and Omega_L the pixels of the batch whose scribble is not `ignore_index`.

    Parameters
    ----------
    logits : (N, K, H, W) torch.Tensor of float
        Network outputs before the softmax.
    scribbles : (N, H, W) torch.Tensor of int64
        Scribble labels in [0, K), `ignore_index` where unlabelled.
    ignore_index : int, optional
        Value marking unscribbled pixels.

    Returns
    -------
    torch.Tensor
        A scalar.

    Raises
    ------
    ValueError
        If no pixel of the batch is scribbled (the mean would be undefined), or on bad shapes/values.
    """
    ignore_index = _check_ignore_index(ignore_index)
    logits = _check_float_tensor(logits, "logits")
    n, k, height, width = logits.shape
    scribbles = _check_labels(scribbles, "scribbles", (n, height, width), k, ignore_index)
    if not bool((scribbles != ignore_index).any()):
        raise ValueError(f"scribbles: expected at least one scribbled pixel (a value other than "
                         f"ignore_index={ignore_index}) in the batch, got none")
    return F.cross_entropy(logits, scribbles, ignore_index=ignore_index, reduction="mean")


class PartialCrossEntropyLoss(nn.Module):
    """Module form of :func:`partial_cross_entropy`.

    Parameters
    ----------
    ignore_index : int, optional
        Value marking unscribbled pixels.

    Examples
    --------
    >>> loss = PartialCrossEntropyLoss()
    >>> logits = torch.zeros(1, 2, 3, 3, requires_grad=True)
    >>> scribbles = torch.full((1, 3, 3), 255, dtype=torch.long)
    >>> scribbles[0, 0, 0] = 1
    >>> round(loss(logits, scribbles).item(), 4)
    0.6931
    """

    def __init__(self, ignore_index=255):
        super().__init__()
        self.ignore_index = _check_ignore_index(ignore_index)

    def forward(self, logits, scribbles):
        return partial_cross_entropy(logits, scribbles, ignore_index=self.ignore_index)


# --------------------------------------------------------------------------- grid CRF


def grid_crf_loss(probs, images, *, lam=1.0, connectivity=8, sigma2=None):
    r"""Relaxed grid-CRF (Potts) loss of soft labels, averaged over the batch.

    For each image, ``lam * sum_{pq} w_pq (<1, S_p>/2 + <1, S_q>/2 - <S_p, S_q>)`` over the edges
    of the grid (eq. 9 of the paper halved: at one-hot S this is the discrete Potts energy
    ``lam * sum_{pq} w_pq [X_p != X_q]`` of :class:`admsolve.GridCRF`, each edge counted once).
    The weights ``w_pq`` come from :func:`admsolve.contrast_weights` of each image, computed once
    per call without gradient; the probabilities enter through plain torch operations, so autograd
    gives the gradient.

    Parameters
    ----------
    probs : (N, K, H, W) torch.Tensor of float
        Soft labels S, normally ``softmax(logits, dim=1)`` (the simplex is not required).
    images : (N, H, W, 3) numpy.ndarray or (N, 3, H, W) torch.Tensor
        The images, uint8 or float.
    lam : float, optional
        Weight lambda of the Potts term, >= 0.
    connectivity : {4, 8}, optional
    sigma2 : float, optional
        sigma^2 of the contrast weights; default: per image, as :func:`admsolve.contrast_weights`.

    Returns
    -------
    torch.Tensor
        A scalar: the sum over all edges of all images, divided by N (the per-image energy averaged
        over the batch, as in Algorithm 1 of the paper).
    """
    probs = _check_float_tensor(probs, "probs")
    lam = as_scalar(lam, "lam", minimum=0.0)
    n, _, height, width = probs.shape
    arrays = _images_as_numpy(images, (n, height, width))
    with torch.no_grad():
        weights = torch.as_tensor(
            np.stack([contrast_weights(a, connectivity=connectivity, sigma2=sigma2) for a in arrays]),
            dtype=probs.dtype, device=probs.device)
    mass = probs.sum(dim=1)
    total = probs.new_zeros(())
    for d in range(weights.shape[1]):
        (rp, cp), (rq, cq) = edge_slices(d, height, width)
        w = weights[:, d, rp, cp]
        overlap = (probs[:, :, rp, cp] * probs[:, :, rq, cq]).sum(dim=1)
        total = total + (w * (0.5 * mass[:, rp, cp] + 0.5 * mass[:, rq, cq] - overlap)).sum()
    return lam * total / n


class GridCRFLoss(nn.Module):
    """Module form of :func:`grid_crf_loss`.

    Parameters
    ----------
    lam : float, optional
    connectivity : {4, 8}, optional
    sigma2 : float, optional
    """

    def __init__(self, lam=1.0, connectivity=8, sigma2=None):
        super().__init__()
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity: expected 4 or 8, got {connectivity!r}")
        self.lam = as_scalar(lam, "lam", minimum=0.0)
        self.connectivity = connectivity
        self.sigma2 = sigma2

    def forward(self, probs, images):
        return grid_crf_loss(probs, images, lam=self.lam, connectivity=self.connectivity,
                             sigma2=self.sigma2)


# --------------------------------------------------------------------------- dense CRF


class _LatticeFilter(torch.autograd.Function):
    """``W values`` for (P, C) values through a permutohedral lattice; backward applies ``W^T``.

    The lattice operator is exactly linear, so this pair is consistent to rounding (gradcheck
    passes); W is not exactly symmetric, which is why the backward uses ``transpose=True``.
    The computation runs on the CPU in float64 (a NumPy round trip).
    """

    @staticmethod
    def forward(ctx, values, lattice):
        ctx.lattice = lattice
        array = values.detach().cpu().to(torch.float64).numpy()
        out = lattice.filter(np.ascontiguousarray(array), normalization=NORMALIZATION)
        return torch.as_tensor(out, dtype=values.dtype, device=values.device)

    @staticmethod
    def backward(ctx, grad_output):
        array = grad_output.detach().cpu().to(torch.float64).numpy()
        out = ctx.lattice.filter(np.ascontiguousarray(array), normalization=NORMALIZATION,
                                 transpose=True)
        return torch.as_tensor(out, dtype=grad_output.dtype, device=grad_output.device), None


def dense_crf_loss(probs, images, *, sxy=80, srgb=13, weight=1.0):
    r"""Relaxed dense-CRF loss ``weight * sum_k S_k^T W (1 - S_k)``, averaged over the batch.

    W is the bilateral kernel of pydensecrf's ``addPairwiseBilateral(sxy, srgb)`` with symmetric
    normalisation, as in :class:`admsolve.DenseCRF`, applied through a permutohedral lattice built
    once per image and call. The filtering goes through a custom :class:`torch.autograd.Function`
    (forward ``W``, backward ``W^T``), on the CPU via NumPy; everything else is torch.

    At one-hot S (labels X) the per-image value equals
    ``DenseCRF(zeros, image, sxy=sxy, srgb=srgb, compat=2 * weight, gaussian_compat=0).energy(X)``,
    since DenseCRF's energy is ``(compat / 2) sum_k 1_k^T K (1 - 1_k)``.

    Parameters
    ----------
    probs : (N, K, H, W) torch.Tensor of float
        Soft labels S.
    images : (N, H, W, 3) numpy.ndarray or (N, 3, H, W) torch.Tensor
        Colours in [0, 255] (uint8 or float, used as they are).
    sxy, srgb : float, optional
        Spatial and colour standard deviations of the bilateral kernel, > 0.
    weight : float, optional
        Multiplier of the loss, >= 0.

    Returns
    -------
    torch.Tensor
        A scalar: the sum over images divided by N.
    """
    probs = _check_float_tensor(probs, "probs")
    weight = as_scalar(weight, "weight", minimum=0.0)
    n, k, height, width = probs.shape
    arrays = _images_as_numpy(images, (n, height, width))
    total = probs.new_zeros(())
    for i, image in enumerate(arrays):
        lattice = PermutohedralLattice(bilateral_features(image, sxy=sxy, srgb=srgb))
        flat = probs[i].reshape(k, height * width).t()  # (P, K)
        with torch.no_grad():
            ones = lattice.filter(np.ones(height * width), normalization=NORMALIZATION)
            kernel_ones = torch.as_tensor(np.ravel(ones), dtype=probs.dtype, device=probs.device)
        filtered = _LatticeFilter.apply(flat, lattice)
        total = total + (flat.sum(dim=1) * kernel_ones).sum() - (flat * filtered).sum()
    return weight * total / n


class DenseCRFLoss(nn.Module):
    """Module form of :func:`dense_crf_loss`.

    Parameters
    ----------
    sxy, srgb : float, optional
    weight : float, optional
    """

    def __init__(self, sxy=80, srgb=13, weight=1.0):
        super().__init__()
        self.sxy = as_positive(sxy, "sxy")
        self.srgb = as_positive(srgb, "srgb")
        self.weight = as_scalar(weight, "weight", minimum=0.0)

    def forward(self, probs, images):
        return dense_crf_loss(probs, images, sxy=self.sxy, srgb=self.srgb, weight=self.weight)


# --------------------------------------------------------------------------- proximal term (ADM)


def proximal_loss(logits, latent, scribbles, *, gamma=1.0, ignore_index=255):
    r"""Proximal term of eq. 7: ``gamma * sum_{p in Omega_H} D(X_p | S_p)``, averaged over the batch.

    ``D(X_p | S_p) = -log S_p[X_p]`` is the cross-entropy of ``S = softmax(logits)`` towards the
    latent labels X, over the unscribbled pixels Omega_H (scribble == `ignore_index`); scribbled
    pixels are left to :func:`partial_cross_entropy`.

    Parameters
    ----------
    logits : (N, K, H, W) torch.Tensor of float
    latent : (N, H, W) torch.Tensor of int64
        Latent labeling X in [0, K), e.g. from :func:`admsolve.solve`. Being an integer tensor it
        carries no gradient: the loss is differentiated with respect to `logits` only.
    scribbles : (N, H, W) torch.Tensor of int64
        Scribble labels, `ignore_index` where unlabelled; only the unscribbled pixels count.
    gamma : float, optional
        Weight of the term, >= 0.
    ignore_index : int, optional

    Returns
    -------
    torch.Tensor
        A scalar: the sum over the unscribbled pixels of the batch, divided by N (per-image sum as
        in eq. 7, batch average as in Algorithm 1). Zero when every pixel is scribbled.
    """
    ignore_index = _check_ignore_index(ignore_index)
    gamma = as_scalar(gamma, "gamma", minimum=0.0)
    logits = _check_float_tensor(logits, "logits")
    n, k, height, width = logits.shape
    latent = _check_labels(latent, "latent", (n, height, width), k)
    scribbles = _check_labels(scribbles, "scribbles", (n, height, width), k, ignore_index)
    target = torch.where(scribbles == ignore_index, latent, torch.full_like(latent, -100))
    ce = F.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
    return gamma * ce / n


class ProximalLoss(nn.Module):
    """Module form of :func:`proximal_loss`.

    Parameters
    ----------
    gamma : float, optional
    ignore_index : int, optional
    """

    def __init__(self, gamma=1.0, ignore_index=255):
        super().__init__()
        self.gamma = as_scalar(gamma, "gamma", minimum=0.0)
        self.ignore_index = _check_ignore_index(ignore_index)

    def forward(self, logits, latent, scribbles):
        return proximal_loss(logits, latent, scribbles, gamma=self.gamma,
                             ignore_index=self.ignore_index)
