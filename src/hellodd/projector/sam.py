"""SAM image-encoder bases (``sam:vit_b``, ``sam:vit_l``, ``sam:vit_h``; ``sam:hellodd-vit-tiny`` for tests):
the ViT image encoder of the ``segment-anything`` package, with its neck, as a dense projector's frozen base.

Weights come from a user's SAM checkpoint (the official ``sam_vit_b_01ec64.pth`` format: a state dict of the
whole model, of which the ``image_encoder.*`` tensors are used); its sha256 is recorded with the adapters and a
loaded projector refuses any other file.  ``random_init`` builds seeded random weights of the same
architecture (tests, byte counts).  SAM knows no class names: its head (a linear map from the neck's channels
to the classes, at every location of the 1/16 feature map) starts at zero and is learnt in full; it is stored
beside the LoRA factors and its bytes are counted with theirs.  The kind is registered at the end of this
module (:mod:`.registry`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from hellodd.config import ProjectorConfig
from hellodd.errors import UserError
from hellodd.io import sha256
from hellodd.models import IMAGENET_MEAN, IMAGENET_STD
from hellodd.projector.model import BaseInfo, Projector
from hellodd.projector.registry import BaseKind, register

# the image encoders of segment-anything's registry (build_sam.py), and a tiny one of the same code for tests
SAM_ENCODERS = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": [2, 5, 8, 11]},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": [5, 11, 17, 23]},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": [7, 15, 23, 31]},
    "hellodd-vit-tiny": {
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "global_attn_indexes": [1],
        "img_size": 32,
        "patch_size": 8,
        "window_size": 2,
        "out_chans": 16,
    },
}
SAM_INPUT = {"img_size": 1024, "patch_size": 16, "window_size": 14, "out_chans": 256}


def sam_input_size(arch: str) -> int:
    return SAM_ENCODERS[arch].get("img_size", SAM_INPUT["img_size"])


def check_sam(pcfg: ProjectorConfig) -> None:
    """Refuse, before any stage, an unknown SAM encoder, a missing package, a projector that is not dense or a
    wrong input size.  Reads no weights (the checkpoint: check_checkpoint)."""
    arch = pcfg.base[4:]
    if arch not in SAM_ENCODERS:
        raise UserError(
            f"--set projector.base: unknown SAM encoder {arch!r} (sam:{', sam:'.join(SAM_ENCODERS)})"
        )
    try:
        import segment_anything  # noqa: F401  (optional at import time: only SAM bases need it)
    except ImportError:
        raise UserError(
            f"--set projector.base={pcfg.base}: the segment-anything package is not installed"
        ) from None
    if not pcfg.dense:
        raise UserError(f"--set projector.base={pcfg.base}: SAM bases are dense (projector.dense=true)")
    if pcfg.image_size != sam_input_size(arch):
        raise UserError(
            f"--set projector.image_size={pcfg.image_size}: {pcfg.base} takes {sam_input_size(arch)}-px inputs"
        )


def sam_encoder(arch: str) -> nn.Module:
    """segment-anything's ``ImageEncoderViT`` for ``arch``, randomly initialised (global RNG)."""
    from segment_anything.modeling import ImageEncoderViT  # lazy: only SAM bases need it

    spec = {**SAM_INPUT, **SAM_ENCODERS[arch]}
    return ImageEncoderViT(
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        qkv_bias=True,
        use_rel_pos=True,
        **spec,
    )


def _load_encoder(encoder: nn.Module, path: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: name it
        raise UserError(f"{path}: not a readable SAM checkpoint ({type(e).__name__})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    prefix = "image_encoder."
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} or state
    missing, unexpected = encoder.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path}: not a checkpoint of this SAM image encoder "
            f"({len(missing)} tensors missing, {len(unexpected)} unexpected)"
        )


def build_sam(
    pcfg: ProjectorConfig, classes: list[str], cache_dir: Path | None = None, text_head: bool = True
) -> Projector:
    """The SAM projector: its head starts at zero whatever ``text_head`` says (nothing is derived)."""
    arch = pcfg.base[4:]
    encoder = sam_encoder(arch)
    if not pcfg.random_init:
        _load_encoder(encoder, pcfg.checkpoint)
    encoder.eval()
    channels = SAM_ENCODERS[arch].get("out_chans", SAM_INPUT["out_chans"])
    info = BaseInfo(
        base=pcfg.base,
        image_size=pcfg.image_size,
        mean=IMAGENET_MEAN,  # SAM's pixel mean and std are ImageNet's
        std=IMAGENET_STD,
        pretrained=not pcfg.random_init,
        head_init="zeros, learnt in full (SAM knows no class names; the head is stored with the adapters)",
        head_file=None,
        dense=True,
        learnt_head=True,
        checkpoint=None if pcfg.random_init else str(pcfg.checkpoint),
        checkpoint_sha256=None if pcfg.random_init else sha256(pcfg.checkpoint),
    )
    head = torch.zeros(len(classes), channels)
    return Projector(
        encoder, head_weight=head, head_bias=torch.zeros(len(classes)), info=info, classes=classes
    )


register(
    BaseKind(
        name="sam",
        usage="sam:<" + "|".join(a for a in SAM_ENCODERS if not a.startswith("hellodd")) + ">",
        check=check_sam,
        build=build_sam,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        checkpoint_option="--set projector.checkpoint={}",
        checkpoint_what="a SAM checkpoint file, e.g. sam_vit_b_01ec64.pth",
    )
)
