"""What each task is, as far as configs, names and tables need to know: torch-free, so validation, the run
layout, the tables and the report ask here instead of naming a task.  :mod:`hellodd.tasks` adds the data,
the networks, the views, the loss and the metric to these same classes.

==================  ==========================================  ==========================================
                    classification                              segmentation
==================  ==========================================  ==========================================
datasets            every other                                 :data:`SEGMENTATION_DATA` (class maps)
score (second)      top-1 (top-5)                               mIoU (pixel accuracy)
networks            :func:`~hellodd.config.is_architecture`     :func:`is_segmenter`
label sources       every one                                   :data:`DENSE_SOURCES`
a set is            ``distill.ipc`` images per class            ``distill.subset`` whole images
view adaptation     yes                                         not yet
Hugging Face        ``image-classification`` parquet            a folder only
==================  ==========================================  ==========================================

A result row, a report entry and an export's results carry a neutral ``score`` / ``score_name`` (and
``second`` / ``second_name``); :func:`scored_by` reads what older versions wrote under the metric's own key
(``top1``, ``miou``) so old runs still report.
"""

from __future__ import annotations

import re

from hellodd.config.schema import IGNORE_INDEX, TORCHVISION_ARCHS, Config, DataConfig, is_architecture
from hellodd.errors import UserError

# the datasets of the segmentation task: a class map per image, IGNORE_INDEX = not labelled
SEGMENTATION_DATA = ("fashion-mnist-scenes", "synthetic-scenes", "voc", "masks")
# torchvision segmentation networks a segmentation teacher or student may be, besides convnet-fcn[-wM]
TORCHVISION_SEGMENTERS = (
    "lraspp_mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet50",
    "fcn_resnet50",
)


def is_segmenter(arch: str) -> bool:
    """Whether :func:`hellodd.segmentation.models.build_segmenter` knows ``arch``."""
    return bool(re.fullmatch(r"convnet-fcn(?:-w\d+)?", arch)) or arch in TORCHVISION_SEGMENTERS


# the label sources that make a logit map per image (the others label a whole image)
DENSE_SOURCES = ("hard", "teacher", "weak-teachers", "stored", "compressed", "projector")


class ClassificationSpec:
    name = "classification"
    data: tuple[str, ...] | None = None  # the datasets that pose it; None: every dataset no other task claims
    # the headline score and the one shown beside it: their keys in the task's evaluate() and in teacher
    # files, and their names in tables
    metric, metric_name = "top1", "top-1"
    second, second_name = "top5", "top-5"
    scores = ("top1", "top5", "loss")  # what a teacher checkpoint's validation keeps
    label_sources: tuple[str, ...] | None = None  # None: every label source (and compressor) applies
    adapts_views = True  # distill.adapt_steps may continue the transfer on a set's views
    counts_per_class = True  # a set is distill.ipc images per class (else a subset of whole images)
    hf_category: str | None = "image-classification"  # None: the set exports as a folder only
    png_role = "image (PNG)"  # what an export's PNGs are
    networks = f"convnet, convnet-dN, convnet-dN-wM or one of {', '.join(TORCHVISION_ARCHS)}"

    def knows(self, arch: str) -> bool:
        """Whether a teacher or student of this task may be ``arch``."""
        return is_architecture(arch)

    def accepts(self, source: str) -> bool:
        """Whether label source ``source`` applies to this task."""
        return self.label_sources is None or source in self.label_sources

    def set_stem(self, cfg: Config) -> str:
        """The distilled set's name before its variant: how many images it holds."""
        return f"ipc{cfg.distill.ipc}"

    def checks(self, cfg: Config) -> list[tuple[bool, str, str]]:
        """(ok, option, what it must be) for the settings this task rules out."""
        return [(not cfg.projector.dense, "projector.dense", "false for classification")]

    def loss_formula(self, loss: str) -> str:
        """The students' loss on this task's labels, as an export's manifest states it."""
        if loss == "mse":
            return "MSE(student logits, labeller logits) + ce_weight * CE(student logits, label)"
        return "KL(softmax(labeller / T) || softmax(student / T))"

    def card_count(self, ipc) -> str:
        """How a dataset card counts the set's images."""
        return f"{ipc} per class"

    def card_model(self) -> tuple[str, str]:
        """A dataset card's torchvision student and how it is called on a grey batch ``x``."""
        return (
            "model = torchvision.models.resnet18(num_classes=len(ds.classes))",
            "model(x.expand(-1, 3, -1, -1))",
        )

    # a result row's scores
    def row(self, val: dict) -> dict:
        """The neutral scores of a result row, from the task's evaluate() output."""
        return {
            "score": val[self.metric],
            "score_name": self.metric_name,
            "second": val[self.second],
            "second_name": self.second_name,
        }

    def read(self, record: dict, which: str = "score") -> float | None:
        """``record``'s score (``which="score"``) or second score (``"second"``), under the neutral key or
        the metric's own (rows and entries written before the neutral keys); None if it has neither."""
        own = self.metric if which == "score" else self.second
        return record.get(which, record.get(own))


