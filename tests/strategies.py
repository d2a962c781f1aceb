"""Hypothesis strategies for grid CRF problems, and reference computations that do not use
:meth:`admsolve.GridCRF.energy` (direct loops over pixels and neighbour offsets), so that they also
check the package's own reference energy.

Every number drawn here is a small multiple of 1/4, so sums of energies are exact in float64 and
ties between labelings are real ties, not rounding accidents.
"""

import math

import numpy as np
from hypothesis import strategies as st

import admsolve as adm

#: Edge directions (dy, dx), written out again here rather than imported, so the tests also check
#: the package's OFFSETS.
OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
N_DIRECTIONS = {4: 2, 8: 4}

#: Brute force refuses problems with more labelings than this.
BRUTE_FORCE_LIMIT = 200_000


def quarters(low, high):
    """Multiples of 0.25 in [low, high], shrinking towards 0 (or towards `low` if low > 0)."""
    return st.integers(int(round(4 * low)), int(round(4 * high))).map(lambda n: n / 4.0)


def rngs():
    """numpy Generators seeded by hypothesis. The bulk of every array comes from one of these, so
    that a failing example shrinks quickly in its shape, K, lambda and seeding (hypothesis draws a
    handful of numbers per example rather than one per array entry)."""
    return st.integers(0, 2**32 - 1).map(np.random.default_rng)


