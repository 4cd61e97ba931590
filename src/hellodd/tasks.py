"""What differs between tasks, declared once per task: the data, the networks, how a training view moves
the targets, the loss on logits, the metric.  A stage asks :func:`task_of` for its config's task and never
branches on the task itself.  Each task extends its torch-free spec (:mod:`hellodd.config.tasks`: scores
and their names, label sources, set names, config checks), which configs, tables and reports ask.

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

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hellodd.augment import apply_crops, augment, mixed_one_hot, sample_augment
from hellodd.config import Config, DataConfig
from hellodd.config.tasks import ClassificationSpec, SegmentationSpec, is_segmenter, named, spec_of
from hellodd.data import DataBundle, class_names, load_data, per_class_subset, subset, train_class_counts
from hellodd.errors import UserError
from hellodd.losses import student_loss
from hellodd.metrics import evaluate_classification
from hellodd.models import build_model, load_classifier
from hellodd.segmentation.data import IGNORE, MaskedImages, check_segmentation_data, load_segmentation
from hellodd.segmentation.metrics import evaluate_segmentation
from hellodd.segmentation.models import build_segmenter
from hellodd.segmentation.sheet import mask_pictures
from hellodd.segmentation.views import crop_masks, cutmix_masks
from hellodd.sets import class_pictures


class Classification(ClassificationSpec):
    # each stage's function (module under hellodd, name): what `hellodd <stage>` runs for this task
    stages = {
        "teachers": ("teachers", "train_teachers"),
        "projector": ("projector.transfer", "run_projector"),
        "distill": ("distill", "run_distill"),
        "evaluate": ("evaluate", "run_evaluate"),
    }

    def check(self, cfg: DataConfig) -> None:
        train_class_counts(cfg)  # the data is where the config says, with a train/ split

    def check_set(self, cfg) -> None:
        """Enough training images per class for the set the distill stage will select."""
        d = cfg.distill
        if d.init == "folder":
            return  # its images are counted when they are read (they must be exactly IPC per class)
        need = d.ipc * d.factor**2 if d.init == "rded" else d.ipc
        counts = train_class_counts(cfg.data)
        if counts and min(counts) < need:
            c = counts.index(min(counts))
            what = f"IPC x factor^2 = {need}" if d.init == "rded" else f"IPC = {need}"
            raise UserError(
                f"--set distill.ipc={d.ipc}: class {c} has {min(counts)} training images, fewer than {what} "
                "(lower distill.ipc or distill.factor)"
            )

    def load(self, cfg: DataConfig, seed: int) -> DataBundle:
        return load_data(cfg, seed)

    def build(self, arch: str, num_classes: int, channels: int, size: int) -> nn.Module:
        return build_model(arch, num_classes, channels, size)

    def augment(self, x: torch.Tensor, y: torch.Tensor, mode: str, g: torch.Generator):
        return augment(x, mode, g), y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    mix_targets = staticmethod(mixed_one_hot)  # (y, num_classes, mix): a CutMix-ed batch's targets

    def evaluate(self, fabric, model, ds, classes: list[str], batch_size: int, desc: str = "val") -> dict:
        return evaluate_classification(fabric, model, ds, batch_size, desc=desc)

    def probe(self, val, seed: int):
        """A few validation images to compare a projector with its teachers on: at most 200 per class."""
        return subset(val, per_class_subset(val.targets, 200, seed))

    @staticmethod
    def per_label(logits: torch.Tensor) -> torch.Tensor:
        """Logits as rows of class scores, one per label: [N, C]."""
        return logits

    # a student's views of a distilled set (hellodd.students)
    def view_targets(self, labels, idx, crops, mix, device) -> torch.Tensor:
        """The hard label of each view's image (CutMix mixes it in :meth:`hard_targets`)."""
        return labels[idx].to(device)

    hard_targets = staticmethod(mixed_one_hot)  # (y, num_classes, mix): the CutMix-mixed one-hot rows

    def student_loss(self, ev, logits, targets, kind: str, y) -> torch.Tensor:
        return student_loss(ev, logits, targets, kind, y)

    pictures = staticmethod(class_pictures)  # (images, labels, classes, out): a set's PNGs and contact sheet

    def class_count(self, cfg: Config) -> int:
        """The configured data's class count, read without an image: the class folders, the labels' names."""
        return len(class_names(cfg.data))


