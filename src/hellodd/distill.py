"""Stage 4: distilled images -- the initial images, the projector-aware image update, the view adaptation.

The steps, each in its own module:

1. initial images (``distill.init``): RDED's selection or random real images, :mod:`hellodd.selection`;
2. the image update (``distill.update``, after RDED only; LIC adapted to HeLlO, supplement A.5),
   :mod:`hellodd.image_update`; observer-projector agreement (top-1 and mean KL) is measured here before
   and after it;
3. the view adaptation (hellodd's, not the paper's; ``distill.adapt_steps`` > 0): the projector's adapters
   continue the weak-teacher transfer on the students' views of the final images
   (:func:`hellodd.projector.adapt_to_views`); the result, ``adapters.safetensors`` beside the images, is
   what labels this set (:func:`hellodd.sets.projector_for`).

Someone else's distilled images (``distill.init=folder``: an ImageFolder in ``distill.images``, read by
:func:`load_image_set`, or a local copy of a Hugging Face dataset, parquet shards or a ``save_to_disk``
folder, :mod:`hellodd.hf`) skip selection and update; the view adaptation and everything after treat them
like ours.

Outputs (the format is :mod:`hellodd.sets`'s) in ``<out>/distill/ipc<IPC>-<variant>/`` (variant ``random`` |
``rded`` | ``rded-update`` | ``folder``):
``images.safetensors`` (uint8 images + int64 labels, manifest as metadata), ``manifest.json``, an
ImageFolder tree of PNGs under ``png/``, ``contact_sheet.png``, the view-adapted ``adapters.safetensors``
(when ``adapt_steps`` > 0), and config/metrics/storage JSON.
Across processes every step uses every rank: the selection splits the classes (each class draws from its
own generator, so the set does not depend on the number of processes), the update splits the images and
the view adaptation the rows of each batch; each rank then holds the gathered result and rank 0 writes.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from hellodd import engine, sets
from hellodd.augment import to_float, to_uint8
from hellodd.config import Config
from hellodd.data import DataBundle, class_matcher, load_data, square_uint8
from hellodd.errors import UserError
from hellodd.hf import is_released_set, read_released
from hellodd.image_update import image_update, update_iterations, update_key
from hellodd.layout import (
    STATE_FILE,
    adapted_projector_path,
    cache_dir,
    distilled_dir,
    projector_path,
    variant,
)
from hellodd.models import load_classifier
from hellodd.projector.adapters import load_projector
from hellodd.projector.transfer import agreement, weak_teachers
from hellodd.projector.views import adapt_to_views
from hellodd.records import write_config, write_results
from hellodd.selection import initial_images, selection_key
from hellodd.teachers import load_pool


def load_image_set(root, bundle: DataBundle) -> tuple[torch.Tensor, torch.Tensor]:
    """Distilled images made elsewhere (SRe2L, RDED, G-VBSM releases, a random subset), as an ImageFolder tree.

    Class folders are matched to the data's classes by :func:`hellodd.data.class_matcher`; every class must be present.
    Images are resized and centre-cropped to the data's resolution and converted to its channels.  Returns
    uint8 images ``[N, C, S, S]`` and labels.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--set distill.images={root}: folder not found")
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    match = class_matcher(bundle.classes)
    labels_of = {}
    for d in folders:
        c = match(d.name)
        if c is None:
            raise UserError(f"{d}: no class of the {bundle.source} data is called {d.name!r}")
        if c in labels_of.values():
            raise UserError(f"{d}: a second folder for class {bundle.classes[c]!r}")
        labels_of[d] = c
    missing = sorted(set(range(bundle.num_classes)) - set(labels_of.values()))
    if missing:
        raise UserError(
            f"{root}: no folder for class {bundle.classes[missing[0]]!r} ({len(missing)} missing)"
        )
    size = bundle.image_size
    tf = square_uint8(size)
    images, labels = [], []
    for d, c in labels_of.items():
        files = sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise UserError(f"{d}: empty class folder")
        for f in files:
            try:
                with Image.open(f) as img:
                    img = img.convert("L" if bundle.channels == 1 else "RGB")
                    images.append(tf(img))
            except (UnidentifiedImageError, OSError) as e:
                raise UserError(f"{f}: not a readable image ({str(e).splitlines()[0][:120]})") from None
            labels.append(c)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def outside_images(cfg: Config, bundle) -> tuple[torch.Tensor, torch.Tensor]:
    """``distill.init=folder``: someone else's distilled images (an ImageFolder or a Hugging Face dataset), IPC
    per class exactly."""
    d = cfg.distill
    read = read_released if is_released_set(d.images) else load_image_set
    images, labels = read(d.images, bundle)
    counts = torch.bincount(labels, minlength=bundle.num_classes)
    if (counts != d.ipc).any():
        hint = (
            f"--set distill.ipc={int(counts[0])}" if (counts == counts[0]).all() else "the same count in each"
        )
        raise UserError(
            f"--set distill.images={d.images}: {int(counts.min())} to {int(counts.max())} images per class, "
            f"not distill.ipc={d.ipc} ({hint})"
        )
    return to_float(images), labels


def agreement_on(observer, projector, images: torch.Tensor, batch: int = 250) -> dict:
    """Observer-projector agreement on ``images`` (top-1 and mean KL), what the update is measured by."""
    with torch.inference_mode():
        dev = next(observer.parameters()).device
        a = torch.cat(
            [observer(images[i : i + batch].to(dev)).float().cpu() for i in range(0, len(images), batch)]
        )
        b = torch.cat(
            [projector(images[i : i + batch].to(dev)).float().cpu() for i in range(0, len(images), batch)]
        )
    return agreement(a, b)


