"""ADM's latent step on a coarser grid (``latent_stride``): pooling, block seeds, hard constraints at
full resolution, and how the coarse energy relates to the full-resolution one."""

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import admsolve as adm  # noqa: E402
from admsolve.energies.gridcrf import edge_slices  # noqa: E402
from admsolve.training import ADMStep, TrainConfig  # noqa: E402
from admsolve.training.adm import block_mean, block_probabilities, block_seeds, upsample_labels  # noqa: E402
from admsolve.training.comparison import _run  # noqa: E402
from admsolve.training.objective import Objective  # noqa: E402


def batch(seed=0, n=2, k=4, height=13, width=10, scribbled=0.1):
    """Random probabilities, images and scribbles (a share `scribbled` of the pixels, random labels)."""
    rng = np.random.default_rng(seed)
    probs = torch.tensor(rng.normal(0, 2, (n, k, height, width))).softmax(1)
    images = rng.integers(0, 256, (n, height, width, 3)).astype(np.uint8)
    scribbles = np.where(rng.random((n, height, width)) < scribbled, rng.integers(0, k, (n, height, width)), 255)
    return probs, images, torch.tensor(scribbles, dtype=torch.int64)


def blocks(values, stride):
    """(N, h, w, ...) block values repeated into (N, h*s, w*s, ...) pixels."""
    return values.repeat(stride, axis=1).repeat(stride, axis=2)


# ---------------------------------------------------------------- the pooling helpers


@given(st.integers(1, 11), st.integers(1, 11), st.integers(1, 5), st.integers(1, 5),
       st.sampled_from([torch.float64, torch.float32]), st.integers(0, 2**32 - 1))
def test_block_probabilities_are_block_means_that_sum_to_one_on_partial_blocks_too(height, width, stride, k, dtype,
                                                                                   seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k), (2, height, width))
    pooled = block_probabilities(torch.tensor(probs, dtype=dtype).permute(0, 3, 1, 2), stride)
    rows, cols = -(-height // stride), -(-width // stride)
    assert pooled.shape == (2, rows, cols, k) and pooled.dtype == np.float64
    np.testing.assert_allclose(pooled.sum(-1), 1.0, rtol=0, atol=1e-12)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    for r in range(rows):  # each block, partial ones included, is the plain mean of the pixels it has
        for c in range(cols):
            block = probs[:, r * stride:(r + 1) * stride, c * stride:(c + 1) * stride]
            np.testing.assert_allclose(pooled[:, r, c], block.mean(axis=(1, 2)), rtol=0, atol=tolerance)


def test_block_mean_of_a_partial_block_averages_only_its_own_pixels():
    image = torch.arange(13 * 10, dtype=torch.float64).reshape(1, 1, 13, 10)
    pooled = block_mean(image, 4)
    assert pooled.shape == (1, 1, 4, 3) and pooled.dtype == torch.float64
    assert pooled[0, 0, 3, 2] == image[0, 0, 12, 8:10].mean()  # 1 x 2 pixels in the corner block
    assert pooled[0, 0, 0, 2] == image[0, 0, 0:4, 8:10].mean()  # 4 x 2
    assert block_mean(torch.ones(1, 2, 3, 2), 5).tolist() == [[[[1.0]], [[1.0]]]]  # smaller than one block


def test_a_block_seed_is_the_most_frequent_scribbled_label():
    seeds = np.full((1, 6, 5), 255)
    seeds[0, 0:3, 0:3] = [[2, 2, 255], [0, 2, 255], [255, 255, 0]]  # 3 x 2, 2 x 0, the rest unlabeled
    seeds[0, 0:3, 3:5] = [[1, 255], [3, 255], [255, 255]]            # a tie of 1 and 3: the smaller
    seeds[0, 3:6, 3:5] = [[255, 255], [255, 255], [255, 4]]          # one scribbled pixel of 6
    coarse = block_seeds(seeds, 3, n_labels=5)
    assert coarse.tolist() == [[[2, 1], [255, 4]]]
    assert block_seeds(np.full((1, 4, 4), 7), 2, n_labels=3, unlabeled=7).tolist() == [[[7, 7], [7, 7]]]


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_block_seeds_count_the_labels_of_each_block(height, width, stride, seed):
    rng = np.random.default_rng(seed)
    seeds = np.where(rng.random((1, height, width)) < 0.4, rng.integers(0, 3, (1, height, width)), 255)
    coarse = block_seeds(seeds, stride, n_labels=3)
    for r in range(coarse.shape[1]):
        for c in range(coarse.shape[2]):
            block = seeds[0, r * stride:(r + 1) * stride, c * stride:(c + 1) * stride]
            counts = np.bincount(block[block != 255], minlength=3)
            assert coarse[0, r, c] == (counts.argmax() if counts.any() else 255)


# ---------------------------------------------------------------- the latent step


@pytest.mark.parametrize("settings", [dict(), dict(connectivity=4, lam=5.0), dict(restrict_labels=True)])
def test_stride_1_is_the_full_resolution_solve(settings):
    """The paper's latent step, unchanged: eq. 8 built from S, the image and the scribbles at full
    resolution, warm-started from argmax S."""
    probs, images, scribbles = batch(seed=1, n=3, k=5, height=17, width=12)
    step = ADMStep(workers=1, max_iter=5, latent_stride=1, **settings)
    latent = step(probs, images, scribbles)
    lam, connectivity = settings.get("lam", 2.0), settings.get("connectivity", 8)
    problems = [adm.GridCRF(adm.adm_unary(p.permute(1, 2, 0).double().numpy()),
                            adm.contrast_weights(image.astype(float), connectivity=connectivity), lam=lam,
                            seeds=seed.numpy()) for p, image, seed in zip(probs, images, scribbles)]
    inits = list(probs.argmax(1).numpy())
    options = None
    if settings.get("restrict_labels"):
        options = [{"labels": np.union1d(np.unique(init), np.unique(seed[seed != 255]))}
                   for init, seed in zip(inits, scribbles.numpy())]
    expected = adm.solve_batch(problems, workers=1, inits=inits, problem_options=options, max_iter=5)
    assert torch.equal(latent, torch.from_numpy(np.stack([r.labels for r in expected]).astype(np.int64)))
    # (the compiled latent step sums the reference's formula in its own order)
    assert [r.energy for r in step.results] == pytest.approx([r.energy for r in expected], rel=1e-12)
    assert torch.equal(ADMStep(workers=1, max_iter=5, **settings)(probs, images, scribbles), latent)  # the default


@given(height=st.integers(1, 14), width=st.integers(1, 14), stride=st.integers(2, 5), k=st.integers(1, 4),
       connectivity=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1))
