"""What differs between tasks, declared once per task: the data, the networks, how a training view moves
the targets, the loss on logits, the metric.  A stage asks :func:`task_of` for its config's task and never
branches on the task itself.

==============  =====================================  =========================================
                classification                         segmentation
==============  =====================================  =========================================
target          a class index per image                a class map per image (255 = ignore)
view            crop/flip the image                    crop/flip the image and its map alike
networks        :func:`hellodd.models.build_model`     :func:`hellodd.segmentation.models.build_segmenter`
loss            cross-entropy                          cross-entropy per labelled pixel
metric          top-1 (and top-5)                      mIoU (and pixel accuracy, per-class IoU)
==============  =====================================  =========================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hellodd import engine
from hellodd.augment import apply_crops, augment, sample_augment
from hellodd.config import SEGMENTATION_DATA, DataConfig, is_segmenter
from hellodd.data import DataBundle, load_data, train_class_counts
from hellodd.errors import UserError
from hellodd.io import load_tensors
from hellodd.models import build_model
from hellodd.segmentation.data import IGNORE, check_segmentation_data, load_segmentation
from hellodd.segmentation.metrics import evaluate_segmentation
from hellodd.segmentation.models import build_segmenter
from hellodd.segmentation.views import crop_masks


class Classification:
    name = "classification"
    metric, metric_name = "top1", "top-1"
    scores = ("top1", "top5", "loss")  # what a teacher checkpoint's validation keeps
    stages = ("teachers", "projector", "distill", "evaluate")

    def check(self, cfg: DataConfig) -> None:
        train_class_counts(cfg)  # the data is where the config says, with a train/ split

    def load(self, cfg: DataConfig, seed: int) -> DataBundle:
        return load_data(cfg, seed)

    def build(self, arch: str, num_classes: int, channels: int, size: int) -> nn.Module:
        return build_model(arch, num_classes, channels, size)

    def augment(self, x: torch.Tensor, y: torch.Tensor, mode: str, g: torch.Generator):
        return augment(x, mode, g), y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def evaluate(self, fabric, model, ds, classes: list[str], batch_size: int, desc: str = "val") -> dict:
        return engine.evaluate(fabric, model, ds, batch_size, desc=desc)


class Segmentation:
    name = "segmentation"
    metric, metric_name = "miou", "mIoU"
    scores = ("miou", "pixel_accuracy", "loss")
    stages = ("teachers",)  # the dense projector, subset and evaluation stages are still to come

    def check(self, cfg: DataConfig) -> None:
        check_segmentation_data(cfg)

    def load(self, cfg: DataConfig, seed: int) -> DataBundle:
        return load_segmentation(cfg, seed)

    def build(self, arch: str, num_classes: int, channels: int, size: int) -> nn.Module:
        if not is_segmenter(arch):
            raise UserError(
                f"--set teacher.arch={arch}: not a segmentation network (convnet-fcn, torchvision's)"
            )
        return build_segmenter(arch, num_classes, channels, size)

    def augment(self, x: torch.Tensor, y: torch.Tensor, mode: str, g: torch.Generator):
        p = sample_augment(len(x), mode, g, x.device)
        return (x, y) if p is None else (apply_crops(x, p), crop_masks(y, p))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y.long(), ignore_index=IGNORE)

    def evaluate(self, fabric, model, ds, classes: list[str], batch_size: int, desc: str = "val") -> dict:
        return evaluate_segmentation(fabric, model, ds, classes, batch_size, desc)


TASKS = {"classification": Classification(), "segmentation": Segmentation()}


def task_of(cfg: DataConfig) -> Classification | Segmentation:
    """The task a dataset poses: segmentation for datasets of class maps, classification otherwise."""
    return TASKS["segmentation" if cfg.name in SEGMENTATION_DATA else "classification"]


def build_network(spec: dict) -> nn.Module:
    """A teacher or student rebuilt from the ``spec`` saved with its checkpoint, whatever its task."""
    build = build_segmenter if is_segmenter(spec["arch"]) else build_model
    return build(**spec)


def load_network(path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A checkpoint written by :func:`hellodd.models.save_classifier`, classifier or segmenter."""
    tensors, meta = load_tensors(path)
    spec = meta.get("spec")
    if not spec:
        raise UserError(f"{path}: not a hellodd model checkpoint (no model spec in its metadata)")
    model = build_network(spec)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit {spec['arch']} ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), meta
