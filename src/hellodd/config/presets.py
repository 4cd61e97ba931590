"""Presets, one per dataset, and the settings that follow the IPC (:data:`IPC_SETTINGS`).

The paper presets hold its hyper-parameters (supplement Tables 1-3) for ImageNet-100, ImageNet-1K and
Places365; ``fashion-mnist`` is the laptop-sized demo on real data, ``synthetic`` the tests' tiny run.
"""

from __future__ import annotations

import typing

from hellodd.config.schema import (
    LABEL_SOURCES,
    Config,
    DataConfig,
    DistillConfig,
    EngineConfig,
    EvaluateConfig,
    ProjectorConfig,
    TeacherConfig,
)
from hellodd.config.tasks import DENSE_SOURCES
from hellodd.errors import UserError

FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"
FONTS_DEBIAN = "/usr/share/fonts"

# Settings that follow the IPC: (largest IPC, {field: value}) in increasing IPC, per preset.  :func:`preset`
# applies the row of the preset's own IPC; :func:`apply_overrides` applies the row of a new ``distill.ipc``,
# except the fields the same overrides set.  Weak-teacher windows (``projector.teacher_epochs``) follow
# the supplement's rule (A.2): "very early" checkpoints for simple data or small IPC, later ones for complex
# data or large IPC.  The paper presets' exact epochs are unpublished: nine checkpoints (Table 1's model pool
# size) of the 90-epoch trajectory, ImageNet-100 (100 classes) earlier than ImageNet-1K and Places365 at
# every IPC (docs/method.md).  The demo's rows are what measured best on it (docs/results.md).
IPC_SETTINGS: dict[str, tuple[tuple[int, dict[str, typing.Any]], ...]] = {
    "imagenet-100": (
        (1, {"projector.teacher_epochs": [float(e) for e in range(1, 10)]}),  # epochs 1-9
        (10, {"projector.teacher_epochs": [float(e) for e in range(5, 50, 5)]}),  # 5, 10, ..., 45
        (10**9, {"projector.teacher_epochs": [float(e) for e in range(10, 100, 10)]}),  # 10, 20, ..., 90
    ),
    "imagenet-1k": (
        (1, {"projector.teacher_epochs": [float(e) for e in range(2, 20, 2)]}),  # 2, 4, ..., 18
        (10, {"projector.teacher_epochs": [float(e) for e in range(10, 55, 5)]}),  # 10, 15, ..., 50
        (10**9, {"projector.teacher_epochs": [float(e) for e in range(50, 95, 5)]}),  # 50, 55, ..., 90
    ),
    # the demo's whole trajectory is one epoch, so every checkpoint is an early ("weak") one.  The view
    # adaptation's budget grows as the set shrinks (a batch of an IPC-1 set is its 10 images): at IPC 1, 600
    # steps at twice the transfer's rates left the copy loose and 3000 at twice collapsed it.  From IPC 10 on,
    # steps count more than views: 1200 steps of 25 views copy the teachers as closely as 600 of 100 in 55%
    # of the time (docs/results.md, "Paying for 96 px")
    "fashion-mnist": (
        (
            1,
            {
                "projector.teacher_epochs": [0.4, 0.55, 0.75],
                "distill.adapt_steps": 3000,
                "distill.adapt_batch": 0,  # the students' batch: all 10 images
                "distill.adapt_lr_scale": 1.0,
            },
        ),
        (
            10,
            {
                "projector.teacher_epochs": [0.4, 0.55, 0.75],
                "distill.adapt_steps": 1200,
                "distill.adapt_batch": 25,
                "distill.adapt_lr_scale": 2.0,
            },
        ),
        (
            10**9,
            {
                "projector.teacher_epochs": [0.4, 0.55, 0.75],
                "distill.adapt_steps": 1200,
                "distill.adapt_batch": 25,
                "distill.adapt_lr_scale": 2.0,
                "distill.candidates_per_class": 100,  # RDED needs more candidates than IPC x factor^2
                # five times IPC 10's student iterations: the sources the paper's table needs, so that
                # `hellodd run --ipc 1 10 50` fits its time budget on the 2-core machine (docs/performance.md)
                "evaluate.label_sources": ["hard", "teacher", "stored", "projector"],
                "evaluate.baseline_sources": ["hard", "projector"],
            },
        ),
    ),
}
IPC_SETTINGS["places365"] = IPC_SETTINGS["imagenet-1k"]


