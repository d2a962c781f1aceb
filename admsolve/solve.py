"""solve() and solve_batch(): one call over every backend, one result type."""

import inspect
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from . import backends
from ._validation import as_scalar, describe
from .energies.problem import LabelingProblem


class SolveResult(dict):
    """Result of :func:`solve`, a dict whose keys are also attributes (like SciPy's OptimizeResult).

    Attributes
    ----------
    labels : (H, W) ndarray of int32
        The labeling found; it satisfies the problem's seeds.
    energy : float
        ``problem.energy(labels)``, the reference energy.
    history : list of float
        Reference energy of the initial labeling, then after each sweep.
    sweeps : int
        Number of sweeps run.
    converged : bool
        True if the last sweep changed nothing (a local minimum for the backend's moves).
    backend : str
    time : float
        Wall-clock seconds spent in the backend.

    Backends may add keys of their own.
    """

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in self.items() if k != "labels")
        return f"SolveResult({fields})"


def resolve_backend(problem, backend):
    """The name of the backend to use for `problem`, checking that it solves that kind of problem."""
    if not isinstance(problem, LabelingProblem):
        raise TypeError(f"problem: expected a GridCRF or DenseCRF, got {describe(problem)}")
    kind = type(problem).__name__
    if backend is None:
        return backends.default_backend(kind)
    entry = backends.lookup(backend)
    if entry.problem != kind:
        raise TypeError(f"backend {entry.name!r} solves {entry.problem} problems, got a {kind}")
    return entry.name


def check_options(name, minimize, options):
    """Raise a TypeError naming any option the backend does not take."""
    accepted = [p.name for p in inspect.signature(minimize).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"backend {name!r} does not take option(s) {', '.join(unknown)}; "
                        f"it takes: {', '.join(accepted) or 'none'}")


def solve(problem, backend=None, *, init=None, **options):
    """Minimise the energy of `problem` with the named backend.

    Parameters
    ----------
    problem : GridCRF or DenseCRF
    backend : str, optional
        A name from :func:`available_backends` that solves this kind of problem; by default the
        first usable of ``backends.DEFAULT_PREFERENCE`` for it.
    init : (H, W) array_like of int, optional
        Starting labeling (warm start). Seeded pixels are set to their seeds. By default
        ``problem.initial_labels()``: the per-pixel argmin of the unaries.
    **options
        Keyword options of the backend, e.g. ``max_sweeps``. Unknown options raise TypeError.

    Returns
    -------
    SolveResult
    """
    name = resolve_backend(problem, backend)
    minimize = backends.load(name)
    check_options(name, minimize, options)
    if "max_sweeps" in options and options["max_sweeps"] is not None:
        options["max_sweeps"] = as_scalar(options["max_sweeps"], "max_sweeps", minimum=1, integer=True)
    start = problem.initial_labels() if init is None else problem.apply_seeds(init, "init")
    began = time.perf_counter()
    outcome = minimize(problem, start, **options)
    elapsed = time.perf_counter() - began
    labels = outcome.pop("labels")
    return SolveResult(labels=labels, energy=problem.energy(labels), backend=name,
                       time=elapsed, sweeps=len(outcome["history"]) - 1, **outcome)


def _solve_job(job):
    problem, backend, init, options = job
    return solve(problem, backend, init=init, **options)


def solve_batch(problems, backend=None, *, workers=None, inits=None, problem_options=None, **options):
    """Solve several problems in parallel; results come back in input order.

    Backends that release the GIL (the Numba ones) run in threads; the others (PyMaxflow holds the
    GIL) in worker processes. An exception raised for one problem is re-raised, after the remaining
    work is cancelled, with a note naming its index (``exc.__notes__``, and ``exc.index``).

    Parameters
    ----------
    problems : sequence of GridCRF or DenseCRF (all of one kind)
    backend : str, optional
        As in :func:`solve`.
    workers : int, optional
        Number of threads or processes; default ``os.cpu_count()``. 1 solves in this thread.
    inits : sequence of (H, W) array_like or None, optional
        One starting labeling per problem.
    problem_options : sequence of dict, optional
        Options for one problem each, added to `options` (e.g. a ``labels=`` subset per image).
    **options
        Passed to every :func:`solve` call.

    Returns
    -------
    list of SolveResult
    """
    problems = list(problems)
    inits = [None] * len(problems) if inits is None else list(inits)
    if len(inits) != len(problems):
        raise ValueError(f"inits: expected {len(problems)} entries, one per problem, got {len(inits)}")
    problem_options = [{}] * len(problems) if problem_options is None else list(problem_options)
    if len(problem_options) != len(problems):
        raise ValueError(f"problem_options: expected {len(problems)} dicts, one per problem, "
                         f"got {len(problem_options)}")
    workers = (os.cpu_count() or 1) if workers is None else as_scalar(workers, "workers", minimum=1, integer=True)
    name = resolve_backend(problems[0], backend) if problems else None
    jobs = [(problem, name, init, {**options, **extra})
            for problem, init, extra in zip(problems, inits, problem_options)]
    workers = min(workers, max(len(jobs), 1))
    if workers == 1:
        results = []
        for index, job in enumerate(jobs):
            try:
                results.append(_solve_job(job))
            except Exception as exc:
                raise _with_index(exc, index)
        return results
    if backends.BACKENDS[name].releases_gil:
        executor = ThreadPoolExecutor(workers)
    else:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    with executor:
        futures = [executor.submit(_solve_job, job) for job in jobs]
        results = []
        for index, future in enumerate(futures):
            try:
                results.append(future.result())
            except Exception as exc:
                executor.shutdown(wait=False, cancel_futures=True)
                raise _with_index(exc, index)
    return results


def _with_index(exc, index):
    """Mark `exc` as raised for problems[index]."""
    exc.index = index
    exc.add_note(f"raised while solving problems[{index}]")
    return exc
