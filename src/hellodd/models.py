"""One factory for teachers and students: torchvision classifiers and the dataset-distillation ConvNet.

Every model built here takes float images in ``[0, 1]`` with the dataset's channels and resolution;
an :class:`InputAdapter` in front repeats grey channels to RGB, resizes where an architecture needs a
minimum size, and normalises.  Small inputs (at most 64 px) get the usual stem changes, applied to
torchvision's own modules (no forked model code):

===================  ============================================================================
resnet18/34/50       3x3 stride-1 first conv, no max-pool (the CIFAR "modified ResNet")
mobilenet_v2         stride 1 in the first conv
efficientnet_b0      stride 1 in the first conv
shufflenet_v2_x0_5   stride 1 in the first conv, no max-pool
vgg11                input resized to at least 32 px (five 2x2 pools)
swin_v2_t            input resized to at least 32 px
vit_b_16             built for a 32-px input when the data is smaller than 224 (4 patches of 16 px)
convnet[-dN]         ConvNet-D3 (DD standard: width 128, instance norm, ReLU, 2x2 average pool)
===================  ============================================================================
"""

from __future__ import annotations

import re

import torch
from torch import nn

from hellodd.augment import resize
from hellodd.config import TORCHVISION_ARCHS
from hellodd.errors import UserError
from hellodd.io import load_tensors, save_tensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputAdapter(nn.Module):
    """[0,1] images -> the network's input: channel repeat, optional resize, normalisation."""

    def __init__(self, in_channels: int, out_channels: int, size: int | None, mean, std):
        super().__init__()
        self.in_channels, self.out_channels, self.size = in_channels, out_channels, size
        self.register_buffer("mean", torch.tensor(mean[:out_channels]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std[:out_channels]).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels != self.out_channels:
            x = x.expand(-1, self.out_channels, -1, -1) if self.in_channels == 1 else x.mean(1, keepdim=True)
        if self.size is not None and x.shape[-1] != self.size:
            x = resize(x, self.size)
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``adapter`` then ``net``; ``arch`` and the build arguments travel with the checkpoint."""

    def __init__(self, adapter: InputAdapter, net: nn.Module, spec: dict):
        super().__init__()
        self.adapter, self.net, self.spec = adapter, net, spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapter(x))


class ConvNet(nn.Module):
    """The ConvNet of dataset distillation (DC/DSA/MTT/RDED): depth x [conv3x3, instance norm, ReLU, avgpool2]."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, depth: int = 3, width: int = 128):
        super().__init__()
        layers, c, s = [], in_channels, image_size
        for _ in range(depth):
            layers += [
                nn.Conv2d(c, width, 3, padding=1),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
            c, s = width, s // 2
        if s < 1:
            raise UserError(
                f"convnet-d{depth}: a {image_size}-px input is too small for {depth} pooling layers"
            )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * s * s, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _adapt_small(arch: str, net: nn.Module) -> None:
    if arch.startswith("resnet"):
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif arch in ("mobilenet_v2", "efficientnet_b0"):
        net.features[0][0].stride = (1, 1)
    elif arch.startswith("shufflenet"):
        net.conv1[0].stride = (1, 1)
        net.maxpool = nn.Identity()


def build_model(arch: str, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    """Build a randomly initialised classifier for ``[N, in_channels, image_size, image_size]`` inputs."""
    spec = {"arch": arch, "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    m = re.fullmatch(r"convnet(?:-d(\d))?(?:-w(\d+))?", arch)
    if m:
        depth, width = int(m.group(1) or 3), int(m.group(2) or 128)
        net = ConvNet(in_channels, num_classes, image_size, depth, width)
        mean, std = (0.5,) * 3, (0.5,) * 3
        return Classifier(InputAdapter(in_channels, in_channels, None, mean, std), net, spec)
    if arch not in TORCHVISION_ARCHS:
        raise UserError(
            f"unknown architecture {arch!r} (choose from convnet, convnet-dN, {', '.join(TORCHVISION_ARCHS)})"
        )
    import torchvision.models as tvm  # lazy: its import costs about as much as torch's, only these need it

    small = image_size <= 64
    size = None
    kwargs = {"weights": None, "num_classes": num_classes}
    if arch == "vit_b_16":
        size = 224 if image_size >= 224 else 32
        kwargs["image_size"] = size
    elif arch in ("vgg11", "swin_v2_t") and image_size < 32:
        size = 32
    net = getattr(tvm, arch)(**kwargs)
    if small:
        _adapt_small(arch, net)
    return Classifier(InputAdapter(in_channels, 3, size, IMAGENET_MEAN, IMAGENET_STD), net, spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_classifier(path, device: torch.device | str = "cpu", build=None) -> tuple[Classifier, dict]:
    """Rebuild a network from a safetensors checkpoint written by :func:`save_classifier`; ``build(spec)``
    makes the empty network (default: :func:`build_model`; :func:`hellodd.tasks.load_network` passes one
    for either task)."""
    tensors, meta = load_tensors(path)
    spec = meta.get("spec")
    if not spec:
        raise UserError(f"{path}: not a hellodd model checkpoint (no model spec in its metadata)")
    model = build(spec) if build else build_model(**spec)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit {spec['arch']} ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), meta


def save_classifier(path, model: Classifier, **meta) -> None:
    model = getattr(model, "module", model)  # unwrap DDP / Fabric wrappers
    model = getattr(model, "_forward_module", model)
    save_tensors(path, model.state_dict(), {"spec": model.spec, **meta})
