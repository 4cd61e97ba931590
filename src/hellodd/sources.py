"""Label sources by name: one builder per source, registered like peft's tuners, asked for by the evaluation.

A builder turns a :class:`SourceContext` (the config, the distilled images, one seed's stream) into a
:class:`~hellodd.labels.LabelSource` that knows its targets, its identity and the bytes it costs.  A source
named ``X+gift`` is source X refined at zero bytes (:class:`~hellodd.labels.Refined`).  Online sources (a
model labelling every view) do not depend on the seed: built once, compiled with ``evaluate.compile``.
The stored sources of one seed share a single teacher pass (:func:`~hellodd.labels.write_label_stores`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from hellodd import compressors, engine, storage
from hellodd.augment import Stream
from hellodd.config import Config, split_source
from hellodd.io import sha256, tensor_sha256
from hellodd.labels import (
    HardLabels,
    LabelSource,
    LabelStore,
    MeanLogits,
    ModelLabels,
    Refined,
    StoredLabels,
    kept_epochs,
    write_label_stores,
)
from hellodd.layout import cache_dir, label_store_dir, projector_path
from hellodd.projector.adapters import load_projector, merged_for_inference
from hellodd.projector.transfer import weak_teachers
from hellodd.sets import projector_for
from hellodd.tasks import load_network, task_of
from hellodd.teachers import load_pool

STORED = ("stored", "compressed")  # written from the teacher, replayed from disk


@dataclass
class SourceContext:
    """What the builders of one seed's sources may use; what they share is made once, when first asked for."""

    cfg: Config
    fabric: Any
    images: torch.Tensor
    stream: Stream
    seed: int
    num_classes: int
    shared: dict = field(default_factory=dict)  # across seeds: the teacher model, the online sources
    stores_in: Path | None = None  # stored labels elsewhere than the run folder's (a benchmark's scratch)
    stores: dict = field(default_factory=dict)  # name -> (LabelStore, its files), once written

    @cached_property
    def teacher_path(self) -> str:
        return load_pool(self.cfg)["final_path"]

    @property
    def teacher(self) -> torch.nn.Module:
        if "_teacher" not in self.shared:
            self.shared["_teacher"] = engine.frozen(self.fabric, load_network(self.teacher_path)[0])
        return self.shared["_teacher"]

    def labeller(self, model: torch.nn.Module) -> torch.nn.Module:
        """An online labeller: compiled (weights frozen) when ``evaluate.compile`` is set."""
        return engine.compile_frozen(model) if self.cfg.evaluate.compile else model

    def plan(self, name: str) -> compressors.Plan:
        """What compressor ``name`` keeps of this seed's stream (``adapters``: at the projector file's bytes)."""
        ev, st = self.cfg.evaluate, self.stream
        adapter_bytes = 0
        if compressors.parse(name)[1] == "adapters":
            adapter_bytes = Path(projector_for(self.cfg, self.images)).stat().st_size
        return compressors.plan(
            name, ev.epochs, st.steps_per_epoch, self.num_classes, adapter_bytes, st.batch
        )

    def write_stores(self, names: list[str]) -> None:
        """Stored labels of every name in ``names``, written in one teacher pass (the same views)."""
        if not names:
            return
        ev = self.cfg.evaluate
        stores = {}
        for name in names:
            records = 0
            if compressors.is_compressor(name):
                p = self.plan(name)
                topk, kept, records = p.topk, p.epochs_written, p.records
            else:
                topk = 0 if name == "stored" else ev.compressed_topk
                kept = ev.epochs if name == "stored" else kept_epochs(ev.epochs, ev.compressed_epoch_fraction)
            folder = (
                self.stores_in / f"{name}-labels" / f"seed{self.seed}"
                if self.stores_in
                else label_store_dir(self.cfg, name, self.seed)
            )
            root = folder / f"rank{self.fabric.global_rank}"
            key = stored_key(self.images, self.teacher_path, self.stream, ev.stored_dtype, topk, records)
            stores[name] = LabelStore(root, key, kept, ev.stored_dtype, topk, records)
        files = write_label_stores(
            list(stores.values()), self.teacher, self.images, self.stream, self.fabric.device
        )
        self.stores = {name: (st, f) for (name, st), f in zip(stores.items(), files)}


def stored_key(images, teacher_path, stream, dtype: str, topk: int, records: int = 0) -> dict:
    """Everything stored labels depend on: a file made from anything else is never reused."""
    key = {
        "format": "hellodd-stored-labels-v2",
        "images_sha256": tensor_sha256(images),
        "teacher_sha256": sha256(teacher_path),
        "stream": {
            k: getattr(stream, k)
            for k in ("seed", "batch", "rank", "world", "n", "size", "min_scale", "alpha")
        },
        "dtype": dtype,
        "topk": topk,
    }
    if records:  # a pruned store: only the first records (older keys stay as they were)
        key["records"] = records
    return key


@dataclass(frozen=True)
class SourceBuilder:
    build: Callable[[SourceContext, str], LabelSource]
    online: bool  # a model labelling every view: the same for every seed, built once


