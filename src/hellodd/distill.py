"""Stage 4: distilled images -- RDED initialisation, then the projector-aware image update (supplement A.5).

RDED initialisation (Sun et al., CVPR 2024; docs/method.md), per class c, deterministic for the seed:

1. draw ``candidates_per_class`` real training images of class c;
2. from each, ``crops_per_image`` square random-resized crops (area 8-100%, aspect 1), resampled to
   ``S / factor`` px (S = the dataset's resolution);
3. realism score of a crop = CE(observer(crop), c), with the crop zero-padded (centred) to S px as RDED's
   code does (for factor 1 the crop is already S px); the observer is the final teacher;
4. keep each image's best crop, rank the images by that CE and keep the best ``IPC * factor**2`` crops;
5. stitch: slot k (row-major) of image t receives crop ``k * IPC + t``.

``factor`` is 2 for 224-px data (four 112-px patches per image, RDED's setting) and 1 for tiny images: a
14-px quarter of a 28-px Fashion-MNIST image no longer shows a garment, so the demo preset uses 1.

Image update (LIC adapted to HeLlO; docs/method.md).  For image j with patches k, let ``p_jk`` be the patch
cut from its source image at full resolution S (the same box), ``q_jk`` the slot of the stored image
``s_j`` (the optimisation variable) and ``Up`` bilinear up-sampling of a slot to S px.  With the
projector's LoRA-adapted encoder ``E`` (D-dim), the projector ``g`` and the observer ``phi``, both frozen:

    L(s) = 1/(J K D) sum_jk || E(p_jk) - E(Up(q_jk)) ||^2                (information loss of E)
           + beta * 1/J sum_j KL( softmax(phi(s_j)) || softmax(g(s_j)) )   (observer-projector agreement)

The first term is the paper's: the distilled image should carry, *as the projector's encoder sees it*, the
information of the full-resolution patch it came from.  With factor 1 it only anchors ``s`` to its source
crop, so it cannot by itself narrow the observer-projector gap the update exists for; the second term does
that directly (beta = ``agreement_weight``, 1 by default).  Adam on pixels (lr 0.01), images clamped to
[0, 1] after every step, mini-batches of ``update_batch_size`` images in a fixed order.  The objective is
logged per iteration; agreement (top-1 and mean KL) is measured before and after.

View adaptation (hellodd's, not the paper's; ``distill.adapt_steps`` > 0): the projector's adapters continue
the weak-teacher transfer on the students' views of the final images (:func:`hellodd.projector.adapt_to_views`);
the result, ``adapters.safetensors`` beside the images, is what labels this set (:func:`hellodd.sets.projector_for`).

Someone else's distilled images (``distill.init=folder``: an ImageFolder in ``distill.images``, or a local
copy of a Hugging Face dataset, parquet shards or a ``save_to_disk`` folder, :mod:`hellodd.hf`) skip
selection and update; the view adaptation and everything after treat them like ours.

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

import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from hellodd import engine, sets
from hellodd.augment import CropParams, apply_crops, sample_crops, to_float, to_uint8
from hellodd.config import Config
from hellodd.data import class_indices, load_data, load_image_set
from hellodd.errors import UserError
from hellodd.hf import is_released_set, read_released
from hellodd.io import (
    digest,
    load_tensors,
    save_tensors,
    sha256,
)
from hellodd.layout import (
    INIT_CLASSES_FOLDER,
    INIT_FILE,
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
from hellodd.resume import ResumePoint
from hellodd.teachers import load_pool

# --------------------------------------------------------------------------------------------------
# selection


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


# --------------------------------------------------------------------------------------------------
# update


def agreement_on(observer, projector, images: torch.Tensor, batch: int = 250) -> dict:
    with torch.inference_mode():
        dev = next(observer.parameters()).device
        a = torch.cat(
            [observer(images[i : i + batch].to(dev)).float().cpu() for i in range(0, len(images), batch)]
        )
        b = torch.cat(
            [projector(images[i : i + batch].to(dev)).float().cpu() for i in range(0, len(images), batch)]
        )
    return agreement(a, b)


def update_objective(s, full_feats, projector, observer, factor, beta, batch: int | None = None):
    """L(s) for a batch of images ``s`` [J,C,S,S] given E(p_jk) as ``full_feats`` [J*K, D].

    Both terms are sums over images divided by ``batch`` (default J): a rank holding part of a batch passes
    the whole batch's size, and the ranks' values (and gradients) add up to the whole batch's."""
    size, batch = s.shape[-1], batch or len(s)
    slots = unstitch(s, factor).flatten(0, 1)
    up = (
        F.interpolate(slots, size=(size, size), mode="bilinear", align_corners=False) if factor > 1 else slots
    )
    terms = batch * factor * factor * full_feats.shape[-1]  # the whole batch's J x K x D
    info = (projector.encode(up).float() - full_feats).pow(2).sum() / terms
    agree = (
        F.kl_div(
            F.log_softmax(projector(s).float(), -1),
            F.log_softmax(observer(s).float(), -1),
            log_target=True,
            reduction="sum",
        )
        / batch
    )
    return info + beta * agree, info, agree


