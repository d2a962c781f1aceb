"""solve() and solve_batch(): one call over every backend, one result type."""

from __future__ import annotations

import inspect
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

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
        ``problem.energy(labels)``, the reference energy (ADM's compiled latent step,
        :mod:`admsolve.backends.expansion_batch`, sums the reference's formula in compiled code, as history).
    history : list of float
        Reference energy of the initial labeling, then after each sweep (mean-field records only the
        first and the last by default: its ``history`` option); numba-expansion sums the reference's
        formula in compiled code, in another order (equal up to rounding).
    sweeps : int
        Number of sweeps (iterations) run: the backend's ``iterations`` when it returns one, else
        ``len(history) - 1``.
    converged : bool
        True if the last sweep changed nothing (a local minimum for the backend's moves).
    message : str
        Why the backend stopped (converged, or the iteration cap reached).
    backend : str
    time : float
        Wall-clock seconds spent in the backend.

    Backends may add keys of their own.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.items() if k != "labels")
        return f"SolveResult({fields})"


#: Accepted spellings of the shared iteration cap ``max_iter``: the sweeps of move-making solvers and
#: the updates of mean-field are both iterations.
ITERATION_ALIASES = ("max_sweeps", "iterations")


def resolve_backend(problem: LabelingProblem, backend: str | Callable[..., dict] | None) -> str | Callable[..., dict]:
    """The backend to use for `problem`: its registry name, or `backend` itself when it is a callable;
    checks that it solves that kind of problem.

    `backend` is a registry name, None (the default for the problem's class) or a callable with the
    backend signature ``minimize(problem, init, **options)``, named by its ``__name__``.
    """
    if not isinstance(problem, LabelingProblem):
        raise TypeError(f"problem: expected a GridCRF, a DenseCRF or another LabelingProblem, got {describe(problem)}")
    if callable(backend):
        return backend
    name = backends.default_backend(problem) if backend is None else backend
    entry = backends.lookup(name)
    if not backends.solves(entry, problem):
        raise ValueError(f"backend: {entry.name!r} solves {entry.problem.__name__} problems, "
                         f"got a {type(problem).__name__}")
    return entry.name


def check_options(name: str, minimize: Callable[..., dict], options: dict[str, Any]) -> dict[str, Any]:
    """The options for `minimize` with the iteration cap under its one name ``max_iter`` (checked);
    a TypeError names any option the backend does not take."""
    options = dict(options)
    given = [key for key in ("max_iter", *ITERATION_ALIASES) if key in options]
    if len(given) > 1:
        raise TypeError(f"options: expected one iteration cap (max_iter; {' and '.join(ITERATION_ALIASES)} are "
                        f"other names for it), got {', '.join(given)}")
    if given:
        value = options.pop(given[0])
        options["max_iter"] = None if value is None else as_scalar(value, given[0], minimum=0, integer=True)
    parameters = inspect.signature(minimize).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return options
    accepted = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"backend {name!r} does not take option(s) {', '.join(unknown)}; "
                        f"it takes: {', '.join(accepted) or 'none'}")
    return options


def iterations_run(outcome: Mapping[str, Any]) -> int:
    """The number of iterations a backend ran: its ``iterations`` when it says (a backend may record
    fewer energies than iterations), else one per history entry after the first."""
    count = outcome.get("iterations")
    return len(outcome["history"]) - 1 if count is None else int(count)


def stop_message(outcome: Mapping[str, Any], max_iter: int | None) -> str:
    """Why a backend stopped, when it does not say itself."""
    if outcome["converged"]:
        return "converged: the last iteration changed nothing"
    iterations = iterations_run(outcome)
    if max_iter is not None and iterations >= max_iter:
        return f"stopped: {iterations} iterations (max_iter) reached"
    return f"stopped after {iterations} iterations without converging"


def solve(problem: LabelingProblem, backend: str | Callable[..., dict] | None = None, *, init: ArrayLike | None = None,
          **options: Any) -> SolveResult:
    """Minimise the energy of `problem` with the named backend.

    Parameters
    ----------
    problem : GridCRF or DenseCRF (or a subclass)
    backend : str or callable, optional
        A name from :func:`available_backends` that solves this kind of problem; by default the
        first usable of ``backends.DEFAULT_PREFERENCE`` for it. A callable
        ``minimize(problem, init, **options)`` returning a dict with ``labels``, ``history`` and
        ``converged`` is used as a backend (as ``scipy.optimize.minimize`` takes a callable method).
    init : (H, W) array_like of int, optional
        Starting labeling (warm start). Seeded pixels are set to their seeds. By default
        ``problem.initial_labels()``: the per-pixel argmin of the unaries.
    **options
        Keyword options of the backend. Every backend takes ``max_iter`` (also spelt ``max_sweeps``
        or ``iterations``), the cap on its iterations. Unknown options raise TypeError.

    Returns
    -------
    SolveResult
    """
    chosen = resolve_backend(problem, backend)
    if callable(chosen):
        name, minimize = getattr(chosen, "__name__", type(chosen).__name__), chosen
    else:
        name, minimize = chosen, backends.load(chosen)
    options = check_options(name, minimize, options)
    start = problem.initial_labels() if init is None else problem.apply_seeds(init, "init")
    began = time.perf_counter()
    outcome = minimize(problem, start, **options)
    return _result(problem, name, outcome, time.perf_counter() - began, options.get("max_iter"))


