"""The projector's frozen base, picked by name: :func:`build_base`, :func:`check_base` and the name of its
head's cache file (supplement A.3; docs/method.md).  One module per kind of base, each registering itself
(:mod:`.registry`):

* ``clip:<arch>`` (:mod:`.clip`): an open_clip image tower, its head CLIP's zero-shot classifier
  (``clip:RN50`` is the paper's);
* ``efficientnet-lite0`` / ``efficientnet-lite2`` (:mod:`.efficientnet`): ImageNet-pretrained, its head
  the network's own ImageNet classifier mapped to the classes by name;
* ``sam:<vit_b|vit_l|vit_h>`` (:mod:`.sam`, dense only): SAM's image encoder from a user's checkpoint;
* ``classifier:<arch>`` (:mod:`.classifier`): any classifier from a user's checkpoint (hellodd, torchvision
  or timm), its features before its last layer, its head from prototypes.

For CLIP and EfficientNet the head's start is derived from public weights and class names: it costs no
storage.  SAM knows no class names: its head is learnt in full and stored.

A base is built inside a fork of the CPU generator seeded with ``projector.base_seed``: building one draws
the same numbers wherever it is called and leaves the caller's generator as it was.  The fork's state at
the end of the build goes with the projector (``adapter_rng``), and the adapters' random start is drawn from
it (:func:`~hellodd.projector.adapters.add_adapters`): base and adapters are one seeded stream.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from hellodd.config import ProjectorConfig
from hellodd.errors import UserError
from hellodd.io import sha256
from hellodd.projector import classifier, clip, efficientnet, sam  # noqa: F401  (each registers its kinds)
from hellodd.projector.clip import prompt_templates
from hellodd.projector.efficientnet import check_minilm, minilm_similarity
from hellodd.projector.model import BaseInfo, Projector
from hellodd.projector.registry import (
    REGISTRY,
    BaseKind,
    check_checkpoint,
    head_file,
    kind_of,
    register,
    weights_id,
)

__all__ = [
    "REGISTRY",
    "BaseInfo",
    "BaseKind",
    "Projector",
    "build_base",
    "check_base",
    "check_checkpoint",
    "check_minilm",
    "head_file",
    "kind_of",
    "minilm_similarity",
    "prompt_templates",
    "register",
    "weights_id",
]


def check_base(pcfg: ProjectorConfig) -> None:
    """Refuse, with one line, a base that cannot be built: an unknown name, what its kind refuses (a CLIP
    architecture open_clip does not know, a weights package that is not installed, ...), its checkpoint
    setting (:func:`~hellodd.projector.registry.check_checkpoint`), a head it cannot start from prototypes or a
    missing prototype font.  Reads no weights, so a run can ask before its first stage."""
    kind = kind_of(pcfg.base)
    if pcfg.head_init == "prototypes":
        if kind.learnt_head:
            raise UserError(
                f"--set projector.head_init=prototypes: must be names for {pcfg.base} (its head starts at zero "
                "and is learnt in full)"
            )
        from hellodd.glyphs import check_prototype_font  # lazy, as the head that draws with it

        check_prototype_font(pcfg.prototype_font)
    kind.check(pcfg)
    check_checkpoint(pcfg)


def build_base(
    pcfg: ProjectorConfig, classes: list[str], cache_dir: Path | None = None, text_head: bool = True
) -> Projector:
    """The projector before any adapter: exactly the base's zero-shot (or mapped ImageNet) classifier.
    ``text_head=False`` leaves a CLIP base's head at zero (shapes only: for counting adapter bytes).

    Seeded with ``projector.base_seed`` inside a fork of the CPU generator: the caller's stream is untouched."""
    check_base(pcfg)
    kind = kind_of(pcfg.base)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(pcfg.base_seed)  # the CPU generator only: nothing else is forked
        p = kind.build(pcfg, classes, cache_dir, text_head)
        if pcfg.head_init == "prototypes" and text_head:
            prototype_head(p, pcfg)
        p.adapter_rng = torch.get_rng_state()  # where the adapters' random start continues the stream
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
    p.info = replace(
        p.info,
        head_init=f"prototypes: the class names drawn in {pcfg.prototype_font}",
        prototype_font_sha256=sha256(pcfg.prototype_font),
        head_file=None,
        recorded=(*p.info.recorded, "prototype_font_sha256"),
    )
