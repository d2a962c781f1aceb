"""The latent step of ADM (Algorithm 1 of the paper): for each image of a batch, the discrete
labeling X that minimises eq. 8 — lam * (contrast-weighted Potts) + gamma * KL(X || S) — with the
scribbles as hard constraints, solved by any registered GridCRF backend."""

import numpy as np
import torch

from .._validation import as_scalar
from ..backends import BACKENDS, lookup
from ..gridcrf import GridCRF, contrast_weights
from ..solve import solve_batch
from ..unaries import adm_unary
from .losses import _check_float_tensor, _check_ignore_index, _check_labels, _images_as_numpy


class ADMStep:
    """Solve eq. 8 for every image of a batch and return the latent labels X.

    Parameters
    ----------
    lam : float, optional
        Weight of the grid-CRF (Potts) term.
    gamma : float, optional
        Weight of the divergence term: unaries ``-gamma * log S``.
    connectivity : {4, 8}, optional
        Grid neighbourhood of the contrast weights (Boykov-Jolly sigma^2 per image).
    backend : str, optional
        Any backend that solves a GridCRF ("numba-expansion" by default where usable; "maxflow",
        "numba-swap", "numba-icm", "cupy-gd" swap the optimizer of the latent step).
    workers : int, optional
        Parallel solves, as in :func:`admsolve.solve_batch` (threads for the Numba backends).
    ignore_index : int, optional
        The value of unscribbled pixels in `scribbles`.
    **solver_options
        Passed to the backend, e.g. ``max_sweeps=5`` (the paper's setting) or ``labels=...``.

    Each solve starts from argmax S (seeds applied), a warm start close to the answer.

    Examples
    --------
    >>> step = ADMStep(lam=2.0, gamma=1.0, max_sweeps=5)              # doctest: +SKIP
    >>> latent = step(logits.softmax(1), images, scribbles)           # doctest: +SKIP
    >>> loss = proximal_loss(logits, latent, scribbles, gamma=1.0)    # doctest: +SKIP
    """

    def __init__(self, *, lam=2.0, gamma=1.0, connectivity=8, backend=None, workers=None, ignore_index=255,
                 **solver_options):
        self.lam = as_scalar(lam, "lam", minimum=0.0)
        self.gamma = as_scalar(gamma, "gamma", minimum=0.0)
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity: expected 4 or 8, got {connectivity!r}")
        self.connectivity = connectivity
        if backend is not None and lookup(backend).problem != "GridCRF":
            raise ValueError(f"backend: expected a backend that solves a GridCRF, got {backend!r} "
                             f"(it solves {BACKENDS[backend].problem})")
        self.backend, self.workers = backend, workers
        self.ignore_index = _check_ignore_index(ignore_index)
        self.solver_options = solver_options

    def problems(self, probs, images, scribbles):
        """The eq. 8 problem of each image: ``list`` of :class:`~admsolve.GridCRF`.

        probs : (N, K, H, W) tensor of softmax probabilities (detached here); images : (N, H, W, 3)
        array or (N, 3, H, W) tensor; scribbles : (N, H, W) int64 tensor, `ignore_index` unscribbled.
        """
        probs = _check_float_tensor(probs, "probs")
        n, n_labels, height, width = probs.shape
        scribbles = _check_labels(scribbles, "scribbles", (n, height, width), n_labels, self.ignore_index)
        pictures = _images_as_numpy(images, (n, height, width))
        soft = probs.detach().cpu().to(torch.float64).clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()
        seeds = scribbles.cpu().numpy()
        return [GridCRF(adm_unary(soft[i], gamma=self.gamma), contrast_weights(pictures[i], connectivity=self.connectivity),
                        lam=self.lam, seeds=seeds[i], unlabeled=self.ignore_index) for i in range(n)]

    def __call__(self, probs, images, scribbles):
        """Latent labels X: an int64 (N, H, W) tensor on `probs`' device, scribbles respected."""
        problems = self.problems(probs, images, scribbles)
        inits = [np.argmax(problem.unary, axis=2) for problem in problems]  # min of -log S = argmax S
        results = solve_batch(problems, self.backend, workers=self.workers, inits=inits, **self.solver_options)
        return torch.from_numpy(np.stack([result.labels for result in results]).astype(np.int64)).to(probs.device)
