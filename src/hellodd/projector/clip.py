"""CLIP bases (``clip:<open_clip architecture>``): an open_clip image tower, its head CLIP's zero-shot classifier.

``W0``: per class, the 7 prompts of CLIP's ensemble are encoded, L2-normalised, averaged and normalised
again; ``s = exp(logit_scale)``, ``b0 = 0``.  With no adapter the projector *is* CLIP's zero-shot
classifier (tested against open_clip), so the head costs no storage.  Weights come from a local file
(``--clip-checkpoint``; open_clip or OpenAI format) or, with ``projector.random_init``, from the seed
``projector.base_seed`` (the seed is the whole storage).  Nothing is downloaded.  The attention pool is
rewritten to call its projections (so LoRA on them applies) and resized to the projector's input.

Dense (``projector.dense``, ModifiedResNet towers such as the paper's RN50): MaskCLIP's features.  The trunk's
last map goes through the attention pool's value and output projections at every location, without the
attention (which would mix all locations into one vector), so each location lands in CLIP's joint space
and the text-embedding head labels it.

open_clip is imported inside these functions: its import costs about as much as torch's, and only CLIP
bases need it.  The kind is registered at the end of this module (:mod:`.registry`).
"""

from __future__ import annotations

import logging
import math
import types
import zipfile
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hellodd.config import ProjectorConfig
from hellodd.errors import UserError
from hellodd.io import load_tensors, save_tensors, sha256
from hellodd.projector.model import RECORDED, BaseInfo, Projector, cache_key
from hellodd.projector.registry import BaseKind, register

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def prompt_templates() -> tuple[str, ...]:
    """CLIP's 7-prompt ensemble, as listed in the supplement A.3 (open_clip's SIMPLE_IMAGENET_TEMPLATES)."""
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    return tuple(t("{}") if callable(t) else t for t in SIMPLE_IMAGENET_TEMPLATES)


def _register_model_configs() -> None:
    import open_clip

    folder = resources.files("hellodd") / "model_configs"
    open_clip.add_model_config(str(folder))


def _attnpool_forward(self, x):
    """open_clip AttentionPool2d with the same math, but calling q/k/v/c_proj so LoRA on them applies."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h * w).permute(0, 2, 1)  # N, HW, C
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
    x = x + self.positional_embedding[None].to(x.dtype)
    heads = self.num_heads
    q = self.q_proj(x[:, :1]).reshape(n, 1, heads, -1).transpose(1, 2)
    k = self.k_proj(x).reshape(n, h * w + 1, heads, -1).transpose(1, 2)
    v = self.v_proj(x).reshape(n, h * w + 1, heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, 1, -1)
    return self.c_proj(out)[:, 0]


def _patch_attention_pools(module: nn.Module) -> int:
    from open_clip.modified_resnet import AttentionPool2d

    count = 0
    for m in module.modules():
        if isinstance(m, AttentionPool2d):
            m.forward = types.MethodType(_attnpool_forward, m)
            count += 1
    return count


def _resize_attnpool(visual, image_size: int) -> None:
    """Interpolate a ModifiedResNet attention-pool position table to another input size (bicubic)."""
    pool = getattr(visual, "attnpool", None)
    if pool is None:
        return
    pe = pool.positional_embedding.data
    old = int(math.isqrt(pe.shape[0] - 1))
    new = max(1, image_size // 32)
    if old == new:
        return
    grid = pe[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    pool.positional_embedding = nn.Parameter(
        torch.cat([pe[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1)])
    )


class DenseResNetFeatures(nn.Module):
    """MaskCLIP's dense features of a ModifiedResNet tower: [N, D, h, w] in CLIP's embedding space."""

    def __init__(self, visual):
        super().__init__()
        pool = visual.attnpool
        pool.q_proj, pool.k_proj = None, None  # the attention is not used: no adapters on it
        self.visual = visual

    def forward(self, x):
        v = self.visual
        x = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))
        n, c, h, w = x.shape
        pool = v.attnpool
        pos = pool.positional_embedding[1:]
        side = int(math.isqrt(pos.shape[0]))
        if (side, side) != (h, w):
            grid = pos.reshape(1, side, side, c).permute(0, 3, 1, 2)
            pos = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
        tokens = x.flatten(2).transpose(1, 2) + pos.reshape(h * w, c).to(x.dtype)
        out = pool.c_proj(pool.v_proj(tokens))  # N, HW, D
        return out.transpose(1, 2).reshape(n, -1, h, w)


class _DropRecords(logging.Filter):
    """Drops a dependency's log records that start with ``prefix`` (noise in a run's log)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def check_clip(pcfg: ProjectorConfig) -> None:
    """One line for a CLIP base that cannot be built: an architecture open_clip does not know, or a dense
    projector on a tower without a ModifiedResNet trunk.  Reads no weights (the checkpoint: check_checkpoint)."""
    import open_clip

    arch = pcfg.base[5:]
    _register_model_configs()
    if arch not in open_clip.list_models():
        raise UserError(f"--set projector.base=clip:{arch}: open_clip has no architecture {arch!r}")
    layers = (open_clip.get_model_config(arch) or {}).get("vision_cfg", {}).get("layers")
    if pcfg.dense and not isinstance(layers, (list, tuple)):
        raise UserError(
            f"--set projector.base=clip:{arch}: dense CLIP bases are ModifiedResNet towers (RN50, ...) for now"
        )


