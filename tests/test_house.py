"""The house's seams: the run layout, the one resumable loop, the label-source registry, typed choices, and
the task seam (only the task modules name a task)."""

from __future__ import annotations

import io
import re
import tokenize
import typing
from pathlib import Path

import pytest
import torch

import hellodd
from hellodd import config as C
from hellodd import engine, layout
from hellodd.errors import UserError
from hellodd.resume import ResumePoint
from hellodd.sources import REGISTRY


def test_every_label_source_the_config_accepts_has_one_builder():
    from hellodd.compressors import COMPRESSORS  # lpld:X, lpqld:X: one builder each, for every ratio

    assert set(REGISTRY) == set(C.LABEL_SOURCES) | set(COMPRESSORS)
    online = {name for name, b in REGISTRY.items() if b.online}
    assert online == {"teacher", "weak-teachers", "projector", "projector-transfer"}


def test_every_path_of_a_run_lies_under_its_folder_and_names_its_set():
    cfg = C.apply_overrides(C.preset("fashion-mnist"), ["out=/somewhere/run", "distill.ipc=1"])
    paths = [
        layout.final_teacher_path(cfg),
        layout.pool_index_path(cfg),
        layout.projector_path(cfg),
        layout.distilled_dir(cfg),
        layout.adapted_projector_path(cfg),
        layout.evaluate_dir(cfg),
        layout.label_store_dir(cfg, "stored", 0),
        layout.export_dir(cfg),
        layout.cache_dir(cfg),
    ]
    assert all(str(p).startswith("/somewhere/run/") for p in paths)
    assert layout.projector_path(cfg).parent.name == "teachers-0.4-0.55-0.75"  # one folder per window
    assert layout.distilled_dir(cfg).name == layout.evaluate_dir(cfg).name == "ipc1-rded"
    rnd = C.apply_overrides(cfg, ["distill.init=random"])
    assert layout.distilled_dir(rnd).name == "ipc1-random"
    rule = C.apply_overrides(cfg, ["projector.teacher_epochs=[]"])
    assert layout.projector_path(rule).parent.name == "rule-ipc1"


def test_closed_choices_come_from_the_types():
    hints = typing.get_type_hints(C.EvaluateConfig)
    assert typing.get_args(hints["schedule"]) == ("half-cosine", "cosine")
    with pytest.raises(
        UserError, match=r"--set evaluate.schedule: must be half-cosine or cosine \(not 'step'\)"
    ):
        C.apply_overrides(C.preset("synthetic"), ["evaluate.schedule=step"])
    bad = C.to_dict(C.preset("synthetic"))
    bad["engine"]["precision"] = "fp8"  # a config file gets the same check as --set
    with pytest.raises(
        UserError, match="engine.precision: must be auto, 32-true, bf16-mixed, 16-mixed or 64-true"
    ):
        C.from_dict(bad)


def test_a_resume_point_resumes_only_its_own_key(tmp_path, capsys):
    point = ResumePoint(tmp_path / "state.pt", {"lr": 1, "steps": 10}, "test loop", 10)
    assert point.load() is None  # nothing saved yet
    point.save(4, {"step": 4, "w": torch.ones(2)})
    state = point.load()
    assert state["step"] == 4 and torch.equal(state["w"], torch.ones(2))
    other = ResumePoint(tmp_path / "state.pt", {"lr": 2, "steps": 10}, "test loop", 10)
    assert other.load() is None  # made from other inputs: the loop starts afresh, and says so
    assert "state.pt was made from other inputs; the test loop starts afresh" in capsys.readouterr().out
    strict = ResumePoint(tmp_path / "state.pt", {"lr": 2, "steps": 10}, "test loop", 10, refuse=True)
    with pytest.raises(UserError, match=r"resume state is from a different setup \(lr differ\)"):
        strict.load()
    point.finish()
    assert not (tmp_path / "state.pt").exists()


