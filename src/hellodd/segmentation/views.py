"""Dense targets follow their views: the crop, flip and CutMix of an image move its class map (or a map of
soft logits) with it, so each pixel's label stays the label of what the pixel shows.

The geometry is :mod:`hellodd.augment`'s: the same :class:`~hellodd.augment.CropParams` and
:class:`~hellodd.augment.CutMixParams` resample the images (bilinear) and their maps (nearest for class
ids, bilinear for logits).  A view's pixels that fall outside its image get :data:`IGNORE` (class maps) or
are marked invalid (logit maps), as they show only the zero padding.
"""

from __future__ import annotations

import torch

from hellodd.augment import CropParams, CutMixParams, apply_crops, apply_cutmix
from hellodd.segmentation.data import IGNORE


def crop_masks(masks: torch.Tensor, p: CropParams, size: int | None = None) -> torch.Tensor:
    """uint8/long class maps ``[N, H, W]`` through the views' boxes, nearest-neighbour: long ``[N, S, S]``.
    Pixels outside the image are :data:`IGNORE`."""
    import torch.nn.functional as F

    size = size or masks.shape[-1]
    shifted = (masks.long() + 1).float()[:, None]  # 0 marks "outside" after zero padding
    n = masks.shape[0]
    sx = torch.where(p.flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=masks.device)
    theta[:, 0, 0] = p.w.float() * sx.to(masks.device)
    theta[:, 0, 2] = p.cx.float()
    theta[:, 1, 1] = p.h.float()
    theta[:, 1, 2] = p.cy.float()
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    out = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()
    return torch.where(out == 0, IGNORE, out - 1)


def crop_maps(maps: torch.Tensor, p: CropParams, size: int | None = None) -> torch.Tensor:
    """Float maps ``[N, K, H, W]`` (soft logits) through the views' boxes, bilinear, zero outside."""
    return apply_crops(maps, p, size)


def cutmix_masks(masks: torch.Tensor, mix: CutMixParams | None) -> torch.Tensor:
    """The CutMix box of another view pasted into each class map, as into its image."""
    return masks if mix is None else apply_cutmix(masks[:, None], mix)[:, 0]
