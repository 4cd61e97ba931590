"""The format of a distilled set: one folder, written, read and verified here and nowhere else.

Distill writes a set, evaluate and storage read it, export packs it and :func:`hellodd.load` opens the
package; all of them go through this module::

    <set>/images.safetensors    uint8 images [N, C, H, W] and int64 labels, the manifest as metadata
    <set>/manifest.json         classes, IPC, variant, source, resolution; bytes and sha256 of the images
    <set>/adapters.safetensors  the view-adapted LoRA adapters that label this set (distill.adapt_steps > 0),
                                bound to the stage-3 adapters they continued and to these images
    <set>/png/<class>/*.png     an ImageFolder tree of the same images, and contact_sheet.png, for eyes

A part whose recorded sha256 (or size) differs from the file on disk is refused with one line naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hellodd.config import IGNORE_INDEX, Config
from hellodd.errors import UserError
from hellodd.io import (
    digest,
    file_metadata,
    load_tensors,
    read_json,
    save_tensors,
    sha256,
    tensor_sha256,
    write_json,
)
from hellodd.layout import (
    ADAPTER_FILE,
    CONTACT_SHEET,
    IMAGES_FILE,
    MANIFEST_FILE,
    PNG_FOLDER,
    class_folder,
    distilled_dir,
    projector_path,
)

EXPORT_FORMAT, EXPORT_VERSION = "hellodd-light-set", 1  # what `hellodd export` writes, `hellodd.load` reads


# --------------------------------------------------------------------------------------------------
# checksums


def file_record(path: Path) -> dict:
    """What a manifest records of a part: its size and sha256."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256(path)}


def verify_file(path: Path, record: dict) -> None:
    """Refuse a part that is missing, truncated or altered since ``record`` was made."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing (the manifest lists it)")
    size = path.stat().st_size
    if "bytes" in record and size != record["bytes"]:
        raise UserError(
            f"{path}: {size:,} bytes, the manifest says {record['bytes']:,} (truncated or replaced)"
        )
    if "sha256" in record and sha256(path) != record["sha256"]:
        raise UserError(f"{path}: its sha256 differs from the manifest's (the file was altered)")


def sealed(manifest: dict) -> dict:
    """The manifest with ``manifest_sha256``: the digest of everything else in it, so an edited manifest is
    detected like an edited part."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return {**body, "manifest_sha256": digest(body)}


def read_export_manifest(root: Path) -> dict:
    """An export's manifest, checked: format, version and its own digest (not yet the parts)."""
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        raise UserError(f"{root}: not a hellodd export ({MANIFEST_FILE} missing)")
    m = read_json(path)
    if not isinstance(m, dict) or m.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path}: not a hellodd light-label set manifest")
    if m.get("format_version") != EXPORT_VERSION:
        raise UserError(
            f"{path}: format version {m.get('format_version')}; this hellodd reads {EXPORT_VERSION}"
        )
    if sealed(m)["manifest_sha256"] != m.get("manifest_sha256"):
        raise UserError(f"{path}: its content differs from its recorded digest (the manifest was altered)")
    return m


# --------------------------------------------------------------------------------------------------
# writing