class Segmentation(SegmentationSpec):
    stages = {
        "teachers": ("teachers", "train_teachers"),
        "projector": ("projector.transfer", "run_projector"),
        "distill": ("subset", "run_subset"),
        "evaluate": ("evaluate", "run_evaluate"),
    }

    def check(self, cfg: DataConfig) -> None:
        check_segmentation_data(cfg)

    def check_set(self, cfg) -> None:
        if cfg.distill.init not in ("random", "rded"):
            raise UserError(
                f"--set distill.init={cfg.distill.init}: segmentation sets are subsets chosen by the observer "
                "(rded) or at random"
            )
        if cfg.data.name in ("fashion-mnist-scenes", "synthetic-scenes") and cfg.distill.subset >= 1:
            if cfg.distill.subset > cfg.data.scenes_train:
                raise UserError(
                    f"--set distill.subset={cfg.distill.subset:g}: more than the {cfg.data.scenes_train} "
                    "training scenes (data.scenes_train)"
                )

    def load(self, cfg: DataConfig, seed: int) -> DataBundle:
        return load_segmentation(cfg, seed)

    def build(self, arch: str, num_classes: int, channels: int, size: int) -> nn.Module:
        if not self.knows(arch):
            raise UserError(
                f"--set teacher.arch={arch}: not a segmentation network (convnet-fcn, torchvision's)"
            )
        return build_segmenter(arch, num_classes, channels, size)

    def augment(self, x: torch.Tensor, y: torch.Tensor, mode: str, g: torch.Generator):
        p = sample_augment(len(x), mode, g, x.device)
        return (x, y) if p is None else (apply_crops(x, p), crop_masks(y, p))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y.long(), ignore_index=IGNORE)

    @staticmethod
    def mix_targets(y, num_classes: int, mix) -> torch.Tensor:
        return cutmix_masks(y, mix)  # the other view's map pasted in the same box

    def evaluate(self, fabric, model, ds, classes: list[str], batch_size: int, desc: str = "val") -> dict:
        return evaluate_segmentation(fabric, model, ds, classes, batch_size, desc)

    def probe(self, val, seed: int):
        """The first 200 validation scenes (every class appears in a few hundred maps)."""
        return MaskedImages(val.images[:200], val.masks[:200])

    @staticmethod
    def per_label(logits: torch.Tensor) -> torch.Tensor:
        """Logit maps as rows of class scores, one per pixel: [N x H x W, C]."""
        return logits.movedim(1, -1).reshape(-1, logits.shape[1])

    def view_targets(self, labels, idx, crops, mix, device) -> torch.Tensor:
        """Each view's class map: its image's map through the same crop and flip, with the same CutMix box
        pasted from the other view (outside the image: ignored)."""
        return cutmix_masks(crop_masks(labels[idx].to(device), crops), mix)

    @staticmethod
    def hard_targets(y, num_classes: int, mix) -> torch.Tensor:
        return y  # the view's class map already carries the CutMix box

    def student_loss(self, ev, logits, targets, kind: str, y) -> torch.Tensor:
        """Hard labels: cross-entropy per labelled pixel.  Logit maps: MSE per pixel and class + ``ce_weight``
        x that cross-entropy (the classification demo's loss, per pixel)."""
        ce = F.cross_entropy(logits, y, ignore_index=IGNORE)
        if kind == "probs":
            return ce
        if kind != "logits" or ev.loss != "mse":
            raise UserError(
                f"segmentation students learn logit maps with evaluate.loss=mse, not {kind}/{ev.loss}"
            )
        return F.mse_loss(logits, targets) + ev.ce_weight * ce

    def row(self, val: dict) -> dict:
        return {**super().row(val), "per_class_iou": val["per_class_iou"]}

    pictures = staticmethod(mask_pictures)  # each image and its coloured map as PNGs, and a sheet

    def class_count(self, cfg: Config) -> int:
        """The configured data's class count, from its loader (a reader of class maps names its classes)."""
        return len(self.load(cfg.data, cfg.engine.seed).classes)


TASKS = {t.name: t for t in (Classification(), Segmentation())}


def task_of(cfg: Config | DataConfig) -> Classification | Segmentation:
    """The task a dataset poses (:func:`hellodd.config.tasks.spec_of`), with its data, networks and metric."""
    return TASKS[spec_of(cfg).name]


def task_named(name: str | None) -> Classification | Segmentation:
    """The task called ``name`` (a set's manifest; None: classification, as sets made before tasks had names)."""
    return TASKS[named(name).name]


def stage_function(cfg, stage: str) -> Callable:
    """The function that runs ``stage`` (teachers, projector, distill, evaluate) for the config's task;
    imported when asked for (a stage sits above this module)."""
    module, function = task_of(cfg.data).stages[stage]
    return getattr(importlib.import_module(f"hellodd.{module}"), function)


def build_network(spec: dict) -> nn.Module:
    """A teacher or student rebuilt from the ``spec`` saved with its checkpoint, whatever its task."""
    build = build_segmenter if is_segmenter(spec["arch"]) else build_model
    return build(**spec)


def load_network(path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A checkpoint written by :func:`hellodd.models.save_classifier`, classifier or segmenter."""
    return load_classifier(path, device, build=build_network)
