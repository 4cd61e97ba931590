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
    for stage in ("teachers", "projector", "distill", "evaluate", "report.md"):
        assert stage in printed
    ev = tmp_path / "evaluate" / "ipc2-rded-update"
    rows = json.loads((ev / "results.json").read_text())
    six = {"hard", "teacher", "weak-teachers", "stored", "compressed", "projector"}
    assert {r["source"] for r in rows} == six and len(rows) == 12
    assert all(0 <= r["top1"] <= 100 and r["seconds_per_iteration"] > 0 for r in rows)
    metrics = json.loads((ev / "metrics.json").read_text())
    storage = metrics["storage"]
    assert storage["hard"]["bytes"] == 0
    # the projector that labels the set is the one distill adapted to its views (distill.adapt_steps > 0)
    adapted = tmp_path / "distill" / "ipc2-rded-update" / "adapters.safetensors"
    assert storage["projector"]["bytes"] == adapted.stat().st_size
    assert "ipc2-rded-update/adapters.safetensors" in storage["projector"]["formula"]
    stored_files = list((ev / "stored-labels" / "seed0").rglob("epoch_*.safetensors"))
    assert storage["stored"]["bytes"] == sum(f.stat().st_size for f in stored_files)
    compressed = list((ev / "compressed-labels" / "seed0").rglob("epoch_*.safetensors"))
    assert len(compressed) == 2 and len(stored_files) == 3  # 3 epochs, fraction 0.5 keeps round(1.5) = 2
    assert (
        storage["compressed"]["bytes"]
        == sum(f.stat().st_size for f in compressed)
        < storage["stored"]["bytes"]
    )
    pool = json.loads((tmp_path / "teachers" / "pool.json").read_text())
    weak = [c for c in pool["checkpoints"] if c["epoch"] in (0.5, 1.0)]  # the rule's window of 2 on this pool
    assert storage["weak-teachers"]["bytes"] == sum(
        (tmp_path / "teachers" / c["file"]).stat().st_size for c in weak
    )
    # the random real subset of the same IPC, with its own adapted projector, same protocol
    rnd = tmp_path / "evaluate" / "ipc2-random"
    rrows = json.loads((rnd / "results.json").read_text())
    assert {r["source"] for r in rrows} == {"hard", "teacher", "projector"} and len(rrows) == 6
    assert (
        "ipc2-random/adapters.safetensors"
        in json.loads((rnd / "metrics.json").read_text())["storage"]["projector"]["formula"]
    )
    # the report: improvement over random per source, whole-data reference, the frontier plot
    report = (tmp_path / "report.md").read_text()
    assert "vs random subset" in report and "Whole-data reference" in report
    entries = json.loads((tmp_path / "report.json").read_text())["entries"]
    by = {(e["set"], e["source"]): e for e in entries}
    for src in ("hard", "teacher", "projector"):
        e, r = by[("ipc2-rded-update", src)], by[("ipc2-random", src)]
        assert e["vs_random"] == pytest.approx(e["mean"] - r["mean"])
    assert "vs_random" not in by[("ipc2-rded-update", "stored")]  # not evaluated on the subset
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stage in ("teachers", "projector/rule-ipc2"):  # one projector folder per weak-teacher window
        assert (tmp_path / stage / "config.json").is_file() and (tmp_path / stage / "storage.json").is_file()
    assert (ev / "config.json").is_file() and (rnd / "config.json").is_file()

    # finding 1 of issue 12: the subset's evaluation finds the set's stored labels in its folder (as when
    # every set shared one folder); they are rewritten for the subset's images, never replayed on them
    import shutil

    shutil.copytree(ev / "stored-labels", rnd / "stored-labels")
    args = ["--set", "distill.init=random", "--set", "distill.update=false", "--set", "evaluate.seeds=[0]"]
    sources = ["--set", "evaluate.label_sources=[stored]"]
    assert main(["evaluate", "--preset", "synthetic", "--out", str(tmp_path), *args, *sources]) == 0
    assert "stored-label file(s) were made from other inputs; rewritten" in capsys.readouterr().out
    assert (
        json.loads((ev / "metrics.json").read_text())["rows"] == metrics["rows"]
    )  # the set's results untouched

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
    assert "rule-ipc2/adapters.safetensors" in storage["projector-transfer"]["formula"]
    capsys.readouterr()
    assert main(["storage", "--preset", "synthetic", "--out", str(tmp_path)]) == 0
    report = capsys.readouterr().out
    assert "HeLlO projector adapters" in report and "adapted to ipc2-rded-update" in report
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--to", str(tmp_path / "again")]) == 0
    assert (
        "| ipc2-rded-update | projector-transfer |" in capsys.readouterr().out
        and (tmp_path / "again" / "frontier.png").is_file()
    )
    assert main(["report", str(tmp_path / "nothing")]) == 2

    # the demo's evaluation: torch.compile-d student and labeller under bf16 autocast
    fast = ["--precision", "bf16-mixed", "--set", "evaluate.compile=true", "--set", "evaluate.seeds=[0]"]
    one = ["--set", "evaluate.label_sources=[teacher]"]
    assert main(["evaluate", "--preset", "synthetic", "--out", str(tmp_path), *fast, *one]) == 0
    rows = json.loads((ev / "results.json").read_text())
    assert [r["source"] for r in rows] == ["teacher"] and 0 <= rows[0]["top1"] <= 100


