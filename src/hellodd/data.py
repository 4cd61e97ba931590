"""Datasets behind one interface: uint8 ``[C, S, S]`` images with integer labels, train and val apart.

Three sources:

* ``fashion-mnist``: the standard IDX files (``*-images-idx3-ubyte[.gz]``, ``*-labels-idx1-ubyte[.gz]``),
  as Debian's ``dataset-fashion-mnist`` installs them; held in memory.
* ``imagefolder``: a torchvision ``ImageFolder`` tree ``root/train/<class>/*`` and ``root/val/<class>/*``
  (how ImageNet-1K, ImageNet-100 and Places365 sit on disk).  Images are resized to ``image_size``
  (shorter side) and centre-cropped, as the supplement's "all images resized to 224x224"; training
  augmentation then happens on the batch (:mod:`hellodd.augment`).  Folder names that are WordNet IDs
  or Places365 categories are turned into readable class names (:mod:`hellodd.classnames`).
* ``synthetic``: a tiny generated dataset (class-dependent oriented gratings plus noise) for tests.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hellodd.classnames import readable_names
from hellodd.config import DataConfig
from hellodd.errors import UserError
from hellodd.layout import class_folder

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]


class TensorImages(Dataset):
    """In-memory uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        assert images.dtype == torch.uint8 and images.ndim == 4 and len(images) == len(labels)
        self.images, self.targets = images, labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


def square_uint8(size: int):
    """PIL image -> uint8 tensor, resized (short side) and centre-cropped to ``size`` x ``size``."""
    from torchvision import transforms  # lazy: its import costs about as much as torch's

    return transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
    )


class FolderImages(Dataset):
    """An ``ImageFolder`` split read lazily, resized and centre-cropped to ``size``, as uint8."""

    def __init__(self, folder, indices: list[int] | None, size: int):

        self.folder = folder
        self.indices = indices if indices is not None else list(range(len(folder.samples)))
        self.targets = torch.tensor([folder.targets[i] for i in self.indices], dtype=torch.long)
        self.transform = square_uint8(size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        path, target = self.folder.samples[self.indices[i]]
        try:  # a corrupt or non-image file is refused, naming it: skipping would change the dataset silently
            img = self.folder.loader(path).convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for truncated / unidentified files
            raise UserError(
                f"{path}: not a readable image ({str(e).splitlines()[0][:120]}); remove or replace it"
            ) from None
        return self.transform(img), target


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    classes: list[str]  # readable class names, in label order
    channels: int
    image_size: int
    source: str  # where the data came from (for reports)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def per_class_subset(targets: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of at most ``per_class`` items of each class, a seeded random choice, sorted."""
    if per_class <= 0:
        return torch.arange(len(targets))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(targets), generator=g)
    keep, counts = [], {}
    for i in order.tolist():
        c = int(targets[i])
        if counts.get(c, 0) < per_class:
            counts[c] = counts.get(c, 0) + 1
            keep.append(i)
    return torch.tensor(sorted(keep), dtype=torch.long)


def subset(ds: Dataset, idx: torch.Tensor) -> Dataset:
    if isinstance(ds, TensorImages):
        return TensorImages(ds.images[idx], ds.targets[idx])
    if isinstance(ds, FolderImages):
        return FolderImages(
            ds.folder, [ds.indices[i] for i in idx.tolist()], ds.transform.transforms[1].size[0]
        )
    raise TypeError(type(ds))


# ---------------------------------------------------------------------------------------------


def _read_idx(path: Path, kind: str) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from None
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    want = 2051 if kind == "images" else 2049
    if magic != want:
        raise UserError(f"{path}: not an IDX {kind} file (magic {magic}, expected {want})")
    if kind == "images":
        n, h, w = (int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in (1, 2, 3))
        data = np.frombuffer(raw, np.uint8, offset=16)
        if data.size != n * h * w:
            raise UserError(f"{path}: truncated IDX file ({data.size} of {n * h * w} pixels)")
        return data.reshape(n, h, w)
    n = int.from_bytes(raw[4:8], "big")
    data = np.frombuffer(raw, np.uint8, offset=8)
    if data.size != n:
        raise UserError(f"{path}: truncated IDX file ({data.size} of {n} labels)")
    return data


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        for p in (root / name, root / "raw" / name, root / "FashionMNIST" / "raw" / name):
            if p.is_file():
                return p
    raise UserError(
        f"--data {root}: no {stem}[.gz] there (expected the four Fashion-MNIST IDX files; "
        "'apt-get install dataset-fashion-mnist' puts them in /usr/share/datasets/fashion-mnist)"
    )


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def fashion_mnist_files(root: Path) -> list[Path]:
    """The four IDX files under ``root`` (found, not read), or the one line that says which is missing."""
    if not root.is_dir():
        raise UserError(f"--data {root}: folder not found")
    return [
        _find_idx(root, f"{prefix}-{kind}-idx{n}-ubyte")
        for prefix in ("train", "t10k")
        for kind, n in (("images", 3), ("labels", 1))
    ]


