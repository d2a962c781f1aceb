"""Gaussian filtering over a feature space with the permutohedral lattice (Adams, Baek & Davis,
"Fast High-Dimensional Filtering Using the Permutohedral Lattice", 2010), as used by the dense CRF
of Krähenbühl & Koltun (2011): splat, blur, slice.

Given features f_i (one row per pixel, already divided by their standard deviations) and values
v_i (one row of C channels per pixel), the Gaussian filter is

    out_i = sum_j k(f_i, f_j) v_j,        k(f_i, f_j) = exp(-|f_i - f_j|^2 / 2),

with the sum over every pixel j, the pixel i itself included (k(f_i, f_i) = 1). The lattice
computes an approximation of it: built once per feature set in O(N d^2) time (N pixels, d feature
dimensions), it then filters all C channels in O((N + M) d C) per call (M lattice points), and is
reused for every call: mean-field inference filters with the same lattice at every iteration.
:func:`exact_filter` computes the sum itself, in O(N^2 d C), as a reference for tests.

Normalisation follows pydensecrf (``NormalizationType``); with ``n = W 1``, the filter of a vector
of ones:

* ``"symmetric"`` (pydensecrf's default, ``NORMALIZE_SYMMETRIC``): ``out = n^-1/2 W (n^-1/2 v)``;
* ``"after"`` (``NORMALIZE_AFTER``): ``out = n^-1 W v``, a weighted average per pixel;
* ``"before"`` (``NORMALIZE_BEFORE``): ``out = W (n^-1 v)``;
* ``"none"`` (``NO_NORMALIZATION``): ``out = W v``.

``W`` stands for the lattice operator in :class:`PermutohedralLattice` and for the exact kernel
matrix in :func:`exact_filter`. The lattice operator is the one pydensecrf computes: the same
feature scaling, simplex search (in float32), barycentric weights, blur order (directions 0, 1,
..., d, each with the taps 1/2, 1, 1/2) and the constant 1 / (1 + 2^-d). So, for every
normalisation, :meth:`PermutohedralLattice.filter` over :func:`bilateral_features` (or
:func:`gaussian_features`) is the message that pydensecrf's ``addPairwiseBilateral`` (or
``addPairwiseGaussian``) computes before its label compatibility, up to pydensecrf's float32
arithmetic (measured: within 1.3e-6 of the largest entry). In mean-field terms, with a Potts
compatibility of weight w, pydensecrf's update is ``Q <- softmax(-unary + w * filter(Q))``. Like
pydensecrf, the filter does not remove the centre pixel: ``out_i`` includes ``v_i`` with the
weight the lattice gives the pixel itself.

The lattice is an approximation (see :class:`PermutohedralLattice`): unnormalised, it loses about
half the Gaussian mass for 5-D bilateral features; normalised, its relative L2 error against the
exact filter is about 4% on piecewise-constant images and up to 14-15% on small smooth or noisy
ones, for some bandwidths (measured in tests/test_bilateral.py).
"""

import numpy as np

from .._validation import as_real_array, describe
from .features import (NORMALIZATIONS, as_features, as_flag, as_image, as_values, bilateral_features,
                       check_normalization, gaussian_features, normalization_scales, within_range)

__all__ = [
    "NORMALIZATIONS",
    "PermutohedralLattice",
    "bilateral_features",
    "bilateral_filter",
    "exact_filter",
    "gaussian_features",
]

# --------------------------------------------------------------------------- public API


def _kernels():
    """The Numba kernels, imported on first use (so that importing this module does not import Numba)."""
    from . import _lattice_kernels

    return _lattice_kernels


