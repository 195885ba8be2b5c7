"""CIFAR ResNet-18 encoder: 3x3 stride-1 stem, no max-pool, globally pooled features.

Parameter names follow torchvision's ResNet (``conv1``, ``bn1``, ``layerN.M.downsample``),
so a state dict of :func:`cifar_resnet18` (``width=64``) loads into
:func:`torchvision_cifar_resnet18`, a torchvision ``resnet18`` with the CIFAR stem.

Examples:
    >>> import torch
    >>> from advcl_plugin import cifar_resnet18
    >>> encoder = cifar_resnet18(width=16)          # width 64 is the paper's ResNet-18
    >>> encoder(torch.rand(2, 3, 32, 32)).shape     # (B, 8 * width)
    torch.Size([2, 128])
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BACKBONES", "CifarResNet", "build_backbone", "cifar_resnet18", "torchvision_cifar_resnet18"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        # named as in torchvision, so that state dicts load into torchvision's ResNet
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class CifarResNet(nn.Module):
    """ResNet with BasicBlocks for 32x32 inputs; ``forward`` returns pooled features (B, 8 * width).

    Args:
        blocks_per_stage: number of blocks in each of the four stages ((2, 2, 2, 2) for ResNet-18).
        width: channels of the first stage (64 for the standard ResNet-18).
        in_channels: input channels.
    """

    def __init__(
        self,
        blocks_per_stage: tuple[int, int, int, int] = (2, 2, 2, 2),
        width: int = 64,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.width = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        channels = width
        for index, blocks in enumerate(blocks_per_stage):
            out_channels = width * 2**index
            layers = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


def cifar_resnet18(width: int = 64, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool) returning (B, 8 * width) pooled features.

    ``width=64`` is the paper's encoder (512-d features); ``width=16`` (128-d) is small
    enough for CPU tests and demos.
    """
    return CifarResNet((2, 2, 2, 2), width=width, in_channels=in_channels)


def torchvision_cifar_resnet18() -> nn.Module:
    """torchvision's ``resnet18`` with the CIFAR stem (3x3 stride-1 conv1, no max-pool) and ``fc``
    replaced by ``Identity``: the same network as ``cifar_resnet18(width=64)``, whose state
    dicts it loads strictly."""
    import torchvision

    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    model.feature_dim = 512  # type: ignore[assignment]
    return model


def _torchvision_backbone(name: str) -> nn.Module:
    import torchvision

    model = getattr(torchvision.models, name)()
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    model.feature_dim = feature_dim  # type: ignore[assignment]
    return model


#: backbone names accepted by :func:`build_backbone`
BACKBONES = ("cifar_resnet18", "torchvision_cifar_resnet18", "resnet18", "resnet34", "resnet50")


def build_backbone(arch: str = "cifar_resnet18", width: int = 64) -> nn.Module:
    """Build an encoder returning pooled features, with a ``feature_dim`` attribute.

    Args:
        arch: ``"cifar_resnet18"`` (this package's, any ``width``),
            ``"torchvision_cifar_resnet18"``, or a torchvision ImageNet ResNet
            (``"resnet18"``, ``"resnet34"``, ``"resnet50"``; ``fc`` removed).
        width: first-stage channels of ``cifar_resnet18``; ignored otherwise.
    """
    if arch == "cifar_resnet18":
        return cifar_resnet18(width=width)
    if arch == "torchvision_cifar_resnet18":
        return torchvision_cifar_resnet18()
    if arch in BACKBONES:
        return _torchvision_backbone(arch)
    raise ValueError(f"unknown backbone {arch!r}; choose from {list(BACKBONES)}")