def test_run_over_several_ipcs_with_refined_sources(tmp_path, capsys):
    """``hellodd run --ipc 1 2``: one trajectory, a set, a subset and a projector per IPC, GIFT-refined sources
    beside their bases, and a report with the sources-by-IPC table and a section and plot per IPC."""
    args = ["run", "--preset", "synthetic", "--out", str(tmp_path), "--ipc", "1", "2"]
    sets = [
        "--set",
        "evaluate.seeds=[0]",
        "--set",
        "evaluate.label_sources=[hard,teacher,teacher+gift,projector]",
        "--set",
        "evaluate.baseline_sources=[projector+gift]",
    ]
    assert main([*args, *sets]) == 0
    printed = capsys.readouterr().out
    assert "report.md" in printed and "frontier-ipc2.png" in printed
    for ipc in (1, 2):
        ev = json.loads((tmp_path / "evaluate" / f"ipc{ipc}-rded-update" / "metrics.json").read_text())
        assert [r["source"] for r in ev["rows"]] == ["hard", "teacher", "teacher+gift", "projector"]
        assert ev["storage"]["teacher+gift"] == ev["storage"]["teacher"]  # refined at zero bytes
        gift, plain = (r for r in ev["rows"] if r["source"] in ("teacher+gift", "teacher"))
        assert gift["final_loss"] != plain["final_loss"]  # another loss on the same views
        rnd = json.loads((tmp_path / "evaluate" / f"ipc{ipc}-random" / "metrics.json").read_text())
        assert [r["source"] for r in rnd["rows"]] == ["projector+gift"]
        assert (tmp_path / "projector" / f"rule-ipc{ipc}" / "adapters.safetensors").is_file()
        assert (tmp_path / f"frontier-ipc{ipc}.png").read_bytes()[:4] == b"\x89PNG"
        # the view adaptation's checks: before the first step, then over the budget up to its last step
        metrics = json.loads((tmp_path / "distill" / f"ipc{ipc}-rded-update" / "metrics.json").read_text())
        assert [c["step"] for c in metrics["adapt"]["checks"]] == [0, 1, 2, 3]
    report = (tmp_path / "report.md").read_text()
    assert (
        "## Label sources by IPC" in report and "| label source (convnet-d2-w16) | IPC 1 | IPC 2 |" in report
    )
    assert "## IPC 1" in report and "## IPC 2" in report and "random subset: projector+gift" in report
    assert "Projector labels" in report and "the online teacher's" in report  # the verdict, in words


def test_gift_loss_is_the_cosine_to_the_refined_target():
    import torch
    import torch.nn.functional as F

    from hellodd.evaluate import gift_loss

    torch.manual_seed(0)
    z, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    smooth = torch.full((5, 4), 0.1 / 3).scatter_(1, y[:, None], 0.9)
    refined = F.normalize(z, dim=-1) + 0.1 * F.normalize(smooth, dim=-1)
    assert gift_loss(3.0 * refined, z, y).abs() < 1e-6  # any positive multiple of the target: no loss
    out = torch.randn(5, 4)
    want = 1 - F.cosine_similarity(out, refined, dim=-1).mean()
    assert torch.allclose(gift_loss(out, z, y), want)
    assert gift_loss(-refined, z, y) > 1.9  # the opposite direction: the largest loss
