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


# ---------------------------------------------------------------- the compiled latent step (issue 21)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from admsolve.backends import CANCEL, SolveCancelled  # noqa: E402
from admsolve.backends import numba_expansion  # noqa: E402


def one_by_one(step, probs, images, scribbles, valid=None):
    """The latent step's results from its problems built in Python and solved by solve_batch."""
    return step._solve_problems(step._latent_inputs(step._checked(probs, images, scribbles, valid)))


@st.composite
def latent_batches(draw):
    n, k = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    logits = rng.normal(0, draw(st.sampled_from([0.1, 2.0, 20.0])), (n, k, height, width))
    logits[:, :, rng.random((height, width)) < draw(st.sampled_from([0.0, 0.3]))] = 0.0  # ties: argmax takes the first
    probs = torch.tensor(logits, dtype=dtype).softmax(1)
    images = rng.integers(0, 256, (n, height, width, 3)).astype(np.uint8)
    if draw(st.booleans()):
        images[:] = images[:, :1, :1]  # constant images: no Boykov-Jolly sigma
    scribbles = np.where(rng.random((n, height, width)) < 0.15, rng.integers(0, k, (n, height, width)), 255)
    valid = None
    if draw(st.booleans()):  # crop padding: a photograph in each image, and some invalid pixels inside it
        valid = torch.zeros((n, height, width), dtype=torch.bool)
        for i in range(n):
            top, left = rng.integers(0, height), rng.integers(0, width)
            valid[i, top:rng.integers(top + 1, height + 1), left:rng.integers(left + 1, width + 1)] = True
        valid &= torch.from_numpy(rng.random((n, height, width)) < 0.9)
        valid[:, 0, 0] |= ~valid.flatten(1).any(1)  # at least one valid pixel per image
    return probs, images, torch.tensor(scribbles, dtype=torch.int64), valid


@given(inputs=latent_batches(), lam=st.sampled_from([0.0, 0.5, 3.0]), gamma=st.sampled_from([0.0, 1.0]),
       connectivity=st.sampled_from([4, 8]), restrict=st.booleans(), start=st.sampled_from(["argmax", "label-0"]),
       memory=st.sampled_from(["auto", "fast", "lean"]), workers=st.sampled_from([1, 2]),
       max_iter=st.sampled_from([None, 1, 5]))
@settings(max_examples=60, deadline=None)
def test_the_compiled_latent_step_solves_the_problems_built_in_python(inputs, lam, gamma, connectivity, restrict,
                                                                    start, memory, workers, max_iter):
    """One compiled call per thread builds eq. 8 and solves it: the labels, sweeps and messages of building
    each GridCRF and solving it with numba-expansion, the energies equal up to the order of the sums."""
    probs, images, scribbles, valid = inputs
    options = dict(lam=lam, gamma=gamma, connectivity=connectivity, restrict_labels=restrict, latent_init=start,
                   workers=workers, max_iter=max_iter, memory=memory)
    step = ADMStep(**options)
    latent = step(probs, images, scribbles, valid)
    assert step._compiled_options(step._checked(probs, images, scribbles, valid)) is not None
    expected = one_by_one(ADMStep(**options), probs, images, scribbles, valid)
    problems = step.problems(probs, images, scribbles, valid)
    for result, reference, problem in zip(step.results, expected, problems):
        assert np.array_equal(result.labels, reference.labels)
        assert result.labels.dtype == reference.labels.dtype
        for key in ("backend", "sweeps", "converged", "message", "memory"):
            assert result[key] == reference[key], key
        assert result.history == pytest.approx(reference.history, rel=1e-12, abs=1e-12)
        assert result.energy == pytest.approx(problem.energy(result.labels), rel=1e-12, abs=1e-12)
    scribbled = (scribbles != 255) & (True if valid is None else valid)  # (outside the valid box X is argmax S)
    assert torch.equal(latent[scribbled], scribbles[scribbled])


def test_the_compiled_latent_step_shares_the_images_among_the_threads_and_times_them():
    logits, images, scribbles = batch(seed=3, n=5)
    probs = logits.softmax(1)
    one = ADMStep(workers=1, max_iter=5)
    two = ADMStep(workers=2, max_iter=5)
    assert torch.equal(one(probs, images, scribbles), two(probs, images, scribbles))
    assert [r.energy for r in one.results] == [r.energy for r in two.results]
    assert all(r.time > 0 for r in two.results)


def test_auto_memory_says_when_the_compiled_latent_step_chose_lean(monkeypatch):
    monkeypatch.setattr(numba_expansion, "available_memory", lambda: 1000)
    logits, images, scribbles = batch(seed=4)
    step = ADMStep(max_iter=2)
    step(logits.softmax(1), images, scribbles)
    expected = one_by_one(ADMStep(max_iter=2), logits.softmax(1), images, scribbles)
    assert [r.memory for r in step.results] == ["lean"] * 3
    assert "memory='auto' chose the lean layout" in step.results[0].message
    assert [r.message for r in step.results] == [r.message for r in expected]


def test_the_compiled_latent_step_stops_when_cancelled():
    logits, images, scribbles = batch(seed=5)
    CANCEL.set()
    try:
        with pytest.raises(SolveCancelled):
            ADMStep(workers=2)(logits.softmax(1), images, scribbles)
    finally:
        CANCEL.clear()


def test_the_latent_step_refuses_probabilities_that_are_not_finite():
    logits, images, scribbles = batch(seed=7)
    probs = logits.softmax(1)
    probs[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="probs: expected finite values, got 1 NaN or infinite entries"):
        ADMStep()(probs, images, scribbles)


@pytest.mark.parametrize("settings", [dict(backend="maxflow"), dict(latent_stride=2), dict(regularizer="dense"),
                                      dict(backend="numba-icm")])
def test_other_latent_steps_build_their_problems_in_python(settings):
    logits, images, scribbles = batch(seed=6)
    step = ADMStep(**settings)
    assert step._compiled_options(step._checked(logits.softmax(1), images, scribbles, None)) is None


def test_shares_have_one_numba_type_whatever_their_number():
    """The warm-up compiles the latent step with one thread and runs use more: a strided share would be
    another type to Numba, and the run would compile the step again."""
    import numba

    from admsolve.solve import in_shares

    order = np.argsort(-np.arange(7), kind="stable")
    for workers in (1, 2, 3):
        shares = [share for share, _, _ in in_shares(lambda share: share.sum(), order, workers)]
        assert all(numba.typeof(share) == numba.typeof(np.arange(3)) for share in shares)
        assert [share.tolist() for share in shares] == [order[first::workers].tolist() for first in range(workers)]
