"""Backend ``relaxed-gd``: gradient descent on the relaxed grid-CRF energy (eq. 9 of the paper, halved so
that it equals the reference energy at one-hot labelings; :meth:`GridCRF.relaxed_energy`).

The baseline of the paper's Fig. 1: a local method on the relaxation. Soft labels S (one distribution
over the K labels per pixel) are updated by mirror descent with the entropy mirror map (exponentiated
gradient), ``S <- S * exp(-eta * dR/dS)`` renormalised per pixel, kept in the log domain so that no
probability ever underflows to an exact zero. Seeded pixels are held one-hot at their seed. The
labeling is the per-pixel argmax of S (first label on ties).

Two methods, one evaluation of R and its gradient per iteration each:

* ``"fixed"``, the plain method: a fixed step ``eta0``. The pairwise part of R is a quadratic with
  Hessian ``-lam * W (x) I`` (W the weighted adjacency), so R is smooth relative to the entropy with
  constant ``L = lam * max_p sum_{q~p} w_pq`` (use ``|2 w <u, v>| <= w (|u|^2 + |v|^2)`` and
  ``sum_k v_k^2 / S_k >= |v|^2``); mirror descent with ``eta <= 1 / L`` never increases R. The default
  ``eta0 = step / (max_p range_p(unary) + 2 * L)`` with ``step = 1`` is half that bound or less (the
  unary range keeps eta finite and scale-free when lam = 0): R is non-increasing (up to rounding) for
  any ``step <= 2``. It needs hundreds to thousands of iterations: the logits of a pixel move by at
  most about ``eta0 * gap`` per iteration, and R converges as the soft labels approach one-hot.
* ``"accelerated"`` (default): the same mirror step with momentum in the mirror (logit) space and an
  adaptive step, ``z <- z - eta * grad R(S) + beta_k (z - z_prev)`` (z = log S, renormalised), with
  Nesterov's ``beta_k = k / (k + 3)``, k the accepted steps since the last restart, and every label
  kept within CLIP of its pixel's largest in log-probability. A step is taken
  only if R does not rise (so R is non-increasing, like the plain method); then eta grows by GROW
  (capped at MAX_GROWTH * eta0). A step that would raise R is dropped: the momentum restarts (k = 0)
  and eta shrinks by SHRINK, down to eta0, where the plain step is a descent step, so the method never
  stalls. Every evaluation, taken or dropped, counts as an iteration.

The reference (discrete) energy of the rounded labeling is not monotone.

Stopping: converged when a taken step changes R by at most ``tol * scale``, or (accelerated) when the
plain step at eta0 is dropped (it cannot lower R any more: rounding); else after ``max_iter``
iterations (default DEFAULT_MAX_ITER). ``message`` says which.

Everything runs through one array module, ``xp = device_module(problem.device if device is None else device)``:
NumPy on "cpu", CuPy on "cuda" (the relaxed energy and gradient come from
:func:`admsolve.energies.gridcrf.relaxed_energy_arrays`, which follows its input's module). With
``history="all"`` (default) each iteration brings the rounded labeling back to the host to record its
reference energy; ``history="ends"`` records only the first and the last.
"""

import math

import numpy as np

from .._array import device_module, label_argmax, label_max, label_sum, to_numpy
from .._validation import as_scalar
from . import check_cancelled
from ..energies.gridcrf import edge_slices, relaxed_energy_arrays

#: Weight of the uniform distribution mixed into the one-hot initial labeling:
#: ``S0 = (1 - MIX) * onehot(init) + MIX / K``. Exponentiated gradient cannot grow a label from an
#: exact zero; with MIX = 0.01 every label starts with at least 0.01 / K, and argmax S0 == init.
MIX = 0.01

#: The cap on the iterations when ``max_iter`` is None (reaching it returns converged=False and says so
#: in the message).
DEFAULT_MAX_ITER = 1000

#: The methods, and the accepted values of ``history``.
METHODS = ("accelerated", "fixed")
HISTORIES = ("all", "ends")

