"""Classification metrics: exact counts of top-1 / top-5 hits and the mean cross-entropy on hand-made batches."""

import math

import pytest
import torch
from lightning_fabric import Fabric

from hellodd.data import TensorImages
from hellodd.metrics import evaluate_classification


class _Table(torch.nn.Module):
    """Returns row ``v`` of a fixed logit table for an image whose first pixel is ``v``: logits known exactly."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x):
        return self.table[(x[:, 0, 0, 0] * 255).round().long()]


def _images(rows: list[int]) -> torch.Tensor:
    images = torch.zeros(len(rows), 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(rows)
    return images


def test_top1_top5_and_loss_of_known_logits():
    """7 classes, two logit rows (descending and ascending); each label's rank in its row is chosen: ranks 1, 5,
    6 in the first, 1, 5, 7 in the second, so 2 of 6 are top-1 and 4 of 6 top-5.  Batches of 4: the counts add
    over batches, and a model in training mode is left in training mode."""
    down = torch.arange(5.0, -2.0, -1.0)  # logits 5, 4, ..., -1: class 0 first, class 6 last
    model = _Table(torch.stack([down, down.flip(0)])).train()
    images = _images([0, 0, 0, 1, 1, 1])
    labels = torch.tensor([0, 4, 5, 6, 2, 0])  # ranks 1, 5, 6 | 1, 5, 7
    r = evaluate_classification(Fabric(accelerator="cpu", devices=1), model, TensorImages(images, labels), 4)
    lse = math.log(sum(math.exp(v) for v in range(-1, 6)))
    own = [5, 1, 0, 5, 1, -1]  # each label's own logit
    assert r["n"] == 6
    assert r["top1"] == pytest.approx(100 * 2 / 6) and r["top5"] == pytest.approx(100 * 4 / 6)
    assert r["loss"] == pytest.approx(lse - sum(own) / 6, rel=1e-6)
    assert model.training


class _Lookup(torch.nn.Module):
    """Predicts class = first pixel value (0..2); accuracy is known exactly."""

    def forward(self, x):
        return torch.nn.functional.one_hot((x[:, 0, 0, 0] * 255).round().long(), 3).float()


def test_evaluate_counts_exactly():
    fabric = Fabric(accelerator="cpu", devices=1)
    labels = torch.tensor([0, 1, 2, 1, 1, 0, 0])  # 5 of 7 right
    r = evaluate_classification(fabric, _Lookup(), TensorImages(_images([0, 1, 2, 0, 1, 2, 0]), labels), 3)
    assert r["n"] == 7 and r["top1"] == pytest.approx(500 / 7) and r["top5"] == 100