def _load_clip(arch: str, pcfg: ProjectorConfig):
    import open_clip

    ckpt = pcfg.checkpoint  # checked by check_base before any build, which also seeds the generator
    root = logging.getLogger()
    quiet = _DropRecords("No pretrained weights loaded")  # we load (or seed) the weights ourselves, below
    root.addFilter(quiet)
    try:
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
    finally:
        root.removeFilter(quiet)
    if ckpt and not pcfg.random_init:
        # one reader per kind of file, chosen before reading, and no second try: its error is the one shown,
        # and the weights must fit clip:{arch} itself (never a model of whatever architecture the file holds)
        try:
            if _is_torchscript(ckpt):  # an OpenAI release file: its weights, read by TorchScript's loader
                _load_torchscript_weights(model, ckpt)
            else:  # an open_clip checkpoint or an OpenAI state dict (tensors only: weights_only)
                open_clip.load_checkpoint(model, ckpt, strict=True)
        except Exception as e:
            raise UserError(
                f"--clip-checkpoint {ckpt}: not a clip:{arch} checkpoint ({_load_reason(e)})"
            ) from None
    return model.float().eval()


def _is_torchscript(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip whose one folder holds ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in z.namelist())


def _load_torchscript_weights(model, path: str) -> None:
    """The weights of an OpenAI TorchScript release file into ``model``, all of them and only them."""
    from open_clip.model import convert_to_custom_text_state_dict

    state = torch.jit.load(path, map_location="cpu").state_dict()
    for key in ("input_resolution", "context_length", "vocab_size"):  # the archive's settings, not weights
        state.pop(key, None)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    model.load_state_dict(state, strict=True)


def _load_reason(e: Exception) -> str:
    """A loader's error in one line; torch's weights-only refusal gives its reason after a long preamble."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = "not a file of tensors: " + text.split("WeightsUnpickler error:", 1)[1].strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)[:200]


def clip_head_file(arch: str, weights_id: str, classes: list[str]) -> str:
    key = cache_key(arch=arch, weights=weights_id, classes=classes, templates=prompt_templates())
    return f"text-head-{key}.safetensors"


def _clip_text_head(
    model, arch: str, classes: list[str], weights_id: str, cache_dir: Path | None
) -> torch.Tensor:
    """[C, D] zero-shot classifier rows, cached on disk per (architecture, weights, classes, prompts)."""
    import open_clip

    templates = prompt_templates()
    path = cache_dir / clip_head_file(arch, weights_id, classes) if cache_dir else None
    if path is not None and path.is_file():
        return load_tensors(path)[0]["weight"]
    tokenizer = open_clip.get_tokenizer(arch)
    w = open_clip.build_zero_shot_classifier(model, tokenizer, classes, templates, num_classes_per_batch=10)
    if path is not None:
        save_tensors(path, {"weight": w.T.contiguous()}, {"arch": arch, "classes": classes})
    return w.T.contiguous()


def build_clip(
    pcfg: ProjectorConfig, classes: list[str], cache_dir: Path | None, text_head: bool
) -> Projector:
    """The CLIP projector; ``text_head=False`` (or a prototype head to come) leaves the head at zero."""
    arch = pcfg.base[5:]
    model = _load_clip(arch, pcfg)
    ckpt_sha = sha256(pcfg.checkpoint) if pcfg.checkpoint and not pcfg.random_init else None
    wid = ckpt_sha or f"seed:{pcfg.base_seed}"
    head = (
        _clip_text_head(model, arch, classes, wid, cache_dir)
        if text_head and pcfg.head_init == "names"
        else torch.zeros(len(classes), model.visual.output_dim)
    )
    scale = float(model.logit_scale.detach().exp())
    visual = model.visual
    _patch_attention_pools(visual)
    _resize_attnpool(visual, pcfg.image_size)
    if pcfg.dense:
        if getattr(visual, "attnpool", None) is None:
            raise UserError(
                f"--set projector.base={pcfg.base}: dense CLIP bases are ModifiedResNet towers (RN50, ...) for now"
            )
        visual = DenseResNetFeatures(visual)
    info = BaseInfo(
        base=pcfg.base,
        image_size=pcfg.image_size,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        pretrained=ckpt_sha is not None,
        head_init="clip-text-embeddings (7 prompts)"
        + (", applied at every location (MaskCLIP)" if pcfg.dense else ""),
        head_file=clip_head_file(arch, wid, classes),
        scale=scale,
        normalize=True,
        dense=pcfg.dense,
        checkpoint=pcfg.checkpoint or None,
        checkpoint_sha256=ckpt_sha,
        recorded=tuple(k for k in RECORDED if k != "weights_sha256"),  # no packaged weights to name
    )
    return Projector(visual, head_weight=head, head_bias=None, info=info, classes=classes)


register(
    BaseKind(
        name="clip",
        usage="clip:<open_clip architecture>",
        check=check_clip,
        build=build_clip,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        checkpoint_option="--clip-checkpoint {}",
        checkpoint_what="a local open_clip or OpenAI checkpoint",
        head_file=lambda spec, wid, classes: clip_head_file(spec[5:], wid, classes),
    )
)
