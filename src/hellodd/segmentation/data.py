"""Segmentation datasets behind one interface: uint8 images ``[N, C, S, S]`` with uint8 class maps
``[N, S, S]`` (:data:`IGNORE` = not labelled), train and val apart, and the class names.

Sources, each in the layout it ships in:

* ``voc``: Pascal VOC 2012 (``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` palette PNGs whose indices
  are the classes, 255 on object borders, ``ImageSets/Segmentation/{train,val}.txt``), 21 classes.
* ``masks``: a generic tree, ``images/{train,val}/<name>.<jpg|png>``, ``masks/{train,val}/<name>.png``
  (one channel of class ids, or a palette PNG; 255 = ignore) and ``classes.txt`` (one name per line, the
  line's index is the id).  ADE20K or Cityscapes exports fit it once their folders are renamed.
* ``fashion-mnist-scenes``: scenes composed from real Fashion-MNIST garments (:mod:`.scenes`).
* ``synthetic-scenes``: the same composition from generated shapes, tiny, for the tests.

Images are resized (shorter side, bilinear) and centre-cropped to ``image_size``; masks get the same
geometry with nearest-neighbour sampling, so no new class ids appear.  Every file is checked as it is
read: a mask whose size differs from its image, a class id outside the classes, an image without a mask
and an unreadable file each stop the run with one line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from hellodd.config import IGNORE_INDEX
from hellodd.errors import UserError

IGNORE = IGNORE_INDEX

VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "dining table",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv monitor",
]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class MaskedImages(Dataset):
    """In-memory uint8 images ``[N, C, S, S]`` and their uint8 class maps ``[N, S, S]``: a split."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor):
        if not (images.dtype == masks.dtype == torch.uint8 and images.ndim == 4 and masks.ndim == 3):
            raise ValueError("MaskedImages: uint8 images [N, C, S, S] and uint8 masks [N, S, S]")
        if len(images) != len(masks) or images.shape[-2:] != masks.shape[-2:]:
            raise ValueError("MaskedImages: one mask of the image's size per image")
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.masks[i]


def load_segmentation(cfg, seed: int = 0):
    """The configured segmentation dataset (``DataConfig``) as a :class:`~hellodd.data.DataBundle` whose
    splits are :class:`MaskedImages`."""
    from hellodd.data import DataBundle  # the classification data layer's bundle, shared by both tasks

    if cfg.name in ("fashion-mnist-scenes", "synthetic-scenes"):
        data = load_scenes(
            cfg.name, cfg.root, cfg.image_size, cfg.scenes_train, cfg.scenes_val, seed, cfg.synthetic_classes
        )
    else:
        root = Path(cfg.root)
        if not cfg.root or not root.is_dir():
            raise UserError(
                f"--data {cfg.root or '(none)'}: folder not found (a {cfg.name} dataset needs --data PATH)"
            )
        loader = load_voc if cfg.name == "voc" else load_masks_tree
        data = loader(root, cfg.image_size, cfg.max_images)
    return DataBundle(
        data.train, data.val, data.classes, data.train.images.shape[1], cfg.image_size, data.source
    )


@dataclass
class SegmentationData:
    train: MaskedImages
    val: MaskedImages
    classes: list[str]
    source: str  # what the data is: a dataset's folder and file count, or the scenes' id


def _open(path: Path, mode: str | None = None) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode) if mode else im.copy()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__})") from None


