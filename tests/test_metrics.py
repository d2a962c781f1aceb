"""Tests of admsolve.training.metrics: scores, the trimap band and the plots."""

import ast
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("torch")  # importing admsolve.training imports torch (metrics itself does not)
pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402

from admsolve.training import metrics  # noqa: E402
from admsolve.training.metrics import (  # noqa: E402
    UNLABELED,
    SegmentationScores,
    boundary_band,
    confusion_matrix,
    plot_comparison,
    plot_curves,
    prediction_sheet,
)


def _random_pair(seed, shape=(7, 9), k=3, void_fraction=0.2):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, k, size=shape)
    truth = rng.integers(0, k, size=shape)
    truth[rng.random(shape) < void_fraction] = UNLABELED
    return pred, truth


def test_metrics_module_does_not_import_torch():
    tree = ast.parse(Path(metrics.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        assert not any(name.split(".")[0] == "torch" for name in names)


# --------------------------------------------------------------------------- confusion matrix


@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_confusion_matrix_matches_brute_force(k, h, w, seed):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, k, size=(h, w))
    truth = np.where(rng.random((h, w)) < 0.3, UNLABELED, rng.integers(0, k, size=(h, w)))
    expected = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(truth.ravel(), pred.ravel()):
        if t != UNLABELED:
            expected[t, p] += 1
    pred_before, truth_before = pred.copy(), truth.copy()
    result = confusion_matrix(pred, truth, k)
    assert result.dtype == np.int64 and result.shape == (k, k)
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(pred, pred_before)
    np.testing.assert_array_equal(truth, truth_before)


def test_confusion_matrix_custom_void():
    truth = np.array([[0, 1, -1]])
    pred = np.array([[0, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(pred, truth, 2, unlabeled=-1), [[1, 0], [1, 0]])


# --------------------------------------------------------------------------- scores


def test_perfect_prediction_scores_one():
    truth = np.zeros((40, 50), dtype=np.int64)
    truth[10:30, 15:35] = 1
    truth[10:30, 15] = UNLABELED
    pred = np.where(truth == UNLABELED, 0, truth)
    scores = SegmentationScores(2)
    scores.update(pred, truth)
    result = scores.result()
    assert result["miou"] == 1.0 and result["accuracy"] == 1.0
    assert result["trimap_8"] == 1.0 and result["trimap_16"] == 1.0
    assert result["iou"] == [1.0, 1.0]
    assert result["pixels"] == int(np.count_nonzero(truth != UNLABELED))


def test_void_pixels_never_counted():
    pred, truth = _random_pair(1, shape=(30, 30))
    scores_a, scores_b = SegmentationScores(3), SegmentationScores(3)
    scores_a.update(pred, truth)
    changed = pred.copy()
    changed[truth == UNLABELED] = (changed[truth == UNLABELED] + 1) % 3
    scores_b.update(changed, truth)
    assert scores_a.result() == scores_b.result()
    np.testing.assert_array_equal(scores_a.confusion, scores_b.confusion)


def test_miou_hand_computed():
    truth = np.array([[0, 0, 1],
                      [1, 1, UNLABELED]])
    pred = np.array([[0, 1, 1],
                     [1, 0, 2]])
    # class 0: TP 1, FP 1 (truth 1 -> pred 0), FN 1 (truth 0 -> pred 1): IoU 1/3
    # class 1: TP 2, FP 1, FN 1: IoU 2/4; class 2: only on a void pixel -> absent (NaN)
    scores = SegmentationScores(3, trimap_widths=())
    scores.update(pred, truth)
    result = scores.result()
    assert result["iou"][0] == pytest.approx(1 / 3) and result["iou"][1] == pytest.approx(0.5)
    assert math.isnan(result["iou"][2])
    assert result["miou"] == pytest.approx((1 / 3 + 0.5) / 2)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["pixels"] == 5
    assert not any(key.startswith("trimap") for key in result)


def test_accumulation_equals_concatenation():
    pred_a, truth_a = _random_pair(2, shape=(6, 8))
    pred_b, truth_b = _random_pair(3, shape=(5, 4))
    scores = SegmentationScores(3)
    scores.update(pred_a, truth_a)
    scores.update(pred_b, truth_b)
    pad = np.full((5, 4), UNLABELED)
    joined_truth = np.concatenate([truth_a, np.concatenate([truth_b, pad], axis=1)], axis=0)
    joined_pred = np.concatenate([pred_a, np.concatenate([pred_b, np.zeros((5, 4), int)], axis=1)], axis=0)
    np.testing.assert_array_equal(scores.confusion, confusion_matrix(joined_pred, joined_truth, 3))
    expected_pixels = np.count_nonzero(truth_a != UNLABELED) + np.count_nonzero(truth_b != UNLABELED)
    assert scores.result()["pixels"] == int(expected_pixels)
    assert scores.images == 2


def test_trimap_counts_only_band_pixels():
    truth = np.zeros((20, 40), dtype=np.int64)
    truth[:, 20:] = 1
    pred = truth.copy()
    pred[:, :5] = 1  # wrong, but far (> 8) from the edge
    pred[:, 18] = 1  # wrong, inside the band
    scores = SegmentationScores(2, trimap_widths=(8, 2.5))
    scores.update(pred, truth)
    result = scores.result()
    band8 = boundary_band(truth, 8)
    assert result["trimap_8"] == pytest.approx(1 - 20 / np.count_nonzero(band8))
    assert result["trimap_2.5"] == pytest.approx(1 - 20 / np.count_nonzero(boundary_band(truth, 2.5)))
    assert result["accuracy"] == pytest.approx(1 - 6 * 20 / truth.size)


def test_empty_scores_are_nan():
    result = SegmentationScores(2).result()
    assert math.isnan(result["miou"]) and math.isnan(result["accuracy"]) and math.isnan(result["trimap_8"])
    assert result["pixels"] == 0


def test_uniform_truth_has_nan_trimap():
    scores = SegmentationScores(2)
    scores.update(np.zeros((5, 5), int), np.ones((5, 5), int))
    result = scores.result()
    assert math.isnan(result["trimap_8"]) and result["accuracy"] == 0.0 and result["miou"] == 0.0


# --------------------------------------------------------------------------- boundary band


@pytest.mark.parametrize("edge", [1, 9, 17])
@pytest.mark.parametrize("width", [0, 3, 8])
def test_boundary_band_vertical_step(edge, width):
    truth = np.zeros((12, 24), dtype=np.uint8)
    truth[:, edge:] = 2
    band = boundary_band(truth, width)
    x = np.arange(24)
    # boundary pixels are the columns edge-1 and edge (either side of the step)
    expected_columns = np.minimum(np.abs(x - (edge - 1)), np.abs(x - edge)) <= width
    np.testing.assert_array_equal(band, np.broadcast_to(expected_columns, truth.shape))


def test_boundary_band_void_is_a_value_and_widths_nest():
    rng = np.random.default_rng(4)
    truth = np.zeros((50, 60), dtype=np.int64)
    truth[10:40, 12:50] = 1
    truth[10, 12:50] = UNLABELED  # a void band along part of the boundary
    truth[rng.random(truth.shape) < 0.01] = UNLABELED
    before = truth.copy()
    band8, band16 = boundary_band(truth, 8), boundary_band(truth, 16)
    assert band8.dtype == bool and band8.shape == truth.shape
    assert np.all(band16[band8]) and band16.sum() > band8.sum()
    np.testing.assert_array_equal(truth, before)
    # a void stripe inside a uniform region makes its neighbours boundary pixels
    stripe = np.zeros((9, 9), dtype=np.int64)
    stripe[:, 4] = UNLABELED
    np.testing.assert_array_equal(boundary_band(stripe, 0)[0], [0, 0, 0, 1, 1, 1, 0, 0, 0])


def test_boundary_band_uniform_is_empty():
    assert not boundary_band(np.full((6, 7), 3), 16).any()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, name", [
    (lambda: confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 2), "pred"),
    (lambda: confusion_matrix(np.full((2, 2), 2), np.zeros((2, 2), int), 2), "pred"),
    (lambda: confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 7), 2), "truth"),
    (lambda: confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2), int), 2), "pred"),
    (lambda: confusion_matrix(np.zeros((2, 2), int), np.zeros(4, int), 2), "truth"),
    (lambda: confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 2), int), 0), "n_labels"),
    (lambda: confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 2), int), 2, unlabeled=None), "unlabeled"),
    (lambda: boundary_band(np.zeros((3, 3), int), -1), "width"),
    (lambda: boundary_band(np.zeros((3, 3)), 1), "truth"),
    (lambda: SegmentationScores(2, trimap_widths=8), "trimap_widths"),
    (lambda: SegmentationScores(2, trimap_widths=(-2,)), "trimap_widths"),
    (lambda: SegmentationScores(2).update(np.zeros((2, 2), int), np.zeros((2, 3), int)), "pred"),
    (lambda: plot_curves({"iteration": 1}, "x.png"), "records"),
    (lambda: plot_curves([1, 2], "x.png"), "records"),
    (lambda: plot_comparison([[{"iteration": 1}]], "x.png"), "runs"),
    (lambda: prediction_sheet("x.png", [], [], [], []), "images"),
    (lambda: prediction_sheet("x.png", [np.zeros((4, 4, 3))], [None], [], [None]), "predictions"),
    (lambda: prediction_sheet("x.png", [np.zeros((4, 4, 3))], [None], [np.zeros((4, 5), int)], [None]),
     "predictions[0]"),
    (lambda: prediction_sheet("x.png", [np.zeros((4, 4))], [None], [np.zeros((4, 4), int)], [None],
                              columns=0), "columns"),
])
def test_bad_input_names_the_argument(call, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((TypeError, ValueError), match="^" + re.escape(name)):
        call()
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- plots and sheets


def _read_png(path):
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0
        return image.size


def test_plot_curves_with_missing_keys(tmp_path):
    records = [
        {"iteration": 0, "train_loss": 2.0, "grid_crf_loss_train": 50.0, "miou": 0.2, "accuracy": 0.5},
        {"iteration": 10, "train_loss": 1.0, "grid_crf_loss_train": 40.0},
        {"iteration": 20, "loss": 0.8, "grid_crf_loss_val": 30.0, "miou": 0.4, "trimap_8": 0.3},
        {"iteration": 30, "train_loss": None, "miou": float("nan"), "note": "text", "lr": 0.1},
        {"epoch": 1, "train_loss": 0.5},  # no iteration: skipped
    ]
    path = plot_curves(records, tmp_path / "curves.png", title="run")
    assert path == tmp_path / "curves.png"
    _read_png(path)
    assert records[1] == {"iteration": 10, "train_loss": 1.0, "grid_crf_loss_train": 40.0}


def test_plot_curves_empty_records(tmp_path):
    _read_png(plot_curves([], tmp_path / "empty.png"))


def test_loss_key_selection():
    keys = ["train_loss", "grid_crf_loss_train", "grid_crf_loss_val", "loss", "loss_ce", "miou", "lossy",
            "lr", "crf_weight"]
    assert [k for k in keys if metrics._is_loss_key(k)] == [
        "train_loss", "grid_crf_loss_train", "grid_crf_loss_val", "loss", "loss_ce", "lossy"]


def test_plot_comparison(tmp_path):
    runs = {
        "gd": [{"iteration": i, "grid_crf_loss_train": 10.0 - i, "miou": 0.1 * i} for i in range(5)],
        "adm": [{"iteration": i, "grid_crf_loss_train": 8.0 - i} for i in range(0, 5, 2)]
        + [{"iteration": 6, "miou": 0.7}],
    }
    _read_png(plot_comparison(runs, tmp_path / "compare.png"))
    _read_png(plot_comparison(runs, tmp_path / "compare_other.png", keys=("train_loss",)))
    with pytest.raises(TypeError, match="keys: expected a non-empty sequence"):
        plot_comparison(runs, tmp_path / "x.png", keys="miou")


def test_prediction_sheet_different_sizes(tmp_path):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (40, 60, 3)).astype(np.uint8), rng.random((33, 21, 3))]
    scribbles = [np.full((40, 60), UNLABELED), np.full((33, 21), UNLABELED)]
    scribbles[0][20, 5:50] = 1
    scribbles[1][5:30, 10] = 0
    predictions = [rng.integers(0, 2, (40, 60)), rng.integers(0, 2, (33, 21))]
    truths = [np.where(rng.random((40, 60)) < 0.1, UNLABELED, rng.integers(0, 2, (40, 60))), None]
    copies = [a.copy() for a in images + scribbles + predictions]
    path = prediction_sheet(tmp_path / "sheet.png", images, scribbles, predictions, truths,
                            ids=["cat", "dog"])
    width, height = _read_png(path)
    tile_width = round(160 * 60 / 40)
    assert width == 4 * tile_width and height == 2 * (160 + 14)
    for before, after in zip(copies, images + scribbles + predictions):
        np.testing.assert_array_equal(before, after)
    with Image.open(path) as image:
        sheet = np.asarray(image.convert("RGB"))
    # the first row's scribble tile keeps the image where unscribbled, scribble colour where scribbled
    tile = sheet[14:14 + 160, tile_width:2 * tile_width]
    assert np.any(np.all(tile == metrics.io.PALETTE[1], axis=-1))
    # a missing truth is a blank (white) tile
    blank = sheet[2 * 14 + 160:, 3 * tile_width:]
    assert np.all(blank == 255)


def test_prediction_sheet_default_ids_and_columns(tmp_path):
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    labels = np.zeros((16, 16), dtype=np.int64)
    path = prediction_sheet(tmp_path / "one.png", [image], [labels], [labels], [labels], columns=2)
    assert _read_png(path) == (2 * 160, 2 * (160 + 14))
