"""Classification metrics over a whole split: top-1 / top-5 accuracy (percent) and mean cross-entropy.

Every rank counts correct predictions on its own unpadded, disjoint shard (:func:`hellodd.engine.loader`
with ``pad=False``), and the counts are summed across ranks, so the numbers are exact and do not depend on
the number of processes.  (Segmentation's metrics: :mod:`hellodd.segmentation.metrics`.)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from hellodd import engine
from hellodd.augment import to_float


@torch.inference_mode()
def evaluate_classification(
    fabric, model: nn.Module, ds: Dataset, batch_size: int = 500, workers: int = 0, desc: str = "eval"
) -> dict:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy of ``model`` on ``ds``, over all ranks."""
    was_training = model.training
    model.eval()
    dl = engine.loader(fabric, ds, batch_size, shuffle=False, pad=False, workers=workers)
    stats = torch.zeros(4, dtype=torch.float64, device=fabric.device)  # correct1, correct5, loss, count
    for x, y in engine.progress(
        fabric, engine.passing(dl, "validation"), total=len(dl), desc=desc, leave=False
    ):
        with fabric.autocast():
            logits = model(to_float(x)).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, 1).indices
        stats[0] += (top[:, 0] == y).sum()
        stats[1] += (top == y[:, None]).any(1).sum()
        stats[2] += nn.functional.cross_entropy(logits, y, reduction="sum")
        stats[3] += len(y)
    stats = fabric.all_reduce(stats, reduce_op="sum")
    model.train(was_training)
    n = max(float(stats[3]), 1.0)
    return {
        "top1": 100 * float(stats[0]) / n,
        "top5": 100 * float(stats[1]) / n,
        "loss": float(stats[2]) / n,
        "n": int(n),
    }
