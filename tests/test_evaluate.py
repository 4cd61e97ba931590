"""Stage 5 end to end on the synthetic preset, and the whole pipeline through ``hellodd run``."""

import json
from pathlib import Path

import pytest

from hellodd import config as C
from hellodd.cli import main
from hellodd.errors import UserError
from hellodd.students import lr_factor
from hellodd.tables import aggregate, results_table


def test_schedules():
    assert lr_factor("half-cosine", 0, 10) == 1.0 and lr_factor("half-cosine", 10, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10) == pytest.approx(0.0)


def _row(seed: int, **scores) -> dict:
    base = {"source": "hellolora", "student": "convnet", "seed": seed, "seconds_per_iteration": 0.1}
    return {**base, "peak_memory_mib": 10.0, **scores}


def _scored(seed: int, task: str, **scores) -> dict:
    """A row as the task's students write it: neutral score keys and their names."""
    t = C.named(task)
    names = {"score_name": t.metric_name, "second_name": t.second_name}
    return _row(seed, **names, **scores)


def test_a_row_without_its_metric_is_refused_never_read_as_zero():
    storage = {"hellolora": {"bytes": 100}}
    whole = [
        _scored(0, "classification", score=50.0, second=90.0),
        _scored(1, "classification", score=60.0, second=80.0),
    ]
    (a,) = aggregate(whole, storage)
    assert (a["mean"], a["second"], a["n"]) == (55.0, 85.0, 2)
    assert (a["score_name"], a["second_name"]) == ("top-1", "top-5")
    dense = [_scored(0, "segmentation", score=40.0, second=70.0)]
    table = results_table(dense, storage)
    assert "| mIoU (mean ± std) | pixel accuracy |" in table and "| 40.00 ± 0.00 (n=1) | 70.00 |" in table
    for rows, missing in (
        ([whole[0], _scored(1, "classification", score=60.0)], "top-5"),  # its second score
        ([_scored(0, "segmentation", score=40.0)], "pixel accuracy"),
        ([_scored(0, "segmentation", second=70.0)], "mIoU"),  # its headline score
        ([_row(0, metric="miou", miou=40.0)], "pixel accuracy"),  # a row of before the neutral keys
    ):
        with pytest.raises(UserError, match=f"source 'hellolora', student 'convnet', seed .* no {missing}"):
            results_table(rows, storage)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """``hellodd run`` on the synthetic preset, once for this module: (run folder, what it printed)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["run", "--preset", "synthetic", "--out", str(out)]) == 0
    return out, printed.getvalue()


SET, SUBSET = "ipc2-rded-update", "ipc2-random"
RUN = pytest.mark.xdist_group("hellodd-run")  # under xdist, one worker builds the module's run


@RUN
def test_run_executes_every_stage_and_records_each(ran):
    out, printed = ran
    for stage in ("teachers", "projector", "distill", "evaluate", "report.md"):
        assert stage in printed
    for stage in ("teachers", "projector/rule-ipc2"):  # one projector folder per weak-teacher window
        assert (out / stage / "config.json").is_file() and (out / stage / "storage.json").is_file()
    for name in (SET, SUBSET):
        assert (out / "evaluate" / name / "config.json").is_file()
    rows = json.loads((out / "evaluate" / SET / "results.json").read_text())
    six = {"hard", "teacher", "weak-teachers", "stored", "compressed", "projector"}
    assert {r["source"] for r in rows} == six and len(rows) == 12
    val = json.loads((out / "teachers" / "metrics.json").read_text())["dataset"]["val"]
    for r in rows:  # a final-epoch accuracy over the whole validation split: a whole number of images
        assert r["seconds_per_iteration"] > 0 and r["score"] * val / 100 == pytest.approx(
            round(r["score"] * val / 100)
        )


@RUN
def test_the_evaluation_profile_accounts_for_its_runs(ran):
    """Each run's parts (views, labels, step, checkpoints, validation) are its own clock's: together no more
    than the run's seconds and most of it; the stage's profile sums them per source, and the benchmark that
    prints a run's profile reads them back."""
    import subprocess
    import sys

    out, _ = ran
    metrics = json.loads((out / "evaluate" / SET / "metrics.json").read_text())
    parts = ("views", "labels", "step", "checkpoints", "validation")
    for r in metrics["rows"]:
        p = r["parts_seconds"]
        assert all(p[k] >= 0 for k in parts) and p["step"] > 0 and p["validation"] > 0
        assert 0.5 * r["seconds"] < sum(p[k] for k in parts) <= r["seconds"]
        assert p["first_iterations_extra"] <= p["views"] + p["labels"] + p["step"]
    # a source with no labeller spends next to nothing labelling; an online model does spend
    hard = [r["parts_seconds"]["labels"] for r in metrics["rows"] if r["source"] == "hard"]
    teacher = [r["parts_seconds"]["labels"] for r in metrics["rows"] if r["source"] == "teacher"]
    assert sum(hard) < sum(teacher)
    prof = metrics["profile"]
    assert prof["total"]["step"] == pytest.approx(sum(r["parts_seconds"]["step"] for r in metrics["rows"]))
    assert set(prof["by_source"]) == {r["source"] for r in metrics["rows"]}
    assert prof["total"]["label_sources_built"] > 0  # stored labels were written
    script = Path(__file__).parents[1] / "benchmarks" / "profile_run.py"
    shown = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, check=True
    )
    assert (
        f"evaluate {SET}" in shown.stdout and "| labels |" in shown.stdout and "| teachers |" in shown.stdout
    )