class PermutohedralLattice:
    """The permutohedral lattice of a set of feature points, for fast Gaussian filtering.

    Built once from the features; :meth:`filter` then costs O((N + M) d C) per call, N points,
    d dimensions, M lattice points, C channels.

    Parameters
    ----------
    features : (N, d) array_like of float
        One row per point (pixel), each feature already divided by its standard deviation, so that
        the filter approximates the kernel exp(-|f_i - f_j|^2 / 2). Must be finite, with absolute
        values below about 2^23 / (2 d (d + 1)).

    Attributes
    ----------
    n_points : int
        N.
    dim : int
        d.
    n_lattice_points : int
        M, the lattice points touched by the simplices of the features (at most N (d+1)).

    Notes
    -----
    The lattice is the one of pydensecrf (Krähenbühl & Koltun 2011, after Adams et al. 2010),
    located in float32 with the same operations, so it has the same lattice points, and the filter
    matches pydensecrf's up to float32 rounding (pydensecrf filters in float32, this class in
    float64).

    It is an approximation, and a coarse one in more than 2 or 3 dimensions: lattice points that
    no simplex touches are dropped, and the mass the blur would send there is lost, so without
    normalisation the filter underestimates the Gaussian sum (by about half for 5-D bilateral
    features of an image); the normalisations cancel most of that.

    The operator is not exactly symmetric: the blur runs through the directions 0, 1, ..., d and,
    with the missing lattice points, the directions do not quite commute. ``transpose=True`` runs
    them in the reverse order and gives the exact transpose.
    """

    def __init__(self, features):
        features = as_features(features)
        self.n_points, self.dim = features.shape
        kernels = _kernels()
        token = np.empty((1,) * self.dim, dtype=np.int8)  # its number of dimensions is d (see _scan)
        self._vertices, self._barycentric, self._keys, self._neighbours = kernels._build_lattice(
            features.astype(np.float32), token)
        self.n_lattice_points = self._keys.shape[0]
        self._ones_response = np.empty(self.n_points)
        kernels._ones_response(self._vertices, self._barycentric, self._neighbours, self._ones_response)
        self._ones_response.flags.writeable = False
        self._scale_cache = {}

    def __repr__(self):
        return (f"PermutohedralLattice(n_points={self.n_points}, dim={self.dim}, "
                f"n_lattice_points={self.n_lattice_points})")

    @property
    def ones_response(self):
        """(N,) float64, read-only: the unnormalised filter of a vector of ones, ``n = W 1``, from
        which the normalisations are made (pydensecrf's ``norm_`` before inversion)."""
        return self._ones_response

    def filter(self, values, *, normalization="symmetric", transpose=False, out=None):
        """Gaussian filter of `values` over the features.

        Parameters
        ----------
        values : (N,) or (N, C) array_like of float
            One row per feature point. Must be finite. A float64 array is read in place.
        normalization : {"symmetric", "after", "before", "none"}, optional
            See the module docstring; "symmetric" is pydensecrf's default, "none" the unnormalised
            lattice sum (centre included), which underestimates the Gaussian-weighted sum.
        transpose : bool, optional
            Apply the transpose of the operator (the blur directions in reverse order; "before"
            and "after" swap).
        out : ndarray, optional
            A C-contiguous float64 array of the shape of `values` (not `values` itself) to write to.

        Returns
        -------
        ndarray of float64, the shape of `values` (`out` when given)
        """
        normalization = check_normalization(normalization)
        array, flat = as_values(values, self.n_points)
        transpose = as_flag(transpose, "transpose")
        if out is None:
            result = np.empty(array.shape)
        else:
            wanted = (self.n_points,) if flat else array.shape
            if not (isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == wanted
                    and out.flags.c_contiguous and out.flags.writeable):
                raise ValueError(f"out: expected a writeable C-contiguous float64 array of shape {wanted}, "
                                 f"got {describe(out)}")
            if np.shares_memory(out, array):
                raise ValueError("out: expected an array that does not overlap values")
            result = out.reshape(array.shape)
        in_scale, out_scale = self.scales(normalization, transpose)

        def run(values):
            _kernels()._lattice_filter(self._vertices, self._barycentric, self._neighbours, values, in_scale,
                                       out_scale, transpose, result)
            return result

        within_range(run, array, np)
        if out is not None:
            return out
        return result[:, 0] if flat else result

    def disagreement(self, labels, *, normalization="symmetric", transpose=False):
        """The filter of the indicator of the labels other than each point's own, read at that point.

        ``out_p = sum_q F[p, q] [labels_q != labels_p]`` with F the operator of :meth:`filter` (the
        Potts term of a labeling at each point), in O((N + M K) d) instead of the O((N + M) d K) of
        filtering the K indicator vectors: each point splats into its own label only.

        Parameters
        ----------
        labels : (N,) array_like of int
            Non-negative labels, one per feature point.
        normalization, transpose
            As in :meth:`filter`.

        Returns
        -------
        (N,) ndarray of float64
        """
        normalization = check_normalization(normalization)
        transpose = as_flag(transpose, "transpose")
        labels = np.asarray(labels)
        if labels.shape != (self.n_points,) or labels.dtype.kind not in "iu":
            raise ValueError(f"labels: expected an integer array of shape ({self.n_points},), got {describe(labels)}")
        if labels.min() < 0:
            raise ValueError(f"labels: expected non-negative values, got minimum {labels.min()}")
        out = np.empty(self.n_points)
        in_scale, out_scale = self.scales(normalization, transpose)
        _kernels()._disagreement(self._vertices, self._barycentric, self._neighbours, labels, int(labels.max()) + 1,
                                 in_scale, out_scale, transpose, out)
        return out

    def scales(self, normalization="symmetric", transpose=False):
        """``(in_scale, out_scale)``, read-only (N,) arrays: the diagonal scalings around the raw
        operator that give `normalization` (or its transpose), computed once per case."""
        normalization = check_normalization(normalization)
        transpose = as_flag(transpose, "transpose")
        key = (normalization, transpose)
        if key not in self._scale_cache:
            scales = normalization_scales(self._ones_response, normalization, transpose)
            for array in scales:
                array.flags.writeable = False
            self._scale_cache[key] = scales
        return self._scale_cache[key]

    def total(self, normalization="symmetric", transpose=False):
        """``sum_p filter(ones)[p]``, the sum of all the operator's entries, computed as a bilinear form on
        the lattice (two splats, one blur; no slice): the dense CRF's bound on its pairwise energy.

        Parameters
        ----------
        normalization, transpose
            As in :meth:`filter`.

        Returns
        -------
        float
        """
        in_scale, out_scale = self.scales(normalization, transpose)
        return float(_kernels()._total(self._vertices, self._barycentric, self._neighbours, in_scale, out_scale,
                                       as_flag(transpose, "transpose")))

    @property
    def structure(self):
        """``(vertices, barycentric, neighbours)``, the read-only arrays of the operator, for fused
        kernels (the mean-field backend): (N, d+1) int32 lattice points of each point's simplex and
        (N, d+1) float64 barycentric weights (the splat S and slice S^T), (d+1, M, 2) int32 blur
        neighbours (M where none). The filter is ``alpha S^T B S`` with ``alpha = 1 / (1 + 2^-d)``
        and B the blur, taps (1/2, 1, 1/2) along directions 0..d, a missing neighbour counting 0."""
        for array in (self._vertices, self._barycentric, self._neighbours):
            array.flags.writeable = False
        return self._vertices, self._barycentric, self._neighbours


