"""Stages 2-3: the image-to-label projector and its LoRA knowledge transfer from weak teachers.

One module per concern, as peft splits a tuner:

* :mod:`~hellodd.projector.bases`: the frozen base (an open_clip image tower or EfficientNet-Lite0) and its
  head initialised from class names: :class:`Projector`, :func:`build_base`;
* :mod:`~hellodd.projector.adapters`: peft LoRA on the base, saved alone and rebuilt with the base from
  the file's metadata: :func:`add_adapters`, :func:`save_adapters`, :func:`load_projector`;
* :mod:`~hellodd.projector.transfer`: stage 3, the transfer from weak teachers on real images
  (:func:`weak_teachers`, :func:`train_projector`, :func:`run_projector`);
* :mod:`~hellodd.projector.views`: the same transfer continued on a distilled set's student views
  (:func:`adapt_to_views`).
"""

from hellodd.projector.adapters import (
    ADAPTER_FILE,
    FORMAT,
    adapter_tensors,
    add_adapters,
    load_projector,
    lora_targets,
    merged_for_inference,
    save_adapters,
)
from hellodd.projector.bases import Projector, build_base, minilm_similarity, prompt_templates
from hellodd.projector.transfer import (
    adapter_optimizer,
    agreement,
    projector_path,
    run_projector,
    teacher_logits,
    train_projector,
    transfer_batch,
    transfer_loss,
    weak_teachers,
)
from hellodd.projector.views import adapt_to_views

__all__ = [
    "ADAPTER_FILE",
    "FORMAT",
    "Projector",
    "adapt_to_views",
    "adapter_optimizer",
    "adapter_tensors",
    "add_adapters",
    "agreement",
    "build_base",
    "load_projector",
    "lora_targets",
    "merged_for_inference",
    "minilm_similarity",
    "projector_path",
    "prompt_templates",
    "run_projector",
    "save_adapters",
    "teacher_logits",
    "train_projector",
    "transfer_batch",
    "transfer_loss",
    "weak_teachers",
]