def fashion_mnist_splits(root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The four IDX files under ``root``, checked: ``{"train": (uint8 [N, 1, 28, 28], int64 [N]), "val": ...}``
    (val = the test split)."""
    if not root.is_dir():
        raise UserError(f"--data {root}: folder not found")
    splits = {}
    for split, prefix in (("train", "train"), ("val", "t10k")):
        imgs = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"), "images")
        labels = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"), "labels")
        if len(imgs) != len(labels):
            raise UserError(
                f"--data {root}: {prefix} images ({len(imgs)}) and labels ({len(labels)}) differ in count"
            )
        if labels.max() >= len(FASHION_MNIST_CLASSES):
            raise UserError(
                f"--data {root}: {prefix} labels go up to {labels.max()}, Fashion-MNIST has 10 classes"
            )
        splits[split] = (
            torch.from_numpy(imgs.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
        )
    return splits


def load_fashion_mnist(cfg: DataConfig) -> DataBundle:
    root = Path(cfg.root)
    splits = {
        split: TensorImages(_resize(x, cfg.image_size), y)
        for split, (x, y) in fashion_mnist_splits(root).items()
    }
    return DataBundle(
        splits["train"], splits["val"], list(FASHION_MNIST_CLASSES), 1, cfg.image_size, str(root)
    )


def _imagefolder_root(cfg: DataConfig) -> Path:
    """The folder of an ImageFolder dataset, with its train/ and val/ splits, or the one line that says why not."""
    root = Path(cfg.root) if cfg.root else None
    if root is None:
        raise UserError("--data: an imagefolder dataset needs --data PATH (a folder with train/ and val/)")
    if not root.is_dir():
        raise UserError(f"--data {root}: folder not found")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"--data {root}: no {split}/ folder (expected {root}/{split}/<class>/<image>)")
    return root


def load_imagefolder(cfg: DataConfig) -> DataBundle:
    from torchvision.datasets import ImageFolder  # lazy: its import costs about as much as torch's

    root = _imagefolder_root(cfg)
    folders = {}
    for split in ("train", "val"):
        d = root / split
        try:
            folders[split] = ImageFolder(str(d))
        except (FileNotFoundError, RuntimeError) as e:
            raise UserError(f"--data {d}: not a valid ImageFolder tree ({str(e).splitlines()[0]})") from None
    if folders["train"].classes != folders["val"].classes:
        raise UserError(f"--data {root}: train/ and val/ have different class folders")
    classes = readable_names(folders["train"].classes)
    return DataBundle(
        FolderImages(folders["train"], None, cfg.image_size),
        FolderImages(folders["val"], None, cfg.image_size),
        classes,
        3,
        cfg.image_size,
        str(root),
    )


def make_synthetic(cfg: DataConfig, seed: int = 0) -> DataBundle:
    """Class c is a grating at angle pi*c/C with a class-specific frequency, plus noise; learnable in seconds."""
    g = torch.Generator().manual_seed(seed)
    s, k = cfg.image_size, cfg.synthetic_classes
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")

    def split(n_per: int) -> TensorImages:
        imgs, labels = [], []
        for c in range(k):
            ang = torch.pi * c / k + 0.2 * torch.randn(n_per, 1, 1, generator=g)
            phase = 2 * torch.pi * torch.rand(n_per, 1, 1, generator=g)
            freq = 3.0 + c % 3
            wave = torch.sin(freq * torch.pi * (xx * torch.cos(ang) + yy * torch.sin(ang)) + phase)
            img = 0.5 + 0.35 * wave + 0.15 * torch.randn(n_per, s, s, generator=g)
            rgb = torch.stack([img, img.roll(1, -1), img.flip(-1)], 1) * torch.tensor([1.0, 0.8, 0.6]).view(
                1, 3, 1, 1
            )
            imgs.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8))
            labels.append(torch.full((n_per,), c))
        return TensorImages(torch.cat(imgs), torch.cat(labels))

    train = split(cfg.synthetic_per_class)
    val = split(max(4, cfg.synthetic_per_class // 2))
    return DataBundle(train, val, synthetic_classes(k), 3, s, "synthetic")


def synthetic_classes(k: int) -> list[str]:
    return [f"pattern {c}" for c in range(k)]


def load_glyph_set(cfg: DataConfig) -> DataBundle:
    from hellodd.glyphs import load_glyphs  # lazy: fontTools and the renderer, for this dataset only

    splits, classes, set_id = load_glyphs(cfg)
    train, val = (TensorImages(*splits[s]) for s in ("train", "val"))
    return DataBundle(train, val, classes, 1, cfg.image_size, f"{cfg.root} ({set_id})")


def train_class_counts(cfg: DataConfig) -> list[int]:
    """Training images per class, counted without reading an image (the labels file, or the class folders'
    file names), after ``train_per_class``: what a run can check before its first stage."""
    if cfg.name == "synthetic":
        counts = [cfg.synthetic_per_class] * cfg.synthetic_classes
    elif cfg.name == "glyphs":
        from hellodd.glyphs import train_counts  # lazy: see load_glyph_set

        counts = train_counts(cfg)
    elif cfg.name == "fashion-mnist":
        root = Path(cfg.root)
        if not root.is_dir():
            raise UserError(f"--data {root}: folder not found")
        labels = _read_idx(_find_idx(root, "train-labels-idx1-ubyte"), "labels")
        counts = np.bincount(labels, minlength=len(FASHION_MNIST_CLASSES)).tolist()
    else:
        from torchvision.datasets.folder import IMG_EXTENSIONS  # lazy: see load_imagefolder

        train = _imagefolder_root(cfg) / "train"
        folders = sorted((d for d in os.scandir(train) if d.is_dir()), key=lambda d: d.name)
        counts = [sum(1 for f in os.scandir(d) if f.name.lower().endswith(IMG_EXTENSIONS)) for d in folders]
    return [min(n, cfg.train_per_class) if cfg.train_per_class else n for n in counts]


def load_data(cfg: DataConfig, seed: int = 0) -> DataBundle:
    """Load the configured dataset and apply the per-class caps (seeded, so every stage sees the same)."""
    if cfg.name == "fashion-mnist":
        bundle = load_fashion_mnist(cfg)
    elif cfg.name == "imagefolder":
        bundle = load_imagefolder(cfg)
    elif cfg.name == "synthetic":
        bundle = make_synthetic(cfg, seed)
    elif cfg.name == "glyphs":
        bundle = load_glyph_set(cfg)
    else:
        raise UserError(f"--set data.name: unknown dataset {cfg.name!r}")
    if len(bundle.train) == 0 or len(bundle.val) == 0:
        raise UserError(f"--data {cfg.root}: the dataset has no images")
    if cfg.train_per_class:
        bundle.train = subset(bundle.train, per_class_subset(bundle.train.targets, cfg.train_per_class, seed))
    if cfg.val_per_class:
        bundle.val = subset(bundle.val, per_class_subset(bundle.val.targets, cfg.val_per_class, seed))
    return bundle


def class_indices(targets: torch.Tensor, c: int) -> torch.Tensor:
    return torch.nonzero(targets == c).flatten()


def class_matcher(classes: list[str]):
    """``name -> class index or None``: how a set made elsewhere names the data's classes.  By readable name,
    by hellodd's own ``003_dress`` PNG-tree name, by WordNet ID, or, for a purely numeric name that matches
    nothing else (RDED's ``00042`` folders, an unnamed label), by index."""
    index = {}
    for c, name in enumerate(classes):
        index.update({name: c, class_folder(c, name): c})

    def match(name: str) -> int | None:
        c = index.get(name, index.get(readable_names([name])[0]))
        if c is None and name.isdigit() and int(name) < len(classes):
            c = int(name)
        return c

    return match


def class_names(cfg: DataConfig) -> list[str]:
    """The data's class names in label order, read without an image (what a run checks before its stages)."""
    if cfg.name == "synthetic":
        return synthetic_classes(cfg.synthetic_classes)
    if cfg.name == "fashion-mnist":
        return list(FASHION_MNIST_CLASSES)
    if cfg.name == "glyphs":
        from hellodd.glyphs import chosen, class_name  # lazy: see load_glyph_set

        return [class_name(c) for c in chosen(cfg)]
    train = _imagefolder_root(cfg) / "train"
    return readable_names(sorted(d.name for d in os.scandir(train) if d.is_dir()))