def test_the_scribbles_hold_on_every_scribbled_pixel_and_x_has_the_input_size(height, width, stride, k,
                                                                             connectivity, seed):
    probs, images, scribbles = batch(seed=seed, n=2, k=k, height=height, width=width, scribbled=0.3)
    step = ADMStep(lam=3.0, connectivity=connectivity, latent_stride=stride, workers=1, max_iter=3)
    latent = step(probs, images, scribbles)
    assert latent.dtype == torch.int64 and latent.shape == scribbles.shape
    scribbled = scribbles != 255
    assert torch.equal(latent[scribbled], scribbles[scribbled])  # also where a block's seed is another label
    assert 0 <= int(latent.min()) and int(latent.max()) < k
    coarse = (-(-height // stride), -(-width // stride))
    assert all(result.labels.shape == coarse for result in step.results)


def test_13_by_10_with_stride_4_comes_back_13_by_10_from_4_by_3_blocks():
    probs, images, scribbles = batch(seed=2, height=13, width=10)
    step = ADMStep(latent_stride=4, workers=1, max_iter=5)
    latent = step(probs, images, scribbles)
    assert latent.shape == (2, 13, 10)
    assert [result.labels.shape for result in step.results] == [(4, 3), (4, 3)]
    assert [problem.shape for problem in step.problems(probs, images, scribbles)] == [(4, 3), (4, 3)]
    free = (scribbles == 255).numpy()
    upsampled = upsample_labels(np.stack([r.labels for r in step.results]), 4, (13, 10))
    assert np.array_equal(latent.numpy()[free], upsampled[free])


@pytest.mark.parametrize("stride", [2, 3, 4])
def test_without_regularization_a_constant_s_gives_its_argmax_outside_the_scribbled_blocks(stride):
    probs, images, scribbles = batch(seed=3, k=4, height=13, width=10)
    probs = torch.tensor([0.2, 0.1, 0.6, 0.1]).double()[None, :, None, None].expand(2, 4, 13, 10).contiguous()
    latent = ADMStep(lam=0.0, latent_stride=stride, workers=1)(probs, images, scribbles).numpy()
    scribbled = (scribbles != 255).numpy()
    seeded_blocks = upsample_labels(block_seeds(scribbles.numpy(), stride, 4), stride, (13, 10))
    assert np.all(latent[seeded_blocks == 255] == 2)  # argmax S wherever a block holds no scribble
    assert np.array_equal(latent[scribbled], scribbles.numpy()[scribbled])
    # the unscribbled pixels of a scribbled block take the block's seed, the majority of its scribbles
    inside = (seeded_blocks != 255) & ~scribbled
    assert inside.any() and np.array_equal(latent[inside], seeded_blocks[inside])


def test_the_dense_latent_problem_is_built_on_the_coarse_grid_with_sxy_over_the_stride():
    probs, images, scribbles = batch(seed=4, height=13, width=10)
    step = ADMStep(lam=2.0, regularizer="dense", sxy=8, srgb=20, latent_stride=2, max_iter=5)
    latent = step(probs, images, scribbles)
    problem = step.problems(probs, images, scribbles)[0]
    assert problem.shape == (7, 5) and problem.sxy == 4.0 and problem.compat == 4.0
    pooled = block_mean(torch.tensor(images[:1], dtype=torch.float64).permute(0, 3, 1, 2), 2)
    np.testing.assert_allclose(problem.image, pooled[0].permute(1, 2, 0).numpy())
    scribbled = scribbles != 255
    assert latent.shape == scribbles.shape and torch.equal(latent[scribbled], scribbles[scribbled])


def test_bad_strides_are_named():
    with pytest.raises(ValueError, match="latent_stride: expected a value >= 1, got 0"):
        ADMStep(latent_stride=0)
    with pytest.raises(TypeError, match="latent_stride: expected an integer, got float 2.0"):
        ADMStep(latent_stride=2.0)
    with pytest.raises(TypeError, match="latent_stride: expected an integer, got bool True"):
        ADMStep(latent_stride=True)
    with pytest.raises(ValueError, match="latent_stride: expected a value >= 1, got 0"):
        TrainConfig(latent_stride=0)


# ---------------------------------------------------------------- the coarse energy and the fine one
#
# With S and the image constant on s x s blocks, a coarse pixel has the unary of each of its s² pixels
# and a coarse edge across a block border stands for s fine edges of the 4-connected grid: the coarse
# problem's lam / s gives s² E_coarse(Y) = E_fine(Y upsampled) for every block labeling Y, exactly where
# the contrast weights agree. They agree for a constant image; in general they do not, as the Boykov-Jolly
# sigma² of the fine image averages over the edges inside the blocks too (difference 0), about 1/s of the
# coarse image's. What holds exactly is
#     s² E_coarse(Y) - E_fine(up Y) = s² (lam / s) sum_{cut coarse edges e} (w_coarse(e) - w_fine(e)),
# w_fine(e) being the weight of each of the s fine edges across e.


def piecewise_batch(seed, stride, k, rows, cols, constant_image):
    rng = np.random.default_rng(seed)
    probs = blocks(rng.dirichlet(np.ones(k), (1, rows, cols)), stride)
    colours = np.zeros((1, rows, cols, 3)) if constant_image else rng.integers(0, 256, (1, rows, cols, 3))
    images = blocks(colours.astype(np.uint8), stride)
    scribbles = torch.full((1, rows * stride, cols * stride), 255, dtype=torch.int64)
    return torch.tensor(probs).permute(0, 3, 1, 2).contiguous(), images, scribbles


@given(stride=st.integers(2, 4), k=st.integers(2, 4), rows=st.integers(1, 5), cols=st.integers(1, 5),
       lam=st.sampled_from([0.5, 2.0, 5.0]), constant_image=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_stride_s_energy_times_s_squared_is_the_fine_energy_of_the_upsampled_labeling(stride, k, rows, cols, lam,
                                                                                     constant_image, seed):
    probs, images, scribbles = piecewise_batch(seed, stride, k, rows, cols, constant_image)
    fine = ADMStep(lam=lam, connectivity=4).problems(probs, images, scribbles)[0]
    coarse = ADMStep(lam=lam, connectivity=4, latent_stride=stride).problems(probs, images, scribbles)[0]
    assert coarse.shape == (rows, cols) and coarse.lam == lam / stride
    np.testing.assert_allclose(coarse.unary, fine.unary[::stride, ::stride], rtol=1e-12)
    rng = np.random.default_rng(seed + 1)
    # the weight of each of the s fine edges across coarse edge (d, y, x): the edge leaving the block's last column / row
    across = np.stack([fine.weights[0, ::stride, stride - 1::stride], fine.weights[1, stride - 1::stride, ::stride]])
    for _ in range(5):
        labels = rng.integers(0, k, (rows, cols))
        up = upsample_labels(labels[None], stride, fine.shape)[0]
        difference = 0.0
        for d in range(2):
            p, q = edge_slices(d, rows, cols)
            difference += np.sum((coarse.weights[d] - across[d])[p] * (labels[p] != labels[q]))
        expected = fine.energy(up) + stride**2 * coarse.lam * difference
        assert stride**2 * coarse.energy(labels) == pytest.approx(expected, rel=1e-9, abs=1e-9)
        if constant_image:
            assert stride**2 * coarse.energy(labels) == pytest.approx(fine.energy(up), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("stride", [2, 4])
@pytest.mark.parametrize("backend", ["numba-expansion", "maxflow"])
def test_on_block_constant_data_stride_s_finds_the_full_resolution_labeling(stride, backend):
    """A constant image and S constant on s x s blocks, the 4-connected grid: 6 x 6 blocks of label 0
    (strongly) but for a lone block and a 2 x 2 square that favour label 1 by 1.5 per pixel. With
    lam = s / 2 the lone block's border (4 s fine edges) costs 2 s² > 1.5 s² and it goes over to 0;
    the square's (8 s) costs 4 s² < 6 s² and it stays. Both grids give that labeling."""
    if adm.available_backends()[backend] is not True:
        pytest.skip(f"{backend} is not usable here")
    margin = np.zeros((6, 6))
    margin[:] = -3.0
    margin[1, 1] = 1.5
    margin[3:5, 3:5] = 1.5
    one = np.exp(margin) / (1 + np.exp(margin))  # S_1 / S_0 = exp(margin): unary of 0 minus that of 1
    probs = torch.tensor(blocks(np.stack([1 - one, one], axis=-1)[None], stride)).permute(0, 3, 1, 2).contiguous()
    images = np.full((1, 6 * stride, 6 * stride, 3), 90, dtype=np.uint8)
    scribbles = torch.full((1, 6 * stride, 6 * stride), 255, dtype=torch.int64)
    settings = dict(lam=stride / 2, gamma=1.0, connectivity=4, backend=backend, workers=1, max_iter=10)
    full = ADMStep(**settings)(probs, images, scribbles)
    coarse = ADMStep(latent_stride=stride, **settings)(probs, images, scribbles)
    expected = (margin == 1.5).astype(np.int64)
    expected[1, 1] = 0
    assert np.array_equal(full[0].numpy(), blocks(expected[None], stride)[0])
    assert torch.equal(coarse, full)


# ---------------------------------------------------------------- the training side


def test_the_objective_reports_the_coarse_energies_per_coarse_pixel():
    probs, images, scribbles = batch(seed=5, n=2, k=3, height=13, width=10)
    logits = probs.log().float()
    objective = Objective(TrainConfig(optimizer="adm", regularizer="grid", lam=1.0, latent_stride=4, workers=1))
    assert objective.adm_step.latent_stride == 4
    terms = objective("regularized", logits, images, scribbles)
    assert torch.isfinite(terms["loss"])
    results = objective.adm_step.results
    assert objective.diagnostics["latent_energy"] == pytest.approx(sum(r.energy for r in results) / (2 * 4 * 3))
    assert objective.diagnostics["latent_start_energy"] == pytest.approx(sum(r.history[0] for r in results) / 24)


def test_a_stored_run_without_latent_stride_loads_and_is_reused_with_stride_1(tmp_path):
    config = TrainConfig(optimizer="adm", epochs=1, pretrain_epochs=0)
    stored = json.loads(json.dumps(dataclasses.asdict(config.resolved())))
    del stored["latent_stride"]  # a config.json written before the setting existed
    assert TrainConfig.from_dict(stored).latent_stride == 1
    (tmp_path / "config.json").write_text(json.dumps(stored))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_time": 1.0}) + "\n")
    assert _run(config, tmp_path, progress=False) == [{"epoch": 1, "train_time": 1.0}]  # reused, not trained
    with pytest.raises(FileExistsError, match="other settings"):
        _run(dataclasses.replace(config, latent_stride=2), tmp_path, progress=False)
