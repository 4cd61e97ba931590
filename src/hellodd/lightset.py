"""``hellodd.load``: open an exported light-label set anywhere, outside hellodd's CLI and run folders.

::

    ds = hellodd.load("fashion-mnist-ipc10-rded")         # a folder or a .tar written by `hellodd export`
    ds.images, ds.labels, ds.classes                      # uint8 [N, C, H, W], int64 [N], names in order
    ds.dataset()                                          # a torch Dataset of ([0, 1] image, label)
    ds.labeller("cuda")                                   # frozen module: batch of [0, 1] views -> logits

A segmentation set (``ds.task == "segmentation"``) has a class map per image (``ds.labels``: [N, H, W], 255 =
ignored); its labeller and loader give logit maps [B, K, H, W] and each view's class map as ``y``.
    for x, y, target in ds.loader(100, epochs=300, seed=0, device="cuda"):
        loss = ds.loss(student(x), target, y)             # the loss the labels are meant for

An export written with ``--format hf`` (a Hugging Face dataset) opens the same way: its images are read
from its parquet shards (``pip install 'hellodd[hf]'``) and checked against the digest of the exported ones.

Every part is checked against the manifest's sha256 before anything is used: a changed or truncated file is
refused with one line naming it.  A base that needs a checkpoint (a pretrained CLIP) takes it from
``base_checkpoint``, and it must hash to the recorded sha256.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from hellodd.augment import Stream, render
from hellodd.errors import UserError
from hellodd.hf import read_shards
from hellodd.io import tensor_sha256
from hellodd.layout import ADAPTER_FILE, IMAGES_FILE, MANIFEST_FILE
from hellodd.projector.adapters import load_projector, merged_for_inference
from hellodd.sets import read_export_manifest, read_images, verify_file
from hellodd.tasks import task_named


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x, y = self.images[i].float() / 255, self.labels[i]
        return (self.transform(x) if self.transform else x), (int(y) if y.ndim == 0 else y)


class LightSet:
    """A verified export: images, labels, class names, the manifest, and the labeller they travel with."""

    def __init__(self, root: Path, manifest: dict, base_checkpoint: str | Path | None = None):
        self.root, self.manifest, self.base_checkpoint = root, manifest, base_checkpoint
        self.images, self.labels = export_images(root, manifest)
        self.classes: list[str] = list(manifest["classes"])
        try:  # an export of before tasks had names is a classification set
            self.task: str = task_named(manifest.get("task")).name
        except UserError as e:
            raise UserError(f"{root / MANIFEST_FILE}: {e}") from None
        self._labellers: dict[str, torch.nn.Module] = {}

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        b = self.manifest["bytes"]
        return (
            f"LightSet({self.manifest['name']!r}: {len(self)} images, {len(self.classes)} classes, "
            f"base {self.manifest['base']['name']}, labels {b['labels']:,} B)"
        )

    def dataset(self, transform=None) -> torch.utils.data.Dataset:
        """The images as a standard Dataset of ([0, 1] float image, class index or class map), for your own
        augmentation."""
        return _Images(self.images, self.labels, transform)

    def labeller(self, device="cpu") -> torch.nn.Module:
        """The projector (base + adapters merged), frozen, in eval mode: [B, C, H, W] views in [0, 1] -> logits."""
        key = str(torch.device(device))
        if key not in self._labellers:
            base = self.root / "base"  # the head's initialisation, if exported; never written into the export
            cache = (
                base if base.is_dir() and any(base.iterdir()) else Path(tempfile.mkdtemp(prefix="hellodd-"))
            )
            p = load_projector(self.root / ADAPTER_FILE, "cpu", cache, self.base_checkpoint)
            self._labellers[key] = merged_for_inference(p).to(device)
        return self._labellers[key]

    def loader(self, batch_size: int | None = None, epochs: int | None = None, seed: int = 0, device="cpu"):
        """Yield ``(x, y, target)`` per student step: views (random-resized crops, flips, CutMix of the
        manifest's recipe, made on ``device``), their class labels (segmentation: each view's class map, moved
        and mixed with its pixels), and the labeller's logits on them.

        The views are a pure function of ``seed`` (hellodd's evaluation of a set with ``engine.seed`` S uses
        stream seed ``S * 1000 + student seed``).  Defaults: the manifest's batch size and epochs."""
        v = self.manifest["views"]
        stream = Stream(
            len(self.images),
            self.images.shape[-1],
            batch_size or v["batch_size"],
            seed,
            min_scale=v["crop_scale"][0],
            cutmix_alpha=v["cutmix_alpha"],
        )
        labeller, task = self.labeller(device), task_named(self.task)
        for epoch in range(epochs or self.manifest["training"]["epochs"]):
            for step in range(stream.steps_per_epoch):
                idx, crops, mix = stream.batch_params(epoch, step)
                x = render(self.images, idx, crops, mix, device)
                with torch.inference_mode():
                    target = labeller(x).float()
                yield x, task.view_targets(self.labels, idx, crops, mix, device), target.clone()

    def loss(self, logits: torch.Tensor, target: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss the labels are meant for (manifest ``loss``): MSE on logits + ce_weight x CE, or KL at T
        (segmentation: per pixel, ignored pixels left out of the CE)."""
        spec = self.manifest["loss"]
        ev = SimpleNamespace(loss=spec["name"], ce_weight=spec["ce_weight"], temperature=spec["temperature"])
        return task_named(self.task).student_loss(ev, logits, target, "logits", y)


def export_images(root: Path, manifest: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of an export: ``images.safetensors``, or an hf export's parquet shards (decoded,
    then checked against the recorded digests of the exported tensors)."""
    held = manifest.get("images")
    if not held:
        return read_images(root / IMAGES_FILE)[:2]
    if held.get("layout") != "parquet":
        raise UserError(
            f"{root / MANIFEST_FILE}: images held as {held.get('layout')!r}; this hellodd reads parquet"
        )
    images, labels = read_shards([root / f for f in held["files"]])
    if tensor_sha256(images) != held["sha256"] or tensor_sha256(labels) != held["labels_sha256"]:
        raise UserError(f"{root}: the images decoded from its parquet shards differ from the exported ones")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(manifest["classes"]):
        raise UserError(f"{root}: labels outside the {len(manifest['classes'])} classes of its manifest")
    return images, labels


def _unpack(path: Path) -> Path:
    """A ``.tar`` export, extracted into a fresh temporary folder (its one top-level folder is returned)."""
    dest = Path(tempfile.mkdtemp(prefix="hellodd-load-"))
    try:
        with tarfile.open(path) as archive:
            archive.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{path}: not a readable tar archive ({e})") from None
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise UserError(f"{path}: expected one exported folder inside the archive")
    return tops[0]


def load(path, base_checkpoint: str | Path | None = None) -> LightSet:
    """Open an export written by ``hellodd export`` (folder or ``.tar``), after checking every part."""
    path = Path(path)
    if path.is_file() and tarfile.is_tarfile(path):
        path = _unpack(path)
    manifest = read_export_manifest(path)
    for rel, record in manifest.get("parts", {}).items():
        verify_file(path / rel, record)
    held = manifest.get("images") or {}
    for needed in (*held.get("files", [IMAGES_FILE]), ADAPTER_FILE):
        if needed not in manifest.get("parts", {}):
            raise UserError(f"{path / MANIFEST_FILE}: lists no {needed}")
    return LightSet(path, manifest, base_checkpoint)
