"""The background compilation of the regularized phase's code while the pCE phase trains
(admsolve/training/warmup.py): it compiles what the first regularized step would, and draws from no
random generator a run uses."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from admsolve.backends.expansion_batch import solve_latent_batch  # noqa: E402
from admsolve.filters._lattice_kernels import _build_lattice  # noqa: E402
from admsolve.training import TrainConfig  # noqa: E402
from admsolve.training.warmup import compiling_in_background  # noqa: E402


def test_it_compiles_the_solver_and_the_lattice_and_leaves_the_random_generators_alone():
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    with compiling_in_background([TrainConfig(optimizer="adm", regularizer="grid", device="cpu"),
                                  TrainConfig(optimizer="gd", regularizer="dense", device="cpu")]) as thread:
        thread.join()
    assert thread.error is None
    assert solve_latent_batch.signatures and _build_lattice.signatures
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))


@pytest.mark.parametrize("settings", [{"regularizer": "none"}, {"epochs": 0}])
def test_nothing_starts_without_a_regularized_phase(settings):
    with compiling_in_background([TrainConfig(**{"device": "cpu", **settings})]) as thread:
        assert thread is None


def test_the_thread_has_ended_when_the_with_is_left_early():
    """A thread still inside compiled code at interpreter shutdown aborts the process (seen under torchrun):
    leaving the ``with`` at once, as a run that ends or fails early does, stops and joins it."""
    with compiling_in_background([TrainConfig(optimizer="adm", regularizer="grid", device="cpu")]) as thread:
        pass
    assert not thread.is_alive() and thread.error is None
