"""Segmentation networks for training from scribbles (torch).

* :class:`SmallFCN` -- a small dilated fully-convolutional network that trains on a CPU in minutes.
* :func:`build_model` -- one of :data:`MODELS` by name: ``"fcn-small"`` or a torchvision DeepLabv3
  (``"deeplabv3-resnet50"``, ``"deeplabv3-resnet101"``, ``"deeplabv3-mobilenet"``, as in Table 1/3
  of the paper), optionally loading local weights. Nothing is ever downloaded.

Every model takes (N, 3, H, W) float images in [0, 1], normalises them internally with the ImageNet
mean and standard deviation and returns logits (N, K, H, W) at the input resolution. Each model has
a ``backbone`` and a ``classifier`` submodule (for separate learning rates).
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import as_scalar
from .config import MODELS

__all__ = ["MODELS", "SmallFCN", "build_model"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_images(x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor of shape (N, 3, H, W), got {type(x).__name__}")
    if not x.is_floating_point() or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x: expected a float tensor of shape (N, 3, H, W), "
                         f"got shape {tuple(x.shape)} and dtype {x.dtype}")
    return x


class _Normalize(nn.Module):
    """(x - ImageNet mean) / ImageNet std, per channel (buffers not saved in the state dict)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def _conv_bn_relu(in_channels, out_channels, *, stride=1, dilation=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation,
                  bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, channels, dilation):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(x)))