@RUN
def test_run_counts_every_sources_bytes_from_its_files(ran):
    out, _ = ran
    ev = out / "evaluate" / SET
    storage = json.loads((ev / "metrics.json").read_text())["storage"]
    assert storage["hard"]["bytes"] == 0
    # the projector that labels the set is the one distill adapted to its views (distill.adapt_steps > 0)
    adapted = out / "distill" / SET / "adapters.safetensors"
    assert storage["projector"]["bytes"] == adapted.stat().st_size
    assert f"{SET}/adapters.safetensors" in storage["projector"]["formula"]
    stored_files = list((ev / "stored-labels" / "seed0").rglob("epoch_*.safetensors"))
    assert storage["stored"]["bytes"] == sum(f.stat().st_size for f in stored_files)
    compressed = list((ev / "compressed-labels" / "seed0").rglob("epoch_*.safetensors"))
    assert len(compressed) == 2 and len(stored_files) == 3  # 3 epochs, fraction 0.5 keeps round(1.5) = 2
    assert (
        storage["compressed"]["bytes"]
        == sum(f.stat().st_size for f in compressed)
        < storage["stored"]["bytes"]
    )
    pool = json.loads((out / "teachers" / "pool.json").read_text())
    weak = [c for c in pool["checkpoints"] if c["epoch"] in (0.5, 1.0)]  # the rule's window of 2 on this pool
    assert storage["weak-teachers"]["bytes"] == sum(
        (out / "teachers" / c["file"]).stat().st_size for c in weak
    )


