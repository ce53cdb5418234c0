"""Plain and residual CIFAR-10 nets of He et al. 2016, Sec. 4.2, with shortcut options A/B/C.

Usage: `build_model("resnet", 56, shortcut="A")` (853,018 parameters) or
`build_model("plain", 20)` (the same stack with no shortcuts).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from degradation.errors import DegradeError

ARCHS = ("plain", "resnet")
SHORTCUTS = ("A", "B", "C")
INIT_MODES = ("fan_in", "fan_out")
WIDTHS = (16, 32, 64)  # "16, 32, 64 filters" on 32x32, 16x16, 8x8 maps


class ModelConfigError(DegradeError, ValueError):
    """An architecture argument that the paper's family of nets does not allow."""


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ModelConfigError(f"{name}={value!r} is not one of: {', '.join(allowed)}")


def blocks_per_stage(depth: int) -> int:
    """Return n for a depth of 6n+2 weighted layers, refusing any other depth."""
    allowed = "allowed: 8, 14, 20, 26, ...; the paper uses 20, 32, 44, 56, 110, 1202"
    # bool is an int subclass, but depth=True is always a mistake.
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise ModelConfigError(f"depth={depth!r} is not an integer ({allowed})")
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ModelConfigError(f"depth={depth!r} is not 6n+2 for n >= 1 ({allowed})")
    return (depth - 2) // 6


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    # "Convs have no bias": BN right after makes a bias redundant.
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class ShortcutA(nn.Module):
    """Option A: subsample by the stride, then zero-pad the extra channels; no parameters."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Even positions are where the stride-2, padding-1 3x3 conv centres its windows.
        x = x[:, :, :: self.stride, :: self.stride]
        # Zeros are appended after the existing channels (F.pad runs from the last dim back:
        # W, H, then C). Any fixed placement is equivalent, as channels are not ordered.
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra}"


class Projection(nn.Module):
    """Options B/C: a 1x1 conv with the block's stride, followed by BN."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)  # "Every conv is followed by batch normalization"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _make_shortcut(option: str, in_ch: int, out_ch: int, stride: int) -> nn.Module:
    changes = stride != 1 or in_ch != out_ch
    if option == "C" or (option == "B" and changes):
        return Projection(in_ch, out_ch, stride)
    if option == "A" and changes:
        return ShortcutA(in_ch, out_ch, stride)
    return nn.Identity()


class Block(nn.Module):
    """Two 3x3 conv+BN layers; with a shortcut, y = ReLU(BN2(conv2(ReLU(BN1(conv1 x)))) + s(x))."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        # None for plain nets: "the same stack with no shortcuts at all".
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.shortcut is not None:
            # The addition comes after the second BN and before the block's last ReLU.
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarNet(nn.Module):
    """The 6n+2-layer CIFAR-10 net: stem, three stages of n blocks, global pool, fc."""

    def __init__(self, arch: str, depth: int, shortcut: str, num_classes: int) -> None:
        super().__init__()
        n = blocks_per_stage(depth)
        self.arch = arch
        self.depth = depth
        self.shortcut = shortcut if arch == "resnet" else None
        # "First layer: 3x3 conv, 16 filters", then BN and ReLU.
        self.stem = nn.Sequential(
            OrderedDict(conv=_conv3x3(3, WIDTHS[0]), bn=nn.BatchNorm2d(WIDTHS[0]), relu=nn.ReLU())
        )
        stages = []
        in_ch = WIDTHS[0]
        for i, out_ch in enumerate(WIDTHS):
            blocks = []
            for j in range(n):
                # "Stages 2 and 3 downsample with stride 2 in their first conv."
                stride = 2 if i > 0 and j == 0 else 1
                s = (
                    None
                    if self.shortcut is None
                    else _make_shortcut(self.shortcut, in_ch, out_ch, stride)
                )
                blocks.append(Block(in_ch, out_ch, stride, s))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)  # "a 10-way fully connected layer"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        # "global average pooling"; softmax is left to the loss.
        return self.fc(x.mean(dim=(2, 3)))


def _init_weights(model: nn.Module, mode: str) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            # He (MSRA) normal, std = sqrt(2 / fan). The paper does not say fan-in or fan-out
            # for CIFAR; fan-in is the default of Caffe's MSRAFiller (the authors used Caffe).
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        # nn.Linear keeps PyTorch's default init: the paper says nothing about it.


def build_model(
    arch: str, depth: int, shortcut: str = "A", num_classes: int = 10, *, init_mode: str = "fan_in"
) -> nn.Module:
    """Build a plain or residual CIFAR net of the given depth (6n+2) and shortcut option."""
    _one_of("arch", arch, ARCHS)
    blocks_per_stage(depth)
    # Validated for plain nets too, so a typo never passes silently; it has no effect there.
    _one_of("shortcut", shortcut, SHORTCUTS)
    _one_of("init_mode", init_mode, INIT_MODES)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ModelConfigError(f"num_classes={num_classes!r} is not a positive integer")
    model = CifarNet(arch, depth, shortcut, num_classes)
    _init_weights(model, init_mode)
    return model


def count_parameters(model: nn.Module) -> int:
    """Return the number of parameters (BN affine and FC included, buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the 6n+1 3x3 convs in network order: the layers whose weight
    gradients are logged, the same layers as Figure 7's responses."""
    names = ["stem.conv"]
    for i, stage in enumerate(model.stages):
        for j in range(len(stage)):
            names += [f"stages.{i}.{j}.conv1", f"stages.{i}.{j}.conv2"]
    return names


def response_modules(model: nn.Module) -> list[nn.BatchNorm2d]:
    """Return the BN after each 3x3 conv in network order: Figure 7's layer responses."""
    # Fig. 7 measures each 3x3 layer "after BN and before the ReLU or the addition";
    # projection-shortcut BNs follow 1x1 convs and are not among the 6n+1 layers plotted.
    mods: list[nn.BatchNorm2d] = [model.stem.bn]
    for stage in model.stages:
        for block in stage:
            mods += [block.bn1, block.bn2]
    return mods