def update_iterations(cfg: Config, n_images: int) -> int:
    """``distill.update_epochs`` passes over the ``n_images`` distilled images, in batches of ``update_batch_size``."""
    d = cfg.distill
    return math.ceil(d.update_epochs * n_images / min(d.update_batch_size, n_images))


def update_optimizer(pixels: torch.Tensor, cfg: Config) -> torch.optim.Optimizer:
    """Supplement A.5: Adam, lr ``distill.update_lr`` (0.01), on the pixels."""
    return torch.optim.Adam([pixels], lr=cfg.distill.update_lr)


def image_update(
    images,
    full_patches,
    projector,
    observer,
    cfg: Config,
    state_path: Path,
    bar=None,
    key: str = "",
    fabric=None,
) -> tuple[torch.Tensor, list]:
    """Adam on pixels; resumable from ``state_path`` (saved every 20 iterations and at the end).  A state
    whose ``key`` (digest of the initial images, projector, observer and update settings) differs is stale:
    it is ignored and overwritten, never resumed.

    Across ranks, each holds a contiguous block of the images (:func:`hellodd.engine.block`) with its own Adam
    state.  Every iteration the batch is the one-process batch; a rank takes its images in it and divides by
    the whole batch's size, and every rank steps every iteration (images outside the batch move on their
    momentum, as in one process).  Adam and the clamp act per pixel, so the result does not depend on the
    number of processes, up to how the networks' kernels round batches of other sizes.  The state file holds
    all images and Adam moments, gathered: a run resumes with any number of processes."""
    d = cfg.distill
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    dev = next(observer.parameters()).device
    j, k = len(images), d.factor * d.factor
    mine = engine.block(j, rank, world)
    lo, hi = mine.start, mine.stop
    s = images[lo:hi].clone().to(dev).requires_grad_(True)
    opt = update_optimizer(s, cfg)
    total = update_iterations(cfg, j)
    it, history = 0, []
    point = ResumePoint(state_path, key, "image update", total, fabric)
    st = point.load()
    if st is not None and st["images"].shape == images.shape:
        with torch.no_grad():
            s.copy_(st["images"][lo:hi].to(dev))
        moments = st["optimizer"]
        opt.load_state_dict(
            {
                "state": {
                    0: {
                        "step": moments["step"],
                        "exp_avg": moments["exp_avg"][lo:hi],
                        "exp_avg_sq": moments["exp_avg_sq"][lo:hi],
                    }
                },
                "param_groups": opt.state_dict()["param_groups"],
            }
        )
        it, history = st["iter"], st["history"]
    with torch.no_grad():
        mine_full = full_patches.view(j, k, *full_patches.shape[1:])[lo:hi].flatten(0, 1)
        full_feats = (
            torch.cat(
                [
                    projector.encode(mine_full[i : i + 256].to(dev)).float()
                    for i in range(0, len(mine_full), 256)
                ]
            )
            if len(mine_full)
            else torch.zeros(0, device=dev)
        )
    bsz = min(d.update_batch_size, j)
    final = None  # the gathered images of the last checkpoint, when it is the last iteration
    partial = torch.zeros(total, 3, dtype=torch.float64)  # this rank's share of loss, info, agreement
    logged = it
    if bar is not None:
        bar.reset(total=total)
        bar.update(it)
    while it < total:
        start = (it * bsz) % j
        idx = torch.arange(start, start + bsz) % j
        local = idx[(idx >= lo) & (idx < hi)] - lo
        opt.zero_grad(set_to_none=True)
        if len(local):
            loss, info, agree = update_objective(
                s[local],
                full_feats.view(hi - lo, k, -1)[local].flatten(0, 1),
                projector,
                observer,
                d.factor,
                d.agreement_weight,
                batch=bsz,
            )
            loss.backward()
            partial[it] = torch.tensor([loss.item(), info.item(), agree.item()], dtype=torch.float64)
        else:  # none of this rank's images in the batch: a zero gradient, so Adam still steps (momentum)
            s.grad = torch.zeros_like(s)
        opt.step()
        with torch.no_grad():
            s.clamp_(0, 1)
        it += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{partial[it - 1, 0].item():.4f}", refresh=False)
        stop = point.poll(it)
        if it % 20 == 0 or it == total or stop:
            history += _whole_batch_history(fabric, partial, logged, it)
            logged = it
            state = {
                "images": _gathered(fabric, s.detach(), j),
                "optimizer": _gathered_moments(fabric, opt, s, j),
                "iter": it,
                "history": history,
            }
            point.save(it, state, stop)
            final = state["images"] if it == total else None
    return (final if final is not None else _gathered(fabric, s.detach(), j)), history


