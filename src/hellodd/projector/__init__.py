"""The image-to-label projector: a frozen public base with LoRA adapters, and the stages that train them.

One module per concern, as peft splits a tuner:

* :mod:`~hellodd.projector.bases`: the frozen base (an open_clip image tower, an EfficientNet-Lite or SAM's
  image encoder) and its head initialised from class names: :class:`Projector`, :func:`build_base`;
* :mod:`~hellodd.projector.registry`: the kinds of base by name (:class:`BaseKind`, :func:`register`,
  :func:`kind_of`), each registered by its own module (:mod:`.clip`, :mod:`.efficientnet`, :mod:`.sam`);
* :mod:`~hellodd.projector.adapters`: peft LoRA on the base, saved alone and rebuilt with the base from
  the file's metadata: :func:`add_adapters`, :func:`save_adapters`, :func:`load_projector`;
* :mod:`~hellodd.projector.transfer` (a stage): the transfer from weak teachers on real images
  (``weak_teachers``, ``train_projector``, ``run_projector``);
* :mod:`~hellodd.projector.views` (part of the distill stage): the same transfer continued on a distilled
  set's student views (``adapt_to_views``).

Importing this package loads the model parts only; a loaded light set needs nothing more.
"""

from hellodd.projector.adapters import (
    FORMAT,
    adapter_tensors,
    add_adapters,
    load_projector,
    lora_targets,
    merged_for_inference,
    save_adapters,
)
from hellodd.projector.bases import Projector, build_base, minilm_similarity, prompt_templates
from hellodd.projector.model import BaseInfo
from hellodd.projector.registry import REGISTRY, BaseKind, kind_of, register

__all__ = [
    "FORMAT",
    "REGISTRY",
    "BaseInfo",
    "BaseKind",
    "Projector",
    "adapter_tensors",
    "add_adapters",
    "build_base",
    "kind_of",
    "load_projector",
    "lora_targets",
    "merged_for_inference",
    "minilm_similarity",
    "prompt_templates",
    "register",
    "save_adapters",
]
