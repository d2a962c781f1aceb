"""Tests of admsolve.training.models: SmallFCN and build_model."""

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
