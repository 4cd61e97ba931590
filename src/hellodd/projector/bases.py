"""The projector's frozen base, picked by name: :func:`build_base`, :func:`check_base` and the name of its
head's cache file (supplement A.3; docs/method.md).  One module per kind of base:

* ``clip:<arch>`` (:mod:`.clip`): an open_clip image tower, its head CLIP's zero-shot classifier
  (``clip:RN50`` is the paper's);
* ``efficientnet-lite0`` / ``efficientnet-lite2`` (:mod:`.efficientnet`): ImageNet-pretrained, its head
  the network's own ImageNet classifier mapped to the classes by name;
* ``sam:<vit_b|vit_l|vit_h>`` (:mod:`.sam`, dense only): SAM's image encoder from a user's checkpoint.

For CLIP and EfficientNet the head's start is derived from public weights and class names: it costs no
storage.  SAM knows no class names: its head is learnt in full and stored.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hellodd.config import ProjectorConfig
from hellodd.errors import UserError
from hellodd.io import sha256
from hellodd.projector.clip import (
    CLIP_MEAN,
    CLIP_STD,
    build_clip,
    check_clip,
    clip_head_file,
    prompt_templates,
)
from hellodd.projector.efficientnet import (
    EFFICIENTNET_BASES,
    build_efficientnet,
    check_minilm,
    efficientnet_head_file,
    efficientnet_weights_id,
    minilm_similarity,
)
from hellodd.projector.model import Projector
from hellodd.projector.sam import SAM_ENCODERS, build_sam, check_sam

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "Projector",
    "build_base",
    "check_base",
    "check_minilm",
    "head_file",
    "minilm_similarity",
    "prompt_templates",
    "weights_id",
]


def check_base(pcfg: ProjectorConfig) -> None:
    """Refuse, with one line, a base that cannot be built: an unknown name, a CLIP architecture open_clip does
    not know, CLIP without weights (nothing is downloaded), a missing checkpoint, weights package or prototype font.  Reads no
    weights, so a run can ask before its first stage."""
    base = pcfg.base
    if pcfg.head_init == "prototypes":
        from hellodd.glyphs import check_prototype_font  # lazy, as the head that draws with it

        check_prototype_font(pcfg.prototype_font)
    if base in EFFICIENTNET_BASES:
        if not pcfg.random_init:
            efficientnet_weights_id(base)  # the package that ships the weights is installed
    elif base.startswith("clip:"):
        check_clip(pcfg)
    elif base.startswith("sam:"):
        check_sam(pcfg)
    else:
        raise UserError(
            f"--set projector.base: unknown base {base!r} (clip:<open_clip architecture>, "
            + ", ".join(f"sam:{a}" for a in SAM_ENCODERS if not a.startswith("hellodd"))
            + ", "
            + " or ".join(EFFICIENTNET_BASES)
            + ")"
        )


def build_base(
    pcfg: ProjectorConfig, classes: list[str], cache_dir: Path | None = None, text_head: bool = True
) -> Projector:
    """The projector before any adapter: exactly the base's zero-shot (or mapped ImageNet) classifier.
    ``text_head=False`` leaves a CLIP base's head at zero (shapes only: for counting adapter bytes)."""
    check_base(pcfg)
    if pcfg.base.startswith("clip:"):
        p = build_clip(pcfg, classes, cache_dir, text_head and pcfg.head_init == "names")
    elif pcfg.base.startswith("sam:"):
        return build_sam(pcfg, classes)
    else:
        p = build_efficientnet(pcfg, classes, cache_dir)
    if pcfg.head_init == "prototypes" and text_head:
        prototype_head(p, pcfg)
    return p


@torch.no_grad()
def prototype_head(p: Projector, pcfg: ProjectorConfig) -> None:
    """Start the head from the base's own features of each class's prototype image: the class name (a
    character) drawn in ``projector.prototype_font``.  Row c is the centred, normalised prototype feature
    ``(f_c - mu) / |f_c - mu|``, scaled so that a prototype's own logit is 10 above the mean; the bias
    centres on ``mu``.  Derived from public weights, a public font and the class names: zero stored bytes."""
    from hellodd.glyphs import prototype_images  # lazy: renders with PIL and reads the font

    images = prototype_images(p.classes, pcfg.prototype_font, p.image_size)
    was = p.training
    p.eval()
    feats = torch.cat([p.encode(images[i : i + 200]) for i in range(0, len(images), 200)]).float()
    if p.normalize:
        feats = torch.nn.functional.normalize(feats, dim=-1)
    mu = feats.mean(0)
    centred = feats - mu
    w = torch.nn.functional.normalize(centred, dim=-1)
    alpha = 10.0 / (w * centred).sum(-1).mean().clamp_min(1e-6)
    weight, bias = alpha * w, -(alpha * w) @ mu
    p.head.weight.copy_(weight / p.scale)
    if p.head.bias is not None:
        p.head.bias.copy_(bias / p.scale)
    p.train(was)
    p.info = {
        **p.info,
        "head_init": f"prototypes: the class names drawn in {pcfg.prototype_font}",
        "prototype_font_sha256": sha256(pcfg.prototype_font),
        "head_file": None,
    }


def weights_id(base: str, random_init: bool, base_seed: int, checkpoint_sha256: str | None) -> str:
    """What names a base's weights in its head cache key: the checkpoint's sha256, the packaged weights, or
    the seed of a random base."""
    if random_init:
        return f"seed:{base_seed}"
    if base.startswith(("clip:", "sam:")):
        return checkpoint_sha256 or f"seed:{base_seed}"
    return efficientnet_weights_id(base)


def head_file(base: str, weights_id: str, classes: list[str]) -> str:
    """The cache file name of a base's head initialisation for these weights and classes (an export carries
    it, so a loaded set needs neither the text tower nor MiniLM)."""
    if base.startswith("clip:"):
        return clip_head_file(base[5:], weights_id, classes)
    if base.startswith("sam:"):
        return ""  # nothing derived: the head is stored with the adapters
    return efficientnet_head_file(base, weights_id, classes)