def contact_sheet(
    images: torch.Tensor, labels: torch.Tensor, classes: list[str], path: Path, scale: int = 2
) -> None:
    """Every image, one row per class with its name on the left."""
    from PIL import Image, ImageDraw

    ncls = len(classes)
    per = max(int((labels == c).sum()) for c in range(ncls))
    s = images.shape[-1] * scale
    pad, label_w = 2, 110
    sheet = Image.new("RGB", (label_w + per * (s + pad), ncls * (s + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for c in range(ncls):
        y = c * (s + pad)
        draw.text((4, y + s // 2 - 6), classes[c][:18], fill="black")
        for i, img in enumerate(images[labels == c]):
            arr = img.expand(3, -1, -1).permute(1, 2, 0).numpy()
            tile = Image.fromarray(arr).resize((s, s), Image.NEAREST)
            sheet.paste(tile, (label_w + i * (s + pad), y))
    with open(path.with_suffix(".tmp.png"), "wb") as f:
        sheet.save(f, format="PNG")
    os.replace(path.with_suffix(".tmp.png"), path)


def write_png_tree(images: torch.Tensor, labels: torch.Tensor, classes: list[str], root: Path) -> int:
    """An ImageFolder tree of the images (one PNG each); returns the bytes written."""
    from PIL import Image

    total = 0
    counters: dict[int, int] = {}
    for img, y in zip(images, labels.tolist()):
        i = counters.get(y, 0)
        counters[y] = i + 1
        d = root / class_folder(y, classes[y])
        d.mkdir(parents=True, exist_ok=True)
        arr = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
        p = d / f"{i:04d}.png"
        Image.fromarray(arr).save(p)
        total += p.stat().st_size
    return total


def class_pictures(images: torch.Tensor, labels: torch.Tensor, classes: list[str], out: Path) -> int:
    """A classification set's pictures: the PNG tree and the contact sheet; returns the PNGs' bytes."""
    png_bytes = write_png_tree(images, labels, classes, out / PNG_FOLDER)
    contact_sheet(images, labels, classes, out / CONTACT_SHEET)
    return png_bytes


def write_set(
    out: Path, images: torch.Tensor, labels: torch.Tensor, manifest: dict, pictures=class_pictures
) -> dict:
    """Write a set's images and labels (a class per image, or a class map per image), its pictures
    (``pictures(images, labels, classes, out)`` -> PNG bytes) and ``manifest.json``; returns the manifest."""
    out = Path(out)
    classes = manifest["classes"]
    save_tensors(out / IMAGES_FILE, {"images": images, "labels": labels}, manifest)
    png_bytes = pictures(images, labels, classes, out)
    manifest = {
        **manifest,
        "bytes": {
            IMAGES_FILE: (out / IMAGES_FILE).stat().st_size,
            "png_total": png_bytes,
            "raw_uint8": images.numel(),
        },
        "images_sha256": sha256(out / IMAGES_FILE),
    }
    write_json(out / MANIFEST_FILE, manifest)
    return manifest


# --------------------------------------------------------------------------------------------------
# reading


def read_images(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Images (uint8 [N,C,H,W]), labels (int64 [N]) and metadata of an ``images.safetensors`` file."""
    tensors, meta = load_tensors(path)
    if "images" not in tensors or "labels" not in tensors or tensors["images"].dtype != torch.uint8:
        raise UserError(f"{path}: not a hellodd distilled set (needs uint8 'images' and 'labels')")
    images, labels = tensors["images"], tensors["labels"].long()
    if images.ndim != 4 or len(images) != len(labels):
        raise UserError(f"{path}: {tuple(images.shape)} images for {len(labels)} labels")
    classes = meta.get("classes")
    ids = labels[labels != IGNORE_INDEX] if labels.ndim == 3 else labels  # class maps may mark pixels ignored
    if classes is not None and len(ids) and not 0 <= int(ids.min()) <= int(ids.max()) < len(classes):
        raise UserError(f"{path}: labels outside the {len(classes)} classes of its manifest")
    return images, labels, meta


def read_set(directory) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A set written by :func:`write_set`, checked against the sha256 its ``manifest.json`` records."""
    d = Path(directory)
    path = d / IMAGES_FILE
    if not path.is_file():
        raise UserError(f"{d}: no distilled set ({IMAGES_FILE} missing)")
    if (d / MANIFEST_FILE).is_file():
        want = read_json(d / MANIFEST_FILE).get("images_sha256")
        if want:
            verify_file(path, {"sha256": want})
    return read_images(path)


def adapters_for(directory, stage3: Path, images: torch.Tensor | None = None) -> Path:
    """The adapters that label the set in ``directory``: its view-adapted ones if it has them, else ``stage3``.

    View-adapted adapters are bound to the stage-3 file they continued (sha256) and, given ``images``, to the
    images they were adapted to: adapters made from anything else are refused, never used."""
    adapted = Path(directory) / ADAPTER_FILE
    if not adapted.is_file():
        return Path(stage3)
    meta = file_metadata(adapted)
    if meta.get("adapted_from") != sha256(stage3) or (
        images is not None and meta.get("adapted_to_images") != tensor_sha256(images)
    ):
        raise UserError(
            f"{adapted}: adapted from other stage-3 adapters or to other images than this set's; "
            "run 'hellodd distill' again (same --out and settings)"
        )
    return adapted


def projector_for(cfg: Config, images: torch.Tensor | None = None) -> Path:
    """The adapters that label this distilled set: its view-adapted ones if distill made them, else stage 3's.

    View-adapted adapters are bound to the stage-3 file they continued (sha256) and, given ``images``, to the
    images they were adapted to: adapters made from anything else are refused, never used."""
    return adapters_for(distilled_dir(cfg), projector_path(cfg), images)
