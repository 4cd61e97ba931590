"""Stage 4 on the synthetic preset: RDED pieces, outputs, determinism, baselines, resume."""

import json
import subprocess

import pytest
import torch

from conftest import PYTHON, cli_env
from hellodd.cli import main
from hellodd.errors import UserError
from hellodd.selection import rded_class, stitch, unstitch
from hellodd.sets import read_set


@pytest.mark.parametrize("ipc, factor", [(1, 1), (3, 1), (2, 2), (1, 3)])
def test_stitch_layout_and_inverse(ipc, factor):
    patches = (
        torch.arange(ipc * factor * factor, dtype=torch.float).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    )
    images = stitch(patches, ipc, factor)
    assert images.shape == (ipc, 1, 2 * factor, 2 * factor)
    slots = unstitch(images, factor)
    for t in range(ipc):
        for k in range(factor * factor):  # slot k of image t holds patch k * IPC + t (RDED's order)
            assert torch.all(slots[t, k] == k * ipc + t)


class _Bright(torch.nn.Module):
    """Observer whose class-0 logit is the mean brightness: the most realistic crop is the brightest."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        m = x.mean((1, 2, 3)) * 10 * self.w
        return torch.stack([m, torch.zeros_like(m)], 1)


def test_rded_keeps_the_lowest_cross_entropy_crops_deterministically():
    images = (torch.arange(6, dtype=torch.float).view(6, 1, 1, 1) * 40).expand(6, 1, 8, 8).to(torch.uint8)
    a = rded_class(_Bright(), images, 0, ipc=2, factor=1, crops=1, gen=torch.Generator().manual_seed(0))
    b = rded_class(_Bright(), images, 0, ipc=2, factor=1, crops=1, gen=torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert sorted(a[0].tolist()) == [4, 5]  # the two brightest images
    assert a[2][0] <= a[2][1]
    with pytest.raises(UserError, match="fewer than IPC x factor"):
        rded_class(_Bright(), images, 0, ipc=2, factor=2, crops=1, gen=torch.Generator())


@pytest.fixture
def run(synthetic_run):
    return synthetic_run


def test_outputs_shapes_range_and_manifest(run):
    d = run / "distill" / "ipc2-rded-update"
    images, labels, meta = read_set(d)
    assert images.shape == (8, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    manifest = json.loads((d / "manifest.json").read_text())
    assert (
        manifest["ipc"] == 2
        and manifest["classes"] == meta["classes"]
        and manifest["resolution"] == [3, 16, 16]
    )
    assert manifest["bytes"]["images.safetensors"] == (d / "images.safetensors").stat().st_size
    assert len(list((d / "png").rglob("*.png"))) == 8 and (d / "contact_sheet.png").stat().st_size > 0
    metrics = json.loads((d / "metrics.json").read_text())
    # distill.update_epochs=3 passes over the 8 images in batches of 4: 6 iterations
    assert metrics["update_iterations"] == len(metrics["objective"]) == 6
    assert {"top1_agreement", "kl"} <= set(metrics["agreement_after"])


@pytest.mark.parametrize(
    "epochs, images, batch, iters", [(300, 10000, 50, 60000), (1.5, 8, 4, 3), (0, 8, 4, 0)]
)
def test_update_budget_is_counted_in_epochs(epochs, images, batch, iters):
    from hellodd.config import apply_overrides, preset
    from hellodd.image_update import update_iterations

    cfg = apply_overrides(
        preset("imagenet-1k"), [f"distill.update_epochs={epochs}", f"distill.update_batch_size={batch}"]
    )
    assert update_iterations(cfg, images) == iters


def test_cached_selection_is_bound_to_its_settings(run, tmp_path, capsys):
    import shutil

    for stage in ("teachers", "projector"):
        shutil.copytree(run / stage, tmp_path / stage)
    args = ["distill", "--preset", "synthetic", "--out", str(tmp_path), "--set", "distill.update=false"]
    args += ["--set", "distill.adapt_steps=0"]  # the selection alone
    assert main(args) == 0
    first, _, _ = read_set(tmp_path / "distill" / "ipc2-rded")
    assert main(args) == 0 and "selecting afresh" not in capsys.readouterr().out  # same inputs: reused
    assert main([*args, "--set", "distill.crop_min_scale=1.0"]) == 0
    assert "init.safetensors was made from other inputs; selecting afresh" in capsys.readouterr().out
    whole, _, _ = read_set(tmp_path / "distill" / "ipc2-rded")
    assert not torch.equal(first, whole)


def test_update_lowers_the_objective_and_the_disagreement(run):
    metrics = json.loads((run / "distill" / "ipc2-rded-update" / "metrics.json").read_text())
    assert metrics["objective_last"] < metrics["objective_first"]
    assert metrics["agreement_after"]["kl"] < metrics["agreement_before"]["kl"]


def test_baselines_random_and_rded_without_update(run, tmp_path):
    import shutil

    for stage in ("teachers", "projector", "distill"):
        shutil.copytree(run / stage, tmp_path / stage)
    args = ["distill", "--preset", "synthetic", "--out", str(tmp_path), "--set", "distill.adapt_steps=0"]
    assert main([*args, "--set", "distill.init=random"]) == 0
    assert main([*args, "--set", "distill.update=false"]) == 0
    rnd, labels, _ = read_set(tmp_path / "distill" / "ipc2-random")
    from hellodd.config import preset
    from hellodd.data import load_data

    train = load_data(preset("synthetic").data).train
    real = {bytes(x.flatten().tolist()) for x in train.images}
    assert all(bytes(x.flatten().tolist()) in real for x in rnd)  # random real images, untouched
    plain, _, _ = read_set(tmp_path / "distill" / "ipc2-rded")
    updated, _, _ = read_set(tmp_path / "distill" / "ipc2-rded-update")
    assert not torch.equal(plain, updated)


def test_view_adaptation_brings_the_projector_closer_to_its_teachers(run, tmp_path):
    from hellodd import engine
    from hellodd.config import apply_overrides, preset
    from hellodd.data import load_data
    from hellodd.distill import adapt_projector
    from hellodd.io import load_tensors, sha256
    from hellodd.layout import projector_path
    from hellodd.projector import load_projector
    from hellodd.sets import projector_for

    cfg = apply_overrides(preset("synthetic"), [f"out={run}", "distill.adapt_steps=20"])
    assert (
        projector_for(cfg) == run / "distill" / "ipc2-rded-update" / "adapters.safetensors"
    )  # the run made it
    images, labels, _ = read_set(run / "distill" / "ipc2-rded-update")
    m = adapt_projector(cfg, engine.make_fabric(cfg.engine), images, labels, load_data(cfg.data), tmp_path)
    assert m["steps"] == 20 and m["held_out_views"] >= cfg.distill.adapt_probe_views
    assert m["agreement_after"]["logit_mse"] < m["agreement_before"]["logit_mse"]
    new, meta = load_tensors(tmp_path / "adapters.safetensors")
    old, _ = load_tensors(projector_path(cfg))
    assert new.keys() == old.keys() and all(new[k].shape == old[k].shape for k in new)
    assert any(not torch.equal(new[k], old[k]) for k in new)
    assert meta["adapted_from"] == sha256(projector_path(cfg)) and meta["adapt_steps"] == 20
    load_projector(tmp_path / "adapters.safetensors", cache_dir=run / "cache")  # rebuilds from the file alone


def test_view_adaptation_takes_its_own_batch_of_views(run, tmp_path):
    from hellodd import engine
    from hellodd.config import apply_overrides, preset
    from hellodd.data import load_data
    from hellodd.distill import adapt_projector
    from hellodd.io import load_tensors

    images, labels, _ = read_set(run / "distill" / "ipc2-rded-update")
    results = {}
    for batch in (0, 3):
        over = [
            f"out={run}",
            "distill.adapt_steps=4",
            "distill.adapt_checks=0",
            f"distill.adapt_batch={batch}",
        ]
        cfg = apply_overrides(preset("synthetic"), over)
        out = tmp_path / str(batch)
        m = adapt_projector(cfg, engine.make_fabric(cfg.engine), images, labels, load_data(cfg.data), out)
        results[batch] = (m["views_per_step"], load_tensors(out / "adapters.safetensors")[0])
    assert results[0][0] == min(len(images), preset("synthetic").evaluate.batch_size) != 3
    assert results[3][0] == 3
    assert any(not torch.equal(results[0][1][k], results[3][1][k]) for k in results[0][1])


def test_a_collapsing_view_adaptation_goes_back_to_its_best_adapters(run, tmp_path, monkeypatch):
    """A collapse forced on any CPU: after the check at step 5, every optimiser step overwrites the adapters
    with 1000 (what a blown-up rate does to them, without depending on how a CPU rounds a large step).  The
    checks at steps 10, 15 and 20 each see the collapse and put the best adapters back, so the last check is a
    regression and the file written holds exactly the best adapters the checks saw (step 0 or 5)."""
    from hellodd import engine
    from hellodd.config import apply_overrides, preset
    from hellodd.data import load_data
    from hellodd.distill import adapt_projector
    from hellodd.io import load_tensors
    from hellodd.projector import views
    from hellodd.projector.adapters import adapter_tensors

    optimizer = views.adapter_optimizer
    seen, steps = {}, []  # optimiser steps taken -> the adapters after them, while still the training's own

    def collapsing(proj, pcfg):
        opt = optimizer(proj, pcfg)
        seen[0] = {k: v.clone() for k, v in adapter_tensors(proj).items()}

        def after_step(opt, args, kwargs):
            steps.append(len(steps) + 1)
            if steps[-1] <= 5:
                seen[steps[-1]] = {k: v.clone() for k, v in adapter_tensors(proj).items()}
                return
            with torch.no_grad():
                for group in opt.param_groups:
                    for q in group["params"]:
                        q.fill_(1000.0)

        opt.register_step_post_hook(after_step)
        return opt

    monkeypatch.setattr(views, "adapter_optimizer", collapsing)
    over = [f"out={run}", "distill.adapt_steps=20", "distill.adapt_checks=4"]
    cfg = apply_overrides(preset("synthetic"), over)
    images, labels, _ = read_set(run / "distill" / "ipc2-rded-update")
    m = adapt_projector(cfg, engine.make_fabric(cfg.engine), images, labels, load_data(cfg.data), tmp_path)
    checks = m["checks"]
    assert [c["step"] for c in checks] == [0, 5, 10, 15, 20]
    assert [c["regression"] for c in checks[2:]] == [True, True, True], checks
    best = min(checks[:2], key=lambda c: c["select_mse"])  # the first of equals, as the adaptation keeps
    assert m["kept_step"] == best["step"], (m["kept_step"], checks)
    written, _ = load_tensors(m["adapter_file"])
    want = seen[m["kept_step"]]
    assert written.keys() == want.keys() and all(torch.equal(written[k], want[k]) for k in want)


def test_distill_without_adaptation_drops_a_stale_adapted_projector(run, tmp_path):
    import shutil

    from hellodd.config import apply_overrides, preset
    from hellodd.layout import projector_path
    from hellodd.sets import projector_for

    for stage in ("teachers", "projector", "distill"):
        shutil.copytree(run / stage, tmp_path / stage)
    stale = tmp_path / "distill" / "ipc2-rded-update" / "adapters.safetensors"
    assert stale.is_file()
    args = ["distill", "--preset", "synthetic", "--out", str(tmp_path), "--set", "distill.adapt_steps=0"]
    assert main(args) == 0
    cfg = apply_overrides(preset("synthetic"), [f"out={tmp_path}", "distill.adapt_steps=0"])
    assert not stale.exists() and projector_for(cfg) == projector_path(cfg)


def test_view_adapted_projector_is_bound_to_its_source_and_images(run, tmp_path):
    import shutil

    from hellodd.config import apply_overrides, preset
    from hellodd.layout import adapted_projector_path
    from hellodd.sets import projector_for

    for stage in ("teachers", "projector", "distill"):
        shutil.copytree(run / stage, tmp_path / stage)
    cfg = apply_overrides(preset("synthetic"), [f"out={tmp_path}"])
    images, _, _ = read_set(tmp_path / "distill" / "ipc2-rded-update")
    assert projector_for(cfg, images) == adapted_projector_path(cfg)
    with pytest.raises(UserError, match="to other images than this set's"):
        projector_for(cfg, images.flip(0).contiguous())
    # stage 3 retrained (here: its file changed) after distill adapted the old adapters
    stage3 = tmp_path / "projector" / "rule-ipc2" / "adapters.safetensors"
    data = bytearray(stage3.read_bytes())
    data[-1] ^= 1
    stage3.write_bytes(bytes(data))
    with pytest.raises(UserError, match="adapted from other stage-3 adapters"):
        projector_for(cfg, images)


def test_same_seed_same_images(run, tmp_path):
    import shutil

    shutil.copytree(run / "teachers", tmp_path / "teachers")
    shutil.copytree(run / "projector", tmp_path / "projector")
    assert main(["distill", "--preset", "synthetic", "--out", str(tmp_path)]) == 0
    a, _, _ = read_set(run / "distill" / "ipc2-rded-update")
    b, _, _ = read_set(tmp_path / "distill" / "ipc2-rded-update")
    assert torch.equal(a, b)


def test_killed_update_resumes_to_the_same_images(run, tmp_path):
    import shutil

    for stage in ("teachers", "projector"):
        shutil.copytree(run / stage, tmp_path / stage)
    cmd = [
        PYTHON,
        "-m",
        "hellodd",
        "distill",
        "--preset",
        "synthetic",
        "--out",
        str(tmp_path),
        "--set",
        "distill.update_epochs=12.5",  # 25 iterations, a state every 20
    ]
    killed = subprocess.run(cmd, env=cli_env(HELLODD_DIE_AT_STEP=23), timeout=300)
    assert killed.returncode == -9
    assert main(cmd[3:]) == 0  # resumed from iteration 20, in this process
    ref = tmp_path / "ref"
    for stage in ("teachers", "projector"):
        shutil.copytree(run / stage, ref / stage)
    assert main([*cmd[3:7], str(ref), *cmd[8:]]) == 0
    a, _, _ = read_set(tmp_path / "distill" / "ipc2-rded-update")
    b, _, _ = read_set(ref / "distill" / "ipc2-rded-update")
    assert torch.equal(a, b)


def test_killed_view_adaptation_resumes_to_the_same_adapters(run, tmp_path):
    import shutil

    from hellodd.io import load_tensors

    outs = [tmp_path / "killed", tmp_path / "ref"]
    for out in outs:
        for stage in ("teachers", "projector"):
            shutil.copytree(run / stage, out / stage)
    # 8 steps with a check (and a state) every 2: killed at 7, resumed from 6
    args = ["--preset", "synthetic", "--set", "distill.update=false", "--set", "distill.adapt_steps=8"]
    args += ["--set", "distill.adapt_checks=4"]
    cmd = [PYTHON, "-m", "hellodd", "distill", *args]
    killed = subprocess.run([*cmd, "--out", str(outs[0])], env=cli_env(HELLODD_DIE_AT_STEP=7), timeout=300)
    assert killed.returncode == -9 and (outs[0] / "distill" / "ipc2-rded" / "adapt_state.pt").is_file()
    assert main([*cmd[3:], "--out", str(outs[0])]) == 0
    assert main([*cmd[3:], "--out", str(outs[1])]) == 0
    a, _ = load_tensors(outs[0] / "distill" / "ipc2-rded" / "adapters.safetensors")
    b, _ = load_tensors(outs[1] / "distill" / "ipc2-rded" / "adapters.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_or_damaged_distilled_set(tmp_path):
    with pytest.raises(UserError, match="no distilled set"):
        read_set(tmp_path)
    (tmp_path / "images.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable safetensors"):
        read_set(tmp_path)


def test_adaptation_state_of_other_images_is_never_resumed(run, tmp_path, capsys):
    """Reselected images (another candidate pool) in the same folder: the finished adaptation of the old
    images is discarded, and the adapters equal a fresh run's."""
    import shutil

    from hellodd.io import load_tensors

    for stage in ("teachers", "projector", "distill"):
        shutil.copytree(run / stage, tmp_path / "stale" / stage)
    for stage in ("teachers", "projector"):
        shutil.copytree(run / stage, tmp_path / "fresh" / stage)
    args = ["distill", "--preset", "synthetic", "--set", "distill.candidates_per_class=8"]
    assert main([*args, "--out", str(tmp_path / "stale")]) == 0
    assert (
        "adapt_state.pt was made from other inputs; the view adaptation starts afresh"
        in capsys.readouterr().out
    )
    assert main([*args, "--out", str(tmp_path / "fresh")]) == 0
    a, _ = load_tensors(tmp_path / "stale" / "distill" / "ipc2-rded-update" / "adapters.safetensors")
    b, _ = load_tensors(tmp_path / "fresh" / "distill" / "ipc2-rded-update" / "adapters.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adaptation_learning_rate_scale_is_applied_and_binds_the_state(run, tmp_path, capsys):
    import shutil

    from hellodd.io import load_tensors

    for stage in ("teachers", "projector", "distill"):
        shutil.copytree(run / stage, tmp_path / stage)
    args = ["distill", "--preset", "synthetic", "--out", str(tmp_path), "--set", "distill.adapt_lr_scale=3"]
    assert main(args) == 0
    assert (
        "the view adaptation starts afresh" in capsys.readouterr().out
    )  # the finished 1x state is not reused at 3x
    a, _ = load_tensors(run / "distill" / "ipc2-rded-update" / "adapters.safetensors")
    b, _ = load_tensors(tmp_path / "distill" / "ipc2-rded-update" / "adapters.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.ddp
def test_two_process_distill_gives_the_one_process_set(run, tmp_path):
    """Selection, update and view adaptation split across 2 gloo processes (issue: the adaptation ended in an
    all-reduce rank 1 never joined).  Selection is per class with per-class generators: identical.  The update
    and the adaptation sum per-rank shares in another order: uint8 images within one level of the one-process
    images in under 1% of pixels (a rounding boundary may fall the other way on another CPU), adapters within
    float32 rounding of the summed gradients."""
    import json
    import shutil

    from hellodd.io import load_tensors

    for stage in ("teachers", "projector"):
        shutil.copytree(run / stage, tmp_path / stage)
    cmd = [PYTHON, "-m", "hellodd", "distill", "--preset", "synthetic", "--out", str(tmp_path)]
    r = subprocess.run(
        [*cmd, "--accelerator", "cpu", "--devices", "2"],
        env=cli_env(),
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    one, two = run / "distill" / "ipc2-rded-update", tmp_path / "distill" / "ipc2-rded-update"
    assert json.loads((two / "metrics.json").read_text())["world_size"] == 2
    a, _ = load_tensors(one / "init.safetensors")
    b, _ = load_tensors(two / "init.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the selection: bit-identical
    ia, la, _ = read_set(one)
    ib, lb, _ = read_set(two)
    assert torch.equal(la, lb) and (ia.int() - ib.int()).abs().max() <= 1
    assert (ia != ib).float().mean() < 0.01
    a, _ = load_tensors(one / "adapters.safetensors")
    b, _ = load_tensors(two / "adapters.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)
    assert not all(
        torch.equal(a[k], load_tensors(run / "projector" / "rule-ipc2" / "adapters.safetensors")[0][k])
        for k in a
    )


@pytest.mark.ddp
def test_evaluation_runs_spread_over_two_processes_give_the_one_process_results(run, tmp_path):
    """``evaluate.parallel=runs``: each of 2 gloo processes trains whole (source, student, seed) runs alone on
    its device; every run is then a one-process run, so every row equals the one-process evaluation's (losses to
    float rounding), stored labels (written by the rank that owns their seed) included."""
    import shutil

    one, two = tmp_path / "one", tmp_path / "two"
    for out in (one, two):
        for stage in ("teachers", "projector", "distill"):
            shutil.copytree(run / stage, out / stage)
    args = ["--preset", "synthetic", "--set", "evaluate.parallel=runs", "--set", "evaluate.seeds=[0,1]"]
    args += ["--set", "evaluate.label_sources=[hard,stored,projector]"]
    assert main(["evaluate", "--out", str(one), *args]) == 0
    r = subprocess.run(
        [
            PYTHON,
            "-m",
            "hellodd",
            "evaluate",
            "--out",
            str(two),
            *args,
            "--accelerator",
            "cpu",
            "--devices",
            "2",
        ],
        env=cli_env(),
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # (seed, source) pairs alternate between the ranks; each rank prints its own runs
    assert "seed 0: top-1" in r.stdout and "(rank 0)" in r.stdout and "(rank 1)" in r.stdout
    m1, m2 = (
        json.loads((o / "evaluate" / "ipc2-rded-update" / "metrics.json").read_text()) for o in (one, two)
    )
    assert (m1["parallel"], m2["parallel"], m2["world_size"]) == ("data", "runs", 2)
    same = ("source", "student", "seed", "score", "second", "iterations")
    assert [{k: r[k] for k in same} for r in m2["rows"]] == [{k: r[k] for k in same} for r in m1["rows"]]
    # the losses agree to float32 rounding (2 processes run with a thread each: other summation orders)
    assert [r["final_loss"] for r in m2["rows"]] == pytest.approx(
        [r["final_loss"] for r in m1["rows"]], rel=1e-5
    )
    assert len(m2["rows"]) == 6
    assert {k: v["bytes"] for k, v in m2["storage"].items()} == {
        k: v["bytes"] for k, v in m1["storage"].items()
    }
