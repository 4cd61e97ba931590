"""Batch-level augmentation on the training device, with explicit, replayable parameters.

Images travel as uint8 ``[N, C, H, W]`` tensors; every stage converts a batch with :func:`to_float`
and augments it here, on whatever device the batch lives on.  Each augmentation is split into
*sampling* parameters from a ``torch.Generator`` and *applying* them, so the same stream can be
replayed exactly (resume, and the ``stored`` label source, which must label the very views the
student later sees).

A random-resized crop with flip is an affine map per image: ``theta = [[sx*w, 0, cx], [0, h, cy]]``
in ``affine_grid``'s normalised coordinates, with ``sx = -1`` for a flipped image.

The students' stream (:class:`Stream`) decides, for every (epoch, step, rank), which distilled images form
the batch, their random-resized crops and flips, and the batch's CutMix (one lambda, one box, one
permutation); :func:`render` turns them into the batch.  It is a pure function of its seed
(:func:`hellodd.engine.step_generator`), so every label source (:mod:`hellodd.labels`) sees the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hellodd.engine import step_generator


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is returned unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize to ``size`` x ``size``, always in float32: the kernel has no bf16 version,
    and Fabric's bf16-mixed precision hands modules bf16 inputs, so autocast is switched off around it."""
    with torch.autocast(x.device.type, enabled=False):
        return F.interpolate(
            x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255.0).round().to(torch.uint8)


@dataclass
class CropParams:
    """Per-image crop boxes in normalised coordinates (centre, half-extent) and flip flags."""

    cx: torch.Tensor
    cy: torch.Tensor
    w: torch.Tensor  # half-width as a fraction of the image (1 = whole width)
    h: torch.Tensor
    flip: torch.Tensor  # bool

    def as_tensor(self) -> torch.Tensor:
        """[N, 5] float32: cx, cy, w, h, flip (what a stored-label file keeps per view)."""
        return torch.stack([self.cx, self.cy, self.w, self.h, self.flip.float()], 1)

    @staticmethod
    def from_tensor(t: torch.Tensor) -> CropParams:
        return CropParams(t[:, 0], t[:, 1], t[:, 2], t[:, 3], t[:, 4] > 0.5)