def ipc_settings(preset_name: str, ipc: int) -> dict[str, typing.Any]:
    """The fields ``preset_name`` sets for ``ipc`` (empty for a preset without per-IPC settings)."""
    for max_ipc, values in IPC_SETTINGS.get(preset_name, ()):
        if ipc <= max_ipc:
            return {k: list(v) if isinstance(v, list) else v for k, v in values.items()}
    return {}


def apply_ipc_settings(cfg: Config, keep: typing.Collection[str] = ()) -> None:
    for key, value in ipc_settings(cfg.preset, cfg.distill.ipc).items():
        if key not in keep:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)


def _window_pool(preset_name: str, epochs: float) -> list[float]:
    """Every epoch any window of ``preset_name`` uses, plus the final one (the observer)."""
    windows = [v["projector.teacher_epochs"] for _, v in IPC_SETTINGS[preset_name]]
    return sorted({e for w in windows for e in w} | {float(epochs)})


def _fashion_mnist() -> Config:
    """Laptop demo: every stage on a 2-core CPU, on real Fashion-MNIST (docs/performance.md for its time)."""
    return Config(
        preset="fashion-mnist",
        out="runs/fashion-mnist",
        data=DataConfig(name="fashion-mnist", root=FASHION_MNIST_DEBIAN, image_size=28),
        teacher=TeacherConfig(
            arch="convnet",
            epochs=1,
            batch_size=256,
            lr=0.01,
            momentum=0.9,
            weight_decay=5e-4,
            lr_step=0.5,
            lr_gamma=0.3,
            pool_epochs=[0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.55, 0.75, 1.0],
            augment="flip",
        ),
        projector=ProjectorConfig(
            base="efficientnet-lite0",
            # 96 px rather than 64: at the same adapter bytes the projector labels better at every IPC
            # measured (docs/results.md, "A better copy"), for a little more time per label
            image_size=96,
            encoder_rank=8,
            head_rank=8,
            lr=3e-3,
            head_lr=3e-2,
            epochs=1,
            batch_size=128,
            train_per_class=2000,
            augment="flip",
            num_teachers=3,  # the window itself follows the IPC (IPC_SETTINGS)
            # adapters only on the output half of the encoder: a quarter less time per epoch for the same
            # val accuracy within a third of a point (docs/performance.md); the time pays for distill.adapt_steps
            frozen_depth=0.5,
            # the seeded-random-base ablation is a separate command (docs/results.md), not part of every run
            ablate_random_base=False,
        ),
        # what measured best here (docs/results.md, "Do the images earn their place?"): RDED scoring whole images
        # (crop_min_scale 1) among 20 candidates per class, and no image update; the paper's crops (area
        # 0.08-1) among 100 candidates kept the easiest images and lost 7.6 points of hard-label accuracy
        # to a random subset; the update lowered every label source by 0.4-1.0 point (3 seeds, 100 epochs)
        distill=DistillConfig(
            ipc=10,
            factor=1,
            candidates_per_class=20,
            crops_per_image=3,
            crop_min_scale=1.0,
            update=False,
            update_epochs=100,  # the demo's own budget if the update is switched on: 100 batches of all 100 images
            update_batch_size=100,
            # the view adaptation, the projector's strongest lever here, follows the IPC (IPC_SETTINGS)
        ),
        # bf16 autocast where the CPU computes it natively (engine.precision=auto) and compiled evaluation:
        # what makes the 300-epoch protocol fit the demo's budget; fp32 elsewhere (docs/performance.md)
        engine=EngineConfig(precision="auto"),
        evaluate=EvaluateConfig(
            compile=True,
            students=["convnet"],
            epochs=300,  # supplement Table 3
            batch_size=100,
            seeds=[0, 1, 2],
            label_sources=["hard", "teacher", "weak-teachers", "stored", "compressed", "projector"],
            # the random subset answers "does the set earn its place?" for the labels at stake: hard and the
            # projector's (its teacher row, 0.28 under the set's, is one --set away: docs/results.md)
            baseline_sources=["hard", "projector"],
        ),
    )


