"""Bytes a user must store to reproduce the training labels, for every label source.

===========  ===================================================================================
source       bytes
===========  ===================================================================================
hard         0 (the class index travels with the images)
teacher      P_teacher * b  (the online teacher's weights; fp32 b = 4), or the real file size
stored       E * M * V * C * b_label  +  E * M * V * A * 4  +  E * ceil(M / B) * K * 4
             E epochs, M = IPC * C distilled images, V views per image per epoch (1 in the FKD/SRe2L
             recipe), C classes, b_label bytes per stored value (2 for fp16, as SRe2L / G-VBSM);
             A = 5 per-view augmentation numbers (crop box cx, cy, w, h and the flip flag, fp32);
             per batch of B images, K = 5 CutMix numbers (box and lambda, fp32) plus the
             permutation (B int32 indices, counted in K*4 as B*4 when given).  The paper counts
             only the first term (it dominates at C = 1000: <1% of the total).
weak-        the weak teachers' checkpoint files (what labelling online with them costs)
teachers
compressed   the stored-label files of the ``compressed`` source (top-k logits + class indices + the mean
             of the dropped logits per view, for the kept fraction of the epochs), from the files
projector    the LoRA factors only: sum over adapted layers of r * (fan_in + fan_out) * 4 B (peft's
             conv LoRA: a k x k conv c_in -> r and a 1x1 conv r -> c_out, i.e. r * (c_in k^2 + c_out)),
             or the adapter file's real size.  The base encoder (public CLIP or ImageNet weights, or a
             seed) and the text-initialised head (regenerated from class names) are not counted.
===========  ===================================================================================

The paper's "MB" are MiB (2**20 bytes): a 100-class torchvision ResNet-18 has 11,227,812 parameters,
44,911,248 bytes = 42.83 MiB, the supplement's Table 4 figure.  Every report gives bytes and MiB.
"""

from __future__ import annotations

import math
from pathlib import Path

from hellodd.config import Config, ProjectorConfig
from hellodd.layout import (
    adapted_projector_path,
    evaluate_dir,
    final_teacher_path,
    label_store_dir,
    projector_path,
)
from hellodd.models import build_model, count_parameters
from hellodd.projector.adapters import adapter_tensors, add_adapters
from hellodd.projector.bases import build_base
from hellodd.records import mib

AUG_VALUES_PER_VIEW = 5  # cx, cy, w, h, flip
CUTMIX_VALUES_PER_BATCH = 5  # y0, y1, x0, x1, lambda
BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


def stored_label_bytes(
    epochs: int,
    images: int,
    classes: int,
    views: int = 1,
    dtype: str = "float16",
    batch_size: int = 0,
    with_augmentation: bool = True,
) -> dict:
    """FKD-style stored soft labels: one C-vector per image, view and epoch, plus the augmentation replay data."""
    labels = epochs * images * views * classes * BYTES[dtype]
    aug = epochs * images * views * AUG_VALUES_PER_VIEW * 4 if with_augmentation else 0
    mix = 0
    if with_augmentation and batch_size:
        batches = math.ceil(images / batch_size)
        mix = epochs * batches * (CUTMIX_VALUES_PER_BATCH * 4 + batch_size * 4)
    return {
        "bytes": labels + aug + mix,
        "label_bytes": labels,
        "augmentation_bytes": aug + mix,
        "formula": f"{epochs} epochs x {images} images x {views} views x {classes} classes x {BYTES[dtype]} B"
        + (f" + augmentation {aug + mix} B" if with_augmentation else ""),
    }


def teacher_bytes(
    arch: str = "resnet18", num_classes: int = 1000, in_channels: int = 3, image_size: int = 224
) -> dict:
    """fp32 bytes of a teacher's parameters, counted from the real model (buffers such as BN stats excluded)."""
    params = count_parameters(build_model(arch, num_classes, in_channels, image_size).net)
    return {
        "bytes": 4 * params,
        "params": params,
        "formula": f"{params:,} params x 4 B ({arch}, {num_classes} classes)",
    }