#: Accelerated method: the step grows by GROW after a taken step, shrinks by SHRINK after a dropped
#: one (not below eta0), and stays below MAX_GROWTH * eta0.
GROW, SHRINK, MAX_GROWTH = 1.5, 0.5, 1e4

#: Accelerated method: no label's log-probability falls more than CLIP below the largest of its pixel
#: (probability >= e^-30 = 1e-13 of it), so that a label the steps have pushed down can come back in a
#: few steps; without it the momentum drives the logits apart without bound and freezes pixels early,
#: at worse local minima (measured: higher final relaxed energy than the plain method on 3 of 13
#: problems, against none with it).
CLIP = 30.0


def default_eta(problem, step=1.0):
    """The step size of the plain method: ``step / (max_p (max_k U_pk - min_k U_pk) + 2 * lam * max_p
    incident_p)``, incident_p the total weight of the edges at pixel p (just ``step`` when the
    denominator is 0)."""
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


def _check(step, tol, method, history, callback):
    step = as_scalar(step, "step")
    if step <= 0:
        raise ValueError(f"step: expected a positive number, got {step!r}")
    tol = as_scalar(tol, "tol", minimum=0.0)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if not isinstance(history, str) or history not in HISTORIES:
        raise ValueError(f"history: expected one of {HISTORIES}, got {history!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable or None, got {type(callback).__name__}")
    return step, tol


