"""Backend ``relaxed-gd``: gradient descent on the relaxed grid-CRF energy (eq. 9 of the paper, halved so
that it equals the reference energy at one-hot labelings; :meth:`GridCRF.relaxed_energy`).

The baseline of the paper's Fig. 1: a local method on the relaxation. Soft labels S (one distribution
over the K labels per pixel) are updated by mirror descent with the entropy mirror map (exponentiated
gradient), ``S <- S * exp(-eta * dR/dS)`` renormalised per pixel, kept in the log domain so that no
probability ever underflows to an exact zero. Seeded pixels are held one-hot at their seed. The
labeling is the per-pixel argmax of S (first label on ties), seeds applied.

Monotonicity. The pairwise part of R is a quadratic with Hessian ``-lam * W (x) I`` (W the weighted
adjacency), so R is smooth relative to the entropy with constant ``L = lam * max_p sum_{q~p} w_pq``
(use ``|2 w <u, v>| <= w (|u|^2 + |v|^2)`` and ``sum_k v_k^2 / S_k >= |v|^2``); mirror descent with
``eta <= 1 / L`` never increases R. The default step ``eta = step / (max_p range_p(unary) + 2 * L)``
with ``step = 1`` is half that bound or less (the unary range keeps eta finite and scale-free when
lam = 0): the relaxed energy is non-increasing (up to rounding) for any ``step <= 2``. The reference
(discrete) energy of the rounded labeling is not monotone.

Everything runs through one array module, ``xp = device_module(problem.device if device is None else device)``: NumPy on "cpu", CuPy on
"cuda" (the relaxed energy and gradient come from :func:`admsolve.energies.gridcrf.relaxed_energy_arrays`, which
follows its input's module). Each iteration brings the rounded labeling back to the host to record its
reference energy.
"""

import math

import numpy as np

from .._array import device_module, to_numpy
from .._validation import as_scalar
from . import check_cancelled
from ..energies.gridcrf import edge_slices, relaxed_energy_arrays

#: Weight of the uniform distribution mixed into the one-hot initial labeling:
#: ``S0 = (1 - MIX) * onehot(init) + MIX / K``. Exponentiated gradient cannot grow a label from an
#: exact zero; with MIX = 0.01 every label starts with at least 0.01 / K, and argmax S0 == init.
MIX = 0.01

#: Safety cap on the iterations when ``max_iter`` is None (convergence by ``tol`` comes first on
#: ordinary problems; reaching the cap returns converged=False).
DEFAULT_MAX_ITER = 10_000


def default_eta(problem, step=1.0):
    """The step size used: ``step / (max_p (max_k U_pk - min_k U_pk) + 2 * lam * max_p incident_p)``,
    incident_p the total weight of the edges at pixel p (just ``step`` when the denominator is 0)."""
    unary = np.asarray(problem.unary, dtype=np.float64)
    free = ~problem.seeded
    span = float((unary.max(axis=2) - unary.min(axis=2))[free].max()) if free.any() else 0.0
    weights = np.asarray(problem.weights, dtype=np.float64)
    incident = weights.sum(axis=0)
    height, width = problem.shape
    for d in range(weights.shape[0]):  # add each edge to its second pixel q as well
        p, q = edge_slices(d, height, width)
        incident[q] += weights[(d, *p)]
    scale = span + 2.0 * problem.lam * float(incident.max())
    return step / scale if scale > 0 else step


