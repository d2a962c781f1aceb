"""Tests of the torch losses in admsolve.training."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import admsolve as adm  # noqa: E402
from admsolve.training import (  # noqa: E402
    DenseCRFLoss,
    GridCRFLoss,
    PartialCrossEntropyLoss,
    ProximalLoss,
    dense_crf_loss,
    grid_crf_loss,
    partial_cross_entropy,
    proximal_loss,
)


def _images(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w, 3)).astype(np.uint8)


def _probs(n, k, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=g, dtype=torch.float64)
    return torch.softmax(logits, dim=1).detach().requires_grad_(True)


def _scribbles(n, h, w, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n, h, w), generator=g)
    keep = torch.rand(n, h, w, generator=g) < 0.4
    keep[:, 0, 0] = True
    return torch.where(keep, labels, torch.full_like(labels, 255))


# --------------------------------------------------------------------------- partial cross-entropy


def test_partial_ce_matches_torch():
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    scribbles = _scribbles(2, 4, 5, 3)
    expected = F.cross_entropy(logits, scribbles, ignore_index=255)
    assert torch.allclose(partial_cross_entropy(logits, scribbles), expected)
    assert torch.allclose(PartialCrossEntropyLoss()(logits, scribbles), expected)


def test_partial_ce_gradcheck():
    logits = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    scribbles = _scribbles(1, 3, 4, 3, seed=1)
    assert torch.autograd.gradcheck(lambda x: partial_cross_entropy(x, scribbles), (logits,))


def test_partial_ce_no_scribbles_raises():
    logits = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="scribbles"):
        partial_cross_entropy(logits, torch.full((1, 3, 3), 255, dtype=torch.long))


# --------------------------------------------------------------------------- grid CRF


@pytest.mark.parametrize("connectivity", [4, 8])
def test_grid_crf_gradcheck(connectivity):
    probs = _probs(2, 3, 4, 5)
    images = _images(2, 4, 5)
    assert torch.autograd.gradcheck(
        lambda s: grid_crf_loss(s, images, lam=1.5, connectivity=connectivity), (probs,))


@pytest.mark.parametrize("connectivity", [4, 8])
def test_grid_crf_one_hot_equals_potts_energy(connectivity):
    n, k, h, w = 2, 3, 5, 4
    images = _images(n, h, w, seed=3)
    labels = torch.randint(0, k, (n, h, w), generator=torch.Generator().manual_seed(3))
    onehot = F.one_hot(labels, k).permute(0, 3, 1, 2).to(torch.float64)
    lam = 2.5
    value = grid_crf_loss(onehot, images, lam=lam, connectivity=connectivity).item()
    expected = 0.0
    for i in range(n):
        weights = adm.contrast_weights(images[i], connectivity=connectivity)
        problem = adm.GridCRF(np.zeros((h, w, k)), weights, lam=lam)
        expected += problem.energy(labels[i].numpy())
    assert value == pytest.approx(expected / n, rel=1e-12, abs=1e-12)


def test_grid_crf_matches_relaxed_energy_and_tensor_images():
    n, k, h, w = 1, 2, 4, 4
    images = _images(n, h, w, seed=5)
    probs = _probs(n, k, h, w, seed=5)
    value = grid_crf_loss(probs, images, lam=0.7)
    value.backward()
    problem = adm.GridCRF(np.zeros((h, w, k)), adm.contrast_weights(images[0]), lam=0.7)
    ref, grad = problem.relaxed_energy(probs[0].detach().permute(1, 2, 0).numpy())
    assert value.item() == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(probs.grad[0].permute(1, 2, 0).numpy(), grad, rtol=1e-10, atol=1e-12)
    as_tensor = torch.as_tensor(images).permute(0, 3, 1, 2)
    assert GridCRFLoss(lam=0.7)(probs, as_tensor).item() == pytest.approx(ref, rel=1e-12)


# --------------------------------------------------------------------------- dense CRF


def test_dense_crf_gradcheck():
    probs = _probs(2, 2, 4, 3, seed=7)
    images = _images(2, 4, 3, seed=7)
    assert torch.autograd.gradcheck(lambda s: dense_crf_loss(s, images, sxy=3, srgb=20), (probs,),
                                    eps=1e-6, atol=1e-6, rtol=1e-4)


def test_dense_crf_one_hot_equals_densecrf_energy():
    # DenseCRF's energy is (compat / 2) sum_k 1_k^T K (1 - 1_k): compat = 2 * weight.
    n, k, h, w = 2, 3, 5, 5
    images = _images(n, h, w, seed=9)
    labels = torch.randint(0, k, (n, h, w), generator=torch.Generator().manual_seed(9))
    onehot = F.one_hot(labels, k).permute(0, 3, 1, 2).to(torch.float64)
    weight = 1.7
    value = dense_crf_loss(onehot, images, sxy=4, srgb=30, weight=weight).item()
    expected = 0.0
    for i in range(n):
        problem = adm.DenseCRF(np.zeros((h, w, k)), images[i], sxy=4, srgb=30, compat=2 * weight,
                               gaussian_compat=0)
        expected += problem.energy(labels[i].numpy())
    assert value == pytest.approx(expected / n, rel=1e-10)


def test_dense_crf_matches_relaxed_energy_gradient():
    k, h, w = 3, 4, 5
    images = _images(1, h, w, seed=11)
    probs = _probs(1, k, h, w, seed=11)
    value = DenseCRFLoss(sxy=5, srgb=25, weight=0.5)(probs, images)
    value.backward()
    problem = adm.DenseCRF(np.zeros((h, w, k)), images[0], sxy=5, srgb=25, compat=1.0,
                           gaussian_compat=0)
    ref, grad = problem.relaxed_energy(probs[0].detach().permute(1, 2, 0).numpy())
    assert value.item() == pytest.approx(ref, rel=1e-10)
    np.testing.assert_allclose(probs.grad[0].permute(1, 2, 0).numpy(), grad, rtol=1e-8, atol=1e-12)


# --------------------------------------------------------------------------- proximal term


def test_proximal_matches_cross_entropy_on_unscribbled():
    n, k, h, w = 2, 3, 4, 4
    logits = torch.randn(n, k, h, w, dtype=torch.float64)
    scribbles = _scribbles(n, h, w, k, seed=2)
    latent = torch.randint(0, k, (n, h, w))
    hidden = scribbles == 255
    per_pixel = F.cross_entropy(logits, latent, reduction="none")
    expected = 0.5 * per_pixel[hidden].sum() / n
    assert torch.allclose(proximal_loss(logits, latent, scribbles, gamma=0.5), expected)
    assert torch.allclose(ProximalLoss(gamma=0.5)(logits, latent, scribbles), expected)


def test_proximal_gradcheck_and_no_latent_gradient():
    logits = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    scribbles = _scribbles(1, 3, 4, 2, seed=4)
    latent = torch.randint(0, 2, (1, 3, 4))
    assert torch.autograd.gradcheck(lambda x: proximal_loss(x, latent, scribbles, gamma=2.0), (logits,))
    assert not latent.requires_grad
    proximal_loss(logits, latent, scribbles).backward()
    assert latent.grad is None
    # Gradient is zero at scribbled pixels.
    scribbled = scribbles != 255
    assert torch.all(logits.grad[0][:, scribbled[0]] == 0)


def test_proximal_ignores_latent_at_scribbled_pixels():
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    scribbles = _scribbles(2, 4, 4, 3, seed=6)
    latent = torch.randint(0, 3, (2, 4, 4))
    changed = torch.where(scribbles != 255, (latent + 1) % 3, latent)
    assert not torch.equal(changed, latent)
    assert torch.equal(proximal_loss(logits, latent, scribbles), proximal_loss(logits, changed, scribbles))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, error, message", [
    (lambda: partial_cross_entropy(torch.zeros(2, 3, 3), torch.zeros(2, 3, dtype=torch.long)),
     ValueError, "logits: expected a 4-D"),
    (lambda: partial_cross_entropy(np.zeros((1, 2, 3, 3)), torch.zeros(1, 3, 3, dtype=torch.long)),
     TypeError, "logits: expected a torch.Tensor"),
    (lambda: partial_cross_entropy(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.int32)),
     TypeError, "scribbles: expected an int64"),
    (lambda: partial_cross_entropy(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 4, dtype=torch.long)),
     ValueError, "scribbles: expected shape"),
    (lambda: partial_cross_entropy(torch.zeros(1, 2, 3, 3), torch.full((1, 3, 3), 7, dtype=torch.long)),
     ValueError, r"scribbles: expected values in \[0, 2\)"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 4, 3))),
     ValueError, "images: expected an array of shape"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 4)),
     ValueError, "images: expected a tensor of shape"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3), [[0]]), TypeError, "images: expected an"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)), connectivity=6),
     ValueError, "connectivity: expected 4 or 8"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)), lam=-1.0),
     ValueError, "lam"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3, dtype=torch.long), np.zeros((1, 3, 3, 3))),
     TypeError, "probs: expected a floating-point"),
    (lambda: dense_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)), sxy=0),
     ValueError, "sxy"),
    (lambda: dense_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3), dtype=bool)),
     TypeError, "images: expected a uint8 or float"),
    (lambda: proximal_loss(torch.zeros(1, 2, 3, 3), torch.full((1, 3, 3), 255, dtype=torch.long),
                           torch.full((1, 3, 3), 255, dtype=torch.long)),
     ValueError, r"latent: expected values in \[0, 2\)"),
    (lambda: proximal_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long),
                           torch.zeros(1, 3, 3, dtype=torch.long), gamma=-0.1),
     ValueError, "gamma"),
    (lambda: PartialCrossEntropyLoss(ignore_index=2.5), TypeError, "ignore_index: expected an integer"),
])
def test_bad_input_messages(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_core_does_not_import_training():
    import subprocess
    import sys
    code = "import sys, admsolve; print('admsolve.training' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
