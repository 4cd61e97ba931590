"""The initial images of stage 4: RDED selection (or random real images), per class, cached per class and whole.

RDED (Sun et al., CVPR 2024; docs/method.md), per class c, deterministic for the seed:

1. draw ``candidates_per_class`` real training images of class c;
2. from each, ``crops_per_image`` square random-resized crops (area 8-100%, aspect 1), resampled to
   ``S / factor`` px (S = the dataset's resolution);
3. realism score of a crop = CE(observer(crop), c), with the crop zero-padded (centred) to S px as RDED's
   code does (for factor 1 the crop is already S px); the observer is the final teacher;
4. keep each image's best crop, rank the images by that CE and keep the best ``IPC * factor**2`` crops;
5. stitch: slot k (row-major) of image t receives crop ``k * IPC + t``.

``factor`` is 2 for 224-px data (four 112-px patches per image, RDED's setting) and 1 for tiny images: a
14-px quarter of a 28-px Fashion-MNIST image no longer shows a garment, so the demo preset uses 1.

Each class draws from its own generator, so the selection does not depend on the number of processes: the
ranks split the classes and every rank holds the gathered result.  The cache: each finished class is kept
in ``init-classes/`` until the whole selection is written to ``init.safetensors``, both bound to
:func:`selection_key` (a file made from other inputs is recomputed, never reused).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from hellodd import engine
from hellodd.augment import CropParams, apply_crops, sample_crops, to_float
from hellodd.config import Config
from hellodd.data import class_indices
from hellodd.errors import UserError
from hellodd.io import digest, load_tensors, save_tensors, sha256
from hellodd.layout import INIT_CLASSES_FOLDER, INIT_FILE, distilled_dir


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    h = x.shape[-1]
    if h == size:
        return x
    a = (size - h) // 2
    return F.pad(x, (a, size - h - a, a, size - h - a))


@torch.inference_mode()
def rded_class(
    observer,
    images: torch.Tensor,
    c: int,
    ipc: int,
    factor: int,
    crops: int,
    gen: torch.Generator,
    batch: int = 256,
    min_scale: float = 0.08,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RDED for one class: returns stitched images [IPC, C, S, S] (float), the chosen boxes [IPC*f^2, 5] and scores."""
    n, _, s, _ = images.shape
    need = ipc * factor * factor
    if n < need:
        raise UserError(
            f"--set distill.ipc={ipc}: class {c} has {n} candidate images, fewer than IPC x factor^2 = {need} "
            "(lower distill.ipc or distill.factor, or raise distill.candidates_per_class)"
        )
    size = s // factor
    boxes = sample_crops(n * crops, gen, scale=(min_scale, 1.0), ratio=(1.0, 1.0), flip=False).as_tensor()
    src = torch.arange(n).repeat_interleave(crops)
    dev = next(observer.parameters()).device
    ce = torch.empty(n * crops)
    for i in range(0, n * crops, batch):
        x = to_float(images[src[i : i + batch]]).to(dev)
        patch = apply_crops(x, CropParams.from_tensor(boxes[i : i + batch].to(dev)), size)
        logits = observer(_pad_to(patch, s)).float()
        ce[i : i + batch] = F.cross_entropy(
            logits, torch.full((len(x),), c, device=dev), reduction="none"
        ).cpu()
    ce = ce.view(n, crops)
    best_crop = ce.argmin(1)
    best_ce = ce.gather(1, best_crop[:, None])[:, 0]
    order = best_ce.argsort()[:need]
    chosen = order * crops + best_crop[order]
    return chosen, boxes[chosen], best_ce[order]