def minimize(problem, init, *, max_iter=None, step=1.0, tol=1e-7, device=None):
    """Exponentiated-gradient descent on the relaxed energy, rounded by argmax.

    Parameters
    ----------
    max_iter : int, optional
        Number of iterations at most (one iteration = one "sweep"). Default: until convergence, with a
        safety cap of DEFAULT_MAX_ITER.
    step : float, optional
        Step in units of the problem's scale: ``eta = step / (max unary range + 2 lam max incident
        weight)`` (see :func:`default_eta`). ``step <= 2`` keeps the relaxed energy non-increasing.
    tol : float, optional
        Converged when one iteration changes the relaxed energy by at most ``tol * scale``, scale =
        ``problem.energy_scale`` = ``sum_p max_k |U_pk| + lam * sum w`` (a bound on |R| over the
        simplex; no absolute floor, so that the iterations are the same at any scale of the energy).
    device : {"cpu", "cuda"}, optional
        NumPy or CuPy; by default where the problem's arrays came from (``problem.device``).

    Returns
    -------
    dict
        labels, history (reference energies: init, then the rounded labeling after each iteration),
        converged, message, relaxed_history (R of the initial mix, then after each iteration), probs (final S,
        NumPy (H, W, K)), eta.
    """
    step = as_scalar(step, "step")
    if step <= 0:
        raise ValueError(f"step: expected a positive number, got {step!r}")
    tol = as_scalar(tol, "tol", minimum=0.0)
    xp = device_module(problem.device if device is None else device)
    cap = DEFAULT_MAX_ITER if max_iter is None else int(max_iter)
    eta = default_eta(problem, step)
    if not (math.isfinite(eta) and eta > 0):  # e.g. denormal unaries: step / scale overflows
        raise ValueError(f"relaxed-gd: the step size eta = step / (largest unary range + 2 lam largest incident "
                         f"weight) = {eta:g} is not a finite positive number; scale the unaries and lam up")
    n_labels = problem.n_labels
    unary_np = np.asarray(problem.unary, dtype=np.float64)
    weights_np = np.asarray(problem.weights, dtype=np.float64)
    scale = problem.energy_scale
    unary = xp.asarray(unary_np)
    weights = xp.asarray(weights_np)
    seeded_np = problem.seeded
    seeded = xp.asarray(seeded_np)[..., None]
    seeds_np = problem.seeds
    seed_onehot = xp.asarray(np.eye(n_labels)[np.where(seeded_np, seeds_np, 0)])
    init_onehot = xp.asarray(np.eye(n_labels)[init])

    probs = (1.0 - MIX) * init_onehot + MIX / n_labels
    probs = xp.where(seeded, seed_onehot, probs)
    log_probs = xp.log(xp.maximum(probs, 1e-300))  # seeded pixels: 0 and -690.8, never updated

    history = [problem.energy(init)]
    value, grad = relaxed_energy_arrays(unary, weights, problem.lam, probs)
    relaxed_history = [value]
    labels = init.copy()
    converged = False
    while len(history) <= cap:
        check_cancelled()
        log_probs = log_probs - eta * xp.where(seeded, 0.0, grad)  # seeded pixels stay put
        log_probs = log_probs - log_probs.max(axis=2, keepdims=True)
        log_probs = log_probs - xp.log(xp.exp(log_probs).sum(axis=2, keepdims=True))
        probs = xp.where(seeded, seed_onehot, xp.exp(log_probs))
        labels = problem.apply_seeds(to_numpy(xp.argmax(probs, axis=2)))
        history.append(problem.energy(labels))
        previous = value
        value, grad = relaxed_energy_arrays(unary, weights, problem.lam, probs)
        relaxed_history.append(value)
        if not math.isfinite(value):
            raise FloatingPointError(f"relaxed-gd: the relaxed energy became {value} at iteration {len(history) - 1} "
                                     f"(eta = {eta:g}); try a smaller step=")
        if abs(previous - value) <= tol * scale:
            converged = True
            break
    message = (f"converged: the relaxed energy changed by at most tol * scale = {tol * scale:.3g}" if converged
               else f"stopped: {cap} iterations (max_iter) reached")
    return {"labels": labels, "history": history, "converged": converged, "message": message,
            "relaxed_history": relaxed_history, "probs": np.array(to_numpy(probs), dtype=np.float64),
            "eta": eta}
