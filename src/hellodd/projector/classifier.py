"""Any classifier as a projector base (``classifier:<arch>``): the route to a base that knows the domain.

Where CLIP is weak (characters, medical images, remote sensing, documents) a user's own foundation model is
the base: a classifier trained on *other* classes of the domain, as CLIP was trained on other images.  The
projector reads its features before its last linear layer; LoRA goes on its convolutions and linear layers
like any base's (:mod:`.adapters`); its head starts from prototypes (``projector.head_init=prototypes``:
each class name drawn in a font, zero stored bytes).  A classifier has no text side, so a head from class
names is refused.  Three kinds of checkpoint, given with ``--set projector.checkpoint=PATH`` and bound by
their sha256 (the adapters record it; a changed file is refused):

* ``classifier:<arch>``: a hellodd model file (``save_classifier``: a teacher's ``final.safetensors`` or a
  pool checkpoint, ``hellodd teachers --preset glyphs-base`` among them), ``<arch>`` its architecture
  (``convnet-d4-w256``, ``resnet18``, ...).  The network normalises its own input; grey networks read the
  mean of the three channels the projector hands them.
* ``classifier:torchvision.<name>``: a state dict (``.pth``/``.pt`` or ``.safetensors``) of
  ``torchvision.models.get_model(<name>)``, ImageNet normalisation.
* ``classifier:timm.<name>``: a state dict of ``timm.create_model(<name>)``, the normalisation of the
  model's pretrained config.

The last layer's keys are dropped from the state dict, so a checkpoint of any class count loads.
``projector.random_init`` builds the same network with seeded random weights and reads no file.  The kind is
registered at the end of this module (:mod:`.registry`).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from hellodd.config import TORCHVISION_ARCHS, ProjectorConfig
from hellodd.config.schema import is_architecture
from hellodd.errors import UserError
from hellodd.io import file_metadata, load_tensors, sha256
from hellodd.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from hellodd.projector.model import BaseInfo, Projector, cache_key
from hellodd.projector.registry import BaseKind, register, unknown_base

KIND = "classifier"
LIBRARIES = ("torchvision", "timm")  # classifier:<library>.<name>; anything else is a hellodd architecture
IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # a hellodd network normalises its own input


def parse(spec: str) -> tuple[str, str]:
    """``classifier:timm.resnet18`` -> (``timm``, ``resnet18``); ``classifier:convnet`` -> (``hellodd``, ...)."""
    arch = spec.partition(":")[2]
    library, dot, name = arch.partition(".")
    if dot and library in LIBRARIES:
        return library, name
    return "hellodd", arch


def _option(pcfg: ProjectorConfig) -> str:
    return f"--set projector.base={pcfg.base}"


def check_classifier(pcfg: ProjectorConfig) -> None:
    """One line for a classifier base that cannot be built: an unknown architecture, a library that is not
    installed, a head from names (no text side), a dense projector, or a hellodd checkpoint of another
    architecture (read from the file's header, no weights)."""
    library, arch = parse(pcfg.base)
    if not arch:
        raise unknown_base(pcfg.base)
    if library == "hellodd" and not is_architecture(arch):
        raise UserError(
            f"{_option(pcfg)}: unknown architecture {arch!r} (convnet, convnet-dN[-wM], "
            f"{', '.join(TORCHVISION_ARCHS)}; or torchvision.<name>, timm.<name>)"
        )
    if library == "torchvision":
        import torchvision.models as tvm  # lazy: only this kind of base needs the list

        if arch not in tvm.list_models():
            raise UserError(f"{_option(pcfg)}: torchvision has no model {arch!r}")
    if library == "timm":
        try:
            import timm
        except ImportError:
            raise UserError(f"{_option(pcfg)}: timm is not installed (pip install timm)") from None
        if not timm.is_model(arch):
            raise UserError(f"{_option(pcfg)}: timm has no model {arch!r}")
    if pcfg.head_init != "prototypes":
        raise UserError(
            f"--set projector.head_init={pcfg.head_init}: {pcfg.base} has no text side; "
            "use projector.head_init=prototypes (the class names drawn in projector.prototype_font)"
        )
    if pcfg.dense:
        raise UserError(f"{_option(pcfg)}: a classifier base labels whole images, not dense maps")
    if library == "hellodd" and pcfg.checkpoint and not pcfg.random_init and Path(pcfg.checkpoint).is_file():
        spec = file_metadata(pcfg.checkpoint).get("spec")
        if not spec:
            raise UserError(f"--set projector.checkpoint={pcfg.checkpoint}: not a hellodd model checkpoint")
        if spec["arch"] != arch:
            raise UserError(
                f"--set projector.checkpoint={pcfg.checkpoint}: a {spec['arch']} checkpoint, not {arch} "
                f"(use --set projector.base=classifier:{spec['arch']})"
            )


class GreyInput(nn.Module):
    """A network trained on one channel, fed the projector's three: their mean (grey images: the image)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.mean(1, keepdim=True))


def drop_last_linear(net: nn.Module) -> str:
    """Replace the network's last ``nn.Linear`` (its classifier) by an identity; returns its name."""
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(net).__name__}: no linear classifier layer to read the features before")
    name = linears[-1][0]
    net.set_submodule(name, nn.Identity())
    return name


