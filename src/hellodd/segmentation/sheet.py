"""A picture of scenes and their class maps, for eyes: each scene above its map, one colour per class."""

from __future__ import annotations

import colorsys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from hellodd.layout import CONTACT_SHEET, PNG_FOLDER
from hellodd.segmentation.data import IGNORE


def palette(num_classes: int) -> torch.Tensor:
    """uint8 RGB ``[256, 3]``: black for class 0 (background), evenly spaced hues for the rest, white for
    :data:`IGNORE`."""
    colours = torch.zeros(256, 3, dtype=torch.uint8)
    for c in range(1, num_classes):
        r, g, b = colorsys.hsv_to_rgb((c - 1) / max(1, num_classes - 1), 0.75, 1.0)
        colours[c] = torch.tensor([round(255 * r), round(255 * g), round(255 * b)], dtype=torch.uint8)
    colours[IGNORE] = 255
    return colours


def scene_sheet(images: torch.Tensor, masks: torch.Tensor, classes: list[str], scale: int = 3) -> Image.Image:
    """Scenes (uint8 ``[N, C, S, S]``) in the top row and their maps below, then a legend of the classes."""
    n, _, s, _ = images.shape
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    maps = palette(len(classes))[masks.long()].permute(0, 3, 1, 2)
    grid = torch.cat([torch.cat(list(rgb), 2), torch.cat(list(maps), 2)], 1)  # [3, 2S, N*S]
    picture = Image.fromarray(grid.permute(1, 2, 0).numpy()).resize(
        (n * s * scale, 2 * s * scale), Image.NEAREST
    )
    legend_h = 14 * ((len(classes) + 3) // 4) + 4
    sheet = Image.new("RGB", (picture.width, picture.height + legend_h), "white")
    sheet.paste(picture, (0, 0))
    draw, colours = ImageDraw.Draw(sheet), palette(len(classes))
    col_w = picture.width // 4
    for c, name in enumerate(classes):
        x, y = (c % 4) * col_w + 4, picture.height + 4 + 14 * (c // 4)
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(colours[c].tolist()), outline="grey")
        draw.text((x + 14, y), name, fill="black")
    return sheet


def mask_pictures(images: torch.Tensor, masks: torch.Tensor, classes: list[str], out: Path) -> int:
    """A segmentation set's pictures: each image and its coloured map as PNGs, and a sheet of the first 16."""
    total, colours = 0, palette(len(classes))
    for kind in ("images", "masks"):
        (out / PNG_FOLDER / kind).mkdir(parents=True, exist_ok=True)
    for i, (img, mask) in enumerate(zip(images, masks)):
        arr = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
        for kind, picture in (
            ("images", Image.fromarray(arr)),
            ("masks", Image.fromarray(colours[mask.long()].numpy())),
        ):
            path = out / PNG_FOLDER / kind / f"{i:05d}.png"
            picture.save(path)
            total += path.stat().st_size
    scene_sheet(images[:16], masks[:16], classes).save(out / CONTACT_SHEET)
    return total
