"""The solver backends and the registry that names them.

The contract: a backend is a module of this package defining
``minimize(problem, init, *, max_iter=None, ...)``, the options keyword-only. It receives a
validated problem of the class it declares (or a subclass) and a starting labeling that satisfies
the seeds, and returns a dict with at least ``labels`` (a labeling that satisfies the seeds),
``history`` (reference energies, or the reference's formula summed in compiled code: the initial
labeling's, then one per iteration), ``converged`` and
``message`` (why it stopped); a backend that records fewer energies than it runs iterations
(mean-field's ``history="ends"``) also returns ``iterations``, the count :func:`~admsolve.solve` reports
as ``sweeps``. A backend may add ``note``, a remark :func:`~admsolve.solve` appends to the message
(numba-expansion's choice of memory layout), and keys of its own, kept in the result. ``max_iter``
caps the iterations (sweeps of moves, or mean-field updates); a backend with a convergence tolerance
calls it ``tol``. Backends written with
array-module operations (``devices`` holds "cuda") take ``device=None``: by default they run where
the problem's arrays came from (``problem.device``).

Adding a backend is one module plus one :class:`Backend` entry in :data:`BACKENDS`. A backend
module is imported only when it is first used, so optional libraries are needed only by its users.

Layer: imports :mod:`admsolve.energies` (the problem classes the entries name); the backend modules
import energies, filters and the root's private helpers, never :mod:`admsolve.solve`, data or training.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .._array import cuda_status
from ..energies import DenseCRF, GridCRF, LabelingProblem


@dataclass(frozen=True)
class Backend:
    """What the registry knows about a backend before importing it."""

    name: str
    module: str
    requires: tuple[str, ...]  # importable modules the backend needs
    extra: str  # the pip extra of admsolve that installs them ("" if none)
    releases_gil: bool  # whether solve_batch can run it in threads
    description: str
    problem: type[LabelingProblem] = GridCRF  # the class of problem it solves (subclasses too)
    monotone: bool = True  # whether the reference energy never rises above the initial labeling's
    devices: tuple[str, ...] = ("cpu",)  # where it can run: "cpu", and "cuda" for array-module backends
    takes_labels: bool = False  # whether it takes a `labels` option (its moves only to those labels)
    # whether the module also defines batchable(problems, options), checked_options(problem, options) and
    # minimize_batch(problems, inits, options), which solve_batch calls to solve each thread's share of a batch
    # in one compiled call
    solves_batches: bool = False
    # pixels x labels of the largest problem of a batch below which solve_batch solves in the calling thread:
    # on smaller problems starting the threads (and, where the problems are not solved together, the Python
    # around each solve, under the GIL) outweighs the compiled work, and two threads were slower than one
    # (measured on 2 cores: benchmarks/solvers.py's batch section)
    threads_from: int = 0


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("maxflow", "admsolve.backends.maxflow", ("maxflow",), "maxflow", False,
                "alpha-expansion, each move a min-cut by PyMaxflow (GPL)", takes_labels=True),
        Backend("numba-expansion", "admsolve.backends.numba_expansion", ("numba",), "", True,
                "alpha-expansion on admsolve's own Numba max-flow (Boykov-Kolmogorov)", threads_from=4_000,
                takes_labels=True, solves_batches=True),
        Backend("numba-swap", "admsolve.backends.numba_swap", ("numba",), "", True,
                "alpha-beta swap on admsolve's own Numba max-flow", threads_from=4_000, takes_labels=True),
        Backend("numba-icm", "admsolve.backends.numba_icm", ("numba",), "", True,
                "iterated conditional modes, Numba JIT", threads_from=20_000),
        Backend("relaxed-gd", "admsolve.backends.relaxed_gd", (), "", True,
                "mirror descent on the relaxed grid-CRF energy (eq. 9), NumPy or CuPy",
                monotone=False, devices=("cpu", "cuda")),
        Backend("mean-field", "admsolve.backends.mean_field", ("numba",), "", True,
                "dense-CRF mean-field with permutohedral bilateral filtering, NumPy or CuPy",
                problem=DenseCRF, monotone=False, devices=("cpu", "cuda")),
    )
}

class CancelFlag:
    """A process-wide flag with the interface of :class:`threading.Event`'s ``set``, ``clear`` and
    ``is_set``, held in a one-element NumPy array (``array``) that compiled loops read between moves."""

    def __init__(self) -> None:
        self.array = np.zeros(1, dtype=np.uint8)

    def set(self) -> None:
        self.array[0] = 1

    def clear(self) -> None:
        self.array[0] = 0

    def is_set(self) -> bool:
        return bool(self.array[0])


#: Set by :func:`admsolve.solve_batch` when it is interrupted (Ctrl-C) or one of its problems fails:
#: the backends' loops check it between moves and sweeps (:func:`check_cancelled`, or ``CANCEL.array``
#: in compiled ones), so that worker threads stop after their current move instead of finishing their
#: problem. It is process-wide: a solve running in another thread at that moment stops too (with
#: SolveCancelled).
CANCEL = CancelFlag()


class SolveCancelled(Exception):
    """Raised inside a backend when :data:`CANCEL` is set."""


def check_cancelled() -> None:
    """Raise SolveCancelled if :data:`CANCEL` is set (called between moves and sweeps)."""
    if CANCEL.is_set():
        raise SolveCancelled("solve cancelled: solve_batch was interrupted")


#: Former names, for an error message that points to the new one.
RENAMED = {"cupy-gd": "relaxed-gd", "cupy-densecrf": "mean-field"}

#: Per problem class, the backends tried in this order when none is named.
DEFAULT_PREFERENCE: dict[type[LabelingProblem], tuple[str, ...]] = {
    GridCRF: ("numba-expansion", "maxflow", "numba-icm"),
    DenseCRF: ("mean-field",),
}


def lookup(name: str) -> Backend:
    """The registry entry for `name`, or a ValueError listing the known names."""
    if isinstance(name, str) and name in RENAMED:
        raise ValueError(f"backend: {name!r} is now called {RENAMED[name]!r} (it runs on the CPU or a GPU, "
                         f"where the problem's arrays live)")
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    return BACKENDS[name]


def missing_requirement(backend: Backend) -> str | None:
    """Why `backend` cannot be used here (a sentence naming the extra to install), or None."""
    for module in backend.requires:
        if importlib.util.find_spec(module) is None:
            install = f"pip install 'admsolve[{backend.extra}]'" if backend.extra else f"pip install {module}"
            return f"backend {backend.name!r} needs the Python module {module!r}: {install}"
    return None


def load(name: str) -> Callable:
    """Import and return the ``minimize`` function of backend `name`."""
    return load_module(name).minimize


def load_module(name: str) -> ModuleType:
    """Import and return the module of backend `name`."""
    backend = lookup(name)
    reason = missing_requirement(backend)
    if reason:
        raise ImportError(reason)
    return importlib.import_module(backend.module)


def available_backends() -> dict[str, bool | str]:
    """Map each backend name to True if it can be used here, else to the reason why not."""
    return {name: missing_requirement(backend) or True for name, backend in BACKENDS.items()}


def devices_here(name: str) -> dict[str, bool | str]:
    """Where backend `name` can run on this machine: ``{"cpu": True, "cuda": True or the reason not}``
    for each device it supports (the reason of :func:`missing_requirement` when it cannot run at all)."""
    backend = lookup(name)
    reason = missing_requirement(backend)
    return {device: reason or (True if device == "cpu" else cuda_status()) for device in backend.devices}


def solves(backend: Backend, problem: LabelingProblem) -> bool:
    """Whether `backend` solves `problem` (an instance of its problem class or of a subclass)."""
    return isinstance(problem, backend.problem)


def default_backend(problem: LabelingProblem) -> str:
    """The first usable backend of DEFAULT_PREFERENCE for the class of `problem` (or its nearest base)."""
    for cls in type(problem).__mro__:
        if cls in DEFAULT_PREFERENCE:
            for name in DEFAULT_PREFERENCE[cls]:
                if missing_requirement(BACKENDS[name]) is None:
                    return name
            raise ImportError(f"no backend for {cls.__name__} can be used: pip install numba")
    raise ValueError(f"problem: no backend solves a {type(problem).__name__}; pass a callable backend")