def _state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or torch file (``{"state_dict": ...}`` / ``{"model": ...}`` unwrapped)."""
    if str(path).endswith(".safetensors"):
        return load_tensors(path)[0]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:  # what a non-checkpoint raises
        raise UserError(f"--set projector.checkpoint={path}: not a state dict ({type(e).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"--set projector.checkpoint={path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_without(net: nn.Module, state: dict, dropped: str, path: str) -> None:
    keep = {k: v for k, v in state.items() if not k.startswith(dropped + ".")}
    try:
        net.load_state_dict(keep, strict=True)
    except RuntimeError as e:
        raise UserError(
            f"--set projector.checkpoint={path}: weights do not fit the network ({str(e).splitlines()[0]})"
        ) from None


def _hellodd_encoder(pcfg: ProjectorConfig, arch: str) -> tuple[nn.Module, tuple]:
    if pcfg.random_init:
        spec = {"arch": arch, "num_classes": 2, "in_channels": 3, "image_size": pcfg.image_size}
        model = build_model(**spec)
    else:
        from hellodd.models import load_classifier  # the hellodd file's own loader and its checks

        model, _ = load_classifier(pcfg.checkpoint)
    drop_last_linear(model.net)
    return (GreyInput(model) if model.spec["in_channels"] == 1 else model), IDENTITY


def _library_net(library: str, arch: str) -> tuple[nn.Module, tuple]:
    """A torchvision or timm network, untrained, with the input normalisation its weights are trained with."""
    if library == "torchvision":
        import torchvision.models as tvm

        return tvm.get_model(arch, weights=None), (IMAGENET_MEAN, IMAGENET_STD)
    import timm

    net = timm.create_model(arch, pretrained=False)
    cfg = net.pretrained_cfg or {}
    return net, (tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))


def normalisation(spec: str) -> tuple[tuple, tuple]:
    """What a classifier base's input is normalised with: a hellodd network normalises its own input."""
    library, arch = parse(spec)
    return IDENTITY if library == "hellodd" else _library_net(library, arch)[1]


def _library_encoder(pcfg: ProjectorConfig, library: str, arch: str) -> tuple[nn.Module, tuple]:
    net, norm = _library_net(library, arch)
    dropped = drop_last_linear(net)
    if not pcfg.random_init:
        _load_without(net, _state_dict(pcfg.checkpoint), dropped, pcfg.checkpoint)
    return net, norm


def build_classifier(
    pcfg: ProjectorConfig, classes: list[str], cache_dir: Path | None, text_head: bool = True
) -> Projector:
    """The classifier projector, its head at zero: the prototype head is drawn by the caller."""
    library, arch = parse(pcfg.base)
    if library == "hellodd":
        encoder, (mean, std) = _hellodd_encoder(pcfg, arch)
    else:
        encoder, (mean, std) = _library_encoder(pcfg, library, arch)
    encoder.eval()
    with torch.no_grad():  # the feature size at the projector's input size (a ConvNet's grows with it)
        dim = encoder(torch.zeros(1, 3, pcfg.image_size, pcfg.image_size)).flatten(1).shape[1]
    ckpt_sha = None if pcfg.random_init else sha256(pcfg.checkpoint)
    info = BaseInfo(
        base=pcfg.base,
        image_size=pcfg.image_size,
        mean=mean,
        std=std,
        pretrained=not pcfg.random_init,
        head_init=pcfg.head_init,
        head_file=classifier_head_file(pcfg.base, ckpt_sha or f"seed:{pcfg.base_seed}", classes),
        checkpoint=None if pcfg.random_init else pcfg.checkpoint,
        checkpoint_sha256=ckpt_sha,
    )
    head = torch.zeros(len(classes), dim)
    return Projector(
        encoder, head_weight=head, head_bias=torch.zeros(len(classes)), info=info, classes=classes
    )


def classifier_head_file(base: str, weights_id: str, classes: list[str]) -> str:
    return f"classifier-head-{cache_key(base=base, weights=weights_id, classes=classes)}.safetensors"


register(
    BaseKind(
        name=KIND,
        usage="classifier:<arch>",
        check=check_classifier,
        build=build_classifier,
        mean=IDENTITY[0],
        std=IDENTITY[1],
        normalisation=normalisation,
        checkpoint_option="--set projector.checkpoint={}",
        checkpoint_what="a classifier's weights: a hellodd model file, or a torchvision or timm state dict",
        head_file=classifier_head_file,
    )
)
