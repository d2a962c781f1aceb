"""Crop padding takes no part in any loss (issue 19, item 1): a padded crop gives, on its valid pixels,
the loss values and gradients of the same image unpadded, for every loss and for ADM's latent labeling;
a batch with no padding is unchanged from before the valid-pixel mask."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from admsolve import contrast_weights  # noqa: E402
from admsolve.data import augment  # noqa: E402
from admsolve.data.datasets import Sample  # noqa: E402
from admsolve.training import ADMStep, TrainConfig, dense_crf_loss, grid_crf_loss, proximal_loss  # noqa: E402
from admsolve.training.objective import Objective  # noqa: E402

UNLABELED = 255
N, K, H, W = 2, 3, 9, 11
PAD_BOTTOM, PAD_SIDE = 4, 5


def _scene(seed):
    """Images, softmax probabilities, scribbles and latent labels of a small batch."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (N, H, W, 3)).astype(np.uint8)
    logits = torch.as_tensor(rng.normal(size=(N, K, H, W)) * 2)
    scribbles = torch.full((N, H, W), UNLABELED, dtype=torch.int64)
    scribbles[:, 2, 1:6] = 0
    scribbles[:, 6, 4:9] = 2
    latent = torch.as_tensor(rng.integers(0, K, (N, H, W)))
    return images, logits, scribbles, latent


def _pad(images, logits, scribbles, latent, left):
    """The batch padded at the bottom and on the left or right (a flipped crop pads on the left), the padding
    filled with other colours, logits and labels, and its valid mask."""
    rng = np.random.default_rng(99)
    side = (PAD_SIDE, 0) if left else (0, PAD_SIDE)
    rows, cols = slice(0, H), slice(PAD_SIDE, PAD_SIDE + W) if left else slice(0, W)
    big_images = rng.integers(0, 256, (N, H + PAD_BOTTOM, W + PAD_SIDE, 3)).astype(np.uint8)
    big_images[:, rows, cols] = images
    big_logits = torch.as_tensor(rng.normal(size=(N, K, H + PAD_BOTTOM, W + PAD_SIDE)) * 2)
    big_logits[:, :, rows, cols] = logits
    big_scribbles = torch.nn.functional.pad(scribbles, side + (0, PAD_BOTTOM), value=UNLABELED)
    big_latent = torch.nn.functional.pad(latent, side + (0, PAD_BOTTOM), value=1)
    valid = torch.zeros(N, H + PAD_BOTTOM, W + PAD_SIDE, dtype=torch.bool)
    valid[:, rows, cols] = True
    return big_images, big_logits, big_scribbles, big_latent, valid, (rows, cols)


def _value_and_grad(loss, logits):
    logits = logits.detach().clone().requires_grad_(True)
    value = loss(logits)
    value.backward()
    return value.detach(), logits.grad


LOSSES = {
    "grid": lambda logits, images, scribbles, latent, roi, reduction: grid_crf_loss(
        logits.softmax(1), images, lam=2.0, roi=roi, reduction=reduction),
    "dense": lambda logits, images, scribbles, latent, roi, reduction: dense_crf_loss(
        logits.softmax(1), images, lam=2.0, sxy=5, srgb=20, roi=roi, reduction=reduction, workers=1),
    "proximal": lambda logits, images, scribbles, latent, roi, reduction: proximal_loss(
        logits, latent, scribbles, gamma=1.5, roi=roi, reduction=reduction),
}