def _result(problem, name, outcome, elapsed, max_iter):
    """The SolveResult of a backend's `outcome` dict for `problem`, which took `elapsed` seconds."""
    labels = outcome.pop("labels")
    outcome.setdefault("message", stop_message(outcome, max_iter))
    note = outcome.pop("note", None)
    if note:
        outcome["message"] += f"; {note}"
    sweeps = iterations_run(outcome)
    outcome.pop("iterations", None)
    return SolveResult(labels=labels, energy=problem.energy(labels), backend=name,
                       time=elapsed, sweeps=sweeps, **outcome)


def _solve_job(job):
    problem, backend, init, options = job
    return solve(problem, backend, init=init, **options)


#: Why worker processes may fail to start, and the fix (the warning of solve_batch's fallback).
MAIN_GUARD = ('a script that calls solve_batch with a backend run in processes ("maxflow") must call it under '
              '`if __name__ == "__main__":`, since each worker process imports the script again')


#: Set when worker processes could not start in this session: later calls go straight to threads.
_processes_failed = False


def _ignore_sigint():
    """Worker processes leave Ctrl-C to the caller, which terminates them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_ready():
    return True


def solve_batch(problems: Sequence[LabelingProblem], backend: str | Callable[..., dict] | None = None, *,
                workers: int | None = None, inits: Sequence[ArrayLike | None] | None = None,
                problem_options: Sequence[Mapping[str, Any]] | None = None, **options: Any) -> list[SolveResult]:
    """Solve several problems in parallel; results come back in input order.

    Backends that release the GIL (the Numba ones) run in threads; the others (PyMaxflow holds the
    GIL) in worker processes. A backend with ``solves_batches`` in the registry (``numba-expansion``) solves
    a batch of one shape together: each thread its share in one compiled call, with no return to Python
    between problems (each result's ``time`` is then its thread's time shared equally among its share).
    An exception raised for one problem is re-raised, after the remaining work is cancelled, with a note
    naming its index (``exc.__notes__``, and ``exc.index``).
    Ctrl-C (KeyboardInterrupt) cancels the outstanding work and returns at once: worker processes
    are terminated, worker threads stop after their current move or sweep
    (:data:`admsolve.backends.CANCEL`). A script that runs ``solve_batch`` with processes must call
    it under ``if __name__ == "__main__":``; where the worker processes cannot start (that guard
    missing), it warns and solves in threads instead.

    Parameters
    ----------
    problems : sequence of GridCRF or DenseCRF (all of one kind)
    backend : str or callable, optional
        As in :func:`solve`; a callable runs in threads.
    workers : int, optional
        Number of threads or processes; default ``os.cpu_count()``. 1 solves in this thread, as do
        problems of fewer pixels x labels than the backend's ``threads_from`` in the registry (there
        starting threads, and the Python around each solve where the problems are not solved together,
        outweigh the compiled work: two threads were slower than one).
    inits : sequence of (H, W) array_like or None, optional
        One starting labeling per problem (``solve``'s ``init=``, per problem).
    problem_options : sequence of dict, optional
        Options for one problem each, added to `options` (e.g. a ``labels=`` subset per image).
    **options
        Passed to every :func:`solve` call.

    Returns
    -------
    list of SolveResult
    """
    global _processes_failed
    if "init" in options:
        raise TypeError("solve_batch: init= is solve()'s option; pass inits=[...], one starting labeling per "
                        "problem (or None)")
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # a worker process importing the caller's script, which calls solve_batch at import time: stop here
        # (with one line) rather than run the script's work again; the caller falls back to threads
        raise SystemExit(f"admsolve: solve_batch: worker process not started: {MAIN_GUARD}")
    problems = list(problems)
    inits = [None] * len(problems) if inits is None else list(inits)
    if len(inits) != len(problems):
        raise ValueError(f"inits: expected {len(problems)} entries, one per problem, got {len(inits)}")
    problem_options = [{}] * len(problems) if problem_options is None else list(problem_options)
    if len(problem_options) != len(problems):
        raise ValueError(f"problem_options: expected {len(problems)} dicts, one per problem, "
                         f"got {len(problem_options)}")
    workers = (os.cpu_count() or 1) if workers is None else as_scalar(workers, "workers", minimum=1, integer=True)
    chosen = resolve_backend(problems[0], backend) if problems else backend
    jobs = [(problem, chosen, init, {**options, **extra})
            for problem, init, extra in zip(problems, inits, problem_options)]
    workers = min(workers, max(len(jobs), 1))
    if problems and isinstance(chosen, str) and backends.BACKENDS[chosen].releases_gil and \
            max(problem.unary.size for problem in problems) < backends.BACKENDS[chosen].threads_from:
        workers = 1  # problems this small solve faster one after another (the registry's threads_from)
    if problems and isinstance(chosen, str) and backends.BACKENDS[chosen].solves_batches:
        together = _checked_together(jobs)
        if together is not None:
            return _solve_together(chosen, problems, *together, workers)
    if workers == 1:
        results = []
        for index, job in enumerate(jobs):
            try:
                results.append(_solve_job(job))
            except Exception as exc:
                raise _with_index(exc, index)
        return results
    if callable(chosen) or backends.BACKENDS[chosen].releases_gil or _processes_failed:  # a callable may not pickle
        return _solve_in_threads(jobs, workers)
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                   initializer=_ignore_sigint)
    try:
        executor.submit(_worker_ready).result()
    except BrokenProcessPool:
        _processes_failed = True
        _terminate(executor)
        warnings.warn(f"solve_batch: the worker processes could not start; solving in threads instead, now and "
                      f"in later calls ({MAIN_GUARD})", RuntimeWarning, stacklevel=2)
        return _solve_in_threads(jobs, workers)
    except BaseException:
        _terminate(executor)
        raise
    return _collect(executor, _solve_job, jobs, stop=_terminate)


def _solve_in_threads(jobs, workers):
    return _collect(ThreadPoolExecutor(workers), _solve_job, jobs, stop=_cancel_threads)


def _checked_together(jobs):
    """For a backend that solves batches: each job's options (checked by solve's rules and the backend's,
    an error naming the problem's index) and start, when the backend takes the problems together; else None."""
    name = jobs[0][1]
    module = backends.load_module(name)
    options, starts = [], []
    for index, (problem, _, init, job_options) in enumerate(jobs):
        try:
            resolve_backend(problem, name)
            job_options = check_options(name, module.minimize, job_options)
            module.checked_options(problem, job_options)
            starts.append(problem.initial_labels() if init is None else problem.apply_seeds(init, "init"))
        except Exception as exc:
            raise _with_index(exc, index)
        options.append(job_options)
    return (options, starts) if module.batchable([job[0] for job in jobs], options) else None


def _solve_together(name, problems, options, starts, workers):
    """Solve `problems` with the backend's minimize_batch: each thread its share, in one compiled call; each
    result's ``time`` is its thread's time shared equally among the problems of its share."""
    minimize_batch = backends.load_module(name).minimize_batch
    results = [None] * len(problems)
    for share, outcomes, seconds in in_shares(
            lambda share: minimize_batch([problems[i] for i in share], [starts[i] for i in share],
                                         [options[i] for i in share]),
            np.arange(len(problems)), workers):
        for i, outcome in zip(share, outcomes):
            results[i] = _result(problems[i], name, outcome, seconds / len(share), options[i].get("max_iter"))
    return results


def in_shares(function: Callable[[np.ndarray], Any], order: np.ndarray,
              workers: int) -> list[tuple[np.ndarray, Any, float]]:
    """Deal the indices `order` in turn into `workers` shares (contiguous int64 arrays: one type to Numba
    whatever their number) and call ``function(share)`` on each, in threads (:func:`run_in_threads`) when
    there are several: a list of (share, its result, the seconds it took)."""
    shares = [np.ascontiguousarray(order[first::workers], dtype=np.int64) for first in range(workers)]

    def timed(share):
        began = time.perf_counter()
        result = function(share)
        return result, time.perf_counter() - began

    done = [timed(shares[0])] if workers == 1 else run_in_threads(timed, shares, workers)
    return [(share, result, seconds) for share, (result, seconds) in zip(shares, done)]


def run_in_threads(function: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> list[Any]:
    """``[function(job) for job in jobs]``, computed by `workers` threads, in order. An exception raised by a
    job or Ctrl-C sets :data:`admsolve.backends.CANCEL`, which stops the compiled loops of the running jobs
    after their current move, waits for them and is re-raised."""
    return _collect(ThreadPoolExecutor(workers), function, jobs, stop=_cancel_threads, indexed=False)


def _collect(executor, function, jobs, *, stop, indexed=True):
    """Run `function` on each of `jobs` on `executor`, results in order; on an error or Ctrl-C, `stop` the
    outstanding work first. `indexed`: an exception is marked with its job's index (_with_index)."""
    try:
        futures = [executor.submit(function, job) for job in jobs]
        results = []
        for index, future in enumerate(futures):
            try:
                results.append(future.result())
            except Exception as exc:
                raise _with_index(exc, index) if indexed else exc
    except BaseException:
        stop(executor)
        raise
    executor.shutdown(wait=True)
    return results


def _cancel_threads(executor):
    """Cancel the jobs not started and stop the running ones after their current move (CANCEL)."""
    backends.CANCEL.set()
    try:
        executor.shutdown(wait=True, cancel_futures=True)
    finally:
        backends.CANCEL.clear()


def _terminate(executor):
    """Cancel the jobs not started and terminate the worker processes."""
    terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    processes = list((getattr(executor, "_processes", None) or {}).values())  # shutdown forgets them
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)


def _with_index(exc, index):
    """Mark `exc` as raised for problems[index]."""
    exc.index = index
    note = f"raised while solving problems[{index}]"
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10: the same attribute, which 3.11 tracebacks print
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
    return exc