REGISTRY: dict[str, SourceBuilder] = {}


def register(*names: str, online: bool = False):
    """Register a builder for the label sources ``names`` (a builder receives the context and the name)."""

    def add(build: Callable[[SourceContext, str], LabelSource]):
        for name in names:
            REGISTRY[name] = SourceBuilder(build, online)
        return build

    return add


@register("hard")
def _hard(ctx: SourceContext, name: str) -> LabelSource:
    make = task_of(ctx.cfg.data).hard_targets
    return HardLabels(ctx.num_classes, storage=storage.label_storage("hard"), make=make)


@register("teacher", online=True)
def _teacher(ctx: SourceContext, name: str) -> LabelSource:
    path = ctx.teacher_path
    cost = storage.label_storage("teacher", teacher_file=path)
    return ModelLabels(name, ctx.labeller(ctx.teacher), {"teacher_sha256": sha256(path)}, cost)


@register("weak-teachers", online=True)
def _weak_teachers(ctx: SourceContext, name: str) -> LabelSource:
    chosen = weak_teachers(load_pool(ctx.cfg), ctx.cfg, ctx.num_classes)
    model = engine.frozen(ctx.fabric, MeanLogits([load_network(t["path"])[0] for t in chosen]))
    identity = {"weak_teachers_sha256": [sha256(t["path"]) for t in chosen]}
    cost = storage.label_storage("weak-teachers", teacher_files=[t["path"] for t in chosen])
    return ModelLabels(name, ctx.labeller(model), identity, cost)


@register("projector", "projector-transfer", online=True)
def _projector(ctx: SourceContext, name: str) -> LabelSource:
    # projector: the adapters that go with this set (view-adapted if distill made them);
    # projector-transfer: stage 3's, for the ablation of the view adaptation
    path = projector_for(ctx.cfg, ctx.images) if name == "projector" else projector_path(ctx.cfg)
    model = engine.frozen(ctx.fabric, merged_for_inference(load_projector(path, "cpu", cache_dir(ctx.cfg))))
    cost = storage.label_storage("projector", adapter_file=path)
    return ModelLabels(name, ctx.labeller(model), {"adapters_sha256": sha256(path)}, cost)


@register(*STORED)
def _stored(ctx: SourceContext, name: str) -> LabelSource:
    store, files = ctx.stores[name]
    cost = storage.label_storage("stored", stored_files=files)
    if name == "compressed":
        cost["formula"] += (
            f" (top-{store.topk} logits + rest mean, {store.epochs} of {ctx.cfg.evaluate.epochs} epochs; "
            f"e replays e mod {store.epochs})"
        )
    return StoredLabels(store.root, ctx.stream, store.key, ctx.num_classes, store.epochs, name, cost)


@register(*compressors.COMPRESSORS)
def _compressor(ctx: SourceContext, name: str) -> LabelSource:
    store, files = ctx.stores[name]
    p = ctx.plan(name)
    cost = storage.label_storage("stored", stored_files=files)
    cost["formula"] += f" ({p.describe} of {ctx.cfg.evaluate.epochs * ctx.stream.steps_per_epoch})"
    ev = ctx.cfg.evaluate
    return compressors.PrunedLabels(
        store.root,
        ctx.stream,
        store.key,
        ctx.num_classes,
        p,
        ev.epochs,
        name,
        cost,
        ev.temperature,
        ev.lpqld_reuse,
    )


def builder_of(base: str) -> SourceBuilder:
    """The builder of a source name without refinement (``lpld:40``: the ``lpld`` builder)."""
    return REGISTRY[base.partition(":")[0]]


def is_written(base: str) -> bool:
    """Whether a source's labels are written to disk from the teacher (stored, compressed, a compressor's)."""
    return base in STORED or compressors.is_compressor(base)


def build_label_sources(
    cfg: Config,
    fabric,
    images,
    stream,
    seed: int,
    num_classes: int,
    shared: dict | None = None,
    stores_in: Path | None = None,
) -> dict[str, LabelSource]:
    """The sources ``evaluate.label_sources`` names, for one seed.  Pass the same ``shared`` dict for every
    seed: online sources are then built (and compiled) once."""
    shared = {} if shared is None else shared
    ctx = SourceContext(cfg, fabric, images, stream, seed, num_classes, shared, stores_in)
    names = cfg.evaluate.label_sources
    bases = list(dict.fromkeys(split_source(n)[0] for n in names))  # teacher+gift: the teacher
    ctx.write_stores([n for n in bases if is_written(n)])
    built = {}
    for base in bases:
        builder = builder_of(base)
        if builder.online:
            if base not in shared:
                shared[base] = builder.build(ctx, base)
            built[base] = shared[base]
        else:
            built[base] = builder.build(ctx, base)
    for name in names:
        base, refinement = split_source(name)
        if refinement:
            built[name] = Refined(built[base], refinement)
    return {n: built[n] for n in names}