def adapt_projector(cfg: Config, fabric, images, labels, bundle, out: Path) -> dict:
    """Stage 3's adapters, trained further on this set's student views (``distill.adapt_steps``)."""
    teachers = weak_teachers(load_pool(cfg), cfg, len(bundle.classes))
    bar = engine.progress(
        fabric, total=cfg.distill.adapt_steps, desc="projector view adaptation", unit="step"
    )
    result = adapt_to_views(cfg, fabric, projector_path(cfg), teachers, images, labels, bundle.val, out, bar)
    bar.close()
    return result


def run_distill(cfg: Config, fabric) -> dict:
    """Every rank runs every step on its share (classes for the selection, images for the update, batch
    rows for the view adaptation) and holds the gathered result; rank 0 writes."""
    d = cfg.distill
    out = distilled_dir(cfg)
    bundle = load_data(cfg.data, cfg.engine.seed)
    metrics: dict = {
        "variant": variant(cfg),
        "ipc": d.ipc,
        "factor": d.factor,
        "world_size": fabric.world_size,
    }
    t0 = time.perf_counter()
    observer_path = load_pool(cfg)["final_path"] if d.init == "rded" else None
    observer = engine.frozen(fabric, load_classifier(observer_path)[0]) if observer_path else None
    init_key = selection_key(cfg, observer_path)
    if d.init == "folder":
        images, labels = outside_images(cfg, bundle)
        full = images
    else:
        images, labels, full = initial_images(cfg, fabric, bundle, observer, init_key)
    if fabric.is_global_zero:  # the inputs are read and checked: now the stage may write
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg, "distill")
    metrics["init_seconds"] = time.perf_counter() - t0
    if d.update and d.init == "rded":
        projector = engine.frozen(fabric, load_projector(projector_path(cfg), fabric.device, cache_dir(cfg)))
        metrics["agreement_before"] = agreement_on(observer, projector, images)
        total = update_iterations(cfg, len(images))
        bar = engine.progress(fabric, total=total, desc="image update", unit="it")
        t1 = time.perf_counter()
        images, history = image_update(
            images, full, projector, observer, cfg, out / STATE_FILE, bar, update_key(cfg, init_key), fabric
        )
        metrics["update_iterations"] = total
        bar.close()
        metrics["update_seconds"] = time.perf_counter() - t1
        metrics["agreement_after"] = agreement_on(observer, projector, images)
        metrics["objective_first"], metrics["objective_last"] = history[0]["loss"], history[-1]["loss"]
        metrics["objective"] = history
    images_u8 = to_uint8(images)
    adapted = adapted_projector_path(cfg)
    if d.adapt_steps > 0:
        metrics["adapt"] = adapt_projector(cfg, fabric, images_u8, labels, bundle, out)
    elif adapted.exists() and fabric.is_global_zero:
        adapted.unlink()  # from an earlier run with adapt_steps > 0: these images have no adapted projector
    if fabric.is_global_zero:
        manifest = {
            "classes": bundle.classes,
            "ipc": d.ipc,
            "variant": variant(cfg),
            "source": f"{d.images} (made elsewhere)"
            if d.init == "folder"
            else f"{cfg.data.name}: {bundle.source}",
            "seed": cfg.engine.seed,
            "resolution": list(images_u8.shape[1:]),
            "factor": d.factor,
            "count": len(images_u8),
        }
        manifest = sets.write_set(out, images_u8, labels, manifest)
        metrics["seconds"] = time.perf_counter() - t0
        metrics["manifest"] = manifest
        write_results(out, metrics, {"what": "distilled images", **manifest["bytes"]})
        metrics["summary"] = _summary(cfg, metrics, len(images_u8))
    fabric.barrier()
    return metrics


def _summary(cfg: Config, metrics: dict, count: int) -> str:
    d = cfg.distill
    line = f"distill {variant(cfg)} IPC {d.ipc}: {count} images in {metrics['seconds']:.0f} s"
    if "agreement_after" in metrics:
        b, a = metrics["agreement_before"], metrics["agreement_after"]
        line += (
            f"; observer-projector top-1 agreement {b['top1_agreement']:.1f}% -> {a['top1_agreement']:.1f}%, "
            f"KL {b['kl']:.3f} -> {a['kl']:.3f}; objective {metrics['objective_first']:.4f} -> {metrics['objective_last']:.4f}"
        )
    if "adapt" in metrics:
        b, a = metrics["adapt"]["agreement_before"], metrics["adapt"]["agreement_after"]
        line += (
            f"; projector adapted to this set's student views ({d.adapt_steps} steps, "
            f"{metrics['adapt']['seconds']:.0f} s): top-1 agreement with its weak teachers on held-out views "
            f"{b['top1_agreement']:.1f}% -> {a['top1_agreement']:.1f}%, logit MSE {b['logit_mse']:.3f} -> {a['logit_mse']:.3f}"
        )
        if metrics["adapt"]["kept_step"] != d.adapt_steps:
            line += f" (kept step {metrics['adapt']['kept_step']}: the last steps regressed on the selection views)"
        if metrics["adapt"]["regressed"]:
            line += (
                "\nwarning: the view adaptation ended BELOW where it started on held-out views; "
                "its adapters label this set worse than stage 3's would (lower distill.adapt_lr_scale)"
            )
    return line