def _imagenet(preset: str, head_rank: int) -> Config:
    """Supplement Tables 1-3, A.4 (ranks) and A.5 (image update); windows per IPC from IPC_SETTINGS."""
    return Config(
        preset=preset,
        out=f"runs/{preset}",
        data=DataConfig(name="imagefolder", image_size=224, workers=8),
        teacher=TeacherConfig(pool_epochs=_window_pool(preset, 90)),
        projector=ProjectorConfig(head_rank=head_rank),
    )


def _glyphs(
    classes: int,
    ipc: int,
    train_renderings: int,
    val_renderings: int,
    teacher_epochs: int,
    window: tuple[float, ...],
    base: str = "imagenet",
) -> Config:
    """The heavy-label regime on real typefaces (hellodd.glyphs): ``classes`` characters, 32-px grey, split by
    typeface.  The teacher trains to convergence with its pool along the trajectory; the weak teachers are
    an early window of it (supplement A.2's rule); the projector's head has LoRA rank 128 (A.4); every stored-label
    compressor of the field is swept beside the projector (its extra points on the first seed only).

    ``base``: ``imagenet`` (EfficientNet-Lite0 at 64 px, the measured runs of docs/heavy-labels.md) or
    ``glyph-base`` (the ``glyphs-base`` preset's classifier, pretrained on characters none of these presets
    uses, read at its own 32 px with LoRA on every convolution)."""
    e = float(teacher_epochs)
    on_glyphs = {
        "base": "classifier:convnet",
        "checkpoint": GLYPH_BASE_CHECKPOINT,
        "image_size": 32,
        "frozen_depth": 0.0,
    }
    projector = {"base": "efficientnet-lite0", "image_size": 64, "frozen_depth": 0.5}
    projector |= on_glyphs if base == "glyph-base" else {}
    pool = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0] + [float(x) for x in range(4, teacher_epochs + 1)]
    sweep = [f"{m}:{x}" for m in ("lpld", "lpqld") for x in ("10", "40", "200", "adapters")]
    name = f"glyphs-{classes}" + ("" if base == "imagenet" else f"-{base}")
    return Config(
        preset=name,
        out=f"runs/{name}",
        data=DataConfig(
            name="glyphs",
            root=FONTS_DEBIAN,
            image_size=32,
            glyph_classes=classes,
            glyph_train_renderings=train_renderings,
            glyph_val_renderings=val_renderings,
        ),
        teacher=TeacherConfig(
            arch="convnet",
            epochs=e,
            batch_size=256,
            lr=0.02,
            momentum=0.9,
            weight_decay=5e-4,
            lr_step=max(1.0, round(e / 3)),
            lr_gamma=0.3,
            pool_epochs=pool,
            augment="none",
            eval_batch_size=1000,
        ),
        projector=ProjectorConfig(
            head_init="prototypes",
            encoder_rank=8,
            head_rank=128,
            lr=3e-3,
            head_lr=3e-2,
            epochs=2,
            batch_size=128,
            augment="none",
            teacher_epochs=list(window),
            num_teachers=3,
            ablate_random_base=False,
            **projector,
        ),
        distill=DistillConfig(
            ipc=ipc,
            factor=1,
            candidates_per_class=10,
            crops_per_image=1,
            crop_min_scale=1.0,
            update=False,
            adapt_steps=600,
            adapt_batch=100,
            adapt_lr_scale=1.0,
        ),
        engine=EngineConfig(precision="auto"),
        evaluate=EvaluateConfig(
            compile=True,
            students=["convnet"],
            epochs=300,
            batch_size=100,
            seeds=[0, 1, 2],
            label_sources=["hard", "teacher", "weak-teachers", "stored", *sweep, "projector"],
            sweep_seeds=[0],
            baseline_sources=["hard", "teacher", "projector"],
            keep_stored=False,
        ),
    )


