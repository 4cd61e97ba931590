"""Segmenters for teachers and students: torchvision's segmentation models (``weights=None``) and a small
fully convolutional ConvNet for the demo.  Each takes float images in ``[0, 1]`` with the dataset's channels
and returns per-pixel logits ``[N, K, H, W]`` at the input's resolution.

===========================  =====================================================================
convnet-fcn[-wM]             three [conv3x3, instance norm, ReLU, avgpool2] stages of widths M/4, M/2, M
                             (default M = 128); a 1x1 classifier on each of the last two stages, summed
                             after bilinear upsampling (FCN-16s style), upsampled to the input
lraspp_mobilenet_v3_large    torchvision, random weights
deeplabv3_mobilenet_v3_large torchvision, random weights
deeplabv3_resnet50           torchvision, random weights
fcn_resnet50                 torchvision, random weights
===========================  =====================================================================
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from hellodd.config.tasks import TORCHVISION_SEGMENTERS
from hellodd.errors import UserError
from hellodd.models import IMAGENET_MEAN, IMAGENET_STD, InputAdapter
from hellodd.models import Classifier as Segmenter  # the same wrapper: adapter, network, build spec


class ConvNetFCN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 128):
        super().__init__()
        widths = [max(8, width // 4), max(8, width // 2), width]

        def stage(c_in, c_out):
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.GroupNorm(c_out, c_out, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            )

        self.stages = nn.ModuleList([stage(c, w) for c, w in zip([in_channels, *widths[:-1]], widths)])
        self.score_mid = nn.Conv2d(widths[1], num_classes, 1)
        self.score_top = nn.Conv2d(widths[2], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        h1 = self.stages[0](x)
        h2 = self.stages[1](h1)
        h3 = self.stages[2](h2)
        mid = self.score_mid(h2)
        top = F.interpolate(self.score_top(h3), size=mid.shape[-2:], mode="bilinear", align_corners=False)
        return F.interpolate(mid + top, size=size, mode="bilinear", align_corners=False)


class TorchvisionSegmenter(nn.Module):
    """A torchvision segmentation model's ``"out"`` logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def build_segmenter(arch: str, num_classes: int, in_channels: int, image_size: int) -> Segmenter:
    """A randomly initialised segmenter for ``[N, in_channels, image_size, image_size]`` inputs."""
    spec = {"arch": arch, "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    m = re.fullmatch(r"convnet-fcn(?:-w(\d+))?", arch)
    if m:
        if image_size < 8:
            raise UserError(f"{arch}: a {image_size}-px input is too small for its three pooling stages")
        net = ConvNetFCN(in_channels, num_classes, int(m.group(1) or 128))
        half = (0.5,) * 3
        return Segmenter(InputAdapter(in_channels, in_channels, None, half, half), net, spec)
    if arch not in TORCHVISION_SEGMENTERS:
        raise UserError(
            f"unknown segmentation architecture {arch!r} (choose from convnet-fcn, convnet-fcn-wM, "
            f"{', '.join(TORCHVISION_SEGMENTERS)})"
        )
    import torchvision.models.segmentation as tvs  # lazy: its import costs about as much as torch's

    kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    if arch != "lraspp_mobilenet_v3_large":
        kwargs["aux_loss"] = False
    net = TorchvisionSegmenter(getattr(tvs, arch)(**kwargs))
    return Segmenter(InputAdapter(in_channels, 3, None, IMAGENET_MEAN, IMAGENET_STD), net, spec)
