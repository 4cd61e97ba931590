"""The projector's only stored state: peft LoRA adapters, saved and rebuilt with their base.

LoRA (supplement A.4; docs/method.md): peft LoRA of rank ``encoder_rank`` on the encoder's ``Conv2d`` (only
``groups == 1``: depthwise convs are excluded, a rank-r update of a depthwise kernel can outweigh the
kernel itself; EfficientNet's stem is excluded too, its "same" padding lives in a separate module that
peft's conv LoRA would not apply) and ``Linear`` layers, and of rank ``head_rank`` on the head ``W0``.
alpha = rank (scale 1), B initialised to zero, so training starts exactly at the base.  The frozen base,
its BatchNorm statistics, ``W0``, ``b0`` and ``s`` never change.  open_clip's ``AttentionPool2d`` reads
its q/k/v/c weights directly, which would leave LoRA there without gradient; its forward is replaced
(per instance, same math) by one that calls the layers.  Only the LoRA tensors are stored: one
safetensors file whose metadata says how to rebuild the base.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from hellodd.config import ProjectorConfig
from hellodd.errors import UserError
from hellodd.io import load_tensors, save_tensors, sha256
from hellodd.projector.bases import Projector, build_base, kind_of
from hellodd.projector.efficientnet import fold_same_padding
from hellodd.projector.model import stored_parameters

FORMAT = "hellodd-projector-v1"


def lora_targets(p: Projector, frozen_depth: float = 0.0) -> list[str]:
    """The encoder's adaptable layers in forward order, minus the first ``frozen_depth`` fraction of them.

    Leaving the input-side layers without adapters keeps the paper's method (they are frozen either way) but
    backpropagation then stops at the first adapted layer, skipping the costly high-resolution layers.
    """
    names = []
    for name, m in p.encoder.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1:
            if type(m) is nn.Conv2d:  # not EfficientNet's stem: its "same" padding is a separate module
                names.append(f"encoder.{name}")
        elif isinstance(m, nn.Linear):
            names.append(f"encoder.{name}")
    return names[round(frozen_depth * len(names)) :]


def add_adapters(p: Projector, encoder_rank: int, head_rank: int, frozen_depth: float = 0.0) -> list[str]:
    """Inject peft LoRA in place (encoder rank r_e, head rank r_h); only LoRA factors are trainable.

    The factors' random start is drawn from ``p.adapter_rng`` (where the base's seeded build left the CPU
    generator) inside a fork: the same numbers as drawing right after the build, and the caller's generator
    is left as it was."""
    from peft import LoraConfig, inject_adapter_in_model  # lazy: a heavy import, needed once per build

    targets = lora_targets(p, frozen_depth) if encoder_rank > 0 else []
    if head_rank > 0 and not p.learnt_head:  # a head learnt in full needs no low-rank update
        targets.append("head")
    if targets:
        r = encoder_rank if encoder_rank > 0 else head_rank
        config = LoraConfig(
            r=r,
            lora_alpha=r,
            lora_dropout=0.0,
            bias="none",
            target_modules=targets,
            **(
                {"rank_pattern": {"^head$": head_rank}, "alpha_pattern": {"^head$": head_rank}}
                if "head" in targets
                else {}
            ),
        )
        with torch.random.fork_rng(devices=[]):
            if getattr(p, "adapter_rng", None) is not None:
                torch.set_rng_state(p.adapter_rng)
            inject_adapter_in_model(config, p)
    stored = stored_parameters(p)
    for name, param in p.named_parameters():
        param.requires_grad_(name in stored)
    return targets


def adapter_tensors(p: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().contiguous() for n, t in stored_parameters(p).items()}


def save_adapters(path, p: Projector, pcfg: ProjectorConfig, extra: dict | None = None) -> int:
    module = getattr(p, "module", p)
    meta = {
        "format": FORMAT,
        "projector": {
            k: getattr(pcfg, k)
            for k in (
                "base",
                "checkpoint",
                "random_init",
                "base_seed",
                "image_size",
                "encoder_rank",
                "head_rank",
                "frozen_depth",
                "dense",
                "output_stride",
                "adapter_dtype",
                "head_init",
                "prototype_font",
            )
        },
        "classes": module.classes,
        "base_info": module.info.as_dict(),
        **(extra or {}),
    }
    dtype = getattr(torch, pcfg.adapter_dtype)
    tensors = {k: t.to(dtype) for k, t in adapter_tensors(module).items()}
    save_tensors(path, tensors, meta)
    return sum(t.numel() for t in tensors.values())


def load_projector(
    path, device="cpu", cache_dir: Path | None = None, checkpoint: str | Path | None = None
) -> Projector:
    """Rebuild base (checkpoint or seed) + adapters from the adapter file alone.

    ``checkpoint`` replaces the base checkpoint path the file records (another machine's); either must hash to
    the recorded sha256, and a packaged base's weights must hash to theirs: other weights are refused."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a hellodd projector adapter file")
    pcfg = ProjectorConfig(**meta["projector"])
    recorded = meta["base_info"]
    want = recorded.get("checkpoint_sha256")
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise UserError(f"{checkpoint}: base checkpoint not found")
        pcfg = replace(pcfg, checkpoint=str(checkpoint))
    if want:
        if not pcfg.checkpoint or not Path(pcfg.checkpoint).is_file():
            option = kind_of(pcfg.base).checkpoint_option or "--set projector.checkpoint={}"
            raise UserError(
                f"{path}: needs its base checkpoint (sha256 {want[:12]}...), recorded at {pcfg.checkpoint}; "
                f"pass the file (hellodd.load(..., base_checkpoint=PATH) or {option.format('PATH')})"
            )
        if sha256(pcfg.checkpoint) != want:
            raise UserError(
                f"{pcfg.checkpoint}: not the base checkpoint the adapters in {path} were trained on (sha256 differs)"
            )
    p = build_base(pcfg, meta["classes"], cache_dir if cache_dir is not None else Path(path).parent / "cache")
    if recorded.get("weights_sha256") and p.info.weights_sha256 != recorded["weights_sha256"]:
        raise UserError(
            f"{path}: the installed {pcfg.base} weights differ from those the adapters were trained on"
        )
    if (
        recorded.get("prototype_font_sha256")
        and p.info.prototype_font_sha256 != recorded["prototype_font_sha256"]
    ):
        raise UserError(
            f"{path}: {pcfg.prototype_font} is not the font the adapters' prototype head was drawn in (sha256 differs)"
        )
    add_adapters(p, pcfg.encoder_rank, pcfg.head_rank, pcfg.frozen_depth)
    own = adapter_tensors(p)
    if own.keys() != tensors.keys() or any(own[k].shape != tensors[k].shape for k in own):
        raise UserError(f"{path}: adapter tensors do not fit base {pcfg.base} (ranks or layers differ)")
    p.load_state_dict(
        {k: t.float() for k, t in tensors.items()}, strict=False
    )  # fp16/bf16 files: back to fp32
    return p.to(device).eval()


def merged_for_inference(p: Projector) -> Projector:
    """A copy with every LoRA update merged into its base weights and the pads folded into the convolutions
    (:func:`~hellodd.projector.efficientnet.fold_same_padding`): less than the base's cost per forward, no autograd."""
    from peft.tuners.lora import LoraLayer  # lazy: see add_adapters

    q = copy.deepcopy(getattr(p, "module", p))
    for m in q.modules():
        if isinstance(m, LoraLayer) and not m.merged:
            m.merge(safe_merge=True)
    fold_same_padding(q)  # EfficientNet's pads, now that no LoRA factor needs the kernels' shapes
    return q.eval().requires_grad_(False)