def _gathered(fabric, t: torch.Tensor, n: int) -> torch.Tensor:
    return (engine.gather_blocks(fabric, t, n) if fabric is not None else t).cpu()


def _gathered_moments(fabric, opt, s, n: int) -> dict:
    st = opt.state[s]
    return {
        "step": st["step"].detach().cpu().clone(),
        "exp_avg": _gathered(fabric, st["exp_avg"], n),
        "exp_avg_sq": _gathered(fabric, st["exp_avg_sq"], n),
    }


def _whole_batch_history(fabric, partial: torch.Tensor, first: int, last: int) -> list[dict]:
    rows = partial[first:last]
    if fabric is not None and fabric.world_size > 1:
        rows = fabric.all_reduce(rows.to(fabric.device), reduce_op="sum").cpu()
    return [
        {"iter": first + i + 1, "loss": r[0].item(), "info": r[1].item(), "agreement_kl": r[2].item()}
        for i, r in enumerate(rows)
    ]


# --------------------------------------------------------------------------------------------------
# the stage

SELECTION_FIELDS = ("init", "ipc", "factor", "candidates_per_class", "crops_per_image", "crop_min_scale")
UPDATE_FIELDS = ("update_epochs", "update_lr", "update_batch_size", "agreement_weight")


def init_inputs(cfg: Config, observer_path: str | None) -> dict:
    """What the initial images depend on: the data, the seed, the selection settings and the observer."""
    return {
        "data": {k: v for k, v in asdict(cfg.data).items() if k != "workers"},
        "seed": cfg.engine.seed,
        "selection": {k: getattr(cfg.distill, k) for k in SELECTION_FIELDS},
        "observer_sha256": sha256(observer_path) if observer_path and cfg.distill.init == "rded" else None,
        "generators": "per class",  # select_class: a selection cached by the one-generator code is not reused
    }


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


def adapt_projector(cfg: Config, fabric, images, labels, bundle, out: Path) -> dict:
    """Stage 3's adapters, trained further on this set's student views (``distill.adapt_steps``)."""
    teachers = weak_teachers(load_pool(cfg), cfg, len(bundle.classes))
    bar = engine.progress(
        fabric, total=cfg.distill.adapt_steps, desc="projector view adaptation", unit="step"
    )
    result = adapt_to_views(cfg, fabric, projector_path(cfg), teachers, images, labels, bundle.val, out, bar)
    bar.close()
    return result


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
    init_key = digest(init_inputs(cfg, observer_path))
    init_path = out / INIT_FILE
    cached = load_tensors(init_path) if init_path.exists() and d.init != "folder" else None
    fabric.barrier()  # every rank has read the cache before rank 0 may replace it
    if d.init == "folder":
        images, labels = outside_images(cfg, bundle)
        full = images
    elif cached and cached[1].get("key") == init_key:
        t = cached[0]
        images, labels, full = t["images"], t["labels"], t["full_patches"]
    else:
        if cached:
            fabric.print(f"hellodd: {init_path} was made from other inputs; selecting afresh")
        per_class = out / INIT_CLASSES_FOLDER  # finished classes, kept until the whole selection is written
        images, labels, full = select(cfg, fabric, bundle, observer, per_class, init_key)
        if fabric.is_global_zero:
            save_tensors(
                init_path, {"images": images, "labels": labels, "full_patches": full}, {"key": init_key}
            )
            shutil.rmtree(per_class, ignore_errors=True)
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
        update_key = digest(
            {
                "state_format": 2,  # gathered images and Adam moments: resumable with any number of ranks
                "init": init_key,
                "projector_sha256": sha256(projector_path(cfg)),
                "update": {k: getattr(d, k) for k in UPDATE_FIELDS},
            }
        )
        images, history = image_update(
            images, full, projector, observer, cfg, out / STATE_FILE, bar, update_key, fabric
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
