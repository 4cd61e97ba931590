"""Label sources for student training, behind one interface, over one augmentation stream.

The stream (:class:`hellodd.augment.Stream`) decides, for every (epoch, step, rank), which distilled images form the batch,
their random-resized crops and flips, and the batch's CutMix (one lambda, one box, one permutation).  It
is a pure function of its seed, so every label source sees exactly the same pixels.

========== =============================================================================================
source     targets for a batch of augmented, CutMix-ed images x
========== =============================================================================================
hard       the CutMix-mixed one-hot labels (probabilities); trained with soft-target cross-entropy
teacher    logits of a teacher checkpoint run online on x (RDED / SRe2L ``train_KD``)
weak-      the mean logits of the weak teachers the projector imitates, online: the projector's ceiling
teachers
stored     logits written to disk once per (epoch, step) by the teacher, with the stream's parameters
           (image indices, crop boxes, flips, CutMix box/lambda/permutation), read back during
           training (FKD / SRe2L / G-VBSM).  Replay uses the *stored* parameters; the file's bytes are
           the storage this source costs.  Every file records the digest of what made it (the images'
           sha256, the teacher checkpoint's sha256, the stream's seed and settings, dtype, top-k): a
           file made from other inputs is rewritten by the writer and refused by the reader.
compressed stored labels, compressed (the LPLD / FKD top-k line): only the top-k logits per view (values
           in ``stored_dtype`` and class indices, uint8 up to 256 classes) and the mean of the dropped
           logits, which fills every other class when the target is rebuilt; and only a fraction of
           the epochs is written, epoch e replaying the views and labels of kept epoch e mod K
projector  logits of the HeLlO projector (base + LoRA merged), online, under inference mode
X+gift     source X's logits, refined at zero bytes (GIFT): mixed with smoothed hard labels, cosine loss
========== =============================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from hellodd import engine
from hellodd.augment import (
    CropParams,
    CutMixParams,
    Stream,
    mixed_one_hot,
    render,
)
from hellodd.errors import UserError
from hellodd.io import digest, file_metadata, load_tensors, save_tensors, write_json


class LabelSource(Protocol):
    """What a student trains against.  ``kind`` says how it learns the targets (``probs``: soft-target
    cross-entropy; ``logits``: the evaluation's logit loss; a refinement such as ``gift``); ``identity``
    names what the targets depend on (hashes of the files behind them: part of a run's key); ``storage``
    is what a user must keep to have these labels (``bytes`` and the ``formula`` behind them, from
    :mod:`hellodd.storage`).  A source with ``own_views`` supplies the batches' views itself
    (``batch_params``, as stored labels replay the views they were written for)."""

    name: str
    kind: str
    identity: dict
    storage: dict
    own_views: bool

    def targets(self, x, y, mix, epoch: int, step: int) -> torch.Tensor: ...


@dataclass
class HardLabels:
    """The dataset's labels as the views show them: ``make(y, num_classes, mix)``, by default the CutMix-mixed
    one-hot rows (a task may pass its own, e.g. a view's class map)."""

    num_classes: int
    storage: dict = field(default_factory=dict)
    name: str = "hard"
    kind: str = "probs"
    identity: dict = field(default_factory=dict)
    own_views: bool = False
    make: Callable = mixed_one_hot

    def targets(self, x, y, mix, epoch, step):
        return self.make(y, self.num_classes, mix)


@dataclass
class ModelLabels:
    """Online logits from a frozen model (a teacher checkpoint, the weak teachers' mean, the merged projector)."""

    name: str
    model: torch.nn.Module
    identity: dict = field(default_factory=dict)
    storage: dict = field(default_factory=dict)
    kind: str = "logits"
    own_views: bool = False

    def targets(self, x, y, mix, epoch, step):
        with torch.inference_mode():
            z = self.model(x).float()
        return z.clone()  # a normal tensor again, usable in the autograd graph as a constant target


class Refined:
    """A logit source whose targets a student learns with a refinement (``kind``), at no extra bytes.

    ``gift`` (GIFT, ICLR 2025): the target is ``normalize(z) + 0.1 * normalize(smooth(y))``, the source's
    logits ``z`` and the hard label smoothed by 0.1, learnt with a cosine-similarity loss
    (:func:`hellodd.losses.gift_loss`).  Stored sources keep replaying their own views."""

    def __init__(self, base: LabelSource, refinement: str):
        self.base, self.kind = base, refinement
        self.name = f"{base.name}+{refinement}"
        self.identity = {**base.identity, "refinement": refinement}
        self.storage, self.own_views = base.storage, base.own_views

    def batch_params(self, epoch: int, step: int):
        return self.base.batch_params(epoch, step)

    def targets(self, x, y, mix, epoch, step):
        return self.base.targets(x, y, mix, epoch, step)


class MeanLogits(torch.nn.Module):
    """The mean raw logits of several frozen models (the weak teachers the projector imitates)."""

    def __init__(self, models: list[torch.nn.Module]):
        super().__init__()
        self.models = torch.nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float() for m in self.models]).mean(0)


def stored_path(root: Path, epoch: int) -> Path:
    return root / f"epoch_{epoch:04d}.safetensors"


def kept_epochs(epochs: int, fraction: float) -> int:
    """Epochs whose labels a pruned store keeps: ``round(epochs * fraction)``, at least one."""
    return max(1, min(epochs, round(epochs * fraction)))


def _index_dtype(num_classes: int) -> torch.dtype:
    return torch.uint8 if num_classes <= 256 else torch.int16 if num_classes <= 32767 else torch.int32


def compress(logits: torch.Tensor, topk: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Keep the ``topk`` largest logits per view (values in ``dtype`` and class indices) and the mean of the
    dropped ones; ``topk`` >= C keeps every logit."""
    c = logits.shape[1]
    if topk >= c:
        return {"logits": logits.to(dtype)}
    values, classes = logits.topk(topk, 1)
    rest = (logits.sum(1) - values.sum(1)) / (c - topk)
    return {"values": values.to(dtype), "classes": classes.to(_index_dtype(c)), "rest": rest.to(dtype)}


def decompress(d: dict[str, torch.Tensor], rows: slice, num_classes: int) -> torch.Tensor:
    """The target rebuilt from :func:`compress`: kept logits at their classes, every other class the stored
    mean of the dropped logits (marginal smoothing in logit space; FKD does the same with probabilities)."""
    if "logits" in d:
        return d["logits"][rows].float()
    values, classes, rest = d["values"][rows].float(), d["classes"][rows].long(), d["rest"][rows].float()
    out = rest.unsqueeze(1).expand(-1, num_classes, *rest.shape[1:]).clone()  # per view, or per pixel
    return out.scatter_(1, classes, values)


@dataclass(frozen=True)
class LabelStore:
    """One folder of stored labels: the first ``epochs`` epochs of a stream, top-``topk`` logits (0: all).
    ``records`` > 0 keeps only the first ``records`` batch records (epoch-major, one per step): a pruned store
    (LPLD / LPQLD), whose last epoch file may hold fewer steps than the others."""

    root: Path
    key: dict
    epochs: int
    dtype: str = "float16"
    topk: int = 0
    records: int = 0

    def steps_in(self, epoch: int, steps_per_epoch: int) -> int:
        """How many of epoch ``epoch``'s steps this store keeps."""
        if epoch >= self.epochs:
            return 0
        if not self.records:
            return steps_per_epoch
        return max(0, min(steps_per_epoch, self.records - epoch * steps_per_epoch))


def write_label_stores(stores: list[LabelStore], teacher, images: torch.Tensor, stream: Stream, device):
    """FKD-style relabel: for every epoch and step, the teacher's logits on the exact augmented batch.

    One teacher pass serves every store: they replay the same stream, so epoch e's views are the same in each
    (the full and the compressed labels of one seed share their forwards).  A store's ``key`` names
    everything its labels depend on (images, teacher checkpoint, stream settings, dtype, top-k); its digest
    is written into every file.  A file with another digest was made for other inputs: it is rewritten,
    never reused.  Finished files with the right digest are kept (the writing resumes).  Returns each
    store's files.
    """
    tags = [digest(st.key) for st in stores]
    for st, tag in zip(stores, tags):
        st.root.mkdir(parents=True, exist_ok=True)
        write_json(st.root / "key.json", {"digest": tag, **st.key})
    stale = [0] * len(stores)
    epochs = max((st.epochs for st in stores), default=0)
    for e in range(epochs):
        need = []
        for i, st in enumerate(stores):
            path = stored_path(st.root, e)
            if st.steps_in(e, stream.steps_per_epoch) == 0 or (
                path.is_file() and file_metadata(path).get("key") == tags[i]
            ):
                continue
            stale[i] += path.is_file()
            need.append(i)
        if not need:
            continue
        shared: dict[str, list] = {"indices": [], "crops": [], "cutmix": [], "perm": []}
        own: dict[int, dict[str, list]] = {i: {} for i in need}
        steps = max(stores[i].steps_in(e, stream.steps_per_epoch) for i in need)
        for s in engine.passing(range(steps), "stored-label writing"):  # finished epochs are files
            idx, crops, mix = stream.batch_params(e, s)
            x = render(images, idx, crops, mix, device)
            with torch.inference_mode():
                logits = teacher(x).float().cpu()
            shared["indices"].append(idx.to(torch.int32))
            shared["crops"].append(crops.as_tensor())
            shared["cutmix"].append(
                (mix.as_tensor() if mix else torch.zeros(5, dtype=torch.float64)).float()[None]
            )
            shared["perm"].append((mix.perm if mix else torch.arange(len(idx))).to(torch.int32)[None])
            for i in need:
                st = stores[i]
                if s >= st.steps_in(e, stream.steps_per_epoch):
                    continue
                for k, v in compress(logits, st.topk or logits.shape[1], getattr(torch, st.dtype)).items():
                    own[i].setdefault(k, []).append(v)
        for i in need:
            n = stores[i].steps_in(
                e, stream.steps_per_epoch
            )  # a pruned store's last epoch: its first n steps
            tensors = {k: torch.cat(v[:n]) for k, v in {**shared, **own[i]}.items()}
            save_tensors(stored_path(stores[i].root, e), tensors, {"epoch": e, "key": tags[i], "steps": n})
        engine.test_signal(e + 1)
        if engine.stop_requested():  # every finished epoch is a file: nothing more to save
            raise engine.Preempted("stored-label writing", e + 1, epochs, stores[0].root)
    for st, n in zip(stores, stale):
        if n:
            print(f"hellodd: {st.root}: {n} stored-label file(s) were made from other inputs; rewritten")
    return [
        [stored_path(st.root, e) for e in range(st.epochs) if st.steps_in(e, stream.steps_per_epoch)]
        for st in stores
    ]


def write_stored_labels(
    root: Path,
    key: dict,
    teacher,
    images: torch.Tensor,
    stream: Stream,
    epochs: int,
    dtype: str,
    device,
    topk: int = 0,
) -> list[Path]:
    """:func:`write_label_stores` for one store."""
    return write_label_stores(
        [LabelStore(Path(root), key, epochs, dtype, topk)], teacher, images, stream, device
    )[0]


class StoredLabels:
    """Reads back what :func:`write_stored_labels` wrote; also supplies the stored augmentation.

    ``kept`` epoch files serve ``epochs`` training epochs: epoch e replays file ``e % kept`` (its views and
    labels).  Every file must carry ``key``'s digest, or it is refused with one line.
    """

    kind = "logits"
    own_views = True

    def __init__(
        self,
        root: Path,
        stream: Stream,
        key: dict,
        num_classes: int,
        kept: int,
        name: str = "stored",
        storage: dict | None = None,
    ):
        self.root, self.stream, self.kept, self.name = Path(root), stream, kept, name
        self.tag, self.num_classes = digest(key), num_classes
        self.identity = {"store": self.tag, "epochs": kept}
        self.storage = storage or {}
        self._epoch, self._data = -1, None
        missing = [e for e in range(kept) if not stored_path(self.root, e).is_file()]
        if missing:
            raise UserError(f"{self.root}: stored labels lack epoch files {missing[:3]}; write them first")

    def _load(self, e: int):
        """The file of stored epoch ``e`` (kept in memory until another is asked for)."""
        if self._epoch != e:
            path = stored_path(self.root, e)
            tensors, meta = load_tensors(path)
            if meta.get("key") != self.tag:
                raise UserError(
                    f"{path}: stored labels made from other inputs (images, teacher or augmentation stream "
                    "differ); refusing to reuse them"
                )
            self._epoch, self._data = e, tensors
        return self._data

    def record(self, epoch: int, step: int) -> tuple[int, int]:
        """The stored (epoch, step) a training step replays: the same step of kept epoch ``epoch mod kept``."""
        return epoch % self.kept, step

    def batch_params(self, epoch: int, step: int):
        e, s = self.record(epoch, step)
        d, b = self._load(e), self.stream.batch
        rows = slice(s * b, (s + 1) * b)
        idx = d["indices"][rows].long()
        crops = CropParams.from_tensor(d["crops"][rows])
        cm = d["cutmix"][s]
        mix = (
            CutMixParams(d["perm"][s].long(), tuple(int(v) for v in cm[:4].tolist()), float(cm[4]))
            if self.stream.alpha > 0
            else None
        )
        return idx, crops, mix

    def targets(self, x, y, mix, epoch, step):
        e, s = self.record(epoch, step)
        b = self.stream.batch
        return decompress(self._load(e), slice(s * b, (s + 1) * b), self.num_classes).to(x.device)
