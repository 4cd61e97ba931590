"""Stage 3 of the segmentation task: the distilled set is a subset of whole training images with their class
maps (the supplement's B.4 keeps 10,000 SA-1B images, 0.09%), ``distill.subset`` of them (a count, or a
fraction of the training set), chosen

* by the observer (``distill.init=rded``): RDED's realism score made dense, the final teacher's mean
  cross-entropy over each image's labelled pixels, lowest first, balanced by classes: each image counts for
  its dominant class (most pixels, background aside), and the N places are shared among classes in
  proportion to their pixels in the training split (largest remainders); a class short of images gives its
  places to the lowest-loss images left;
* or at random (``distill.init=random``, the baseline of every report).

Outputs in ``<out>/distill/subset<N>-<rded|random>/``: ``images.safetensors`` (uint8 images and class maps),
``manifest.json``, ``png/images`` and ``png/masks`` and ``contact_sheet.png`` (scenes above their maps).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from hellodd import engine
from hellodd.augment import to_float
from hellodd.config import IGNORE_INDEX, Config
from hellodd.errors import UserError
from hellodd.layout import distilled_dir
from hellodd.records import write_config, write_results
from hellodd.sets import write_set
from hellodd.tasks import load_network, task_of
from hellodd.teachers import load_pool

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


@torch.inference_mode()
def observer_losses(fabric, teacher, images: torch.Tensor, masks: torch.Tensor, batch: int) -> torch.Tensor:
    """Each image's mean cross-entropy over its labelled pixels under the observer (the final teacher)."""
    out = []
    for i in engine.passing(range(0, len(images), batch), "observer scoring"):
        x, y = (
            to_float(images[i : i + batch].to(fabric.device)),
            masks[i : i + batch].to(fabric.device).long(),
        )
        with fabric.autocast():
            logits = teacher(x).float()
        ce = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="none")
        labelled = (y != IGNORE_INDEX).sum((1, 2)).clamp(min=1)
        out.append((ce.sum((1, 2)) / labelled).cpu())
    return torch.cat(out)


def balanced_lowest(losses: torch.Tensor, masks: torch.Tensor, classes: list[str], n: int) -> torch.Tensor:
    """The ``n`` lowest-loss images, shared among classes by their pixels (see the module's docstring)."""
    k = len(classes)
    counts = torch.stack(
        [torch.bincount(m[m != IGNORE_INDEX].long().flatten(), minlength=k)[:k] for m in masks]
    )
    if "background" in classes:
        counts[:, classes.index("background")] = 0
    dominant = counts.argmax(1)
    share = counts.sum(0).double()
    share = share / share.sum().clamp(min=1)
    quota = (share * n).floor().long()
    rest = (share * n - quota).argsort(descending=True)
    quota[rest[: n - int(quota.sum())]] += 1
    order = losses.argsort(stable=True)
    chosen, taken = [], torch.zeros(k, dtype=torch.long)
    for i in order.tolist():
        c = int(dominant[i])
        if taken[c] < quota[c]:
            chosen.append(i)
            taken[c] += 1
    kept = set(chosen)
    left = [i for i in order.tolist() if i not in kept]
    chosen += left[: n - len(chosen)]
    return torch.tensor(sorted(chosen))


def run_subset(cfg: Config, fabric) -> dict:
    d, task = cfg.distill, task_of(cfg)
    task.check_set(cfg)  # a subset chosen by the observer (rded) or at random
    t0 = time.perf_counter()
    bundle = task.load(cfg.data, cfg.engine.seed)
    train = bundle.train
    n = subset_size(cfg, len(train))
    extra = {}
    if d.init == "random":
        g = torch.Generator().manual_seed(cfg.engine.seed + SUBSET_STREAM)
        idx = torch.randperm(len(train), generator=g)[:n].sort().values
    else:
        pool = load_pool(cfg)
        teacher = engine.frozen(fabric, load_network(pool["final_path"])[0])
        losses = observer_losses(fabric, teacher, train.images, train.masks, cfg.teacher.eval_batch_size)
        idx = balanced_lowest(losses, train.masks, bundle.classes, n)
        extra = {
            "observer": pool["final"],
            "observer_loss_kept": float(losses[idx].mean()),
            "observer_loss_all": float(losses.mean()),
        }
    images, masks = train.images[idx], train.masks[idx]
    out = distilled_dir(cfg)
    manifest = {
        "task": task.name,
        "classes": bundle.classes,
        "count": n,
        "variant": d.init,
        "source": bundle.source,
        "resolution": cfg.data.image_size,
        "train_indices": idx.tolist(),
        **extra,
    }
    metrics = {"images": n, "of": len(train), "source": bundle.source, **extra}
    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg, "distill")
        manifest = write_set(out, images, masks, manifest, pictures=task.pictures)
        metrics["seconds"] = time.perf_counter() - t0
        write_results(out, metrics, {"images_bytes": manifest["bytes"]})
    fabric.barrier()
    how = "random" if d.init == "random" else "observer's"
    line = f"distill {how} subset: {n} of {len(train)} training images ({bundle.source})"
    if extra:
        line += (
            f"; observer loss {extra['observer_loss_kept']:.3f} kept vs {extra['observer_loss_all']:.3f} all"
        )
    metrics["summary"] = line
    return metrics