def minimize(problem, init, *, max_iter=None, step=1.0, tol=1e-7, device=None, method="accelerated",
             history="all", callback=None):
    """Exponentiated-gradient descent on the relaxed energy, rounded by argmax.

    Parameters
    ----------
    max_iter : int, optional
        Number of iterations at most (one iteration = one evaluation of the relaxed energy and its
        gradient = one "sweep"). Default DEFAULT_MAX_ITER (1000).
    step : float, optional
        Step in units of the problem's scale: ``eta0 = step / (max unary range + 2 lam max incident
        weight)`` (see :func:`default_eta`): the step of the plain method, the smallest of the
        accelerated one. ``step <= 2`` keeps the plain method's relaxed energy non-increasing.
    tol : float, optional
        Converged when one (taken) iteration changes the relaxed energy by at most ``tol * scale``,
        scale = ``problem.energy_scale`` = ``sum_p max_k |U_pk| + lam * sum w`` (a bound on |R| over the
        simplex; no absolute floor, so that the iterations are the same at any scale of the energy).
    device : {"cpu", "cuda"}, optional
        NumPy or CuPy; by default where the problem's arrays came from (``problem.device``).
    method : {"accelerated", "fixed"}, optional
        Mirror descent with momentum, an adaptive step and restarts (default), or the plain fixed
        step (see the module docstring).
    history : {"all", "ends"}, optional
        Reference energies of the rounded labeling after every iteration (default), or of the start
        and the result only.
    callback : callable, optional
        ``callback(iteration, relaxed_energy)`` after every iteration (the command line draws its
        progress line with it).

    Returns
    -------
    dict
        labels, history (reference energies: init, then the rounded labeling after each iteration, or
        only the last with ``history="ends"``), iterations, converged, message, relaxed_history (R of the
        initial mix, then after each iteration; a dropped step repeats the value), probs (final S, NumPy
        (H, W, K)), eta (eta0), step_size (the accelerated method's last step; eta0 for the plain one).
    """
    step, tol = _check(step, tol, method, history, callback)
    xp = device_module(problem.device if device is None else device)
    cap = DEFAULT_MAX_ITER if max_iter is None else int(max_iter)
    eta0 = default_eta(problem, step)
    if not (math.isfinite(eta0) and eta0 > 0):  # e.g. denormal unaries: step / scale overflows
        raise ValueError(f"relaxed-gd: the step size eta = step / (largest unary range + 2 lam largest incident "
                         f"weight) = {eta0:g} is not a finite positive number; scale the unaries and lam up")
    n_labels = problem.n_labels
    unary_np = np.asarray(problem.unary, dtype=np.float64)
    weights_np = np.asarray(problem.weights, dtype=np.float64)
    scale = problem.energy_scale
    unary = xp.asarray(unary_np)
    weights = xp.asarray(weights_np)
    seeded_np = problem.seeded
    seeded = xp.asarray(seeded_np)[..., None]
    free = ~seeded
    seed_onehot = xp.asarray(np.eye(n_labels)[np.where(seeded_np, problem.seeds, 0)])
    init_onehot = xp.asarray(np.eye(n_labels)[init])
    free_weight = free.astype(unary.dtype)  # 1 at free pixels, 0 at seeded ones (their S stays one-hot)

    def take_step(z):
        """(log S, S) from the logits z: log-softmax over the labels, each label at least CLIP below the
        largest of its pixel (accelerated method), the seeded pixels one-hot."""
        z = z - label_max(z)[..., None]
        if method != "fixed":
            z = xp.maximum(z, -CLIP)
        e = xp.exp(z)
        total = label_sum(e)[..., None]
        return z - xp.log(total), xp.where(seeded, seed_onehot, e / total)

    def rounded(probs):
        return problem.apply_seeds(to_numpy(label_argmax(probs)))

    probs = (1.0 - MIX) * init_onehot + MIX / n_labels
    probs = xp.where(seeded, seed_onehot, probs)
    log_probs = xp.log(xp.maximum(probs, 1e-300))  # seeded pixels: 0 and -690.8, never updated

    energies = [problem.energy(init)]
    value, grad = relaxed_energy_arrays(unary, weights, problem.lam, probs)
    relaxed_history = [value]
    labels = init.copy()
    converged, stalled = False, False
    eta, previous_log_probs, momentum_steps = eta0, log_probs, 0  # the plain method keeps eta = eta0
    iterations = 0
    while iterations < cap:
        iterations += 1
        check_cancelled()
        trial = log_probs - eta * (grad * free_weight)
        if method != "fixed" and momentum_steps:
            beta = momentum_steps / (momentum_steps + 3.0)
            trial += beta * (log_probs - previous_log_probs) * free_weight
        trial, trial_probs = take_step(trial)
        trial_value, trial_grad = relaxed_energy_arrays(unary, weights, problem.lam, trial_probs)
        if not math.isfinite(trial_value):
            raise FloatingPointError(f"relaxed-gd: the relaxed energy became {trial_value} at iteration {iterations} "
                                     f"(eta = {eta:g}); try a smaller step=")
        if method == "fixed" or trial_value <= value:
            previous_log_probs, log_probs, probs = log_probs, trial, trial_probs
            change = value - trial_value
            value, grad = trial_value, trial_grad
            if method != "fixed":
                momentum_steps += 1
                eta = min(eta * GROW, MAX_GROWTH * eta0)
            converged = abs(change) <= tol * scale
        else:  # dropped: restart the momentum with a shorter step
            stalled = momentum_steps == 0 and eta == eta0
            previous_log_probs, momentum_steps = log_probs, 0
            eta = max(eta * SHRINK, eta0)
            converged = stalled
        if history == "all":
            labels = rounded(probs)
            energies.append(problem.energy(labels))
        relaxed_history.append(value)
        if callback is not None:
            callback(iterations, value)
        if converged:
            break
    if history == "ends":
        labels = rounded(probs)
        energies.append(problem.energy(labels))
    if stalled:
        message = "converged: a plain step (eta0) no longer lowers the relaxed energy"
    elif converged:
        message = f"converged: the relaxed energy changed by at most tol * scale = {tol * scale:.3g}"
    else:
        message = f"stopped: {cap} iterations (max_iter) reached"
    return {"labels": labels, "history": energies, "iterations": iterations, "converged": converged,
            "message": message, "relaxed_history": relaxed_history,
            "probs": np.array(to_numpy(probs), dtype=np.float64), "eta": eta0, "step_size": eta}

