"""Impossible settings, refused with one line naming the option, before any stage works."""

from __future__ import annotations

import dataclasses
import typing

from hellodd.config.schema import LABEL_SOURCES, Config, is_label_source
from hellodd.config.tasks import spec_of
from hellodd.errors import UserError


def _choices(tp) -> tuple | None:
    """The values a ``Literal`` field (or a list of them) may take; None for an open type."""
    if typing.get_origin(tp) is list:
        tp = typing.get_args(tp)[0]
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def choice_text(choices: tuple) -> str:
    """``a, b or c``: a closed choice as a message names it."""
    words = [str(c) for c in choices]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _closed_choices(obj, prefix: str):
    """(ok, key, choices) for every ``Literal``-typed field of the config, recursively."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _closed_choices(value, key + ".")
            continue
        choices = _choices(hints[f.name])
        if choices is not None:
            values = value if isinstance(value, list) else [value]
            yield all(v in choices for v in values), key, choice_text(choices)


def validate(cfg: Config) -> None:
    """Reject impossible settings with a message naming the option."""
    for ok, key, want in _closed_choices(cfg, ""):
        if not ok:
            raise UserError(f"--set {key}: must be {want}")
    checks = [
        (cfg.data.image_size >= 8, "data.image_size", "at least 8"),
        (cfg.engine.devices >= 1, "engine.devices", "at least 1"),
        (cfg.engine.num_nodes >= 1, "engine.num_nodes", "at least 1"),
        (cfg.teacher.epochs > 0, "teacher.epochs", "positive"),
        (cfg.teacher.batch_size >= 1, "teacher.batch_size", "at least 1"),
        (cfg.teacher.lr > 0, "teacher.lr", "positive"),
        (
            all(0 < e <= cfg.teacher.epochs for e in cfg.teacher.pool_epochs),
            "teacher.pool_epochs",
            f"within (0, teacher.epochs={cfg.teacher.epochs}]",
        ),
        (cfg.projector.encoder_rank >= 0, "projector.encoder_rank", "0 or more"),
        (cfg.projector.head_rank >= 0, "projector.head_rank", "0 or more"),
        (cfg.projector.epochs > 0, "projector.epochs", "positive"),
        (cfg.projector.batch_size >= 1, "projector.batch_size", "at least 1"),
        (cfg.projector.lr > 0, "projector.lr", "positive"),
        (cfg.projector.head_lr >= 0, "projector.head_lr", "non-negative (0 = projector.lr)"),
        (0 <= cfg.projector.cutmix_prob <= 1, "projector.cutmix_prob", "between 0 and 1"),
        (0 <= cfg.projector.frozen_depth < 1, "projector.frozen_depth", "in [0, 1)"),
        (cfg.distill.ipc >= 1, "distill.ipc", "at least 1"),
        (cfg.distill.factor >= 1, "distill.factor", "at least 1"),
        (
            cfg.distill.init != "folder" or bool(cfg.distill.images),
            "distill.images",
            "a folder (init=folder)",
        ),
        (cfg.distill.candidates_per_class >= 1, "distill.candidates_per_class", "at least 1"),
        (cfg.distill.crops_per_image >= 1, "distill.crops_per_image", "at least 1"),
        (cfg.distill.update_batch_size >= 1, "distill.update_batch_size", "at least 1"),
        (cfg.distill.score_batch_size >= 1, "distill.score_batch_size", "at least 1"),
        (cfg.teacher.eval_batch_size >= 1, "teacher.eval_batch_size", "at least 1"),
        (cfg.evaluate.eval_batch_size >= 1, "evaluate.eval_batch_size", "at least 1"),
        (cfg.evaluate.epochs >= 1, "evaluate.epochs", "at least 1"),
        (cfg.evaluate.batch_size >= 1, "evaluate.batch_size", "at least 1"),
        (cfg.distill.adapt_steps >= 0, "distill.adapt_steps", "0 (off) or more"),
        (0 < cfg.distill.adapt_lr_scale <= 100, "distill.adapt_lr_scale", "in (0, 100]"),
        (cfg.distill.adapt_checks >= 0, "distill.adapt_checks", "0 (no checks) or more"),
        (cfg.distill.adapt_check_views >= 1, "distill.adapt_check_views", "at least 1"),
        (cfg.distill.adapt_probe_views >= 1, "distill.adapt_probe_views", "at least 1"),
        (cfg.distill.adapt_batch >= 0, "distill.adapt_batch", "0 (the students' batch size) or more"),
        (cfg.distill.subset > 0, "distill.subset", "a count of images (>= 1) or a fraction of them (< 1)"),
        (
            all(map(is_label_source, cfg.evaluate.label_sources)) and cfg.evaluate.label_sources,
            "evaluate.label_sources",
            f"a non-empty subset of {', '.join(LABEL_SOURCES)} (a logit source may add +gift), or lpld:X / "
            "lpqld:X (X >= 1 or adapters)",
        ),
        (
            all(map(is_label_source, cfg.evaluate.baseline_sources)),
            "evaluate.baseline_sources",
            f"a subset of {', '.join(LABEL_SOURCES)} (a logit source may add +gift; lpld:X / lpqld:X; empty: no "
            "random-subset baseline)",
        ),
        (cfg.evaluate.compressed_topk >= 1, "evaluate.compressed_topk", "at least 1"),
        (
            0 < cfg.evaluate.compressed_epoch_fraction <= 1,
            "evaluate.compressed_epoch_fraction",
            "in (0, 1]",
        ),
        (0 < cfg.distill.crop_min_scale <= 1, "distill.crop_min_scale", "in (0, 1]"),
        (cfg.distill.update_epochs >= 0, "distill.update_epochs", "0 or more"),
        (len(cfg.evaluate.seeds) >= 1, "evaluate.seeds", "a list of at least one seed"),
        (
            not cfg.evaluate.sweep_seeds or set(cfg.evaluate.sweep_seeds) <= set(cfg.evaluate.seeds),
            "evaluate.sweep_seeds",
            "empty (evaluate.seeds) or some of evaluate.seeds",
        ),
        (
            cfg.projector.head_init == "names" or not cfg.projector.dense,
            "projector.head_init",
            "names for dense projectors (prototypes: whole-image projectors)",  # bases: check_base
        ),
        (len(cfg.evaluate.students) >= 1, "evaluate.students", "a list of at least one architecture"),
        (cfg.data.glyph_first >= 0, "data.glyph_first", "0 or more"),
        # a base pretrained on other characters never sees the glyphs presets' classes, nor a held-out face
        (
            cfg.data.glyph_first >= cfg.data.glyph_reserved,
            "data.glyph_first",
            f"at least data.glyph_reserved={cfg.data.glyph_reserved}: ranks 1 to {cfg.data.glyph_reserved} "
            "are the classes of the sets this one must never see",
        ),
        (
            cfg.data.glyph_reserved == 0 or cfg.data.glyph_val_faces == "train",
            "data.glyph_val_faces",
            "train (this set must never see a held-out face)",
        ),
    ]
    task = spec_of(cfg)  # its networks, and the settings it rules out
    archs, known = task.networks, task.knows
    checks += task.checks(cfg)
    checks += [
        (cfg.projector.output_stride in (8, 16, 32), "projector.output_stride", "8, 16 or 32"),
        (known(cfg.teacher.arch), "teacher.arch", f"{archs} (not {cfg.teacher.arch!r})"),
        (
            all(known(a) for a in cfg.evaluate.students),
            "evaluate.students",
            f"a list of {archs} (not {[a for a in cfg.evaluate.students if not known(a)]})",
        ),
    ]
    need = cfg.distill.ipc * cfg.distill.factor**2
    checks.append(
        (
            cfg.distill.init != "rded" or cfg.distill.candidates_per_class >= need,
            "distill.candidates_per_class",
            f"at least distill.ipc={cfg.distill.ipc} x distill.factor^2 = {need}: RDED keeps that many of "
            "each class's candidates (lower distill.ipc or distill.factor, or raise distill.candidates_per_class)",
        )
    )
    for ok, key, want in checks:
        if not ok:
            raise UserError(f"--set {key}: must be {want}")