def cut_patches(images: torch.Tensor, src: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    return apply_crops(to_float(images[src]), CropParams.from_tensor(boxes), size)


def stitch(patches: torch.Tensor, ipc: int, factor: int) -> torch.Tensor:
    """[IPC*f^2, C, h, w] -> [IPC, C, f*h, f*w]; slot k (row-major) of image t holds patch k*IPC + t."""
    _, ch, h, w = patches.shape
    grid = patches.view(factor, factor, ipc, ch, h, w)  # (row, col, t, ...)
    return grid.permute(2, 3, 0, 4, 1, 5).reshape(ipc, ch, factor * h, factor * w)


def unstitch(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse of :func:`stitch` for a batch: [J, C, S, S] -> [J, f*f, C, S/f, S/f] (slot-major per image)."""
    j, ch, s, _ = images.shape
    h = s // factor
    return (
        images.view(j, ch, factor, h, factor, h)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(j, factor * factor, ch, h, h)
    )


SELECTION_FIELDS = ("init", "ipc", "factor", "candidates_per_class", "crops_per_image", "crop_min_scale")


def init_inputs(cfg: Config, observer_path: str | None) -> dict:
    """What the initial images depend on: the data, the seed, the selection settings and the observer."""
    return {
        "data": {k: v for k, v in asdict(cfg.data).items() if k != "workers"},
        "seed": cfg.engine.seed,
        "selection": {k: getattr(cfg.distill, k) for k in SELECTION_FIELDS},
        "observer_sha256": sha256(observer_path) if observer_path and cfg.distill.init == "rded" else None,
        "generators": "per class",  # select_class: a selection cached by the one-generator code is not reused
    }


def selection_key(cfg: Config, observer_path: str | None) -> str:
    """The digest of :func:`init_inputs`: what binds the cached selection (and, through it, the update)."""
    return digest(init_inputs(cfg, observer_path))


SELECTION_STREAM = 3 * 10**6  # per-class generators: step_generator(seed, SELECTION_STREAM, class)


def select_class(cfg: Config, bundle, observer, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class ``c``'s initial images [IPC, C, S, S] and their full-resolution patches [IPC*f^2, C, S, S] (slot
    order), from the class's own generator: the same whichever rank selects it."""
    d = cfg.distill
    gen = engine.step_generator(cfg.engine.seed, SELECTION_STREAM, c)
    pool_idx = class_indices(bundle.train.targets, c)
    pick = pool_idx[torch.randperm(len(pool_idx), generator=gen)]
    if d.init == "random":
        if len(pick) < d.ipc:
            raise UserError(f"--set distill.ipc={d.ipc}: class {c} has only {len(pick)} training images")
        x = to_float(torch.stack([bundle.train[i][0] for i in pick[: d.ipc].tolist()]))
        return x, x
    cand = torch.stack([bundle.train[i][0] for i in pick[: d.candidates_per_class].tolist()])
    chosen, boxes, _ = rded_class(
        observer, cand, c, d.ipc, d.factor, d.crops_per_image, gen, d.score_batch_size, d.crop_min_scale
    )
    src = chosen // d.crops_per_image
    size = cand.shape[-1]
    images = stitch(cut_patches(cand, src, boxes, size // d.factor), d.ipc, d.factor)
    full = cut_patches(cand, src, boxes, size)  # slot order: patch k*IPC+t -> image t slot k
    return images, full.view(d.factor * d.factor, d.ipc, *full.shape[1:]).transpose(0, 1).flatten(0, 1)


def select(cfg: Config, fabric, bundle, observer, folder: Path | None = None, key: str = ""):
    """RDED (or random) initial images for every class, the classes split across ranks in blocks and
    gathered on every rank in class order: (images, labels, full-resolution patches).

    Resumable: each finished class is kept in ``folder`` (one file per class, with ``key``, the digest of
    everything the selection depends on); a class file with another key is recomputed."""
    d = cfg.distill
    classes = engine.block(bundle.num_classes, fabric.global_rank, fabric.world_size)
    bar = engine.progress(
        fabric, total=len(classes), desc=f"distill init ({d.init}, IPC {d.ipc})", unit="class"
    )
    imgs, fulls = [], []
    for done, c in enumerate(classes, 1):
        path = folder / f"class{c:05d}.safetensors" if folder is not None else None
        kept = load_tensors(path) if path is not None and path.is_file() else None
        if kept and kept[1].get("key") == key:
            x, full = kept[0]["images"], kept[0]["full_patches"]
        else:
            x, full = select_class(cfg, bundle, observer, c)
            if path is not None:
                save_tensors(path, {"images": x, "full_patches": full}, {"key": key, "class": str(c)})
        imgs.append(x)
        fulls.append(full)
        bar.update(1)
        engine.test_signal(done)
        if engine.stop_requested() and fabric.world_size == 1:
            raise engine.Preempted("distill selection", done, len(classes), folder)
    bar.close()
    s, ch = bundle.image_size, bundle.channels
    per_class = d.ipc * (1 if d.init == "random" else d.factor * d.factor)
    images = torch.cat(imgs) if imgs else torch.zeros(0, ch, s, s)
    full = torch.cat(fulls) if fulls else torch.zeros(0, ch, s, s)
    # blocks of classes -> blocks of rows: rank r's rows are exactly its classes' rows
    images = engine.gather_blocks(fabric, images.view(len(classes), d.ipc, ch, s, s), bundle.num_classes)
    full = engine.gather_blocks(fabric, full.view(len(classes), per_class, ch, s, s), bundle.num_classes)
    labels = torch.arange(bundle.num_classes).repeat_interleave(d.ipc)
    return images.flatten(0, 1).cpu(), labels, full.flatten(0, 1).cpu()


def initial_images(
    cfg: Config, fabric, bundle, observer, key: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The selection (``distill.init`` rded or random) as (images, labels, full-resolution patches): read
    from ``init.safetensors`` when its key is ``key``, otherwise selected (resuming from the finished classes)
    and written there by rank 0."""
    out = distilled_dir(cfg)
    init_path = out / INIT_FILE
    cached = load_tensors(init_path) if init_path.exists() else None
    fabric.barrier()  # every rank has read the cache before rank 0 may replace it
    if cached and cached[1].get("key") == key:
        t = cached[0]
        return t["images"], t["labels"], t["full_patches"]
    if cached:
        fabric.print(f"hellodd: {init_path} was made from other inputs; selecting afresh")
    per_class = out / INIT_CLASSES_FOLDER  # finished classes, kept until the whole selection is written
    images, labels, full = select(cfg, fabric, bundle, observer, per_class, key)
    if fabric.is_global_zero:
        save_tensors(init_path, {"images": images, "labels": labels, "full_patches": full}, {"key": key})
        shutil.rmtree(per_class, ignore_errors=True)
    return images, labels, full