def bilateral_filter(values, image, *, sxy=80, srgb=13, normalization="symmetric"):
    """Bilateral (position + colour) Gaussian filter of `values`, as pydensecrf's bilateral kernel.

    For ``values = Q`` (label probabilities), the result is the message of pydensecrf's
    ``addPairwiseBilateral(sxy, srgb, image, compat)`` before the compatibility. Builds
    :func:`bilateral_features` and a :class:`PermutohedralLattice` and filters once; to filter
    several times over the same image, build the lattice once and call its :meth:`filter`.

    Parameters
    ----------
    values : (H, W, C) array_like of float
        Must be finite.
    image : (H, W, 3) array_like
        uint8 or float colours.
    sxy, srgb : float, optional
        Standard deviations in pixels and in colour units (pydensecrf's names and meaning), > 0.
    normalization : {"symmetric", "after", "before", "none"}, optional
        See the module docstring; the default is pydensecrf's.

    Returns
    -------
    (H, W, C) ndarray of float64
    """
    values = as_real_array(values, "values", 3)
    image = as_image(image)
    if values.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"values: expected shape ({image.shape[0]}, {image.shape[1]}, C) to match image of shape "
            f"{image.shape}, got array of shape {values.shape}"
        )
    normalization = check_normalization(normalization)
    height, width, channels = values.shape
    features = as_features(bilateral_features(image, sxy=sxy, srgb=srgb),
                            "features (pixel coordinates / sxy, image / srgb)")
    lattice = PermutohedralLattice(features)
    out = lattice.filter(values.reshape(height * width, channels), normalization=normalization)
    return out.reshape(height, width, channels)


def exact_filter(values, features, *, normalization="symmetric"):
    """The exact Gaussian filter that the lattice approximates, in O(N^2 d C): a reference for tests.

    ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j``, the sum over every j including i, then the
    normalisation as in :meth:`PermutohedralLattice.filter` (with ``n`` the exact row sums).

    Parameters
    ----------
    values : (N,) or (N, C) array_like of float
    features : (N, d) array_like of float
    normalization : {"symmetric", "after", "before", "none"}, optional

    Returns
    -------
    ndarray of float64, the shape of `values`
    """
    normalization = check_normalization(normalization)
    features = as_features(features)
    values, flat = as_values(values, features.shape[0])

    def raw(v):
        result = np.empty_like(v)
        _kernels()._exact_filter(np.ascontiguousarray(v), features, result)
        return result

    ones_response = raw(np.ones((features.shape[0], 1)))[:, 0]
    in_scale, out_scale = normalization_scales(ones_response, normalization, False)
    out = within_range(lambda v: out_scale[:, None] * raw(v * in_scale[:, None]), values, np)
    return out[:, 0] if flat else out
