"""The ADM latent step: eq. 8 per image through any GridCRF backend."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import admsolve as adm  # noqa: E402
from admsolve.training import ADMStep, proximal_loss  # noqa: E402


def batch(seed=0, n=3, k=4, height=12, width=15):
    rng = np.random.default_rng(seed)
    logits = torch.tensor(rng.normal(0, 2, (n, k, height, width)), dtype=torch.float32)
    images = rng.integers(0, 256, (n, height, width, 3)).astype(np.uint8)
    scribbles = np.full((n, height, width), 255)
    scribbles[:, 2, 1:6] = 0
    scribbles[:, 9, 8:14] = rng.integers(1, k, n)[:, None]
    return logits, images, torch.tensor(scribbles, dtype=torch.int64)


@pytest.mark.parametrize("backend", [name for name, entry in adm.backends.BACKENDS.items()
                                     if entry.problem is adm.GridCRF and entry.monotone
                                     and adm.available_backends()[name] is True])
def test_latent_step_lowers_eq8_against_argmax_and_keeps_scribbles(backend):
    logits, images, scribbles = batch()
    step = ADMStep(lam=2.0, gamma=1.0, backend=backend, workers=2, max_sweeps=5)
    probs = logits.softmax(1)
    latent = step(probs, images, scribbles)
    assert latent.dtype == torch.int64 and latent.shape == scribbles.shape
    scribbled = scribbles != 255
    assert torch.equal(latent[scribbled], scribbles[scribbled])
    lowered = []
    for problem, labels, p in zip(step.problems(probs, images, scribbles), latent.numpy(), probs):
        start = problem.energy(problem.apply_seeds(p.argmax(0).numpy()))  # X = argmax S
        assert problem.energy(labels) <= start + 1e-9 * abs(start)
        lowered.append(problem.energy(labels) < start)
    assert any(lowered)


def test_latent_labels_carry_no_gradient_into_the_proximal_loss():
    logits, images, scribbles = batch(seed=1)
    logits.requires_grad_(True)
    latent = ADMStep(max_sweeps=2)(logits.softmax(1), images, scribbles)
    assert not latent.requires_grad
    proximal_loss(logits, latent, scribbles).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"backend: expected a backend that solves a GridCRF \(the grid regularizer\), got 'mean-field'"):
        ADMStep(backend="mean-field")
    with pytest.raises(ValueError, match=r"backend: expected a backend that solves a DenseCRF \(the dense regularizer\)"):
        ADMStep(regularizer="dense", backend="maxflow")
    with pytest.raises(ValueError, match="regularizer: expected one of"):
        ADMStep(regularizer="potts")
    with pytest.raises(ValueError, match="connectivity: expected 4 or 8, got int 6"):
        ADMStep(connectivity=6)
    with pytest.raises(ValueError, match="lam: expected a value >= 0"):
        ADMStep(lam=-1.0)
    logits, images, scribbles = batch()
    with pytest.raises(ValueError, match="scribbles: expected values in"):
        ADMStep()(logits.softmax(1), images, torch.full_like(scribbles, 9))


def test_restricted_labels_come_from_the_scribbles_and_the_prediction_and_still_lower_eq8():
    logits, images, scribbles = batch(seed=2, k=6)
    logits[:, 4:] -= 10.0  # labels 4 and 5 are predicted nowhere and scribbled nowhere
    probs = logits.softmax(1)
    step = ADMStep(lam=4.0, restrict_labels=True, workers=1, max_sweeps=5)
    latent = step(probs, images, scribbles)
    assert int(latent.max()) < 4
    for problem, labels, p in zip(step.problems(probs, images, scribbles), latent.numpy(), probs):
        assert problem.energy(labels) <= problem.energy(problem.apply_seeds(p.argmax(0).numpy())) + 1e-9


def test_the_dense_latent_step_is_mean_field_on_the_dense_crf_and_keeps_scribbles():
    logits, images, scribbles = batch(seed=3)
    probs = logits.softmax(1)
    step = ADMStep(lam=2.0, gamma=1.0, regularizer="dense", sxy=5, srgb=20)
    latent = step(probs, images, scribbles)
    problems = step.problems(probs, images, scribbles)
    assert all(isinstance(problem, adm.DenseCRF) for problem in problems)
    assert problems[0].compat == 4.0 and problems[0].gaussian_compat == 0
    scribbled = scribbles != 255
    assert torch.equal(latent[scribbled], scribbles[scribbled])
    assert all(result.backend == "mean-field" for result in step.results)
    assert np.array_equal(latent.numpy(), np.stack([result.labels for result in step.results]))


def test_every_solve_starts_from_argmax_s_with_the_seeds_applied():
    logits, images, scribbles = batch(seed=4, k=5)
    probs = logits.softmax(1)
    step = ADMStep(lam=1.0, workers=1, max_sweeps=1)
    step(probs, images, scribbles)
    for problem, result, p in zip(step.problems(probs, images, scribbles), step.results, probs):
        assert result.history[0] == pytest.approx(problem.energy(problem.apply_seeds(p.argmax(0).numpy())))