class SegmentationSpec(ClassificationSpec):
    name = "segmentation"
    data = SEGMENTATION_DATA
    metric, metric_name = "miou", "mIoU"
    second, second_name = "pixel_accuracy", "pixel accuracy"
    scores = ("miou", "pixel_accuracy", "loss")
    label_sources = DENSE_SOURCES
    adapts_views = False
    counts_per_class = False
    hf_category = None
    png_role = "image or class map (PNG)"
    networks = f"convnet-fcn, convnet-fcn-wM or one of {', '.join(TORCHVISION_SEGMENTERS)}"

    def knows(self, arch: str) -> bool:
        return is_segmenter(arch)

    def set_stem(self, cfg: Config) -> str:
        return f"subset{cfg.distill.subset:g}"  # a subset of whole images, not a number per class

    def checks(self, cfg: Config) -> list[tuple[bool, str, str]]:
        names = [*cfg.evaluate.label_sources, *cfg.evaluate.baseline_sources]
        return [
            (cfg.evaluate.loss == "mse", "evaluate.loss", "mse for segmentation students (logit maps)"),
            (cfg.projector.dense, "projector.dense", "true for segmentation (a logit map per image)"),
            (cfg.projector.train_per_class == 0, "projector.train_per_class", "0 for segmentation"),
            (
                self.adapts_views or cfg.distill.adapt_steps == 0,
                "distill.adapt_steps",
                "0 for segmentation (no view adaptation yet)",
            ),
            (
                all(map(self.accepts, names)),
                "evaluate.label_sources",
                f"segmentation label sources among {', '.join(DENSE_SOURCES)} "
                f"(not {[n for n in names if not self.accepts(n)]})",
            ),
        ]

    def loss_formula(self, loss: str) -> str:
        return (
            "MSE(student logit maps, labeller logit maps) + ce_weight * CE(student logit maps, class map) "
            f"over labelled pixels ({IGNORE_INDEX} = ignored)"
        )

    def card_count(self, ipc) -> str:
        return "a class map each"

    def card_model(self) -> tuple[str, str]:
        return (
            "model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(\n"
            "    num_classes=len(ds.classes), weights=None, weights_backbone=None)",
            'model(x.expand(-1, 3, -1, -1))["out"]',
        )


SPECS: dict[str, ClassificationSpec] = {s.name: s for s in (ClassificationSpec(), SegmentationSpec())}
FIRST = SPECS["classification"]  # what sets, rows and checkpoints written before tasks had names are


def spec_of(cfg: Config | DataConfig) -> ClassificationSpec:
    """The task a config's (or a data config's) dataset poses: the task that claims it, else classification."""
    name = getattr(cfg, "data", cfg).name
    return next((s for s in SPECS.values() if s.data and name in s.data), FIRST)


def named(name: str | None) -> ClassificationSpec:
    """The task called ``name`` (a manifest's ``task``); None: classification, what a file written before
    tasks had names is."""
    if name is None:
        return FIRST
    if name not in SPECS:
        raise UserError(f"unknown task {name!r} (one of {', '.join(SPECS)})")
    return SPECS[name]


def reference(whole: dict) -> float | None:
    """A report's whole-data reference score; a report of before the neutral keys kept every task's under
    ``top1``."""
    return whole.get("score", whole.get("top1"))


def scored_by(record: dict) -> ClassificationSpec:
    """The task whose scores ``record`` holds (a result row, a report entry, a teacher's metrics or pool
    entry, an export's results), whichever version wrote it: by its ``task``, its ``score_name``, its old
    ``metric`` key (``top1``, ``miou``), else the score keys it carries; classification if none says."""
    if record.get("task") in SPECS:
        return SPECS[record["task"]]
    for spec in SPECS.values():
        if record.get("score_name") == spec.metric_name or record.get("metric") == spec.metric:
            return spec
    for spec in SPECS.values():
        if spec.metric in record:
            return spec
    return FIRST
