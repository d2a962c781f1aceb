"""The registry of solver backends.

Each backend lives in a module of this package that defines ``minimize(problem, init, **options)``.
It receives a validated problem and a starting labeling that satisfies the seeds, and returns a dict
with at least ``labels`` (a labeling that satisfies the seeds), ``history`` (reference energies,
starting with the initial labeling's, then one per sweep) and ``converged``. A backend module is
imported only when the backend is first used, so optional libraries are needed only by their users.
"""

import importlib
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    """What the registry knows about a backend before importing it."""

    name: str
    module: str
    requires: tuple  # importable modules the backend needs
    extra: str  # the pip extra of admsolve that installs them ("" if none)
    releases_gil: bool  # whether solve_batch can run it in threads
    description: str
    problem: str = "GridCRF"  # the class of problem it solves
    monotone: bool = True  # whether the reference energy never rises above the initial labeling's


BACKENDS = {
    backend.name: backend
    for backend in (
        Backend("maxflow", "admsolve.backends.maxflow", ("maxflow",), "maxflow", False,
                "alpha-expansion, each move a min-cut by PyMaxflow (GPL)"),
        Backend("numba-expansion", "admsolve.backends.numba_expansion", ("numba",), "", True,
                "alpha-expansion on admsolve's own Numba max-flow (Boykov-Kolmogorov)"),
        Backend("numba-swap", "admsolve.backends.numba_swap", ("numba",), "", True,
                "alpha-beta swap on admsolve's own Numba max-flow"),
        Backend("numba-icm", "admsolve.backends.numba_icm", ("numba",), "", True,
                "iterated conditional modes, Numba JIT"),
        Backend("cupy-gd", "admsolve.backends.cupy_gd", (), "", True,
                "gradient descent on the relaxed grid-CRF energy (eq. 9), NumPy or CuPy", monotone=False),
        Backend("cupy-densecrf", "admsolve.backends.cupy_densecrf", ("numba",), "", True,
                "dense-CRF mean-field with permutohedral bilateral filtering, NumPy or CuPy",
                problem="DenseCRF", monotone=False),
    )
}


def lookup(name):
    """The registry entry for `name`, or a ValueError listing the known names."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    return BACKENDS[name]


def missing_requirement(backend):
    """Why `backend` cannot be used here (a sentence naming the extra to install), or None."""
    for module in backend.requires:
        if importlib.util.find_spec(module) is None:
            install = f"pip install 'admsolve[{backend.extra}]'" if backend.extra else f"pip install {module}"
            return f"backend {backend.name!r} needs the Python module {module!r}: {install}"
    return None


def load(name):
    """Import and return the ``minimize`` function of backend `name`."""
    backend = lookup(name)
    reason = missing_requirement(backend)
    if reason:
        raise ImportError(reason)
    return importlib.import_module(backend.module).minimize


def available_backends():
    """Map each backend name to True if it can be used here, else to the reason why not."""
    return {name: missing_requirement(backend) or True for name, backend in BACKENDS.items()}


#: Per problem class, the backends tried in this order when none is named.
DEFAULT_PREFERENCE = {"GridCRF": ("numba-expansion", "maxflow", "numba-icm"), "DenseCRF": ("cupy-densecrf",)}


def default_backend(problem_class="GridCRF"):
    """The first backend of DEFAULT_PREFERENCE[problem_class] that can be used here."""
    for name in DEFAULT_PREFERENCE[problem_class]:
        if missing_requirement(BACKENDS[name]) is None:
            return name
    raise ImportError(f"no backend for {problem_class} can be used: pip install numba")