def test_a_stop_request_saves_then_ends_the_loop(tmp_path):
    point = ResumePoint(tmp_path / "state.pt", "key", "test loop", 10)
    old = engine.install_stop_handlers()
    try:
        engine._STOP["signal"] = "SIGTERM"
        assert point.poll(3)
        with pytest.raises(engine.Preempted, match="test loop stopped at step 3/10 after writing"):
            point.save(3, {"step": 3}, stop=True)
    finally:
        engine.restore_handlers(old)
    assert point.load()["step"] == 3
    unsaved = ResumePoint(None, "key", "test loop", 10)  # a loop without a state file only stops
    unsaved.save(3, {"step": 3})
    assert unsaved.load() is None


# The task seam: outside these, a module asks the task (hellodd.config.tasks, hellodd.tasks) and never names
# one or its metrics.  metrics.py computes the classification metric; presets are data.
TASK_MODULES = (
    "tasks.py",
    "config/tasks.py",
    "config/presets.py",
    "segmentation/",
    "metrics.py",
)
TASK_WORDS = re.compile(
    r"(?<![A-Za-z0-9_])(?:segmentation|classification|segmenters?|is_segmenter|TORCHVISION_SEGMENTERS"
    r"|SEGMENTATION_DATA|miou|top-?[15](?![ _-]agreement)|pixel[_ ]accuracy)(?![A-Za-z0-9_])",
    re.IGNORECASE,
)


def _docstring(tokens: list, i: int) -> bool:
    """Whether string token ``i`` stands alone as a statement (a docstring, or prose in its place)."""
    before = next((t for t in reversed(tokens[:i]) if t.type not in (tokenize.NL, tokenize.COMMENT)), None)
    after = next((t for t in tokens[i + 1 :] if t.type not in (tokenize.NL, tokenize.COMMENT)), None)
    starts = before is None or before.type in (
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENCODING,
    )
    return starts and (after is None or after.type in (tokenize.NEWLINE, tokenize.ENDMARKER))


def task_names(package: Path) -> list[str]:
    """``file:line: text`` of every name or string (comments and docstrings aside) that names a task or one
    of its metrics in ``package``, outside the task modules."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if any(rel == m or (m.endswith("/") and rel.startswith(m)) for m in TASK_MODULES):
            continue
        tokens = list(tokenize.tokenize(io.BytesIO(path.read_bytes()).readline))
        for i, t in enumerate(tokens):
            if t.type == tokenize.NAME or (t.type == tokenize.STRING and not _docstring(tokens, i)):
                if TASK_WORDS.search(t.string):
                    found.append(f"{rel}:{t.start[0]}: {t.line.strip()}")
    return found


def test_only_the_task_modules_name_a_task_or_its_metrics():
    found = task_names(Path(hellodd.__file__).parent)
    assert not found, "ask the task (hellodd.config.tasks, hellodd.tasks) instead:\n" + "\n".join(found)


def test_the_task_name_check_flags_a_planted_line(tmp_path):
    (tmp_path / "segmentation").mkdir()
    (tmp_path / "segmentation" / "views.py").write_text('KEY = "miou"\n')  # a task module may
    (tmp_path / "stage.py").write_text(
        '"""A stage: segmentation and classification alike."""\n'
        "# comments may name a task: segmentation\n"
        "def run(cfg, r):\n"
        '    """Its docstring may name top-1 too."""\n'
        '    agree = r["top1_agreement"]  # a projector statistic, not a task metric\n'
        "    if cfg.data.name in SEGMENTATION_DATA:\n"
        '        return r["miou"]\n'
        "    return f\"{r['top1']:.2f} top-1 agreement\"\n"
    )
    assert task_names(tmp_path) == [
        "stage.py:6: if cfg.data.name in SEGMENTATION_DATA:",
        'stage.py:7: return r["miou"]',
        "stage.py:8: return f\"{r['top1']:.2f} top-1 agreement\"",
    ]