@RUN
def test_run_reports_the_random_subset_beside_the_set(ran):
    out, _ = ran
    rnd = out / "evaluate" / SUBSET
    rrows = json.loads((rnd / "results.json").read_text())
    assert {r["source"] for r in rrows} == {"hard", "teacher", "projector"} and len(rrows) == 6
    formula = json.loads((rnd / "metrics.json").read_text())["storage"]["projector"]["formula"]
    assert f"{SUBSET}/adapters.safetensors" in formula  # the subset's own adapted projector
    report = (out / "report.md").read_text()
    assert "vs random subset" in report and "Whole-data reference" in report
    entries = json.loads((out / "report.json").read_text())["entries"]
    by = {(e["set"], e["source"]): e for e in entries}
    for src in ("hard", "teacher", "projector"):
        e, r = by[(SET, src)], by[(SUBSET, src)]
        assert e["vs_random"] == pytest.approx(e["mean"] - r["mean"])
    assert "vs_random" not in by[(SET, "stored")]  # not evaluated on the subset
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@RUN
def test_stored_labels_of_another_set_are_rewritten_never_replayed(ran, tmp_path, capsys):
    """The subset's evaluation finds the set's stored labels in its folder: they are rewritten for the
    subset's images, never replayed on them, and the set's results stay as they were."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(ran[0], out)
    ev, rnd = out / "evaluate" / SET, out / "evaluate" / SUBSET
    before = json.loads((ev / "metrics.json").read_text())["rows"]
    shutil.copytree(ev / "stored-labels", rnd / "stored-labels")
    args = ["--set", "distill.init=random", "--set", "distill.update=false", "--set", "evaluate.seeds=[0]"]
    sources = ["--set", "evaluate.label_sources=[stored]"]
    assert main(["evaluate", "--preset", "synthetic", "--out", str(out), *args, *sources]) == 0
    assert "stored-label file(s) were made from other inputs; rewritten" in capsys.readouterr().out
    assert json.loads((ev / "metrics.json").read_text())["rows"] == before


@RUN
def test_the_view_adaptation_ablation_storage_and_report_commands(ran, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(ran[0], out)
    ev = out / "evaluate" / SET
    # the ablation of the view adaptation: stage 3's adapters, on the same stream
    sources = [
        "--set",
        "evaluate.label_sources=[projector,projector-transfer]",
        "--set",
        "evaluate.seeds=[0]",
    ]
    assert main(["evaluate", "--preset", "synthetic", "--out", str(out), *sources]) == 0
    storage = json.loads((ev / "metrics.json").read_text())["storage"]
    assert f"{SET}/adapters.safetensors" in storage["projector"]["formula"]
    assert "rule-ipc2/adapters.safetensors" in storage["projector-transfer"]["formula"]
    capsys.readouterr()
    assert main(["storage", "--preset", "synthetic", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "HeLlO projector adapters" in table and f"adapted to {SET}" in table
    assert main(["report", str(out), "--to", str(out / "again")]) == 0
    assert f"| {SET} | projector-transfer |" in capsys.readouterr().out
    assert (out / "again" / "frontier.png").is_file()
    assert main(["report", str(out / "nothing")]) == 2


@RUN
def test_compiled_bf16_evaluation(ran, tmp_path):
    """The demo's evaluation: torch.compile-d student and labeller under bf16 autocast."""
    import math
    import shutil

    out = tmp_path / "run"
    for stage in ("teachers", "projector", "distill"):
        shutil.copytree(ran[0] / stage, out / stage)
    fast = ["--precision", "bf16-mixed", "--set", "evaluate.compile=true", "--set", "evaluate.seeds=[0]"]
    one = ["--set", "evaluate.label_sources=[teacher]"]
    assert main(["evaluate", "--preset", "synthetic", "--out", str(out), *fast, *one]) == 0
    (row,) = json.loads((out / "evaluate" / SET / "results.json").read_text())
    val = json.loads((out / "teachers" / "metrics.json").read_text())["dataset"]["val"]
    assert row["source"] == "teacher" and row["iterations"] == 3 * 2 and math.isfinite(row["final_loss"])
    assert row["score"] * val / 100 == pytest.approx(round(row["score"] * val / 100))


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

    from hellodd.losses import gift_loss

    torch.manual_seed(0)
    z, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    smooth = torch.full((5, 4), 0.1 / 3).scatter_(1, y[:, None], 0.9)
    refined = F.normalize(z, dim=-1) + 0.1 * F.normalize(smooth, dim=-1)
    assert gift_loss(3.0 * refined, z, y).abs() < 1e-6  # any positive multiple of the target: no loss
    out = torch.randn(5, 4)
    want = 1 - F.cosine_similarity(out, refined, dim=-1).mean()
    assert torch.allclose(gift_loss(out, z, y), want)
    assert gift_loss(-refined, z, y) > 1.9  # the opposite direction: the largest loss


def test_a_report_of_before_the_neutral_keys_renders_as_one_of_now():
    from hellodd.frontier import markdown

    entry = {"run": "r", "set": "subset6-rded", "random": False, "ipc": 1, "epochs": 3, "source": "hard"}
    entry |= {"student": "convnet-fcn", "mean": 50.0, "std": 1.0, "n": 2, "bytes": 0, "s_per_iter": 0.1}
    old = markdown(
        [{**entry, "metric": "miou"}], {"r": {"arch": "convnet-fcn", "top1": 40.0, "metric": "miou"}}
    )
    new = markdown(
        [{**entry, "score_name": "mIoU"}], {"r": {"arch": "convnet-fcn", "score": 40.0, "score_name": "mIoU"}}
    )
    assert old == new and "reaches 40.00% val mIoU." in new and "| mIoU (mean ± std, n) |" in new