@pytest.mark.parametrize("left", [False, True], ids=["pad-right", "pad-left"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_a_padded_crop_gives_the_unpadded_loss_and_gradient(name, reduction, left):
    images, logits, scribbles, latent = _scene(1)
    big_images, big_logits, big_scribbles, big_latent, valid, (rows, cols) = _pad(images, logits, scribbles, latent,
                                                                                   left)
    loss = LOSSES[name]
    value, grad = _value_and_grad(lambda x: loss(x, images, scribbles, latent, None, reduction), logits)
    padded, big_grad = _value_and_grad(lambda x: loss(x, big_images, big_scribbles, big_latent, valid, reduction),
                                       big_logits)
    assert padded.item() == pytest.approx(value.item(), rel=1e-12)
    np.testing.assert_allclose(big_grad[:, :, rows, cols].numpy(), grad.numpy(), rtol=1e-9, atol=1e-14)
    assert torch.all(big_grad.permute(1, 0, 2, 3)[:, ~valid] == 0)  # padding gets no gradient
    without_roi = loss(big_logits, big_images, big_scribbles, big_latent, None, reduction)
    assert without_roi.item() != pytest.approx(value.item(), rel=1e-6)  # the padding would have counted


@pytest.mark.parametrize("name", list(LOSSES))
def test_an_all_valid_roi_changes_nothing(name):
    images, logits, scribbles, latent = _scene(2)
    everywhere = torch.ones(N, H, W, dtype=torch.bool)
    for reduction in ("none", "mean"):
        assert torch.equal(LOSSES[name](logits, images, scribbles, latent, everywhere, reduction),
                           LOSSES[name](logits, images, scribbles, latent, None, reduction))


def test_contrast_weights_with_a_mask_equal_those_of_the_masked_image():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (H + PAD_BOTTOM, W + PAD_SIDE, 3)).astype(np.float64)
    mask = np.zeros(image.shape[:2], bool)
    mask[:H, :W] = True
    weights = contrast_weights(image, mask=mask)
    np.testing.assert_allclose(weights[:, :H, :W], contrast_weights(image[:H, :W]), rtol=1e-12)
    assert np.all(weights[:, H:, :] == 0) and np.all(weights[:, :, W:] == 0)
    assert np.all(weights[2, :, W - 1] == 0)  # the diagonal towards (y + 1, x + 1) leaves the mask at the last column
    with pytest.raises(ValueError, match=r"mask: expected a bool array of shape \(13, 16\)"):
        contrast_weights(image, mask=mask[:3])


@pytest.mark.parametrize("settings", [dict(regularizer="grid", backend="numba-expansion"),
                                      dict(regularizer="grid", backend="numba-icm", latent_stride=2),
                                      dict(regularizer="dense", max_iter=3)],
                         ids=["grid", "grid-stride-2", "dense"])
@pytest.mark.parametrize("left", [False, True], ids=["pad-right", "pad-left"])
def test_the_latent_labeling_of_a_padded_crop_is_that_of_the_image(settings, left):
    images, logits, scribbles, latent = _scene(4)
    big_images, big_logits, big_scribbles, _, valid, (rows, cols) = _pad(images, logits, scribbles, latent, left)
    step = ADMStep(lam=3.0, gamma=1.0, sxy=5, srgb=20, workers=1, **settings)
    alone = step(logits.softmax(1), images, scribbles)
    energies = [result.energy for result in step.results]
    padded = step(big_logits.softmax(1), big_images, big_scribbles, valid)
    assert torch.equal(padded[:, rows, cols], alone)
    assert [result.energy for result in step.results] == pytest.approx(energies, rel=1e-12)
    assert torch.equal(padded.permute(1, 2, 0)[~valid.permute(1, 2, 0)],
                       big_logits.argmax(1).permute(1, 2, 0)[~valid.permute(1, 2, 0)])  # argmax S outside


def test_the_grid_latent_problem_cuts_off_invalid_pixels_inside_the_box():
    images, logits, scribbles, _ = _scene(5)
    valid = torch.ones(N, H, W, dtype=torch.bool)
    valid[:, 4, 5] = False  # a hole inside the bounding box
    problem = ADMStep(lam=3.0, gamma=1.0).problems(logits.softmax(1), images, scribbles, valid)[0]
    assert np.all(problem.unary[4, 5] == 0)
    assert problem.weights[0, 4, 4] == 0 and problem.weights[0, 4, 5] == 0 and problem.weights[1, 3, 5] == 0
    with pytest.raises(ValueError, match="valid: expected at least one valid pixel in each image, image 1 has none"):
        valid[1] = False
        ADMStep().problems(logits.softmax(1), images, scribbles, valid)


def test_augment_marks_the_photograph_within_the_crop():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    sample = Sample("x", image, np.full((20, 30), UNLABELED, np.uint8), None)
    for seed in range(6):
        out = augment(sample, np.random.default_rng(seed), crop_size=(32, 40), scale=(1, 1))
        assert out.valid.dtype == bool and out.valid.sum() == 20 * 30
        rows, cols = np.flatnonzero(out.valid.any(1)), np.flatnonzero(out.valid.any(0))
        inside = out.image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert np.array_equal(inside, image) or np.array_equal(inside, image[:, ::-1])
    cropped = augment(sample, np.random.default_rng(0), crop_size=(10, 10), scale=(1, 1))
    assert cropped.valid.all()


@pytest.mark.parametrize("optimizer,regularizer", [("gd", "grid"), ("gd", "dense"), ("adm", "grid"),
                                                   ("adm", "dense")])
def test_a_batch_without_padding_computes_what_it_did_before_the_mask(optimizer, regularizer):
    images, logits, scribbles, _ = _scene(7)
    config = TrainConfig(optimizer=optimizer, regularizer=regularizer, workers=1, lam=2.0, gamma=1.0)
    everywhere = torch.ones(N, H, W, dtype=torch.bool)
    with_mask = Objective(config)("regularized", logits, images, scribbles, everywhere)
    before = Objective(config)("regularized", logits, images, scribbles)
    assert with_mask.keys() == before.keys()
    for name in before:
        assert torch.equal(with_mask[name], before[name]), name


def test_padding_in_losses_lets_the_padding_count_again():
    images, logits, scribbles, latent = _scene(8)
    big_images, big_logits, big_scribbles, _, valid, _ = _pad(images, logits, scribbles, latent, False)
    settings = dict(optimizer="gd", regularizer="grid", workers=1, lam=2.0)
    old = Objective(TrainConfig(**settings, padding_in_losses=True))("regularized", big_logits, big_images,
                                                                     big_scribbles, valid)
    new = Objective(TrainConfig(**settings))("regularized", big_logits, big_images, big_scribbles, valid)
    unpadded = Objective(TrainConfig(**settings))("regularized", logits, images, scribbles)
    assert torch.equal(old["grid_crf"], grid_crf_loss(big_logits.softmax(1), big_images, lam=2.0))
    assert new["grid_crf"].item() == pytest.approx(unpadded["grid_crf"].item(), rel=1e-12)