def paper_adapter(
    num_classes: int = 1000, encoder_rank: int = 8, head_rank: int = 128, arch: str = "RN50"
) -> dict:
    """Build the paper's projector for real, through the factory a run uses (open_clip tower, seeded random
    weights; the head's shape without its text embeddings), and count its LoRA tensors."""
    pcfg = ProjectorConfig(
        base=f"clip:{arch}", random_init=True, encoder_rank=encoder_rank, head_rank=head_rank
    )
    p = build_base(pcfg, ["c"] * num_classes, text_head=False)
    dim = p.head.in_features
    targets = add_adapters(p, pcfg.encoder_rank, pcfg.head_rank)
    tensors = adapter_tensors(p)
    head = sum(t.numel() for k, t in tensors.items() if k.startswith("head."))
    enc = sum(t.numel() for k, t in tensors.items() if not k.startswith("head."))
    params = head + enc
    return {
        "bytes": 4 * params,
        "params": params,
        "encoder_params": enc,
        "head_params": head,
        "layers": len(targets),
        "formula": f"LoRA r={encoder_rank} on {len(targets) - 1} layers of CLIP {arch} + r={head_rank} on the {dim}x{num_classes} head: "
        f"{params:,} params x 4 B",
    }


def paper_sam_adapter(encoder_rank: int = 8, classes: int = 1) -> dict:
    """The B.4 projector built for real (SAM ViT-B image encoder, seeded random weights): its LoRA factors and
    the head learnt in full, counted from the tensors the adapter file would hold."""
    pcfg = ProjectorConfig(
        base="sam:vit_b",
        random_init=True,
        dense=True,
        image_size=1024,
        encoder_rank=encoder_rank,
        head_rank=0,
    )
    p = build_base(pcfg, [str(c) for c in range(classes)])
    base = count_parameters(p.encoder)
    targets = add_adapters(p, pcfg.encoder_rank, 0)
    tensors = adapter_tensors(p)
    head = sum(t.numel() for k, t in tensors.items() if k.startswith("head."))
    params = sum(t.numel() for t in tensors.values())
    return {
        "bytes": 4 * params,
        "params": params,
        "head_params": head,
        "encoder_params": params - head,
        "base_params": base,
        "layers": len(targets),
    }


def sam_model_bytes() -> dict:
    """fp32 bytes of a whole SAM ViT-B (image encoder, prompt encoder, mask decoder), from the real model."""
    import torch
    from segment_anything import sam_model_registry  # lazy: only this report builds a whole SAM

    torch.manual_seed(0)
    params = count_parameters(sam_model_registry["vit_b"]())
    return {"bytes": 4 * params, "params": params}


def paper_segmentation_report(images: int = 10_000, mask_size: int = 256, epochs: int = 300) -> str:
    """Supplement B.4's scale: 10,000 SA-1B images, SAM ViT-B as the teacher or as the projector's base."""
    sam = sam_model_bytes()
    lines = [
        f"Dense labels at the supplement's B.4 scale ({images:,} SA-1B images; logit maps at SAM's "
        f"{mask_size}x{mask_size} mask-logit resolution, fp16, {epochs} epochs)",
        _row("SAM ViT-B directly guiding (the whole model)", sam["bytes"], f"{sam['params']:,} params"),
    ]
    for classes in (1, 150):
        ad = paper_sam_adapter(8, classes)
        if classes == 1:
            lines.append(
                _row(
                    "SAM ViT-B image encoder alone (the projector's base)",
                    4 * ad["base_params"],
                    f"{ad['base_params']:,} params",
                )
            )
        lines.append(
            _row(
                f"projector on SAM ViT-B: LoRA r=8 + head, {classes} class map(s)",
                ad["bytes"],
                f"{ad['params']:,} params (encoder {ad['encoder_params']:,} on {ad['layers']} layers + head "
                f"{ad['head_params']:,}); {100 * ad['bytes'] / sam['bytes']:.1f}% of SAM",
            )
        )
        s = stored_label_bytes(epochs, images * mask_size * mask_size, classes, with_augmentation=False)
        lines.append(
            _row(
                f"stored dense labels, {classes} logit(s) per pixel",
                s["bytes"],
                f"{s['bytes'] / ad['bytes']:,.0f}x the projector",
            )
        )
    lines.append("  (the paper: SAM-B 358.32 MB; its projector 5.64 M stored params, 22.56 MB, 6.3%)")
    return "\n".join(lines)


def file_bytes(path) -> int:
    return Path(path).stat().st_size