def sample_crops(
    n: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    device: torch.device | str = "cpu",
) -> CropParams:
    """torchvision's RandomResizedCrop box distribution (area fraction, log-uniform aspect), vectorised.

    Boxes that would not fit are shrunk into the image rather than re-drawn (torchvision retries ten
    times and then falls back to a centre crop); the area distribution is otherwise the same.
    """
    u = torch.rand(n, 5, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)
    cy = (1 - h) * (2 * u[:, 3] - 1)
    fl = (u[:, 4] < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    params = CropParams(cx, cy, w, h, fl)
    return CropParams(*(t.to(device) for t in (params.cx, params.cy, params.w, params.h, params.flip)))


def sample_shifts(
    n: int, generator: torch.Generator, max_shift: float, flip: bool = True, device="cpu"
) -> CropParams:
    """Padding-style random crop: the whole image shifted by up to ``max_shift`` (fraction of size)."""
    u = torch.rand(n, 3, generator=generator)
    one = torch.ones(n)
    params = CropParams(
        (2 * u[:, 0] - 1) * 2 * max_shift,
        (2 * u[:, 1] - 1) * 2 * max_shift,
        one,
        one,
        (u[:, 2] < 0.5) if flip else one < 0,
    )
    return CropParams(*(t.to(device) for t in (params.cx, params.cy, params.w, params.h, params.flip)))


def identity_crops(n: int, device="cpu") -> CropParams:
    z, o = torch.zeros(n, device=device), torch.ones(n, device=device)
    return CropParams(z, z, o, o, torch.zeros(n, dtype=torch.bool, device=device))


def apply_crops(
    x: torch.Tensor, p: CropParams, size: int | None = None, mode: str = "bilinear"
) -> torch.Tensor:
    """Resample each image of float ``x`` through its box (``mode`` bilinear, or nearest for class maps; zero
    padding outside)."""
    n = x.shape[0]
    size = size or x.shape[-1]
    sx = torch.where(p.flip, -1.0, 1.0).to(x.dtype)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = p.w.to(x.dtype) * sx
    theta[:, 0, 2] = p.cx.to(x.dtype)
    theta[:, 1, 1] = p.h.to(x.dtype)
    theta[:, 1, 2] = p.cy.to(x.dtype)
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def sample_augment(n: int, mode: str, generator: torch.Generator, device="cpu") -> CropParams | None:
    """The views of a training augmentation by name (none | flip | crop-flip | rrc-flip); None for none."""
    if mode == "none":
        return None
    if mode == "flip":
        p = identity_crops(n, device)
        p.flip = (torch.rand(n, generator=generator) < 0.5).to(device)
    elif mode == "crop-flip":
        p = sample_shifts(n, generator, max_shift=1 / 8, device=device)
    elif mode == "rrc-flip":
        p = sample_crops(n, generator, device=device)
    else:
        raise ValueError(f"unknown augmentation {mode!r}")
    return p


def augment(x: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation by name: none | flip | crop-flip | rrc-flip (float input, same size out)."""
    p = sample_augment(x.shape[0], mode, generator, x.device)
    return x if p is None else apply_crops(x, p)


@dataclass
class CutMixParams:
    """One lambda, one box and one permutation per batch (RDED / SRe2L convention)."""

    perm: torch.Tensor  # [N] long
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 in pixels
    lam: float  # fraction of each image that is its own (after box clipping)

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([*self.box, self.lam], dtype=torch.float64)


def sample_cutmix(n: int, size: int, alpha: float, generator: torch.Generator) -> CutMixParams:
    lam = 1.0
    if alpha > 0:  # Beta(alpha, alpha) as a ratio of Gammas, drawn from ``generator`` so it replays
        g = torch._standard_gamma(torch.full((2,), float(alpha)), generator=generator)
        lam = float(g[0] / g.sum())
    u = torch.rand(2, generator=generator)
    perm = torch.randperm(n, generator=generator)
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(size * cut), int(size * cut)
    cy, cx = int(u[0] * size), int(u[1] * size)
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, size)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, size)
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (size * size)
    return CutMixParams(perm, (y0, y1, x0, x1), lam)


def apply_cutmix(x: torch.Tensor, p: CutMixParams) -> torch.Tensor:
    y0, y1, x0, x1 = p.box
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[p.perm.to(x.device), :, y0:y1, x0:x1]
    return out


def mix_targets(t: torch.Tensor, p: CutMixParams) -> torch.Tensor:
    """Mix per-image target vectors with the same lambda and permutation as the images."""
    return p.lam * t + (1.0 - p.lam) * t[p.perm.to(t.device)]


def mixed_one_hot(y: torch.Tensor, num_classes: int, p: CutMixParams | None) -> torch.Tensor:
    """One-hot rows of ``y``, CutMix-mixed like the images when ``p`` is given."""
    t = torch.nn.functional.one_hot(y, num_classes).float()
    return mix_targets(t, p) if p is not None else t


# --------------------------------------------------------------------------------------------------
# the students' stream: which images, crops and CutMix make each batch


class Stream:
    """Seeded batches of the distilled set: indices, crops/flips and CutMix per (epoch, step, rank)."""

    def __init__(
        self,
        n: int,
        size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        min_scale: float = 0.5,
        cutmix_alpha: float = 1.0,
    ):
        self.n, self.size, self.seed, self.rank, self.world = n, size, seed, rank, world
        self.batch = max(1, min(batch_size, n) // world)
        self.min_scale, self.alpha = min_scale, cutmix_alpha
        self.steps_per_epoch = max(1, n // (self.batch * world))

    def batch_params(self, epoch: int, step: int) -> tuple[torch.Tensor, CropParams, CutMixParams | None]:
        order = torch.randperm(self.n, generator=step_generator(self.seed, epoch))
        start = (step * self.world + self.rank) * self.batch
        idx = order[start : start + self.batch]
        g = step_generator(self.seed, epoch, step, self.rank, 7)
        crops = sample_crops(len(idx), g, scale=(self.min_scale, 1.0))
        mix = sample_cutmix(len(idx), self.size, self.alpha, g) if self.alpha > 0 else None
        return idx, crops, mix


def student_stream(ev, images: torch.Tensor, seed: int, rank: int = 0, world: int = 1) -> Stream:
    """The evaluation's stream over ``images`` (``EvaluateConfig``: batch size, crop scale, CutMix alpha)."""
    return Stream(
        len(images), images.shape[-1], ev.batch_size, seed, rank, world, ev.crop_min_scale, ev.cutmix_alpha
    )


def render(
    images: torch.Tensor, idx: torch.Tensor, crops: CropParams, mix: CutMixParams | None, device
) -> torch.Tensor:
    """The batch the student sees: crop+flip each image, then CutMix (box in pixels of the output size)."""
    x = to_float(images[idx].to(device))
    x = apply_crops(
        x, CropParams(*(t.to(device) for t in (crops.cx, crops.cy, crops.w, crops.h, crops.flip)))
    )
    if mix is not None:
        x = apply_cutmix(x, mix)
    return x
