"""From scribbles to masks on one's own data (issue 20): training without masks, a self-describing run
folder, predict (tiles, the dense CRF), evaluate on any folder, segment on folders, export."""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from admsolve.cli import main
from admsolve.data.io import read_label_map

from conftest import write_dataset

torch = pytest.importorskip("torch")

from admsolve.training import Predictor, SegmentationScores, dense_crf  # noqa: E402
from admsolve.training.checkpoints import read_model_info  # noqa: E402

TINY = ["--model", "fcn-small", "--regularizer", "none", "--epochs", "0", "--pretrain-epochs", "2",
        "--batch-size", "2", "--crop-size", "32", "--workers", "1", "--quiet"]


def scribbled_dataset(root, *, masks):
    """The tiny dataset of conftest with its generated scribbles written to scribbles/ and, unless
    `masks`, its masks removed."""
    from admsolve.data import FolderDataset
    from admsolve.data.io import write_label_map

    write_dataset(root)
    generated = FolderDataset(root, "list", scribbles="generate")
    (root / "scribbles").mkdir()
    for sample in generated:
        write_label_map(root / "scribbles" / f"{sample.id}.png", sample.scribbles)
    if not masks:
        shutil.rmtree(root / "masks")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny run on a folder with masks (scored val, so it keeps checkpoint-best.pt)."""
    folder = tmp_path_factory.mktemp("own")
    data = write_dataset(folder / "data")
    assert main(["train", "--data", str(data), "--out", str(folder / "run"), *TINY]) == 0
    return folder / "run", data


# --------------------------------------------------------------------------- training without masks

def test_training_on_a_folder_with_no_masks_records_losses_but_no_scores(tmp_path, capsys):
    data = scribbled_dataset(tmp_path / "data", masks=False)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert err.count("has no masks") == 1  # said once
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all("miou" not in record and "grid_crf_loss_val" in record for record in records)
    assert (out / "checkpoint.pt").is_file() and not (out / "checkpoint-best.pt").exists()
    assert read_model_info(out)["n_labels"] == 2  # from the largest scribbled label


def test_val_split_none_trains_without_evaluation(tmp_path):
    data = scribbled_dataset(tmp_path / "data", masks=False)
    (data / "val.txt").unlink()
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--val-split", "none", *TINY]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2]
    assert not any(key.startswith(("miou", "grid_crf")) for record in records for key in record)


def test_a_training_image_without_scribbles_or_mask_is_refused(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    (data / "masks" / "img1.png").unlink()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither scribbles" in err and "'img1'" in err


# --------------------------------------------------------------------------- the run folder

def test_the_run_describes_its_network_and_keeps_the_best_checkpoint(run):
    folder, _ = run
    info = read_model_info(folder)
    assert info["n_labels"] == 2 and info["class_names"] == ["0", "1"] and info["model"] == "fcn-small"
    assert info["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    best = torch.load(folder / "checkpoint-best.pt", weights_only=True)
    assert best["miou"] == max(record["miou"] for record in records)


# --------------------------------------------------------------------------- predict

def test_predict_on_the_val_images_gives_the_labels_evaluate_scores(run, tmp_path):
    from admsolve.training import evaluate_run

    folder, data = run
    out = tmp_path / "out"
    val = (data / "val.txt").read_text().split()
    assert main(["predict", str(folder), *[str(data / "images" / f"{i}.png") for i in val], "-o", str(out),
                 "--checkpoint", "last", "--quiet"]) == 0
    scores = SegmentationScores(2)
    for image_id in val:
        labels = read_label_map(out / f"{image_id}.png")
        scores.update(labels, read_label_map(data / "masks" / f"{image_id}.png"))
    assert scores.result()["miou"] == pytest.approx(evaluate_run(folder, progress=False)["miou"], abs=1e-12)


def test_predict_writes_maps_overlays_and_probabilities_and_skips_what_exists(run, tmp_path, capsys):
    folder, data = run
    out = tmp_path / "out"
    assert main(["predict", str(folder), str(data / "images"), "-o", str(out), "--overlay", "--probs"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"img{i}{suffix}" for i in range(5) for suffix in (".png", "-overlay.png", ".npy"))
    probs = np.load(out / "img0.npy")
    labels = read_label_map(out / "img0.png")
    assert probs.shape == labels.shape + (2,) and probs.dtype == np.float32
    assert np.array_equal(probs.argmax(2), labels)
    assert np.allclose(probs.sum(2), 1, atol=1e-5)
    capsys.readouterr()
    before = (out / "img0.png").stat().st_mtime_ns
    assert main(["predict", str(folder), str(data / "images"), "-o", str(out), "--quiet"]) == 0
    assert "0 label maps written" in capsys.readouterr().out and (out / "img0.png").stat().st_mtime_ns == before


def test_crf_equals_solving_the_dense_crf_on_the_same_probabilities(run, tmp_path):
    import admsolve as adm

    folder, data = run
    image = np.asarray(Image.open(data / "images" / "img3.png").convert("RGB"))
    _, probs = Predictor(folder, checkpoint="last")(image)
    expected = adm.solve(adm.DenseCRF(adm.adm_unary(probs), image, sxy=67, srgb=3, compat=4, gaussian_sxy=3,
                                      gaussian_compat=3), "mean-field", max_iter=10)
    labels, crf_probs = Predictor(folder, checkpoint="last", crf=True)(image)
    assert np.array_equal(labels, expected.labels) and np.allclose(crf_probs, expected.probs, atol=1e-6)
    assert np.array_equal(dense_crf(image, probs, compat=20).labels, adm.solve(
        adm.DenseCRF(adm.adm_unary(probs), image, sxy=67, srgb=3, compat=20), "mean-field", max_iter=10).labels)
    out = tmp_path / "out"
    assert main(["predict", str(folder), str(data / "images" / "img3.png"), "-o", str(out), "--checkpoint", "last",
                 "--crf", "--quiet"]) == 0
    assert np.array_equal(read_label_map(out / "img3.png"), expected.labels)


def test_tiles_and_whole_images_give_the_same_labels_away_from_tile_borders(run):
    folder, data = run
    small = Image.open(data / "images" / "img0.png").convert("RGB")
    image = np.asarray(small.resize((300, 400), Image.Resampling.BILINEAR))  # 400 x 300: 4 x 3 tiles of 256
    whole_labels, whole = Predictor(folder, checkpoint="last")(image)
    tiled_labels, tiled = Predictor(folder, checkpoint="last", tile_size=256, batch_size=3)(image)
    away = np.ones(image.shape[:2], bool)
    for border in range(128, 400, 128):  # the seams between the kept cores of the tiles
        away[border - 8:border + 8, :] = False
        away[:, border - 8:border + 8] = False
    assert np.allclose(tiled[away], whole[away], atol=1e-4)
    assert np.array_equal(tiled_labels[away], whole_labels[away])
    assert np.mean(tiled_labels == whole_labels) > 0.99


def test_evaluate_scores_any_folder_and_split_with_and_without_the_crf(run, capsys):
    from admsolve.training import evaluate_run

    folder, data = run
    own = evaluate_run(folder, progress=False)
    other = evaluate_run(folder, data=data, split="val", progress=False)
    assert other["miou"] == pytest.approx(own["miou"], abs=1e-12) and "grid_crf_loss_train" not in other
    train = evaluate_run(folder, data=data, split="train", progress=False, crf={"max_iter": 3})
    assert 0 <= train["miou"] <= 1
    assert main(["evaluate", str(folder), "--data", str(data), "--split", "val", "--crf", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"miou\s+\d\.\d+", out) and "predictions.png" not in out


def _bad(argv, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("admsolve: error: ") and err.count("\n") == 1 and re.search(message, err), err


def test_predict_refuses_bad_input_in_one_line_and_writes_nothing(run, tmp_path, capsys):
    folder, data = run
    image = str(data / "images" / "img0.png")
    out = tmp_path / "out"
    _bad(["predict", str(data), image, "-o", str(out)], capsys, "not a run folder")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.json"):
        shutil.copy(folder / name, bare / name)
    _bad(["predict", str(bare), image, "-o", str(out)], capsys, "no checkpoint.pt")
    _bad(["predict", str(folder), str(tmp_path / "nothing.png"), "-o", str(out)], capsys, "no such image")
    (tmp_path / "fake.png").write_text("not a picture")
    _bad(["predict", str(folder), image, str(tmp_path / "fake.png"), "-o", str(out)], capsys,
         "INPUT: cannot read .*fake.png.* as an image")
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    (damaged / "config.json").write_text('{"data": ')
    _bad(["predict", str(damaged), image, "-o", str(out)], capsys, "config.json.* not readable JSON")
    (damaged / "config.json").write_text((folder / "config.json").read_text())
    (damaged / "model.json").write_text('{"n_labels": 99999, "class_names": [], "model": "fcn-small"}')
    _bad(["predict", str(damaged), image, "-o", str(out)], capsys, "n_labels, an integer in")
    assert not out.exists()


# --------------------------------------------------------------------------- segment on folders

def test_segment_on_folders_equals_segment_per_image_and_reports_failures(tmp_path, capsys):
    from admsolve.data.examples import synthetic_scene

    images, scribbles, out = tmp_path / "images", tmp_path / "scribbles", tmp_path / "out"
    images.mkdir()
    scribbles.mkdir()
    for index, (height, width) in enumerate([(40, 50), (36, 44), (30, 30), (32, 32)]):
        image, strokes, _ = synthetic_scene(height=height, width=width, seed=index)
        Image.fromarray(image).save(images / f"s{index}.png")
        if index < 3:
            Image.fromarray(strokes).save(scribbles / f"s{index}.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(scribbles / "s2.png")  # the wrong size: fails
    assert main(["segment", str(images), str(scribbles), "-o", str(out), "--connectivity", "4"]) == 1
    captured = capsys.readouterr()
    assert "skipped 1 images without scribbles: s3.png" in captured.out
    assert "2 label maps written; 1 failed" in captured.out
    assert re.search(r"s2\.png: scribbles: expected the image's size", captured.err)
    assert sorted(p.name for p in out.iterdir()) == ["s0.png", "s1.png"]
    for name in ("s0", "s1"):
        single = tmp_path / f"{name}-single.png"
        assert main(["segment", str(images / f"{name}.png"), str(scribbles / f"{name}.png"), "-o", str(single),
                     "--connectivity", "4"]) == 0
        assert np.array_equal(read_label_map(out / f"{name}.png"), read_label_map(single))


def test_segment_on_folders_without_matching_names_is_refused(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "scribbles").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "scribbles" / "b.png")
    _bad(["segment", str(tmp_path / "images"), str(tmp_path / "scribbles"), "-o", str(tmp_path / "out")], capsys,
         "SCRIBBLES: expected scribbles named as the images .* got no match")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- export

@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("suffix", [".pt", ".onnx"])
def test_the_exported_model_agrees_with_predict(run, tmp_path, suffix):
    folder, data = run
    if suffix == ".onnx":
        pytest.importorskip("onnx", reason="ONNX export needs admsolve[export]")
        runtime = pytest.importorskip("onnxruntime", reason="running the ONNX graph needs admsolve[export]")
    path = tmp_path / f"model{suffix}"
    assert main(["export", str(folder), "-o", str(path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    predictor = Predictor(folder)
    rng = np.random.default_rng(0)
    for shape in [(40, 40), (37, 53)]:  # the graph was traced at 64 x 64: other sizes, an odd one among them
        images = [np.asarray(Image.open(data / "images" / f"img{i}.png").convert("RGB").resize(shape[::-1]))
                  for i in range(2)]
        images[1] = rng.integers(0, 256, images[1].shape, dtype=np.uint8)
        pixels = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32)
        if suffix == ".pt":
            logits = torch.jit.load(str(path))(torch.from_numpy(pixels)).detach().numpy()
        else:
            logits = runtime.InferenceSession(str(path)).run(None, {"pixels": pixels})[0]
        assert logits.shape == (2, 2) + shape
        for image, image_logits in zip(images, logits):
            assert np.array_equal(image_logits.argmax(0), predictor(image)[0])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_same_padding_traced_at_one_size_pads_right_at_others():
    """EfficientNet's "SAME" convolutions pad by the input's size: a traced (exported) graph must compute
    that padding, not keep the traced size's."""
    from admsolve.training.models import _SameConv2d

    torch.manual_seed(0)
    for kernel, stride, dilation in [(3, 2, 1), (5, 2, 1), (5, 1, 2)]:
        conv = _SameConv2d(2, 3, kernel, stride=stride, dilation=dilation)
        traced = torch.jit.trace(conv, torch.rand(1, 2, 8, 8))
        for shape in [(8, 8), (9, 7), (10, 13)]:
            x = torch.rand(1, 2, *shape)
            assert torch.allclose(traced(x), conv(x)) and conv(x).shape[-2:] == tuple(-(-n // stride) for n in shape)


def test_export_refuses_an_unknown_extension_in_one_line(run, tmp_path, capsys):
    _bad(["export", str(run[0]), "-o", str(tmp_path / "model.tflite")], capsys, r"--output: expected .*\.onnx or \.pt")
    assert not any(tmp_path.iterdir())
