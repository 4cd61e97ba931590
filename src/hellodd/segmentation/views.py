"""Dense targets follow their views: the crop, flip and CutMix of an image move its class map (or a map of
soft logits) with it, so each pixel's label stays the label of what the pixel shows.

The geometry is :mod:`hellodd.augment`'s: the same :class:`~hellodd.augment.CropParams` and
:class:`~hellodd.augment.CutMixParams` resample the images (bilinear) and their maps (nearest for class
ids).  A view's pixels that fall outside its image get :data:`IGNORE`: they show only the zero padding.
"""

from __future__ import annotations

import torch

from hellodd.augment import CropParams, CutMixParams, apply_crops, apply_cutmix
from hellodd.segmentation.data import IGNORE


def crop_masks(masks: torch.Tensor, p: CropParams, size: int | None = None) -> torch.Tensor:
    """uint8/long class maps ``[N, H, W]`` through the views' boxes, nearest-neighbour: long ``[N, S, S]``.
    Pixels outside the image are :data:`IGNORE`."""
    shifted = (masks.long() + 1).float()[:, None]  # 0 marks "outside" after zero padding
    out = apply_crops(shifted, p, size, mode="nearest")[:, 0].long()
    return torch.where(out == 0, IGNORE, out - 1)


def cutmix_masks(masks: torch.Tensor, mix: CutMixParams | None) -> torch.Tensor:
    """The CutMix box of another view pasted into each class map, as into its image."""
    return masks if mix is None else apply_cutmix(masks[:, None], mix)[:, 0]
