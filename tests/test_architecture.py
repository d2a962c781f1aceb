"""The package's structure and its one backend contract (issue 9): the import layers, subclasses
of the problem classes, the shared iteration option, callable backends, ``python -m admsolve``."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import admsolve as adm
from admsolve import backends as registry

PACKAGE = Path(adm.__file__).parent

#: Layers, lowest first; a module may import from its own layer or a lower one.
LAYERS = [("admsolve._validation", "admsolve._array", "admsolve._support", "admsolve._files"), ("admsolve.filters",), ("admsolve.energies",),
          ("admsolve.backends",), ("admsolve.solve",), ("admsolve.data",), ("admsolve.training",),
          ("admsolve.cli", "admsolve.__main__", "admsolve")]


def layer_of(module):
    """Index in LAYERS of the longest prefix naming `module` (the package itself is the top)."""
    best, rank = -1, None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), index
    return rank


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path, text=None):
    """The admsolve modules `path` imports (relative imports resolved), at any depth of the code;
    `text` stands for the file's contents when given."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("admsolve"):
                # "from . import backends" names a module; "from .x import y" names x
                found.update(f"{target}.{alias.name}" if not node.module else target for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("admsolve"))
    return found


def test_every_module_belongs_to_a_layer():
    for path in PACKAGE.rglob("*.py"):
        assert layer_of(module_name(path)) is not None, path


def test_no_module_imports_from_a_higher_layer():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        source = module_name(path)
        for target in imports_of(path):
            if layer_of(target) > layer_of(source):
                violations.append(f"{source} imports {target}")
    assert violations == []


def test_the_layer_check_sees_upward_imports():
    """The rule can fail: an energies module importing the training side, relatively or not, is caught."""
    path = PACKAGE / "energies" / "problem.py"
    for text in ("from ..training import loop\n", "def f():\n    from ..training.loop import train\n",
                 "import admsolve.solve\n"):
        targets = imports_of(path, text)
        assert any(layer_of(target) > layer_of(module_name(path)) for target in targets), text


def test_the_root_holds_at_most_eight_modules():
    assert len(list(PACKAGE.glob("*.py"))) <= 8


def test_importing_the_core_does_not_import_torch():
    code = "import sys, admsolve, admsolve.cli, admsolve.training.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("modules", ["admsolve", "admsolve.cli"])