# the glyphs-base preset's final classifier, where `hellodd teachers --preset glyphs-base` writes it
GLYPH_BASE_CHECKPOINT = "runs/glyphs-base/teachers/final.safetensors"


def _glyph_base() -> Config:
    """A glyph foundation model that never saw a class of the glyphs presets: a classifier of the 2,000
    characters ranked 1,001-3,000, trained on the training faces only and validated on other renderings of
    them (never a held-out face); ranks 1-1,000 are refused.  Only its teacher stage is meant to run: its
    final checkpoint is the projector base of the ``glyphs-*-glyph-base`` presets."""
    return Config(
        preset="glyphs-base",
        out="runs/glyphs-base",
        data=DataConfig(
            name="glyphs",
            root=FONTS_DEBIAN,
            image_size=32,
            glyph_classes=2000,
            glyph_first=1000,
            glyph_reserved=1000,
            glyph_val_faces="train",
            # 40 renderings per class (20 faces x 2), validated on one more per face: 120,000 images to render
            glyph_train_renderings=2,
            glyph_val_renderings=1,
        ),
        # the calibration's ConvNet-D3 (two epochs on 1,000 of these characters read the glyphs-100 faces at 39%
        # zero-shot) on twice the classes for twice the epochs; its time and what it reads: docs/heavy-labels.md
        teacher=TeacherConfig(
            arch="convnet",
            epochs=4,
            batch_size=256,
            lr=0.02,
            momentum=0.9,
            weight_decay=5e-4,
            lr_step=2,
            lr_gamma=0.3,
            pool_epochs=[2.0, 4.0],
            augment="none",
            eval_batch_size=1000,
        ),
        engine=EngineConfig(precision="auto"),
    )


def _segmentation(
    name: str,
    data: DataConfig,
    teacher: TeacherConfig,
    projector: dict,
    subset: float,
    evaluate: dict,
    precision: str = "auto",
) -> Config:
    """A segmentation preset: the observer's subset of ``subset`` training images (lowest teacher loss, balanced
    by pixels) with the random one beside it, the weak teachers at 30-50% of the trajectory, dense label
    sources; students of the teacher's architecture unless ``evaluate`` names others."""
    return Config(
        preset=name,
        out=f"runs/{name}",
        data=data,
        teacher=teacher,
        projector=ProjectorConfig(
            dense=True,
            teacher_epochs=[e for e in teacher.pool_epochs if 0.3 <= e / teacher.epochs <= 0.5],
            **projector,
        ),
        distill=DistillConfig(init="rded", update=False, subset=subset),
        engine=EngineConfig(precision=precision),
        evaluate=EvaluateConfig(
            **{
                "students": [teacher.arch],
                "label_sources": list(DENSE_SOURCES),
                "baseline_sources": list(DENSE_SOURCES),
            }
            | evaluate
        ),
    )


def _scenes(
    name: str,
    root: str,
    size: int,
    train: int,
    val: int,
    teacher: TeacherConfig,
    projector: dict,
    subset: int,
    evaluate: dict,
    precision: str = "auto",
) -> Config:
    """The segmentation task's demo on composed scenes, and its test-sized twin."""
    data = DataConfig(name=name, root=root, image_size=size, scenes_train=train, scenes_val=val)
    return _segmentation(name, data, teacher, projector, subset, evaluate, precision)


