"""The configuration's schema: one dataclass per stage.  A closed choice is a ``Literal`` type, so the
``--set`` parser and :func:`hellodd.config.validate` take their lists of choices from the types."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Literal

# every label source evaluate knows (labels.py documents each)
LabelSourceName = Literal[
    "hard",
    "teacher",
    "weak-teachers",
    "stored",
    "compressed",
    "projector",
    "projector-transfer",
]
LABEL_SOURCES: tuple[str, ...] = typing.get_args(LabelSourceName)
# a refinement of a logit source's targets at zero bytes, asked for as "<source>+<refinement>" (e.g.
# projector+gift): gift = GIFT (ICLR 2025), the source's logits mixed with smoothed hard labels, cosine loss
Refinement = Literal["gift"]
LABEL_REFINEMENTS: tuple[str, ...] = typing.get_args(Refinement)

DataName = Literal[
    "fashion-mnist",
    "imagefolder",
    "synthetic",
    "glyphs",
    "fashion-mnist-scenes",
    "synthetic-scenes",
    "voc",
    "masks",
]
IGNORE_INDEX = 255  # a class map's unlabelled pixels (hellodd.config.tasks: which datasets have maps)
GlyphValFaces = Literal["held-out", "train"]
Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed", "64-true"]
Augment = Literal["none", "flip", "crop-flip", "rrc-flip"]
FloatDtype = Literal["float32", "float16", "bfloat16"]
Init = Literal["rded", "random", "folder"]
Loss = Literal["mse", "kl"]
Schedule = Literal["half-cosine", "cosine"]
HeadInit = Literal["names", "prototypes"]
Parallel = Literal["data", "runs"]
ADAPTER_DTYPES: tuple[str, ...] = typing.get_args(FloatDtype)

# torchvision classifiers a teacher or student may be, besides hellodd's ConvNet (convnet, convnet-dN-wM)
TORCHVISION_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "shufflenet_v2_x0_5",
    "mobilenet_v2",
    "efficientnet_b0",
    "swin_v2_t",
    "vgg11",
    "vit_b_16",
)


def is_architecture(arch: str) -> bool:
    """Whether :func:`hellodd.models.build_model` knows ``arch``."""
    return bool(re.fullmatch(r"convnet(?:-d\d)?(?:-w\d+)?", arch)) or arch in TORCHVISION_ARCHS


def split_source(name: str) -> tuple[str, str]:
    """``"teacher+gift"`` -> ``("teacher", "gift")``; ``"teacher"`` -> ``("teacher", "")``."""
    base, _, refinement = name.partition("+")
    return base, refinement


# the field's stored-label compressors, asked for at a ratio: "lpld:40", "lpqld:200", "lpld:adapters"
# (hellodd.compressors): X >= 1, or "adapters" (the ratio at which they weigh the projector's adapters)
COMPRESSOR_SOURCE = re.compile(r"(lpld|lpqld):(adapters|\d+(?:\.\d+)?)")


def is_compressor_source(name: str) -> bool:
    m = COMPRESSOR_SOURCE.fullmatch(name)
    return bool(m) and (m.group(2) == "adapters" or float(m.group(2)) >= 1)


def is_label_source(name: str) -> bool:
    base, refinement = split_source(name)
    if is_compressor_source(base):
        return not refinement
    return base in LABEL_SOURCES and (not refinement or (refinement in LABEL_REFINEMENTS and base != "hard"))


@dataclass
class DataConfig:
    name: DataName = "fashion-mnist"
    root: str = ""  # fashion-mnist: folder of IDX files; imagefolder: folder with train/ and val/
    image_size: int = 28  # resolution every stage sees (ImageFolder images are resized to it)
    train_per_class: int = 0  # cap on training images per class (0 = all)
    val_per_class: int = 0  # cap on validation images per class (0 = all)
    synthetic_classes: int = 4  # synthetic only
    synthetic_per_class: int = 24  # synthetic only
    scenes_train: int = 4000  # fashion-mnist-scenes / synthetic-scenes: train scenes composed
    scenes_val: int = 1000  # ... and val scenes
    # glyphs (hellodd.glyphs): root is the fonts folder; the N most common characters every face covers, each
    # rendered this many times per training face / validation face, seeded; the Unihan file that ranks them
    glyph_classes: int = 100
    glyph_first: int = 0  # the classes are ranks glyph_first + 1 to glyph_first + glyph_classes
    # ranks 1 to glyph_reserved are other presets' classes, refused here (a base pretrained on other characters)
    glyph_reserved: int = 0
    glyph_val_faces: GlyphValFaces = "held-out"  # train: validate on other renderings of the training faces
    glyph_train_renderings: int = 3
    glyph_val_renderings: int = 2
    glyph_seed: int = 0
    glyph_unihan: str = "/usr/share/unicode/Unihan_DictionaryLikeData.txt.bz2"
    max_images: int = 0  # voc / masks: the first N images of each split (0 = all)
    workers: int = 0  # DataLoader workers for ImageFolder data (in-memory data always uses 0)


@dataclass
class EngineConfig:
    accelerator: str = "auto"  # auto | cpu | cuda | mps
    devices: int = 1  # processes per node
    num_nodes: int = 1
    # auto: bf16-mixed where the device computes bf16 natively, else 32-true (hellodd.precision); a run
    # replaces it with what it chose and says why in precision_why (written by the run, not an input)
    precision: Precision = "auto"
    seed: int = 0
    precision_why: str = ""


@dataclass
class TeacherConfig:
    """Supplement Table 1 (torchvision reference recipe) unless a preset says otherwise."""

    arch: str = "resnet18"
    epochs: float = 90
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: float = 30  # epochs between LR drops (StepLR)
    lr_gamma: float = 0.1
    # checkpoints kept along the trajectory; the paper presets keep every epoch their weak-teacher windows use
    pool_epochs: list[float] = field(default_factory=lambda: [10.0 * i for i in range(1, 10)])
    augment: Augment = "rrc-flip"
    eval_batch_size: int = 500


@dataclass
class ProjectorConfig:
    """Supplement A.3/A.4 and Table 2."""

    base: str = "clip:RN50"  # clip:<open_clip architecture> | efficientnet-lite0 | efficientnet-lite2
    checkpoint: str = ""  # local weights for a clip base (OpenAI or open_clip format)
    random_init: bool = False  # seeded random base weights (the seed is the whole storage)
    # the head's start: "names" (CLIP's text embeddings of the class names, or EfficientNet's ImageNet rows
    # mapped by name) or "prototypes" (the base's own features of each class's public prototype image, e.g. a
    # character rendered in a reference face: for classes whose names say nothing to the base; zero bytes)
    head_init: HeadInit = "names"
    prototype_font: str = "/usr/share/fonts/truetype/arphic/uming.ttc"  # head_init=prototypes: the face drawn
    base_seed: int = 0
    image_size: int = 224  # projector input resolution
    # dense: a logit map per image (segmentation), the head applied at every location of the encoder's
    # feature map, at output_stride (EfficientNet: 32, or 16 / 8 with dilated convolutions)
    dense: bool = False
    output_stride: int = 32
    encoder_rank: int = 8
    head_rank: int = 128
    # fraction of encoder layers, from the input side, left without adapters (0 = all adapted, the paper)
    frozen_depth: float = 0.0
    # weak teachers (pool epochs; the presets set them per IPC, IPC_SETTINGS); empty = the position rule
    teacher_epochs: list[float] = field(default_factory=list)
    num_teachers: int = 9  # supplement Table 1's "model pool size": the weak teachers the projector imitates
    epochs: float = 20
    batch_size: int = 256
    lr: float = 5e-4
    head_lr: float = 0.0  # learning rate of the head's LoRA factors (0 = lr, the paper's single rate)
    weight_decay: float = 0.01
    ce_weight: float = 0.1
    augment: Augment = "rrc-flip"
    # fraction of transfer batches CutMix-ed (alpha 1, the teachers relabel the mixed images), since students
    # ask the projector to label CutMix-ed views (optional, the paper does not say; docs/method.md; 0 = off)
    cutmix_prob: float = 0.0
    train_per_class: int = 0  # subset of the training set used for transfer (0 = all)
    ablate_random_base: bool = False  # also train the same adapters on a seeded-random base
    # precision the adapter file is saved in (loaded back to float32): the stored bytes, a storage knob
    adapter_dtype: FloatDtype = "float32"


@dataclass
class DistillConfig:
    """RDED initialisation (Sun et al. 2024) + the projector-aware update (supplement A.5)."""

    ipc: int = 10
    init: Init = (
        "rded"  # rded | random (random real images per class) | folder (distill.images, made elsewhere)
    )
    images: str = ""  # init=folder: an ImageFolder of distilled images (selection and update are skipped)
    update: bool = True  # run the image update after the initialisation
    factor: int = 2  # patches per side stitched into one image (1 = no stitching)
    candidates_per_class: int = 300
    crops_per_image: int = 5
    crop_min_scale: float = (
        0.08  # area range (crop_min_scale, 1) of RDED's candidate crops (torchvision's 0.08)
    )
    score_batch_size: int = 256
    # image-update budget in epochs, one epoch = one pass over all IPC x C distilled images (supplement A.5: 300)
    update_epochs: float = 300
    update_lr: float = 0.01
    update_batch_size: int = 50
    agreement_weight: float = 1.0  # beta: weight of the observer-projector KL term in the update objective
    # hellodd's step, not the paper's: batches of student views (crops, flips, CutMix) of the distilled set on
    # which the projector's adapters continue the transfer from the weak teachers (0 = off, the paper)
    adapt_steps: int = 0
    adapt_lr_scale: float = (
        1.0  # the view adaptation's learning rates: the transfer's (projector.lr, head_lr) x this
    )
    # checks on selection views over the view adaptation's budget: a check clearly worse than the best so far
    # (a collapse) puts the best adapters back and halves the rates (0 = no checks)
    adapt_checks: int = 10
    # views the checks measure (a selection stream of its own) and the held-out views the adaptation is
    # reported on, before and after (each rounded up to whole student batches)
    adapt_check_views: int = 300
    adapt_probe_views: int = 1000
    # views per view-adaptation step (0 = evaluate.batch_size, the students' batch)
    adapt_batch: int = 0
    # segmentation: the distilled subset's size, a count of training images (>= 1) or a fraction of them (< 1)
    subset: float = 100


@dataclass
class EvaluateConfig:
    """Supplement Table 3; the RDED evaluation pipeline where the paper is silent."""

    students: list[str] = field(default_factory=lambda: ["resnet18"])
    label_sources: list[str] = field(default_factory=lambda: ["hard", "teacher", "stored", "projector"])
    # sources evaluated on a random real subset of the same IPC by `hellodd run` (empty = no baseline)
    baseline_sources: list[str] = field(default_factory=lambda: ["hard", "teacher", "projector"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 300
    batch_size: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.01
    ce_weight: float = 0.025
    cutmix_alpha: float = 1.0
    loss: Loss = "mse"  # mse: MSE on logits + ce_weight * CE; kl: KL at temperature
    temperature: float = 20.0
    schedule: Schedule = "half-cosine"  # RDED's, or cosine to 0
    stored_dtype: FloatDtype = "float16"
    # the "compressed" source: stored labels keeping the top-k logits per view (fp16 values + class indices;
    # the other classes get the mean of the dropped logits) for a fraction of the epochs (the rest replay them)
    compressed_topk: int = 3
    compressed_epoch_fraction: float = 0.5
    # seeds of the stored-label compressors' sweep (lpld:X, lpqld:X): their extra points may use fewer seeds than
    # the main sources (empty = evaluate.seeds)
    sweep_seeds: list[int] = field(default_factory=list)
    # lpqld:X: the teacher temperature of its rebuilt targets follows LPQLD's dynamic knowledge reuse (from
    # evaluate.temperature down 0.7x per tenth of training, >= 2); false: evaluate.temperature throughout
    lpqld_reuse: bool = True
    # false: each seed's stored label files are deleted once its runs are done (their bytes are measured
    # first), for dense labels that would crowd the disk: a run that resumes writes them again
    keep_stored: bool = True
    eval_batch_size: int = 500
    crop_min_scale: float = 0.5  # random-resized-crop area range (crop_min_scale, 1); RDED uses 1/factor
    lr_per_arch: bool = False  # RDED's per-architecture learning rates instead of evaluate.lr
    # torch.compile the students and the online labellers (inductor; needs a C++ compiler on a CPU): with bf16
    # autocast, the demo's student steps run about twice as fast as eager fp32 (docs/performance.md)
    compile: bool = False
    # with several processes: "data" trains each (source, student, seed) run data-parallel over all ranks, one
    # run after another; "runs" gives each rank whole runs (round-robin), each trained as a one-process run on
    # that rank's device, so the results equal a one-process evaluation's (for many small runs, e.g. small sets)
    parallel: Parallel = "data"


@dataclass
class Config:
    preset: str = "fashion-mnist"
    out: str = "runs/fashion-mnist"
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
