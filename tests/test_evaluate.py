"""Stage 5 end to end on the synthetic preset, and the whole pipeline through ``hellodd run``."""

import json

import pytest

from hellodd.cli import main
from hellodd.evaluate import lr_factor


def test_schedules():
    assert lr_factor("half-cosine", 0, 10) == 1.0 and lr_factor("half-cosine", 10, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10) == pytest.approx(0.0)


def test_hellodd_run_executes_every_stage_and_reports(tmp_path, capsys):
    assert main(["run", "--preset", "synthetic", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for stage in ("teachers", "projector", "distill", "evaluate"):
        assert stage in printed
    ev = tmp_path / "evaluate"
    rows = json.loads((ev / "results.json").read_text())
    assert {r["source"] for r in rows} == {"hard", "teacher", "stored", "projector"} and len(rows) == 8
    assert all(0 <= r["top1"] <= 100 and r["seconds_per_iteration"] > 0 for r in rows)
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["storage"]["hard"]["bytes"] == 0
    # the projector that labels the set is the one distill adapted to its views (distill.adapt_steps > 0)
    adapted = tmp_path / "distill" / "ipc2-rded-update" / "adapters.safetensors"
    assert metrics["storage"]["projector"]["bytes"] == adapted.stat().st_size
    assert "ipc2-rded-update/adapters.safetensors" in metrics["storage"]["projector"]["formula"]
    stored_files = list((ev / "stored-labels" / "seed0").rglob("*.safetensors"))
    assert metrics["storage"]["stored"]["bytes"] == sum(f.stat().st_size for f in stored_files)
    # the online teacher and its stored copy see the same pixels: same training signal (fp16 rounding aside)
    t = [r["top1"] for r in rows if r["source"] == "teacher"]
    s = [r["top1"] for r in rows if r["source"] == "stored"]
    assert t == pytest.approx(s, abs=20)
    assert "| projector |" in (ev / "results.md").read_text()
    for stage in ("teachers", "projector", "evaluate"):
        assert (tmp_path / stage / "config.json").is_file() and (tmp_path / stage / "storage.json").is_file()
    # the ablation of the view adaptation: stage 3's adapters, on the same stream
    sources = [
        "--set",
        "evaluate.label_sources=[projector,projector-transfer]",
        "--set",
        "evaluate.seeds=[0]",
    ]
    assert main(["evaluate", "--preset", "synthetic", "--out", str(tmp_path), *sources]) == 0
    storage = json.loads((ev / "metrics.json").read_text())["storage"]
    assert "ipc2-rded-update/adapters.safetensors" in storage["projector"]["formula"]
    assert "projector/adapters.safetensors" in storage["projector-transfer"]["formula"]
    capsys.readouterr()
    assert main(["storage", "--preset", "synthetic", "--out", str(tmp_path)]) == 0
    report = capsys.readouterr().out
    assert "HeLlO projector adapters" in report and "adapted to ipc2-rded-update" in report