def _sam_segmentation(name: str, data: DataConfig, subset: float) -> Config:
    """A real segmentation dataset with the supplement's B.4 recipe: a SAM ViT-B image encoder as the dense
    projector's base (the user's checkpoint: ``--set projector.checkpoint=sam_vit_b_01ec64.pth``; a run without
    it is refused before any stage), a DeepLabV3 teacher, a subset of the training images as the set."""
    teacher = TeacherConfig(
        arch="deeplabv3_resnet50",
        epochs=30,
        batch_size=16,
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        lr_step=10,
        lr_gamma=0.3,
        pool_epochs=[1.0, 3.0, 6.0, 9.0, 12.0, 15.0, 20.0, 25.0, 30.0],
        augment="flip",
        eval_batch_size=16,
    )
    projector = {
        "base": "sam:vit_b",
        "image_size": 1024,
        "encoder_rank": 8,
        "head_rank": 0,  # SAM's head is learnt in full
        "lr": 1e-3,
        "head_lr": 1e-2,
        "epochs": 10,
        "batch_size": 8,
        "augment": "flip",
    }
    evaluate = {
        "students": ["deeplabv3_mobilenet_v3_large"],
        "baseline_sources": ["hard", "teacher", "projector"],
        "epochs": 300,
        "batch_size": 16,
        "eval_batch_size": 16,
        "keep_stored": False,
    }
    return _segmentation(name, data, teacher, projector, subset, evaluate, precision="32-true")


# the two heavy-label presets: ImageNet-100's and ImageNet-1K's analogues on printed Han characters
GLYPHS_100 = dict(
    classes=100, ipc=10, train_renderings=10, val_renderings=5, teacher_epochs=8, window=(1.0, 1.5, 2.0)
)
GLYPHS_1000 = dict(
    classes=1000, ipc=1, train_renderings=3, val_renderings=2, teacher_epochs=6, window=(1.5, 2.0, 3.0)
)