@st.composite
def grid_problems(draw, min_labels=1, max_labels=6, max_side=12, max_pixels=None, nonnegative=False,
                  connectivity=None, max_labelings=None, lam=None):
    """Random :class:`admsolve.GridCRF` problems.

    Parameters
    ----------
    min_labels, max_labels : int
        Range of K.
    max_side : int
        Largest H and W.
    max_pixels : int, optional
        Largest H * W.
    nonnegative : bool
        Unaries in [0, 5] instead of [-5, 5].
    connectivity : {4, 8}, optional
        Fixed connectivity; drawn by default.
    max_labelings : int, optional
        Largest K ** (H * W) (to keep brute force affordable).
    lam : float, optional
        Fixed lambda; drawn from [0, 3] by default (0 included).

    Unaries and weights are multiples of 0.25; the unaries take values in [-s, s] (or [0, s]) for a
    drawn spread s from 0.25 to 5 (small spreads give many exact ties); a drawn fraction (0 to 1)
    of the weights is exactly 0, including entries of edges leaving the image (which the problem
    must ignore). Seeds: none (``seeds=None``), an all-free array, or a drawn fraction of the pixels
    fixed to random labels; the ``unlabeled`` marker is 255 or another value outside [0, K).
    """
    n_labels = draw(st.integers(min_labels, max_labels), label="K")
    pixel_cap = max_side * max_side if max_pixels is None else max_pixels
    if max_labelings is not None and n_labels > 1:
        pixel_cap = min(pixel_cap, int(math.floor(math.log(max_labelings) / math.log(n_labels) + 1e-9)))
    pixel_cap = max(pixel_cap, 1)
    height = draw(st.integers(1, min(max_side, pixel_cap)), label="H")
    width = draw(st.integers(1, min(max_side, pixel_cap // height)), label="W")
    if connectivity is None:
        connectivity = draw(st.sampled_from([4, 8]), label="connectivity")
    n_directions = N_DIRECTIONS[connectivity]
    if lam is None:
        lam = draw(quarters(0.0, 3.0), label="lam")
    rng = draw(rngs(), label="rng")

    spread = draw(st.sampled_from([20, 1, 4, 8]), label="unary spread (quarters)")
    low = 0 if nonnegative else -spread
    unary_dtype = draw(st.sampled_from([np.float64, np.float32]), label="unary dtype")
    unary = (rng.integers(low, spread + 1, (height, width, n_labels)) / 4.0).astype(unary_dtype)
    zero_fraction = draw(st.sampled_from([0.5, 0.0, 0.9, 1.0, 0.2]), label="zero weights")
    weights = rng.integers(1, 9, (n_directions, height, width)) / 4.0
    weights[rng.random(weights.shape) < zero_fraction] = 0.0

    unlabeled = draw(st.sampled_from([255, -1, n_labels, 1000]), label="unlabeled")
    seed_mode = draw(st.sampled_from(["none", "all free", "some"]), label="seeds")
    if seed_mode == "none":
        seeds = None
    else:
        fraction = 0.0 if seed_mode == "all free" else draw(st.sampled_from([0.2, 0.05, 0.5, 1.0]),
                                                             label="seeded fraction")
        seeded = rng.random((height, width)) < fraction
        seeds = np.where(seeded, rng.integers(0, n_labels, (height, width)), unlabeled)
        seed_dtype = draw(st.sampled_from([np.int64, np.int32, np.int16]), label="seed dtype")
        seeds = seeds.astype(seed_dtype)
    if unlabeled == 255 and draw(st.booleans(), label="default unlabeled"):
        return adm.GridCRF(unary, weights, lam=lam, seeds=seeds)
    return adm.GridCRF(unary, weights, lam=lam, seeds=seeds, unlabeled=unlabeled)


@st.composite
def labelings(draw, problem, respect_seeds=False):
    """(H, W) int64 labelings of `problem` using a drawn number of distinct labels (1 gives a
    constant labeling), optionally agreeing with its seeds."""
    height, width = problem.shape
    used = draw(st.integers(1, problem.n_labels), label="labels used")
    rng = draw(rngs(), label="rng")
    choice = rng.permutation(problem.n_labels)[:used]
    labels = choice[rng.integers(0, used, (height, width))].astype(np.int64)
    if respect_seeds:
        labels = np.where(problem.seeded, problem.seeds, labels)
    return labels


def inside(y, x, d, height, width):
    """The neighbour (qy, qx) of (y, x) in direction d, or None if it lies outside the image."""
    dy, dx = OFFSETS[d]
    qy, qx = y + dy, x + dx
    if 0 <= qy < height and 0 <= qx < width:
        return qy, qx
    return None


def direct_parts(problem, labels):
    """(data, cut) of one labeling by plain Python loops: the sum of the chosen unaries, and the
    sum of the weights of edges whose ends differ (without lambda)."""
    labels = np.asarray(labels)
    height, width, _ = problem.unary.shape
    data = 0.0
    cut = 0.0
    for y in range(height):
        for x in range(width):
            data += float(problem.unary[y, x, int(labels[y, x])])
            for d in range(problem.weights.shape[0]):
                q = inside(y, x, d, height, width)
                if q is not None and labels[y, x] != labels[q]:
                    cut += float(problem.weights[d, y, x])
    return data, cut


def direct_energy(problem, labels):
    """E(labels) by plain Python loops over pixels and neighbour offsets."""
    data, cut = direct_parts(problem, labels)
    return data + problem.lam * cut


def all_labelings(problem, respect_seeds=True):
    """(M, H*W) int array of every labeling (agreeing with the seeds if `respect_seeds`)."""
    height, width, n_labels = problem.unary.shape
    n_pixels = height * width
    seeds = np.asarray(problem.seeds).ravel()
    if respect_seeds:
        fixed = seeds != problem.unlabeled
    else:
        fixed = np.zeros(n_pixels, dtype=bool)
    free = np.flatnonzero(~fixed)
    count = n_labels ** len(free)
    if count > BRUTE_FORCE_LIMIT:
        raise ValueError(f"brute force over {count} labelings refused (limit {BRUTE_FORCE_LIMIT})")
    out = np.empty((count, n_pixels), dtype=np.int64)
    out[:, fixed] = seeds[fixed]
    codes = np.arange(count, dtype=np.int64)
    for column in free:  # the digits of 0 .. count - 1 in base K
        codes, out[:, column] = np.divmod(codes, n_labels)
    return out


def energies_of(problem, flat_labels):
    """Energies of many labelings ((M, H*W) array) with the direct formula, vectorised over M."""
    height, width, _ = problem.unary.shape
    unary = np.asarray(problem.unary, dtype=np.float64)
    weights = np.asarray(problem.weights, dtype=np.float64)
    data = np.zeros(len(flat_labels))
    cut = np.zeros(len(flat_labels))
    for y in range(height):
        for x in range(width):
            p = y * width + x
            data += unary[y, x][flat_labels[:, p]]
            for d in range(weights.shape[0]):
                q = inside(y, x, d, height, width)
                if q is not None and weights[d, y, x] != 0:
                    cut += weights[d, y, x] * (flat_labels[:, p] != flat_labels[:, q[0] * width + q[1]])
    return data, cut


def brute_force(problem, return_labels=False, respect_seeds=True):
    """Minimum energy over all labelings that satisfy the seeds (and, optionally, a minimiser).

    Energies come from :func:`energies_of`, not from GridCRF.energy. Only for problems with at most
    BRUTE_FORCE_LIMIT labelings of the free pixels.
    """
    flat = all_labelings(problem, respect_seeds=respect_seeds)
    data, cut = energies_of(problem, flat)
    energy = data + problem.lam * cut
    best = int(np.argmin(energy))
    if return_labels:
        return float(energy[best]), flat[best].reshape(problem.shape)
    return float(energy[best])


def scale(*values):
    """A magnitude for relative tolerances: max(1, |v| for v in values)."""
    return max([1.0] + [abs(float(v)) for v in values])