def _square(image: Image.Image, mask: Image.Image, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize the shorter side to ``size`` and centre-crop: bilinear for the image, nearest for the mask."""
    w, h = image.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    image = image.resize((nw, nh), Image.BILINEAR)
    mask = mask.resize((nw, nh), Image.NEAREST)
    left, top = (nw - size) // 2, (nh - size) // 2
    box = (left, top, left + size, top + size)
    img = torch.from_numpy(np.asarray(image.crop(box), dtype=np.uint8).copy())
    img = img[None] if img.ndim == 2 else img.permute(2, 0, 1)
    return img.contiguous(), torch.from_numpy(np.asarray(mask.crop(box), dtype=np.uint8).copy())


def read_pair(image_path: Path, mask_path: Path, num_classes: int, size: int, channels: int = 3):
    """One image and its class map, checked and brought to ``size``: (uint8 [C, S, S], uint8 [S, S])."""
    if not mask_path.is_file():
        raise UserError(f"{image_path}: no mask (expected {mask_path})")
    image = _open(image_path, "RGB" if channels == 3 else "L")
    mask = _open(mask_path)
    if mask.mode not in ("P", "L"):
        raise UserError(
            f"{mask_path}: a mask must be one channel of class ids (mode L or P), not {mask.mode}"
        )
    if mask.size != image.size:
        raise UserError(
            f"{mask_path}: mask is {mask.size[0]}x{mask.size[1]} px, its image {image_path.name} is "
            f"{image.size[0]}x{image.size[1]}"
        )
    ids = np.unique(np.asarray(mask))
    bad = [int(i) for i in ids if i >= num_classes and i != IGNORE]
    if bad:
        raise UserError(
            f"{mask_path}: class id {bad[0]} is outside the {num_classes} classes (0-{num_classes - 1}, "
            f"{IGNORE} = ignore)"
        )
    return _square(image, mask, size)


def _stack(pairs) -> MaskedImages:
    images, masks = zip(*pairs) if pairs else ((), ())
    if not images:
        raise UserError("a split has no images")
    return MaskedImages(torch.stack(images), torch.stack(masks))


def _split_names(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        raise UserError(f"--data {root}: no {path.relative_to(root)} (not a Pascal VOC 2012 folder)")
    names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise UserError(f"{path}: lists no images")
    return names


def load_voc(root: Path, size: int, limit: int = 0) -> SegmentationData:
    """Pascal VOC 2012's segmentation splits (``limit`` > 0: the first ``limit`` names of each list)."""
    splits = {}
    for split in ("train", "val"):
        names = _split_names(root, split)[: limit or None]
        pairs = [
            read_pair(
                root / "JPEGImages" / f"{n}.jpg",
                root / "SegmentationClass" / f"{n}.png",
                len(VOC_CLASSES),
                size,
            )
            for n in names
        ]
        splits[split] = _stack(pairs)
    return SegmentationData(splits["train"], splits["val"], list(VOC_CLASSES), f"voc:{root}")


def read_classes(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"--data {path.parent}: no classes.txt (one class name per line, line index = id)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not 2 <= len(names) < IGNORE:
        raise UserError(f"{path}: {len(names)} classes (2 to {IGNORE - 1} needed)")
    return names


def load_masks_tree(root: Path, size: int, limit: int = 0) -> SegmentationData:
    """The generic ``images/`` + ``masks/`` tree with ``classes.txt``."""
    classes = read_classes(root / "classes.txt")
    splits = {}
    for split in ("train", "val"):
        folder = root / "images" / split
        if not folder.is_dir():
            raise UserError(f"--data {root}: no images/{split}/ folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: limit or None]
        if not files:
            raise UserError(f"{folder}: no .jpg or .png images")
        pairs = [read_pair(p, root / "masks" / split / f"{p.stem}.png", len(classes), size) for p in files]
        splits[split] = _stack(pairs)
    return SegmentationData(splits["train"], splits["val"], classes, f"masks:{root}")


def load_scenes(
    name: str, root: str, size: int, train: int, val: int, seed: int, synthetic_classes: int = 3
) -> SegmentationData:
    """``fashion-mnist-scenes`` (garments from the IDX files under ``root``: train scenes from the train split,
    val scenes from the test split) or ``synthetic-scenes`` (generated shapes); ``size``-px canvases."""
    from hellodd.data import FASHION_MNIST_CLASSES, fashion_mnist_splits  # the classification data layer
    from hellodd.io import tensor_sha256
    from hellodd.segmentation.scenes import (
        TRAIN_STREAM,
        VAL_STREAM,
        SceneSettings,
        compose,
        garment_classes,
        scenes_id,
        synthetic_garments,
    )

    settings = SceneSettings(size=size)
    if name == "fashion-mnist-scenes":
        sources = fashion_mnist_splits(Path(root))
        names = list(FASHION_MNIST_CLASSES)
    else:
        names = [f"shape {c}" for c in range(synthetic_classes)]
        sources = {
            "train": synthetic_garments(synthetic_classes, 8, seed),
            "val": synthetic_garments(synthetic_classes, 4, seed + 1),
        }
    digest = tensor_sha256(
        torch.cat([t.flatten().to(torch.uint8) for s in ("train", "val") for t in sources[s]])
    )
    splits = {
        split: MaskedImages(*compose(*sources[split], count, settings, seed * 2 + stream))
        for split, count, stream in (("train", train, TRAIN_STREAM), ("val", val, VAL_STREAM))
    }
    return SegmentationData(
        splits["train"], splits["val"], garment_classes(names), scenes_id(settings, digest, train, val, seed)
    )


def check_segmentation_data(cfg) -> None:
    """What a run can check of its segmentation data before its first stage, reading no image: the folder,
    the split lists or folders and the classes file (each bad file is named again when it is read)."""
    if cfg.name == "synthetic-scenes":
        return
    root = Path(cfg.root)
    if not cfg.root or not root.is_dir():
        raise UserError(
            f"--data {cfg.root or '(none)'}: folder not found (a {cfg.name} dataset needs --data PATH)"
        )
    if cfg.name == "fashion-mnist-scenes":
        from hellodd.data import fashion_mnist_files  # the classification data layer knows the IDX files

        fashion_mnist_files(root)
    elif cfg.name == "voc":
        for split in ("train", "val"):
            _split_names(root, split)
    else:
        read_classes(root / "classes.txt")
        for split in ("train", "val"):
            if not (root / "images" / split).is_dir():
                raise UserError(f"--data {root}: no images/{split}/ folder")
