"""Tests of the torch losses in admsolve.training."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import admsolve as adm  # noqa: E402
from admsolve.filters import PermutohedralLattice, bilateral_features  # noqa: E402
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
from admsolve.training import losses  # noqa: E402


def _images(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w, 3)).astype(np.uint8)


def _probs(n, k, h, w, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=g, dtype=torch.float64)
    return torch.softmax(logits, dim=1).to(dtype).detach().requires_grad_(True)


def _scribbles(n, h, w, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n, h, w), generator=g)
    keep = torch.rand(n, h, w, generator=g) < 0.4
    keep[:, 0, 0] = True
    return torch.where(keep, labels, torch.full_like(labels, 255))


def _photos(n, size, seed=0):
    """Smooth images with edges (a few coloured disks on a gradient), closer to photographs than noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size, 3))
    for i in range(n):
        images[i] = rng.uniform(0, 120, 3) + (xx[..., None] + yy[..., None]) * rng.uniform(0, 1, 3)
        for _ in range(3):
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(size / 8, size / 3)]
            images[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(images + rng.normal(0, 4, images.shape), 0, 255).astype(np.uint8)


def _dense_matrix(image, sxy, srgb):
    """The (P, P) operator W of the dense loss: the lattice filter of the identity."""
    lattice = PermutohedralLattice(bilateral_features(image, sxy=sxy, srgb=srgb))
    return lattice.filter(np.eye(lattice.n_points), normalization="symmetric")


def _value_and_grad(loss, probs):
    probs = probs.detach().requires_grad_(True)
    value = loss(probs)
    value.backward()
    return value.detach(), probs.grad


# Every loss as a function of soft labels (or logits) S of shape (2, 3, 4, 5).
N, K, H, W = 2, 3, 4, 5
IMAGES = _images(N, H, W, seed=21)
LATENT = torch.randint(0, K, (N, H, W), generator=torch.Generator().manual_seed(21))
SCRIBBLES = _scribbles(N, H, W, K, seed=21)
LOSSES = {
    "pce": lambda s, **kw: partial_cross_entropy(s, SCRIBBLES.to(s.device), **kw),
    "grid": lambda s, **kw: grid_crf_loss(s, IMAGES, lam=1.5, **kw),
    "dense": lambda s, **kw: dense_crf_loss(s, IMAGES, lam=1.5, sxy=3, srgb=20, **kw),
    "proximal": lambda s, **kw: proximal_loss(s, LATENT.to(s.device), SCRIBBLES.to(s.device), gamma=0.5, **kw),
}


# --------------------------------------------------------------------------- every loss


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_float32_equals_float64(name):
    probs = _probs(N, K, H, W, seed=1)
    value64, grad64 = _value_and_grad(LOSSES[name], probs)
    value32, grad32 = _value_and_grad(LOSSES[name], probs.to(torch.float32))
    assert value64.dtype == torch.float64 and value32.dtype == torch.float32
    assert grad32.dtype == torch.float32
    assert value32.item() == pytest.approx(value64.item(), rel=1e-6)
    np.testing.assert_allclose(grad32.numpy(), grad64.numpy(), rtol=1e-5, atol=1e-6 * grad64.abs().max().item())


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(name, reduction):
    probs = _probs(N, K, H, W, seed=2)
    assert torch.autograd.gradcheck(lambda s: LOSSES[name](s, reduction=reduction), (probs,))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_reductions_relate(name):
    probs = _probs(N, K, H, W, seed=3)
    mean, total, each = (LOSSES[name](probs, reduction=r) for r in ("mean", "sum", "none"))
    assert mean.shape == total.shape == () and each.shape == (N,)
    assert each.sum().item() == pytest.approx(total.item(), rel=1e-12)
    # the mean is per pixel: of the batch, or of the scribbled pixels for the partial cross-entropy
    pixels = int((SCRIBBLES != 255).sum()) if name == "pce" else N * H * W
    assert (mean * pixels).item() == pytest.approx(total.item(), rel=1e-12)
    assert LOSSES[name](probs).item() == mean.item()  # "mean" is the default


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_cuda_equals_cpu(name):
    probs = _probs(N, K, H, W, seed=4, dtype=torch.float32)
    value, grad = _value_and_grad(LOSSES[name], probs)
    value_cuda, grad_cuda = _value_and_grad(LOSSES[name], probs.cuda())
    assert value_cuda.device.type == "cuda" and grad_cuda.device.type == "cuda"
    assert value_cuda.item() == pytest.approx(value.item(), rel=1e-5)
    np.testing.assert_allclose(grad_cuda.cpu().numpy(), grad.numpy(), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- partial cross-entropy


def test_partial_ce_matches_torch():
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    scribbles = _scribbles(2, 4, 5, 3)
    expected = F.cross_entropy(logits, scribbles, ignore_index=255)
    assert torch.allclose(partial_cross_entropy(logits, scribbles), expected)
    assert torch.allclose(PartialCrossEntropyLoss()(logits, scribbles), expected)
    per_image = [F.cross_entropy(logits[i:i + 1], scribbles[i:i + 1], ignore_index=255, reduction="sum")
                 for i in range(2)]
    assert torch.allclose(PartialCrossEntropyLoss(reduction="none")(logits, scribbles), torch.stack(per_image))


def test_partial_ce_without_scribbles_has_no_mean_but_a_sum():
    logits = torch.randn(1, 2, 3, 3)
    unscribbled = torch.full((1, 3, 3), 255, dtype=torch.long)
    with pytest.raises(ValueError, match="scribbles: expected at least one scribbled pixel"):
        partial_cross_entropy(logits, unscribbled)
    assert partial_cross_entropy(logits, unscribbled, reduction="sum").item() == 0.0


# --------------------------------------------------------------------------- grid CRF


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("sigma2", [None, 500.0])
def test_torch_contrast_weights_equal_numpy(connectivity, sigma2):
    images = np.concatenate([_images(2, 5, 6, seed=8), np.full((1, 5, 6, 3), 7, dtype=np.uint8)])
    weights = losses._contrast_weights(torch.as_tensor(images, dtype=torch.float64).permute(0, 3, 1, 2),
                                       connectivity, sigma2)
    assert len(weights) == {4: 2, 8: 4}[connectivity]
    for i, image in enumerate(images):  # the last image is constant: sigma^2 = 0, weights 1
        expected = adm.contrast_weights(image, connectivity=connectivity, sigma2=sigma2)
        for d, w in enumerate(weights):
            p, _ = adm.energies.gridcrf.edge_slices(d, 5, 6)
            np.testing.assert_allclose(w[i].numpy(), expected[(d, *p)], rtol=1e-13, atol=0)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_grid_crf_one_hot_equals_potts_energy(connectivity):
    n, k, h, w = 2, 3, 5, 4
    images = _images(n, h, w, seed=3)
    labels = torch.randint(0, k, (n, h, w), generator=torch.Generator().manual_seed(3))
    onehot = F.one_hot(labels, k).permute(0, 3, 1, 2).to(torch.float64)
    lam = 2.5
    values = grid_crf_loss(onehot, images, lam=lam, connectivity=connectivity, reduction="none")
    for i in range(n):
        weights = adm.contrast_weights(images[i], connectivity=connectivity)
        problem = adm.GridCRF(np.zeros((h, w, k)), weights, lam=lam)
        assert values[i].item() == pytest.approx(problem.energy(labels[i].numpy()), rel=1e-12, abs=1e-12)


def test_grid_crf_second_derivatives():
    probs = _probs(2, 3, 4, 5, seed=4)
    assert torch.autograd.gradgradcheck(lambda s: grid_crf_loss(s, IMAGES, lam=1.5, reduction="none"), (probs,))


def test_grid_crf_matches_relaxed_energy_and_tensor_images():
    n, k, h, w = 1, 2, 4, 4
    images = _images(n, h, w, seed=5)
    probs = _probs(n, k, h, w, seed=5)
    value = grid_crf_loss(probs, images, lam=0.7, reduction="sum")
    value.backward()
    problem = adm.GridCRF(np.zeros((h, w, k)), adm.contrast_weights(images[0]), lam=0.7)
    ref, grad = problem.relaxed_energy(probs[0].detach().permute(1, 2, 0).numpy())
    assert value.item() == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(probs.grad[0].permute(1, 2, 0).numpy(), grad, rtol=1e-10, atol=1e-12)
    as_tensor = torch.as_tensor(images).permute(0, 3, 1, 2)
    assert GridCRFLoss(lam=0.7)(probs, as_tensor).item() == pytest.approx(ref / (h * w), rel=1e-12)


def test_grid_crf_under_bfloat16_autocast():
    images = torch.as_tensor(_images(2, 8, 9, seed=6)).permute(0, 3, 1, 2)
    logits = torch.randn(2, 4, 8, 9, generator=torch.Generator().manual_seed(6))
    reference = grid_crf_loss(logits.double().softmax(1), images, lam=2.0)
    half = logits.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = grid_crf_loss(half.softmax(1), images, lam=2.0)
    value.backward()
    assert value.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    assert value.item() == pytest.approx(reference.item(), rel=2e-2)
    assert torch.isfinite(half.grad).all() and half.grad.abs().sum() > 0


def test_grid_crf_compiles_without_graph_breaks():
    probs = _probs(2, 3, 8, 9, seed=7, dtype=torch.float32)
    images = torch.as_tensor(_images(2, 8, 9, seed=7)).permute(0, 3, 1, 2)
    explained = torch._dynamo.explain(grid_crf_loss)(probs, images, lam=2.0, connectivity=8)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    expected, expected_grad = _value_and_grad(lambda s: grid_crf_loss(s, images, lam=2.0), probs)
    # aot_eager traces forward and backward as inductor would, without its code generation (~1 min on 2 CPUs)
    compiled = torch.compile(GridCRFLoss(lam=2.0), fullgraph=True, backend="aot_eager")
    value, grad = _value_and_grad(lambda s: compiled(s, images), probs)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(grad, expected_grad)


# --------------------------------------------------------------------------- dense CRF


def test_dense_crf_one_hot_equals_densecrf_energy():
    # DenseCRF's energy is (compat / 2) sum_k 1_k^T K (1 - 1_k): compat = 2 * lam.
    n, k, h, w = 2, 3, 5, 5
    images = _images(n, h, w, seed=9)
    labels = torch.randint(0, k, (n, h, w), generator=torch.Generator().manual_seed(9))
    onehot = F.one_hot(labels, k).permute(0, 3, 1, 2).to(torch.float64)
    values = dense_crf_loss(onehot, images, sxy=4, srgb=30, lam=1.7, reduction="none")
    for i in range(n):
        problem = adm.DenseCRF(np.zeros((h, w, k)), images[i], sxy=4, srgb=30, compat=3.4, gaussian_compat=0)
        assert values[i].item() == pytest.approx(problem.energy(labels[i].numpy()), rel=1e-10)


def test_dense_crf_matches_relaxed_energy_gradient():
    k, h, w = 3, 4, 5
    images = _images(1, h, w, seed=11)
    probs = _probs(1, k, h, w, seed=11)
    value = DenseCRFLoss(sxy=5, srgb=25, lam=0.5, reduction="sum")(probs, images)
    value.backward()
    problem = adm.DenseCRF(np.zeros((h, w, k)), images[0], sxy=5, srgb=25, compat=1.0, gaussian_compat=0)
    ref, grad = problem.relaxed_energy(probs[0].detach().permute(1, 2, 0).numpy())
    assert value.item() == pytest.approx(ref, rel=1e-10)
    np.testing.assert_allclose(probs.grad[0].permute(1, 2, 0).numpy(), grad, rtol=1e-8, atol=1e-12)


def test_dense_crf_threads_give_the_serial_bits():
    images = _photos(5, 24, seed=12)
    probs = _probs(5, 4, 24, 24, seed=12, dtype=torch.float32)
    serial = _value_and_grad(lambda s: dense_crf_loss(s, images, sxy=10, reduction="none", workers=1).sum(), probs)
    threaded = _value_and_grad(lambda s: dense_crf_loss(s, images, sxy=10, reduction="none", workers=3).sum(), probs)
    assert torch.equal(serial[0], threaded[0]) and torch.equal(serial[1], threaded[1])


def test_dense_crf_backward_twice_with_retain_graph():
    probs = _probs(2, 3, 6, 7, seed=12)
    value = dense_crf_loss(probs, _photos(2, 7, seed=12)[:, :6], sxy=5)
    first, = torch.autograd.grad(value, probs, retain_graph=True)
    second, = torch.autograd.grad(value, probs)
    assert torch.equal(first, second)


def test_dense_crf_float32_within_1e4_of_float64():
    images = _photos(2, 64, seed=13)
    logits = 4 * torch.randn(2, 21, 64, 64, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    value64, grad64 = _value_and_grad(lambda s: dense_crf_loss(s.softmax(1), images), logits)
    value32, grad32 = _value_and_grad(lambda s: dense_crf_loss(s.softmax(1), images), logits.float())
    assert value32.item() == pytest.approx(value64.item(), rel=1e-4)
    np.testing.assert_allclose(grad32.numpy(), grad64.numpy(), rtol=0, atol=1e-4 * grad64.abs().max().item())


def test_dense_crf_array_lattice_path_equals_numba(monkeypatch):
    # The CUDA path (ArrayLattice through DLPack) run on NumPy arrays of CPU tensors.
    images = _photos(2, 16, seed=14)
    probs = _probs(2, 3, 16, 16, seed=14)
    roi = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(14)) > 0.2

    def loss(s):
        return dense_crf_loss(s, images, sxy=6, roi=roi, reduction="sum")

    numba = _value_and_grad(loss, probs)
    monkeypatch.setitem(losses._IMAGES, "cpu", losses._ArrayImage)
    array = _value_and_grad(loss, probs)
    assert array[0].item() == pytest.approx(numba[0].item(), rel=1e-12)
    np.testing.assert_allclose(array[1].numpy(), numba[1].numpy(), rtol=1e-10, atol=1e-14)


def test_dense_crf_roi():
    n, k, h, w = 2, 3, 5, 6
    images = _images(n, h, w, seed=15)
    probs = _probs(n, k, h, w, seed=15)
    everywhere = dense_crf_loss(probs, images, sxy=4, srgb=30, reduction="none")
    assert torch.equal(dense_crf_loss(probs, images, sxy=4, srgb=30, reduction="none",
                                      roi=torch.ones(n, h, w, dtype=torch.bool)), everywhere)
    roi = torch.ones(n, h, w)
    roi[:, :, 4:] = 0.0  # e.g. padding on the right: outside the ROI's bounding box
    roi[:, 2, 1] = 0.0  # and a pixel inside the box
    probs.grad = None
    values = dense_crf_loss(probs, images, sxy=4, srgb=30, roi=roi, reduction="none")
    values.sum().backward()
    outside = roi == 0
    assert torch.all(probs.grad.permute(1, 0, 2, 3)[:, outside] == 0)
    assert torch.all(probs.grad.permute(1, 0, 2, 3)[:, ~outside] != 0)
    for i in range(n):  # sum_k (r S_k)^T W (r - r S_k), W the lattice operator of the box as a matrix
        r = roi[i, :, :4].reshape(-1).numpy()
        masked = r[:, None] * probs[i, :, :, :4].detach().reshape(k, -1).t().numpy()
        expected = np.sum(masked * (_dense_matrix(images[i][:, :4], 4, 30) @ (r[:, None] - masked)))
        assert values[i].item() == pytest.approx(expected, rel=1e-10)


def test_dense_crf_scale_factor_computes_at_that_scale():
    n, k, h, w = 2, 3, 12, 16
    images = _photos(n, 16, seed=16)[:, :h]
    probs = _probs(n, k, h, w, seed=16)
    roi = torch.ones(n, h, w)
    roi[:, 9:] = 0.0
    small = F.interpolate(torch.as_tensor(images, dtype=torch.float64).permute(0, 3, 1, 2), scale_factor=0.5)
    expected = dense_crf_loss(F.interpolate(probs, scale_factor=0.5, mode="bilinear", align_corners=False),
                              small, sxy=4, srgb=20, roi=roi[:, ::2, ::2], reduction="sum")
    total = dense_crf_loss(probs, images, sxy=8, srgb=20, roi=roi, scale_factor=0.5, reduction="sum")
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)
    mean = DenseCRFLoss(sxy=8, srgb=20, scale_factor=0.5)(probs, images, roi)
    assert (mean * roi[:, ::2, ::2].sum()).item() == pytest.approx(total.item(), rel=1e-12)  # per pixel inside
    assert torch.autograd.gradcheck(
        lambda s: dense_crf_loss(s, images[:1, :6, :8], sxy=8, srgb=20, roi=roi[:1, :6, :8], scale_factor=0.5),
        (_probs(1, 2, 6, 8, seed=16),))


# --------------------------------------------------------------------------- proximal term


def test_proximal_matches_cross_entropy_on_unscribbled():
    n, k, h, w = 2, 3, 4, 4
    logits = torch.randn(n, k, h, w, dtype=torch.float64)
    scribbles = _scribbles(n, h, w, k, seed=2)
    latent = torch.randint(0, k, (n, h, w))
    hidden = scribbles == 255
    per_pixel = F.cross_entropy(logits, latent, reduction="none")
    expected = 0.5 * per_pixel[hidden].sum() / (n * h * w)
    assert torch.allclose(proximal_loss(logits, latent, scribbles, gamma=0.5), expected)
    assert torch.allclose(ProximalLoss(gamma=0.5)(logits, latent, scribbles), expected)


def test_proximal_gradient_is_zero_at_scribbles_and_latent_has_none():
    logits = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    scribbles = _scribbles(1, 3, 4, 2, seed=4)
    latent = torch.randint(0, 2, (1, 3, 4))
    proximal_loss(logits, latent, scribbles).backward()
    assert latent.grad is None and not latent.requires_grad
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
    (lambda: partial_cross_entropy(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long),
                                   reduction="avg"),
     ValueError, r"reduction: expected one of \('mean', 'sum', 'none'\), got str 'avg'"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 4, 3))),
     ValueError, "images: expected an array of shape"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 4)),
     ValueError, "images: expected a tensor of shape"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3), [[0]]), TypeError, "images: expected an"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3), torch.full((1, 3, 3, 3), float("nan"))),
     ValueError, "images: expected finite values"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)), connectivity=6),
     ValueError, "connectivity: expected 4 or 8"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)), lam=-1.0),
     ValueError, "lam"),
    (lambda: GridCRFLoss(sigma2=0.0), ValueError, "sigma2: expected a value > 0"),
    (lambda: grid_crf_loss(torch.zeros(1, 2, 3, 3, dtype=torch.long), np.zeros((1, 3, 3, 3))),
     TypeError, "probs: expected a floating-point"),
    (lambda: dense_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)), sxy=0),
     ValueError, "sxy"),
    (lambda: dense_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)), weight=1.0),
     TypeError, "weight"),
    (lambda: DenseCRFLoss(lam=-2.0), ValueError, "lam: expected a value >= 0"),
    (lambda: dense_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3), dtype=bool)),
     TypeError, "images: expected a uint8 or float"),
    (lambda: dense_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)), scale_factor=1.5),
     ValueError, r"scale_factor: expected a value in \(0, 1\], got 1.5"),
    (lambda: dense_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)), scale_factor=0.2),
     ValueError, "scale_factor: expected a value that leaves at least one pixel of the 3 x 3 predictions"),
    (lambda: dense_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)), workers=0),
     ValueError, "workers: expected a value >= 1"),
    (lambda: dense_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)), roi=torch.ones(1, 3, 4)),
     ValueError, r"roi: expected shape \(1, 3, 3\)"),
    (lambda: dense_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)),
                            roi=torch.ones(1, 3, 3, dtype=torch.long)),
     TypeError, "roi: expected a bool or floating-point tensor"),
    (lambda: dense_crf_loss(torch.zeros(1, 2, 3, 3), np.zeros((1, 3, 3, 3)), roi=torch.full((1, 3, 3), 2.0)),
     ValueError, r"roi: expected values in \[0, 1\], got range \[2, 2\]"),
    (lambda: dense_crf_loss(torch.zeros(1, 2, 3, 3, device="meta"), np.zeros((1, 3, 3, 3))),
     ValueError, "probs: expected a CPU or CUDA tensor, got a tensor on meta"),
    (lambda: proximal_loss(torch.zeros(1, 2, 3, 3), torch.full((1, 3, 3), 255, dtype=torch.long),
                           torch.full((1, 3, 3), 255, dtype=torch.long)),
     ValueError, r"latent: expected values in \[0, 2\)"),
    (lambda: proximal_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long),
                           torch.zeros(1, 3, 3, dtype=torch.long), gamma=-0.1),
     ValueError, "gamma"),
    (lambda: ProximalLoss(reduction=None), ValueError, "reduction: expected one of"),
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


def test_argmax_labels_is_argmax_over_the_labels_first_among_equals():
    from admsolve.training.losses import argmax_labels

    values = torch.randn(3, 5, 7, 6)
    values[0, 2] = values[0, 4]  # ties: the first wins, as argmax's
    values[1, :, 0, 0] = 1.0
    assert torch.equal(argmax_labels(values), values.argmax(1))
    assert argmax_labels(values)[1, 0, 0] == 0
