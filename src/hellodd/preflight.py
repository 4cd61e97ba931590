"""The plan checked before any stage works: what each stage of a command will need, from the configs alone.

A run that would fail in its third stage fails in its first seconds, with the one line that stage would
have printed, before anything is written (the run folder's lock included).  Each stage declares its
needs in :data:`NEEDS`; a command checks the needs of every stage it will run, for every config (one per
IPC with ``hellodd run --ipc``).  Checks read no weights and no images: class folders' file names, a
labels file, the teacher pool's index, a released set's parquet footers and label column.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hellodd.config import Config, split_source
from hellodd.data import class_names
from hellodd.errors import UserError
from hellodd.hf import is_released_set, released_labels
from hellodd.io import file_metadata, read_json, sha256
from hellodd.layout import pool_index_path, projector_path
from hellodd.projector.bases import check_base, kind_of
from hellodd.tasks import task_of

# the stages each command runs, in order
COMMAND_STAGES = {
    "run": ("teachers", "projector", "distill", "evaluate"),
    "teachers": ("teachers",),
    "projector": ("projector",),
    "distill": ("distill",),
    "evaluate": ("evaluate",),
    "export": (),
}
PROJECTOR_SOURCES = ("projector", "projector-transfer")


def _pool_epochs(cfg: Config, stages: tuple[str, ...]) -> list[float] | None:
    """The pool the projector will choose from: the one this command trains, else the one on disk (None if
    there is none yet: the stage itself then says to train teachers first)."""
    if "teachers" in stages:
        return sorted(set(cfg.teacher.pool_epochs) | {float(cfg.teacher.epochs)})
    path = pool_index_path(cfg)
    return [c["epoch"] for c in read_json(path)["checkpoints"]] if path.is_file() else None


def _task(cfg: Config, stages: tuple[str, ...]) -> None:
    task = task_of(cfg.data)
    missing = [s for s in stages if s not in task.stages]
    if missing:
        raise UserError(
            f"--set data.name={cfg.data.name}: the {task.name} task has no {missing[0]} stage yet "
            f"(it has: {', '.join(task.stages)})"
        )


def _teachers(cfg: Config, stages: tuple[str, ...]) -> None:
    task_of(cfg.data).check(cfg.data)  # the data is where the config says, with its splits


def _projector(cfg: Config, stages: tuple[str, ...]) -> None:
    check_base(cfg.projector)
    names_head = kind_of(cfg.projector.base).check_names_head
    if names_head is not None and cfg.projector.head_init == "names":
        names_head()  # the head is derived from the class names here (later stages read it from the cache)
    window = cfg.projector.teacher_epochs
    pool = _pool_epochs(cfg, stages)
    if window and pool is not None:
        missing = [e for e in window if not any(abs(e - p) < 1e-9 for p in pool)]
        if missing:
            where = "teacher.pool_epochs" if "teachers" in stages else f"the pool in {pool_index_path(cfg)}"
            raise UserError(
                f"--set projector.teacher_epochs: no pool checkpoint at epoch(s) {missing} for IPC "
                f"{cfg.distill.ipc} ({where} must keep them: {pool})"
            )


def _adapters_base(cfg: Config, stages: tuple[str, ...]) -> None:
    """The base file of adapters already on disk, when this command does not train them again: refused before
    any stage if it is not the file they were trained on (its sha256 is in their header)."""
    p = cfg.projector
    path = projector_path(cfg)
    if "projector" in stages or p.random_init or not p.checkpoint or not path.is_file():
        return
    want = file_metadata(path).get("base_info", {}).get("checkpoint_sha256")
    if want and Path(p.checkpoint).is_file() and sha256(p.checkpoint) != want:
        raise UserError(
            f"--set projector.checkpoint={p.checkpoint}: not the base the adapters in {path} were trained on "
            "(sha256 differs); give that file, or train the adapters again with 'hellodd projector'"
        )


def _distill(cfg: Config, stages: tuple[str, ...]) -> None:
    d = cfg.distill
    if d.update or d.adapt_steps > 0:
        check_base(cfg.projector)  # the update and the view adaptation load the projector
        _adapters_base(cfg, stages)
    task = task_of(cfg.data)
    task.check_set(cfg)  # a task whose sets are not read from a folder refuses init=folder here
    if d.init == "folder" and is_released_set(d.images):
        # a released Hugging Face set: its files, columns and classes (labels read, no image decoded)
        released_labels(d.images, class_names(cfg.data), cfg.data.name)


def _evaluate(cfg: Config, stages: tuple[str, ...]) -> None:
    names = [*cfg.evaluate.label_sources, *(cfg.evaluate.baseline_sources if "distill" in stages else [])]
    if any(split_source(n)[0] in PROJECTOR_SOURCES for n in names):
        check_base(cfg.projector)
        _adapters_base(cfg, stages)


NEEDS: dict[str, Callable[[Config, tuple[str, ...]], None]] = {
    "teachers": _teachers,
    "projector": _projector,
    "distill": _distill,
    "evaluate": _evaluate,
}


def check_plan(command: str, cfgs: list[Config]) -> None:
    """Every need of every stage ``command`` runs, for every config; the first unmet one is its one line."""
    stages = COMMAND_STAGES.get(command, ())
    for cfg in cfgs:
        _task(cfg, stages)
        for stage in stages:
            NEEDS[stage](cfg, stages)