class SmallFCN(nn.Module):
    """A small dilated fully-convolutional network that trains on a CPU in minutes.

    Input (N, 3, H, W) float images in [0, 1] (normalised internally with the ImageNet mean/std),
    output logits (N, K, H, W) at the input resolution, for any H, W.

    Architecture: conv3x3 (3 -> w) BN ReLU; conv3x3 stride 2 (w -> 2w) BN ReLU; conv3x3 stride 2
    (2w -> 2w) BN ReLU; four residual dilated conv3x3 (2w, dilations 1, 2, 4, 8) with BN and ReLU
    (receptive field ~ 130 px); conv1x1 classifier (2w -> K); bilinear upsampling (output stride 4).
    About 205k parameters at ``width=32``.

    Parameters
    ----------
    n_labels : int
        Number of labels K (output channels).
    width : int, optional
        Channels of the first layer (the dilated layers have ``2 * width``).

    Attributes
    ----------
    backbone : nn.Sequential
        Everything up to the classifier (features with ``2 * width`` channels at 1/4 resolution).
    classifier : nn.Conv2d
        The 1x1 convolution to K logits.
    """

    def __init__(self, n_labels, *, width=32):
        super().__init__()
        n_labels = as_scalar(n_labels, "n_labels", minimum=1, integer=True)
        width = as_scalar(width, "width", integer=True)
        if width < 1:
            raise ValueError(f"width: expected a number of channels >= 1, got {width}")
        self.n_labels = n_labels
        self.width = width
        self.normalize = _Normalize()
        wide = 2 * width
        self.backbone = nn.Sequential(
            _conv_bn_relu(3, width),
            _conv_bn_relu(width, wide, stride=2),
            _conv_bn_relu(wide, wide, stride=2),
            *[_Residual(wide, dilation) for dilation in (1, 2, 4, 8)],
        )
        self.classifier = nn.Conv2d(wide, n_labels, 1)

    def forward(self, x):
        """Logits (N, K, H, W) of images `x` (N, 3, H, W) in [0, 1]."""
        x = _check_images(x)
        logits = self.classifier(self.backbone(self.normalize(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV3(nn.Module):
    """A torchvision DeepLabv3 taking images in [0, 1] and returning the ``"out"`` logits.

    Parameters
    ----------
    model : torchvision.models.segmentation.DeepLabV3
        The wrapped network (``model.backbone``, ``model.classifier``).
    """

    def __init__(self, model):
        super().__init__()
        self.normalize = _Normalize()
        self.model = model

    @property
    def backbone(self):
        """The wrapped network's backbone (ResNet or MobileNetV3 features)."""
        return self.model.backbone

    @property
    def classifier(self):
        """The wrapped network's DeepLab (ASPP) head."""
        return self.model.classifier

    def forward(self, x):
        """Logits (N, K, H, W) of images `x` (N, 3, H, W) in [0, 1]."""
        x = _check_images(x)
        return self.model(self.normalize(x))["out"]


# --------------------------------------------------------------------------- building


def _torchvision_segmentation(name):
    try:
        from torchvision.models import segmentation
    except Exception as exc:  # ImportError, or a wheel built against another torch
        raise ImportError(f"model {name!r} needs torchvision: pip install torchvision "
                          f"matching your torch ({type(exc).__name__}: {exc})") from exc
    return segmentation


def _load_state_dict(path):
    from .checkpoints import load_checkpoint  # weights_only, one-line errors naming the file

    state = load_checkpoint(path, "weights")
    # Accept checkpoints wrapping the state dict as {"state_dict": ...} or {"model": ...}.
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"weights: expected {str(path)!r} to hold a state_dict (a dict of tensors), "
                         f"got {type(state).__name__}")
    return state


def _few(keys, n=5):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _load_strict(module, state, path, what):
    """module.load_state_dict(state) with a ValueError naming `path` and some keys on mismatch."""
    expected = set(module.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        raise ValueError(f"weights: {str(path)!r} does not match the {what} ({'; '.join(parts)})")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"weights: {str(path)!r} does not match the {what} ({exc})") from None


def _backbone_state(state, name):
    """An ImageNet classification state dict reduced to the keys of the DeepLab backbone."""
    if name == "deeplabv3-mobilenet":
        if not any(k.startswith("features.") for k in state):
            return dict(state)  # already backbone keys ("0.0.weight", ...)
        return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}


def build_model(name, n_labels, *, weights=None):
    """One of :data:`MODELS`, taking (N, 3, H, W) images in [0, 1] and returning (N, K, H, W) logits.

    Parameters
    ----------
    name : str
        ``"fcn-small"`` (:class:`SmallFCN`), or ``"deeplabv3-resnet50"``, ``"deeplabv3-resnet101"``,
        ``"deeplabv3-mobilenet"`` (torchvision DeepLabv3 with a ResNet or MobileNetV3-Large backbone,
        no auxiliary head; needs torchvision).
    n_labels : int
        Number of labels K.
    weights : str or os.PathLike, optional
        A local file (never downloaded). For ``"fcn-small"``: a full state dict saved from this
        model (``torch.save(model.state_dict(), path)``). For ``deeplabv3-*``: an ImageNet
        classification checkpoint of the backbone (ResNet-50/101 or MobileNetV3-Large as torchvision
        saves them); the classifier keys (``fc.*`` / ``classifier.*``) are dropped and MobileNet's
        ``features.N...`` keys mapped to ``N...`` before a strict load into ``model.backbone``.
        Without weights the network is randomly initialised.

    Returns
    -------
    torch.nn.Module
        The network, with ``backbone`` and ``classifier`` submodules.

    Raises
    ------
    ValueError
        On an unknown name, or weights that do not match the network.
    FileNotFoundError
        If `weights` names no file.
    ImportError
        For ``deeplabv3-*`` when torchvision is not importable.
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"name: expected one of {', '.join(MODELS)}, got {name!r}")
    n_labels = as_scalar(n_labels, "n_labels", minimum=1, integer=True)
    if weights is not None and not isinstance(weights, (str, Path)) and not hasattr(weights, "__fspath__"):
        raise TypeError(f"weights: expected a path to a local file or None, got {type(weights).__name__}")
    if name == "fcn-small":
        model = SmallFCN(n_labels)
        if weights is not None:
            _load_strict(model, _load_state_dict(weights), weights, f"{name} model with {n_labels} labels")
        return model
    segmentation = _torchvision_segmentation(name)
    factory = {
        "deeplabv3-resnet50": segmentation.deeplabv3_resnet50,
        "deeplabv3-resnet101": segmentation.deeplabv3_resnet101,
        "deeplabv3-mobilenet": segmentation.deeplabv3_mobilenet_v3_large,
    }[name]
    network = factory(weights=None, weights_backbone=None, num_classes=n_labels, aux_loss=False)
    if weights is not None:
        state = _backbone_state(_load_state_dict(weights), name)
        _load_strict(network.backbone, state, weights, f"{name} backbone")
    return DeepLabV3(network)
