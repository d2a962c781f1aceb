"""Datasets and augmentation: the real folders of ../shared/data (skipped where absent), small fake
folder and VOC trees written here, the generated synthetic set, and augment()."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from admsolve import UNLABELED
from admsolve.data import (VOC_CLASSES, FolderDataset, Sample, SyntheticDataset, VOCDataset,
                           augment, open_dataset)


# ------------------------------------------------------------------ fake trees written with Pillow

def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode).save(path)


def _scene(index, size=(12, 16)):
    """An image, its mask (labels 0..2, a void border column) and scribbles on the mask."""
    height, width = size
    rng = np.random.default_rng(index)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros(size, dtype=np.uint8)
    mask[2:7, 3:9] = 1
    mask[8:11, 10:15] = 2
    mask[:, 0] = UNLABELED
    scribbles = np.full(size, UNLABELED, dtype=np.uint8)
    scribbles[4, 4:8] = 1
    scribbles[9, 11:14] = 2
    scribbles[1, 2:12] = 0
    return image, mask, scribbles


def _folder(root, ids=("a", "b", "c"), *, scribble_dirs=("scribbles_x",), splits=None):
    """root/images, root/masks, root/<scribble dir>, root/list.txt and root/train.txt."""
    for i, image_id in enumerate(ids):
        image, mask, scribbles = _scene(i)
        _save(root / "images" / f"{image_id}.png", image)
        _save(root / "masks" / f"{image_id}.png", mask)
        for folder in scribble_dirs:
            _save(root / folder / f"{image_id}.png", scribbles)
    splits = splits or {"list": ids, "train": ids}
    for split, listed in splits.items():
        (root / f"{split}.txt").write_text("\n".join(f" {i} " for i in listed) + "\n\n")
    return root


def _voc(root, ids=("2007_000032", "2007_000039"), *, scribbles=True, aug=False):
    """A tiny VOC2012 tree: JPEGImages, SegmentationClass (palette PNGs), ImageSets, scribbles."""
    palette = list(np.random.default_rng(0).integers(0, 256, 768).astype(int))
    for i, image_id in enumerate(ids):
        image, mask, scribbles_array = _scene(i)
        mask[2:7, 3:9] = 20  # tvmonitor
        scribbles_array[4, 4:8] = 20
        path = root / "JPEGImages" / f"{image_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=95)
        labels = Image.fromarray(mask, mode="L").convert("P")
        labels.putpalette(palette)
        (root / "SegmentationClass").mkdir(exist_ok=True)
        labels.save(root / "SegmentationClass" / f"{image_id}.png")
        if aug:
            _save(root / "SegmentationClassAug" / f"{image_id}.png", np.where(mask == 20, 15, mask))
        if scribbles:
            _save(root / "pascal_2012_scribble" / f"{image_id}.png", scribbles_array)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(ids) + "\n")
    (lists / "val.txt").write_text(ids[0] + "\n")
    return root


def _check_sample(sample, n_labels):
    """Shapes, dtypes, value ranges and read-only arrays of a Sample."""
    assert isinstance(sample, Sample)
    height, width = sample.image.shape[:2]
    assert sample.image.shape == (height, width, 3) and sample.image.dtype == np.uint8
    assert sample.scribbles.shape == (height, width) and sample.scribbles.dtype == np.uint8
    assert sample.mask.shape == (height, width) and sample.mask.dtype == np.uint8
    for array in (sample.image, sample.scribbles, sample.mask):
        assert not array.flags.writeable
    for labels in (sample.scribbles, sample.mask):
        assert np.all((labels < n_labels) | (labels == UNLABELED))
    assert np.any(sample.scribbles != UNLABELED)


def _strokes_on_own_label(sample):
    scribbled = sample.scribbles != UNLABELED
    return np.array_equal(sample.scribbles[scribbled], sample.mask[scribbled])


# ------------------------------------------------------------------ real data

def test_grabcut_train_split(grabcut_dir):
    data = FolderDataset(grabcut_dir)
    assert len(data) == len(data.ids) == 33 and data.split == "train" and data.root == grabcut_dir
    assert data.n_labels == 2 and data.class_names == ["0", "1"]
    assert data.scribble_source == "scribbles_set1"
    for index in (0, 1, -1):
        _check_sample(data[index], 2)
    assert data[-1] is data[32] and data[-1].id == data.ids[-1]
    expected = np.asarray(Image.open(grabcut_dir / "scribbles_set1" / f"{data.ids[0]}.png"))
    assert np.array_equal(data[0].scribbles, expected)


def test_grabcut_second_scribble_set_and_val(grabcut_dir):
    data = FolderDataset(grabcut_dir, "val", scribbles="scribbles_set2")
    assert len(data) == 17 and data.scribble_source == "scribbles_set2"
    expected = np.asarray(Image.open(grabcut_dir / "scribbles_set2" / f"{data.ids[0]}.png"))
    assert np.array_equal(data[0].scribbles, expected)


def test_msrc_generated_scribbles(msrc_dir):
    names = json.loads((msrc_dir / "classes.json").read_text())
    data = FolderDataset(msrc_dir)
    assert data.n_labels == 21 and len(data.class_names) == 21
    assert data.class_names[0] == "building" and data.class_names[-1] == "boat"
    assert data.class_names in (names if isinstance(names, list) else list(names.values()))
    assert data.scribble_source == "generated (length 1, seed 0)"
    again, other = FolderDataset(msrc_dir), FolderDataset(msrc_dir, seed=7, scribble_length=0.5)
    assert other.scribble_source == "generated (length 0.5, seed 7)"
    differ = False
    for index in range(3):
        sample = data[index]
        _check_sample(sample, 21)
        assert _strokes_on_own_label(sample)
        assert np.array_equal(sample.scribbles, again[index].scribbles)
        assert _strokes_on_own_label(other[index])
        differ |= not np.array_equal(sample.scribbles, other[index].scribbles)
    assert differ


# ------------------------------------------------------------------ fake folders

def test_folder_basics(tmp_path):
    root = _folder(tmp_path / "set", scribble_dirs=("scribbles_y", "scribbles_x"))
    data = FolderDataset(root)
    assert data.ids == ["a", "b", "c"] and len(data) == 3
    assert data.n_labels == 3 and data.class_names == ["0", "1", "2"]
    assert data.scribble_source == "scribbles_x"  # the first scribble folder by name
    sample = data[1]
    image, mask, scribbles = _scene(1)
    assert sample.id == "b"
    assert np.array_equal(sample.image, image) and np.array_equal(sample.mask, mask)
    assert np.array_equal(sample.scribbles, scribbles)
    assert data[1] is sample  # cached
    with pytest.raises(ValueError):
        sample.scribbles[0, 0] = 1  # read-only: the cache cannot be corrupted
    with pytest.raises(IndexError, match="3 out of range"):
        data[3]
    with pytest.raises(IndexError, match="-4 out of range"):
        data[-4]
    with pytest.raises(TypeError, match="index"):
        data["a"]
    assert [s.id for s in data] == ["a", "b", "c"]


def test_folder_generate_and_auto_without_scribbles(tmp_path):
    root = _folder(tmp_path / "set", scribble_dirs=())
    auto = FolderDataset(root, seed=3)
    assert auto.scribble_source == "generated (length 1, seed 3)"
    for sample in auto:
        _check_sample(sample, 3)
        assert _strokes_on_own_label(sample)
        assert set(np.unique(sample.scribbles)) == {0, 1, 2, UNLABELED}
    root2 = _folder(tmp_path / "set2")
    forced = FolderDataset(root2, scribbles="generate", seed=3)
    assert forced.scribble_source.startswith("generated")
    assert np.array_equal(forced[0].scribbles, auto[0].scribbles)


def test_folder_n_labels_and_classes(tmp_path):
    root = _folder(tmp_path / "set")
    assert FolderDataset(root, n_labels=5).n_labels == 5
    assert FolderDataset(root, n_labels=5).class_names == ["0", "1", "2", "3", "4"]
    (root / "classes.json").write_text(json.dumps(["sky", "cat", "dog", "cow"]))
    data = FolderDataset(root)
    assert data.n_labels == 4 and data.class_names == ["sky", "cat", "dog", "cow"]
    with pytest.raises(ValueError, match="n_labels.*classes.json.*4 classes"):
        FolderDataset(root, n_labels=3)
    (root / "classes.json").write_text(json.dumps({"0": "sky", "2": "dog", "1": "cat"}))
    assert FolderDataset(root).class_names == ["sky", "cat", "dog"]
    (root / "classes.json").write_text(json.dumps({"masks (3 classes)": ["p", "q", "r"],
                                                   "masks9": ["x"] * 9}))
    assert FolderDataset(root).class_names == ["p", "q", "r"]


def test_masks_are_optional_where_there_are_scribbles(tmp_path):
    root = _folder(tmp_path / "set", ids=("a", "b", "c"))
    (root / "masks" / "b.png").unlink()
    data = FolderDataset(root)
    assert data.unmasked == ["b"] and data[1].mask is None and data[0].mask is not None
    assert data.n_labels == 3
    with pytest.raises(FileNotFoundError, match=r"1 images of .*train\.txt.* neither scribbles .*nor a mask.*'b'"):
        FolderDataset(root, scribbles="generate")
    with pytest.raises(ValueError, match="'masks' trains on the full masks, but 1 images .* 'b'"):
        open_dataset(root, scribbles="masks")


def test_labels_are_counted_in_the_scribbles_without_masks(tmp_path):
    root = _folder(tmp_path / "set", ids=("a", "b"))
    for path in (root / "masks").iterdir():
        path.unlink()
    (root / "masks").rmdir()
    _, _, scribbles = _scene(1)
    scribbles[0, 0] = 4  # the largest label anywhere
    _save(root / "scribbles_x" / "b.png", scribbles)
    (root / "list.txt").unlink()
    data = FolderDataset(root)
    assert data.n_labels == 5 and data.unmasked == ["a", "b"] and data[0].mask is None
    (root / "classes.json").write_text(json.dumps(["p", "q", "r"]))  # K = 3 < 5: that scribble is refused
    with pytest.raises(ValueError, match=r"scribbles: .*scribbles_x/b\.png.*\[4\].*K = 3"):
        FolderDataset(root)[1]


def test_folder_image_found_by_suffix(tmp_path):
    root = _folder(tmp_path / "set")
    (root / "images" / "b.png").rename(root / "images" / "b.jpg")  # a PNG under a .jpg name reads
    assert FolderDataset(root)[1].image.shape == (12, 16, 3)


def test_missing_root_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="root.*nowhere"):
        FolderDataset(tmp_path / "nowhere")
    root = _folder(tmp_path / "set")
    with pytest.raises(FileNotFoundError, match=r"test\.txt.*'list', 'train'"):
        FolderDataset(root, "test")


def test_missing_files_listed(tmp_path):
    root = _folder(tmp_path / "set", ids=("a", "b", "c", "d"))
    (root / "images" / "b.png").unlink()
    (root / "scribbles_x" / "d.png").unlink()
    for n_labels in (None, 3):  # also after counting the labels
        with pytest.raises(FileNotFoundError, match=r"2 of .*train\.txt.*b\.png.*scribbles_x/d\.png"):
            FolderDataset(root, n_labels=n_labels)
    root = _folder(tmp_path / "set2")
    (root / "scribbles_x" / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of .*scribbles_x/c\.png"):
        FolderDataset(root)
    assert len(FolderDataset(root, scribbles="generate")) == 3  # no scribble files needed


def test_unknown_scribble_folder(tmp_path):
    root = _folder(tmp_path / "set", scribble_dirs=("scribbles_x", "scribbles_z"))
    with pytest.raises(FileNotFoundError, match="scribbles.*nope.*'scribbles_x', 'scribbles_z'"):
        FolderDataset(root, scribbles="nope")
    with pytest.raises(TypeError, match="scribbles"):
        FolderDataset(root, scribbles=None)


def test_size_mismatches(tmp_path):
    root = _folder(tmp_path / "set")
    _save(root / "masks" / "b.png", np.zeros((12, 15)))
    _save(root / "scribbles_x" / "c.png", np.zeros((11, 16)))
    data = FolderDataset(root, n_labels=3)
    with pytest.raises(ValueError, match=r"mask.*masks/b\.png.*15x12.*16x12"):
        data[1]
    with pytest.raises(ValueError, match=r"scribbles.*scribbles_x/c\.png.*16x11.*16x12"):
        data[2]
    _check_sample(data[0], 3)


def test_label_values_out_of_range(tmp_path):
    root = _folder(tmp_path / "set")
    _, _, scribbles = _scene(0)
    scribbles[0, 0] = 7
    _save(root / "scribbles_x" / "a.png", scribbles)
    mask = _scene(1)[1]
    mask[0, 5] = 9
    _save(root / "masks" / "b.png", mask)
    data = FolderDataset(root, n_labels=3)
    with pytest.raises(ValueError, match=r"scribbles_x/a\.png.*\[7\].*K = 3"):
        data[0]
    with pytest.raises(ValueError, match=r"masks/b\.png.*\[9\].*K = 3"):
        data[1]


def test_no_scribbled_pixel(tmp_path):
    root = _folder(tmp_path / "set")
    _save(root / "scribbles_x" / "a.png", np.full((12, 16), UNLABELED))
    _save(root / "masks" / "b.png", np.full((12, 16), UNLABELED))
    with pytest.raises(ValueError, match=r"no scribbled pixel in .*scribbles_x/a\.png"):
        FolderDataset(root)[0]
    with pytest.raises(ValueError, match=r"'b'.*mask .*masks/b\.png.*no labelled region"):
        FolderDataset(root, scribbles="generate")[1]


def test_unreadable_image(tmp_path):
    root = _folder(tmp_path / "set")
    (root / "images" / "c.png").write_bytes(b"this is not a PNG file")
    with pytest.raises(ValueError, match=r"images/c\.png"):
        FolderDataset(root)[2]


def test_bad_options(tmp_path):
    root = _folder(tmp_path / "set")
    with pytest.raises(ValueError, match="scribble_length"):
        FolderDataset(root, scribble_length=1.5)
    with pytest.raises(ValueError, match="seed"):
        FolderDataset(root, seed=-1)
    with pytest.raises(TypeError, match="split"):
        FolderDataset(root, split=None)
    (root / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.txt.*no image ids"):
        FolderDataset(root, "empty")


# ------------------------------------------------------------------ VOC

def test_voc_tree(tmp_path):
    root = _voc(tmp_path / "VOC2012")
    data = VOCDataset(root)
    assert data.ids == ["2007_000032", "2007_000039"] and data.n_labels == 21
    assert data.class_names == VOC_CLASSES and data.class_names[-1] == "tvmonitor"
    assert data.scribble_source == "pascal_2012_scribble"
    sample = data[0]
    _check_sample(sample, 21)
    mask = _scene(0)[1]
    mask[2:7, 3:9] = 20
    assert np.array_equal(sample.mask, mask)  # palette indices of the P-mode PNG, 255 void
    assert sample.scribbles[4, 5] == 20
    assert len(VOCDataset(root, "val")) == 1
    again = data[0]  # not cached by default: read again, same content
    assert again is not sample and all(np.array_equal(a, b) for a, b in zip(again[1:], sample[1:]))
    cached = VOCDataset(root, cache=True)
    assert cached[0] is cached[0]


def test_voc_masks_and_scribble_choice(tmp_path):
    root = _voc(tmp_path / "VOC2012", scribbles=False, aug=True)
    data = VOCDataset(root, seed=2)
    assert data[0].mask[3, 4] == 15  # SegmentationClassAug wins over SegmentationClass
    assert data.scribble_source == "generated (length 1, seed 2)"
    assert _strokes_on_own_label(data[0])
    with pytest.raises(FileNotFoundError, match=r"split.*ImageSets/Segmentation/trainval\.txt.*"
                                                r"'train', 'val'"):
        VOCDataset(root, "trainval")
    (root / "JPEGImages" / "2007_000039.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of .*JPEGImages/2007_000039\.jpg"):
        VOCDataset(root)


# ------------------------------------------------------------------ open_dataset

def test_open_dataset_dispatch(tmp_path):
    synthetic = open_dataset("synthetic", "val", seed=4, scribble_length=0.5)
    assert isinstance(synthetic, SyntheticDataset) and synthetic.split == "val"
    assert synthetic.scribble_source == "generated (length 0.5, seed 4)"
    assert isinstance(open_dataset(_voc(tmp_path / "voc"), "val"), VOCDataset)
    folder = open_dataset(str(_folder(tmp_path / "set")), scribbles="generate", seed=1)
    assert type(folder) is FolderDataset and folder.scribble_source.startswith("generated")
    with pytest.raises(FileNotFoundError, match="data.*missing.*'synthetic' is the built-in"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match="file.txt"):
        open_dataset(tmp_path / "file.txt")
    with pytest.raises(ValueError, match="scribbles.*synthetic"):
        open_dataset("synthetic", scribbles="scribbles_set1")
    with pytest.raises(TypeError, match="data"):
        open_dataset(3)


# ------------------------------------------------------------------ synthetic

def test_synthetic_defaults_and_determinism():
    train, val = SyntheticDataset(), SyntheticDataset("val")
    assert len(train) == 32 and len(val) == 16 and train.root is None
    assert train.ids[0] == "synthetic-train-000" and val.ids[15] == "synthetic-val-015"
    assert train.n_labels == 3 and train.class_names == ["background", "object 1", "object 2"]
    again = SyntheticDataset(n_images=4)
    for index in range(4):
        for a, b in zip(train[index][1:], again[index][1:]):
            assert np.array_equal(a, b)
        assert not np.array_equal(train[index].image, val[index].image)
    assert train[0] is train[0]
    other = SyntheticDataset(n_images=2, seed=1)
    assert not np.array_equal(other[0].image, train[0].image)
    with pytest.raises(ValueError, match="split.*'test'"):
        SyntheticDataset("test")
    with pytest.raises(ValueError, match="size"):
        SyntheticDataset(size=(8, 96))


@given(seed=st.integers(0, 2**32), n_labels=st.integers(2, 6),
       size=st.tuples(st.integers(24, 80), st.integers(24, 80)), index=st.integers(0, 3))
@settings(max_examples=25)
def test_synthetic_scene_properties(seed, n_labels, size, index):
    data = SyntheticDataset(n_images=4, size=size, n_labels=n_labels, seed=seed)
    sample = data[index]
    _check_sample(sample, n_labels)
    assert sample.image.shape[:2] == size
    assert not np.any(sample.mask == UNLABELED)
    present = set(np.unique(sample.mask).tolist())
    assert 0 in present and len(present) >= 2
    assert set(np.unique(sample.scribbles).tolist()) - {UNLABELED} == present  # a stroke per label
    assert _strokes_on_own_label(sample)


def test_synthetic_colours_overlap_but_edges_are_sharp():
    samples = list(SyntheticDataset(n_images=12))
    pixels = np.concatenate([s.image.reshape(-1, 3) for s in samples]).astype(float)
    labels = np.concatenate([s.mask.ravel() for s in samples])
    means = np.array([pixels[labels == k].mean(0) for k in range(3)])
    nearest = np.argmin(((pixels[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert 0.7 < np.mean(nearest == labels) < 0.98  # colour alone separates the labels imperfectly
    steps = np.concatenate([np.abs(np.diff(s.image.astype(float), axis=1)).sum(-1).ravel()
                            for s in samples])
    edges = np.concatenate([(np.diff(s.mask.astype(int), axis=1) != 0).ravel() for s in samples])
    assert steps[edges].mean() > 4 * steps[~edges].mean()


# ------------------------------------------------------------------ augment

def _sample(size=(20, 30), with_mask=True):
    image, mask, scribbles = _scene(0, size)
    return Sample("x", image, scribbles, mask if with_mask else None)


@given(seed=st.integers(0, 2**32), crop=st.tuples(st.integers(1, 40), st.integers(1, 50)),
       scale=st.tuples(st.floats(0.3, 2.0), st.floats(0.0, 1.0)), flip=st.booleans())
def test_augment_properties(seed, crop, scale, flip):
    sample = _sample()
    copies = [np.array(a) for a in sample[1:]]
    scale = (scale[0], scale[0] + scale[1])
    out = augment(sample, np.random.default_rng(seed), crop_size=crop, scale=scale, flip=flip)
    assert out.id == "x"
    assert out.image.shape == crop + (3,) and out.image.dtype == np.uint8
    assert out.scribbles.shape == out.mask.shape == crop
    assert out.scribbles.dtype == out.mask.dtype == np.uint8
    assert set(np.unique(out.scribbles).tolist()) <= set(np.unique(sample.scribbles).tolist())
    assert set(np.unique(out.mask).tolist()) <= set(np.unique(sample.mask).tolist())
    for before, after in zip(copies, sample[1:]):
        assert np.array_equal(before, after)
    again = augment(sample, np.random.default_rng(seed), crop_size=crop, scale=scale, flip=flip)
    for a, b in zip(out[1:], again[1:]):
        assert np.array_equal(a, b)


def test_augment_padding():
    sample = _sample()
    out = augment(sample, np.random.default_rng(0), crop_size=(24, 36), scale=(1, 1), flip=False,
                  fill=(1, 2, 3))
    assert np.array_equal(out.image[:20, :30], sample.image)
    assert np.all(out.image[20:] == (1, 2, 3)) and np.all(out.image[:, 30:] == (1, 2, 3))
    for padded, original in ((out.scribbles, sample.scribbles), (out.mask, sample.mask)):
        assert np.array_equal(padded[:20, :30], original)
        assert np.all(padded[20:] == UNLABELED) and np.all(padded[:, 30:] == UNLABELED)


def test_augment_flip_only():
    sample = _sample(with_mask=False)
    seen = set()
    for seed in range(12):
        out = augment(sample, np.random.default_rng(seed), crop_size=(20, 30), scale=(1, 1))
        assert out.mask is None
        mirrored = np.array_equal(out.image, sample.image[:, ::-1])
        assert mirrored or np.array_equal(out.image, sample.image)
        reference = sample.scribbles[:, ::-1] if mirrored else sample.scribbles
        assert np.array_equal(out.scribbles, reference)
        seen.add(mirrored)
    assert seen == {True, False}
    out = augment(sample, np.random.default_rng(0), crop_size=(20, 30), scale=(1, 1), flip=False)
    assert np.array_equal(out.image, sample.image) and out.image is not sample.image


def test_augment_scales_then_crops():
    sample = _sample((40, 40))
    out = augment(sample, np.random.default_rng(0), crop_size=(80, 80), scale=(2, 2), flip=False)
    for offset in (0, 1):  # nearest: each pixel becomes a 2x2 block
        assert np.array_equal(out.mask[offset::2, offset::2], sample.mask)
        assert np.array_equal(out.scribbles[offset::2, offset::2], sample.scribbles)
    assert np.abs(out.image[::2, ::2].astype(int) - sample.image).mean() < 40  # bilinear, close


def test_augment_bad_arguments():
    sample, rng = _sample(), np.random.default_rng(0)
    for crop in [(0, 5), 5, (5, 5, 5), (5.0, 5), "ab"]:
        with pytest.raises(ValueError, match="crop_size"):
            augment(sample, rng, crop_size=crop)
    for scale in [(0, 1), (1.5, 1.0), (-1, 1), 1.0]:
        with pytest.raises(ValueError, match="scale"):
            augment(sample, rng, crop_size=(4, 4), scale=scale)
    with pytest.raises(ValueError, match="fill"):
        augment(sample, rng, crop_size=(4, 4), fill=(0, 0, 256))
    with pytest.raises(TypeError, match="rng"):
        augment(sample, 0, crop_size=(4, 4))
    with pytest.raises(TypeError, match="sample"):
        augment(tuple(sample), rng, crop_size=(4, 4))
    bad = sample._replace(scribbles=np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"sample\.scribbles.*\(20, 30\)"):
        augment(bad, rng, crop_size=(4, 4))


def test_held_out_splits_partition_train_and_keep_its_samples():
    train = open_dataset("synthetic", "train")
    fit, holdout = open_dataset("synthetic", "train-fit"), open_dataset("synthetic", "train-holdout")
    assert sorted(fit.ids + holdout.ids) == sorted(train.ids) and not set(fit.ids) & set(holdout.ids)
    assert len(holdout) == len(train) // 5
    index = train.ids.index(holdout.ids[0])
    np.testing.assert_array_equal(holdout[0].image, train[index].image)
    assert fit.n_labels == train.n_labels


def test_mask_supervision_uses_the_masks_as_scribbles():
    data = open_dataset("synthetic", "val", scribbles="masks")
    sample = data[0]
    np.testing.assert_array_equal(sample.scribbles, sample.mask)
    assert "full supervision" in data.scribble_source


def test_held_out_needs_enough_images():
    from admsolve.data import held_out

    with pytest.raises(ValueError, match=r"needs at least 5 training images, got 3"):
        held_out(SyntheticDataset("train", n_images=3), "train-holdout")


# ------------------------------------------------------------------ label-map files

@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy"])
def test_label_maps_read_back_unchanged_and_images_carry_the_palette(tmp_path, suffix):
    from admsolve.data.io import PALETTE, read_label_map, write_label_map

    labels = np.random.default_rng(0).integers(0, 256, (7, 9)).astype(np.uint8)
    path = tmp_path / f"labels{suffix}"
    write_label_map(path, labels)
    assert np.array_equal(read_label_map(path), labels)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    if suffix != ".npy":
        with Image.open(path) as picture:
            assert picture.mode == "P"
            colours = np.asarray(picture.convert("RGB"))
        assert np.array_equal(colours[labels == 1], np.broadcast_to(PALETTE[1], colours[labels == 1].shape))
        assert np.all(colours[labels == UNLABELED] == 255)


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    from admsolve.data.io import write_atomically

    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def fails(stream):
        stream.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(path, fails)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