def test_importing_the_core_does_not_import_numba_or_scipy(modules):
    """Numba and SciPy (a few tenths of a second each) load on first use only: the lattice kernels, the
    Numba backends, the colour-model smoothing, the datasets (issue 13 item 4)."""
    code = (f"import sys, {modules}; print(sorted(m for m in ('numba', 'scipy', 'torch', 'PIL') "
            f"if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("[]" if modules == "admsolve" else "['PIL']")


def test_the_lattice_loads_numba_on_first_use():
    code = ("import sys, numpy as np, admsolve as adm; assert 'numba' not in sys.modules; "
            "adm.PermutohedralLattice(np.zeros((4, 2))); print('numba' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


# --------------------------------------------------------------------------- the backend contract

class MyGrid(adm.GridCRF):
    """A user's subclass, e.g. one that adds a field."""

    origin = "user"


class MyDense(adm.DenseCRF):
    origin = "user"


def grid_pair(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
    unary = rng.exponential(1.0, (6, 7, 3))
    weights = adm.contrast_weights(image, connectivity=8)
    return adm.GridCRF(unary, weights, lam=1.0), MyGrid(unary, weights, lam=1.0), image, unary


@pytest.mark.parametrize("name", [name for name, entry in registry.BACKENDS.items() if entry.problem is adm.GridCRF])
def test_a_gridcrf_subclass_solves_like_its_parent(name):
    if adm.available_backends()[name] is not True:
        pytest.skip(adm.available_backends()[name])
    parent, child, _, _ = grid_pair()
    a, b = adm.solve(parent, name, max_iter=3), adm.solve(child, name, max_iter=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.energy == b.energy


def test_a_densecrf_subclass_solves_like_its_parent():
    _, _, image, unary = grid_pair(1)
    parent, child = adm.DenseCRF(unary, image, sxy=5, srgb=20), MyDense(unary, image, sxy=5, srgb=20)
    a, b = adm.solve(parent, max_iter=3), adm.solve(child, max_iter=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert b.backend == "mean-field"


@pytest.mark.parametrize("name", list(registry.BACKENDS))
@pytest.mark.parametrize("option", ["max_iter", "max_sweeps", "iterations"])
def test_every_backend_takes_the_iteration_cap_under_each_name(name, option):
    if adm.available_backends()[name] is not True:
        pytest.skip(adm.available_backends()[name])
    grid, _, image, unary = grid_pair(2)
    problem = adm.DenseCRF(unary, image, sxy=5, srgb=20) if registry.BACKENDS[name].problem is adm.DenseCRF else grid
    result = adm.solve(problem, name, **{option: 2})
    # one energy per iteration after the first, or (mean-field's default history="ends") the first and the last
    assert result.sweeps <= 2 and len(result.history) in {result.sweeps + 1, min(result.sweeps, 1) + 1}
    # the reference energy, or (numba-expansion) its formula summed in compiled code: equal up to rounding
    assert result.history[-1] == pytest.approx(result.energy, rel=1e-12)
    assert isinstance(result.message, str) and result.message
    np.testing.assert_array_equal(result.labels, adm.solve(problem, name, max_iter=2).labels)


def test_the_message_says_why_it_stopped():
    grid, _, _, _ = grid_pair(3)
    assert adm.solve(grid, "numba-icm").message.startswith("converged")
    capped = adm.solve(grid, "relaxed-gd", max_iter=1, tol=0.0)
    assert not capped.converged and "max_iter" in capped.message


def test_a_callable_backend():
    grid, _, _, _ = grid_pair(4)
    calls = []

    def keep_init(problem, init, *, max_iter=None):
        calls.append(max_iter)
        return {"labels": init, "history": [problem.energy(init)], "converged": True}

    result = adm.solve(grid, keep_init, max_sweeps=7)
    assert calls == [7] and result.backend == "keep_init"
    np.testing.assert_array_equal(result.labels, grid.initial_labels())
    assert result.energy == grid.energy(grid.initial_labels()) and result.message.startswith("converged")
    batch = adm.solve_batch([grid, grid], keep_init, workers=2)
    assert [r.backend for r in batch] == ["keep_init", "keep_init"]
    with pytest.raises(TypeError, match=r"'keep_init' does not take option\(s\) step"):
        adm.solve(grid, keep_init, step=1.0)


def test_a_problem_remembers_its_device_and_array_backends_follow_it(monkeypatch):
    grid, _, _, _ = grid_pair(5)
    assert grid.device == "cpu"
    monkeypatch.setattr(grid, "device", "cuda")  # as built from CuPy arrays
    expected = ImportError if adm.backends.devices_here("relaxed-gd")["cuda"] is not True else None
    if expected:
        with pytest.raises(ImportError, match=r"admsolve\[cuda\]"):
            adm.solve(grid, "relaxed-gd", max_iter=1)
    np.testing.assert_array_equal(adm.solve(grid, "relaxed-gd", max_iter=1, device="cpu").labels,
                                  adm.solve(grid_pair(5)[0], "relaxed-gd", max_iter=1).labels)


def test_old_backend_names_point_to_the_new_ones():
    grid, _, _, _ = grid_pair(6)
    with pytest.raises(ValueError, match=r"'cupy-gd' is now called 'relaxed-gd'"):
        adm.solve(grid, "cupy-gd")


def test_devices_here_lists_every_supported_device():
    for name, entry in registry.BACKENDS.items():
        assert set(registry.devices_here(name)) == set(entry.devices)


# --------------------------------------------------------------------------- packaging

def test_python_m_admsolve_version():
    out = subprocess.run([sys.executable, "-m", "admsolve", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"admsolve {adm.__version__}"


def test_py_typed_and_license_ship():
    assert (PACKAGE / "py.typed").is_file()
    assert "BSD 3-Clause" in (PACKAGE.parent / "LICENSE").read_text()