def label_storage(
    source: str,
    *,
    epochs: int = 0,
    images: int = 0,
    classes: int = 0,
    batch_size: int = 0,
    dtype: str = "float16",
    teacher_file=None,
    teacher_files=(),
    adapter_file=None,
    stored_files=(),
) -> dict:
    """Extra storage one label source needs, from real files where they exist, else from the formula."""
    if source == "hard":
        return {"bytes": 0, "formula": "0 (labels are the class indices stored with the images)"}
    if source == "teacher":
        return {
            "bytes": file_bytes(teacher_file),
            "formula": f"teacher checkpoint file {Path(teacher_file).name}",
        }
    if source == "weak-teachers":
        return {
            "bytes": sum(file_bytes(f) for f in teacher_files),
            "formula": f"{len(teacher_files)} weak-teacher checkpoint files ({', '.join(Path(f).stem for f in teacher_files)})",
        }
    if source == "projector":
        where = f"{Path(adapter_file).parent.name}/{Path(adapter_file).name}"
        return {"bytes": file_bytes(adapter_file), "formula": f"LoRA adapter file {where}"}
    if source == "stored":
        if stored_files:
            return {
                "bytes": sum(file_bytes(f) for f in stored_files),
                "formula": f"{len(stored_files)} stored-label files on disk",
            }
        return stored_label_bytes(epochs, images, classes, dtype=dtype, batch_size=batch_size)
    raise ValueError(f"unknown label source {source!r}")


def _row(name: str, n_bytes: float, note: str = "") -> str:
    return f"  {name:<60} {n_bytes:>16,.0f} B {mib(n_bytes):>12,.2f} MiB  {note}".rstrip()


def paper_report() -> str:
    """The paper's settings: ImageNet-1K and ImageNet-100, 300 epochs of fp16 stored labels."""
    lines = [
        "Label storage at the paper's settings (300 evaluation epochs, fp16 stored labels, fp32 weights)"
    ]
    r18_1k, r18_100 = teacher_bytes("resnet18", 1000), teacher_bytes("resnet18", 100)
    ad_1k, ad_100 = paper_adapter(1000, 8, 128), paper_adapter(100, 8, 64)
    for title, classes, r18, ad in (
        ("ImageNet-1K", 1000, r18_1k, ad_1k),
        ("ImageNet-100", 100, r18_100, ad_100),
    ):
        lines.append(f"{title} ({classes} classes)")
        lines.append(_row("online teacher: ResNet-18", r18["bytes"], f"{r18['params']:,} params"))
        lines.append(
            _row(
                "HeLlO projector: LoRA adapters",
                ad["bytes"],
                f"{ad['params']:,} params (encoder {ad['encoder_params']:,} + head {ad['head_params']:,}); "
                f"{100 * ad['bytes'] / r18['bytes']:.1f}% of the teacher",
            )
        )
        for ipc in (1, 10, 50, 200) if classes == 1000 else (1, 10, 50, 100):
            s = stored_label_bytes(300, ipc * classes, classes, with_augmentation=False)
            lines.append(
                _row(
                    f"stored soft labels, IPC {ipc}",
                    s["bytes"],
                    f"adapters = {100 * ad['bytes'] / s['bytes']:.4f}% of it",
                )
            )
    return "\n".join(lines)


def storage_table(cfg: Config, paper: bool = False) -> str:
    """``hellodd storage``: this run's label sources from the files on disk, and optionally the paper's scale."""
    lines = [f"Label storage for {cfg.preset} (outputs in {cfg.out})"]
    teacher = final_teacher_path(cfg)
    adapter = projector_path(cfg)
    lines.append(_row("hard labels", 0))
    lines.append(
        _row("online teacher (final checkpoint)", file_bytes(teacher))
        if teacher.is_file()
        else "  online teacher: not trained yet (hellodd teachers)"
    )
    lines.append(
        _row("HeLlO projector adapters", file_bytes(adapter))
        if adapter.is_file()
        else "  projector adapters: not trained yet (hellodd projector)"
    )
    adapted = adapted_projector_path(cfg)
    if adapted.is_file():
        lines.append(_row(f"projector adapters adapted to {adapted.parent.name}", file_bytes(adapted)))
    ev = cfg.evaluate
    for name in ("stored", "compressed"):  # the files the evaluation wrote: the number results.md reports
        files = sorted(label_store_dir(cfg, name, ev.seeds[0]).glob("rank*/epoch_*.safetensors"))
        if files:
            what = f"{name} labels, {evaluate_dir(cfg).name}, seed {ev.seeds[0]} (files)"
            lines.append(_row(what, sum(file_bytes(f) for f in files), f"{len(files)} files"))
    classes = {"fashion-mnist": 10, "synthetic": cfg.data.synthetic_classes}.get(cfg.data.name)
    if classes:
        s = stored_label_bytes(
            ev.epochs, cfg.distill.ipc * classes, classes, dtype=ev.stored_dtype, batch_size=ev.batch_size
        )
        lines.append(
            _row(
                f"stored labels, IPC {cfg.distill.ipc}, {ev.epochs} ep (formula)",
                s["bytes"],
                "label values + replay data; the files also hold each view's image index and a header",
            )
        )
    if paper:
        lines += ["", paper_report(), "", paper_segmentation_report()]
    return "\n".join(lines)
