"""The segmentation task's distilled set: a subset of whole training images with their class maps (the
supplement's B.4 keeps 10,000 SA-1B images, 0.09%), ``distill.subset`` of them (a count, or a fraction of
the training set), chosen at random (``distill.init=random``, the baseline of every report).

Outputs in ``<out>/distill/subset<N>-random/``: ``images.safetensors`` (uint8 images and uint8 class maps),
``manifest.json``, ``png/images`` and ``png/masks`` and ``contact_sheet.png`` (scenes above their maps).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from hellodd.config import Config
from hellodd.errors import UserError
from hellodd.layout import CONTACT_SHEET, PNG_FOLDER, distilled_dir
from hellodd.records import write_config, write_results
from hellodd.segmentation.data import load_segmentation
from hellodd.segmentation.sheet import palette, scene_sheet
from hellodd.sets import write_set

SUBSET_STREAM = 5 * 10**6  # the subset's generator: seed + this, never a stream of another stage


def subset_size(cfg: Config, available: int) -> int:
    """``distill.subset`` as a count: itself when >= 1, else that fraction of ``available`` (at least 1)."""
    s = cfg.distill.subset
    n = int(s) if s >= 1 else max(1, round(s * available))
    if n > available:
        raise UserError(
            f"--set distill.subset={s:g}: {n} images asked for, the training split has {available}"
        )
    return n


def mask_pictures(images: torch.Tensor, masks: torch.Tensor, classes: list[str], out: Path) -> int:
    """A segmentation set's pictures: each image and its coloured map as PNGs, and a sheet of the first 16."""
    from PIL import Image

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


def run_subset(cfg: Config, fabric) -> dict:
    d = cfg.distill
    if d.init != "random":
        raise UserError(
            f"--set distill.init={d.init}: segmentation sets are random subsets for now (distill.init=random)"
        )
    t0 = time.perf_counter()
    bundle = load_segmentation(cfg.data, cfg.engine.seed)
    train = bundle.train
    n = subset_size(cfg, len(train))
    g = torch.Generator().manual_seed(cfg.engine.seed + SUBSET_STREAM)
    idx = torch.randperm(len(train), generator=g)[:n].sort().values
    images, masks = train.images[idx], train.masks[idx]
    out = distilled_dir(cfg)
    manifest = {
        "task": "segmentation",
        "classes": bundle.classes,
        "count": n,
        "variant": "random",
        "source": bundle.source,
        "resolution": cfg.data.image_size,
        "train_indices": idx.tolist(),
    }
    metrics = {"images": n, "of": len(train), "source": bundle.source}
    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg, "distill")
        manifest = write_set(out, images, masks, manifest, pictures=mask_pictures)
        metrics["seconds"] = time.perf_counter() - t0
        write_results(out, metrics, {"images_bytes": manifest["bytes"]})
    fabric.barrier()
    metrics["summary"] = f"distill random subset: {n} of {len(train)} training images ({bundle.source})"
    return metrics
