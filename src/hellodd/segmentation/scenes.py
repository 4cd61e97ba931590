"""fashion-mnist-scenes: segmentation scenes composed from real Fashion-MNIST garments.

No segmentation dataset can be had offline on the demo machine, so the demo's scenes are made, the same
way every time, from the real garments: each canvas (``size`` x ``size``, grey) holds ``min_objects`` to
``max_objects`` garments, each rescaled by a factor in ``scale`` and pasted at a random position (it may
leave the canvas in part).  Garments are painted in order, so a later one hides what it covers.  A pixel's
class is its garment's where that garment has ink (value above :data:`INK`), ``background`` (0) elsewhere;
garment class ``k`` of Fashion-MNIST is class ``k + 1`` here.

Train scenes draw garments from the train split only and val scenes from the test split only.  The draw is
a function of (seed, split) and :data:`SCENES_VERSION`: a change to the composition rule bumps the version,
and :func:`scenes_id` (part of every run's config) names the version, the settings and the garments' hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

SCENES_VERSION = 1
INK = 25  # a garment pixel above this (of 255) is the garment's; below it the scene behind shows through
# streams of the generator: one per split, so train and val never share a draw
TRAIN_STREAM, VAL_STREAM = 0, 1


@dataclass(frozen=True)
class SceneSettings:
    size: int = 64
    min_objects: int = 2
    max_objects: int = 4
    scale: tuple[float, float] = (0.7, 1.4)


def garment_classes(names: list[str]) -> list[str]:
    """The scenes' classes: background, then the garments' own."""
    return ["background", *names]


def compose(
    garments: torch.Tensor, labels: torch.Tensor, count: int, settings: SceneSettings, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` scenes from ``garments`` (uint8 ``[N, 1, h, w]``) and their labels: uint8 images
    ``[count, 1, S, S]`` and uint8 masks ``[count, S, S]`` (0 = background, label + 1 = a garment)."""
    s = settings
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 1, s.size, s.size, dtype=torch.uint8)
    masks = torch.zeros(count, s.size, s.size, dtype=torch.uint8)
    lo, hi = s.scale
    for i in range(count):
        k = int(torch.randint(s.min_objects, s.max_objects + 1, (1,), generator=g))
        picks = torch.randint(0, len(garments), (k,), generator=g)
        scales = lo + (hi - lo) * torch.rand(k, generator=g)
        for j in range(k):
            piece = garments[picks[j]].float()
            side = max(4, round(piece.shape[-1] * float(scales[j])))
            piece = F.interpolate(piece[None], size=(side, side), mode="bilinear", antialias=True)[0, 0]
            piece = piece.round().clamp(0, 255).to(torch.uint8)
            # top-left corner: the garment may hang over any edge by up to a quarter of its side
            y0, x0 = (
                int(v) for v in torch.randint(-side // 4, s.size - side + side // 4 + 1, (2,), generator=g)
            )
            ys, xs = slice(max(0, y0), min(s.size, y0 + side)), slice(max(0, x0), min(s.size, x0 + side))
            crop = piece[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
            ink = crop > INK
            images[i, 0, ys, xs] = torch.where(ink, crop, images[i, 0, ys, xs])
            masks[i, ys, xs] = torch.where(ink, int(labels[picks[j]]) + 1, masks[i, ys, xs])
    return images, masks


def scenes_id(settings: SceneSettings, garments_sha: str, train: int, val: int, seed: int) -> str:
    """Names one set of scenes: generator version, settings, counts, seed and the source garments' hash."""
    parts = {
        "version": SCENES_VERSION,
        "settings": asdict(settings),
        "garments": garments_sha,
        "train": train,
        "val": val,
        "seed": seed,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return f"scenes-v{SCENES_VERSION}-{digest}"


def synthetic_garments(
    num_classes: int, per_class: int, seed: int, side: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny stand-ins for garments, for the tests: class ``c`` is a filled shape (disc, square, ring, bar, ...)
    with a class-specific grey level and noise, uint8 ``[per_class * num_classes, 1, side, side]``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    r = (xx**2 + yy**2).sqrt()
    shapes = [r < 0.8, (xx.abs() < 0.7) & (yy.abs() < 0.7), (r < 0.9) & (r > 0.5), xx.abs() < 0.3, yy > xx]
    images, labels = [], []
    for c in range(num_classes):
        shape = shapes[c % len(shapes)].float()
        level = 0.35 + 0.6 * ((c * 7) % num_classes) / max(1, num_classes - 1)
        noise = 0.1 * torch.randn(per_class, side, side, generator=g)
        img = (shape * (level + noise)).clamp(0, 1)
        images.append((img * 255).round().to(torch.uint8)[:, None])
        labels.append(torch.full((per_class,), c))
    return torch.cat(images), torch.cat(labels)
