"""Segmentation metrics over a whole split: mean IoU, pixel accuracy and per-class IoU, from one confusion
matrix summed over every labelled pixel (:data:`~hellodd.segmentation.data.IGNORE` pixels are left out)."""

from __future__ import annotations

import torch

from hellodd.segmentation.data import IGNORE


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, K]`` int64 counts: row = true class, column = predicted class, over labelled pixels."""
    keep = target != IGNORE
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )


def scores(conf: torch.Tensor, classes: list[str]) -> dict:
    """mIoU (percent) over the classes present in the split's labels or predictions, pixel accuracy, and
    each class's IoU (None for a class that appears in neither)."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
    present = union > 0
    return {
        "miou": 100.0 * float(iou[present].mean()) if present.any() else 0.0,
        "pixel_accuracy": 100.0 * float(tp.sum() / conf.sum().clamp(min=1)),
        "per_class_iou": {
            c: (None if not ok else round(100.0 * float(v), 2)) for c, v, ok in zip(classes, iou, present)
        },
        "pixels": int(conf.sum()),
    }


def evaluate_segmentation(
    fabric, model, ds, classes: list[str], batch_size: int = 100, desc: str = "val"
) -> dict:
    """mIoU, pixel accuracy, per-class IoU and mean cross-entropy (per labelled pixel) of ``model`` on a
    :class:`~hellodd.segmentation.data.MaskedImages` split, over all ranks."""
    import torch.nn.functional as F

    from hellodd import engine
    from hellodd.augment import to_float

    was_training = model.training
    model.eval()
    k = len(classes)
    conf = torch.zeros(k, k, dtype=torch.int64, device=fabric.device)
    loss = torch.zeros(1, dtype=torch.float64, device=fabric.device)
    dl = engine.loader(fabric, ds, batch_size, shuffle=False, pad=False)
    with torch.inference_mode():
        for x, y in engine.progress(
            fabric, engine.passing(dl, "validation"), total=len(dl), desc=desc, leave=False
        ):
            with fabric.autocast():
                logits = model(to_float(x)).float()
            y = y.long()
            conf += confusion(logits.argmax(1), y, k)
            loss += F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum").double()
    conf = fabric.all_reduce(conf, reduce_op="sum")
    loss = fabric.all_reduce(loss, reduce_op="sum")
    model.train(was_training)
    out = scores(conf.cpu(), classes)
    out["loss"] = float(loss) / max(out["pixels"], 1)
    return out