PRESETS: dict[str, typing.Callable[[], Config]] = {
    "fashion-mnist": _fashion_mnist,
    "imagenet-100": lambda: _imagenet("imagenet-100", head_rank=64),
    "imagenet-1k": lambda: _imagenet("imagenet-1k", head_rank=128),
    "places365": lambda: _imagenet("places365", head_rank=128),
    # the heavy-label regime: the ImageNet-100 and ImageNet-1K analogues on printed Han characters
    "glyphs-100": lambda: _glyphs(**GLYPHS_100),
    # weak teachers where the trajectory reaches a quarter to three quarters of its final accuracy, as epochs
    # 2-18 of ImageNet-1K's 90 do for a ResNet-18 (docs/heavy-labels.md): 10%, 20% and 34% against 44.5%
    "glyphs-1000": lambda: _glyphs(**GLYPHS_1000),
    # the same with a base that knows characters: the glyphs-base preset's classifier (train it first)
    "glyphs-base": _glyph_base,
    "glyphs-100-glyph-base": lambda: _glyphs(**GLYPHS_100, base="glyph-base"),
    # its weak teachers chosen on renderings of the training faces that no reported number uses
    # (benchmarks/transfer_selection.py; docs/heavy-labels.md): the latest window, the final teacher included
    "glyphs-1000-glyph-base": lambda: _glyphs(
        **(GLYPHS_1000 | {"window": (4.0, 5.0, 6.0)}), base="glyph-base"
    ),
    # segmentation: 64-px scenes of real Fashion-MNIST garments; a small FCN teacher, 20 epochs (val mIoU 38.2%
    # against 30.8% after 10: docs/segmentation.md)
    "fashion-mnist-scenes": lambda: _scenes(
        "fashion-mnist-scenes",
        FASHION_MNIST_DEBIAN,
        64,
        4000,
        1000,
        TeacherConfig(
            arch="convnet-fcn",
            epochs=20,
            batch_size=64,
            lr=0.05,
            momentum=0.9,
            weight_decay=5e-4,
            lr_step=8,
            lr_gamma=0.3,
            pool_epochs=[1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0],
            augment="flip",
            eval_batch_size=200,
        ),
        # the dense projector: EfficientNet-Lite0 at the scenes' own 64 px, its last two stride-2 stages
        # dilated (an 8x8 feature map), the mapped ImageNet classifier at every location
        {
            "base": "efficientnet-lite0",
            "output_stride": 8,
            "image_size": 64,
            "encoder_rank": 8,
            "head_rank": 8,
            "lr": 3e-3,
            "head_lr": 3e-2,
            "epochs": 3,
            "batch_size": 100,
            "augment": "flip",
            "frozen_depth": 0.5,
        },
        100,
        # 100 epochs, not the classification demo's 300: every source on both subsets within the demo's
        # time; stored maps (about 0.9 GB per seed) are deleted once each seed is done
        {"compile": True, "epochs": 100, "batch_size": 100, "eval_batch_size": 200, "keep_stored": False},
    ),
    # segmentation on real data in its own layout, with SAM ViT-B as the projector's base (docs/segmentation.md)
    "voc": lambda: _sam_segmentation(
        "voc", DataConfig(name="voc", root="data/VOCdevkit/VOC2012", image_size=512), 0.1
    ),
    "ade20k": lambda: _sam_segmentation(
        "ade20k", DataConfig(name="masks", root="data/ade20k", image_size=512), 0.05
    ),
    "synthetic-scenes": lambda: _scenes(
        "synthetic-scenes",
        "",
        16,
        24,
        8,
        TeacherConfig(
            arch="convnet-fcn-w16",
            epochs=2,
            batch_size=8,
            lr=0.01,
            pool_epochs=[0.5, 1.0, 1.5],
            augment="flip",
        ),
        {
            "base": "efficientnet-lite0",
            "random_init": True,
            "output_stride": 8,
            "image_size": 32,
            "encoder_rank": 2,
            "head_rank": 2,
            "epochs": 1,
            "batch_size": 8,
            "lr": 5e-3,
            "augment": "flip",
            "frozen_depth": 0.5,
        },
        6,
        {"epochs": 3, "batch_size": 4, "seeds": [0, 1], "compressed_topk": 2},
        # the test presets fix their precision, so the tests compute the same way on every CPU
        precision="bf16-mixed",
    ),
    "synthetic": lambda: Config(
        preset="synthetic",
        out="runs/synthetic",
        data=DataConfig(name="synthetic", image_size=16),
        teacher=TeacherConfig(
            arch="convnet", epochs=2, batch_size=16, lr=0.01, pool_epochs=[0.5, 1.0, 1.5], augment="flip"
        ),
        projector=ProjectorConfig(
            base="clip:hellodd-RN-tiny",
            random_init=True,
            image_size=32,
            encoder_rank=4,
            head_rank=4,
            epochs=1,
            batch_size=16,
            lr=5e-3,
            num_teachers=2,
            augment="flip",
        ),
        distill=DistillConfig(
            ipc=2,
            factor=2,
            candidates_per_class=12,
            crops_per_image=2,
            update_epochs=3,  # 6 batches of 4 of the 8 images
            update_batch_size=4,
            adapt_steps=3,
            adapt_check_views=24,  # the tests' budget: a few batches per check
            adapt_probe_views=48,
        ),
        engine=EngineConfig(precision="32-true"),  # fixed, as synthetic-scenes': the same on every CPU
        evaluate=EvaluateConfig(
            students=["convnet-d2-w16"],
            epochs=3,
            batch_size=4,
            seeds=[0, 1],
            label_sources=list(LABEL_SOURCES[:-1]),
            compressed_topk=2,
        ),
    ),
}


def preset(name: str) -> Config:
    """The preset's config, with its per-IPC settings for its own ``distill.ipc``."""
    if name not in PRESETS:
        raise UserError(f"--preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    cfg = PRESETS[name]()
    apply_ipc_settings(cfg)
    return cfg
