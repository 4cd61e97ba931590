"""Label sources for student training, behind one interface, over one augmentation stream.

The stream (:class:`Stream`) decides, for every (epoch, step, rank), which distilled images form the batch,
their random-resized crops and flips, and the batch's CutMix (one lambda, one box, one permutation).  It
is a pure function of its seed, so every label source sees exactly the same pixels.

========== =============================================================================================
source     targets for a batch of augmented, CutMix-ed images x
========== =============================================================================================
hard       the CutMix-mixed one-hot labels (probabilities); trained with soft-target cross-entropy
teacher    logits of a teacher checkpoint run online on x (RDED / SRe2L ``train_KD``)
stored     logits written to disk once per (epoch, step) by the teacher, with the stream's parameters
           (image indices, crop boxes, flips, CutMix box/lambda/permutation), read back during
           training (FKD / SRe2L / G-VBSM).  Replay uses the *stored* parameters; the file's bytes are
           the storage this source costs.  A file written for another batch size, epoch count or world
           size is refused with one line, never silently misaligned.
projector  logits of the HeLlO projector (base + LoRA merged), online, under inference mode
========== =============================================================================================
"""

from __future__ import annotations

from pathlib import Path

import torch

from hellodd.augment import (
    CropParams,
    CutMixParams,
    apply_crops,
    apply_cutmix,
    mixed_one_hot,
    sample_crops,
    sample_cutmix,
    to_float,
)
from hellodd.engine import step_generator
from hellodd.errors import UserError
from hellodd.io import load_tensors, save_tensors


class Stream:
    """Seeded batches of the distilled set: indices, crops/flips and CutMix per (epoch, step, rank)."""

    def __init__(
        self,
        n: int,
        size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        min_scale: float = 0.5,
        cutmix_alpha: float = 1.0,
    ):
        self.n, self.size, self.seed, self.rank, self.world = n, size, seed, rank, world
        self.batch = max(1, min(batch_size, n) // world)
        self.min_scale, self.alpha = min_scale, cutmix_alpha
        self.steps_per_epoch = max(1, n // (self.batch * world))

    def batch_params(self, epoch: int, step: int) -> tuple[torch.Tensor, CropParams, CutMixParams | None]:
        order = torch.randperm(self.n, generator=step_generator(self.seed, epoch))
        start = (step * self.world + self.rank) * self.batch
        idx = order[start : start + self.batch]
        g = step_generator(self.seed, epoch, step, self.rank, 7)
        crops = sample_crops(len(idx), g, scale=(self.min_scale, 1.0))
        mix = sample_cutmix(len(idx), self.size, self.alpha, g) if self.alpha > 0 else None
        return idx, crops, mix


def student_stream(ev, images: torch.Tensor, seed: int, rank: int = 0, world: int = 1) -> Stream:
    """The evaluation's stream over ``images`` (``EvaluateConfig``: batch size, crop scale, CutMix alpha)."""
    return Stream(
        len(images), images.shape[-1], ev.batch_size, seed, rank, world, ev.crop_min_scale, ev.cutmix_alpha
    )


def render(
    images: torch.Tensor, idx: torch.Tensor, crops: CropParams, mix: CutMixParams | None, device
) -> torch.Tensor:
    """The batch the student sees: crop+flip each image, then CutMix (box in pixels of the output size)."""
    x = to_float(images[idx].to(device))
    x = apply_crops(
        x, CropParams(*(t.to(device) for t in (crops.cx, crops.cy, crops.w, crops.h, crops.flip)))
    )
    if mix is not None:
        x = apply_cutmix(x, mix)
    return x


class HardLabels:
    name = "hard"
    kind = "probs"

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def targets(self, x, y, mix, epoch, step):
        return mixed_one_hot(y, self.num_classes, mix)


class ModelLabels:
    """Online logits from a frozen model (a teacher checkpoint, or the merged projector)."""

    kind = "logits"

    def __init__(self, name: str, model: torch.nn.Module):
        self.name, self.model = name, model

    def targets(self, x, y, mix, epoch, step):
        with torch.inference_mode():
            z = self.model(x).float()
        return z.clone()  # a normal tensor again, usable in the autograd graph as a constant target


def stored_path(root: Path, epoch: int) -> Path:
    return root / f"epoch_{epoch:04d}.safetensors"


def write_stored_labels(
    root: Path, teacher, images: torch.Tensor, stream: Stream, epochs: int, dtype: str, device
) -> list[Path]:
    """FKD-style relabel: for every epoch and step, the teacher's logits on the exact augmented batch."""
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for e in range(epochs):
        path = stored_path(root, e)
        files.append(path)
        if path.is_file():
            continue  # resumable: finished epochs are kept
        rows = {"indices": [], "crops": [], "cutmix": [], "perm": [], "logits": []}
        for s in range(stream.steps_per_epoch):
            idx, crops, mix = stream.batch_params(e, s)
            x = render(images, idx, crops, mix, device)
            with torch.inference_mode():
                logits = teacher(x).float().cpu()
            rows["indices"].append(idx.to(torch.int32))
            rows["crops"].append(crops.as_tensor())
            rows["cutmix"].append(
                (mix.as_tensor() if mix else torch.zeros(5, dtype=torch.float64)).float()[None]
            )
            rows["perm"].append((mix.perm if mix else torch.arange(len(idx))).to(torch.int32)[None])
            rows["logits"].append(logits.to(getattr(torch, dtype)))
        tensors = {k: torch.cat(v) for k, v in rows.items()}
        save_tensors(
            path,
            tensors,
            {
                "epoch": e,
                "batch": stream.batch,
                "world": stream.world,
                "rank": stream.rank,
                "steps": stream.steps_per_epoch,
                "n": stream.n,
                "dtype": dtype,
            },
        )
    return files


class StoredLabels:
    """Reads back what :func:`write_stored_labels` wrote; also supplies the stored augmentation."""

    name = "stored"
    kind = "logits"

    def __init__(self, root: Path, stream: Stream, epochs: int):
        self.root, self.stream, self.epochs = Path(root), stream, epochs
        self._epoch, self._data = -1, None
        files = sorted(self.root.glob("epoch_*.safetensors"))
        if len(files) < epochs:
            raise UserError(f"{self.root}: stored labels cover {len(files)} epochs, training needs {epochs}")

    def _load(self, epoch: int):
        if self._epoch != epoch:
            tensors, meta = load_tensors(stored_path(self.root, epoch))
            want = {"batch": self.stream.batch, "world": self.stream.world, "n": self.stream.n}
            got = {k: meta.get(k) for k in want}
            if got != want:
                raise UserError(
                    f"{stored_path(self.root, epoch)}: stored labels were written for {got}, this run has {want}"
                )
            self._epoch, self._data = epoch, tensors
        return self._data

    def batch_params(self, epoch: int, step: int):
        d, b = self._load(epoch), self.stream.batch
        rows = slice(step * b, (step + 1) * b)
        idx = d["indices"][rows].long()
        crops = CropParams.from_tensor(d["crops"][rows])
        cm = d["cutmix"][step]
        mix = (
            CutMixParams(d["perm"][step].long(), tuple(int(v) for v in cm[:4].tolist()), float(cm[4]))
            if self.stream.alpha > 0
            else None
        )
        return idx, crops, mix

    def targets(self, x, y, mix, epoch, step):
        d, b = self._load(epoch), self.stream.batch
        return d["logits"][step * b : (step + 1) * b].float().to(x.device)
