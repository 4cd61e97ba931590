"""The projector as a module: a frozen image encoder and a linear head over the classes (supplement A.3).

    u(x)     = E(x)                                  frozen pretrained image encoder, D-dim features
    g(x)     = s * n(u(x)) @ (W0 + dW)^T + b0        logits over the C classes
    n(u)     = u / ||u||   (CLIP bases)   or   u   (bases without a text tower)

A dense projector (segmentation) applies the same head at every location of the encoder's feature map,
u(x) in [N, D, h, w], and upsamples the logit map to the input's size (bilinear): the class-name head a
base brings for whole images labels each location, as MaskCLIP applies CLIP's text embeddings per patch.
A base whose last features are too coarse for pixels also hands over intermediate maps: a skip head (one
1x1 convolution per map, FCN's skips, zero at the start) adds their logits.  Nothing public gives its
start, so it is learnt in full and stored beside the adapters (its bytes are counted with theirs).

Each kind of base (:mod:`.clip`, :mod:`.efficientnet`, :mod:`.sam`) builds one from its encoder, its head's
start and a :class:`BaseInfo`; :mod:`.bases` picks the kind by name (:mod:`.registry`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hellodd.augment import resize


def stored_parameters(p: nn.Module) -> dict[str, torch.Tensor]:
    """What a projector file stores: the LoRA factors, the skip head's weights, and a head learnt in full (a base
    without class names); all the rest is public or derived from class names."""
    module = getattr(p, "module", p)
    learnt = ("skip.", "head.") if getattr(module, "learnt_head", False) else ("skip.",)
    return {n: t for n, t in module.named_parameters() if "lora_" in n or n.startswith(learnt)}


class SkipHead(nn.Module):
    """Logits from intermediate feature maps: a 1x1 convolution per map, summed on the finest map's grid."""

    def __init__(self, channels: list[int], num_classes: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in channels)
        for conv in self.convs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = maps[0].shape[-2:]
        out = [
            F.interpolate(c(m), size=size, mode="bilinear", align_corners=False)
            for c, m in zip(self.convs, maps)
        ]
        return torch.stack(out).sum(0)


def cache_key(**parts) -> str:
    """A short digest naming a cached head initialisation by everything it was derived from."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


# what a base's record holds (``recorded``): where its weights and its head's start came from, what a load
# checks.  How the base computes (image size, normalisation, s, n) follows from the config and its kind.
RECORDED = (
    "base",
    "pretrained",
    "checkpoint",
    "checkpoint_sha256",
    "weights_sha256",
    "head_init",
    "head_file",
)


@dataclass(frozen=True)
class BaseInfo:
    """What a projector's base is: how it reads images and scales its head (s, n), and where its weights and
    its head's start came from.  Its record (:meth:`as_dict`: the ``recorded`` fields) goes with the adapters
    (``base_info``) and into the projector's metrics; the adapter file's bytes are label bytes, so it records
    what a load checks and a reader needs, no more."""

    base: str  # projector.base, e.g. ``clip:RN50``
    image_size: int  # the encoder's input side: images are resized to it
    mean: tuple[float, float, float]  # the input normalisation the weights were trained with
    std: tuple[float, float, float]
    pretrained: bool  # public or user's weights (False: seeded random weights)
    head_init: str  # how the head started, in words
    head_file: str | None  # the cache file of the head's start (None: nothing derived to cache)
    scale: float = 1.0  # s, the logit scale
    normalize: bool = False  # n: L2-normalised features (CLIP's joint space)
    dense: bool = False  # a logit map per image (the head at every location)
    learnt_head: bool = False  # the head starts at zero and is learnt in full, stored with the adapters
    checkpoint: str | None = None  # the user's weights file, as given
    checkpoint_sha256: str | None = None  # ... and its hash: a loaded projector refuses any other file
    weights_sha256: str | None = None  # packaged weights' hash
    prototype_font_sha256: str | None = None  # the font a prototype head was drawn in
    recorded: tuple[str, ...] = RECORDED  # the fields of the record, in its order

    def as_dict(self) -> dict:
        """The record: the ``recorded`` fields, as written with the adapters."""
        return {k: getattr(self, k) for k in self.recorded}


class Projector(nn.Module):
    """Frozen encoder + head; ``forward`` and ``encode`` take [0,1] images of any channels/size.

    ``adapter_rng`` is the CPU generator's state where the base's seeded build left it (:func:`~hellodd.
    projector.bases.build_base`): the adapters' random start is drawn from it, so base and adapters are one
    seeded stream that leaves the caller's generator alone."""

    def __init__(
        self,
        encoder: nn.Module,
        *,
        head_weight: torch.Tensor,
        head_bias: torch.Tensor | None,
        info: BaseInfo,
        classes: list[str],
    ):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(head_weight.shape[1], head_weight.shape[0], bias=head_bias is not None)
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
            if head_bias is not None:
                self.head.bias.copy_(head_bias)
        self.register_buffer("scale", torch.tensor(float(info.scale)), persistent=False)
        self.register_buffer("mean", torch.tensor(info.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(info.std).view(1, 3, 1, 1), persistent=False)
        self.info, self.classes = info, list(classes)
        self.adapter_rng: torch.Tensor | None = None
        taps = getattr(encoder, "tap_channels", []) if info.dense else []
        self.skip = SkipHead(taps, head_weight.shape[0]) if taps else None
        self.requires_grad_(False)
        # channels-last convolution weights (activations follow): EfficientNet-Lite's depthwise layers run
        # faster per LoRA training step and per eager labelling batch on a CPU (docs/performance.md)
        self.encoder.to(memory_format=torch.channels_last)

    @property
    def image_size(self) -> int:
        return self.info.image_size

    @property
    def normalize(self) -> bool:
        return self.info.normalize

    @property
    def dense(self) -> bool:
        return self.info.dense

    @property
    def learnt_head(self) -> bool:
        return self.info.learnt_head

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen BatchNorm statistics: nothing but the LoRA factors is state
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = resize(x, self.image_size)
        if x.shape[1] == 1:  # grey after the resize: one channel resampled, not three identical ones
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """u(x): image-encoder features before normalisation, [N, D] (dense: [N, D, h, w])."""
        return self.encoder(self.prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.encode(x)
        if not self.dense:
            return self.scale * self.head(F.normalize(u, dim=-1) if self.normalize else u)
        u, maps = u if isinstance(u, tuple) else (u, [])
        u = u.permute(0, 2, 3, 1)  # the head (and its LoRA) runs on the last dimension, per location
        logits = (self.scale * self.head(F.normalize(u, dim=-1) if self.normalize else u)).permute(0, 3, 1, 2)
        if self.skip is not None:
            skip = self.skip(maps)
            logits = F.interpolate(logits, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
